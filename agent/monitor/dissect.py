"""The packet bytes a monitor event carries, decoded for display: Ethernet, ARP, IPv4, TCP, UDP,
ICMPv4 (what the datapath handles). One parse serves both the flow record (agent/monitor/flows.py)
and `datapath monitor`'s lines, the connection summary and the -v layer dump, which follow
Cilium's pkg/monitor/dissect.go (GetConnectionSummary; gopacket's LayerString for -v).

API:
    parse(data) -> Packet                 never raises: a short packet keeps what it had
    connection_summary(p) -> str          "10.0.0.1:40000 -> 10.0.0.2:80 tcp SYN"
    layer_lines(p) -> list[str]           one line a layer, as `cilium monitor -v`
    TCP_FLAG_NAMES                        flag names in Hubble's TCPFlags field order
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
ETHERTYPE_NAMES = {ETH_P_IP: "IPv4", ETH_P_ARP: "ARP", ETH_P_IPV6: "IPv6"}
IPPROTO_NAMES = {1: "ICMPv4", 6: "TCP", 17: "UDP", 132: "SCTP"}
# bit -> name, in Hubble's TCPFlags message order
TCP_FLAG_BITS = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10),
                 ("URG", 0x20), ("ECE", 0x40), ("CWR", 0x80), ("NS", 0x100))
TCP_FLAG_NAMES = tuple(n for n, _ in TCP_FLAG_BITS)
# gopacket's ICMPv4 type names (layers.ICMPv4TypeCode.String), the ones a lab sees
ICMP_TYPES = {0: "EchoReply", 3: "DestinationUnreachable", 5: "Redirect", 8: "EchoRequest",
              11: "TimeExceeded", 12: "ParameterProblem"}
ICMP_UNREACH_CODES = {0: "Net", 1: "Host", 2: "Protocol", 3: "Port", 4: "FragmentationNeeded"}


@dataclass
class Packet:
    """What parse() found; fields of layers not present stay None."""
    eth_src: str | None = None
    eth_dst: str | None = None
    ethertype: int | None = None
    ip: dict | None = None          # version ihl tos length id flags frag ttl proto csum src dst
    arp: dict | None = None         # op sender_mac sender_ip target_mac target_ip
    tcp: dict | None = None         # sport dport seq ack doff flags window csum urgent
    udp: dict | None = None         # sport dport length csum
    icmp: dict | None = None        # type code csum id seq
    truncated: bool = False
    layers: list[str] = field(default_factory=list)

    @property
    def proto(self) -> int | None:
        return self.ip["proto"] if self.ip else None

    @property
    def ports(self) -> tuple[int, int] | None:
        l4 = self.tcp or self.udp
        return (l4["sport"], l4["dport"]) if l4 else None

    @property
    def tcp_flags(self) -> list[str]:
        return [n for n, b in TCP_FLAG_BITS if self.tcp and self.tcp["flags"] & b]


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse(data: bytes) -> Packet:
    p = Packet()
    if len(data) < 14:
        p.truncated = bool(data)
        return p
    p.eth_dst, p.eth_src = _mac(data[0:6]), _mac(data[6:12])
    p.ethertype = struct.unpack("!H", data[12:14])[0]
    p.layers.append("Ethernet")
    rest = data[14:]
    if p.ethertype == ETH_P_ARP:
        if len(rest) < 28:
            p.truncated = True
            return p
        _, _, _, _, op = struct.unpack("!HHBBH", rest[:8])
        p.arp = {"op": op, "sender_mac": _mac(rest[8:14]),
                 "sender_ip": socket.inet_ntoa(rest[14:18]), "target_mac": _mac(rest[18:24]),
                 "target_ip": socket.inet_ntoa(rest[24:28])}
        p.layers.append("ARP")
        return p
    if p.ethertype != ETH_P_IP:
        return p
    if len(rest) < 20:
        p.truncated = True
        return p
    vihl, tos, length, ident, frag, ttl, proto, csum = struct.unpack("!BBHHHBBH", rest[:12])
    ihl = (vihl & 15) * 4
    p.ip = {"version": vihl >> 4, "ihl": vihl & 15, "tos": tos, "length": length, "id": ident,
            "flags": frag >> 13, "frag": frag & 0x1FFF, "ttl": ttl, "proto": proto,
            "csum": csum, "src": socket.inet_ntoa(rest[12:16]),
            "dst": socket.inet_ntoa(rest[16:20])}
    p.layers.append("IPv4")
    l4 = rest[ihl:]
    if p.ip["frag"]:          # a later fragment: no L4 header here
        return p
    if proto == 6:
        if len(l4) < 20:
            p.truncated = True
            return p
        sport, dport, seq, ack, off, flags, win, csum, urg = struct.unpack("!HHIIBBHHH", l4[:20])
        p.tcp = {"sport": sport, "dport": dport, "seq": seq, "ack": ack, "doff": off >> 4,
                 "flags": flags | ((off & 1) << 8), "window": win, "csum": csum, "urgent": urg}
        p.layers.append("TCP")
    elif proto == 17:
        if len(l4) < 8:
            p.truncated = True
            return p
        sport, dport, ulen, csum = struct.unpack("!HHHH", l4[:8])
        p.udp = {"sport": sport, "dport": dport, "length": ulen, "csum": csum}
        p.layers.append("UDP")
    elif proto == 1:
        if len(l4) < 8:
            p.truncated = True
            return p
        typ, code, csum, ident, seq = struct.unpack("!BBHHH", l4[:8])
        p.icmp = {"type": typ, "code": code, "csum": csum, "id": ident, "seq": seq}
        p.layers.append("ICMPv4")
    return p


def icmp_type_code(typ: int, code: int) -> str:
    """gopacket's ICMPv4TypeCode string: 'EchoRequest', 'DestinationUnreachable(Port)'."""
    name = ICMP_TYPES.get(typ, str(typ))
    if typ == 3:
        return f"{name}({ICMP_UNREACH_CODES.get(code, code)})"
    if typ in (0, 8):
        return name
    return f"{name}({code})" if code else name


def connection_summary(p: Packet) -> str:
    """Cilium's GetConnectionSummary."""
    if p.icmp and p.ip:
        return f"{p.ip['src']} -> {p.ip['dst']} {icmp_type_code(p.icmp['type'], p.icmp['code'])}"
    if p.ip and (p.tcp or p.udp):
        l4 = p.tcp or p.udp
        s = f"{p.ip['src']}:{l4['sport']} -> {p.ip['dst']}:{l4['dport']} " \
            f"{'tcp' if p.tcp else 'udp'}"
        if p.tcp:
            s += " " + ", ".join(f for f in ("SYN", "ACK", "RST", "FIN") if f in p.tcp_flags)
        return s
    if p.ip:
        return f"{p.ip['src']} -> {p.ip['dst']}"
    if p.eth_src:
        return f"{p.eth_src} -> {p.eth_dst} {ETHERTYPE_NAMES.get(p.ethertype, p.ethertype)}"
    return "[unknown]"


def layer_lines(p: Packet) -> list[str]:
    """One line a layer as gopacket's LayerString prints them under `cilium monitor -v`
    (Contents/Payload byte dumps left out)."""
    out = []
    if p.eth_src:
        out.append(f"Ethernet\t{{SrcMAC={p.eth_src} DstMAC={p.eth_dst} "
                   f"EthernetType={ETHERTYPE_NAMES.get(p.ethertype, hex(p.ethertype))}}}")
    if p.arp:
        a = p.arp
        out.append(f"ARP\t{{Operation={a['op']} SourceHwAddress={a['sender_mac']} "
                   f"SourceProtAddress={a['sender_ip']} DstHwAddress={a['target_mac']} "
                   f"DstProtAddress={a['target_ip']}}}")
    if p.ip:
        i = p.ip
        flags = "|".join(n for n, b in (("EvilBit", 4), ("DF", 2), ("MF", 1)) if i["flags"] & b)
        out.append(f"IPv4\t{{Version={i['version']} IHL={i['ihl']} TOS={i['tos']} "
                   f"Length={i['length']} Id={i['id']} Flags={flags} FragOffset={i['frag']} "
                   f"TTL={i['ttl']} Protocol={IPPROTO_NAMES.get(i['proto'], i['proto'])} "
                   f"Checksum={i['csum']} SrcIP={i['src']} DstIP={i['dst']}}}")
    if p.tcp:
        t = p.tcp
        bits = " ".join(f"{n}={'true' if n in p.tcp_flags else 'false'}"
                        for n in ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"))
        out.append(f"TCP\t{{SrcPort={t['sport']} DstPort={t['dport']} Seq={t['seq']} "
                   f"Ack={t['ack']} DataOffset={t['doff']} {bits} Window={t['window']} "
                   f"Checksum={t['csum']} Urgent={t['urgent']}}}")
    if p.udp:
        u = p.udp
        out.append(f"UDP\t{{SrcPort={u['sport']} DstPort={u['dport']} Length={u['length']} "
                   f"Checksum={u['csum']}}}")
    if p.icmp:
        c = p.icmp
        out.append(f"ICMPv4\t{{TypeCode={icmp_type_code(c['type'], c['code'])} "
                   f"Checksum={c['csum']} Id={c['id']} Seq={c['seq']}}}")
    if p.truncated:
        out.append("  Packet has been truncated")
    return out
