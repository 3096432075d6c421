"""BPF_PROG_TEST_RUN cases for the XDP NodePort flow cache (bpf/lib/xdp_flow.h): an established
packet is filled into dp_xdp_flow4 by the slow path and the next one is rewritten from it byte
for byte as the slow path rewrites it (remote backend: DNAT + SNAT + TTL + MACs, XDP_TX; local:
DNAT, XDP_PASS), without touching conntrack; a SYN, FIN or RST drops the entry and takes the slow
path; a changed backend, a switch to tunnel mode or an entry older than a second sends the packet
to the slow path, which refreshes conntrack and NAT and refills; UDP is cached from its second
datagram, a zero UDP checksum stays zero."""
from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from datapath import abi, testrun

from ..nsfork import run_in_netns
from . import packets as P
from .test_from_netdev_overlay import routed_ns  # noqa: F401  (fixture)
from .test_nat import EXT, NODE_IP, in_pkt, rebuilt, setup
from .test_nodeport import BPORT, NODE_PORT, REMOTE_POD, frontend, remote_backend, to_nodeport
from .test_xdp import _run_on_eth1


@pytest.fixture
def flows(xdp):
    """dp_xdp_flow4, empty around the test, its counters at 0 (the shared fixture does not know
    these maps)."""
    table, stats = xdp["dp_xdp_flow4"], xdp["dp_xdp_flow_stats"]
    for i in range(abi.XDP_FLOW_STATS):
        stats[stats.Key(i)] = stats.Leaf(*([0] * len(stats[stats.Key(i)])))
    table.clear()
    yield table
    table.clear()


def cached(table) -> dict:
    return {abi.XdpFlow4Key.from_bytes(bytes(k)): abi.XdpFlow4.from_bytes(bytes(v))
            for k, v in table.items()}


def svc_ct(m, sport, proto=6):
    key = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(NODE_IP), saddr=abi.ip4_to_be32(EXT),
                          dport=abi.be16(NODE_PORT), sport=abi.be16(sport), nexthdr=proto,
                          flags=abi.TUPLE_F_SERVICE)
    return m["cilium_ct4_global" if proto == 6 else "cilium_ct_any4_global"].get(key)


def ack(sport, seq):
    """An established packet of the flow from sport (checksums computed for this seq)."""
    return in_pkt(EXT, NODE_IP, TCP(sport=sport, dport=NODE_PORT, flags="A", seq=seq), b"GET")


def run(prog, pkt):
    return testrun.run(prog.fd, pkt)


def _remote(m):
    m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
        flags=abi.NODE_CFG_F_HOST_ROUTING, node_ip=abi.ip4_to_be32(NODE_IP)))
    remote_backend(m)
    frontend(m, [(1, REMOTE_POD, BPORT)])


def _in_eth1_ns(ns, fn):
    """fn() in the routed netns, whose eth1 the packets arrive on (fn sees the same maps)."""
    return run_in_netns(ns, fn)


def _eth1_run(prog, pkt):
    return _run_on_eth1(prog.fd, bytes(pkt))


def test_remote_established_packets_are_sent_from_the_cache_byte_for_byte(
        xdp, xdp_entry, flows, routed_ns):  # noqa: F811
    m = setup(xdp, masquerade=False)
    _remote(m)
    acks = [ack(52000, 2 + i) for i in range(3)]

    def flow():             # one process: the packets follow each other within the second
        out = [_eth1_run(xdp_entry, to_nodeport(sport=52000))]          # SYN: slow path
        out.append(len(cached(flows)))
        for pkt in acks:                     # the first ACK fills, the next ones hit
            out.append(_eth1_run(xdp_entry, pkt))
        return out, svc_ct(m, 52000).packets
    (syn, n_cached, *results), packets = _in_eth1_ns(routed_ns, flow)
    assert syn[0] == abi.XDP_TX and n_cached == 0
    nat_port = Ether(syn[1])[TCP].sport
    for pkt, (retval, data) in zip(acks, results):
        assert retval == abi.XDP_TX
        want = rebuilt(pkt, fields=[(IP, "dst", REMOTE_POD), (TCP, "dport", BPORT),
                                    (IP, "src", NODE_IP), (TCP, "sport", nat_port)],
                       macs=(P.NODE_CTR_MAC, P.NODE_W1_MAC), ttl_dec=True)
        testrun.assert_packet(want, data)
    assert packets == 2                      # SYN and the filling ACK only: the rest hit
    (key, f), = cached(flows).items()
    assert (abi.be32_to_ip4(f.backend_addr), abi.be16(f.backend_port)) == (REMOTE_POD, BPORT)
    assert (abi.be32_to_ip4(f.nat_addr), abi.be16(f.nat_port)) == (NODE_IP, nat_port)
    assert bytes(f.dmac) == bytes(abi.mac_to_bytes(P.NODE_W1_MAC)) and f.flags == 0


def test_local_established_packets_are_dnated_from_the_cache(xdp, xdp_entry, flows):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    run(xdp_entry, to_nodeport(sport=52100))
    for seq in (2, 3, 4):
        pkt = ack(52100, seq)
        res = run(xdp_entry, pkt)
        assert res.retval == abi.XDP_PASS
        testrun.assert_packet(rebuilt(pkt, fields=[(IP, "dst", P.POD_B_IP),
                                                   (TCP, "dport", BPORT)]), res.data)
    assert svc_ct(m, 52100).packets == 2
    (_, f), = cached(flows).items()
    assert f.flags == abi.XDP_FLOW_F_LOCAL
    stats = xdp["dp_xdp_flow_stats"]
    assert [sum(int(v) for v in stats[stats.Key(i)]) for i in
            (abi.XDP_FLOW_STAT_HIT, abi.XDP_FLOW_STAT_FILL)] == [2, 1]


@pytest.mark.parametrize("flags", ["S", "F", "R", "FA"])
def test_syn_fin_rst_drop_the_entry_and_take_the_slow_path(xdp, xdp_entry, flows, flags):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    run(xdp_entry, to_nodeport(sport=52200))
    run(xdp_entry, to_nodeport(sport=52200, flags="A"))
    assert len(cached(flows)) == 1
    res = run(xdp_entry, to_nodeport(sport=52200, flags=flags))
    assert res.retval == abi.XDP_PASS and Ether(res.data)[IP].dst == P.POD_B_IP
    assert not cached(flows)
    entry = svc_ct(m, 52200)
    assert entry.packets == 3
    if flags != "S":
        assert entry.flags & abi.CT_F_RX_CLOSING


def test_a_changed_backend_is_not_used_from_the_cache(xdp, xdp_entry, flows):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    run(xdp_entry, to_nodeport(sport=52300))
    run(xdp_entry, to_nodeport(sport=52300, flags="A"))
    assert len(cached(flows)) == 1
    m["cilium_lb4_backends_v3"].update(abi.Lb4BackendKey(1), abi.Lb4Backend(
        address=abi.ip4_to_be32(P.POD_A_IP), port=abi.be16(BPORT), proto=6))
    out = Ether(run(xdp_entry, to_nodeport(sport=52300, flags="A")).data)
    assert out[IP].dst == P.POD_A_IP
    (_, f), = cached(flows).items()                                  # refilled
    assert abi.be32_to_ip4(f.backend_addr) == P.POD_A_IP


def test_tunnel_mode_is_not_bypassed_by_a_cached_remote_flow(xdp, xdp_entry, flows,
                                                             routed_ns):  # noqa: F811
    m = setup(xdp, masquerade=False)
    _remote(m)
    pkt = ack(52400, 3)

    def flow():
        _eth1_run(xdp_entry, to_nodeport(sport=52400))
        _eth1_run(xdp_entry, ack(52400, 2))
        n = len(cached(flows))
        m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
            flags=abi.NODE_CFG_F_TUNNEL, node_ip=abi.ip4_to_be32(NODE_IP)))
        return n, _eth1_run(xdp_entry, pkt)
    n, (retval, data) = _in_eth1_ns(routed_ns, flow)
    assert n == 1 and retval == abi.XDP_PASS
    testrun.assert_packet(pkt, data)


def test_a_cached_flow_is_revalidated_once_a_second(xdp, xdp_entry, flows):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    run(xdp_entry, to_nodeport(sport=52500))
    run(xdp_entry, to_nodeport(sport=52500, flags="A"))
    (_, first), = cached(flows).items()
    life = svc_ct(m, 52500).lifetime
    run(xdp_entry, to_nodeport(sport=52500, flags="A"))
    assert svc_ct(m, 52500).packets == 2                             # a hit
    time.sleep(abi.XDP_FLOW_REVALIDATE_NS / 1e9 + 0.1)
    run(xdp_entry, to_nodeport(sport=52500, flags="A"))
    entry = svc_ct(m, 52500)
    assert entry.packets == 3 and entry.lifetime > life             # conntrack refreshed
    (_, again), = cached(flows).items()
    assert again.filled_ns > first.filled_ns                         # and the entry refilled


def test_udp_is_cached_from_its_second_datagram_and_a_zero_checksum_stays_zero(xdp, xdp_entry,
                                                                               flows):
    m = setup(xdp, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)], proto=17)
    pkt = to_nodeport(sport=52600, proto="udp")
    run(xdp_entry, pkt)
    assert not cached(flows)
    run(xdp_entry, pkt)
    assert len(cached(flows)) == 1
    res = run(xdp_entry, pkt)                                        # a hit
    testrun.assert_packet(rebuilt(pkt, fields=[(IP, "dst", P.POD_B_IP), (UDP, "dport", BPORT)]),
                          res.data)
    assert svc_ct(m, 52600, proto=17).packets == 2
    raw = pkt.copy()
    raw[UDP].chksum = 0
    raw = Ether(bytes(raw))
    out = Ether(run(xdp_entry, raw).data)
    assert out[UDP].chksum == 0 and out[IP].dst == P.POD_B_IP
