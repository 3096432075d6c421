"""datapath/events.py without a kernel: drop records built with abi.DropNotify, trace records
built with abi.TraceNotify and policy verdicts built with abi.PolicyVerdictNotify decode to every
field (Cilium's observation point, reason and match names), the captured bytes summarise (Ethernet, IPv4 TCP / UDP / ICMP, IPv6, ARP, a VLAN tag, a
later fragment, bytes cut short), and records of another type or too short decode to None.
(The ring buffer reader runs against a real ring in tests/bpf/test_events.py.)"""
from __future__ import annotations

import ctypes
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from datapath import abi, events

SRC_MAC, DST_MAC = "02:00:00:00:00:0a", "02:00:00:00:01:0a"


def record(pkt=b"", *, cap=None, **fields) -> bytes:
    raw = bytes(pkt)
    n = abi.DropNotify(type=abi.CILIUM_NOTIFY_DROP, subtype=abi.DROP_POLICY, source=10,
                       hash=0xdeadbeef, len_orig=len(raw), version=abi.NOTIFY_CAPTURE_VER,
                       src_label=1000, dst_label=1001, dst_id=11, ifindex=7,
                       dir=abi.METRIC_EGRESS, hook=abi.EVENT_HOOK_FROM_CONTAINER,
                       ktime_ns=123456789)
    data = raw[:abi.TRACE_PAYLOAD_LEN]
    n.len_cap = len(data) if cap is None else cap
    ctypes.memmove(n.data, data, len(data))
    for k, v in fields.items():
        setattr(n, k, v)
    return bytes(n)


def eth(payload):
    return Ether(src=SRC_MAC, dst=DST_MAC) / payload


def test_every_field_decodes():
    pkt = eth(IP(src="172.20.0.10", dst="172.20.0.11", ttl=64) / TCP(sport=40000, dport=80,
                                                                      flags="SA") / (b"x" * 200))
    ev = events.decode(record(pkt))
    assert ev == events.DropEvent(
        type=abi.CILIUM_NOTIFY_DROP, reason=abi.DROP_POLICY,
        reason_desc=abi.reason_string(abi.DROP_POLICY), source=10, hash=0xdeadbeef,
        len_orig=len(pkt), src_identity=1000, dst_identity=1001, dst_id=11, ifindex=7,
        direction="egress", hook="from-container", ktime_ns=123456789,
        data=bytes(pkt)[:abi.TRACE_PAYLOAD_LEN])
    assert ev.reason_desc == "Policy denied"
    s = ev.packet
    assert (s.src_mac, s.dst_mac, s.ethertype) == (SRC_MAC, DST_MAC, 0x0800)
    assert (s.saddr, s.daddr, s.proto, s.ttl) == ("172.20.0.10", "172.20.0.11", 6, 64)
    assert (s.sport, s.dport, s.tcp_flags) == (40000, 80, frozenset({"SYN", "ACK"}))
    assert s.describe() == "172.20.0.10:40000 -> 172.20.0.11:80 TCP SYN,ACK"


@pytest.mark.parametrize("hook,name", sorted(abi.EVENT_HOOK_NAMES.items()))
def test_hooks_and_directions_are_named(hook, name):
    ev = events.decode(record(b"", hook=hook, dir=abi.METRIC_INGRESS))
    assert (ev.hook, ev.direction) == (name, "ingress")
    assert events.decode(record(b"", hook=99, dir=9)).hook == "hook 99"


def test_udp_icmp_ipv6_arp_vlan_summaries():
    udp = events.summarize(bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=53))))
    assert (udp.proto, udp.sport, udp.dport, udp.tcp_flags) == (17, 5, 53, frozenset())
    icmp = events.summarize(bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=3, code=1))))
    assert (icmp.proto, icmp.icmp_type, icmp.icmp_code, icmp.sport) == (1, 3, 1, None)
    assert icmp.describe() == "10.0.0.1 -> 10.0.0.2 ICMP type 3 code 1"
    six = events.summarize(bytes(eth(IPv6(src="fd00::1", dst="fd00::2", hlim=9)
                                     / TCP(sport=1, dport=2, flags="R"))))
    assert (six.ethertype, six.saddr, six.daddr, six.ttl, six.tcp_flags) == \
        (0x86DD, "fd00::1", "fd00::2", 9, frozenset({"RST"}))
    assert six.describe() == "[fd00::1]:1 -> [fd00::2]:2 TCP RST"
    arp = events.summarize(bytes(eth(ARP(op="who-has", hwsrc=SRC_MAC, psrc="10.0.0.1",
                                         pdst="10.0.0.254"))))
    assert (arp.ethertype, arp.arp_op, arp.arp_sender_mac, arp.saddr, arp.daddr) == \
        (0x0806, 1, SRC_MAC, "10.0.0.1", "10.0.0.254")
    assert arp.describe() == "ARP request 10.0.0.1 -> 10.0.0.254"
    vlan = events.summarize(bytes(Ether(src=SRC_MAC, dst=DST_MAC) / Dot1Q(vlan=5)
                                  / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=7, dport=8)))
    assert (vlan.ethertype, vlan.saddr, vlan.dport) == (0x0800, "10.0.0.1", 8)
    other = events.summarize(bytes(Ether(src=SRC_MAC, dst=DST_MAC, type=0x88CC) / b"lldp"))
    assert other.saddr is None and other.describe().endswith("ethertype 0x88cc")


def test_later_fragment_has_no_ports():
    frag = eth(IP(src="10.0.0.1", dst="10.0.0.2", frag=100, proto=17) / bytes(16))
    s = events.summarize(bytes(frag))
    assert s.fragment and s.sport is None and s.proto == 17


def test_cut_short_bytes_give_what_they_hold():
    pkt = bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2)))
    assert events.summarize(pkt[:13]) is None
    s = events.summarize(pkt[:20])                 # Ethernet, half an IPv4 header
    assert s.ethertype == 0x0800 and s.saddr is None
    s = events.summarize(pkt[:14 + 20 + 4])        # the ports but not the flags
    assert (s.sport, s.dport, s.tcp_flags) == (1, 2, frozenset())


def test_len_cap_bounds_the_data_and_truncated_records():
    pkt = bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=53)))
    assert events.decode(record(pkt, cap=20)).data == pkt[:20]
    assert events.decode(record(pkt, cap=0)).packet is None
    full = record(pkt)
    hdr = abi.DropNotify.data.offset
    assert events.decode(full[:hdr + 10]).data == pkt[:10]     # cut inside the packet bytes
    assert events.decode(full[:hdr]).data == b""
    assert events.decode(full[:hdr - 1]) is None                 # cut inside the fixed part
    assert events.decode(b"") is None
    big = events.decode(record(pkt, cap=5000))                  # len_cap beyond data[]
    assert big.data == pkt.ljust(abi.TRACE_PAYLOAD_LEN, b"\0")


def test_unknown_types_are_none():
    assert events.decode(record(b"", type=0)) is None
    assert events.decode(bytes([2]) * 200) is None


def test_ktime_to_wall():
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert abs(events.ktime_to_wall(now) - time.time()) < 1
    assert events.decode(record(b"", ktime_ns=now)).time == pytest.approx(time.time(), abs=1)


def trace_record(pkt=b"", *, cap=None, **fields) -> bytes:
    raw = bytes(pkt)
    n = abi.TraceNotify(type=abi.CILIUM_NOTIFY_TRACE, subtype=abi.TRACE_TO_LXC, source=11,
                        hash=0xfeedf00d, len_orig=len(raw), version=abi.NOTIFY_CAPTURE_VER,
                        src_label=1000, dst_label=1001, dst_id=11,
                        reason=abi.TRACE_REASON_POLICY, ifindex=42,
                        hook=abi.EVENT_HOOK_FROM_CONTAINER, ktime_ns=987654321)
    data = raw[:abi.TRACE_PAYLOAD_LEN]
    n.len_cap = len(data) if cap is None else cap
    ctypes.memmove(n.data, data, len(data))
    for k, v in fields.items():
        setattr(n, k, v)
    return bytes(n)


def test_trace_every_field_decodes():
    pkt = eth(IP(src="172.20.0.10", dst="172.20.0.11", ttl=63) / TCP(sport=40000, dport=80,
                                                                      flags="S"))
    ev = events.decode(trace_record(pkt))
    assert isinstance(ev, events.TraceEvent)
    assert (ev.type, ev.obs_point, ev.obs_point_name) == (4, 0, "to-endpoint")
    assert (ev.reason, ev.reason_name) == (abi.TRACE_REASON_POLICY, "new")
    assert (ev.source, ev.hash, ev.len_orig) == (11, 0xfeedf00d, len(bytes(pkt)))
    assert (ev.src_identity, ev.dst_identity, ev.dst_id, ev.ifindex) == (1000, 1001, 11, 42)
    assert (ev.hook, ev.ktime_ns, ev.flags, ev.orig_ip) == ("from-container", 987654321, 0, None)
    assert ev.data == bytes(pkt) and ev.version == abi.NOTIFY_CAPTURE_VER
    assert ev.packet.describe() == "172.20.0.10:40000 -> 172.20.0.11:80 TCP SYN"
    assert events.decode_trace(trace_record(pkt)) == ev
    assert events.decode_trace(record(pkt)) is None             # a drop is no trace


@pytest.mark.parametrize("obs,name", [
    (abi.TRACE_TO_LXC, "to-endpoint"), (abi.TRACE_TO_STACK, "to-stack"),
    (abi.TRACE_TO_OVERLAY, "to-overlay"), (abi.TRACE_TO_NETWORK, "to-network"),
    (abi.TRACE_FROM_NETWORK, "from-network"), (abi.TRACE_FROM_OVERLAY, "from-overlay"),
    (abi.TRACE_FROM_LXC, "from-endpoint"), (abi.TRACE_TO_HOST, "to-host"), (99, "99")])
def test_trace_observation_points_have_ciliums_names(obs, name):
    assert events.decode(trace_record(subtype=obs)).obs_point_name == name


@pytest.mark.parametrize("reason,name", [
    (0, "new"), (1, "established"), (2, "reply"), (3, "related"), (4, "reopened"),
    (5, "unknown"), (77, "77")])
def test_trace_reasons_have_ciliums_names(reason, name):
    assert events.decode(trace_record(reason=reason)).reason_name == name


def test_trace_orig_ip_cut_records_and_layout():
    assert events.decode(trace_record(orig_ip4=abi.ip4_to_be32("10.96.0.10"))).orig_ip == \
        "10.96.0.10"
    pkt = bytes(eth(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=53)))
    full = trace_record(pkt)
    hdr = abi.TraceNotify.data.offset
    assert (hdr, ctypes.sizeof(abi.TraceNotify)) == (64, 64 + abi.TRACE_PAYLOAD_LEN)
    assert events.decode(full[:hdr + 10]).data == pkt[:10]
    assert events.decode(full[:hdr - 1]) is None
    assert events.decode(trace_record(pkt, cap=20)).data == pkt[:20]
    # Cilium's trace_notify v1 offsets for the fields both share
    assert [getattr(abi.TraceNotify, f).offset for f in
            ("src_label", "dst_label", "dst_id", "reason", "flags", "ifindex", "orig_ip4")] == \
        [16, 20, 24, 26, 27, 28, 32]


def test_monitor_defines():
    from datapath.loader import monitor_defines
    assert monitor_defines() == {} and monitor_defines("medium", "5s") == {}
    assert monitor_defines("none") == {"MONITOR_AGGREGATION": 0}
    assert monitor_defines("low", 10) == {"MONITOR_AGGREGATION": 2, "MONITOR_INTERVAL": 10}
    assert monitor_defines(abi.MONITOR_AGGREGATION_MAX, "1s") == \
        {"MONITOR_AGGREGATION": 4, "MONITOR_INTERVAL": 1}
    with pytest.raises(ValueError):
        monitor_defines("loud")
    with pytest.raises(ValueError):
        monitor_defines("medium", 0)


def test_decode_policy_verdict_record():
    """A record built by hand decodes field by field; a short one is refused."""
    n = abi.PolicyVerdictNotify(type=abi.CILIUM_NOTIFY_POLICY_VERDICT, source=7, len_orig=54,
                                len_cap=4, version=1, remote_label=1234, verdict=-181,
                                dst_port=443, proto=6, hook=abi.EVENT_HOOK_TO_CONTAINER,
                                flags=abi.POLICY_VERDICT_DIR_INGRESS |
                                (abi.POLICY_MATCH_L4_ONLY << abi.POLICY_VERDICT_MATCH_SHIFT),
                                ktime_ns=5)
    raw = bytes(n)[:abi.PolicyVerdictNotify.data.offset] + b"abcd"
    ev = events.decode(raw)
    assert isinstance(ev, events.PolicyVerdictEvent)
    assert (ev.source, ev.remote_identity, ev.verdict, ev.dst_port, ev.proto) == \
        (7, 1234, -181, 443, 6)
    assert (ev.direction, ev.match_name, ev.hook, ev.data, ev.allowed) == \
        ("ingress", "L4-Only", "to-container", b"abcd", False)
    assert events.decode(raw[:20]) is None
