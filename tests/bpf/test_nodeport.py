"""BPF_PROG_TEST_RUN cases for services reached from outside (lib/nodeport.h) on the native
device, and for Maglev backend selection (lib/lb.h): a new NodePort flow to a local backend
(client address kept), to a remote backend (SNAT to the node; in tunnel mode VNI 1, the
host), the remote backend's reply (reverse SNAT + reverse DNAT), the local backend's reply
leaving (reverse DNAT in to-netdev), an established flow, externalTrafficPolicy Local without
a local backend, a ClusterIP from outside, two-scope frontends, and Maglev picking by the flow
hash, and a remote backend's flow lifetimes (SYN, established, closing, reopened; a SYN
flood). Packets byte for byte."""
from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from agent.lb import maglev
from datapath import abi, testrun
from datapath.maps import metrics_totals

from . import packets as P
from .conftest import mocked_object
from . import services
from .test_nat import EXT, NODE_IP, in_pkt, out_pkt, rebuilt, run, setup

NODE_PORT = 30080
BPORT = 8080
REMOTE_POD = "172.20.1.9"         # a backend on k8s-w1
REMOTE_NODE = "192.168.10.101"
REV_NAT = 21
CLIENT_POD, CLIENT_NODE = "172.20.2.7", "192.168.10.102"    # a pod on k8s-w2 as the client


def frontend(m, backends, *, addr=NODE_IP, port=NODE_PORT,
             flags=abi.SVC_FLAG_NODEPORT | abi.SVC_FLAG_ROUTABLE, rev_nat=REV_NAT, **kw):
    """A NodePort frontend on the node's address (one scope) whose slots hold backends
    [(id, ip, port)] (tests/bpf/services.py with this file's defaults)."""
    services.frontend(m, backends, addr=addr, port=port, flags=flags, rev_nat=rev_nat, **kw)


def remote_backend(m):
    m["cilium_ipcache"].update(abi.ipcache_key(f"{REMOTE_POD}/32"),
                               abi.remote_endpoint_info(1234, REMOTE_NODE))


def to_nodeport(sport=51000, flags="S", proto="tcp"):
    l4 = TCP(sport=sport, dport=NODE_PORT, flags=flags, seq=1) if proto == "tcp" \
        else UDP(sport=sport, dport=NODE_PORT)
    return in_pkt(EXT, NODE_IP, l4, b"GET")


def test_new_flow_to_a_local_backend_keeps_the_client_address(host, from_netdev):
    m = setup(host, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    pkt = to_nodeport()
    res = run(from_netdev, pkt)
    assert res.retval == abi.CTX_ACT_REDIRECT
    want = rebuilt(pkt, fields=[(IP, "dst", P.POD_B_IP), (TCP, "dport", BPORT)],
                   macs=(P.LXC_B_MAC, P.POD_B_MAC), ttl_dec=True)
    testrun.assert_packet(want, res.data)
    rep = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(EXT), saddr=abi.ip4_to_be32(P.POD_B_IP),
                          dport=abi.be16(51000), sport=abi.be16(BPORT), nexthdr=6,
                          flags=abi.TUPLE_F_IN)
    entry = m["cilium_ct4_global"].get(rep)
    assert entry.flags & abi.CT_F_NODEPORT and entry.rev_nat_index == REV_NAT
    assert entry.src_sec_id == abi.IDENTITY_WORLD


def test_local_backends_reply_gets_the_frontend_back_on_egress(host, from_netdev, to_netdev):
    m = setup(host, masquerade=True)           # masquerading must not touch a NodePort reply
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    run(from_netdev, to_nodeport(sport=51001))
    reply = out_pkt(P.POD_B_IP, EXT, TCP(sport=BPORT, dport=51001, flags="SA"))
    res = run(to_netdev, reply)
    assert res.retval == abi.CTX_ACT_OK
    testrun.assert_packet(rebuilt(reply, fields=[(IP, "src", NODE_IP),
                                                 (TCP, "sport", NODE_PORT)]), res.data)


def test_remote_backend_gets_the_flow_snated_to_the_node_and_the_reply_goes_back(host,
                                                                                  from_netdev):
    m = setup(host, masquerade=False)          # NodePort SNAT does not need bpf.masquerade
    remote_backend(m)
    frontend(m, [(1, REMOTE_POD, BPORT)])
    pkt = to_nodeport(sport=51002)
    res = run(from_netdev, pkt)
    assert res.retval == abi.CTX_ACT_OK       # no host routing set: the stack forwards
    out = Ether(res.data)
    nat_port = out[TCP].sport
    assert abi.NODEPORT_PORT_MIN_NAT <= nat_port <= abi.NODEPORT_PORT_MAX_NAT
    want = rebuilt(pkt, fields=[(IP, "dst", REMOTE_POD), (TCP, "dport", BPORT),
                                (IP, "src", NODE_IP), (TCP, "sport", nat_port)])
    testrun.assert_packet(want, res.data)
    # the backend answers the node; the client gets it from the frontend
    reply = in_pkt(REMOTE_POD, NODE_IP, TCP(sport=BPORT, dport=nat_port, flags="SA"), b"200")
    res = run(from_netdev, reply)
    assert res.retval == abi.CTX_ACT_OK       # no route to EXT in the test netns: the stack
    back = rebuilt(reply, fields=[(IP, "src", NODE_IP), (TCP, "sport", NODE_PORT),
                                  (IP, "dst", EXT), (TCP, "dport", 51002)])
    testrun.assert_packet(back, res.data)
    # the next packet of the flow reuses both translations
    again = Ether(run(from_netdev, to_nodeport(sport=51002, flags="A")).data)
    assert (again[IP].src, again[TCP].sport, again[IP].dst) == (NODE_IP, nat_port, REMOTE_POD)


def test_a_nodeport_packet_that_cannot_be_forwarded_takes_no_nat_port(host, from_netdev):
    """TTL 1 to a remote backend: dropped with Cilium's reason before the SNAT, so it holds
    no mapping (found by the fuzzer: the mapping was made, then the TTL check dropped it)."""
    m = setup(host, masquerade=False)
    remote_backend(m)
    frontend(m, [(1, REMOTE_POD, BPORT)])
    pkt = rebuilt(to_nodeport(sport=51009), fields=[(IP, "ttl", 1)])
    res = run(from_netdev, pkt)
    assert res.retval == abi.CTX_ACT_DROP
    assert metrics_totals(m["cilium_metrics"])[(abi.DROP_TTL_EXCEEDED,
                                                abi.METRIC_INGRESS)][0] == 1
    assert list(m["cilium_snat_v4_external"].items()) == []
    # the same packet with TTL 2 is forwarded, SNATed
    res = run(from_netdev, rebuilt(pkt, fields=[(IP, "ttl", 2)]))
    assert res.retval == abi.CTX_ACT_OK
    assert len(list(m["cilium_snat_v4_external"].items())) == 2


def test_a_new_connection_on_a_closed_nodeport_tuple_reopens_its_nat_mapping(host,
                                                                              from_netdev):
    """A client reusing its port after closing (FIN both ways) through a remote backend: the new
    SYN keeps the flow's NAT mapping and lifts its closing mark on both entries, so they live on
    the connection lifetime again instead of expiring 10 s later under an idle connection."""
    m = setup(host, masquerade=False)
    remote_backend(m)
    frontend(m, [(1, REMOTE_POD, BPORT)])
    nat_port = Ether(run(from_netdev, to_nodeport(sport=51010)).data)[TCP].sport
    run(from_netdev, to_nodeport(sport=51010, flags="A"))
    run(from_netdev, to_nodeport(sport=51010, flags="FA"))
    run(from_netdev, in_pkt(REMOTE_POD, NODE_IP, TCP(sport=BPORT, dport=nat_port, flags="FA"),
                            b""))
    nat = m["cilium_snat_v4_external"]
    assert len(nat) == 2 and all(e.flags & abi.NAT_F_CLOSING for _, e in nat.items())
    assert all(e.lifetime - time.monotonic() <= abi.CT_CLOSE_TIMEOUT + 1 for _, e in nat.items())
    out = Ether(run(from_netdev, to_nodeport(sport=51010)).data)      # the new SYN
    assert (out[IP].src, out[TCP].sport, out[IP].dst) == (NODE_IP, nat_port, REMOTE_POD)
    run(from_netdev, in_pkt(REMOTE_POD, NODE_IP, TCP(sport=BPORT, dport=nat_port, flags="SA"),
                            b""))
    assert len(nat) == 2
    for _, e in nat.items():
        assert not e.flags & abi.NAT_F_CLOSING
        assert e.lifetime - time.monotonic() > abi.CT_CLOSE_TIMEOUT + 5


def test_nodeport_flow_to_a_remote_backend_holds_its_state_60_s_until_the_clients_ack(
        host, from_netdev):
    """ext -> NodePort -> a backend on another node: the SYN gives the service and reply
    conntrack entries and both NAT entries Cilium's SYN lifetime (60 s), the SYN-ACK keeps it,
    the client's ACK establishes all four (8000 s), a FIN both ways closes them (10 s), and the
    client's next connection on the tuple starts over as a SYN."""
    from .test_nat import is_closing, is_established, is_syn, nat_pair
    m = setup(host, masquerade=False)
    remote_backend(m)
    frontend(m, [(1, REMOTE_POD, BPORT)])
    sport = 51020
    closing = abi.CT_F_RX_CLOSING | abi.CT_F_TX_CLOSING

    def cts():
        ct4 = m["cilium_ct4_global"]
        ip = abi.ip4_to_be32
        svc = ct4.get(abi.Ipv4CtTuple(daddr=ip(NODE_IP), saddr=ip(EXT), dport=abi.be16(NODE_PORT),
                                      sport=abi.be16(sport), nexthdr=6,
                                      flags=abi.TUPLE_F_SERVICE))
        rep = ct4.get(abi.Ipv4CtTuple(daddr=ip(EXT), saddr=ip(REMOTE_POD), dport=abi.be16(sport),
                                      sport=abi.be16(BPORT), nexthdr=6, flags=abi.TUPLE_F_IN))
        assert rep.flags & abi.CT_F_NODEPORT
        return svc, rep

    def ct_left(e):
        return e.lifetime - time.monotonic()

    def ct_syn(e):
        return 55 <= ct_left(e) <= abi.CT_SYN_TIMEOUT + 1 and \
            not e.flags & (abi.CT_F_SEEN_NON_SYN | closing)

    def ct_established(e):
        return ct_left(e) > abi.CT_CONNECTION_LIFETIME_TCP - 10 and \
            bool(e.flags & abi.CT_F_SEEN_NON_SYN)

    def backend(flags):
        return in_pkt(REMOTE_POD, NODE_IP, TCP(sport=BPORT, dport=nat_port, flags=flags), b"")

    out = Ether(run(from_netdev, to_nodeport(sport=sport)).data)
    nat_port = out[TCP].sport
    assert (out[IP].src, out[IP].dst) == (NODE_IP, REMOTE_POD)
    assert all(map(is_syn, nat_pair(m))) and all(map(ct_syn, cts()))
    assert run(from_netdev, backend("SA")).retval == abi.CTX_ACT_OK
    assert all(map(is_syn, nat_pair(m))) and all(map(ct_syn, cts()))
    run(from_netdev, to_nodeport(sport=sport, flags="A"))
    assert all(map(is_established, nat_pair(m))) and all(map(ct_established, cts()))
    run(from_netdev, to_nodeport(sport=sport, flags="FA"))
    run(from_netdev, backend("FA"))
    assert all(map(is_closing, nat_pair(m)))
    assert all(e.flags & closing == closing and ct_left(e) <= abi.CT_CLOSE_TIMEOUT + 1
               for e in cts())
    out = Ether(run(from_netdev, to_nodeport(sport=sport)).data)        # a new connection
    assert (out[IP].src, out[TCP].sport, out[IP].dst) == (NODE_IP, nat_port, REMOTE_POD)
    run(from_netdev, backend("SA"))
    assert all(map(is_syn, nat_pair(m))) and all(map(ct_syn, cts()))


def test_a_syn_flood_to_a_nodeport_holds_no_state_beyond_60_s(host, from_netdev):
    """256 SYNs from random sources in 203.0.113.0/24 (no handshake) to a NodePort with a
    remote backend: every conntrack and NAT entry they made has at most CT_SYN_TIMEOUT left, and
    a real client's connection still gets through and establishes."""
    import random
    rnd = random.Random(12)
    m = setup(host, masquerade=False)
    remote_backend(m)
    frontend(m, [(1, REMOTE_POD, BPORT)])
    for i in range(256):
        src = f"203.0.113.{i}"
        syn = in_pkt(src, NODE_IP, TCP(sport=rnd.randrange(1024, 65536), dport=NODE_PORT,
                                       flags="S", seq=rnd.randrange(1 << 32)))
        assert run(from_netdev, syn).retval == abi.CTX_ACT_OK
    now = time.monotonic()
    ct_left = [e.lifetime - now for _, e in m["cilium_ct4_global"].items()]
    nat_left = [e.lifetime - now for _, e in m["cilium_snat_v4_external"].items()]
    assert len(ct_left) == 2 * 256 and len(nat_left) == 2 * 256
    assert max(ct_left + nat_left) <= abi.CT_SYN_TIMEOUT + 1
    # a real client during the flood
    out = Ether(run(from_netdev, to_nodeport(sport=51030)).data)
    assert (out[IP].src, out[IP].dst) == (NODE_IP, REMOTE_POD)
    run(from_netdev, in_pkt(REMOTE_POD, NODE_IP, TCP(sport=BPORT, dport=out[TCP].sport,
                                                     flags="SA"), b""))
    again = Ether(run(from_netdev, to_nodeport(sport=51030, flags="A")).data)
    assert again[TCP].sport == out[TCP].sport
    established = [e for _, e in m["cilium_snat_v4_external"].items()
                   if e.lifetime - time.monotonic() > abi.CT_SYN_TIMEOUT + 1]
    assert len(established) == 2                      # the real client's mapping alone


@pytest.fixture
def tiny_range_host(privileged):
    """bpf_host.c with a two-port NAT range, 40000-40001 (conftest's PRESSURE_DEFINES), its
    from-netdev program, and its maps emptied."""
    from datapath import build
    from .conftest import MAPS, PRESSURE_DEFINES
    obj = build.compile_program("bpf_host.c", PRESSURE_DEFINES)
    for name in MAPS:
        obj[name].clear()
    return obj, build.load(obj, "cil_from_netdev", "tc")


def test_nodeport_snat_port_exhaustion_drops_with_ciliums_reason_and_recovers(tiny_range_host):
    """ext -> NodePort -> a backend on another node with a NAT range of two ports: two client
    flows take both, the third is dropped with DROP_NAT_NO_MAPPING ("No mapping for NAT
    masquerade", counted in cilium_metrics under INGRESS) and keeps being dropped while the two
    flows live; once they end (FIN both ways: CT_CLOSE_TIMEOUT) and conntrack GC deletes their
    expired mappings, the third flow gets a port."""
    from agent import ctgc
    obj, prog = tiny_range_host
    m = setup(obj, masquerade=False)
    remote_backend(m)
    frontend(m, [(1, REMOTE_POD, BPORT)])

    def nat_drops():
        return metrics_totals(m["cilium_metrics"]).get(
            (abi.DROP_NAT_NO_MAPPING, abi.METRIC_INGRESS), (0, 0))[0]

    ports = []
    for sport in (52000, 52001):
        res = run(prog, to_nodeport(sport=sport))
        assert res.retval == abi.CTX_ACT_OK
        ports.append(Ether(res.data)[TCP].sport)
    assert sorted(ports) == [40000, 40001]
    assert run(prog, to_nodeport(sport=52002)).retval == abi.CTX_ACT_DROP
    assert nat_drops() == 1
    assert abi.reason_string(abi.DROP_NAT_NO_MAPPING) == "No mapping for NAT masquerade"
    # the two flows end: the client's ACK and FIN, the backend's FIN back
    for sport, port in zip((52000, 52001), ports):
        for flags in ("A", "FA"):
            assert run(prog, to_nodeport(sport=sport, flags=flags)).retval == abi.CTX_ACT_OK
        fin = in_pkt(REMOTE_POD, NODE_IP, TCP(sport=BPORT, dport=port, flags="FA"), b"")
        assert run(prog, fin).retval == abi.CTX_ACT_OK
    assert run(prog, to_nodeport(sport=52002)).retval == abi.CTX_ACT_DROP   # not expired yet
    assert nat_drops() == 2
    nat = m["cilium_snat_v4_external"]
    assert len(nat) == 4 and all(e.flags & abi.NAT_F_CLOSING for _, e in nat.items())
    # GC a little after CT_CLOSE_TIMEOUT (its clock given, not waited for)
    later = time.monotonic() + abi.CT_CLOSE_TIMEOUT + 2
    assert ctgc.collect_nat(m, later) == (0, 4)
    ctgc.collect(m, later)
    res = run(prog, to_nodeport(sport=52002))
    assert res.retval == abi.CTX_ACT_OK
    assert Ether(res.data)[TCP].sport in (40000, 40001)
    assert nat_drops() == 2


MOCK_SET_TUNNEL_KEY = """
/* test mock: the tunnel key set for the packet comes back in skb->cb[1] (VNI) and cb[2] (the
 * remote node, host order) */
static __always_inline int mock_skb_set_tunnel_key(struct __sk_buff *skb,
						   struct bpf_tunnel_key *key, __u32 size,
						   __u64 flags)
{
	skb->cb[1] = key->tunnel_id;
	skb->cb[2] = key->remote_ipv4;
	return 0;
}
#define bpf_skb_set_tunnel_key mock_skb_set_tunnel_key
"""


@pytest.fixture(scope="session")
def host_tunnel_mock_obj(privileged):
    """bpf_host.c with bpf_skb_set_tunnel_key mocked: a test run cannot read the key back."""
    return mocked_object("bpf_host.c", MOCK_SET_TUNNEL_KEY)


@pytest.fixture
def host_tunnel_mock(host_tunnel_mock_obj):
    from datapath import build
    from datapath.maps import open_maps
    fn = build.load(host_tunnel_mock_obj, "cil_from_netdev", "tc")
    for table in open_maps(host_tunnel_mock_obj).values():
        table.clear()
    yield host_tunnel_mock_obj, fn
    for table in open_maps(host_tunnel_mock_obj).values():
        table.clear()


def test_remote_backend_in_tunnel_mode_is_sent_from_the_host(host_tunnel_mock):
    """Tunnel mode: the SNATed flow goes to the backend's node with VNI HOST (1), which that
    node's from-overlay checks as remote-node (6), the identity native routing gets from the
    ipcache for this node's address; never world (2)."""
    obj, from_netdev = host_tunnel_mock
    m = setup(obj, masquerade=False)
    m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
        flags=abi.NODE_CFG_F_TUNNEL, tunnel_ifindex=1, node_ip=abi.ip4_to_be32(NODE_IP)))
    remote_backend(m)
    frontend(m, [(1, REMOTE_POD, BPORT)])
    pkt = to_nodeport(sport=51003)
    res = testrun.run(from_netdev.fd, pkt, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_REDIRECT                      # into the tunnel
    nat_port = Ether(res.data)[TCP].sport
    want = rebuilt(pkt, fields=[(IP, "dst", REMOTE_POD), (TCP, "dport", BPORT),
                                (IP, "src", NODE_IP), (TCP, "sport", nat_port)], ttl_dec=True)
    testrun.assert_packet(want, res.data)
    assert res.ctx.cb[1] == abi.IDENTITY_HOST
    assert res.ctx.cb[2] == int.from_bytes(bytes(map(int, REMOTE_NODE.split("."))), "big")


def test_remote_backends_reply_to_a_pod_on_another_node_goes_back_through_the_tunnel(
        host_tunnel_mock):
    """Tunnel mode, a pod on a third node asked this node's NodePort (its request came in on
    the native device): the reply, reverse-SNATed and given the frontend back, goes to the
    client's node through the tunnel (VNI HOST), as the node's routes do not reach pods."""
    obj, from_netdev = host_tunnel_mock
    m = setup(obj, masquerade=False)
    m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
        flags=abi.NODE_CFG_F_TUNNEL, tunnel_ifindex=1, node_ip=abi.ip4_to_be32(NODE_IP)))
    remote_backend(m)
    m["cilium_ipcache"].update(abi.ipcache_key(f"{CLIENT_POD}/32"),
                               abi.remote_endpoint_info(4321, CLIENT_NODE))
    frontend(m, [(1, REMOTE_POD, BPORT)])
    pkt = in_pkt(CLIENT_POD, NODE_IP, TCP(sport=41000, dport=NODE_PORT, flags="S", seq=1),
                 b"GET")
    res = testrun.run(from_netdev.fd, pkt, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_REDIRECT                      # to the backend's node
    nat_port = Ether(res.data)[TCP].sport
    reply = in_pkt(REMOTE_POD, NODE_IP, TCP(sport=BPORT, dport=nat_port, flags="SA"), b"200")
    res = testrun.run(from_netdev.fd, reply, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_REDIRECT                      # into the tunnel
    back = rebuilt(reply, fields=[(IP, "src", NODE_IP), (TCP, "sport", NODE_PORT),
                                  (IP, "dst", CLIENT_POD), (TCP, "dport", 41000)], ttl_dec=True)
    testrun.assert_packet(back, res.data)
    assert res.ctx.cb[1] == abi.IDENTITY_HOST
    assert res.ctx.cb[2] == int.from_bytes(bytes(map(int, CLIENT_NODE.split("."))), "big")


def test_udp_nodeport_to_a_local_backend(host, from_netdev):
    m = setup(host, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)], proto=17)
    pkt = to_nodeport(proto="udp")
    res = run(from_netdev, pkt)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(rebuilt(pkt, fields=[(IP, "dst", P.POD_B_IP), (UDP, "dport", BPORT)],
                                  macs=(P.LXC_B_MAC, P.POD_B_MAC), ttl_dec=True), res.data)


def test_etp_local_without_a_local_backend_drops_with_ciliums_reason(host, from_netdev):
    m = setup(host, masquerade=False)
    frontend(m, [], flags=abi.SVC_FLAG_NODEPORT | abi.SVC_FLAG_ROUTABLE |
             abi.SVC_FLAG_EXT_LOCAL_SCOPE)
    res = run(from_netdev, to_nodeport())
    assert res.retval == abi.CTX_ACT_DROP
    assert metrics_totals(m["cilium_metrics"])[(abi.DROP_NO_SERVICE, abi.METRIC_INGRESS)][0] == 1
    assert abi.reason_string(abi.DROP_NO_SERVICE) == "Service backend not found"


def test_cluster_ip_from_outside_is_dropped(host, from_netdev):
    m = setup(host, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)], addr="10.96.0.10", port=80, flags=0)
    res = run(from_netdev, in_pkt(EXT, "10.96.0.10", TCP(sport=51003, dport=80)))
    assert res.retval == abi.CTX_ACT_DROP
    assert metrics_totals(m["cilium_metrics"])[(abi.DROP_IS_CLUSTER_IP, abi.METRIC_INGRESS)][0] \
        == 1


def test_two_scopes_pods_get_the_internal_set(host, from_netdev, lxc, from_container):
    """eTP Local + iTP Cluster: outside sees only the local backend (slot set EXT), pods all."""
    from datapath.maps import open_maps

    from .test_lb import _ep, sender
    for obj in (host, lxc):
        m = setup(obj, masquerade=False) if obj is host else open_maps(obj)
        if obj is lxc:
            _ep(m, P.POD_A_IP, P.POD_A_MAC, P.LXC_A_MAC, P.LXC_A_IFINDEX, 1000)
            sender(m, P.POD_A_IP)
        flags = abi.SVC_FLAG_NODEPORT | abi.SVC_FLAG_ROUTABLE | abi.SVC_FLAG_EXT_LOCAL_SCOPE
        frontend(m, [(1, P.POD_B_IP, BPORT)], flags=flags, flags2=abi.SVC_FLAG2_TWO_SCOPES)
        frontend(m, [(2, REMOTE_POD, BPORT)], flags=flags, flags2=abi.SVC_FLAG2_TWO_SCOPES,
                 scope=abi.LB_LOOKUP_SCOPE_INT)
    ext = {Ether(run(from_netdev, to_nodeport(sport=52000 + i)).data)[IP].dst for i in range(8)}
    assert ext == {P.POD_B_IP}
    pod = Ether(bytes(Ether(src=P.POD_A_MAC, dst=P.LXC_A_MAC) / IP(src=P.POD_A_IP, dst=NODE_IP)
                      / TCP(sport=53000, dport=NODE_PORT, flags="S")))
    assert Ether(testrun.run(from_container.fd, pod, ctx=testrun.tc_ctx(1)).data)[IP].dst \
        == REMOTE_POD


def jhash_3words(a: int, b: int, c: int, initval: int) -> int:
    """Linux's jhash_3words, as lib/lb.h computes Maglev's flow hash."""
    m = 0xFFFFFFFF

    def rol(w, s):
        return ((w << s) | (w >> (32 - s))) & m
    initval = (initval + 0xDEADBEEF + (3 << 2)) & m
    a, b, c = (a + initval) & m, (b + initval) & m, (c + initval) & m
    for x, y, s in (("c", "b", 14), ("a", "c", 11), ("b", "a", 25), ("c", "b", 16),
                    ("a", "c", 4), ("b", "a", 14), ("c", "b", 24)):
        v = {"a": a, "b": b, "c": c}
        v[x] = ((v[x] ^ v[y]) - rol(v[y], s)) & m
        a, b, c = v["a"], v["b"], v["c"]
    return c


def maglev_predict(table, client, sport, dport, proto=6):
    """The backend id lib/lb.h picks for a flow: the table at jhash(saddr, ports, proto)."""
    h = jhash_3words(abi.ip4_to_be32(client), (abi.be16(dport) << 16) | abi.be16(sport), proto,
                     abi.HASH_INIT4_SEED)
    return table[h % len(table)]


@pytest.fixture
def maglev_service(host):
    m = setup(host, masquerade=False)
    backends = [(1, P.POD_A_IP, BPORT), (2, P.POD_B_IP, BPORT), (3, REMOTE_POD, BPORT)]
    remote_backend(m)
    frontend(m, backends, algo=abi.LB_ALGORITHM_MAGLEV)
    table = maglev.build_table([(b, maglev.backend_key(ip, p), 1) for b, ip, p in backends],
                               abi.LB_MAGLEV_LUT_SIZE)
    m["cilium_lb4_maglev"].update(abi.Lb4ReverseNatKey(REV_NAT),
                                  abi.Lb4MaglevLut.from_bytes(abi.maglev_lut_bytes(table)))
    return m, table, {b: ip for b, ip, _ in backends}


def test_maglev_picks_the_table_slot_of_the_flow_hash(maglev_service, from_netdev):
    m, table, ips = maglev_service
    seen = set()
    for i in range(30):
        sport = 54000 + i
        want = ips[maglev_predict(table, EXT, sport, NODE_PORT)]
        for _ in range(2):                    # the same tuple again, conntrack forgotten
            m["cilium_ct4_global"].clear()
            m["cilium_snat_v4_external"].clear()
            got = Ether(run(from_netdev, to_nodeport(sport=sport)).data)[IP].dst
            assert got == want, sport
        seen.add(got)
    assert seen == set(ips.values())


def test_maglev_without_a_table_drops(host, from_netdev):
    m = setup(host, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)], algo=abi.LB_ALGORITHM_MAGLEV)
    assert run(from_netdev, to_nodeport()).retval == abi.CTX_ACT_DROP
    assert metrics_totals(m["cilium_metrics"])[(abi.DROP_NO_SERVICE, abi.METRIC_INGRESS)][0] == 1


def test_backend_on_this_node_ip_is_dnated_only_and_left_to_the_stack(host, from_netdev):
    """A host-network backend on this node: DNAT without SNAT, then the node's stack."""
    m = setup(host, masquerade=False)
    frontend(m, [(1, NODE_IP, 10250)])
    pkt = to_nodeport(sport=51010)
    res = run(from_netdev, pkt)
    assert res.retval == abi.CTX_ACT_OK
    testrun.assert_packet(rebuilt(pkt, fields=[(TCP, "dport", 10250)]), res.data)


def test_a_later_flow_on_the_same_tuple_through_another_frontend_owns_the_reply(host,
                                                                                 from_netdev):
    m = setup(host, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)], addr="198.51.100.7", port=80, rev_nat=31,
             flags=abi.SVC_FLAG_EXTERNAL_IP | abi.SVC_FLAG_ROUTABLE)
    frontend(m, [(1, P.POD_B_IP, BPORT)])                       # NodePort, rev_nat 21
    run(from_netdev, in_pkt(EXT, "198.51.100.7", TCP(sport=51020, dport=80, flags="S")))
    run(from_netdev, to_nodeport(sport=51020))
    rep = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(EXT), saddr=abi.ip4_to_be32(P.POD_B_IP),
                          dport=abi.be16(51020), sport=abi.be16(BPORT), nexthdr=6,
                          flags=abi.TUPLE_F_IN)
    assert m["cilium_ct4_global"].get(rep).rev_nat_index == REV_NAT


def test_two_scopes_while_the_internal_head_is_missing_serve_the_external_set(lxc,
                                                                              from_container):
    from datapath.maps import open_maps

    from .test_lb import _ep, sender
    m = open_maps(lxc)
    _ep(m, P.POD_A_IP, P.POD_A_MAC, P.LXC_A_MAC, P.LXC_A_IFINDEX, 1000)
    _ep(m, P.POD_B_IP, P.POD_B_MAC, P.LXC_B_MAC, P.LXC_B_IFINDEX, 1001)
    sender(m, P.POD_A_IP)
    frontend(m, [(1, P.POD_B_IP, BPORT)], flags2=abi.SVC_FLAG2_TWO_SCOPES)
    pod = Ether(bytes(Ether(src=P.POD_A_MAC, dst=P.LXC_A_MAC) / IP(src=P.POD_A_IP, dst=NODE_IP)
                      / TCP(sport=53100, dport=NODE_PORT, flags="S")))
    res = testrun.run(from_container.fd, pod, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_REDIRECT and Ether(res.data)[IP].dst == P.POD_B_IP


def test_backend_reply_to_a_pod_on_another_node_gets_the_frontend_before_the_tunnel(
        lxc, from_container):
    """Tunnel mode: a NodePort backend's reply to a remote client pod would reach that pod
    from the backend's own address if the translation waited for the native device."""
    from datapath.maps import open_maps

    from .test_lb import _ep, sender
    m = open_maps(lxc)
    _ep(m, P.POD_B_IP, P.POD_B_MAC, P.LXC_B_MAC, P.LXC_B_IFINDEX, 1001)
    sender(m, P.POD_B_IP)
    m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
        flags=abi.NODE_CFG_F_TUNNEL, tunnel_ifindex=1, node_ip=abi.ip4_to_be32(NODE_IP)))
    remote_backend(m)                              # REMOTE_POD: the client, on k8s-w1
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    rep = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(REMOTE_POD), saddr=abi.ip4_to_be32(P.POD_B_IP),
                          dport=abi.be16(45000), sport=abi.be16(BPORT), nexthdr=6,
                          flags=abi.TUPLE_F_IN)
    m["cilium_ct4_global"].update(rep, abi.CtEntry(backend_id=1, rev_nat_index=REV_NAT,
                                                   flags=abi.CT_F_NODEPORT, lifetime=1 << 30))
    reply = Ether(bytes(Ether(src=P.POD_B_MAC, dst=P.LXC_B_MAC)
                        / IP(src=P.POD_B_IP, dst=REMOTE_POD, ttl=64, id=5)
                        / TCP(sport=BPORT, dport=45000, flags="SA")))
    res = testrun.run(from_container.fd, reply, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_REDIRECT                      # into the tunnel
    want = rebuilt(reply, fields=[(IP, "src", NODE_IP), (TCP, "sport", NODE_PORT)],
                   ttl_dec=True)
    testrun.assert_packet(want, res.data)


def test_local_backends_icmp_error_leaves_with_the_frontend(host, from_netdev, to_netdev):
    """A local UDP backend's port-unreachable to an outside client: the outer source and the
    quoted destination become the frontend (node:nodePort), every checksum right."""
    from scapy.layers.inet import ICMP, IPerror, UDPerror
    m = setup(host, masquerade=True)
    frontend(m, [(1, P.POD_B_IP, BPORT)], proto=17)
    delivered = Ether(run(from_netdev, to_nodeport(sport=51030, proto="udp")).data)
    err = out_pkt(P.POD_B_IP, EXT, ICMP(type=3, code=3) / bytes(delivered[IP]))
    res = run(to_netdev, err)
    assert res.retval == abi.CTX_ACT_OK
    quoted = IPerror(bytes(delivered[IP]))
    quoted.dst = NODE_IP
    quoted[UDPerror].dport = NODE_PORT
    del quoted.chksum
    del quoted[UDPerror].chksum
    want = (Ether(src=err[Ether].src, dst=err[Ether].dst)
            / IP(src=NODE_IP, dst=EXT, ttl=err[IP].ttl, id=err[IP].id)
            / ICMP(type=3, code=3) / IPerror(bytes(quoted)))
    testrun.assert_packet(Ether(bytes(want)), res.data)


def test_icmp_error_from_outside_about_a_local_backends_reply_reaches_the_pod(host,
                                                                             from_netdev):
    """A router between the node and the client says "fragmentation needed" about the reply
    (node:nodePort -> client): the pod that sent it gets the error, quoting itself."""
    from scapy.layers.inet import ICMP, IPerror, TCPerror
    m = setup(host, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    run(from_netdev, to_nodeport(sport=51040))
    sent = IP(src=NODE_IP, dst=EXT, ttl=63, id=77) / TCP(sport=NODE_PORT, dport=51040,
                                                         flags="PA") / (b"x" * 20)
    sent = IP(bytes(sent))
    err = in_pkt("198.51.100.1", NODE_IP, ICMP(type=3, code=4, nexthopmtu=1400) / bytes(sent))
    res = run(from_netdev, err)
    assert res.retval == abi.CTX_ACT_REDIRECT
    quoted = IPerror(bytes(sent))
    quoted.src = P.POD_B_IP
    quoted[TCPerror].sport = BPORT
    del quoted.chksum
    del quoted[TCPerror].chksum
    want = (Ether(src=P.LXC_B_MAC, dst=P.POD_B_MAC)
            / IP(src="198.51.100.1", dst=P.POD_B_IP, ttl=62, id=31)
            / ICMP(type=3, code=4, nexthopmtu=1400) / IPerror(bytes(quoted)))
    testrun.assert_packet(Ether(bytes(want)), res.data)
