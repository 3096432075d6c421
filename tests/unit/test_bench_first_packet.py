"""bench/first_packet.py runs: at one small N it runs the kube-proxy reference
(../shared/bench/kproxy_baseline.py, when present beside the project) and a one-node lab, and
writes its JSON and two PNGs with every expected series. Nothing about the latencies is
asserted (timings belong to the bench); the lab and the reference leave no namespace behind.
It runs in the background (tests/benchpool.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import first_packet
from datapath import netns
from tests import benchpool

N = 20


def bench_job(tmp):
    out = tmp
    ref = first_packet.KPROXY.exists()
    before = set(netns.list_names())
    argv = [sys.executable, str(Path(first_packet.__file__)), "--quick", "--services", str(N),
            "--conns", "20", "--warmup", "2", "--out-dir", str(out)]
    if not ref:                                   # a clone without ../shared/bench
        argv.append("--no-reference")
    p = benchpool.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=400)
    finally:
        p.kill()
    assert p.returncode == 0, stdout[-2000:] + stderr[-3000:]
    # its labs are fp<pid>-<k>; the reference's namespaces are kpb-<reference's pid>-..., and
    # the reference has exited (another run's may be alive)
    leftover = [n for n in set(netns.list_names()) - before
                if n.startswith(f"fp{p.pid % 10000}-") or
                (n.startswith("kpb-") and not os.path.exists(f"/proc/{n.split('-')[1]}"))]
    assert not leftover
    return out, json.loads((out / "first_packet.json").read_text()), ref, stdout


bench_job.weight = 6
BENCH_JOB = bench_job
# the first test waits for this run, which may queue behind another bench's (each bounded by its
# own subprocess timeout)
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def result(privileged):
    return benchpool.result(__name__, BENCH_JOB)


def test_writes_json_and_both_charts(result):
    out, res, _, _ = result
    assert res["services"] == [N]
    for png in ("first_packet.png", "first_packet_node.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG") and png in res["charts"]


def test_datapath_pod_to_vip_and_pod_ip_measured(result):
    _, res, _, _ = result
    dp = res["datapath"][str(N)]
    assert not dp.get("errors"), dp.get("errors")
    lat = dp["latency"]
    for key in ("cpod_vip", "cpod_pod", "node_pod"):
        assert lat[key]["n"] == 20 and lat[key]["fail"] == 0 and "p50_us" in lat[key], key
    # every VIP connection reached one of the three webpods
    assert set(lat["cpod_vip"]["backends"]) <= {"webpod-1", "webpod-2", "webpod-3"}
    # node -> VIP: measured, or reported as not supported (socket LB is issue #13)
    assert "p50_us" in lat["node_vip"] or lat["node_vip"].get("not_supported")


def test_every_series_is_in_the_table(result):
    _, res, ref, table = result
    modes = {r["mode"] for r in first_packet.rows(res) if r["pod_vip"] and "p50_us" in r["pod_vip"]}
    want = {"datapath", "datapath pod IP"}
    if ref:
        want |= set(first_packet.MODES) | {"no-rule limit"}
    assert want <= modes
    for m in want:
        assert f"| {m:<16} |" in table
