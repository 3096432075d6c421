"""Services -> load balancer maps: a pure function from manifests and known pod addresses to the
contents of cilium_lb4_services_v2, cilium_lb4_backends_v3 and cilium_lb4_reverse_nat.

ClusterIPs not given in a manifest are allocated from serviceCIDR by hashing the service's name
and probing in name order, so every agent reading the same manifests picks the same address.
Service and backend ids are node-local and kept in the agent's state (stable across restarts).
Backends are the pods the selector matches, on any node, as the endpoints controller lists them:
a ready pod is an active backend; a pod being deleted (deletionTimestamp) is a terminating
backend: it stays in the backends map so its flows finish, but leaves the slots so it gets no new
flows; a pod that is not ready is no backend. A named targetPort resolves to the pod's container
port of that name. A service without a selector takes its backends from its EndpointSlices
(ready -> active, terminating -> terminating).

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


def _endpoints(manifests, svc, port, pod_ips) -> list[tuple[str, int, str, int]]:
    """(ip, port, name, state) of a service port's backends, from pods or EndpointSlices."""
    out = []
    if svc.selector is not None:
        for pod in sorted(manifests.pods.values(), key=lambda p: p.key):
            if pod.namespace != svc.namespace or pod.key not in pod_ips or not pod.ready or \
                    not svc.selector_dict.items() <= pod.label_dict.items():
                continue
            tp = _target_port(pod, port)
            if tp is not None:
                state = abi.BE_STATE_TERMINATING if pod.terminating else abi.BE_STATE_ACTIVE
                out.append((pod_ips[pod.key], tp, pod.key, state))
        return out
    for sl in manifests.slices_for(svc):
        ports = [p for p in sl.ports if p.protocol == port.protocol and
                 (p.name == port.name or (len(sl.ports) == 1 and len(svc.ports) == 1))]
        for p in ports:
            for ep in sl.endpoints:
                if ep.terminating and ep.serving:
                    state = abi.BE_STATE_TERMINATING
                elif ep.ready:
                    state = abi.BE_STATE_ACTIVE
                else:
                    continue
                for addr in ep.addresses:
                    out.append((addr, p.port, f"{sl.key} {addr}", state))
    return out


def build(manifests, pod_ips: dict[str, str], ids: IdTable, cidr: str) -> Plan:
    """pod_ips: 'ns/name' -> IP of every pod in the cluster that this node knows."""
    plan = Plan()
    vips = cluster_ips(list(manifests.services.values()), cidr)
    used_services, used_backends = set(), set()
    names = {abi.BE_STATE_ACTIVE: "active", abi.BE_STATE_TERMINATING: "terminating"}
    for svc in sorted(manifests.services.values(), key=lambda s: s.key):
        vip = vips.get(svc.key)
        if not vip:
            continue            # headless
        for port in svc.ports:
            proto = PROTO[port.protocol]
            fe = f"{svc.key}:{port.port}/{port.protocol}"
            sid = ids.service(fe)
            used_services.add(fe)
            backends, listed = [], []
            for ip, tp, who, state in _endpoints(manifests, svc, port, pod_ips):
                bkey = f"{ip}:{tp}/{port.protocol}"
                bid = ids.backend(bkey)
                used_backends.add(bkey)
                plan.maps["cilium_lb4_backends_v3"][bytes(abi.Lb4BackendKey(bid))] = bytes(
                    abi.Lb4Backend(address=abi.ip4_to_be32(ip), port=abi.be16(tp),
                                   proto=proto, flags=state))
                listed.append({"id": bid, "address": f"{ip}:{tp}/{port.protocol}", "pod": who,
                               "state": names[state]})
                if state == abi.BE_STATE_ACTIVE:      # terminating: no slot, no new flows
                    backends.append(bid)
            key = abi.Lb4Key(address=abi.ip4_to_be32(vip), dport=abi.be16(port.port), proto=proto)
            for slot, bid in enumerate(backends, start=1):
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
                "sessionAffinity": svc.sessionAffinity, "backends": listed})
    ids.prune(used_services, used_backends)
    return plan
