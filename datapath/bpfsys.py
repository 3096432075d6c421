"""The bpf(2) syscall through ctypes, without BCC: pin and open bpffs objects, describe a map or
program by its fd, map elements one by one and in batches. Owns RawMap, the fd-based map (bytes
in, bytes out) that datapath/maps.py types. Every failure raises from datapath/errors.py with the
errno named (MapError for map operations, BPFObjectError for pin / open / info).

API:
    obj_pin(fd, path) / obj_get(path) -> fd      pin an object, open a pin (caller closes the fd)
    map_info(fd) -> MapInfo                      type, id, key/value size, max entries, flags, name
    prog_info(fd) -> ProgInfo                    type, id, tag (hex), name, map ids
    map_create(type, key_size, value_size, max_entries, flags=0, name="") -> fd
    map_lookup / map_update / map_delete / map_next_key(fd, ...)     one element
    map_lookup_batch(fd, info) -> dict[bytes, bytes]   every element, in batches (falls back to
                                                  get_next_key + lookup where batches are refused)
    map_count(fd, info) -> int                   how many elements (batched the same way)
    map_update_batch / map_delete_batch(fd, keys, [values,] count) -> (done, errno)
                                                  one BPF_MAP_UPDATE_BATCH / _DELETE_BATCH call
    possible_cpus()                              /sys/devices/system/cpu/possible
    RawMap(fd, owner=None) / RawMap.from_pin(path)   one map: lookup, update, delete, keys,
                                                  read_raw, clear, max_entries, value_len
                                                  (a ring buffer: no keys, empty, clear a no-op),
                                                  update_batch / delete_batch (many elements in
                                                  order, few syscalls), per_cpu(value)
"""
from __future__ import annotations

import ctypes
import errno as _errno
import functools
import os
from dataclasses import dataclass
from typing import Iterator

from .errors import BPFObjectError, MapError

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# commands (uapi/linux/bpf.h enum bpf_cmd)
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27
_CMD_NAMES = {v: k for k, v in list(globals().items()) if k.startswith("BPF_") and isinstance(v, int)}

# map types (enum bpf_map_type) and update flags
MAP_HASH, MAP_ARRAY, MAP_PERCPU_HASH, MAP_PERCPU_ARRAY = 1, 2, 5, 6
MAP_LRU_HASH, MAP_LRU_PERCPU_HASH, MAP_LPM_TRIE = 9, 10, 11
MAP_RINGBUF = 27          # no keys or values: read through mmap (datapath/events.py)
KEYLESS_TYPES = frozenset({MAP_RINGBUF})
PERCPU_TYPES = frozenset({MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH})
ARRAY_TYPES = frozenset({MAP_ARRAY, MAP_PERCPU_ARRAY})
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_F_NO_PREALLOC = 1
_ENOTSUPP = 524          # the kernel's internal "not supported" (no name in errno)
_BATCH_BYTES = 4 << 20   # one batch call fills at most about this much of keys + values


def errno_name(n: int) -> str:
    return "ENOTSUPP" if n == _ENOTSUPP else _errno.errorcode.get(n, f"errno {n}")


def _raise(cls, cmd: int, n: int, what: str):
    why = os.strerror(n) if n != _ENOTSUPP else "Operation not supported"
    raise cls(f"{_CMD_NAMES.get(cmd, cmd)} {what}: {errno_name(n)} ({why})", errno=n)


def _bpf(cmd: int, attr) -> tuple[int, int]:
    """(return value, errno); errno is 0 on success."""
    rc = _syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return (rc, 0) if rc >= 0 else (rc, ctypes.get_errno())


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _CreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16)]


class _MapInfo(ctypes.Structure):     # struct bpf_map_info, up to the name and ifindex
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("_btf_vmlinux_value_type_id", ctypes.c_uint32)]


class _ProgInfo(ctypes.Structure):    # struct bpf_prog_info, up to the name and ifindex
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", ctypes.c_uint32),
                ("xlated_prog_len", ctypes.c_uint32), ("jited_prog_insns", ctypes.c_uint64),
                ("xlated_prog_insns", ctypes.c_uint64), ("load_time", ctypes.c_uint64),
                ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
                ("ifindex", ctypes.c_uint32), ("_gpl", ctypes.c_uint32)]


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_TYPES

    @property
    def value_len(self) -> int:
        """Bytes of one value as the syscalls move it (all CPUs' slots for a per-CPU map)."""
        if self.percpu:
            return (self.value_size + 7) // 8 * 8 * possible_cpus()
        return self.value_size


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    tag: str            # hex, as tc / ip / /proc/<pid>/fdinfo show it
    name: str
    map_ids: tuple[int, ...]


@functools.lru_cache(maxsize=1)
def possible_cpus() -> int:
    """How many CPUs a per-CPU map has a slot for (e.g. "0-1" or "0,2-3")."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


# ---- objects: pin, open, describe ----

def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    rc, n = _bpf(BPF_OBJ_PIN, _ObjAttr(ctypes.addressof(p), fd, 0))
    if rc < 0:
        _raise(BPFObjectError, BPF_OBJ_PIN, n, f"fd {fd} at {path}")


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    rc, n = _bpf(BPF_OBJ_GET, _ObjAttr(ctypes.addressof(p), 0, 0))
    if rc < 0:
        _raise(BPFObjectError, BPF_OBJ_GET, n, path)
    return rc


def _info(fd: int, info, kind: str) -> None:
    """Fill `info` for fd, which must be a BPF `kind` ("map" or "prog")."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as e:
        raise BPFObjectError(f"fd {fd}: {errno_name(e.errno)} ({e.strerror})",
                             errno=e.errno) from None
    if link != f"anon_inode:bpf-{kind}":
        raise BPFObjectError(f"fd {fd} is not a BPF {kind} ({link})", errno=_errno.EINVAL)
    rc, n = _bpf(BPF_OBJ_GET_INFO_BY_FD,
                 _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    if rc < 0:
        _raise(BPFObjectError, BPF_OBJ_GET_INFO_BY_FD, n, f"fd {fd}")


def map_info(fd: int) -> MapInfo:
    i = _MapInfo()
    _info(fd, i, "map")
    return MapInfo(i.type, i.id, i.key_size, i.value_size, i.max_entries, i.map_flags,
                   i.name.decode(errors="replace"))


def prog_info(fd: int) -> ProgInfo:
    ids = (ctypes.c_uint32 * 64)()
    while True:
        i = _ProgInfo(nr_map_ids=len(ids), map_ids=ctypes.addressof(ids))
        _info(fd, i, "prog")
        if i.nr_map_ids <= len(ids):
            break
        ids = (ctypes.c_uint32 * i.nr_map_ids)()
    return ProgInfo(i.type, i.id, bytes(i.tag).hex(), i.name.decode(errors="replace"),
                    tuple(ids[:i.nr_map_ids]))


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int = 0, name: str = "") -> int:
    attr = _CreateAttr(map_type, key_size, value_size, max_entries, flags, 0, 0,
                       name.encode()[:15])
    rc, n = _bpf(BPF_MAP_CREATE, attr)
    if rc < 0:
        _raise(MapError, BPF_MAP_CREATE, n, f"type {map_type} {name!r}")
    return rc


# ---- map elements ----

def _buf(data: bytes, size: int, what: str):
    if len(data) != size:
        raise MapError(f"{what}: {len(data)} bytes given, the map takes {size}",
                       errno=_errno.EINVAL)
    return ctypes.create_string_buffer(bytes(data), size)


def map_lookup(fd: int, key: bytes, value_len: int) -> bytes | None:
    k = ctypes.create_string_buffer(bytes(key), len(key))
    v = ctypes.create_string_buffer(value_len)
    rc, n = _bpf(BPF_MAP_LOOKUP_ELEM, _ElemAttr(fd, 0, ctypes.addressof(k), ctypes.addressof(v)))
    if rc < 0:
        if n == _errno.ENOENT:
            return None
        _raise(MapError, BPF_MAP_LOOKUP_ELEM, n, f"map fd {fd}")
    return v.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k = ctypes.create_string_buffer(bytes(key), len(key))
    v = ctypes.create_string_buffer(bytes(value), len(value))
    rc, n = _bpf(BPF_MAP_UPDATE_ELEM,
                 _ElemAttr(fd, 0, ctypes.addressof(k), ctypes.addressof(v), flags))
    if rc < 0:
        _raise(MapError, BPF_MAP_UPDATE_ELEM, n, f"map fd {fd}")


def map_delete(fd: int, key: bytes) -> bool:
    """False when the key was not there."""
    k = ctypes.create_string_buffer(bytes(key), len(key))
    rc, n = _bpf(BPF_MAP_DELETE_ELEM, _ElemAttr(fd, 0, ctypes.addressof(k)))
    if rc < 0:
        if n == _errno.ENOENT:
            return False
        _raise(MapError, BPF_MAP_DELETE_ELEM, n, f"map fd {fd}")
    return True


def map_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after `key` (the first key when None); None at the end."""
    k = ctypes.create_string_buffer(bytes(key), key_size) if key is not None else None
    nk = ctypes.create_string_buffer(key_size)
    rc, n = _bpf(BPF_MAP_GET_NEXT_KEY, _ElemAttr(fd, 0, ctypes.addressof(k) if k else 0,
                                                 ctypes.addressof(nk)))
    if rc < 0:
        if n == _errno.ENOENT:
            return None
        _raise(MapError, BPF_MAP_GET_NEXT_KEY, n, f"map fd {fd}")
    return nk.raw


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key, by BPF_MAP_GET_NEXT_KEY (one buffer pair reused for the whole walk)."""
    cur = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    attr = _ElemAttr(fd, 0, 0, ctypes.addressof(nxt))
    while True:
        rc, n = _bpf(BPF_MAP_GET_NEXT_KEY, attr)
        if rc < 0:
            if n == _errno.ENOENT:
                return
            _raise(MapError, BPF_MAP_GET_NEXT_KEY, n, f"map fd {fd}")
        key = nxt.raw
        yield key
        ctypes.memmove(cur, nxt, key_size)
        attr.key = ctypes.addressof(cur)


def _read_by_keys(fd: int, key_size: int, value_len: int) -> dict[bytes, bytes]:
    v = ctypes.create_string_buffer(value_len)
    k = ctypes.create_string_buffer(key_size)
    attr = _ElemAttr(fd, 0, ctypes.addressof(k), ctypes.addressof(v))
    out = {}
    for key in list(map_keys(fd, key_size)):
        ctypes.memmove(k, key, key_size)
        rc, n = _bpf(BPF_MAP_LOOKUP_ELEM, attr)
        if rc < 0:
            if n == _errno.ENOENT:       # deleted since the walk saw it
                continue
            _raise(MapError, BPF_MAP_LOOKUP_ELEM, n, f"map fd {fd}")
        out[key] = v.raw
    return out


_NO_BATCH = (_errno.EINVAL, _errno.ENOTSUP, _errno.EOPNOTSUPP, _ENOTSUPP)


class _NoBatch(Exception):
    """The map type has no batch lookup (errno in .args[0])."""


def _batches(fd: int, info: MapInfo) -> Iterator[tuple[int, bytes, bytes]]:
    """(count, keys, values) of successive BPF_MAP_LOOKUP_BATCH calls over the whole map;
    _NoBatch when the first call is refused for the map type."""
    ks, vs = info.key_size, info.value_len
    count = max(16, min(info.max_entries or 1, _BATCH_BYTES // max(1, ks + vs)))
    keys = ctypes.create_string_buffer(ks * count)
    vals = ctypes.create_string_buffer(vs * count)
    tok_in = ctypes.create_string_buffer(max(ks, 8))
    tok_out = ctypes.create_string_buffer(max(ks, 8))
    first = True
    while True:
        attr = _BatchAttr(0 if first else ctypes.addressof(tok_in), ctypes.addressof(tok_out),
                          ctypes.addressof(keys), ctypes.addressof(vals), count, fd, 0, 0)
        rc, n = _bpf(BPF_MAP_LOOKUP_BATCH, attr)
        got = attr.count if rc >= 0 or n in (_errno.ENOENT,) else 0
        if got:
            yield got, ctypes.string_at(keys, got * ks), ctypes.string_at(vals, got * vs)
        if rc < 0:
            if n == _errno.ENOENT:                       # the last batch
                return
            if n == _errno.ENOSPC and attr.count == 0:   # a hash bucket larger than count
                count *= 2
                keys = ctypes.create_string_buffer(ks * count)
                vals = ctypes.create_string_buffer(vs * count)
                continue
            if first and n in _NO_BATCH:
                raise _NoBatch(n)
            _raise(MapError, BPF_MAP_LOOKUP_BATCH, n, f"map fd {fd} ({info.name})")
        first = False
        ctypes.memmove(tok_in, tok_out, len(tok_out))


def map_lookup_batch(fd: int, info: MapInfo, *, fallback: bool = True) -> dict[bytes, bytes]:
    """Every element by BPF_MAP_LOOKUP_BATCH; for map types without batch support by
    get_next_key + lookup when `fallback`, else MapError (errno ENOTSUPP / EINVAL)."""
    ks, vs = info.key_size, info.value_len
    out: dict[bytes, bytes] = {}
    try:
        for got, kraw, vraw in _batches(fd, info):
            for i in range(got):
                out[kraw[i * ks:(i + 1) * ks]] = vraw[i * vs:(i + 1) * vs]
    except _NoBatch as e:
        if not fallback:
            _raise(MapError, BPF_MAP_LOOKUP_BATCH, e.args[0], f"map fd {fd} ({info.name})")
        return _read_by_keys(fd, ks, vs)
    return out


def map_count(fd: int, info: MapInfo) -> int:
    """How many elements: summed batch counts (get_next_key walk where batches are refused)."""
    try:
        return sum(got for got, _, _ in _batches(fd, info))
    except _NoBatch:
        return sum(1 for _ in map_keys(fd, info.key_size))


def _batch_call(cmd: int, fd: int, keys, values, count: int, flags: int) -> tuple[int, int]:
    attr = _BatchAttr(0, 0, ctypes.addressof(keys), ctypes.addressof(values) if values else 0,
                      count, fd, flags, 0)
    rc, n = _bpf(cmd, attr)
    if rc >= 0:
        return count, 0
    # the kernel writes back how many elements it took before the failing one; a call refused
    # as a whole (no batch op for the map type, bad attributes) leaves count as it was
    done = attr.count if attr.count < count else 0
    return done, n


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int,
                     flags: int = BPF_ANY) -> tuple[int, int]:
    """One BPF_MAP_UPDATE_BATCH of `count` elements (keys and values each packed back to back,
    per-CPU values for every possible CPU): the kernel writes them one by one in order and stops
    at the first it refuses. Returns (elements written, errno): errno 0 when all were; else
    element `written` failed, or the call was refused as a whole (written 0; ENOTSUPP / EINVAL
    where the map type has no batch update)."""
    k = ctypes.create_string_buffer(keys, len(keys))
    v = ctypes.create_string_buffer(values, len(values))
    return _batch_call(BPF_MAP_UPDATE_BATCH, fd, k, v, count, flags)


def map_delete_batch(fd: int, keys: bytes, count: int) -> tuple[int, int]:
    """One BPF_MAP_DELETE_BATCH of `count` keys, in order, stopping at the first refused (ENOENT
    for a key not there); (elements deleted, errno) as map_update_batch."""
    k = ctypes.create_string_buffer(keys, len(keys))
    return _batch_call(BPF_MAP_DELETE_BATCH, fd, k, None, count, 0)


class RawMap:
    """One BPF map by fd, bytes in and bytes out. `owner` keeps alive whatever holds the fd (a BCC
    table); without one, the RawMap owns the fd and closes it."""

    def __init__(self, fd: int, owner=None, name: str | None = None):
        self.fd, self._owner = fd, owner
        self._owns_fd = owner is None
        self.info = map_info(fd)
        self.name = name or self.info.name
        self.key_size, self.value_size = self.info.key_size, self.info.value_size
        self.max_entries, self.value_len = self.info.max_entries, self.info.value_len
        self.percpu = self.info.percpu
        self.is_array = self.info.type in ARRAY_TYPES
        self.keyless = self.info.type in KEYLESS_TYPES     # no elements to walk (a ring buffer)
        self.batch_ok = True        # False once the kernel refused a batch update / delete

    @classmethod
    def from_pin(cls, path: str, name: str | None = None) -> RawMap:
        fd = obj_get(path)
        try:
            return cls(fd, name=name or os.path.basename(path))
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _what(self, e: MapError) -> MapError:
        return MapError(f"{self.name}: {e}", errno=e.errno)

    def lookup(self, key: bytes) -> bytes | None:
        _buf(key, self.key_size, f"{self.name} key")
        try:
            return map_lookup(self.fd, key, self.value_len)
        except MapError as e:
            raise self._what(e) from None

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        _buf(key, self.key_size, f"{self.name} key")
        _buf(value, self.value_len, f"{self.name} value")
        try:
            map_update(self.fd, key, value, flags)
        except MapError as e:
            raise self._what(e) from None

    def delete(self, key: bytes) -> bool:
        """False when absent. An array slot cannot be deleted: it is zeroed (as BCC does)."""
        _buf(key, self.key_size, f"{self.name} key")
        try:
            if self.is_array:
                self.update(key, bytes(self.value_len))
                return True
            return map_delete(self.fd, key)
        except MapError as e:
            raise self._what(e) from None

    def per_cpu(self, value: bytes) -> bytes:
        """One value (value_size bytes) as a per-CPU map takes it: the same for every CPU."""
        slot = (self.value_size + 7) // 8 * 8
        return bytes(value).ljust(slot, b"\0") * (self.value_len // slot)

    def _batched(self, cmd: int, keys: list[bytes], values: list[bytes] | None,
                 flags: int) -> int:
        """Elements [0, n) written (or deleted) in batches of at most _BATCH_BYTES, in order;
        n < len(keys) when element n was refused, has the wrong size, or the map type takes no
        batches (remembered: the next call returns 0 at once)."""
        if not self.batch_ok or not keys:
            return 0
        ks, vs = self.key_size, self.value_len
        total = len(keys)
        bad = total
        if set(map(len, keys)) != {ks}:
            bad = next(i for i, k in enumerate(keys) if len(k) != ks)
        if values is not None and set(map(len, values[:bad])) - {vs}:
            bad = next(i for i, v in enumerate(values[:bad]) if len(v) != vs)
        per = max(1, _BATCH_BYTES // (ks + (vs if values is not None else 0)))
        done = 0
        while done < bad:
            stop = min(bad, done + per)
            kraw = b"".join(keys[done:stop])
            if values is None:
                got, n = map_delete_batch(self.fd, kraw, stop - done)
            else:
                got, n = map_update_batch(self.fd, kraw, b"".join(values[done:stop]),
                                          stop - done, flags)
            done += got
            if n:
                if got == 0 and n in (_ENOTSUPP, _errno.ENOTSUP, _errno.EOPNOTSUPP):
                    self.batch_ok = False       # this map type has no batch op
                return done
        return done

    def update_batch(self, keys: list[bytes], values: list[bytes], flags: int = BPF_ANY) -> int:
        """Write keys[i] = values[i] in order by BPF_MAP_UPDATE_BATCH (values value_len bytes
        each: per_cpu() for a per-CPU map); returns how many were written. Fewer than given: the
        element at that index was refused (or the map type takes no batch update): write the
        rest one by one with update() to learn why (the caller's fallback)."""
        return self._batched(BPF_MAP_UPDATE_BATCH, keys, values, flags)

    def delete_batch(self, keys: list[bytes]) -> int:
        """Delete keys in order by BPF_MAP_DELETE_BATCH; returns how many were deleted, as
        update_batch (a key not there stops the batch: delete() it and go on). Arrays: 0 (their
        delete is a zeroing update)."""
        if self.is_array:
            return 0
        return self._batched(BPF_MAP_DELETE_BATCH, keys, None, 0)

    def keys(self) -> Iterator[bytes]:
        if self.keyless:
            return iter(())
        return map_keys(self.fd, self.key_size)

    def read_raw(self) -> dict[bytes, bytes]:
        """Every element in batches (get_next_key where the map type has no batch lookup)."""
        if self.keyless:
            return {}
        try:
            return map_lookup_batch(self.fd, self.info)
        except MapError as e:
            raise self._what(e) from None

    def clear(self) -> None:
        for k in list(self.keys()):
            self.delete(k)

    def __len__(self) -> int:
        if self.keyless:
            return 0
        try:
            return map_count(self.fd, self.info)
        except MapError as e:
            raise self._what(e) from None
