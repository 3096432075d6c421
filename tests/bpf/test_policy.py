"""BPF_PROG_TEST_RUN cases for identity policy (lib/policy.h): the two-lookup decision (allow,
no entry 133, deny 181, deny over allow both ways, wildcard port, port range, any protocol,
SCTP), conntrack (replies both ways, related ICMP errors, an established flow re-checked after
a deny, ICMP echo), the verdict cached in conntrack (skipped lookups while dp_policy_revision
holds, a removed allow dropping the flow once it is bumped, a relabelled peer), fragments (175 without a first fragment), CIDR identities with an except,
and every enforcement point: from-container (egress after ClusterIP DNAT, ingress on local
delivery, no policy for a hairpin), to-container (the host), from-netdev (ipcache identity),
from-overlay (VNI, HOST as REMOTE_NODE). Packets byte for byte; the drop reason counted in
cilium_metrics and the deciding entry's packets/bytes counted."""
from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from datapath import abi, build, testrun
from datapath.maps import metrics_totals, open_maps

from . import packets as P
from .conftest import mocked_object
from .endpoints import add_endpoint, add_pods_a_and_b, allow_all, set_sender
from .mocks import MOCK_TUNNEL_KEY

IN, OUT = abi.POLICY_INGRESS, abi.POLICY_EGRESS
TCP_P, UDP_P, ICMP_P, SCTP_P = 6, 17, 1, 132


def rule(maps, ep, identity, direction, proto=0, port=0, port_prefix=16, deny=False):
    """Write one cilium_policy_v2 entry; returns its key (to read its counters back)."""
    key = abi.policy_key(ep, identity, direction, proto, port, port_prefix)
    maps["cilium_policy_v2"].update(key, abi.policy_entry(deny))
    return key


def counted(maps, key):
    """(packets, bytes) an entry decided."""
    e = maps["cilium_policy_v2"].get(key)
    return e.packets, e.bytes


def metric(maps, reason, direction=abi.METRIC_EGRESS):
    return metrics_totals(maps["cilium_metrics"]).get((reason, direction), (0, 0))


def sender(maps, ip):
    """From-container runs on lo (ifindex 1): make it the veth of the endpoint at ip."""
    set_sender(maps, ip, 1)


def run(prog, pkt, **ctx):
    return testrun.run(prog.fd, pkt, ctx=testrun.tc_ctx(1, **ctx))


def ct(maps, daddr, saddr, dport, sport, proto, flags):
    t = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(daddr), saddr=abi.ip4_to_be32(saddr),
                        dport=abi.be16(dport), sport=abi.be16(sport), nexthdr=proto,
                        flags=abi.TUPLE_F_POLICY | flags)
    name = "cilium_ct4_global" if proto == TCP_P else "cilium_ct_any4_global"
    return maps[name].get(t)


def delivered_to_b(pkt):
    return P.routed(pkt, src_mac=P.LXC_B_MAC, dst_mac=P.POD_B_MAC)


def delivered_to_a(pkt):
    return P.routed(pkt, src_mac=P.LXC_A_MAC, dst_mac=P.POD_A_MAC)


@pytest.fixture
def pods(lxc):
    """Pods A (sending, on lo) and B on this node, with no policy entry at all."""
    m = open_maps(lxc)
    add_pods_a_and_b(m)
    return m


# ---- the decision ----

def test_allowed_flow_is_delivered_and_counted_in_the_deciding_entries(pods, from_container):
    eg = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80)
    ing = rule(pods, P.EP_B, P.ID_A, IN, TCP_P, 80)
    pkt = P.POD_A_TO_POD_B_TCP_SYN
    res = run(from_container, pkt)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(delivered_to_b(pkt), res.data)
    assert counted(pods, eg) == (1, len(pkt)) and counted(pods, ing) == (1, len(pkt))
    assert metric(pods, abi.REASON_FORWARDED) == (1, len(pkt))
    out = ct(pods, P.POD_B_IP, P.POD_A_IP, 80, 40000, TCP_P, abi.TUPLE_F_OUT)   # A opened it
    inn = ct(pods, P.POD_B_IP, P.POD_A_IP, 80, 40000, TCP_P, abi.TUPLE_F_IN)    # B accepted it
    assert out.src_sec_id == P.ID_B and inn.src_sec_id == P.ID_A
    assert 55 <= out.lifetime - time.monotonic() <= abi.CT_SYN_TIMEOUT + 1     # a SYN: 60 s


@pytest.mark.parametrize("side", ["egress", "ingress"])
def test_no_entry_is_denied_133(pods, from_container, side):
    allow_all(pods, P.EP_B if side == "egress" else P.EP_A)     # only the other end allows
    pkt = P.POD_A_TO_POD_B_TCP_SYN
    res = run(from_container, pkt)
    assert res.retval == abi.CTX_ACT_DROP
    # B's ingress denying it is B's ingress drop, though A's program carries it out
    direction = abi.METRIC_EGRESS if side == "egress" else abi.METRIC_INGRESS
    assert metric(pods, abi.DROP_POLICY, direction) == (1, len(pkt))
    assert abi.reason_string(abi.DROP_POLICY) == "Policy denied"
    assert len(pods["cilium_ct4_global"]) == (0 if side == "egress" else 1)


def test_explicit_deny_is_181_and_counted_in_the_deny_entry(pods, from_container):
    allow_all(pods, P.EP_B)
    deny = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80, deny=True)
    pkt = P.POD_A_TO_POD_B_TCP_SYN
    assert run(from_container, pkt).retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY_DENY) == (1, len(pkt))
    assert counted(pods, deny) == (1, len(pkt))
    assert abi.reason_string(abi.DROP_POLICY_DENY) == "Policy denied by denylist"


@pytest.mark.parametrize("case", ["l2-deny-beats-l1-allow", "l1-deny-beats-l2-allow"])
def test_deny_over_allow(pods, from_container, case):
    allow_all(pods, P.EP_B)
    if case == "l2-deny-beats-l1-allow":
        deny = rule(pods, P.EP_A, 0, OUT, TCP_P, 80, deny=True)          # any peer, tcp/80
        allow = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80)               # pod B, tcp/80
    else:
        deny = rule(pods, P.EP_A, P.ID_B, OUT, deny=True)                # pod B, anything
        allow = rule(pods, P.EP_A, 0, OUT, TCP_P, 80)                    # any peer, tcp/80
    pkt = P.POD_A_TO_POD_B_TCP_SYN
    assert run(from_container, pkt).retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY_DENY)[0] == 1
    assert counted(pods, deny) == (1, len(pkt)) and counted(pods, allow) == (0, 0)


def test_allow_in_both_lookups_counts_the_identity_entry(pods, from_container):
    allow_all(pods, P.EP_B)
    l1 = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80)
    l2 = rule(pods, P.EP_A, 0, OUT)
    assert run(from_container, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
    assert counted(pods, l1)[0] == 1 and counted(pods, l2) == (0, 0)


def _verdicts(pods, prog, packets):
    out = []
    for pkt in packets:
        pods["cilium_ct4_global"].clear()
        pods["cilium_ct_any4_global"].clear()
        out.append(run(prog, pkt).retval)
    return out


def test_wildcard_port_range_and_any_protocol(pods, from_container):
    allow_all(pods, P.EP_B)
    ok, drop = abi.CTX_ACT_REDIRECT, abi.CTX_ACT_DROP
    tcp = [P.pod_a_to_pod_b(TCP(sport=40000, dport=port, flags="S"))
           for port in (80, 443, 8079, 8080, 8083, 8084)]
    udp53 = P.pod_a_to_pod_b(UDP(sport=40001, dport=53) / b"q")
    # every TCP port
    wild = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, port_prefix=0)
    assert _verdicts(pods, from_container, tcp + [udp53, P.POD_A_TO_POD_B_PING]) == \
        [ok] * 6 + [drop, drop]
    assert counted(pods, wild)[0] == 6
    # 8080-8083: one prefix entry (8080 = 0x1f90, 14 bits)
    pods["cilium_policy_v2"].delete(wild)
    rng = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 8080, port_prefix=14)
    assert _verdicts(pods, from_container, tcp) == [drop, drop, drop, ok, ok, drop]
    assert counted(pods, rng)[0] == 2
    # any protocol: TCP, UDP and ICMP alike
    pods["cilium_policy_v2"].delete(rng)
    rule(pods, P.EP_A, P.ID_B, OUT)
    assert _verdicts(pods, from_container, [tcp[0], udp53, P.POD_A_TO_POD_B_PING]) == [ok] * 3


def test_icmp_matches_only_rules_without_ports(pods, from_container):
    allow_all(pods, P.EP_B)
    rule(pods, P.EP_A, P.ID_B, OUT, ICMP_P, 0x4242)            # a port on ICMP never matches
    assert run(from_container, P.POD_A_TO_POD_B_PING).retval == abi.CTX_ACT_DROP
    rule(pods, P.EP_A, P.ID_B, OUT, ICMP_P, port_prefix=0)     # the protocol, no port
    assert run(from_container, P.POD_A_TO_POD_B_PING).retval == abi.CTX_ACT_REDIRECT


def test_sctp_port_match(pods, from_container):
    allow_all(pods, P.EP_B)
    rule(pods, P.EP_A, P.ID_B, OUT, SCTP_P, 9999)
    res = run(from_container, P.POD_A_TO_POD_B_SCTP)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(delivered_to_b(P.POD_A_TO_POD_B_SCTP), res.data)
    assert ct(pods, P.POD_B_IP, P.POD_A_IP, 9999, 5000, SCTP_P, abi.TUPLE_F_OUT) is not None
    assert run(from_container, P.POD_A_TO_POD_B_SCTP_OTHER_PORT).retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY)[0] == 1


# ---- conntrack ----

def test_reply_passes_ingress_by_conntrack(pods, from_container):
    """A may open tcp/80 to B and has no ingress entry: B's answer still reaches it."""
    eg = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80)
    allow_all(pods, P.EP_B)
    assert run(from_container, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
    sender(pods, P.POD_B_IP)
    res = run(from_container, P.POD_B_TO_POD_A_SYNACK)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(delivered_to_a(P.POD_B_TO_POD_A_SYNACK), res.data)
    out = ct(pods, P.POD_B_IP, P.POD_A_IP, 80, 40000, TCP_P, abi.TUPLE_F_OUT)
    assert out.packets == 2 and counted(pods, eg)[0] == 1          # the reply is no policy's
    # but B opening its own connection to A is A's ingress policy's: none
    res = run(from_container, P.POD_B_TO_POD_A_TCP_SYN)
    assert res.retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY, abi.METRIC_INGRESS)[0] == 1


def test_reply_passes_egress_by_conntrack(pods, from_container):
    """B accepts tcp/80 from A and has no egress entry: its answer still leaves."""
    allow_all(pods, P.EP_A)
    ing = rule(pods, P.EP_B, P.ID_A, IN, TCP_P, 80)
    assert run(from_container, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
    sender(pods, P.POD_B_IP)
    res = run(from_container, P.POD_B_TO_POD_A_SYNACK)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(delivered_to_a(P.POD_B_TO_POD_A_SYNACK), res.data)
    assert counted(pods, ing)[0] == 1
    assert run(from_container, P.POD_B_TO_POD_A_TCP_SYN).retval == abi.CTX_ACT_DROP


def test_echo_reply_passes_by_conntrack(pods, from_container):
    rule(pods, P.EP_A, P.ID_B, OUT)
    rule(pods, P.EP_B, P.ID_A, IN)
    assert run(from_container, P.POD_A_TO_POD_B_PING).retval == abi.CTX_ACT_REDIRECT
    # the request's identifier is its source port, the reply's its destination port
    assert ct(pods, P.POD_B_IP, P.POD_A_IP, 0, 0x4242, ICMP_P, abi.TUPLE_F_OUT) is not None
    sender(pods, P.POD_B_IP)
    res = run(from_container, P.POD_B_TO_POD_A_PONG)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(delivered_to_a(P.POD_B_TO_POD_A_PONG), res.data)


def test_related_icmp_error_passes(pods, from_container):
    """B has no egress entry and A no ingress entry: B's port unreachable about A's datagram
    passes both as RELATED; the same error about a datagram A never sent does not."""
    rule(pods, P.EP_A, P.ID_B, OUT, UDP_P, 53)
    rule(pods, P.EP_B, P.ID_A, IN, UDP_P, 53)
    assert run(from_container, P.POD_A_TO_POD_B_UDP).retval == abi.CTX_ACT_REDIRECT
    sender(pods, P.POD_B_IP)
    err = P.POD_B_PORT_UNREACHABLE_TO_POD_A
    res = run(from_container, err)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(delivered_to_a(err), res.data)
    res = run(from_container, P.POD_B_UNRELATED_UNREACHABLE_TO_POD_A)
    assert res.retval == abi.CTX_ACT_DROP and metric(pods, abi.DROP_POLICY)[0] == 1


def test_related_icmp_error_must_quote_the_endpoints_own_packet(pods, from_container):
    """An error quoting a tracked flow that is not the endpoint's (B's datagram to pod C) is
    no RELATED for it: A receiving it from B (no ingress entry) drops 133, and so does A
    sending one (no egress entry); B allows everything, so only A's side decides."""
    allow_all(pods, P.EP_B)
    sender(pods, P.POD_B_IP)
    assert run(from_container, P.POD_B_TO_REMOTE_POD_C_UDP).retval == abi.CTX_ACT_OK
    assert ct(pods, P.POD_C_IP, P.POD_B_IP, 53, 40200, UDP_P, abi.TUPLE_F_OUT) is not None
    err = P.POD_B_UNREACHABLE_ABOUT_POD_C_FLOW_TO_POD_A
    res = run(from_container, err)
    assert res.retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY, abi.METRIC_INGRESS) == (1, len(err))    # A's ingress
    sender(pods, P.POD_A_IP)
    err = P.POD_A_UNREACHABLE_ABOUT_POD_C_FLOW_TO_POD_B
    assert run(from_container, err).retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY) == (1, len(err))                       # A's egress


def test_established_flow_is_rechecked_after_a_deny_is_added(pods, from_container):
    allow_all(pods, P.EP_B)
    allow = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80)
    assert run(from_container, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
    assert run(from_container, P.POD_A_TO_POD_B_ACK).retval == abi.CTX_ACT_REDIRECT
    assert counted(pods, allow)[0] == 2                          # every forward packet
    deny = rule(pods, P.EP_A, 0, OUT, TCP_P, 80, deny=True)
    assert run(from_container, P.POD_A_TO_POD_B_ACK).retval == abi.CTX_ACT_DROP
    assert counted(pods, deny) == (1, len(P.POD_A_TO_POD_B_ACK))
    assert metric(pods, abi.DROP_POLICY_DENY)[0] == 1


# ---- the verdict cached in conntrack (dp_policy_revision) ----

@pytest.fixture
def revision(lxc):
    """set(n): the agent's policy revision (dp_policy_revision[0]); back to 0 (no caching)
    after the test, since the clean fixture does not know this map."""
    table = lxc["dp_policy_revision"]

    def set_revision(n: int) -> None:
        table[table.Key(0)] = table.Leaf(n, 0)

    yield set_revision
    set_revision(0)


def test_cached_verdict_skips_the_lookups_until_the_revision_moves(pods, from_container,
                                                                   revision):
    revision(1)
    allow_all(pods, P.EP_B)
    allow = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80)
    res = run(from_container, P.POD_A_TO_POD_B_TCP_SYN)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(delivered_to_b(P.POD_A_TO_POD_B_TCP_SYN), res.data)
    out = ct(pods, P.POD_B_IP, P.POD_A_IP, 80, 40000, TCP_P, abi.TUPLE_F_OUT)
    assert out.policy_rev == 1 and out.src_sec_id == P.ID_B
    for _ in range(3):
        res = run(from_container, P.POD_A_TO_POD_B_ACK)
        assert res.retval == abi.CTX_ACT_REDIRECT
        testrun.assert_packet(delivered_to_b(P.POD_A_TO_POD_B_ACK), res.data)
    assert counted(pods, allow)[0] == 1                 # only the first packet was decided
    out = ct(pods, P.POD_B_IP, P.POD_A_IP, 80, 40000, TCP_P, abi.TUPLE_F_OUT)
    assert out.packets == 4                             # conntrack counts them all
    revision(2)                                         # any change: the next packet decides
    assert run(from_container, P.POD_A_TO_POD_B_ACK).retval == abi.CTX_ACT_REDIRECT
    assert counted(pods, allow)[0] == 2
    assert ct(pods, P.POD_B_IP, P.POD_A_IP, 80, 40000, TCP_P, abi.TUPLE_F_OUT).policy_rev == 2


def test_removed_allow_drops_an_established_flow_once_the_revision_is_bumped(
        pods, from_container, revision):
    revision(7)
    allow_all(pods, P.EP_B)
    allow = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80)
    assert run(from_container, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
    assert run(from_container, P.POD_A_TO_POD_B_ACK).retval == abi.CTX_ACT_REDIRECT
    pods["cilium_policy_v2"].delete(allow)
    # the agent bumps the revision after writing the maps: until then the cache stands
    assert run(from_container, P.POD_A_TO_POD_B_ACK).retval == abi.CTX_ACT_REDIRECT
    revision(8)
    res = run(from_container, P.POD_A_TO_POD_B_ACK)
    assert res.retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY) == (1, len(P.POD_A_TO_POD_B_ACK))
    assert run(from_container, P.POD_A_TO_POD_B_ACK).retval == abi.CTX_ACT_DROP   # stays
    assert metric(pods, abi.DROP_POLICY)[0] == 2


def test_cached_verdict_is_per_peer_identity(pods, from_container, revision):
    """A peer whose identity changes is decided again without a revision bump (an identity
    change need not touch the policy map)."""
    revision(1)
    allow_all(pods, P.EP_A)
    rule(pods, P.EP_B, P.ID_A, IN, TCP_P, 80)
    assert run(from_container, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
    assert run(from_container, P.POD_A_TO_POD_B_ACK).retval == abi.CTX_ACT_REDIRECT
    add_endpoint(pods, P.POD_A_IP, ifindex=P.LXC_A_IFINDEX, lxc_id=P.EP_A, mac=P.POD_A_MAC,
                 node_mac=P.LXC_A_MAC, sec_id=P.ID_A + 77, policy=False)   # A relabelled
    sender(pods, P.POD_A_IP)            # both of A's rows, as the agent writes them
    res = run(from_container, P.POD_A_TO_POD_B_ACK)
    assert res.retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY, abi.METRIC_INGRESS) == \
        (1, len(P.POD_A_TO_POD_B_ACK))          # B's ingress


# ---- fragments ----

def test_fragments_of_an_allowed_flow_and_an_orphan_later_fragment(pods, from_container):
    rule(pods, P.EP_A, P.ID_B, OUT, UDP_P, 53)
    rule(pods, P.EP_B, P.ID_A, IN, UDP_P, 53)
    for frag in (P.POD_A_TO_POD_B_FRAG_FIRST, P.POD_A_TO_POD_B_FRAG_LATER):
        res = run(from_container, frag)
        assert res.retval == abi.CTX_ACT_REDIRECT
        testrun.assert_packet(delivered_to_b(frag), res.data)
    key = abi.Ipv4FragId(daddr=abi.ip4_to_be32(P.POD_B_IP), saddr=abi.ip4_to_be32(P.POD_A_IP),
                         id=abi.be16(77), proto=UDP_P)
    ports = pods["cilium_ipv4_frag_datagrams"].get(key)
    assert (abi.be16(ports.sport), abi.be16(ports.dport)) == (40020, 53)
    res = run(from_container, P.POD_A_TO_POD_B_FRAG_ORPHAN)
    assert res.retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_FRAG_NOT_FOUND) == (1, len(P.POD_A_TO_POD_B_FRAG_ORPHAN))
    assert abi.reason_string(175) == "First logical datagram fragment not found"


def test_later_fragment_is_checked_on_its_first_fragments_port(pods, from_container):
    allow_all(pods, P.EP_B)
    rule(pods, P.EP_A, P.ID_B, OUT, UDP_P, 53)
    assert run(from_container, P.POD_A_TO_POD_B_FRAG_FIRST).retval == abi.CTX_ACT_REDIRECT
    pods["cilium_policy_v2"].delete(abi.policy_key(P.EP_A, P.ID_B, OUT, UDP_P, 53))
    rule(pods, P.EP_A, P.ID_B, OUT, UDP_P, 54)
    assert run(from_container, P.POD_A_TO_POD_B_FRAG_LATER).retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY)[0] == 1



def test_a_denied_first_fragment_records_no_ports(pods, to_container):
    """Found by the fuzzer (tests/bpf/fuzz.py): the first fragment of a datagram that policy
    denies is dropped without an entry in cilium_ipv4_frag_datagrams (its later fragments are
    dropped as orphans); an allowed one is recorded."""
    pods["cilium_ipcache"].update(abi.ipcache_key(f"{P.NODE_CTR_IP}/32"),
                                  abi.remote_endpoint_info(abi.IDENTITY_HOST))
    rule(pods, P.EP_A, abi.IDENTITY_HOST, IN, UDP_P, 53)
    res = run(to_container, P.HOST_TO_POD_A_UDP_FRAG_FIRST)
    assert res.retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY, abi.METRIC_INGRESS)[0] == 1
    assert len(pods["cilium_ipv4_frag_datagrams"]) == 0
    rule(pods, P.EP_A, abi.IDENTITY_HOST, IN, UDP_P, 9999)
    assert run(to_container, P.HOST_TO_POD_A_UDP_FRAG_FIRST).retval == abi.CTX_ACT_OK
    assert len(pods["cilium_ipv4_frag_datagrams"]) == 1


# ---- identities: CIDR, service backends, hairpin ----

def _cidr_ipcache(maps):
    maps["cilium_ipcache"].update(abi.ipcache_key(P.CIDR_NET),
                                  abi.remote_endpoint_info(P.ID_CIDR_NET))
    maps["cilium_ipcache"].update(abi.ipcache_key(P.CIDR_EXCEPT),
                                  abi.remote_endpoint_info(P.ID_CIDR_EXCEPT))


def test_cidr_with_except(pods, from_container):
    """toCIDRSet 203.0.113.0/24 except 203.0.113.128/25: the agent allows the /24's identity
    only; the /25 has its own identity, so .200 is denied."""
    _cidr_ipcache(pods)
    allowed = rule(pods, P.EP_A, P.ID_CIDR_NET, OUT)
    res = run(from_container, P.POD_A_TO_CIDR_ALLOWED)
    assert res.retval == abi.CTX_ACT_OK                        # on to the node's stack
    testrun.assert_packet(P.POD_A_TO_CIDR_ALLOWED, res.data)
    assert counted(pods, allowed)[0] == 1
    assert run(from_container, P.POD_A_TO_CIDR_EXCEPTED).retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY)[0] == 1


def test_cidr_identities_are_masqueraded_like_world(host, to_netdev):
    from .test_nat import NODE_IP, out_pkt, rebuilt, setup
    m = setup(host, masquerade=True)
    _cidr_ipcache(m)
    syn = out_pkt(P.POD_A_IP, P.CIDR_EXCEPTED_IP, TCP(sport=40050, dport=443, flags="S"))
    res = run(to_netdev, syn)
    assert res.retval == abi.CTX_ACT_OK
    testrun.assert_packet(rebuilt(syn, fields=[(IP, "src", NODE_IP)]), res.data)


def test_egress_after_clusterip_dnat_is_checked_on_the_backend(pods, from_container):
    from .test_lb import BPORT, VIP, VPORT, add_service, to_vip, translated
    allow_all(pods, P.EP_B)
    add_service(pods, [(1, P.POD_B_IP, BPORT)])
    frontend = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, VPORT)    # the service port: not checked
    assert run(from_container, to_vip(sport=40060)).retval == abi.CTX_ACT_DROP
    assert counted(pods, frontend) == (0, 0) and metric(pods, abi.DROP_POLICY)[0] == 1
    backend = rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, BPORT)
    pkt = to_vip(sport=40061)
    res = run(from_container, pkt)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(translated(pkt, P.POD_B_IP, BPORT, P.LXC_B_MAC, P.POD_B_MAC),
                          res.data)
    assert counted(pods, backend)[0] == 1
    assert VIP not in {abi.be32_to_ip4(k.daddr) for k, _ in pods["cilium_ct4_global"].items()
                       if k.flags & abi.TUPLE_F_POLICY}


def test_hairpin_needs_no_policy(pods, from_container):
    """A pod reaching itself through its own service: Cilium skips policy both ways."""
    from .test_lb import BPORT, add_service, to_vip
    add_service(pods, [(1, P.POD_A_IP, BPORT)])
    res = run(from_container, to_vip(sport=40070))
    assert res.retval == abi.CTX_ACT_REDIRECT
    assert Ether(res.data)[IP].src == "169.254.42.1"
    reply = Ether(bytes(Ether(src=P.POD_A_MAC, dst=P.LXC_A_MAC)
                        / IP(src=P.POD_A_IP, dst="169.254.42.1", ttl=64)
                        / TCP(sport=BPORT, dport=40070, flags="SA")))
    assert run(from_container, reply).retval == abi.CTX_ACT_REDIRECT
    assert metric(pods, abi.DROP_POLICY) == (0, 0)


# ---- the other enforcement points ----

def test_to_container_enforces_ingress_for_the_host(pods, to_container):
    pods["cilium_ipcache"].update(abi.ipcache_key(f"{P.NODE_CTR_IP}/32"),
                                  abi.remote_endpoint_info(abi.IDENTITY_HOST))
    allowed = rule(pods, P.EP_A, abi.IDENTITY_HOST, IN, TCP_P, 8080)
    res = run(to_container, P.HOST_TO_POD_A_TCP_SYN)
    assert res.retval == abi.CTX_ACT_OK
    testrun.assert_packet(P.HOST_TO_POD_A_TCP_SYN, res.data)
    assert counted(pods, allowed) == (1, len(P.HOST_TO_POD_A_TCP_SYN))
    assert ct(pods, P.POD_A_IP, P.NODE_CTR_IP, 8080, 50000, TCP_P,
              abi.TUPLE_F_IN).src_sec_id == abi.IDENTITY_HOST
    res = run(to_container, P.HOST_TO_POD_A_OTHER_PORT)
    assert res.retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_POLICY, abi.METRIC_INGRESS) == \
        (1, len(P.HOST_TO_POD_A_OTHER_PORT))
    for other in (P.ARP_HOST_WHO_HAS_POD_A, P.IPV6_FROM_POD_A):      # not IPv4: passes
        res = run(to_container, other)
        assert res.retval == abi.CTX_ACT_OK
        testrun.assert_packet(other, res.data)
    assert metric(pods, abi.REASON_FORWARDED, abi.METRIC_INGRESS)[0] == 3


def test_to_container_passes_replies_and_needs_an_endpoint(pods, from_container, to_container):
    pods["cilium_ipcache"].update(abi.ipcache_key(f"{P.NODE_CTR_IP}/32"),
                                  abi.remote_endpoint_info(abi.IDENTITY_HOST))
    rule(pods, P.EP_A, abi.IDENTITY_HOST, OUT, TCP_P, 10250)
    to_host = Ether(bytes(Ether(src=P.POD_A_MAC, dst=P.LXC_A_MAC)
                          / IP(src=P.POD_A_IP, dst=P.NODE_CTR_IP, ttl=64)
                          / TCP(sport=40080, dport=10250, flags="S")))
    assert run(from_container, to_host).retval == abi.CTX_ACT_OK
    answer = Ether(bytes(Ether(src=P.LXC_A_MAC, dst=P.POD_A_MAC)
                         / IP(src=P.NODE_CTR_IP, dst=P.POD_A_IP, ttl=64)
                         / TCP(sport=10250, dport=40080, flags="SA")))
    assert run(to_container, answer).retval == abi.CTX_ACT_OK
    pods["dp_ep_ifindex"].delete(abi.EpIfindexKey(1))
    assert run(to_container, answer).retval == abi.CTX_ACT_DROP
    assert metric(pods, abi.DROP_NO_CONFIG, abi.METRIC_INGRESS)[0] == 1


def test_from_netdev_ingress_uses_the_ipcache_identity(host, from_netdev):
    m = open_maps(host)
    add_endpoint(m, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=P.EP_B, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=P.ID_B, policy=False)
    m["cilium_ipcache"].update(abi.ipcache_key(f"{P.POD_C_IP}/32"),
                               abi.remote_endpoint_info(P.ID_C, P.NODE_W1_IP))
    allowed = rule(m, P.EP_B, P.ID_C, IN, TCP_P, 80)
    pkt = P.REMOTE_POD_C_TO_POD_B_SYN
    res = run(from_netdev, pkt)
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(delivered_to_b(pkt), res.data)
    assert counted(m, allowed) == (1, len(pkt))
    # another identity behind that address (or none: world) is not pod C
    m["cilium_ipcache"].update(abi.ipcache_key(f"{P.POD_C_IP}/32"),
                               abi.remote_endpoint_info(P.ID_C + 1, P.NODE_W1_IP))
    m["cilium_ct4_global"].clear()
    assert run(from_netdev, pkt).retval == abi.CTX_ACT_DROP
    m["cilium_ipcache"].delete(abi.ipcache_key(f"{P.POD_C_IP}/32"))
    world = rule(m, P.EP_B, abi.IDENTITY_WORLD, IN, TCP_P, 80, deny=True)
    assert run(from_netdev, pkt).retval == abi.CTX_ACT_DROP
    assert counted(m, world)[0] == 1
    assert metric(m, abi.DROP_POLICY, abi.METRIC_INGRESS)[0] == 1
    assert metric(m, abi.DROP_POLICY_DENY, abi.METRIC_INGRESS)[0] == 1


def test_nodeport_client_identity_comes_from_the_ipcache(host, from_netdev):
    from .test_nat import EXT
    from .test_nodeport import BPORT, frontend, setup, to_nodeport
    m = setup(host, masquerade=False)                # ipcache 0.0.0.0/0 -> world
    m["cilium_policy_v2"].clear()
    allow_all(m, 101, OUT)                          # pod B here is endpoint 101
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    world = rule(m, 101, abi.IDENTITY_WORLD, IN, TCP_P, BPORT)
    assert run(from_netdev, to_nodeport(sport=51100)).retval == abi.CTX_ACT_REDIRECT
    assert counted(m, world)[0] == 1
    m["cilium_ipcache"].update(abi.ipcache_key(f"{EXT}/32"),
                               abi.remote_endpoint_info(P.ID_CIDR_NET))
    assert run(from_netdev, to_nodeport(sport=51101)).retval == abi.CTX_ACT_DROP
    assert metric(m, abi.DROP_POLICY, abi.METRIC_INGRESS)[0] == 1


@pytest.fixture(scope="session")
def overlay_mock_obj(privileged):
    """bpf_overlay.c with bpf_skb_get_tunnel_key mocked (a test run carries no tunnel
    metadata), as Cilium's BPF tests mock helpers."""
    return mocked_object("bpf_overlay.c", MOCK_TUNNEL_KEY)


@pytest.fixture
def overlay_mock(overlay_mock_obj):
    fn = build.load(overlay_mock_obj, "cil_from_overlay", "tc")
    m = open_maps(overlay_mock_obj)
    for table in m.values():
        table.clear()
    yield m, fn
    for table in m.values():
        table.clear()


def test_from_overlay_vni_is_the_identity_and_host_is_remote_node(overlay_mock):
    m, from_overlay = overlay_mock
    add_endpoint(m, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=P.EP_B, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=P.ID_B, policy=False)
    from_c = rule(m, P.EP_B, P.ID_C, IN, TCP_P, 80)
    remote_node = rule(m, P.EP_B, abi.IDENTITY_REMOTE_NODE, IN, TCP_P, 80)
    pkt = P.REMOTE_POD_C_TO_POD_B_SYN               # VNI: pod C's identity
    res = testrun.run(from_overlay.fd, pkt, ctx=testrun.tc_ctx(1, cb=(0, P.ID_C, 0, 0, 0)))
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(delivered_to_b(pkt), res.data)
    assert counted(m, from_c)[0] == 1
    node = P.NODE_W1_TO_POD_B_SYN                   # VNI 1: k8s-w1's host, checked as 6
    res = testrun.run(from_overlay.fd, node,
                      ctx=testrun.tc_ctx(1, cb=(0, abi.IDENTITY_HOST, 0, 0, 0)))
    assert res.retval == abi.CTX_ACT_REDIRECT
    assert counted(m, remote_node) == (1, len(node))
    assert ct(m, P.POD_B_IP, P.NODE_W1_IP, 80, 40041, TCP_P,
              abi.TUPLE_F_IN).src_sec_id == abi.IDENTITY_REMOTE_NODE
    m["cilium_policy_v2"].delete(remote_node)
    rule(m, P.EP_B, abi.IDENTITY_HOST, IN, TCP_P, 80)          # HOST itself never matches
    m["cilium_ct4_global"].clear()
    res = testrun.run(from_overlay.fd, node,
                      ctx=testrun.tc_ctx(1, cb=(0, abi.IDENTITY_HOST, 0, 0, 0)))
    assert res.retval == abi.CTX_ACT_DROP
    assert metric(m, abi.DROP_POLICY, abi.METRIC_INGRESS)[0] == 1
