"""Named packets for the test-run fixtures: one node, pod A (172.20.0.10) and pod B (.11)."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit

POD_A_IP, POD_B_IP, GATEWAY_IP = "172.20.0.10", "172.20.0.11", "172.20.0.1"
POD_A_MAC, LXC_A_MAC = "02:00:00:00:00:0a", "02:00:00:00:01:0a"
POD_B_MAC, LXC_B_MAC = "02:00:00:00:00:0b", "02:00:00:00:01:0b"
LXC_A_IFINDEX = 1        # lo: BPF_PROG_TEST_RUN needs an ifindex that exists in the test's netns
LXC_B_IFINDEX = 42
OUTSIDE_IP = "192.0.2.7"

POD_A_TO_POD_B_TCP_SYN = (Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                          / IP(src=POD_A_IP, dst=POD_B_IP, ttl=64, id=1)
                          / TCP(sport=40000, dport=80, flags="S", seq=1000))
POD_A_TO_POD_B_UDP = (Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                      / IP(src=POD_A_IP, dst=POD_B_IP, ttl=64, id=2)
                      / UDP(sport=40001, dport=53) / b"query")
POD_A_TO_OUTSIDE_ICMP = (Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                         / IP(src=POD_A_IP, dst=OUTSIDE_IP, ttl=64, id=3) / ICMP(id=7, seq=1))
SPOOFED_SRC_TO_POD_B = (Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                        / IP(src="172.20.0.99", dst=POD_B_IP, ttl=64, id=4) / TCP(dport=80))
POD_A_TO_POD_B_TTL1 = (Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                       / IP(src=POD_A_IP, dst=POD_B_IP, ttl=1, id=5) / TCP(dport=80))
ARP_WHO_HAS_GATEWAY = (Ether(src=POD_A_MAC, dst="ff:ff:ff:ff:ff:ff")
                       / ARP(op="who-has", hwsrc=POD_A_MAC, psrc=POD_A_IP,
                             hwdst="00:00:00:00:00:00", pdst=GATEWAY_IP))
ARP_REPLY_FROM_GATEWAY = (Ether(src=LXC_A_MAC, dst=POD_A_MAC)
                          / ARP(op="is-at", hwsrc=LXC_A_MAC, psrc=GATEWAY_IP,
                                hwdst=POD_A_MAC, pdst=POD_A_IP))
ARP_PROBE_OWN_IP = (Ether(src=POD_A_MAC, dst="ff:ff:ff:ff:ff:ff")
                    / ARP(op="who-has", hwsrc=POD_A_MAC, psrc="0.0.0.0", pdst=POD_A_IP))
LLDP_FROM_POD_A = (Ether(src=POD_A_MAC, dst="01:80:c2:00:00:0e", type=0x88CC)
                   / bytes.fromhex("020707" "0102030405060403050170" "0000"))
IPV6_FROM_POD_A = (Ether(src=POD_A_MAC, dst="33:33:00:00:00:02")
                   / IPv6(src="fe80::a", dst="ff02::2") / b"\x85\x00")


# BPF_PROG_TEST_RUN refuses (EINVAL) an IPv4-typed frame shorter than Ethernet + 20 bytes, so the
# truncation cases below are frames whose IPv4 header promises more than the frame holds.
def truncated_ip_total_length() -> bytes:
    """IPv4 header whose total length claims 20 bytes more than the frame carries."""
    raw = bytearray(bytes(POD_A_TO_POD_B_TCP_SYN))
    return bytes(raw[:14 + 20 + 6])          # TCP header cut after 6 bytes; tot_len says 40


def truncated_ip_options() -> bytes:
    """IPv4 header with ihl = 15 (60-byte header) in a 34-byte frame."""
    raw = bytearray(bytes(POD_A_TO_POD_B_TCP_SYN)[:34])
    raw[14] = 0x4F
    return bytes(raw)


def truncated_arp() -> bytes:
    """An ARP request cut in the middle of its body."""
    return bytes(ARP_WHO_HAS_GATEWAY)[:14 + 8 + 6]


def routed(pkt, *, src_mac: str, dst_mac: str):
    """The packet as delivered one hop later: new MACs, TTL - 1, IP checksum recomputed."""
    out = pkt.copy()
    out[Ether].src, out[Ether].dst = src_mac, dst_mac
    out[IP].ttl -= 1
    del out[IP].chksum
    return Ether(bytes(out))

# ---- multi-node: pod C (172.20.1.20) lives on node k8s-w1 (192.168.10.101) ----
NODE_CTR_IP, NODE_W1_IP = "192.168.10.100", "192.168.10.101"
NODE_CTR_MAC, NODE_W1_MAC = "02:00:00:00:aa:00", "02:00:00:00:aa:01"
POD_C_IP = "172.20.1.20"
POD_A_TO_REMOTE_POD_C = (Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                         / IP(src=POD_A_IP, dst=POD_C_IP, ttl=64, id=6)
                         / TCP(sport=40002, dport=80, flags="S"))
# as it arrives on eth1 of k8s-ctr from k8s-w1 (native routing): for local pod B
REMOTE_POD_C_TO_POD_B = (Ether(src=NODE_W1_MAC, dst=NODE_CTR_MAC)
                         / IP(src=POD_C_IP, dst=POD_B_IP, ttl=63, id=7)
                         / TCP(sport=80, dport=40002, flags="SA"))
OUTSIDE_TO_NODE = (Ether(src=NODE_W1_MAC, dst=NODE_CTR_MAC)
                   / IP(src=NODE_W1_IP, dst=NODE_CTR_IP, ttl=64, id=8) / UDP(sport=1, dport=8472))

# ---- L2 announcement: the router (k8s-rtr, 192.168.10.200) asks the LAN for a LoadBalancer IP
# that k8s-ctr announces on eth1 ----
ROUTER_LAN_IP, ROUTER_LAN_MAC = "192.168.10.200", "02:00:00:00:aa:c8"
LB_IP, UNANNOUNCED_IP = "192.168.10.240", "192.168.10.241"
ARP_WHO_HAS_LB_IP = (Ether(src=ROUTER_LAN_MAC, dst="ff:ff:ff:ff:ff:ff")
                     / ARP(op="who-has", hwsrc=ROUTER_LAN_MAC, psrc=ROUTER_LAN_IP,
                           hwdst="00:00:00:00:00:00", pdst=LB_IP))
ARP_LB_IP_IS_AT_NODE_CTR = (Ether(src=NODE_CTR_MAC, dst=ROUTER_LAN_MAC)
                            / ARP(op="is-at", hwsrc=NODE_CTR_MAC, psrc=LB_IP,
                                  hwdst=ROUTER_LAN_MAC, pdst=ROUTER_LAN_IP))
ARP_WHO_HAS_UNANNOUNCED_IP = (Ether(src=ROUTER_LAN_MAC, dst="ff:ff:ff:ff:ff:ff")
                              / ARP(op="who-has", hwsrc=ROUTER_LAN_MAC, psrc=ROUTER_LAN_IP,
                                    pdst=UNANNOUNCED_IP))
ARP_WHO_HAS_LB_IP_TO_OTHER_MAC = (Ether(src=ROUTER_LAN_MAC, dst=NODE_W1_MAC)
                                  / ARP(op="who-has", hwsrc=ROUTER_LAN_MAC, psrc=ROUTER_LAN_IP,
                                        pdst=LB_IP))
GRATUITOUS_ARP_LB_IP = (Ether(src=NODE_W1_MAC, dst="ff:ff:ff:ff:ff:ff")
                        / ARP(op="who-has", hwsrc=NODE_W1_MAC, psrc=LB_IP, pdst=LB_IP))
ARP_REPLY_LB_IP_FROM_W1 = (Ether(src=NODE_W1_MAC, dst=ROUTER_LAN_MAC)
                           / ARP(op="is-at", hwsrc=NODE_W1_MAC, psrc=LB_IP,
                                 hwdst=ROUTER_LAN_MAC, pdst=ROUTER_LAN_IP))


def truncated_arp_for_lb_ip() -> bytes:
    """The router's request cut in the middle of its body."""
    return bytes(ARP_WHO_HAS_LB_IP)[:14 + 8 + 6]

# ---- identity policy: pod A (endpoint 10, identity 1000) and pod B (11, 1001) on this node ----
EP_A, ID_A, EP_B, ID_B = 10, 1000, 11, 1001
ID_C = 1002                       # pod C on k8s-w1
CIDR_NET, CIDR_EXCEPT = "203.0.113.0/24", "203.0.113.128/25"
ID_CIDR_NET, ID_CIDR_EXCEPT = 16777217, 16777218      # CIDR identities (IDENTITY_SCOPE_LOCAL)
CIDR_ALLOWED_IP, CIDR_EXCEPTED_IP = "203.0.113.10", "203.0.113.200"


def pod_a_to_pod_b(l4, payload=b"", ident=40):
    """A packet pod A sends to pod B: its L4 header given."""
    return Ether(bytes(Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                       / IP(src=POD_A_IP, dst=POD_B_IP, ttl=64, id=ident) / l4 / payload))


def pod_b_to_pod_a(l4, payload=b"", ident=41):
    """A packet pod B sends to pod A (from B's veth)."""
    return Ether(bytes(Ether(src=POD_B_MAC, dst=LXC_B_MAC)
                       / IP(src=POD_B_IP, dst=POD_A_IP, ttl=64, id=ident) / l4 / payload))


POD_A_TO_POD_B_ACK = pod_a_to_pod_b(TCP(sport=40000, dport=80, flags="A", seq=1001, ack=5001))
POD_B_TO_POD_A_SYNACK = pod_b_to_pod_a(TCP(sport=80, dport=40000, flags="SA", seq=5000,
                                           ack=1001))
POD_B_TO_POD_A_TCP_SYN = pod_b_to_pod_a(TCP(sport=40100, dport=80, flags="S", seq=7000))
POD_A_TO_POD_B_PING = pod_a_to_pod_b(ICMP(type=8, id=0x4242, seq=1), b"ping")
POD_B_TO_POD_A_PONG = pod_b_to_pod_a(ICMP(type=0, id=0x4242, seq=1), b"ping")
# pod B's kernel: nothing listens on udp/53, so it answers POD_A_TO_POD_B_UDP (as it arrived,
# TTL 63) with a port unreachable
POD_B_PORT_UNREACHABLE_TO_POD_A = pod_b_to_pod_a(
    ICMP(type=3, code=3) / bytes(IP(src=POD_A_IP, dst=POD_B_IP, ttl=63, id=2)
                                 / UDP(sport=40001, dport=53) / b"query"))
# the same error about a datagram pod A never sent
POD_B_UNRELATED_UNREACHABLE_TO_POD_A = pod_b_to_pod_a(
    ICMP(type=3, code=3) / bytes(IP(src=POD_A_IP, dst=POD_B_IP, ttl=63, id=9)
                                 / UDP(sport=40999, dport=53) / b"query"))
# pod B's datagram to pod C on k8s-w1: a flow of pod C's (and B's) in conntrack, not A's
POD_B_TO_REMOTE_POD_C_UDP = Ether(bytes(Ether(src=POD_B_MAC, dst=LXC_B_MAC)
                                        / IP(src=POD_B_IP, dst=POD_C_IP, ttl=64, id=48)
                                        / UDP(sport=40200, dport=53) / b"query"))
# errors about that flow that pod A has no part in: B tells A about B's datagram to C (A never
# sent it), and A tells B about C's answer to B (A never received it)
POD_B_UNREACHABLE_ABOUT_POD_C_FLOW_TO_POD_A = pod_b_to_pod_a(
    ICMP(type=3, code=3) / bytes(IP(src=POD_B_IP, dst=POD_C_IP, ttl=63, id=48)
                                 / UDP(sport=40200, dport=53) / b"query"))
POD_A_UNREACHABLE_ABOUT_POD_C_FLOW_TO_POD_B = pod_a_to_pod_b(
    ICMP(type=3, code=3) / bytes(IP(src=POD_C_IP, dst=POD_B_IP, ttl=63, id=49)
                                 / UDP(sport=53, dport=40200) / b"answer"))
POD_A_TO_POD_B_SCTP = pod_a_to_pod_b(SCTP(sport=5000, dport=9999) / SCTPChunkInit())
POD_A_TO_POD_B_SCTP_OTHER_PORT = pod_a_to_pod_b(SCTP(sport=5000, dport=9998) / SCTPChunkInit())


def _fragments():
    """A 48-byte UDP datagram (udp/53) from A to B in two fragments, and a later fragment of
    another datagram whose first fragment never came."""
    whole = IP(src=POD_A_IP, dst=POD_B_IP, ttl=64, id=77) / UDP(sport=40020, dport=53) / (b"q" * 40)
    first, later = fragment(whole, fragsize=24)
    orphan = later.copy()
    orphan.id = 78
    del orphan.chksum
    return [Ether(bytes(Ether(src=POD_A_MAC, dst=LXC_A_MAC) / f)) for f in (first, later, orphan)]


POD_A_TO_POD_B_FRAG_FIRST, POD_A_TO_POD_B_FRAG_LATER, POD_A_TO_POD_B_FRAG_ORPHAN = _fragments()
POD_A_TO_CIDR_ALLOWED = (Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                         / IP(src=POD_A_IP, dst=CIDR_ALLOWED_IP, ttl=64, id=42)
                         / TCP(sport=40030, dport=443, flags="S"))
POD_A_TO_CIDR_EXCEPTED = (Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                          / IP(src=POD_A_IP, dst=CIDR_EXCEPTED_IP, ttl=64, id=43)
                          / TCP(sport=40031, dport=443, flags="S"))
# the node's own process (k8s-ctr's address) to pod A, routed by the stack into lxc A (to-container)
HOST_TO_POD_A_TCP_SYN = (Ether(src=LXC_A_MAC, dst=POD_A_MAC)
                         / IP(src=NODE_CTR_IP, dst=POD_A_IP, ttl=64, id=44)
                         / TCP(sport=50000, dport=8080, flags="S"))
HOST_TO_POD_A_OTHER_PORT = (Ether(src=LXC_A_MAC, dst=POD_A_MAC)
                            / IP(src=NODE_CTR_IP, dst=POD_A_IP, ttl=64, id=45)
                            / TCP(sport=50001, dport=9090, flags="S"))
ARP_HOST_WHO_HAS_POD_A = (Ether(src=LXC_A_MAC, dst="ff:ff:ff:ff:ff:ff")
                          / ARP(op="who-has", hwsrc=LXC_A_MAC, psrc=GATEWAY_IP, pdst=POD_A_IP))
# pod C on k8s-w1 opens a connection to pod B: as it arrives on eth1 (native) or decapsulated
# from cilium_vxlan (tunnel)
REMOTE_POD_C_TO_POD_B_SYN = (Ether(src=NODE_W1_MAC, dst=NODE_CTR_MAC)
                             / IP(src=POD_C_IP, dst=POD_B_IP, ttl=63, id=46)
                             / TCP(sport=40040, dport=80, flags="S"))
# k8s-w1's own address (health checks, say) to pod B through the tunnel: VNI HOST (1)
NODE_W1_TO_POD_B_SYN = (Ether(src=NODE_W1_MAC, dst=NODE_CTR_MAC)
                        / IP(src=NODE_W1_IP, dst=POD_B_IP, ttl=63, id=47)
                        / TCP(sport=40041, dport=80, flags="S"))

# ---- spoofing from pod A (issue 12): each one is dropped by cil_from_container ----
SPOOF_OUTSIDE_IP, SPOOF_MAC = "198.51.100.20", "02:de:ad:be:ef:01"


def pod_a_udp_from(src_ip: str, src_mac: str = POD_A_MAC, dst_ip: str = OUTSIDE_IP):
    """A UDP datagram out of pod A's eth0 with the given source IP and MAC."""
    return Ether(bytes(Ether(src=src_mac, dst=LXC_A_MAC)
                       / IP(src=src_ip, dst=dst_ip, ttl=64, id=60)
                       / UDP(sport=40060, dport=53) / b"spoof"))


def pod_a_arp(op: str, *, psrc: str, pdst: str, hwsrc: str = POD_A_MAC, eth_src: str = POD_A_MAC,
              hwtype: int = 1):
    """An ARP frame out of pod A's eth0, broadcast; hwtype 6 (IEEE 802, which Linux takes on
    an Ethernet device too) patched in after the Ethernet layout is built."""
    raw = bytearray(bytes(Ether(src=eth_src, dst="ff:ff:ff:ff:ff:ff")
                          / ARP(op=op, hwsrc=hwsrc, psrc=psrc, hwdst="00:00:00:00:00:00",
                                pdst=pdst)))
    raw[14:16] = hwtype.to_bytes(2, "big")
    return Ether(bytes(raw))


POD_A_AS_POD_B_IP = pod_a_udp_from(POD_B_IP)                       # another pod's IP
POD_A_AS_NODE_IP = pod_a_udp_from(NODE_CTR_IP)                     # its node's IP
POD_A_AS_OTHER_NODE_IP = pod_a_udp_from(NODE_W1_IP)                # another node's IP
POD_A_AS_OUTSIDE_IP = pod_a_udp_from(SPOOF_OUTSIDE_IP)             # an outside address
POD_A_AS_POD_B_IP_TO_POD_B = pod_a_udp_from(POD_B_IP, dst_ip=POD_B_IP)
POD_A_WITH_POD_B_MAC = pod_a_udp_from(POD_A_IP, src_mac=POD_B_MAC)   # another pod's MAC
POD_A_WITH_SPOOF_MAC = pod_a_udp_from(POD_A_IP, src_mac=SPOOF_MAC)
POD_A_WITH_POD_B_MAC_AND_IP = pod_a_udp_from(POD_B_IP, src_mac=POD_B_MAC)  # both: MAC first
POD_A_UDP_OUT = pod_a_udp_from(POD_A_IP)                           # the genuine one
# ARP: claiming pod B's address (gratuitous, request and reply forms), answering as the gateway,
# asking for the gateway as pod B, or with a sender / Ethernet MAC not pod A's
GARP_POD_A_CLAIMS_POD_B_IP = pod_a_arp("who-has", psrc=POD_B_IP, pdst=POD_B_IP)
GARP_REPLY_POD_A_CLAIMS_POD_B_IP = pod_a_arp("is-at", psrc=POD_B_IP, pdst=POD_B_IP)
GARP_IEEE802_POD_A_CLAIMS_POD_B_IP = pod_a_arp("who-has", psrc=POD_B_IP, pdst=POD_B_IP, hwtype=6)
ARP_REPLY_POD_A_AS_GATEWAY = pod_a_arp("is-at", psrc=GATEWAY_IP, pdst=GATEWAY_IP)
ARP_WHO_HAS_GATEWAY_AS_POD_B_IP = pod_a_arp("who-has", psrc=POD_B_IP, pdst=GATEWAY_IP)
ARP_POD_A_IP_AT_POD_B_MAC = pod_a_arp("is-at", psrc=POD_A_IP, pdst=POD_A_IP, hwsrc=POD_B_MAC)
ARP_POD_A_IP_AT_SPOOF_MAC = pod_a_arp("who-has", psrc=POD_A_IP, pdst=GATEWAY_IP, hwsrc=SPOOF_MAC)
ARP_FROM_POD_B_ETH_MAC = pod_a_arp("who-has", psrc=POD_A_IP, pdst=GATEWAY_IP, eth_src=POD_B_MAC)
GARP_POD_A_OWN_IP = pod_a_arp("who-has", psrc=POD_A_IP, pdst=POD_A_IP)   # genuine: passes

def _host_to_pod_a_fragment():
    """The first fragment of a 48-byte UDP datagram (udp/9999) the node sends pod A (found by
    the fuzzer: a denied first fragment must not be recorded)."""
    whole = IP(src=NODE_CTR_IP, dst=POD_A_IP, ttl=64, id=79) / UDP(sport=50002, dport=9999) \
        / (b"q" * 40)
    first = fragment(whole, fragsize=24)[0]
    return Ether(bytes(Ether(src=LXC_A_MAC, dst=POD_A_MAC) / first))


HOST_TO_POD_A_UDP_FRAG_FIRST = _host_to_pod_a_fragment()


def udp_to_outside_cut_inside_its_header() -> bytes:
    """Pod A's datagram to the outside (as to-netdev sees it) cut 6 bytes into its UDP header:
    the ports are there, the checksum is not (found by the fuzzer: masquerading it left a NAT
    mapping behind the drop)."""
    return bytes(Ether(src=NODE_CTR_MAC, dst="02:00:00:00:aa:fe")
                 / IP(src=POD_A_IP, dst=OUTSIDE_IP, ttl=63, id=30, proto=17)
                 / bytes(UDP(sport=5353, dport=53))[:6])


def udp_to_cluster_ip_cut_inside_its_header() -> bytes:
    """Pod A's DNS query to the ClusterIP 10.96.0.10:53 with an IP total length of 20 and
    only the UDP ports in the frame (found by the fuzzer: the service translation made both
    conntrack entries, then failed on the missing checksum)."""
    return bytes(Ether(src=POD_A_MAC, dst=LXC_A_MAC)
                 / IP(src=POD_A_IP, dst="10.96.0.10", ttl=64, id=7, proto=17, len=20)
                 / bytes(UDP(sport=40001, dport=53))[:4])
