"""This node's view of the cluster through the kvstore.

A background thread keeps a lease alive (refreshed by a thread of its own too, so nothing the
agent holds delays it), publishes this node's entry and its ready endpoints under that lease (so
they expire when the agent is gone longer than the lease TTL), and polls the other nodes'
entries; a change calls `on_change(nodes, endpoints)`. A restarting agent publishes what it
restored before it compiles or plans (publish_early). A kvstore outage leaves the datapath as it
is and is retried every second.

ClusterView turns what the kvstore gives into the view the agent programs: records checked
(a malformed one is logged and ignored), this node's own left out, what of the saved view a
restarted agent still misses held for a grace, and one log line for each node that joins or
leaves and each endpoint withdrawn.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from typing import Callable

from datapath.errors import KVStoreError

from .kvstore import IP_PREFIX, NODES_PREFIX, EtcdClient

log = logging.getLogger("datapath.kvstore")


class ClusterSync:
    def __init__(self, client: EtcdClient, cluster: str, node: str, ttl: int,
                 on_change: Callable[[dict, dict], None],
                 on_error: Callable[[str], None] | None = None):
        self.client, self.cluster, self.node, self.ttl = client, cluster, node, ttl
        self.on_change, self.on_error = on_change, on_error     # on_error: each failed round
        self.lease: int | None = None
        self._wanted: dict[str, str] = {}
        self._published: dict[str, str] = {}
        self._seen: tuple[dict, dict] | None = None
        self._lock = threading.Lock()
        self._next_keepalive = 0.0
        self.last_error: str | None = None
        self.connected = False
        self._keep_lease: threading.Thread | None = None
        self._lease_stop = threading.Event()

    def node_key(self, name: str) -> str:
        return f"{NODES_PREFIX}{self.cluster}/{name}"

    def ip_key(self, ip: str) -> str:
        return f"{IP_PREFIX}{self.cluster}/{ip}"

    def set_local(self, node: dict, endpoints: dict[str, dict]) -> None:
        """What this node publishes: its node record and {ip: endpoint record}."""
        wanted = {self.node_key(self.node): json.dumps(node, sort_keys=True)}
        for ip, rec in endpoints.items():
            wanted[self.ip_key(ip)] = json.dumps(rec, sort_keys=True)
        with self._lock:
            self._wanted = wanted

    def publish_early(self) -> None:
        """At the agent's start, before it compiles and plans: a lease, this node's records as
        set_local gave them (the endpoints it restored, which forward on the pinned datapath
        meanwhile), and the lease's refresh thread. An agent that compiles for minutes keeps
        its place, so no other node drops its pods and routes. A failing kvstore is left to
        the rounds (logged there)."""
        try:
            self._lease_and_publish()
            log.info("kvstore: this node's records published again under lease %x",
                     self.lease)
        except KVStoreError:
            pass
        self._start_keep_lease()

    def step(self) -> None:
        """One round: lease, publish differences, read the cluster. Raises KVStoreError."""
        self._lease_and_publish()
        nodes = {k.rsplit("/", 1)[1]: json.loads(v) for k, v in
                 self.client.get_prefix(f"{NODES_PREFIX}{self.cluster}/").items()}
        ips = {k.rsplit("/", 1)[1]: json.loads(v) for k, v in
               self.client.get_prefix(f"{IP_PREFIX}{self.cluster}/").items()}
        if (nodes, ips) != self._seen:
            self._seen = (nodes, ips)
            self.on_change(nodes, ips)

    def _lease_and_publish(self) -> None:
        now = time.time()
        if self.lease is not None and now >= self._next_keepalive:
            if self.client.lease_keepalive(self.lease) <= 0:
                log.warning("lease %x expired; publishing again under a new one", self.lease)
                self.lease = None
            else:
                self._next_keepalive = now + max(1.0, self.ttl / 3)
        if self.lease is None:
            self.lease = self.client.lease_grant(self.ttl)
            self._published = {}
            self._next_keepalive = now + max(1.0, self.ttl / 3)
        with self._lock:
            wanted = dict(self._wanted)
        for k, v in wanted.items():
            if self._published.get(k) != v:
                self.client.put(k, v, lease=self.lease)
                self._published[k] = v
        for k in set(self._published) - set(wanted):
            self.client.delete(k)
            del self._published[k]

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.step()
                if not self.connected:
                    log.info("kvstore connected (%s)", ", ".join(self.client.endpoints))
                self.connected, self.last_error = True, None
            except KVStoreError as e:
                if self.connected or self.last_error is None:
                    log.warning("kvstore: %s", e)
                self.connected, self.last_error = False, str(e)
                if self.on_error:
                    self.on_error(str(e))
            except Exception:  # a bug in on_change must not stop the sync
                log.exception("kvstore sync failed")
            stop.wait(interval)

    def keep_lease(self, stop: threading.Event) -> None:
        """Refresh the lease every TTL/3 on its own: the sync's round waits for on_change,
        which waits for the agent's lock, and a long apply (1,000 services removed) holding it
        past the TTL would let the lease run out and every other node drop this one's pods
        and routes. A lease found expired is left to the next round (a new one, all again)."""
        while not stop.wait(max(1.0, self.ttl / 3)):
            lease = self.lease
            if lease is None:
                continue
            try:
                if self.client.lease_keepalive(lease) > 0:
                    self._next_keepalive = time.time() + max(1.0, self.ttl / 3)
            except KVStoreError:
                pass                    # the round reports the kvstore failing

    def _start_keep_lease(self) -> None:
        """The lease's refresh runs until stop_lease(), not until the agent's stop event: an
        agent told to stop keeps its place until its process ends (a restart is seconds)."""
        if self._keep_lease is None:
            self._keep_lease = threading.Thread(target=self.keep_lease,
                                                args=(self._lease_stop,),
                                                name="kvstore-lease", daemon=True)
            self._keep_lease.start()

    def stop_lease(self) -> None:
        self._lease_stop.set()

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stop,), name="kvstore", daemon=True)
        t.start()
        self._start_keep_lease()
        return t


class ClusterView:
    """The other nodes ({name: {ip, podCIDR}}) and their endpoints ({ip: {identity, hostIP,
    node, namespace, pod}}) as this node programs them. `saved` is the view the state file
    kept: a restarted agent starts from it, and holds what of it the kvstore lacks (hold)."""

    def __init__(self, node_name: str, lease_ttl: int, saved: dict):
        self.node_name, self.lease_ttl = node_name, lease_ttl
        self.nodes: dict[str, dict] = saved.get("nodes", {})
        self.endpoints: dict[str, dict] = saved.get("endpoints", {})
        self.raw: tuple[dict, dict] | None = None       # the last view the kvstore gave
        self._restored = {"nodes": dict(self.nodes), "endpoints": dict(self.endpoints)} \
            if self.nodes else None
        self._restored_until: float | None = None

    def offer(self, nodes: dict, endpoints: dict) -> tuple[dict, dict]:
        """The view to program for the kvstore's records: checked, then held (not applied:
        replace() does that under the agent's lock)."""
        self.raw = (nodes, endpoints)
        return self.hold(*self.checked(nodes, endpoints))

    def replace(self, nodes: dict, endpoints: dict) -> None:
        self.log_membership(nodes, endpoints)
        self.nodes, self.endpoints = nodes, endpoints

    def grace_over(self) -> bool:
        """True once, when a hold's grace has passed with nodes still held: offer the last
        kvstore view again so they go."""
        return bool(self._restored and self._restored_until is not None and self.raw and
                    time.monotonic() >= self._restored_until)

    def checked(self, nodes: dict, endpoints: dict) -> tuple[dict, dict]:
        good_nodes, good_eps = {}, {}
        for name, rec in nodes.items():
            if name == self.node_name:
                continue
            try:
                ipaddress.IPv4Address(rec["ip"])
                ipaddress.IPv4Network(rec["podCIDR"])
                good_nodes[name] = {"ip": rec["ip"], "podCIDR": rec["podCIDR"]}
            except (KeyError, TypeError, ValueError) as e:
                log.warning("ignoring malformed node record %s: %s", name, e)
        for ip, rec in endpoints.items():
            if rec.get("node") == self.node_name:
                continue
            try:
                ipaddress.IPv4Address(ip)
                ipaddress.IPv4Address(rec["hostIP"])
                good_eps[ip] = {"identity": int(rec["identity"]), "hostIP": rec["hostIP"],
                                "node": str(rec.get("node", "")),
                                "namespace": str(rec.get("namespace", "")),
                                "pod": str(rec.get("pod", ""))}
            except (KeyError, TypeError, ValueError) as e:
                log.warning("ignoring malformed endpoint record %s: %s", ip, e)
        return good_nodes, good_eps

    def hold(self, nodes: dict, endpoints: dict) -> tuple[dict, dict]:
        """The kvstore's view, plus what of the saved view the kvstore lacks: a node not
        registered again, and the endpoints of a node that has not published any yet (a node
        registers before its endpoints are ready), until it has or 2 x the lease TTL have
        passed since the first offer. An upgrade restarts every agent at once and some compile
        for minutes: should their leases run out, the first agent back would otherwise drop
        the others' pods from every service (their flows sent to other backends and reset)
        and their routes, seconds before they come back."""
        held = self._restored
        if not held:
            return nodes, endpoints
        now = time.monotonic()
        if self._restored_until is None:
            self._restored_until = now + 2 * self.lease_ttl
        published = {r.get("node") for r in endpoints.values()}
        pending = {n: r for n, r in held["nodes"].items() if n not in published}
        if not pending or now >= self._restored_until:
            if pending:
                log.info("nodes of the restored cluster view not back within the grace: %s",
                         ", ".join(sorted(pending)))
            self._restored = None
            return nodes, endpoints
        if pending.keys() != held["nodes"].keys():
            held["nodes"] = pending
        else:
            log.info("holding what the kvstore lacks of the restored cluster view, for %.0f s "
                     "or until they are back: %s", self._restored_until - now,
                     ", ".join(sorted(pending)))
        keep = {n: r for n, r in pending.items() if n not in nodes}
        eps = {ip: r for ip, r in held["endpoints"].items()
               if r.get("node") in pending and ip not in endpoints}
        return {**nodes, **keep}, {**endpoints, **eps}

    def log_membership(self, nodes: dict, endpoints: dict) -> None:
        """One line for each node that joins or leaves the view (its lease granted or run
        out), with the count of its endpoints that came or went with it, and one for each
        endpoint a node still present withdrew."""
        before_n, before_e = self.nodes, self.endpoints
        for verb, names, eps in (("joined", nodes.keys() - before_n.keys(), endpoints),
                                 ("left", before_n.keys() - nodes.keys(), before_e)):
            for name in sorted(names):
                n = sum(1 for r in eps.values() if r.get("node") == name)
                log.info("node %s %s the cluster (%s), %d endpoint(s) with it", name, verb,
                         (nodes if verb == "joined" else before_n)[name]["ip"], n)
        for ip in sorted(before_e.keys() - endpoints.keys()):
            r = before_e[ip]
            if r.get("node") in nodes:
                log.info("endpoint %s (%s/%s) of node %s withdrawn", ip, r.get("namespace"),
                         r.get("pod"), r.get("node"))
