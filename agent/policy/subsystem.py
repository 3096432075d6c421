"""The policy subsystem as the daemon holds it: the engine (rules, selector cache, map state)
tied to this node's endpoints, identities, maps, metrics and API.

Owns: turning policy objects from the manifests into cilium_policy_v2 entries for the local
endpoints and CIDR identities for cilium_ipcache (both go into the reconcile plan, which writes
only differences), the policy metrics, and the /v1/policy routes. The daemon calls `load` on a
manifest change, `set_identities` when identities change, `desired` while building the desired
datapath and `applied` once a reconcile has written it.

API:
    PolicySubsystem(cfg, state, metrics)
    .configure(cfg)                          policyEnforcementMode, allowLocalhost
    .load(manifests) -> list[str]            errors of policies left out (the rest applies)
    .set_identities({id: labels})            every identity the cluster knows
    .desired(st, endpoints, pods, pod_identity)   fills the policy map and CIDR ipcache rows
    .applied()                               observes the implementation delay
    .enforcement(ep_id) -> (ingress, egress) as last computed
    .status() / .routes(dp, labels_of)
"""
from __future__ import annotations

import logging
import secrets
import time
from typing import Callable, Iterable

from datapath import abi
from datapath.errors import APIError, DatapathError

from .engine import PolicyEngine

log = logging.getLogger("datapath.policy")

POLICY_MAP = "cilium_policy_v2"
REVISION_MAP = "dp_policy_revision"   # bumped after every change to POLICY_MAP
# the agent owns the verdict bytes of a policy entry; packets and bytes are the datapath's
_OWNED = abi.PolicyEntry.packets.offset
_PROTO_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP"}
_PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}


class PolicySubsystem:
    def __init__(self, cfg, state: dict, metrics):
        self.engine = PolicyEngine(cfg.policyEnforcementMode, cfg.allowLocalhost,
                                   cidr_ids=state.setdefault("cidr_identities", {}))
        self.metrics = metrics
        self.errors: list[str] = []
        self._enforcement: dict[int, tuple[bool, bool]] = {}
        self._revision_seen = self.engine.revision
        self._changed_at: float | None = None   # when a not yet implemented change was read
        self._calc_seconds = 0.0
        self._rows: dict[int, tuple] = {}   # endpoint -> (its EndpointPolicy, encoded rows)

    def configure(self, cfg) -> None:
        self.engine.configure(cfg.policyEnforcementMode, cfg.allowLocalhost)

    # ---- inputs ----
    def load(self, manifests) -> list[str]:
        """Apply the policy objects of a manifest set; bad ones are left out (their last good
        version stays in force) and reported."""
        before = dict(self.engine.change_counts)
        errors = list(manifests.policy_errors) + list(self.engine.load(manifests.policies))
        for outcome, n in self.engine.change_counts.items():
            delta = n - before.get(outcome, 0)
            if delta:
                self.metrics.policy_change.labels(outcome).inc(delta)
        for e in errors:
            if e not in self.errors:
                log.error("policy rejected, the rest stays in force: %s", e)
        self.errors = errors
        if self.engine.revision != self._revision_seen:
            self._revision_seen = self.engine.revision
            self._changed_at = self._changed_at or time.time()
        return errors

    def set_identities(self, identities: dict[int, tuple[str, ...]]) -> None:
        self.engine.set_identities(identities)

    # ---- desired state ----
    def desired(self, st, endpoints: Iterable, pods: dict, pod_identity: dict[str, int],
                ipcache: Callable[[str, int], None]) -> None:
        """Policy rows for every local endpoint with an identity, and a CIDR identity row in
        the ipcache for every prefix a rule names. pods: the manifests' pods by "ns/name";
        pod_identity: "ns/name" -> identity for every pod of the cluster that has one."""
        t0 = time.perf_counter()
        for prefix, ident in sorted(self.engine.cidr_identities().items()):
            ipcache(prefix, ident)
        by_identity: dict[int, list] = {}

        def named_ports_of(identities):
            if identities is not None and not by_identity:   # only when a rule names a port
                for key, ident in pod_identity.items():
                    if key in pods:
                        by_identity.setdefault(ident, []).append(pods[key])
            chosen = pods.values() if identities is None else \
                [p for i in identities for p in by_identity.get(i, ())]
            out: dict[str, set] = {}
            for pod in chosen:
                for name, proto, port in _container_ports(pod):
                    out.setdefault(name, set()).add((proto, port))
            return out

        self.engine.named_ports = named_ports_of
        rows = st.maps.setdefault(POLICY_MAP, {})
        st.owned_prefix[POLICY_MAP] = _OWNED
        enforcement = {}
        for ep in endpoints:
            pod = pods.get(ep.pod_key)
            own = {}
            for name, proto, port in (_container_ports(pod) if pod else ()):
                own.setdefault(name, []).append((proto, port))
            pol = self.engine.endpoint_policy(ep.identity, tuple(ep.labels), own)
            enforcement[ep.id] = (pol.ingress_enforced, pol.egress_enforced)
            hit = self._rows.get(ep.id)
            if hit is None or hit[0] is not pol:     # the engine hands back what it cached
                enforced = (pol.ingress_enforced, pol.egress_enforced)
                hit = self._rows[ep.id] = (pol, {
                    bytes(abi.policy_key(ep.id, k.identity, k.egress, k.proto, k.port,
                                         k.prefix)):
                    bytes(abi.policy_entry(v.deny, abi.policy_entry_flags(
                        k.proto, k.prefix, enforced[bool(k.egress)])))
                    for k, v in pol.entries.items()})
            rows.update(hit[1])
        for gone in set(self._rows) - set(enforcement):
            del self._rows[gone]
        self._enforcement = enforcement
        self._calc_seconds = time.perf_counter() - t0

    def applied(self, ok: bool) -> None:
        """The reconcile that carried the desired state is done."""
        status = "success" if ok else "failure"
        self.metrics.policy_regeneration.labels("policyCalculation", status).observe(
            self._calc_seconds)
        if self._changed_at is not None and ok:
            self.metrics.policy_implementation_delay.labels("k8s").observe(
                time.time() - self._changed_at)
            self._changed_at = None

    def revision(self, dp) -> int:
        """The policy revision the datapath holds (0: never set; 1 when there is no such map,
        so nothing tries to set it)."""
        m = dp.maps.get(REVISION_MAP)
        cur = m.get(abi.U32Key(0)) if m is not None else None
        return cur.revision if cur is not None else (0 if m is not None else 1)

    def bump_revision(self, dp) -> int:
        """Tell the datapath the policy map changed: established flows' cached verdicts
        (their conntrack entries remember the revision) are decided again on their next
        packet. Called after the map writes. A map that reads 0 (new) starts at a random
        non-zero value, so no verdict cached in pinned conntrack entries is trusted again."""
        m = dp.maps.get(REVISION_MAP)
        if m is None:
            return 0
        cur = m.get(abi.U32Key(0))
        rev = cur.revision if cur is not None else 0
        rev = (rev % 0xFFFFFFFF) + 1 if rev else secrets.randbelow(0xFFFFFFFE) + 1
        m.update(abi.U32Key(0), abi.PolicyRevision(revision=rev))
        return rev

    # ---- views ----
    def row_keys(self, ep_id: int) -> set[bytes]:
        """The policy map keys of an endpoint as last computed (a failed write makes it
        not-ready)."""
        hit = self._rows.get(ep_id)
        return set(hit[1]) if hit else set()

    def enforcement(self, ep_id: int) -> tuple[bool, bool]:
        return self._enforcement.get(ep_id, (False, False))

    def enforcement_counts(self) -> dict[str, int]:
        """Endpoints by enforcement, as cilium_policy_endpoint_enforcement_status counts them."""
        out = {"none": 0, "ingress": 0, "egress": 0, "both": 0}
        for ing, eg in self._enforcement.values():
            out["both" if ing and eg else "ingress" if ing else "egress" if eg else "none"] += 1
        return out

    def count(self) -> int:
        return self.engine.count()

    def status(self) -> dict:
        return {"mode": self.engine.mode, "allowLocalhost": self.engine.allow_localhost,
                "policies": self.engine.count(), "revision": self.engine.revision,
                "errors": list(self.errors)}

    def routes(self, dp, labels_of: Callable[[int], list[str]]) -> dict:
        def get(_p, _b):
            return {"revision": self.engine.revision, "policies": self.engine.get(),
                    "errors": list(self.errors)}

        def selectors(_p, _b):
            return self.engine.selectors()

        def bpf_policy(p, _b):
            try:
                ep_id = int(p["id"])
            except ValueError:
                raise APIError(f"endpoint id {p['id']!r}: expected a number", 400) from None
            if ep_id not in self._enforcement:
                raise APIError(f"endpoint {ep_id} not found on this node", 404)
            return policy_rows(dp.maps[POLICY_MAP].items(), ep_id, labels_of)

        return {("GET", "/v1/policy"): get,
                ("GET", "/v1/policy/selectors"): selectors,
                ("GET", "/v1/bpf/policy/{id}"): bpf_policy}


def _container_ports(pod) -> list[tuple[str, int, int]]:
    """(name, protocol number, port) of a pod's named container ports."""
    return [(cp.name, _PROTO_NUMBERS.get(cp.protocol, 6), cp.containerPort)
            for c in pod.containers for cp in c.ports if cp.name]


def policy_rows(items, ep_id: int, labels_of: Callable[[int], list[str]]) -> list[dict]:
    """One endpoint's rows of the policy map, as `cilium bpf policy get` lists them."""
    out = []
    for k, v in items:
        if k.endpoint_id != ep_id:
            continue
        bits = k.lpm_key_prefixlen - abi.POLICY_PREFIX_BASE
        if bits <= 0:
            port = "ANY"
        else:
            proto = _PROTO_NAMES.get(k.protocol, str(k.protocol))
            pbits = bits - 8
            lo = abi.be16(k.dport)
            hi = lo + (1 << (16 - pbits)) - 1 if pbits < 16 else lo
            port = f"ANY/{proto}" if pbits <= 0 else \
                f"{lo}/{proto}" if lo == hi else f"{lo}-{hi}/{proto}"
        out.append({"policy": "Deny" if v.deny else "Allow",
                    "direction": "Egress" if k.egress else "Ingress",
                    "identity": k.sec_label,
                    "labels": labels_of(k.sec_label) if k.sec_label else ["reserved:unknown"],
                    "port": port, "proxyPort": "NONE" if not v.proxy_port else v.proxy_port,
                    "bytes": v.bytes, "packets": v.packets, "prefix": k.lpm_key_prefixlen})
    return sorted(out, key=lambda r: (r["direction"] != "Ingress", r["identity"], r["port"]))


def validate_file(path: str) -> int:
    """Read one manifest file as the agent would and parse its policies; returns how many
    there are, or raises the first problem (file, object, field, reason)."""
    from ..manifests import _Loader
    from .parse import parse_policy
    loader = _Loader()
    loader.file(path)
    if loader.out.policy_errors:
        raise DatapathError(loader.out.policy_errors[0])
    for file, doc in loader.out.policies.values():
        parse_policy(doc, file)
    return len(loader.out.policies)
