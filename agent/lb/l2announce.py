"""L2 announcements (CiliumL2AnnouncementPolicy): which node answers ARP for each LoadBalancer IP
and externalIP, as Cilium's l2announcer decides it.

Selection is pure: a policy whose nodeSelector matches this node's labels, with native devices
matching its `interfaces` regexes (searched, as Go's MatchString does; none given: every device),
selects the services its serviceSelector matches; each brings its LoadBalancer IP (LB IPAM,
when the policy sets loadBalancerIPs) and its spec.externalIPs (when it sets externalIPs). A
service with externalTrafficPolicy Local is announced only by nodes with a ready local pod it
selects. Node labels: `kubernetes.io/hostname: <nodeName>` (the lab has no Node objects).

Election is per service, through the kvstore: the key `cilium/state/l2announce/v1/<cluster>/<ns>/
<svc>` holds the leader's node name, created only if absent (an etcd transaction) under this
node's L2 lease (TTL leaseDuration). The leader keeps the lease alive every leaseRetryPeriod;
if it cannot renew for leaseRenewDeadline it stops announcing, before the lease can expire and
another node take over. Followers try every leaseRetryPeriod. A graceful stop revokes the lease
(others take over at once); a killed agent's lease expires, and its datapath stops answering by
itself when the agent's heartbeat (dp_agent_liveness, written every round) gets older than
leaseDuration. Without a kvstore a node elects itself.

API:
    node_labels(node)                                 {kubernetes.io/hostname: node}
    matching_devices(policy, devices)                 devices its interfaces regexes select
    select(manifests, node, devices, local_pods)      {service key: Selection}
    L2Announcer(client|None, cluster, node, lease, renew, retry, on_change, heartbeat)
        .set_candidates(keys) .mine .leaders .step() .run(stop) .start(stop) .release()
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from datapath.errors import KVStoreError

from . import services
from ..kvstore import L2_PREFIX, EtcdClient

log = logging.getLogger("datapath.l2announce")

HOSTNAME_LABEL = "kubernetes.io/hostname"


@dataclass(frozen=True)
class Selection:
    """One service this node may announce: its addresses, on which devices, by which policies."""
    service: str
    ips: tuple[str, ...]
    devices: tuple[str, ...]
    policies: tuple[str, ...]


def node_labels(node: str) -> dict[str, str]:
    return {HOSTNAME_LABEL: node}


def _matches(selector, labels: dict[str, str]) -> bool:
    return selector is None or dict(selector).items() <= labels.items()


def matching_devices(policy, devices: Iterable[str]) -> tuple[str, ...]:
    devices = tuple(devices)
    if not policy.interfaces:
        return devices
    return tuple(d for d in devices if any(re.search(rx, d) for rx in policy.interfaces))


def select(manifests, node: str, devices: Iterable[str],
           local_pods: Iterable[str] = ()) -> dict[str, Selection]:
    """{service key: Selection} of what this node is a candidate to announce.
    local_pods: keys of the ready pods on this node (externalTrafficPolicy Local)."""
    labels = node_labels(node)
    local = [manifests.pods[k] for k in sorted(set(local_pods)) if k in manifests.pods]
    lbs = services.lb_ips(list(manifests.services.values()), manifests.ippools.values())
    acc: dict[str, tuple[list, list, list]] = {}
    for pol in sorted(manifests.l2policies.values(), key=lambda p: p.name):
        if not _matches(pol.nodeSelector, labels):
            continue
        devs = matching_devices(pol, devices)
        if not devs:
            continue
        for svc in sorted(manifests.services.values(), key=lambda s: s.key):
            if not _matches(pol.serviceSelector, svc.label_dict):
                continue
            if svc.externalTrafficPolicy == "Local" and not any(
                    p.namespace == svc.namespace and svc.selector and
                    svc.selector_dict.items() <= p.label_dict.items() for p in local):
                continue
            ips = []
            if pol.loadBalancerIPs and svc.key in lbs:
                ips.append(lbs[svc.key])
            if pol.externalIPs:
                ips += list(svc.externalIPs)
            if not ips:
                continue
            have = acc.setdefault(svc.key, ([], [], []))
            for lst, new in zip(have, (ips, devs, [pol.name])):
                lst += [x for x in new if x not in lst]
    return {k: Selection(k, tuple(i), tuple(d), tuple(p)) for k, (i, d, p) in acc.items()}


class L2Announcer:
    def __init__(self, client: EtcdClient | None, cluster: str, node: str, lease_duration: int,
                 renew_deadline: int, retry_period: int,
                 on_change: Callable[[], None] = lambda: None,
                 heartbeat: Callable[[float], None] = lambda max_age: None):
        self.client, self.cluster, self.node = client, cluster, node
        self.lease_duration, self.renew_deadline = lease_duration, renew_deadline
        self.retry_period = retry_period
        self.on_change, self.heartbeat = on_change, heartbeat
        self.lease: int | None = None
        self._renewed = 0.0                 # monotonic time of the last successful renewal
        self._candidates: set[str] = set()
        self._mine: set[str] = set()
        self._leaders: dict[str, str] = {}
        self._held: set[str] = set()        # keys this process created under self.lease
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def key(self, service: str) -> str:
        return f"{L2_PREFIX}{self.cluster}/{service}"

    # ---- what the agent reads and sets (any thread) ----
    def set_candidates(self, services_: Iterable[str]) -> None:
        with self._lock:
            self._candidates = set(services_)
            if self.client is None:       # no kvstore: this node elects itself
                self._mine = set(self._candidates)
                self._leaders = {s: self.node for s in self._candidates}

    @property
    def mine(self) -> set[str]:
        with self._lock:
            return set(self._mine)

    @property
    def leaders(self) -> dict[str, str]:
        with self._lock:
            return dict(self._leaders)

    def _set(self, mine: set[str], leaders: dict[str, str]) -> bool:
        with self._lock:
            changed = mine != self._mine
            self._mine, self._leaders = mine, leaders
        if changed:
            log.info("L2 announcements: this node now leads %s",
                     ", ".join(sorted(mine)) or "no service")
        return changed

    # ---- one round ----
    def step(self) -> bool:
        """Renew or get the lease, give up services no longer selected, campaign for the rest.
        Returns True when this node's set of led services changed. Raises KVStoreError."""
        if self.client is None:
            return False
        c, now = self.client, time.monotonic()
        if self.lease is not None and now - self._renewed >= self.retry_period:
            if c.lease_keepalive(self.lease) > 0:
                self._renewed = now
            else:
                log.warning("L2 lease %x expired; campaigning again under a new one", self.lease)
                self.lease = None
        if self.lease is None:
            self.lease = c.lease_grant(self.lease_duration)
            self._renewed, self._held = now, set()
        with self._lock:
            candidates = set(self._candidates)
        prefix = f"{L2_PREFIX}{self.cluster}/"
        holders = {k[len(prefix):]: v for k, v in c.get_prefix(prefix).items()}
        for svc in sorted(set(holders) - candidates):
            if holders[svc] == self.node:          # no longer ours to announce: let go
                c.delete_if(self.key(svc), self.node)
                self._held.discard(svc)
                del holders[svc]
        for svc in sorted(candidates):
            if holders.get(svc) == self.node and svc not in self._held:
                # ours from an earlier run of this agent, under a lease nobody renews: take it
                # over under the current lease, so it does not lapse under us
                c.delete_if(self.key(svc), self.node)
                holders.pop(svc)
            if svc not in holders and c.txn_create([self.key(svc)], [(self.key(svc), self.node)],
                                                   lease=self.lease):
                holders[svc] = self.node
                self._held.add(svc)
        mine = {s for s in candidates if holders.get(s) == self.node and s in self._held}
        return self._set(mine, {s: n for s, n in holders.items() if s in candidates})

    def step_down_if_stale(self) -> bool:
        """After a failed round: a leader that could not renew for renewDeadline stops."""
        if self.client is not None and self._mine and \
                time.monotonic() - self._renewed > self.renew_deadline:
            log.warning("L2 lease not renewed for %ds: no longer announcing", self.renew_deadline)
            return self._set(set(), {})
        return False

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.heartbeat(float(self.lease_duration))
                changed = self.step()
                self.last_error = None
            except KVStoreError as e:
                if self.last_error is None:
                    log.warning("L2 announcements: kvstore: %s", e)
                self.last_error = str(e)
                changed = self.step_down_if_stale()
            except Exception:  # a bug here must not stop the announcer
                log.exception("L2 announcement round failed")
                changed = self.step_down_if_stale()
            if changed:
                try:
                    self.on_change()
                except Exception:
                    log.exception("applying L2 leadership failed")
            stop.wait(self.retry_period)

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stop,), name="l2announce", daemon=True)
        t.start()
        return t

    def release(self) -> None:
        """Graceful stop: revoke the lease (its keys go with it) so other nodes take over now."""
        if self.client is not None and self.lease is not None:
            try:
                self.client.lease_revoke(self.lease)
                log.info("L2 lease %x revoked", self.lease)
            except KVStoreError as e:
                log.warning("L2 lease %x not revoked (it expires by itself): %s", self.lease, e)
        self.lease, self._held = None, set()
        self._set(set(), {})
