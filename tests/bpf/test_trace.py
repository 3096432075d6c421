"""Trace points (bpf/lib/events.h send_trace_notify) and monitor aggregation (lib/conntrack.h
ct_monitor), read back through datapath/events.py from BPF_PROG_TEST_RUN runs with named
packets: pod to pod on one node (to-endpoint, with both identities and endpoints), pod to a
remote pod in tunnel mode (to-overlay) and native mode (to-network), pod to outside (to-stack),
from-netdev and from-overlay to a local pod (what one run emits at medium and at none);
aggregation at medium (a SYN traces, the ACKs after it do not until MONITOR_INTERVAL passed, a
FIN or a reply's first SYN-ACK does), at none (every packet, from-* points too); events compiled
out (-DEVENTS_DISABLED) send nothing."""
from __future__ import annotations

import pytest

from datapath import abi, build, events, testrun
from datapath.maps import open_maps

from . import packets as P
from .conftest import _clear, event_ring
from .endpoints import add_endpoint, set_sender
from .test_from_netdev_overlay import _pod_a_with_remote_c, _run_fib, routed_ns  # noqa: F401
from .mocks import MOCK_TUNNEL_KEY
from ..nsfork import run_in_netns

NONE = {"MONITOR_AGGREGATION": abi.MONITOR_AGGREGATION_NONE}


def traces(obj) -> list[events.TraceEvent]:
    """Every record now in the object's ring, decoded: all must be traces."""
    out = [events.decode(r) for r in event_ring(obj).poll(0)]
    assert all(isinstance(e, events.TraceEvent) for e in out), out
    return out


def points(evs) -> list[tuple[str, str]]:
    return [(e.obs_point_name, e.reason_name) for e in evs]


def tc_run(prog, pkt, ifindex=P.LXC_A_IFINDEX, **ctx):
    return testrun.run(prog.fd, pkt, ctx=testrun.tc_ctx(ifindex, **ctx))


def two_pods(m, sender_ip=P.POD_A_IP):
    add_endpoint(m, P.POD_A_IP, ifindex=P.LXC_A_IFINDEX, lxc_id=P.EP_A, mac=P.POD_A_MAC,
                 node_mac=P.LXC_A_MAC, sec_id=P.ID_A)
    add_endpoint(m, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=P.EP_B, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=P.ID_B)
    set_sender(m, sender_ip, P.LXC_A_IFINDEX)


def check_packet(ev, pkt):
    raw = bytes(pkt)
    assert ev.len_orig == len(raw) and ev.data == raw[:abi.TRACE_PAYLOAD_LEN]
    assert ev.type == abi.CILIUM_NOTIFY_TRACE and ev.version == abi.NOTIFY_CAPTURE_VER


# ---- objects compiled with other settings (the default objects are medium) ----

def _object(source, defines, mock=""):
    bpf = build.bpf_dir()
    text = build.amalgamate(bpf / "lib" / "common.h") + mock + build.amalgamate(bpf / source)
    return build.compile_text(text, defines, name=f"{source} {defines}")


def _clean(obj, fn, prog_type="tc"):
    prog = build.load(obj, fn, prog_type)
    _clear(obj)
    return prog


@pytest.fixture(scope="session")
def lxc_none_obj(privileged):
    return _object("bpf_lxc.c", NONE)


@pytest.fixture(scope="session")
def host_none_obj(privileged):
    return _object("bpf_host.c", NONE)


@pytest.fixture(scope="session")
def overlay_none_obj(privileged):
    return _object("bpf_overlay.c", NONE, MOCK_TUNNEL_KEY)


@pytest.fixture(scope="session")
def lxc_off_obj(privileged):
    return _object("bpf_lxc.c", {"EVENTS_DISABLED": 1})


@pytest.fixture
def lxc_none(lxc_none_obj):
    prog = _clean(lxc_none_obj, "cil_from_container")
    yield lxc_none_obj, prog
    _clear(lxc_none_obj)


# ---- trace points at medium (the default) ----

def test_pod_to_pod_new_flow_is_traced_to_endpoint(lxc, from_container):
    m = open_maps(lxc)
    two_pods(m)
    pkt = P.POD_A_TO_POD_B_TCP_SYN
    assert tc_run(from_container, pkt).retval == abi.CTX_ACT_REDIRECT
    [ev] = traces(lxc)
    assert (ev.obs_point, ev.obs_point_name) == (abi.TRACE_TO_LXC, "to-endpoint")
    assert (ev.reason, ev.reason_name) == (abi.TRACE_REASON_POLICY, "new")
    assert (ev.src_identity, ev.dst_identity, ev.dst_id) == (P.ID_A, P.ID_B, P.EP_B)
    assert (ev.source, ev.ifindex, ev.hook) == (P.EP_A, P.LXC_B_IFINDEX, "from-container")
    check_packet(ev, P.routed(pkt, src_mac=P.LXC_B_MAC, dst_mac=P.POD_B_MAC))   # as delivered
    s = ev.packet
    assert (s.saddr, s.daddr, s.dport, s.tcp_flags, s.ttl) == \
        (P.POD_A_IP, P.POD_B_IP, 80, frozenset({"SYN"}), 63)
    assert events.stats_totals(open_maps(lxc)["dp_event_stats"]) == {"sent": 1, "lost": 0}


def _ct_entry(m, tuple_flags):
    """The policy-tracked TCP entry of A:40000 -> B:80 with these tuple flags."""
    for k, v in m["cilium_ct4_global"].items():
        if k.flags == abi.TUPLE_F_POLICY | tuple_flags and k.dport == abi.be16(80) and \
                k.sport == abi.be16(40000):
            return k, v
    raise AssertionError(f"no entry with flags {tuple_flags}")


def test_medium_traces_a_flow_on_new_flags_and_once_per_interval(lxc, from_container):
    m = open_maps(lxc)
    two_pods(m)
    ack = P.POD_A_TO_POD_B_ACK
    assert tc_run(from_container, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
    assert points(traces(lxc)) == [("to-endpoint", "new")]
    set_sender(m, P.POD_B_IP, P.LXC_A_IFINDEX)          # B answers
    assert tc_run(from_container, P.POD_B_TO_POD_A_SYNACK).retval == abi.CTX_ACT_REDIRECT
    [rep] = traces(lxc)
    assert (rep.obs_point_name, rep.reason_name) == ("to-endpoint", "reply")
    assert (rep.src_identity, rep.dst_identity, rep.dst_id, rep.source) == \
        (P.ID_B, P.ID_A, P.EP_A, P.EP_B)
    set_sender(m, P.POD_A_IP, P.LXC_A_IFINDEX)
    for _ in range(5):                                  # established, within the interval
        assert tc_run(from_container, ack).retval == abi.CTX_ACT_REDIRECT
    assert traces(lxc) == []
    # the entry's report state: SYN seen in its direction, reported when created
    key, entry = _ct_entry(m, abi.TUPLE_F_OUT)
    assert entry.tx_flags_seen == 0x02 and entry.rx_flags_seen == 0x02   # SYN, SYN-ACK
    assert entry.last_tx_report > 0
    # MONITOR_INTERVAL later (the entries' last report moved back): one more trace
    for flags in (abi.TUPLE_F_OUT, abi.TUPLE_F_IN):
        key, entry = _ct_entry(m, flags)
        entry.last_tx_report -= abi.MONITOR_INTERVAL + 1
        m["cilium_ct4_global"].update(key, entry)
    assert tc_run(from_container, ack).retval == abi.CTX_ACT_REDIRECT
    assert points(traces(lxc)) == [("to-endpoint", "established")]
    assert tc_run(from_container, ack).retval == abi.CTX_ACT_REDIRECT
    assert traces(lxc) == []
    fin = P.pod_a_to_pod_b(P.TCP(sport=40000, dport=80, flags="FA", seq=1001, ack=5001))
    assert tc_run(from_container, fin).retval == abi.CTX_ACT_REDIRECT
    [ev] = traces(lxc)
    assert (ev.obs_point_name, ev.reason_name) == ("to-endpoint", "established")
    assert ev.packet.tcp_flags == frozenset({"FIN", "ACK"})
    assert tc_run(from_container, fin).retval == abi.CTX_ACT_REDIRECT   # FIN again: seen
    assert traces(lxc) == []


def test_pod_to_outside_is_traced_to_stack(lxc, from_container):
    m = open_maps(lxc)
    two_pods(m)
    pkt = P.POD_A_TO_OUTSIDE_ICMP
    assert tc_run(from_container, pkt).retval == abi.CTX_ACT_OK
    [ev] = traces(lxc)
    assert (ev.obs_point_name, ev.reason_name, ev.hook) == ("to-stack", "new", "from-container")
    assert (ev.src_identity, ev.dst_identity, ev.dst_id, ev.source) == \
        (P.ID_A, abi.IDENTITY_WORLD, 0, P.EP_A)
    check_packet(ev, pkt)
    assert tc_run(from_container, pkt).retval == abi.CTX_ACT_OK        # the same flow again
    assert traces(lxc) == []


def test_pod_to_remote_pod_tunnel_is_traced_to_overlay(lxc, from_container):
    m = open_maps(lxc)
    _pod_a_with_remote_c(m, abi.NODE_CFG_F_TUNNEL, tunnel_ifindex=1)
    pkt = P.POD_A_TO_REMOTE_POD_C
    assert tc_run(from_container, pkt).retval == abi.CTX_ACT_REDIRECT
    [ev] = traces(lxc)
    assert (ev.obs_point, ev.obs_point_name, ev.reason_name) == \
        (abi.TRACE_TO_OVERLAY, "to-overlay", "new")
    assert (ev.src_identity, ev.dst_identity, ev.dst_id, ev.source) == (1000, 1002, 0, 10)
    assert ev.ifindex == 1                              # the tunnel device
    assert ev.packet.ttl == 63 and ev.packet.daddr == P.POD_C_IP      # the inner packet


def test_pod_to_remote_pod_native_is_traced_to_network(lxc, from_container, routed_ns):
    import socket
    m = open_maps(lxc)
    idx = run_in_netns(routed_ns, lambda: socket.if_nametoindex("lxcf0"))
    _pod_a_with_remote_c(m, abi.NODE_CFG_F_HOST_ROUTING, ifindex=idx)
    _, eth1, retval, _ = run_in_netns(routed_ns, _run_fib, from_container.fd,
                                      bytes(P.POD_A_TO_REMOTE_POD_C))
    assert retval == abi.CTX_ACT_REDIRECT
    [ev] = traces(lxc)
    assert (ev.obs_point, ev.obs_point_name, ev.reason_name) == \
        (abi.TRACE_TO_NETWORK, "to-network", "new")
    assert (ev.ifindex, ev.src_identity, ev.dst_identity) == (eth1, 1000, 1002)
    assert (ev.packet.src_mac, ev.packet.dst_mac) == (P.NODE_CTR_MAC, P.NODE_W1_MAC)


def _remote_c_and_local_b(m):
    add_endpoint(m, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=P.EP_B, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=P.ID_B)
    m["cilium_ipcache"].update(abi.ipcache_key(f"{P.POD_C_IP}/32"),
                               abi.remote_endpoint_info(P.ID_C, P.NODE_W1_IP))


def test_from_netdev_to_local_pod_at_medium_sends_to_endpoint_only(host, from_netdev):
    m = open_maps(host)
    _remote_c_and_local_b(m)
    pkt = P.REMOTE_POD_C_TO_POD_B_SYN
    assert tc_run(from_netdev, pkt, ifindex=1).retval == abi.CTX_ACT_REDIRECT
    [ev] = traces(host)                 # from-network: not at lowest and up, as Cilium's
    assert (ev.obs_point_name, ev.reason_name, ev.hook) == ("to-endpoint", "new", "from-netdev")
    assert (ev.src_identity, ev.dst_identity, ev.dst_id, ev.source, ev.ifindex) == \
        (P.ID_C, P.ID_B, P.EP_B, P.EP_B, P.LXC_B_IFINDEX)
    assert tc_run(from_netdev, P.OUTSIDE_TO_NODE, ifindex=1).retval == abi.CTX_ACT_OK
    assert traces(host) == []           # no flow state: nothing at medium


# ---- aggregation none: every packet, from-* points too ----

def test_none_traces_every_packet_from_and_to_endpoint(lxc_none):
    obj, prog = lxc_none
    m = open_maps(obj)
    two_pods(m)
    for pkt in (P.POD_A_TO_POD_B_TCP_SYN, P.POD_A_TO_POD_B_ACK, P.POD_A_TO_POD_B_ACK,
                P.POD_A_TO_POD_B_ACK):
        assert tc_run(prog, pkt).retval == abi.CTX_ACT_REDIRECT
    got = traces(obj)
    assert points(got) == [("from-endpoint", "unknown"), ("to-endpoint", "new")] + \
        [("from-endpoint", "unknown"), ("to-endpoint", "established")] * 3
    frm = got[0]
    assert (frm.obs_point, frm.ifindex, frm.source, frm.src_identity, frm.dst_identity) == \
        (abi.TRACE_FROM_LXC, P.LXC_A_IFINDEX, P.EP_A, P.ID_A, P.ID_B)
    check_packet(frm, P.POD_A_TO_POD_B_TCP_SYN)         # as it arrived


def test_none_from_netdev_sends_from_network_then_to_endpoint_or_to_stack(host_none_obj):
    prog = _clean(host_none_obj, "cil_from_netdev")
    try:
        m = open_maps(host_none_obj)
        _remote_c_and_local_b(m)
        pkt = P.REMOTE_POD_C_TO_POD_B_SYN
        assert tc_run(prog, pkt, ifindex=1).retval == abi.CTX_ACT_REDIRECT
        frm, to = traces(host_none_obj)
        assert (frm.obs_point_name, frm.reason_name, frm.ifindex, frm.hook) == \
            ("from-network", "unknown", 1, "from-netdev")
        assert (frm.src_identity, frm.dst_identity, frm.dst_id) == (P.ID_C, P.ID_B, P.EP_B)
        check_packet(frm, pkt)
        assert (to.obs_point_name, to.reason_name, to.ifindex) == \
            ("to-endpoint", "new", P.LXC_B_IFINDEX)
        assert tc_run(prog, P.OUTSIDE_TO_NODE, ifindex=1).retval == abi.CTX_ACT_OK
        assert points(traces(host_none_obj)) == [("from-network", "unknown"),
                                                 ("to-stack", "unknown")]
    finally:
        _clear(host_none_obj)


def test_none_from_overlay_sends_from_overlay_with_the_vni_identity(overlay_none_obj):
    prog = _clean(overlay_none_obj, "cil_from_overlay")
    try:
        m = open_maps(overlay_none_obj)
        _remote_c_and_local_b(m)
        m["cilium_ipcache"].update(abi.ipcache_key(f"{P.POD_C_IP}/32"),
                                   abi.remote_endpoint_info(12345, P.NODE_W1_IP))
        pkt = P.REMOTE_POD_C_TO_POD_B_SYN
        res = tc_run(prog, pkt, ifindex=1, cb=(0, P.ID_C, 0, 0, 0))     # VNI: pod C's identity
        assert res.retval == abi.CTX_ACT_REDIRECT
        frm, to = traces(overlay_none_obj)
        assert (frm.obs_point, frm.obs_point_name, frm.hook, frm.ifindex) == \
            (abi.TRACE_FROM_OVERLAY, "from-overlay", "from-overlay", 1)
        # the VNI's identity, not the ipcache's (12345)
        assert (frm.src_identity, frm.dst_identity, frm.dst_id) == (P.ID_C, P.ID_B, P.EP_B)
        assert (to.obs_point_name, to.reason_name, to.src_identity) == \
            ("to-endpoint", "new", P.ID_C)
    finally:
        _clear(overlay_none_obj)


# ---- compiled out ----

def test_events_disabled_sends_nothing(lxc_off_obj):
    prog = _clean(lxc_off_obj, "cil_from_container")
    try:
        m = open_maps(lxc_off_obj)
        two_pods(m)
        assert tc_run(prog, P.POD_A_TO_POD_B_TCP_SYN).retval == abi.CTX_ACT_REDIRECT
        assert tc_run(prog, P.SPOOFED_SRC_TO_POD_B).retval == abi.CTX_ACT_DROP
        assert event_ring(lxc_off_obj).poll(0) == []
        assert events.stats_totals(m["dp_event_stats"]) == {"sent": 0, "lost": 0}
        _, entry = _ct_entry(m, abi.TUPLE_F_OUT)
        assert (entry.tx_flags_seen, entry.last_tx_report) == (0, 0)   # no report state kept
    finally:
        _clear(lxc_off_obj)
