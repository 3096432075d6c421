"""`datapath connectivity test`: its objects parse as the agents read them, the checks are
planned from the lab's facts (and skipped, with a reason, where the lab lacks a part), and the
CLI fails with one line on bad input."""
from __future__ import annotations

from click.testing import CliRunner

from agent.cli import cli
from agent.connectivity import resources as res
from agent.connectivity.checks import PHASES, Env, Frontends, plan
from agent.manifests import load_manifests

NODES = [("k8s-ctr", "192.168.10.100"), ("k8s-w1", "192.168.10.101"),
         ("k8s-w2", "192.168.10.102")]
PODS = {res.CLIENT: "172.20.0.5", res.PEER_CLIENT: "172.20.0.6", res.ECHO_SAME: "172.20.0.7",
        res.ECHO_OTHER: "172.20.1.8"}
SVCS = {res.SERVICES["cluster-ip"]: Frontends("10.96.0.10"),
        res.SERVICES["node-port"]: Frontends("10.96.0.11", 31000),
        res.SERVICES["load-balancer"]: Frontends("10.96.0.12", 31001, "198.51.100.200")}


def test_objects_and_policies_parse_as_the_agents_read_them(tmp_path):
    (tmp_path / res.FILE).write_text(res.objects([n for n, _ in NODES]))
    (tmp_path / res.POLICY_FILE).write_text(res.ALLOW_FROM_NS)
    m = load_manifests(str(tmp_path))
    assert set(m.pods) == res.pod_keys(3)
    assert m.pods[res.ECHO_SAME].nodeName == "k8s-ctr"
    assert m.pods[res.ECHO_OTHER].nodeName == "k8s-w1"
    assert set(m.services) == set(res.SERVICES.values())
    assert {(k[1], k[2]) for k in m.policies} == {
        (res.NS, n) for n in res.POLICY_NAMES["allow-from-namespace"]}
    assert not m.policy_errors and not m.ignored
    pool = m.ippools["cilium-test-pool"]       # it selects the test's LoadBalancer only
    assert dict(pool.serviceSelector) == {res.TEST_LABEL: "echo-lb"}
    one = tmp_path / "one"
    one.mkdir()
    (one / res.FILE).write_text(res.objects(["solo"]))
    assert set(load_manifests(str(one)).pods) == res.pod_keys(1) == {
        res.CLIENT, res.PEER_CLIENT, res.ECHO_SAME}


def test_plan_on_the_seed_lab_runs_every_check():
    checks = plan(Env(NODES, PODS, SVCS, {"ext": "203.0.113.10"}))
    names = [c.name for c in checks]
    assert len(names) == len(set(names)) == 19
    assert not [c for c in checks if c.skip]
    by = {c.name: c for c in checks}
    assert by["pod-to-pod/other-node"].dst == "172.20.1.8:8080"
    assert by["pod-to-service/node-port/k8s-w2"].dst == "192.168.10.102:31000"
    assert by["pod-to-service/node-port/k8s-w2"].backends == ("echo-other-node",)
    assert by["outside-to-service/node-port/k8s-ctr"].src == "ext"
    assert by["pod-to-service/load-balancer"].dst == "198.51.100.200:8080"
    assert by["pod-to-world"].dst == "203.0.113.10:8080"
    assert by["pod-to-host/other-node"].proto == "icmp"
    assert by["policy/allow-from-namespace/other-namespace"].src == res.PEER_CLIENT
    assert {c.name for c in checks if c.expect == "drop"} == {
        "policy/deny-all-ingress/pod-to-pod", "policy/deny-all-ingress/pod-to-service",
        "policy/allow-from-namespace/other-namespace"}
    # phases run in order: no policy, deny-all, allow-from-namespace
    assert [PHASES.index(c.phase) for c in checks] == sorted(PHASES.index(c.phase)
                                                             for c in checks)


def test_plan_on_one_node_without_hosts_skips_with_a_reason():
    pods = {k: v for k, v in PODS.items() if k != res.ECHO_OTHER}
    checks = plan(Env(NODES[:1], pods, SVCS))
    skipped = {c.name: c.skip for c in checks if c.skip}
    assert skipped["pod-to-pod/other-node"] == "the lab has one node"
    assert skipped["pod-to-world"] == "the topology has no external host"
    assert skipped["outside-to-service/node-port/k8s-ctr"] == "the lab has one node"
    assert "pod-to-pod/same-node" not in skipped and "pod-to-service/cluster-ip" not in skipped
    assert "policy/deny-all-ingress/pod-to-pod" not in skipped


def test_cli_refuses_a_bad_regex_and_a_lab_that_is_not_up(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.lab.lab.LAB_ROOT", tmp_path)
    r = CliRunner().invoke(cli, ["connectivity", "test", "--name", "nolab", "--test", "("])
    assert r.exit_code != 0 and "not a regular expression" in r.output
    r = CliRunner().invoke(cli, ["connectivity", "test", "--name", "nolab"])
    assert r.exit_code != 0 and "is not up" in r.output
    assert len(r.output.strip().splitlines()) == 1
