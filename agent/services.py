"""Services -> load balancer maps: a pure function from manifests and known pod addresses to the
contents of cilium_lb4_services_v2, cilium_lb4_backends_v3, cilium_lb4_reverse_nat and
cilium_lb4_maglev.

ClusterIPs not given in a manifest are allocated from serviceCIDR by hashing the service's name
and probing in name order, so every agent reading the same manifests picks the same address.
Service and backend ids are node-local and kept in the agent's state (stable across restarts).
Backends are the pods the selector matches, on any node, as the endpoints controller lists them:
a ready pod is an active backend; a pod being deleted (deletionTimestamp) is a terminating
backend: it stays in the backends map so its flows finish, but leaves the slots so it gets no new
flows; a pod that is not ready is no backend. A named targetPort resolves to the pod's container
port of that name. A service without a selector takes its backends from its EndpointSlices
(ready -> active, terminating -> terminating).

Every service port has frontends, each with its own service id: the ClusterIP; for NodePort and
LoadBalancer services the nodePort on this node's IP; the LoadBalancer IP (LB IPAM, from
CiliumLoadBalancerIPPools); each externalIP. externalTrafficPolicy Local gives the external
frontends only this node's backends (a node without one has count 0: the datapath drops with
"Service backend not found"); internalTrafficPolicy Local does the same for pods' traffic.
When the two sets differ a frontend carries both: scope EXT (from outside) and scope INT (from
pods on this node), flagged SVC_FLAG2_TWO_SCOPES, as Cilium does. With loadBalancer.algorithm
maglev each frontend also gets a lookup table (agent/maglev.py) replaced whole in one write.

API:
    IdTable(table)                          persistent ids: service(key) / backend(key), prune()
    NodeView(node_ip, local_ips, ...)       what of this node the plan depends on
    cluster_ips(services, cidr)             {service key: ClusterIP}
    lb_ips(services, pools)                 {service key: LoadBalancer IP} (LB IPAM)
    node_ports(services, range)             {(service key, port index): nodePort}
    build(manifests, pod_ips, ids, cidr, view) -> Plan(maps, frontends_last, listing)
"""
from __future__ import annotations

import hashlib
import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field

from datapath import abi

from . import maglev

PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132}
SERVICE_MAPS = ("cilium_lb4_services_v2", "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat",
                "cilium_lb4_maglev")


class IdTable:
    """{'services': {frontend: id}, 'backends': {addr:port/proto: id}} kept in the state file."""

    def __init__(self, table: dict):
        self.table = table
        table.setdefault("services", {})
        table.setdefault("backends", {})
        # per kind: the ids in use, and no free id below the cursor (so a new id is O(1))
        self._used = {kind: set(table[kind].values()) for kind in ("services", "backends")}
        self._cursor = {kind: 1 for kind in ("services", "backends")}

    def _get(self, kind: str, key: str, limit: int) -> int:
        ids = self.table[kind]
        if key not in ids:
            used = self._used[kind]
            n = self._cursor[kind]
            while n in used:
                n += 1
            if n >= limit:
                raise ValueError(f"no free {kind[:-1]} id below {limit}")
            ids[key] = n
            used.add(n)
            self._cursor[kind] = n + 1
        return ids[key]

    def service(self, key: str) -> int:
        return self._get("services", key, 65536)

    def backend(self, key: str) -> int:
        return self._get("backends", key, 1 << 32)

    def prune(self, services: set[str], backends: set[str]) -> None:
        for kind, keep in (("services", services), ("backends", backends)):
            for k in set(self.table[kind]) - keep:
                n = self.table[kind].pop(k)
                self._used[kind].discard(n)
                self._cursor[kind] = min(self._cursor[kind], n)


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


@dataclass(frozen=True)
class NodeView:
    """What of this node the service plan depends on."""
    node_ip: str | None = None                   # NodePort frontends live on it
    local_ips: frozenset[str] = frozenset()      # pods on this node (Local traffic policies)
    node_name: str | None = None                 # EndpointSlice endpoints' nodeName
    node_port_range: tuple[int, int] = (30000, 32767)
    algorithm: str = "random"                    # loadBalancer.algorithm
    maglev_size: int = maglev.DEFAULT_TABLE_SIZE


def _selects(selector, labels: dict[str, str]) -> bool:
    return selector is None or dict(selector).items() <= labels.items()


def lb_ips(services, pools) -> dict[str, str]:
    """LB IPAM: {service key: LoadBalancer IP} for LoadBalancer services, from the
    CiliumLoadBalancerIPPools that select them. A requested spec.loadBalancerIP is honoured when
    a selecting pool holds it; otherwise services, in name order, take the first free address of
    the first selecting pool (pools in name order). A service no pool can serve gets none
    (pending, as with Cilium)."""
    live = [p for p in sorted(pools, key=lambda p: p.name) if not p.disabled]
    lbs = sorted((s for s in services if s.type == "LoadBalancer"), key=lambda s: s.key)
    out: dict[str, str] = {}
    taken: set[str] = set()
    for s in lbs:                                   # requested addresses first
        if s.loadBalancerIP and s.loadBalancerIP not in taken and any(
                _selects(p.serviceSelector, s.label_dict) and
                any(s.loadBalancerIP in b.addresses() for b in p.blocks) for p in live):
            out[s.key] = s.loadBalancerIP
            taken.add(s.loadBalancerIP)
    for s in lbs:
        if s.key in out or s.loadBalancerIP:
            continue
        for p in live:
            if not _selects(p.serviceSelector, s.label_dict):
                continue
            ip = next((a for a in p.addresses() if a not in taken), None)
            if ip:
                out[s.key] = ip
                taken.add(ip)
                break
    return out


def node_ports(services, port_range: tuple[int, int]) -> dict[tuple[str, int], int]:
    """{(service key, port index): nodePort} for NodePort and LoadBalancer services: the given
    nodePort, else one allocated from the range by hashing, the same on every node."""
    lo, hi = port_range
    size = hi - lo + 1
    out: dict[tuple[str, int], int] = {}
    ext = sorted((s for s in services if s.type in ("NodePort", "LoadBalancer")),
                 key=lambda s: s.key)
    taken = {(p.nodePort, p.protocol) for s in ext for p in s.ports if p.nodePort}
    for s in ext:
        for i, p in enumerate(s.ports):
            if p.nodePort:
                out[(s.key, i)] = p.nodePort
                continue
            h = hashlib.sha256(f"{s.key}/{i}".encode()).digest()
            start = int.from_bytes(h[:4], "big") % size
            for j in range(size):
                n = lo + (start + j) % size
                if (n, p.protocol) not in taken:
                    taken.add((n, p.protocol))
                    out[(s.key, i)] = n
                    break
    return out


def _target_port(pod, port) -> int | None:
    if isinstance(port.targetPort, int):
        return port.targetPort
    for c in pod.containers:
        for cp in c.ports:
            if cp.name == port.targetPort and cp.protocol == port.protocol:
                return cp.containerPort
    return None


class _Index:
    """Pods by (namespace, label, value) and EndpointSlices by (namespace, service), built once
    a plan, so finding a service's backends does not scan every pod (10k services x 30k pods)."""

    def __init__(self, manifests):
        self.by_label: dict[tuple[str, str, str], list] = defaultdict(list)
        for pod in sorted(manifests.pods.values(), key=lambda p: p.key):
            for k, v in pod.labels:
                self.by_label[(pod.namespace, k, v)].append(pod)
        self.slices: dict[tuple[str, str], list] = defaultdict(list)
        for sl in sorted(manifests.endpointslices.values(), key=lambda e: e.key):
            self.slices[(sl.namespace, sl.serviceName)].append(sl)

    def selected(self, svc) -> list:
        """The pods (in name order) a service's non-empty selector matches."""
        sel = svc.selector_dict
        lists = [self.by_label.get((svc.namespace, k, v), []) for k, v in sel.items()]
        return [p for p in min(lists, key=len) if sel.items() <= p.label_dict.items()]


def _endpoints(index, svc, port, pod_ips, view) -> list[tuple[str, int, str, int, bool]]:
    """(ip, port, name, state, local) of a service port's backends, from pods or
    EndpointSlices; local: the backend is a pod on this node."""
    out = []
    if svc.selector is not None:
        for pod in index.selected(svc):
            if pod.key not in pod_ips or not pod.ready:
                continue
            tp = _target_port(pod, port)
            if tp is not None:
                state = abi.BE_STATE_TERMINATING if pod.terminating else abi.BE_STATE_ACTIVE
                ip = pod_ips[pod.key]
                out.append((ip, tp, pod.key, state, ip in view.local_ips))
        return out
    for sl in index.slices.get((svc.namespace, svc.name), []):
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
                    local = addr in view.local_ips or (
                        view.node_name is not None and ep.nodeName == view.node_name)
                    out.append((addr, p.port, f"{sl.key} {addr}", state, local))
    return out


def _frontends(svc, i, port, vip, lb_ip, node_port, view) -> list[tuple[str, str, int, int]]:
    """(kind, address, port, SVC_FLAG_*) of every frontend one service port has on this node."""
    out = [("ClusterIP", vip, port.port, 0)] if vip else []
    if node_port and view.node_ip:
        out.append(("NodePort", view.node_ip, node_port, abi.SVC_FLAG_NODEPORT))
    if lb_ip:
        out.append(("LoadBalancer", lb_ip, port.port, abi.SVC_FLAG_LOADBALANCER))
    for ip in svc.externalIPs:
        out.append(("ExternalIP", ip, port.port, abi.SVC_FLAG_EXTERNAL_IP))
    return out


def build(manifests, pod_ips: dict[str, str], ids: IdTable, cidr: str,
          view: NodeView = NodeView()) -> Plan:
    """pod_ips: 'ns/name' -> IP of every pod in the cluster that this node knows."""
    plan = Plan()
    svcs = list(manifests.services.values())
    vips = cluster_ips(svcs, cidr)
    lbs = lb_ips(svcs, manifests.ippools.values())
    nps = node_ports(svcs, view.node_port_range)
    index = _Index(manifests)
    used_services, used_backends = set(), set()
    names = {abi.BE_STATE_ACTIVE: "active", abi.BE_STATE_TERMINATING: "terminating"}
    svc_map = plan.maps["cilium_lb4_services_v2"]
    for svc in sorted(svcs, key=lambda s: s.key):
        vip = vips.get(svc.key)
        if not vip:
            continue            # headless
        for i, port in enumerate(svc.ports):
            proto = PROTO[port.protocol]
            backends, listed = [], []     # backends: (id, ip, local) of active backends
            for ip, tp, who, state, local in _endpoints(index, svc, port, pod_ips, view):
                bkey = f"{ip}:{tp}/{port.protocol}"
                bid = ids.backend(bkey)
                used_backends.add(bkey)
                plan.maps["cilium_lb4_backends_v3"][bytes(abi.Lb4BackendKey(bid))] = bytes(
                    abi.Lb4Backend(address=abi.ip4_to_be32(ip), port=abi.be16(tp),
                                   proto=proto, flags=state))
                listed.append({"id": bid, "address": bkey, "pod": who, "state": names[state],
                               "local": local})
                if state == abi.BE_STATE_ACTIVE:      # terminating: no slot, no new flows
                    backends.append((bid, bkey, local))
            local = [b for b in backends if b[2]]
            internal = local if svc.internalTrafficPolicy == "Local" else backends
            external = local if svc.externalTrafficPolicy == "Local" else backends
            affinity = svc.sessionAffinity == "ClientIP"
            algo = abi.LB_ALGORITHM_MAGLEV if view.algorithm == "maglev" \
                else abi.LB_ALGORITHM_RANDOM
            for kind, addr, fport, flags in _frontends(svc, i, port, vip, lbs.get(svc.key),
                                                      nps.get((svc.key, i)), view):
                fe = f"{svc.key}:{port.port}/{port.protocol}" if kind == "ClusterIP" else \
                    f"{svc.key}:{port.port}/{port.protocol} {kind} {addr}:{fport}"
                sid = ids.service(fe)
                used_services.add(fe)
                flags2 = abi.SVC_FLAG2_INT_LOCAL_SCOPE \
                    if svc.internalTrafficPolicy == "Local" else 0
                if kind == "ClusterIP":
                    scopes = [(abi.LB_LOOKUP_SCOPE_EXT, internal)]
                else:
                    flags |= abi.SVC_FLAG_ROUTABLE
                    if svc.externalTrafficPolicy == "Local":
                        flags |= abi.SVC_FLAG_EXT_LOCAL_SCOPE
                    scopes = [(abi.LB_LOOKUP_SCOPE_EXT, external)]
                    if internal != external:          # pods here see the internal set
                        flags2 |= abi.SVC_FLAG2_TWO_SCOPES
                        scopes.append((abi.LB_LOOKUP_SCOPE_INT, internal))
                if affinity:
                    flags |= abi.SVC_FLAG_AFFINITY
                key = abi.Lb4Key(address=abi.ip4_to_be32(addr), dport=abi.be16(fport),
                                 proto=proto)
                for scope, chosen in scopes:
                    for slot, (bid, _, _) in enumerate(chosen, start=1):
                        k = abi.Lb4Key.from_bytes(bytes(key))
                        k.backend_slot, k.scope = slot, scope
                        svc_map[bytes(k)] = bytes(abi.Lb4Service(backend_id=bid,
                                                                 rev_nat_index=sid))
                    head = abi.Lb4Key.from_bytes(bytes(key))
                    head.scope = scope
                    svc_map[bytes(head)] = bytes(abi.Lb4Service(
                        count=len(chosen), rev_nat_index=sid, flags=flags, flags2=flags2,
                        backend_id=(algo << abi.LB_ALGORITHM_SHIFT) |
                        (svc.affinityTimeout if affinity else 0)))
                    plan.frontends_last.add(bytes(head))
                if algo == abi.LB_ALGORITHM_MAGLEV:
                    # one table a frontend: its external backend set (the internal scope of a
                    # two-scope service is picked at random: few flows, all from this node)
                    table = maglev.build_table([(b, k, 1) for b, k, _ in scopes[0][1]],
                                               view.maglev_size)
                    plan.maps["cilium_lb4_maglev"][
                        bytes(abi.Lb4ReverseNatKey(sid))] = abi.maglev_lut_bytes(table)
                plan.maps["cilium_lb4_reverse_nat"][bytes(abi.Lb4ReverseNatKey(sid))] = bytes(
                    abi.Lb4ReverseNat(address=abi.ip4_to_be32(addr), port=abi.be16(fport)))
                plan.listing.append({
                    "id": sid, "frontend": f"{addr}:{fport}/{port.protocol}",
                    "service": svc.key, "type": kind,
                    "sessionAffinity": svc.sessionAffinity,
                    "trafficPolicy": {"external": svc.externalTrafficPolicy,
                                      "internal": svc.internalTrafficPolicy},
                    "backends": [b for b in listed if b["state"] != "active" or
                                 b["id"] in {c[0] for c in scopes[0][1]}]})
    ids.prune(used_services, used_backends)
    return plan
