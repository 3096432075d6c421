"""The last N flows in memory (Hubble's ring, hubble.eventBufferCapacity) and the filters
`datapath observe` and `datapath monitor` query it with.

Every entry gets a sequence number, increasing by one per event and never reused, so a client
follows by asking for what came after the last number it saw; when the ring has wrapped past
that number the client gets what is left (Hubble's behaviour when a follower is too slow).

API:
    FlowRing(capacity)
        .add(flow, record) -> seq      .resize(capacity)
        .last_seq, .count, .capacity, .seen (events ever added)
        .query(flt, after=0, last=None) -> list of (seq, flow, record), oldest first
    FlowFilter.from_params({name: [values]}) -> FlowFilter     (ValueError on a bad value)
        .match(flow, record) -> bool
    parse_since(text, now) -> Unix seconds    "5m", "1h30m", "90s", or an RFC3339 time
"""
from __future__ import annotations

import collections
import datetime as dt
import ipaddress
import re
import threading
from dataclasses import dataclass

from .flows import EVENT_TYPES

VERDICTS = ("FORWARDED", "DROPPED", "ERROR", "AUDIT", "REDIRECTED", "TRACED", "TRANSLATED")
PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMPv4", "icmpv4": "ICMPv4"}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
                       r"(?:(\d+(?:\.\d+)?)ms)?$")


def parse_since(text: str, now: float) -> float:
    """A Go-style duration back from now ("5m", "1h30m", "10s", "500ms") or an RFC3339 time."""
    t = text.strip()
    m = _DURATION.match(t)
    if t and m and any(m.groups()):
        h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
        return now - (h * 3600 + mi * 60 + s + ms / 1000)
    try:
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"since {text!r}: expected a duration (5m, 1h30m, 10s) or an RFC3339 "
                         "time (2026-11-30T15:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def _pod_pattern(text: str) -> tuple[str, str]:
    """'ns/name' or 'name' (namespace default) -> (namespace, pod name prefix); 'ns/' is the
    whole namespace (Hubble's pod filter)."""
    ns, sep, name = text.partition("/")
    return (ns, name) if sep else ("default", text)


def _pod_match(ep: dict, pats: list[tuple[str, str]]) -> bool:
    return any(ep.get("namespace") == ns and ep.get("pod_name", "").startswith(name) and
               (name == "" or ep.get("pod_name")) for ns, name in pats)


def _ports(flow: dict) -> tuple[int | None, int | None]:
    l4 = flow.get("l4") or {}
    x = l4.get("TCP") or l4.get("UDP")
    return (x["source_port"], x["destination_port"]) if x else (None, None)


def _protocol(flow: dict) -> str | None:
    l4 = flow.get("l4") or {}
    return next(iter(l4), None)


@dataclass
class FlowFilter:
    """Every given criterion must hold (AND); the values of one criterion are alternatives
    (OR), as Hubble's flags combine."""
    pod: list = None
    from_pod: list = None
    to_pod: list = None
    namespace: list = None
    ip: list = None
    port: list = None
    protocol: list = None
    verdict: list = None
    type: list = None
    since: float | None = None
    related_to: list = None      # endpoint ids (datapath monitor --related-to)

    @classmethod
    def from_params(cls, q: dict[str, list[str]], now: float) -> "FlowFilter":
        def many(key):
            return [v for raw in q.get(key, []) for v in raw.split(",") if v] or None

        f = cls()
        for key in ("pod", "from_pod", "to_pod"):
            vals = many(key.replace("_", "-")) or many(key)
            setattr(f, key, [_pod_pattern(v) for v in vals] if vals else None)
        f.namespace = many("namespace")
        if many("ip"):
            f.ip = [_parsed("ip", v, lambda v: ipaddress.ip_network(v, strict=False),
                            "an address or CIDR") for v in many("ip")]
        if many("port"):
            f.port = [_parsed("port", v, int, "a port number") for v in many("port")]
            bad = [p for p in f.port if not 0 < p < 65536]
            if bad:
                raise ValueError(f"port {bad[0]}: expected 1..65535")
        if many("protocol"):
            f.protocol = []
            for v in many("protocol"):
                if v.lower() not in PROTOCOLS:
                    raise ValueError(f"protocol {v!r}: expected one of tcp, udp, icmp")
                f.protocol.append(PROTOCOLS[v.lower()])
        if many("verdict"):
            f.verdict = [v.upper() for v in many("verdict")]
            bad = [v for v in f.verdict if v not in VERDICTS]
            if bad:
                raise ValueError(f"verdict {bad[0]!r}: expected one of {', '.join(VERDICTS)}")
        if many("type"):
            bad = [v for v in many("type") if v not in EVENT_TYPES]
            if bad:
                raise ValueError(f"type {bad[0]!r}: expected one of {', '.join(EVENT_TYPES)}")
            f.type = [EVENT_TYPES[v] for v in many("type")]
        since = q.get("since", [None])[-1]
        f.since = parse_since(since, now) if since else None
        rel = many("related-to") or many("related_to")
        f.related_to = [_parsed("related-to", v, int, "an endpoint id")
                        for v in rel] if rel else None
        return f

    def match(self, flow: dict, rec: dict) -> bool:
        src, dst = flow.get("source") or {}, flow.get("destination") or {}
        if self.pod and not (_pod_match(src, self.pod) or _pod_match(dst, self.pod)):
            return False
        if self.from_pod and not _pod_match(src, self.from_pod):
            return False
        if self.to_pod and not _pod_match(dst, self.to_pod):
            return False
        if self.namespace and not (src.get("namespace") in self.namespace or
                                   dst.get("namespace") in self.namespace):
            return False
        if self.ip:
            ips = [ipaddress.ip_address(a) for a in
                   ((flow.get("IP") or {}).get("source"), (flow.get("IP") or {}).get("destination"))
                   if a]
            if not any(a in net for a in ips for net in self.ip):
                return False
        if self.port and not any(p in self.port for p in _ports(flow) if p is not None):
            return False
        if self.protocol and _protocol(flow) not in self.protocol:
            return False
        if self.verdict and flow.get("verdict") not in self.verdict:
            return False
        if self.type and rec["type_id"] not in self.type:
            return False
        if self.since is not None and rec["wall"] < self.since:
            return False
        if self.related_to and not (rec["source"] in self.related_to or
                                    rec["dst_id"] in self.related_to):
            return False
        return True


def _parsed(key: str, value: str, parse, what: str):
    """parse(value), or a ValueError naming the filter and the value."""
    try:
        return parse(value)
    except ValueError:
        raise ValueError(f"{key} {value!r}: expected {what}") from None


class FlowRing:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._ring: collections.deque = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.last_seq = 0

    def resize(self, capacity: int) -> None:
        """A new capacity (a config reload); the newest entries stay."""
        with self._lock:
            if capacity != self.capacity:
                self._ring = collections.deque(self._ring, maxlen=capacity)
                self.capacity = capacity

    def add(self, flow: dict, record: dict) -> int:
        with self._lock:
            self.last_seq += 1
            self._ring.append((self.last_seq, flow, record))
            return self.last_seq

    @property
    def count(self) -> int:
        return len(self._ring)

    @property
    def seen(self) -> int:
        return self.last_seq

    def query(self, flt: FlowFilter | None = None, after: int = 0,
              last: int | None = None) -> tuple[list[tuple[int, dict, dict]], int]:
        """(the matching entries after seq `after`, the last seq they were taken at): a client
        following asks next for what came after that seq, so nothing added meanwhile is lost."""
        with self._lock:
            entries, seq = list(self._ring), self.last_seq
        out = [e for e in entries if e[0] > after and (flt is None or flt.match(e[1], e[2]))]
        return (out[max(0, len(out) - last):] if last is not None else out), seq
