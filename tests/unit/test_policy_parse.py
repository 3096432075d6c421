"""Unit tests for agent/policy/parse.py: every NetworkPolicy and Cilium policy form we accept,
and every error (each names the file, the object and the field)."""
from __future__ import annotations

import ipaddress

import pytest

from agent.policy.parse import parse_policy
from agent.policy.rules import PortRule, Rule, RuleBlock
from agent.policy.selector import (WILDCARD, CIDRSelector, EntitySelector, LabelSelector,
                                   Requirement)
from datapath.errors import ManifestError

FILE = "/m/policy.yaml"
NS_X = Requirement("k8s:io.kubernetes.pod.namespace", "In", ("x",))
POD_NS_EXISTS = Requirement("k8s:io.kubernetes.pod.namespace", "Exists")


def np(spec: object, name: str = "p", ns: str | None = "x") -> dict:
    meta: dict = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
            "spec": spec}


def cnp(spec: object = None, specs: object = None, name: str = "p", ns: str = "x",
        clusterwide: bool = False) -> dict:
    doc: dict = {"apiVersion": "cilium.io/v2",
                 "kind": "CiliumClusterwideNetworkPolicy" if clusterwide else "CiliumNetworkPolicy",
                 "metadata": {"name": name} if clusterwide else {"name": name, "namespace": ns}}
    if spec is not None:
        doc["spec"] = spec
    if specs is not None:
        doc["specs"] = specs
    return doc


def one(doc: dict) -> Rule:
    (rule,) = parse_policy(doc, FILE)
    return rule


def sel(match_labels: dict | None = None, *reqs: Requirement) -> LabelSelector:
    return LabelSelector.of(match_labels, reqs)


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def error(doc: object, field: str, *words: str) -> ManifestError:
    with pytest.raises(ManifestError) as ei:
        parse_policy(doc, FILE)  # type: ignore[arg-type]
    e = ei.value
    assert e.file == FILE
    assert e.field == field, str(e)
    for w in words:
        assert w in e.reason, str(e)
    assert str(e) == f"{FILE}: {e.obj}: {field}: {e.reason}"
    return e


# --- NetworkPolicy --------------------------------------------------------------------------

def test_np_deny_all_ingress() -> None:
    r = one(np({"podSelector": {}, "policyTypes": ["Ingress"]}, name="deny-all"))
    assert r == Rule(kind="NetworkPolicy", namespace="x", name="deny-all",
                     subject=sel(None, NS_X), ingress=(), egress=(), enforce_ingress=True,
                     enforce_egress=False, file=FILE, index=0)
    assert r.policy == "NetworkPolicy x/deny-all"
    assert str(r.subject) == "k8s:io.kubernetes.pod.namespace=x"


def test_np_policy_types_default() -> None:
    # Kubernetes' defaulting: Ingress always, Egress when spec.egress has rules
    r = one(np({"podSelector": {}}))
    assert (r.enforce_ingress, r.enforce_egress) == (True, False)
    r = one(np({"podSelector": {}, "egress": [{}]}))
    assert (r.enforce_ingress, r.enforce_egress) == (True, True)
    assert r.egress == (RuleBlock((WILDCARD,)),) and r.ingress == ()
    r = one(np({"podSelector": {}, "egress": []}))
    assert (r.enforce_ingress, r.enforce_egress) == (True, False)
    r = one(np(None))   # no spec at all: the API server's zero value, deny all ingress
    assert (r.enforce_ingress, r.enforce_egress, r.ingress) == (True, False, ())


def test_np_allow_all_and_deny_all_egress() -> None:
    r = one(np({"podSelector": {}, "ingress": [{}]}))
    assert r.ingress == (RuleBlock((WILDCARD,), ()),)
    r = one(np({"podSelector": {}, "ingress": [{"from": [], "ports": []}]}))
    assert r.ingress == (RuleBlock((WILDCARD,), ()),)
    r = one(np({"podSelector": {}, "policyTypes": ["Egress"]}))
    assert (r.enforce_ingress, r.enforce_egress, r.egress) == (False, True, ())


def test_np_direction_not_in_policy_types_is_ignored() -> None:
    r = one(np({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}],
                "egress": [{"to": [{"podSelector": {}}]}]}))
    assert r.ingress == () and not r.enforce_ingress
    assert r.egress == (RuleBlock((sel(None, NS_X),)),)


def test_np_subject_selector() -> None:
    r = one(np({"podSelector": {
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                             {"key": "env", "operator": "NotIn", "values": ["dev"]},
                             {"key": "canary", "operator": "DoesNotExist"},
                             {"key": "app.kubernetes.io/name", "operator": "Exists"}]}}))
    assert r.subject == sel({"k8s:app": "web"}, NS_X,
                            Requirement("k8s:tier", "In", ("a", "b")),
                            Requirement("k8s:env", "NotIn", ("dev",)),
                            Requirement("k8s:canary", "DoesNotExist"),
                            Requirement("k8s:app.kubernetes.io/name", "Exists"))
    assert str(r.subject) == ("k8s:app=web,k8s:app.kubernetes.io/name,!k8s:canary,"
                              "k8s:env notin (dev),k8s:io.kubernetes.pod.namespace=x,"
                              "k8s:tier in (a,b)")


def test_np_peers() -> None:
    r = one(np({"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "b"}}},
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
        {"namespaceSelector": {}},
        {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn",
                                                     "values": ["x"]}]},
         "podSelector": {"matchLabels": {"pod": "b"}}},
        {"podSelector": {}},
        {"ipBlock": {"cidr": "10.0.0.5/8", "except": ["10.1.0.0/16", "10.2.0.0/16"]}},
    ]}]}))
    (block,) = r.ingress
    ns_label = "k8s:io.cilium.k8s.namespace.labels.ns"
    assert block.peers == (
        sel({"k8s:pod": "b"}, NS_X),                            # this namespace only
        sel({ns_label: "y"}),                                   # any pod of those namespaces
        sel(None, POD_NS_EXISTS),                               # every pod of every namespace
        sel({"k8s:pod": "b"}, Requirement(ns_label, "NotIn", ("x",))),   # both, ANDed
        sel(None, NS_X),                                        # every pod of this namespace
        CIDRSelector(net("10.0.0.0/8"), (net("10.1.0.0/16"), net("10.2.0.0/16"))),
    )
    assert block.ports == ()
    assert str(block.peers[-1]) == "cidr:10.0.0.0/8 except 10.1.0.0/16,10.2.0.0/16"


def test_np_ports() -> None:
    r = one(np({"podSelector": {}, "egress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 53}, {"protocol": "SCTP", "port": 9000},
        {"port": "http"}, {"protocol": "UDP"}, {}, {"port": 32000, "endPort": 32768},
        {"port": 443, "endPort": 443}]}]}))
    (block,) = r.egress
    assert block.peers == (WILDCARD,)
    assert block.ports == (PortRule("TCP", 80), PortRule("UDP", 53), PortRule("SCTP", 9000),
                           PortRule("TCP", name="http"), PortRule("UDP"), PortRule("TCP"),
                           PortRule("TCP", 32000, 32768), PortRule("TCP", 443))
    assert [str(p) for p in block.ports] == [
        "80/TCP", "53/UDP", "9000/SCTP", "http/TCP", "0/UDP", "0/TCP", "32000-32768/TCP",
        "443/TCP"]


def test_np_to_dict() -> None:
    r = one(np({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]}))
    assert r.to_dict() == {
        "kind": "NetworkPolicy", "namespace": "x", "name": "p", "file": FILE, "index": 0,
        "subject": "k8s:io.kubernetes.pod.namespace=x,k8s:pod=a",
        "enforce": {"ingress": True, "egress": False},
        "ingress": [{"deny": False, "peers": ["k8s:io.kubernetes.pod.namespace=x"],
                     "ports": ["80/TCP"]}],
        "egress": []}


def test_np_default_namespace() -> None:
    r = one(np({"podSelector": {}}, ns=None))
    assert r.namespace == "default" and r.policy == "NetworkPolicy default/p"


@pytest.mark.parametrize("spec, field, words", [
    ({"podSelector": {}, "ingres": []}, "spec.ingres", ["unknown field"]),
    ({"podSelector": {}, "ingress": [{"from": [{"podSelectr": {}}]}]},
     "spec.ingress[0].from[0].podSelectr", ["unknown field"]),
    ({"podSelector": {}, "ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]",
     ["must specify a peer"]),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                                                "podSelector": {}}]}]},
     "spec.ingress[0].from[0]", ["more than 1 peer type"]),
    ({"podSelector": {}, "ingress": [{"from": [{}, {"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
     "spec.ingress[0].from[0]", ["must specify a peer"]),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr", ["IPv4 CIDR", "'10.0.0.0/33'"]),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr", ["IPv4 CIDR"]),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr", ["required"]),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/64"}}]}]},
     "spec.egress[0].to[0].ipBlock.cidr", ["IPv6 is not supported"]),
    ({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]", ["strict subset", "10.0.0.0/8"]),
    ({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.0.0.0/8"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[1]", ["strict subset"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]},
     "spec.ingress[0].ports[0].port", ["1 to 65535"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 65536}]}]},
     "spec.ingress[0].ports[0].port", ["1 to 65535", "65536"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "80"}]}]},
     "spec.ingress[0].ports[0].port", ["port name", "'80'"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "Http"}]}]},
     "spec.ingress[0].ports[0].port", ["port name"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
     "spec.ingress[0].ports[0].endPort", ["greater than or equal to port 90"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 70000}]}]},
     "spec.ingress[0].ports[0].endPort", ["1 to 65535"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort", ["non-numeric"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"endPort": 90}]}]},
     "spec.ingress[0].ports[0].port", ["must be specified when endPort"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP", "port": 80}]}]},
     "spec.ingress[0].ports[0].protocol", ["TCP, UDP, SCTP", "'ICMP'"]),
    ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ANY", "port": 80}]}]},
     "spec.ingress[0].ports[0].protocol", ["TCP, UDP, SCTP"]),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals",
                                            "values": ["b"]}]}},
     "spec.podSelector.matchExpressions[0].operator", ["not a valid selector operator"]),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values", ["must be specified"]),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists",
                                            "values": ["b"]}]}},
     "spec.podSelector.matchExpressions[0].values", ["may not be specified"]),
    ({"podSelector": {"matchExpressions": [{"operator": "Exists"}]}},
     "spec.podSelector.matchExpressions[0].key", ["required"]),
    ({"podSelector": {"matchLabel": {"a": "b"}}}, "spec.podSelector.matchLabel",
     ["unknown field"]),
    ({"podSelector": {"matchLabels": {"a": 1}}}, "spec.podSelector.matchLabels[a]",
     ["strings"]),
    ({"podSelector": {"matchLabels": {"k8s:a": "b"}}}, "spec.podSelector.matchLabels[k8s:a]",
     ["label key name"]),
    ({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
        "matchLabels": {"a": "-bad-"}}}]}]},
     "spec.ingress[0].from[0].namespaceSelector.matchLabels[a]", ["label value"]),
    ({"podSelector": {}, "policyTypes": ["Ingress", "Egres"]}, "spec.policyTypes[1]",
     ["Ingress, Egress"]),
    ({"podSelector": {}, "policyTypes": ["Ingress", "Egress", "Ingress"]}, "spec.policyTypes",
     ["at most 2"]),
    ({"podSelector": {}, "ingress": {"from": []}}, "spec.ingress", ["expected a list"]),
    ("deny", "spec", ["expected a mapping"]),
])
def test_np_errors(spec: object, field: str, words: list[str]) -> None:
    e = error(np(spec, name="bad"), field, *words)
    assert e.obj == "NetworkPolicy x/bad"


def test_object_errors() -> None:
    good = np({"podSelector": {}})
    error({**good, "apiVersion": "networking.k8s.io/v1beta1"}, "apiVersion",
          "'networking.k8s.io/v1'")
    error({**good, "kind": "NetworkPolicies"}, "kind", "NetworkPolicy, CiliumNetworkPolicy")
    error({**good, "metadata": {"name": "Bad_Name", "namespace": "x"}}, "metadata.name",
          "DNS-1123 subdomain")
    error({**good, "metadata": {"name": "p", "namespace": "X"}}, "metadata.namespace",
          "DNS-1123 label")
    error({**good, "metadata": None}, "metadata", "required")
    error({**good, "extra": 1}, "extra", "unknown field")
    error(["not", "a", "mapping"], "<document>", "expected a mapping")


# --- Cilium policies --------------------------------------------------------------------------

def test_cnp_endpoint_selector_namespaced_and_clusterwide() -> None:
    spec = {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}
    r = one(cnp(spec, name="web"))
    assert r.subject == sel({"k8s:app": "web"}, NS_X)
    assert r.policy == "CiliumNetworkPolicy x/web"
    assert r.ingress == (RuleBlock(()),)          # the deny-all form: enforced, allows nothing
    assert (r.enforce_ingress, r.enforce_egress) == (True, False)
    r = one(cnp(spec, name="web", clusterwide=True))
    assert r.subject == sel({"k8s:app": "web"}) and r.namespace == ""
    assert r.policy == "CiliumClusterwideNetworkPolicy web"
    # an explicit namespace key that names this namespace is fine
    r = one(cnp({"endpointSelector": {"matchLabels": {
        "k8s:io.kubernetes.pod.namespace": "x"}}}))
    assert r.subject == sel(None, NS_X)
    assert (r.enforce_ingress, r.enforce_egress) == (False, False)


def test_cnp_from_endpoints_namespace_restriction() -> None:
    spec = {"endpointSelector": {}, "ingress": [{"fromEndpoints": [
        {},
        {"matchLabels": {"any:app": "db"}},
        {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "y", "app": "db"}},
        {"matchExpressions": [{"key": "io.kubernetes.pod.namespace", "operator": "In",
                               "values": ["y", "z"]}]},
        {"matchLabels": {"reserved:host": ""}},
        {"matchLabels": {"io.cilium.k8s.namespace.labels.team": "a"}},
    ]}]}
    ns_in = Requirement("k8s:io.kubernetes.pod.namespace", "In", ("y", "z"))
    (block,) = one(cnp(spec)).ingress
    assert block.peers == (
        sel(None, NS_X),
        sel({"k8s:app": "db"}, NS_X),
        sel({"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": "y"}),
        sel(None, ns_in),
        sel({"reserved:host": ""}),
        sel({"k8s:io.cilium.k8s.namespace.labels.team": "a"}, NS_X),
    )
    (block,) = one(cnp(spec, clusterwide=True)).ingress
    assert block.peers == (
        sel(None, POD_NS_EXISTS),                       # {}: every pod of the cluster
        sel({"k8s:app": "db"}, POD_NS_EXISTS),
        sel({"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": "y"}),
        sel(None, ns_in),
        sel({"reserved:host": ""}),
        sel({"k8s:io.cilium.k8s.namespace.labels.team": "a"}, POD_NS_EXISTS),
    )


def test_cnp_entities_and_cidrs() -> None:
    r = one(cnp({"endpointSelector": {}, "egress": [
        {"toEntities": ["world", "cluster", "host", "remote-node", "kube-apiserver"]},
        {"toEntities": ["all"]},
        {"toCIDR": ["203.0.113.0/24", "198.51.100.7/32"]},
        {"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]},
                       {"cidr": "192.168.0.0/16", "except": ["192.168.0.0/16"]}]},
    ]}))
    assert [b.peers for b in r.egress] == [
        tuple(EntitySelector(e) for e in ("world", "cluster", "host", "remote-node",
                                          "kube-apiserver")),
        (WILDCARD,),
        (CIDRSelector(net("203.0.113.0/24")), CIDRSelector(net("198.51.100.7/32"))),
        (CIDRSelector(net("0.0.0.0/0"), (net("10.0.0.0/8"),)),
         CIDRSelector(net("192.168.0.0/16"), (net("192.168.0.0/16"),))),
    ]
    assert (r.enforce_ingress, r.enforce_egress) == (False, True)
    assert [str(p) for p in r.egress[0].peers + r.egress[1].peers] == [
        "entity:world", "entity:cluster", "entity:host", "entity:remote-node",
        "entity:kube-apiserver", "entity:all"]


def test_cnp_to_ports() -> None:
    r = one(cnp({"endpointSelector": {}, "ingress": [
        {"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}, {"port": 53},
                                {"port": "HTTP-Alt"}, {"port": "0", "protocol": "UDP"},
                                {"port": "8000", "endPort": 8080, "protocol": "TCP"},
                                {"port": 9000, "endPort": 0}]},
                     {}]},
        {"fromEntities": ["host"], "toPorts": [{"ports": [{"port": "443"}]}]},
    ]}))
    first, second = r.ingress
    assert first.peers == (WILDCARD,)     # toPorts without peers: every peer
    assert first.ports == (PortRule("TCP", 80), PortRule("ANY", 53),
                           PortRule("ANY", name="http-alt"), PortRule("UDP"),
                           PortRule("TCP", 8000, 8080), PortRule("ANY", 9000), PortRule("ANY"))
    assert second == RuleBlock((EntitySelector("host"),), (PortRule("ANY", 443),))


def test_cnp_deny_and_default_deny() -> None:
    r = one(cnp({"endpointSelector": {},
                 "ingressDeny": [{"fromEntities": ["world"]}],
                 "egressDeny": [{"toPorts": [{"ports": [{"port": "25"}]}]}]}))
    assert r.ingress == (RuleBlock((EntitySelector("world"),), (), deny=True),)
    assert r.egress == (RuleBlock((WILDCARD,), (PortRule("ANY", 25),), deny=True),)
    assert (r.enforce_ingress, r.enforce_egress) == (True, True)
    r = one(cnp({"endpointSelector": {}, "ingress": [{"fromEntities": ["world"]}],
                 "ingressDeny": [{"fromEntities": ["host"]}],
                 "enableDefaultDeny": {"ingress": False, "egress": True}}))
    assert [b.deny for b in r.ingress] == [False, True]
    assert (r.enforce_ingress, r.enforce_egress) == (False, True)


def test_cnp_specs() -> None:
    rules = parse_policy(cnp({"endpointSelector": {}, "ingress": [{}]},
                             specs=[{"endpointSelector": {"matchLabels": {"a": "b"}},
                                     "egress": [{}], "description": "d", "labels": []},
                                    {"endpointSelector": {}}]), FILE)
    assert [r.index for r in rules] == [0, 1, 2]
    assert [(r.enforce_ingress, r.enforce_egress) for r in rules] == [
        (True, False), (False, True), (False, False)]
    assert rules[1].subject == sel({"k8s:a": "b"}, NS_X)
    (only,) = parse_policy(cnp(specs=[{"endpointSelector": {}}]), FILE)
    assert only.index == 0


@pytest.mark.parametrize("spec, field, words", [
    ({"nodeSelector": {}}, "spec.nodeSelector", ["not supported", "host policies"]),
    ({"ingress": [{}]}, "spec.endpointSelector", ["required"]),
    ({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                                                        "rules": {"http": [{}]}}]}]},
     "spec.ingress[0].toPorts[0].rules", ["not supported", "L7"]),
    ({"endpointSelector": {}, "ingress": [{"icmps": [{"fields": [{"type": 8}]}]}]},
     "spec.ingress[0].icmps", ["not supported"]),
    ({"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "a.com"}]}]},
     "spec.egress[0].toFQDNs", ["not supported"]),
    ({"endpointSelector": {}, "egress": [{"toServices": []}]}, "spec.egress[0].toServices",
     ["not supported"]),
    ({"endpointSelector": {}, "ingress": [{"fromRequires": [{}]}]},
     "spec.ingress[0].fromRequires", ["not supported"]),
    ({"endpointSelector": {}, "ingressDeny": [{"fromCIDRSet": [{"cidrGroupRef": "g"}]}]},
     "spec.ingressDeny[0].fromCIDRSet[0].cidrGroupRef", ["not supported"]),
    ({"endpointSelector": {}, "ingress": [{"fromEndpoint": [{}]}]},
     "spec.ingress[0].fromEndpoint", ["unknown field", "fromEndpoints"]),
    ({"endpointSelector": {}, "ingress": [{"toEndpoints": [{}]}]},
     "spec.ingress[0].toEndpoints", ["unknown field"]),
    ({"endpointSelector": {}, "egress": [{"toEntities": ["internet"]}]},
     "spec.egress[0].toEntities[0]", ["world", "'internet'"]),
    ({"endpointSelector": {}, "egress": [{"toCIDR": ["300.0.0.0/8"]}]},
     "spec.egress[0].toCIDR[0]", ["IPv4 CIDR"]),
    ({"endpointSelector": {}, "egress": [{"toCIDRSet": [
        {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}]}]},
     "spec.egress[0].toCIDRSet[0].except[0]", ["inside cidr '10.0.0.0/16'"]),
    ({"endpointSelector": {}, "egress": [{"toCIDRSet": [{"except": ["10.0.0.0/8"]}]}]},
     "spec.egress[0].toCIDRSet[0].cidr", ["required"]),
    ({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "70000"}]}]}]},
     "spec.egress[0].toPorts[0].ports[0].port", ["0 (every port) to 65535", "'70000'"]),
    ({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": -1}]}]}]},
     "spec.egress[0].toPorts[0].ports[0].port", ["0 (every port) to 65535"]),
    ({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "90",
                                                                  "endPort": 80}]}]}]},
     "spec.egress[0].toPorts[0].ports[0].endPort", ["greater than or equal to port 90"]),
    ({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "0",
                                                                  "endPort": 80}]}]}]},
     "spec.egress[0].toPorts[0].ports[0].endPort", ["port is 0"]),
    ({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "dns",
                                                                  "endPort": 80}]}]}]},
     "spec.egress[0].toPorts[0].ports[0].endPort", ["named port"]),
    ({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "53",
                                                                  "protocol": "ICMP"}]}]}]},
     "spec.egress[0].toPorts[0].ports[0].protocol", ["TCP, UDP, SCTP, ANY"]),
    ({"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "a--b"}]}]}]},
     "spec.egress[0].toPorts[0].ports[0].port", ["port name"]),
    ({"endpointSelector": {"matchLabels": {"foo:app": "a"}}},
     "spec.endpointSelector.matchLabels[foo:app]", ["unknown label source 'foo'"]),
    ({"endpointSelector": {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "y"}}},
     "spec.endpointSelector", ["namespace 'x'"]),
    ({"endpointSelector": {}, "enableDefaultDeny": {"ingress": "yes"}},
     "spec.enableDefaultDeny.ingress", ["true or false"]),
    ({"endpointSelector": {}, "enableDefaultDeny": {"both": True}},
     "spec.enableDefaultDeny.both", ["unknown field"]),
    ({"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchExpressions": [
        {"key": "a", "operator": "in", "values": ["b"]}]}]}]},
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator",
     ["not a valid selector operator"]),
])
def test_cnp_errors(spec: object, field: str, words: list[str]) -> None:
    e = error(cnp(spec, name="bad"), field, *words)
    assert e.obj == "CiliumNetworkPolicy x/bad"


def test_cnp_spec_errors() -> None:
    e = error(cnp(), "spec", "set spec or specs")
    assert e.obj == "CiliumNetworkPolicy x/p"
    error(cnp(specs=[{"endpointSelector": {}}, {"endpointSelector": {}, "egres": []}]),
          "specs[1].egres", "unknown field")
    error(cnp(specs={"endpointSelector": {}}), "specs", "expected a list")
    e = error(cnp({"endpointSelector": {}, "ingress": [{"fromEntities": ["everything"]}]},
                  name="cw", clusterwide=True), "spec.ingress[0].fromEntities[0]", "world")
    assert e.obj == "CiliumClusterwideNetworkPolicy cw"
    assert str(e).startswith(f"{FILE}: CiliumClusterwideNetworkPolicy cw: "
                             "spec.ingress[0].fromEntities[0]: ")


def test_negative_namespace_selectors_select_pods_only() -> None:
    """A peer of only NotIn/DoesNotExist requirements must not pick up world, host, remote-node
    or CIDR identities (none carries namespace labels); it still selects pods elsewhere."""
    from agent.policy.selector import label_map
    not_y = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                   "values": ["y"]}]}
    k8s_peer = one(np({"podSelector": {}, "egress": [{"to": [{"namespaceSelector": not_y}]}],
                       "policyTypes": ["Egress"]})).egress[0].peers[0]
    cnp_peer = one(cnp({"endpointSelector": {}, "egress": [{"toEndpoints": [
        {"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "NotIn",
                               "values": ["y"]}]}]}]})).egress[0].peers[0]
    pod_z = label_map(["k8s:io.kubernetes.pod.namespace=z",
                       "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=z"])
    pod_y = label_map(["k8s:io.kubernetes.pod.namespace=y",
                       "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=y"])
    for peer in (k8s_peer, cnp_peer):
        assert peer.matches(pod_z) and not peer.matches(pod_y)
        for others in (["reserved:world"], ["reserved:host"], ["reserved:remote-node"],
                       ["cidr:203.0.113.0/24", "reserved:world"]):
            assert not peer.matches(label_map(others)), (peer, others)
