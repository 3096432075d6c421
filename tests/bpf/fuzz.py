"""Packet fuzzer for every entry program (issue #12): random and mutated packets through
BPF_PROG_TEST_RUN, each verdict checked against what the program may return, every drop against
cilium_metrics, the state maps against what the packet had the right to create, and the
checksums of forwarded packets.

Programs (PROGRAMS): cil_from_container, cil_to_container (bpf_lxc.c), cil_from_netdev,
cil_to_netdev, cil_to_netdev_nomasq (bpf_host.c), cil_from_overlay (bpf_overlay.c, with the
tunnel-key helper mocked as tests/bpf/test_policy.py does: the VNI comes in cb[1], 0 = no key),
cil_xdp_entry (bpf_xdp.c). Each object is compiled with small conntrack / NAT / fragment /
affinity / XDP-flow maps (-D, SMALL_MAPS) so counting their entries after every packet is one
cheap BPF_MAP_LOOKUP_BATCH; the logic is the agent's. The maps hold a node (scenario()): pods A
(the sender, on ifindex 1; ingress policy allows only tcp/80, tcp/8080, udp/53 and ICMP, denies
pod C) and B (allow-all), a remote pod C and a remote backend behind node k8s-w1, world and a
CIDR identity in the ipcache, ClusterIPs (one hairpinning to A), NodePorts (remote + local
backends, UDP, Maglev, eTP Local without backends), an external IP, a LoadBalancer IP with
ClientIP affinity announced by the L2 responder, masquerading on; every second batch runs in
tunnel mode.

Packets (Generator): a seed corpus of named scapy packets (SEEDS: TCP/UDP/ICMP to pods,
ClusterIPs, NodePorts, the outside, replies to masqueraded and NodePort flows, ICMP errors
quoting TCP, UDP, echo and another ICMP error, fragments, ARP, IPv6), built once; then each packet
is a seed unchanged (15 %), random bytes of length 0..1600 (5 %, half with an IPv4 ethertype), or
a seed with 1-3 byte-level mutations (MUTATORS: bit flips, truncation at each header boundary,
IHL 0..15, IP options, MF / fragment offset, tot_len 0 / 65535 / off by some, L4 ports / flags /
protocol, ICMP type / code, the quoted header of an ICMP error, random bytes appended), the IP
checksum fixed again half the time so the packet reaches past a checksum check. Deterministic:
random.Random(f"{seed}/{program}").

Checks, each exact:
  verdict   the return value is in the program's ALLOWED set (tc: OK, DROP, REDIRECT; XDP:
            PASS, DROP, TX, REDIRECT).
  drops     per batch of BATCH packets, from cilium_metrics before and after: the forwarded slot
            of the program's direction grew by the packets counted forwarded (tc: every non-drop;
            XDP: every verdict but PASS and DROP), the drop slots (any direction: a policy drop
            is counted in its endpoint's) grew by the number of DROP verdicts in total, and only
            slots of reasons abi.h defines grew. A batch that fails is run again packet by packet
            to name the packet.
  state     after each packet, by the count of entries: a dropped packet added no entry to
            conntrack (both maps), NAT, fragments, affinity or the XDP flow cache, except that a
            packet dropped by a later stage after an earlier one allowed and tracked it (its drop
            event says DROP_TTL_EXCEEDED at delivery, or DROP_POLICY / DROP_POLICY_DENY of the
            receiving pod's ingress after the sender's egress or a service) may keep that
            stage's conntrack and first-fragment entries, as Cilium's order does; a NAT entry
            appears only for a packet the program SNATs: a program that may SNAT (to-netdev with
            masquerading, from-netdev and XDP for NodePort), a forwarded verdict, an IPv4 output
            whose source address is the node's and whose source (address, port or echo id)
            differs from the input's, and at most 2 entries (the mapping and its reverse).
            Conntrack, fragment and affinity maps are emptied at the start of each batch.
  checksums a forwarded packet that the program changed, whose output is a well-formed IPv4
            packet (version 4, IHL >= 5, header inside tot_len inside the frame): its IP header
            checksum is valid if the input's was; a TCP, UDP or ICMP packet that is not a
            fragment: its L4 checksum is valid if the input's was (a UDP checksum of 0 stays 0
            or becomes valid); an ICMP error: the quoted IP header's checksum is valid if it was.
            A bad checksum forwarded (incremental updates keep it bad) is fine.

A failure names the seed, the program, the packet's index and its hex; replay it with
`python -m tests.bpf.fuzz --replay PROGRAM HEX`. `make fuzz` runs 1,000,000 packets through every
program and prints a table of verdicts and drop reasons; tests/bpf/test_fuzz.py runs 50,000.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import random
import socket
import struct
import sys
import time
from array import array
from dataclasses import dataclass, field

from datapath import abi, bpfsys, build, testrun
from datapath.events import EventRing
from datapath.maps import open_maps
from tests.bpf.mocks import MOCK_TUNNEL_KEY

SMALL_MAPS = {"CT_MAP_SIZE_TCP": 1024, "CT_MAP_SIZE_ANY": 1024, "SNAT_MAPPING_IPV4_SIZE": 1024,
              "IPV4_FRAG_DATAGRAMS_MAP_SIZE": 512, "LB_AFFINITY_MAP_MAX_ENTRIES": 512,
              "XDP_FLOW_MAP_SIZE": 512}
# A packet dropped by a later stage of the program after an earlier stage allowed and tracked
# it may keep that stage's conntrack and first-fragment entries, as Cilium's own order does:
# TTL exceeded at delivery (Cilium's ipv4_l3 runs after conntrack), or the receiving pod's
# ingress policy after the sender's egress policy or a service's conntrack entry. No drop keeps
# a NAT, affinity or XDP-flow entry.
LATER_STAGE_DROPS = frozenset({abi.DROP_TTL_EXCEEDED, abi.DROP_POLICY, abi.DROP_POLICY_DENY})
TRACKED_BEFORE = frozenset({"cilium_ct4_global", "cilium_ct_any4_global",
                            "cilium_ipv4_frag_datagrams"})
STATE_MAPS = ("cilium_ct4_global", "cilium_ct_any4_global", "cilium_snat_v4_external",
              "cilium_ipv4_frag_datagrams", "cilium_lb4_affinity", "dp_xdp_flow4")
NAT_MAP = "cilium_snat_v4_external"
REFUSED = -10000           # a frame BPF_PROG_TEST_RUN itself refuses (kernel_refuses)
BATCH = 128                # at most 3 entries a packet: the small maps never fill

TC_ALLOWED = frozenset({abi.CTX_ACT_OK, abi.CTX_ACT_DROP, abi.CTX_ACT_REDIRECT})
XDP_ALLOWED = frozenset({abi.XDP_PASS, abi.XDP_DROP, abi.XDP_TX, abi.XDP_REDIRECT})
XDP_NAMES = {abi.XDP_PASS: "PASS", abi.XDP_DROP: "DROP", abi.XDP_TX: "TX",
             abi.XDP_REDIRECT: "REDIRECT", abi.XDP_ABORTED: "ABORTED"}
# the reasons abi.h defines: a counted drop must be one of these
KNOWN_DROPS = frozenset(v for k, v in vars(abi).items()
                        if k.startswith("DROP_") and isinstance(v, int))


@dataclass(frozen=True)
class Program:
    name: str
    source: str
    function: str
    kind: str                 # "tc" or "xdp"
    direction: int            # METRIC_* its verdicts are counted under
    may_snat: bool            # may create NAT mappings (SNAT)
    mock: str = ""


PROGRAMS = (
    Program("from_container", "bpf_lxc.c", "cil_from_container", "tc", abi.METRIC_EGRESS, False),
    Program("to_container", "bpf_lxc.c", "cil_to_container", "tc", abi.METRIC_INGRESS, False),
    Program("from_netdev", "bpf_host.c", "cil_from_netdev", "tc", abi.METRIC_INGRESS, True),
    Program("to_netdev", "bpf_host.c", "cil_to_netdev", "tc", abi.METRIC_EGRESS, True),
    Program("to_netdev_nomasq", "bpf_host.c", "cil_to_netdev_nomasq", "tc", abi.METRIC_EGRESS,
            False),
    Program("from_overlay", "bpf_overlay.c", "cil_from_overlay", "tc", abi.METRIC_INGRESS, False,
            MOCK_TUNNEL_KEY),
    Program("xdp_entry", "bpf_xdp.c", "cil_xdp_entry", "xdp", abi.METRIC_INGRESS, True),
)
BY_NAME = {p.name: p for p in PROGRAMS}


def compile_object(prog: Program):
    """The program's object with SMALL_MAPS (cached per process by datapath.build)."""
    bpf = build.bpf_dir()
    if prog.mock:
        text = (build.amalgamate(bpf / "lib" / "common.h") + prog.mock
                + build.amalgamate(bpf / prog.source))
        return build.compile_text(text, SMALL_MAPS, name=f"{prog.source} (fuzz mock)")
    return build.compile_program(prog.source, SMALL_MAPS)


# ---------------------------------------------------------------- the node in the maps
NODE_IP, W1_IP = "192.168.10.100", "192.168.10.101"
POD_A, POD_B, POD_C, REMOTE_POD = "172.20.0.10", "172.20.0.11", "172.20.1.20", "172.20.1.9"
EP_A, EP_B, ID_A, ID_B, ID_C = 10, 11, 1000, 1001, 1002
CLUSTER_IP, HAIRPIN_IP, EXT_SVC_IP, LB_IP = "10.96.0.10", "10.96.0.11", "198.51.100.7", \
    "192.168.10.240"
OUTSIDE, ROUTER, CIDR_IP = "192.0.2.7", "198.51.100.1", "203.0.113.10"
MAC_A, MAC_B, LXC_A, LXC_B = ("02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:01:0a",
                              "02:00:00:00:01:0b")
NODE_MAC, PEER_MAC = "02:00:00:00:aa:00", "02:00:00:00:aa:fe"
NP_TCP, NP_UDP, NP_MAGLEV, NP_LOCAL_NONE = 30080, 30081, 30082, 30083
_NODE_IP_BYTES = socket.inet_aton(NODE_IP)
_rings: dict[int, EventRing] = {}      # one consumer per compiled object's cilium_events


def _ring(obj) -> EventRing:
    ring = _rings.get(id(obj))
    if ring is None:
        ring = _rings[id(obj)] = EventRing(obj["cilium_events"].map_fd)
    return ring


def scenario(obj, *, tunnel: bool) -> dict:
    """Fill an object's maps with the node described in the module docstring."""
    from agent.lb import maglev

    from . import services
    from .endpoints import add_endpoint, allow_all, set_sender
    m = open_maps(obj)
    for t in m.values():
        t.clear()
    add_endpoint(m, POD_A, ifindex=1, lxc_id=EP_A, mac=MAC_A, node_mac=LXC_A, sec_id=ID_A,
                 policy=False)
    add_endpoint(m, POD_B, ifindex=42, lxc_id=EP_B, mac=MAC_B, node_mac=LXC_B, sec_id=ID_B)
    set_sender(m, POD_A, 1)
    allow_all(m, EP_A, abi.POLICY_EGRESS)
    pol = m["cilium_policy_v2"]
    for proto, port in ((6, 80), (6, 8080), (17, 53)):
        pol.update(abi.policy_key(EP_A, 0, abi.POLICY_INGRESS, proto, port), abi.policy_entry())
    pol.update(abi.policy_key(EP_A, 0, abi.POLICY_INGRESS, 1), abi.policy_entry())
    pol.update(abi.policy_key(EP_A, ID_C, abi.POLICY_INGRESS), abi.policy_entry(deny=True))
    ipc = m["cilium_ipcache"]
    for cidr, ident, node in (("0.0.0.0/0", abi.IDENTITY_WORLD, None),
                              (f"{NODE_IP}/32", abi.IDENTITY_HOST, None),
                              (f"{W1_IP}/32", abi.IDENTITY_REMOTE_NODE, None),
                              ("172.20.1.0/24", ID_C, W1_IP),
                              (f"{REMOTE_POD}/32", 1234, W1_IP),
                              (f"{POD_A}/32", ID_A, None), (f"{POD_B}/32", ID_B, None),
                              ("203.0.113.0/24", 16777217, None)):
        ipc.update(abi.ipcache_key(cidr), abi.remote_endpoint_info(ident, node))
    m["cilium_ipmasq_v4"].update(abi.ipmasq_key("172.20.0.0/16"), abi.U8Value(1))
    flags = abi.NODE_CFG_F_MASQUERADE | (abi.NODE_CFG_F_TUNNEL if tunnel else 0)
    m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
        flags=flags, tunnel_ifindex=1, node_ip=abi.ip4_to_be32(NODE_IP)))
    np_flags = abi.SVC_FLAG_NODEPORT | abi.SVC_FLAG_ROUTABLE
    fe = services.frontend
    fe(m, [(1, POD_B, 8080), (2, REMOTE_POD, 8080)], addr=CLUSTER_IP, port=80, rev_nat=1)
    fe(m, [(3, POD_B, 53)], addr=CLUSTER_IP, port=53, rev_nat=2, proto=17)
    fe(m, [(4, POD_A, 8080)], addr=HAIRPIN_IP, port=80, rev_nat=3)
    fe(m, [(5, REMOTE_POD, 8080), (6, POD_B, 8080)], addr=NODE_IP, port=NP_TCP, rev_nat=4,
       flags=np_flags)
    fe(m, [(7, POD_B, 53)], addr=NODE_IP, port=NP_UDP, rev_nat=5, proto=17, flags=np_flags)
    fe(m, [(8, REMOTE_POD, 8080)], addr=EXT_SVC_IP, port=80, rev_nat=6,
       flags=abi.SVC_FLAG_EXTERNAL_IP | abi.SVC_FLAG_ROUTABLE)
    fe(m, [(9, POD_B, 8080), (10, REMOTE_POD, 8080)], addr=LB_IP, port=80, rev_nat=7,
       flags=abi.SVC_FLAG_LOADBALANCER | abi.SVC_FLAG_ROUTABLE | abi.SVC_FLAG_AFFINITY)
    head = abi.Lb4Key(address=abi.ip4_to_be32(LB_IP), dport=abi.be16(80), proto=6)
    svc = m["cilium_lb4_services_v2"]
    val = svc.get(head)
    val.backend_id |= 300                          # ClientIP affinity, 300 s
    svc.update(head, val)
    mag = [(11, POD_B, 8080), (12, REMOTE_POD, 8080)]
    fe(m, mag, addr=NODE_IP, port=NP_MAGLEV, rev_nat=8, flags=np_flags,
       algo=abi.LB_ALGORITHM_MAGLEV)
    table = maglev.build_table([(b, maglev.backend_key(ip, p), 1) for b, ip, p in mag],
                               abi.LB_MAGLEV_LUT_SIZE)
    m["cilium_lb4_maglev"].update(abi.Lb4ReverseNatKey(8),
                                  abi.Lb4MaglevLut.from_bytes(abi.maglev_lut_bytes(table)))
    fe(m, [], addr=NODE_IP, port=NP_LOCAL_NONE, rev_nat=9,
       flags=np_flags | abi.SVC_FLAG_EXT_LOCAL_SCOPE)
    if "dp_netdev" in m:
        m["dp_netdev"].update(abi.U32Key(1), abi.NetdevInfo(mac=abi.mac_to_bytes(NODE_MAC)))
        m["cilium_l2_responder_v4"].update(
            abi.L2ResponderV4Key(ip4=abi.ip4_to_be32(LB_IP), ifindex=1), abi.L2ResponderV4Stats())
        m["dp_agent_liveness"].update(abi.U32Key(0), abi.AgentLiveness(
            last_seen=time.monotonic_ns(), max_age=1 << 62))
    return m


# ---------------------------------------------------------------- seed corpus
def seeds() -> list[tuple[str, bytes]]:
    """The named seed packets (valid frames), built once with scapy."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Ether

    out: list[tuple[str, bytes]] = []

    def add(name, src, dst, l4, payload=b"", smac=MAC_A, dmac=LXC_A, ttl=64):
        out.append((name, bytes(Ether(src=smac, dst=dmac) / IP(src=src, dst=dst, ttl=ttl, id=7)
                                / l4 / payload)))

    def flows(name, src, dst, sport, dport, **kw):
        add(f"{name} tcp syn", src, dst, TCP(sport=sport, dport=dport, flags="S", seq=1), **kw)
        add(f"{name} tcp ack", src, dst, TCP(sport=sport, dport=dport, flags="A", seq=2, ack=9),
            b"data", **kw)
        add(f"{name} tcp fin", src, dst, TCP(sport=sport, dport=dport, flags="FA"), **kw)
        add(f"{name} tcp rst", src, dst, TCP(sport=sport, dport=dport, flags="R"), **kw)
        add(f"{name} udp", src, dst, UDP(sport=sport, dport=dport), b"query", **kw)
        add(f"{name} udp no csum", src, dst, UDP(sport=sport, dport=dport, chksum=0), b"q", **kw)
        add(f"{name} icmp echo", src, dst, ICMP(type=8, id=sport, seq=1), b"ping", **kw)
        add(f"{name} icmp reply", src, dst, ICMP(type=0, id=dport, seq=1), b"ping", **kw)

    inn = dict(smac=PEER_MAC, dmac=NODE_MAC, ttl=63)
    flows("A->B", POD_A, POD_B, 40000, 80)
    flows("A->B:8080", POD_A, POD_B, 40000, 8080)
    flows("B->A reply", POD_B, POD_A, 80, 40000, smac=MAC_B, dmac=LXC_B)
    flows("A->ClusterIP", POD_A, CLUSTER_IP, 40001, 80)
    flows("A->ClusterIP:53", POD_A, CLUSTER_IP, 40001, 53)
    flows("A->hairpin", POD_A, HAIRPIN_IP, 40002, 80)
    flows("A->NodePort", POD_A, NODE_IP, 40003, NP_TCP)
    flows("A->outside", POD_A, OUTSIDE, 40004, 443)
    flows("A->outside low port", POD_A, OUTSIDE, 1234, 53)
    flows("A->pod C", POD_A, POD_C, 40005, 80)
    flows("A->CIDR", POD_A, CIDR_IP, 40006, 443)
    flows("B->outside", POD_B, OUTSIDE, 8080, 51000, smac=MAC_B, dmac=LXC_B)
    flows("ext->NodePort", OUTSIDE, NODE_IP, 51000, NP_TCP, **inn)
    flows("ext->NodePort udp", OUTSIDE, NODE_IP, 51001, NP_UDP, **inn)
    flows("ext->NodePort maglev", OUTSIDE, NODE_IP, 51002, NP_MAGLEV, **inn)
    flows("ext->NodePort eTP local", OUTSIDE, NODE_IP, 51003, NP_LOCAL_NONE, **inn)
    flows("ext->externalIP", OUTSIDE, EXT_SVC_IP, 51004, 80, **inn)
    flows("ext->LB IP", OUTSIDE, LB_IP, 51005, 80, **inn)
    flows("ext->ClusterIP", OUTSIDE, CLUSTER_IP, 51006, 80, **inn)
    flows("outside reply to masq", OUTSIDE, NODE_IP, 443, 40004, **inn)
    flows("backend reply to NodePort SNAT", REMOTE_POD, NODE_IP, 8080, 32768, **inn)
    flows("ext->node", OUTSIDE, NODE_IP, 51007, 22, **inn)
    flows("ext->pod A", OUTSIDE, POD_A, 51008, 80, **inn)
    flows("pod C->A", POD_C, POD_A, 40010, 80, **inn)
    flows("pod C->B", POD_C, POD_B, 40011, 80, **inn)
    flows("w1->B", W1_IP, POD_B, 40012, 80, **inn)
    flows("node->A", NODE_IP, POD_A, 50000, 8080, smac=LXC_A, dmac=MAC_A)

    def quote(src, dst, l4, payload=b"x" * 8):
        return bytes(IP(src=src, dst=dst, ttl=63, id=9) / l4 / payload)

    tcp_out = quote(NODE_IP, OUTSIDE, TCP(sport=40004, dport=443, flags="S"))
    udp_np = quote(NODE_IP, OUTSIDE, UDP(sport=NP_UDP, dport=51001))
    echo_out = quote(NODE_IP, OUTSIDE, ICMP(type=8, id=40004, seq=1))
    inner_err = quote(NODE_IP, OUTSIDE, ICMP(type=3, code=3) / tcp_out, b"")
    for name, q in (("tcp", tcp_out), ("udp NodePort", udp_np), ("echo", echo_out),
                    ("icmp error", inner_err),
                    ("A's tcp", quote(POD_A, OUTSIDE, TCP(sport=40004, dport=443))),
                    ("A's udp to B", quote(POD_A, POD_B, UDP(sport=40000, dport=53))),
                    ("B's NodePort reply", quote(NODE_IP, OUTSIDE,
                                                 TCP(sport=NP_TCP, dport=51000)))):
        add(f"router unreachable about {name} -> node", ROUTER, NODE_IP,
            ICMP(type=3, code=4, nexthopmtu=1400) / q, **inn)
        add(f"time exceeded about {name} -> node", ROUTER, NODE_IP, ICMP(type=11) / q, **inn)
        add(f"B unreachable about {name} -> A", POD_B, POD_A, ICMP(type=3, code=3) / q,
            smac=MAC_B, dmac=LXC_B)
        add(f"A unreachable about {name} -> outside", POD_A, OUTSIDE, ICMP(type=3, code=3) / q)
        add(f"router unreachable about {name} -> A", ROUTER, POD_A,
            ICMP(type=3, code=1) / q, **inn)
    for name, src, dst, sport, dport, kw in (
            ("A->B", POD_A, POD_B, 40020, 53, {}),
            ("ext->NodePort udp", OUTSIDE, NODE_IP, 51020, NP_UDP, inn),
            ("A->outside", POD_A, OUTSIDE, 40021, 53, {})):
        whole = IP(src=src, dst=dst, ttl=64, id=77) / UDP(sport=sport, dport=dport) / (b"q" * 40)
        for i, f in enumerate(fragment(whole, fragsize=24)):
            smac, dmac = kw.get("smac", MAC_A), kw.get("dmac", LXC_A)
            out.append((f"{name} fragment {i}", bytes(Ether(src=smac, dst=dmac) / f)))
    out.append(("ARP who-has gateway", bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op="who-has", hwsrc=MAC_A, psrc=POD_A, pdst="172.20.0.1"))))
    out.append(("ARP who-has LB IP", bytes(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op="who-has", hwsrc=PEER_MAC, psrc="192.168.10.200", pdst=LB_IP))))
    out.append(("IPv6", bytes(Ether(src=MAC_A, dst=LXC_A) / IPv6(src="fd00::a", dst="fd00::b")
                              / UDP(sport=1, dport=2))))
    return out


# ---------------------------------------------------------------- checksums and parsing
def csum_ok(data: bytes) -> bool:
    """The ones' complement sum of data (padded to even) is 0xffff."""
    if len(data) & 1:
        data += b"\0"
    s = sum(array("H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def csum_fix(data: bytes) -> int:
    """The checksum that makes data (with its checksum field zero) sum right."""
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@dataclass
class Ip4:
    """A well-formed IPv4 packet in an Ethernet frame (ipv4() returns None otherwise)."""
    hdr: bytes
    l4: bytes                 # up to tot_len
    proto: int
    frag: bool
    saddr: bytes
    daddr: bytes


def ipv4(frame: bytes) -> Ip4 | None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    vi = frame[14]
    ihl = (vi & 15) * 4
    if vi >> 4 != 4 or ihl < 20:
        return None
    tot = int.from_bytes(frame[16:18], "big")
    if tot < ihl or 14 + tot > len(frame):
        return None
    hdr = frame[14:14 + ihl]
    frag = bool(int.from_bytes(frame[20:22], "big") & 0x3FFF)
    return Ip4(hdr, frame[14 + ihl:14 + tot], frame[23], frag, frame[26:30], frame[30:34])


def l4_ok(ip: Ip4) -> bool | None:
    """Is the L4 checksum valid (None: nothing to check; UDP's 0 counts as 'none', None)?"""
    l4, p = ip.l4, ip.proto
    if ip.frag:
        return None
    if p == 1:
        return csum_ok(l4) if len(l4) >= 8 else None
    if p not in (6, 17) or len(l4) < (20 if p == 6 else 8):
        return None
    if p == 17 and l4[6:8] == b"\0\0":
        return None
    pseudo = ip.saddr + ip.daddr + bytes((0, p)) + len(l4).to_bytes(2, "big")
    return csum_ok(pseudo + l4)


def quoted_ip_ok(ip: Ip4) -> bool | None:
    """An ICMP error's quoted IP header checksum (None when not an error with a whole one)."""
    l4 = ip.l4
    if ip.proto != 1 or ip.frag or len(l4) < 28 or l4[0] not in (3, 4, 5, 11, 12):
        return None
    ihl = (l4[8] & 15) * 4
    if l4[8] >> 4 != 4 or ihl < 20 or len(l4) < 8 + ihl:
        return None
    return csum_ok(l4[8:8 + ihl])


def src_port(ip: Ip4) -> bytes:
    """The source address and the L4 source port (TCP/UDP) or echo id, as bytes."""
    l4 = ip.l4
    if ip.proto in (6, 17) and len(l4) >= 2:
        return ip.saddr + l4[:2]
    if ip.proto == 1 and len(l4) >= 6:
        return ip.saddr + l4[4:6]
    return ip.saddr


def checksum_problem(inp: bytes, out: bytes) -> str | None:
    """The checksum rule of the module docstring for a forwarded packet; None when it holds."""
    if inp == out:
        return None
    o = ipv4(out)
    if o is None:
        return None
    i = ipv4(inp)
    if i is None:
        return None
    if csum_ok(i.hdr) and not csum_ok(o.hdr):
        return "IP header checksum broken"
    before = l4_ok(i)
    if before and o.proto == i.proto and not o.frag:
        if o.proto == 17 and o.l4[6:8] == b"\0\0":
            pass                                # a zero UDP checksum: none, fine
        elif l4_ok(o) is False:
            return f"L4 (proto {o.proto}) checksum broken"
    if i.proto == 17 and not i.frag and len(i.l4) >= 8 and i.l4[6:8] == b"\0\0" \
            and o.proto == 17 and len(o.l4) >= 8 and o.l4[6:8] != b"\0\0" and l4_ok(o) is False:
        return "zero UDP checksum became a wrong one"
    if quoted_ip_ok(i) and quoted_ip_ok(o) is False:
        return "quoted IP header checksum broken"
    return None


# ---------------------------------------------------------------- mutations (bytes only)
def kernel_refuses(frame: bytes) -> bool:
    """A frame BPF_PROG_TEST_RUN rejects with EINVAL before any program runs: shorter than an
    Ethernet header, or an IPv4 / IPv6 ethertype without room for the fixed IP header (the
    kernel sets the skb's network header)."""
    if len(frame) < 14:
        return True
    et = frame[12:14]
    return (et == b"\x08\x00" and len(frame) < 34) or (et == b"\x86\xdd" and len(frame) < 54)


def _fix_ip(b: bytearray) -> None:
    ihl = (b[14] & 15) * 4
    if len(b) >= 14 + max(ihl, 20):
        b[24:26] = b"\0\0"
        b[24:26] = csum_fix(bytes(b[14:14 + max(ihl, 20)])).to_bytes(2, "big")


def _l4off(b) -> int:
    return 14 + max(20, (b[14] & 15) * 4) if len(b) > 14 else 14


def m_bitflip(r, b):
    for _ in range(r.randint(1, 8)):
        if b:
            i = r.randrange(min(len(b), 80)) if r.random() < 0.8 else r.randrange(len(b))
            b[i] ^= 1 << r.randrange(8)


def m_byte(r, b):
    if b:
        b[r.randrange(min(len(b), 80))] = r.randrange(256)


def m_truncate(r, b):
    lo = _l4off(b)
    cut = r.choice((0, 1, 6, 12, 13, 14, 15, 20, 24, 33, 34, lo - 1, lo, lo + 1, lo + 4,
                    lo + 7, lo + 8, lo + 12, lo + 19, lo + 20, lo + 27, lo + 28, lo + 47,
                    r.randrange(len(b) + 1)))
    del b[max(0, cut):]


def m_ihl(r, b):
    if len(b) > 14:
        b[14] = (b[14] & 0xF0) | r.randrange(16)


def m_version(r, b):
    if len(b) > 14:
        b[14] = (r.randrange(16) << 4) | (b[14] & 15)


def m_options(r, b):
    if len(b) < 34:
        return
    ihl = (b[14] & 15) * 4
    n = r.randint(1, 10) * 4
    kind = r.random()
    if kind < 0.3:
        opts = bytes([1] * (n - 1) + [0])                         # NOPs, EOL
    elif kind < 0.5:
        opts = bytes([7, min(n, 39), 4]) + bytes(n - 3)           # record route
    else:
        opts = r.randbytes(n)
    newihl = min(15, (max(ihl, 20) + n) // 4)
    opts = opts[:newihl * 4 - max(ihl, 20)]
    b[14 + max(ihl, 20):14 + max(ihl, 20)] = opts
    b[14] = (b[14] & 0xF0) | newihl
    tot = int.from_bytes(b[16:18], "big") + len(opts)
    b[16:18] = (tot & 0xFFFF).to_bytes(2, "big")


def m_frag(r, b):
    if len(b) >= 22:
        v = r.choice((0x2000, 0x2000 | r.randrange(1, 0x2000), r.randrange(1, 0x2000),
                      0x4000, 0x8000, r.randrange(0x10000)))
        b[20:22] = v.to_bytes(2, "big")


def m_totlen(r, b):
    if len(b) >= 18:
        tot = int.from_bytes(b[16:18], "big")
        v = r.choice((0, 1, 19, 20, 21, 65535, tot + r.randint(1, 64), max(0, tot - r.randint(1, 64)),
                      len(b) - 14, len(b) - 13, r.randrange(65536)))
        b[16:18] = (v & 0xFFFF).to_bytes(2, "big")


def m_proto(r, b):
    if len(b) >= 24:
        b[23] = r.choice((0, 1, 2, 4, 6, 17, 41, 47, 50, 132, r.randrange(256)))


def m_l4(r, b):
    lo = _l4off(b)
    if len(b) < lo + 4:
        return
    f = r.randrange(5)
    if f == 0:                                  # ports
        b[lo + r.choice((0, 2)):lo + r.choice((0, 2)) + 2] = r.choice(
            (0, 53, 80, 8080, NP_TCP, NP_UDP, 32768, 40004, 65535,
             r.randrange(65536))).to_bytes(2, "big")
    elif f == 1 and len(b) > lo + 13:           # TCP flags / data offset
        b[lo + 13] = r.randrange(256)
        if r.random() < 0.3:
            b[lo + 12] = r.randrange(256)
    elif f == 2:                                # ICMP type / code
        b[lo] = r.choice((0, 3, 4, 5, 8, 11, 12, 13, r.randrange(256)))
        b[lo + 1] = r.randrange(16)
    elif f == 3 and len(b) >= lo + 8:           # UDP length / checksum
        b[lo + r.choice((4, 6))] = r.randrange(256)
    else:                                       # the quoted header of an ICMP error
        q = lo + 8
        if len(b) > q + 20:
            i = q + r.choice((0, 0, 2, 3, 6, 9, 9, 12, 16, 20, 21, 22, 23))
            if i < len(b):
                b[i] = r.randrange(256)


def m_append(r, b):
    b += r.randbytes(r.randint(1, 64))


MUTATORS = (m_bitflip, m_byte, m_truncate, m_ihl, m_version, m_options, m_frag, m_totlen,
            m_proto, m_l4, m_append)
WEIGHTS = (3, 2, 3, 2, 1, 2, 2, 2, 1, 4, 1)


class Generator:
    """Packets for one program: deterministic from (seed, program name)."""

    def __init__(self, seed: int, program: str, corpus: list[tuple[str, bytes]]):
        self.rnd = random.Random(f"{seed}/{program}")
        self.corpus = [p for _, p in corpus]

    def packet(self) -> bytes:
        r = self.rnd
        x = r.random()
        if x < 0.15:
            return r.choice(self.corpus)
        if x < 0.20:
            body = r.randbytes(r.randint(0, 1600))
            if r.random() < 0.5 and len(body) >= 14:
                body = body[:12] + b"\x08\x00" + body[14:]
            return body
        b = bytearray(r.choice(self.corpus))
        for fn in r.choices(MUTATORS, WEIGHTS, k=r.randint(1, 3)):
            fn(r, b)
        if len(b) >= 34 and r.random() < 0.5:
            _fix_ip(b)
        return bytes(b)


# ---------------------------------------------------------------- running
class _Runner:
    """BPF_PROG_TEST_RUN with buffers made once (datapath.testrun's call, leaner per packet)."""

    def __init__(self, fd: int, kind: str):
        self.fd, self.kind = fd, kind
        self.out = ctypes.create_string_buffer(4096)
        self.attr = testrun._TestAttr(prog_fd=fd)
        if kind == "xdp":
            self.ctx = testrun.XdpMd(ingress_ifindex=1)
        else:
            self.ctx = testrun.SkBuff(ifindex=1)
        self.ctx_out = type(self.ctx)()
        self.ctx_size = ctypes.sizeof(self.ctx)

    def run(self, data: bytes, cb1: int = 0) -> tuple[int, bytes]:
        a = self.attr
        inbuf = ctypes.create_string_buffer(data, max(len(data), 1))
        a.data_in, a.data_size_in = ctypes.addressof(inbuf), len(data)
        a.data_out, a.data_size_out = ctypes.addressof(self.out), len(self.out)
        a.repeat = 1
        if self.kind == "xdp":
            self.ctx.data_end = len(data)
        else:
            self.ctx.cb[1] = cb1
        a.ctx_in, a.ctx_out = ctypes.addressof(self.ctx), ctypes.addressof(self.ctx_out)
        a.ctx_size_in = a.ctx_size_out = self.ctx_size
        rc = testrun._libc.syscall(testrun._NR_BPF, testrun._BPF_PROG_TEST_RUN,
                                   ctypes.byref(a), ctypes.sizeof(a))
        if rc != 0:
            return -ctypes.get_errno(), b""
        return a.retval, self.out.raw[:a.data_size_out]


class _Counter:
    """Entries of one small map by a single BPF_MAP_LOOKUP_BATCH."""

    def __init__(self, raw: bpfsys.RawMap):
        info = raw.info
        self.fd, self.n = raw.fd, info.max_entries
        self.keys = ctypes.create_string_buffer(info.key_size * self.n)
        self.vals = ctypes.create_string_buffer(info.value_len * self.n)
        self.tok = ctypes.create_string_buffer(max(info.key_size, 8))

    def __call__(self) -> int:
        attr = bpfsys._BatchAttr(0, ctypes.addressof(self.tok), ctypes.addressof(self.keys),
                                 ctypes.addressof(self.vals), self.n, self.fd, 0, 0)
        bpfsys._bpf(bpfsys.BPF_MAP_LOOKUP_BATCH, attr)
        return attr.count


def _metrics(raw: bpfsys.RawMap) -> dict[int, int]:
    """cilium_metrics packet counts summed over CPUs: {slot index: count} (non-zero only)."""
    ncpu = bpfsys.possible_cpus()
    stride = (raw.info.value_size + 7) // 8    # one CPU's slot, in u64s
    block = stride * ncpu                      # one slot, every CPU
    out: dict[int, int] = {}
    for got, kraw, vraw in bpfsys._batches(raw.fd, raw.info):
        keys, vals = array("I", kraw), array("Q", vraw)
        counts = [sum(x) for x in zip(*(vals[c * stride::block] for c in range(ncpu)))]
        for k, c in zip(keys, counts):
            if c:
                out[k] = c
    return out


@dataclass
class Failure:
    program: str
    seed: int
    index: int
    what: str
    packet: bytes
    output: bytes = b""

    def __str__(self) -> str:
        return (f"{self.program} seed={self.seed} packet #{self.index}: {self.what}\n"
                f"  in  {self.packet.hex()}\n  out {self.output.hex()}\n"
                f"  replay: python -m tests.bpf.fuzz --replay {self.program} {self.packet.hex()}")


@dataclass
class Result:
    program: str
    packets: int = 0
    verdicts: dict = field(default_factory=dict)      # name -> count
    reasons: dict = field(default_factory=dict)       # drop reason -> count
    failures: list = field(default_factory=list)
    seconds: float = 0.0


class Fuzzer:
    """One program with its object's maps set up (scenario), ready to run batches."""

    def __init__(self, prog: Program, seed: int, corpus=None):
        self.prog, self.seed = prog, seed
        self.obj = compile_object(prog)
        fn = build.load(self.obj, prog.function, prog.kind)
        self.runner = _Runner(fn.fd, prog.kind)
        self.maps = scenario(self.obj, tunnel=False)
        self.state = {}
        for name in STATE_MAPS:
            try:
                table = self.obj[name]
            except KeyError:
                continue
            self.state[name] = bpfsys.RawMap(table.map_fd, owner=table, name=name)
        self.counter_names = list(self.state)
        self.counter_list = [_Counter(r) for r in self.state.values()]
        self.counts = [0] * len(self.counter_list)
        self.metrics_raw = bpfsys.RawMap(self.obj["cilium_metrics"].map_fd,
                                         owner=self.obj["cilium_metrics"], name="cilium_metrics")
        self.cfg = self.maps["dp_node_config"]
        self.gen = Generator(seed, prog.name, corpus if corpus is not None else seeds())
        self.allowed = XDP_ALLOWED if prog.kind == "xdp" else TC_ALLOWED
        self.drop = abi.XDP_DROP if prog.kind == "xdp" else abi.CTX_ACT_DROP
        self.names = XDP_NAMES if prog.kind == "xdp" else abi.VERDICT_NAMES
        self.rnd = random.Random(f"{seed}/{prog.name}/ctx")
        self._drain()

    def _drain(self):
        _ring(self.obj).poll(0)

    def _reset(self, batch_no: int):
        for raw in self.state.values():
            raw.clear()
        self.counts = [c() for c in self.counter_list]
        self.cfg.update(abi.U32Key(0), abi.NodeConfig(
            flags=abi.NODE_CFG_F_MASQUERADE | (abi.NODE_CFG_F_TUNNEL if batch_no % 2 else 0),
            tunnel_ifindex=1, node_ip=abi.ip4_to_be32(NODE_IP)))

    def _last_drop_reason(self) -> int:
        """The reason of the latest drop event in the object's cilium_events (this packet's:
        only called right after a drop)."""
        from datapath.events import DropEvent, decode
        _ring(self.obj)
        reason = -1
        for rec in _rings[id(self.obj)].poll(0):
            ev = decode(rec)
            if isinstance(ev, DropEvent):
                reason = ev.reason
        return reason

    def _counted(self, verdict: int) -> bool:
        """Does the program count this (non-drop) verdict as forwarded in cilium_metrics?"""
        return self.prog.kind == "tc" or verdict != abi.XDP_PASS

    def _vni(self) -> int:
        return self.rnd.choice((0, abi.IDENTITY_HOST, abi.IDENTITY_WORLD, ID_C, 1234))

    def _one(self, idx: int, pkt: bytes, cb1: int, fails: list) -> int:
        """Run one packet with its per-packet checks; returns the verdict."""
        before = self.counts
        verdict, out = self.runner.run(pkt, cb1)
        after = self.counts = [c() for c in self.counter_list]
        p = self.prog

        def fail(what):
            fails.append(Failure(p.name, self.seed, idx, what, pkt, out))
        if verdict == -errno.EINVAL and kernel_refuses(pkt):
            return REFUSED
        if verdict not in self.allowed:
            fail(f"verdict {verdict} not one the program may return")
            return verdict
        grown = {n: a - b for n, a, b in zip(self.counter_names, after, before) if a > b}
        if verdict == self.drop:
            if grown:
                reason = self._last_drop_reason()
                kept = set(grown) - (TRACKED_BEFORE if reason in LATER_STAGE_DROPS else set())
                if kept:
                    fail(f"dropped ({reason} {abi.reason_string(reason)}), yet added entries: "
                         f"{ {n: grown[n] for n in kept} }")
            return verdict
        nat = grown.get(NAT_MAP, 0)
        if nat:
            o, i = ipv4(out), ipv4(pkt)
            if not p.may_snat:
                fail(f"{nat} NAT entries from a program that never SNATs")
            elif nat > 2:
                fail(f"{nat} NAT entries for one packet")
            elif o is None or i is None or o.saddr != _NODE_IP_BYTES or \
                    src_port(o) == src_port(i):
                fail(f"{nat} NAT entries for a packet that was not SNATed")
        why = checksum_problem(pkt, out)
        if why:
            fail(why)
        return verdict

    def batch(self, batch_no: int, start: int, packets: list[bytes], cbs: list[int],
              res: Result, per_packet: bool = False) -> None:
        self._reset(batch_no)
        fails: list[Failure] = []
        m0 = _metrics(self.metrics_raw)
        verdicts = []
        for j, (pkt, cb1) in enumerate(zip(packets, cbs)):
            v = self._one(start + j, pkt, cb1, fails)
            verdicts.append(v)
            if per_packet:
                m1 = _metrics(self.metrics_raw)
                problem = self._metric_problem(m0, m1, [v])
                if problem:
                    fails.append(Failure(self.prog.name, self.seed, start + j, problem, pkt))
                m0 = m1
        self._drain()
        if per_packet:
            res.failures += fails
            return
        m1 = _metrics(self.metrics_raw)
        problem = self._metric_problem(m0, m1, verdicts)
        if problem:
            replay = Result(self.prog.name)
            self.batch(batch_no, start, packets, cbs, replay, per_packet=True)
            res.failures += replay.failures or [Failure(self.prog.name, self.seed, start,
                                                        f"batch: {problem}", b"")]
        res.failures += fails
        res.packets += len(packets)
        for v in verdicts:
            name = "refused by test-run" if v == REFUSED else self.names.get(v, str(v))
            res.verdicts[name] = res.verdicts.get(name, 0) + 1
        for slot, c in m1.items():
            reason, _ = abi.metrics_slot(slot)
            d = c - m0.get(slot, 0)
            if reason != abi.REASON_FORWARDED and d:
                res.reasons[reason] = res.reasons.get(reason, 0) + d

    def _metric_problem(self, m0: dict, m1: dict, verdicts: list[int]) -> str | None:
        verdicts = [v for v in verdicts if v != REFUSED]
        drops = sum(1 for v in verdicts if v == self.drop)
        fwd = sum(1 for v in verdicts if v != self.drop and v in self.allowed and self._counted(v))
        got_fwd = got_drop = 0
        for slot, c in m1.items():
            d = c - m0.get(slot, 0)
            if not d:
                continue
            reason, direction = abi.metrics_slot(slot)
            if reason == abi.REASON_FORWARDED:
                if direction != self.prog.direction:
                    return f"forwarded counted in direction {direction}"
                got_fwd += d
            elif reason not in KNOWN_DROPS:
                return f"{d} packets counted under reason {reason}, not a known drop"
            else:
                got_drop += d
        if got_drop != drops:
            return f"{drops} DROP verdicts, {got_drop} drops counted"
        if got_fwd != fwd:
            return f"{fwd} forwarded verdicts, {got_fwd} counted"
        return None

    def run(self, count: int, batch: int = BATCH) -> Result:
        res = Result(self.prog.name)
        t0 = time.monotonic()
        done = 0
        n = 0
        while done < count:
            k = min(batch, count - done)
            pkts = [self.gen.packet() for _ in range(k)]
            cbs = [self._vni() for _ in range(k)] if self.prog.mock else [0] * k
            self.batch(n, done, pkts, cbs, res)
            done += k
            n += 1
        res.seconds = time.monotonic() - t0
        return res


def fuzz(programs, per_program: int, seed: int) -> list[Result]:
    corpus = seeds()
    out = []
    for prog in programs:
        out.append(Fuzzer(prog, seed, corpus).run(per_program))
    return out


def table(results: list[Result]) -> str:
    """Verdicts and drop reasons per program, as make fuzz prints them."""
    lines = [f"{'program':18} {'packets':>9} {'s':>6}  verdicts / drop reasons"]
    for r in results:
        v = ", ".join(f"{k} {c}" for k, c in sorted(r.verdicts.items()))
        lines.append(f"{r.program:18} {r.packets:9d} {r.seconds:6.1f}  {v}")
        for reason, c in sorted(r.reasons.items(), key=lambda x: -x[1]):
            lines.append(f"{'':36}{c:9d}  {reason} {abi.reason_string(reason)}")
        lines.append(f"{'':36}failures: {len(r.failures)}")
    return "\n".join(lines)


def replay(program: str, hexdata: str) -> None:
    prog = BY_NAME[program]
    fz = Fuzzer(prog, 0)
    fz._reset(0)
    fails: list[Failure] = []
    pkt = bytes.fromhex(hexdata)
    m0 = _metrics(fz.metrics_raw)
    v = fz._one(0, pkt, 0, fails)
    m1 = _metrics(fz.metrics_raw)
    print(f"{program}: verdict {fz.names.get(v, v)}; metrics "
          f"{ {abi.metrics_slot(s): c - m0.get(s, 0) for s, c in m1.items() if c != m0.get(s, 0)} }")
    print(fz._metric_problem(m0, m1, [v]) or "metrics agree")
    for f in fails:
        print(f)


def _job(name: str, seed: int, packets: int) -> Result:
    """One program's run (a process of its own with --jobs)."""
    r = Fuzzer(BY_NAME[name], seed).run(packets)
    print(f"  {name}: {r.packets} packets in {r.seconds:.1f} s, {len(r.failures)} failures",
          flush=True)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bpf.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="per program")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--program", action="append", choices=sorted(BY_NAME))
    ap.add_argument("--jobs", type=int, default=2, help="programs fuzzed at once (processes)")
    ap.add_argument("--replay", nargs=2, metavar=("PROGRAM", "HEX"))
    a = ap.parse_args(argv)
    if a.replay:
        replay(*a.replay)
        return 0
    seed = a.seed if a.seed is not None else random.randrange(1 << 32)
    progs = [BY_NAME[n] for n in a.program] if a.program else list(PROGRAMS)
    print(f"fuzz: seed {seed}, {a.packets} packets per program, {len(progs)} programs",
          flush=True)
    t0 = time.monotonic()
    if a.jobs > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(a.jobs) as pool:
            results = pool.starmap(_job, [(p.name, seed, a.packets) for p in progs],
                                   chunksize=1)
    else:
        results = [_job(p.name, seed, a.packets) for p in progs]
    print(table(results))
    total = sum(r.packets for r in results)
    print(f"fuzz: {total} packets in {time.monotonic() - t0:.0f} s, seed {seed}")
    fails = [f for r in results for f in r.failures]
    for f in fails[:20]:
        print(f)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
