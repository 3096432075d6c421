"""The agent daemon: owns one node's datapath.

It loads the config and manifests, keeps endpoints, identities and IP allocations as state,
turns them into the desired datapath (agent/reconcile.py) and applies only the differences. It
watches the config file and the manifests directory: a bad change is rejected whole (logged,
shown in `status`, counted in cilium_errors_warnings_total) and the last good state stays.
SIGTERM stops the agent but leaves programs attached and maps pinned; the next agent adopts them.
"""
from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import socket
import subprocess
import threading
import time

from prometheus_client import start_http_server

from datapath import abi
from datapath.errors import APIError, ConfigError, DatapathError
from datapath import loader
from datapath.loader import NodeDatapath, ct_map_defines, lb_map_defines, monitor_defines

from . import api, ctgc, inspect, netdev
from .lb import l2announce, services
from .cluster import ClusterSync, ClusterView
from .config import RESTART_KEYS, changed_keys, load_config
from .endpoint import Endpoint, next_endpoint_id
from .health import NodeHealth
from .identity import RESERVED, LocalIdentityStore, security_labels
from .ipam import HostIPAM
from .kvstore import EtcdClient, EtcdIdentityStore
from .desired import DesiredBuilder, merge_deltas
from .manifests import EMPTY_DELTA, ManifestDelta, ManifestSet, ManifestStore
from .metrics import AgentMetrics
from .monitor import AgentView, MonitorSubsystem
from .policy.subsystem import PolicySubsystem
from .reconcile import TUNNEL_DEVICE
from .reconciler import Reconciler
from .state import StateFile
from .watch import FileWatcher

log = logging.getLogger("datapath.agent")
log_ep = logging.getLogger("datapath.endpoint")
log_cfg = logging.getLogger("datapath.config")
log_rec = logging.getLogger("datapath.reconcile")
log_cl = logging.getLogger("datapath.kvstore")

RESYNC_SECONDS = 10.0     # the slow tick: vanished interfaces, pending identities, devices
WATCH_SECONDS = 1.0       # the longest the main loop sleeps without an event
STOP_SECONDS = 20.0       # SIGTERM to exit at most (then every stack is logged and it exits)
SAVE_SECONDS = 1.0        # the state file is written at most this often (endpoint changes: at once)
VXLAN_DEVICE = TUNNEL_DEVICE
TUNNEL_OVERHEAD = 50      # outer Ethernet + IPv4 + UDP + VXLAN
MANIFEST_CACHE = "manifests.cache"   # in stateDir: the parsed manifests across restarts


def _empty_manifests() -> ManifestSet:
    return ManifestSet(namespaces={}, pods={}, ignored=[])


class Agent:
    def __init__(self, config_path: str):
        self.config_path = os.path.abspath(config_path)
        self.cfg = load_config(self.config_path)
        self.store = ManifestStore(self.cfg.manifests, cache=os.path.join(
            self.cfg.stateDir, MANIFEST_CACHE)) if self.cfg.manifests else None
        self.manifests = self.store.load() if self.store else _empty_manifests()
        # what changed in the manifests since the last sync (None: everything)
        self._delta: ManifestDelta | None = None
        self.watcher = self._watch()
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.started = time.time()
        self.last_error: str | None = None
        self.last_reload = time.time()
        self.metrics = AgentMetrics()
        logging.getLogger("datapath").addHandler(self.metrics.log_handler())
        self.state_file = StateFile(self.cfg.stateDir)
        self.state = self.state_file.load()
        self.cluster: ClusterSync | None = None
        client = None
        if self.cfg.kvstore == "etcd":
            client = EtcdClient(self.cfg.kvstoreEndpoints)
            self.identities = EtcdIdentityStore(client)
            self.cluster = ClusterSync(client, self.cfg.clusterName, self.cfg.nodeName,
                                       self.cfg.kvstoreLeaseTTL, self._on_cluster_change,
                                       on_error=lambda err: self.metrics.kvstore_quorum_errors
                                       .labels(err).inc())
        else:
            self.identities = LocalIdentityStore(self.state["identities"])
        cfg = self.cfg
        self.l2 = l2announce.L2Announcer(
            client, cfg.clusterName, cfg.nodeName, cfg.l2LeaseDuration, cfg.l2LeaseRenewDeadline,
            cfg.l2LeaseRetryPeriod, on_change=lambda: self.trigger("L2 leadership changed"),
            heartbeat=self._l2_heartbeat) if cfg.l2Enabled else None
        self.l2_selection: dict[str, l2announce.Selection] = {}
        self._l2_thread = None
        # the last cluster view, kept in the state file so a restarted agent adopts the routes
        # and ipcache entries it finds instead of deleting them before its first kvstore sync
        self.view = ClusterView(self.cfg.nodeName, self.cfg.kvstoreLeaseTTL,
                                self.state.get("cluster") or {})
        self.cluster_gen = 0          # bumped whenever the cluster view is replaced
        self._view_lock = threading.RLock()
        self.node_ip = netdev.node_ip(self.cfg)
        self.lb_ids = services.IdTable(self.state.setdefault("lb_ids", {}))
        self.ipam = HostIPAM(self.cfg.podCIDR, self.state["ipam"])
        self.endpoints: dict[str, Endpoint] = {
            cid: Endpoint.from_dict(d) for cid, d in self.state["endpoints"].items()}
        if self.cluster:     # the restored pods forward meanwhile: keep their place at once
            self._publish(restored=True)
            self.cluster.publish_early()
        self.dp = NodeDatapath(self.cfg.pin_dir(), on_op=self.metrics.map_op, defines={
            "NODEPORT_PORT_MIN_NAT": self.cfg.natPortRange[0],
            "NODEPORT_PORT_MAX_NAT": self.cfg.natPortRange[1],
            "LB_MAGLEV_LUT_SIZE": self.cfg.maglevTableSize,
            **lb_map_defines(self.cfg.lbMapMax),
            **ct_map_defines(self.cfg.ctTcpMax, self.cfg.ctAnyMax),
            **monitor_defines(self.cfg.monitorAggregation, self.cfg.monitorInterval)})
        log.info("programs %s", "adopted from their pins (no compile)" if self.dp.adopted
                 else f"compiled: {self.dp.why_compiled}")
        self.policy = PolicySubsystem(self.cfg, self.state, self.metrics)
        self.policy.load(self.manifests)
        self.health = NodeHealth(lambda: {n: r["ip"] for n, r in self.remote_nodes.items()})
        # labels of identities other nodes allocated (immutable), kept for restarts
        self._remote_identity_labels: dict[int, tuple[str, ...]] = {
            int(k): tuple(v) for k, v in self.state.setdefault("identity_labels", {}).items()}
        self.metrics.bind(self)
        self.monitor = MonitorSubsystem(self.cfg, self.metrics, AgentView(self))
        self.rec = Reconciler(counters=frozenset({"cilium_l2_responder_v4"}))
        self.builder = DesiredBuilder(self)
        self._dirty: set[str] = set()        # reasons for a sync not run yet
        self._wake = threading.Event()       # set by trigger() from other threads
        self._last_sync = 0.0
        self._unsaved = False
        self._reread = False                 # SIGHUP: re-read config and every manifest
        self._retry_paths: set[str] = set()  # changed files a rejected reload did not take
        self._api = None
        self._metrics_srv = None
        self._cluster_thread = None

    # ---- state ----
    def save(self) -> None:
        self.state["endpoints"] = {cid: ep.to_dict() for cid, ep in self.endpoints.items()}
        self.state_file.save(self.state)
        self._unsaved = False

    def _watch(self) -> FileWatcher:
        return FileWatcher([self.config_path] + ([self.cfg.manifests] if self.cfg.manifests
                                                 else []))

    def endpoint_state_counts(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for ep in self.endpoints.values():
                out[ep.state] = out.get(ep.state, 0) + 1
            return out

    def identity_counts(self) -> dict[str, int]:
        return {"reserved": len(RESERVED), "cluster_local": len(self.identities.table)}

    @property
    def pod_mtu(self) -> int:
        return self.cfg.mtu - (TUNNEL_OVERHEAD if self.cfg.routingMode == "tunnel" else 0)

    # ---- cluster (kvstore) ----
    @property
    def remote_nodes(self) -> dict[str, dict]:          # name -> {ip, podCIDR}
        return self.view.nodes

    @property
    def remote_endpoints(self) -> dict[str, dict]:      # ip -> record
        return self.view.endpoints

    def _on_cluster_change(self, nodes: dict, endpoints: dict) -> None:
        with self._view_lock:     # the kvstore's thread and the hold's end: one view at a time
            good_nodes, good_eps = self.view.offer(nodes, endpoints)
            self._learn_identities({rec["identity"] for rec in good_eps.values()})
            with self.lock:
                self.view.replace(good_nodes, good_eps)
                self.cluster_gen += 1
                self.state["cluster"] = {"nodes": good_nodes, "endpoints": good_eps}
                self._unsaved = True
        self.trigger("cluster changed")

    def _publish(self, restored: bool = False) -> None:
        """Hand the cluster sync this node's record and its ready endpoints (restored: those
        the state file had ready whose interface is still there, before the first sync)."""
        if not self.cluster:
            return
        node = {"name": self.cfg.nodeName, "ip": self.node_ip, "podCIDR": self.cfg.podCIDR,
                "cluster": self.cfg.clusterName}
        eps = {ep.ip: {"ip": ep.ip, "identity": ep.identity, "hostIP": self.node_ip,
                       "node": self.cfg.nodeName, "namespace": ep.namespace, "pod": ep.pod}
               for ep in self.endpoints.values() if ep.identity and ep.state == "ready"
               and (not restored or netdev.iface_exists(ep.host_ifname))}
        self.cluster.set_local(node, eps)

    # ---- identities ----
    def _learn_identities(self, idents: set[int]) -> bool:
        """Labels of identities other nodes allocated (immutable, so fetched once each);
        True when some were learned."""
        learned = False
        for n in sorted(idents - set(self._remote_identity_labels)):
            try:
                labels = self.identities.labels_of(n)
            except DatapathError as e:
                log_cl.warning("labels of identity %d not known yet: %s", n, e)
                continue
            if labels is not None:
                self._remote_identity_labels[n] = labels
                self.state["identity_labels"][str(n)] = list(labels)
                learned = True
        return learned

    def known_identities(self) -> dict[int, tuple[str, ...]]:
        """Every identity this node knows, with its labels: reserved, allocated here or seen
        in the cluster."""
        out = dict(self._remote_identity_labels)
        out.update({ep.identity: tuple(ep.labels) for ep in self.endpoints.values()
                    if ep.identity})
        out.update({n: tuple(k.split(";")) if k else () for k, n in
                    self.identities.table.items()})
        out.update({n: (f"reserved:{name}",) for name, n in RESERVED.items()})
        return out

    def _resolve_identity(self, ep: Endpoint) -> None:
        pod = self.manifests.pods.get(ep.pod_key)
        if pod is not None:
            labels = security_labels(ep.namespace, pod.label_dict,
                                     self.manifests.namespace_labels(ep.namespace),
                                     pod.serviceAccountName)
            ep.from_manifest = True
        else:
            labels = security_labels(ep.namespace, ep.pod_labels,
                                     self.manifests.namespace_labels(ep.namespace))
        try:
            ident, created = self.identities.allocate(labels)
        except DatapathError as e:      # kvstore unreachable: keep what we have, retry later
            log_ep.warning("identity for endpoint %d (%s) not resolved yet: %s", ep.id,
                           ep.pod_key, e)
            if not ep.identity:
                ep.state = "waiting-for-identity"
            return
        if created:
            log_ep.info("allocated identity %d for %s", ident, ";".join(labels))
        if (ident, list(labels)) != (ep.identity, ep.labels):
            if ep.identity:
                log_ep.info("endpoint %d (%s) moves from identity %d to %d", ep.id, ep.pod_key,
                            ep.identity, ident)
            ep.identity, ep.labels = ident, list(labels)
            ep.state = "regenerating"

    # ---- reconcile ----
    def _l2_heartbeat(self, max_age: float) -> None:
        self.dp.maps["dp_agent_liveness"].update(abi.U32Key(0), abi.AgentLiveness(
            last_seen=time.monotonic_ns(), max_age=int(max_age * 1e9)))

    def map_pressure(self) -> dict[str, float]:
        """Entries / max entries of the maps that fill with traffic or cluster size."""
        out = {}
        for name in ("cilium_lxc", "cilium_ipcache", "cilium_policy_v2", "cilium_lb4_services_v2",
                     "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat", "cilium_lb4_affinity",
                     "cilium_ct4_global", "cilium_ct_any4_global", "cilium_snat_v4_external"):
            m = self.dp.maps.get(name)
            if m is not None:
                out[name] = len(m) / m.table.max_entries
        return out

    def _interfaces(self) -> set[str]:
        out = {ep.host_ifname for ep in self.endpoints.values()} | set(self.cfg.devices)
        if netdev.iface_exists(VXLAN_DEVICE):
            out.add(VXLAN_DEVICE)
        return {i for i in out if netdev.iface_exists(i)}

    def trigger(self, reason: str) -> None:
        """Ask for a sync; the main loop runs it, coalescing a burst (reconciler.minInterval)."""
        self._dirty.add(reason)
        self._wake.set()

    def reconcile(self, reason: str, full: bool = False) -> int:
        """Bring the datapath to the desired state: incrementally (only what changed since the
        last sync), or, with `full`, by reading everything back and repairing drift. Returns
        how many operations failed."""
        with self.lock:
            delta, self._delta = self._delta, EMPTY_DELTA
            dirty, self._dirty = self._dirty, set()
            try:
                self.builder.build(self.rec, delta)
            except Exception:
                self._delta, self._dirty = None, dirty | {"rebuild after an error"}
                raise
            failed_targets: set = set()

            def on_error(op, e):
                failed_targets.update({op.target, op.key})
                log_rec.error("%s failed: %s", op, e)

            if full:
                res = self.rec.full(self.dp, self._interfaces(), set(self.builder.facts.ifindex),
                                    on_error)
            else:
                res = self.rec.flush(self.dp, on_error)
            self.metrics.reconciled(full, res)
            if self.builder.settled([op for op, _ in res.failed]):
                self.trigger("service maps have room")   # a refused service may fit now
            if "cilium_policy_v2" in res.by_target() or not self.policy.revision(self.dp):
                self.policy.bump_revision(self.dp)     # after the writes: re-decide flows
            self._last_sync = time.monotonic()
            self.policy.applied(not res.failed)
            if res.ops:
                log_rec.info("%s reconcile (%s): %d ops, %d failed in %.1f ms",
                             "full" if full else "incremental", reason, len(res.ops),
                             len(res.failed), res.seconds * 1e3)
                if full and not reason.startswith("startup"):
                    log_rec.warning("full reconcile repaired drift: %s", res.by_target())
            for ep in self.endpoints.values():
                if ep.state not in ("regenerating", "restoring", "not-ready"):
                    continue
                mine = {ep.host_ifname} | {k for k, _ in ep.map_entries().values()} | \
                    self.policy.row_keys(ep.id)
                if mine & failed_targets:
                    ep.state = "not-ready"
                    self.metrics.regenerations.labels("fail").inc()
                else:
                    ep.state = "ready"
                    self.metrics.regenerations.labels("success").inc()
            if res.ops:
                self._unsaved = True     # written by the main loop within SAVE_SECONDS
            self._publish()
            return len(res.failed)

    # ---- endpoints ----
    def create_endpoint(self, cid: str, body: dict) -> dict:
        req = ("ifname", "host_ifname", "ip", "mac", "host_mac", "netns", "namespace", "pod")
        missing = [k for k in req if not body.get(k)]
        if missing:
            raise APIError(f"endpoint {cid}: missing fields {', '.join(missing)}", 400)
        with self.lock:
            owner = self.ipam.owner_of(body["ip"])
            if owner != cid:
                raise APIError(f"endpoint {cid}: {body['ip']} is not allocated to this "
                               f"container (owner {owner})", 409)
            try:
                ifindex = socket.if_nametoindex(body["host_ifname"])
            except OSError:
                raise APIError(f"endpoint {cid}: no interface {body['host_ifname']} on this "
                               "node", 400) from None
            ep = self.endpoints.get(cid)
            if ep is None:
                ep = Endpoint(id=self._new_endpoint_id(), container_id=cid,
                              namespace=body["namespace"], pod=body["pod"],
                              ifname=body["ifname"], host_ifname=body["host_ifname"],
                              host_ifindex=ifindex, ip=body["ip"], mac=body["mac"],
                              host_mac=body["host_mac"], netns=body["netns"],
                              pod_labels=dict(body.get("labels") or {}))
                self.endpoints[cid] = ep
                log_ep.info("endpoint %d created for %s (%s on %s)", ep.id, ep.pod_key, ep.ip,
                            ep.host_ifname)
            else:    # a re-ADD: the runtime's view wins
                ep.host_ifname, ep.host_ifindex = body["host_ifname"], ifindex
                ep.mac, ep.host_mac, ep.netns = body["mac"], body["host_mac"], body["netns"]
                ep.ip, ep.ifname = body["ip"], body["ifname"]
                ep.namespace, ep.pod = body["namespace"], body["pod"]
            ep.state = "regenerating"
            if ep.pod_key not in self.manifests.pods:
                changed = self.watcher.poll()
                if changed:         # a pod written just now: its labels decide its identity
                    self.reload(changed)
            self._resolve_identity(ep)
            self.reconcile(f"endpoint {ep.id} created")
            self.save()
            return ep.to_dict()

    def _new_endpoint_id(self) -> int:
        n = next_endpoint_id({ep.id for ep in self.endpoints.values()},
                             self.state["next_endpoint_id"])
        self.state["next_endpoint_id"] = n + 1
        return n

    def remove_endpoint(self, cid: str, why: str) -> bool:
        with self.lock:
            ep = self.endpoints.get(cid)
            if ep is None:
                self.ipam.release(cid)
                self.save()
                return False
            ep.state = "disconnecting"
            self.reconcile(f"endpoint {ep.id} removed: {why}")
            if netdev.iface_exists(ep.host_ifname):
                subprocess.run(["ip", "link", "del", ep.host_ifname], capture_output=True)
            self.ipam.release(cid)
            ctgc.forget_endpoint(self.dp.maps, ep.ip)    # its address may be handed out again
            ep.state = "disconnected"
            del self.endpoints[cid]
            log_ep.info("endpoint %d (%s) removed: %s", ep.id, ep.pod_key, why)
            self.save()
            self.trigger(f"endpoint {ep.id} gone")   # its address leaves the node view
            return True

    def _drop_vanished(self) -> None:
        for cid, ep in list(self.endpoints.items()):
            if not netdev.iface_exists(ep.host_ifname):
                self.remove_endpoint(cid, f"interface {ep.host_ifname} is gone")

    def sync_manifests(self, delta: ManifestDelta | None = None) -> None:
        """Apply manifest changes to endpoints: deleted pods go, label changes re-identify
        (with a delta, only the endpoints whose pod or namespace it names)."""
        with self.lock:
            for cid, ep in list(self.endpoints.items()):
                if delta is not None and ep.pod_key not in delta.pods and \
                        ep.namespace not in delta.namespaces:
                    continue
                if ep.from_manifest and ep.pod_key not in self.manifests.pods:
                    self.remove_endpoint(cid, "pod deleted from manifests")
                    continue
                self._resolve_identity(ep)

    # ---- config and manifests ----
    def reload(self, changed: set[str] | None = None) -> bool:
        """Take in changed files (None: re-read everything); all or nothing: a rejected change
        keeps the last good state, and its files are taken again with the next change. The
        datapath follows at the next sync. Returns True when applied."""
        with self.lock:
            if changed is not None:
                changed = set(changed) | self._retry_paths
            try:
                cfg = self.cfg
                if changed is None or self.config_path in changed:
                    cfg = load_config(self.config_path)
                    restart = changed_keys(self.cfg, cfg) & RESTART_KEYS
                    if restart:
                        raise ConfigError(self.config_path, sorted(restart)[0],
                                          "changing this key needs an agent restart")
                store, delta = self.store, EMPTY_DELTA
                if cfg.manifests != self.cfg.manifests or changed is None:
                    store = ManifestStore(cfg.manifests) if cfg.manifests else None
                    manifests, delta = (store.load() if store else _empty_manifests()), None
                elif store is not None:
                    mine = {p for p in changed if os.path.dirname(p) == store.directory or
                            p == store.directory}
                    manifests, delta = store.update(mine) if mine else \
                        (self.manifests, EMPTY_DELTA)
                else:
                    manifests = self.manifests
            except DatapathError as e:
                self.last_error = str(e)
                if changed is not None:
                    self._retry_paths = changed
                log_cfg.error("change rejected, keeping the last good state: %s", e)
                return False
            self._retry_paths = set()
            new_watch = cfg.manifests != self.cfg.manifests
            if changed is None or cfg != self.cfg:
                delta = None            # the config shapes every entry: rebuild them all
            self.cfg, self.manifests, self.store = cfg, manifests, store
            self._delta = merge_deltas(self._delta, delta)
            if new_watch:
                self.watcher.close()
                self.watcher = self._watch()
            self.policy.configure(cfg)
            self.monitor.configure(cfg)
            if delta is None or delta.policies or delta.policy_errors_changed:
                self.policy.load(manifests)
            self.last_error = None
            self.last_reload = time.time()
            log_cfg.info("config and manifests reloaded")
            self.sync_manifests(delta)
            self.trigger("config or manifests changed")
        return True

    # ---- API ----
    def routes(self):
        def status(_p, _b):
            return self.status()

        def ep_view(ep: Endpoint) -> dict:
            ing, eg = self.policy.enforcement(ep.id)
            return {**ep.to_dict(), "policyEnforcement": {"ingress": ing, "egress": eg}}

        def ep_list(_p, _b):
            with self.lock:
                return [ep_view(ep) for ep in sorted(self.endpoints.values(), key=lambda e: e.id)]

        def ep_get(p, _b):
            with self.lock:
                for ep in self.endpoints.values():
                    if str(ep.id) == p["id"] or ep.container_id == p["id"]:
                        return ep_view(ep)
            raise APIError(f"endpoint {p['id']} not found", 404)

        def ep_put(p, b):
            return self.create_endpoint(p["container_id"], b or {})

        def ep_delete(p, _b):
            return {"deleted": self.remove_endpoint(p["container_id"], "deleted through the API")}

        def ipam_post(_p, b):
            owner = (b or {}).get("owner")
            if not owner:
                raise APIError("ipam: missing owner", 400)
            with self.lock:
                ip = self.ipam.allocate(owner)
                self.save()
                return {"ip": ip, "gateway": self.ipam.gateway, "cidr": self.cfg.podCIDR,
                        "mtu": self.pod_mtu}

        def ipam_delete(p, _b):
            with self.lock:
                released = self.ipam.release(p["owner"])
                self.save()
                return {"released": released}

        def identities(_p, _b):
            out = [{"id": n, "labels": [f"reserved:{name}"], "type": "reserved"}
                   for name, n in RESERVED.items()]
            with self.lock:
                out += [{"id": n, "labels": list(lbl), "type": "cluster_local"}
                        for n, lbl in self.identities.items()]
            return out

        def service_list(_p, _b):
            with self.lock:
                out = [dict(s) for s in self.builder.listing]
                leaders = self.l2.leaders if self.l2 else {}
                for s in out:
                    sel = self.l2_selection.get(s["service"])
                    if sel and s["service"] in leaders and s["type"] != "NodePort" and \
                            s["frontend"].split(":")[0] in sel.ips:
                        s["l2Leader"] = leaders[s["service"]]
                return out

        def labels_of(ident: int) -> list[str]:
            with self.lock:
                return list(self.known_identities().get(ident, (f"identity:{ident}",)))

        return {**inspect.routes(self.dp), **self.policy.routes(self.dp, labels_of),
                **self.monitor.routes(),
                ("GET", "/v1/healthz"): lambda p, b: {"ok": True},
                ("GET", "/v1/service"): service_list,
                ("GET", "/v1/status"): status,
                ("GET", "/v1/endpoint"): ep_list,
                ("GET", "/v1/endpoint/{id}"): ep_get,
                ("PUT", "/v1/endpoint/{container_id}"): ep_put,
                ("DELETE", "/v1/endpoint/{container_id}"): ep_delete,
                ("POST", "/v1/ipam"): ipam_post,
                ("DELETE", "/v1/ipam/{owner}"): ipam_delete,
                ("GET", "/v1/identity"): identities}

    def status(self) -> dict:
        with self.lock:
            cfg = self.cfg
            return {
                "nodeName": cfg.nodeName,
                "uptimeSeconds": round(time.time() - self.started, 1),
                "kvstore": ({"type": "etcd", "endpoints": list(cfg.kvstoreEndpoints),
                             "connected": self.cluster.connected,
                             "error": self.cluster.last_error,
                             "leaseTTL": cfg.kvstoreLeaseTTL} if self.cluster else "Disabled"),
                "nodes": sorted([cfg.nodeName] + list(self.remote_nodes)),
                "remoteEndpoints": len(self.remote_endpoints),
                "nodeIP": self.node_ip,
                "kubernetes": {"manifests": cfg.manifests, "pods": len(self.manifests.pods),
                               "namespaces": len(self.manifests.namespaces)},
                "kubeProxyReplacement": cfg.kubeProxyReplacement,
                "routing": {"mode": cfg.routingMode, "tunnelProtocol": cfg.tunnelProtocol},
                "masquerading": {"enabled": cfg.bpfMasquerade, "mode": "BPF",
                                 "devices": self.builder.masquerade_devices(),
                                 "nonMasqueradeCIDRs": self.builder.masquerade_exclusions(),
                                 "nativeRoutingCIDR": cfg.ipv4NativeRoutingCIDR or cfg.podCIDR},
                "ipam": {"podCIDR": cfg.podCIDR, "allocated": len(self.ipam.allocations),
                         "capacity": self.ipam.net.num_addresses - 3},
                "endpoints": self.endpoint_state_counts(),
                "identities": self.identity_counts(),
                "policy": self.policy.status(),
                "services": self.service_status(),
                "hubble": self.monitor.status(),
                "clusterHealth": self.health.status(),
                "datapath": {"pinDir": cfg.pin_dir(),
                             "programs": {n: self.dp.program(n)[1] for n in
                                          loader.PROGRAMS}},
                "config": {"path": self.config_path, "lastError": self.last_error,
                           "lastReload": self.last_reload},
                "prometheus": (f"http://{netdev.node_ip(cfg)}:{cfg.prometheusPort}/metrics"
                               if cfg.prometheusEnabled else None),
                "apiSocket": cfg.apiSocket,
            }

    def service_status(self) -> dict:
        """Programmed and refused services (maps full), and each service map's room."""
        adm = self.builder.admission
        return {"programmed": len(adm.admitted),
                "refused": [{"service": k, "mapFull": m} for k, m in sorted(adm.refused.items())],
                "maps": {m: {"used": adm.used(m), "max": n} for m, n in adm.capacity.items()}}

    # ---- lifecycle ----
    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        signal.signal(signal.SIGINT, lambda *_: self._stop())
        signal.signal(signal.SIGHUP, lambda *_: self._reread_all())
        faulthandler.register(signal.SIGUSR1, all_threads=True)   # stacks to the log on demand
        log.info("starting agent for node %s (pid %d)", self.cfg.nodeName, os.getpid())
        if self.cfg.routingMode == "tunnel":
            netdev.ensure_vxlan(VXLAN_DEVICE, self.pod_mtu)
        self.start_sync()
        # the manifests, the desired state and the indexes live as long as the agent: keep
        # them out of the collector's full passes (0.35 s each at 10k services)
        gc.freeze()
        self.monitor.start(self.stop_event)
        self._api = api.serve(self.cfg.apiSocket, self.routes(), self.metrics.api_call)
        if self.cluster:
            self._cluster_thread = self.cluster.start(self.stop_event)
        if self.l2:
            self._l2_thread = self.l2.start(self.stop_event)
        self.health.start(self.stop_event)
        if self.cfg.prometheusEnabled:
            self._metrics_srv = start_http_server(self.cfg.prometheusPort,
                                                  registry=self.metrics.registry)
        log.info("agent for node %s ready: %d endpoints, API %s", self.cfg.nodeName,
                 len(self.endpoints), self.cfg.apiSocket)
        self._loop()
        self.shutdown()

    def start_sync(self) -> int:
        """The first sync: endpoints restored, then a full reconcile that adopts what the
        datapath holds. Returns how many operations failed."""
        with self.lock:
            self.builder.refresh_facts()
            for ep in self.endpoints.values():
                ep.state = "restoring"
            self._drop_vanished()
            for ep in self.endpoints.values():
                self._resolve_identity(ep)
                ep.state = "restoring"
            for m in services.SERVICE_MAPS:      # a previous agent's entries take room
                if m in self.dp.maps:            # (keys only: Maglev values are 64 KiB each)
                    self.builder.admission.occupied(m, self.dp.read_map(m) if m !=
                                                    "cilium_lb4_maglev" else
                                                    self.dp.maps[m].table.keys())
            failed = self.reconcile("startup: adopt what the datapath holds", full=True)
            self.builder.planner.prune_ids()     # ids of services gone while the agent was away
            return failed

    def _reread_all(self) -> None:
        self._reread = True
        self._wake.set()

    def _stop(self) -> None:
        # an agent that has not ended STOP_SECONDS after SIGTERM (a hang) writes every
        # thread's stack to its log and exits (faulthandler: no Python code needed to run)
        faulthandler.dump_traceback_later(STOP_SECONDS, exit=True)
        self.stop_event.set()
        self._wake.set()

    def _loop(self) -> None:
        """Wait for file events and triggers; sync at most once per reconciler.minInterval
        (a burst coalesces into one sync); a slow tick every RESYNC_SECONDS, a full read-back
        every reconciler.fullInterval, conntrack GC on its own schedule."""
        now = time.monotonic()
        next_slow, last_full = now + RESYNC_SECONDS, now
        gc_interval = float(self.cfg.conntrackGCInterval or ctgc.START)
        next_gc, last_save = now + gc_interval, now
        while not self.stop_event.is_set():
            now = time.monotonic()
            next_full = last_full + self.cfg.reconcileFullInterval    # a reload may change it
            due = [next_slow, next_full, next_gc]
            if self._dirty:
                due.append(self._last_sync + self.cfg.reconcileMinInterval)
            if self._unsaved:
                due.append(last_save + SAVE_SECONDS)
            try:
                changed = self.watcher.wait(min(max(0.0, min(due) - now), WATCH_SECONDS),
                                            self._wake)
                self._wake.clear()
                if self._reread:
                    self._reread = False
                    self.reload(None)
                elif changed:
                    self.reload(changed)
                now = time.monotonic()
                if now >= next_slow:
                    next_slow = now + RESYNC_SECONDS
                    self._slow_tick()
                if self._dirty and now >= self._last_sync + self.cfg.reconcileMinInterval:
                    self.reconcile(", ".join(sorted(self._dirty)[:3]))
                if now >= next_full:
                    last_full = now
                    self.reconcile("drift check", full=True)
                if self._unsaved and now >= last_save + SAVE_SECONDS:
                    last_save = now
                    with self.lock:
                        self.save()
                if now >= next_gc:
                    gc_interval = self.conntrack_gc(gc_interval)
                    if self.cfg.conntrackGCInterval:      # fixed, as configured
                        gc_interval = float(self.cfg.conntrackGCInterval)
                    next_gc = time.monotonic() + gc_interval
            except Exception:  # keep the agent alive; the error is logged and counted
                log.exception("agent loop error")
                self.stop_event.wait(WATCH_SECONDS)

    def _slow_tick(self) -> None:
        """What needs no event: vanished interfaces, identities not resolved yet, remote
        identities' labels, the node's devices and addresses."""
        with self.lock:
            self._drop_vanished()
            for ep in self.endpoints.values():
                if ep.state == "waiting-for-identity":
                    self._resolve_identity(ep)
            learned = self._learn_identities({int(r["identity"]) for r in
                                              self.remote_endpoints.values()})
            facts = self.builder.facts
            self.builder.refresh_facts()
            if learned or self.builder.facts != facts or self.rec.has_pending() or any(
                    ep.state in ("waiting-for-identity", "not-ready", "regenerating")
                    for ep in self.endpoints.values()):
                self.trigger("periodic resync")
        with self._view_lock:     # (the kvstore's latest view, not one it is replacing)
            if self.view.grace_over():
                self._on_cluster_change(*self.view.raw)

    def conntrack_gc(self, interval: float) -> float:
        """One GC run over the CT maps; returns the next interval."""
        result = ctgc.collect(self.dp.maps)
        total = deleted = 0
        for proto, (alive, gone) in result.items():
            self.metrics.ct_gc_runs.labels("ipv4", proto, "completed").inc()
            self.metrics.ct_gc_entries.labels("ipv4", proto, "alive").set(alive)
            self.metrics.ct_gc_entries.labels("ipv4", proto, "deleted").set(gone)
            total += alive + gone
            deleted += gone
        nat_alive, nat_gone = ctgc.collect_nat(self.dp.maps)
        self.metrics.nat_gc_entries.labels("ipv4", "alive").set(nat_alive)
        self.metrics.nat_gc_entries.labels("ipv4", "deleted").set(nat_gone)
        if deleted or nat_gone:
            log_rec.info("conntrack GC deleted %d of %d entries, NAT GC %d of %d", deleted, total,
                         nat_gone, nat_alive + nat_gone)
        return ctgc.next_interval(interval, deleted / total if total else 0.0)

    def shutdown(self) -> None:
        log.info("stopping; programs stay attached and maps pinned under %s", self.cfg.pin_dir())
        self.monitor.stop()
        if self._cluster_thread:
            self._cluster_thread.join(timeout=10)
        if self.l2:      # others take over at once: lease revoked, this node stops answering
            if self._l2_thread:
                self._l2_thread.join(timeout=10)
            self.l2.release()
            self._l2_heartbeat(0)
            self.reconcile("L2 announcements released")
        if self._api:
            self._api.shutdown()
            self._api.server_close()
            try:
                os.unlink(self.cfg.apiSocket)
            except FileNotFoundError:
                pass
        if self._metrics_srv:
            srv = self._metrics_srv[0] if isinstance(self._metrics_srv, tuple) else None
            if srv:
                srv.shutdown()
        with self.lock:
            self.save()
            if self.store is not None:
                self.store.save_cache()
        if self.cluster:        # the last thing: the lease runs out TTL from here
            self.cluster.stop_lease()
