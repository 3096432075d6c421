"""The datapath's monitor events (bpf/lib/events.h) from user space: a pure-Python consumer of the
cilium_events BPF ring buffer, the decoder of its records (struct drop_notify, trace_notify and
policy_verdict_notify, mirrored by abi.DropNotify, TraceNotify and PolicyVerdictNotify) with a
summary of the captured packet bytes, and the send counters. No BCC, no scapy; never imports agent/.

The ring is read the way libbpf's ringbuf.c reads it: the consumer page mapped read-write, the
producer page and the data pages (mapped twice by the kernel, so a record that wraps is
contiguous) read-only. Each record has an 8-byte header: its length with the BUSY bit (still being
written: stop there) and the DISCARD bit (skip it); records are 8-byte aligned. consumer_pos is
stored after each record is taken. Loads and stores go through the mapping in program order:
acquire / release as the protocol needs on x86-64 (TSO); weaker architectures are not supported.

API:
    EventRing(fd, own_fd=False)     a consumer on a ring buffer map fd (a BCC table's map_fd, or
    EventRing.open_pinned(path)     its bpffs pin; that one owns its fd)
        .fileno()                   the map fd: readable (select / poll / epoll) when data waits
        .poll(timeout_ms) -> [bytes]   every complete record, waiting up to timeout_ms for the
                                    first (0: do not wait; None or negative: wait without limit)
        .close(), context manager
    decode(record) -> DropEvent | TraceEvent | PolicyVerdictEvent | None   None for another
                                    type or a record too short for its header;
                                    .packet -> PacketSummary | None
    decode_trace(record) -> TraceEvent | None   a trace_notify only (obs_point / obs_point_name
                                    as Cilium's TRACE_* and strings, reason / reason_name the CT
                                    state: abi.TRACE_OBS_POINT_NAMES, abi.TRACE_REASON_NAMES)
    decode_policy_verdict(record) -> PolicyVerdictEvent | None   a policy_verdict_notify only
                                    (direction, match_type / match_name: abi.POLICY_MATCH_NAMES,
                                    verdict 0 or a negative DROP_*, .allowed)
    summarize(data) -> PacketSummary | None   Ethernet, ARP, IPv4 (TCP / UDP ports, TCP flags,
                                    ICMP type / code), IPv6 addresses
    ktime_to_wall(ktime_ns) -> float   a bpf_ktime_get_ns() stamp (CLOCK_MONOTONIC) as time.time()
    stats_totals(typed_map) / read_stats(pin_dir) -> {"sent": n, "lost": n}   dp_event_stats
                                    summed over CPUs
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from . import abi, bpfsys
from .errors import MapError
from .maps import MAP_SPECS, TypedMap

RINGBUF_BUSY_BIT = 1 << 31       # the record is still being written (uapi BPF_RINGBUF_BUSY_BIT)
RINGBUF_DISCARD_BIT = 1 << 30    # the producer discarded the record
RINGBUF_HDR_SZ = 8               # u32 length (with the two bits), u32 page offset

_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


class EventRing:
    """A BPF ring buffer consumer (one reader at a time: positions are not shared)."""

    def __init__(self, fd: int, *, own_fd: bool = False):
        # the fd becomes ours (own_fd) only once this succeeds: a failure leaves it the caller's
        self._fd, self._own_fd = fd, False
        self._cons = self._prod = self._cons_pos = None
        info = bpfsys.map_info(fd)
        if info.type != bpfsys.MAP_RINGBUF:
            raise MapError(f"map fd {fd} ({info.name}) is of type {info.type}, not a ring buffer",
                           errno=22)
        self.name, self.size = info.name, info.max_entries
        self._mask = self.size - 1
        page = mmap.PAGESIZE
        self._data_off = page           # data starts after the producer page
        try:
            self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod = mmap.mmap(fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        except OSError as e:
            self.close()
            raise MapError(f"mapping ring buffer {self.name}: {os.strerror(e.errno)}",
                           errno=e.errno) from None
        self._cons_pos = ctypes.c_uint64.from_buffer(self._cons)   # one 8-byte store each
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self._own_fd = own_fd

    @classmethod
    def open_pinned(cls, path: str) -> EventRing:
        fd = bpfsys.obj_get(path)
        try:
            return cls(fd, own_fd=True)
        except BaseException:
            os.close(fd)
            raise

    def fileno(self) -> int:
        return self._fd

    def _take(self) -> list[bytes]:
        """Every complete record from consumer_pos on, consumer_pos advanced past each."""
        out = []
        prod_mm, cons_pos = self._prod, self._cons_pos
        cons = cons_pos.value
        prod = _U64.unpack_from(prod_mm, 0)[0]
        while cons < prod:
            at = self._data_off + (cons & self._mask)
            hdr = _U32.unpack_from(prod_mm, at)[0]
            if hdr & RINGBUF_BUSY_BIT:
                break                   # not submitted yet: the records after it wait too
            length = hdr & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT)
            if not hdr & RINGBUF_DISCARD_BIT:
                out.append(prod_mm[at + RINGBUF_HDR_SZ:at + RINGBUF_HDR_SZ + length])
            cons += (length + RINGBUF_HDR_SZ + 7) & ~7
            cons_pos.value = cons
            if cons >= prod:
                prod = _U64.unpack_from(prod_mm, 0)[0]     # more may have come meanwhile
        return out

    def poll(self, timeout_ms: int | None = 0) -> list[bytes]:
        """Every complete record now; when there is none, wait up to timeout_ms for some."""
        if self._prod is None:
            raise MapError("ring buffer consumer is closed", errno=9)
        out = self._take()
        if out or timeout_ms == 0:
            return out
        forever = timeout_ms is None or timeout_ms < 0
        deadline = None if forever else time.monotonic() + timeout_ms / 1000
        while True:
            left = None if forever else max(0, int((deadline - time.monotonic()) * 1000))
            self._poller.poll(left)
            out = self._take()
            if out or (not forever and time.monotonic() >= deadline):
                return out

    def close(self) -> None:
        self._cons_pos = None           # the ctypes view holds an export of the mapping
        for mm in (self._cons, self._prod):
            if mm is not None:
                mm.close()
        self._cons = self._prod = None
        if self._own_fd and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> EventRing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ---- decoding ----

TCP_FLAG_NAMES = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10),
                  ("URG", 0x20), ("ECE", 0x40), ("CWR", 0x80))
ETH_P_IP, ETH_P_ARP, ETH_P_IPV6, ETH_P_8021Q = 0x0800, 0x0806, 0x86DD, 0x8100
PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
ARP_OPS = {1: "request", 2: "reply"}


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


@dataclass(frozen=True)
class PacketSummary:
    """What the captured bytes show (None: not in the packet, or not captured)."""
    src_mac: str
    dst_mac: str
    ethertype: int
    saddr: str | None = None        # IPv4 / IPv6 source, or ARP sender address
    daddr: str | None = None        # IPv4 / IPv6 destination, or ARP target address
    proto: int | None = None        # IP protocol / IPv6 next header
    ttl: int | None = None          # IPv4 TTL / IPv6 hop limit
    sport: int | None = None
    dport: int | None = None
    tcp_flags: frozenset[str] = field(default_factory=frozenset)
    icmp_type: int | None = None
    icmp_code: int | None = None
    arp_op: int | None = None
    arp_sender_mac: str | None = None
    fragment: bool = False          # an IPv4 fragment after the first (no L4 header)

    def describe(self) -> str:
        """One line, Hubble-like: '10.0.0.1:40000 -> 10.0.0.2:80 TCP SYN'."""
        if self.arp_op is not None:
            return f"ARP {ARP_OPS.get(self.arp_op, self.arp_op)} {self.saddr} -> {self.daddr}"
        if self.saddr is None:
            return f"{self.src_mac} -> {self.dst_mac} ethertype 0x{self.ethertype:04x}"
        proto = PROTO_NAMES.get(self.proto, f"proto {self.proto}")
        if self.sport is not None:
            six = ":" in self.saddr
            src = f"[{self.saddr}]:{self.sport}" if six else f"{self.saddr}:{self.sport}"
            dst = f"[{self.daddr}]:{self.dport}" if six else f"{self.daddr}:{self.dport}"
        else:
            src, dst = self.saddr, self.daddr
        line = f"{src} -> {dst} {proto}"
        if self.tcp_flags:
            line += " " + ",".join(n for n, _ in TCP_FLAG_NAMES if n in self.tcp_flags)
        if self.icmp_type is not None:
            line += f" type {self.icmp_type} code {self.icmp_code}"
        if self.fragment:
            line += " fragment"
        return line


def _l4(s: dict, data: bytes, off: int) -> None:
    proto = s["proto"]
    if proto in (6, 17) and len(data) >= off + 4:
        s["sport"], s["dport"] = struct.unpack_from("!HH", data, off)
        if proto == 6 and len(data) >= off + 14:
            flags = data[off + 13]
            s["tcp_flags"] = frozenset(n for n, bit in TCP_FLAG_NAMES if flags & bit)
    elif proto in (1, 58) and len(data) >= off + 2:
        s["icmp_type"], s["icmp_code"] = data[off], data[off + 1]


def summarize(data: bytes) -> PacketSummary | None:
    """Parse captured packet bytes from the Ethernet header on (one 802.1Q tag skipped);
    None when shorter than an Ethernet header."""
    if len(data) < 14:
        return None
    ethertype = struct.unpack_from("!H", data, 12)[0]
    off = 14
    if ethertype == ETH_P_8021Q and len(data) >= 18:
        ethertype = struct.unpack_from("!H", data, 16)[0]
        off = 18
    s: dict = {"dst_mac": _mac(data[0:6]), "src_mac": _mac(data[6:12]), "ethertype": ethertype}
    if ethertype == ETH_P_IP and len(data) >= off + 20 and data[off] >> 4 == 4:
        ihl = (data[off] & 0x0F) * 4
        frag = struct.unpack_from("!H", data, off + 6)[0] & 0x1FFF
        s.update(ttl=data[off + 8], proto=data[off + 9],
                 saddr=socket.inet_ntop(socket.AF_INET, data[off + 12:off + 16]),
                 daddr=socket.inet_ntop(socket.AF_INET, data[off + 16:off + 20]),
                 fragment=frag != 0)
        if not frag and ihl >= 20:
            _l4(s, data, off + ihl)
    elif ethertype == ETH_P_IPV6 and len(data) >= off + 40 and data[off] >> 4 == 6:
        s.update(proto=data[off + 6], ttl=data[off + 7],
                 saddr=socket.inet_ntop(socket.AF_INET6, data[off + 8:off + 24]),
                 daddr=socket.inet_ntop(socket.AF_INET6, data[off + 24:off + 40]))
        _l4(s, data, off + 40)          # extension headers are not followed
    elif ethertype == ETH_P_ARP and len(data) >= off + 28:
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", data, off)
        if (htype, ptype, hlen, plen) == (1, ETH_P_IP, 6, 4):
            s.update(arp_op=op, arp_sender_mac=_mac(data[off + 8:off + 14]),
                     saddr=socket.inet_ntop(socket.AF_INET, data[off + 14:off + 18]),
                     daddr=socket.inet_ntop(socket.AF_INET, data[off + 24:off + 28]))
    return PacketSummary(**s)


class _Captured:
    """What every event record carries: the packet's first bytes and a kernel clock."""

    @property
    def packet(self) -> PacketSummary | None:
        return summarize(self.data)

    @property
    def time(self) -> float:
        """When the datapath sent it, as time.time() (see ktime_to_wall)."""
        return ktime_to_wall(self.ktime_ns)


@dataclass(frozen=True)
class DropEvent(_Captured):
    """One drop notification (struct drop_notify)."""
    type: int
    reason: int                 # DROP_*
    reason_desc: str            # Cilium's string for it
    source: int                 # the local endpoint it came from or was going to (0: none)
    hash: int
    len_orig: int
    src_identity: int
    dst_identity: int
    dst_id: int                 # the destination's local endpoint id (0: none)
    ifindex: int
    direction: str              # "ingress", "egress", "service", "unknown"
    hook: str                   # abi.EVENT_HOOK_NAMES' name ("hook N" for an unknown one)
    ktime_ns: int
    data: bytes                 # the packet's first len_cap bytes
    version: int = abi.NOTIFY_CAPTURE_VER


@dataclass(frozen=True)
class TraceEvent(_Captured):
    """One trace point (struct trace_notify): a packet seen at an observation point."""
    type: int
    obs_point: int              # TRACE_* (trace_notify.subtype)
    obs_point_name: str         # Cilium's string: "to-endpoint", "to-stack", "from-network", ...
    reason: int                 # TRACE_REASON_*: the conntrack state
    reason_name: str            # Cilium's: "new", "established", "reply", "related", "unknown"
    source: int                 # the local endpoint it came from or goes to (0: none)
    hash: int
    len_orig: int
    src_identity: int
    dst_identity: int
    dst_id: int                 # the destination's local endpoint id (0: none)
    ifindex: int                # the device it goes out (to-*) or came in (from-*)
    hook: str                   # abi.EVENT_HOOK_NAMES' name of the program that sent it
    ktime_ns: int
    data: bytes                 # the packet's first len_cap bytes at that point
    flags: int = 0              # TRACE_NOTIFY_FLAG_*
    orig_ip: str | None = None  # the address before a translation (None: none)
    version: int = abi.NOTIFY_CAPTURE_VER


_DROP_SIZE = ctypes.sizeof(abi.DropNotify)
_DROP_HDR = abi.DropNotify.data.offset     # the fixed part before the packet bytes


_TRACE_SIZE = ctypes.sizeof(abi.TraceNotify)
_TRACE_HDR = abi.TraceNotify.data.offset


def decode_trace(record: bytes) -> TraceEvent | None:
    """A trace_notify record as a TraceEvent; None for another type or one shorter than its
    fixed part."""
    if not record or record[0] != abi.CILIUM_NOTIFY_TRACE or len(record) < _TRACE_HDR:
        return None
    n = abi.TraceNotify.from_buffer_copy(bytes(record[:_TRACE_SIZE]).ljust(_TRACE_SIZE, b"\0"))
    cap = min(n.len_cap, abi.TRACE_PAYLOAD_LEN, len(record) - _TRACE_HDR)
    return TraceEvent(
        type=n.type, obs_point=n.subtype,
        obs_point_name=abi.TRACE_OBS_POINT_NAMES.get(n.subtype, f"{n.subtype}"),
        reason=n.reason, reason_name=abi.TRACE_REASON_NAMES.get(n.reason, f"{n.reason}"),
        source=n.source, hash=n.hash, len_orig=n.len_orig, src_identity=n.src_label,
        dst_identity=n.dst_label, dst_id=n.dst_id, ifindex=n.ifindex,
        hook=abi.EVENT_HOOK_NAMES.get(n.hook, f"hook {n.hook}"), ktime_ns=n.ktime_ns,
        data=bytes(record[_TRACE_HDR:_TRACE_HDR + cap]), flags=n.flags,
        orig_ip=abi.be32_to_ip4(n.orig_ip4) if n.orig_ip4 else None, version=n.version)


@dataclass(frozen=True)
class PolicyVerdictEvent(_Captured):
    """One policy decision (struct policy_verdict_notify): a new flow allowed, or a packet
    denied, by a local endpoint's policy."""
    type: int
    source: int                 # the local endpoint whose policy decided
    hash: int
    len_orig: int
    remote_identity: int        # the peer's identity
    verdict: int                # 0: allowed; a negative DROP_*: denied
    dst_port: int               # the destination port policy matched on
    proto: int                  # IPPROTO_*
    direction: str              # "ingress" or "egress"
    match_type: int             # POLICY_MATCH_*
    match_name: str             # Cilium's string for it: "L3-L4", "all", "none", ...
    audited: bool
    auth_type: int
    hook: str                   # abi.EVENT_HOOK_NAMES' name of the program that decided
    ktime_ns: int
    data: bytes                 # the packet's first len_cap bytes as policy saw it
    version: int = abi.NOTIFY_CAPTURE_VER

    @property
    def allowed(self) -> bool:
        return self.verdict >= 0


_VERDICT_SIZE = ctypes.sizeof(abi.PolicyVerdictNotify)
_VERDICT_HDR = abi.PolicyVerdictNotify.data.offset


def decode_policy_verdict(record: bytes) -> PolicyVerdictEvent | None:
    """A policy_verdict_notify record as a PolicyVerdictEvent; None for another type or one
    shorter than its fixed part."""
    if not record or record[0] != abi.CILIUM_NOTIFY_POLICY_VERDICT or len(record) < _VERDICT_HDR:
        return None
    n = abi.PolicyVerdictNotify.from_buffer_copy(
        bytes(record[:_VERDICT_SIZE]).ljust(_VERDICT_SIZE, b"\0"))
    cap = min(n.len_cap, abi.TRACE_PAYLOAD_LEN, len(record) - _VERDICT_HDR)
    match = (n.flags & abi.POLICY_VERDICT_MATCH_MASK) >> abi.POLICY_VERDICT_MATCH_SHIFT
    # Cilium's IsTrafficIngress: ingress only when the bits say so, egress otherwise
    ingress = n.flags & abi.POLICY_VERDICT_DIR_MASK == abi.POLICY_VERDICT_DIR_INGRESS
    return PolicyVerdictEvent(
        type=n.type, source=n.source, hash=n.hash, len_orig=n.len_orig,
        remote_identity=n.remote_label, verdict=n.verdict, dst_port=n.dst_port, proto=n.proto,
        direction="ingress" if ingress else "egress", match_type=match,
        match_name=abi.POLICY_MATCH_NAMES.get(match, "unknown"),
        audited=bool(n.flags & abi.POLICY_VERDICT_F_AUDITED), auth_type=n.auth_type,
        hook=abi.EVENT_HOOK_NAMES.get(n.hook, f"hook {n.hook}"), ktime_ns=n.ktime_ns,
        data=bytes(record[_VERDICT_HDR:_VERDICT_HDR + cap]), version=n.version)


def decode(record: bytes) -> DropEvent | TraceEvent | PolicyVerdictEvent | None:
    """A cilium_events record as a DropEvent, TraceEvent or PolicyVerdictEvent; None for another
    type or one shorter than its struct's fixed part. A record cut inside the packet bytes keeps
    the bytes it has."""
    if record and record[0] == abi.CILIUM_NOTIFY_TRACE:
        return decode_trace(record)
    if record and record[0] == abi.CILIUM_NOTIFY_POLICY_VERDICT:
        return decode_policy_verdict(record)
    if not record or record[0] != abi.CILIUM_NOTIFY_DROP or len(record) < _DROP_HDR:
        return None
    n = abi.DropNotify.from_buffer_copy(bytes(record[:_DROP_SIZE]).ljust(_DROP_SIZE, b"\0"))
    cap = min(n.len_cap, abi.TRACE_PAYLOAD_LEN, len(record) - _DROP_HDR)
    return DropEvent(
        type=n.type, reason=n.subtype, reason_desc=abi.reason_string(n.subtype),
        source=n.source, hash=n.hash, len_orig=n.len_orig, src_identity=n.src_label,
        dst_identity=n.dst_label, dst_id=n.dst_id, ifindex=n.ifindex,
        direction=abi.DIRECTION_NAMES.get(n.dir, f"dir {n.dir}").lower(),
        hook=abi.EVENT_HOOK_NAMES.get(n.hook, f"hook {n.hook}"), ktime_ns=n.ktime_ns,
        data=bytes(record[_DROP_HDR:_DROP_HDR + cap]), version=n.version)


def ktime_to_wall(ktime_ns: int) -> float:
    """A CLOCK_MONOTONIC stamp (bpf_ktime_get_ns) as seconds since the epoch (time.time())."""
    offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return (ktime_ns + offset) / 1e9


def stats_totals(m: TypedMap) -> dict[str, int]:
    """dp_event_stats summed over CPUs: {"sent": n, "lost": n}."""
    out = {}
    for name, slot in (("sent", abi.EVENT_STAT_SENT), ("lost", abi.EVENT_STAT_LOST)):
        per_cpu = m.get(abi.U32Key(slot))
        out[name] = sum(v.value for v in per_cpu) if per_cpu else 0
    return out


def read_stats(pin_dir: str) -> dict[str, int]:
    """dp_event_stats pinned in pin_dir, summed over CPUs: {"sent": n, "lost": n}."""
    spec = MAP_SPECS["dp_event_stats"]
    raw = bpfsys.RawMap.from_pin(os.path.join(pin_dir, spec.name), name=spec.name)
    try:
        return stats_totals(TypedMap(raw, spec))
    finally:
        raw.close()
