"""Maglev lookup tables, computed by the agent as Cilium computes them.

Backends are named by Cilium's key string "[<ip>:<port>/<proto>,State:active]" and sorted by it,
so every node builds the same table. Each backend's permutation comes from murmur3 x64-128 of its
key with the seed's first word: offset = h1 % M, skip = h2 % (M - 1) + 1, slot j = (offset + j *
skip) % M. Backends take turns claiming their next free preferred slot until the table is full;
weights (Envoy's scheme, as Cilium) let a heavier backend take more turns.

API:
    TABLE_SIZES, DEFAULT_TABLE_SIZE, DEFAULT_SEED
    backend_key(ip, port, proto)             Cilium's key string
    murmur3_128(data, seed) -> (h1, h2)
    build_table(backends, m, seed) -> list   backends: [(backend_id, key, weight)], sorted inside;
                                             the table holds backend ids
"""
from __future__ import annotations

import base64
import struct

TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_TABLE_SIZE = 16381
DEFAULT_SEED = "JLfvgnHc2kaSUFaI"     # --bpf-lb-maglev-hash-seed, base64 of 12 bytes
EMPTY = 0xFFFFFFFF

_M64 = (1 << 64) - 1
_C1, _C2 = 0x87C37B91114253D5, 0x4CF5AD432745937F


def seed_murmur(seed_b64: str = DEFAULT_SEED) -> int:
    raw = base64.b64decode(seed_b64)
    if len(raw) != 12:
        raise ValueError("the Maglev seed is base64 of exactly 12 bytes")
    return struct.unpack(">I", raw[:4])[0]


def backend_key(ip: str, port: int, proto: str = "TCP") -> str:
    return f"[{ip}:{port}/{proto},State:active]"


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def murmur3_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """MurmurHash3 x64 128-bit: (h1, h2) as unsigned 64-bit integers."""
    h1 = h2 = seed & 0xFFFFFFFF
    n = len(data)
    nblocks = n // 16
    for i in range(nblocks):
        k1, k2 = struct.unpack_from("<QQ", data, i * 16)
        k1 = (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
        h1 ^= k1
        h1 = (_rotl(h1, 27) + h2) & _M64
        h1 = (h1 * 5 + 0x52DCE729) & _M64
        k2 = (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
        h2 ^= k2
        h2 = (_rotl(h2, 31) + h1) & _M64
        h2 = (h2 * 5 + 0x38495AB5) & _M64
    tail = data[nblocks * 16:]
    k1 = k2 = 0
    for i in range(len(tail) - 1, 7, -1):
        k2 ^= tail[i] << ((i - 8) * 8)
    if len(tail) > 8:
        k2 = (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
        h2 ^= k2
    for i in range(min(len(tail), 8) - 1, -1, -1):
        k1 ^= tail[i] << (i * 8)
    if tail:
        k1 = (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
        h1 ^= k1
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    return h1, h2


def build_table(backends: list[tuple[int, str, int]], m: int = DEFAULT_TABLE_SIZE,
                seed: str = DEFAULT_SEED) -> list[int]:
    """The Maglev table of size m over backends [(backend_id, key, weight)]."""
    if m not in TABLE_SIZES:
        raise ValueError(f"Maglev table size must be one of {TABLE_SIZES}, got {m}")
    live = sorted((b for b in backends if b[2] > 0), key=lambda b: b[1])
    if not live:
        return [EMPTY] * m
    s = seed_murmur(seed)
    n = len(live)
    cur, skips = [], []                 # each backend's next preferred slot, and its step
    for _, key, _w in live:
        h1, h2 = murmur3_128(key.encode(), s)
        cur.append(h1 % m)
        skips.append(h2 % (m - 1) + 1)
    ids = [b[0] for b in live]
    weights = [w for _, _, w in live]
    weight_sum = sum(weights)
    use_weights = weight_sum // n > 1 and len(set(weights)) > 1
    counter = [w / n for w in weights]
    taken = bytearray(m)                # (a flag a slot: the walk below is the hot loop)
    table = [EMPTY] * m
    filled = turn = 0
    while filled < m:
        i = turn % n
        if use_weights:
            while (turn + 1) * weights[i] < counter[i]:
                i = (i + 1) % n
            counter[i] += weight_sum
        slot, step = cur[i], skips[i]   # (offset + j * skip) % m, walked by addition
        while taken[slot]:
            slot += step
            if slot >= m:
                slot -= m
        taken[slot] = 1
        table[slot] = ids[i]
        slot += step
        cur[i] = slot - m if slot >= m else slot
        filled += 1
        turn += 1
    return table
