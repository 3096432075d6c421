"""Unit tests for agent/policy/mapstate.py: the map entries of one endpoint, and the datapath's
decision over them (`verdict`)."""
from __future__ import annotations

from collections.abc import Callable

from agent.policy.mapstate import EGRESS, INGRESS, EndpointPolicy, NamedPorts, compute, verdict
from agent.policy import MapKey, MapValue, parse_policy, port_prefixes
from agent.policy.selector import label_map
from agent.policy.selectorcache import SelectorCache

TCP, UDP, SCTP = 6, 17, 132
HOST, WORLD, REMOTE = 1, 2, 6
CIDR_10, CIDR_10_1 = 16777216, 16777217


def pod_labels(ns: str, name: str) -> tuple[str, ...]:
    return (f"k8s:pod={name}", f"k8s:io.kubernetes.pod.namespace={ns}",
            f"k8s:io.cilium.k8s.namespace.labels.ns={ns}")


PODS = {256: ("x", "a"), 257: ("x", "b"), 258: ("y", "a"), 259: ("y", "b")}
XA, XB, YA, YB = 256, 257, 258, 259
IDENTITIES = {HOST: ("reserved:host",), WORLD: ("reserved:world",),
              REMOTE: ("reserved:remote-node",),
              CIDR_10: ("cidr:10.0.0.0/8", "reserved:world"),
              CIDR_10_1: ("cidr:10.1.0.0/16", "reserved:world"),
              **{i: pod_labels(ns, n) for i, (ns, n) in PODS.items()}}
ALLOW_ANY_EGRESS = {MapKey(0, EGRESS, 0, 0, 0): MapValue(False, ("allow-any-egress",))}
ALLOW_ANY_INGRESS = {MapKey(0, INGRESS, 0, 0, 0): MapValue(False, ("allow-any-ingress",))}
LOCALHOST = {MapKey(HOST, INGRESS, 0, 0, 0): MapValue(False, ("allow-localhost-ingress",))}


def np(name: str, spec: dict, ns: str = "x") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def cnp(name: str, spec: dict, ns: str = "x") -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def state(*docs: dict, ep: int = XA, own: NamedPorts | None = None,
          named_ports_of: Callable | None = None, mode: str = "default",
          allow_localhost: str = "always") -> EndpointPolicy:
    """The map state of endpoint `ep` (one of PODS) under the given policy objects."""
    rules = [r for d in docs for r in parse_policy(d, "/m/p.yaml")]
    cache = SelectorCache()
    cache.set_identities(IDENTITIES)
    for r in rules:
        for p in r.peers():
            cache.add_selector(p)
    labels = label_map(IDENTITIES[ep])
    return compute([r for r in rules if r.subject.matches(labels)], cache.selections,
                   own or {}, named_ports_of or (lambda ids: {}), mode, allow_localhost)


def allow(ident: int, egress: int, proto: int, port: int, prefix: int, *names: str
          ) -> dict[MapKey, MapValue]:
    return {MapKey(ident, egress, proto, port, prefix): MapValue(False, names)}


def deny(ident: int, egress: int, proto: int, port: int, prefix: int, *names: str
         ) -> dict[MapKey, MapValue]:
    return {MapKey(ident, egress, proto, port, prefix): MapValue(True, names)}


# --- verdict (the datapath's two lookups) --------------------------------------------------------

def test_verdict_longest_prefix_and_deny_precedence() -> None:
    e = {**allow(XB, INGRESS, TCP, 0, 0), **deny(XB, INGRESS, TCP, 80, 16),
         **allow(0, INGRESS, UDP, 53, 16), **deny(0, INGRESS, TCP, 22, 16)}
    assert verdict(e, XB, INGRESS, TCP, 443) == "allow"
    assert verdict(e, XB, INGRESS, TCP, 80) == "deny"      # longer prefix of the same identity
    assert verdict(e, XB, INGRESS, TCP, 22) == "deny"      # the wildcard's deny wins
    assert verdict(e, XB, INGRESS, UDP, 53) == "allow"     # through the wildcard
    assert verdict(e, XB, INGRESS, UDP, 54) == "drop"
    assert verdict(e, YA, INGRESS, UDP, 53) == "allow"
    assert verdict(e, YA, INGRESS, TCP, 443) == "drop"
    assert verdict(e, XB, EGRESS, TCP, 443) == "drop"      # the other direction
    e = {**allow(XB, INGRESS, 0, 0, 0), **deny(XB, INGRESS, TCP, 1024, 6)}
    assert [verdict(e, XB, INGRESS, TCP, p) for p in (1023, 1024, 2047, 2048)] == [
        "allow", "deny", "deny", "allow"]
    assert verdict(e, XB, INGRESS, 1, 0) == "allow"        # ICMP: any protocol


# --- forms ---------------------------------------------------------------------------------------

def test_no_policy_is_open() -> None:
    p = state()
    assert (p.ingress_enforced, p.egress_enforced) == (False, False)
    assert p.entries == {**ALLOW_ANY_INGRESS, **ALLOW_ANY_EGRESS}


def test_deny_all_ingress() -> None:
    p = state(np("deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    assert (p.ingress_enforced, p.egress_enforced) == (True, False)
    assert p.entries == {**LOCALHOST, **ALLOW_ANY_EGRESS}
    assert verdict(p.entries, XB, INGRESS, TCP, 80) == "drop"
    assert verdict(p.entries, HOST, INGRESS, TCP, 80) == "allow"   # allowLocalhost always
    assert verdict(p.entries, XB, EGRESS, TCP, 80) == "allow"


def test_allow_all_ingress_and_deny_all_egress() -> None:
    p = state(np("allow-all", {"podSelector": {}, "ingress": [{}],
                               "policyTypes": ["Ingress", "Egress"]}))
    assert (p.ingress_enforced, p.egress_enforced) == (True, True)
    assert p.entries == {**allow(0, INGRESS, 0, 0, 0, "NetworkPolicy x/allow-all"), **LOCALHOST}
    assert verdict(p.entries, WORLD, INGRESS, UDP, 9) == "allow"
    assert verdict(p.entries, XB, EGRESS, TCP, 80) == "drop"


def test_policy_of_another_namespace_does_not_apply() -> None:
    p = state(np("deny-all", {"podSelector": {}}, ns="y"))
    assert p.entries == {**ALLOW_ANY_INGRESS, **ALLOW_ANY_EGRESS}


def test_two_policies_union() -> None:
    one = np("one", {"podSelector": {"matchLabels": {"pod": "a"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                                  "ports": [{"port": 80}]}]})
    two = np("two", {"podSelector": {},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                  "ports": [{"port": 80}, {"port": 81}]}]})
    p = state(one, two)
    assert p.entries == {
        **allow(XB, INGRESS, TCP, 80, 16, "NetworkPolicy x/one"),
        **allow(YA, INGRESS, TCP, 80, 16, "NetworkPolicy x/two"),
        **allow(YB, INGRESS, TCP, 80, 16, "NetworkPolicy x/two"),
        **allow(YA, INGRESS, TCP, 81, 16, "NetworkPolicy x/two"),
        **allow(YB, INGRESS, TCP, 81, 16, "NetworkPolicy x/two"),
        **LOCALHOST, **ALLOW_ANY_EGRESS}
    # the same key from two policies names both
    p = state(one, np("three", {"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]}]}))
    assert p.entries[MapKey(XB, INGRESS, TCP, 80, 16)] == MapValue(
        False, ("NetworkPolicy x/one", "NetworkPolicy x/three"))
    # pod x/b is selected by "three" only
    assert state(one, two, ep=XB).entries == state(two, ep=XB).entries


def test_ingress_named_ports_resolve_against_own_ports() -> None:
    doc = np("named", {"podSelector": {}, "ingress": [{"ports": [
        {"port": "http"}, {"port": "dns", "protocol": "UDP"}, {"port": "nope"}]}]})
    own = {"http": [("TCP", 8080)], "dns": [("UDP", 53), ("TCP", 53)]}
    p = state(doc, own=own)
    assert p.entries == {**allow(0, INGRESS, TCP, 8080, 16, "NetworkPolicy x/named"),
                         **allow(0, INGRESS, UDP, 53, 16, "NetworkPolicy x/named"),
                         **LOCALHOST, **ALLOW_ANY_EGRESS}
    # protocol numbers work as well as names; no own port of that name: nothing allowed
    assert state(doc, own={"http": [(6, 8080)], "dns": [(17, 53)]}).entries == p.entries
    assert state(doc).entries == {**LOCALHOST, **ALLOW_ANY_EGRESS}


def test_egress_named_ports_resolve_against_peer_pods() -> None:
    calls = []

    def named_ports_of(ids: frozenset[int] | None) -> dict:
        calls.append(ids)
        ports = {XB: {"web": {("TCP", 8080)}}, YA: {"web": {("TCP", 9090), ("UDP", 9090)}}}
        if ids is None:
            return {"web": {pair for p in ports.values() for pair in p["web"]}}
        return {name: pairs for i in ids for name, pairs in ports.get(i, {}).items()}

    doc = cnp("named", {"endpointSelector": {}, "egress": [
        {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "x"}},
                         {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "y",
                                          "pod": "a"}}],
         "toPorts": [{"ports": [{"port": "web", "protocol": "TCP"}]}]},
        {"toPorts": [{"ports": [{"port": "web"}]}]}]})
    p = state(doc, named_ports_of=named_ports_of)
    name = "CiliumNetworkPolicy x/named"
    assert p.entries == {**allow(XB, EGRESS, TCP, 8080, 16, name),
                         **allow(YA, EGRESS, TCP, 9090, 16, name),
                         **allow(0, EGRESS, TCP, 8080, 16, name),
                         **allow(0, EGRESS, TCP, 9090, 16, name),
                         **allow(0, EGRESS, UDP, 9090, 16, name), **ALLOW_ANY_INGRESS}
    assert set(calls) == {frozenset({XA}), frozenset({XB}), frozenset({YA}), None}
    assert len(calls) == 4   # once per identity


def test_end_port_range() -> None:
    p = state(np("range", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
         "ports": [{"port": 32000, "endPort": 32768, "protocol": "UDP"}]}]}))
    assert port_prefixes(32000, 32768) == [(32000, 8), (32256, 7), (32768, 16)]
    want = {MapKey(ident, EGRESS, UDP, port, bits): MapValue(False, ("NetworkPolicy x/range",))
            for ident in (CIDR_10, CIDR_10_1) for port, bits in port_prefixes(32000, 32768)}
    assert p.entries == {**want, **ALLOW_ANY_INGRESS}
    for port, v in ((31999, "drop"), (32000, "allow"), (32500, "allow"), (32768, "allow"),
                    (32769, "drop")):
        assert verdict(p.entries, CIDR_10, EGRESS, UDP, port) == v, port
    assert verdict(p.entries, CIDR_10, EGRESS, TCP, 32000) == "drop"


def test_any_protocol() -> None:
    name = "CiliumNetworkPolicy x/any"
    p = state(cnp("any", {"endpointSelector": {}, "ingress": [
        {"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "53"}]}]},
        {"fromEntities": ["remote-node"], "toPorts": [{"ports": [{"port": "0"}]}]},
        {"fromEntities": ["host"], "toPorts": [{"ports": [{"port": "0", "protocol": "TCP"}]}]},
    ]}))
    assert p.entries == {
        **{MapKey(i, INGRESS, proto, 53, 16): MapValue(False, (name,))
           for i in (WORLD, CIDR_10, CIDR_10_1) for proto in (TCP, UDP, SCTP)},
        **allow(REMOTE, INGRESS, 0, 0, 0, name),
        **allow(HOST, INGRESS, TCP, 0, 0, name),
        **LOCALHOST, **ALLOW_ANY_EGRESS}
    assert verdict(p.entries, REMOTE, INGRESS, 1, 0) == "allow"   # ICMP too
    assert verdict(p.entries, WORLD, INGRESS, 1, 0) == "drop"


def test_deny_on_all_ports_beats_allow_on_one() -> None:
    allow_80 = cnp("allow", {"endpointSelector": {}, "ingress": [
        {"fromEndpoints": [{"matchLabels": {"pod": "b"}}],
         "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]})
    deny_all_ports = cnp("deny", {"endpointSelector": {}, "ingressDeny": [
        {"fromEndpoints": [{"matchLabels": {"pod": "b"}}]}]})
    p = state(allow_80, deny_all_ports)
    both = ("CiliumNetworkPolicy x/allow", "CiliumNetworkPolicy x/deny")
    assert p.entries == {**deny(XB, INGRESS, TCP, 80, 16, *both),
                         **deny(XB, INGRESS, 0, 0, 0, "CiliumNetworkPolicy x/deny"),
                         **LOCALHOST, **ALLOW_ANY_EGRESS}
    assert verdict(p.entries, XB, INGRESS, TCP, 80) == "deny"
    # a deny on every TCP port, and on a range holding 80, cover it as well
    for ports, verdict_8080 in (([{"port": "0", "protocol": "TCP"}], "deny"),
                                ([{"port": "1", "endPort": 1023}], "allow")):
        d = cnp("deny", {"endpointSelector": {}, "ingressDeny": [
            {"fromEndpoints": [{"matchLabels": {"pod": "b"}}], "toPorts": [{"ports": ports}]}]})
        a = cnp("allow", {"endpointSelector": {}, "ingress": [
            {"fromEndpoints": [{"matchLabels": {"pod": "b"}}],
             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"},
                                    {"port": "8080", "protocol": "TCP"}]}]}]})
        p = state(a, d)
        assert p.entries[MapKey(XB, INGRESS, TCP, 80, 16)].deny
        assert p.entries[MapKey(XB, INGRESS, TCP, 8080, 16)].deny == (verdict_8080 == "deny")
        assert verdict(p.entries, XB, INGRESS, TCP, 80) == "deny"
        assert verdict(p.entries, XB, INGRESS, TCP, 8080) == verdict_8080
    # a deny on one port does not cover an allow on every port: the longer prefix decides
    p = state(cnp("allow", {"endpointSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]}),
              cnp("deny", {"endpointSelector": {}, "ingressDeny": [
                  {"fromEndpoints": [{"matchLabels": {"pod": "b"}}],
                   "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]}))
    assert not p.entries[MapKey(XB, INGRESS, 0, 0, 0)].deny
    assert [verdict(p.entries, XB, INGRESS, TCP, port) for port in (21, 22, 23)] == [
        "allow", "deny", "allow"]
    assert verdict(p.entries, YA, INGRESS, TCP, 22) == "allow"


def test_wildcard_deny_with_identity_allow() -> None:
    p = state(cnp("allow", {"endpointSelector": {}, "ingress": [
                  {"fromEndpoints": [{"matchLabels": {"pod": "b"}}],
                   "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}),
              cnp("deny", {"endpointSelector": {}, "ingressDeny": [
                  {"fromEntities": ["all"],
                   "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}))
    # the identity's entry stays an allow; the wildcard's deny wins in the datapath
    assert p.entries == {**allow(XB, INGRESS, TCP, 80, 16, "CiliumNetworkPolicy x/allow"),
                         **deny(0, INGRESS, TCP, 80, 16, "CiliumNetworkPolicy x/deny"),
                         **LOCALHOST, **ALLOW_ANY_EGRESS}
    assert verdict(p.entries, XB, INGRESS, TCP, 80) == "deny"
    assert verdict(p.entries, HOST, INGRESS, TCP, 80) == "deny"   # denies beat localhost
    assert verdict(p.entries, HOST, INGRESS, TCP, 81) == "allow"


def test_entities() -> None:
    p = state(cnp("ent", {"endpointSelector": {}, "egress": [
        {"toEntities": ["world"]}, {"toEntities": ["cluster"], "toPorts": [
            {"ports": [{"port": "80", "protocol": "TCP"}]}]}]}))
    name = "CiliumNetworkPolicy x/ent"
    assert p.entries == {
        **{MapKey(i, EGRESS, 0, 0, 0): MapValue(False, (name,))
           for i in (WORLD, CIDR_10, CIDR_10_1)},
        **{MapKey(i, EGRESS, TCP, 80, 16): MapValue(False, (name,))
           for i in (HOST, REMOTE, XA, XB, YA, YB)},
        **ALLOW_ANY_INGRESS}


def test_cidr_with_except_selects_identities() -> None:
    p = state(cnp("cidr", {"endpointSelector": {}, "egress": [
        {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}]}))
    assert p.entries == {**allow(CIDR_10, EGRESS, 0, 0, 0, "CiliumNetworkPolicy x/cidr"),
                         **ALLOW_ANY_INGRESS}
    p = state(np("ipblock", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.1.0.0/16"]}}]}]}))
    assert set(p.entries) == {MapKey(i, EGRESS, 0, 0, 0) for i in (WORLD, CIDR_10)} | set(
        ALLOW_ANY_INGRESS)


def test_enforcement_modes_and_allow_localhost() -> None:
    deny_all = np("deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    p = state(deny_all, mode="never")
    assert (p.ingress_enforced, p.egress_enforced) == (False, False)
    assert p.entries == {**ALLOW_ANY_INGRESS, **ALLOW_ANY_EGRESS}
    p = state(mode="always")
    assert (p.ingress_enforced, p.egress_enforced) == (True, True)
    assert p.entries == LOCALHOST
    p = state(mode="always", allow_localhost="policy")
    assert p.entries == {}
    p = state(deny_all, allow_localhost="policy")
    assert p.entries == {}
    assert verdict(p.entries, HOST, INGRESS, TCP, 80) == "drop"
    # deny rules beat allowLocalhost
    p = state(cnp("no-host", {"endpointSelector": {},
                              "ingressDeny": [{"fromEntities": ["host"]}]}))
    assert p.entries[MapKey(HOST, INGRESS, 0, 0, 0)] == MapValue(
        True, ("CiliumNetworkPolicy x/no-host", "allow-localhost-ingress"))
    assert verdict(p.entries, HOST, INGRESS, TCP, 80) == "deny"


def test_rules_without_default_deny() -> None:
    # enableDefaultDeny false: the direction stays open, but the rule's denies hold
    p = state(cnp("soft", {"endpointSelector": {}, "enableDefaultDeny": {"ingress": False},
                           "ingressDeny": [{"fromEntities": ["world"]}]}))
    assert not p.ingress_enforced
    assert verdict(p.entries, WORLD, INGRESS, TCP, 80) == "deny"
    assert verdict(p.entries, CIDR_10, INGRESS, TCP, 80) == "deny"
    assert verdict(p.entries, XB, INGRESS, TCP, 80) == "allow"
    # ... until another policy enforces the direction
    p = state(cnp("soft", {"endpointSelector": {}, "enableDefaultDeny": {"ingress": False},
                           "ingress": [{"fromEntities": ["host"]}]}),
              np("deny-all", {"podSelector": {}}))
    assert p.ingress_enforced
    assert verdict(p.entries, XB, INGRESS, TCP, 80) == "drop"
