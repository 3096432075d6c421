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
maglev each frontend also gets a lookup table (agent/lb/maglev.py) replaced whole in one write.

API:
    IdTable(table)                          persistent ids: service(key) / backend(key), prune()
    NodeView(node_ip, local_ips, ...)       what of this node the plan depends on
    cluster_ips(services, cidr)             {service key: ClusterIP}
    lb_ips(services, pools)                 {service key: LoadBalancer IP} (LB IPAM)
    node_ports(services, range)             {(service key, port index): nodePort}
    build(manifests, pod_ips, ids, cidr, view) -> Plan(maps, frontends_last, listing)
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import socket
from collections import defaultdict
from dataclasses import dataclass, field

from datapath import abi

from . import maglev

PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132}
_KEY, _SVC, _BE_KEY, _BE, _RN_KEY, _RN = (abi.Lb4Key, abi.Lb4Service, abi.Lb4BackendKey,
                                         abi.Lb4Backend, abi.Lb4ReverseNatKey, abi.Lb4ReverseNat)
SERVICE_MAPS = ("cilium_lb4_services_v2", "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat",
                "cilium_lb4_maglev")


class _Ids:
    """One kind of id: {key: id} (the state file's table), the ids in use, and no free id
    below the cursor (so a new id is O(1))."""
    __slots__ = ("ids", "used", "cursor", "limit", "what")

    def __init__(self, ids: dict, limit: int, what: str):
        self.ids, self.limit, self.what = ids, limit, what
        self.used, self.cursor = set(ids.values()), 1

    def get(self, key: str) -> int:
        n = self.ids.get(key)
        if n is None:
            used, n = self.used, self.cursor
            while n in used:
                n += 1
            if n >= self.limit:
                raise ValueError(f"no free {self.what} id below {self.limit}")
            self.ids[key] = n
            used.add(n)
            self.cursor = n + 1
        return n

    def release(self, key: str) -> None:
        n = self.ids.pop(key, None)
        if n is not None:
            self.used.discard(n)
            self.cursor = min(self.cursor, n)


class IdTable:
    """{'services': {frontend: id}, 'backends': {addr:port/proto: id}} kept in the state file."""

    def __init__(self, table: dict):
        self.table = table
        table.setdefault("services", {})
        table.setdefault("backends", {})
        self._kinds = {"services": _Ids(table["services"], 65536, "service"),
                       "backends": _Ids(table["backends"], 1 << 32, "backend")}
        self.service = self._kinds["services"].get      # service(key) -> id
        self.backend = self._kinds["backends"].get      # backend(key) -> id

    def release(self, kind: str, key: str) -> None:
        """Free one id ('services' or 'backends') for reuse."""
        self._kinds[kind].release(key)

    def prune(self, services: set[str], backends: set[str]) -> None:
        for kind, keep in (("services", services), ("backends", backends)):
            ids = self._kinds[kind]
            for k in set(ids.ids) - keep:
                ids.release(k)


@functools.lru_cache(maxsize=1 << 17)
def _hash32(key: str) -> int:
    """The first 32 bits of a name's SHA-256 (where its ClusterIP or nodePort search starts)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def cluster_ips(services, cidr: str) -> dict[str, str]:
    return ClusterIPs(cidr).full(services)


class ClusterIPs:
    """ClusterIP allocation, the same on every agent reading the same manifests: a service's
    spec.clusterIP when given; otherwise, services in name order, the first free address from
    where the hash of the name points. Kept incrementally (for 10k services a full pass is
    ~10 ms): a new service whose search met no later-named service's address, or a removed
    service whose address no other search skipped, changes nobody else; anything else falls
    back to the full pass, so the result is always what `full` gives."""

    def __init__(self, cidr: str):
        net = ipaddress.ip_network(cidr)
        self.base, self.size = int(net.network_address) + 1, net.num_addresses - 2
        self.ips: dict[str, str] = {}               # service key -> ClusterIP
        self._owner: dict[int, str] = {}            # address -> key ("" for a requested one)
        self._skipped: dict[int, int] = {}          # address -> searches that passed it
        self._path: dict[str, list[int]] = {}       # key -> the addresses its search passed
        self._spec: dict[str, str | None] = {}      # key -> spec.clusterIP

    def _ip(self, n: int) -> str:
        return socket.inet_ntoa(n.to_bytes(4, "big"))

    def full(self, services) -> dict[str, str]:
        self.ips, self._owner, self._skipped, self._path = {}, {}, {}, {}
        self._spec = {s.key: s.clusterIP for s in services}
        for s in services:
            if s.clusterIP and s.clusterIP != "None":
                self.ips[s.key] = s.clusterIP
                self._owner[int(ipaddress.IPv4Address(s.clusterIP))] = ""
        owner, ips, paths, base, size = self._owner, self.ips, self._path, self.base, self.size
        for key in sorted(s.key for s in services if not s.clusterIP):
            n = base + _hash32(key) % size          # (_search's first probe, inlined)
            if n in owner:
                self._search(key, later_ok=True)
            else:
                owner[n] = key
                ips[key] = socket.inet_ntoa(n.to_bytes(4, "big"))
                paths[key] = ()
        return self.ips

    def _search(self, key: str, later_ok: bool) -> bool:
        """Give `key` the first free address of its search; False (nothing changed) when it
        would pass an address a later-named service holds."""
        start, path = _hash32(key) % self.size, []
        for i in range(self.size):
            n = self.base + (start + i) % self.size
            holder = self._owner.get(n)
            if holder is None:
                self._owner[n] = key
                self.ips[key] = self._ip(n)
                self._path[key] = path
                for m in path:
                    self._skipped[m] = self._skipped.get(m, 0) + 1
                return True
            if holder and holder > key and not later_ok:
                return False
            path.append(n)
        return True                                 # the range is full: no address

    def update(self, services: dict, changed) -> set[str]:
        """Apply changed service keys; returns the keys whose ClusterIP changed."""
        moved: set[str] = set()
        for key in sorted(changed):
            svc = services.get(key)
            spec = svc.clusterIP if svc is not None else None
            if svc is None and key not in self._spec:
                continue
            if key in self._spec and svc is not None and spec == self._spec[key]:
                continue                            # allocation input unchanged
            if svc is None and not self._spec[key]:
                if self._remove(key):
                    moved.add(key)
                    continue
            elif svc is not None and key not in self._spec and not spec:
                self._spec[key] = spec
                if self._search(key, later_ok=False):
                    moved.add(key)
                    continue
            before = dict(self.ips)
            self.full(services.values())
            return moved | {k for k in before.keys() | self.ips.keys()
                            if before.get(k) != self.ips.get(k)}
        return moved

    def _remove(self, key: str) -> bool:
        del self._spec[key]
        ip = self.ips.get(key)
        if ip is None:
            return True
        n = int(ipaddress.IPv4Address(ip))
        if self._skipped.get(n):
            return False                            # someone searched past it: full pass
        del self.ips[key]
        del self._owner[n]
        for m in self._path.pop(key, ()):
            self._skipped[m] -= 1
            if not self._skipped[m]:
                del self._skipped[m]
        return True


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


class _Index:
    """Pods by (namespace, label, value) and EndpointSlices by (namespace, service), so finding a
    service's backends does not scan every pod (10k services x 30k pods); kept up to date one
    pod or slice at a time by the planner."""

    def __init__(self, manifests):
        self.by_label: dict[tuple[str, str, str], dict[str, object]] = defaultdict(dict)
        by_label = self.by_label
        for key, pod in manifests.pods.items():   # replace_pod(None, pod), inlined (30k pods)
            ns = pod.namespace                      # (the dict's key is pod.key)
            for k, v in pod.labels:
                by_label[(ns, k, v)][key] = pod
        self.slices: dict[tuple[str, str], dict[str, object]] = defaultdict(dict)
        for sl in manifests.endpointslices.values():
            self.replace_slice(None, sl)

    def replace_pod(self, old, new) -> None:
        for pod, add in ((old, False), (new, True)):
            if pod is None:
                continue
            for k, v in pod.labels:
                bucket = self.by_label[(pod.namespace, k, v)]
                if add:
                    bucket[pod.key] = pod
                else:
                    bucket.pop(pod.key, None)

    def replace_slice(self, old, new) -> None:
        for sl, add in ((old, False), (new, True)):
            if sl is None:
                continue
            bucket = self.slices[(sl.namespace, sl.serviceName)]
            if add:
                bucket[sl.key] = sl
            else:
                bucket.pop(sl.key, None)

    def slices_of(self, svc) -> list:
        got = self.slices.get((svc.namespace, svc.name), {})
        return [got[k] for k in sorted(got)]

    def selected(self, svc) -> list:
        """(key, pod) of the pods (in name order) a service's non-empty selector matches."""
        sel, ns = svc.selector, svc.namespace
        if len(sel) == 1:                  # the bucket is the answer
            k, v = sel[0]
            return sorted(self.by_label.get((ns, k, v), {}).items())   # (keys unique)
        lists = [self.by_label.get((ns, k, v), {}) for k, v in sel]
        smallest = min(lists, key=len)
        want = set(sel)
        return [(k, smallest[k]) for k in sorted(smallest) if want <= set(smallest[k].labels)]


def _endpoints(index, svc, port, pod_ips, view, pods=None) -> list[tuple[str, int, str, int, bool]]:
    """(ip, port, name, state, local) of a service port's backends, from pods or
    EndpointSlices; local: the backend is a pod on this node. `pods`: index.selected(svc) when
    the caller has it (one lookup for all of a service's ports)."""
    out = []
    if svc.selector is not None:
        local_ips = view.local_ips
        target = port.targetPort
        named = not isinstance(target, int)
        proto = port.protocol
        for key, pod in index.selected(svc) if pods is None else pods:
            ip = pod_ips.get(key)
            if ip is None or not pod.ready:
                continue
            if named:                      # the first container port of that name
                for c in pod.containers:
                    for cp in c.ports:
                        if cp.name == target and cp.protocol == proto:
                            break
                    else:
                        continue
                    break
                else:
                    continue
                tp = cp.containerPort
            else:
                tp = target
            out.append((ip, tp, key, _TERMINATING if pod.terminating else _ACTIVE,
                        ip in local_ips))
        return out
    for sl in index.slices_of(svc):
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


_ACTIVE, _TERMINATING = abi.BE_STATE_ACTIVE, abi.BE_STATE_TERMINATING
_STATE_NAMES = {_ACTIVE: "active", _TERMINATING: "terminating"}
# the struct.Structs' bound packs (no classmethod per key: 16 packs a service), and each
# address's / port's native integer computed once (backends and frontends repeat them)
_PACK_KEY, _PACK_SVC, _PACK_BE_KEY, _PACK_BE, _PACK_RN_KEY, _PACK_RN = (
    abi.packer(c).pack for c in (_KEY, _SVC, _BE_KEY, _BE, _RN_KEY, _RN))
be32 = functools.lru_cache(maxsize=1 << 17)(abi.ip4_to_be32)   # (desired.py too)
_be16 = functools.lru_cache(maxsize=1 << 16)(abi.be16)


_SVC_MAP, _BE_MAP, _RN_MAP, _MG_MAP = SERVICE_MAPS
_SCOPE_EXT, _SCOPE_INT = abi.LB_LOOKUP_SCOPE_EXT, abi.LB_LOOKUP_SCOPE_INT
_ROUTABLE, _EXT_LOCAL, _AFFINITY = (abi.SVC_FLAG_ROUTABLE, abi.SVC_FLAG_EXT_LOCAL_SCOPE,
                                    abi.SVC_FLAG_AFFINITY)
_INT_LOCAL, _TWO_SCOPES = abi.SVC_FLAG2_INT_LOCAL_SCOPE, abi.SVC_FLAG2_TWO_SCOPES


def _service_entries(svc, vip, lb_ip, nps, index, pod_ips, view, ids, users, by_address
                     ) -> _Built:
    """Everything one service puts in the LB maps on this node, with the ids it uses: counted
    as it goes in `users` ({"services": {key: n}, "backends": {key: n}}, defaultdicts) and
    `by_address` (an _Addresses: backend IP -> service keys), so no second pass walks them."""
    svc_map: dict[bytes, bytes] = {}
    be_map: dict[bytes, bytes] = {}
    rn_map: dict[bytes, bytes] = {}
    mg_map: dict[bytes, bytes] = {}
    late, fes, ports = [], [], []
    pack_key, pack_svc, pack_be_key, pack_be = _PACK_KEY, _PACK_SVC, _PACK_BE_KEY, _PACK_BE
    backend_id, service_id = ids.backend, ids.service
    known_backends, known_services = ids.table["backends"], ids.table["services"]
    service_users, backend_users = users["services"], users["backends"]
    first_at = by_address.one
    skey = svc.key
    int_local = svc.internalTrafficPolicy == "Local"
    ext_local = svc.externalTrafficPolicy == "Local"
    affinity = svc.sessionAffinity == "ClientIP"
    maglev_on = view.algorithm == "maglev"
    algo = abi.LB_ALGORITHM_MAGLEV if maglev_on else abi.LB_ALGORITHM_RANDOM
    head_word = (algo << abi.LB_ALGORITHM_SHIFT) | (svc.affinityTimeout if affinity else 0)
    plain = not (lb_ip or svc.externalIPs or svc.type != "ClusterIP")
    pods = index.selected(svc) if svc.selector is not None else None
    for i, port in enumerate(svc.ports):
        pname = port.protocol
        proto = PROTO[pname]
        # listed: (id, key, name, state, local, ip) of every backend (`service list`, and what
        # the ids and addresses are counted from); backends: the active ones (the slots)
        listed, all_active = [], True
        for ip, tp, who, state, local in _endpoints(index, svc, port, pod_ips, view, pods):
            bkey = f"{ip}:{tp}/{pname}"
            bid = known_backends.get(bkey) or backend_id(bkey)    # (ids start at 1)
            backend_users[bkey] += 1
            if first_at.setdefault(ip, skey) != skey:   # (by_address.add, inlined)
                by_address.more[ip].add(skey)
            be_map[pack_be_key(bid)] = pack_be(be32(ip), _be16(tp), proto, state, 0, 0)
            listed.append((bid, bkey, who, state, local, ip))
            if state != _ACTIVE:
                all_active = False
        ports.append(listed)
        backends = listed if all_active else [b for b in listed if b[3] == _ACTIVE]
        if int_local or ext_local:
            local = [b for b in backends if b[4]]
            internal = local if int_local else backends
            external = local if ext_local else backends
        else:
            internal = external = backends
        svc_port = f"{skey}:{port.port}/{pname}"
        if plain:                                 # (the common case, without the call)
            frontends = (("ClusterIP", vip, port.port, 0),) if vip else ()
        else:
            frontends = _frontends(svc, i, port, vip, lb_ip, nps.get((skey, i)), view)
        for kind, addr, fport, flags in frontends:
            fe = svc_port if kind == "ClusterIP" else f"{svc_port} {kind} {addr}:{fport}"
            sid = known_services.get(fe) or service_id(fe)
            service_users[fe] += 1
            flags2 = _INT_LOCAL if int_local else 0
            if kind == "ClusterIP":
                scopes = ((_SCOPE_EXT, internal),)
            else:
                flags |= _ROUTABLE
                if ext_local:
                    flags |= _EXT_LOCAL
                scopes = ((_SCOPE_EXT, external),)
                if internal != external:          # pods here see the internal set
                    flags2 |= _TWO_SCOPES
                    scopes += ((_SCOPE_INT, internal),)
            if affinity:
                flags |= _AFFINITY
            a, dp = be32(addr), _be16(fport)
            for scope, chosen in scopes:
                slot = 0
                for b in chosen:
                    slot += 1
                    svc_map[pack_key(a, dp, slot, proto, scope)] = pack_svc(b[0], 0, sid, 0, 0, 0)
                head = pack_key(a, dp, 0, proto, scope)
                svc_map[head] = pack_svc(head_word, slot, sid, flags, flags2, 0)
                late.append((_SVC_MAP, head))
            rn_key = _PACK_RN_KEY(sid)
            if maglev_on:
                # one table a frontend: its external backend set (the internal scope of a
                # two-scope service is picked at random: few flows, all from this node)
                mg_map[rn_key] = _maglev_lut(tuple((b[0], b[1]) for b in scopes[0][1]),
                                             view.maglev_size)
            rn_map[rn_key] = _PACK_RN(a, dp)
            fes.append((sid, fe, kind, addr, fport, pname, listed, scopes[0][1]))
    maps = {}
    if svc_map:
        maps[_SVC_MAP] = svc_map
    if be_map:
        maps[_BE_MAP] = be_map
    if rn_map:
        maps[_RN_MAP] = rn_map
    if mg_map:
        maps[_MG_MAP] = mg_map
    return _Built(maps, frozenset(late), svc, fes, ports)


@functools.lru_cache(maxsize=64)
def _maglev_lut(backends: tuple[tuple[int, str], ...], size: int) -> bytes:
    """The Maglev table's map value for a backend set, [(backend id, key)] (a pure function:
    services with one backend set, or one set seen again, share one table; the last 64 sets,
    4 MiB at the default size, 32 MiB at the largest)."""
    return abi.maglev_lut_bytes(maglev.build_table([(i, k, 1) for i, k in backends], size))


class _Built:
    """One service's share of the LB maps (a reconciler section: .maps, .late), and what it
    holds of the id tables; its `service list` rows are made when asked for (a cold build
    makes 10^4 of these: the fewer objects the better)."""
    __slots__ = ("maps", "late", "svc", "fes", "ports")

    def __init__(self, maps, late, svc, fes, ports):
        self.maps: dict[str, dict[bytes, bytes]] = maps
        self.late: frozenset = late
        self.svc = svc
        # (id, IdTable key, kind, address, port, protocol, listed, chosen) a frontend
        self.fes: list[tuple] = fes
        self.ports: list[list[tuple]] = ports     # each port's listed backends

    @property
    def frontends(self) -> list[str]:
        """IdTable service keys."""
        return [f[1] for f in self.fes]

    @property
    def backends(self) -> list[str]:
        """IdTable backend keys (once for each port that uses one)."""
        return [b[1] for listed in self.ports for b in listed]

    @property
    def addresses(self) -> set[str]:
        """Backend IPs (for local-IP changes)."""
        return {b[5] for listed in self.ports for b in listed}

    def frontend_count(self) -> int:
        """How many distinct frontends (address:port/protocol) `service list` shows."""
        fes = self.fes
        return len(fes) if len(fes) < 2 else len({f[3:6] for f in fes})

    @property
    def listing(self) -> list[dict]:
        """The `service list` rows: one a frontend, with the backends its external scope
        holds (and every terminating one)."""
        svc, out = self.svc, []
        for sid, _, kind, addr, fport, pname, listed, chosen in self.fes:
            if len(chosen) != len(listed) and listed:   # not every listed backend is in the set
                active_ids = {c[0] for c in chosen}
                listed = [b for b in listed if b[3] != _ACTIVE or b[0] in active_ids]
            out.append({
                "id": sid, "frontend": f"{addr}:{fport}/{pname}",
                "service": svc.key, "type": kind,
                "sessionAffinity": svc.sessionAffinity,
                "trafficPolicy": {"external": svc.externalTrafficPolicy,
                                  "internal": svc.internalTrafficPolicy},
                "backends": [{"id": bid, "address": bkey, "pod": who,
                              "state": _STATE_NAMES[state], "local": local}
                             for bid, bkey, who, state, local, _ in listed]})
        return out


class _Addresses:
    """Backend IP -> the keys of the services with a backend there (what a change of this
    node's local pod addresses rebuilds). Most addresses back one service: it is kept in `one`
    without a set of its own (30,000 sets at 10,000 services); the others in `more`."""
    __slots__ = ("one", "more")

    def __init__(self):
        self.one: dict[str, str] = {}
        self.more: dict[str, set[str]] = defaultdict(set)

    def add(self, ip: str, key: str) -> None:
        if self.one.setdefault(ip, key) != key:
            self.more[ip].add(key)

    def discard(self, ip: str, key: str) -> None:
        more = self.more.get(ip)
        if self.one.get(ip) == key:
            if more:                            # another service takes its place
                self.one[ip] = more.pop()
            else:
                del self.one[ip]
        elif more:
            more.discard(key)
        if more is not None and not more:
            del self.more[ip]

    def get(self, ip: str) -> set[str]:
        key = self.one.get(ip)
        return set() if key is None else {key} | self.more.get(ip, set())


class ServicePlanner:
    """services.build made incremental: each service's entries are kept, and a change rebuilds
    only the services it touches: a changed Service, the Services selecting a changed Pod (by
    its old and new labels) or a Pod whose address changed, the Service of a changed
    EndpointSlice, the Services whose ClusterIP, LoadBalancer IP or nodePort allocation moved,
    and, when this node's local pod addresses change, the Services with a backend there. Any
    other change of the node view rebuilds everything.

    update() returns {service key: (before, after)} (each a _Built, or None: absent) for what
    it rebuilt; ids a service
    stopped using are released on the next update (after the caller applied this one), so an
    id is never reused while a slot may still point to it."""

    def __init__(self, ids: IdTable, cidr: str):
        self.ids, self.cidr = ids, cidr
        self.built: dict[str, _Built] = {}
        self.manifests = None
        self.pod_ips: dict[str, str] = {}
        self.view: NodeView | None = None
        self.vips = ClusterIPs(cidr)
        self.lbs: dict[str, str] = {}
        self.nps: dict = {}
        self.index: _Index | None = None
        self._selecting: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self._by_address = _Addresses()            # backend IP -> services
        self._users = {"services": defaultdict(int), "backends": defaultdict(int)}
        self._release: list[tuple[str, str]] = []

    # ---- indexes ----
    def _index_service(self, svc, add: bool) -> None:
        for k, v in svc.selector or ():
            s = self._selecting[(svc.namespace, k, v)]
            (s.add if add else s.discard)(svc.key)

    def selecting(self, pod) -> set[str]:
        """Keys of the services (in the pod's namespace) whose selector matches its labels."""
        out = set()
        labels = pod.label_dict
        for k, v in pod.labels:
            for key in self._selecting.get((pod.namespace, k, v), ()):
                svc = self.manifests.services.get(key)
                if svc is not None and dict(svc.selector).items() <= labels.items():
                    out.add(key)
        return out

    # ---- planning ----
    def update(self, manifests, pod_ips: dict[str, str], view: NodeView,
               delta=None) -> dict[str, tuple[_Built | None, _Built | None]]:
        """Bring the kept entries to `manifests` / `pod_ips` / `view`. `delta` (a
        manifests.ManifestDelta) names what changed since the last call; None rebuilds all."""
        for kind, key in self._release:
            if not self._users[kind].get(key):
                self.ids.release(kind, key)
        self._release = []
        old_ms, old_ips, old_view = self.manifests, self.pod_ips, self.view
        full = delta is None or old_ms is None or old_view is None or \
            dataclasses.replace(view, local_ips=frozenset()) != \
            dataclasses.replace(old_view, local_ips=frozenset())
        self.manifests, self.pod_ips, self.view = manifests, pod_ips, view
        svcs = manifests.services
        dirty: set[str] = set()
        if full:
            self.index = _Index(manifests)
            self._selecting.clear()
            selecting = self._selecting
            for svc in svcs.values():                # _index_service(svc, True), inlined
                if svc.selector:
                    key, ns = svc.key, svc.namespace
                    for k, v in svc.selector:
                        selecting[(ns, k, v)].add(key)
            dirty = set(svcs) | set(self.built)
        else:
            dirty |= self._dirty_from_delta(delta, old_ms)
            if pod_ips is not old_ips:
                for key in {k for k in pod_ips.keys() | old_ips.keys()
                            if pod_ips.get(k) != old_ips.get(k)}:
                    pod = manifests.pods.get(key)
                    if pod is not None:
                        dirty |= self.selecting(pod)
            for ip in view.local_ips ^ old_view.local_ips:
                dirty |= self._by_address.get(ip)
        if full:
            self.vips.full(svcs.values())
        elif delta.services:
            dirty |= self.vips.update(svcs, delta.services)
        # LB IPAM and nodePorts: only LoadBalancer and NodePort services take part
        ext = ("NodePort", "LoadBalancer")
        if full or delta.ippools or any(
                s is not None and s.type in ext for k in delta.services
                for s in (old_ms.services.get(k), svcs.get(k))):
            lbs = lb_ips(svcs.values(), manifests.ippools.values())
            nps = node_ports(svcs.values(), view.node_port_range)
            dirty |= {k for k in self.lbs.keys() | lbs.keys() if self.lbs.get(k) != lbs.get(k)}
            dirty |= {k for k, _ in self.nps.keys() ^ nps.keys()}
            dirty |= {k for k, i in nps.keys() & self.nps.keys() if nps[(k, i)] != self.nps[(k, i)]}
            self.lbs, self.nps = lbs, nps
        out: dict[str, tuple[_Built | None, _Built | None]] = {}
        built, users, by_address = self.built, self._users, self._by_address
        index, lbs, nps, ids, vips = self.index, self.lbs, self.nps, self.ids, self.vips.ips
        for key in sorted(dirty):
            svc = svcs.get(key)
            vip = vips.get(key) if svc is not None else None
            old = built.pop(key, None)
            if old is not None:                 # its ids and addresses first: new counts them
                self._account(key, old, -1)
            try:
                new = _service_entries(svc, vip, lbs.get(key), nps, index, pod_ips, view, ids,
                                       users, by_address) if vip else None
            except BaseException:               # (no free id): keep what was
                if old is not None:
                    built[key] = old
                self._recount()                 # undo what the unfinished build counted
                raise
            if new is not None:
                built[key] = new
                out[key] = (old, new)
            elif old is not None:
                out[key] = (old, None)
        return out

    def _dirty_from_delta(self, delta, old_ms) -> set[str]:
        ms, dirty = self.manifests, set()
        for key in delta.services:
            dirty.add(key)
            for svc in (old_ms.services.get(key), ms.services.get(key)):
                if svc is not None:
                    self._index_service(svc, svc is ms.services.get(key))
        for key in delta.pods:
            old, new = old_ms.pods.get(key), ms.pods.get(key)
            self.index.replace_pod(old, new)
            for pod in (old, new):
                if pod is not None:
                    dirty |= self.selecting(pod)
        for key in delta.endpointslices:
            old, new = old_ms.endpointslices.get(key), ms.endpointslices.get(key)
            self.index.replace_slice(old, new)
            for sl in (old, new):
                if sl is not None:
                    dirty.add(f"{sl.namespace}/{sl.serviceName}")
        return dirty

    def _account(self, key: str, b: _Built, sign: int) -> None:
        """Id and address bookkeeping for one service's entries taken back (-1) or restored
        (+1); _service_entries counts what it builds itself. An id nobody uses is released on
        the next update, if still unused then."""
        for kind, keys in (("services", b.frontends), ("backends", b.backends)):
            users = self._users[kind]
            for k in keys:
                users[k] += sign
                if users[k] <= 0:
                    del users[k]
                    self._release.append((kind, k))
        for ip in b.addresses:
            (self._by_address.add if sign > 0 else self._by_address.discard)(ip, key)

    def _recount(self) -> None:
        """Id users and the address index counted again from what is built: after a build that
        failed half way (it counted part of a service it never finished). Ids nobody uses now
        are released on the next update, as _account releases them."""
        users = {"services": defaultdict(int), "backends": defaultdict(int)}
        by_address = _Addresses()
        for key, b in self.built.items():
            for kind, keys in (("services", b.frontends), ("backends", b.backends)):
                for k in keys:
                    users[kind][k] += 1
            for ip in b.addresses:
                by_address.add(ip, key)
        for kind, counted in self._users.items():
            self._release.extend((kind, k) for k in counted.keys() - users[kind].keys())
        self._users, self._by_address = users, by_address

    def prune_ids(self) -> None:
        """Forget the ids no kept service uses (services deleted while the agent was away)."""
        self.ids.prune(set(self._users["services"]), set(self._users["backends"]))

    def listing(self) -> list[dict]:
        return [row for key in sorted(self.built) for row in self.built[key].listing]


def build(manifests, pod_ips: dict[str, str], ids: IdTable, cidr: str,
          view: NodeView = NodeView()) -> Plan:
    """The whole service world at once (pod_ips: 'ns/name' -> IP of every pod in the cluster
    that this node knows); ids no service uses any more are released."""
    planner = ServicePlanner(ids, cidr)
    planner.update(manifests, pod_ips, view)
    plan = Plan()
    for key in sorted(planner.built):
        b = planner.built[key]
        for m, entries in b.maps.items():
            plan.maps[m].update(entries)
        plan.frontends_last |= {k for _, k in b.late}
        plan.listing += b.listing
    ids.prune(set(planner._users["services"]), set(planner._users["backends"]))
    return plan
