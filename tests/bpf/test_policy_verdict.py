"""Policy verdict events (bpf/lib/policy_log.h) read back through datapath/events.py: a new flow
an enforced direction allows and every packet it denies leave one policy_verdict_notify with the
deciding endpoint, the peer's identity, port, protocol, direction, match type, verdict, hook and
the packet; an established flow, and a direction the endpoint does not enforce, leave none. A
pod's ingress policy denying a packet from a pod on the same node is that pod's ingress drop
(counted and reported so, counted so with the events compiled out too), although the sender's
program carries it out; another drop right after it is the program's own again."""
from __future__ import annotations

import time

import pytest

from datapath import abi, events, testrun
from datapath.maps import metrics_totals, open_maps

from . import packets as P
from .conftest import event_ring
from .test_trace import _clean, lxc_off_obj  # noqa: F401 (a fixture)
from .endpoints import add_pods_a_and_b

IN, OUT = abi.POLICY_INGRESS, abi.POLICY_EGRESS
TCP_P, UDP_P = 6, 17
ENFORCED = abi.POLICY_ENTRY_F_LOG


def rule(maps, ep, identity, direction, proto=0, port=0, port_prefix=16, deny=False,
         enforced=True):
    """One cilium_policy_v2 entry with the flags the agent gives it."""
    key = abi.policy_key(ep, identity, direction, proto, port, port_prefix)
    flags = abi.policy_entry_flags(proto, port_prefix if proto else 0, enforced)
    maps["cilium_policy_v2"].update(key, abi.policy_entry(deny, flags))
    return key


def drained(obj) -> list:
    out = [events.decode(r) for r in event_ring(obj).poll(0)]
    assert None not in out
    return out


def verdicts(out) -> list[events.PolicyVerdictEvent]:
    return [e for e in out if isinstance(e, events.PolicyVerdictEvent)]


def drops(out) -> list[events.DropEvent]:
    return [e for e in out if isinstance(e, events.DropEvent)]


def run(prog, pkt, ifindex=P.LXC_A_IFINDEX):
    return testrun.run(prog.fd, pkt, ctx=testrun.tc_ctx(ifindex))


@pytest.fixture
def pods(lxc):
    """Pods A (sending, on lo) and B on this node, with no policy entry at all."""
    m = open_maps(lxc)
    add_pods_a_and_b(m)
    return m


def check(ev, pkt, *, source, remote, verdict, port, proto, direction, match, hook):
    raw = bytes(pkt)
    assert ev.type == abi.CILIUM_NOTIFY_POLICY_VERDICT and ev.version == abi.NOTIFY_CAPTURE_VER
    assert (ev.source, ev.remote_identity, ev.verdict) == (source, remote, verdict)
    assert (ev.dst_port, ev.proto, ev.direction) == (port, proto, direction)
    assert (ev.match_type, ev.match_name) == (match, abi.POLICY_MATCH_NAMES[match])
    assert (ev.hook, ev.audited, ev.auth_type) == (hook, False, 0)
    assert ev.allowed == (verdict == 0)
    assert ev.len_orig == len(raw) and ev.data == raw[:abi.TRACE_PAYLOAD_LEN]
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert now - 60 * 10**9 < ev.ktime_ns <= now


def test_no_entry_egress_deny_is_reported_with_match_none(pods, lxc, from_container):
    rule(pods, P.EP_B, 0, IN)                       # B takes anything; A's egress: nothing
    pkt = P.POD_A_TO_POD_B_UDP
    assert run(from_container, pkt).retval == abi.CTX_ACT_DROP
    out = drained(lxc)
    [v] = verdicts(out)
    check(v, pkt, source=P.EP_A, remote=P.ID_B, verdict=-abi.DROP_POLICY, port=53, proto=UDP_P,
          direction="egress", match=abi.POLICY_MATCH_NONE, hook="from-container")
    [d] = drops(out)
    assert (d.reason, d.direction, d.source) == (abi.DROP_POLICY, "egress", P.EP_A)


def test_new_flow_allowed_once_then_established_is_silent(pods, lxc, from_container):
    rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80)
    rule(pods, P.EP_B, P.ID_A, IN, TCP_P, 80)
    syn = P.POD_A_TO_POD_B_TCP_SYN
    assert run(from_container, syn).retval == abi.CTX_ACT_REDIRECT
    eg, ing = verdicts(drained(lxc))                # A's egress, then B's ingress
    check(eg, syn, source=P.EP_A, remote=P.ID_B, verdict=0, port=80, proto=TCP_P,
          direction="egress", match=abi.POLICY_MATCH_L3_L4, hook="from-container")
    check(ing, syn, source=P.EP_B, remote=P.ID_A, verdict=0, port=80, proto=TCP_P,
          direction="ingress", match=abi.POLICY_MATCH_L3_L4, hook="from-container")
    assert eg.packet.dport == 80 and eg.packet.tcp_flags == {"SYN"}
    assert run(from_container, P.POD_A_TO_POD_B_ACK).retval == abi.CTX_ACT_REDIRECT
    assert verdicts(drained(lxc)) == []             # established: no verdict


def test_an_established_flow_re_decided_after_a_policy_change_is_silent(pods, lxc,
                                                                      from_container):
    pods["dp_policy_revision"].update(abi.U32Key(0), abi.PolicyRevision(revision=1))
    rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80)
    rule(pods, P.EP_B, P.ID_A, IN, TCP_P, 80)
    assert run(from_container, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
    drained(lxc)
    pods["dp_policy_revision"].update(abi.U32Key(0), abi.PolicyRevision(revision=2))
    assert run(from_container, P.POD_A_TO_POD_B_ACK).retval == abi.CTX_ACT_REDIRECT
    assert verdicts(drained(lxc)) == []             # decided again, allowed: nothing new


def test_unenforced_direction_reports_nothing(pods, lxc, from_container):
    rule(pods, P.EP_A, 0, OUT, enforced=False)      # A's egress is not enforced
    rule(pods, P.EP_B, 0, IN, enforced=False)
    assert run(from_container, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
    assert verdicts(drained(lxc)) == []


@pytest.mark.parametrize("identity,proto,port_prefix,match", [
    (P.ID_B, 0, 0, abi.POLICY_MATCH_L3_ONLY),
    (P.ID_B, TCP_P, 16, abi.POLICY_MATCH_L3_L4),
    (P.ID_B, TCP_P, 0, abi.POLICY_MATCH_L3_PROTO),
    (0, TCP_P, 16, abi.POLICY_MATCH_L4_ONLY),
    (0, TCP_P, 12, abi.POLICY_MATCH_L4_ONLY),        # a port range
    (0, TCP_P, 0, abi.POLICY_MATCH_PROTO_ONLY),
    (0, 0, 0, abi.POLICY_MATCH_ALL),
])
def test_match_type_names_the_deciding_entry(pods, lxc, from_container, identity, proto,
                                             port_prefix, match):
    rule(pods, P.EP_A, identity, OUT, proto, 80, port_prefix)
    rule(pods, P.EP_B, 0, IN, enforced=False)
    pkt = P.POD_A_TO_POD_B_TCP_SYN
    assert run(from_container, pkt).retval == abi.CTX_ACT_REDIRECT
    [v] = verdicts(drained(lxc))
    check(v, pkt, source=P.EP_A, remote=P.ID_B, verdict=0, port=80, proto=TCP_P,
          direction="egress", match=match, hook="from-container")


def test_deny_entry_is_reported_with_its_match_type(pods, lxc, from_container):
    rule(pods, P.EP_A, 0, OUT)                                  # allow all ...
    rule(pods, P.EP_A, P.ID_B, OUT, TCP_P, 80, deny=True)       # ... but B:80
    pkt = P.POD_A_TO_POD_B_TCP_SYN
    assert run(from_container, pkt).retval == abi.CTX_ACT_DROP
    [v] = verdicts(drained(lxc))
    check(v, pkt, source=P.EP_A, remote=P.ID_B, verdict=-abi.DROP_POLICY_DENY, port=80,
          proto=TCP_P, direction="egress", match=abi.POLICY_MATCH_L3_L4, hook="from-container")


def test_each_denied_packet_is_reported(pods, lxc, from_container):
    rule(pods, P.EP_B, 0, IN)
    for _ in range(3):
        assert run(from_container, P.POD_A_TO_POD_B_UDP).retval == abi.CTX_ACT_DROP
    assert [v.verdict for v in verdicts(drained(lxc))] == [-abi.DROP_POLICY] * 3


def test_same_node_ingress_deny_is_the_destinations_ingress_drop(pods, lxc, from_container):
    rule(pods, P.EP_A, 0, OUT, enforced=False)      # A may send; B's ingress takes nothing
    pkt = P.POD_A_TO_POD_B_TCP_SYN
    assert run(from_container, pkt).retval == abi.CTX_ACT_DROP
    out = drained(lxc)
    [v] = verdicts(out)
    check(v, pkt, source=P.EP_B, remote=P.ID_A, verdict=-abi.DROP_POLICY, port=80,
          proto=TCP_P, direction="ingress", match=abi.POLICY_MATCH_NONE, hook="from-container")
    [d] = drops(out)
    assert (d.reason, d.direction, d.source, d.hook) == \
        (abi.DROP_POLICY, "ingress", P.EP_B, "from-container")
    counted = metrics_totals(pods["cilium_metrics"])
    assert counted.get((abi.DROP_POLICY, abi.METRIC_INGRESS)) == (1, len(pkt))
    assert (abi.DROP_POLICY, abi.METRIC_EGRESS) not in counted
    # the next packet the same program drops for another reason is its own, egress again
    assert run(from_container, P.SPOOFED_SRC_TO_POD_B).retval == abi.CTX_ACT_DROP
    [d] = drops(drained(lxc))
    assert (d.reason, d.direction, d.source) == (abi.DROP_INVALID_SIP, "egress", P.EP_A)


def test_to_container_ingress_verdict(pods, lxc, to_container):
    pods["cilium_ipcache"].update(abi.ipcache_key(f"{P.NODE_CTR_IP}/32"),
                                  abi.remote_endpoint_info(abi.IDENTITY_HOST))
    rule(pods, P.EP_A, abi.IDENTITY_HOST, IN, TCP_P, 8080)
    ok, other = P.HOST_TO_POD_A_TCP_SYN, P.HOST_TO_POD_A_OTHER_PORT
    assert run(to_container, ok).retval == abi.CTX_ACT_OK
    assert run(to_container, other).retval == abi.CTX_ACT_DROP
    allowed, denied = verdicts(drained(lxc))
    check(allowed, ok, source=P.EP_A, remote=abi.IDENTITY_HOST, verdict=0, port=8080,
          proto=TCP_P, direction="ingress", match=abi.POLICY_MATCH_L3_L4, hook="to-container")
    check(denied, other, source=P.EP_A, remote=abi.IDENTITY_HOST, verdict=-abi.DROP_POLICY,
          port=9090, proto=TCP_P, direction="ingress", match=abi.POLICY_MATCH_NONE,
          hook="to-container")


def test_events_compiled_out_still_count_the_ingress_deny_as_ingress(lxc_off_obj):
    from_container = _clean(lxc_off_obj, "cil_from_container")
    m = open_maps(lxc_off_obj)
    add_pods_a_and_b(m)
    rule(m, P.EP_A, 0, OUT, enforced=False)
    pkt = P.POD_A_TO_POD_B_TCP_SYN
    assert run(from_container, pkt).retval == abi.CTX_ACT_DROP
    assert run(from_container, P.SPOOFED_SRC_TO_POD_B).retval == abi.CTX_ACT_DROP
    counted = metrics_totals(m["cilium_metrics"])
    assert counted.get((abi.DROP_POLICY, abi.METRIC_INGRESS)) == (1, len(pkt))
    assert counted.get((abi.DROP_INVALID_SIP, abi.METRIC_EGRESS))[0] == 1
    assert event_ring(lxc_off_obj).poll(0) == []            # nothing sent
