"""BPF_PROG_TEST_RUN cases for masquerade (lib/nat.h) on the native device: SNAT of a new flow,
reverse SNAT of the reply, ICMP echo, excluded destinations untouched, port collisions and
exhaustion, a mapping's TCP lifetimes (SYN, established, closing, reopened); every rewritten
packet byte for byte with valid checksums."""
from __future__ import annotations

import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from datapath import abi, build, testrun
from datapath.maps import metrics_totals, open_maps

from . import packets as P
from .conftest import PRESSURE_DEFINES
from .endpoints import add_endpoint

NODE_IP, EXT = P.NODE_CTR_IP, "192.0.2.7"
ROUTER_MAC = "02:00:00:00:aa:fe"


def setup(obj, masquerade=True):
    m = open_maps(obj)
    for ip, mac, lxc, idx, ident in ((P.POD_A_IP, P.POD_A_MAC, P.LXC_A_MAC, 5, 1000),
                                     (P.POD_B_IP, P.POD_B_MAC, P.LXC_B_MAC, 6, 1001)):
        add_endpoint(m, ip, ifindex=idx, lxc_id=ident - 900, mac=mac, node_mac=lxc,
                     sec_id=ident)
    m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
        flags=abi.NODE_CFG_F_MASQUERADE if masquerade else 0, node_ip=abi.ip4_to_be32(NODE_IP)))
    m["cilium_ipmasq_v4"].update(abi.ipmasq_key("172.20.0.0/16"), abi.U8Value(1))
    m["cilium_ipcache"].update(abi.ipcache_key("0.0.0.0/0"), abi.remote_endpoint_info(2))
    m["cilium_ipcache"].update(abi.ipcache_key("192.168.10.101/32"), abi.remote_endpoint_info(6))
    return m


def out_pkt(src, dst, l4, payload=b"", ttl=63):
    """A packet as the stack hands it to eth1's egress (after routing: TTL - 1, MACs)."""
    return Ether(bytes(Ether(src=P.NODE_CTR_MAC, dst=ROUTER_MAC) / IP(src=src, dst=dst, ttl=ttl,
                                                                     id=30) / l4 / payload))


def in_pkt(src, dst, l4, payload=b""):
    return Ether(bytes(Ether(src=ROUTER_MAC, dst=P.NODE_CTR_MAC) / IP(src=src, dst=dst, ttl=63,
                                                                     id=31) / l4 / payload))


def run(prog, pkt):
    return testrun.run(prog.fd, pkt, ctx=testrun.tc_ctx(1))


def rebuilt(pkt, **changes):
    """pkt with fields changed and every checksum recomputed by scapy."""
    out = pkt.copy()
    for layer, field, value in changes.get("fields", []):
        setattr(out[layer], field, value)
    del out[IP].chksum
    for layer in (TCP, UDP, ICMP):
        if layer in out:
            del out[layer].chksum
    if "macs" in changes:
        out[Ether].src, out[Ether].dst = changes["macs"]
    if changes.get("ttl_dec"):
        out[IP].ttl -= 1
    return Ether(bytes(out))


def test_new_tcp_flow_gets_the_node_address_and_the_reply_finds_the_pod(host, to_netdev,
                                                                        from_netdev):
    m = setup(host)
    syn = out_pkt(P.POD_A_IP, EXT, TCP(sport=40000, dport=80, flags="S", seq=1))
    res = run(to_netdev, syn)
    assert res.retval == abi.CTX_ACT_OK
    # 40000 is inside the NAT range and free, so the pod keeps its port
    testrun.assert_packet(rebuilt(syn, fields=[(IP, "src", NODE_IP)]), res.data)
    synack = in_pkt(EXT, NODE_IP, TCP(sport=80, dport=40000, flags="SA", seq=9, ack=2))
    res = run(from_netdev, synack)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(rebuilt(synack, fields=[(IP, "dst", P.POD_A_IP)],
                                  macs=(P.LXC_A_MAC, P.POD_A_MAC), ttl_dec=True), res.data)


def test_port_outside_the_range_is_replaced_and_udp_checksums_stay_valid(host, to_netdev,
                                                                         from_netdev):
    setup(host)
    dgram = out_pkt(P.POD_A_IP, EXT, UDP(sport=5353, dport=53), b"query")
    out = Ether(run(to_netdev, dgram).data)
    port = out[UDP].sport
    assert abi.NODEPORT_PORT_MIN_NAT <= port <= abi.NODEPORT_PORT_MAX_NAT
    testrun.assert_packet(rebuilt(dgram, fields=[(IP, "src", NODE_IP), (UDP, "sport", port)]),
                          bytes(out))
    reply = in_pkt(EXT, NODE_IP, UDP(sport=53, dport=port), b"answer")
    res = run(from_netdev, reply)
    testrun.assert_packet(rebuilt(reply, fields=[(IP, "dst", P.POD_A_IP), (UDP, "dport", 5353)],
                                  macs=(P.LXC_A_MAC, P.POD_A_MAC), ttl_dec=True), res.data)


def test_icmp_echo_id_is_translated_both_ways(host, to_netdev, from_netdev):
    setup(host)
    ping = out_pkt(P.POD_A_IP, EXT, ICMP(type=8, id=7, seq=1), b"ping")
    out = Ether(run(to_netdev, ping).data)
    ident = out[ICMP].id
    assert out[IP].src == NODE_IP and ident >= abi.NODEPORT_PORT_MIN_NAT
    testrun.assert_packet(rebuilt(ping, fields=[(IP, "src", NODE_IP), (ICMP, "id", ident)]),
                          bytes(out))
    pong = in_pkt(EXT, NODE_IP, ICMP(type=0, id=ident, seq=1), b"ping")
    res = run(from_netdev, pong)
    testrun.assert_packet(rebuilt(pong, fields=[(IP, "dst", P.POD_A_IP), (ICMP, "id", 7)],
                                  macs=(P.LXC_A_MAC, P.POD_A_MAC), ttl_dec=True), res.data)


@pytest.mark.parametrize("src,dst", [
    (P.POD_A_IP, "172.20.1.9"),          # native-routing CIDR (cilium_ipmasq_v4)
    (P.POD_A_IP, "192.168.10.101"),      # another node (ipcache: remote-node)
    (NODE_IP, EXT),                      # the node's own traffic
])
def test_excluded_traffic_is_untouched(host, to_netdev, src, dst):
    m = setup(host)
    pkt = out_pkt(src, dst, TCP(sport=40001, dport=80, flags="S"))
    res = run(to_netdev, pkt)
    assert res.retval == abi.CTX_ACT_OK
    testrun.assert_packet(pkt, res.data)
    assert len(m["cilium_snat_v4_external"]) == 0


def test_masquerade_off_changes_nothing(host, to_netdev):
    setup(host, masquerade=False)
    pkt = out_pkt(P.POD_A_IP, EXT, TCP(sport=40002, dport=80, flags="S"))
    testrun.assert_packet(pkt, run(to_netdev, pkt).data)


def test_two_pods_with_the_same_port_get_different_node_ports(host, to_netdev):
    setup(host)
    a = Ether(run(to_netdev, out_pkt(P.POD_A_IP, EXT, TCP(sport=40003, dport=80))).data)
    b = Ether(run(to_netdev, out_pkt(P.POD_B_IP, EXT, TCP(sport=40003, dport=80))).data)
    assert a[IP].src == b[IP].src == NODE_IP
    assert a[TCP].sport == 40003 and b[TCP].sport != 40003


@pytest.fixture(scope="module")
def tiny_range(privileged):
    """bpf_host.c compiled with a two-port NAT range, 40000-40001 (-D settings: conftest's
    PRESSURE_DEFINES, shared with test_pressure.py's full conntrack table)."""
    obj = build.compile_program("bpf_host.c", PRESSURE_DEFINES)
    return obj, build.load(obj, "cil_to_netdev", "tc")


def test_port_exhaustion_drops_with_ciliums_reason(tiny_range):
    obj, prog = tiny_range
    for name in ("cilium_snat_v4_external", "cilium_metrics", "cilium_lxc", "dp_node_config"):
        obj[name].clear()
    m = setup(obj)
    verdicts = [run(prog, out_pkt(P.POD_A_IP, EXT, TCP(sport=1000 + i, dport=80))).retval
                for i in range(3)]
    assert verdicts == [abi.CTX_ACT_OK, abi.CTX_ACT_OK, abi.CTX_ACT_DROP]
    assert metrics_totals(m["cilium_metrics"])[(abi.DROP_NAT_NO_MAPPING, abi.METRIC_EGRESS)][0] == 1
    assert abi.reason_string(abi.DROP_NAT_NO_MAPPING) == "No mapping for NAT masquerade"
    # recovers once mappings go away (what GC does when entries expire)
    for k, _ in list(m["cilium_snat_v4_external"].items()):
        m["cilium_snat_v4_external"].delete(k)
    assert run(prog, out_pkt(P.POD_A_IP, EXT, TCP(sport=2000, dport=80))).retval == abi.CTX_ACT_OK


def test_icmp_error_about_a_masqueraded_flow_reaches_the_pod(host, to_netdev, from_netdev):
    from scapy.layers.inet import IPerror, UDPerror
    setup(host)
    dgram = out_pkt(P.POD_A_IP, EXT, UDP(sport=5353, dport=9), b"hi")
    out = Ether(run(to_netdev, dgram).data)
    port = out[UDP].sport
    # the peer answers "port unreachable", quoting what it received (node:port -> peer)
    err = in_pkt(EXT, NODE_IP, ICMP(type=3, code=3) / bytes(out[IP]))
    res = run(from_netdev, err)
    assert res.retval == abi.CTX_ACT_REDIRECT
    quoted = IPerror(bytes(out[IP]))
    quoted.src = P.POD_A_IP
    quoted[UDPerror].sport = 5353
    del quoted.chksum                     # both quoted checksums are right for the pod's packet
    del quoted[UDPerror].chksum
    want = (Ether(src=P.LXC_A_MAC, dst=P.POD_A_MAC)
            / IP(src=EXT, dst=P.POD_A_IP, ttl=62, id=31) / ICMP(type=3, code=3)
            / IPerror(bytes(quoted)))
    testrun.assert_packet(Ether(bytes(want)), res.data)
    assert port != 5353


@pytest.mark.parametrize("case", ["tcp quoted in 8 bytes", "udp without checksum"])
def test_icmp_error_quoting_no_whole_l4_checksum_leaves_it_alone(host, to_netdev, from_netdev,
                                                                  case):
    """A router's time-exceeded may quote only 8 bytes of TCP (no checksum field), and a UDP
    checksum of 0 means none: the quoted address and port are translated, nothing else."""
    from scapy.layers.inet import IPerror
    setup(host)
    tcp = case.startswith("tcp")
    l4 = TCP(sport=5354, dport=80, flags="S") if tcp else UDP(sport=5354, dport=9, chksum=0)
    out = Ether(run(to_netdev, out_pkt(P.POD_A_IP, EXT, l4, b"" if tcp else b"hi")).data)
    port = (out[TCP] if tcp else out[UDP]).sport
    sent = bytes(out[IP])[:28] if tcp else bytes(out[IP])
    err = in_pkt("192.168.10.200", NODE_IP, ICMP(type=11, code=0) / sent)
    res = run(from_netdev, err)
    assert res.retval == abi.CTX_ACT_REDIRECT
    quoted = bytearray(sent)
    quoted[12:16] = bytes(map(int, P.POD_A_IP.split(".")))
    quoted[20:22] = (5354).to_bytes(2, "big")
    fixed = IPerror(bytes(quoted))
    del fixed.chksum
    want = (Ether(src=P.LXC_A_MAC, dst=P.POD_A_MAC)
            / IP(src="192.168.10.200", dst=P.POD_A_IP, ttl=62, id=31) / ICMP(type=11, code=0)
            / (bytes(IPerror(bytes(fixed)))[:20] + bytes(quoted[20:])))
    testrun.assert_packet(Ether(bytes(want)), res.data)
    assert port != 5354


# ---- TCP lifetimes of a mapping (Cilium's ct_update_timeout: seen_non_syn) ----

def left(entry) -> float:
    """Seconds an entry has left to live."""
    return entry.lifetime - time.monotonic()


def is_syn(entry) -> bool:
    """A half-open lifetime: 60 s, not established."""
    return 55 <= left(entry) <= abi.CT_SYN_TIMEOUT + 1 and \
        not entry.flags & abi.NAT_F_SEEN_NON_SYN


def is_established(entry) -> bool:
    return abi.CT_CONNECTION_LIFETIME_TCP - 10 <= left(entry) <= \
        abi.CT_CONNECTION_LIFETIME_TCP + 1 and bool(entry.flags & abi.NAT_F_SEEN_NON_SYN)


def is_closing(entry) -> bool:
    return left(entry) <= abi.CT_CLOSE_TIMEOUT + 1 and bool(entry.flags & abi.NAT_F_CLOSING)


def nat_pair(m):
    """The mapping's (egress, ingress) entries: the map holds exactly one mapping."""
    entries = {k.flags: e for k, e in m["cilium_snat_v4_external"].items()}
    assert sorted(entries) == [abi.NAT_DIR_EGRESS, abi.NAT_DIR_INGRESS], entries
    return entries[abi.NAT_DIR_EGRESS], entries[abi.NAT_DIR_INGRESS]


def pod_out(flags, sport=40100):
    return out_pkt(P.POD_A_IP, EXT, TCP(sport=sport, dport=80, flags=flags, seq=1))


def peer_in(flags, dport=40100, payload=b""):
    return in_pkt(EXT, NODE_IP, TCP(sport=80, dport=dport, flags=flags, seq=9, ack=2), payload)


def test_a_syn_gives_the_mapping_the_syn_lifetime_until_the_clients_ack(host, to_netdev,
                                                                        from_netdev):
    """A half-open flow (a SYN, its SYN-ACK) holds its port 60 s, not 8000 s: a SYN flood gives
    its ports back after a minute. The client's ACK establishes both entries, the reverse one
    too, though only the SYN-ACK passed it (an idle connection keeps its pair)."""
    m = setup(host)
    assert run(to_netdev, pod_out("S")).retval == abi.CTX_ACT_OK
    assert all(map(is_syn, nat_pair(m)))
    assert run(from_netdev, peer_in("SA")).retval == abi.CTX_ACT_REDIRECT
    assert all(map(is_syn, nat_pair(m)))
    run(to_netdev, pod_out("S"))                                  # a retransmitted SYN
    assert all(map(is_syn, nat_pair(m)))
    assert run(to_netdev, pod_out("A")).retval == abi.CTX_ACT_OK
    assert all(map(is_established, nat_pair(m)))


def test_the_servers_first_non_syn_establishes_both_entries(host, to_netdev, from_netdev):
    """Either side's first packet without SYN establishes the mapping (Cilium's one entry per
    flow sees both directions)."""
    m = setup(host)
    run(to_netdev, pod_out("S", sport=40110))
    run(from_netdev, peer_in("SA", dport=40110))
    assert run(from_netdev, peer_in("PA", dport=40110, payload=b"220 ready")).retval == \
        abi.CTX_ACT_REDIRECT
    assert all(map(is_established, nat_pair(m)))


def test_fin_closes_the_mapping_and_a_new_syn_starts_over_as_a_syn(host, to_netdev,
                                                                   from_netdev):
    m = setup(host)
    sport = 40120
    run(to_netdev, pod_out("S", sport))
    run(from_netdev, peer_in("SA", sport))
    run(to_netdev, pod_out("A", sport))
    run(to_netdev, pod_out("FA", sport))
    assert all(map(is_closing, nat_pair(m)))      # the pod's FIN closes the pair
    run(from_netdev, peer_in("FA", sport))
    assert all(map(is_closing, nat_pair(m)))
    run(to_netdev, pod_out("A", sport))                           # the last ACK: still closing
    assert all(map(is_closing, nat_pair(m)))
    # the pod's next connection on the same tuple: a SYN, not an established flow
    run(to_netdev, pod_out("S", sport))
    fwd, rev = nat_pair(m)
    assert is_syn(fwd) and not fwd.flags & abi.NAT_F_CLOSING
    run(from_netdev, peer_in("SA", sport))
    assert all(map(is_syn, nat_pair(m)))
    run(to_netdev, pod_out("A", sport))
    assert all(map(is_established, nat_pair(m)))


def test_a_reset_through_either_entry_closes_the_pair(host, to_netdev, from_netdev):
    """An RST is not answered: the peer's RST (through the ingress entry) closes the egress
    entry too, and the pod's (through the egress entry) the ingress one, so the port comes back
    after CT_CLOSE_TIMEOUT instead of being held by the other entry for
    CT_CONNECTION_LIFETIME_TCP."""
    from agent import ctgc
    m = setup(host)
    for sport, reset in ((40140, lambda s: run(from_netdev, peer_in("R", s))),
                         (40141, lambda s: run(to_netdev, pod_out("R", s)))):
        nat = m["cilium_snat_v4_external"]
        nat.clear()
        run(to_netdev, pod_out("S", sport))
        run(from_netdev, peer_in("SA", sport))
        run(to_netdev, pod_out("A", sport))
        assert all(map(is_established, nat_pair(m)))
        reset(sport)
        assert all(map(is_closing, nat_pair(m)))
        assert ctgc.collect_nat(m, time.monotonic() + abi.CT_CLOSE_TIMEOUT + 2) == (0, 2)


def test_a_syn_flood_leaves_no_mapping_beyond_the_syn_lifetime(host, to_netdev):
    """200 SYNs from 200 ports, no handshake: 400 entries, none with more than 60 s to live;
    the agent's GC takes them all a minute later, and none before."""
    from agent import ctgc
    m = setup(host)
    for i in range(200):
        assert run(to_netdev, pod_out("S", sport=41000 + i)).retval == abi.CTX_ACT_OK
    nat = m["cilium_snat_v4_external"]
    entries = [e for _, e in nat.items()]
    assert len(entries) == 400 and all(map(is_syn, entries))
    now = time.monotonic()
    assert ctgc.collect_nat({ctgc.NAT_MAP: nat}, now) == (400, 0)
    assert ctgc.collect_nat({ctgc.NAT_MAP: nat}, now + abi.CT_SYN_TIMEOUT + 2) == (0, 400)


def test_a_packet_cut_inside_its_l4_header_is_dropped_without_a_mapping(host, to_netdev):
    """Found by the fuzzer (tests/bpf/fuzz.py): a masqueraded packet whose L4 header ends
    before its checksum is dropped as a truncated header, and no NAT mapping is left behind."""
    m = setup(host)
    data = P.udp_to_outside_cut_inside_its_header()
    res = run(to_netdev, data)
    assert res.retval == abi.CTX_ACT_DROP
    assert metrics_totals(m["cilium_metrics"])[(abi.DROP_CT_INVALID_HDR, abi.METRIC_EGRESS)] \
        == (1, len(data))
    assert len(m["cilium_snat_v4_external"]) == 0
