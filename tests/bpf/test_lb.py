"""BPF_PROG_TEST_RUN cases for the service load balancer on the from-container path: new flow,
established flow, reply reverse NAT, UDP, no backend, terminating backend, conntrack lifetimes.
Every rewritten packet is compared byte for byte with scapy's, checksums recomputed."""
from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from datapath import abi, testrun
from datapath.maps import metrics_totals, open_maps

from . import packets as P
from .endpoints import add_endpoint, set_sender

VIP, VPORT = "10.96.0.10", 80
BPORT = 8080
REV_NAT = 7


def _ep(maps, ip, mac, lxc_mac, ifindex, ident):
    add_endpoint(maps, ip, ifindex=ifindex, lxc_id=ident - 900, mac=mac, node_mac=lxc_mac,
                 sec_id=ident)


def sender(maps, ip):
    """Make from-container's interface (lo) belong to the endpoint with this address."""
    set_sender(maps, ip, 1)


def add_service(maps, backends, proto=6, vip=VIP, vport=VPORT, active=None, states=None,
                affinity=0):
    """backends: [(backend_id, ip, port)]; the first `active` are in slots 1..active."""
    active = len(backends) if active is None else active
    svc = maps["cilium_lb4_services_v2"]
    key = abi.Lb4Key(address=abi.ip4_to_be32(vip), dport=abi.be16(vport), proto=proto)
    for i, (bid, ip, port) in enumerate(backends):
        state = (states or {}).get(bid, abi.BE_STATE_ACTIVE)
        maps["cilium_lb4_backends_v3"].update(abi.Lb4BackendKey(bid), abi.Lb4Backend(
            address=abi.ip4_to_be32(ip), port=abi.be16(port), proto=proto, flags=state))
    for slot, (bid, _, _) in enumerate(backends[:active], start=1):
        k = abi.Lb4Key.from_bytes(bytes(key))
        k.backend_slot = slot
        svc.update(k, abi.Lb4Service(backend_id=bid, rev_nat_index=REV_NAT))
    svc.update(key, abi.Lb4Service(count=active, rev_nat_index=REV_NAT, backend_id=affinity,
                                   flags=abi.SVC_FLAG_AFFINITY if affinity else 0))
    maps["cilium_lb4_reverse_nat"].update(abi.Lb4ReverseNatKey(REV_NAT), abi.Lb4ReverseNat(
        address=abi.ip4_to_be32(vip), port=abi.be16(vport)))


@pytest.fixture
def maps(lxc):
    m = open_maps(lxc)
    _ep(m, P.POD_A_IP, P.POD_A_MAC, P.LXC_A_MAC, P.LXC_A_IFINDEX, 1000)
    _ep(m, P.POD_B_IP, P.POD_B_MAC, P.LXC_B_MAC, P.LXC_B_IFINDEX, 1001)
    sender(m, P.POD_A_IP)
    return m


def to_vip(sport=40000, flags="S", proto="tcp", payload=b""):
    l4 = TCP(sport=sport, dport=VPORT, flags=flags, seq=1) if proto == "tcp" \
        else UDP(sport=sport, dport=VPORT)
    return Ether(bytes(Ether(src=P.POD_A_MAC, dst=P.LXC_A_MAC)
                       / IP(src=P.POD_A_IP, dst=VIP, ttl=64, id=9) / l4 / payload))


def translated(pkt, dst, dport, src_mac, dst_mac):
    """What delivery of a DNATed packet looks like: new destination, TTL - 1, new MACs."""
    out = pkt.copy()
    out[IP].dst = dst
    out[IP].ttl -= 1
    l4 = out[TCP] if TCP in out else out[UDP]
    l4.dport = dport
    del out[IP].chksum
    if l4.chksum != 0:
        del l4.chksum
    out[Ether].src, out[Ether].dst = src_mac, dst_mac
    return Ether(bytes(out))


def run(prog, pkt):
    return testrun.run(prog.fd, pkt, ctx=testrun.tc_ctx(1))


def ct(maps, name, daddr, saddr, dport, sport, proto, flags):
    t = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(daddr), saddr=abi.ip4_to_be32(saddr),
                        dport=abi.be16(dport), sport=abi.be16(sport), nexthdr=proto, flags=flags)
    return maps[name].get(t)


def test_new_tcp_flow_is_dnated_to_the_backend_byte_for_byte(maps, from_container):
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    pkt = to_vip()
    res = run(from_container, pkt)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(translated(pkt, P.POD_B_IP, BPORT, P.LXC_B_MAC, P.POD_B_MAC), res.data)
    svc = ct(maps, "cilium_ct4_global", VIP, P.POD_A_IP, VPORT, 40000, 6, abi.TUPLE_F_SERVICE)
    assert svc.backend_id == 1 and svc.rev_nat_index == REV_NAT and svc.src_sec_id == 1000
    assert 55 <= svc.lifetime - time.monotonic() <= abi.CT_SYN_TIMEOUT + 1     # SYN: 60 s
    rep = ct(maps, "cilium_ct4_global", P.POD_A_IP, P.POD_B_IP, 40000, BPORT, 6, abi.TUPLE_F_IN)
    assert rep.rev_nat_index == REV_NAT


def test_established_flow_keeps_its_backend_and_new_flows_spread(maps, from_container):
    add_service(maps, [(1, P.POD_B_IP, BPORT), (2, P.POD_C_IP, BPORT)])
    first = Ether(run(from_container, to_vip(sport=41000)).data)[IP].dst
    for _ in range(20):
        assert Ether(run(from_container, to_vip(sport=41000, flags="A")).data)[IP].dst == first
    seen = {Ether(run(from_container, to_vip(sport=42000 + i)).data)[IP].dst for i in range(40)}
    assert seen == {P.POD_B_IP, P.POD_C_IP}
    svc = ct(maps, "cilium_ct4_global", VIP, P.POD_A_IP, VPORT, 41000, 6, abi.TUPLE_F_SERVICE)
    assert svc.lifetime - time.monotonic() > abi.CT_SYN_TIMEOUT     # established: 8000 s
    assert svc.packets == 21


def test_reply_is_reverse_nated_to_the_frontend(maps, from_container):
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    run(from_container, to_vip(sport=43000))
    sender(maps, P.POD_B_IP)                          # now pod B answers from its own veth
    reply = Ether(bytes(Ether(src=P.POD_B_MAC, dst=P.LXC_B_MAC)
                        / IP(src=P.POD_B_IP, dst=P.POD_A_IP, ttl=64, id=10)
                        / TCP(sport=BPORT, dport=43000, flags="SA", seq=5, ack=2)))
    res = run(from_container, reply)
    assert res.retval == abi.CTX_ACT_REDIRECT
    want = reply.copy()
    want[IP].src, want[TCP].sport = VIP, VPORT
    want[IP].ttl -= 1
    del want[IP].chksum, want[TCP].chksum
    want[Ether].src, want[Ether].dst = P.LXC_A_MAC, P.POD_A_MAC
    testrun.assert_packet(Ether(bytes(want)), res.data)


def test_reply_of_an_unrelated_flow_is_untouched(maps, from_container):
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    sender(maps, P.POD_B_IP)
    reply = Ether(bytes(Ether(src=P.POD_B_MAC, dst=P.LXC_B_MAC)
                        / IP(src=P.POD_B_IP, dst=P.POD_A_IP, ttl=64, id=11)
                        / TCP(sport=BPORT, dport=44444, flags="SA")))
    res = run(from_container, reply)
    assert Ether(res.data)[IP].src == P.POD_B_IP and Ether(res.data)[TCP].sport == BPORT


@pytest.mark.parametrize("zero_csum", [False, True])
def test_udp_service(maps, from_container, zero_csum):
    add_service(maps, [(1, P.POD_B_IP, 5353)], proto=17)
    pkt = to_vip(proto="udp", payload=b"question")
    if zero_csum:
        pkt[UDP].chksum = 0
        pkt = Ether(bytes(pkt))
    res = run(from_container, pkt)
    assert res.retval == abi.CTX_ACT_REDIRECT
    out = Ether(res.data)
    testrun.assert_packet(translated(pkt, P.POD_B_IP, 5353, P.LXC_B_MAC, P.POD_B_MAC), res.data)
    assert (out[UDP].chksum == 0) == zero_csum
    entry = ct(maps, "cilium_ct_any4_global", VIP, P.POD_A_IP, VPORT, 40000, 17,
               abi.TUPLE_F_SERVICE)
    assert abi.CT_CONNECTION_LIFETIME_NONTCP - 5 <= entry.lifetime - time.monotonic() <= 61


def test_service_without_backends_drops_158(maps, from_container):
    add_service(maps, [])
    res = run(from_container, to_vip())
    assert res.retval == abi.CTX_ACT_DROP
    assert metrics_totals(maps["cilium_metrics"])[(abi.DROP_NO_SERVICE, abi.METRIC_EGRESS)][0] == 1
    assert abi.reason_string(abi.DROP_NO_SERVICE) == "Service backend not found"


def test_terminating_backend_finishes_flows_but_gets_no_new_ones(maps, from_container):
    # backend 1 was chosen for this flow, then started terminating (out of the slots)
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    run(from_container, to_vip(sport=45000))
    add_service(maps, [(2, P.POD_C_IP, BPORT), (1, P.POD_B_IP, BPORT)], active=1,
                states={1: abi.BE_STATE_TERMINATING})
    assert Ether(run(from_container, to_vip(sport=45000, flags="A")).data)[IP].dst == P.POD_B_IP
    assert Ether(run(from_container, to_vip(sport=46000)).data)[IP].dst == P.POD_C_IP
    # a new SYN on the old tuple is a new connection: it avoids the terminating backend
    assert Ether(run(from_container, to_vip(sport=45000)).data)[IP].dst == P.POD_C_IP


def test_reply_entry_has_the_syn_lifetime_until_the_clients_ack(maps, from_container):
    """A SYN's service and reply entries live 60 s (a SYN flood holds no conntrack state
    longer); the backend's SYN-ACK keeps 60 s; the client's ACK establishes both, the reply
    entry too though only the SYN-ACK passed it (an idle connection keeps its reverse NAT)."""
    add_service(maps, [(1, P.POD_B_IP, BPORT)])

    def entries():
        return (ct(maps, "cilium_ct4_global", VIP, P.POD_A_IP, VPORT, 44100, 6,
                   abi.TUPLE_F_SERVICE),
                ct(maps, "cilium_ct4_global", P.POD_A_IP, P.POD_B_IP, 44100, BPORT, 6,
                   abi.TUPLE_F_IN))

    def syn(e):
        return 55 <= e.lifetime - time.monotonic() <= abi.CT_SYN_TIMEOUT + 1 and \
            not e.flags & abi.CT_F_SEEN_NON_SYN

    def established(e):
        return e.lifetime - time.monotonic() > abi.CT_CONNECTION_LIFETIME_TCP - 10 and \
            bool(e.flags & abi.CT_F_SEEN_NON_SYN)

    run(from_container, to_vip(sport=44100))
    assert all(map(syn, entries()))
    sender(maps, P.POD_B_IP)
    synack = Ether(bytes(Ether(src=P.POD_B_MAC, dst=P.LXC_B_MAC)
                         / IP(src=P.POD_B_IP, dst=P.POD_A_IP, ttl=64)
                         / TCP(sport=BPORT, dport=44100, flags="SA", seq=5, ack=2)))
    assert run(from_container, synack).retval == abi.CTX_ACT_REDIRECT
    assert all(map(syn, entries()))
    sender(maps, P.POD_A_IP)
    run(from_container, to_vip(sport=44100, flags="A"))
    assert all(map(established, entries()))


def test_fin_closes_the_entry(maps, from_container):
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    run(from_container, to_vip(sport=47000))
    run(from_container, to_vip(sport=47000, flags="A"))
    run(from_container, to_vip(sport=47000, flags="FA"))
    svc = ct(maps, "cilium_ct4_global", VIP, P.POD_A_IP, VPORT, 47000, 6, abi.TUPLE_F_SERVICE)
    assert svc.lifetime - time.monotonic() <= abi.CT_CLOSE_TIMEOUT + 1


def test_syn_on_a_closed_flow_reopens_it_with_its_backend(maps, from_container):
    """A new connection from the same client port after both sides closed (a SYN without ACK
    meeting closing entries): the service and reply entries start over with the SYN lifetime,
    instead of a new connection living on the close timeout (and losing its backend to the GC
    once idle for 10 s)."""
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    run(from_container, to_vip(sport=47100))
    run(from_container, to_vip(sport=47100, flags="A"))
    run(from_container, to_vip(sport=47100, flags="FA"))
    sender(maps, P.POD_B_IP)
    fin = Ether(bytes(Ether(src=P.POD_B_MAC, dst=P.LXC_B_MAC)
                      / IP(src=P.POD_B_IP, dst=P.POD_A_IP, ttl=64)
                      / TCP(sport=BPORT, dport=47100, flags="FA", seq=5, ack=2)))
    assert run(from_container, fin).retval == abi.CTX_ACT_REDIRECT
    closing = abi.CT_F_RX_CLOSING | abi.CT_F_TX_CLOSING

    def entries():
        return (ct(maps, "cilium_ct4_global", VIP, P.POD_A_IP, VPORT, 47100, 6,
                   abi.TUPLE_F_SERVICE),
                ct(maps, "cilium_ct4_global", P.POD_A_IP, P.POD_B_IP, 47100, BPORT, 6,
                   abi.TUPLE_F_IN))
    svc, rep = entries()
    assert svc.flags & closing == closing and rep.flags & closing == closing
    assert svc.lifetime - time.monotonic() <= abi.CT_CLOSE_TIMEOUT + 1
    sender(maps, P.POD_A_IP)
    pkt = to_vip(sport=47100)
    res = run(from_container, pkt)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(translated(pkt, P.POD_B_IP, BPORT, P.LXC_B_MAC, P.POD_B_MAC), res.data)
    svc, rep = entries()
    assert svc.flags & closing == 0 and rep.flags & closing == 0
    assert svc.backend_id == rep.backend_id == 1
    assert abi.CT_CLOSE_TIMEOUT + 5 < svc.lifetime - time.monotonic() <= abi.CT_SYN_TIMEOUT + 1
    assert rep.lifetime - time.monotonic() > abi.CT_CLOSE_TIMEOUT + 5
    run(from_container, to_vip(sport=47100, flags="A"))           # and it establishes again
    assert entries()[0].lifetime - time.monotonic() > abi.CT_SYN_TIMEOUT


def test_non_service_traffic_is_not_tracked(maps, from_container):
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    run(from_container, P.POD_A_TO_POD_B_TCP_SYN)
    # only policy's own entries (A's egress, B's ingress): no service or reply entry
    flags = sorted(k.flags for k, _ in maps["cilium_ct4_global"].items())
    assert flags == [abi.TUPLE_F_POLICY | abi.TUPLE_F_OUT, abi.TUPLE_F_POLICY | abi.TUPLE_F_IN]


def test_hairpin_pod_reaches_itself_through_its_service(maps, from_container):
    add_service(maps, [(1, P.POD_A_IP, BPORT)])
    pkt = to_vip(sport=48000)
    res = run(from_container, pkt)
    assert res.retval == abi.CTX_ACT_REDIRECT
    want = translated(pkt, P.POD_A_IP, BPORT, P.LXC_A_MAC, P.POD_A_MAC)
    want[IP].src = "169.254.42.1"                    # Cilium's IPV4_LOOPBACK
    del want[IP].chksum, want[TCP].chksum
    testrun.assert_packet(Ether(bytes(want)), res.data)
    # the pod answers the loopback address; it gets the frontend back, addressed to itself
    reply = Ether(bytes(Ether(src=P.POD_A_MAC, dst=P.LXC_A_MAC)
                        / IP(src=P.POD_A_IP, dst="169.254.42.1", ttl=64, id=12)
                        / TCP(sport=BPORT, dport=48000, flags="SA")))
    res = run(from_container, reply)
    assert res.retval == abi.CTX_ACT_REDIRECT
    back = reply.copy()
    back[IP].src, back[IP].dst, back[TCP].sport = VIP, P.POD_A_IP, VPORT
    back[IP].ttl -= 1
    del back[IP].chksum, back[TCP].chksum
    back[Ether].src, back[Ether].dst = P.LXC_A_MAC, P.POD_A_MAC
    testrun.assert_packet(Ether(bytes(back)), res.data)


def test_conntrack_gc_deletes_only_expired_entries(maps, from_container):
    from agent import ctgc
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    add_service(maps, [(2, P.POD_B_IP, 5353)], proto=17)
    # each flow: service + reply entries, and policy's (A's egress, B's ingress)
    run(from_container, to_vip(sport=49000))                   # TCP: four
    run(from_container, to_vip(sport=49001, proto="udp"))      # UDP: four more
    now = time.monotonic()
    assert ctgc.collect(maps, now) == {"TCP": (4, 0), "non-TCP": (4, 0)}
    # past the SYN and non-TCP lifetimes: a SYN's reply entry goes with the rest (a half-open
    # flow holds nothing longer than 60 s)
    assert ctgc.collect(maps, now + 120) == {"TCP": (0, 4), "non-TCP": (0, 4)}
    assert len(maps["cilium_ct4_global"]) == 0
    # an established flow's entries live on until the TCP lifetime
    run(from_container, to_vip(sport=49002))
    run(from_container, to_vip(sport=49002, flags="A"))
    now = time.monotonic()
    assert ctgc.collect(maps, now + 120) == {"TCP": (4, 0), "non-TCP": (0, 0)}
    assert ctgc.collect(maps, now + abi.CT_CONNECTION_LIFETIME_TCP + 5) == \
        {"TCP": (0, 4), "non-TCP": (0, 0)}


def test_gc_interval_adapts_like_ciliums():
    from agent import ctgc
    assert ctgc.next_interval(300, 0.5) == 150            # many deletions: sooner
    assert ctgc.next_interval(300, 0.01) == 450           # few: later
    assert ctgc.next_interval(11, 0.95) == ctgc.MIN
    assert ctgc.next_interval(ctgc.MAX, 0.0) == ctgc.MAX


def test_client_ip_affinity_pins_new_flows_until_the_timeout(maps, from_container):
    add_service(maps, [(1, P.POD_B_IP, BPORT), (2, P.POD_C_IP, BPORT)], affinity=30)
    first = Ether(run(from_container, to_vip(sport=50000)).data)[IP].dst
    for i in range(1, 30):                     # thirty different flows, one backend
        assert Ether(run(from_container, to_vip(sport=50000 + i)).data)[IP].dst == first
    aff = maps["cilium_lb4_affinity"]
    (key, val), = list(aff.items())
    assert abi.be32_to_ip4(key.client_ip) == P.POD_A_IP and key.rev_nat_id == REV_NAT
    # once last use is older than the timeout, the next flow is free to go anywhere again
    val.last_used -= 31
    aff.update(key, val)
    seen = {Ether(run(from_container, to_vip(sport=51000 + i)).data)[IP].dst for i in range(30)}
    assert len(seen) == 1                      # re-pinned to whichever it picked first


def test_affinity_backend_that_stops_being_active_is_not_used(maps, from_container):
    add_service(maps, [(1, P.POD_B_IP, BPORT)], affinity=30)
    run(from_container, to_vip(sport=52000))
    add_service(maps, [(2, P.POD_C_IP, BPORT), (1, P.POD_B_IP, BPORT)], active=1,
                states={1: abi.BE_STATE_TERMINATING}, affinity=30)
    assert Ether(run(from_container, to_vip(sport=52001)).data)[IP].dst == P.POD_C_IP


def test_without_affinity_no_affinity_state(maps, from_container):
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    run(from_container, to_vip(sport=53000))
    assert len(maps["cilium_lb4_affinity"]) == 0


def test_icmp_port_unreachable_from_a_backend_is_translated_back(maps, from_container):
    from scapy.layers.inet import ICMP, IPerror, UDPerror
    add_service(maps, [(1, P.POD_B_IP, 5353)], proto=17)
    run(from_container, to_vip(sport=40000, proto="udp", payload=b"question"))
    # what pod B's kernel sends when nothing listens on 5353: it quotes the DNATed datagram
    quoted = bytes(IP(src=P.POD_A_IP, dst=P.POD_B_IP, ttl=63, id=9)
                   / UDP(sport=40000, dport=5353) / b"question")
    sender(maps, P.POD_B_IP)
    err = Ether(bytes(Ether(src=P.POD_B_MAC, dst=P.LXC_B_MAC)
                      / IP(src=P.POD_B_IP, dst=P.POD_A_IP, ttl=64, id=20)
                      / ICMP(type=3, code=3) / quoted))
    res = run(from_container, err)
    assert res.retval == abi.CTX_ACT_REDIRECT
    inner = IPerror(quoted)
    inner.dst = VIP
    inner[UDPerror].dport = VPORT
    del inner.chksum                                  # the inner IP checksum is recomputed
    del inner[UDPerror].chksum                        # and the inner UDP checksum
    want = (Ether(src=P.LXC_A_MAC, dst=P.POD_A_MAC)
            / IP(src=VIP, dst=P.POD_A_IP, ttl=63, id=20) / ICMP(type=3, code=3)
            / IPerror(bytes(inner)))
    testrun.assert_packet(Ether(bytes(want)), res.data)
    out = Ether(res.data)
    assert out[IPerror].dst == VIP and out[UDPerror].dport == VPORT


def test_icmp_error_about_an_unrelated_flow_is_untouched(maps, from_container):
    from scapy.layers.inet import ICMP
    add_service(maps, [(1, P.POD_B_IP, 5353)], proto=17)
    sender(maps, P.POD_B_IP)
    quoted = bytes(IP(src=P.POD_A_IP, dst=P.POD_B_IP, ttl=63) / UDP(sport=1, dport=5353))
    err = Ether(bytes(Ether(src=P.POD_B_MAC, dst=P.LXC_B_MAC)
                      / IP(src=P.POD_B_IP, dst=P.POD_A_IP, ttl=64, id=21)
                      / ICMP(type=3, code=3) / quoted))
    res = run(from_container, err)
    testrun.assert_packet(P.routed(err, src_mac=P.LXC_A_MAC, dst_mac=P.POD_A_MAC), res.data)


def test_direct_flow_on_a_former_service_tuple_drops_the_stale_reply_entry(maps,
                                                                          from_container):
    """A pod that talked to a backend through the service and then connects to the backend's
    own address from the same source port: the backend's replies must not come back as the
    frontend (the old flow's reply entry goes on the new flow's SYN)."""
    add_service(maps, [(1, P.POD_B_IP, BPORT)])
    run(from_container, to_vip(sport=44000))
    rep = (P.POD_A_IP, P.POD_B_IP, 44000, BPORT, 6, abi.TUPLE_F_IN)
    assert ct(maps, "cilium_ct4_global", *rep) is not None
    direct = Ether(bytes(Ether(src=P.POD_A_MAC, dst=P.LXC_A_MAC)
                         / IP(src=P.POD_A_IP, dst=P.POD_B_IP) / TCP(sport=44000, dport=BPORT,
                                                                    flags="S")))
    run(from_container, direct)
    assert ct(maps, "cilium_ct4_global", *rep) is None
    sender(maps, P.POD_B_IP)
    reply = Ether(bytes(Ether(src=P.POD_B_MAC, dst=P.LXC_B_MAC)
                        / IP(src=P.POD_B_IP, dst=P.POD_A_IP, ttl=64)
                        / TCP(sport=BPORT, dport=44000, flags="SA")))
    assert Ether(run(from_container, reply).data)[IP].src == P.POD_B_IP    # not the VIP


def test_a_service_packet_cut_inside_its_l4_header_is_dropped_without_conntrack(
        lxc, from_container):
    """Found by the fuzzer (tests/bpf/fuzz.py): a datagram to a ClusterIP whose UDP header ends
    after the ports is dropped as a truncated header before the service makes any entry."""
    from . import services
    m = open_maps(lxc)
    _ep(m, P.POD_A_IP, P.POD_A_MAC, P.LXC_A_MAC, P.LXC_A_IFINDEX, 1000)
    _ep(m, P.POD_B_IP, P.POD_B_MAC, P.LXC_B_MAC, P.LXC_B_IFINDEX, 1001)
    sender(m, P.POD_A_IP)
    services.frontend(m, [(1, P.POD_B_IP, 53)], addr=VIP, port=53, rev_nat=2, proto=17)
    data = P.udp_to_cluster_ip_cut_inside_its_header()
    res = run(from_container, data)
    assert res.retval == abi.CTX_ACT_DROP
    assert metrics_totals(m["cilium_metrics"])[(abi.DROP_CT_INVALID_HDR, abi.METRIC_EGRESS)] \
        == (1, len(data))
    assert len(m["cilium_ct_any4_global"]) == 0 and len(m["cilium_ct4_global"]) == 0

