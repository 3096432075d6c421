"""The upstream Kubernetes NetworkPolicy e2e truth tables (test/e2e/network/netpol), at the
model level: namespaces x, y, z labelled ns=<name>; pods a, b, c labelled pod=<name>, each
serving TCP and UDP on 80 and 81 under named ports; reachability of every pair read from the
map states the engine computes (egress of the client, then ingress of the server, as the
datapath decides them), compared with the expected 9x9 matrix."""
from __future__ import annotations

import fnmatch

from agent.identity import security_labels
from agent.policy import PolicyEngine
from agent.policy.mapstate import EGRESS, INGRESS, NamedPorts, verdict

NAMESPACES = ("x", "y", "z")
PODS = tuple(f"{ns}/{name}" for ns in NAMESPACES for name in ("a", "b", "c"))
SERVED = {f"serve-{port}-{proto.lower()}": (proto, port)
          for port in (80, 81) for proto in ("TCP", "UDP")}
RESERVED = {1: ("reserved:host",), 2: ("reserved:world",), 6: ("reserved:remote-node",)}


class Cluster:
    """Namespaces, pods and policies as the agent sees them, without a datapath."""

    def __init__(self) -> None:
        self.ns_labels = {ns: {"ns": ns, "kubernetes.io/metadata.name": ns}
                          for ns in NAMESPACES}
        self.pod_labels = {p: {"pod": p.split("/")[1]} for p in PODS}
        self.identities: dict[tuple[str, ...], int] = {}
        self.objects: dict[tuple[str, str, str], tuple[str, dict]] = {}
        self.engine = PolicyEngine()
        self.engine.named_ports = self.named_ports_of
        self.sync()

    def labels(self, pod: str) -> tuple[str, ...]:
        ns = pod.split("/")[0]
        return security_labels(ns, self.pod_labels[pod], self.ns_labels[ns])

    def identity(self, pod: str) -> int:
        return self.identities.setdefault(self.labels(pod), 256 + len(self.identities))

    def sync(self) -> None:
        self.engine.set_identities({**RESERVED,
                                    **{self.identity(p): self.labels(p) for p in PODS}})

    def named_ports_of(self, identities: frozenset[int] | None) -> NamedPorts:
        chosen = [p for p in PODS if identities is None or self.identity(p) in identities]
        return {name: {pair} for name, pair in SERVED.items()} if chosen else {}

    def apply(self, *docs: dict) -> None:
        for d in docs:
            key = (d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])
            self.objects[key] = (f"/m/{d['metadata']['name']}.yaml", d)
        assert self.engine.load(self.objects) == []

    def matrix(self, port: int = 80, proto: str = "TCP") -> dict[tuple[str, str], bool]:
        number = {"TCP": 6, "UDP": 17}[proto]
        own = {name: [pair] for name, pair in SERVED.items()}
        pol = {p: self.engine.endpoint_policy(self.identity(p), self.labels(p), own)
               for p in PODS}
        return {(src, dst): src == dst or (   # a pod reaches itself over loopback
            verdict(pol[src].entries, self.identity(dst), EGRESS, number, port) == "allow"
            and verdict(pol[dst].entries, self.identity(src), INGRESS, number, port) == "allow")
            for src in PODS for dst in PODS}


class Reachability:
    """The expected matrix, built as upstream's: start from a default, then expect patterns."""

    def __init__(self, default: bool = True):
        self.m = {(s, d): default for s in PODS for d in PODS}

    def expect(self, src: str, dst: str, ok: bool) -> Reachability:
        for s, d in self.m:
            if fnmatch.fnmatch(s, src) and fnmatch.fnmatch(d, dst):
                self.m[(s, d)] = ok
        return self

    def done(self) -> dict[tuple[str, str], bool]:
        return {k: v or k[0] == k[1] for k, v in self.m.items()}


def render(m: dict[tuple[str, str], bool]) -> str:
    rows = ["     " + " ".join(PODS)]
    rows += [f"{s}  " + "   ".join("." if m[(s, d)] else "X" for d in PODS) for s in PODS]
    return "\n".join(rows)


def check(cluster: Cluster, want: Reachability, port: int = 80, proto: str = "TCP") -> None:
    got, expected = cluster.matrix(port, proto), want.done()
    assert got == expected, f"\ngot:\n{render(got)}\nwant:\n{render(expected)}"


def netpol(name: str, spec: dict, ns: str = "x") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


POD_A = {"matchLabels": {"pod": "a"}}


def test_no_policy_everything_reaches_everything() -> None:
    check(Cluster(), Reachability())


def test_default_deny_ingress() -> None:
    c = Cluster()
    c.apply(netpol("deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    check(c, Reachability().expect("*", "x/*", False))


def test_default_deny_all() -> None:
    c = Cluster()
    c.apply(netpol("deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                "ingress": [], "egress": []}))
    check(c, Reachability().expect("*", "x/*", False).expect("x/*", "*", False))


def test_allow_from_pods_within_namespace_by_pod_selector() -> None:
    c = Cluster()
    c.apply(netpol("x-a-allows-x-b", {"podSelector": POD_A, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    check(c, Reachability().expect("*", "x/a", False).expect("x/b", "x/a", True))


def test_namespace_selector_with_match_expressions() -> None:
    c = Cluster()
    c.apply(netpol("allow-ns-y", {"podSelector": POD_A, "ingress": [{"from": [
        {"namespaceSelector": {"matchExpressions": [
            {"key": "ns", "operator": "In", "values": ["y"]}]}}]}]}))
    check(c, Reachability().expect("x/*", "x/a", False).expect("z/*", "x/a", False))


def test_pod_selector_and_namespace_selector() -> None:
    c = Cluster()
    c.apply(netpol("and", {"podSelector": POD_A, "ingress": [{"from": [
        {"namespaceSelector": {"matchExpressions": [
            {"key": "ns", "operator": "NotIn", "values": ["x"]}]},
         "podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    check(c, Reachability().expect("*", "x/a", False).expect("y/b", "x/a", True)
          .expect("z/b", "x/a", True))


def test_pod_selector_or_namespace_selector() -> None:
    c = Cluster()
    c.apply(netpol("or", {"podSelector": POD_A, "ingress": [{"from": [
        {"namespaceSelector": {"matchExpressions": [
            {"key": "ns", "operator": "NotIn", "values": ["x"]}]}},
        {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    check(c, Reachability().expect("x/*", "x/a", False).expect("x/b", "x/a", True))


def test_ingress_on_one_named_port() -> None:
    c = Cluster()
    c.apply(netpol("named-81", {"podSelector": POD_A, "ingress": [
        {"ports": [{"port": "serve-81-tcp"}]}]}))
    check(c, Reachability(), port=81)
    check(c, Reachability().expect("*", "x/a", False), port=80)
    check(c, Reachability().expect("*", "x/a", False), port=81, proto="UDP")


def test_egress_to_other_namespace_by_pod_and_namespace_selector() -> None:
    c = Cluster()
    c.apply(netpol("egress-y-a", {"podSelector": POD_A, "policyTypes": ["Egress"], "egress": [
        {"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                 "podSelector": {"matchLabels": {"pod": "a"}}}],
         "ports": [{"port": 80, "protocol": "TCP"}]}]}))
    check(c, Reachability().expect("x/a", "*", False).expect("x/a", "y/a", True))
    check(c, Reachability().expect("x/a", "*", False), port=81)


def test_egress_named_port() -> None:
    c = Cluster()
    c.apply(netpol("egress-named", {"podSelector": POD_A, "policyTypes": ["Egress"], "egress": [
        {"ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]}))
    check(c, Reachability().expect("x/a", "*", False), port=80)
    check(c, Reachability(), port=80, proto="UDP")


def test_deny_ingress_to_updated_pod() -> None:
    c = Cluster()
    c.apply(netpol("deny-isolated", {"podSelector": {"matchLabels": {"target": "isolated"}},
                                     "policyTypes": ["Ingress"]}))
    check(c, Reachability())
    c.pod_labels["x/a"] = {"pod": "a", "target": "isolated"}   # the pod's labels change
    c.sync()
    check(c, Reachability().expect("*", "x/a", False))


def test_allow_ingress_from_updated_namespace() -> None:
    c = Cluster()
    c.apply(netpol("allow-updated-ns", {"podSelector": POD_A, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}]}))
    check(c, Reachability().expect("*", "x/a", False))
    c.ns_labels["y"] = {**c.ns_labels["y"], "ns2": "updated"}   # the namespace's labels change
    c.sync()
    check(c, Reachability().expect("x/*", "x/a", False).expect("z/*", "x/a", False))


def test_multiple_policies_union_and_removal() -> None:
    c = Cluster()
    c.apply(netpol("from-y", {"podSelector": POD_A, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            netpol("from-z", {"podSelector": POD_A, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}))
    check(c, Reachability().expect("x/*", "x/a", False))
    del c.objects[("NetworkPolicy", "x", "from-z")]
    c.apply()
    check(c, Reachability().expect("x/*", "x/a", False).expect("z/*", "x/a", False))
