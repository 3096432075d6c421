"""Services -> load balancer maps: a pure function from manifests and known pod addresses to the
contents of cilium_lb4_services_v2, cilium_lb4_backends_v3 and cilium_lb4_reverse_nat.

ClusterIPs not given in a manifest are allocated from serviceCIDR by hashing the service's name
and probing in name order, so every agent reading the same manifests picks the same address.
Service and backend ids are node-local and kept in the agent's state (stable across restarts).
Backends are the ready pods the selector matches, on any node; a named targetPort resolves to the
pod's container port of that name (a pod without it is not a backend of that port).

API:
    IdTable(table)                          persistent ids: service(key) / backend(key), prune()
    cluster_ips(services, cidr)             {service key: ClusterIP}
    build(manifests, pod_ips, ids, cidr)    -> Plan(maps, frontends_last, listing)
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

from datapath import abi

PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132}
SERVICE_MAPS = ("cilium_lb4_services_v2", "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat")


class IdTable:
    """{'services': {frontend: id}, 'backends': {addr:port/proto: id}} kept in the state file."""

    def __init__(self, table: dict):
        self.table = table
        table.setdefault("services", {})
        table.setdefault("backends", {})

    def _get(self, kind: str, key: str, limit: int) -> int:
        ids = self.table[kind]
        if key not in ids:
            used = set(ids.values())
            ids[key] = next(n for n in range(1, limit) if n not in used)
        return ids[key]

    def service(self, key: str) -> int:
        return self._get("services", key, 65536)

    def backend(self, key: str) -> int:
        return self._get("backends", key, 1 << 32)

    def prune(self, services: set[str], backends: set[str]) -> None:
        for kind, keep in (("services", services), ("backends", backends)):
            for k in set(self.table[kind]) - keep:
                del self.table[kind][k]


def cluster_ips(services, cidr: str) -> dict[str, str]:
    net = ipaddress.ip_network(cidr)
    out: dict[str, str] = {}
    taken = {s.clusterIP for s in services if s.clusterIP and s.clusterIP != "None"}
    size = net.num_addresses - 2
    for s in sorted(services, key=lambda s: s.key):
        if s.clusterIP == "None":
            continue
        if s.clusterIP:
            out[s.key] = s.clusterIP
            continue
        start = int.from_bytes(hashlib.sha256(s.key.encode()).digest()[:4], "big") % size
        for i in range(size):
            ip = str(net.network_address + 1 + (start + i) % size)
            if ip not in taken:
                taken.add(ip)
                out[s.key] = ip
                break
    return out


@dataclass
class Plan:
    maps: dict[str, dict[bytes, bytes]] = field(default_factory=lambda: {m: {} for m in SERVICE_MAPS})
    frontends_last: set[bytes] = field(default_factory=set)   # services_v2 keys written last
    listing: list[dict] = field(default_factory=list)          # for `service list`


def _target_port(pod, port) -> int | None:
    if isinstance(port.targetPort, int):
        return port.targetPort
    for c in pod.containers:
        for cp in c.ports:
            if cp.name == port.targetPort and cp.protocol == port.protocol:
                return cp.containerPort
    return None


def build(manifests, pod_ips: dict[str, str], ids: IdTable, cidr: str) -> Plan:
    """pod_ips: 'ns/name' -> IP of every ready pod in the cluster that this node knows."""
    plan = Plan()
    vips = cluster_ips(list(manifests.services.values()), cidr)
    used_services, used_backends = set(), set()
    for svc in sorted(manifests.services.values(), key=lambda s: s.key):
        vip = vips.get(svc.key)
        if not vip or svc.selector is None:
            continue            # headless, or endpoints from EndpointSlices (handled later)
        pods = [p for p in manifests.pods.values() if p.namespace == svc.namespace
                and p.key in pod_ips and svc.selector_dict.items() <= p.label_dict.items()]
        for port in svc.ports:
            proto = PROTO[port.protocol]
            fe = f"{svc.key}:{port.port}/{port.protocol}"
            sid = ids.service(fe)
            used_services.add(fe)
            backends = []
            for pod in sorted(pods, key=lambda p: p.key):
                tp = _target_port(pod, port)
                if tp is None:
                    continue
                bkey = f"{pod_ips[pod.key]}:{tp}/{port.protocol}"
                bid = ids.backend(bkey)
                used_backends.add(bkey)
                backends.append((bid, pod_ips[pod.key], tp, pod.key))
                plan.maps["cilium_lb4_backends_v3"][bytes(abi.Lb4BackendKey(bid))] = bytes(
                    abi.Lb4Backend(address=abi.ip4_to_be32(pod_ips[pod.key]), port=abi.be16(tp),
                                   proto=proto, flags=abi.BE_STATE_ACTIVE))
            key = abi.Lb4Key(address=abi.ip4_to_be32(vip), dport=abi.be16(port.port), proto=proto)
            for slot, (bid, *_rest) in enumerate(backends, start=1):
                k = abi.Lb4Key.from_bytes(bytes(key))
                k.backend_slot = slot
                plan.maps["cilium_lb4_services_v2"][bytes(k)] = bytes(
                    abi.Lb4Service(backend_id=bid, rev_nat_index=sid))
            affinity = svc.sessionAffinity == "ClientIP"
            plan.maps["cilium_lb4_services_v2"][bytes(key)] = bytes(abi.Lb4Service(
                count=len(backends), rev_nat_index=sid,
                backend_id=svc.affinityTimeout if affinity else 0,
                flags=abi.SVC_FLAG_AFFINITY if affinity else 0))
            plan.frontends_last.add(bytes(key))
            plan.maps["cilium_lb4_reverse_nat"][bytes(abi.Lb4ReverseNatKey(sid))] = bytes(
                abi.Lb4ReverseNat(address=abi.ip4_to_be32(vip), port=abi.be16(port.port)))
            plan.listing.append({
                "id": sid, "frontend": f"{vip}:{port.port}/{port.protocol}",
                "service": svc.key, "type": "ClusterIP",
                "sessionAffinity": svc.sessionAffinity,
                "backends": [{"id": b[0], "address": f"{b[1]}:{b[2]}/{port.protocol}",
                              "pod": b[3], "state": "active"} for b in backends]})
    ids.prune(used_services, used_backends)
    return plan
