"""BPF_PROG_TEST_RUN cases for spoofing from a pod (issue 12): cil_from_container drops a packet
that does not speak for its endpoint, with Cilium's reason, counted in cilium_metrics (EGRESS)
and reported on cilium_events: an IPv4 source that is not the pod's (another pod's, its node's,
another node's, an outside address) is DROP_INVALID_SIP; a source MAC that is not the pod's is
DROP_INVALID_SMAC; ARP whose sender IP or MAC is not the pod's (a gratuitous ARP for another
pod's IP, a reply as the gateway) the same two reasons, and never reaches the node's stack. The
pod's own frames, and the 0.0.0.0 sender of a duplicate-address probe, still pass."""
from __future__ import annotations

import pytest

from datapath import abi, events, testrun
from datapath.maps import open_maps, metrics_totals

from . import packets as P
from .conftest import event_ring
from .endpoints import add_endpoint, set_sender

SIP, SMAC = abi.DROP_INVALID_SIP, abi.DROP_INVALID_SMAC


@pytest.fixture
def node(lxc):
    """Pod A (sender, on lo's ifindex) and pod B registered as local endpoints (allow-all)."""
    maps = open_maps(lxc)
    add_endpoint(maps, P.POD_A_IP, ifindex=P.LXC_A_IFINDEX, lxc_id=P.EP_A, mac=P.POD_A_MAC,
                 node_mac=P.LXC_A_MAC, sec_id=P.ID_A)
    add_endpoint(maps, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=P.EP_B, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=P.ID_B)
    set_sender(maps, P.POD_A_IP, P.LXC_A_IFINDEX)
    return maps


def run(from_container, pkt):
    return testrun.run(from_container.fd, pkt, ctx=testrun.tc_ctx(P.LXC_A_IFINDEX))


def counters(maps) -> dict:
    """{(reason, direction): (packets, bytes)} of every non-empty cilium_metrics slot."""
    return {k: v for k, v in metrics_totals(maps["cilium_metrics"]).items() if v[0]}


SPOOFS = {
    "ip-of-another-pod": (P.POD_A_AS_POD_B_IP, SIP),
    "ip-of-another-pod-to-it": (P.POD_A_AS_POD_B_IP_TO_POD_B, SIP),
    "ip-of-its-node": (P.POD_A_AS_NODE_IP, SIP),
    "ip-of-another-node": (P.POD_A_AS_OTHER_NODE_IP, SIP),
    "outside-ip": (P.POD_A_AS_OUTSIDE_IP, SIP),
    "mac-of-another-pod": (P.POD_A_WITH_POD_B_MAC, SMAC),
    "made-up-mac": (P.POD_A_WITH_SPOOF_MAC, SMAC),
    "mac-and-ip-of-another-pod": (P.POD_A_WITH_POD_B_MAC_AND_IP, SMAC),
    "garp-for-another-pods-ip": (P.GARP_POD_A_CLAIMS_POD_B_IP, SIP),
    "garp-reply-for-another-pods-ip": (P.GARP_REPLY_POD_A_CLAIMS_POD_B_IP, SIP),
    "garp-ieee802-for-another-pods-ip": (P.GARP_IEEE802_POD_A_CLAIMS_POD_B_IP, SIP),
    "arp-reply-as-the-gateway": (P.ARP_REPLY_POD_A_AS_GATEWAY, SIP),
    "arp-request-as-another-pod": (P.ARP_WHO_HAS_GATEWAY_AS_POD_B_IP, SIP),
    "arp-sender-mac-of-another-pod": (P.ARP_POD_A_IP_AT_POD_B_MAC, SMAC),
    "arp-sender-made-up-mac": (P.ARP_POD_A_IP_AT_SPOOF_MAC, SMAC),
    "arp-ethernet-source-of-another-pod": (P.ARP_FROM_POD_B_ETH_MAC, SMAC),
}


@pytest.mark.parametrize("pkt,reason", SPOOFS.values(), ids=SPOOFS.keys())
def test_spoofed_packet_dropped_counted_and_reported(node, lxc, from_container, pkt, reason):
    event_ring(lxc).poll(0)
    res = run(from_container, pkt)
    assert res.retval == abi.CTX_ACT_DROP
    # counted once, under that reason only, leaving the pod (EGRESS); nothing forwarded
    assert counters(node) == {(reason, abi.METRIC_EGRESS): (1, len(pkt))}
    drops = [e for e in map(events.decode, event_ring(lxc).poll(0))
             if isinstance(e, events.DropEvent)]
    assert [(d.reason, d.reason_desc, d.direction, d.hook) for d in drops] == \
        [(reason, abi.reason_string(reason), "egress", "from-container")]


def test_reasons_carry_ciliums_strings():
    assert abi.reason_string(abi.DROP_INVALID_SIP) == "Invalid source ip"
    assert abi.reason_string(abi.DROP_INVALID_SMAC) == "Invalid source mac"


GENUINE = {
    "udp-out": (P.POD_A_UDP_OUT, abi.CTX_ACT_OK),
    "garp-for-its-own-ip": (P.GARP_POD_A_OWN_IP, abi.CTX_ACT_OK),
    "arp-probe-from-0.0.0.0": (P.ARP_PROBE_OWN_IP, abi.CTX_ACT_OK),
    "arp-for-the-gateway": (P.ARP_WHO_HAS_GATEWAY, abi.CTX_ACT_REDIRECT),
}


@pytest.mark.parametrize("pkt,verdict", GENUINE.values(), ids=GENUINE.keys())
def test_the_pods_own_frames_still_pass(node, from_container, pkt, verdict):
    res = run(from_container, pkt)
    assert res.retval == verdict
    if verdict == abi.CTX_ACT_OK:
        testrun.assert_packet(pkt, res.data)        # to the node's stack, untouched
    assert counters(node) == {(abi.REASON_FORWARDED, abi.METRIC_EGRESS): (1, len(pkt))}


def test_a_spoof_is_judged_per_packet(node, from_container):
    """Spoofed frames between genuine ones: each counted by itself, the genuine still pass."""
    seq = [P.POD_A_UDP_OUT, P.POD_A_AS_POD_B_IP, P.GARP_POD_A_CLAIMS_POD_B_IP,
           P.POD_A_WITH_SPOOF_MAC, P.POD_A_UDP_OUT]
    verdicts = [run(from_container, p).retval for p in seq]
    assert verdicts == [abi.CTX_ACT_OK, abi.CTX_ACT_DROP, abi.CTX_ACT_DROP, abi.CTX_ACT_DROP,
                        abi.CTX_ACT_OK]
    got = counters(node)
    assert got[(SIP, abi.METRIC_EGRESS)][0] == 2 and got[(SMAC, abi.METRIC_EGRESS)][0] == 1
    assert got[(abi.REASON_FORWARDED, abi.METRIC_EGRESS)][0] == 2
