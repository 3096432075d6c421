"""bench/lb_program.py does not rot: run on 50 services in its own netns and pin dir (in the
background, tests/benchpool.py), it programs exactly the expected entries and turns one endpoint
change into a handful of map ops. Correctness only: the bench's timings are never asserted."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import lb_program
from tests import benchpool

ROOT = Path(__file__).resolve().parents[2]

N, PER = 50, 3


def bench_job(tmp):
    """The bench's CLI at N services (its own netns and pin dir, named after its pid), which
    leaves no namespace and no pin directory behind (other labs may come and go)."""
    return benchpool.run_json([sys.executable, str(ROOT / "bench" / "lb_program.py"),
                               "--services", str(N), "--backends", str(PER), "--json"], cwd=ROOT)


bench_job.weight = 3
BENCH_JOB = bench_job
# the first test waits for this run, which may queue behind another bench's (each bounded by its
# own subprocess timeout)
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def result(privileged):
    return benchpool.result(__name__, BENCH_JOB)


def test_cold_programming_fills_the_maps_exactly(result):
    want = {"cilium_lb4_services_v2": N * (1 + PER), "cilium_lb4_backends_v3": N * PER,
            "cilium_lb4_reverse_nat": N, "cilium_lb4_maglev": 0}      # random: no tables
    assert result["entries_after_cold"] == want
    assert result["cold"]["desired_entries"] == want
    assert result["cold"]["failed"] == 0 and result["cold"]["errors"] == []
    assert sum(result["cold"]["map_ops"].values()) == sum(want.values())
    assert all(op.endswith("update") for op in result["cold"]["map_ops"])


def test_one_endpoint_change_is_a_diff_of_a_few_ops(result):
    removed, added = result["endpoint_removed"], result["endpoint_added"]
    assert removed["failed"] == added["failed"] == 0
    # one backend entry and one slot go, the frontend's count (and shifted slots) change
    assert removed["map_ops"]["cilium_lb4_backends_v3 delete"] == 1
    assert removed["map_ops"]["cilium_lb4_services_v2 delete"] == 1
    assert 1 <= sum(removed["map_ops"].values()) <= 2 + PER + 1
    assert result["entries_after_remove"]["cilium_lb4_backends_v3"] == N * PER - 1
    assert result["entries_after_remove"]["cilium_lb4_services_v2"] == N * (1 + PER) - 1
    assert added["map_ops"]["cilium_lb4_backends_v3 update"] == 1
    assert 1 <= sum(added["map_ops"].values()) <= 2 + PER + 1
    assert result["entries_final"] == result["entries_after_cold"]


def test_noop_reconcile_writes_nothing(result):
    assert result["noop"]["planned_ops"] == 0 and result["noop"]["map_ops"] == {}


def test_map_sizes_hold_ten_thousand_services_of_three_backends(result):
    cap = result["max_entries"]
    assert cap["cilium_lb4_services_v2"] >= 10000 * (1 + 3)
    assert cap["cilium_lb4_backends_v3"] >= 10000 * 3
    assert cap["cilium_lb4_reverse_nat"] >= 10000


def test_report_renders(result):
    text = lb_program.report(result)
    assert f"{N} services x {PER} backends" in text and "no-op reconcile" in text
