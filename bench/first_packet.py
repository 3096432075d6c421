"""Bench (not a test): first-packet latency against the number of ClusterIP services, datapath
beside kube-proxy's three dataplanes, in one run.

Reference: ../shared/bench/kproxy_baseline.py, run as it is (a subprocess, its --out JSON): for
each N it builds kube-proxy's iptables-legacy, iptables-nft and nftables rulesets in throwaway
netns (a node netns, three backend pods, a client pod) and measures TCP connect() latency.

Our side, the same sandbox shape, programmed the way a user runs datapath: a one-node lab
(agent/lab/lab.py, examples/topologies/single-node.yaml: node netns k8s-ctr running `datapath agent
--config ...`, pods created through the CNI plugin) with a manifests directory holding
    curl-pod                       the client pod
    webpod-1..3                    three backend pods (datapath whoami, HTTP on :80), same node
    N ClusterIP services           10.96.0.16 + i, port 80. Services 0..N-2 are selector-less
                                   with an EndpointSlice of 3 unused addresses (10.244.1.0+,
                                   never contacted), as the reference's; service N-1, the target,
                                   is last and selects the three webpods
A fresh lab per N (as the reference builds a fresh sandbox per N), removed in `finally`.

Method (the reference's, reimplemented here): this script re-executes itself inside the client's
netns (--probe). Each connection is a new socket bound to a new source port (a new conntrack
entry, so the SYN takes the service lookup, never an established flow), SO_LINGER 0 (close
sends RST: no TIME_WAIT), TCP_SYNCNT 1; the time of the blocking connect() (SYN .. SYN-ACK) with
perf_counter_ns and the GC off; then an HTTP/1.0 GET is read to the end, so the flow completes.
Targets are interleaved connection by connection; `--warmup` unmeasured connections first;
nearest-rank p50/p90/p99; three failures in a row stop a target.
    pod -> VIP       curl-pod -> the target's ClusterIP (from-container: service lookup, DNAT)
    pod -> pod IP    curl-pod -> webpod-1's IP, interleaved with the above: datapath's own
                     no-LB limit (datapath delivers pod to pod without the node's stack)
    node -> VIP      node netns -> ClusterIP, with a route for the service CIDR through the
                     node's device (the reference routes it through a dummy device). datapath
                     has no socket-level LB yet (issue #13): when no connection succeeds this
                     is reported as "not supported", with the error, never as a number
    node -> pod IP   node netns -> webpod-1's IP
The reference's "no-rule limit" is its pod -> pod IP before any rule exists (plain Linux routing
through the node netns); both limits are in the table and the charts.

Map capacity: the LB maps hold 65,536 entries by default (bpf/abi.h, as Cilium's default
bpf.lbMapMax); a service takes 1 + backends entries in cilium_lb4_services_v2, so N x (1 + 3)
must fit. When it does not (N = 20,000), the lab is set up with `bpf.lbMapMax` raised to the next
power of two that fits (as a Cilium user raises it), and the JSON says so ("lbMapMax"); every
filler keeps 3 backends.

Outputs (--out-dir, default bench/results): first_packet.json, first_packet.png (pod -> VIP
p50 against N, one line a mode, plus both limits) and first_packet_node.png (node -> VIP).

    python bench/first_packet.py [--services 1,1000,10000,20000] [--quick] [--conns 200]
                                 [--modes ...] [--no-reference] [--out-dir bench/results]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):          # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
KPROXY = ROOT.parent / "shared" / "bench" / "kproxy_baseline.py"
RESULTS = ROOT / "bench" / "results"
DEFAULT_N = [1, 1000, 10000, 20000]
QUICK_N = [1, 100]
MODES = ["iptables-legacy", "iptables-nft", "nftables"]
SVC_BASE = "10.96.0.16"           # the reference's first VIP; service i gets SVC_BASE + i
FAKE_BASE = "10.244.1.1"          # unused endpoint addresses for the filler services
PER_FILE = 500                    # services per manifest file
TARGET = "target"                 # the last service's name (default namespace)
NODE = "k8s-ctr"
SVC_CIDR = "10.96.0.0/16"

FILLER = """apiVersion: v1
kind: Service
metadata: {{name: svc-{i:05d}, namespace: default}}
spec:
  clusterIP: {vip}
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{i:05d}-1
  namespace: default
  labels: {{kubernetes.io/service-name: svc-{i:05d}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{eps}
"""
TARGET_SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {vip}
  selector: {{app: webpod}}
  ports: [{{name: http, port: 80, targetPort: http, protocol: TCP}}]
"""


def _ip(n: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", n))


def _n(ip: str) -> int:
    return struct.unpack("!I", socket.inet_aton(ip))[0]


# ---------------------------------------------------------------------------------------------
# the probe (runs inside a namespace: this file re-executed with --probe SPEC)
# ---------------------------------------------------------------------------------------------

def probe(spec: dict) -> dict:
    """connect() latency to each target, interleaved, one new source port a connection."""
    syncnt = getattr(socket, "TCP_SYNCNT", 7)
    linger = struct.pack("ii", 1, 0)
    req = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"
    port = spec["port_start"]
    out = {t["name"]: {"lat_ns": [], "fail": 0, "errors": {}, "backends": {}, "aborted": False}
           for t in spec["targets"]}
    streak = {t["name"]: 0 for t in spec["targets"]}
    clock = time.perf_counter_ns
    gc.disable()
    for i in range(spec["warmup"] + spec["count"]):
        for t in spec["targets"]:
            r = out[t["name"]]
            if r["aborted"]:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                s.setsockopt(socket.IPPROTO_TCP, syncnt, 1)
                s.bind(("0.0.0.0", port))
                port += 1
                t0 = clock()
                s.connect((t["ip"], t["port"]))
                t1 = clock()
                s.settimeout(3.0)
                s.sendall(req)
                data = b""
                while True:
                    try:
                        chunk = s.recv(4096)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    data += chunk
                m = re.search(rb"Hostname: (\S+)", data)
                who = m.group(1).decode() if m else "?"
                streak[t["name"]] = 0
                if i >= spec["warmup"]:
                    r["lat_ns"].append(t1 - t0)
                    r["backends"][who] = r["backends"].get(who, 0) + 1
            except OSError as e:
                key = f"{type(e).__name__}: {os.strerror(e.errno) if e.errno else e}"
                r["errors"][key] = r["errors"].get(key, 0) + 1
                r["fail"] += 1
                streak[t["name"]] += 1
                if streak[t["name"]] >= 3:
                    r["aborted"] = True
            finally:
                s.close()
    gc.enable()
    return out


def summarize(r: dict) -> dict:
    lat = sorted(r["lat_ns"])
    out = {"n": len(lat), "fail": r["fail"], "errors": r["errors"], "backends": r["backends"]}
    if lat:
        def pct(p):               # nearest rank
            return lat[max(0, min(len(lat) - 1, -(-len(lat) * p // 100) - 1))] / 1000.0
        out.update({"p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99),
                    "min_us": lat[0] / 1000.0, "max_us": lat[-1] / 1000.0})
    else:
        out["not_supported"] = True
    return out


class Ports:
    """Source ports handed to probes, never reused within one lab."""
    def __init__(self, start: int = 20000):
        self.next = start

    def take(self, k: int) -> int:
        s, self.next = self.next, self.next + k
        if self.next > 65000:
            raise RuntimeError("source ports exhausted")
        return s


def run_probe(ns: str, ports: Ports, targets: list[dict], count: int, warmup: int) -> dict:
    from datapath import netns
    spec = {"targets": targets, "count": count, "warmup": warmup,
            "port_start": ports.take(len(targets) * (count + warmup))}
    p = subprocess.run(netns.cmd(ns, sys.executable, str(Path(__file__).resolve()), "--probe",
                                 json.dumps(spec)),
                       capture_output=True, text=True, timeout=120 + 10 * (count + warmup))
    if p.returncode != 0:
        raise RuntimeError(f"probe in {ns} failed: {p.stderr[-800:]}")
    return {k: summarize(v) for k, v in json.loads(p.stdout).items()}


# ---------------------------------------------------------------------------------------------
# the reference: kproxy_baseline.py, as it is
# ---------------------------------------------------------------------------------------------

def run_kproxy(n: int, a, log) -> dict:
    with tempfile.TemporaryDirectory(prefix="dpbench-kpb-") as tmp:
        out = Path(tmp) / "kpb.json"
        argv = [sys.executable, str(a.kproxy), "--services", str(n), "--modes", ",".join(a.modes),
                "--conns", str(a.conns), "--warmup", str(a.warmup),
                "--incr-reps", str(a.incr_reps),
                "--install-timeout", str(a.install_timeout), "--out", str(out)]
        log(f"reference: {' '.join(argv[1:])}")
        p = subprocess.run(argv, capture_output=True, text=True,
                           timeout=len(a.modes) * (a.install_timeout + 600))
        for line in (p.stdout + p.stderr).splitlines():
            if line.strip() and not line.startswith("  .."):
                log("  | " + line)
        if not out.exists():
            raise RuntimeError(f"kproxy_baseline wrote no JSON (rc {p.returncode}): "
                               f"{p.stderr[-800:]}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# our side: a one-node lab with N services
# ---------------------------------------------------------------------------------------------

FILLER_BACKENDS = 3                 # as the reference's services


def lb_map_max(n: int) -> int:
    """bpf.lbMapMax for N services of 1 + 3 entries each: Cilium's default 65,536 while they
    fit, else the next power of two."""
    need = n * (1 + FILLER_BACKENDS)
    return max(65536, 1 << (need - 1).bit_length())


def write_manifests(d: Path, n: int, per: int) -> str:
    """Pods (examples/lab, every one on k8s-ctr, without its webpod Service) and N services,
    the target last. Returns the target's VIP."""
    from agent.lab.lab import EXAMPLES
    for f in sorted(EXAMPLES.glob("*.yaml")):
        text = f.read_text()
        if "kind: Service" in text:
            continue
        text = "\n".join(f"  nodeName: {NODE}" if line.startswith("  nodeName:") else line
                         for line in text.splitlines()) + "\n"
        (d / f.name).write_text(text)
    base, fake = _n(SVC_BASE), _n(FAKE_BASE)
    docs = []
    for i in range(n - 1):
        eps = "\n".join(f"  - addresses: [{_ip(fake + per * i + j)}]" for j in range(per))
        docs.append(FILLER.format(i=i, vip=_ip(base + i), eps=eps))
    for k in range(0, len(docs), PER_FILE):
        (d / f"svc-{k // PER_FILE:03d}.yaml").write_text("---\n".join(docs[k:k + PER_FILE]))
    vip = _ip(base + n - 1)
    (d / "zz-target.yaml").write_text(TARGET_SVC.format(name=TARGET, vip=vip))
    return vip


def wait_vip(ns: str, vip: str, timeout: float = 120) -> float:
    """Seconds until curl-pod completes a connection to the VIP (the agent has programmed it)."""
    from datapath import netns
    t0 = time.time()
    while time.time() - t0 < timeout:
        p = netns.run(ns, "curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}",
                      f"http://{vip}/", check=False)
        if p.stdout.strip() == "200":
            return time.time() - t0
        time.sleep(0.5)
    raise RuntimeError(f"{vip} did not answer from curl-pod within {timeout:.0f} s")


AGENT_WAIT = 900      # s: an agent parsing 20,000 services on a loaded 2-vCPU VM can take > 180


def patient_lab(name: str):
    """agent/lab/lab.py's Lab, waiting up to AGENT_WAIT for the agent's API (its own wait is 180 s,
    too short for the largest N here on a loaded machine) before its own check."""
    from agent.api import Client
    from agent.lab.lab import Lab
    from datapath.errors import DatapathError

    class PatientLab(Lab):
        def _wait_agent(self, rec, p):
            deadline = time.time() + AGENT_WAIT
            while time.time() < deadline and p.poll() is None:
                try:
                    Client(rec["socket"], timeout=2).get("/v1/healthz")
                    break
                except DatapathError:
                    time.sleep(0.5)
            return super()._wait_agent(rec, p)
    return PatientLab(name)


def measure_datapath(n: int, a, k: int, log) -> dict:
    from agent.api import Client
    from agent.lab.topology import TOPOLOGIES
    from datapath import netns
    per, map_max = FILLER_BACKENDS, lb_map_max(n)
    lab = patient_lab(f"fp{os.getpid() % 10000}-{k}")
    lab.down()                     # a leftover of the same name, from a killed run
    res = {"n_services": n, "filler_backends": per, "lbMapMax": map_max, "lab": lab.name}
    try:
        with tempfile.TemporaryDirectory(prefix="dpbench-fp-") as tmp:
            vip = write_manifests(Path(tmp), n, per)
            res["vip"] = vip
            t = time.perf_counter()
            st = lab.up(tmp, str(TOPOLOGIES / "single-node.yaml"), None,
                        {"bpf": {"lbMapMax": map_max}} if map_max != 65536 else None)
            res["lab_up_s"] = time.perf_counter() - t
            cpod = st["pods"]["default/curl-pod"]["netns"]
            node = st["nodes"][NODE]
            res["vip_ready_s"] = wait_vip(cpod, vip)
            svcs = Client(node["socket"], timeout=30).get("/v1/service")
            res["frontends"] = len(svcs)
            log(f"datapath N={n}: lab up in {res['lab_up_s']:.0f} s, {len(svcs)} frontends, "
                f"VIP answered after {res['vip_ready_s']:.1f} s more; probing")
            pod1 = st["pods"]["default/webpod-1"]["ip"]
            vt = {"name": "vip", "ip": vip, "port": 80}
            pt = {"name": "pod", "ip": pod1, "port": 80}
            ports = Ports()
            lat = {}
            r = run_probe(cpod, ports, [vt, pt], a.conns, a.warmup)
            lat["cpod_vip"], lat["cpod_pod"] = r["vip"], r["pod"]
            # the node reaches the service CIDR through its device, as through a default route
            netns.ip(node["netns"], "route", "replace", SVC_CIDR, "dev", "eth1")
            r = run_probe(node["netns"], ports, [vt, pt], a.conns, a.warmup)
            lat["node_vip"], lat["node_pod"] = r["vip"], r["pod"]
            res["latency"] = lat
    except Exception as e:
        log_tail = agent_log_tail(lab)
        raise RuntimeError(f"{e}{log_tail}") from e
    finally:
        lab.down()
    return res


def agent_log_tail(lab, lines: int = 15) -> str:
    """The end of the node agent's log (the lab directory goes with `lab down`)."""
    p = lab.dir / NODE / "agent.log"
    try:
        return "\nagent.log:\n" + "\n".join(p.read_text().splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _kp_row(kp: dict, mode: str, n: int) -> dict | None:
    return next((r for r in kp["results"] if r["mode"] == mode and r["n_services"] == n), None)


def rows(res: dict) -> list[dict]:
    """One row a (N, mode): pod -> VIP and node -> VIP p50/p90/p99 (None = failed/absent)."""
    out = []
    for n in res["services"]:
        kp = res["kproxy"].get(str(n), {"results": []})
        dp = res["datapath"].get(str(n), {})
        for mode in res["modes"]:
            r = _kp_row(kp, mode, n) or {}
            lat = r.get("latency", {})
            out.append({"n": n, "mode": mode, "pod_vip": lat.get("cpod_vip"),
                        "node_vip": lat.get("node_vip"), "pod_pod": lat.get("cpod_pod"),
                        "errors": r.get("errors", [])})
        lat = dp.get("latency", {})
        out.append({"n": n, "mode": "datapath", "pod_vip": lat.get("cpod_vip"),
                    "node_vip": lat.get("node_vip"), "pod_pod": lat.get("cpod_pod"),
                    "errors": dp.get("errors", []), "filler_backends": dp.get("filler_backends"),
                    "lbMapMax": dp.get("lbMapMax")})
        norules = None
        for mode in res["modes"]:
            r = _kp_row(kp, mode, n) or {}
            norules = norules or r.get("latency", {}).get("norules_cpod_pod")
        nnode = next(((_kp_row(kp, m, n) or {}).get("latency", {}).get("norules_node_pod")
                      for m in res["modes"] if _kp_row(kp, m, n)), None)
        out.append({"n": n, "mode": "no-rule limit", "pod_vip": norules, "node_vip": nnode,
                    "pod_pod": None, "errors": []})
        out.append({"n": n, "mode": "datapath pod IP", "pod_vip": lat.get("cpod_pod"),
                    "node_vip": lat.get("node_pod"), "pod_pod": None, "errors": []})
    return out


def _cell(d: dict | None) -> str:
    if not d:
        return f"{'-':>20}"
    if "p50_us" not in d:
        return f"{'not supported':>20}"
    return f"{d['p50_us']:6.0f} {d['p90_us']:6.0f} {d['p99_us']:6.0f}"


def report(res: dict) -> str:
    lines = ["TCP connect() latency, µs, p50 p90 p99 (one new flow a connection, "
             f"{res['conns']} a target after {res['warmup']} warm-up)",
             "no-rule limit: kproxy_baseline's pod -> pod IP before any rule (plain routing); "
             "datapath pod IP: curl-pod -> webpod-1 through datapath, interleaved with its VIP",
             "(for the two limit rows the columns are pod -> pod IP and node -> pod IP)", "",
             f"| {'N':>6} | {'mode':<16} | {'pod -> VIP  p50 p90 p99':>23} | "
             f"{'node -> VIP p50 p90 p99':>23} |",
             f"|{'-' * 8}|{'-' * 18}|{'-' * 25}|{'-' * 25}|"]
    for r in rows(res):
        note = f"  (fillers: {r['filler_backends']} backends)" \
            if r.get("filler_backends") not in (None, 3) else ""
        if r.get("lbMapMax") not in (None, 65536):
            note += f"  (bpf.lbMapMax {r['lbMapMax']})"
        lines.append(f"| {r['n']:>6} | {r['mode']:<16} | {_cell(r['pod_vip']):>23} | "
                     f"{_cell(r['node_vip']):>23} |{note}")
    lines.append("")
    for n in res["services"]:
        lat = res["datapath"].get(str(n), {}).get("latency", {})
        v, p = lat.get("cpod_vip", {}), lat.get("cpod_pod", {})
        kp = res["kproxy"].get(str(n), {"results": []})
        nr = next(((_kp_row(kp, m, n) or {}).get("latency", {}).get("norules_cpod_pod")
                   for m in res["modes"] if _kp_row(kp, m, n)), None) or {}
        if "p50_us" in v and "p50_us" in p:
            extra = f"; vs the no-rule limit {v['p50_us'] - nr['p50_us']:+.1f} µs" \
                if "p50_us" in nr else ""
            lines.append(f"N={n}: datapath pod -> VIP p50 - its pod IP p50 = "
                         f"{v['p50_us'] - p['p50_us']:+.1f} µs{extra}")
        nv = lat.get("node_vip", {})
        if nv.get("not_supported"):
            lines.append(f"N={n}: datapath node -> VIP not supported: {nv.get('errors')}")
    for n, dp in res["datapath"].items():
        for e in dp.get("errors", []):
            lines.append(f"N={n}: datapath: {e}")
    return "\n".join(lines)


def charts(res: dict, out_dir: Path) -> list[Path]:
    from bench.charts import line_chart
    made = []
    for key, fname, title in (("pod_vip", "first_packet.png", "pod -> ClusterIP"),
                              ("node_vip", "first_packet_node.png", "node -> ClusterIP")):
        series: dict[str, list] = {}
        for r in rows(res):
            d = r[key]
            name = r["mode"] if r["mode"] != "datapath pod IP" else "datapath, pod IP (limit)"
            if key == "node_vip" and r["mode"] == "datapath" and d and "p50_us" not in d:
                name = "datapath (not supported: no point)"
            series.setdefault(name, []).append((r["n"], d["p50_us"] if d and "p50_us" in d
                                                else None))
        made.append(line_chart(out_dir / fname,
                               f"First-packet TCP connect() latency p50, {title}",
                               "ClusterIP services (N, the target last)", "µs (p50)", series,
                               logx=True, dashed={"no-rule limit", "datapath, pod IP (limit)"}))
    return made


def source() -> str:
    """Which datapath was measured: the commit and whether the tree had local changes
    (BENCH_SOURCE overrides, for a run from an exported tree)."""
    if os.environ.get("BENCH_SOURCE"):
        return os.environ["BENCH_SOURCE"]
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "agent", "datapath", "bpf"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + (" + local changes" if dirty else "")


def run(services: list[int], a, log=print) -> dict:
    res = {"bench": "first_packet", "services": services, "modes": a.modes, "conns": a.conns,
           "warmup": a.warmup, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "reference": str(a.kproxy), "source": source(), "kproxy": {}, "datapath": {},
           "host": {"kernel": os.uname().release, "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg()[0]}}
    for k, n in enumerate(services):
        # one N at a time, the reference then ours, so drift on a shared machine hits both
        try:
            res["kproxy"][str(n)] = run_kproxy(n, a, log) if a.kproxy else \
                {"results": [], "error": "not run (--no-reference)"}
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            res["kproxy"][str(n)] = {"results": [], "error": str(e)}
            log(f"reference N={n}: {e}")
        try:
            res["datapath"][str(n)] = measure_datapath(n, a, k, log)
        except Exception as e:        # noqa: BLE001 - one N failing still reports the rest
            res["datapath"][str(n)] = {"n_services": n, "errors": [f"{type(e).__name__}: {e}"]}
            log(f"datapath N={n}: {e}")
    res["loadavg_end"] = os.getloadavg()[0]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", help="comma list of N (default %s)" %
                    ",".join(map(str, DEFAULT_N)))
    ap.add_argument("--quick", action="store_true",
                    help=f"50 connections, 5 warm-up; N = {','.join(map(str, QUICK_N))} "
                    "unless --services (smoke test)")
    ap.add_argument("--conns", type=int, help="measured connections a target (default 200)")
    ap.add_argument("--warmup", type=int, help="unmeasured connections first (default 20)")
    ap.add_argument("--modes", default=",".join(MODES), help="the reference's modes")
    ap.add_argument("--install-timeout", type=int, default=1200,
                    help="the reference's limit on one ruleset install, s")
    ap.add_argument("--incr-reps", type=int, default=3,
                    help="the reference's add-service / endpoint-change repeats (its default 3; "
                    "they cost minutes at 10,000 and more, and are not part of this table)")
    ap.add_argument("--kproxy", type=Path, default=KPROXY, help="kproxy_baseline.py")
    ap.add_argument("--no-reference", action="store_true",
                    help="datapath only (where ../shared/bench is absent, e.g. a fresh clone)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--json", action="store_true", help="print the JSON, not the table")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(json.loads(a.probe))))
        return 0
    services = [int(x) for x in a.services.split(",")] if a.services else \
        (QUICK_N if a.quick else DEFAULT_N)
    if any(not 1 <= n <= 60000 for n in services):
        ap.error("--services: each N from 1 to 60000")
    a.conns = a.conns or (50 if a.quick else 200)
    a.warmup = a.warmup if a.warmup is not None else (5 if a.quick else 20)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if a.no_reference:
        a.kproxy, a.modes = None, []
    elif not a.kproxy.exists():
        ap.error(f"{a.kproxy} not found (../shared/bench/kproxy_baseline.py; --kproxy PATH)")
    log = lambda s: print(s, file=sys.stderr, flush=True)    # noqa: E731
    res = run(sorted(services), a, log)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    res["charts"] = [p.name for p in charts(res, a.out_dir)]
    (a.out_dir / "first_packet.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1) if a.json else report(res))
    log(f"wrote {a.out_dir / 'first_packet.json'} and {', '.join(res['charts'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
