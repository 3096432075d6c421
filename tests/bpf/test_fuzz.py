"""The packet fuzzer (tests/bpf/fuzz.py) in the suite: 50,000 packets split across every entry
program, each verdict, drop count, state map and checksum checked as the fuzzer's docstring
defines. FUZZ_SEED=N replays a seed (the default is fixed, so CI is repeatable); `make fuzz`
runs the full 1,000,000 per program."""
from __future__ import annotations

import os
import time

from . import fuzz

TOTAL = 50_000


def test_fuzz_50000_packets_through_every_program(privileged):
    seed = int(os.environ.get("FUZZ_SEED", "12"))
    per, extra = divmod(TOTAL, len(fuzz.PROGRAMS))
    corpus = fuzz.seeds()
    t0 = time.monotonic()
    results = [fuzz.Fuzzer(p, seed, corpus).run(per + (1 if i < extra else 0))
               for i, p in enumerate(fuzz.PROGRAMS)]
    print(f"\nfuzz seed {seed}: {sum(r.packets for r in results)} packets in "
          f"{time.monotonic() - t0:.1f} s\n{fuzz.table(results)}")
    assert sum(r.packets for r in results) == TOTAL
    failures = [f for r in results for f in r.failures]
    assert not failures, "\n".join(map(str, failures[:10]))
    for r in results:                   # the programs were reached, not refused at the door
        assert r.verdicts.get("DROP", 0) > r.packets // 100, r
        forwarded = r.packets - r.verdicts.get("DROP", 0) - r.verdicts.get(
            "refused by test-run", 0)
        assert forwarded > r.packets // 100, r
        assert r.reasons, r
