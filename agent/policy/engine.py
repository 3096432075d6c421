"""The policy engine: the one object the daemon holds. It keeps the policy objects in force, the
selector cache over every identity (CIDR identities included, which it allocates itself), and
each endpoint's map state, recomputed only when something it depends on changed.

API:
    PolicyEngine(mode="default", allow_localhost="always", cidr_ids=None)
    .configure(mode, allow_localhost)
    .load({(kind, ns, name): (file, doc)}) -> [error]   every object failing now, sorted
    .set_identities({id: labels})                        every identity but the CIDR ones
    .cidr_identities() -> {prefix: id}
    .endpoint_policy(identity, labels, named_ports) -> EndpointPolicy
    .named_ports = callable(frozenset[int] | None) -> {name: {(proto, port)}}
    .get() / .selectors() / .count()                    for the CLI and metrics
    .errors {(kind, ns, name): error}   .change_counts {"success", "failure"}   .revision

Loading: an object whose (file, document) did not change is not looked at again. A changed
one is parsed; if that fails its last good version stays in force (or it stays absent) and
its error is kept until it changes again. Each changed object counts once in change_counts
(removals count as successes) and `revision` moves on every change to the rules in force.

CIDR identities: one per prefix (cidr or except, 0.0.0.0/0 excepted: that is world) that a rule
in force names, labelled ("cidr:<prefix>", "reserved:world"), numbered from 16777216 up (the
first free number), kept in `cidr_ids` (the daemon's persisted table, changed in place) and
released when no rule names the prefix any more.

Caching: an endpoint's policy is reused while the configuration, its labels and named ports,
the rules that select it, the selections of their selectors, and the peers' named ports it
looked up (egress named ports, asked again from `named_ports`) are all unchanged; a change to a
policy that does not select the endpoint, or to an identity none of its selectors picks, costs
it nothing.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from datapath.errors import ManifestError

from .mapstate import (ALLOW_LOCALHOST, MODES, EndpointPolicy, NamedPorts, NamedPortsOf,
                       compute)
from .parse import parse_policy
from .rules import Rule
from .selector import WORLD, CIDRSelector, label_map
from .selectorcache import SelectorCache

CIDR_IDENTITY_BASE = 1 << 24   # IDENTITY_SCOPE_LOCAL: Cilium's local (CIDR) identities

ObjectKey = tuple[str, str, str]   # (kind, namespace, name)
_FrozenPorts = tuple[tuple[str, tuple[tuple[str | int, int], ...]], ...]


def _freeze(ports: NamedPorts) -> _FrozenPorts:
    return tuple(sorted((name, tuple(sorted(set(pairs), key=str))) for name, pairs in
                        ports.items()))


def _cidr_labels(prefix: str) -> tuple[str, ...]:
    return (f"cidr:{prefix}", WORLD)


def _no_named_ports(identities: frozenset[int] | None) -> NamedPorts:
    return {}


@dataclass
class _Recorder:
    """named_ports_of as a computation saw it, so the cache can ask again."""
    fn: NamedPortsOf
    calls: dict[frozenset[int] | None, _FrozenPorts] = field(default_factory=dict)

    def __call__(self, identities: frozenset[int] | None) -> NamedPorts:
        result = self.fn(identities)
        self.calls[identities] = _freeze(result)
        return result

    def still_valid(self, fn: NamedPortsOf) -> bool:
        return all(_freeze(fn(ids)) == seen for ids, seen in self.calls.items())


@dataclass
class _Computed:
    key: tuple
    recorder: _Recorder
    policy: EndpointPolicy


class PolicyEngine:
    def __init__(self, mode: str = "default", allow_localhost: str = "always",
                 cidr_ids: dict[str, int] | None = None):
        self.cidr_ids: dict[str, int] = cidr_ids if cidr_ids is not None else {}
        self.errors: dict[ObjectKey, str] = {}
        self.change_counts = {"success": 0, "failure": 0}
        self.revision = 0
        self.named_ports: NamedPortsOf = _no_named_ports
        self._seen: dict[ObjectKey, tuple[str, dict]] = {}   # last input, good or bad
        self._rules: dict[ObjectKey, tuple[Rule, ...]] = {}  # in force
        self._cache = SelectorCache()
        self._subjects: dict[tuple[str, ...], tuple[Rule, ...]] = {}   # labels -> rules
        self._computed: dict[int, _Computed] = {}
        for prefix, ident in self.cidr_ids.items():
            self._cache.add_identity(ident, _cidr_labels(prefix))
        self.configure(mode, allow_localhost)

    def configure(self, mode: str, allow_localhost: str) -> None:
        if mode not in MODES:
            raise ValueError(f"policy enforcement mode: expected one of {', '.join(MODES)}, "
                             f"got {mode!r}")
        if allow_localhost not in ALLOW_LOCALHOST:
            raise ValueError(f"allowLocalhost: expected one of {', '.join(ALLOW_LOCALHOST)}, "
                             f"got {allow_localhost!r}")
        self.mode, self.allow_localhost = mode, allow_localhost

    # ---- policies ----
    def load(self, objects: Mapping[ObjectKey, tuple[str, dict]]) -> list[str]:
        """Apply the policy objects (all of them: one missing is removed); returns the error
        of every object that fails, changed now or before."""
        changed = False
        for key in sorted(set(self._seen) | set(objects)):
            new = objects.get(key)
            if new == self._seen.get(key):
                continue
            if new is None:
                del self._seen[key]
                self.errors.pop(key, None)
                changed |= self._apply(key, ())
                self.change_counts["success"] += 1
                continue
            file, doc = new
            self._seen[key] = (file, copy.deepcopy(doc))
            try:
                rules = tuple(parse_policy(doc, file))
            except ManifestError as e:
                self.errors[key] = str(e)
                self.change_counts["failure"] += 1
                continue
            self.errors.pop(key, None)
            changed |= self._apply(key, rules)
            self.change_counts["success"] += 1
        if changed:
            self._sync_cidr_identities()
            self._subjects.clear()
        return [self.errors[k] for k in sorted(self.errors)]

    def _apply(self, key: ObjectKey, rules: tuple[Rule, ...]) -> bool:
        """Put an object's rules in force; False when they are the ones in force."""
        old = self._rules.get(key, ())
        if rules == old:
            return False
        for peer in (p for r in rules for p in r.peers()):
            self._cache.add_selector(peer)
        for peer in (p for r in old for p in r.peers()):
            self._cache.remove_selector(peer)
        if rules:
            self._rules[key] = rules
        else:
            del self._rules[key]
        self.revision += 1
        return True

    def _sync_cidr_identities(self) -> None:
        named = {str(p) for rules in self._rules.values() for r in rules for peer in r.peers()
                 if isinstance(peer, CIDRSelector) for p in peer.prefixes() if p.prefixlen}
        # a number released now is not handed out in the same pass: its old prefix's ipcache
        # row goes only after the new rows are written
        used = set(self.cidr_ids.values())
        for prefix in sorted(set(self.cidr_ids) - named):
            self._cache.remove_identity(self.cidr_ids.pop(prefix))
        ident = CIDR_IDENTITY_BASE
        for prefix in sorted(named - set(self.cidr_ids)):
            while ident in used:
                ident += 1
            self.cidr_ids[prefix] = ident
            used.add(ident)
            self._cache.add_identity(ident, _cidr_labels(prefix))

    # ---- identities ----
    def set_identities(self, mapping: Mapping[int, Iterable[str]]) -> None:
        cidr = {ident: _cidr_labels(prefix) for prefix, ident in self.cidr_ids.items()}
        self._cache.set_identities({**mapping, **cidr})
        for ident in [i for i in self._computed if i not in mapping]:   # gone endpoints
            del self._computed[ident]

    def cidr_identities(self) -> dict[str, int]:
        return dict(self.cidr_ids)

    # ---- endpoints ----
    def _selecting(self, labels: tuple[str, ...]) -> tuple[Rule, ...]:
        rules = self._subjects.get(labels)
        if rules is None:
            lm = label_map(labels)
            rules = self._subjects[labels] = tuple(
                r for key in sorted(self._rules) for r in self._rules[key]
                if r.subject.matches(lm))
        return rules

    def endpoint_policy(self, identity: int, labels: Iterable[str],
                        named_ports: NamedPorts) -> EndpointPolicy:
        """The map state of an endpoint with this identity, labels and own named ports."""
        lbls = tuple(sorted(labels))
        rules = self._selecting(lbls)
        key = (self.mode, self.allow_localhost, lbls, _freeze(named_ports), rules,
               tuple(self._cache.version(p) for r in rules for p in r.peers()))
        hit = self._computed.get(identity)
        if hit is not None and hit.key == key and hit.recorder.still_valid(self.named_ports):
            return hit.policy
        recorder = _Recorder(self.named_ports)
        policy = compute(rules, self._cache.selections, named_ports, recorder, self.mode,
                         self.allow_localhost)
        self._computed[identity] = _Computed(key, recorder, policy)
        return policy

    # ---- views ----
    def get(self) -> list[dict]:
        """The rules in force, for `datapath policy get`."""
        return [r.to_dict() for key in sorted(self._rules) for r in self._rules[key]]

    def selectors(self) -> list[dict]:
        return self._cache.listing()

    def count(self) -> int:
        """Policy objects in force."""
        return len(self._rules)
