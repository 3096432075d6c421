"""BPF_PROG_TEST_RUN cases for cil_xdp_entry (bpf_xdp.c, loadBalancer.acceleration native): a
NodePort request to a local backend is DNATed and passed to tc; to a remote backend with a
resolved next hop it is DNATed, SNATed, routed and sent back out (XDP_TX) without the stack;
without a next hop, in tunnel mode, or not for a service it passes untouched; an established
flow keeps its backend; Maglev agrees with tc; eTP Local without a local backend is a counted
drop. Packets byte for byte, checksums recomputed by scapy."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from datapath import abi, testrun
from datapath.maps import metrics_totals, open_maps

from ..nsfork import run_in_netns
from . import packets as P
from .test_from_netdev_overlay import routed_ns  # noqa: F401  (fixture)
from .test_nat import EXT, NODE_IP, in_pkt, rebuilt, setup
from .test_nodeport import (BPORT, NODE_PORT, REMOTE_POD, frontend, maglev_predict,
                            remote_backend, to_nodeport)


def run(prog, pkt, ifindex=0):
    return testrun.run(prog.fd, pkt, ctx=testrun.xdp_ctx(ifindex) if ifindex else None)


def test_local_backend_is_dnated_and_passed_to_tc(xdp, xdp_entry):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    pkt = to_nodeport()
    res = run(xdp_entry, pkt)
    assert res.retval == abi.XDP_PASS
    testrun.assert_packet(rebuilt(pkt, fields=[(IP, "dst", P.POD_B_IP), (TCP, "dport", BPORT)]),
                          res.data)
    rep = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(EXT), saddr=abi.ip4_to_be32(P.POD_B_IP),
                          dport=abi.be16(51000), sport=abi.be16(BPORT), nexthdr=6,
                          flags=abi.TUPLE_F_IN)
    assert m["cilium_ct4_global"].get(rep).flags & abi.CT_F_NODEPORT


def test_established_flow_keeps_its_backend(xdp, xdp_entry):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_A_IP, BPORT), (2, P.POD_B_IP, BPORT)])
    first = Ether(run(xdp_entry, to_nodeport(sport=51100)).data)[IP].dst
    for _ in range(10):
        assert Ether(run(xdp_entry, to_nodeport(sport=51100, flags="A")).data)[IP].dst == first


def test_udp_checksum_updated_and_a_zero_checksum_stays_zero(xdp, xdp_entry):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)], proto=17)
    pkt = to_nodeport(proto="udp")
    res = run(xdp_entry, pkt)
    testrun.assert_packet(rebuilt(pkt, fields=[(IP, "dst", P.POD_B_IP), (UDP, "dport", BPORT)]),
                          res.data)
    raw = pkt.copy()
    raw[UDP].sport = 51200
    raw[UDP].chksum = 0
    raw = Ether(bytes(raw))
    out = Ether(run(xdp_entry, raw).data)
    assert out[UDP].chksum == 0 and out[IP].dst == P.POD_B_IP


def _remote(m, node_flags=None):
    """A NodePort service whose one backend is on k8s-w1; node_flags: the routing mode."""
    if node_flags is not None:
        m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
            flags=node_flags, node_ip=abi.ip4_to_be32(NODE_IP)))
    remote_backend(m)
    frontend(m, [(1, REMOTE_POD, BPORT)])


def passes_untouched(prog, pkt):
    res = run(prog, pkt)
    assert res.retval == abi.XDP_PASS
    testrun.assert_packet(pkt, res.data)


def _run_on_eth1(fd, pkt):
    import socket
    res = testrun.run(fd, pkt, ctx=testrun.xdp_ctx(socket.if_nametoindex("eth1")))
    return res.retval, res.data


def test_remote_backend_is_natted_routed_and_sent_back_out(xdp, xdp_entry, routed_ns):  # noqa: F811
    m = setup(xdp, masquerade=False)
    _remote(m, abi.NODE_CFG_F_HOST_ROUTING)
    pkt = to_nodeport(sport=51300)
    retval, data = run_in_netns(routed_ns, _run_on_eth1, xdp_entry.fd, bytes(pkt))
    assert retval == abi.XDP_TX
    out = Ether(data)
    nat_port = out[TCP].sport
    assert abi.NODEPORT_PORT_MIN_NAT <= nat_port <= abi.NODEPORT_PORT_MAX_NAT
    want = rebuilt(pkt, fields=[(IP, "dst", REMOTE_POD), (TCP, "dport", BPORT),
                                (IP, "src", NODE_IP), (TCP, "sport", nat_port)],
                   macs=(P.NODE_CTR_MAC, P.NODE_W1_MAC), ttl_dec=True)
    testrun.assert_packet(want, data)
    assert metrics_totals(m["cilium_metrics"])[(abi.REASON_FORWARDED, abi.METRIC_INGRESS)][0] == 1
    # the reverse mapping is in place for tc to translate the backend's reply
    rtuple = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(NODE_IP), saddr=abi.ip4_to_be32(REMOTE_POD),
                             dport=abi.be16(nat_port), sport=abi.be16(BPORT), nexthdr=6,
                             flags=1)
    rev = m["cilium_snat_v4_external"].get(rtuple)
    assert abi.be32_to_ip4(rev.to_addr) == EXT and abi.be16(rev.to_port) == 51300


def test_remote_backend_without_a_next_hop_passes_untouched_for_tc(xdp, xdp_entry):
    m = setup(xdp, masquerade=False)
    _remote(m, abi.NODE_CFG_F_HOST_ROUTING)
    passes_untouched(xdp_entry, to_nodeport(sport=51400))
    svc = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(NODE_IP), saddr=abi.ip4_to_be32(EXT),
                          dport=abi.be16(NODE_PORT), sport=abi.be16(51400), nexthdr=6,
                          flags=abi.TUPLE_F_SERVICE)
    assert m["cilium_ct4_global"].get(svc).backend_id == 1    # tc will pick the same backend


def test_tunnel_mode_leaves_remote_backends_to_tc(xdp, xdp_entry):
    _remote(setup(xdp, masquerade=False), abi.NODE_CFG_F_TUNNEL)
    passes_untouched(xdp_entry, to_nodeport(sport=51500))


def test_etp_local_without_a_local_backend_is_a_counted_drop(xdp, xdp_entry):
    m = setup(xdp, masquerade=False)
    frontend(m, [], flags=abi.SVC_FLAG_NODEPORT | abi.SVC_FLAG_ROUTABLE |
             abi.SVC_FLAG_EXT_LOCAL_SCOPE)
    pkt = to_nodeport()
    assert run(xdp_entry, pkt).retval == abi.XDP_DROP
    assert metrics_totals(m["cilium_metrics"])[(abi.DROP_NO_SERVICE, abi.METRIC_INGRESS)] == \
        (1, len(pkt))


@pytest.mark.parametrize("pkt", [
    in_pkt(EXT, NODE_IP, TCP(sport=51600, dport=22, flags="S")),                # not a service
    in_pkt(EXT, P.POD_B_IP, TCP(sport=51601, dport=80)),                        # a pod
    Ether(bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=NODE_IP))),           # ARP
    Ether(bytes(Ether() / IP(src=EXT, dst=NODE_IP, options=b"\x01\x01\x01\x00")
                / TCP(sport=51602, dport=NODE_PORT))),                          # IP options
], ids=["no-service", "pod", "arp", "ip-options"])
def test_everything_else_passes_untouched(xdp, xdp_entry, pkt):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    passes_untouched(xdp_entry, pkt)
    assert not list(m["cilium_ct4_global"].items())


def test_maglev_in_xdp_picks_what_tc_picks(xdp, xdp_entry):
    from agent.lb import maglev
    m = setup(xdp, masquerade=False)
    backends = [(1, P.POD_A_IP, BPORT), (2, P.POD_B_IP, BPORT)]
    frontend(m, backends, algo=abi.LB_ALGORITHM_MAGLEV)
    table = maglev.build_table([(b, maglev.backend_key(ip, p), 1) for b, ip, p in backends],
                               abi.LB_MAGLEV_LUT_SIZE)
    m["cilium_lb4_maglev"].update(abi.Lb4ReverseNatKey(21),
                                  abi.Lb4MaglevLut.from_bytes(abi.maglev_lut_bytes(table)))
    ips = dict((b, ip) for b, ip, _ in backends)
    for sport in range(51700, 51720):
        got = Ether(run(xdp_entry, to_nodeport(sport=sport)).data)[IP].dst
        assert got == ips[maglev_predict(table, EXT, sport, NODE_PORT)]
    assert len(list(open_maps(xdp)["cilium_ct4_global"].items())) == 2 * 20   # service + reply


def test_client_ip_affinity_holds_in_xdp(xdp, xdp_entry):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_A_IP, BPORT), (2, P.POD_B_IP, BPORT)])
    key = abi.Lb4Key(address=abi.ip4_to_be32(NODE_IP), dport=abi.be16(NODE_PORT), proto=6)
    head = m["cilium_lb4_services_v2"].get(key)
    head.flags |= abi.SVC_FLAG_AFFINITY
    head.backend_id |= 60                                  # timeout 60 s
    m["cilium_lb4_services_v2"].update(key, head)
    picks = {Ether(run(xdp_entry, to_nodeport(sport=51800 + i)).data)[IP].dst for i in range(20)}
    assert len(picks) == 1                                 # 20 flows, one client, one backend
    aff = m["cilium_lb4_affinity"].get(abi.Lb4AffinityKey(client_ip=abi.ip4_to_be32(EXT),
                                                          rev_nat_id=21))
    assert aff is not None and aff.backend_id in (1, 2)


def test_icmp_error_about_a_flow_passes_to_tc_untouched(xdp, xdp_entry):
    from scapy.layers.inet import ICMP
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    quoted = IP(src=NODE_IP, dst=EXT) / UDP(sport=NODE_PORT, dport=51900)
    passes_untouched(xdp_entry, in_pkt(EXT, NODE_IP, ICMP(type=3, code=3) / bytes(quoted)))
