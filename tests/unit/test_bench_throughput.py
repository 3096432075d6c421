"""bench/throughput.py runs: one routing mode, 1 s iperf3 runs, the lab and the iptables
reference side by side; it writes its JSON and PNG with a Gbit/s figure for every system, path
and target. The numbers are not asserted (timings belong to the bench); nothing is left behind.
It runs in the background (tests/benchpool.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import throughput
from datapath import netns
from tests import benchpool


def bench_job(tmp):
    out = tmp
    before = set(netns.list_names())
    pins = set(os.listdir("/sys/fs/bpf"))
    p = benchpool.popen([sys.executable, str(Path(throughput.__file__)), "--quick",
                         "--routing", "native", "--out-dir", str(out)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=400)
    finally:
        p.kill()
    assert p.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert not [n for n in set(netns.list_names()) - before
                if n.startswith(("tp", "dpbench-tp"))]
    assert not [d for d in set(os.listdir("/sys/fs/bpf")) - pins if d.startswith("dpbench-tp")]
    return out, json.loads((out / "throughput.json").read_text())


bench_job.weight = 7
BENCH_JOB = bench_job
# the first test waits for this run, which may queue behind another bench's (each bounded by its
# own subprocess timeout)
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def result(privileged):
    return benchpool.result(__name__, BENCH_JOB)


def test_writes_json_and_chart(result):
    out, res = result
    assert (out / "throughput.png").read_bytes().startswith(b"\x89PNG")
    assert res["charts"] == ["throughput.png"]


def test_every_system_path_and_target_measured(result):
    _, res = result
    got = {(r["system"], r["path"], r["target"]) for r in res["rows"]
           if r["routing"] == "native" and r["gbps"] and r["gbps"] > 0}
    assert got == {(s, p, t) for s in throughput.SYSTEMS for p in throughput.PATHS
                   for t in throughput.TARGETS}
    for r in res["rows"]:
        assert r["ratio_to_own_pod_ip"] is not None and r["ratio_to_plain_pod_ip"] is not None


def test_the_reference_rules_have_kube_proxys_shape():
    text = throughput.kube_proxy_rules({"local": ("10.96.100.1", "172.20.0.6")})
    assert "-A KUBE-SERVICES -d 10.96.100.1/32 -p tcp -m tcp --dport 5201 -j KUBE-SVC-LOCAL" in text
    assert "-j DNAT --to-destination 172.20.0.6:5201" in text
    assert text.count("COMMIT") == 2
