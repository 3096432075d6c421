"""datapath/bpfsys.py, the bpf(2) syscall without BCC, on throwaway maps: element operations on
hash, LPM trie, LRU and per-CPU maps, batch read equal to an item-by-item read (and the fallback
when batches are refused), batch update / delete (in order, stopping at the element the kernel
refuses, a refusal of the map type remembered), pin / open / describe, errors carrying their
errno."""
from __future__ import annotations

import errno
import os
import secrets
import struct

import pytest

from datapath import abi, attach, bpfsys, build
from datapath.errors import BPFObjectError, MapError
from datapath.maps import MapSpec, TypedMap


@pytest.fixture
def pin_dir(privileged):
    d = f"/sys/fs/bpf/dpt-bpfsys-{os.getpid()}-{secrets.token_hex(3)}"
    os.mkdir(d)
    try:
        yield d
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


def _map(map_type, key_size, value_size, max_entries, flags=0, name="dpt_map"):
    return bpfsys.RawMap(bpfsys.map_create(map_type, key_size, value_size, max_entries, flags,
                                           name))


def _one_by_one(m: bpfsys.RawMap) -> dict[bytes, bytes]:
    return {k: m.lookup(k) for k in m.keys()}


def _u32(n):
    return struct.pack("<I", n)


def _lpm(prefix_len, a, b, c, d):
    return struct.pack("<I4B", prefix_len, a, b, c, d)


def test_hash_element_operations(privileged):
    m = _map(bpfsys.MAP_HASH, 4, 8, 64)
    assert (m.key_size, m.value_size, m.max_entries, m.percpu) == (4, 8, 64, False)
    assert m.info.type == bpfsys.MAP_HASH and m.info.name == "dpt_map"
    assert m.lookup(_u32(1)) is None
    assert bpfsys.map_next_key(m.fd, None, 4) is None           # empty
    for i in range(10):
        m.update(_u32(i), struct.pack("<Q", i * 7))
    assert m.lookup(_u32(3)) == struct.pack("<Q", 21)
    assert len(m) == 10
    first = bpfsys.map_next_key(m.fd, None, 4)
    assert first is not None and bpfsys.map_next_key(m.fd, first, 4) != first
    assert sorted(m.keys()) == sorted(_u32(i) for i in range(10))
    m.update(_u32(3), struct.pack("<Q", 1), bpfsys.BPF_EXIST)
    assert m.lookup(_u32(3)) == struct.pack("<Q", 1)
    assert m.delete(_u32(3)) is True
    assert m.delete(_u32(3)) is False                           # already gone: not an error
    assert m.lookup(_u32(3)) is None
    m.clear()
    assert len(m) == 0 and m.read_raw() == {}


def test_errors_carry_errno(privileged):
    m = _map(bpfsys.MAP_HASH, 4, 8, 2)
    m.update(_u32(1), bytes(8))
    with pytest.raises(MapError) as e:
        m.update(_u32(1), bytes(8), bpfsys.BPF_NOEXIST)
    assert e.value.errno == errno.EEXIST and "EEXIST" in str(e.value) and "dpt_map" in str(e.value)
    with pytest.raises(MapError) as e:
        m.update(_u32(2), bytes(8), bpfsys.BPF_EXIST)
    assert e.value.errno == errno.ENOENT and "ENOENT" in str(e.value)
    m.update(_u32(2), bytes(8))
    with pytest.raises(MapError) as e:                          # full
        m.update(_u32(3), bytes(8))
    assert e.value.errno == errno.E2BIG and "E2BIG" in str(e.value)
    with pytest.raises(MapError) as e:                          # wrong key size, refused by us
        m.lookup(b"\0\0")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(BPFObjectError) as e:
        bpfsys.obj_get(f"/sys/fs/bpf/dpt-missing-{os.getpid()}-{secrets.token_hex(3)}")
    assert e.value.errno == errno.ENOENT and "ENOENT" in str(e.value)
    with pytest.raises(BPFObjectError) as e:                    # a map is not a program
        bpfsys.prog_info(m.fd)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(MapError) as e:                          # an LPM trie needs no-prealloc
        bpfsys.map_create(bpfsys.MAP_LPM_TRIE, 8, 4, 16)
    assert e.value.errno == errno.EINVAL


def test_lpm_trie(privileged):
    m = _map(bpfsys.MAP_LPM_TRIE, 8, 4, 128, bpfsys.BPF_F_NO_PREALLOC)
    m.update(_lpm(8, 10, 0, 0, 0), _u32(1))
    m.update(_lpm(24, 10, 1, 2, 0), _u32(2))
    m.update(_lpm(32, 10, 1, 2, 3), _u32(3))
    assert m.lookup(_lpm(32, 10, 1, 2, 3)) == _u32(3)           # longest prefix wins
    assert m.lookup(_lpm(32, 10, 1, 2, 9)) == _u32(2)
    assert m.lookup(_lpm(32, 10, 9, 9, 9)) == _u32(1)
    assert m.lookup(_lpm(32, 11, 0, 0, 0)) is None
    assert m.read_raw() == _one_by_one(m) and len(m.read_raw()) == 3
    assert m.delete(_lpm(24, 10, 1, 2, 0)) and m.lookup(_lpm(32, 10, 1, 2, 9)) == _u32(1)


def test_lru_evicts_and_reads_back(privileged):
    m = _map(bpfsys.MAP_LRU_HASH, 4, 4, 256)
    for i in range(2000):                                       # far more than it holds
        m.update(_u32(i), _u32(i))
    got = m.read_raw()
    assert 0 < len(got) <= 256 and got == _one_by_one(m)
    assert all(k == v for k, v in got.items())


def test_percpu_values_hold_every_cpu(privileged):
    cpus = bpfsys.possible_cpus()
    m = _map(bpfsys.MAP_PERCPU_HASH, 4, 12, 16)
    assert m.percpu and m.value_len == 16 * cpus                # round_up(12, 8) per CPU
    value = b"".join(struct.pack("<IIIxxxx", c, c + 1, c + 2) for c in range(cpus))
    m.update(_u32(7), value)
    assert m.lookup(_u32(7)) == value
    assert m.read_raw() == {_u32(7): value}
    # through TypedMap: one value per CPU, or one value given for every CPU
    t = TypedMap(_map(bpfsys.MAP_PERCPU_HASH, 4, 16, 16), MapSpec(
        "t", 16, bpfsys.MAP_PERCPU_HASH, abi.U32Key, abi.MetricsValue))
    t.update(abi.U32Key(1), abi.MetricsValue(count=3, bytes=300))
    got = t.get(abi.U32Key(1))
    assert len(got) == cpus and all((v.count, v.bytes) == (3, 300) for v in got)
    assert [(k.index, len(v)) for k, v in t.items()] == [(1, cpus)]


def test_batch_read_equals_item_by_item_on_every_type(privileged):
    maps = [_map(bpfsys.MAP_HASH, 12, 20, 50000),
            _map(bpfsys.MAP_LRU_HASH, 12, 20, 50000),
            _map(bpfsys.MAP_PERCPU_HASH, 12, 20, 8192),
            _map(bpfsys.MAP_ARRAY, 4, 20, 3000)]
    for m in maps:
        n = 3000 if m.is_array else (8000 if m.percpu else 40000)
        for i in range(n):
            key = _u32(i) if m.is_array else struct.pack("<III", i, i * 3, 7)
            m.update(key, os.urandom(m.value_len))
        got = m.read_raw()
        assert len(got) == n == len(m) and got == _one_by_one(m), m.info


def test_batch_falls_back_when_refused(privileged, monkeypatch):
    m = _map(bpfsys.MAP_HASH, 4, 4, 1024)
    for i in range(500):
        m.update(_u32(i), _u32(i + 1))
    real = bpfsys._bpf
    calls = []

    def refuse_batches(cmd, attr):
        if cmd == bpfsys.BPF_MAP_LOOKUP_BATCH:
            calls.append(cmd)
            return -1, 524                      # the kernel's ENOTSUPP
        return real(cmd, attr)

    monkeypatch.setattr(bpfsys, "_bpf", refuse_batches)
    assert m.read_raw() == {_u32(i): _u32(i + 1) for i in range(500)} and calls
    assert len(m) == 500
    with pytest.raises(MapError) as e:
        bpfsys.map_lookup_batch(m.fd, m.info, fallback=False)
    assert e.value.errno == 524 and "ENOTSUPP" in str(e.value)


def test_batch_update_and_delete_on_every_type(privileged):
    maps = [_map(bpfsys.MAP_HASH, 4, 8, 5000), _map(bpfsys.MAP_LRU_HASH, 4, 8, 5000),
            _map(bpfsys.MAP_PERCPU_HASH, 4, 8, 5000), _map(bpfsys.MAP_ARRAY, 4, 8, 5000),
            _map(bpfsys.MAP_PERCPU_ARRAY, 4, 8, 5000),
            _map(bpfsys.MAP_LPM_TRIE, 8, 8, 5000, bpfsys.BPF_F_NO_PREALLOC)]
    for m in maps:
        lpm = m.info.type == bpfsys.MAP_LPM_TRIE
        keys = [_lpm(32, 10, i >> 8, i & 255, 1) if lpm else _u32(i) for i in range(3000)]
        one = [struct.pack("<Q", i * 3) for i in range(3000)]
        values = [m.per_cpu(v) for v in one] if m.percpu else one
        assert m.update_batch(keys, values) == 3000, m.info
        assert m.read_raw() == {**(m.read_raw() if m.is_array else {}), **dict(zip(keys, values))}
        assert all(m.lookup(k) == v for k, v in zip(keys[::97], values[::97]))
        if m.percpu:             # the value is every CPU's, as TypedMap's update writes it
            assert values[5] == struct.pack("<Q", 15) * bpfsys.possible_cpus()
        assert m.delete_batch(keys[:1000]) == (0 if m.is_array else 1000)
        if not m.is_array:
            assert len(m) == 2000 and m.lookup(keys[0]) is None and m.lookup(keys[1000])


def test_batch_stops_at_the_element_the_kernel_refuses(privileged):
    m = _map(bpfsys.MAP_HASH, 4, 8, 10)
    keys = [_u32(i) for i in range(16)]
    assert m.update_batch(keys, [bytes(8)] * 16) == 10          # full: E2BIG at the 11th
    assert len(m) == 10 and m.lookup(keys[10]) is None
    m.update(keys[0], b"x" * 8)
    assert m.update_batch(keys[:4], [b"y" * 8] * 4, bpfsys.BPF_NOEXIST) == 0   # EEXIST at once
    assert m.lookup(keys[0]) == b"x" * 8 and m.batch_ok       # an element's error: batches go on
    assert m.delete_batch([keys[0], keys[1], keys[12], keys[2]]) == 2   # keys[12] is not there
    assert m.lookup(keys[2]) is not None and m.lookup(keys[1]) is None
    # a key or value of the wrong size stops the batch before it, with nothing sent for it
    assert m.update_batch([keys[1], b"\0\0", keys[3]], [bytes(8)] * 3) == 1
    assert m.update_batch([keys[1], keys[3]], [bytes(8), bytes(4)]) == 1


def test_batch_update_refused_is_remembered(privileged, monkeypatch):
    m = _map(bpfsys.MAP_HASH, 4, 4, 64)
    real = bpfsys._bpf
    calls = []

    def refuse_batches(cmd, attr):
        if cmd in (bpfsys.BPF_MAP_UPDATE_BATCH, bpfsys.BPF_MAP_DELETE_BATCH):
            calls.append(cmd)
            return -1, 524                      # the kernel's ENOTSUPP: count left as it was
        return real(cmd, attr)

    monkeypatch.setattr(bpfsys, "_bpf", refuse_batches)
    keys = [_u32(i) for i in range(8)]
    assert m.update_batch(keys, keys) == 0 and not m.batch_ok and len(m) == 0
    assert m.update_batch(keys, keys) == 0 and len(calls) == 1  # not asked again
    assert m.delete_batch(keys) == 0 and len(calls) == 1


def test_pin_get_and_info(pin_dir):
    m = _map(bpfsys.MAP_HASH, 4, 4, 8, name="dpt_pinned")
    m.update(_u32(1), _u32(2))
    path = os.path.join(pin_dir, "dpt_pinned")
    bpfsys.obj_pin(m.fd, path)
    with pytest.raises(BPFObjectError) as e:                    # the name is taken
        bpfsys.obj_pin(m.fd, path)
    assert e.value.errno == errno.EEXIST
    again = bpfsys.RawMap.from_pin(path)
    assert again.fd != m.fd and again.info == m.info and again.name == "dpt_pinned"
    assert again.lookup(_u32(1)) == _u32(2)
    again.update(_u32(5), _u32(6))
    assert m.lookup(_u32(5)) == _u32(6)                         # one map, two fds

    # a program: its tag as the kernel reports it elsewhere, its name and the maps it uses
    obj = build.compile_text(
        "BPF_HASH(dpt_prog_map, u32, u32, 4);\n"
        "int dpt_probe(struct xdp_md *ctx) { u32 k = 0; u32 *v = dpt_prog_map.lookup(&k);\n"
        "  return v ? XDP_DROP : XDP_PASS; }\n", name="bpfsys probe")
    fn = build.load(obj, "dpt_probe", "xdp")
    info = bpfsys.prog_info(fn.fd)
    assert info.tag == attach.prog_tag(fn.fd) and info.name == "dpt_probe" and info.id > 0
    assert info.map_ids == (bpfsys.map_info(obj["dpt_prog_map"].map_fd).id,)
    ppath = os.path.join(pin_dir, "dpt_prog")
    bpfsys.obj_pin(fn.fd, ppath)
    fd = bpfsys.obj_get(ppath)
    try:
        assert bpfsys.prog_info(fd) == info
        with pytest.raises(BPFObjectError):                     # a program is not a map
            bpfsys.map_info(fd)
    finally:
        os.close(fd)
