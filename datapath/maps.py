"""Typed access to the BPF maps through the abi.py mirrors, over an fd-based raw map
(datapath/bpfsys.py RawMap: bytes in, bytes out), so abi.py stays the one Python description of
each struct and a map opens the same way from a BCC table (tests) or from its bpffs pin (agent).

MAP_SPECS names every map the agent reads or writes with its size, BPF map type and key and value
mirrors (tests/bpf/test_loader_adopt.py checks them against what BCC compiled). The ring buffer
cilium_events has no elements (NoData key and value): it is read by datapath/events.py; its
TypedMap only serves the pin checks.

API:
    TypedMap(raw, spec, on_op)      get / update / delete / items / clear / len, read_raw() (fast,
                                    batched), .spec, .name, .max_entries, .table (the RawMap),
                                    count(operation, outcome, n) (writes made on .table: a batch)
    open_maps(bpf_obj, on_op)       typed handles on a compiled BCC object's maps
    open_pinned(pin_dir, on_op)     typed handles on the maps pinned under pin_dir (no BCC)
    pin_layout_problem(path, spec, defines)   why a pinned map cannot serve as spec (type, key or
                                    value size, entries)
    drop_stale_pins(pin_dir, defines)   unlink the map pins of another layout (before a compile)
    metrics_totals(m)               cilium_metrics summed over CPUs
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Callable, Iterator

from . import abi, bpfsys
from .bpfsys import PERCPU_TYPES, RawMap
from .errors import BPFObjectError, MapError

OpHook = Callable[[str, str, str, int], None]   # (map_name, operation, outcome, elements)


class NoData(ctypes.Structure):
    """The key and value of a map that has none (a ring buffer: 0 bytes each)."""
    _fields_: list = []


@dataclass(frozen=True)
class MapSpec:
    name: str
    size: int | str     # max entries: a number, or the bpf/abi.h size constant (-D overridable)
    kind: int           # the BPF map type (bpfsys.MAP_*), as bpf/lib/maps.h declares it
    key: type
    value: type

    def max_entries(self, defines: dict | None = None) -> int:
        """The size a compile with these -D defines gives the map."""
        if isinstance(self.size, int):
            return self.size
        return int((defines or {}).get(self.size, getattr(abi, self.size)))

    @property
    def percpu(self) -> bool:
        return self.kind in PERCPU_TYPES


MAP_SPECS = {s.name: s for s in (
    MapSpec("cilium_lxc", "ENDPOINTS_MAP_SIZE", bpfsys.MAP_HASH,
            abi.EndpointKey, abi.EndpointInfo),
    MapSpec("dp_ep_ifindex", "ENDPOINTS_MAP_SIZE", bpfsys.MAP_HASH,
            abi.EpIfindexKey, abi.EndpointInfo),
    MapSpec("cilium_metrics", "METRICS_MAP_SIZE", bpfsys.MAP_PERCPU_ARRAY,
            abi.U32Key, abi.MetricsValue),
    MapSpec("cilium_ipcache", "IPCACHE_MAP_SIZE", bpfsys.MAP_LPM_TRIE,
            abi.IpcacheKey, abi.RemoteEndpointInfo),
    MapSpec("dp_node_config", 1, bpfsys.MAP_ARRAY, abi.U32Key, abi.NodeConfig),
    MapSpec("cilium_lb4_services_v2", "LB_SERVICE_MAP_MAX_ENTRIES", bpfsys.MAP_HASH,
            abi.Lb4Key, abi.Lb4Service),
    MapSpec("cilium_lb4_backends_v3", "LB_BACKENDS_MAP_MAX_ENTRIES", bpfsys.MAP_HASH,
            abi.Lb4BackendKey, abi.Lb4Backend),
    MapSpec("cilium_lb4_reverse_nat", "LB_REV_NAT_MAP_MAX_ENTRIES", bpfsys.MAP_HASH,
            abi.Lb4ReverseNatKey, abi.Lb4ReverseNat),
    MapSpec("cilium_lb4_maglev", "LB_MAGLEV_MAP_MAX_ENTRIES", bpfsys.MAP_HASH,
            abi.Lb4ReverseNatKey, abi.Lb4MaglevLut),
    MapSpec("cilium_lb4_affinity", "LB_AFFINITY_MAP_MAX_ENTRIES", bpfsys.MAP_LRU_HASH,
            abi.Lb4AffinityKey, abi.LbAffinityVal),
    MapSpec("cilium_snat_v4_external", "SNAT_MAPPING_IPV4_SIZE", bpfsys.MAP_LRU_HASH,
            abi.Ipv4CtTuple, abi.Ipv4NatEntry),
    MapSpec("cilium_ipmasq_v4", "IPMASQ_MAP_SIZE", bpfsys.MAP_LPM_TRIE,
            abi.IpmasqKey, abi.U8Value),
    MapSpec("cilium_ct4_global", "CT_MAP_SIZE_TCP", bpfsys.MAP_LRU_HASH,
            abi.Ipv4CtTuple, abi.CtEntry),
    MapSpec("cilium_ct_any4_global", "CT_MAP_SIZE_ANY", bpfsys.MAP_LRU_HASH,
            abi.Ipv4CtTuple, abi.CtEntry),
    MapSpec("cilium_l2_responder_v4", "L2_RESPONDER_MAP4_SIZE", bpfsys.MAP_HASH,
            abi.L2ResponderV4Key, abi.L2ResponderV4Stats),
    MapSpec("dp_netdev", "NETDEV_MAP_SIZE", bpfsys.MAP_HASH, abi.U32Key, abi.NetdevInfo),
    MapSpec("dp_agent_liveness", 1, bpfsys.MAP_ARRAY, abi.U32Key, abi.AgentLiveness),
    MapSpec("cilium_policy_v2", "POLICY_MAP_SIZE", bpfsys.MAP_LPM_TRIE,
            abi.PolicyKey, abi.PolicyEntry),
    MapSpec("cilium_ipv4_frag_datagrams", "IPV4_FRAG_DATAGRAMS_MAP_SIZE", bpfsys.MAP_LRU_HASH,
            abi.Ipv4FragId, abi.Ipv4FragL4Ports),
    MapSpec("dp_policy_revision", 1, bpfsys.MAP_ARRAY, abi.U32Key, abi.PolicyRevision),
    MapSpec("dp_xdp_flow4", "XDP_FLOW_MAP_SIZE", bpfsys.MAP_LRU_HASH, abi.XdpFlow4Key,
            abi.XdpFlow4),
    MapSpec("dp_xdp_flow_stats", "XDP_FLOW_STATS", bpfsys.MAP_PERCPU_ARRAY, abi.U32Key,
            abi.U64Value),
    MapSpec("cilium_events", "EVENTS_RING_SIZE", bpfsys.MAP_RINGBUF, NoData, NoData),
    MapSpec("dp_event_stats", "EVENT_STATS", bpfsys.MAP_PERCPU_ARRAY, abi.U32Key, abi.U64Value),
    MapSpec("dp_trace_state", 1, bpfsys.MAP_PERCPU_ARRAY, abi.U32Key, abi.TraceState),
)}


class TypedMap:
    """One BPF map seen through its mirror types; every write reports to `on_op` (metrics).
    `table` is the RawMap underneath (its `max_entries` too)."""

    def __init__(self, table: RawMap, spec: MapSpec, on_op: OpHook | None = None):
        self.table, self.spec, self.name = table, spec, spec.name
        self.max_entries = table.max_entries
        self._on_op = on_op or (lambda *a: None)
        self._slot = (table.value_size + 7) // 8 * 8     # one CPU's share of a per-CPU value

    def _value(self, raw: bytes):
        if self.spec.percpu:
            n = self._slot
            return [self.spec.value.from_bytes(raw[i:i + n][:self.table.value_size])
                    for i in range(0, len(raw), n)]
        return self.spec.value.from_bytes(raw)

    def _raw_value(self, value) -> bytes:
        """A per-CPU map takes one value per CPU (a list), or one value for every CPU."""
        if not self.spec.percpu:
            return bytes(value)
        per = list(value) if isinstance(value, (list, tuple)) else \
            [value] * (self.table.value_len // self._slot)
        return b"".join(bytes(v).ljust(self._slot, b"\0") for v in per)

    def get(self, key):
        raw = self.table.lookup(bytes(key))
        return None if raw is None else self._value(raw)

    def update(self, key, value) -> None:
        try:
            self.table.update(bytes(key), self._raw_value(value))
        except Exception as e:
            self._on_op(self.name, "update", "fail", 1)
            raise MapError(f"{self.name}: update {key!r} failed: {e}",
                           getattr(e, "errno", None)) from e
        self._on_op(self.name, "update", "success", 1)

    def delete(self, key) -> bool:
        try:
            found = self.table.delete(bytes(key))
        except Exception as e:
            self._on_op(self.name, "delete", "fail", 1)
            raise MapError(f"{self.name}: delete {key!r} failed: {e}",
                           getattr(e, "errno", None)) from e
        if not found:
            return False
        self._on_op(self.name, "delete", "success", 1)
        return True

    def count(self, operation: str, outcome: str, n: int) -> None:
        """Report n elements written by one call made on .table directly (a batch)."""
        self._on_op(self.name, operation, outcome, n)

    def read_raw(self) -> dict[bytes, bytes]:
        """Every entry as raw bytes, read in batches (one syscall per few thousand entries)."""
        return self.table.read_raw()

    def items(self) -> Iterator[tuple]:
        for k, v in self.table.read_raw().items():
            yield self.spec.key.from_bytes(k), self._value(v)

    def clear(self) -> None:
        self.table.clear()

    def __len__(self) -> int:
        return len(self.table)


def open_maps(bpf_obj, on_op: OpHook | None = None) -> dict[str, TypedMap]:
    """Typed handles for every map in MAP_SPECS that the compiled BCC object holds (the object
    keeps the fds; each handle keeps its table alive)."""
    out = {}
    for name, spec in MAP_SPECS.items():
        try:
            table = bpf_obj[name]
        except KeyError:
            continue
        out[name] = TypedMap(RawMap(table.map_fd, owner=table, name=name), spec, on_op)
    return out


def open_pinned(pin_dir: str, on_op: OpHook | None = None) -> dict[str, TypedMap]:
    """Typed handles for every map in MAP_SPECS pinned as pin_dir/<name> (no BCC)."""
    out = {}
    for name, spec in MAP_SPECS.items():
        path = os.path.join(pin_dir, name)
        try:
            raw = RawMap.from_pin(path, name=name)
        except BPFObjectError as e:
            if e.errno == 2:            # ENOENT: not pinned here
                continue
            raise
        out[name] = TypedMap(raw, spec, on_op)
    return out


def pin_layout_problem(path: str, spec: MapSpec, defines: dict | None = None) -> str | None:
    """Why the map pinned at path cannot serve as spec compiled with these -D defines (another
    type, key or value size, or number of entries: a pin left by an older version or another
    setting), or None when it can (or nothing is pinned there)."""
    try:
        raw = RawMap.from_pin(path, name=spec.name)
    except BPFObjectError as e:
        if e.errno == 2:
            return None
        raise
    try:
        info = raw.info
        want = (spec.kind, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value),
                spec.max_entries(defines))
        have = (info.type, info.key_size, info.value_size, info.max_entries)
        if have[:3] == want[:3] and (have[3] == want[3] or (
                info.type == bpfsys.MAP_LRU_HASH and
                want[3] <= have[3] < want[3] + bpfsys.possible_cpus())):
            return None     # an LRU with per-CPU lists is rounded up to a multiple of the CPUs
        what = "type {}, key {} B, value {} B, {} entries"
        return f"{what.format(*have)} pinned; the programs declare {what.format(*want)}"
    finally:
        raw.close()


def drop_stale_pins(pin_dir: str, defines: dict | None = None) -> list[str]:
    """Unlink every map pin in pin_dir whose layout a compile with these -D defines would not
    declare, so the compile creates the map anew instead of failing on (or silently misreading,
    or keeping the old size of) the old one. Programs still running keep their own reference.
    Returns "name: why" for each one."""
    dropped = []
    for name, spec in MAP_SPECS.items():
        path = os.path.join(pin_dir, name)
        why = pin_layout_problem(path, spec, defines)
        if why:
            os.unlink(path)
            dropped.append(f"{name}: {why}")
    return dropped


def metrics_totals(m: TypedMap) -> dict[tuple[int, int], tuple[int, int]]:
    """Sum cilium_metrics over CPUs: {(reason, dir): (packets, bytes)}, for the slots that
    counted anything (the array holds every slot)."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for k, per_cpu in m.items():
        c = sum(v.count for v in per_cpu)
        if c:
            out[abi.metrics_slot(k.index)] = (c, sum(v.bytes for v in per_cpu))
    return out
