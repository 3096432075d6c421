"""agent/lb/services.py: Services + pod addresses -> LB map contents (pure)."""
from __future__ import annotations

from pathlib import Path

from agent.lb import services
from agent.manifests import load_manifests
from datapath import abi

POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers:
    - name: c
      ports: [{{name: http, containerPort: {port}}}]
"""
SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: {target}}}]
"""


def manifests(tmp_path: Path, extra: str = ""):
    docs = [POD.format(name="w1", app="web", node="a", port=8080),
            POD.format(name="w2", app="web", node="b", port=9090),
            POD.format(name="db", app="db", node="a", port=5432),
            SVC.format(name="web", app="web", target="http"), extra]
    (tmp_path / "all.yaml").write_text("---\n".join(d for d in docs if d))
    return load_manifests(str(tmp_path))


def decode(plan):
    svc = {abi.Lb4Key.from_bytes(k): abi.Lb4Service.from_bytes(v)
           for k, v in plan.maps["cilium_lb4_services_v2"].items()}
    be = {abi.Lb4BackendKey.from_bytes(k).backend_id: abi.Lb4Backend.from_bytes(v)
          for k, v in plan.maps["cilium_lb4_backends_v3"].items()}
    return svc, be


def test_named_target_port_resolves_per_pod_and_backends_span_nodes(tmp_path):
    ms = manifests(tmp_path)
    ips = {"default/w1": "172.20.0.5", "default/w2": "172.20.1.7", "default/db": "172.20.0.9"}
    plan = services.build(ms, ips, services.IdTable({}), "10.96.0.0/16")
    (entry,) = plan.listing
    assert [b["address"] for b in entry["backends"]] == ["172.20.0.5:8080/TCP",
                                                         "172.20.1.7:9090/TCP"]
    svc, be = decode(plan)
    front = [k for k, v in svc.items() if k.backend_slot == 0]
    assert len(front) == 1 and svc[front[0]].count == 2
    assert {(abi.be32_to_ip4(b.address), int.from_bytes(b.port.to_bytes(2, "little"), "big"))
            for b in be.values()} == {("172.20.0.5", 8080), ("172.20.1.7", 9090)}
    assert plan.frontends_last == {bytes(front[0])}
    rn = plan.maps["cilium_lb4_reverse_nat"]
    assert len(rn) == 1


def test_pods_without_an_address_are_not_backends(tmp_path):
    plan = services.build(manifests(tmp_path), {"default/w1": "172.20.0.5"},
                          services.IdTable({}), "10.96.0.0/16")
    assert len(plan.listing[0]["backends"]) == 1


def test_cluster_ip_allocation_is_the_same_everywhere_and_respects_given_ips(tmp_path):
    given = SVC.format(name="fixed", app="db", target=5432).replace(
        "spec:\n", "spec:\n  clusterIP: 10.96.0.10\n")
    ms = manifests(tmp_path, given)
    a = services.cluster_ips(list(ms.services.values()), "10.96.0.0/16")
    b = services.cluster_ips(list(reversed(list(ms.services.values()))), "10.96.0.0/16")
    assert a == b and a["default/fixed"] == "10.96.0.10"
    assert a["default/web"] != "10.96.0.10"


def test_ids_are_stable_and_pruned(tmp_path):
    table: dict = {}
    ids = services.IdTable(table)
    ips = {"default/w1": "172.20.0.5", "default/w2": "172.20.1.7"}
    first = services.build(manifests(tmp_path), ips, ids, "10.96.0.0/16")
    again = services.build(manifests(tmp_path), ips, services.IdTable(table), "10.96.0.0/16")
    assert first.maps == again.maps                         # a restart rebuilds the same maps
    services.build(manifests(tmp_path), {"default/w1": "172.20.0.5"}, services.IdTable(table),
                   "10.96.0.0/16")
    assert list(table["backends"]) == ["172.20.0.5:8080/TCP"]


def test_client_ip_affinity_sets_flag_and_timeout(tmp_path):
    sticky = SVC.format(name="sticky", app="web", target="http").replace(
        "spec:\n", "spec:\n  sessionAffinity: ClientIP\n"
                   "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n")
    ms = manifests(tmp_path, sticky)
    plan = services.build(ms, {"default/w1": "172.20.0.5"}, services.IdTable({}), "10.96.0.0/16")
    svc, _ = decode(plan)
    fronts = {k: v for k, v in svc.items() if k.backend_slot == 0}
    random = abi.LB_ALGORITHM_RANDOM << abi.LB_ALGORITHM_SHIFT
    flags = sorted((v.flags, v.backend_id) for v in fronts.values())
    assert flags == [(0, random), (abi.SVC_FLAG_AFFINITY, random | 30)]


def test_terminating_pod_keeps_its_backend_entry_but_loses_its_slot(tmp_path):
    extra = POD.format(name="w3", app="web", node="b", port=8080).replace(
        "metadata: {name: w3,", "metadata: {deletionTimestamp: '2026-11-24T00:00:00Z', name: w3,")
    ms = manifests(tmp_path, extra)
    assert ms.pods["default/w3"].terminating
    ips = {"default/w1": "172.20.0.5", "default/w3": "172.20.1.9"}
    plan = services.build(ms, ips, services.IdTable({}), "10.96.0.0/16")
    svc, be = decode(plan)
    states = {abi.be32_to_ip4(b.address): b.flags for b in be.values()}
    assert states == {"172.20.0.5": abi.BE_STATE_ACTIVE, "172.20.1.9": abi.BE_STATE_TERMINATING}
    slots = [v.backend_id for k, v in svc.items() if k.backend_slot]
    front = [v for k, v in svc.items() if k.backend_slot == 0][0]
    assert front.count == 1 and len(slots) == 1 and be[slots[0]].flags == abi.BE_STATE_ACTIVE
    assert [b["state"] for b in plan.listing[0]["backends"]] == ["active", "terminating"]


def test_not_ready_pod_is_no_backend(tmp_path):
    extra = POD.format(name="w4", app="web", node="a", port=8080) + \
        "status:\n  conditions: [{type: Ready, status: 'False'}]\n"
    ms = manifests(tmp_path, extra)
    assert not ms.pods["default/w4"].ready
    plan = services.build(ms, {"default/w1": "172.20.0.5", "default/w4": "172.20.0.6"},
                          services.IdTable({}), "10.96.0.0/16")
    assert [b["address"] for b in plan.listing[0]["backends"]] == ["172.20.0.5:8080/TCP"]


def test_selectorless_service_takes_endpointslice_backends(tmp_path):
    ext = """apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  clusterIP: 10.96.5.5
  ports: [{name: https, port: 443, targetPort: 8443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ext-1
  namespace: default
  labels: {kubernetes.io/service-name: ext}
addressType: IPv4
ports: [{name: https, port: 8443, protocol: TCP}]
endpoints:
  - addresses: [192.0.2.10]
  - addresses: [192.0.2.11]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [192.0.2.12]
    conditions: {ready: false}
"""
    plan = services.build(manifests(tmp_path, ext), {}, services.IdTable({}), "10.96.0.0/16")
    (entry,) = [e for e in plan.listing if e["service"] == "default/ext"]
    assert entry["frontend"] == "10.96.5.5:443/TCP"
    assert [(b["address"], b["state"]) for b in entry["backends"]] == [
        ("192.0.2.10:8443/TCP", "active"), ("192.0.2.11:8443/TCP", "terminating")]


POOL = """apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata: {{name: {name}}}
spec:
  blocks: [{blocks}]
{selector}"""
LB_SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default, labels: {{tier: {tier}}}}}
spec:
  type: {type}
  selector: {{app: web}}
{extra}  ports: [{{name: http, port: 80, targetPort: http}}]
"""


def lb_manifests(tmp_path, *docs):
    (tmp_path / "all.yaml").write_text("---\n".join(docs))
    return load_manifests(str(tmp_path))


def test_lb_ipam_honours_requests_then_hands_out_free_addresses_in_name_order(tmp_path):
    ms = lb_manifests(
        tmp_path,
        POOL.format(name="a-pool", blocks="{start: 192.168.10.240, stop: 192.168.10.242}",
                    selector=""),
        POOL.format(name="b-gold", blocks="{cidr: 198.51.100.0/30}",
                    selector="  serviceSelector: {matchLabels: {tier: gold}}\n"),
        LB_SVC.format(name="z", tier="x", type="LoadBalancer",
                      extra="  loadBalancerIP: 192.168.10.240\n"),
        LB_SVC.format(name="a", tier="x", type="LoadBalancer", extra=""),
        LB_SVC.format(name="gold", tier="gold", type="LoadBalancer",
                      extra="  loadBalancerIP: 198.51.100.2\n"),
        LB_SVC.format(name="wants-foreign", tier="x", type="LoadBalancer",
                      extra="  loadBalancerIP: 203.0.113.5\n"),
        LB_SVC.format(name="np", tier="x", type="NodePort", extra=""))
    ips = services.lb_ips(ms.services.values(), ms.ippools.values())
    assert ips == {"default/z": "192.168.10.240", "default/a": "192.168.10.241",
                   "default/gold": "198.51.100.2"}       # no pool holds 203.0.113.5: pending


def test_lb_ipam_pool_exhaustion_leaves_later_services_pending(tmp_path):
    ms = lb_manifests(
        tmp_path, POOL.format(name="one", blocks="{start: 192.168.10.240}", selector=""),
        LB_SVC.format(name="a", tier="x", type="LoadBalancer", extra=""),
        LB_SVC.format(name="b", tier="x", type="LoadBalancer", extra=""))
    assert services.lb_ips(ms.services.values(), ms.ippools.values()) == {
        "default/a": "192.168.10.240"}


def test_node_ports_keep_given_ones_and_allocate_the_rest_the_same_everywhere(tmp_path):
    ms = lb_manifests(
        tmp_path,
        LB_SVC.format(name="given", tier="x", type="NodePort", extra="").replace(
            "targetPort: http}", "targetPort: http, nodePort: 30080}"),
        LB_SVC.format(name="auto", tier="x", type="NodePort", extra=""),
        LB_SVC.format(name="lb", tier="x", type="LoadBalancer", extra=""),
        LB_SVC.format(name="cip", tier="x", type="ClusterIP", extra=""))
    nps = services.node_ports(ms.services.values(), (30000, 32767))
    assert nps[("default/given", 0)] == 30080
    assert set(nps) == {("default/given", 0), ("default/auto", 0), ("default/lb", 0)}
    assert all(30000 <= p <= 32767 for p in nps.values()) and len(set(nps.values())) == 3
    assert nps == services.node_ports(list(ms.services.values())[::-1], (30000, 32767))
    tiny = services.node_ports(ms.services.values(), (30080, 30082))
    assert sorted(tiny.values()) == [30080, 30081, 30082]


def frontends_of(plan):
    svc = {abi.Lb4Key.from_bytes(k): abi.Lb4Service.from_bytes(v)
           for k, v in plan.maps["cilium_lb4_services_v2"].items()}
    out = {}
    for k, v in svc.items():
        if k.backend_slot == 0:
            slots = sorted(s.backend_id for kk, s in svc.items() if kk.backend_slot and
                           (kk.address, kk.dport, kk.scope) == (k.address, k.dport, k.scope))
            out[(abi.be32_to_ip4(k.address), abi.be16(k.dport), k.scope)] = (v, slots)
    return out


def test_every_frontend_of_a_loadbalancer_service_with_local_external_policy(tmp_path):
    ms = lb_manifests(
        tmp_path, POD.format(name="w1", app="web", node="a", port=8080),
        POD.format(name="w2", app="web", node="b", port=8080),
        POOL.format(name="p", blocks="{start: 192.168.10.240}", selector=""),
        LB_SVC.format(name="web", tier="x", type="LoadBalancer",
                      extra="  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.50\n"
                            "  externalIPs: [198.51.100.7]\n").replace(
            "targetPort: http}", "targetPort: http, nodePort: 30080}"))
    ips = {"default/w1": "172.20.0.5", "default/w2": "172.20.1.7"}
    view = services.NodeView(node_ip="192.168.10.100", local_ips=frozenset({"172.20.0.5"}),
                             node_name="a")
    ids = services.IdTable({})
    plan = services.build(ms, ips, ids, "10.96.0.0/16", view)
    fes = frontends_of(plan)
    ext, internal = abi.LB_LOOKUP_SCOPE_EXT, abi.LB_LOOKUP_SCOPE_INT
    routable = abi.SVC_FLAG_ROUTABLE | abi.SVC_FLAG_EXT_LOCAL_SCOPE
    w1 = ids.backend("172.20.0.5:8080/TCP")
    w2 = ids.backend("172.20.1.7:8080/TCP")
    assert fes[("10.96.0.50", 80, ext)][0].flags == 0 and fes[("10.96.0.50", 80, ext)][1] == \
        sorted([w1, w2])
    for addr, port, flag in (("192.168.10.100", 30080, abi.SVC_FLAG_NODEPORT),
                             ("192.168.10.240", 80, abi.SVC_FLAG_LOADBALANCER),
                             ("198.51.100.7", 80, abi.SVC_FLAG_EXTERNAL_IP)):
        head, slots = fes[(addr, port, ext)]
        assert head.flags == flag | routable and slots == [w1]       # outside: local only
        assert head.flags2 & abi.SVC_FLAG2_TWO_SCOPES
        assert fes[(addr, port, internal)][1] == sorted([w1, w2])     # pods here: all
    assert {e["type"] for e in plan.listing} == {"ClusterIP", "NodePort", "LoadBalancer",
                                                 "ExternalIP"}
    np = [e for e in plan.listing if e["type"] == "NodePort"][0]
    assert np["frontend"] == "192.168.10.100:30080/TCP" and \
        [b["address"] for b in np["backends"]] == ["172.20.0.5:8080/TCP"]
    # a node without a local backend: the external scope is empty (datapath drops, counted)
    other = services.build(ms, ips, services.IdTable({}), "10.96.0.0/16", services.NodeView(
        node_ip="192.168.10.102", local_ips=frozenset(), node_name="c"))
    assert frontends_of(other)[("192.168.10.102", 30080, ext)][0].count == 0


def test_internal_traffic_policy_local_limits_the_cluster_ip_to_local_backends(tmp_path):
    ms = lb_manifests(
        tmp_path, POD.format(name="w1", app="web", node="a", port=8080),
        POD.format(name="w2", app="web", node="b", port=8080),
        LB_SVC.format(name="web", tier="x", type="ClusterIP",
                      extra="  internalTrafficPolicy: Local\n  clusterIP: 10.96.0.51\n"))
    ips = {"default/w1": "172.20.0.5", "default/w2": "172.20.1.7"}
    plan = services.build(ms, ips, services.IdTable({}), "10.96.0.0/16", services.NodeView(
        local_ips=frozenset({"172.20.1.7"})))
    (head, slots), = frontends_of(plan).values()
    assert head.count == 1 and head.flags2 & abi.SVC_FLAG2_INT_LOCAL_SCOPE


def test_maglev_frontends_carry_the_algorithm_and_a_full_table(tmp_path):
    ms = lb_manifests(
        tmp_path, POD.format(name="w1", app="web", node="a", port=8080),
        POD.format(name="w2", app="web", node="b", port=8080),
        LB_SVC.format(name="web", tier="x", type="NodePort", extra=""))
    ips = {"default/w1": "172.20.0.5", "default/w2": "172.20.1.7"}
    ids = services.IdTable({})
    plan = services.build(ms, ips, ids, "10.96.0.0/16", services.NodeView(
        node_ip="192.168.10.100", algorithm="maglev", maglev_size=251))
    luts = plan.maps["cilium_lb4_maglev"]
    assert len(luts) == 2                          # ClusterIP and NodePort frontends
    for head, _ in frontends_of(plan).values():
        assert head.backend_id >> abi.LB_ALGORITHM_SHIFT == abi.LB_ALGORITHM_MAGLEV
        lut = luts[bytes(abi.Lb4ReverseNatKey(head.rev_nat_index))]
        table = list(memoryview(lut).cast("I"))
        assert len(table) == 251
        assert set(table) == {ids.backend("172.20.0.5:8080/TCP"),
                              ids.backend("172.20.1.7:8080/TCP")}
    random = services.build(ms, ips, services.IdTable({}), "10.96.0.0/16")
    assert random.maps["cilium_lb4_maglev"] == {}
