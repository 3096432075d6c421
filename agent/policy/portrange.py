"""Port ranges as LPM prefixes: the policy map matches a destination port on its top bits, so a
range [lo, hi] becomes the fewest aligned blocks that cover it exactly.

    port_prefixes(lo, hi) -> [(port, prefix_bits)]   prefix_bits 16 = one port, 0 = all 65536
"""
from __future__ import annotations

PORT_BITS = 16
MAX_PORT = (1 << PORT_BITS) - 1


def port_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """The minimal cover of [lo, hi] by aligned power-of-two blocks, in port order."""
    if not 0 <= lo <= hi <= MAX_PORT:
        raise ValueError(f"expected 0 <= lo <= hi <= {MAX_PORT}, got {lo}..{hi}")
    out = []
    while lo <= hi:
        size = lo & -lo or 1 << PORT_BITS          # the largest block aligned at lo ...
        while lo + size - 1 > hi:                   # ... that stays inside the range
            size >>= 1
        out.append((lo, PORT_BITS - (size.bit_length() - 1)))
        lo += size
    return out
