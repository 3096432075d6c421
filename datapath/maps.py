"""Typed access to the BPF maps through the abi.py mirrors. BCC's own ctypes types are used only
at the boundary (bytes in, bytes out), so abi.py stays the one Python description of each struct.

MAP_SPECS names every map the agent reads or writes with its key and value mirror.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from . import abi
from .errors import MapError

OpHook = Callable[[str, str, str], None]   # (map_name, operation, outcome)


@dataclass(frozen=True)
class MapSpec:
    name: str
    key: type
    value: type
    percpu: bool = False


MAP_SPECS = {s.name: s for s in (
    MapSpec("cilium_lxc", abi.EndpointKey, abi.EndpointInfo),
    MapSpec("dp_ep_ifindex", abi.EpIfindexKey, abi.EndpointKey),
    MapSpec("cilium_metrics", abi.MetricsKey, abi.MetricsValue, percpu=True),
    MapSpec("cilium_ipcache", abi.IpcacheKey, abi.RemoteEndpointInfo),
    MapSpec("dp_node_config", abi.U32Key, abi.NodeConfig),
    MapSpec("cilium_lb4_services_v2", abi.Lb4Key, abi.Lb4Service),
    MapSpec("cilium_lb4_backends_v3", abi.Lb4BackendKey, abi.Lb4Backend),
    MapSpec("cilium_lb4_reverse_nat", abi.Lb4ReverseNatKey, abi.Lb4ReverseNat),
    MapSpec("cilium_lb4_maglev", abi.Lb4ReverseNatKey, abi.Lb4MaglevLut),
    MapSpec("cilium_lb4_affinity", abi.Lb4AffinityKey, abi.LbAffinityVal),
    MapSpec("cilium_snat_v4_external", abi.Ipv4CtTuple, abi.Ipv4NatEntry),
    MapSpec("cilium_ipmasq_v4", abi.IpmasqKey, abi.U8Value),
    MapSpec("cilium_ct4_global", abi.Ipv4CtTuple, abi.CtEntry),
    MapSpec("cilium_ct_any4_global", abi.Ipv4CtTuple, abi.CtEntry),
    MapSpec("cilium_l2_responder_v4", abi.L2ResponderV4Key, abi.L2ResponderV4Stats),
    MapSpec("dp_netdev", abi.U32Key, abi.NetdevInfo),
    MapSpec("dp_agent_liveness", abi.U32Key, abi.AgentLiveness),
    MapSpec("cilium_policy_v2", abi.PolicyKey, abi.PolicyEntry),
    MapSpec("cilium_ipv4_frag_datagrams", abi.Ipv4FragId, abi.Ipv4FragL4Ports),
)}


class TypedMap:
    """One BPF map seen through its mirror types; every write reports to `on_op` (metrics)."""

    def __init__(self, table, spec: MapSpec, on_op: OpHook | None = None):
        self.table, self.spec, self.name = table, spec, spec.name
        self._on_op = on_op or (lambda *a: None)

    def _k(self, key):
        return self.table.Key.from_buffer_copy(bytes(key))

    def get(self, key):
        try:
            raw = self.table[self._k(key)]
        except KeyError:
            return None
        if self.spec.percpu:
            return [self.spec.value.from_bytes(bytes(v)) for v in raw]
        return self.spec.value.from_bytes(bytes(raw))

    def update(self, key, value) -> None:
        try:
            self.table[self._k(key)] = self.table.Leaf.from_buffer_copy(bytes(value))
        except Exception as e:
            self._on_op(self.name, "update", "fail")
            raise MapError(f"{self.name}: update {key!r} failed: {e}") from e
        self._on_op(self.name, "update", "success")

    def delete(self, key) -> bool:
        try:
            del self.table[self._k(key)]
        except KeyError:
            return False
        except Exception as e:
            self._on_op(self.name, "delete", "fail")
            raise MapError(f"{self.name}: delete {key!r} failed: {e}") from e
        self._on_op(self.name, "delete", "success")
        return True

    def items(self) -> Iterator[tuple]:
        for k, v in self.table.items():
            key = self.spec.key.from_bytes(bytes(k))
            if self.spec.percpu:
                yield key, [self.spec.value.from_bytes(bytes(x)) for x in v]
            else:
                yield key, self.spec.value.from_bytes(bytes(v))

    def clear(self) -> None:
        self.table.clear()

    def __len__(self) -> int:
        return sum(1 for _ in self.table.keys())


def open_maps(bpf_obj, on_op: OpHook | None = None) -> dict[str, TypedMap]:
    """Typed handles for every map in MAP_SPECS that the compiled object holds."""
    out = {}
    for name, spec in MAP_SPECS.items():
        try:
            table = bpf_obj[name]
        except KeyError:
            continue
        out[name] = TypedMap(table, spec, on_op)
    return out


def metrics_totals(m: TypedMap) -> dict[tuple[int, int], tuple[int, int]]:
    """Sum cilium_metrics over CPUs: {(reason, dir): (packets, bytes)}."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for k, per_cpu in m.items():
        c = sum(v.count for v in per_cpu)
        b = sum(v.bytes for v in per_cpu)
        pc, pb = out.get((k.reason, k.dir), (0, 0))
        out[(k.reason, k.dir)] = (pc + c, pb + b)
    return out
