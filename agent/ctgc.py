"""Conntrack garbage collection, as Cilium's agent does it: walk the CT maps, delete entries whose
lifetime has passed (lifetimes are seconds of CLOCK_MONOTONIC, the clock bpf_ktime_get_ns reads),
and adapt the interval to how much was deleted (start 5 min, at least 10 s, at most 12 h; a
delete ratio over 25% shortens it, under 5% lengthens it by half).

API:
    CT_MAPS                          {map name: protocol label}
    collect(maps, now) -> {protocol: (alive, deleted)}
    next_interval(current, ratio) -> seconds
    forget_endpoint(maps, ip) -> entries deleted    (a removed endpoint's policy-tracked flows)
"""
from __future__ import annotations

import time

from datapath import abi

CT_MAPS = {"cilium_ct4_global": "TCP", "cilium_ct_any4_global": "non-TCP"}
NAT_MAP = "cilium_snat_v4_external"
START, MIN, MAX = 300.0, 10.0, 12 * 3600.0


def _sweep(m, now: float) -> tuple[int, int]:
    """Delete m's entries whose lifetime has passed; returns (alive, deleted). The walk reads a
    snapshot and takes seconds at 10^4-10^5 entries, so an entry is read again just before its
    delete: one the datapath refreshed meanwhile (a closed flow's tuple reopened by a new SYN,
    which reuses the entry) stays, instead of being taken from under the new connection."""
    alive = deleted = 0
    for key, entry in list(m.items()):
        if entry.lifetime < now:
            cur = m.get(key)
            if cur is None:
                continue
            if cur.lifetime < now:
                deleted += m.delete(key)
                continue
        alive += 1
    return alive, deleted


def collect(maps: dict, now: float | None = None) -> dict[str, tuple[int, int]]:
    now = time.monotonic() if now is None else now
    out = {}
    for name, proto in CT_MAPS.items():
        m = maps.get(name)
        if m is not None:
            out[proto] = _sweep(m, now)
    return out


def collect_nat(maps: dict, now: float | None = None) -> tuple[int, int]:
    """Delete expired masquerade mappings; returns (alive, deleted)."""
    now = time.monotonic() if now is None else now
    m = maps.get(NAT_MAP)
    return _sweep(m, now) if m is not None else (0, 0)


def next_interval(current: float, ratio: float) -> float:
    if ratio > 0.25:
        current *= 1 - min(ratio, 0.9)
    elif ratio < 0.05:
        current *= 1.5
    return max(MIN, min(MAX, current))


def forget_endpoint(maps: dict, ip: str) -> int:
    """Delete the policy-tracked flows of a removed endpoint's address, so a pod that gets the
    address next inherits none of them (as Cilium flushes an endpoint's conntrack). Returns
    how many entries went."""
    addr = abi.ip4_to_be32(ip)
    gone = 0
    for name in CT_MAPS:
        m = maps[name]
        for k, _ in list(m.items()):
            if k.flags & abi.TUPLE_F_POLICY and addr in (k.saddr, k.daddr):
                m.delete(k)
                gone += 1
    return gone
