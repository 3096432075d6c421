"""Unit tests for agent/manifests.py: reading, expansion, queries and every validation error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agent.manifests import (Container, ContainerPort, ManifestSet, Namespace, Pod,
                             load_manifests)
from datapath.errors import DatapathError, ManifestError


def pod(name: str = "webpod-1", ns: str | None = None, node: str | None = "node-1",
        labels: dict | None = None, **spec: object) -> dict:
    meta: dict = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    if labels is not None:
        meta["labels"] = labels
    s: dict = {"containers": [{"name": "web", "image": "nginx"}]}
    if node is not None:
        s["nodeName"] = node
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": s}


def namespace(name: str, labels: dict | None = None) -> dict:
    meta: dict = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def write(d: Path, name: str, *docs: object) -> str:
    p = d / name
    p.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return str(p)


def failure(d: Path, *docs: object, name: str = "m.yaml") -> tuple[ManifestError, str]:
    path = write(d, name, *docs)
    with pytest.raises(ManifestError) as ei:
        load_manifests(str(d))
    return ei.value, path


# --- reading ----------------------------------------------------------------------------

def test_full_pod(tmp_path: Path) -> None:
    doc = pod(ns="prod", labels={"app": "web", "app.kubernetes.io/name": "web", "tier": ""},
              serviceAccountName="web-sa")
    doc["spec"]["containers"] = [{
        "name": "web", "image": "nginx:1.25", "command": ["nginx"], "args": ["-g", "daemon off;"],
        "ports": [{"containerPort": 80, "name": "http"},
                  {"containerPort": 53, "protocol": "UDP"}],
    }, {"name": "sidecar"}]
    path = write(tmp_path, "pods.yaml", doc)
    ms = load_manifests(str(tmp_path))
    p = ms.pods["prod/webpod-1"]
    assert p == Pod(
        namespace="prod", name="webpod-1",
        labels=(("app", "web"), ("app.kubernetes.io/name", "web"), ("tier", "")),
        nodeName="node-1", serviceAccountName="web-sa",
        containers=(
            Container(name="web", image="nginx:1.25", command=("nginx",),
                      args=("-g", "daemon off;"),
                      ports=(ContainerPort(80, "http", "TCP"), ContainerPort(53, None, "UDP"))),
            Container(name="sidecar", image=None, command=(), args=(), ports=()),
        ),
        source=path)
    assert p.key == "prod/webpod-1"
    assert p.label_dict == {"app": "web", "app.kubernetes.io/name": "web", "tier": ""}
    assert hash(p) == hash(p)  # hashable
    assert ms.ignored == []


def test_pod_defaults(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", pod(node=None))
    p = load_manifests(str(tmp_path)).pods["default/webpod-1"]
    assert p.namespace == "default"
    assert p.nodeName is None
    assert p.serviceAccountName == "default"
    assert p.labels == () and p.label_dict == {}


def test_multi_document_and_empty_documents(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text(
        "---\n" + yaml.safe_dump(pod("a")) + "---\n---\n# just a comment\n---\n"
        + yaml.safe_dump(pod("b")) + "---\n")
    ms = load_manifests(str(tmp_path))
    assert list(ms.pods) == ["default/a", "default/b"]


def test_list_is_expanded(tmp_path: Path) -> None:
    write(tmp_path, "list.yaml", {"apiVersion": "v1", "kind": "List",
                                  "items": [namespace("prod"), pod("a", ns="prod")]})
    ms = load_manifests(str(tmp_path))
    assert list(ms.namespaces) == ["prod"]
    assert list(ms.pods) == ["prod/a"]


def test_empty_list(tmp_path: Path) -> None:
    write(tmp_path, "list.yaml", {"apiVersion": "v1", "kind": "List", "items": []})
    ms = load_manifests(str(tmp_path))
    assert ms.pods == {} and ms.namespaces == {}


def test_file_selection_and_order(tmp_path: Path) -> None:
    write(tmp_path, "b.yml", pod("from-yml"))
    (tmp_path / "a.json").write_text(json.dumps(pod("from-json")))
    write(tmp_path, "c.yaml", pod("from-yaml"))
    write(tmp_path, "notes.txt", pod("ignored-txt"))
    write(tmp_path, "d.yaml.bak", pod("ignored-bak"))
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "nested.yaml", pod("ignored-nested"))
    ms = load_manifests(str(tmp_path))
    assert list(ms.pods) == ["default/from-json", "default/from-yml", "default/from-yaml"]
    assert ms.pods["default/from-json"].source == str(tmp_path / "a.json")


def test_empty_directory(tmp_path: Path) -> None:
    ms = load_manifests(str(tmp_path))
    assert isinstance(ms, ManifestSet)
    assert (ms.pods, ms.namespaces, ms.ignored) == ({}, {}, [])


def test_pods_on(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", pod("z", node="node-1"), pod("a", ns="prod", node="node-1"),
          pod("m", node="node-2"), pod("n", node=None))
    ms = load_manifests(str(tmp_path))
    assert [p.key for p in ms.pods_on("node-1")] == ["default/z", "prod/a"]
    assert [p.key for p in ms.pods_on("node-2")] == ["default/m"]
    assert ms.pods_on("node-3") == []


def test_namespace_labels(tmp_path: Path) -> None:
    path = write(tmp_path, "ns.yaml", namespace("prod", {"env": "prod", "team": "a"}),
                 namespace("empty"))
    ms = load_manifests(str(tmp_path))
    # every namespace carries kubernetes.io/metadata.name, as the API server sets it
    name = "kubernetes.io/metadata.name"
    assert ms.namespace_labels("prod") == {"env": "prod", "team": "a", name: "prod"}
    assert ms.namespace_labels("empty") == {name: "empty"}
    assert ms.namespace_labels("undeclared") == {name: "undeclared"}
    assert ms.namespaces["prod"] == Namespace(
        "prod", (("env", "prod"), (name, "prod"), ("team", "a")), path)


def test_ignored_kinds(tmp_path: Path) -> None:
    eps = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "prod"}}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    path = write(tmp_path, "other.yaml", eps, pod("a"), dep)
    ms = load_manifests(str(tmp_path))
    assert ms.ignored == [f"{path}: Endpoints prod/web", f"{path}: Deployment default/web"]
    assert list(ms.pods) == ["default/a"]


def test_unknown_fields_are_ignored(tmp_path: Path) -> None:
    doc = pod()
    doc["metadata"]["annotations"] = {"x": "y"}
    doc["metadata"]["uid"] = 12
    doc["spec"]["restartPolicy"] = "Always"
    doc["spec"]["containers"][0]["resources"] = {"limits": {"cpu": 1}}
    doc["status"] = {"phase": "Running"}
    write(tmp_path, "p.yaml", doc)
    assert "default/webpod-1" in load_manifests(str(tmp_path)).pods


def test_same_name_different_namespace_or_kind_is_fine(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", pod("web"), pod("web", ns="prod"), namespace("web"))
    ms = load_manifests(str(tmp_path))
    assert set(ms.pods) == {"default/web", "prod/web"}
    assert set(ms.namespaces) == {"web"}


# --- file-level errors -------------------------------------------------------------------

def test_missing_directory(tmp_path: Path) -> None:
    d = str(tmp_path / "nope")
    with pytest.raises(ManifestError) as ei:
        load_manifests(d)
    e = ei.value
    assert (e.file, e.obj, e.field, e.reason) == (d, "<directory>", "<path>", "no such directory")
    assert isinstance(e, DatapathError)


def test_directory_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f.yaml"
    f.write_text("")
    with pytest.raises(ManifestError) as ei:
        load_manifests(str(f))
    assert (ei.value.file, ei.value.reason) == (str(f), "not a directory")


def test_yaml_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pod("ok"))
    bad = tmp_path / "b.yaml"
    bad.write_text("kind: Pod\nmetadata:\n  name: x\n labels: {}\n")
    with pytest.raises(ManifestError) as ei:
        load_manifests(str(tmp_path))
    e = ei.value
    assert (e.file, e.obj) == (str(bad), "<yaml>")
    assert e.field.startswith("line 4")
    assert str(bad) in str(e)


@pytest.mark.parametrize("doc, got", [([1, 2], "a list"), ("hello", "'hello'"), (5, "5")])
def test_non_mapping_document(tmp_path: Path, doc: object, got: str) -> None:
    e, path = failure(tmp_path, pod("a"), doc)
    assert (e.file, e.obj, e.field) == (path, "<document 2>", "<document>")
    assert e.reason == f"expected a mapping (a Kubernetes object), got {got}"


def test_non_mapping_list_item(tmp_path: Path) -> None:
    e, path = failure(tmp_path, {"kind": "List", "items": [pod("a"), "oops"]})
    assert (e.file, e.obj, e.field) == (path, "<document 1 items[1]>", "<document>")


def test_list_items_not_a_list(tmp_path: Path) -> None:
    e, path = failure(tmp_path, {"kind": "List", "items": {"a": 1}})
    assert (e.file, e.obj, e.field, e.reason) == (path, "<document 1>", "items",
                                                  "expected a list, got a mapping")


def test_missing_kind(tmp_path: Path) -> None:
    doc = pod()
    del doc["kind"]
    e, path = failure(tmp_path, doc)
    assert (e.file, e.obj, e.field, e.reason) == (path, "<document 1>", "kind",
                                                  "required field is missing")


def test_lowercase_kind_is_not_silently_ignored(tmp_path: Path) -> None:
    doc = pod()
    doc["kind"] = "pod"
    e, _ = failure(tmp_path, doc)
    assert (e.field, e.reason) == ("kind", "unknown kind 'pod', did you mean 'Pod'?")


@pytest.mark.parametrize("kind, obj", [("Pod", "Pod default/webpod-1"),
                                       ("Namespace", "Namespace webpod-1")])
@pytest.mark.parametrize("version, reason", [
    ("apps/v1", "expected 'v1' for {kind}, got 'apps/v1'"),
    ("v2", "expected 'v1' for {kind}, got 'v2'"),
    (None, "required field is missing (expected 'v1')"),
])
def test_api_version(tmp_path: Path, kind: str, obj: str, version: str | None,
                     reason: str) -> None:
    doc = pod() if kind == "Pod" else namespace("webpod-1")
    if version is None:
        del doc["apiVersion"]
    else:
        doc["apiVersion"] = version
    e, path = failure(tmp_path, doc)
    assert (e.file, e.obj, e.field, e.reason) == (path, obj, "apiVersion",
                                                  reason.format(kind=kind))


# --- metadata ----------------------------------------------------------------------------

def test_missing_metadata(tmp_path: Path) -> None:
    doc = pod()
    del doc["metadata"]
    e, path = failure(tmp_path, doc)
    assert (e.file, e.obj, e.field, e.reason) == (path, "Pod (document 1)", "metadata",
                                                  "required field is missing")


def test_missing_name(tmp_path: Path) -> None:
    doc = pod()
    del doc["metadata"]["name"]
    e, path = failure(tmp_path, pod("first"), doc)
    assert (e.file, e.obj, e.field, e.reason) == (path, "Pod (document 2)", "metadata.name",
                                                  "required field is missing")


@pytest.mark.parametrize("name", ["Web", "web_1", "-web", "web-", "a" * 254, "web..1"])
def test_bad_pod_name(tmp_path: Path, name: str) -> None:
    e, path = failure(tmp_path, pod(name))
    assert (e.file, e.obj, e.field) == (path, f"Pod default/{name}", "metadata.name")
    assert e.reason.startswith("expected a DNS-1123 subdomain")
    assert repr(name) in e.reason


def test_pod_name_may_be_subdomain(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", pod("web.v1-2"))
    assert "default/web.v1-2" in load_manifests(str(tmp_path)).pods


def test_non_string_name(tmp_path: Path) -> None:
    e, _ = failure(tmp_path, pod(123))  # type: ignore[arg-type]
    assert (e.obj, e.field) == ("Pod (document 1)", "metadata.name")
    assert e.reason.endswith("got 123")


@pytest.mark.parametrize("ns", ["Prod", "prod.eu", "a" * 64, "-x"])
def test_bad_namespace(tmp_path: Path, ns: str) -> None:
    e, path = failure(tmp_path, pod(ns=ns))
    assert (e.file, e.obj, e.field) == (path, f"Pod {ns}/webpod-1", "metadata.namespace")
    assert e.reason.startswith("expected a DNS-1123 label")


def test_bad_namespace_object_name(tmp_path: Path) -> None:
    e, path = failure(tmp_path, namespace("prod.eu"))
    assert (e.file, e.obj, e.field) == (path, "Namespace prod.eu", "metadata.name")
    assert e.reason.startswith("expected a DNS-1123 label")


@pytest.mark.parametrize("labels, field, reason", [
    ({"app": 1}, "metadata.labels[app]", "label values must be strings (quote it), got 1"),
    ({"app": True}, "metadata.labels[app]", "label values must be strings (quote it), got true"),
    ({"app": None}, "metadata.labels[app]", "label values must be strings (quote it), got null"),
    ({"app": "a" * 64}, "metadata.labels[app]", "label value must be empty or at most 63"),
    ({"app": "web!"}, "metadata.labels[app]", "got 'web!'"),
    ({"app": "-web"}, "metadata.labels[app]", "got '-web'"),
    ({"-app": "x"}, "metadata.labels[-app]", "label key name must be at most 63"),
    ({"a" * 64: "x"}, f"metadata.labels[{'a' * 64}]", "label key name must be at most 63"),
    ({"Example.com/app": "x"}, "metadata.labels[Example.com/app]",
     "label key prefix must be a DNS-1123 subdomain, got 'Example.com'"),
    ({"/app": "x"}, "metadata.labels[/app]",
     "label key prefix must be a DNS-1123 subdomain, got ''"),
    ({"example.com/": "x"}, "metadata.labels[example.com/]", "got ''"),
    ({1: "x"}, "metadata.labels", "label keys must be strings, got 1"),
])
def test_bad_labels(tmp_path: Path, labels: dict, field: str, reason: str) -> None:
    for doc, obj in ((pod(labels=labels), "Pod default/webpod-1"),
                     (namespace("prod", labels), "Namespace prod")):
        e, path = failure(tmp_path, doc)
        assert (e.file, e.obj, e.field) == (path, obj, field)
        assert reason in e.reason


def test_labels_not_a_mapping(tmp_path: Path) -> None:
    e, _ = failure(tmp_path, pod(labels=["app=web"]))  # type: ignore[arg-type]
    assert (e.field, e.reason) == ("metadata.labels", "expected a mapping, got a list")


def test_good_label_edge_cases(tmp_path: Path) -> None:
    labels = {"a": "", "A_b.c-D": "X_y.z-1", "k8s.io/x": "a" * 63}
    write(tmp_path, "p.yaml", pod(labels=labels))
    assert load_manifests(str(tmp_path)).pods["default/webpod-1"].label_dict == labels


def test_duplicate_object(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", pod("web", ns="prod"))
    e, path = failure(tmp_path, pod("web", ns="prod"), name="b.yaml")
    assert (e.file, e.obj, e.field) == (path, "Pod prod/web", "metadata.name")
    assert e.reason == f"duplicate Pod: already defined in {first}"


def test_duplicate_namespace_in_one_file(tmp_path: Path) -> None:
    e, path = failure(tmp_path, namespace("prod"), namespace("prod"))
    assert (e.file, e.obj, e.field) == (path, "Namespace prod", "metadata.name")
    assert e.reason == f"duplicate Namespace: already defined in {path}"


# --- spec --------------------------------------------------------------------------------

OBJ = "Pod default/webpod-1"


@pytest.mark.parametrize("spec, field, reason", [
    (None, "spec", "required field is missing"),
    ([], "spec", "expected a mapping, got a list"),
    ({}, "spec.containers", "required field is missing"),
    ({"containers": []}, "spec.containers", "expected a non-empty list of containers, got a list"),
    ({"containers": {"name": "web"}}, "spec.containers",
     "expected a non-empty list of containers, got a mapping"),
    ({"containers": ["web"]}, "spec.containers[0]", "expected a mapping, got 'web'"),
    ({"containers": [{"image": "nginx"}]}, "spec.containers[0].name", "required field is missing"),
    ({"containers": [{"name": "web"}, {"name": "Web_2"}]}, "spec.containers[1].name",
     "expected a DNS-1123 label"),
    ({"containers": [{"name": "web"}, {"name": "web"}]}, "spec.containers[1].name",
     "duplicate container name 'web'"),
    ({"containers": [{"name": "web", "image": 3}]}, "spec.containers[0].image",
     "expected a string, got 3"),
    ({"containers": [{"name": "web", "command": "nginx -g"}]}, "spec.containers[0].command",
     "expected a list of strings, got 'nginx -g'"),
    ({"containers": [{"name": "web", "args": ["--port", 80]}]}, "spec.containers[0].args[1]",
     "expected a string, got 80"),
    ({"containers": [{"name": "web", "ports": {"containerPort": 80}}]},
     "spec.containers[0].ports", "expected a list, got a mapping"),
    ({"containers": [{"name": "web", "ports": [80]}]},
     "spec.containers[0].ports[0]", "expected a mapping, got 80"),
    ({"containers": [{"name": "web", "ports": [{"name": "http"}]}]},
     "spec.containers[0].ports[0].containerPort", "required field is missing"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": 0}]}]},
     "spec.containers[0].ports[0].containerPort", "expected an integer from 1 to 65535, got 0"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": 80}, {"containerPort": 65536}]}]},
     "spec.containers[0].ports[1].containerPort",
     "expected an integer from 1 to 65535, got 65536"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": "80"}]}]},
     "spec.containers[0].ports[0].containerPort", "expected an integer from 1 to 65535, got '80'"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": True}]}]},
     "spec.containers[0].ports[0].containerPort", "expected an integer from 1 to 65535, got true"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": 80, "protocol": "tcp"}]}]},
     "spec.containers[0].ports[0].protocol", "expected one of TCP, UDP, SCTP, got 'tcp'"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": 80, "protocol": "ICMP"}]}]},
     "spec.containers[0].ports[0].protocol", "expected one of TCP, UDP, SCTP, got 'ICMP'"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": 80, "name": "8080"}]}]},
     "spec.containers[0].ports[0].name", "got '8080'"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": 80, "name": "HTTP"}]}]},
     "spec.containers[0].ports[0].name", "got 'HTTP'"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": 80,
                                                 "name": "a-very-long-name1"}]}]},
     "spec.containers[0].ports[0].name", "at most 15"),
    ({"containers": [{"name": "web", "ports": [{"containerPort": 80, "name": "http-"}]}]},
     "spec.containers[0].ports[0].name", "got 'http-'"),
    ({"containers": [{"name": "web"}], "nodeName": "Node_1"}, "spec.nodeName",
     "expected a DNS-1123 subdomain"),
    ({"containers": [{"name": "web"}], "serviceAccountName": "Admin"},
     "spec.serviceAccountName", "expected a DNS-1123 subdomain"),
])
def test_bad_spec(tmp_path: Path, spec: object, field: str, reason: str) -> None:
    doc = pod()
    if spec is None:
        del doc["spec"]
    else:
        doc["spec"] = spec
    e, path = failure(tmp_path, doc)
    assert (e.file, e.obj, e.field) == (path, OBJ, field)
    assert reason in e.reason
    assert str(e) == f"{path}: {OBJ}: {field}: {e.reason}"


def test_good_ports(tmp_path: Path) -> None:
    doc = pod()
    doc["spec"]["containers"][0]["ports"] = [
        {"containerPort": 1, "protocol": "SCTP", "name": "a"},
        {"containerPort": 65535, "name": "web-8080-x"},
    ]
    write(tmp_path, "p.yaml", doc)
    ports = load_manifests(str(tmp_path)).pods["default/webpod-1"].containers[0].ports
    assert ports == (ContainerPort(1, "a", "SCTP"), ContainerPort(65535, "web-8080-x", "TCP"))


def test_error_in_list_item_names_object(tmp_path: Path) -> None:
    bad = pod("b")
    bad["spec"]["containers"][0]["ports"] = [{"containerPort": -1}]
    e, path = failure(tmp_path, {"apiVersion": "v1", "kind": "List", "items": [pod("a"), bad]})
    assert (e.file, e.obj, e.field) == (path, "Pod default/b",
                                        "spec.containers[0].ports[0].containerPort")


def test_validation_is_all_or_nothing(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pod("good"))
    bad = pod("bad")
    bad["spec"]["containers"] = []
    e, path = failure(tmp_path, bad, name="b.yaml")
    assert e.file == path and e.obj == "Pod default/bad"


def test_policy_objects_are_kept_raw_and_a_bad_one_holds_back_nothing_else(tmp_path: Path) -> None:
    np = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "deny-all", "namespace": "x"}, "spec": {"podSelector": {}}}
    cnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "web"}, "spec": {"endpointSelector": {}}}
    ccnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "all", "namespace": "ignored"}, "spec": {}}
    bad_version = {**np, "apiVersion": "networking.k8s.io/v1beta1",
                   "metadata": {"name": "old", "namespace": "x"}}
    bad_name = {**cnp, "metadata": {"name": "Not_A_Name"}}
    p = write(tmp_path, "pol.yaml", np, cnp, ccnp, bad_version, bad_name, pod("a"))
    ms = load_manifests(str(tmp_path))
    assert sorted(ms.policies) == [("CiliumClusterwideNetworkPolicy", "", "all"),
                                   ("CiliumNetworkPolicy", "default", "web"),
                                   ("NetworkPolicy", "x", "deny-all")]
    assert ms.policies[("NetworkPolicy", "x", "deny-all")] == (p, np)
    assert "default/a" in ms.pods                  # the rest of the directory still loads
    assert len(ms.policy_errors) == 2
    assert f"{p}: NetworkPolicy x/old: apiVersion: expected 'networking.k8s.io/v1'" \
        in ms.policy_errors[0]
    assert ms.policy_errors[1].startswith(f"{p}: CiliumNetworkPolicy default/Not_A_Name: "
                                          "metadata.name:")
