"""Monitor events -> flows and printed lines: real drop_notify records (abi.DropNotify) decoded,
resolved against a stub view of the agent, and printed in every format.

Also the helpers the other test_monitor_* files use: packet bytes, records, the events module
(datapath.events when it exists, else a stand-in with its API)."""
from __future__ import annotations

import ctypes
import json
import socket
import struct
import types
from dataclasses import dataclass

from datapath import abi

from agent.monitor import dissect, format as fmt
from agent.monitor.flows import build_flow, drop_reason_name, event_record

CURL, WEB1 = "172.20.0.2", "172.20.0.11"
CURL_MAC, WEB1_MAC = "0a:00:00:00:00:02", "0a:00:00:00:00:11"


# ---------------------------------------------------------------- helpers
def ip_csum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def packet(src=CURL, dst=WEB1, proto=6, sport=40000, dport=80, flags=0x02, icmp=(8, 0),
           smac=CURL_MAC, dmac=WEB1_MAC, ttl=64) -> bytes:
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 64240, 0, 0)
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + 5, 0) + b"hello"
    else:
        l4 = struct.pack("!BBHHH", icmp[0], icmp[1], 0, 7, 1) + b"x" * 8
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, ttl, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", ip_csum(ip)) + ip[12:]
    eth = bytes.fromhex(dmac.replace(":", "")) + bytes.fromhex(smac.replace(":", "")) + \
        struct.pack("!H", 0x0800)
    return eth + ip + l4


def arp_packet() -> bytes:
    eth = b"\xff" * 6 + bytes.fromhex(CURL_MAC.replace(":", "")) + struct.pack("!H", 0x0806)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + bytes.fromhex(CURL_MAC.replace(":", "")) \
        + socket.inet_aton(CURL) + b"\x00" * 6 + socket.inet_aton(WEB1)
    return eth + arp


def drop_record(pkt: bytes, reason=abi.DROP_POLICY, src_label=256, dst_label=257, source=12,
                dst_id=34, ifindex=5, direction=abi.METRIC_INGRESS,
                hook=abi.EVENT_HOOK_TO_CONTAINER, ktime_ns=5_000_000_000, hash_=0) -> bytes:
    """A cilium_events record as the datapath writes it."""
    n = abi.DropNotify(type=abi.CILIUM_NOTIFY_DROP, subtype=reason, source=source, hash=hash_,
                       len_orig=len(pkt), len_cap=min(len(pkt), abi.TRACE_PAYLOAD_LEN),
                       version=abi.NOTIFY_CAPTURE_VER, src_label=src_label, dst_label=dst_label,
                       dst_id=dst_id, ifindex=ifindex, dir=direction, hook=hook,
                       ktime_ns=ktime_ns)
    cap = pkt[:abi.TRACE_PAYLOAD_LEN]
    ctypes.memmove(ctypes.addressof(n) + abi.DropNotify.data.offset, cap, len(cap))
    return bytes(n)


def trace_record(pkt: bytes, point=abi.TRACE_TO_LXC, reason=abi.TRACE_REASON_POLICY,
                 src_label=256, dst_label=257, source=34, dst_id=34, ifindex=5,
                 hook=abi.EVENT_HOOK_TO_CONTAINER, ktime_ns=5_000_000_000, hash_=0,
                 orig_ip4=0, flags=0) -> bytes:
    """A trace_notify record as the datapath writes it (orig_ip4: network-order u32)."""
    n = abi.TraceNotify(type=abi.CILIUM_NOTIFY_TRACE, subtype=point, source=source, hash=hash_,
                        len_orig=len(pkt), len_cap=min(len(pkt), abi.TRACE_PAYLOAD_LEN),
                        version=abi.NOTIFY_CAPTURE_VER, src_label=src_label,
                        dst_label=dst_label, dst_id=dst_id, reason=reason, flags=flags,
                        ifindex=ifindex, orig_ip4=orig_ip4, hook=hook, ktime_ns=ktime_ns)
    cap = pkt[:abi.TRACE_PAYLOAD_LEN]
    ctypes.memmove(ctypes.addressof(n) + abi.TraceNotify.data.offset, cap, len(cap))
    return bytes(n)[:abi.TraceNotify.data.offset + len(cap)]


@dataclass(frozen=True)
class _StandInDropEvent:
    type: int
    reason: int
    reason_desc: str
    source: int
    hash: int
    len_orig: int
    src_identity: int
    dst_identity: int
    dst_id: int
    ifindex: int
    direction: int
    hook: str
    ktime_ns: int
    data: bytes


def _standin_decode(record: bytes):
    n = abi.DropNotify.from_buffer_copy(record[:ctypes.sizeof(abi.DropNotify)])
    if n.type != abi.CILIUM_NOTIFY_DROP:
        return None
    data = bytes(n.data)[:n.len_cap]
    return _StandInDropEvent(n.type, n.subtype, abi.reason_string(n.subtype), n.source, n.hash,
                             n.len_orig, n.src_label, n.dst_label, n.dst_id, n.ifindex, n.dir,
                             abi.EVENT_HOOK_NAMES.get(n.hook, str(n.hook)), n.ktime_ns, data)


def events_module():
    """datapath.events, or until it exists a stand-in with its API (decode, ktime_to_wall,
    read_stats; EventRing is faked where a test needs one)."""
    try:
        from datapath import events
        return events
    except ImportError:
        return types.SimpleNamespace(decode=_standin_decode,
                                     ktime_to_wall=lambda ns: 1_764_514_800.0 + ns / 1e9,
                                     read_stats=lambda pin_dir: {"sent": 0, "lost": 0})


def decode(record: bytes):
    return events_module().decode(record)


class StubView:
    """What the agent knows: two local endpoints and one pod on another node."""
    PODS = {CURL: {"id": 12, "namespace": "default", "pod": "curl-pod", "identity": 256},
            WEB1: {"id": 34, "namespace": "default", "pod": "webpod-1", "identity": 257},
            "172.20.1.5": {"namespace": "x", "pod": "a", "identity": 300}}
    LABELS = {256: ("k8s:app=curl", "k8s:io.kubernetes.pod.namespace=default"),
              257: ("k8s:app=webpod", "k8s:io.kubernetes.pod.namespace=default"),
              300: ("k8s:pod=a",), 2: ("reserved:world",)}

    def lookup_ip(self, ip):
        return self.PODS.get(ip)

    def lookup_endpoint(self, ep_id):
        return next((r for r in self.PODS.values() if r.get("id") == ep_id), None)

    def labels(self, identity):
        return list(self.LABELS.get(identity, ()))

    def ifname(self, ifindex):
        return {5: "lxc0a1b"}.get(ifindex)


def flow_of(record: bytes, wall: float = 1_764_514_801.125) -> tuple[dict, dict]:
    rec = event_record(decode(record), wall)
    return build_flow(rec, StubView(), "k8s-ctr"), rec


# ---------------------------------------------------------------- dissect
def test_dissect_tcp_udp_icmp_arp_and_truncated():
    p = dissect.parse(packet())
    assert (p.eth_src, p.eth_dst, p.ethertype) == (CURL_MAC, WEB1_MAC, 0x0800)
    assert (p.ip["src"], p.ip["dst"], p.ip["ttl"], p.proto) == (CURL, WEB1, 64, 6)
    assert p.ports == (40000, 80) and p.tcp_flags == ["SYN"]
    assert dissect.connection_summary(p) == f"{CURL}:40000 -> {WEB1}:80 tcp SYN"
    p = dissect.parse(packet(flags=0x12))
    assert p.tcp_flags == ["SYN", "ACK"]
    assert dissect.connection_summary(p).endswith("tcp SYN, ACK")
    u = dissect.parse(packet(proto=17, sport=5353, dport=53))
    assert u.ports == (5353, 53) and dissect.connection_summary(u) == \
        f"{CURL}:5353 -> {WEB1}:53 udp"
    i = dissect.parse(packet(proto=1))
    assert dissect.connection_summary(i) == f"{CURL} -> {WEB1} EchoRequest"
    a = dissect.parse(arp_packet())
    assert a.arp["target_ip"] == WEB1 and a.ip is None
    assert dissect.connection_summary(a) == f"{CURL_MAC} -> ff:ff:ff:ff:ff:ff ARP"
    t = dissect.parse(packet()[:40])          # IPv4 header, half a TCP header
    assert t.truncated and t.ip and t.tcp is None
    assert dissect.layer_lines(t)[-1] == "  Packet has been truncated"
    assert dissect.parse(b"").layers == [] and dissect.connection_summary(dissect.parse(b"")) \
        == "[unknown]"


# ---------------------------------------------------------------- flows
def test_drop_record_becomes_a_hubble_flow_with_pods_identities_and_labels():
    flow, rec = flow_of(drop_record(packet()))
    assert rec["type"] == "drop" and rec["reason_desc"] == "Policy denied"
    assert rec["hook"] == "to-container" and rec["file"] == "bpf_lxc.c"
    assert flow["time"] == "2025-11-30T15:00:01.125000000Z"
    assert flow["verdict"] == "DROPPED" and flow["drop_reason"] == 133
    assert flow["drop_reason_desc"] == "POLICY_DENIED"
    assert flow["ethernet"] == {"source": CURL_MAC, "destination": WEB1_MAC}
    assert flow["IP"] == {"source": CURL, "destination": WEB1, "ipVersion": "IPv4"}
    assert flow["l4"] == {"TCP": {"source_port": 40000, "destination_port": 80,
                                  "flags": {"SYN": True}}}
    assert flow["source"] == {"ID": 12, "identity": 256, "namespace": "default",
                              "pod_name": "curl-pod",
                              "labels": ["k8s:app=curl", "k8s:io.kubernetes.pod.namespace=default"]}
    assert flow["destination"]["pod_name"] == "webpod-1" and flow["destination"]["ID"] == 34
    assert flow["Type"] == "L3_L4" and flow["node_name"] == "k8s-ctr"
    assert flow["event_type"] == {"type": 1, "sub_type": 133}
    assert flow["traffic_direction"] == "INGRESS"
    assert flow["interface"] == {"index": 5, "name": "lxc0a1b"}
    assert flow["Summary"] == "TCP Flags: SYN"
    json.dumps(flow)                       # JSON-able as the API returns it


def test_unknown_addresses_keep_the_datapath_identity_and_no_pod():
    flow, _ = flow_of(drop_record(packet(src="10.9.9.9", dst="203.0.113.7", proto=17,
                                         dport=53), reason=abi.DROP_INVALID_SIP,
                                  src_label=2, dst_label=0, ifindex=99,
                                  direction=abi.METRIC_EGRESS))
    assert flow["drop_reason_desc"] == "INVALID_SOURCE_IP"
    assert flow["source"] == {"identity": 2, "labels": ["reserved:world"]}
    assert flow["destination"] == {}
    assert flow["l4"] == {"UDP": {"source_port": 40000, "destination_port": 53}}
    assert flow["traffic_direction"] == "EGRESS" and flow["Summary"] == "UDP"
    assert flow["interface"] == {"index": 99}
    # a spoofed source leaving a pod: the pod its program ran for is the source
    flow, _ = flow_of(drop_record(packet(src="172.20.0.250"), reason=abi.DROP_INVALID_SIP,
                                  src_label=2, source=12, hook=abi.EVENT_HOOK_FROM_CONTAINER,
                                  direction=abi.METRIC_EGRESS))
    assert flow["IP"]["source"] == "172.20.0.250"
    assert flow["source"] == {"ID": 12, "identity": 2, "namespace": "default",
                              "pod_name": "curl-pod", "labels": ["reserved:world"]}
    # an identity the datapath did not know (0) comes from the resolved pod
    flow, _ = flow_of(drop_record(packet(dst="172.20.1.5"), src_label=0, dst_label=0))
    assert flow["source"]["identity"] == 256
    assert flow["destination"] == {"identity": 300, "namespace": "x", "pod_name": "a",
                                   "labels": ["k8s:pod=a"]}


def test_icmp_and_arp_and_service_drop_flows():
    flow, _ = flow_of(drop_record(packet(proto=1), reason=abi.DROP_NO_SERVICE,
                                  direction=abi.METRIC_SERVICE))
    assert flow["l4"] == {"ICMPv4": {"type": 8, "code": 0}}
    assert flow["Summary"] == "ICMPv4 EchoRequest"
    assert flow["drop_reason_desc"] == "SERVICE_BACKEND_NOT_FOUND"
    assert flow["traffic_direction"] == "TRAFFIC_DIRECTION_UNKNOWN"
    flow, _ = flow_of(drop_record(arp_packet(), reason=abi.DROP_UNSUPPORTED_L2))
    assert "IP" not in flow and "l4" not in flow
    assert flow["Summary"] == f"ARP Request who-has {WEB1} tell {CURL}"
    assert flow["source"]["pod_name"] == "curl-pod"


def test_every_reason_the_datapath_produces_has_a_hubble_enum_name():
    for name, code in vars(abi).items():
        if name.startswith("DROP_") and isinstance(code, int):
            assert drop_reason_name(code) != "DROP_REASON_UNKNOWN", name
    assert drop_reason_name(181) == "POLICY_DENY" and drop_reason_name(1) == \
        "DROP_REASON_UNKNOWN"


# ---------------------------------------------------------------- output formats
def test_compact_table_and_json_lines():
    flow, _ = flow_of(drop_record(packet()))
    line = fmt.compact(flow)
    # a drop does not say whether it was a reply: Hubble's "<>"
    assert line.endswith(": default/curl-pod:40000 (ID:256) <> default/webpod-1:80 (ID:257) "
                         "Policy denied DROPPED (TCP Flags: SYN)"), line
    # local time, Go's time.StampMilli: "Nov 30 15:00:01.125" in this test's timezone
    assert line.split(": ")[0].endswith(".125") and line[:3].isalpha()
    assert " [k8s-ctr]: " in fmt.compact(flow, node=True)
    other, _ = flow_of(drop_record(packet(src="10.9.9.9", proto=1), src_label=0))
    assert ": 10.9.9.9 (unknown) <> default/webpod-1 (ID:257) Policy denied DROPPED " \
           "(ICMPv4 EchoRequest)" in fmt.compact(other)
    world, _ = flow_of(drop_record(packet(src="10.9.9.9", proto=1), src_label=2))
    assert ": 10.9.9.9 (world) <> " in fmt.compact(world)
    rows = fmt.table([flow, other])
    assert rows[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT",
                               "SUMMARY"]
    assert len(rows) == 3 and rows[1].split()[3:5] == ["default/curl-pod:40000",
                                                        "default/webpod-1:80"]
    assert rows[1].index("DROPPED") == rows[0].index("VERDICT")       # aligned columns
    assert fmt.table([flow], node=True)[0].split()[:2] == ["TIMESTAMP", "NODE"]
    got = json.loads(fmt.json_line({**flow, "seq": 7}))
    assert set(got) == {"flow", "node_name", "time"} and "seq" not in got["flow"]
    assert got["flow"]["drop_reason_desc"] == "POLICY_DENIED" and got["node_name"] == "k8s-ctr"


def test_monitor_line_verbose_and_json():
    _, rec = flow_of(drop_record(packet(), dst_id=123, hash_=0))
    assert fmt.monitor_line(rec) == (
        "xx drop (Policy denied) flow 0x0 to endpoint 123, ifindex 5, file bpf_lxc.c:0, , "
        f"identity 256->257: {CURL}:40000 -> {WEB1}:80 tcp SYN")
    lines = fmt.monitor_verbose(rec)
    assert lines[0] == fmt.SEPARATOR
    assert lines[1] == ("MARK 0x0 FROM 12 DROP: 54 bytes, reason Policy denied, identity "
                        "256->257, to endpoint 123")
    assert lines[2].startswith(f"Ethernet\t{{SrcMAC={CURL_MAC} DstMAC={WEB1_MAC} "
                               "EthernetType=IPv4")
    assert lines[3].startswith("IPv4\t{Version=4 IHL=5 ") and f"SrcIP={CURL} DstIP={WEB1}" \
        in lines[3] and "TTL=64 Protocol=TCP" in lines[3] and "Flags=DF" in lines[3]
    assert lines[4].startswith("TCP\t{SrcPort=40000 DstPort=80 Seq=1000 ") and \
        "SYN=true" in lines[4] and "ACK=false" in lines[4]
    got = json.loads(fmt.monitor_json(rec))
    assert got["type"] == "drop" and got["reason"] == "Policy denied" and got["dstID"] == 123
    assert got["summary"]["l3"] == {"src": CURL, "dst": WEB1}
    assert got["summary"]["l4"] == {"src": "40000", "dst": "80"}


def test_agent_view_resolves_local_and_remote_pods_and_refreshes_on_a_miss(monkeypatch):
    import threading

    from agent.endpoint import Endpoint
    from agent.monitor.flows import AgentView

    ep = Endpoint(id=12, container_id="c1", namespace="default", pod="curl-pod", ifname="eth0",
                  host_ifname="lxc1", host_ifindex=5, ip=CURL, mac=CURL_MAC, host_mac=WEB1_MAC,
                  netns="/x", identity=256, labels=["k8s:app=curl"])
    agent = types.SimpleNamespace(
        lock=threading.RLock(), endpoints={"c1": ep},
        remote_endpoints={"172.20.1.5": {"identity": 300, "hostIP": "192.168.10.101",
                                         "node": "k8s-w1", "namespace": "x", "pod": "a"}},
        known_identities=lambda: {256: ("k8s:app=curl",), 300: ("k8s:pod=a",)})
    clock = [100.0]
    monkeypatch.setattr("agent.monitor.flows.time.monotonic", lambda: clock[0])
    v = AgentView(agent)
    assert v.lookup_ip(CURL) == {"id": 12, "namespace": "default", "pod": "curl-pod",
                                 "identity": 256}
    assert v.lookup_ip("172.20.1.5")["pod"] == "a" and v.lookup_endpoint(12)["pod"] == "curl-pod"
    assert v.labels(300) == ["k8s:pod=a"] and v.labels(9) == []
    assert v.lookup_ip(WEB1) is None
    agent.endpoints["c2"] = Endpoint(id=34, container_id="c2", namespace="default",
                                     pod="webpod-1", ifname="eth0", host_ifname="lxc2",
                                     host_ifindex=6, ip=WEB1, mac=WEB1_MAC, host_mac=CURL_MAC,
                                     netns="/y", identity=257)
    assert v.lookup_ip(WEB1) is None           # the snapshot is younger than MISS_TTL
    clock[0] += AgentView.MISS_TTL + 0.01
    assert v.lookup_ip(WEB1)["id"] == 34       # a miss refreshes it
    assert v.ifname(1) == "lo" and v.ifname(999999) is None
