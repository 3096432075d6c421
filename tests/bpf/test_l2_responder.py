"""BPF_PROG_TEST_RUN cases for cil_xdp_entry's L2 responder: the router's ARP request for a
LoadBalancer IP announced on the receiving device is answered in place (XDP_TX, the exact reply,
responses_sent counted, and counted as forwarded); everything else passes to tc untouched and
counts nothing. With XDP for L2 announcements only, NodePort requests are left to tc."""
from __future__ import annotations

import time

import pytest

from datapath import abi, testrun
from datapath.maps import metrics_totals, open_maps

from . import packets as P

ETH1_IFINDEX = 1          # lo: XDP test-runs need an ifindex that exists in the test's netns
OTHER_IFINDEX = 77        # a device the address is announced on, but not the receiving one


@pytest.fixture
def announced(xdp):
    """k8s-ctr announces LB_IP on "eth1" (lo's ifindex here), with a fresh agent heartbeat."""
    maps = open_maps(xdp)
    maps["dp_netdev"].update(abi.U32Key(ETH1_IFINDEX),
                             abi.NetdevInfo(mac=abi.mac_to_bytes(P.NODE_CTR_MAC)))
    maps["cilium_l2_responder_v4"].update(abi.l2_responder_key(P.LB_IP, ETH1_IFINDEX),
                                          abi.L2ResponderV4Stats())
    heartbeat(maps, age_s=0, max_age_s=60)
    return maps


def heartbeat(maps, *, age_s: float, max_age_s: float) -> None:
    maps["dp_agent_liveness"].update(abi.U32Key(0), abi.AgentLiveness(
        last_seen=time.monotonic_ns() - int(age_s * 1e9), max_age=int(max_age_s * 1e9)))


def run(xdp_entry, pkt, ifindex=ETH1_IFINDEX):
    return testrun.run(xdp_entry.fd, pkt, ctx=testrun.xdp_ctx(ifindex))


def responses(maps, ip=P.LB_IP, ifindex=ETH1_IFINDEX) -> int:
    v = maps["cilium_l2_responder_v4"].get(abi.l2_responder_key(ip, ifindex))
    return v.responses_sent if v else -1


def passed_untouched(xdp_entry, pkt, ifindex=ETH1_IFINDEX) -> None:
    res = run(xdp_entry, pkt, ifindex)
    assert res.retval == abi.XDP_PASS, res.verdict
    testrun.assert_packet(bytes(pkt), res.data)


def test_request_for_announced_ip_answered_with_device_mac(announced, xdp_entry):
    res = run(xdp_entry, P.ARP_WHO_HAS_LB_IP)
    assert res.retval == abi.XDP_TX, res.verdict
    testrun.assert_packet(P.ARP_LB_IP_IS_AT_NODE_CTR, res.data)
    assert responses(announced) == 1
    run(xdp_entry, P.ARP_WHO_HAS_LB_IP)
    assert responses(announced) == 2
    assert metrics_totals(announced["cilium_metrics"]) == {
        (abi.REASON_FORWARDED, abi.METRIC_INGRESS): (2, 2 * len(P.ARP_WHO_HAS_LB_IP))}


@pytest.mark.parametrize("pkt", [P.ARP_WHO_HAS_UNANNOUNCED_IP, P.GRATUITOUS_ARP_LB_IP,
                                 P.ARP_REPLY_LB_IP_FROM_W1, P.ARP_WHO_HAS_LB_IP_TO_OTHER_MAC,
                                 P.OUTSIDE_TO_NODE, P.truncated_arp_for_lb_ip()],
                         ids=["unannounced-ip", "gratuitous", "arp-reply", "unicast-to-other-mac",
                              "ipv4", "truncated"])
def test_anything_else_passes_untouched(announced, xdp_entry, pkt):
    passed_untouched(xdp_entry, pkt)
    assert responses(announced) == 0
    assert metrics_totals(announced["cilium_metrics"]) == {}


def test_address_announced_on_another_device_passes(announced, xdp_entry):
    announced["cilium_l2_responder_v4"].delete(abi.l2_responder_key(P.LB_IP, ETH1_IFINDEX))
    announced["cilium_l2_responder_v4"].update(abi.l2_responder_key(P.LB_IP, OTHER_IFINDEX),
                                               abi.L2ResponderV4Stats())
    passed_untouched(xdp_entry, P.ARP_WHO_HAS_LB_IP)
    assert responses(announced, ifindex=OTHER_IFINDEX) == 0


def test_device_without_a_mac_entry_passes(announced, xdp_entry):
    announced["dp_netdev"].delete(abi.U32Key(ETH1_IFINDEX))
    passed_untouched(xdp_entry, P.ARP_WHO_HAS_LB_IP)
    assert responses(announced) == 0


@pytest.mark.parametrize("age_s, max_age_s", [(10, 5), (0, 0)], ids=["stale", "no-heartbeat"])
def test_no_answer_without_a_live_agent(announced, xdp_entry, age_s, max_age_s):
    heartbeat(announced, age_s=age_s, max_age_s=max_age_s)
    passed_untouched(xdp_entry, P.ARP_WHO_HAS_LB_IP)
    assert responses(announced) == 0
    heartbeat(announced, age_s=0, max_age_s=5)         # the agent is back: answered again
    assert run(xdp_entry, P.ARP_WHO_HAS_LB_IP).retval == abi.XDP_TX
    assert responses(announced) == 1


def test_xdp_for_l2_only_leaves_nodeport_requests_to_tc(xdp, xdp_entry):
    from .test_nat import setup
    from .test_nodeport import BPORT, frontend, to_nodeport
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    cfg = m["dp_node_config"].get(abi.U32Key(0))
    cfg.flags |= abi.NODE_CFG_F_XDP_L2_ONLY
    m["dp_node_config"].update(abi.U32Key(0), cfg)
    passed_untouched(xdp_entry, to_nodeport())
    assert len(m["cilium_ct4_global"]) == 0
