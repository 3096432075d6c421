"""Policy objects -> rules (rules.py), validated as the API server (NetworkPolicy) or Cilium
(CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy) would validate them.

    parse_policy(doc, file) -> [Rule]

Every problem raises `ManifestError(file, object, field, reason)`; the object is named like
"NetworkPolicy x/deny-all" (cluster-wide: "CiliumClusterwideNetworkPolicy name") and the field
is a path like `spec.ingress[0].from[1].ipBlock.cidr`. Unknown fields are errors (a typo must
not silently widen a policy); fields we do not implement (L7, ICMP, FQDN, host policies, ...)
are errors that say "not supported".

Translation, as Cilium's (pkg/k8s/network_policy.go, pkg/policy/api):
- NetworkPolicy: the subject is podSelector in the policy's namespace; a peer podSelector alone
  selects that namespace's pods; namespaceSelector matches namespace labels
  (`k8s:io.cilium.k8s.namespace.labels.<key>`), `{}` meaning every namespace (pods only); both
  in one peer are ANDed; ipBlock is a CIDR selector. Empty or absent from/to: every peer
  (identity 0); empty or absent ports: every port and protocol; protocol defaults to TCP.
  policyTypes defaults to Ingress, plus Egress when spec.egress has rules (Kubernetes'
  defaulting); a direction not in policyTypes is neither enforced nor given rules.
- Cilium policies: spec and/or specs, one Rule each. A namespaced policy's endpointSelector is
  restricted to its namespace; a fromEndpoints/toEndpoints selector without a
  `io.kubernetes.pod.namespace` key (and without reserved: keys) is restricted to the policy's
  namespace, or to pods of any namespace for a cluster-wide policy. The from*/to* peer fields of
  one rule are ORed; a rule with toPorts but no peer applies to every peer; a rule with
  neither allows nothing. toPorts ports: port "0" or absent = every port, protocol defaults
  to ANY. A direction is enforced when its allow or deny list has rules, unless
  enableDefaultDeny says otherwise.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

from ..config import describe, key_text
from ..manifests import _Obj
from .rules import PROTOCOLS, PortRule, Rule, RuleBlock
from .selector import (ENTITIES, NAMESPACE_LABELS, OPERATORS, POD_NAMESPACE, WILDCARD,
                       CIDRSelector, EntitySelector, LabelSelector, Peer, Requirement,
                       normalize_key)

__all__ = ["KINDS", "parse_policy"]

# kind -> (apiVersion, namespaced)
KINDS: dict[str, tuple[str, bool]] = {
    "NetworkPolicy": ("networking.k8s.io/v1", True),
    "CiliumNetworkPolicy": ("cilium.io/v2", True),
    "CiliumClusterwideNetworkPolicy": ("cilium.io/v2", False),
}
_K8S_PROTOCOLS = ("TCP", "UDP", "SCTP")

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(rf"^{_LABEL}$")
_DNS_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

_RULE_FIELDS = ("endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny",
                "enableDefaultDeny", "labels", "description")
_UNSUPPORTED_RULE = {"nodeSelector": "host policies"}
_UNSUPPORTED_PEERS = {"icmps": "ICMP rules", "authentication": "mutual authentication"}
_UNSUPPORTED_FROM = {"fromRequires": "deprecated by Cilium", "fromGroups": "cloud groups",
                     "fromNodes": "node selectors", **_UNSUPPORTED_PEERS}
_UNSUPPORTED_TO = {"toRequires": "deprecated by Cilium", "toGroups": "cloud groups",
                   "toNodes": "node selectors", "toServices": "service selectors",
                   "toFQDNs": "DNS-based rules need Cilium's DNS proxy", **_UNSUPPORTED_PEERS}
_UNSUPPORTED_TO_PORTS = {"rules": "L7 rules need Cilium's L7 proxy",
                         "terminatingTLS": "TLS interception", "originatingTLS":
                         "TLS interception", "serverNames": "TLS SNI matching",
                         "listener": "Envoy listeners"}
_UNSUPPORTED_CIDR_SET = {"cidrGroupRef": "CiliumCIDRGroups",
                         "cidrGroupSelector": "CiliumCIDRGroups"}


class _Ctx(_Obj):
    """Error context of one policy object: its file and how it is named (`obj`), with the
    manifest loader's field checks and the policy-specific ones below."""

    @property
    def obj(self) -> str:
        return self.name

    @obj.setter
    def obj(self, v: str) -> None:
        self.name = v

    def fields(self, v: object, path: str, known: tuple[str, ...],
               unsupported: Mapping[str, str] | None = None, required: bool = False) -> dict:
        """A mapping with only `known` keys ({} when absent and not required)."""
        if v is None:
            if required:
                self.fail(path, "required field is missing")
            return {}
        if not isinstance(v, dict):
            self.fail(path, f"expected a mapping, got {describe(v)}")
        for k in v:
            sub = f"{path}.{key_text(k)}" if path else key_text(k)
            if unsupported and k in unsupported:
                self.fail(sub, f"not supported ({unsupported[k]})")
            if k not in known:
                self.fail(sub, f"unknown field (expected one of {', '.join(known)})")
        return v

    def strings(self, v: object, path: str) -> list[str]:
        out = self.seq(v, path)
        for i, s in enumerate(out):
            if not isinstance(s, str):
                self.fail(f"{path}[{i}]", f"expected a string, got {describe(s)}")
        return out

    def integer(self, v: object, path: str, lo: int, hi: int) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            self.fail(path, f"expected an integer from {lo} to {hi}, got {describe(v)}")
        return v

    def dns_name(self, v: object, path: str, label: bool) -> str:
        what, rx, limit = ("DNS-1123 label", _DNS_LABEL, 63) if label \
            else ("DNS-1123 subdomain", _DNS_SUBDOMAIN, 253)
        if v is None:
            self.fail(path, "required field is missing")
        if not isinstance(v, str) or len(v) > limit or not rx.match(v):
            self.fail(path, f"expected a {what} (lowercase letters, digits, '-'"
                            f"{'' if label else ', .'}, at most {limit}), got {describe(v)}")
        return v


# (context, raw selector key, its path) -> the key with its source
KeyOf = Callable[[_Ctx, object, str], str]


def parse_policy(doc: dict, file: str) -> list[Rule]:
    """The rules of one policy object (a NetworkPolicy has one, a Cilium policy one per spec)."""
    c = _Ctx(file, "<policy>")
    if not isinstance(doc, dict):
        c.fail("<document>", f"expected a mapping (a Kubernetes object), got {describe(doc)}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        c.fail("kind", f"expected one of {', '.join(KINDS)}, got {describe(kind)}")
    api_version, namespaced = KINDS[kind]
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        c.fail("metadata", "required field is missing" if meta is None
               else f"expected a mapping, got {describe(meta)}")
    name, ns = meta.get("name"), (meta.get("namespace") or "default") if namespaced else ""
    if isinstance(name, str) and isinstance(ns, str):
        c.obj = f"{kind} {ns}/{name}" if namespaced else f"{kind} {name}"
    c.dns_name(name, "metadata.name", label=False)
    if namespaced:
        c.dns_name(ns, "metadata.namespace", label=True)
    if doc.get("apiVersion") != api_version:
        c.fail("apiVersion", f"expected {api_version!r} for {kind}, "
                             f"got {describe(doc.get('apiVersion'))}")
    top = ("apiVersion", "kind", "metadata", "spec", "status")
    if kind == "NetworkPolicy":
        c.fields(doc, "", top)
        return [_network_policy(c, doc, ns, str(name), file)]
    c.fields(doc, "", top + ("specs",))
    return _cilium_policy(c, doc, kind, ns, str(name), file)


# ---- selectors ----------------------------------------------------------------------------

def _key_string(c: _Ctx, k: object, path: str) -> str:
    if not isinstance(k, str):
        c.fail(path, "required field is missing" if k is None
               else f"label keys must be strings, got {describe(k)}")
    return k


def _k8s_key(c: _Ctx, raw: object, path: str) -> str:
    """A Kubernetes label key: [prefix/]name."""
    k = _key_string(c, raw, path)
    prefix, slash, name = k.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        c.fail(path, f"label key prefix must be a DNS-1123 subdomain, got {describe(prefix)}")
    if len(name) > 63 or not _QUALIFIED_NAME.match(name):
        c.fail(path, "label key name must be at most 63 letters, digits, '-', '_' or '.', "
                     f"starting and ending with a letter or digit, got {describe(name)}")
    return k


def _pod_key(c: _Ctx, k: object, path: str) -> str:
    return f"k8s:{_k8s_key(c, k, path)}"


def _namespace_key(c: _Ctx, k: object, path: str) -> str:
    return f"{NAMESPACE_LABELS}{_k8s_key(c, k, path)}"


def _cilium_key(c: _Ctx, k: object, path: str) -> str:
    """A Cilium selector key: [source:]key, the source k8s (the default), any or reserved."""
    try:
        key = normalize_key(_key_string(c, k, path))
    except ValueError as e:
        c.fail(path, f"{e}, got {describe(k)}")
    _k8s_key(c, key.partition(":")[2], path)
    return key


def _label_value(c: _Ctx, v: object, path: str) -> str:
    if not isinstance(v, str):
        c.fail(path, f"label values must be strings (quote it), got {describe(v)}")
    if v and (len(v) > 63 or not _QUALIFIED_NAME.match(v)):
        c.fail(path, "label value must be empty or at most 63 letters, digits, '-', '_' or '.', "
                     f"starting and ending with a letter or digit, got {describe(v)}")
    return v


def _selector(c: _Ctx, v: object, path: str, key_of: KeyOf) -> LabelSelector:
    """A label selector (absent: empty, selecting everything)."""
    m = c.fields(v, path, ("matchLabels", "matchExpressions"))
    labels = m.get("matchLabels")
    if labels is not None and not isinstance(labels, dict):
        c.fail(f"{path}.matchLabels", f"expected a mapping, got {describe(labels)}")
    reqs = []
    for k, val in (labels or {}).items():
        p = f"{path}.matchLabels[{key_text(k)}]"
        reqs.append(Requirement(key_of(c, k, p), "In", (_label_value(c, val, p),)))
    for i, e in enumerate(c.seq(m.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        em = c.fields(e, p, ("key", "operator", "values"), required=True)
        key = key_of(c, em.get("key"), f"{p}.key")
        op = em.get("operator")
        if not isinstance(op, str) or op not in OPERATORS:
            c.fail(f"{p}.operator", "required field is missing" if op is None else
                   f"not a valid selector operator: expected one of {', '.join(OPERATORS)}, "
                   f"got {describe(op)}")
        values = c.strings(em.get("values"), f"{p}.values")
        if op in ("In", "NotIn") and not values:
            c.fail(f"{p}.values", f"must be specified when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            c.fail(f"{p}.values", f"may not be specified when operator is {op}")
        for j, val in enumerate(values):
            _label_value(c, val, f"{p}.values[{j}]")
        reqs.append(Requirement(key, op, tuple(sorted(set(values)))))
    return LabelSelector.of(None, reqs)


def _in_namespace(ns: str) -> Requirement:
    return Requirement(POD_NAMESPACE, "In", (ns,))


def _cidr(c: _Ctx, v: object, path: str) -> ipaddress.IPv4Network:
    if v is None:
        c.fail(path, "required field is missing")
    try:
        if not isinstance(v, str) or "/" not in v:
            raise ValueError
        net = ipaddress.ip_network(v, strict=False)   # host bits are masked, as both do
    except ValueError:
        c.fail(path, f"expected an IPv4 CIDR such as 10.0.0.0/24, got {describe(v)}")
    if not isinstance(net, ipaddress.IPv4Network):
        c.fail(path, f"IPv6 is not supported, got {describe(v)}")
    return net


def _cidr_selector(c: _Ctx, m: dict, path: str, strict: bool) -> CIDRSelector:
    """cidr with except; Kubernetes wants each except strictly inside, Cilium inside."""
    net = _cidr(c, m.get("cidr"), f"{path}.cidr")
    excepts = set()
    for i, raw in enumerate(c.strings(m.get("except"), f"{path}.except")):
        e = _cidr(c, raw, f"{path}.except[{i}]")
        if not e.subnet_of(net) or (strict and e.prefixlen == net.prefixlen):
            c.fail(f"{path}.except[{i}]", f"must be {'a strict subset of' if strict else 'inside'}"
                                         f" cidr {str(net)!r}, got {describe(raw)}")
        excepts.add(e)
    return CIDRSelector(net, tuple(sorted(excepts)))


# ---- NetworkPolicy ------------------------------------------------------------------------

def _network_policy(c: _Ctx, doc: dict, ns: str, name: str, file: str) -> Rule:
    spec = c.fields(doc.get("spec"), "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    subject = _selector(c, spec.get("podSelector"), "spec.podSelector", _pod_key)
    types = c.strings(spec.get("policyTypes"), "spec.policyTypes")
    if len(types) > 2:
        c.fail("spec.policyTypes",
               f"may have at most 2 entries (Ingress, Egress), got {len(types)}")
    for i, t in enumerate(types):
        c.choice(t, f"spec.policyTypes[{i}]", ("Ingress", "Egress"), "")
    ingress = tuple(_np_block(c, r, f"spec.ingress[{i}]", "from", ns)
                    for i, r in enumerate(c.seq(spec.get("ingress"), "spec.ingress")))
    egress = tuple(_np_block(c, r, f"spec.egress[{i}]", "to", ns)
                   for i, r in enumerate(c.seq(spec.get("egress"), "spec.egress")))
    if not types:   # Kubernetes' defaulting
        types = ["Ingress", "Egress"] if egress else ["Ingress"]
    enforce_ingress, enforce_egress = "Ingress" in types, "Egress" in types
    return Rule(kind="NetworkPolicy", namespace=ns, name=name,
                subject=subject.add(_in_namespace(ns)),
                ingress=ingress if enforce_ingress else (),
                egress=egress if enforce_egress else (),
                enforce_ingress=enforce_ingress, enforce_egress=enforce_egress, file=file)


def _np_block(c: _Ctx, v: object, path: str, peer_field: str, ns: str) -> RuleBlock:
    m = c.fields(v, path, (peer_field, "ports"))
    peers = [_np_peer(c, p, f"{path}.{peer_field}[{i}]", ns)
             for i, p in enumerate(c.seq(m.get(peer_field), f"{path}.{peer_field}"))]
    ports = [_np_port(c, p, f"{path}.ports[{i}]")
             for i, p in enumerate(c.seq(m.get("ports"), f"{path}.ports"))]
    return RuleBlock(tuple(dict.fromkeys(peers)) or (WILDCARD,), tuple(dict.fromkeys(ports)))


def _np_peer(c: _Ctx, v: object, path: str, ns: str) -> Peer:
    m = c.fields(v, path, ("podSelector", "namespaceSelector", "ipBlock"), required=True)
    present = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if m.get(k) is not None]
    if not present:
        c.fail(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    if "ipBlock" in present:
        if len(present) > 1:
            c.fail(path, "may not specify more than 1 peer type (ipBlock with a selector)")
        block = c.fields(m["ipBlock"], f"{path}.ipBlock", ("cidr", "except"))
        return _cidr_selector(c, block, f"{path}.ipBlock", strict=True)
    pods = _selector(c, m.get("podSelector"), f"{path}.podSelector", _pod_key)
    if "namespaceSelector" not in present:
        return pods.add(_in_namespace(ns))
    namespaces = _selector(c, m["namespaceSelector"], f"{path}.namespaceSelector",
                           _namespace_key)
    return _pods_only(pods.add(*namespaces.requirements))


def _pods_only(sel: LabelSelector) -> LabelSelector:
    """A selector of pods: one with only NotIn / DoesNotExist requirements would also match
    world, host and CIDR identities (they carry no k8s: labels), so it gets `Exists` on the
    pod namespace; a positive requirement on a k8s: label already implies a pod."""
    if any(r.operator in ("In", "Exists") and r.key.startswith("k8s:")
           for r in sel.requirements):
        return sel
    return sel.add(Requirement(POD_NAMESPACE, "Exists"))


def _port_name(c: _Ctx, v: str, path: str) -> str:
    if not (len(v) <= 15 and _PORT_NAME.match(v) and "--" not in v and re.search("[a-z]", v)):
        c.fail(path, "expected a port number or a port name (IANA service name: at most 15 "
                     "lowercase letters, digits and '-', with at least one letter), "
                     f"got {describe(v)}")
    return v


def _np_port(c: _Ctx, v: object, path: str) -> PortRule:
    m = c.fields(v, path, ("protocol", "port", "endPort"))
    proto = c.choice(m.get("protocol"), f"{path}.protocol", _K8S_PROTOCOLS, "TCP")
    port, end = m.get("port"), m.get("endPort")
    if port is None:
        if end is not None:
            c.fail(f"{path}.port", "must be specified when endPort is specified")
        return PortRule(proto)
    if isinstance(port, str):
        name = _port_name(c, port, f"{path}.port")
        if end is not None:
            c.fail(f"{path}.endPort", "may not be specified when port is non-numeric")
        return PortRule(proto, name=name)
    c.integer(port, f"{path}.port", 1, 65535)
    if end is None:
        return PortRule(proto, port)
    c.integer(end, f"{path}.endPort", 1, 65535)
    if end < port:
        c.fail(f"{path}.endPort", f"must be greater than or equal to port {port}, got {end}")
    return PortRule(proto, port, end if end > port else None)


# ---- CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy ---------------------------------

def _cilium_policy(c: _Ctx, doc: dict, kind: str, ns: str, name: str, file: str) -> list[Rule]:
    specs = [("spec", doc["spec"])] if doc.get("spec") is not None else []
    specs += [(f"specs[{i}]", s) for i, s in enumerate(c.seq(doc.get("specs"), "specs"))]
    if not specs:
        c.fail("spec", "required field is missing (set spec or specs)")
    return [_cilium_rule(c, s, path, kind, ns, name, file, i)
            for i, (path, s) in enumerate(specs)]


def _cilium_rule(c: _Ctx, v: object, path: str, kind: str, ns: str, name: str, file: str,
                 index: int) -> Rule:
    m = c.fields(v, path, _RULE_FIELDS, _UNSUPPORTED_RULE, required=True)
    if m.get("endpointSelector") is None:
        c.fail(f"{path}.endpointSelector", "required field is missing")
    subject = _selector(c, m["endpointSelector"], f"{path}.endpointSelector", _cilium_key)
    if ns:
        for r in subject.requirements:
            if r.key == POD_NAMESPACE and r.operator == "In" and ns not in r.values:
                c.fail(f"{path}.endpointSelector", f"may only select pods of the policy's "
                                                   f"namespace {ns!r}, got {r}")
        subject = subject.add(_in_namespace(ns))
    c.seq(m.get("labels"), f"{path}.labels")
    if m.get("description") is not None and not isinstance(m["description"], str):
        c.fail(f"{path}.description", f"expected a string, got {describe(m['description'])}")
    default_deny = c.fields(m.get("enableDefaultDeny"), f"{path}.enableDefaultDeny",
                            ("ingress", "egress"))
    blocks = {}
    for direction in ("ingress", "egress"):
        blocks[direction] = tuple(
            _cilium_block(c, b, f"{path}.{field}[{i}]", direction == "egress", deny, ns)
            for field, deny in ((direction, False), (f"{direction}Deny", True))
            for i, b in enumerate(c.seq(m.get(field), f"{path}.{field}")))
    return Rule(kind=kind, namespace=ns, name=name, subject=subject,
                ingress=blocks["ingress"], egress=blocks["egress"],
                enforce_ingress=c.boolean(default_deny.get("ingress"),
                                          f"{path}.enableDefaultDeny.ingress",
                                          bool(blocks["ingress"])),
                enforce_egress=c.boolean(default_deny.get("egress"),
                                         f"{path}.enableDefaultDeny.egress",
                                         bool(blocks["egress"])),
                file=file, index=index)


def _cilium_block(c: _Ctx, v: object, path: str, egress: bool, deny: bool, ns: str
                  ) -> RuleBlock:
    pre = "to" if egress else "from"
    endpoints, cidrs, cidr_sets, entities = (f"{pre}Endpoints", f"{pre}CIDR", f"{pre}CIDRSet",
                                             f"{pre}Entities")
    m = c.fields(v, path, (endpoints, cidrs, cidr_sets, entities, "toPorts"),
                 _UNSUPPORTED_TO if egress else _UNSUPPORTED_FROM)
    peers: list[Peer] = []
    for i, s in enumerate(c.seq(m.get(endpoints), f"{path}.{endpoints}")):
        peers.append(_endpoint_selector(c, s, f"{path}.{endpoints}[{i}]", ns))
    for i, s in enumerate(c.seq(m.get(cidrs), f"{path}.{cidrs}")):
        peers.append(CIDRSelector(_cidr(c, s, f"{path}.{cidrs}[{i}]")))
    for i, s in enumerate(c.seq(m.get(cidr_sets), f"{path}.{cidr_sets}")):
        p = f"{path}.{cidr_sets}[{i}]"
        rule = c.fields(s, p, ("cidr", "except"), _UNSUPPORTED_CIDR_SET, required=True)
        peers.append(_cidr_selector(c, rule, p, strict=False))
    for i, e in enumerate(c.strings(m.get(entities), f"{path}.{entities}")):
        c.choice(e, f"{path}.{entities}[{i}]", ENTITIES, "")
        peers.append(WILDCARD if e == "all" else EntitySelector(e))
    ports: list[PortRule] = []
    to_ports = c.seq(m.get("toPorts"), f"{path}.toPorts")
    for i, tp in enumerate(to_ports):
        p = f"{path}.toPorts[{i}]"
        raw = c.seq(c.fields(tp, p, ("ports",), _UNSUPPORTED_TO_PORTS).get("ports"),
                    f"{p}.ports")
        ports += [_cilium_port(c, x, f"{p}.ports[{j}]") for j, x in enumerate(raw)] \
            or [PortRule("ANY")]
    if not peers and to_ports:   # an L4-only rule: every peer
        peers.append(WILDCARD)
    return RuleBlock(tuple(dict.fromkeys(peers)), tuple(dict.fromkeys(ports)), deny)


def _endpoint_selector(c: _Ctx, v: object, path: str, ns: str) -> LabelSelector:
    """As Cilium's getEndpointSelector: no namespace key and no reserved: key -> this
    namespace's pods (a namespaced policy) or pods of any namespace (a cluster-wide one)."""
    sel = _selector(c, v, path, _cilium_key)
    if sel.has_source("reserved"):
        return sel
    if sel.has_key(POD_NAMESPACE):
        return _pods_only(sel)
    return sel.add(_in_namespace(ns) if ns else Requirement(POD_NAMESPACE, "Exists"))


def _cilium_port(c: _Ctx, v: object, path: str) -> PortRule:
    m = c.fields(v, path, ("port", "endPort", "protocol"), required=True)
    proto = c.choice(m.get("protocol"), f"{path}.protocol", PROTOCOLS, "ANY")
    raw, end = m.get("port"), m.get("endPort")
    if isinstance(raw, str) and raw and not re.fullmatch("[0-9]+", raw):
        name = _port_name(c, raw.lower(), f"{path}.port")   # Cilium lower-cases port names
        if end is not None:
            c.fail(f"{path}.endPort", "may not be specified with a named port")
        return PortRule(proto, name=name)
    # (a digit string too long for a port stays a string, and fails below, never int()'s limit)
    port = 0 if raw is None or raw == "" else \
        int(raw) if isinstance(raw, str) and len(raw) <= 9 else raw
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        c.fail(f"{path}.port", "expected a port number from 0 (every port) to 65535 or a port "
                               f"name, got {describe(raw)}")
    if end is not None and c.integer(end, f"{path}.endPort", 0, 65535):   # 0: no range
        if port == 0:
            c.fail(f"{path}.endPort", "may not be specified when port is 0 (every port)")
        if end < port:
            c.fail(f"{path}.endPort", f"must be greater than or equal to port {port}, got {end}")
        return PortRule(proto, port, end if end > port else None)
    return PortRule(proto, port or None)
