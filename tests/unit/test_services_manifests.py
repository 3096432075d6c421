"""Unit tests for the Service, EndpointSlice, CiliumLoadBalancerIPPool and
CiliumL2AnnouncementPolicy parts of agent/manifests.py."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agent.manifests import (EndpointSlice, EndpointSlicePort, IPPoolBlock, L2Policy, LBIPPool,
                             ManifestSet, Pod, Service, ServicePort, SliceEndpoint,
                             load_manifests)
from datapath.errors import ManifestError

SVC = "Service default/web"
EPS = "EndpointSlice default/web-abc"
POOL = "CiliumLoadBalancerIPPool pool-a"
L2 = "CiliumL2AnnouncementPolicy l2-a"


def service(name: str = "web", ns: str | None = None, labels: dict | None = None,
            **spec: object) -> dict:
    meta: dict = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    if labels is not None:
        meta["labels"] = labels
    s: dict = {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": s}


def eslice(name: str = "web-abc", svc: str | None = "web", ns: str | None = None,
           **body: object) -> dict:
    meta: dict = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    if svc is not None:
        meta["labels"] = {"kubernetes.io/service-name": svc}
    doc: dict = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
                 "addressType": "IPv4",
                 "endpoints": [{"addresses": ["10.1.0.5"]}],
                 "ports": [{"name": "http", "port": 8080}]}
    doc.update(body)
    return doc


def pool(name: str = "pool-a", **spec: object) -> dict:
    s: dict = {"blocks": [{"cidr": "192.0.2.0/30"}]}
    s.update(spec)
    return {"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumLoadBalancerIPPool",
            "metadata": {"name": name}, "spec": s}


def l2policy(name: str = "l2-a", **spec: object) -> dict:
    return {"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumL2AnnouncementPolicy",
            "metadata": {"name": name}, "spec": dict(spec)}


def pod(name: str, ns: str = "default", labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {"containers": [{"name": "c"}]}}


def write(d: Path, name: str, *docs: object) -> str:
    p = d / name
    p.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return str(p)


def load(d: Path, *docs: object) -> tuple[ManifestSet, str]:
    path = write(d, "m.yaml", *docs)
    return load_manifests(str(d)), path


def failure(d: Path, *docs: object, name: str = "m.yaml") -> tuple[ManifestError, str]:
    path = write(d, name, *docs)
    with pytest.raises(ManifestError) as ei:
        load_manifests(str(d))
    return ei.value, path


def check(d: Path, doc: dict, obj: str, field: str, reason: str) -> None:
    e, path = failure(d, doc)
    assert (e.file, e.obj, e.field) == (path, obj, field)
    assert reason in e.reason, e.reason
    assert str(e) == f"{path}: {obj}: {field}: {e.reason}"


# --- Service: reading and defaults ----------------------------------------------------------

def test_service_defaults(tmp_path: Path) -> None:
    ms, path = load(tmp_path, service())
    s = ms.services["default/web"]
    assert s == Service(
        namespace="default", name="web", type="ClusterIP", clusterIP=None,
        selector=(("app", "web"),),
        ports=(ServicePort(name=None, protocol="TCP", port=80, targetPort=80, nodePort=None),),
        externalIPs=(), loadBalancerIP=None, sessionAffinity="None", affinityTimeout=10800,
        externalTrafficPolicy="Cluster", internalTrafficPolicy="Cluster", labels=(),
        source=path)
    assert s.key == "default/web"
    assert s.selector_dict == {"app": "web"} and s.label_dict == {}
    assert not s.headless
    assert hash(s) == hash(copy.deepcopy(s))
    assert ms.ignored == []


def test_full_service(tmp_path: Path) -> None:
    doc = service(
        ns="prod", labels={"team": "a"}, type="LoadBalancer", clusterIP="10.96.0.10",
        selector={"app": "web", "tier": "fe"},
        ports=[{"name": "http", "port": 80, "targetPort": "http-alt", "nodePort": 30080},
               {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30053}],
        externalIPs=["198.51.100.7"], loadBalancerIP="192.0.2.10",
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}},
        externalTrafficPolicy="Local", internalTrafficPolicy="Local")
    ms, path = load(tmp_path, doc)
    s = ms.services["prod/web"]
    assert s == Service(
        namespace="prod", name="web", type="LoadBalancer", clusterIP="10.96.0.10",
        selector=(("app", "web"), ("tier", "fe")),
        ports=(ServicePort("http", "TCP", 80, "http-alt", 30080),
               ServicePort("dns", "UDP", 53, 5353, None),
               ServicePort("dns-tcp", "TCP", 53, 53, 30053)),
        externalIPs=("198.51.100.7",), loadBalancerIP="192.0.2.10",
        sessionAffinity="ClientIP", affinityTimeout=600,
        externalTrafficPolicy="Local", internalTrafficPolicy="Local",
        labels=(("team", "a"),), source=path)
    assert s.label_dict == {"team": "a"}


def test_headless_service_keeps_none_string(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, service(clusterIP="None"))
    s = ms.services["default/web"]
    assert s.clusterIP == "None" and s.headless


@pytest.mark.parametrize("spec, expected", [
    ({"clusterIP": ""}, None),
    ({"clusterIPs": ["10.96.0.7"]}, "10.96.0.7"),
    ({"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"]}, "10.96.0.7"),
    ({"clusterIPs": []}, None),
])
def test_cluster_ip_forms(tmp_path: Path, spec: dict, expected: str | None) -> None:
    ms, _ = load(tmp_path, service(**spec))
    assert ms.services["default/web"].clusterIP == expected


def test_service_without_selector(tmp_path: Path) -> None:
    doc = service()
    del doc["spec"]["selector"]
    ms, _ = load(tmp_path, doc, service("empty", selector={}))
    assert ms.services["default/web"].selector is None
    assert ms.services["default/web"].selector_dict == {}
    assert ms.services["default/empty"].selector is None  # {} is no selector, as in Kubernetes


def test_nodeport_service_and_empty_optional_strings(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, service(type="NodePort", loadBalancerIP="",
                                   ports=[{"port": 80, "nodePort": 30000, "name": ""}]))
    s = ms.services["default/web"]
    assert s.type == "NodePort" and s.loadBalancerIP is None
    assert s.ports == (ServicePort(None, "TCP", 80, 80, 30000),)


def test_same_nodeport_on_different_protocols_is_fine(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, service(type="NodePort", ports=[
        {"name": "a", "port": 53, "protocol": "UDP", "nodePort": 30053},
        {"name": "b", "port": 53, "protocol": "TCP", "nodePort": 30053}]))
    assert [p.nodePort for p in ms.services["default/web"].ports] == [30053, 30053]


def test_local_etp_allowed_for_cluster_ip_with_external_ips(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, service(externalIPs=["198.51.100.1"], externalTrafficPolicy="Local"))
    assert ms.services["default/web"].externalTrafficPolicy == "Local"


def test_client_ip_affinity_default_timeout(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, service(sessionAffinity="ClientIP"),
                 service("b", sessionAffinity="ClientIP", sessionAffinityConfig={}),
                 service("c", sessionAffinity="ClientIP",
                         sessionAffinityConfig={"clientIP": {"timeoutSeconds": 86400}}))
    assert [ms.services[f"default/{n}"].affinityTimeout for n in ("web", "b", "c")] == \
        [10800, 10800, 86400]


# --- Service: validation ---------------------------------------------------------------------

@pytest.mark.parametrize("spec, field, reason", [
    ({"type": "ExternalName"}, "spec.type", "ExternalName services are not supported"),
    ({"type": "clusterip"}, "spec.type",
     "expected one of ClusterIP, NodePort, LoadBalancer, got 'clusterip'"),
    ({"clusterIP": "10.96.0.300"}, "spec.clusterIP", "expected an IPv4 address, got '10.96.0.300'"),
    ({"clusterIP": "fd00::1"}, "spec.clusterIP", "expected an IPv4 address, got 'fd00::1'"),
    ({"clusterIP": 5}, "spec.clusterIP", "expected an IPv4 address, got 5"),
    ({"clusterIPs": ["10.96.0.1", "fd00::1"]}, "spec.clusterIPs",
     "only one (IPv4) cluster IP is supported, got 2"),
    ({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.2"]}, "spec.clusterIPs[0]",
     "must equal spec.clusterIP '10.96.0.1', got '10.96.0.2'"),
    ({"clusterIPs": ["nope"]}, "spec.clusterIPs[0]", "expected an IPv4 address, got 'nope'"),
    ({"type": "NodePort", "clusterIP": "None"}, "spec.clusterIP",
     "may not be 'None' (headless) for NodePort services"),
    ({"type": "LoadBalancer", "clusterIP": "None"}, "spec.clusterIP",
     "may not be 'None' (headless) for LoadBalancer services"),
    ({"selector": {"app": 1}}, "spec.selector[app]", "label values must be strings"),
    ({"selector": ["app=web"]}, "spec.selector", "expected a mapping, got a list"),
    ({"ports": None}, "spec.ports", "required field is missing"),
    ({"ports": []}, "spec.ports", "expected a non-empty list of ports, got a list"),
    ({"ports": {"port": 80}}, "spec.ports", "expected a non-empty list of ports, got a mapping"),
    ({"ports": [80]}, "spec.ports[0]", "expected a mapping, got 80"),
    ({"ports": [{"name": "http"}]}, "spec.ports[0].port", "required field is missing"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port", "expected an integer from 1 to 65535, got 0"),
    ({"ports": [{"port": 65536}]}, "spec.ports[0].port",
     "expected an integer from 1 to 65535, got 65536"),
    ({"ports": [{"port": "80"}]}, "spec.ports[0].port",
     "expected an integer from 1 to 65535, got '80'"),
    ({"ports": [{"port": True}]}, "spec.ports[0].port",
     "expected an integer from 1 to 65535, got true"),
    ({"ports": [{"port": 80, "protocol": "tcp"}]}, "spec.ports[0].protocol",
     "expected one of TCP, UDP, SCTP, got 'tcp'"),
    ({"ports": [{"port": 80, "name": "HTTP"}]}, "spec.ports[0].name",
     "expected a DNS-1123 label"),
    ({"ports": [{"port": 80, "targetPort": 0}]}, "spec.ports[0].targetPort",
     "expected a port number from 1 to 65535 or a container port name"),
    ({"ports": [{"port": 80, "targetPort": 70000}]}, "spec.ports[0].targetPort", "got 70000"),
    ({"ports": [{"port": 80, "targetPort": "8080"}]}, "spec.ports[0].targetPort", "got '8080'"),
    ({"ports": [{"port": 80, "targetPort": "HTTP"}]}, "spec.ports[0].targetPort", "got 'HTTP'"),
    ({"ports": [{"port": 80, "targetPort": "a-very-long-name1"}]}, "spec.ports[0].targetPort",
     "got 'a-very-long-name1'"),
    ({"ports": [{"port": 80, "targetPort": "a--b"}]}, "spec.ports[0].targetPort", "got 'a--b'"),
    ({"ports": [{"port": 80, "targetPort": True}]}, "spec.ports[0].targetPort", "got true"),
    ({"ports": [{"port": 80, "nodePort": 30080}]}, "spec.ports[0].nodePort",
     "may not be set for ClusterIP services (only NodePort and LoadBalancer)"),
    ({"type": "NodePort", "ports": [{"port": 80, "nodePort": 0}]}, "spec.ports[0].nodePort",
     "expected an integer from 1 to 65535, got 0"),
    ({"type": "NodePort", "ports": [{"port": 80, "nodePort": "30080"}]},
     "spec.ports[0].nodePort", "expected an integer from 1 to 65535, got '30080'"),
    ({"ports": [{"name": "a", "port": 80}, {"port": 81}]}, "spec.ports[1].name",
     "required when the Service has more than one port"),
    ({"ports": [{"port": 80}, {"name": "b", "port": 81}]}, "spec.ports[0].name",
     "required when the Service has more than one port"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "spec.ports[1].name",
     "duplicate port name 'a' (also spec.ports[0])"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80, "targetPort": 81}]},
     "spec.ports[1]", "duplicate port 80/TCP (also spec.ports[0])"),
    ({"ports": [{"name": "a", "port": 53, "protocol": "UDP"}, {"name": "b", "port": 54},
                {"name": "c", "port": 53, "protocol": "UDP"}]},
     "spec.ports[2]", "duplicate port 53/UDP (also spec.ports[0])"),
    ({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30000},
                                    {"name": "b", "port": 81, "nodePort": 30000}]},
     "spec.ports[1].nodePort", "duplicate nodePort 30000/TCP (also spec.ports[0])"),
    ({"externalIPs": "1.2.3.4"}, "spec.externalIPs", "expected a list of strings, got '1.2.3.4'"),
    ({"externalIPs": ["1.2.3.4", "1.2.3"]}, "spec.externalIPs[1]",
     "expected an IPv4 address, got '1.2.3'"),
    ({"externalIPs": ["127.0.0.1"]}, "spec.externalIPs[0]",
     "may not be unspecified, loopback, link-local or link-local multicast"),
    ({"externalIPs": ["0.0.0.0"]}, "spec.externalIPs[0]", "got '0.0.0.0'"),
    ({"externalIPs": ["169.254.1.1"]}, "spec.externalIPs[0]", "got '169.254.1.1'"),
    ({"loadBalancerIP": "192.0.2.256"}, "spec.loadBalancerIP",
     "expected an IPv4 address, got '192.0.2.256'"),
    ({"sessionAffinity": "clientip"}, "spec.sessionAffinity",
     "expected one of None, ClientIP, got 'clientip'"),
    ({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
     "spec.sessionAffinityConfig", "must not be set when spec.sessionAffinity is None"),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
     "expected an integer from 1 to 86400, got 0"),
    ({"sessionAffinity": "ClientIP",
      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "got 86401"),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": 60}},
     "spec.sessionAffinityConfig.clientIP", "expected a mapping, got 60"),
    ({"externalTrafficPolicy": "Local"}, "spec.externalTrafficPolicy",
     "Local is only allowed for NodePort and LoadBalancer services"),
    ({"type": "NodePort", "externalTrafficPolicy": "Global"}, "spec.externalTrafficPolicy",
     "expected one of Cluster, Local, got 'Global'"),
    ({"type": "NodePort", "externalTrafficPolicy": "OnlyLocal"}, "spec.externalTrafficPolicy",
     "got 'OnlyLocal'"),
    ({"internalTrafficPolicy": "local"}, "spec.internalTrafficPolicy",
     "expected one of Cluster, Local, got 'local'"),
])
def test_bad_service_spec(tmp_path: Path, spec: dict, field: str, reason: str) -> None:
    doc = service()
    for k, v in spec.items():
        if v is None:
            del doc["spec"][k]
        else:
            doc["spec"][k] = v
    check(tmp_path, doc, SVC, field, reason)


def test_service_spec_required(tmp_path: Path) -> None:
    doc = service()
    del doc["spec"]
    check(tmp_path, doc, SVC, "spec", "required field is missing")


@pytest.mark.parametrize("type_", ["NodePort", "LoadBalancer"])
def test_local_etp_for_external_types(tmp_path: Path, type_: str) -> None:
    ms, _ = load(tmp_path, service(type=type_, externalTrafficPolicy="Local"))
    assert ms.services["default/web"].externalTrafficPolicy == "Local"


@pytest.mark.parametrize("name, reason", [
    ("1web", "expected a DNS-1035 label"),   # must start with a letter
    ("web.v1", "expected a DNS-1123 label"),  # no dots in Service names
    ("Web", "expected a DNS-1123 label"),
])
def test_bad_service_name(tmp_path: Path, name: str, reason: str) -> None:
    check(tmp_path, service(name), f"Service default/{name}", "metadata.name", reason)


def test_service_api_version(tmp_path: Path) -> None:
    doc = service()
    doc["apiVersion"] = "apps/v1"
    check(tmp_path, doc, SVC, "apiVersion", "expected 'v1' for Service, got 'apps/v1'")


def test_duplicate_service(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", service(ns="prod"))
    e, path = failure(tmp_path, service(ns="prod"), name="b.yaml")
    assert (e.file, e.obj, e.field) == (path, "Service prod/web", "metadata.name")
    assert e.reason == f"duplicate Service: already defined in {first}"


def test_same_name_in_other_namespace_or_kind_is_fine(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, service(), service(ns="prod"), pod("web"), eslice("web"))
    assert set(ms.services) == {"default/web", "prod/web"}
    assert set(ms.pods) == {"default/web"} and set(ms.endpointslices) == {"default/web"}


def test_lowercase_new_kinds_are_not_silently_ignored(tmp_path: Path) -> None:
    doc = service()
    doc["kind"] = "service"
    e, _ = failure(tmp_path, doc)
    assert (e.field, e.reason) == ("kind", "unknown kind 'service', did you mean 'Service'?")


def test_other_kinds_still_ignored(tmp_path: Path) -> None:
    eps = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"}}
    ms, path = load(tmp_path, service(), eps)
    assert ms.ignored == [f"{path}: Endpoints default/web"]
    assert list(ms.services) == ["default/web"]


# --- EndpointSlice -----------------------------------------------------------------------

def test_endpointslice_defaults(tmp_path: Path) -> None:
    ms, path = load(tmp_path, eslice())
    e = ms.endpointslices["default/web-abc"]
    assert e == EndpointSlice(
        namespace="default", name="web-abc", serviceName="web", addressType="IPv4",
        endpoints=(SliceEndpoint(addresses=("10.1.0.5",), ready=True, serving=True,
                                 terminating=False, nodeName=None),),
        ports=(EndpointSlicePort(name="http", port=8080, protocol="TCP"),),
        source=path)
    assert e.key == "default/web-abc"


def test_endpointslice_conditions(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, eslice(ns="prod", endpoints=[
        {"addresses": ["10.1.0.5"], "nodeName": "node-1", "conditions": {"ready": False}},
        {"addresses": ["10.1.0.6", "10.1.0.7"],
         "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.1.0.8"], "conditions": {"ready": None}},
    ], ports=[{"name": "", "port": 53, "protocol": "UDP"}]))
    e = ms.endpointslices["prod/web-abc"]
    assert e.endpoints == (
        SliceEndpoint(("10.1.0.5",), False, False, False, "node-1"),   # serving follows ready
        SliceEndpoint(("10.1.0.6", "10.1.0.7"), False, True, True, None),
        SliceEndpoint(("10.1.0.8",), True, True, False, None),         # null means ready
    )
    assert e.ports == (EndpointSlicePort(None, 53, "UDP"),)


def test_endpointslice_empty(tmp_path: Path) -> None:
    doc = eslice()
    del doc["endpoints"], doc["ports"]
    ms, _ = load(tmp_path, doc)
    e = ms.endpointslices["default/web-abc"]
    assert (e.endpoints, e.ports) == ((), ())


@pytest.mark.parametrize("body, field, reason", [
    ({"addressType": None}, "addressType", "required field is missing"),
    ({"addressType": "IPv6"}, "addressType", "IPv6 EndpointSlices are not supported (only IPv4)"),
    ({"addressType": "FQDN"}, "addressType", "FQDN EndpointSlices are not supported"),
    ({"addressType": "ipv4"}, "addressType", "expected one of IPv4, IPv6, FQDN, got 'ipv4'"),
    ({"endpoints": {"addresses": []}}, "endpoints", "expected a list, got a mapping"),
    ({"endpoints": ["10.1.0.5"]}, "endpoints[0]", "expected a mapping, got '10.1.0.5'"),
    ({"endpoints": [{"nodeName": "n"}]}, "endpoints[0].addresses", "required field is missing"),
    ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses",
     "expected a non-empty list of addresses, got a list"),
    ({"endpoints": [{"addresses": ["10.1.0.5"]}, {"addresses": ["10.1.0.6", "fd00::1"]}]},
     "endpoints[1].addresses[1]", "expected an IPv4 address, got 'fd00::1'"),
    ({"endpoints": [{"addresses": ["127.0.0.1"]}]}, "endpoints[0].addresses[0]",
     "may not be unspecified, loopback, link-local or link-local multicast"),
    ({"endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": "yes"}}]},
     "endpoints[0].conditions.ready", "expected true or false, got 'yes'"),
    ({"endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"serving": 1}}]},
     "endpoints[0].conditions.serving", "expected true or false, got 1"),
    ({"endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"terminating": "false"}}]},
     "endpoints[0].conditions.terminating", "expected true or false, got 'false'"),
    ({"endpoints": [{"addresses": ["10.1.0.5"], "conditions": [True]}]},
     "endpoints[0].conditions", "expected a mapping, got a list"),
    ({"endpoints": [{"addresses": ["10.1.0.5"], "nodeName": "Node_1"}]},
     "endpoints[0].nodeName", "expected a DNS-1123 subdomain"),
    ({"ports": [{"name": "http"}]}, "ports[0].port", "required field is missing"),
    ({"ports": [{"port": 0}]}, "ports[0].port", "expected an integer from 1 to 65535, got 0"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "ports[0].protocol",
     "expected one of TCP, UDP, SCTP, got 'ICMP'"),
    ({"ports": [{"port": 80, "name": "HTTP"}]}, "ports[0].name", "expected a DNS-1123 label"),
    ({"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]}, "ports[1].name",
     "duplicate port name 'a' (also ports[0])"),
    ({"ports": [{"port": 80}, {"port": 81, "name": ""}]}, "ports[1].name",
     "duplicate port name null (also ports[0])"),
    ({"ports": "80"}, "ports", "expected a list, got '80'"),
])
def test_bad_endpointslice(tmp_path: Path, body: dict, field: str, reason: str) -> None:
    doc = eslice()
    for k, v in body.items():
        if v is None:
            del doc[k]
        else:
            doc[k] = v
    check(tmp_path, doc, EPS, field, reason)


def test_endpointslice_needs_service_label(tmp_path: Path) -> None:
    check(tmp_path, eslice(svc=None), EPS, "metadata.labels[kubernetes.io/service-name]",
          "required label is missing")


def test_endpointslice_service_label_must_be_service_name(tmp_path: Path) -> None:
    check(tmp_path, eslice(svc="1web"), EPS, "metadata.labels[kubernetes.io/service-name]",
          "expected a DNS-1035 label")


def test_endpointslice_api_version(tmp_path: Path) -> None:
    doc = eslice()
    doc["apiVersion"] = "discovery.k8s.io/v1beta1"
    check(tmp_path, doc, EPS, "apiVersion",
          "expected 'discovery.k8s.io/v1' for EndpointSlice, got 'discovery.k8s.io/v1beta1'")
    del doc["apiVersion"]
    check(tmp_path, doc, EPS, "apiVersion",
          "required field is missing (expected 'discovery.k8s.io/v1')")


def test_duplicate_endpointslice(tmp_path: Path) -> None:
    e, path = failure(tmp_path, eslice(), eslice())
    assert (e.file, e.obj, e.field) == (path, EPS, "metadata.name")
    assert e.reason == f"duplicate EndpointSlice: already defined in {path}"


# --- CiliumLoadBalancerIPPool ------------------------------------------------------------

def test_pool_defaults_and_cidr_addresses(tmp_path: Path) -> None:
    ms, path = load(tmp_path, pool())
    p = ms.ippools["pool-a"]
    assert p == LBIPPool(name="pool-a", blocks=(IPPoolBlock("192.0.2.0/30", None, None),),
                         serviceSelector=None, disabled=False, source=path)
    assert list(p.addresses()) == ["192.0.2.1", "192.0.2.2"]  # no network/broadcast


def test_pool_is_cluster_scoped(tmp_path: Path) -> None:
    doc = pool()
    doc["metadata"]["namespace"] = "kube-system"
    other = pool()
    other["metadata"]["namespace"] = "default"
    e, path = failure(tmp_path, doc, other)
    assert (e.obj, e.field) == (POOL, "metadata.name")
    assert e.reason == f"duplicate CiliumLoadBalancerIPPool: already defined in {path}"
    ms, _ = load(tmp_path, doc)
    assert list(ms.ippools) == ["pool-a"]


@pytest.mark.parametrize("blocks, expected", [
    ([{"cidr": "192.0.2.8/29"}],
     [f"192.0.2.{i}" for i in range(9, 15)]),
    ([{"cidr": "192.0.2.8/31"}], ["192.0.2.8", "192.0.2.9"]),
    ([{"cidr": "192.0.2.8/32"}], ["192.0.2.8"]),
    ([{"start": "192.0.2.250", "stop": "192.0.3.1"}],
     ["192.0.2.250", "192.0.2.251", "192.0.2.252", "192.0.2.253", "192.0.2.254",
      "192.0.2.255", "192.0.3.0", "192.0.3.1"]),
    ([{"start": "192.0.2.7"}], ["192.0.2.7"]),
    ([{"start": "192.0.2.7", "stop": "192.0.2.7"}], ["192.0.2.7"]),
    ([{"start": "10.0.0.5"}, {"cidr": "10.0.1.0/30"}, {"start": "10.0.0.1", "stop": "10.0.0.2"}],
     ["10.0.0.5", "10.0.1.1", "10.0.1.2", "10.0.0.1", "10.0.0.2"]),
])
def test_pool_addresses(tmp_path: Path, blocks: list, expected: list[str]) -> None:
    ms, _ = load(tmp_path, pool(blocks=blocks))
    assert list(ms.ippools["pool-a"].addresses()) == expected


def test_pool_single_address_block_normalised(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, pool(blocks=[{"start": "192.0.2.7"}]))
    assert ms.ippools["pool-a"].blocks == (IPPoolBlock(None, "192.0.2.7", "192.0.2.7"),)


def test_pool_addresses_are_lazy(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, pool(blocks=[{"cidr": "10.0.0.0/8"}]))
    it = ms.ippools["pool-a"].addresses()
    assert [next(it), next(it)] == ["10.0.0.1", "10.0.0.2"]


def test_pool_cidrs_alias_selector_and_disabled(tmp_path: Path) -> None:
    doc = pool(cidrs=[{"cidr": "198.51.100.0/24"}], disabled=True,
               serviceSelector={"matchLabels": {"color": "blue"}, "matchExpressions": []})
    del doc["spec"]["blocks"]
    ms, _ = load(tmp_path, doc)
    p = ms.ippools["pool-a"]
    assert p.blocks == (IPPoolBlock("198.51.100.0/24", None, None),)
    assert p.serviceSelector == (("color", "blue"),)
    assert p.disabled is True


def test_pool_empty_selector_is_none(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, pool(serviceSelector={}), pool("b", serviceSelector={"matchLabels": {}}))
    assert ms.ippools["pool-a"].serviceSelector is None
    assert ms.ippools["b"].serviceSelector is None


@pytest.mark.parametrize("spec, field, reason", [
    ({"blocks": None}, "spec.blocks", "required field is missing"),
    ({"blocks": []}, "spec.blocks", "expected a non-empty list of blocks, got a list"),
    ({"blocks": {"cidr": "10.0.0.0/24"}}, "spec.blocks",
     "expected a non-empty list of blocks, got a mapping"),
    ({"cidrs": [{"cidr": "10.0.0.0/24"}]}, "spec.cidrs",
     "set spec.blocks or its older name spec.cidrs, not both"),
    ({"blocks": ["10.0.0.0/24"]}, "spec.blocks[0]", "expected a mapping, got '10.0.0.0/24'"),
    ({"blocks": [{}]}, "spec.blocks[0]",
     "required field is missing (set cidr, or start and optionally stop)"),
    ({"blocks": [{"stop": "10.0.0.5"}]}, "spec.blocks[0].start", "required field is missing"),
    ({"blocks": [{"cidr": "10.0.0.0/24", "start": "10.0.0.1"}]}, "spec.blocks[0]",
     "set either cidr or start/stop, not both"),
    ({"blocks": [{"cidr": "10.0.0.0/24"}, {"cidr": "10.0.0.0"}]}, "spec.blocks[1].cidr",
     "expected an IPv4 CIDR such as 10.0.10.0/24, got '10.0.0.0'"),
    ({"blocks": [{"cidr": "10.0.0.0/33"}]}, "spec.blocks[0].cidr", "got '10.0.0.0/33'"),
    ({"blocks": [{"cidr": "fd00::/64"}]}, "spec.blocks[0].cidr", "got 'fd00::/64'"),
    ({"blocks": [{"cidr": 10}]}, "spec.blocks[0].cidr", "got 10"),
    ({"blocks": [{"cidr": "10.0.0.1/24"}]}, "spec.blocks[0].cidr",
     "has host bits set (did you mean '10.0.0.0/24'?), got '10.0.0.1/24'"),
    ({"blocks": [{"start": "10.0.0.256"}]}, "spec.blocks[0].start",
     "expected an IPv4 address, got '10.0.0.256'"),
    ({"blocks": [{"start": "10.0.0.1", "stop": "x"}]}, "spec.blocks[0].stop",
     "expected an IPv4 address, got 'x'"),
    ({"blocks": [{"start": "10.0.0.9", "stop": "10.0.0.1"}]}, "spec.blocks[0].stop",
     "must not be before start '10.0.0.9', got '10.0.0.1'"),
    ({"serviceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}},
     "spec.serviceSelector.matchExpressions", "not supported (use matchLabels)"),
    ({"serviceSelector": {"matchlabels": {"a": "b"}}}, "spec.serviceSelector.matchlabels",
     "unknown field (expected matchLabels)"),
    ({"serviceSelector": {"matchLabels": {"a": 1}}}, "spec.serviceSelector.matchLabels[a]",
     "label values must be strings"),
    ({"serviceSelector": "a=b"}, "spec.serviceSelector", "expected a mapping, got 'a=b'"),
    ({"disabled": "no"}, "spec.disabled", "expected true or false, got 'no'"),
])
def test_bad_pool(tmp_path: Path, spec: dict, field: str, reason: str) -> None:
    doc = pool()
    for k, v in spec.items():
        if v is None:
            del doc["spec"][k]
        else:
            doc["spec"][k] = v
    check(tmp_path, doc, POOL, field, reason)


def test_cidrs_alias_errors_name_the_alias(tmp_path: Path) -> None:
    doc = pool(cidrs=[{"cidr": "10.0.0.0/24"}, {"cidr": "bad"}])
    del doc["spec"]["blocks"]
    check(tmp_path, doc, POOL, "spec.cidrs[1].cidr", "expected an IPv4 CIDR")


def test_pool_needs_spec_and_version(tmp_path: Path) -> None:
    doc = pool()
    del doc["spec"]
    check(tmp_path, doc, POOL, "spec", "required field is missing")
    doc = pool()
    doc["apiVersion"] = "cilium.io/v2"
    check(tmp_path, doc, POOL, "apiVersion",
          "expected 'cilium.io/v2alpha1' for CiliumLoadBalancerIPPool, got 'cilium.io/v2'")


# --- CiliumL2AnnouncementPolicy ----------------------------------------------------------

def test_l2policy_defaults(tmp_path: Path) -> None:
    ms, path = load(tmp_path, l2policy())
    assert ms.l2policies["l2-a"] == L2Policy(name="l2-a", interfaces=(), externalIPs=False,
                                             loadBalancerIPs=False, nodeSelector=None,
                                             serviceSelector=None, source=path)


def test_full_l2policy(tmp_path: Path) -> None:
    doc = l2policy(interfaces=["^eth[0-9]+", "enp0s8"], externalIPs=True, loadBalancerIPs=True,
                   nodeSelector={"matchLabels": {"kubernetes.io/hostname": "node-1"}},
                   serviceSelector={"matchLabels": {"color": "blue"}})
    doc["metadata"]["namespace"] = "ignored"
    ms, path = load(tmp_path, doc)
    assert ms.l2policies["l2-a"] == L2Policy(
        name="l2-a", interfaces=("^eth[0-9]+", "enp0s8"), externalIPs=True,
        loadBalancerIPs=True, nodeSelector=(("kubernetes.io/hostname", "node-1"),),
        serviceSelector=(("color", "blue"),), source=path)


@pytest.mark.parametrize("spec, field, reason", [
    ({"interfaces": "eth0"}, "spec.interfaces", "expected a list of strings, got 'eth0'"),
    ({"interfaces": ["eth0", 1]}, "spec.interfaces[1]", "expected a string, got 1"),
    ({"interfaces": ["eth0", "eth[0-"]}, "spec.interfaces[1]", "not a valid regular expression"),
    ({"externalIPs": "true"}, "spec.externalIPs", "expected true or false, got 'true'"),
    ({"loadBalancerIPs": 1}, "spec.loadBalancerIPs", "expected true or false, got 1"),
    ({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}},
     "spec.nodeSelector.matchExpressions", "not supported (use matchLabels)"),
    ({"serviceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}},
     "spec.serviceSelector.matchExpressions", "not supported (use matchLabels)"),
    ({"nodeSelector": {"matchLabels": {"-bad": "x"}}}, "spec.nodeSelector.matchLabels[-bad]",
     "label key name must be at most 63"),
])
def test_bad_l2policy(tmp_path: Path, spec: dict, field: str, reason: str) -> None:
    check(tmp_path, l2policy(**spec), L2, field, reason)


def test_l2policy_name_and_duplicates(tmp_path: Path) -> None:
    check(tmp_path, l2policy("L2_A"), "CiliumL2AnnouncementPolicy L2_A", "metadata.name",
          "expected a DNS-1123 subdomain")
    e, path = failure(tmp_path, l2policy(), l2policy())
    assert (e.obj, e.reason) == (L2, f"duplicate CiliumL2AnnouncementPolicy: already defined in "
                                     f"{path}")


# --- queries -----------------------------------------------------------------------------

def test_services_selecting(tmp_path: Path) -> None:
    write(
        tmp_path, "m.yaml",
        pod("web-1", labels={"app": "web", "tier": "fe"}),
        pod("other", ns="prod", labels={"app": "web", "tier": "fe"}),
        service("web"),                                              # matches
        service("fe", selector={"app": "web", "tier": "fe"}),        # matches (equal set)
        service("be", selector={"app": "web", "tier": "be"}),        # value differs
        service("more", selector={"app": "web", "x": "y"}),          # not a subset
        service("empty", selector={}),                               # empty selects nothing
        service("prodweb", ns="prod"),                               # other namespace
    )
    doc = service("manual")
    del doc["spec"]["selector"]
    write(tmp_path, "n.yaml", doc)
    ms = load_manifests(str(tmp_path))
    web1 = ms.pods["default/web-1"]
    assert [s.key for s in ms.services_selecting(web1)] == ["default/fe", "default/web"]
    assert [s.key for s in ms.services_selecting(ms.pods["prod/other"])] == ["prod/prodweb"]
    lonely = Pod(namespace="default", name="x", labels=(), nodeName=None,
                 serviceAccountName="default", containers=(), source="")
    assert ms.services_selecting(lonely) == []


def test_slices_for(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, service(), service(ns="prod"), service("api"),
                 eslice("web-b"), eslice("web-a"), eslice("api-x", svc="api"),
                 eslice("web-p", ns="prod"), eslice("orphan", svc="gone"))
    assert [e.key for e in ms.slices_for(ms.services["default/web"])] == \
        ["default/web-a", "default/web-b"]
    assert [e.key for e in ms.slices_for(ms.services["default/api"])] == ["default/api-x"]
    assert [e.key for e in ms.slices_for(ms.services["prod/web"])] == ["prod/web-p"]


def test_manifest_set_backwards_compatible_constructor() -> None:
    ms = ManifestSet(namespaces={}, pods={}, ignored=[])
    assert (ms.services, ms.endpointslices, ms.ippools, ms.l2policies) == ({}, {}, {}, {})
    assert ms.services_selecting(Pod("default", "p", (("app", "web"),), None, "default", (),
                                     "")) == []


def test_all_kinds_in_one_list(tmp_path: Path) -> None:
    ms, _ = load(tmp_path, {"apiVersion": "v1", "kind": "List",
                            "items": [service(), eslice(), pool(), l2policy(), pod("p")]})
    assert (list(ms.services), list(ms.endpointslices), list(ms.ippools),
            list(ms.l2policies), list(ms.pods)) == (["default/web"], ["default/web-abc"],
                                                     ["pool-a"], ["l2-a"], ["default/p"])
    assert ms.ignored == []


def test_error_in_list_item_names_the_service(tmp_path: Path) -> None:
    bad = service("b", ports=[{"port": -1}])
    e, path = failure(tmp_path, {"apiVersion": "v1", "kind": "List",
                                 "items": [service("a"), bad]})
    assert (e.file, e.obj, e.field) == (path, "Service default/b", "spec.ports[0].port")
