"""Bench (not a test): how long the agent takes to program N services x 3 backends into the LB
maps, to apply one endpoint change at N services, and to run a reconcile that changes nothing.

It runs the agent's own code path, phase by phase:
    parse   agent.manifests.load_manifests over YAML written to a temp directory
    plan    agent.lb.services.build (the whole service world, as the daemon rebuilds it each time)
    read    agent.reconcile.read_actual (what the pinned maps hold now)
    diff    agent.reconcile.plan (desired vs actual -> ordered ops)
    apply   agent.reconcile.apply against datapath.loader.NodeDatapath's maps
Map writes are counted at the map layer (the NodeDatapath on_op hook the agent feeds its metrics
with), so "ops" are real bpf() updates and deletes, not plan entries.

Isolation: the programs are compiled and their maps pinned under a private bpffs directory
(/sys/fs/bpf/dpbench-<pid>-<rand>), and the measuring process runs in a private network
namespace (read_actual also reads our routes, and nothing of the host's may be planned against).
No program is attached anywhere. Both are removed in `finally`.

    python bench/lb_program.py [--services N] [--backends 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):          # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.lb import services                                    # noqa: E402
from agent.manifests import load_manifests                    # noqa: E402
from agent.reconcile import DatapathState, apply, plan, read_actual   # noqa: E402
from datapath.loader import NodeDatapath                      # noqa: E402
from bench import isolated                                    # noqa: E402
from bench.isolated import Timer                              # noqa: E402

SERVICE_CIDR = "10.96.0.0/16"
LB_MAPS = tuple(services.SERVICE_MAPS)
NAMESPACE = "bench"
PER_FILE = 500            # services per manifest file

SVC = """apiVersion: v1
kind: Service
metadata: {{name: s{i}, namespace: bench}}
spec:
  selector: {{app: s{i}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""
POD = """apiVersion: v1
kind: Pod
metadata: {{name: s{i}-{j}, namespace: bench, labels: {{app: s{i}}}}}
spec:
  nodeName: n{j}
  containers: [{{name: web, ports: [{{name: http, containerPort: 8080}}]}}]
"""


def pod_ip(n: int) -> str:
    """The n-th backend pod's address, in 172.16.0.0/12 (a million, enough for any N here)."""
    return f"172.{16 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def write_manifests(directory: Path, n_services: int, per: int) -> dict[str, str]:
    """Write N Services, each selecting `per` Pods of its own; return pod key -> IP."""
    ips = {}
    for start in range(0, n_services, PER_FILE):
        docs = []
        for i in range(start, min(start + PER_FILE, n_services)):
            docs.append(SVC.format(i=i))
            for j in range(per):
                docs.append(POD.format(i=i, j=j))
                ips[f"{NAMESPACE}/s{i}-{j}"] = pod_ip(i * per + j)
        (directory / f"bench-{start:06d}.yaml").write_text("---\n".join(docs))
    return ips


def reconcile(dp, manifests, pod_ips, ids, counter: Counter) -> dict:
    """One LB reconcile as the daemon runs it (Agent.desired_state's service part, then
    read_actual / plan / apply), timed per phase; returns phases, ops by kind and failures."""
    t = Timer()
    counter.clear()
    lb = t("plan", services.build, manifests, pod_ips, ids, SERVICE_CIDR)
    desired = DatapathState(maps=dict(lb.maps),
                            late={("cilium_lb4_services_v2", k) for k in lb.frontends_last})
    actual = t("read", read_actual, dp, set(), LB_MAPS)
    ops = t("diff", plan, desired, actual)
    errors = []
    failed = t("apply", apply, ops, dp, lambda op, e: errors.append(f"{op}: {e}"))
    return {"seconds": t.phases, "total": sum(t.phases.values()), "planned_ops": len(ops),
            "map_ops": {f"{m} {op}": n for (m, op, outcome), n in sorted(counter.items())
                        if outcome == "success"},
            "failed": failed, "errors": errors[:5],
            "desired_entries": {m: len(v) for m, v in lb.maps.items()}}


def measure(n_services: int, per: int, workdir: Path, pin_dir: str, log=print) -> dict:
    """The bench itself; runs inside the private netns (see main)."""
    out: dict = {"services": n_services, "backends_per_service": per}
    counter: Counter = Counter()

    t = time.perf_counter()
    pod_ips = write_manifests(workdir, n_services, per)
    out["generate_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    manifests = load_manifests(str(workdir))
    out["parse_seconds"] = time.perf_counter() - t
    log(f"parsed {len(manifests.services)} services, {len(manifests.pods)} pods "
        f"in {out['parse_seconds']:.1f} s")

    t = time.perf_counter()
    dp = NodeDatapath(pin_dir,
                      on_op=lambda m, op, outcome, n: counter.update({(m, op, outcome): n}))
    out["compile_seconds"] = time.perf_counter() - t
    out["max_entries"] = {m: dp.maps[m].table.max_entries for m in LB_MAPS}
    log(f"compiled and loaded the programs in {out['compile_seconds']:.1f} s")

    ids = services.IdTable({})
    out["cold"] = reconcile(dp, manifests, pod_ips, ids, counter)
    out["entries_after_cold"] = {m: len(dp.maps[m]) for m in LB_MAPS}
    log(f"cold: {out['cold']['total']:.1f} s")

    # one endpoint change: a backend pod of one service goes away (its address is withdrawn,
    # as when its endpoint is deleted), then comes back
    victim = f"{NAMESPACE}/s{n_services // 2}-0"
    without = {k: v for k, v in pod_ips.items() if k != victim}
    out["endpoint_removed"] = reconcile(dp, manifests, without, ids, counter)
    out["entries_after_remove"] = {m: len(dp.maps[m]) for m in LB_MAPS}
    log(f"endpoint removed: {out['endpoint_removed']['total']:.1f} s")
    out["endpoint_added"] = reconcile(dp, manifests, pod_ips, ids, counter)
    log(f"endpoint added: {out['endpoint_added']['total']:.1f} s")
    out["noop"] = reconcile(dp, manifests, pod_ips, ids, counter)
    out["entries_final"] = {m: len(dp.maps[m]) for m in LB_MAPS}
    log(f"no-op: {out['noop']['total']:.1f} s")
    return out


def run(n_services: int = 10000, per: int = 3, log=print) -> dict:
    """`measure` in a private netns and pin dir (bench/isolated.py); returns its results."""
    return isolated.run(__file__, ["--services", str(n_services), "--backends", str(per)], log,
                        timeout=60)


def _ops(r: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in r["map_ops"].items()) or "none"


def report(r: dict) -> str:
    n = r["services"]
    rows = [("cold: program all into empty maps", r["cold"]),
            ("one endpoint removed", r["endpoint_removed"]),
            ("the endpoint added back", r["endpoint_added"]),
            ("no-op reconcile", r["noop"])]
    lines = [f"{n} services x {r['backends_per_service']} backends "
             f"(generate YAML {r['generate_seconds']:.1f} s, parse {r['parse_seconds']:.1f} s, "
             f"compile+load programs {r['compile_seconds']:.1f} s)",
             "",
             f"| {'reconcile':<34} | {'plan s':>7} | {'read s':>7} | {'diff s':>7} | "
             f"{'apply s':>7} | {'total s':>7} | map ops |",
             f"|{'-' * 36}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|---------|"]
    for name, x in rows:
        s = x["seconds"]
        lines.append(f"| {name:<34} | {s['plan']:7.2f} | {s['read']:7.2f} | {s['diff']:7.2f} | "
                     f"{s['apply']:7.2f} | {x['total']:7.2f} | {sum(x['map_ops'].values())} |")
    lines.append("")
    for name, x in rows:
        lines.append(f"{name}: {_ops(x)}")
    lines.append("")
    lines.append("map            entries (cold)  max_entries")
    for m, have in r["entries_after_cold"].items():
        lines.append(f"{m:<24} {have:>8} {r['max_entries'][m]:>12}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--backends", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    isolated.add_child_options(ap)
    a = ap.parse_args(argv)
    if a.inside:
        return isolated.child(a, lambda work, pins, log: measure(a.services, a.backends, work,
                                                                  pins, log=log))
    r = run(a.services, a.backends, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
