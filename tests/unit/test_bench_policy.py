"""bench/policy_program.py does not rot: on a small cluster in its own netns and pin dir (run in
the background, tests/benchpool.py), cold programming writes exactly the desired policy rows (plus
the CIDR identities' ipcache rows), a policy or label change is a diff of a few map ops, and a
no-op writes nothing. Correctness only: the bench's timings are never asserted."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests import benchpool

ROOT = Path(__file__).resolve().parents[2]


def bench_job(tmp):
    """The bench's CLI on 30 endpoints and 20 policies, one run (its own netns and pin dir,
    named after its pid), which leaves neither behind."""
    return benchpool.run_json([sys.executable, str(ROOT / "bench" / "policy_program.py"),
                               "--endpoints", "30", "--policies", "20", "--runs", "1", "--json"],
                              cwd=ROOT)


bench_job.weight = 5
BENCH_JOB = bench_job
# the first test waits for this run, which may queue behind another bench's (each bounded by its
# own subprocess timeout)
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def result(privileged):
    return benchpool.result(__name__, BENCH_JOB)


def test_cold_writes_every_row_once(result):
    cold = result["cold"]
    assert cold["failed"] == 0 and cold["errors"] == []
    # policy rows, and one ipcache row per CIDR identity (4 blocks x cidr and except)
    assert cold["map_ops"] == cold["policy_entries"] + 8


def test_changes_are_diffs_and_a_no_op_writes_nothing(result):
    for case in ("policy_changed", "policy_restored", "pod_label_changed"):
        assert result[case]["failed"] == 0
        assert 0 < min(result[case]["map_ops"]) < result["cold"]["policy_entries"] // 4, case
    assert result["policy_changed"]["map_ops"] == result["policy_restored"]["map_ops"]
    assert result["noop"]["map_ops"] == [0]
