"""This node's view of the cluster through the kvstore.

A background thread keeps a lease alive (refreshed by a thread of its own too, so nothing the
agent holds delays it), publishes this node's entry and its ready endpoints under that lease (so
they expire when the agent is gone longer than the lease TTL), and polls the other nodes'
entries; a change calls `on_change(nodes, endpoints)`. A restarting agent publishes what it
restored before it compiles or plans (publish_early). A kvstore outage leaves the datapath as it
is and is retried every second.
"""
from __future__ import annotations

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

    def publish_early(self, stop: threading.Event) -> None:
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
        self._start_keep_lease(stop)

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

    def _start_keep_lease(self, stop: threading.Event) -> None:
        if self._keep_lease is None:
            self._keep_lease = threading.Thread(target=self.keep_lease, args=(stop,),
                                                name="kvstore-lease", daemon=True)
            self._keep_lease.start()

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stop,), name="kvstore", daemon=True)
        t.start()
        self._start_keep_lease(stop)
        return t
