"""Unit tests for agent/lb/l2announce.py: which services and addresses a node may announce, and the
per-service leader election through the kvstore (an in-memory etcd with leases)."""
from __future__ import annotations

import itertools

import pytest

from agent.lb.l2announce import L2Announcer, matching_devices, node_labels, select
from agent.manifests import L2Policy, load_manifests
from datapath.errors import KVStoreError

POOL = """apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata: {name: lan}
spec:
  blocks: [{start: 192.168.10.240, stop: 192.168.10.250}]
"""
WEB_POD = """apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, image: x}]
"""


def svc(name, *, labels=None, type_="LoadBalancer", external_ips=(), etp="Cluster"):
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default, labels: {labels or {}}}}
spec:
  type: {type_}
  selector: {{app: web}}
  externalTrafficPolicy: {etp}
  externalIPs: {list(external_ips)}
  ports: [{{port: 80}}]
"""


def policy(name, **spec):
    body = {"loadBalancerIPs": True, "externalIPs": True, **spec}
    return f"""apiVersion: cilium.io/v2alpha1
kind: CiliumL2AnnouncementPolicy
metadata: {{name: {name}}}
spec: {body}
"""


def manifests(tmp_path, *docs):
    (tmp_path / "all.yaml").write_text("---\n".join(docs))
    return load_manifests(str(tmp_path))


def test_node_labels_carry_the_hostname():
    assert node_labels("k8s-w1") == {"kubernetes.io/hostname": "k8s-w1"}


@pytest.mark.parametrize("interfaces,want", [
    ((), ("eth1", "eth2", "ens3")),
    (("^eth[0-9]+",), ("eth1", "eth2")),
    (("eth2", "ens"), ("eth2", "ens3")),        # searched, as Go's MatchString does
    (("^bond",), ()),
])
def test_interfaces_regexes_pick_native_devices(interfaces, want):
    pol = L2Policy("p", interfaces, True, True, None, None, "f")
    assert matching_devices(pol, ("eth1", "eth2", "ens3")) == want


def test_lb_ip_and_external_ips_of_selected_services(tmp_path):
    m = manifests(tmp_path, POOL, svc("web", external_ips=["198.51.100.7"]),
                  svc("other", type_="ClusterIP", external_ips=["198.51.100.8"]),
                  policy("all", interfaces=["^eth1$"]))
    sel = select(m, "n1", ["eth1", "eth2"])
    assert set(sel) == {"default/web", "default/other"}
    assert sel["default/web"].ips == ("192.168.10.240", "198.51.100.7")
    assert sel["default/web"].devices == ("eth1",)
    assert sel["default/other"].ips == ("198.51.100.8",)       # no LB IP: a ClusterIP service


def test_policy_flags_choose_the_kinds_of_address(tmp_path):
    m = manifests(tmp_path, POOL, svc("web", external_ips=["198.51.100.7"]),
                  policy("lb-only", externalIPs=False))
    assert select(m, "n1", ["eth1"])["default/web"].ips == ("192.168.10.240",)
    m = manifests(tmp_path, POOL, svc("web", external_ips=["198.51.100.7"]),
                  policy("ext-only", loadBalancerIPs=False))
    assert select(m, "n1", ["eth1"])["default/web"].ips == ("198.51.100.7",)
    m = manifests(tmp_path, POOL, svc("web"), policy("none", loadBalancerIPs=False,
                                                     externalIPs=False))
    assert select(m, "n1", ["eth1"]) == {}


def test_service_selector(tmp_path):
    m = manifests(tmp_path, POOL, svc("a", labels={"announce": "yes"}), svc("b"),
                  policy("p", serviceSelector={"matchLabels": {"announce": "yes"}}))
    assert set(select(m, "n1", ["eth1"])) == {"default/a"}


def test_node_selector_by_hostname(tmp_path):
    m = manifests(tmp_path, POOL, svc("web"), policy(
        "p", nodeSelector={"matchLabels": {"kubernetes.io/hostname": "n2"}}))
    assert select(m, "n1", ["eth1"]) == {}
    assert set(select(m, "n2", ["eth1"])) == {"default/web"}


def test_policy_without_a_matching_device_selects_nothing(tmp_path):
    m = manifests(tmp_path, POOL, svc("web"), policy("p", interfaces=["^bond0$"]))
    assert select(m, "n1", ["eth1"]) == {}


def test_two_policies_merge_devices(tmp_path):
    m = manifests(tmp_path, POOL, svc("web"), policy("a", interfaces=["eth1"]),
                  policy("b", interfaces=["eth2"]))
    s = select(m, "n1", ["eth1", "eth2"])["default/web"]
    assert (s.devices, s.policies, s.ips) == (("eth1", "eth2"), ("a", "b"), ("192.168.10.240",))


def test_external_traffic_policy_local_needs_a_local_pod(tmp_path):
    m = manifests(tmp_path, POOL, WEB_POD, svc("web", etp="Local"), policy("p"))
    assert select(m, "n2", ["eth1"]) == {}
    assert set(select(m, "n1", ["eth1"], local_pods=["default/web-1"])) == {"default/web"}


class FakeEtcd:
    """The part of EtcdClient the announcer uses, with leases that expire when told to."""

    def __init__(self):
        self.kv: dict[str, tuple[str, int | None]] = {}
        self.leases: set[int] = set()
        self.ids = itertools.count(100)
        self.down = False

    def _up(self):
        if self.down:
            raise KVStoreError("etcd unreachable")

    def get_prefix(self, prefix):
        self._up()
        return {k: v for k, (v, _) in self.kv.items() if k.startswith(prefix)}

    def txn_create(self, absent, puts, lease=None):
        self._up()
        if any(k in self.kv for k in absent):
            return False
        for k, v in puts:
            self.kv[k] = (v, lease)
        return True

    def delete_if(self, key, value):
        self._up()
        if self.kv.get(key, (None,))[0] == value:
            del self.kv[key]
            return True
        return False

    def lease_grant(self, ttl):
        self._up()
        lid = next(self.ids)
        self.leases.add(lid)
        return lid

    def lease_keepalive(self, lease):
        self._up()
        return 5 if lease in self.leases else 0

    def lease_revoke(self, lease):
        self._up()
        self.expire(lease)

    def expire(self, lease):
        self.leases.discard(lease)
        self.kv = {k: (v, l) for k, (v, l) in self.kv.items() if l != lease}


def announcer(etcd, node):
    return L2Announcer(etcd, "default", node, 5, 2, 1)


KEY = "cilium/state/l2announce/v1/default/default/web"


def test_one_leader_per_service_and_takeover_after_graceful_release():
    etcd = FakeEtcd()
    a, b = announcer(etcd, "n1"), announcer(etcd, "n2")
    for x in (a, b):
        x.set_candidates({"default/web"})
    assert a.step() is True and b.step() is False
    assert (a.mine, b.mine) == ({"default/web"}, set())
    assert b.leaders == {"default/web": "n1"}
    assert etcd.kv[KEY] == ("n1", a.lease)
    a.release()                                   # graceful stop: the lease is revoked
    assert a.mine == set() and KEY not in etcd.kv
    assert b.step() is True and b.mine == {"default/web"}


def test_killed_leaders_lease_expires_and_a_follower_takes_over():
    etcd = FakeEtcd()
    a, b = announcer(etcd, "n1"), announcer(etcd, "n2")
    for x in (a, b):
        x.set_candidates({"default/web"})
    a.step()
    b.step()
    assert b.mine == set()
    etcd.expire(a.lease)                          # n1 is gone; nobody renews its lease
    assert b.step() is True and b.mine == {"default/web"}


def test_a_leader_whose_lease_expired_campaigns_again():
    etcd = FakeEtcd()
    a = announcer(etcd, "n1")
    a.set_candidates({"default/web"})
    a.step()
    old = a.lease
    etcd.expire(old)
    a._renewed -= 10                              # due for renewal: finds the lease gone
    a.step()
    assert a.lease != old and a.mine == {"default/web"} and etcd.kv[KEY] == ("n1", a.lease)


def test_service_no_longer_selected_is_given_up():
    etcd = FakeEtcd()
    a = announcer(etcd, "n1")
    a.set_candidates({"default/web"})
    a.step()
    a.set_candidates(set())
    assert a.step() is True and a.mine == set() and KEY not in etcd.kv


def test_restarted_agent_takes_its_old_key_under_its_new_lease():
    etcd = FakeEtcd()
    first = announcer(etcd, "n1")
    first.set_candidates({"default/web"})
    first.step()                                  # then killed: its lease still runs
    again = announcer(etcd, "n1")
    again.set_candidates({"default/web"})
    again.step()
    assert again.mine == {"default/web"} and etcd.kv[KEY] == ("n1", again.lease)


def test_leader_that_cannot_renew_steps_down_after_the_renew_deadline():
    etcd = FakeEtcd()
    a = announcer(etcd, "n1")
    a.set_candidates({"default/web"})
    a.step()
    etcd.down = True
    with pytest.raises(KVStoreError):
        a._renewed -= 1.5
        a.step()
    assert a.step_down_if_stale() is False and a.mine == {"default/web"}   # 1.5 s < 2 s
    a._renewed -= 1
    assert a.step_down_if_stale() is True and a.mine == set()


def test_without_a_kvstore_the_node_elects_itself():
    a = L2Announcer(None, "default", "n1", 5, 2, 1)
    a.set_candidates({"default/web", "default/api"})
    assert a.mine == {"default/web", "default/api"}
    assert a.leaders == {"default/web": "n1", "default/api": "n1"}
    assert a.step() is False
