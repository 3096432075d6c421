"""Kubernetes manifests: the one place that reads and validates the directory of manifest YAML.

`load_manifests(directory)` reads every *.yaml, *.yml and *.json file directly inside the
directory (sorted by name; multi-document; `kind: List` expanded), validates Pods, Namespaces,
Services, EndpointSlices, CiliumLoadBalancerIPPools and CiliumL2AnnouncementPolicies the way
the Kubernetes API server (or Cilium) would for the fields we use, and returns an immutable view
of them in a `ManifestSet`. Other kinds are listed in `ignored`, not rejected.
Every problem raises `ManifestError(file, obj, field, reason)`, except in policy objects
(NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy): those are kept raw in
`policies` for agent/policy to parse, and a policy whose metadata is bad is left out with its
error in `policy_errors`, so one bad policy never holds back the rest of the directory.
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import yaml

from datapath.errors import ManifestError

from .config import describe

__all__ = ["ContainerPort", "Container", "Pod", "Namespace", "ServicePort", "Service",
           "SliceEndpoint", "EndpointSlicePort", "EndpointSlice", "IPPoolBlock", "LBIPPool",
           "L2Policy", "ManifestSet", "load_manifests"]

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
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
_SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(rf"^{_LABEL}$")
_DNS_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SPECIAL_NETS = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/32", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/24"))

Labels = tuple[tuple[str, str], ...]
# libyaml's parser when PyYAML has it (several times faster on a large directory)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# path -> (text, documents): a re-read directory parses only the files whose text changed (the
# documents are only read, never changed, by everything downstream)
_PARSED: dict[str, tuple[str, list]] = {}


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

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

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

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

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

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


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
                and "--" not in v and re.search(r"[a-z]", v)):
            self.fail(path, "expected an IANA service name (at most 15 lowercase letters, "
                            f"digits and '-', with at least one letter), got {describe(v)}")
        return v

    def dns_name(self, v: object, path: str, label: bool) -> str:
        if label:
            what, rx, limit, chars = "DNS-1123 label", _DNS_LABEL, 63, "'-'"
        else:
            what, rx, limit, chars = "DNS-1123 subdomain", _DNS_SUBDOMAIN, 253, "'-', '.'"
        if v is None:
            self.fail(path, "required field is missing")
        if not isinstance(v, str) or len(v) > limit or not rx.match(v):
            self.fail(path, f"expected a {what} (lowercase letters, digits, {chars}, at most "
                            f"{limit}, starting and ending with a letter or digit), got {describe(v)}")
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
        path = f"{where}[{k}]"
        if not isinstance(k, str):
            o.fail(where, f"label keys must be strings, got {describe(k)}")
        prefix, _, name = k.rpartition("/")
        if "/" in k and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
            o.fail(path, f"label key prefix must be a DNS-1123 subdomain, got {prefix!r}")
        if len(name) > 63 or not _QUALIFIED_NAME.match(name):
            o.fail(path, "label key name must be at most 63 letters, digits, '-', '_' or '.', "
                         f"starting and ending with a letter or digit, got {name!r}")
        if not isinstance(val, str):
            o.fail(path, f"label values must be strings (quote it), got {describe(val)}")
        if val and (len(val) > 63 or not _QUALIFIED_NAME.match(val)):
            o.fail(path, "label value must be empty or at most 63 letters, digits, '-', '_' "
                         f"or '.', starting and ending with a letter or digit, got {val!r}")
        out[k] = val
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
                and re.search(r"[a-z]", tp)
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
            o.fail(f"{path}.{k}", "unknown field (expected matchLabels)")
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


class _Loader:
    def __init__(self) -> None:
        self.out = ManifestSet()
        self.seen: dict[tuple[str, str, str], str] = {}  # (kind, ns, name) -> file

    def document(self, doc: object, file: str, where: str) -> None:
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
                self.document(item, file, f"{where} items[{i}]")
            return
        meta = doc.get("metadata")
        if kind not in _HANDLED:
            for h in _HANDLED:  # 'pod' silently ignored would be a trap
                if kind.lower() == h.lower():
                    o.fail("kind", f"unknown kind {kind!r}, did you mean {h!r}?")
            m = meta if isinstance(meta, dict) else {}
            self.out.ignored.append(
                f"{file}: {kind} {m.get('namespace') or 'default'}/{m.get('name', '?')}")
            return

        if kind in POLICY_KINDS:
            try:
                self._object(doc, kind, file, where)
            except ManifestError as e:
                self.out.policy_errors.append(str(e))
            return
        self._object(doc, kind, file, where)

    def _object(self, doc: dict, kind: str, file: str, where: str) -> None:
        o = _Obj(file, f"<{where}>")
        meta = doc.get("metadata")
        api_version, namespaced, name_rule = _KINDS[kind]
        o.name = f"{kind} ({where})"
        meta = o.mapping(meta, "metadata", required=True)
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

        ident = (kind, ns, name)
        if ident in self.seen:
            o.fail("metadata.name", f"duplicate {kind}: already defined in {self.seen[ident]}")
        self.seen[ident] = file
        key = f"{ns}/{name}"
        if kind == "Pod":
            self.out.pods[key] = _pod(o, doc, ns, name, file)
        elif kind == "Namespace":
            labels = dict(_labels(o, meta.get("labels")))
            labels[_NS_NAME_LABEL] = name
            self.out.namespaces[name] = Namespace(
                name=name, labels=tuple(sorted(labels.items())), source=file)
        elif kind in POLICY_KINDS:
            self.out.policies[(kind, ns, name)] = (file, doc)
        elif kind == "Service":
            self.out.services[key] = _service(o, doc, ns, name, file)
        elif kind == "EndpointSlice":
            self.out.endpointslices[key] = _endpointslice(o, doc, ns, name, file)
        elif kind == "CiliumLoadBalancerIPPool":
            self.out.ippools[name] = _ippool(o, doc, name, file)
        else:
            self.out.l2policies[name] = _l2policy(o, doc, name, file)

    def file(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise ManifestError(path, "<file>", "<file>", "not UTF-8 text") from None
        except OSError as e:
            raise ManifestError(path, "<file>", "<file>",
                                (e.strerror or str(e)).lower()) from None
        cached = _PARSED.get(path)
        if cached is not None and cached[0] == text:
            docs = cached[1]
        else:
            docs = self._parse(path, text)
            _PARSED[path] = (text, docs)
        for i, doc in enumerate(docs):
            if doc is not None:  # empty documents ("---\n---") are skipped
                self.document(doc, path, f"document {i + 1}")

    @staticmethod
    def _parse(path: str, text: str) -> list:
        try:
            return list(yaml.load_all(text, Loader=_YAML_LOADER))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<document>"
            raise ManifestError(path, "<yaml>", where, str(e.problem or e.context)) from None
        except yaml.YAMLError as e:
            raise ManifestError(path, "<yaml>", "<document>", str(e)) from None


def load_manifests(directory: str) -> ManifestSet:
    """Read and validate every manifest file directly inside `directory`."""
    if not os.path.exists(directory):
        raise ManifestError(directory, "<directory>", "<path>", "no such directory")
    if not os.path.isdir(directory):
        raise ManifestError(directory, "<directory>", "<path>", "not a directory")
    loader = _Loader()
    seen = set()
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(_SUFFIXES) and os.path.isfile(path):
            seen.add(path)
            loader.file(path)
    prefix = os.path.join(directory, "")
    for path in [p for p in _PARSED if p.startswith(prefix) and p not in seen]:
        del _PARSED[path]
    return loader.out
