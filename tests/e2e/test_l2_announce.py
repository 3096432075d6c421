"""L2 announcements end to end on a lab of their own: a LoadBalancer IP from a pool inside the
node LAN is answered by exactly one node's XDP responder (seen from the router with real ARP
requests), ext reaches a webpod through it, and when that node's agent stops another node
answers within 10 s."""
from __future__ import annotations

import json
import os

import pytest

from agent.lab.topology import TOPOLOGIES

from .conftest import built_lab, copy_manifests, wait_for

NODES = ("k8s-ctr", "k8s-w1", "k8s-w2")
ROUTER, ROUTER_LAN_IP = "k8s-rtr", "192.168.10.200"
LEASES = {"enabled": True, "leaseDuration": 5, "leaseRenewDeadline": 2, "leaseRetryPeriod": 1}
L2_MANIFESTS = """apiVersion: cilium.io/v2alpha1
kind: CiliumLoadBalancerIPPool
metadata: {name: lan-pool}
spec:
  blocks: [{start: 192.168.10.240, stop: 192.168.10.250}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: default, labels: {announce: l2}}
spec:
  type: LoadBalancer
  selector: {app: webpod}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: cilium.io/v2alpha1
kind: CiliumL2AnnouncementPolicy
metadata: {name: lan}
spec:
  interfaces: ["^eth[0-9]+"]
  loadBalancerIPs: true
  externalIPs: true
  serviceSelector: {matchLabels: {announce: l2}}
"""
# who-has for an address, sent from the router's LAN interface; every answer within the
# (bounded) wait is kept, so two nodes answering would show as two
ARP_ASK = """
import json, sys
from scapy.all import ARP, Ether, get_if_addr, get_if_hwaddr, get_if_list, srp
target, src = sys.argv[1], sys.argv[2]
iface = next(i for i in get_if_list() if get_if_addr(i) == src)
mac = get_if_hwaddr(iface)
ans, _ = srp(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=src, pdst=target),
             iface=iface, timeout=2, multi=True, verbose=0)
print(json.dumps([r[ARP].hwsrc for _, r in ans]))
"""


@pytest.fixture(scope="module")
def l2lab(privileged, tmp_path_factory):
    mdir = copy_manifests(tmp_path_factory.mktemp("m-l2"))
    (mdir / "l2.yaml").write_text(L2_MANIFESTS)
    with built_lab(f"l{os.getpid() % 10000}2", mdir, str(TOPOLOGIES / "default.yaml"), "native",
                   {"l2announcements": LEASES}) as h:
        yield h


def arp_answers(lab, ip: str) -> list[str]:
    return json.loads(lab.py(ROUTER, ARP_ASK, ip, ROUTER_LAN_IP).stdout)


def eth1_mac(lab, node: str) -> str:
    return json.loads(lab.run(node, "ip", "-j", "link", "show", "eth1").stdout)[0]["address"]


def lb_frontend(lab, node: str) -> dict | None:
    return next((s for s in lab.client(node).get("/v1/service")
                 if s["service"] == "default/web-lb" and s["type"] == "LoadBalancer"), None)


def agreed_leader(lab, nodes) -> str | None:
    """The leader every running agent names for web-lb, once they agree."""
    seen = {(lb_frontend(lab, n) or {}).get("l2Leader") for n in nodes}
    return seen.pop() if len(seen) == 1 and None not in seen else None


def test_one_node_answers_arp_for_the_lb_ip_and_another_takes_over(l2lab):
    fe = wait_for(lambda: lb_frontend(l2lab, "k8s-ctr"), what="the LoadBalancer frontend")
    lb_ip = fe["frontend"].split(":")[0]
    assert lb_ip == "192.168.10.240"
    macs = {n: eth1_mac(l2lab, n) for n in NODES}
    leader = wait_for(lambda: agreed_leader(l2lab, NODES), what="one agreed L2 leader")
    assert arp_answers(l2lab, lb_ip) == [macs[leader]]
    assert arp_answers(l2lab, "192.168.10.249") == []          # in the pool, not allocated

    # ext reaches a webpod through the announced address (the router resolved it by ARP)
    out = l2lab.run("ext", "curl", "-s", "-m", "5", f"http://{lb_ip}/", check=False).stdout
    assert "Hostname: webpod-" in out
    neigh = l2lab.run(ROUTER, "ip", "-j", "neigh", "show", lb_ip).stdout
    assert [n["lladdr"] for n in json.loads(neigh)] == [macs[leader]]

    responses = "cilium_l2_responder_v4"
    counted = sum(int.from_bytes(v, "little")
                  for v in l2lab.pinned_map(responses, leader).values())
    assert counted >= 2                       # our two probes at least, plus the router's own

    l2lab.lab.stop_agent(leader)
    try:
        others = [n for n in NODES if n != leader]
        # the stopped agent revoked its lease: another node answers, within 10 s
        answers = wait_for(lambda: (lambda a: a if len(a) == 1 and a[0] != macs[leader]
                                    else None)(arp_answers(l2lab, lb_ip)),
                           timeout=10, interval=0, what="another node to answer")
        new_leader = next(n for n in others if macs[n] == answers[0])
        assert agreed_leader(l2lab, others) == new_leader
        assert l2lab.pinned_map(responses, leader) == {}      # the stopped node let go
    finally:
        l2lab.lab.up()                        # restarts the stopped agent
    wait_for(lambda: agreed_leader(l2lab, NODES) == new_leader,
             what="the restarted agent to follow the new leader")
    assert arp_answers(l2lab, lb_ip) == [macs[new_leader]]
