"""Node reachability, as cilium-health probes it: every interval (and when the set of nodes
changes), one ICMP echo to each other node's address. Feeds `cilium_unreachable_nodes` and the "Cluster health" line of status.

Owns: the probe thread and its last result. The agent's address book (other nodes' IPs) comes
in through a callable, so the prober never reaches into the daemon.

API:
    probe(addrs, timeout) -> set[str]          the addresses that answered (raw ICMP socket)
    NodeHealth(nodes, interval, timeout)       nodes: () -> {name: ip}
    .start(stop_event) -> Thread   .unreachable() -> int   .status() -> dict
"""
from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time
from typing import Callable

log = logging.getLogger("datapath.health")

INTERVAL = 30.0         # seconds between probe rounds
TIMEOUT = 1.0           # how long a round waits for its replies
_ECHO_REQUEST, _ECHO_REPLY = 8, 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    body = b"datapath-health"
    head = struct.pack("!BBHHH", _ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", _ECHO_REQUEST, 0, _checksum(head + body), ident, seq) + body


def probe(addrs: list[str], timeout: float = TIMEOUT) -> set[str]:
    """One echo request to each address; the ones whose reply came back within timeout."""
    if not addrs:
        return set()
    ident = os.getpid() & 0xFFFF
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.setblocking(False)
        want = {}
        for seq, ip in enumerate(addrs, 1):
            want[(ip, seq)] = ip
            try:
                s.sendto(_echo(ident, seq), (ip, 0))
            except OSError as e:         # no route: unreachable, as the probe says
                log.debug("health probe to %s: %s", ip, e)
        got: set[str] = set()
        deadline = time.monotonic() + timeout
        while len(got) < len(addrs):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                break
            pkt, (src, _) = s.recvfrom(2048)
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) < ihl + 8:
                continue
            typ, _code, _sum, rid, rseq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
            if typ == _ECHO_REPLY and rid == ident and (src, rseq) in want:
                got.add(src)
        return got


class NodeHealth:
    def __init__(self, nodes: Callable[[], dict[str, str]], interval: float = INTERVAL,
                 timeout: float = TIMEOUT):
        self.nodes, self.interval, self.timeout = nodes, interval, timeout
        self._lock = threading.Lock()
        self._reachable: dict[str, bool] = {}
        self._probed_at: float | None = None

    def round(self) -> None:
        nodes = self.nodes()
        try:
            ok = probe(sorted(set(nodes.values())), self.timeout)
        except OSError as e:             # no raw socket: say so once a round, count nothing
            log.warning("node health probe failed: %s", e)
            return
        with self._lock:
            self._reachable = {name: ip in ok for name, ip in nodes.items()}
            self._probed_at = time.time()

    def start(self, stop_event: threading.Event) -> threading.Thread:
        """Probe every interval, and at once when the set of other nodes changes (a node
        joining is probed within a second, not an interval later)."""
        def loop():
            next_round = 0.0
            while not stop_event.is_set():
                with self._lock:
                    probed = set(self._reachable)
                if time.monotonic() >= next_round or set(self.nodes()) != probed:
                    self.round()
                    next_round = time.monotonic() + self.interval
                stop_event.wait(min(1.0, self.interval))
        t = threading.Thread(target=loop, name="node-health", daemon=True)
        t.start()
        return t

    def unreachable(self) -> int:
        with self._lock:
            return sum(1 for ok in self._reachable.values() if not ok)

    def status(self) -> dict:
        with self._lock:
            return {"reachable": sorted(n for n, ok in self._reachable.items() if ok),
                    "unreachable": sorted(n for n, ok in self._reachable.items() if not ok),
                    "probedAt": self._probed_at}
