"""Bench (not a test): HTTP request rate from curl-pod to the webpods, through the Service's
ClusterIP (load-balanced by from-container: CT lookup or create, DNAT, reverse NAT on replies)
and straight to each webpod's pod IP, in the lab (default topology: three nodes, webpod-1 on
curl-pod's node, webpod-2 and -3 on the others).

Client: wrk (Debian's package, installed by scripts/setup.sh) inside curl-pod's namespace, in
two modes:
    keep-alive      a few long-lived connections: the per-packet path (established CT entry)
    new connection  "Connection: close" on every request: each request is a new TCP connection,
                    so through the ClusterIP every one creates a CT entry and picks a backend
The headline pair has one client shape: three wrk threads, one per pod IP (a setup() hook),
against three threads to the ClusterIP; each webpod alone (same node, other nodes) is shown too.
Every run is bounded: `--seconds` (default 5) per target and mode, wrk under a hard timeout.
ClusterIP and pod-IP runs use disjoint source-port ranges in curl-pod (see PORT_RANGES).
The lab gets a unique name (its namespaces are prefixed with it) and is torn down in `finally`.

    python bench/lab_rate.py [--seconds 5] [--connections 2] [--repeat 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):          # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.api import Client            # noqa: E402
from agent.lab.lab import EXAMPLES, Lab     # noqa: E402
from datapath import netns              # noqa: E402

SERVICE = "default/webpod"
WEBPODS = ("webpod-1", "webpod-2", "webpod-3")
MODES = {"keep-alive": [], "new connection": ["-H", "Connection: close"]}
# curl-pod's ephemeral ports, split by target: a direct connection that reuses the source port of
# a ClusterIP connection to the same backend closed less than CT_CLOSE_TIMEOUT (10 s) ago stalls,
# most likely meeting that flow's conntrack entry and getting its replies reverse-NATed (seen
# here: pod-IP rates fall from ~1,500 to ~10 new connections/s right after a ClusterIP run)
PORT_RANGES = {"pod IP": (10000, 29999), "ClusterIP": (40000, 60999)}


# wrk's setup() hook: thread i connects to address i (so three threads cover the three pods)
SPREAD_LUA = """
local hosts = {%s}
local n = 0
function setup(thread)
  n = n + 1
  thread.addr = wrk.lookup(hosts[(n - 1) %% #hosts + 1], "80")[1]
end
"""


def wrk(ns: str, url: str, seconds: int, threads: int, per_thread: int, extra: list[str],
        spread: list[str] | None = None) -> dict:
    """One bounded wrk run in `ns`; requests/s, requests, errors and latency percentiles.
    spread: addresses the threads connect to, one each in turn, instead of the URL's host."""
    script = []
    if spread:
        f = tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="dpbench-", delete=False)
        f.write(SPREAD_LUA % ", ".join(f'"{a}"' for a in spread))
        f.close()
        script = ["-s", f.name]
    argv = netns.cmd(ns, "wrk", f"-t{threads}", f"-c{threads * per_thread}", f"-d{seconds}s",
                     "--timeout", "2s", "--latency", *script, *extra, url)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    finally:
        if script:
            os.unlink(script[1])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    out = p.stdout
    if p.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk {url} failed ({p.returncode}): {p.stderr.strip() or out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"(\d+) requests in", out)
    # with "Connection: close" wrk counts the server's close after each response as a read
    # error; connect, write and timeout errors are real failures in both modes
    errors = 0
    for e in re.finditer(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                         out):
        errors += int(e.group(1)) + int(e.group(3)) + int(e.group(4))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {}
    for pct in ("50", "99"):
        mm = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if mm:
            lat[f"p{pct}_ms"] = float(mm.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[mm.group(2)]
    return {"rps": rate, "requests": int(m.group(1)) if m else 0, "socket_errors": errors,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, **lat}


def ports(ns: str, target: str) -> None:
    """Source ports for this target: ClusterIP runs and pod-IP runs never share one (see
    PORT_RANGES)."""
    lo, hi = PORT_RANGES["ClusterIP" if target.startswith("ClusterIP") else "pod IP"]
    netns.run(ns, "sysctl", "-qw", f"net.ipv4.ip_local_port_range={lo} {hi}")


def check(ns: str, url: str) -> None:
    p = netns.run(ns, "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", url,
                  check=False)
    if p.stdout.strip() != "200":
        raise RuntimeError(f"{url} does not answer from curl-pod: {p.stdout!r} {p.stderr!r}")


def measure(lab: Lab, seconds: int, per_thread: int, repeat: int, log=print) -> dict:
    st = lab.load()
    curl_ns = st["pods"]["default/curl-pod"]["netns"]
    sock = st["nodes"][st["pods"]["default/curl-pod"]["node"]]["socket"]
    fe = next(s["frontend"] for s in Client(sock, timeout=10).get("/v1/service")
              if s["service"] == SERVICE)
    cip = fe.split("/")[0].split(":")[0]
    pods = {pod: st["pods"][f"default/{pod}"] for pod in WEBPODS}
    pod_ips = [rec["ip"] for rec in pods.values()]
    # (name, url host, threads, spread): the two headline rows have the same client shape,
    # three threads; the single-pod rows show each path (same node, other nodes) alone
    targets = [(f"{pod} ({rec['node']})", rec["ip"], 1, None) for pod, rec in pods.items()]
    targets += [("3 pod IPs, a thread each", pod_ips[0], 3, pod_ips),
                ("ClusterIP (3 backends)", cip, 3, None)]
    out = {"clusterIP": cip, "pod_ips": dict(zip(WEBPODS, pod_ips)), "seconds": seconds,
           "connections_per_thread": per_thread, "repeat": repeat,
           "port_ranges": PORT_RANGES, "runs": {}}
    for name, host, _, _ in targets:
        ports(curl_ns, name)
        check(curl_ns, f"http://{host}/api")
    for mode, extra in MODES.items():
        # the headline pair alternates `repeat` times (the median is reported): a busy shared
        # machine moves single runs by tens of percent
        plan = targets[:3] + [t for i in range(repeat) for t in
                              (targets[3:] if i % 2 == 0 else targets[:2:-1])]
        for name, host, threads, spread in plan:
            ports(curl_ns, name)
            r = wrk(curl_ns, f"http://{host}/api", seconds, threads, per_thread, extra, spread)
            r["threads"] = threads
            out["runs"].setdefault(f"{mode} | {name}", []).append(r)
            log(f"{mode:<15} {name:<26} {r['rps']:8.0f} req/s  ({r['requests']} requests, "
                f"{r['socket_errors']} socket errors)")
    return out


def run(seconds: int = 5, per_thread: int = 2, repeat: int = 3, log=print) -> dict:
    lab = Lab(f"bench{os.getpid() % 10000}")
    lab.down()                  # a leftover of the same name, from a killed run
    try:
        t = time.perf_counter()
        lab.up(str(EXAMPLES))
        log(f"lab {lab.name} up in {time.perf_counter() - t:.0f} s")
        return measure(lab, seconds, per_thread, repeat, log)
    finally:
        lab.down()


def _median(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda x: x["rps"])[len(runs) // 2]


def report(r: dict) -> str:
    lines = [f"wrk, {r['connections_per_thread']} connections a thread, {r['seconds']} s a run, "
             f"from curl-pod (k8s-ctr), GET /api (ClusterIP {r['clusterIP']}); rows with several "
             "runs show the median run and the range", "",
             f"| {'mode':<14} | {'target':<26} | thr | {'req/s':>6} | {'range':>11} | "
             f"{'p50 ms':>6} | {'p99 ms':>6} | errors |",
             f"|{'-' * 16}|{'-' * 28}|-----|{'-' * 8}|{'-' * 13}|{'-' * 8}|{'-' * 8}|--------|"]
    for key, runs in r["runs"].items():
        mode, name = key.split(" | ")
        x = _median(runs)
        rng = f"{min(y['rps'] for y in runs):.0f}-{max(y['rps'] for y in runs):.0f}" \
            if len(runs) > 1 else ""
        errors = sum(y["socket_errors"] + y["non_2xx"] for y in runs)
        lines.append(f"| {mode:<14} | {name:<26} | {x['threads']:>3} | {x['rps']:6.0f} | "
                     f"{rng:>11} | {x.get('p50_ms', 0):6.2f} | {x.get('p99_ms', 0):6.2f} | "
                     f"{errors:>6} |")
    lines.append("")
    for mode in MODES:
        pods = _median(r["runs"][f"{mode} | 3 pod IPs, a thread each"])["rps"]
        cip = _median(r["runs"][f"{mode} | ClusterIP (3 backends)"])["rps"]
        lines.append(f"{mode}: ClusterIP {cip:.0f} req/s vs pod IPs {pods:.0f} req/s "
                     f"(ClusterIP/pod IP = {cip / pods:.2f}, medians)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="per target and mode (1-30)")
    ap.add_argument("--connections", type=int, default=2, help="per wrk thread")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the ClusterIP/pod-IP pair")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not 1 <= a.seconds <= 30:
        ap.error("--seconds: 1 to 30")
    r = run(a.seconds, a.connections, max(1, a.repeat), log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
