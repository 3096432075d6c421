"""The policy commands of the CLI and the subsystem's views (no root needed): `policy get`,
`policy selectors`, `policy validate`, `bpf policy get`, and the enforcement columns of
`endpoint list`."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from agent import api
from agent.cli import cli
from agent.policy.subsystem import policy_rows
from datapath import abi

EP = {"id": 7, "identity": 300, "labels": ["k8s:app=web"], "ip": "172.20.0.5",
      "state": "ready", "policyEnforcement": {"ingress": True, "egress": False}}


@pytest.fixture
def sock(tmp_path):
    path = str(tmp_path / "a.sock")
    rows = [{"policy": "Allow", "direction": "Ingress", "identity": 0,
             "labels": ["reserved:unknown"], "port": "80/TCP", "proxyPort": "NONE", "bytes": 120,
             "packets": 2, "prefix": 80},
            {"policy": "Deny", "direction": "Egress", "identity": 300,
             "labels": ["k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x",
                        "k8s:io.kubernetes.pod.namespace=x"],
             "port": "8000-8063/TCP", "proxyPort": "NONE", "bytes": 0, "packets": 0,
             "prefix": 74}]
    routes = {("GET", "/v1/endpoint"): lambda p, b: [EP],
              ("GET", "/v1/policy"): lambda p, b: {"revision": 3, "policies": [{"name": "np"}],
                                                   "errors": ["f.yaml: NetworkPolicy x/bad: "
                                                              "spec.ingress[0]: nope"]},
              ("GET", "/v1/policy/selectors"): lambda p, b: [
                  {"selector": "&LabelSelector{matchLabels: {k8s:app: web}}", "users": 2,
                   "identities": [300, 301]}],
              ("GET", "/v1/bpf/policy/{id}"): lambda p, b: rows}
    srv = api.serve(path, routes)
    yield path
    srv.shutdown()
    srv.server_close()


def run(sock, *args):
    return CliRunner().invoke(cli, ["--socket", sock, *args])


def test_endpoint_list_shows_enforcement_per_direction(sock):
    out = run(sock, "endpoint", "list").output.splitlines()
    assert "POLICY (ingress)" in out[0] and "POLICY (egress)" in out[0]
    row = out[2].split()
    assert row[:4] == ["7", "Enabled", "Disabled", "300"]


def test_policy_get_prints_rules_revision_and_errors(sock):
    r = run(sock, "policy", "get")
    assert r.exit_code == 0
    assert '"name": "np"' in r.output and "Revision: 3" in r.output
    assert "Error: f.yaml: NetworkPolicy x/bad: spec.ingress[0]: nope" in r.output


def test_policy_selectors_lists_every_identity(sock):
    out = run(sock, "policy", "selectors").output.splitlines()
    assert out[0].split() == ["SELECTOR", "USERS", "IDENTITIES"]
    assert out[1].endswith("300") and out[2].strip() == "301"


def test_bpf_policy_get_columns_as_cilium(sock):
    out = run(sock, "bpf", "policy", "get", "7").output.splitlines()
    assert out[0].split()[:3] == ["POLICY", "DIRECTION", "LABELS"]
    assert out[1].split() == ["Allow", "Ingress", "reserved:unknown", "80/TCP", "NONE", "120",
                              "2", "80"]
    # a long label widens the column instead of running into PORT/PROTO
    assert out[2].split()[:4] == ["Deny", "Egress",
                                  "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x",
                                  "8000-8063/TCP"]
    assert out[3].strip() == "k8s:io.kubernetes.pod.namespace=x"


def test_policy_validate_names_file_object_and_field(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "ok", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "range", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}}))
    r = CliRunner().invoke(cli, ["policy", "validate", str(good)])
    assert r.exit_code == 0 and "1 policies valid" in r.output
    r = CliRunner().invoke(cli, ["policy", "validate", str(bad)])
    assert r.exit_code == 1
    line, = r.output.splitlines()
    assert str(bad) in line and "NetworkPolicy x/range" in line and "endPort" in line


def test_policy_rows_render_ports_prefixes_and_wildcards():
    def key(ident, egress, proto=0, port=0, prefix=16):
        return abi.policy_key(7, ident, egress, proto, port, prefix)

    items = [(key(0, 0), abi.policy_entry()),
             (key(300, 0, 6, 80), abi.policy_entry()),
             (key(300, 1, 6, 8000, 10), abi.policy_entry(deny=True)),
             (key(1, 0, 17, 0, 0), abi.policy_entry()),
             (abi.policy_key(8, 0, 0), abi.policy_entry())]       # another endpoint's row
    rows = policy_rows(items, 7, lambda i: [f"id{i}"])
    assert [(r["policy"], r["direction"], r["labels"][0], r["port"]) for r in rows] == [
        ("Allow", "Ingress", "reserved:unknown", "ANY"),
        ("Allow", "Ingress", "id1", "ANY/UDP"),
        ("Allow", "Ingress", "id300", "80/TCP"),
        ("Deny", "Egress", "id300", "8000-8063/TCP")]
