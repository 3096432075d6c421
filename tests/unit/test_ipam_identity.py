"""IPAM and identity allocation."""
from __future__ import annotations

import pytest

from agent.identity import RESERVED, LocalIdentityStore, security_labels
from agent.ipam import HostIPAM, IPAMExhausted
from agent.state import StateFile


def test_ipam_skips_gateway_is_stable_and_reuses_released():
    alloc = {}
    ipam = HostIPAM("172.20.0.0/24", alloc)
    assert ipam.gateway == "172.20.0.1"
    a = ipam.allocate("c1")
    assert a == "172.20.0.2" and ipam.allocate("c1") == a
    b = ipam.allocate("c2")
    assert b == "172.20.0.3"
    assert ipam.release("c1") and not ipam.release("c1")
    assert ipam.allocate("c3") == "172.20.0.2"
    assert HostIPAM("172.20.0.0/24", alloc).allocate("c2") == b      # survives a restart


def test_ipam_exhaustion():
    ipam = HostIPAM("10.0.0.0/30", {})
    ipam.allocate("a")                      # .1 is the gateway, .2 the only pod address
    with pytest.raises(IPAMExhausted):
        ipam.allocate("b")


def test_reserved_identities_are_ciliums():
    assert RESERVED == {"host": 1, "world": 2, "unmanaged": 3, "health": 4, "init": 5,
                        "remote-node": 6, "kube-apiserver": 7, "ingress": 8}


def test_security_labels_follow_cilium():
    labels = security_labels("prod", {"app": "web"}, {"team": "a"}, "sa1")
    assert labels == ("k8s:app=web", "k8s:io.cilium.k8s.namespace.labels.team=a",
                      "k8s:io.cilium.k8s.policy.cluster=default",
                      "k8s:io.cilium.k8s.policy.serviceaccount=sa1",
                      "k8s:io.kubernetes.pod.namespace=prod")


def test_identities_are_per_label_set_from_256_and_persist(tmp_path):
    sf = StateFile(str(tmp_path))
    state = sf.load()
    store = LocalIdentityStore(state["identities"])
    web = security_labels("default", {"app": "web"}, {})
    db = security_labels("default", {"app": "db"}, {})
    assert store.allocate(web) == (256, True)
    assert store.allocate(web) == (256, False)
    assert store.allocate(db) == (257, True)
    assert store.allocate(tuple(reversed(web)))[0] == 256      # order does not matter
    assert store.labels_of(257) == db
    sf.save(state)
    again = LocalIdentityStore(sf.load()["identities"])
    assert again.allocate(db) == (257, False)
