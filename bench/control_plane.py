"""Bench (not a test): the agent's control plane at N services x 3 backends and 3N pods, the way
the agent runs, each figure the median of several runs:

    parse        a cold ManifestStore.load of the manifests directory (a fresh process each run),
                 and the same load from the manifest cache a restarted agent starts from
    cold         the first full reconcile into empty maps (every entry written), repeated on
                 emptied maps with a fresh reconciler
    endpoint     one backend pod turns not ready in its manifest (then ready again): from the
                 file event to the last map write (watch -> reload -> incremental sync)
    service      one new Service file (then removed): from the file event to the last map write
    restart      `datapath agent` started on the maps and programs a previous agent left: from
                 exec to the API answering, with the map writes it made (should be 0)
    idle         that agent's CPU use over a quiet period, and its RSS

The pods live on three other nodes: their addresses come from the cluster view in the state file
(as a kvstore would give them), 500 services and their pods a manifest file (as in
bench/lb_program.py). The endpoint and service cases drive the agent's own code in this process
(Agent.watcher / reload / reconcile, exactly what its main loop calls); the restart and idle
cases run the real `datapath agent` process.

Isolation: a private netns and bpffs pin directory (bench/isolated.py); the agent has no devices
and no endpoints, so nothing is attached anywhere. Results: a table, JSON (--out) and a PNG of
the times against N next to it.

    python bench/control_plane.py [--services 1000,10000] [--runs 5] [--idle 20] [--out F]

BENCH_PROFILE=1 logs where the time goes (cProfile, by own and by cumulative time): the first
agent's init, the first cold run, the endpoint changes, and a restart done in-process.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):          # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import isolated                                        # noqa: E402
from bench.lb_program import NAMESPACE, POD, PER_FILE, write_manifests   # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NODES = {f"n{j}": (f"192.168.10.{101 + j}", f"10.244.{j + 1}.0/24") for j in range(3)}
NOT_READY = "status: {conditions: [{type: Ready, status: 'False'}]}\n"
METRICS_PORT = 9962


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _write_setup(work: Path, node: str, n: int, per: int, pin_root: str) -> tuple[Path, dict]:
    """Manifests, a state file holding the cluster view, and the agent's config."""
    mdir, sdir = work / f"manifests-{node}", work / f"state-{node}"
    mdir.mkdir()
    sdir.mkdir()
    pod_ips = write_manifests(mdir, n, per)
    endpoints = {}
    for key, ip in pod_ips.items():
        name = key.split("/", 1)[1]
        j = int(name.rsplit("-", 1)[1])
        endpoints[ip] = {"identity": 20000 + j, "hostIP": NODES[f"n{j}"][0], "node": f"n{j}",
                         "namespace": NAMESPACE, "pod": name}
    state = {"version": 1, "identities": {}, "ipam": {}, "endpoints": {}, "next_endpoint_id": 1,
             "cluster": {"nodes": {k: {"ip": ip, "podCIDR": c} for k, (ip, c) in NODES.items()},
                         "endpoints": endpoints}}
    (sdir / "state.json").write_text(json.dumps(state))
    cfg = work / f"{node}.yaml"
    cfg.write_text(json.dumps({
        "nodeName": node, "devices": [], "ipam": {"podCIDR": "10.244.0.0/24"},
        "routingMode": "native",
        "bpf": {"root": pin_root},
        "stateDir": str(sdir), "apiSocket": str(work / f"{node}.sock"),
        "manifests": str(mdir), "prometheus": {"enabled": True, "port": METRICS_PORT}}))
    return cfg, {"manifests": mdir, "state": sdir}


def _profile_start():
    """A running cProfile when BENCH_PROFILE is set (where a phase spends its time)."""
    if not os.environ.get("BENCH_PROFILE"):
        return None
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
    return prof


def _profile_report(prof, what: str, log) -> None:
    if prof is None:
        return
    import io
    import pstats
    prof.disable()
    buf = io.StringIO()
    for order in ("tottime", "cumulative"):
        pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(30)
    log(f"profile of {what}:\n{buf.getvalue()}")


def _writes(agent) -> int:
    """Map writes so far (the agent's cilium_bpf_map_ops_total, successes)."""
    return int(sum(s.value for m in agent.metrics.map_ops.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels.get("outcome") == "success"))


def _event_to_write(agent, change) -> tuple[float, float, int]:
    """Make a file change, then run what the agent's loop runs for it; returns (event -> last
    write, file write -> last write, map writes)."""
    before = _writes(agent)
    t_write = time.perf_counter()
    change()
    changed = agent.watcher.wait(2.0, agent._wake)
    t_event = time.perf_counter()
    agent.reload(changed)
    agent.reconcile("bench")
    t_done = time.perf_counter()
    return t_done - t_event, t_done - t_write, _writes(agent) - before


def _parse_once(mdir: Path, cache: Path | None = None) -> float:
    """A fresh process's ManifestStore load, in seconds (with `cache`: from the manifest cache a
    restarted agent starts from, as the agent's state dir holds it)."""
    arg = f", cache={str(cache)!r}" if cache else ""
    code = ("import sys, time; t = time.perf_counter(); from agent.manifests import ManifestStore;"
            f"m = ManifestStore({str(mdir)!r}{arg}); m.load(); "
            f"assert m.cache_used or {cache is None}; print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(Path(__file__).resolve().parent.parent))
    return float(out.stdout.strip().splitlines()[-1])


def _scrape_writes() -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("cilium_bpf_map_ops_total") and 'outcome="success"' in line))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _restart(cfg: Path, sock: Path, idle: float, log) -> dict:
    """Start `datapath agent` on what the previous agent left; time to ready, writes, idle."""
    from agent import api
    exe = Path(sys.executable).with_name("datapath")
    t0 = time.perf_counter()
    p = subprocess.Popen([str(exe), "agent", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        ready = None
        while time.perf_counter() - t0 < 120:
            if p.poll() is not None:
                raise RuntimeError(f"agent exited: {p.stderr.read()[-2000:]}")
            try:
                api.Client(str(sock)).get("/v1/healthz")
                ready = time.perf_counter() - t0
                break
            except Exception:
                time.sleep(0.01)
        if ready is None:
            raise RuntimeError("agent not ready in 120 s")
        time.sleep(1.0)
        writes = _scrape_writes()
        out = {"ready_seconds": ready, "map_writes": writes}
        if idle:
            c0, w0 = _cpu_seconds(p.pid), time.perf_counter()
            time.sleep(idle)
            out["idle_cpu_percent"] = 100 * (_cpu_seconds(p.pid) - c0) / (time.perf_counter() - w0)
        status = Path(f"/proc/{p.pid}/status").read_text()
        out["rss_mib"] = int(next(ln.split()[1] for ln in status.splitlines()
                                  if ln.startswith("VmRSS:"))) / 1024
        log(f"  restart: ready in {ready:.2f} s, {writes} map writes, "
            f"idle {out.get('idle_cpu_percent', float('nan')):.2f} % CPU, RSS {out['rss_mib']:.0f} MiB")
        return out
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _start_over(agent) -> None:
    """Between cold runs: the managed maps emptied (arrays zeroed) behind the agent, and the
    agent's reconciler, desired-state builder and service ids as a fresh agent has them."""
    from agent import desired, reconciler
    from agent.lb import services
    from datapath.loader import MANAGED_MAPS
    for name in MANAGED_MAPS:
        tm = agent.dp.maps.get(name)
        if tm is None:
            continue
        keys = list(tm.read_raw())
        if tm.table.is_array:
            for key in keys:
                tm.table.delete(key)            # an array slot: zeroed
        elif tm.table.delete_batch(keys) < len(keys):
            for key in keys:
                tm.table.delete(key)
    agent.rec = reconciler.Reconciler(counters=frozenset(agent.rec.counters))
    agent.state["lb_ids"] = {}
    agent.lb_ids = services.IdTable(agent.state["lb_ids"])
    agent.builder = desired.DesiredBuilder(agent)


def measure_one(n: int, per: int, runs: int, idle: float, work: Path, pin_root: str,
                log) -> dict:
    from agent.daemon import Agent
    from datapath.loader import remove_pins

    node = f"bench{n}"
    cfg, paths = _write_setup(work, node, n, per, pin_root)
    out: dict = {"services": n, "pods": n * per}
    out["parse_seconds"] = [_parse_once(paths["manifests"]) for _ in range(runs)]
    cache = work / f"{node}-manifests.cache"
    from agent.manifests import ManifestStore
    ManifestStore(str(paths["manifests"]), cache=str(cache)).load()      # writes the cache
    out["parse_cached_seconds"] = [_parse_once(paths["manifests"], cache) for _ in range(runs)]
    cache.unlink()
    log(f"N={n}: parse {_median(out['parse_seconds']):.2f} s, from the cache "
        f"{_median(out['parse_cached_seconds']):.2f} s")

    prof = _profile_start()
    t = time.perf_counter()
    agent = Agent(str(cfg))
    out["agent_init_seconds"] = time.perf_counter() - t
    _profile_report(prof, "agent init (a cold manifest load)", log)
    try:
        cold, writes = [], []
        for k in range(runs):
            if k:                              # empty maps and a fresh agent's plan again
                _start_over(agent)
            agent.builder.refresh_facts()
            before = _writes(agent)
            prof = _profile_start() if k == 0 else None
            t = time.perf_counter()
            agent.reconcile("bench: cold", full=True)
            cold.append(time.perf_counter() - t)
            _profile_report(prof, "cold", log)
            writes.append(_writes(agent) - before)
        out["cold_runs_seconds"], out["cold_runs_writes"] = cold, writes
        out["cold_seconds"], out["cold_writes"] = _median(cold), writes[0]
        log(f"  cold: {out['cold_seconds']:.2f} s, {out['cold_writes']} writes "
            f"(runs {' '.join(f'{c:.2f}' for c in cold)}; agent init "
            f"{out['agent_init_seconds']:.1f} s)")

        mid = n // 2
        f = paths["manifests"] / f"bench-{mid // PER_FILE * PER_FILE:06d}.yaml"
        doc = POD.format(i=mid, j=0)
        text = f.read_text()
        assert doc in text

        def flip(ready: bool):
            return lambda: f.write_text(text if ready else text.replace(doc, doc + NOT_READY))
        prof = _profile_start()
        ep = [_event_to_write(agent, flip(k % 2 == 1)) for k in range(2 * runs)]
        _profile_report(prof, "endpoint change", log)
        out["endpoint_change"] = {"event_to_write_ms": [1e3 * e for e, _, _ in ep],
                                  "file_to_write_ms": [1e3 * w for _, w, _ in ep],
                                  "map_writes": [c for _, _, c in ep]}
        log(f"  endpoint change: {_median(out['endpoint_change']['event_to_write_ms']):.1f} ms "
            f"event->write, writes {out['endpoint_change']['map_writes']}")

        svc, rm = [], []
        for k in range(runs):
            new = paths["manifests"] / f"new-{k}.yaml"
            body = (f"apiVersion: v1\nkind: Service\nmetadata: {{name: new{k}, namespace: "
                    f"{NAMESPACE}}}\nspec:\n  selector: {{app: s{mid}}}\n  ports: [{{name: http, "
                    f"port: 80, targetPort: http}}]\n")
            svc.append(_event_to_write(agent, lambda: new.write_text(body)))
            rm.append(_event_to_write(agent, new.unlink))
        out["new_service"] = {"event_to_write_ms": [1e3 * e for e, _, _ in svc],
                              "file_to_write_ms": [1e3 * w for _, w, _ in svc],
                              "map_writes": [c for _, _, c in svc]}
        out["service_removed"] = {"event_to_write_ms": [1e3 * e for e, _, _ in rm],
                                  "map_writes": [c for _, _, c in rm]}
        log(f"  new service: {_median(out['new_service']['event_to_write_ms']):.1f} ms "
            f"event->write, writes {out['new_service']['map_writes']}")
        t = time.perf_counter()
        res = agent.rec.full(agent.dp, set(), set())
        out["drift_check_seconds"] = time.perf_counter() - t
        out["drift_check_ops"] = len(res.ops)
        agent.save()
        agent.watcher.close()
    finally:
        del agent
    if os.environ.get("BENCH_PROFILE"):     # what a restart does before it is ready, in-process
        prof = _profile_start()
        t = time.perf_counter()
        again = Agent(str(cfg))
        again.builder.refresh_facts()
        again.reconcile("bench: adopt", full=True)
        log(f"  in-process restart: {time.perf_counter() - t:.2f} s")
        _profile_report(prof, "restart (Agent init + adopting full reconcile)", log)
        again.watcher.close()
        del again
    restarts = [_restart(cfg, work / f"{node}.sock", idle if k == 0 else 0, log)
                for k in range(runs)]
    out["restart"] = restarts
    remove_pins(f"{pin_root}/datapath/{node}")
    return out


def measure(ns: list[int], per: int, runs: int, idle: float, work: Path, pin_dir: str,
            log=print) -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    out = {"backends_per_service": per, "runs": runs, "by_n": []}
    try:
        for n in ns:
            out["by_n"].append(measure_one(n, per, runs, idle, work, pin_dir, log))
    finally:
        from datapath.loader import remove_pins
        for d in Path(pin_dir, "datapath").glob("*"):
            remove_pins(str(d))
        if Path(pin_dir, "datapath").is_dir():
            os.rmdir(Path(pin_dir, "datapath"))
    return out


def summary(r: dict) -> list[dict]:
    rows = []
    for x in r["by_n"]:
        rs = x["restart"]
        rows.append({
            "services": x["services"], "pods": x["pods"],
            "parse_s": _median(x["parse_seconds"]),
            "parse_cached_s": _median(x.get("parse_cached_seconds", [])),
            "cold_s": x["cold_seconds"], "cold_writes": x["cold_writes"],
            "endpoint_ms": _median(x["endpoint_change"]["event_to_write_ms"]),
            "endpoint_file_ms": _median(x["endpoint_change"]["file_to_write_ms"]),
            "endpoint_writes": _median(x["endpoint_change"]["map_writes"]),
            "service_ms": _median(x["new_service"]["event_to_write_ms"]),
            "service_writes": _median(x["new_service"]["map_writes"]),
            "restart_s": _median([y["ready_seconds"] for y in rs]),
            "restart_writes": max(y["map_writes"] for y in rs),
            "idle_cpu_percent": rs[0].get("idle_cpu_percent"),
            "rss_mib": rs[0]["rss_mib"],
            "drift_check_s": x["drift_check_seconds"]})
    return rows


def report(r: dict) -> str:
    rows = summary(r)
    head = ("| services | pods | parse s (cached) | cold s (writes) | endpoint ms (writes) | "
            "new service ms (writes) | restart s (writes) | drift check s | idle CPU % | RSS MiB |")
    lines = [f"medians of {r['runs']} runs; endpoint / service: manifest event -> last map write",
             "", head, "|" + "---|" * 10]
    for x in rows:
        lines.append(
            f"| {x['services']} | {x['pods']} | {x['parse_s']:.2f} ({x['parse_cached_s']:.2f}) | "
            f"{x['cold_s']:.2f} "
            f"({x['cold_writes']}) | {x['endpoint_ms']:.1f} ({x['endpoint_writes']:g}) | "
            f"{x['service_ms']:.1f} ({x['service_writes']:g}) | {x['restart_s']:.2f} "
            f"({x['restart_writes']}) | {x['drift_check_s']:.2f} | "
            f"{x['idle_cpu_percent'] if x['idle_cpu_percent'] is not None else float('nan'):.2f}"
            f" | {x['rss_mib']:.0f} |")
    return "\n".join(lines)


def chart(r: dict, path: Path) -> None:
    from bench import charts
    rows = summary(r)
    series = {
        "one endpoint change (ms)": [(x["services"], x["endpoint_ms"]) for x in rows],
        "one new service (ms)": [(x["services"], x["service_ms"]) for x in rows],
        "cold programming (ms)": [(x["services"], 1e3 * x["cold_s"]) for x in rows],
        "restart to ready (ms)": [(x["services"], 1e3 * x["restart_s"]) for x in rows],
        "manifest parsing (ms)": [(x["services"], 1e3 * x["parse_s"]) for x in rows],
        "manifest load from the cache (ms)": [(x["services"], 1e3 * x["parse_cached_s"])
                                              for x in rows if x["parse_cached_s"] ==
                                              x["parse_cached_s"]],     # (not NaN)
    }
    dashed = []
    ref = RESULTS / "first_packet.json"     # kube-proxy's partial syncs, from that bench's run
    if ref.is_file():
        kp = json.loads(ref.read_text()).get("kproxy") or {}
        for mode in ("iptables-legacy", "nftables"):
            pts = [(int(n), 1e3 * res["ep_change_s"]) for n, run in kp.items()
                   for res in run.get("results", ()) if res.get("mode") == mode and
                   res.get("ep_change_s") is not None and int(n) > 1]
            if pts:
                name = f"kube-proxy {mode}: endpoint change (ms, first_packet run)"
                series[name] = pts
                dashed.append(name)
    charts.line_chart(str(path), "control plane vs number of services (x3 backends)",
                      "services", "milliseconds (median)", series, logx=True, logy=True,
                      dashed=dashed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", default="1000,10000",
                    help="comma-separated N (default 1000,10000)")
    ap.add_argument("--backends", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU sampling")
    ap.add_argument("--out", default=str(RESULTS / "control_plane.json"))
    ap.add_argument("--quick", action="store_true", help="N=100, 2 runs, 2 s idle (smoke test)")
    isolated.add_child_options(ap)
    a = ap.parse_args(argv)
    if a.quick:
        a.services, a.runs, a.idle = "100", 2, 2.0
    ns = [int(x) for x in a.services.split(",")]
    if a.inside:
        return isolated.child(a, lambda work, pins, log: measure(ns, a.backends, a.runs, a.idle,
                                                                  work, pins, log=log))
    args = ["--services", a.services, "--backends", str(a.backends), "--runs", str(a.runs),
            "--idle", str(a.idle)]
    r = isolated.run(__file__, args, lambda s: print(s, file=sys.stderr, flush=True),
                     timeout=3600)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1))
    chart(r, out.with_suffix(".png"))
    print(report(r))
    print(f"\nJSON: {out}\nPNG:  {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
