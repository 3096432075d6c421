"""The example topologies a user starts labs from load, and say what their comments promise
(the e2e tests build cut-down copies of some of them, to compile fewer nodes)."""
from __future__ import annotations

import pytest

from agent.lab.topology import TOPOLOGIES, load_topology


@pytest.mark.parametrize("name", sorted(p.name for p in TOPOLOGIES.glob("*.yaml")))
def test_every_example_topology_loads(name):
    topo = load_topology(TOPOLOGIES / name)
    assert topo.nodes and topo.nodes[0].name == "k8s-ctr"


def test_cross_subnet_puts_k8s_w0_behind_the_router():
    topo = load_topology(TOPOLOGIES / "cross-subnet.yaml")
    seg = {n.name: n.segment for n in topo.nodes}
    assert [n.name for n in topo.nodes] == ["k8s-ctr", "k8s-w1", "k8s-w2", "k8s-w0"]
    assert seg["k8s-w0"] != seg["k8s-ctr"] == seg["k8s-w1"] == seg["k8s-w2"]
    assert topo.router and topo.gateway(seg["k8s-w0"]) and topo.gateway(seg["k8s-ctr"])
    assert topo.etcd == "k8s-ctr"
