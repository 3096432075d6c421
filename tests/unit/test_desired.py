"""agent/desired.py: the sections the agent's state becomes, on a stand-in agent (no BPF): a
replaced cluster view always reaches the ipcache (even when the new dict reuses the old one's
id), and a policy's CIDR row never shares an ipcache key with a remote pod's or the node's."""
from __future__ import annotations

from types import SimpleNamespace

from agent.lb import services
from agent.config import parse_config
from agent.desired import DesiredBuilder, NodeFacts
from agent.identity import RESERVED
from agent.manifests import ManifestSet
from agent.metrics import AgentMetrics
from agent.policy.subsystem import PolicySubsystem
from agent.reconciler import Reconciler
from datapath import abi

CNP = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
       "metadata": {"name": "to-peer", "namespace": "default"},
       "spec": {"endpointSelector": {}, "egress": [{"toCIDR": ["10.0.9.9/32", "10.0.8.0/24"]}]}}


def stand_in(tmp_path) -> SimpleNamespace:
    cfg = parse_config({"nodeName": "n1", "ipam": {"podCIDR": "10.244.0.0/24"},
                        "routingMode": "native", "stateDir": str(tmp_path)}, "/x.yaml")
    state = {"identities": {}}
    a = SimpleNamespace(cfg=cfg, endpoints={}, remote_endpoints={}, remote_nodes={},
                        cluster_gen=0, manifests=ManifestSet(), l2=None, l2_selection={},
                        lb_ids=services.IdTable({}), node_ip="192.168.10.100",
                        metrics=AgentMetrics(),
                        dp=SimpleNamespace(program=lambda name: (0, f"tag-{name}")))
    a.policy = PolicySubsystem(cfg, state, a.metrics)
    a.known_identities = lambda: {n: (f"reserved:{k}",) for k, n in RESERVED.items()}
    return a


def ipcache(rec: Reconciler) -> dict[bytes, bytes]:
    return dict(rec.desired["cilium_ipcache"])


def row(ip: str) -> bytes:
    return bytes(abi.ipcache_key(f"{ip}/32"))


def test_a_replaced_cluster_view_reaches_the_ipcache(tmp_path):
    a = stand_in(tmp_path)
    b = DesiredBuilder(a)
    rec = Reconciler()
    for i in range(20):                          # the dict is new each time, its id may repeat
        a.remote_endpoints = {f"10.0.1.{i}": {"identity": 300 + i, "hostIP": "192.168.10.101",
                                              "namespace": "default", "pod": f"p{i}"}}
        a.cluster_gen += 1
        b.build(rec, None)
        got = ipcache(rec)
        assert row(f"10.0.1.{i}") in got and (i == 0 or row(f"10.0.1.{i - 1}") not in got)


def test_policy_cidr_rows_leave_pod_and_node_addresses_to_them(tmp_path):
    a = stand_in(tmp_path)
    a.manifests = ManifestSet(policies={("CiliumNetworkPolicy", "default", "to-peer"):
                                        ("p.yaml", CNP)})
    a.policy.load(a.manifests)
    b = DesiredBuilder(a)
    b.facts = NodeFacts(host_addresses=["10.0.9.9"])        # the node owns the /32 a rule names
    rec = Reconciler()
    b.build(rec, None)
    got = ipcache(rec)
    host = abi.RemoteEndpointInfo.from_bytes(got[row("10.0.9.9")])
    assert host.sec_identity == abi.IDENTITY_HOST
    prefix = abi.RemoteEndpointInfo.from_bytes(got[bytes(abi.ipcache_key("10.0.8.0/24"))])
    assert prefix.sec_identity >= 1 << 24                  # a CIDR identity
    a.manifests = ManifestSet()                            # the policy goes: its rows go
    a.policy.load(a.manifests)
    b.build(rec, None)
    got = ipcache(rec)
    assert bytes(abi.ipcache_key("10.0.8.0/24")) not in got
    assert abi.RemoteEndpointInfo.from_bytes(got[row("10.0.9.9")]).sec_identity == \
        abi.IDENTITY_HOST
