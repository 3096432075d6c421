"""The node's desired datapath, built by section for the incremental reconciler
(agent/reconciler.py): what the agent's state (endpoints, cluster view, manifests, policy, L2
leadership, config) asks of the maps, tc filters, XDP programs and routes.

Sections, and what rebuilds each:
    ("node",)        node config, masquerade exclusions, native devices, L2 responder entries,
                     the ipcache rows of world, host addresses and remote nodes: every build
    ("endpoints",)   cilium_lxc, dp_ep_ifindex and the ipcache rows of local endpoints: every build
    ("policy",)      cilium_policy_v2 and the CIDR identities' ipcache rows: every build (the
                     policy engine caches per endpoint, so an unchanged policy costs little)
    ("cluster",)     the ipcache rows of remote endpoints: when the cluster view changes
    ("svc", key)     one service's LB entries: when services.ServicePlanner says it changed and
                     admission.Admission finds room for it in the service maps (a service
                     that does not fit is refused whole: no section; logged once a change)
Facts about the node's devices (addresses, MACs, subnets) are read with `ip` only when
`refresh_facts` runs (at start and on the agent's slow tick), never per reconcile. Sections
share no key: a policy's CIDR row for an address an endpoint, a remote pod or the node owns is
left out (the more specific identity wins, as before). A build runs with the cyclic collector
paused, and a big one (a full rebuild) freezes what it made (agent/gcpause.py).

API:
    NodeFacts.read(cfg) -> NodeFacts
    DesiredBuilder(agent)
        .build(rec, delta)       set every section that may have changed on `rec`
        .refresh_facts()
        .listing                 `service list` rows (the programmed services)
        .refused                 {service key: the full map} (services not programmed)
        .settled(failed) -> bool after a flush: True when room appeared for a refused service
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from datapath import abi

from . import gcpause, netdev
from .lb import admission, l2announce, services
from .identity import RESERVED
from .reconcile import TUNNEL_DEVICE, DatapathState
from .reconciler import Reconciler, Section

VXLAN_DEVICE = TUNNEL_DEVICE
log_svc = logging.getLogger("datapath.service")     # cilium_errors_warnings_total subsystem


def service_map_capacity(dp) -> dict[str, int]:
    """{service map: max entries} of the maps the node's datapath holds."""
    maps = getattr(dp, "maps", None) or {}
    return {m: maps[m].max_entries for m in services.SERVICE_MAPS if m in maps}


@dataclass
class NodeFacts:
    """What the node's devices look like, read once and reused until refreshed."""
    host_addresses: list[str] = field(default_factory=list)
    ifindex: dict[str, int] = field(default_factory=dict)        # configured devices present
    mac: dict[str, str] = field(default_factory=dict)
    subnets: dict[str, list] = field(default_factory=dict)
    vxlan_ifindex: int = 0

    @classmethod
    def read(cls, cfg) -> "NodeFacts":
        f = cls(host_addresses=netdev.host_addresses(), vxlan_ifindex=netdev.ifindex(VXLAN_DEVICE))
        for dev in cfg.devices:
            i = netdev.ifindex(dev)
            if i:
                f.ifindex[dev] = i
                f.mac[dev] = netdev.mac(dev)
                f.subnets[dev] = netdev.device_subnets(dev)
        return f


def merge_deltas(a, b):
    """Two manifest deltas as one (None: everything changed)."""
    if a is None or b is None:
        return None
    return a.merged(b)


class _Tags(dict):
    """program name -> its tag, looked up in the datapath on first use."""

    def __init__(self, dp):
        super().__init__()
        self.dp = dp

    def __missing__(self, name: str) -> str:
        tag = self[name] = self.dp.program(name)[1]
        return tag


class DesiredBuilder:
    def __init__(self, agent):
        self.agent = agent
        self.facts = NodeFacts()
        self.planner = services.ServicePlanner(agent.lb_ids, agent.cfg.serviceCIDR)
        self.admission = admission.Admission(service_map_capacity(agent.dp))
        self._cluster_key = None                    # the cluster view's generation last built
        self._cluster_rows: dict[bytes, bytes] = {}
        self._pod_memo: tuple | None = None         # (key, pod_ips, pod_identity)

    @property
    def listing(self) -> list[dict]:
        got = self.admission.admitted
        return [row for key in sorted(got) for row in got[key].listing]

    @property
    def refused(self) -> dict[str, str]:
        return dict(self.admission.refused)

    def settled(self, failed=()) -> bool:
        """After a flush (`failed`: its failed ops): the service maps' deleted keys are gone;
        True when that made room for a refused service (sync again)."""
        still: dict[str, set[bytes]] = {}
        for op in failed:
            if op.kind == "map_delete" and op.target in services.SERVICE_MAPS:
                still.setdefault(op.target, set()).add(op.key)
        return self.admission.settled(still)

    def refresh_facts(self) -> None:
        self.facts = NodeFacts.read(self.agent.cfg)

    # ---- the parts ----
    def _live(self) -> list:
        return [ep for ep in self.agent.endpoints.values()
                if ep.identity and ep.state not in ("disconnecting", "disconnected")]

    def _pods(self, live) -> tuple[dict[str, str], dict[str, int], set[int]]:
        """pod key -> IP and pod key -> identity for every pod of the cluster this node knows,
        and the identities in use; the same objects come back while nothing changed (the
        service planner compares by `is`)."""
        a = self.agent
        key = (a.cluster_gen, tuple((ep.pod_key, ep.ip, ep.identity) for ep in live))
        if self._pod_memo is None or self._pod_memo[0] != key:
            ips, idents = {}, {}
            for ip, r in a.remote_endpoints.items():
                if r.get("pod"):
                    k = f"{r['namespace']}/{r['pod']}"
                    ips[k], idents[k] = ip, int(r["identity"])
            for ep in live:
                ips[ep.pod_key], idents[ep.pod_key] = ep.ip, ep.identity
            self._pod_memo = (key, ips, idents, set(idents.values()) | set(RESERVED.values()))
        return self._pod_memo[1:]

    def build(self, rec: Reconciler, delta) -> None:
        # a full build makes ~10^6 long-lived objects: no collection meanwhile, frozen after
        with gcpause.paused(freeze_over=100_000):
            self._build(rec, delta)

    def _build(self, rec: Reconciler, delta) -> None:
        a = self.agent
        live = self._live()
        pod_ips, pod_identity, used = self._pods(live)

        eps = {"cilium_lxc": {}, "dp_ep_ifindex": {}, "cilium_ipcache": {}}
        for ep in live:
            for m, (k, v) in ep.map_entries().items():
                eps[m][k] = v
            eps["cilium_ipcache"][bytes(abi.ipcache_key(f"{ep.ip}/32"))] = \
                bytes(abi.remote_endpoint_info(ep.identity))
        rec.set_section(("endpoints",), Section(maps=eps))

        if self._cluster_key != a.cluster_gen:
            self._cluster_key = a.cluster_gen
            key, info = abi.packer(abi.IpcacheKey).pack, abi.packer(abi.RemoteEndpointInfo).pack
            be32 = services.be32        # (cached: a node's address repeats for all its pods)
            host32 = abi.IPCACHE_PREFIX_BASE + 32
            self._cluster_rows = {key(host32, 0, abi.ENDPOINT_KEY_IPV4, be32(ip)):
                                  info(int(r["identity"]), be32(r["hostIP"]), 0, 0, 0)
                                  for ip, r in a.remote_endpoints.items()}
            rec.set_section(("cluster",), Section(maps={"cilium_ipcache": self._cluster_rows}))
        node = self._node_section()
        rec.set_section(("node",), node)

        # policy: the CIDR identities' ipcache rows, except where an endpoint, a remote pod or
        # the node itself owns the address (those rows win, as a more specific identity)
        a.policy.set_identities({n: lbl for n, lbl in a.known_identities().items() if n in used})
        pst = DatapathState(maps={"cilium_ipcache": {}})
        taken = (eps["cilium_ipcache"], self._cluster_rows, node.maps["cilium_ipcache"])

        def cidr_row(cidr, identity):      # (0.0.0.0/0 is world: the engine gives it no row)
            k = bytes(abi.ipcache_key(cidr))
            if not any(k in t for t in taken):
                pst.maps["cilium_ipcache"][k] = bytes(abi.remote_endpoint_info(identity))
        a.policy.desired(pst, live, a.manifests.pods, pod_identity, cidr_row)
        rec.owned_prefix.update(pst.owned_prefix)
        rec.set_section(("policy",), Section(maps=pst.maps))

        self._services(rec, pod_ips, delta)
        rec.set_links(*self._links(live))

    def _services(self, rec: Reconciler, pod_ips: dict, delta) -> None:
        a, cfg = self.agent, self.agent.cfg
        if self.planner.cidr != cfg.serviceCIDR:   # every ClusterIP moves: start over
            for key in self.admission.admitted:
                rec.set_section(("svc", key), None)
            self.planner = services.ServicePlanner(a.lb_ids, cfg.serviceCIDR)
            fresh = admission.Admission(self.admission.capacity)
            for m, keys in self.admission.lingering.items():
                fresh.occupied(m, keys)
            for m, refs in self.admission._refs.items():
                fresh.occupied(m, refs)             # deleted only by the next flush
            self.admission = fresh
        view = services.NodeView(
            node_ip=a.node_ip if a.node_ip != "127.0.0.1" else None,
            local_ips=frozenset(ep.ip for ep in a.endpoints.values() if ep.identity),
            node_name=cfg.nodeName, node_port_range=cfg.nodePortRange,
            algorithm=cfg.lbAlgorithm, maglev_size=cfg.maglevTableSize)
        planned = self.planner.update(a.manifests, pod_ips, view, delta)
        refused_before = dict(self.admission.refused)
        changed = self.admission.update(planned)
        self._log_refusals(refused_before)
        counts = {"add": 0, "delete": 0, "update": 0}
        set_section = rec.set_section
        for key, (old, built) in changed.items():
            set_section(("svc", key), built)      # (a _Built is a section: .maps, .late)
            if old is None or built is None:        # every frontend added, or deleted
                b = built or old
                counts["add" if old is None else "delete"] += \
                    len(b.fes) if len(b.fes) < 2 else b.frontend_count()
                continue
            before = {s["frontend"]: s for s in old.listing}
            after = {s["frontend"]: s for s in built.listing}
            counts["add"] += len(after.keys() - before.keys())
            counts["delete"] += len(before.keys() - after.keys())
            counts["update"] += sum(after[fe] != before[fe] for fe in after.keys() & before.keys())
        for what, n in counts.items():
            if n:
                a.metrics.services_events.labels(what).inc(n)

    def _log_refusals(self, before: dict[str, str]) -> None:
        """One line a change: a service refused (or refused for another map), a refused
        service programmed or gone."""
        now, got = self.admission.refused, self.admission
        for key in sorted(now):
            if before.get(key) != now[key]:
                m = now[key]
                log_svc.error("service %s refused: map %s is full (%d of %d entries used); "
                              "none of its entries is written", key, m, got.used(m),
                              got.capacity[m])
        for key in sorted(before.keys() - now.keys()):
            if key in got.admitted:
                log_svc.info("service %s programmed: the service maps have room now", key)

    def _node_section(self) -> Section:
        a, cfg, f = self.agent, self.agent.cfg, self.facts
        ipc: dict[bytes, bytes] = {}

        def ipcache(cidr, identity, tunnel=None):
            ipc[bytes(abi.ipcache_key(cidr))] = bytes(abi.remote_endpoint_info(identity, tunnel))
        ipcache("0.0.0.0/0", abi.IDENTITY_WORLD)
        for ip in f.host_addresses:               # what the node's own packets may come from
            ipcache(f"{ip}/32", abi.IDENTITY_HOST)
        for node in a.remote_nodes.values():
            ipcache(f"{node['ip']}/32", abi.IDENTITY_REMOTE_NODE)
        maps = {"cilium_ipcache": ipc, "cilium_ipmasq_v4": {}}
        tunnel = cfg.routingMode == "tunnel"
        flags = abi.NODE_CFG_F_TUNNEL if tunnel else abi.NODE_CFG_F_HOST_ROUTING
        if cfg.bpfMasquerade:
            flags |= abi.NODE_CFG_F_MASQUERADE
            for cidr in self.masquerade_exclusions():
                maps["cilium_ipmasq_v4"][bytes(abi.ipmasq_key(cidr))] = bytes(abi.U8Value(1))
        if cfg.l2Enabled and cfg.lbAcceleration == "disabled":
            flags |= abi.NODE_CFG_F_XDP_L2_ONLY      # XDP for ARP only: NodePort stays in tc
        node_cfg = abi.NodeConfig(flags=flags, tunnel_ifindex=f.vxlan_ifindex if tunnel else 0,
                                  node_ip=abi.ip4_to_be32(a.node_ip))
        maps["dp_node_config"] = {bytes(abi.U32Key(0)): bytes(node_cfg)}
        maps["dp_netdev"] = {bytes(abi.U32Key(i)): bytes(abi.NetdevInfo(
            mac=abi.mac_to_bytes(f.mac[d]))) for d, i in f.ifindex.items()}
        maps["cilium_l2_responder_v4"] = self._l2_entries()
        return Section(maps=maps)

    def _l2_entries(self) -> dict[bytes, bytes]:
        """With l2announcements, the addresses of the services this node leads."""
        a = self.agent
        out: dict[bytes, bytes] = {}
        if a.l2 is None:
            return out
        devs = self.facts.ifindex
        local = {ep.pod_key for ep in a.endpoints.values() if ep.identity and
                 ep.state not in ("disconnecting", "disconnected")}
        a.l2_selection = l2announce.select(a.manifests, a.cfg.nodeName, list(devs), local)
        a.l2.set_candidates(a.l2_selection)
        mine = a.l2.mine
        for svc, sel in a.l2_selection.items():
            if svc not in mine:
                continue
            for ip in sel.ips:
                for d in sel.devices:
                    out[bytes(abi.l2_responder_key(ip, devs[d]))] = \
                        bytes(abi.L2ResponderV4Stats())
        return out

    def _links(self, live) -> tuple[dict, dict, dict]:
        a, cfg = self.agent, self.agent.cfg
        tags = _Tags(a.dp)          # (looked up when a link needs one)
        tc, xdp = {}, {}
        for ep in live:
            tc[(ep.host_ifname, "ingress")] = ("from-container", tags["from-container"])
            tc[(ep.host_ifname, "egress")] = ("to-container", tags["to-container"])
        for dev in self.facts.ifindex:
            tc[(dev, "ingress")] = ("from-netdev", tags["from-netdev"])
            if cfg.l2Enabled or cfg.lbAcceleration != "disabled":
                xdp[dev] = ("xdp", tags["xdp"])
            # NodePort replies from local backends get their frontend back on every device
            prog = "to-netdev" if cfg.bpfMasquerade and dev in self.masquerade_devices() \
                else "to-netdev-nomasq"
            tc[(dev, "egress")] = (prog, tags[prog])
        routes = {}
        if cfg.routingMode == "tunnel" and self.facts.vxlan_ifindex:   # (made at agent start)
            tc[(VXLAN_DEVICE, "ingress")] = ("from-overlay", tags["from-overlay"])
            # each peer's pod CIDR through the tunnel, so the node's own packets reach remote
            # pods, as Cilium's routes through cilium_host do in tunnel mode
            routes = {str(ipaddress.ip_network(n["podCIDR"])): (n["ip"], VXLAN_DEVICE)
                      for n in a.remote_nodes.values()}
        elif cfg.autoDirectNodeRoutes:
            routes = self._direct_routes()
        return tc, xdp, routes

    def _direct_routes(self) -> dict[str, tuple[str, str]]:
        """Routes to each peer's pod CIDR via its node IP, for peers on a device's own subnet."""
        out = {}
        for node in self.agent.remote_nodes.values():
            ip = ipaddress.ip_address(node["ip"])
            for dev, nets in self.facts.subnets.items():
                if any(ip in net for net in nets):
                    out[str(ipaddress.ip_network(node["podCIDR"]))] = (node["ip"], dev)
                    break
        return out

    # ---- masquerade ----
    def masquerade_exclusions(self) -> list[str]:
        """Destinations that keep the pod's address, as Cilium's BPF masquerade decides: the
        native-routing CIDR (else this node's pod CIDR); with ip-masq-agent, its
        nonMasqueradeCIDRs and link-local unless masqLinkLocal."""
        cfg = self.agent.cfg
        out = {cfg.ipv4NativeRoutingCIDR or cfg.podCIDR}
        if cfg.ipMasqAgentEnabled:
            out |= set(cfg.nonMasqueradeCIDRs)
            if not cfg.masqLinkLocal:
                out.add("169.254.0.0/16")
        else:
            out.add("169.254.0.0/16")
        return sorted(out)

    def masquerade_devices(self) -> list[str]:
        """The native devices that masquerade (egressMasqueradeInterfaces narrows them)."""
        cfg = self.agent.cfg
        sel = cfg.egressMasqueradeInterfaces
        if not sel:
            return list(cfg.devices)
        return [d for d in cfg.devices
                if any(d == s or (s.endswith("+") and d.startswith(s[:-1])) for s in sel)]
