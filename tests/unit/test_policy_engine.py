"""Unit tests for agent/policy/engine.py: loading (bad objects keep the last good version),
CIDR identities, incremental identities and the endpoint policy cache, and the views."""
from __future__ import annotations

import pytest

from agent.policy import EndpointPolicy, MapKey, PolicyEngine
from agent.policy.mapstate import EGRESS, INGRESS, verdict

TCP = 6
HOST_LABELS = ("reserved:host",)


def pod(ns: str, name: str, **extra: str) -> tuple[str, ...]:
    return tuple(sorted([f"k8s:pod={name}", f"k8s:io.kubernetes.pod.namespace={ns}",
                         f"k8s:io.cilium.k8s.namespace.labels.ns={ns}"]
                        + [f"k8s:{k}={v}" for k, v in extra.items()]))


XA, XB, YA = 256, 257, 258
IDS = {1: HOST_LABELS, 2: ("reserved:world",), XA: pod("x", "a"), XB: pod("x", "b"),
       YA: pod("y", "a")}


def np(name: str, spec: object, ns: str = "x") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def cnp(name: str, spec: object, ns: str = "x") -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def objects(*docs: dict) -> dict:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]):
            (f"/m/{d['metadata']['name']}.yaml", d) for d in docs}


def from_pod(name: str, port: int = 80) -> dict:
    return {"from": [{"podSelector": {"matchLabels": {"pod": name}}}], "ports": [{"port": port}]}


def policy(e: PolicyEngine, ident: int = XA) -> EndpointPolicy:
    return e.endpoint_policy(ident, IDS[ident], {})


def reaches(e: PolicyEngine, src: int, dst: int, port: int = 80) -> bool:
    return verdict(policy(e, dst).entries, src, INGRESS, TCP, port) == "allow"


# --- load ---------------------------------------------------------------------------------------

def test_bad_object_keeps_last_good_version_and_others_apply() -> None:
    e = PolicyEngine()
    e.set_identities(IDS)
    v1 = np("web", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [from_pod("b")]})
    other = np("other", {"podSelector": {"matchLabels": {"pod": "b"}}})
    assert e.load(objects(v1, other)) == []
    assert (e.count(), e.revision, e.change_counts) == (2, 2, {"success": 2, "failure": 0})
    assert reaches(e, XB, XA) and not reaches(e, YA, XA) and not reaches(e, XA, XB)

    bad = np("web", {"podSelector": {"matchLabels": {"pod": "a"}},
                     "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]})
    never = np("never", {"podSelector": {}, "ingress": [{"ports": [{"port": 99999}]}]})
    other2 = np("other", {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{}]})
    errors = e.load(objects(bad, never, other2))
    assert errors == [
        "/m/never.yaml: NetworkPolicy x/never: spec.ingress[0].ports[0].port: "
        "expected an integer from 1 to 65535, got 99999",
        "/m/web.yaml: NetworkPolicy x/web: spec.ingress[0].from[0].ipBlock.cidr: "
        "expected an IPv4 CIDR such as 10.0.0.0/24, got '10.0.0.0/33'"]
    assert e.errors == {("NetworkPolicy", "x", "never"): errors[0],
                        ("NetworkPolicy", "x", "web"): errors[1]}
    assert e.change_counts == {"success": 3, "failure": 2}
    assert e.count() == 2                       # web (its last good version) and other
    assert reaches(e, XB, XA) and not reaches(e, YA, XA)   # v1 still in force
    assert reaches(e, XA, XB)                   # the other object's change applied
    assert e.revision == 3

    # unchanged objects are not looked at again: same errors, nothing counted
    assert e.load(objects(bad, never, other2)) == errors
    assert e.change_counts == {"success": 3, "failure": 2} and e.revision == 3

    # fixing it applies it; removing objects removes them (and their errors)
    v2 = np("web", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [from_pod("b", 81)]})
    assert e.load(objects(v2, never)) == errors[:1]
    assert e.errors == {("NetworkPolicy", "x", "never"): errors[0]}
    assert e.change_counts == {"success": 5, "failure": 2} and e.count() == 1
    assert not reaches(e, XB, XA) and reaches(e, XB, XA, 81)
    assert not policy(e, XB).ingress_enforced
    assert e.load({}) == [] and e.errors == {} and e.count() == 0
    assert not policy(e).ingress_enforced


def test_same_rules_do_not_move_the_revision() -> None:
    e = PolicyEngine()
    doc = np("p", {"podSelector": {}})
    e.load(objects(doc))
    doc2 = dict(doc, metadata={"name": "p", "namespace": "x", "labels": {"a": "b"}})
    e.load(objects(doc2))
    assert e.revision == 1 and e.change_counts == {"success": 2, "failure": 0}


def test_get_selectors_count() -> None:
    e = PolicyEngine()
    e.set_identities(IDS)
    e.load(objects(np("web", {"podSelector": {"matchLabels": {"pod": "a"}},
                              "ingress": [from_pod("b")]}),
                   cnp("two", None) | {"specs": [
                       {"endpointSelector": {}, "egressDeny": [{"toEntities": ["world"]}]},
                       {"endpointSelector": {}, "ingress": [{"fromEndpoints": [
                           {"matchLabels": {"pod": "b"}}]}]}]}))
    assert e.count() == 2
    got = e.get()
    assert [(r["kind"], r["name"], r["index"]) for r in got] == [
        ("CiliumNetworkPolicy", "two", 0), ("CiliumNetworkPolicy", "two", 1),
        ("NetworkPolicy", "web", 0)]
    assert got[0]["egress"] == [{"deny": True, "peers": ["entity:world"], "ports": []}]
    assert got[2]["file"] == "/m/web.yaml"
    assert e.selectors() == [
        {"selector": "entity:world", "identities": [2], "users": 1},
        {"selector": "k8s:io.kubernetes.pod.namespace=x,k8s:pod=b", "identities": [XB],
         "users": 2}]


# --- CIDR identities ------------------------------------------------------------------------------

def test_cidr_identities_allocated_stable_and_released() -> None:
    table = {"192.168.0.0/16": 16777216}        # the daemon's persisted table
    e = PolicyEngine(cidr_ids=table)
    e.set_identities(IDS)
    egress_to = cnp("out", {"endpointSelector": {}, "egress": [{"toCIDRSet": [
        {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]},
        {"cidr": "192.168.0.0/16"}, {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}]})
    e.load(objects(egress_to))
    assert e.cidr_identities() == table == {
        "192.168.0.0/16": 16777216, "10.0.0.0/8": 16777217, "10.1.0.0/16": 16777218}
    entries = policy(e).entries
    assert {k.identity for k in entries if k.egress == EGRESS} == {2, 16777216, 16777217}

    # 10.1.0.0/16 no longer named: released; a new prefix in the same change does not take
    # its number (the old prefix's ipcache row is still there while the new rows go in)
    e.load(objects(cnp("out", {"endpointSelector": {}, "egress": [{"toCIDR": [
        "10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12"]}]})))
    assert table == {"192.168.0.0/16": 16777216, "10.0.0.0/8": 16777217,
                     "172.16.0.0/12": 16777219}
    assert {k.identity for k in policy(e).entries if k.egress == EGRESS} == {
        16777216, 16777217, 16777219}
    # a later change may use the freed number again
    e.load(objects(cnp("out", {"endpointSelector": {}, "egress": [{"toCIDR": [
        "10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12", "198.51.100.0/24"]}]})))
    assert table["198.51.100.0/24"] == 16777218
    e.load({})
    assert table == {} and e.cidr_identities() == {}
    assert e.selectors() == []


# --- identities and the cache ----------------------------------------------------------------

def test_endpoint_policy_cache_and_incremental_identities() -> None:
    e = PolicyEngine()
    e.set_identities(IDS)
    e.load(objects(np("web", {"podSelector": {"matchLabels": {"pod": "a"}},
                              "ingress": [from_pod("b")]})))
    first = policy(e)
    assert policy(e) is first                       # unchanged inputs: the cached result
    e.set_identities({**IDS, 300: pod("z", "c")})   # a pod no selector of XA's rules picks
    assert policy(e) is first
    e.set_identities({**IDS, 300: pod("z", "c"), 301: pod("x", "b", version="2")})
    second = policy(e)
    assert second is not first
    assert set(second.entries) - set(first.entries) == {MapKey(301, INGRESS, TCP, 80, 16)}
    assert policy(e, XB) is policy(e, XB)
    # a policy that does not select XA leaves its result alone; one that does, not
    e.load(objects(np("web", {"podSelector": {"matchLabels": {"pod": "a"}},
                              "ingress": [from_pod("b")]}),
                   np("y-only", {"podSelector": {}}, ns="y")))
    assert policy(e) is second
    e.load(objects(np("web", {"podSelector": {"matchLabels": {"pod": "a"}},
                              "ingress": [from_pod("b", 81)]})))
    assert policy(e) is not second
    assert MapKey(XB, INGRESS, TCP, 81, 16) in policy(e).entries
    # the endpoint's own named ports are an input too
    third = policy(e)
    assert e.endpoint_policy(XA, IDS[XA], {"http": [("TCP", 80)]}) is not third
    e.configure("always", "always")
    assert policy(e, XB).ingress_enforced and policy(e, XB).egress_enforced
    e.configure("default", "policy")
    assert MapKey(1, INGRESS, 0, 0, 0) not in policy(e).entries
    with pytest.raises(ValueError, match="expected one of default, always, never"):
        e.configure("sometimes", "always")
    with pytest.raises(ValueError, match="allowLocalhost"):
        e.configure("default", "auto")
    with pytest.raises(ValueError):
        PolicyEngine(mode="strict")


def test_egress_named_ports_follow_the_callback() -> None:
    e = PolicyEngine()
    e.set_identities(IDS)
    ports = {XB: {"web": {("TCP", 8080)}}}
    e.named_ports = lambda ids: {n: p for i in (ids or ports) for n, p in ports.get(i, {}).items()}
    e.load(objects(np("out", {"podSelector": {"matchLabels": {"pod": "a"}},
                              "policyTypes": ["Egress"],
                              "egress": [{"to": [{"podSelector": {}}],
                                          "ports": [{"port": "web"}]}]})))
    first = policy(e)
    assert {k for k in first.entries if k.egress == EGRESS} == {MapKey(XB, EGRESS, TCP, 8080, 16)}
    assert policy(e) is first
    ports[XB] = {"web": {("TCP", 9090)}}            # the pod behind XB changed its ports
    second = policy(e)
    assert {k for k in second.entries if k.egress == EGRESS} == {
        MapKey(XB, EGRESS, TCP, 9090, 16)}
