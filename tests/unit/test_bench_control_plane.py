"""bench/control_plane.py does not rot: a --quick run (100 services) programs the maps cold,
applies endpoint and service changes incrementally with the writes they need and no more,
restarts the real agent on what it left with no map write, writes its JSON and PNG, and leaves
no namespace or pin behind (run in the background, tests/benchpool.py). Correctness only: its
timings are never asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datapath import netns
from tests import benchpool

ROOT = Path(__file__).resolve().parents[2]


def bench_job(tmp):
    out = tmp / "control_plane.json"
    before_ns = {n for n in netns.list_names() if n.startswith("dpbench-")}
    before_pins = {d for d in os.listdir("/sys/fs/bpf") if d.startswith("dpbench-")}
    p = benchpool.popen([sys.executable, str(ROOT / "bench" / "control_plane.py"), "--quick",
                         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, cwd=ROOT)
    try:
        _, stderr = p.communicate(timeout=900)
    finally:
        p.kill()
    assert p.returncode == 0, stderr[-3000:]
    assert {n for n in netns.list_names() if n.startswith("dpbench-")} <= before_ns
    assert {d for d in os.listdir("/sys/fs/bpf") if d.startswith("dpbench-")} <= before_pins
    return json.loads(out.read_text()), out


bench_job.weight = 4
BENCH_JOB = bench_job
# the first test waits for this run, which may queue behind another bench's (each bounded by its
# own subprocess timeout)
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def run(privileged):
    return benchpool.result(__name__, BENCH_JOB)


def test_incremental_changes_write_only_what_changed(run):
    r, _ = run
    (x,) = r["by_n"]
    assert x["services"] == 100 and x["pods"] == 300
    # 100 frontends + 300 slots + 300 backends + 100 reverse NAT + 300 remote pods' ipcache
    # rows, and the node's own entries
    assert x["cold_writes"] >= 1100
    # a backend leaves or joins: its slot(s), the frontend's count, the backend entry
    assert all(0 < w <= 6 for w in x["endpoint_change"]["map_writes"])
    # a new service with 3 existing backends: frontend, 3 slots, reverse NAT (backends shared)
    assert x["new_service"]["map_writes"] == [5] * len(x["new_service"]["map_writes"])
    assert x["drift_check_ops"] == 0


def test_a_restart_adopts_everything_without_writing(run):
    r, _ = run
    (x,) = r["by_n"]
    assert [y["map_writes"] for y in x["restart"]] == [0] * len(x["restart"])
    assert all(y["rss_mib"] > 0 for y in x["restart"])
    assert x["restart"][0]["idle_cpu_percent"] >= 0


def test_json_and_png_written(run):
    _, out = run
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
