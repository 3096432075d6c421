"""datapath/loader.py NodeDatapath on one private pin dir, twice: the second adopts the programs
and maps from their pins without compiling (the same tags, the same map contents, one map behind
both), a program using a map that is no longer the pinned one is not adopted, a changed -D makes a
new stamp that compiles and replaces the old program pins, and remove_pins leaves nothing."""
from __future__ import annotations

import ctypes
import os
import secrets

import pytest

from datapath import abi, bpfsys, build, loader
from datapath.loader import PROGRAMS, NodeDatapath, remove_pins
from datapath.maps import MAP_SPECS, metrics_totals, pin_layout_problem


@pytest.fixture(scope="module")
def pin_dir(privileged):
    d = f"/sys/fs/bpf/dpt-adopt-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        yield d
    finally:
        remove_pins(d)


@pytest.fixture(scope="module")
def first(pin_dir):
    """The datapath as a first agent start makes it: compiled, programs and maps pinned."""
    return NodeDatapath(pin_dir)


def _no_compile(monkeypatch):
    def refuse(source, defines=None, **k):
        defines = dict(defines or {})
        d = defines.get("DP_PIN_DIR")
        pins = sorted(f for f in os.listdir(d) if f.startswith("prog-")) if d else []
        raise AssertionError(
            f"compiled although every pin was there (program pins {pins}; stamp now "
            f"{build.build_stamp({s.source for s in PROGRAMS.values()}, defines)[:16]}: a "
            "different stamp means the BPF sources changed while the test ran)")
    monkeypatch.setattr(build, "compile_program", refuse)
    monkeypatch.setattr(build, "compile_text", refuse)


def _prog_pins(pin_dir):
    return sorted(f for f in os.listdir(pin_dir) if f.startswith(loader.PROG_PIN_PREFIX))


def test_first_start_compiles_and_pins_every_program(first, pin_dir):
    assert not first.adopted and first.why_compiled
    assert _prog_pins(pin_dir) == sorted(loader.prog_pin_name(first.stamp, n) for n in PROGRAMS)
    assert set(first.maps) <= set(os.listdir(pin_dir))


def test_second_start_adopts_without_compiling(first, pin_dir, monkeypatch):
    _no_compile(monkeypatch)
    second = NodeDatapath(pin_dir)
    assert second.adopted and second.why_compiled is None and second.stamp == first.stamp
    for name in PROGRAMS:
        fd1, tag1 = first.program(name)
        fd2, tag2 = second.program(name)
        assert tag2 == tag1 and fd2 != fd1
        assert bpfsys.prog_info(fd2).id == bpfsys.prog_info(fd1).id     # the very same program
    assert set(second.maps) == set(first.maps)
    for name, m in second.maps.items():
        assert m.table.info.id == first.maps[name].table.info.id
        assert m.max_entries == m.table.max_entries == first.maps[name].table.max_entries

    # a write through one is seen by the other, both ways; read_map agrees
    lxc1, lxc2 = first.maps["cilium_lxc"], second.maps["cilium_lxc"]
    key = abi.endpoint_key("10.9.8.7")
    lxc1.update(key, abi.EndpointInfo(ifindex=42))
    assert lxc2.get(key).ifindex == 42
    svc = second.maps["cilium_lb4_services_v2"]
    for i in range(300):
        svc.update(abi.Lb4Key(address=i, dport=80), abi.Lb4Service(count=i))
    assert first.read_map("cilium_lb4_services_v2") == second.read_map("cilium_lb4_services_v2")
    assert len(first.read_map("cilium_lb4_services_v2")) == 300 == len(svc)
    ipc = second.maps["cilium_ipcache"]                         # an LPM trie
    ipc.update(abi.ipcache_key("10.1.0.0/16"), abi.remote_endpoint_info(1234))
    assert first.read_map("cilium_ipcache") == second.read_map("cilium_ipcache") != {}
    assert lxc2.delete(key) and lxc1.get(key) is None
    svc.clear()
    ipc.clear()
    assert first.read_map("cilium_lb4_services_v2") == {} == first.read_map("cilium_ipcache")


def test_a_replaced_map_pin_is_not_adopted(first, pin_dir, monkeypatch):
    """The programs still use the old cilium_lxc; a new map pinned in its place must not be
    adopted as theirs."""
    path = os.path.join(pin_dir, "cilium_lxc")
    old = first.maps["cilium_lxc"].table
    compiled = []
    monkeypatch.setattr(NodeDatapath, "_compile", lambda self: compiled.append(self))
    os.unlink(path)
    fake = bpfsys.RawMap(bpfsys.map_create(old.info.type, old.key_size, old.value_size,
                                           old.max_entries, old.info.flags, "cilium_lxc"))
    try:
        bpfsys.obj_pin(fake.fd, path)
        dp = NodeDatapath(pin_dir)
        assert not dp.adopted and compiled == [dp] and "not pinned" in dp.why_compiled
    finally:
        os.unlink(path)
        bpfsys.obj_pin(old.fd, path)                            # the programs' map back
    monkeypatch.undo()
    _no_compile(monkeypatch)
    assert NodeDatapath(pin_dir).adopted


def test_a_changed_define_compiles_a_new_stamp(first, pin_dir, monkeypatch):
    changed = NodeDatapath(pin_dir, defines={"DP_TEST_UNUSED_SETTING": 1})
    assert not changed.adopted and changed.stamp != first.stamp
    assert _prog_pins(pin_dir) == sorted(loader.prog_pin_name(changed.stamp, n)
                                         for n in PROGRAMS)        # the old stamp's are gone
    assert {n: changed.program(n)[1] for n in PROGRAMS} == \
        {n: first.program(n)[1] for n in PROGRAMS}               # an unused -D: same code
    for name, m in changed.maps.items():                         # the maps stay the pinned ones
        assert m.table.info.id == first.maps[name].table.info.id
    _no_compile(monkeypatch)
    assert NodeDatapath(pin_dir, defines={"DP_TEST_UNUSED_SETTING": 1}).adopted
    monkeypatch.undo()


def test_map_specs_declare_what_bcc_compiled(first):
    """MAP_SPECS' map types and key/value sizes are the ones the programs declare (the stale-pin
    check compares pins against them)."""
    for name, m in first.maps.items():
        spec = MAP_SPECS[name]
        assert (m.table.info.type, m.table.key_size, m.table.value_size, m.max_entries) == \
            (spec.kind, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value),
             spec.max_entries()), name
        assert pin_layout_problem(os.path.join(first.pin_dir, name), spec) is None


def test_pins_of_an_older_layout_are_dropped_and_made_anew(first, pin_dir):
    """An upgrade whose maps changed layout (cilium_metrics was a per-CPU hash keyed by 8 bytes,
    dp_ep_ifindex held an 8-byte endpoint key), with bpf.lbMapMax raised at the same time: the
    old pins would fail the verifier, be misread or keep their old size, so the compile drops
    them and pins new ones; the other maps stay."""
    old = {"cilium_metrics": (bpfsys.MAP_PERCPU_HASH, 8, 16, 1024),
           "dp_ep_ifindex": (bpfsys.MAP_HASH, 4, 8, 65535)}
    resized = {"cilium_lb4_services_v2", "cilium_lb4_backends_v3"}
    kept = {n: m.table.info.id for n, m in first.maps.items() if n not in set(old) | resized}
    held = []
    for name, (kind, ks, vs, n) in old.items():
        os.unlink(os.path.join(pin_dir, name))
        held.append(bpfsys.RawMap(bpfsys.map_create(kind, ks, vs, n, 0, name)))
        bpfsys.obj_pin(held[-1].fd, os.path.join(pin_dir, name))
    assert "key 8 B" in pin_layout_problem(os.path.join(pin_dir, "cilium_metrics"),
                                           MAP_SPECS["cilium_metrics"])
    dp = NodeDatapath(pin_dir, defines={"DP_TEST_UNUSED_SETTING": 2,
                                        **loader.lb_map_defines(131072)})
    assert not dp.adopted
    assert sorted(d.split(":")[0] for d in dp.dropped_pins) == sorted(set(old) | resized)
    assert all(dp.maps[n].max_entries == 131072 for n in resized)
    assert "another layout" in dp.why_compiled
    for name in old:
        info = dp.maps[name].table.info
        assert info.id != held[0].info.id and info.id != held[1].info.id
        assert pin_layout_problem(os.path.join(pin_dir, name), MAP_SPECS[name]) is None
    assert {n: m.table.info.id for n, m in dp.maps.items() if n not in set(old) | resized} == kept
    m = dp.maps["cilium_metrics"]            # the array the programs count in
    m.update(abi.U32Key(abi.metrics_index(abi.REASON_FORWARDED, abi.METRIC_EGRESS)),
             abi.MetricsValue(count=2, bytes=128))
    assert metrics_totals(m) == {(abi.REASON_FORWARDED, abi.METRIC_EGRESS): (
        2 * bpfsys.possible_cpus(), 128 * bpfsys.possible_cpus())}
    m.clear()


def test_remove_pins_leaves_nothing(first, pin_dir):
    removed = remove_pins(pin_dir)
    assert not os.path.exists(pin_dir)
    assert any(os.path.basename(p).startswith(loader.PROG_PIN_PREFIX) for p in removed)
    assert {os.path.basename(p) for p in removed} >= set(first.maps)
    assert remove_pins(pin_dir) == []
