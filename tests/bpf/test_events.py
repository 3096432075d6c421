"""Drop notifications (bpf/lib/events.h) read back through datapath/events.py: a BPF_PROG_TEST_RUN
drop in each kind of program (a spoofed source from a pod, a service without backends, policy
denies at from-container, to-container and from-netdev, an XDP drop) leaves exactly one
drop record in the object's cilium_events ring with every field right (reason, endpoint ids,
identities, device, hook, direction, length, the packet's first bytes and their summary); a
forwarded packet leaves no drop; a full ring counts the rest as lost; the pinned ring and counters
open without BCC."""
from __future__ import annotations

import os
import secrets
import time

import pytest

from datapath import abi, bpfsys, events, testrun
from datapath.maps import open_maps

from . import packets as P
from .conftest import event_ring
from .endpoints import add_endpoint, set_sender


def drained(obj) -> list[events.DropEvent]:
    """The drops among every record now in the object's ring (each record must decode; trace
    points are tests/bpf/test_trace.py's)."""
    out = [events.decode(r) for r in event_ring(obj).poll(0)]
    assert None not in out
    return [e for e in out if isinstance(e, events.DropEvent)]


def one_event(obj) -> events.DropEvent:
    got = drained(obj)
    assert len(got) == 1, got
    return got[0]


def check_common(ev, pkt, *, reason, hook, direction, ifindex):
    raw = bytes(pkt)
    assert ev.type == abi.CILIUM_NOTIFY_DROP and ev.version == abi.NOTIFY_CAPTURE_VER
    assert (ev.reason, ev.reason_desc) == (reason, abi.reason_string(reason))
    assert (ev.hook, ev.direction, ev.ifindex) == (hook, direction, ifindex)
    assert ev.len_orig == len(raw)
    assert ev.data == raw[:abi.TRACE_PAYLOAD_LEN]
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert now - 60 * 10**9 < ev.ktime_ns <= now
    assert abs(ev.time - time.time()) < 60


def check_summary(ev, *, saddr, daddr, proto, sport=None, dport=None, flags=()):
    s = ev.packet
    assert (s.saddr, s.daddr, s.proto) == (saddr, daddr, proto)
    assert (s.sport, s.dport, s.tcp_flags) == (sport, dport, frozenset(flags))


def stats(obj) -> dict[str, int]:
    return events.stats_totals(open_maps(obj)["dp_event_stats"])


@pytest.fixture
def node(lxc):
    """Pod A (sending, on lo) and pod B, allow-all both."""
    m = open_maps(lxc)
    add_endpoint(m, P.POD_A_IP, ifindex=P.LXC_A_IFINDEX, lxc_id=P.EP_A, mac=P.POD_A_MAC,
                 node_mac=P.LXC_A_MAC, sec_id=P.ID_A)
    add_endpoint(m, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=P.EP_B, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=P.ID_B)
    set_sender(m, P.POD_A_IP, P.LXC_A_IFINDEX)
    return m


def tc_run(prog, pkt, ifindex=P.LXC_A_IFINDEX):
    return testrun.run(prog.fd, pkt, ctx=testrun.tc_ctx(ifindex))


def test_spoofed_source_from_a_pod(node, lxc, from_container):
    pkt = P.SPOOFED_SRC_TO_POD_B
    assert tc_run(from_container, pkt).retval == abi.CTX_ACT_DROP
    ev = one_event(lxc)
    check_common(ev, pkt, reason=abi.DROP_INVALID_SIP, hook="from-container",
                 direction="egress", ifindex=P.LXC_A_IFINDEX)
    # the sender is the endpoint behind the device; the spoofed address is nobody (world)
    assert (ev.source, ev.src_identity) == (P.EP_A, abi.IDENTITY_WORLD)
    assert (ev.dst_identity, ev.dst_id) == (P.ID_B, P.EP_B)
    assert ev.hash == 0                     # skb->hash: nothing computed it in a test run
    check_summary(ev, saddr="172.20.0.99", daddr=P.POD_B_IP, proto=6, sport=20, dport=80,
                  flags={"SYN"})
    assert (ev.packet.src_mac, ev.packet.dst_mac, ev.packet.ttl) == (P.POD_A_MAC, P.LXC_A_MAC, 64)
    assert stats(lxc) == {"sent": 1, "lost": 0}


def test_forwarded_packets_send_no_drop(node, lxc, from_container):
    """Only the two new flows' to-endpoint traces (the ARP reply has no flow)."""
    for pkt in (P.POD_A_TO_POD_B_TCP_SYN, P.POD_A_TO_POD_B_UDP, P.ARP_WHO_HAS_GATEWAY):
        assert tc_run(from_container, pkt).retval == abi.CTX_ACT_REDIRECT
    got = [events.decode(r) for r in event_ring(lxc).poll(0)]
    assert [(type(e).__name__, e.obs_point_name) for e in got] == \
        [("TraceEvent", "to-endpoint")] * 2
    assert stats(lxc) == {"sent": 2, "lost": 0}


def test_service_without_backends(node, lxc, from_container):
    from .test_lb import VIP, VPORT, add_service, to_vip
    add_service(node, [])
    pkt = to_vip()
    assert tc_run(from_container, pkt).retval == abi.CTX_ACT_DROP
    ev = one_event(lxc)
    check_common(ev, pkt, reason=abi.DROP_NO_SERVICE, hook="from-container",
                 direction="egress", ifindex=P.LXC_A_IFINDEX)
    assert (ev.source, ev.src_identity) == (P.EP_A, P.ID_A)
    assert (ev.dst_identity, ev.dst_id) == (abi.IDENTITY_WORLD, 0)     # the VIP: no endpoint
    check_summary(ev, saddr=P.POD_A_IP, daddr=VIP, proto=6, sport=pkt["TCP"].sport, dport=VPORT,
                  flags={"SYN"})


def test_policy_deny_from_container_has_both_identities(lxc, from_container):
    m = open_maps(lxc)
    add_endpoint(m, P.POD_A_IP, ifindex=P.LXC_A_IFINDEX, lxc_id=P.EP_A, mac=P.POD_A_MAC,
                 node_mac=P.LXC_A_MAC, sec_id=P.ID_A, policy=False)     # no egress entry
    add_endpoint(m, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=P.EP_B, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=P.ID_B)
    set_sender(m, P.POD_A_IP, P.LXC_A_IFINDEX)
    pkt = P.POD_A_TO_POD_B_UDP
    assert tc_run(from_container, pkt).retval == abi.CTX_ACT_DROP
    ev = one_event(lxc)
    check_common(ev, pkt, reason=abi.DROP_POLICY, hook="from-container", direction="egress",
                 ifindex=P.LXC_A_IFINDEX)
    assert (ev.source, ev.src_identity, ev.dst_identity, ev.dst_id) == \
        (P.EP_A, P.ID_A, P.ID_B, P.EP_B)
    check_summary(ev, saddr=P.POD_A_IP, daddr=P.POD_B_IP, proto=17, sport=40001, dport=53)


def test_policy_deny_to_container(lxc, to_container):
    m = open_maps(lxc)
    add_endpoint(m, P.POD_A_IP, ifindex=P.LXC_A_IFINDEX, lxc_id=P.EP_A, mac=P.POD_A_MAC,
                 node_mac=P.LXC_A_MAC, sec_id=P.ID_A, policy=False)     # no ingress entry
    set_sender(m, P.POD_A_IP, P.LXC_A_IFINDEX)
    m["cilium_ipcache"].update(abi.ipcache_key(f"{P.NODE_CTR_IP}/32"),
                               abi.remote_endpoint_info(abi.IDENTITY_HOST))
    pkt = P.HOST_TO_POD_A_TCP_SYN
    assert tc_run(to_container, pkt).retval == abi.CTX_ACT_DROP
    ev = one_event(lxc)
    check_common(ev, pkt, reason=abi.DROP_POLICY, hook="to-container", direction="ingress",
                 ifindex=P.LXC_A_IFINDEX)
    assert (ev.source, ev.src_identity, ev.dst_identity, ev.dst_id) == \
        (P.EP_A, abi.IDENTITY_HOST, P.ID_A, P.EP_A)


def test_policy_deny_from_netdev_names_the_local_destination(host, from_netdev):
    m = open_maps(host)
    add_endpoint(m, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=P.EP_B, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=P.ID_B, policy=False)
    m["cilium_ipcache"].update(abi.ipcache_key(f"{P.POD_C_IP}/32"),
                               abi.remote_endpoint_info(P.ID_C, P.NODE_W1_IP))
    pkt = P.REMOTE_POD_C_TO_POD_B_SYN
    assert tc_run(from_netdev, pkt, ifindex=1).retval == abi.CTX_ACT_DROP
    ev = one_event(host)
    check_common(ev, pkt, reason=abi.DROP_POLICY, hook="from-netdev", direction="ingress",
                 ifindex=1)
    assert (ev.source, ev.src_identity, ev.dst_identity, ev.dst_id) == \
        (P.EP_B, P.ID_C, P.ID_B, P.EP_B)
    check_summary(ev, saddr=P.POD_C_IP, daddr=P.POD_B_IP, proto=6, sport=40040, dport=80,
                  flags={"SYN"})


def test_non_ipv4_drop_has_no_identities(lxc, from_container):
    """An ARP packet from a device that is no endpoint's: dropped, identities 0."""
    pkt = P.ARP_WHO_HAS_GATEWAY
    assert tc_run(from_container, pkt).retval == abi.CTX_ACT_DROP
    ev = one_event(lxc)
    check_common(ev, pkt, reason=abi.DROP_UNKNOWN_SENDER, hook="from-container",
                 direction="egress", ifindex=P.LXC_A_IFINDEX)
    assert (ev.source, ev.src_identity, ev.dst_identity, ev.dst_id) == (0, 0, 0, 0)
    s = ev.packet
    assert (s.arp_op, s.saddr, s.daddr) == (1, P.POD_A_IP, P.GATEWAY_IP)


def test_xdp_drop(xdp, xdp_entry):
    from .test_nat import EXT, NODE_IP
    from .test_nodeport import NODE_PORT, frontend, setup, to_nodeport
    m = setup(xdp, masquerade=False)
    frontend(m, [], flags=abi.SVC_FLAG_NODEPORT | abi.SVC_FLAG_ROUTABLE |
             abi.SVC_FLAG_EXT_LOCAL_SCOPE)
    pkt = to_nodeport(sport=51700)
    assert testrun.run(xdp_entry.fd, pkt, ctx=testrun.xdp_ctx(1)).retval == abi.XDP_DROP
    ev = one_event(xdp)
    check_common(ev, pkt, reason=abi.DROP_NO_SERVICE, hook="xdp", direction="ingress",
                 ifindex=1)
    assert ev.hash == 0
    assert (ev.source, ev.dst_id) == (0, 0)
    assert ev.src_identity == abi.IDENTITY_WORLD           # setup: 0.0.0.0/0 is world
    check_summary(ev, saddr=EXT, daddr=NODE_IP, proto=6, sport=51700, dport=NODE_PORT,
                  flags={"SYN"})
    assert stats(xdp) == {"sent": 1, "lost": 0}


def test_a_full_ring_counts_the_rest_as_lost(node, lxc, from_container):
    per = (abi.DropNotify.data.offset + abi.TRACE_PAYLOAD_LEN + 8 + 7) // 8 * 8   # with header
    fits = abi.EVENTS_RING_SIZE // per
    n = fits + 100
    res = testrun.run(from_container.fd, P.SPOOFED_SRC_TO_POD_B, repeat=n,
                      ctx=testrun.tc_ctx(P.LXC_A_IFINDEX))
    assert res.retval == abi.CTX_ACT_DROP
    assert stats(lxc) == {"sent": fits, "lost": n - fits}
    got = drained(lxc)
    assert len(got) == fits and {e.reason for e in got} == {abi.DROP_INVALID_SIP}
    # read: room again
    tc_run(from_container, P.SPOOFED_SRC_TO_POD_B)
    assert len(drained(lxc)) == 1


def test_poll_waits_for_a_record_and_the_fd_is_pollable(node, lxc, from_container):
    import select
    ring = event_ring(lxc)
    assert ring.poll(30) == []
    assert select.select([ring], [], [], 0)[0] == []
    tc_run(from_container, P.SPOOFED_SRC_TO_POD_B)
    assert select.select([ring], [], [], 1)[0] == [ring]
    assert len(ring.poll(1000)) == 1


def test_pinned_ring_and_counters_open_without_bcc(node, lxc, from_container, monkeypatch):
    d = f"/sys/fs/bpf/dpt-events-{os.getpid()}-{secrets.token_hex(3)}"
    os.mkdir(d)
    try:
        for name in ("cilium_events", "dp_event_stats"):
            bpfsys.obj_pin(lxc[name].map_fd, os.path.join(d, name))
        tc_run(from_container, P.SPOOFED_SRC_TO_POD_B)
        tc_run(from_container, P.SPOOFED_SRC_TO_POD_B)
        with events.EventRing.open_pinned(os.path.join(d, "cilium_events")) as ring:
            got = [events.decode(r) for r in ring.poll(0)]
        assert [e.reason for e in got] == [abi.DROP_INVALID_SIP] * 2
        assert events.read_stats(d) == {"sent": 2, "lost": 0}
        with pytest.raises(Exception, match="not a ring buffer"):
            events.EventRing(lxc["cilium_metrics"].map_fd)
        # a pin that is no ring: refused, its fd closed once (a second close could hit an fd
        # another thread had opened meanwhile)
        bpfsys.obj_pin(lxc["cilium_metrics"].map_fd, os.path.join(d, "not_a_ring"))
        closed = []
        real_close = os.close
        monkeypatch.setattr(events.os, "close", lambda fd: (closed.append(fd), real_close(fd)))
        with pytest.raises(Exception, match="not a ring buffer"):
            events.EventRing.open_pinned(os.path.join(d, "not_a_ring"))
        import gc
        gc.collect()                    # the half-made ring's __del__ must not close it again
        assert len(closed) == 1
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


def test_the_ring_is_a_map_without_elements(lxc):
    """Code walking every map (tests' and benches' clear, map pressure) passes over the ring."""
    ring = open_maps(lxc)["cilium_events"]
    assert (len(ring), list(ring.items()), ring.table.key_size, ring.table.value_size) == \
        (0, [], 0, 0)
    ring.clear()
    assert ring.max_entries == abi.EVENTS_RING_SIZE
