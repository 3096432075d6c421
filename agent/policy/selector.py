"""Selectors over identity label sets: which security identities a policy peer names.

Owns the label-string form and every kind of peer selector, with a stable string form each (the
CLI shows it). Identity labels are strings "source:key=value" (`k8s:app=web`, `reserved:host`,
`cidr:10.0.0.0/8`); `label_map` turns a label set into {"source:key": value} for matching.

    LabelSelector      matchLabels + matchExpressions (In, NotIn, Exists, DoesNotExist) as one
                       sorted tuple of Requirements, ANDed; keys carry their source
                       (`normalize_key`: none or `any:` means `k8s:`; `reserved:` keys match
                       reserved labels). Empty: every identity.
    CIDRSelector       the CIDR identities whose `cidr:P` label has P inside cidr and inside no
                       except; for 0.0.0.0/0 also world (2) itself.
    EntitySelector     Cilium's entities: world (world and every CIDR identity), cluster (every
                       pod identity, host, remote-node, health, init, unmanaged, kube-apiserver,
                       ingress), host, remote-node, init, health, unmanaged, kube-apiserver,
                       ingress; world-ipv4 is world; world-ipv6 and none select nothing (IPv4
                       only here).
    WILDCARD           every peer (the entity all, an empty from/to): identity 0 in the map.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache

POD_NAMESPACE = "k8s:io.kubernetes.pod.namespace"
NAMESPACE_LABELS = "k8s:io.cilium.k8s.namespace.labels."   # + the namespace's label key
WORLD = "reserved:world"
CIDR_SOURCE = "cidr:"
SELECTOR_SOURCES = ("k8s", "any", "reserved")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
ENTITIES = ("all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "remote-node",
            "init", "health", "unmanaged", "kube-apiserver", "ingress", "none")
_CLUSTER_RESERVED = frozenset(f"reserved:{n}" for n in (
    "host", "remote-node", "health", "init", "unmanaged", "kube-apiserver", "ingress"))

LabelMap = Mapping[str, str]


def label_map(labels: Iterable[str]) -> dict[str, str]:
    """{"source:key": value} of label strings ("reserved:host" has the value "")."""
    out = {}
    for label in labels:
        key, _, value = label.partition("=")
        out[key] = value
    return out


def normalize_key(key: str) -> str:
    """A selector key with its source: none or `any:` means `k8s:`. Raises ValueError for a
    source other than k8s, any or reserved."""
    source, sep, name = key.partition(":")
    if not sep:
        return f"k8s:{key}"
    if source not in SELECTOR_SOURCES:
        raise ValueError(f"unknown label source {source!r} (expected one of "
                         f"{', '.join(SELECTOR_SOURCES)})")
    return f"k8s:{name}" if source == "any" else key


@dataclass(frozen=True, order=True)
class Requirement:
    """One term of a label selector; `key` carries its source."""
    key: str
    operator: str                   # one of OPERATORS
    values: tuple[str, ...] = ()    # sorted; empty for Exists and DoesNotExist

    def matches(self, labels: LabelMap) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        if self.operator == "In" and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        if self.operator in ("In", "NotIn"):
            return f"{self.key} {self.operator.lower()} ({','.join(self.values)})"
        return self.key if self.operator == "Exists" else f"!{self.key}"


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()   # sorted, unique, ANDed

    @classmethod
    def of(cls, match_labels: Mapping[str, str] | None = None,
           requirements: Iterable[Requirement] = ()) -> LabelSelector:
        """From matchLabels (each an In requirement) and requirements; keys already carry
        their source (see normalize_key)."""
        reqs = {Requirement(k, "In", (v,)) for k, v in (match_labels or {}).items()}
        reqs.update(requirements)
        return cls(tuple(sorted(reqs)))

    def add(self, *requirements: Requirement) -> LabelSelector:
        return LabelSelector.of(None, self.requirements + requirements)

    def matches(self, labels: LabelMap) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def has_key(self, key: str) -> bool:
        return any(r.key == key for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.key.startswith(f"{source}:") for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(map(str, self.requirements)) or "{}"


Span = tuple[int, int]   # a prefix as its first and last address


def _span(net: ipaddress.IPv4Network) -> Span:
    return int(net.network_address), int(net.broadcast_address)


@lru_cache(maxsize=65536)
def _label_span(prefix: str) -> Span:
    return _span(ipaddress.IPv4Network(prefix))


def _inside(p: Span, c: Span) -> bool:
    return c[0] <= p[0] and p[1] <= c[1]


@dataclass(frozen=True)
class CIDRSelector:
    cidr: ipaddress.IPv4Network
    excepts: tuple[ipaddress.IPv4Network, ...] = ()   # sorted, each inside cidr

    def prefixes(self) -> tuple[ipaddress.IPv4Network, ...]:
        """Every prefix this selector names (each needs a CIDR identity, but 0.0.0.0/0)."""
        return (self.cidr,) + self.excepts

    @cached_property
    def _spans(self) -> tuple[Span, tuple[Span, ...]]:
        return _span(self.cidr), tuple(_span(e) for e in self.excepts)

    def matches(self, labels: LabelMap) -> bool:
        for key in labels:
            if key.startswith(CIDR_SOURCE):
                p = _label_span(key[len(CIDR_SOURCE):])
                cidr, excepts = self._spans
                return _inside(p, cidr) and not any(_inside(p, e) for e in excepts)
        return self.cidr.prefixlen == 0 and WORLD in labels

    def __str__(self) -> str:
        out = f"cidr:{self.cidr}"
        return f"{out} except {','.join(map(str, self.excepts))}" if self.excepts else out


@dataclass(frozen=True)
class EntitySelector:
    entity: str   # one of ENTITIES but "all" (that one is WILDCARD)

    def matches(self, labels: LabelMap) -> bool:
        if self.entity in ("world", "world-ipv4"):
            return WORLD in labels
        if self.entity == "cluster":
            return POD_NAMESPACE in labels or any(k in _CLUSTER_RESERVED for k in labels)
        if self.entity in ("world-ipv6", "none"):
            return False
        return f"reserved:{self.entity}" in labels

    def __str__(self) -> str:
        return f"entity:{self.entity}"


@dataclass(frozen=True)
class WildcardSelector:
    """Every peer, known or not; the map represents it with identity 0."""

    def matches(self, labels: LabelMap) -> bool:
        return True

    def __str__(self) -> str:
        return "entity:all"


WILDCARD = WildcardSelector()

Peer = LabelSelector | CIDRSelector | EntitySelector | WildcardSelector
