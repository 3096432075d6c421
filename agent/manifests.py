"""Kubernetes manifests: the one place that reads and validates the directory of manifest YAML.

API:
    load_manifests(directory) -> ManifestSet
        Read and validate every *.yaml, *.yml and *.json file directly inside the directory
        (sorted by name; multi-document; `kind: List` expanded).
    ManifestStore(directory, cache=None)      the same directory, kept and re-read incrementally;
                                              `cache`: a file where .save_cache() keeps the store
                                              across restarts (see "The cache" below)
        .load() -> ManifestSet                read every file (text already seen is not re-parsed)
        .save_cache() -> bool                 write the cache if the store changed since it was
                                              read or written (False: nothing to write / no cache)
        .update(changed_paths) -> (ManifestSet, ManifestDelta)
                                              re-read only those files (created, modified or
                                              deleted; the directory's own path: all of them)
        .manifests                            the last good ManifestSet (None before a load)
        .directory                            the directory, without a trailing '/'
    ManifestDelta                             what one update changed: for each of pods,
        namespaces, services, endpointslices, ippools, l2policies and policies a KindDelta (a
        frozenset of every key touched, with .added / .changed / .removed); ignored_changed,
        policy_errors_changed; .empty; .merged(later) -> the two as one. EMPTY_DELTA: none.

Pods, Namespaces, Services, EndpointSlices, CiliumLoadBalancerIPPools and
CiliumL2AnnouncementPolicies are validated the way the Kubernetes API server (or Cilium) would
for the fields we use and returned in an immutable view, a `ManifestSet`; other kinds are listed in
`ignored`, not rejected. Every problem raises `ManifestError(file, obj, field, reason)`, except in
policy objects (NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy): those are
kept raw in `policies` for agent/policy to parse, and a policy whose metadata is bad (or that is
defined twice) is left out with its error in `policy_errors`, so one bad policy never holds back
the rest of the directory.

All or nothing: when a file is bad, load / update raise and the store keeps its last good state
(the next update is relative to it). An object that did not change stays the same Python object
from one ManifestSet to the next (consumers may compare with `is`); a ManifestSet is never
changed once returned (dicts of kinds an update did not touch are shared between sets).

How it is fast (see README): YAML is parsed by libyaml's event stream into plain dicts and lists
without PyYAML's Python-level composer and constructor (anything unusual -- aliases, merge keys,
tags, errors -- goes through yaml.load_all instead, which stays the reference); each file is cut
into its documents ('---' lines) and a document whose text did not change is neither parsed nor
validated again; the garbage collector is paused while a load builds its objects.

The cache (a restart): the store's whole state (each file's text, its pieces and the objects
they gave) pickled to one file in the agent's state directory, after a load that parsed
something and at shutdown. A store given that file restores it before its first load; the load
then reads every file as it always does and compares its text with the cached text, so only
what changed while the agent was down is parsed and validated, and the files always win. The
cache is used only when its header matches: a format version, a hash of this module's source
(a code change invalidates it), the Python version and the directory; its payload carries a
digest. A missing, stale, corrupt or unreadable cache is ignored (logged) and the directory is
parsed in full. The cache is pickle: it is as trusted as the state directory holding it (root
only, written 0600).
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import ipaddress
import itertools
import json
import logging
import operator
import os
import pickle
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import yaml

from datapath.errors import ManifestError

from . import gcpause
from .config import MAX_YAML_DEPTH, describe, key_text, yaml_problem

__all__ = ["ContainerPort", "Container", "Pod", "Namespace", "ServicePort", "Service",
           "SliceEndpoint", "EndpointSlicePort", "EndpointSlice", "IPPoolBlock", "LBIPPool",
           "L2Policy", "ManifestSet", "KindDelta", "ManifestDelta", "EMPTY_DELTA", "ManifestStore",
           "load_manifests"]

_SUFFIXES = (".yaml", ".yml", ".json")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_CILIUM = "cilium.io/v2alpha1"
_NS_NAME_LABEL = "kubernetes.io/metadata.name"   # the API server sets it on every Namespace
# kind -> (apiVersion, namespaced, how metadata.name is validated)
_KINDS: dict[str, tuple[str, bool, str]] = {
    "Pod": ("v1", True, "subdomain"),
    "Namespace": ("v1", False, "label"),  # Kubernetes requires namespace names to be labels
    "Service": ("v1", True, "1035"),      # Service names are DNS-1035 labels
    "EndpointSlice": ("discovery.k8s.io/v1", True, "subdomain"),
    "CiliumLoadBalancerIPPool": (_CILIUM, False, "subdomain"),
    "CiliumL2AnnouncementPolicy": (_CILIUM, False, "subdomain"),
    "NetworkPolicy": ("networking.k8s.io/v1", True, "subdomain"),
    "CiliumNetworkPolicy": ("cilium.io/v2", True, "subdomain"),
    "CiliumClusterwideNetworkPolicy": ("cilium.io/v2", False, "subdomain"),
}
POLICY_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
_HANDLED = tuple(_KINDS)
_HANDLED_SET = frozenset(_KINDS)
_POLICY_SET = frozenset(POLICY_KINDS)
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
_SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(rf"^{_LABEL}$")
_DNS_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_HAS_LOWER = re.compile(r"[a-z]")
_SPECIAL_NETS = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/32", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/24"))

Labels = tuple[tuple[str, str], ...]
log = logging.getLogger("datapath.manifests")
# values already found valid (names repeat: namespaces, nodes, container and port names, labels)
_GOOD_DNS_LABELS: set = set()
_GOOD_DNS_SUBDOMAINS: set = set()
_GOOD_LABELS: set = set()     # (key, value)


def _remember(good: set, v: object) -> None:
    if len(good) >= 100_000:
        good.clear()
    good.add(v)

# the reference YAML loader: libyaml's parser when PyYAML has it, with PyYAML's constructor
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _NamespacedKey:
    """`obj.key`, "namespace/name", computed once and kept in the instance's __dict__ (a
    functools.cached_property without its lock, which costs ~10 us a first access)."""

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        key = obj.__dict__["key"] = f"{obj.namespace}/{obj.name}"
        return key


@dataclass(frozen=True)
class ContainerPort:
    containerPort: int
    name: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True)
class Container:
    name: str
    image: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]  # sorted items, so Pod is hashable
    nodeName: str | None
    serviceAccountName: str
    containers: tuple[Container, ...]
    source: str
    terminating: bool = False       # metadata.deletionTimestamp is set: finish flows, take none
    ready: bool = True              # status.conditions Ready is not "False"

    key = _NamespacedKey()
    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...]
    source: str

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class ServicePort:
    name: str | None
    protocol: str            # TCP | UDP | SCTP
    port: int
    targetPort: int | str    # a port number, or the name of a container port
    nodePort: int | None     # only for NodePort / LoadBalancer; range checked against config later


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str                    # ClusterIP | NodePort | LoadBalancer
    clusterIP: str | None        # IPv4, "None" (headless) or None (to be allocated)
    selector: Labels | None      # None: no selector (endpoints come from EndpointSlices)
    ports: tuple[ServicePort, ...]
    externalIPs: tuple[str, ...]
    loadBalancerIP: str | None
    sessionAffinity: str         # None | ClientIP
    affinityTimeout: int         # seconds
    externalTrafficPolicy: str   # Cluster | Local
    internalTrafficPolicy: str   # Cluster | Local
    labels: Labels
    source: str

    key = _NamespacedKey()
    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def selector_dict(self) -> dict[str, str]:
        return dict(self.selector or ())

    @property
    def headless(self) -> bool:
        return self.clusterIP == "None"


@dataclass(frozen=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    nodeName: str | None


@dataclass(frozen=True)
class EndpointSlicePort:
    name: str | None
    port: int
    protocol: str


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    serviceName: str             # label kubernetes.io/service-name
    addressType: str             # IPv4
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[EndpointSlicePort, ...]
    source: str

    key = _NamespacedKey()

@dataclass(frozen=True)
class IPPoolBlock:
    cidr: str | None
    start: str | None
    stop: str | None

    def addresses(self) -> Iterator[str]:
        if self.cidr is not None:
            net = ipaddress.IPv4Network(self.cidr)
            if net.prefixlen < 31:  # skip the network and broadcast addresses
                first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
            else:
                first, last = int(net.network_address), int(net.broadcast_address)
        else:
            assert self.start is not None
            first = int(ipaddress.IPv4Address(self.start))
            last = int(ipaddress.IPv4Address(self.stop or self.start))
        for n in range(first, last + 1):
            yield str(ipaddress.IPv4Address(n))


@dataclass(frozen=True)
class LBIPPool:
    name: str
    blocks: tuple[IPPoolBlock, ...]
    serviceSelector: Labels | None   # matchLabels; None selects every Service
    disabled: bool
    source: str

    def addresses(self) -> Iterator[str]:
        """Every usable address, in block order."""
        for b in self.blocks:
            yield from b.addresses()


@dataclass(frozen=True)
class L2Policy:
    name: str
    interfaces: tuple[str, ...]      # regular expressions, as given
    externalIPs: bool
    loadBalancerIPs: bool
    nodeSelector: Labels | None      # matchLabels; None selects every node
    serviceSelector: Labels | None   # matchLabels; None selects every Service
    source: str


@dataclass
class ManifestSet:
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)  # key "ns/name"
    ignored: list[str] = field(default_factory=list)    # "file: Kind ns/name"
    services: dict[str, Service] = field(default_factory=dict)              # key "ns/name"
    endpointslices: dict[str, EndpointSlice] = field(default_factory=dict)  # key "ns/name"
    ippools: dict[str, LBIPPool] = field(default_factory=dict)              # key name
    l2policies: dict[str, L2Policy] = field(default_factory=dict)           # key name
    # policy objects, raw: (kind, namespace, name) -> (file, document); parsed by agent/policy
    policies: dict[tuple[str, str, str], tuple[str, dict]] = field(default_factory=dict)
    policy_errors: list[str] = field(default_factory=list)  # policies left out, and why

    def pods_on(self, node: str) -> list[Pod]:
        return sorted((p for p in self.pods.values() if p.nodeName == node), key=lambda p: p.key)

    def namespace_labels(self, ns: str) -> dict[str, str]:
        """A namespace's labels; one without a manifest still has the name label, as every
        namespace in Kubernetes does."""
        n = self.namespaces.get(ns)
        return n.label_dict if n else {_NS_NAME_LABEL: ns}

    def services_selecting(self, pod: Pod) -> list[Service]:
        """Services in the pod's namespace whose (non-empty) selector matches its labels."""
        labels = set(pod.labels)
        return sorted((s for s in self.services.values()
                       if s.namespace == pod.namespace and s.selector
                       and set(s.selector) <= labels), key=lambda s: s.key)

    def slices_for(self, service: Service) -> list[EndpointSlice]:
        return sorted((e for e in self.endpointslices.values()
                       if e.namespace == service.namespace and e.serviceName == service.name),
                      key=lambda e: e.key)


class _Obj:
    """Error context for one object: the file and how the object is named."""

    def __init__(self, file: str, name: str):
        self.file, self.name = file, name

    def fail(self, path: str, reason: str) -> NoReturn:
        raise ManifestError(self.file, self.name, path, reason)

    def mapping(self, v: object, path: str, required: bool = False) -> dict:
        if v is None and not required:
            return {}
        if not isinstance(v, dict):
            self.fail(path, "required field is missing" if v is None
                      else f"expected a mapping, got {describe(v)}")
        return v

    def strings(self, v: object, path: str) -> tuple[str, ...]:
        if v is None:
            return ()
        if not isinstance(v, list):
            self.fail(path, f"expected a list of strings, got {describe(v)}")
        for i, s in enumerate(v):
            if not isinstance(s, str):
                self.fail(f"{path}[{i}]", f"expected a string, got {describe(s)} (quote it)")
        return tuple(v)

    def seq(self, v: object, path: str, what: str = "a list") -> list:
        if v is None:
            return []
        if not isinstance(v, list):
            self.fail(path, f"expected {what}, got {describe(v)}")
        return v

    def integer(self, v: object, path: str, lo: int, hi: int) -> int:
        if v is None:
            self.fail(path, "required field is missing")
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            self.fail(path, f"expected an integer from {lo} to {hi}, got {describe(v)}")
        return v

    def boolean(self, v: object, path: str, default: bool) -> bool:
        if v is None:
            return default
        if not isinstance(v, bool):
            self.fail(path, f"expected true or false, got {describe(v)}")
        return v

    def choice(self, v: object, path: str, choices: tuple[str, ...], default: str) -> str:
        if v is None:
            return default
        if not isinstance(v, str) or v not in choices:
            self.fail(path, f"expected one of {', '.join(choices)}, got {describe(v)}")
        return v

    def ipv4(self, v: object, path: str, special: bool = True) -> str:
        try:
            if not isinstance(v, str):
                raise ValueError
            a = ipaddress.IPv4Address(v)
        except ValueError:
            self.fail(path, "required field is missing" if v is None
                      else f"expected an IPv4 address, got {describe(v)}")
        if not special and any(a in n for n in _SPECIAL_NETS):
            self.fail(path, "may not be unspecified, loopback, link-local or link-local "
                            f"multicast, got {describe(v)}")
        return str(a)

    def iana_name(self, v: object, path: str) -> str:
        if not (isinstance(v, str) and len(v) <= 15 and _PORT_NAME.match(v)
                and "--" not in v and _HAS_LOWER.search(v)):
            self.fail(path, "expected an IANA service name (at most 15 lowercase letters, "
                            f"digits and '-', with at least one letter), got {describe(v)}")
        return v

    def dns_name(self, v: object, path: str, label: bool) -> str:
        good = _GOOD_DNS_LABELS if label else _GOOD_DNS_SUBDOMAINS
        if type(v) is str and v in good:
            return v
        if label:
            what, rx, limit, chars = "DNS-1123 label", _DNS_LABEL, 63, "'-'"
        else:
            what, rx, limit, chars = "DNS-1123 subdomain", _DNS_SUBDOMAIN, 253, "'-', '.'"
        if v is None:
            self.fail(path, "required field is missing")
        if not isinstance(v, str) or len(v) > limit or not rx.match(v):
            self.fail(path, f"expected a {what} (lowercase letters, digits, {chars}, at most "
                            f"{limit}, starting and ending with a letter or digit), got {describe(v)}")
        if type(v) is str:
            _remember(good, v)
        return v


def _dns_1035(o: _Obj, v: object, path: str) -> str:
    o.dns_name(v, path, label=True)
    if not _DNS_1035.match(str(v)):
        o.fail(path, "expected a DNS-1035 label (lowercase letters, digits, '-', at most 63, "
                     f"starting with a letter and ending with a letter or digit), got {describe(v)}")
    return str(v)


def _labels(o: _Obj, v: object, where: str = "metadata.labels") -> Labels:
    out: dict[str, str] = {}
    for k, val in o.mapping(v, where).items():
        if type(val) is str and (k, val) in _GOOD_LABELS:   # (str keys and values only)
            out[k] = val
            continue
        if not isinstance(k, str):
            o.fail(where, f"label keys must be strings, got {describe(k)}")
        path = f"{where}[{k if len(k) <= 317 else k[:200] + '...'}]"    # 317: the longest valid
        prefix, _, name = k.rpartition("/")
        if "/" in k and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
            o.fail(path, f"label key prefix must be a DNS-1123 subdomain, got {describe(prefix)}")
        if len(name) > 63 or not _QUALIFIED_NAME.match(name):
            o.fail(path, "label key name must be at most 63 letters, digits, '-', '_' or '.', "
                         f"starting and ending with a letter or digit, got {describe(name)}")
        if not isinstance(val, str):
            o.fail(path, f"label values must be strings (quote it), got {describe(val)}")
        if val and (len(val) > 63 or not _QUALIFIED_NAME.match(val)):
            o.fail(path, "label value must be empty or at most 63 letters, digits, '-', '_' "
                         f"or '.', starting and ending with a letter or digit, got {describe(val)}")
        out[k] = val
        if type(k) is str and type(val) is str:
            _remember(_GOOD_LABELS, (k, val))
    return tuple(sorted(out.items()))


def _port(o: _Obj, v: object, path: str) -> ContainerPort:
    p = o.mapping(v, path, required=True)
    num = p.get("containerPort")
    if num is None:
        o.fail(f"{path}.containerPort", "required field is missing")
    if not isinstance(num, int) or isinstance(num, bool) or not 1 <= num <= 65535:
        o.fail(f"{path}.containerPort", f"expected an integer from 1 to 65535, got {describe(num)}")
    proto = p.get("protocol", "TCP")
    if proto not in _PROTOCOLS or not isinstance(proto, str):
        o.fail(f"{path}.protocol", f"expected one of TCP, UDP, SCTP, got {describe(proto)}")
    name = p.get("name")
    if name is not None:
        o.iana_name(name, f"{path}.name")
    return ContainerPort(containerPort=num, name=name, protocol=proto)


def _container(o: _Obj, v: object, path: str) -> Container:
    c = o.mapping(v, path, required=True)
    name = o.dns_name(c.get("name"), f"{path}.name", label=True)
    image = c.get("image")
    if image is not None and not isinstance(image, str):
        o.fail(f"{path}.image", f"expected a string, got {describe(image)}")
    ports = c.get("ports")
    if ports is not None and not isinstance(ports, list):
        o.fail(f"{path}.ports", f"expected a list, got {describe(ports)}")
    return Container(
        name=name,
        image=image,
        command=o.strings(c.get("command"), f"{path}.command"),
        args=o.strings(c.get("args"), f"{path}.args"),
        ports=tuple(_port(o, p, f"{path}.ports[{i}]") for i, p in enumerate(ports or [])),
    )


def _pod(o: _Obj, doc: dict, ns: str, name: str, file: str) -> Pod:
    labels = _labels(o, doc["metadata"].get("labels"))
    spec = o.mapping(doc.get("spec"), "spec", required=True)
    node = spec.get("nodeName")
    if node is not None:
        o.dns_name(node, "spec.nodeName", label=False)
    sa = o.dns_name(spec.get("serviceAccountName") or "default", "spec.serviceAccountName",
                    label=False)
    cs = spec.get("containers")
    if not isinstance(cs, list) or not cs:
        o.fail("spec.containers", "required field is missing" if cs is None
               else f"expected a non-empty list of containers, got {describe(cs)}")
    containers = tuple(_container(o, c, f"spec.containers[{i}]") for i, c in enumerate(cs))
    seen: set[str] = set()
    for i, c in enumerate(containers):
        if c.name in seen:
            o.fail(f"spec.containers[{i}].name", f"duplicate container name {c.name!r}")
        seen.add(c.name)
    terminating = bool(doc["metadata"].get("deletionTimestamp"))
    ready = True
    status = doc.get("status")
    if isinstance(status, dict) and isinstance(status.get("conditions"), list):
        for cond in status["conditions"]:
            if isinstance(cond, dict) and cond.get("type") == "Ready":
                ready = str(cond.get("status")) != "False"
    return Pod(namespace=ns, name=name, labels=labels, nodeName=node,
               serviceAccountName=sa, containers=containers, source=file,
               terminating=terminating, ready=ready)


def _service_port(o: _Obj, v: object, path: str, stype: str, several: bool) -> ServicePort:
    p = o.mapping(v, path, required=True)
    name = p.get("name")
    if name == "":
        name = None
    if name is not None:
        o.dns_name(name, f"{path}.name", label=True)
    elif several:
        o.fail(f"{path}.name", "required when the Service has more than one port")
    proto = o.choice(p.get("protocol"), f"{path}.protocol", _PROTOCOLS, "TCP")
    port = o.integer(p.get("port"), f"{path}.port", 1, 65535)
    tp = p.get("targetPort")
    target: int | str = port
    if tp is not None:
        if isinstance(tp, str):
            ok = len(tp) <= 15 and _PORT_NAME.match(tp) and "--" not in tp \
                and _HAS_LOWER.search(tp)
        else:
            ok = isinstance(tp, int) and not isinstance(tp, bool) and 1 <= tp <= 65535
        if not ok:
            o.fail(f"{path}.targetPort", "expected a port number from 1 to 65535 or a container "
                                         "port name (IANA service name: at most 15 lowercase "
                                         "letters, digits and '-', with at least one letter), "
                                         f"got {describe(tp)}")
        target = tp  # type: ignore[assignment]
    node_port = p.get("nodePort")
    if node_port is not None:
        o.integer(node_port, f"{path}.nodePort", 1, 65535)
        if stype not in ("NodePort", "LoadBalancer"):
            o.fail(f"{path}.nodePort", f"may not be set for {stype} services "
                                       "(only NodePort and LoadBalancer)")
    return ServicePort(name=name, protocol=proto, port=port, targetPort=target,
                       nodePort=node_port)


def _cluster_ip(o: _Obj, spec: dict, stype: str) -> str | None:
    cip, path = spec.get("clusterIP"), "spec.clusterIP"
    if spec.get("clusterIPs") is not None:
        cips = o.strings(spec.get("clusterIPs"), "spec.clusterIPs")
        if len(cips) > 1:
            o.fail("spec.clusterIPs", f"only one (IPv4) cluster IP is supported, got {len(cips)}")
        if cips and cip in (None, ""):
            cip, path = cips[0], "spec.clusterIPs[0]"
        elif cips and cips[0] != cip:
            o.fail("spec.clusterIPs[0]", f"must equal spec.clusterIP {describe(cip)}, "
                                         f"got {describe(cips[0])}")
    if cip is None or cip == "":
        return None
    if cip == "None":
        if stype != "ClusterIP":
            o.fail(path, f"may not be 'None' (headless) for {stype} services")
        return "None"
    return o.ipv4(cip, path)


def _service(o: _Obj, doc: dict, ns: str, name: str, file: str) -> Service:
    labels = _labels(o, doc["metadata"].get("labels"))
    spec = o.mapping(doc.get("spec"), "spec", required=True)
    if spec.get("type") == "ExternalName":
        o.fail("spec.type", "ExternalName services are not supported")
    stype = o.choice(spec.get("type"), "spec.type", _SERVICE_TYPES, "ClusterIP")
    cluster_ip = _cluster_ip(o, spec, stype)
    selector = _labels(o, spec.get("selector"), "spec.selector") or None

    raw = spec.get("ports")
    if not isinstance(raw, list) or not raw:
        o.fail("spec.ports", "required field is missing" if raw is None
               else f"expected a non-empty list of ports, got {describe(raw)}")
    ports = tuple(_service_port(o, p, f"spec.ports[{i}]", stype, len(raw) > 1)
                  for i, p in enumerate(raw))
    names: dict[str, int] = {}
    pairs: dict[tuple[int, str], int] = {}
    node_ports: dict[tuple[int, str], int] = {}
    for i, sp in enumerate(ports):
        if sp.name is not None:
            if sp.name in names:
                o.fail(f"spec.ports[{i}].name",
                       f"duplicate port name {sp.name!r} (also spec.ports[{names[sp.name]}])")
            names[sp.name] = i
        pair = (sp.port, sp.protocol)
        if pair in pairs:
            o.fail(f"spec.ports[{i}]",
                   f"duplicate port {sp.port}/{sp.protocol} (also spec.ports[{pairs[pair]}])")
        pairs[pair] = i
        if sp.nodePort is not None:
            np = (sp.nodePort, sp.protocol)
            if np in node_ports:
                o.fail(f"spec.ports[{i}].nodePort", f"duplicate nodePort {sp.nodePort}/"
                       f"{sp.protocol} (also spec.ports[{node_ports[np]}])")
            node_ports[np] = i

    external_ips = tuple(o.ipv4(a, f"spec.externalIPs[{i}]", special=False)
                         for i, a in enumerate(o.strings(spec.get("externalIPs"),
                                                         "spec.externalIPs")))
    lb_ip = spec.get("loadBalancerIP")
    lb_ip = None if lb_ip is None or lb_ip == "" else o.ipv4(lb_ip, "spec.loadBalancerIP")

    affinity = o.choice(spec.get("sessionAffinity"), "spec.sessionAffinity",
                        ("None", "ClientIP"), "None")
    timeout = 10800
    if spec.get("sessionAffinityConfig") is not None:
        if affinity != "ClientIP":
            o.fail("spec.sessionAffinityConfig", "must not be set when spec.sessionAffinity is None")
        cfg = o.mapping(spec["sessionAffinityConfig"], "spec.sessionAffinityConfig")
        client = o.mapping(cfg.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
        if client.get("timeoutSeconds") is not None:
            timeout = o.integer(client["timeoutSeconds"],
                                "spec.sessionAffinityConfig.clientIP.timeoutSeconds", 1, 86400)

    etp = o.choice(spec.get("externalTrafficPolicy"), "spec.externalTrafficPolicy",
                   ("Cluster", "Local"), "Cluster")
    # Kubernetes allows Local only for externally reachable Services
    if etp == "Local" and stype == "ClusterIP" and not external_ips:
        o.fail("spec.externalTrafficPolicy", "Local is only allowed for NodePort and "
                                             "LoadBalancer services (or ones with externalIPs)")
    itp = o.choice(spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy",
                   ("Cluster", "Local"), "Cluster")
    return Service(namespace=ns, name=name, type=stype, clusterIP=cluster_ip, selector=selector,
                   ports=ports, externalIPs=external_ips, loadBalancerIP=lb_ip,
                   sessionAffinity=affinity, affinityTimeout=timeout,
                   externalTrafficPolicy=etp, internalTrafficPolicy=itp, labels=labels,
                   source=file)


def _slice_endpoint(o: _Obj, v: object, path: str) -> SliceEndpoint:
    e = o.mapping(v, path, required=True)
    addrs = e.get("addresses")
    if not isinstance(addrs, list) or not addrs:
        o.fail(f"{path}.addresses", "required field is missing" if addrs is None
               else f"expected a non-empty list of addresses, got {describe(addrs)}")
    addresses = tuple(o.ipv4(a, f"{path}.addresses[{i}]", special=False)
                      for i, a in enumerate(addrs))
    cond = o.mapping(e.get("conditions"), f"{path}.conditions")
    ready = o.boolean(cond.get("ready"), f"{path}.conditions.ready", True)
    serving = o.boolean(cond.get("serving"), f"{path}.conditions.serving", ready)
    terminating = o.boolean(cond.get("terminating"), f"{path}.conditions.terminating", False)
    node = e.get("nodeName")
    if node is not None:
        o.dns_name(node, f"{path}.nodeName", label=False)
    return SliceEndpoint(addresses=addresses, ready=ready, serving=serving,
                         terminating=terminating, nodeName=node)


def _endpointslice(o: _Obj, doc: dict, ns: str, name: str, file: str) -> EndpointSlice:
    labels = dict(_labels(o, doc["metadata"].get("labels")))
    svc_path = f"metadata.labels[{_SERVICE_NAME_LABEL}]"
    if _SERVICE_NAME_LABEL not in labels:
        o.fail(svc_path, "required label is missing (names the Service this slice belongs to)")
    service = _dns_1035(o, labels[_SERVICE_NAME_LABEL], svc_path)
    at = doc.get("addressType")
    if at is None:
        o.fail("addressType", "required field is missing")
    if at in ("IPv6", "FQDN"):
        o.fail("addressType", f"{at} EndpointSlices are not supported (only IPv4)")
    o.choice(at, "addressType", ("IPv4", "IPv6", "FQDN"), "IPv4")
    endpoints = tuple(_slice_endpoint(o, e, f"endpoints[{i}]")
                      for i, e in enumerate(o.seq(doc.get("endpoints"), "endpoints")))
    ports: list[EndpointSlicePort] = []
    seen: dict[str | None, int] = {}
    for i, p in enumerate(o.seq(doc.get("ports"), "ports")):
        path = f"ports[{i}]"
        m = o.mapping(p, path, required=True)
        pname = m.get("name")
        if pname == "":
            pname = None
        if pname is not None:
            o.dns_name(pname, f"{path}.name", label=True)
        if pname in seen:
            o.fail(f"{path}.name", f"duplicate port name {describe(pname)} "
                                   f"(also ports[{seen[pname]}])")
        seen[pname] = i
        ports.append(EndpointSlicePort(
            name=pname, port=o.integer(m.get("port"), f"{path}.port", 1, 65535),
            protocol=o.choice(m.get("protocol"), f"{path}.protocol", _PROTOCOLS, "TCP")))
    return EndpointSlice(namespace=ns, name=name, serviceName=service, addressType="IPv4",
                         endpoints=endpoints, ports=tuple(ports), source=file)


def _selector(o: _Obj, v: object, path: str) -> Labels | None:
    """A label selector with matchLabels only; None when it is absent or empty."""
    m = o.mapping(v, path)
    for k in m:
        if k == "matchExpressions":
            if m[k] not in (None, []):
                o.fail(f"{path}.matchExpressions", "not supported (use matchLabels)")
        elif k != "matchLabels":  # a typo here would silently select everything
            o.fail(f"{path}.{key_text(k)}", "unknown field (expected matchLabels)")
    return _labels(o, m.get("matchLabels"), f"{path}.matchLabels") or None


def _pool_block(o: _Obj, v: object, path: str) -> IPPoolBlock:
    b = o.mapping(v, path, required=True)
    cidr, start, stop = b.get("cidr"), b.get("start"), b.get("stop")
    if cidr is not None:
        if start is not None or stop is not None:
            o.fail(path, "set either cidr or start/stop, not both")
        try:
            if not isinstance(cidr, str) or "/" not in cidr:
                raise ValueError
            net = ipaddress.IPv4Network(cidr, strict=False)
        except ValueError:
            o.fail(f"{path}.cidr", f"expected an IPv4 CIDR such as 10.0.10.0/24, "
                                   f"got {describe(cidr)}")
        if net.network_address != ipaddress.IPv4Address(cidr.split("/")[0]):
            o.fail(f"{path}.cidr", f"has host bits set (did you mean {str(net)!r}?), "
                                   f"got {describe(cidr)}")
        return IPPoolBlock(cidr=str(net), start=None, stop=None)
    if start is None:
        o.fail(f"{path}.start" if stop is not None else path,
               "required field is missing (set cidr, or start and optionally stop)")
    first = o.ipv4(start, f"{path}.start")
    last = first if stop is None else o.ipv4(stop, f"{path}.stop")
    if ipaddress.IPv4Address(last) < ipaddress.IPv4Address(first):
        o.fail(f"{path}.stop", f"must not be before start {first!r}, got {describe(stop)}")
    return IPPoolBlock(cidr=None, start=first, stop=last)


def _ippool(o: _Obj, doc: dict, name: str, file: str) -> LBIPPool:
    spec = o.mapping(doc.get("spec"), "spec", required=True)
    if "blocks" in spec and "cidrs" in spec:
        o.fail("spec.cidrs", "set spec.blocks or its older name spec.cidrs, not both")
    key = "spec.cidrs" if "cidrs" in spec else "spec.blocks"
    raw = spec.get(key[5:])
    if not isinstance(raw, list) or not raw:
        o.fail(key, "required field is missing" if raw is None
               else f"expected a non-empty list of blocks, got {describe(raw)}")
    return LBIPPool(
        name=name,
        blocks=tuple(_pool_block(o, b, f"{key}[{i}]") for i, b in enumerate(raw)),
        serviceSelector=_selector(o, spec.get("serviceSelector"), "spec.serviceSelector"),
        disabled=o.boolean(spec.get("disabled"), "spec.disabled", False),
        source=file)


def _l2policy(o: _Obj, doc: dict, name: str, file: str) -> L2Policy:
    spec = o.mapping(doc.get("spec"), "spec", required=True)
    interfaces = o.strings(spec.get("interfaces"), "spec.interfaces")
    for i, rx in enumerate(interfaces):
        try:
            re.compile(rx)
        except re.error as e:
            o.fail(f"spec.interfaces[{i}]", f"not a valid regular expression ({e}): {rx!r}")
    return L2Policy(
        name=name, interfaces=interfaces,
        externalIPs=o.boolean(spec.get("externalIPs"), "spec.externalIPs", False),
        loadBalancerIPs=o.boolean(spec.get("loadBalancerIPs"), "spec.loadBalancerIPs", False),
        nodeSelector=_selector(o, spec.get("nodeSelector"), "spec.nodeSelector"),
        serviceSelector=_selector(o, spec.get("serviceSelector"), "spec.serviceSelector"),
        source=file)


# ---- YAML: libyaml's events straight to dicts and lists -------------------------------------

try:
    from yaml._yaml import CParser as _CParser
except ImportError:          # PyYAML without libyaml: the reference loader does everything
    _CParser = None
from yaml.events import (MappingEndEvent, MappingStartEvent, ScalarEvent,  # noqa: E402
                         SequenceEndEvent, SequenceStartEvent, StreamEndEvent)
from yaml.nodes import ScalarNode  # noqa: E402

_RESOLVERS = yaml.resolver.Resolver.yaml_implicit_resolvers   # first char -> [(tag, regexp)]
_STR_TAG = "tag:yaml.org,2002:str"
# tags whose scalars SafeConstructor builds without looking at anything else
_SCALAR_TAGS = frozenset({_STR_TAG, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                          "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
                          "tag:yaml.org,2002:timestamp"})
_MAP_TAGS = (None, "!", "tag:yaml.org,2002:map")
_SEQ_TAGS = (None, "!", "tag:yaml.org,2002:seq")
_CONSTRUCTOR = yaml.SafeLoader("")   # only its scalar constructors are used (they keep no state)
_PLAIN: dict[str, object] = {}       # plain scalar -> its value, for ones that may not be strings
_MISSING = object()


class _Unusual(Exception):
    """Something the fast path leaves to PyYAML's own loader."""


def _resolve_plain(value: str) -> object:
    """What SafeLoader makes of a plain (unquoted, untagged) scalar, as its resolver does."""
    tag = _STR_TAG
    for t, rx in _RESOLVERS.get(value[:1], ()):
        if rx.match(value):
            tag = t
            break
    if tag not in _SCALAR_TAGS:      # '<<' (merge), '=' (value)
        raise _Unusual
    out = value if tag == _STR_TAG else \
        _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, ScalarNode(tag, value))
    if len(_PLAIN) > 4096:
        _PLAIN.clear()
    _PLAIN[value] = out
    return out


def _tagged(ev) -> object:
    tag = ev.tag
    if tag == "!":                   # the non-specific tag: a string
        return ev.value
    if tag not in _SCALAR_TAGS:
        raise _Unusual
    return ev.value if tag == _STR_TAG else _CONSTRUCTOR.yaml_constructors[tag](
        _CONSTRUCTOR, ScalarNode(tag, ev.value, style=ev.style))


def _node(ev, get, depth: int = 1) -> object:
    """The value that starts with event `ev` at nesting level `depth`; `get` returns the next
    event. Nesting past MAX_YAML_DEPTH is left to _parse (which rejects it)."""
    cls = type(ev)
    if cls is MappingStartEvent:
        if ev.tag not in _MAP_TAGS or depth > MAX_YAML_DEPTH:
            raise _Unusual
        out: dict = {}
        while True:
            k = get()
            kc = type(k)
            if kc is ScalarEvent:
                if k.tag is not None:
                    key = _tagged(k)
                else:
                    key = k.value
                    if k.implicit[0] and key[:1] in _RESOLVERS:
                        key = _PLAIN.get(key, _MISSING)
                        if key is _MISSING:
                            key = _resolve_plain(k.value)
            elif kc is MappingEndEvent:
                return out
            else:                    # a collection or an alias as a key
                raise _Unusual
            v = get()
            if type(v) is ScalarEvent:
                if v.tag is not None:
                    out[key] = _tagged(v)
                else:
                    val = v.value
                    if v.implicit[0] and val[:1] in _RESOLVERS:
                        val = _PLAIN.get(val, _MISSING)
                        if val is _MISSING:
                            val = _resolve_plain(v.value)
                    out[key] = val
            else:
                out[key] = _node(v, get, depth + 1)
    if cls is ScalarEvent:
        if ev.tag is not None:
            return _tagged(ev)
        val = ev.value
        if ev.implicit[0] and val[:1] in _RESOLVERS:
            val = _PLAIN.get(val, _MISSING)
            if val is _MISSING:
                val = _resolve_plain(ev.value)
        return val
    if cls is SequenceStartEvent:
        if ev.tag not in _SEQ_TAGS or depth > MAX_YAML_DEPTH:
            raise _Unusual
        seq: list = []
        append = seq.append
        depth += 1
        while True:
            e = get()
            if type(e) is SequenceEndEvent:
                return seq
            append(_node(e, get, depth))
    raise _Unusual                   # an alias


def _fast_load_all(text: str) -> list:
    """yaml.load_all(text, SafeLoader)'s documents, built from libyaml's events; raises
    _Unusual (or a YAMLError) for anything it does not do the same way."""
    parser = _CParser(text)
    get = parser.get_event
    try:
        get()                        # stream start
        docs = []
        while True:
            ev = get()               # document start, or stream end
            if type(ev) is StreamEndEvent:
                return docs
            docs.append(_node(get(), get))
            get()                    # document end
    finally:
        parser.dispose()


def _parse(path: str, text: str) -> list:
    """The documents of one YAML text; a syntax error is a ManifestError naming its line, and
    so is a text nested too deep, expanding too far through aliases or holding an integer too
    long to read (config.yaml_problem: checked before the reference loader, whose C composer
    would overflow the stack)."""
    if _CParser is not None:
        try:
            return _fast_load_all(text)
        except Exception:    # noqa: BLE001 -- the reference loader decides, and words the error
            pass
    problem = yaml_problem(text)
    if problem:
        raise ManifestError(path, "<yaml>", *problem)
    try:
        return list(yaml.load_all(text, Loader=_YAML_LOADER))
    except (ValueError, RecursionError) as e:   # e.g. an invalid date (2001-13-45)
        raise ManifestError(path, "<yaml>", "<document>", f"cannot read a value: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<document>"
        raise ManifestError(path, "<yaml>", where, str(e.problem or e.context)) from None
    except yaml.YAMLError as e:
        raise ManifestError(path, "<yaml>", "<document>", str(e)) from None


# a line that starts a document: libyaml ends every node before it (even in a flow collection or
# a quoted scalar, where it is an error), so the pieces of a text cut there parse to the same
# documents as the whole text
_DOC_START = re.compile(r"\n(?=---(?:[ \t\r\n]|$))")


def _split(text: str) -> list[str]:
    """`text` cut before each document start line; the pieces concatenate back to it. A text
    with directives (%YAML, %TAG: they belong to the document after them) stays whole."""
    if text[:1] == "%" or "\n%" in text:
        return [text]
    cuts = [m.end() for m in _DOC_START.finditer(text)]
    if not cuts:
        return [text]
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


# ---- validation of one document ------------------------------------------------------------

# items a document yields, in order:
#   (_OBJ, ident, attr, key, obj)   an object of a validated kind; ident = (kind, ns, name)
#   (_POLICY, ident, (file, doc))   a policy object, kept raw
#   (_POLICY_ERROR, message)        a policy left out
#   (_IGNORED, "file: Kind ns/name")
_OBJ, _POLICY, _POLICY_ERROR, _IGNORED = range(4)
_ATTR = {"Pod": "pods", "Namespace": "namespaces", "Service": "services",
         "EndpointSlice": "endpointslices", "CiliumLoadBalancerIPPool": "ippools",
         "CiliumL2AnnouncementPolicy": "l2policies"}
_KIND_ATTRS = ("pods", "namespaces", "services", "endpointslices", "ippools", "l2policies")


def _object_name(ident: tuple[str, str, str]) -> str:
    kind, ns, name = ident
    return f"{kind} {ns}/{name}" if _KINDS[kind][1] else f"{kind} {name}"


def _duplicate(ident: tuple[str, str, str], file: str, first: str) -> ManifestError:
    return ManifestError(file, _object_name(ident), "metadata.name",
                         f"duplicate {ident[0]}: already defined in {first}")


def _document(doc: object, file: str, where: str, out: list, claim) -> None:
    """Validate one document (a List: each item), appending its items to `out`. `claim(ident)`
    is called for each object of a validated kind before its body is checked, and raises when
    the object is already defined."""
    o = _Obj(file, f"<{where}>")
    if not isinstance(doc, dict):
        o.fail("<document>", f"expected a mapping (a Kubernetes object), got {describe(doc)}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        o.fail("kind", "required field is missing" if kind is None
               else f"expected a string, got {describe(kind)}")
    if kind == "List":
        items = doc.get("items") or []
        if not isinstance(items, list):
            o.fail("items", f"expected a list, got {describe(items)}")
        for i, item in enumerate(items):
            _document(item, file, f"{where} items[{i}]", out, claim)
        return
    if kind not in _HANDLED_SET:
        for h in _HANDLED:  # 'pod' silently ignored would be a trap
            if kind.lower() == h.lower():
                o.fail("kind", f"unknown kind {kind!r}, did you mean {h!r}?")
        meta = doc.get("metadata")
        m = meta if isinstance(meta, dict) else {}
        out.append((_IGNORED,
                    f"{file}: {kind} {m.get('namespace') or 'default'}/{m.get('name', '?')}"))
        return
    if kind in _POLICY_SET:
        try:
            ident = _header(o, doc, kind, where)
        except ManifestError as e:
            out.append((_POLICY_ERROR, str(e)))
        else:
            out.append((_POLICY, ident, (file, doc)))
        return
    ident = _header(o, doc, kind, where)
    claim(ident)
    _, ns, name = ident
    if kind == "Pod":
        obj: object = _pod(o, doc, ns, name, file)
    elif kind == "Namespace":
        labels = dict(_labels(o, doc["metadata"].get("labels")))
        labels[_NS_NAME_LABEL] = name
        obj = Namespace(name=name, labels=tuple(sorted(labels.items())), source=file)
    elif kind == "Service":
        obj = _service(o, doc, ns, name, file)
    elif kind == "EndpointSlice":
        obj = _endpointslice(o, doc, ns, name, file)
    elif kind == "CiliumLoadBalancerIPPool":
        obj = _ippool(o, doc, name, file)
    else:
        obj = _l2policy(o, doc, name, file)
    key = name if kind in ("Namespace", "CiliumLoadBalancerIPPool",
                           "CiliumL2AnnouncementPolicy") else f"{ns}/{name}"
    out.append((_OBJ, ident, _ATTR[kind], key, obj))


def _header(o: _Obj, doc: dict, kind: str, where: str) -> tuple[str, str, str]:
    """metadata and apiVersion of a handled kind; returns (kind, namespace, name)."""
    api_version, namespaced, name_rule = _KINDS[kind]
    o.name = f"{kind} ({where})"
    meta = o.mapping(doc.get("metadata"), "metadata", required=True)
    raw_name = meta.get("name")
    if namespaced:
        raw_ns = meta.get("namespace") or "default"
        if isinstance(raw_name, str) and raw_name and isinstance(raw_ns, str):
            o.name = f"{kind} {raw_ns}/{raw_name}"
        ns = o.dns_name(raw_ns, "metadata.namespace", label=True)
    else:  # cluster-scoped: metadata.namespace is ignored, as the API server does
        if isinstance(raw_name, str) and raw_name:
            o.name = f"{kind} {raw_name}"
        ns = ""
    if name_rule == "1035":
        name = _dns_1035(o, raw_name, "metadata.name")
    else:
        name = o.dns_name(raw_name, "metadata.name", label=name_rule == "label")
    if doc.get("apiVersion") != api_version:
        v = doc.get("apiVersion")
        o.fail("apiVersion", f"required field is missing (expected {api_version!r})"
               if v is None else f"expected {api_version!r} for {kind}, got {describe(v)}")
    return (kind, ns, name)


# ---- files, cut into documents -------------------------------------------------------------

class _Chunk:
    """One piece of a file (see _split) and what its documents yield. A piece object stands at
    one place of one file only."""
    __slots__ = ("text", "ndocs", "objs", "policy", "ignored", "offset")

    def __init__(self, text: str, ndocs: int, items: list, offset: int):
        self.text, self.ndocs = text, ndocs
        self.objs = [i for i in items if i[0] == _OBJ]
        self.policy = [i for i in items if i[0] in (_POLICY, _POLICY_ERROR)]
        self.ignored = [i[1] for i in items if i[0] == _IGNORED]
        # a policy error names its document by number: reusable only at the same place
        self.offset = offset if any(i[0] == _POLICY_ERROR for i in self.policy) else None


class _File:
    """One manifest file as last read: its text and its pieces in order."""
    __slots__ = ("text", "chunks", "policy", "ignored", "fixed")

    def __init__(self, text: str, chunks: list[_Chunk], scan: bool = True):
        self.text, self.chunks = text, chunks
        self.policy: list = []       # policy items, in order
        self.ignored: list[str] = []
        self.fixed = False           # a piece is tied to its place (see _Chunk.offset)
        if scan:                     # (skipped when no piece old or new has any of them)
            self.policy = [i for c in chunks if c.policy for i in c.policy]
            self.ignored = [s for c in chunks if c.ignored for s in c.ignored]
            self.fixed = any(c.offset is not None for c in chunks)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise ManifestError(path, "<file>", "<file>", "not UTF-8 text") from None
    except OSError as e:
        raise ManifestError(path, "<file>", "<file>", (e.strerror or str(e)).lower()) from None


def _validate(path: str, docs: list, offset: int, claim) -> list:
    items: list = []
    for i, doc in enumerate(docs):
        if doc is not None:  # empty documents ("---\n---") are skipped
            _document(doc, path, f"document {offset + i + 1}", items, claim)
    return items


_TEXT = operator.attrgetter("text")
_NDOCS = operator.attrgetter("ndocs")


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (memcmp-speed slices, halving)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the longest common suffix, at most `limit`."""
    lo, hi = 0, min(len(a), len(b), limit)
    if hi == 0 or a[len(a) - hi:] == b[len(b) - hi:]:
        return hi
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[len(a) - mid:len(a) - lo] == b[len(b) - mid:len(b) - lo]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[len(a) - lo - 1] == b[len(b) - lo - 1]:
        lo += 1
    return lo


class _Plan:
    """What re-reading one file takes: the pieces of its new text, those of the old reading
    that stay (same text, same place in the document order or no tie to it), the new ones
    still to parse and validate, and the old ones that went away."""
    __slots__ = ("path", "text", "old", "pieces", "kept", "new", "removed", "parsed")

    def __init__(self, path: str, text: str | None, old: _File | None):
        self.path, self.text, self.old = path, text, old
        self.pieces: list[str] = []
        self.kept: list[_Chunk | None] = []     # per piece: the old chunk it keeps, or None
        self.new: list[int] = []               # indices of the pieces to parse and validate
        self.parsed: dict[int, list] = {}
        if text is None:                       # deleted
            self.removed = list(old.chunks) if old is not None else []
            return
        if old is None or old.fixed or len(old.chunks) < 2 or text[:1] == "%" or \
                "\n%" in text:
            self._all(text, old)
            return
        # only the text between the common prefix and the common suffix is cut again
        otext, chunks = old.text, old.chunks
        p = _common_prefix(otext, text)
        s = _common_suffix(otext, text, min(len(otext), len(text)) - p)
        ends = list(itertools.accumulate(map(len, map(_TEXT, chunks))))
        a = bisect.bisect_right(ends, p - 4)             # chunks [0, a) end well inside it
        tail = len(otext) - s                           # the suffix starts there (old text)
        b = a
        while b < len(chunks) and (ends[b - 1] if b else 0) - 1 < tail:
            b += 1                                     # chunks [b, n) start inside the suffix
        start = ends[a - 1] if a else 0
        stop = (ends[b - 1] if b else 0) + len(text) - len(otext)
        middle = _split(text[start:stop]) if stop > start else []
        if len(middle) == 1 and middle[0] == "":
            middle = []
        spare = {c.text: c for c in chunks[a:b]}
        self.pieces = list(map(_TEXT, chunks[:a])) + middle + list(map(_TEXT, chunks[b:]))
        mid = [spare.pop(m, None) for m in middle]
        self.kept = chunks[:a] + mid + chunks[b:]
        self.new = [a + j for j, c in enumerate(mid) if c is None]
        kept_mid = {id(c) for c in mid if c is not None}
        self.removed = [c for c in chunks[a:b] if id(c) not in kept_mid]

    def _all(self, text: str, old: _File | None) -> None:
        self.pieces = _split(text)
        if old is None:
            self.kept, self.new, self.removed = [None] * len(self.pieces), \
                list(range(len(self.pieces))), []
            return
        spare: dict[str, list[_Chunk]] = {}
        for c in old.chunks:
            spare.setdefault(c.text, []).append(c)
        kept: list[_Chunk | None] = []
        offset = 0
        for i, piece in enumerate(self.pieces):
            same = spare.get(piece)
            c = same.pop(0) if same else None
            if c is not None and c.offset is not None and c.offset != offset:
                c = None                     # its policy errors would name the wrong document
            kept.append(c)
            if old.fixed:
                offset += c.ndocs if c is not None else len(self._docs(i))
        self.kept = kept
        self.new = [i for i, c in enumerate(kept) if c is None]
        ids = {id(c) for c in kept if c is not None}
        self.removed = [c for c in old.chunks if id(c) not in ids]

    def _docs(self, i: int) -> list:
        """The documents of new piece i (parsed once)."""
        if i not in self.parsed:
            self.parsed[i] = _parse(self.path, self.pieces[i])
        return self.parsed[i]

    def parse(self) -> None:
        """Parse every new piece (raises the file's YAML error as the whole text words it)."""
        missing = [i for i in self.new if i not in self.parsed]
        path, text, pieces = self.path, self.text, self.pieces
        whole: list | None = None
        if len(missing) > 8 and len(missing) * 2 > len(pieces):
            # mostly new text: one parse of the whole text costs less than one a piece; past the
            # first piece each piece starts one document, so the documents map to the pieces
            whole = _parse(path, text)
            try:
                first = _parse(path, pieces[0]) if len(pieces) > 1 else whole
            except ManifestError:
                first = None
            if first is not None and len(first) + len(pieces) - 1 == len(whole):
                self.parsed = {0: first}
                self.parsed.update((i, whole[len(first) + i - 1:len(first) + i])
                                   for i in range(1, len(pieces)))
                whole = None
        else:
            try:
                for i in missing:
                    self._docs(i)
            except ManifestError:
                whole = _parse(path, text)   # raises the error as the whole text words it
        if whole is not None:   # the pieces do not parse as the whole does: keep it whole
            self.removed += [c for c in self.kept if c is not None]
            self.pieces, self.kept, self.new, self.parsed = [text], [None], [0], {0: whole}

    def finish(self, claim, new_objs: dict) -> _File:
        """Validate the new pieces in order (claim(ident) for each object) into the new file;
        the new pieces' objects go into new_objs (ident -> item)."""
        chunks = list(self.kept)
        added: list[_Chunk] = []
        if self.new:
            first, last = self.new[0], self.new[-1]
            offset = sum(map(_NDOCS, chunks[:first]))
            path = self.path
            for i in range(first, last + 1):
                c = chunks[i]
                if c is None:
                    docs = self.parsed[i]
                    c = chunks[i] = _Chunk(self.pieces[i], len(docs),
                                           _validate(path, docs, offset, claim), offset)
                    added.append(c)
                    for item in c.objs:
                        new_objs[item[1]] = item
                offset += c.ndocs
        old = self.old
        scan = old is None or bool(old.policy or old.ignored or old.fixed) or any(
            c.policy or c.ignored or c.offset is not None for c in added + self.removed)
        return _File(self.text, chunks, scan)  # type: ignore[arg-type]


# ---- the store -----------------------------------------------------------------------------

class KindDelta(frozenset):
    """The keys of one kind that an update touched (a frozenset of all of them), split into
    .added, .changed and .removed."""
    added: frozenset
    changed: frozenset
    removed: frozenset

    def __new__(cls, added=(), changed=(), removed=()):
        added, changed, removed = frozenset(added), frozenset(changed), frozenset(removed)
        self = super().__new__(cls, added | changed | removed)
        self.added, self.changed, self.removed = added, changed, removed
        return self

    def __repr__(self) -> str:
        return (f"KindDelta(added={sorted(self.added)!r}, changed={sorted(self.changed)!r}, "
                f"removed={sorted(self.removed)!r})")

    def __reduce__(self):
        return (KindDelta, (self.added, self.changed, self.removed))

    def merged(self, later: "KindDelta") -> "KindDelta":
        """This change followed by `later`, as one change from before this to after `later`."""
        added, changed, removed = set(self.added), set(self.changed), set(self.removed)
        for k in later.added:
            if k in removed:             # removed then added back: changed
                removed.discard(k)
                changed.add(k)
            else:
                added.add(k)
        for k in later.changed:
            if k not in added:
                changed.add(k)
        for k in later.removed:
            if k in added:               # added then removed: as if never there
                added.discard(k)
            else:
                changed.discard(k)
                removed.add(k)
        return KindDelta(added, changed, removed)


_NO_KEYS = KindDelta()
_DELTA_KINDS = _KIND_ATTRS + ("policies",)


@dataclass(frozen=True)
class ManifestDelta:
    """What an update changed, by kind (keys as in ManifestSet: "ns/name", a name, or for
    policies (kind, ns, name)); ignored / policy_errors: whether those lists changed."""
    pods: KindDelta = _NO_KEYS
    namespaces: KindDelta = _NO_KEYS
    services: KindDelta = _NO_KEYS
    endpointslices: KindDelta = _NO_KEYS
    ippools: KindDelta = _NO_KEYS
    l2policies: KindDelta = _NO_KEYS
    policies: KindDelta = _NO_KEYS
    ignored_changed: bool = False
    policy_errors_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (any(getattr(self, k) for k in _DELTA_KINDS)
                    or self.ignored_changed or self.policy_errors_changed)

    def merged(self, later: "ManifestDelta") -> "ManifestDelta":
        """This delta followed by `later`, as one."""
        if later.empty:
            return self
        if self.empty:
            return later
        return ManifestDelta(
            **{k: getattr(self, k).merged(getattr(later, k)) for k in _DELTA_KINDS},
            ignored_changed=self.ignored_changed or later.ignored_changed,
            policy_errors_changed=self.policy_errors_changed or later.policy_errors_changed)


EMPTY_DELTA = ManifestDelta()


def _NoGC() -> gcpause.paused:
    """A load builds (and keeps) many objects: no collection meanwhile, and a big load's
    objects frozen after it (agent/gcpause.py)."""
    return gcpause.paused(freeze_over=100_000)


class ManifestStore:
    """A manifests directory kept in memory, re-read file by file (see the module's API).
    Not thread-safe: one caller at a time."""

    def __init__(self, directory: str, cache: str | None = None):
        self.directory = directory.rstrip("/") or "/"
        self._prefix = directory             # as given: files are named os.path.join(it, name)
        self._files: dict[str, _File] = {}   # path -> its last good reading
        self._owner: dict[tuple[str, str, str], str] = {}   # ident of a validated kind -> path
        self._policy_files: set[str] = set()      # files with policy objects or errors
        self._ignored_files: set[str] = set()     # files with objects of other kinds
        self._pending: set[str] = set()           # paths of the last failed update
        self.manifests: ManifestSet | None = None
        self.cache = cache                        # the cache file (None: no cache)
        self._cached: ManifestSet | None = None   # the set the cache file holds now
        self.cache_used = False                   # the last load started from the cache

    def _check_dir(self) -> None:
        d = self._prefix
        if not os.path.exists(d):
            raise ManifestError(d, "<directory>", "<path>", "no such directory")
        if not os.path.isdir(d):
            raise ManifestError(d, "<directory>", "<path>", "not a directory")

    def _listing(self) -> list[str]:
        self._check_dir()
        out = []
        for name in os.listdir(self._prefix):
            path = os.path.join(self._prefix, name)
            if name.endswith(_SUFFIXES) and os.path.isfile(path):
                out.append(path)
        return out

    def load(self) -> ManifestSet:
        """Read every file of the directory; raise the first problem (keeping the last good
        state). Text this store has already seen is not parsed or validated again. The first
        load of a store with a cache starts from it (and writes it when it had to parse)."""
        first = self.cache is not None and self.manifests is None and not self._files
        if first:
            self.cache_used = self._restore()
        try:
            out = self._apply(set(self._listing()) | set(self._files))[0]
        except ManifestError:
            if first and self.cache_used:     # the cache's state was not taken: drop it
                self._reset()
            raise
        if first and out is not self._cached:
            self.save_cache()
        return out

    # ---- the cache (see the module's docstring) ----
    _CACHE_FORMAT = 1

    def _cache_header(self) -> bytes:
        return json.dumps({"format": self._CACHE_FORMAT, "code": _code_hash(),
                           "python": list(sys.version_info[:3]),
                           "directory": self._prefix}, sort_keys=True).encode()

    def _reset(self) -> None:
        self._files, self._owner = {}, {}
        self._policy_files, self._ignored_files = set(), set()
        self.manifests = self._cached = None

    def _restore(self) -> bool:
        """Take the store's state from the cache file; False (nothing taken) when it is
        missing or not usable."""
        try:
            with open(self.cache, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return False
        except OSError as e:
            log.warning("manifest cache %s not read: %s", self.cache, e)
            return False
        why = "unreadable"
        try:
            head, digest, payload = blob.split(b"\n", 2)
            if head != self._cache_header():
                why = "written by another version or for another directory"
                raise ValueError(why)
            if hashlib.blake2b(payload, digest_size=32).hexdigest().encode() != digest:
                why = "corrupt (digest mismatch)"
                raise ValueError(why)
            with _NoGC():
                state = pickle.loads(payload)
            files, owner, policy_files, ignored_files, manifests = state
            if not (isinstance(files, dict) and isinstance(owner, dict) and
                    isinstance(manifests, ManifestSet) and
                    all(isinstance(f, _File) for f in files.values())):
                why = "of an unexpected shape"
                raise ValueError(why)
        except Exception as e:  # noqa: BLE001 -- a bad cache is never fatal: parse in full
            stale = why.startswith("written by another")   # an upgrade: expected, no warning
            (log.info if stale else log.warning)("manifest cache %s ignored (%s): %s",
                                                 self.cache, why, e)
            self._reset()
            return False
        self._files, self._owner = files, owner
        self._policy_files, self._ignored_files = set(policy_files), set(ignored_files)
        self.manifests = self._cached = manifests
        return True

    def save_cache(self) -> bool:
        """Write the cache file (atomically, 0600) when the store holds a good state the file
        does not; False when there is no cache, nothing new, or the write failed (logged)."""
        if self.cache is None or self.manifests is None or self._pending or \
                self.manifests is self._cached:
            return False
        with _NoGC():
            payload = pickle.dumps((self._files, self._owner, sorted(self._policy_files),
                                    sorted(self._ignored_files), self.manifests),
                                   protocol=pickle.HIGHEST_PROTOCOL)
        digest = hashlib.blake2b(payload, digest_size=32).hexdigest().encode()
        tmp = f"{self.cache}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.cache) or ".", mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self._cache_header() + b"\n" + digest + b"\n")
                f.write(payload)
            os.replace(tmp, self.cache)
        except OSError as e:
            log.warning("manifest cache %s not written: %s", self.cache, e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        self._cached = self.manifests
        return True

    def update(self, changed_paths) -> tuple[ManifestSet, ManifestDelta]:
        """Re-read the given paths (files of the directory that were created, modified or
        deleted; other paths are left out; the directory itself, or a sub-directory or symlink
        to one in it: all files) and return the new set and what changed."""
        rescan = False
        paths: set[str] = set()
        for p in changed_paths:
            p = os.fspath(p)
            if p.rstrip("/") == self.directory or \
                    os.path.abspath(p) == os.path.abspath(self.directory):
                rescan = True
                continue
            head, name = os.path.split(p)
            if head != self.directory and os.path.abspath(head) != \
                    os.path.abspath(self.directory):
                continue
            path = os.path.join(self._prefix, name)
            if name.endswith(_SUFFIXES):
                paths.add(path)
            elif os.path.isdir(path):   # e.g. a ConfigMap volume's '..data' link swapped
                rescan = True
        if rescan or self.manifests is None:
            paths |= set(self._listing()) | set(self._files)
        else:
            self._check_dir()
        return self._apply(paths)

    def _apply(self, paths: set[str]) -> tuple[ManifestSet, ManifestDelta]:
        # the paths of a failed update are read again with the next ones: the directory is
        # taken whole or not at all, as a full load would
        paths = set(paths) | self._pending
        with _NoGC():
            try:
                out = self._apply_paths(paths)
            except ManifestError:
                self._pending = paths
                raise
        self._pending = set()
        return out

    def _apply_paths(self, paths: set[str]) -> tuple[ManifestSet, ManifestDelta]:
        cur = self.manifests if self.manifests is not None else ManifestSet()
        plans: list[_Plan] = []
        for path in sorted(paths):             # the order a full load reads them
            text = _read(path) if os.path.isfile(path) else None
            old = self._files.get(path)
            if (text is None and old is None) or (old is not None and text == old.text):
                continue
            plans.append(_Plan(path, text, old))
        if not plans and self.manifests is not None:
            return self.manifests, EMPTY_DELTA
        errors: dict[str, ManifestError] = {}
        for plan in plans:
            try:
                plan.parse()
            except ManifestError as e:      # raised in file order, below
                errors[plan.path] = e

        # objects of pieces that went away are free to be defined anew
        owner = self._owner
        removed = {item[1]: item for plan in plans for c in plan.removed for item in c.objs}
        claims: dict[tuple[str, str, str], str] = {}
        new_objs: dict[tuple[str, str, str], tuple] = {}
        new_files: list[tuple[str, _File | None]] = []
        for plan in plans:
            path = plan.path
            if path in errors:
                raise errors[path]

            def claim(ident, path=path):
                first = claims.get(ident)
                if first is None and ident not in removed:
                    first = owner.get(ident)
                if first is not None:
                    if first <= path:
                        raise _duplicate(ident, path, first)
                    raise _duplicate(ident, first, path)  # a full load would meet it there
                claims[ident] = path
            new_files.append((path, plan.finish(claim, new_objs) if plan.text is not None
                              else None))

        # all good: what changed, and the new set
        touched: dict[str, dict] = {}          # attr -> {key: new object, or None: gone}
        for ident, (_, _, attr, key, _obj) in removed.items():
            if ident not in new_objs:
                touched.setdefault(attr, {})[key] = None
                del owner[ident]
        for ident, (_, _, attr, key, obj) in new_objs.items():
            touched.setdefault(attr, {})[key] = obj
        owner.update(claims)

        kinds: dict[str, KindDelta] = {}
        dicts: dict[str, dict] = {}
        for attr, entries in touched.items():
            d = getattr(cur, attr)
            added, changes, gone = [], [], []
            for key, obj in entries.items():
                old_obj = d.get(key)
                if obj is None:
                    if old_obj is not None:
                        gone.append(key)
                elif old_obj is None:
                    added.append(key)
                elif old_obj is not obj:
                    if old_obj == obj:
                        entries[key] = old_obj  # the same object: consumers compare with `is`
                    else:
                        changes.append(key)
            if added or changes or gone:
                nd = dict(d)
                for key in gone:
                    del nd[key]
                for key in added:
                    nd[key] = entries[key]
                for key in changes:
                    nd[key] = entries[key]
                dicts[attr] = nd
                kinds[attr] = KindDelta(added, changes, gone)

        versions: list[_File] = []
        for path, f in new_files:
            old = self._files.pop(path, None)
            if old is not None:
                versions.append(old)
            if f is not None:
                self._files[path] = f
                versions.append(f)
            for has, paths_with in ((f is not None and f.policy, self._policy_files),
                                    (f is not None and f.ignored, self._ignored_files)):
                if has:
                    paths_with.add(path)
                else:
                    paths_with.discard(path)

        policies, policy_errors, ignored = cur.policies, cur.policy_errors, cur.ignored
        if any(f.policy for f in versions):
            policies, policy_errors = self._policies()
            kinds["policies"], policies = _policy_delta(cur.policies, policies)
            if policy_errors == cur.policy_errors:
                policy_errors = cur.policy_errors
        if any(f.ignored for f in versions):
            ignored = [s for p in sorted(self._ignored_files) for s in self._files[p].ignored]
            if ignored == cur.ignored:
                ignored = cur.ignored
        out = ManifestSet(
            namespaces=dicts.get("namespaces", cur.namespaces), pods=dicts.get("pods", cur.pods),
            ignored=ignored, services=dicts.get("services", cur.services),
            endpointslices=dicts.get("endpointslices", cur.endpointslices),
            ippools=dicts.get("ippools", cur.ippools),
            l2policies=dicts.get("l2policies", cur.l2policies),
            policies=policies, policy_errors=policy_errors)
        delta = ManifestDelta(**kinds, ignored_changed=ignored is not cur.ignored,
                              policy_errors_changed=policy_errors is not cur.policy_errors)
        self.manifests = out
        return out, delta

    def _policies(self) -> tuple[dict, list[str]]:
        """Every file's policies in file order: the first definition of each wins, as in a full
        load; later ones are policy errors."""
        policies: dict[tuple[str, str, str], tuple[str, dict]] = {}
        errors: list[str] = []
        first: dict[tuple[str, str, str], str] = {}
        for path in sorted(self._policy_files):
            for item in self._files[path].policy:
                if item[0] == _POLICY_ERROR:
                    errors.append(item[1])
                    continue
                ident = item[1]
                if ident in first:
                    errors.append(str(_duplicate(ident, path, first[ident])))
                else:
                    first[ident] = path
                    policies[ident] = item[2]
        return policies, errors


def _policy_delta(old: dict, new: dict) -> tuple[KindDelta, dict]:
    """What changed between two policies dicts; returns it and `new` with unchanged values
    (or the whole of `old`, when nothing changed) kept as the same objects."""
    added, changed = [], []
    for k, v in new.items():
        o = old.get(k)
        if o is None:
            added.append(k)
        elif o is not v:
            if o == v:
                new[k] = o
            else:
                changed.append(k)
    removed = [k for k in old if k not in new]
    if not (added or changed or removed):
        return _NO_KEYS, old
    return KindDelta(added, changed, removed), new


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """This module's source, hashed: a cache written by other code is not used."""
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class _Loader:
    """One file read on its own (agent/policy's validate_file): .file(path), then .out."""

    def __init__(self) -> None:
        self.out = ManifestSet()

    def file(self, path: str) -> None:
        store = ManifestStore(os.path.dirname(path) or ".")
        self.out = store._apply({path})[0]


# load_manifests keeps a store per directory (the few last used), so reading a directory again
# parses and validates only the documents whose text changed
_STORES: dict[str, ManifestStore] = {}
_STORES_KEPT = 8
_STORES_LOCK = threading.Lock()


def load_manifests(directory: str) -> ManifestSet:
    """Read and validate every manifest file directly inside `directory`."""
    with _STORES_LOCK:
        store = _STORES.pop(directory, None) or ManifestStore(directory)
        try:
            return store.load()
        finally:
            _STORES[directory] = store
            while len(_STORES) > _STORES_KEPT:
                del _STORES[next(iter(_STORES))]
