"""Identity policy end to end (issue 9) on one three-node lab (native routing, etcd: the session's
`native` lab of conftest, the model added to it for this module) shared by every case: the Kubernetes NetworkPolicy truth-table model (namespaces x, y, z; pods a, b, c;
TCP and UDP on 80 and 81; every pair probed from inside the pods), CiliumNetworkPolicy and
CiliumClusterwideNetworkPolicy cases with the seed lab's pods beside them, stateful behaviour of
established flows, and what the CLI, the metrics and the error reporting show.

Policies and label changes go through the lab's manifests directory only, written atomically;
each case removes what it wrote and waits for full reachability again before the next one
(so deleting a policy restoring reachability is checked after every case)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.runtime import _bin
from datapath import netns

from .conftest import NATIVE_LB, promtool_clean, wait_for
from .netpol import (ALL, ECHO_PORT, EXT, EXT2, EXT_SERVER, NODES, PROBE, TCP80, TCP81, UDP80,
                     UDP81, TRACE, PolicyLab, R, ccnp, cnp, expr, file_name, netpol,
                     pod_manifest, sel, sel_of, write_atomic, write_model)

NS_LABEL = "k8s:io.kubernetes.pod.namespace"
NODE_PORT = 30080
NODEPORT = f"""apiVersion: v1
kind: Service
metadata: {{name: webpod-np, namespace: default}}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {{app: webpod}}
  ports: [{{port: 80, targetPort: http, nodePort: {NODE_PORT}}}]
"""


def _xdp_on_every_node(h, attached: bool) -> bool:
    return all(("prog/xdp" in h.run(n, "ip", "link", "show", "dev", "eth1").stdout) == attached
               for n in NODES)


@pytest.fixture(scope="module")
def plab(native):
    """The model on the session's native lab (conftest), which test_multi_node uses too: its
    namespaces, pods and NodePort service written into the lab's manifests and created by
    `lab up`, with the load balancer at its defaults (random, no XDP) as on a lab of its own;
    all of it taken away again afterwards, the lab's Maglev and XDP back."""
    h = native
    before = set(h.manifests.iterdir())
    write_model(h.manifests)                                     # x, y, z with a, b, c
    (h.manifests / "webpod-np.yaml").write_text(NODEPORT)       # ext -> webpod-1, client kept
    added = set(h.manifests.iterdir()) - before
    try:
        h.lab.up(values={"loadBalancer": None})
        wait_for(lambda: _xdp_on_every_node(h, False), timeout=30, what="XDP detached")
        h.run("ext", "ip", "addr", "add", f"{EXT2}/24", "dev", "eth1")
        srv = subprocess.Popen(netns.cmd(h.ns("ext"), sys.executable, "-c", EXT_SERVER),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: ":80 " in h.run("ext", "ss", "-Htln").stdout, what="ext's server")
            yield PolicyLab(h, _bin("datapath"))
        finally:
            srv.kill()
            srv.wait(timeout=10)
            h.run("ext", "ip", "addr", "del", f"{EXT2}/24", "dev", "eth1", check=False)
    finally:
        for f in added:
            f.unlink(missing_ok=True)
        h.lab.up(values={"loadBalancer": NATIVE_LB})            # the model's pods go again
        wait_for(lambda: _xdp_on_every_node(h, True), timeout=30, what="XDP attached again")


def baseline(lab: PolicyLab, what: str) -> None:
    """Everything reaches everything: the model pods on TCP/80, the seed flows (curl-pod to the
    webpod ClusterIP and to ext)."""
    lab.expect(R(TCP80),
               R(TCP80, sources=("curl-pod",), targets=("svc:webpod", "ext", "ext2")), what=what)


@pytest.fixture
def np(plab):
    yield plab
    plab.reset()
    baseline(plab, "reachability restored once the case's policies are deleted")


# ---------------------------------------------------------------- Kubernetes NetworkPolicy

def test_default_allow_all(np):
    np.expect(R(TCP80), R(TCP81), R(UDP80), R(UDP81),
              R(TCP80, sources=("curl-pod", "x/a"), targets=("svc:webpod", "webpod-2", "ext")),
              what="no policy: all allowed")


def test_deny_all_ingress_then_allow_all_union_then_delete(np):
    deny = netpol("default-deny-ingress", "x", {}, types=["Ingress"])
    np.apply(deny)
    np.expect(R(TCP80).deny("*", "x/*"), R(UDP81).deny("*", "x/*"), what="deny-all ingress in x")
    allow = netpol("allow-all-ingress", "x", {}, ingress=[{}])
    np.apply(allow)
    np.expect(R(TCP80), R(UDP81), what="deny-all + allow-all ingress in x (union)")
    np.delete(allow)
    np.expect(R(TCP80).deny("*", "x/*"), what="allow-all deleted: deny-all again")
    np.delete(deny)
    np.expect(R(TCP80), R(UDP80), what="deny-all deleted: all allowed again")


def ping(np, src: str, dst: str) -> bool:
    return np.h.run(src, "ping", "-c", "1", "-W", "1", np.ip(dst), check=False).returncode == 0


def lab_exec_probe(np, src: str, dst: str) -> str:
    """One probe through the lab's public interface: `datapath lab exec NS/POD -- python3 -c`."""
    jobs = json.dumps([["p", np.ip(dst), 80, "TCP", ""]])
    p = subprocess.run([*_bin("datapath"), "lab", "exec", "--name", np.h.lab.name, src, "--",
                        "python3", "-c", PROBE, jobs, "1"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["p"]


def test_pod_selector_peer(np):
    np.apply(netpol("allow-from-b", "x", sel(pod="a"),
                    ingress=[{"from": [{"podSelector": sel(pod="b")}]}]))
    np.expect(R(TCP80).deny("*", "x/a").allow("x/b", "x/a"),
              R(UDP81).deny("*", "x/a").allow("x/b", "x/a"), what="x/a ingress from x/b only")
    # the same through `datapath lab exec`, and ICMP: a rule without ports allows it
    assert lab_exec_probe(np, "x/b", "x/a") == "x/a"
    assert lab_exec_probe(np, "y/b", "x/a").startswith("error:")
    assert ping(np, "x/b", "x/a") and not ping(np, "x/c", "x/a")


def test_namespace_selector_peer(np):
    np.apply(netpol("allow-from-y", "x", sel(pod="a"),
                    ingress=[{"from": [{"namespaceSelector": sel(ns="y")}]}]))
    np.expect(R(TCP80).deny("*", "x/a").allow("y/*", "x/a"), what="x/a ingress from y/*")


def test_pod_and_namespace_selector_in_one_peer_vs_two_peers(np):
    one = netpol("peers", "x", sel(pod="a"), ingress=[{"from": [
        {"namespaceSelector": sel(ns="y"), "podSelector": sel(pod="b")}]}])
    np.apply(one)
    np.expect(R(TCP80).deny("*", "x/a").allow("y/b", "x/a"), what="one peer: y/b only (AND)")
    two = netpol("peers", "x", sel(pod="a"), ingress=[{"from": [
        {"namespaceSelector": sel(ns="y")}, {"podSelector": sel(pod="b")}]}])
    np.apply(two)
    np.expect(R(TCP80).deny("*", "x/a").allow("y/*", "x/a").allow("x/b", "x/a"),
              what="two peers: y/* or x/b (OR)")


def test_match_expressions(np):
    np.apply(netpol("exprs", "x", {"matchExpressions": [expr("pod", "In", "a", "b")]},
                    ingress=[{"from": [{
                        "namespaceSelector": {"matchExpressions": [expr("ns", "NotIn", "x")]},
                        "podSelector": {"matchExpressions": [expr("pod", "NotIn", "c")]}}]}]))
    np.expect(R(TCP80).deny("*", "x/[ab]").allow("[yz]/[ab]", "x/[ab]"),
              what="x/a, x/b from pods a, b outside x")
    # the name label every namespace carries (the API server sets it), Exists/DoesNotExist
    np.apply(netpol("exprs", "x", {"matchExpressions": [expr("pod", "Exists")]},
                    ingress=[{"from": [{
                        "namespaceSelector": {"matchExpressions": [
                            expr("kubernetes.io/metadata.name", "In", "z")]},
                        "podSelector": {"matchExpressions": [expr("role", "DoesNotExist")]}}]}]))
    np.expect(R(TCP80).deny("*", "x/*").allow("z/*", "x/*"),
              what="x/* from the namespace named z")


def test_named_port(np):
    np.apply(netpol("named", "x", sel(pod="a"), ingress=[{
        "from": [{"namespaceSelector": {}}], "ports": [{"port": "serve-81-tcp"}]}]))
    np.expect(R(TCP81), R(TCP80).deny("*", "x/a"), R(UDP81).deny("*", "x/a"),
              what="x/a: named port serve-81-tcp only")
    assert not ping(np, "x/b", "x/a"), "ICMP allowed by a rule with ports"
    np.apply(netpol("named", "x", sel(pod="a"), ingress=[{
        "from": [{"namespaceSelector": {}}],
        "ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]))
    np.expect(R(UDP80), R(TCP80).deny("*", "x/a"), R(UDP81).deny("*", "x/a"),
              what="x/a: named port serve-80-udp only")


def test_port_80_tcp_vs_udp(np):
    np.apply(netpol("port80", "x", sel(pod="a"),
                    ingress=[{"ports": [{"port": 80, "protocol": "TCP"}]}]))
    np.expect(R(TCP80), R(TCP81).deny("*", "x/a"), R(UDP80).deny("*", "x/a"),
              what="x/a: 80/TCP from anywhere")
    np.apply(netpol("port80", "x", sel(pod="a"),
                    ingress=[{"ports": [{"port": 80, "protocol": "UDP"}]}]))
    np.expect(R(UDP80), R(TCP80).deny("*", "x/a"), R(UDP81).deny("*", "x/a"),
              what="x/a: 80/UDP from anywhere")
    # SCTP is accepted and programmed (this kernel cannot carry it): TCP and UDP 80 closed
    np.apply(netpol("port80", "x", sel(pod="a"),
                    ingress=[{"ports": [{"port": 80, "protocol": "SCTP"}]}]))
    np.expect(R(TCP80).deny("*", "x/a"), R(UDP80).deny("*", "x/a"), what="x/a: 80/SCTP only")
    rows = json.loads(np.cli("k8s-ctr", "bpf", "policy", "get", str(np.endpoint("x/a")["id"]),
                             "-o", "json", check=True).stdout)
    assert any(r["direction"] == "Ingress" and r["port"] == "80/SCTP"
               for r in rows), rows


def test_end_port_range(np):
    np.apply(netpol("range", "x", sel(pod="a"),
                    ingress=[{"ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]))
    np.expect(R(TCP80), R(TCP81), R(UDP80).deny("*", "x/a"), what="x/a: TCP 80-81")
    np.apply(netpol("range", "x", sel(pod="a"),
                    ingress=[{"ports": [{"port": 81, "endPort": 90, "protocol": "TCP"}]}]))
    np.expect(R(TCP81), R(TCP80).deny("*", "x/a"), what="x/a: TCP 81-90")


def test_egress_deny_all(np):
    np.apply(netpol("default-deny-egress", "x", {}, types=["Egress"]))
    np.expect(R(TCP80).deny("x/*", "*"), R(UDP80).deny("x/*", "*"),
              what="egress deny-all in x (ingress to x unaffected: replies pass)")


def test_egress_to_a_namespace_without_dns(np):
    # upstream also allows 53/UDP for DNS; probes here go to IPs, so it only has to be harmless
    np.apply(netpol("to-y", "x", sel(pod="a"), types=["Egress"], egress=[
        {"to": [{"namespaceSelector": sel(ns="y")}]},
        {"ports": [{"port": 53, "protocol": "UDP"}]}]))
    np.expect(R(TCP80).deny("x/a", "*").allow("x/a", "y/*"),
              R(UDP80).deny("x/a", "*").allow("x/a", "y/*"), what="x/a egress to y/* only")


def test_multiple_policies_on_one_pod_are_a_union(np):
    p1 = netpol("from-b", "x", sel(pod="a"), ingress=[{"from": [{"podSelector": sel(pod="b")}]}])
    p2 = netpol("from-y", "x", sel(pod="a"),
                ingress=[{"from": [{"namespaceSelector": sel(ns="y")}]}])
    np.apply(p1, p2)
    np.expect(R(TCP80).deny("*", "x/a").allow("x/b", "x/a").allow("y/*", "x/a"),
              what="union of from-b and from-y")
    np.delete(p1)
    np.expect(R(TCP80).deny("*", "x/a").allow("y/*", "x/a"), what="from-b deleted")


def test_policy_types_egress_only_and_the_defaults(np):
    egress = [{"to": [{"podSelector": sel(pod="b")}]}]
    ingress = [{"from": [{"podSelector": sel(pod="b")}]}]
    np.apply(netpol("types", "x", sel(pod="a"), ingress=ingress, egress=egress, types=["Egress"]))
    np.expect(R(TCP80).deny("x/a", "*").allow("x/a", "x/b"),
              what="policyTypes [Egress]: the ingress section is ignored")
    # policyTypes omitted: Ingress always, Egress because there is an egress section
    np.apply(netpol("types", "x", sel(pod="a"), egress=egress))
    np.expect(R(TCP80).deny("x/a", "*").allow("x/a", "x/b").deny("*", "x/a"),
              what="policyTypes omitted, egress section only: ingress deny-all too")


def from_pod(pod: str) -> list:
    return [{"from": [{"podSelector": sel(pod=pod)}]}]


def test_policy_updated_in_place(np):
    np.apply(netpol("update", "x", sel(pod="a"), ingress=from_pod("b")))
    np.expect(R(TCP80).deny("*", "x/a").allow("x/b", "x/a"), what="from b")
    np.apply(netpol("update", "x", sel(pod="a"), ingress=from_pod("c")))
    np.expect(R(TCP80).deny("*", "x/a").allow("x/c", "x/a"), what="same policy, now from c")


def test_namespace_label_change(np):
    np.apply(netpol("team", "x", sel(pod="a"),
                    ingress=[{"from": [{"namespaceSelector": sel(team="blue")}]}]))
    np.expect(R(TCP80).deny("*", "x/a"), what="no namespace is team=blue")
    np.set_namespace_labels("y", {"ns": "y", "team": "blue"})
    np.expect(R(TCP80).deny("*", "x/a").allow("y/*", "x/a"), what="y labelled team=blue")
    np.set_namespace_labels("y", {"ns": "y"})
    np.expect(R(TCP80).deny("*", "x/a"), what="y's team label removed")


def test_pod_label_change(np):
    np.apply(netpol("role", "x", sel(pod="a"),
                    ingress=[{"from": [{"podSelector": sel(role="client")}]}]))
    np.expect(R(TCP80).deny("*", "x/a"), what="no pod is role=client")
    np.set_pod_labels("x/c", {"pod": "c", "role": "client"})        # a peer starts matching
    np.expect(R(TCP80).deny("*", "x/a").allow("x/c", "x/a"), what="x/c labelled role=client")
    np.set_pod_labels("x/a", {"pod": "a2"})                          # the target stops matching
    np.expect(R(TCP80), what="x/a relabelled pod=a2: no policy selects it")


def test_ip_block_with_except_towards_ext(np):
    exts = ("ext", "ext2")
    np.apply(netpol("to-ext", "x", sel(pod="a"), types=["Egress"], egress=[
        {"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": [f"{EXT}/32"]}}]}]))
    np.expect(R(TCP80, sources=ALL, targets=exts).deny("x/a", "ext"),
              R(TCP80).deny("x/a", "*"), what="x/a egress to 203.0.113.0/24 except .10")
    # Cilium semantics: an ipBlock selects addresses outside the cluster, never pod IPs
    np.apply(netpol("to-ext", "x", sel(pod="a"), types=["Egress"], egress=[
        {"to": [{"ipBlock": {"cidr": "172.20.0.0/16"}}]}]))
    np.expect(R(TCP80, sources=ALL, targets=exts).deny("x/a", "*"), R(TCP80).deny("x/a", "*"),
              what="x/a egress to ipBlock 172.20.0.0/16: pods are not selected by CIDR")


# ---------------------------------------------------------------- Cilium policies

SEED = ("curl-pod", "webpod-1")
CURL_TARGETS = ("svc:webpod", "webpod-2", "x/b", "ext", "ext2")


def test_cnp_to_entities_world_vs_cluster(np):
    np.apply(cnp("curl-egress", "default", {"endpointSelector": sel(app="curl"),
                                             "egress": [{"toEntities": ["cluster"]}]}))
    np.expect(R(TCP80, sources=SEED, targets=CURL_TARGETS).deny("curl-pod", "ext*"),
              what="curl-pod toEntities cluster")
    np.apply(cnp("curl-egress", "default", {"endpointSelector": sel(app="curl"),
                                             "egress": [{"toEntities": ["world"]}]}))
    np.expect(R(TCP80, sources=SEED, targets=CURL_TARGETS).deny("curl-pod", "*")
              .allow("curl-pod", "ext*"), what="curl-pod toEntities world")


def test_cnp_from_entities_host_and_remote_node(np):
    """Web pods on k8s-ctr and k8s-w1 take ingress from curl-pod only: the local host still gets
    in (allowLocalhost: always), other nodes (remote-node) do not until fromEntities allows
    them; fromEntities host alone shuts curl-pod out but not the local host."""
    src = ("curl-pod", "x/a") + NODES
    dst = ("webpod-1", "webpod-2")
    spec = {"endpointSelector": sel(app="webpod")}
    np.apply(cnp("web-in", "default", {**spec, "ingress": [{"fromEndpoints": [sel(app="curl")]}]}))
    local = R(TCP80, sources=src, targets=dst, default=False).allow("curl-pod", "*") \
        .allow("k8s-ctr", "webpod-1").allow("k8s-w1", "webpod-2")
    np.expect(local, what="from curl-pod; local host allowed, remote nodes denied")
    np.apply(cnp("web-in", "default", {**spec, "ingress": [
        {"fromEndpoints": [sel(app="curl")]}, {"fromEntities": ["remote-node"]}]}))
    np.expect(R(TCP80, sources=src, targets=dst).deny("x/a", "*"),
              what="+ fromEntities remote-node")
    np.apply(cnp("web-in", "default", {**spec, "ingress": [{"fromEntities": ["host"]}]}))
    np.expect(R(TCP80, sources=src, targets=dst, default=False)
              .allow("k8s-ctr", "webpod-1").allow("k8s-w1", "webpod-2"),
              what="fromEntities host only")


def from_outside(np, src: str) -> bool:
    """ext (from address src) reaches webpod-1 through k8s-ctr's NodePort (Local: the client
    address is kept, so webpod-1's ingress sees ext's own address)."""
    out = np.h.run("ext", "curl", "-s", "-m", "1", "--interface", src,
                   f"http://192.168.10.100:{NODE_PORT}/", check=False).stdout
    return "Hostname: webpod-1" in out


def expect_from_outside(np, want: dict[str, bool], what: str) -> None:
    got = {}

    def ok():
        got.update({src: from_outside(np, src) for src in want})
        return got == want
    try:
        wait_for(ok, timeout=20, interval=0.3, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: ext -> webpod-1 through the NodePort, by source address:"
                             f" expected {want}, got {got}\n"
                             f"{np.diagnostics(['webpod-1'])}") from None


def test_cnp_from_cidr_and_world_ingress_from_outside(np):
    web = {"endpointSelector": sel(app="webpod")}
    seed = R(TCP80, sources=("curl-pod", "x/a"), targets=("svc:webpod", "webpod-1"))
    expect_from_outside(np, {EXT: True, EXT2: True}, "no policy")
    np.apply(cnp("web-from-ext", "default", {**web, "ingress": [
        {"fromCIDRSet": [{"cidr": "203.0.113.0/24", "except": [f"{EXT}/32"]}]},
        {"fromEndpoints": [sel(app="curl")]}]}))
    np.expect(seed.deny("x/a", "*"), what="web pods from curl-pod and 203.0.113.0/24 except .10")
    expect_from_outside(np, {EXT: False, EXT2: True}, "fromCIDRSet 203.0.113.0/24 except .10")
    np.apply(cnp("web-from-ext", "default", {**web, "ingress": [{"fromEntities": ["world"]}]}))
    expect_from_outside(np, {EXT: True, EXT2: True}, "fromEntities world")
    np.expect(R(TCP80, sources=("curl-pod",), targets=("svc:webpod", "webpod-1"), default=False),
              what="fromEntities world: pods are not world")


def test_cnp_to_cidr_set_with_except(np):
    np.apply(cnp("curl-cidr", "default", {"endpointSelector": sel(app="curl"), "egress": [
        {"toCIDRSet": [{"cidr": "203.0.113.0/24", "except": [f"{EXT}/32"]}]},
        {"toEndpoints": [sel(app="webpod")]}]}))
    np.expect(R(TCP80, sources=SEED, targets=CURL_TARGETS).deny("curl-pod", "ext")
              .deny("curl-pod", "x/b"), what="curl-pod toCIDRSet 203.0.113.0/24 except .10")


def test_cnp_deny_beats_allow(np):
    before = np.h.metric("cilium_drop_count_total", "k8s-ctr",
                         reason="Policy denied by denylist")
    np.apply(cnp("web-deny", "default", {
                     "endpointSelector": sel(app="webpod"),
                     "ingress": [{"fromEntities": ["all"]}],
                     "ingressDeny": [{"fromEndpoints": [sel(app="curl")]}]}),
             cnp("web-allow-curl", "default", {
                 "endpointSelector": sel(app="webpod"),
                 "ingress": [{"fromEndpoints": [sel(app="curl")]}]}),
             cnp("curl-deny-ext", "default", {
                 "endpointSelector": sel(app="curl"),
                 "egress": [{"toEntities": ["all"]}],
                 "egressDeny": [{"toCIDR": [f"{EXT}/32"]}]}))
    targets = ("svc:webpod", "webpod-1", "webpod-2", "webpod-3", "ext", "ext2")
    np.expect(R(TCP80, sources=("curl-pod", "x/a"), targets=targets)
              .deny("curl-pod", "*webpod*").deny("curl-pod", "ext"),
              what="ingressDeny curl-pod beats two allows; egressDeny .10 beats toEntities all")
    assert np.h.metric("cilium_drop_count_total", "k8s-ctr",
                       reason="Policy denied by denylist") > before


def test_cnp_to_ports_end_port_and_specs(np):
    np.apply(cnp("range", "x", {"endpointSelector": sel(pod="a"), "ingress": [{
        "fromEntities": ["cluster"],
        "toPorts": [{"ports": [{"port": "81", "endPort": 90, "protocol": "TCP"}]}]}]}))
    np.expect(R(TCP81), R(TCP80).deny("*", "x/a"), R(UDP81).deny("*", "x/a"),
              what="x/a toPorts TCP 81-90")
    # a specs list; protocol ANY; fromEndpoints of a namespaced CNP stay in its namespace
    np.apply(cnp("range", "x", specs=[
        {"endpointSelector": sel(pod="a"), "ingress": [{
            "fromEntities": ["cluster"],
            "toPorts": [{"ports": [{"port": "80", "protocol": "ANY"}]}]}]},
        {"endpointSelector": sel(pod="b"), "ingress": [{"fromEndpoints": [sel(pod="c")]}]}]))
    np.expect(R(TCP80).deny("*", "x/b").allow("x/c", "x/b"),
              R(UDP80).deny("*", "x/b").allow("x/c", "x/b"),
              R(TCP81).deny("*", "x/a").deny("*", "x/b").allow("x/c", "x/b"),
              what="specs: x/a 80/ANY from the cluster, x/b from x/c only")


def test_ccnp_and_namespaced_scope(np):
    seed = R(TCP80, sources=("curl-pod",), targets=("svc:webpod", "ext"))
    np.apply(ccnp("y-from-b", {"endpointSelector": sel_of({NS_LABEL: "y"}),
                               "ingress": [{"fromEndpoints": [sel(pod="b")]}]}))
    np.expect(R(TCP80).deny("*", "y/*").allow("*/b", "y/*"), seed,
              what="clusterwide: y/* from pods b of every namespace")
    np.delete(ccnp("y-from-b", {}))
    np.apply(cnp("y-from-b", "y", {"endpointSelector": {},
                                   "ingress": [{"fromEndpoints": [sel(pod="b")]}]}))
    np.expect(R(TCP80).deny("*", "y/*").allow("y/b", "y/*"), seed,
              what="namespaced: y/* from y/b only")


# ---------------------------------------------------------------- state

ECHO_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.settimeout(float(sys.argv[3]))
print("connected", flush=True)
for line in sys.stdin:
    try:
        c.sendall(line.encode())
        print(c.recv(1024).decode().strip() or "CLOSED", flush=True)
    except socket.timeout:
        print("TIMEOUT", flush=True)
    except OSError as e:
        print("ERROR " + type(e).__name__, flush=True)
"""


def test_established_flow_survives_an_allowing_change_and_a_new_deny_stops_it(np):
    cli = subprocess.Popen(netns.cmd(np.h.ns("x/a"), sys.executable, "-c", ECHO_CLIENT,
                                     np.ip("x/b"), str(ECHO_PORT), "3"),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def say(word):
        cli.stdin.write(word + "\n")
        cli.stdin.flush()
        return cli.stdout.readline().strip()

    def policy(src):
        return netpol("echo", "x", sel(pod="b"), ingress=[{
            "from": [{"podSelector": sel(pod=src)}],
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": ECHO_PORT, "protocol": "TCP"}]}])

    try:
        assert cli.stdout.readline().strip() == "connected"
        assert say("one") == "one"
        np.apply(policy("a"))                       # still allows x/a: in force, flow goes on
        np.expect(R(TCP80).deny("*", "x/b").allow("x/a", "x/b"), what="x/b from x/a only")
        assert say("two") == "two"
        drops = np.h.metric("cilium_drop_count_total", "k8s-w1", reason="Policy denied")
        np.apply(policy("c"))                       # now denies x/a: the flow stops
        np.expect(R(TCP80).deny("*", "x/b").allow("x/c", "x/b"), what="x/b from x/c only")
        assert say("three") == "TIMEOUT", "a new deny did not stop the established flow"
        assert np.h.metric("cilium_drop_count_total", "k8s-w1", reason="Policy denied") > drops
    finally:
        cli.kill()
        cli.wait(timeout=10)


def test_replies_never_need_an_allow_in_the_other_direction(np):
    np.apply(netpol("a-no-ingress", "x", sel(pod="a"), types=["Ingress"]),
             netpol("b-no-egress", "y", sel(pod="b"), types=["Egress"]))
    np.expect(R(TCP80).deny("*", "x/a").deny("y/b", "*"),
              R(UDP80).deny("*", "x/a").deny("y/b", "*"),
              what="x/a (ingress deny-all) still opens flows and gets replies; y/b (egress "
                   "deny-all) still answers")


# ---------------------------------------------------------------- observability

def _row(out: str, ip: str) -> list[str]:
    for line in out.splitlines():
        if ip in line.split():
            return line.split()
    raise AssertionError(f"no row for {ip} in:\n{out}")


def _enforcement(h, node: str) -> dict[str, float]:
    return {e: h.metric("cilium_policy_endpoint_enforcement_status", node, enforcement=e)
            for e in ("none", "ingress", "egress", "both")}


def test_cli_and_metrics_show_policy(np, tmp_path):
    h = np.h
    changes = h.metric("cilium_policy_change_total", "k8s-ctr", outcome="success")
    policies = h.metric("cilium_policy", "k8s-ctr")
    pol = netpol("obs", "x", sel(pod="a"), ingress=[{
        "from": [{"podSelector": sel(pod="b")}], "ports": [{"port": 80, "protocol": "TCP"}]}])
    np.apply(pol)
    np.expect(R(TCP80).deny("*", "x/a").allow("x/b", "x/a"), what="x/a from x/b on 80/TCP")
    ident_b = np.endpoint("x/b")["identity"]

    # the rules in force, on every node (each agent reads every policy)
    for node in NODES:
        got = json.loads(np.cli(node, "policy", "get", "-o", "json", check=True).stdout)
        assert [(p["kind"], p["namespace"], p["name"]) for p in got["policies"]] == \
            [("NetworkPolicy", "x", "obs")], got
        assert got["errors"] == [], got
    assert '"obs"' in np.cli("k8s-ctr", "policy", "get", check=True).stdout
    status = np.cli("k8s-ctr", "status", check=True).stdout
    assert re.search(r"^Policy:\s+1 policies in force", status, re.M), status

    # the selector of the peer and the one identity it selects
    rows = json.loads(np.cli("k8s-ctr", "policy", "selectors", "-o", "json", check=True).stdout)
    peer = [r for r in rows if "k8s:pod=b" in r["selector"]]
    assert len(peer) == 1 and peer[0]["identities"] == [ident_b], rows
    text = np.cli("k8s-ctr", "policy", "selectors", check=True).stdout
    assert text.split("\n")[0].split() == ["SELECTOR", "USERS", "IDENTITIES"], text
    assert str(ident_b) in text

    # endpoint list: x/a enforced on ingress only, curl-pod on neither
    eps = np.cli("k8s-ctr", "endpoint", "list", check=True).stdout
    assert _row(eps, np.ip("x/a"))[1:3] == ["Enabled", "Disabled"], eps
    assert _row(eps, np.ip("curl-pod"))[1:3] == ["Disabled", "Disabled"], eps
    (ep,) = [e for e in json.loads(np.cli("k8s-ctr", "endpoint", "list", "-o", "json").stdout)
             if e["ip"] == np.ip("x/a")]
    assert ep["policyEnforcement"] == {"ingress": True, "egress": False}, ep

    # x/a's policy map: x/b's identity on 80/TCP and the local host (allowLocalhost) on
    # ingress, everything on egress (not enforced); the x/b entry counts x/b's packets
    ep_a = np.endpoint("x/a")["id"]

    def entries():
        out = json.loads(np.cli("k8s-ctr", "bpf", "policy", "get", str(ep_a), "-o", "json",
                                check=True).stdout)
        return {(r["policy"], r["direction"], r["identity"], r["port"]): r for r in out}
    before = entries()
    assert set(before) == {("Allow", "Ingress", ident_b, "80/TCP"), ("Allow", "Ingress", 1, "ANY"),
                           ("Allow", "Egress", 0, "ANY")}, before
    np.expect(R(TCP80, sources=("x/b",), targets=("x/a",)), what="x/b -> x/a once more")
    key = ("Allow", "Ingress", ident_b, "80/TCP")
    after = entries()
    assert after[key]["packets"] > before[key]["packets"], (before[key], after[key])
    assert after[key]["bytes"] > before[key]["bytes"], (before[key], after[key])

    # metrics
    drops = h.metric("cilium_drop_count_total", "k8s-ctr", reason="Policy denied")
    np.expect(R(TCP80, sources=("x/c", "y/a"), targets=("x/a",), default=False),
              what="denied probes to x/a")
    text = h.metrics("k8s-ctr")
    assert h.metric("cilium_drop_count_total", "k8s-ctr", reason="Policy denied") >= drops + 2
    assert h.metric("cilium_policy", "k8s-ctr") == policies + 1
    assert h.metric("cilium_policy_change_total", "k8s-ctr", outcome="success") > changes
    local = len(h.client("k8s-ctr").get("/v1/endpoint"))
    assert _enforcement(h, "k8s-ctr") == {"none": local - 1, "ingress": 1, "egress": 0,
                                          "both": 0}
    assert h.metric("cilium_policy_implementation_delay_count", "k8s-ctr") >= 1
    assert "cilium_policy_regeneration_time_stats_seconds_bucket" in text
    promtool_clean(text, tmp_path)

    # the text form last: columns as Cilium prints them, each value in its own column
    text = np.cli("k8s-ctr", "bpf", "policy", "get", str(ep_a), check=True).stdout
    header = text.split("\n")[0]
    for col in ("POLICY", "DIRECTION", "LABELS", "PORT/PROTO", "BYTES", "PACKETS"):
        assert col in header, text
    assert "k8s:pod=b" in text.split() and "reserved:host" in text.split(), text
    assert any(ln.split()[:2] == ["Allow", "Ingress"] and "80/TCP" in ln.split()
               for ln in text.splitlines()), f"no Allow Ingress ... 80/TCP row:\n{text}"


# (tag, the field path the error must name, the bad object)
BAD = [
    ("unknown-peer", "spec.ingress[0].from[0].podSelektor",
     netpol("bad", "x", sel(pod="a"), ingress=[{"from": [{"podSelektor": sel(pod="c")}]}])),
    ("bad-cidr", "spec.egress[0].to[0].ipBlock.cidr",
     netpol("bad", "x", sel(pod="a"), types=["Egress"],
            egress=[{"to": [{"ipBlock": {"cidr": "203.0.113.0/33"}}]}])),
    ("port-range", "spec.ingress[0].ports[0].port",
     netpol("bad", "x", sel(pod="a"), ingress=[{"ports": [{"port": 70000}]}])),
    ("end-port", "spec.ingress[0].ports[0].endPort",
     netpol("bad", "x", sel(pod="a"), ingress=[{"ports": [{"port": 81, "endPort": 80}]}])),
    ("cnp-entity", "spec.ingress[0].fromEntities[0]",
     cnp("bad", "x", {"endpointSelector": sel(pod="a"), "ingress": [{"fromEntities": ["wrold"]}]})),
]


def test_bad_policy_is_reported_and_changes_nothing(np, tmp_path):
    np.apply(netpol("good", "x", sel(pod="a"), ingress=from_pod("b")))
    in_force = R(TCP80).deny("*", "x/a").allow("x/b", "x/a")
    np.expect(in_force, what="the good policy")
    for tag, field_text, obj in BAD:
        obj = {**obj, "metadata": {**obj["metadata"], "name": f"bad-{tag}"}}
        fails = sum(np.h.metric("cilium_policy_change_total", "k8s-ctr", outcome=o)
                    for o in ("fail", "failure", "error"))
        np.apply(obj)
        fname = file_name(obj)

        def reported():
            out = np.cli("k8s-ctr", "status").stdout
            return out if fname in out else None
        status = wait_for(reported, timeout=10, what=f"`datapath status` naming {fname}")
        line = next(ln for ln in status.splitlines() if fname in ln)
        assert field_text in line, f"{tag}: the error does not name {field_text}:\n{status}"
        assert fname in np.agent_log("k8s-ctr"), f"{tag}: the agent log does not name {fname}"
        np.expect(in_force, what=f"{tag}: the other policies stay in force")
        assert sum(np.h.metric("cilium_policy_change_total", "k8s-ctr", outcome=o)
                   for o in ("fail", "failure", "error")) > fails, tag
        np.delete(obj)
        wait_for(lambda: fname not in np.cli("k8s-ctr", "status").stdout, timeout=10,
                 what=f"the error about {fname} to clear")
    # a bad file does not hold other changes back...
    tag, field_text, bad = BAD[0]
    np.apply(bad)
    wait_for(lambda: file_name(bad) in np.cli("k8s-ctr", "status").stdout, timeout=10,
             what="the bad file's error")
    np.apply(netpol("good", "x", sel(pod="a"), ingress=from_pod("c")))
    np.expect(R(TCP80).deny("*", "x/a").allow("x/c", "x/a"),
              what="a good policy changes while a bad file is present")
    # ...and a policy that turns bad keeps its last good version in force
    good_bad = netpol("good", "x", sel(pod="a"),
                      ingress=[{"from": [{"podSelektor": sel(pod="b")}]}])
    np.apply(good_bad)
    status = wait_for(lambda: (lambda out: out if file_name(good_bad) in out else None)(
        np.cli("k8s-ctr", "status").stdout), timeout=10, what="the good policy's new error")
    assert "spec.ingress[0].from[0].podSelektor" in status, status
    np.expect(R(TCP80).deny("*", "x/a").allow("x/c", "x/a"),
              what="a policy turned bad: its last good version stays in force")
    promtool_clean(np.h.metrics("k8s-ctr"), tmp_path)


# ---------------------------------------------------------------- enforcement mode, localhost

def _set_agent_config(np, originals: dict, **changes) -> None:
    """Rewrite every node's agent config file with `changes` (the rest of the YAML as it was),
    atomically, keeping each file's first text in `originals`; then wait until every agent
    reports the new settings (it hot-reloads policyEnforcementMode and allowLocalhost)."""
    st = np.h.lab.load()
    for node in NODES:
        path = Path(st["nodes"][node]["config"])
        text = path.read_text()
        originals.setdefault(path, text)
        doc = yaml.safe_load(text)
        doc.update(changes)
        write_atomic(path, yaml.safe_dump(doc, sort_keys=False))
    localhost = doc.get("allowLocalhost", "auto")
    _wait_policy_settings(np, {"mode": doc.get("policyEnforcementMode", "default"),
                               "allowLocalhost": "always" if localhost == "auto" else localhost})


def _restore_agent_config(np, originals: dict) -> None:
    for path, text in originals.items():
        write_atomic(path, text)
    originals.clear()
    _wait_policy_settings(np, {"mode": "default", "allowLocalhost": "always"})


def _wait_policy_settings(np, want: dict) -> None:
    def settled():
        got = {n: {k: np.h.client(n).get("/v1/status")["policy"][k] for k in want}
               for n in NODES}
        return all(g == want for g in got.values()) or None
    wait_for(settled, timeout=20, what=f"every agent to report {want}")


def _enforced(np, node: str) -> list[tuple[str, dict]]:
    eps = json.loads(np.cli(node, "endpoint", "list", "-o", "json", check=True).stdout)
    return [(e.get("pod") or e["ip"], e["policyEnforcement"]) for e in eps]


def test_policy_enforcement_mode_always_and_never(np):
    originals: dict = {}
    try:
        _set_agent_config(np, originals, policyEnforcementMode="always")
        np.expect(R(TCP80, default=False), R(UDP80, default=False),
                  what="always, no policy at all: no pod reaches another")
        for node in NODES:
            eps = _enforced(np, node)
            assert eps and all(e == {"ingress": True, "egress": True} for _, e in eps), \
                (node, eps)
            assert _enforcement(np.h, node)["both"] == len(eps), (node, _enforcement(np.h, node))
        np.apply(netpol("deny-all", "x", {}, types=["Ingress", "Egress"]))
        _set_agent_config(np, originals, policyEnforcementMode="never")
        np.expect(R(TCP80), R(UDP80), what="never: the deny-all policy in x is not enforced")
        for node in NODES:
            eps = _enforced(np, node)
            assert eps and all(e == {"ingress": False, "egress": False} for _, e in eps), \
                (node, eps)
        # default again: the same policy is enforced (so "never" was what let everything in)
        _restore_agent_config(np, originals)
        np.expect(R(TCP80).deny("*", "x/*").deny("x/*", "*"),
                  what="default again: deny-all in x enforced")
    finally:
        _restore_agent_config(np, originals)
        np.reset()
        baseline(np, "policyEnforcementMode default and no policy: all reachable")


def _bpf_policy_rows(np, key: str) -> set:
    rows = json.loads(np.cli(np.node_of(key), "bpf", "policy", "get",
                             str(np.endpoint(key)["id"]), "-o", "json", check=True).stdout)
    return {(r["policy"], r["direction"], r["identity"], r["port"]) for r in rows}


def test_allow_localhost_policy_makes_the_host_a_peer(np):
    np.apply(netpol("a-no-ingress", "x", sel(pod="a"), types=["Ingress"]))
    # k8s-ctr is x/a's host, k8s-w1 x/b's; another node is remote-node, never the local host
    hosts = ("k8s-ctr", "k8s-w1")

    def from_hosts(local_host_in: bool):
        return R(TCP80, sources=hosts, targets=("x/a", "x/b")).deny("k8s-w1", "x/a") \
            .set("k8s-ctr", "x/a", local_host_in)
    np.expect(R(TCP80).deny("*", "x/a"), from_hosts(True),
              what="ingress deny-all on x/a, allowLocalhost auto: the local host still gets in")
    assert ("Allow", "Ingress", 1, "ANY") in _bpf_policy_rows(np, "x/a")
    originals: dict = {}
    try:
        _set_agent_config(np, originals, allowLocalhost="policy")
        np.expect(R(TCP80).deny("*", "x/a"), from_hosts(False),
                  what="allowLocalhost policy: the host is a peer like any other")
        assert not [r for r in _bpf_policy_rows(np, "x/a") if r[:3] == ("Allow", "Ingress", 1)]
    finally:
        _restore_agent_config(np, originals)
    np.expect(R(TCP80).deny("*", "x/a"), from_hosts(True),
              what="allowLocalhost back to auto: the local host gets in again")


# ---------------------------------------------------------------- a pod born under a policy

HAMMER = r"""
import socket, sys, time
ip, port, T = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.time()
while time.time() - start < 120:
    s = socket.socket(); s.settimeout(T)
    t = time.time() - start
    try:
        s.connect((ip, port)); out = "connected"
    except socket.timeout:
        out = "timeout"
    except OSError as e:
        out = type(e).__name__
    s.close()
    print("%.2f %s" % (t, out), flush=True)
    if out != "timeout":
        time.sleep(T)
"""


def test_pod_created_under_a_policy_is_enforced_from_its_first_packet(np):
    """A NetworkPolicy denies all ingress to pods labelled pod=fresh before any exists; then
    the Pod x/fresh (on k8s-w1) is added to the manifests and `lab up` creates it. From the
    moment its endpoint shows, x/a keeps trying to connect to it: no SYN may get through (an
    allowed one would be refused before the server listens, answered after)."""
    import threading
    import time
    from agent.lab.lab import Lab
    h, lab = np.h, Lab(np.h.lab.name)
    pol = netpol("deny-fresh", "x", sel(pod="fresh"), types=["Ingress"])
    np.apply(pol)
    wait_for(lambda: all(any(p["name"] == "deny-fresh" for p in json.loads(
        np.cli(n, "policy", "get", "-o", "json", check=True).stdout)["policies"])
        for n in NODES), timeout=20, what="deny-fresh in force on every node")
    pod = pod_manifest("x", "b", {"pod": "fresh"})            # b: on k8s-w1
    pod["metadata"]["name"] = "fresh"
    path = np.dir / "pod-x-fresh.yaml"
    drops = h.metric("cilium_drop_count_total", "k8s-w1", reason="Policy denied")
    up_error: list = []
    hammer = None

    def up():
        try:
            lab.up()
        except Exception as e:             # reported below
            up_error.append(e)
    try:
        write_atomic(path, yaml.safe_dump(pod, sort_keys=False))
        t = threading.Thread(target=up, daemon=True)
        t.start()

        def fresh_ep():
            for ep in h.client("k8s-w1").get("/v1/endpoint"):
                if ep.get("namespace") == "x" and ep["pod"] == "fresh" and ep.get("ip"):
                    return ep
            return None
        ep = wait_for(lambda: fresh_ep() or (None if t.is_alive() else "up() ended"),
                      timeout=90, interval=0.05, what="x/fresh's endpoint on k8s-w1")
        assert ep != "up() ended", f"lab up ended without an endpoint for x/fresh: {up_error}"
        hammer = subprocess.Popen(netns.cmd(h.ns("x/a"), sys.executable, "-c", HAMMER, ep["ip"],
                                            "80", "0.3"), stdout=subprocess.PIPE, text=True)
        # the endpoint is listed once its entries are written: its map as first programmed
        # holds no ingress allow but the local host's (allowLocalhost), egress open
        first = {(r["policy"], r["direction"], r["identity"], r["port"]) for r in json.loads(
            np.cli("k8s-w1", "bpf", "policy", "get", str(ep["id"]), "-o", "json",
                   check=True).stdout)}
        assert first == {("Allow", "Ingress", 1, "ANY"), ("Allow", "Egress", 0, "ANY")}, first
        t.join(timeout=120)
        assert not t.is_alive(), "lab up did not return within 120 s"
        assert not up_error, f"lab up could not add the pod x/fresh: {up_error[0]!r}"
        assert "x/fresh" in lab.load()["pods"], lab.load()["pods"].keys()
        time.sleep(2)                           # the server listens: keep knocking a while
        hammer.terminate()
        tries = hammer.communicate(timeout=10)[0].split("\n")
        tries = [ln for ln in tries if ln.strip()]
        if TRACE:
            print(f"[netpol] x/a -> x/fresh from its endpoint on: {tries}", file=sys.stderr)
        got_in = [ln for ln in tries if not ln.endswith(" timeout")]
        assert len(tries) >= 5 and not got_in, \
            f"x/a -> x/fresh before/while it came up (s since its endpoint appeared):\n" \
            + "\n".join(tries) + "\n" + np.diagnostics(["x/fresh"])
        log = np.agent_log("k8s-w1")
        assert not re.search(rf"endpoint {ep['id']} \(x/fresh\) moves from identity", log), \
            [ln for ln in log.splitlines() if "x/fresh" in ln]
        assert h.metric("cilium_drop_count_total", "k8s-w1", reason="Policy denied") > drops
        assert np.endpoint("x/fresh")["policyEnforcement"] == {"ingress": True, "egress": False}
        np.expect(R(TCP80, sources=("x/a", "x/c", "y/b"), targets=("x/fresh",), default=False),
                  R(TCP80, sources=("x/fresh",), targets=("x/a", "y/b")),
                  what="x/fresh: no ingress, egress open")
        np.delete(pol)                          # the control: it does serve
        np.expect(R(TCP80, sources=("x/a", "x/c"), targets=("x/fresh",)),
                  what="deny-fresh deleted: x/fresh reachable")
    finally:
        if hammer and hammer.poll() is None:
            hammer.kill()
            hammer.wait(timeout=10)
        path.unlink(missing_ok=True)
        lab.up()                                # removes the pod again
        assert "x/fresh" not in lab.load()["pods"]
        wait_for(lambda: not any(ep.get("namespace") == "x" and ep["pod"] == "fresh"
                                 for ep in h.client("k8s-w1").get("/v1/endpoint")),
                 timeout=20, what="x/fresh's endpoint to go")
        np.delete(pol)
