"""The packet fuzzer (tests/bpf/fuzz.py) in the suite: 50,000 packets split across every entry
program (one test a program, so each compiles at most one object within the test timeout), each
verdict, drop count, state map entry and checksum checked as the fuzzer's docstring defines.
FUZZ_SEED=N replays a seed (the default is fixed, so CI is repeatable); `make fuzz` runs the
full 1,000,000 a program."""
from __future__ import annotations

import os

import pytest

from . import fuzz

TOTAL = 50_000
_PER, _EXTRA = divmod(TOTAL, len(fuzz.PROGRAMS))
COUNTS = {p.name: _PER + (1 if i < _EXTRA else 0) for i, p in enumerate(fuzz.PROGRAMS)}
assert sum(COUNTS.values()) == TOTAL


@pytest.fixture(scope="module")
def corpus():
    return fuzz.seeds()


@pytest.mark.parametrize("name", list(COUNTS))
def test_fuzz(privileged, corpus, name):
    seed = int(os.environ.get("FUZZ_SEED", "12"))
    r = fuzz.Fuzzer(fuzz.BY_NAME[name], seed, corpus).run(COUNTS[name])
    print(f"\nfuzz seed {seed}: {r.packets} packets in {r.seconds:.1f} s\n{fuzz.table([r])}")
    assert r.packets == COUNTS[name]
    assert not r.failures, "\n".join(map(str, r.failures[:10]))
    # the program was reached, not refused at the door: it both forwards and drops, for reasons
    drops = r.verdicts.get("DROP", 0)
    forwarded = r.packets - drops - r.verdicts.get("refused by test-run", 0)
    assert drops > r.packets // 100 and forwarded > r.packets // 100, r.verdicts
    assert r.reasons, r
