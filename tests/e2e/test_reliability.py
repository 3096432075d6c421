"""Issue #12, "Under load, in the lab": each event below, on the session's three-node `native`
lab (conftest), while bounded client loops run (`Load`: new connections and keep-alive ones,
curl-pod -> the webpod ClusterIP and ext -> a NodePort on every node's address, backends on all
three nodes), costs 0 failed requests and 0 reset connections:
  1. the agent restarted on every node in turn (SIGTERM, then start);
  2. an agent SIGKILLed in the middle of applying a burst of 1,000 services, then started: it
     converges, and every node's LB maps equal a fresh plan of the manifests;
  3. an upgrade: the programs recompiled with a changed compile-time constant and replaced in
     place (tc and XDP never absent, the maps kept); the module's last test (no rollback);
  4. etcd stopped for 60 s: forwarding goes on, `status` and the metrics report the kvstore
     failing, the agents resync when it returns and no identity is renumbered;
  5. a backend pod deleted (terminating first, as Kubernetes does): only the connections to it
     end, new connections avoid it.
Each test prints one `figures:` line (requests, failures, resets, slowest request, time to
converge). Every test but the upgrade puts the lab back as it found it."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.lab.values import merge, parse_set
from agent.runtime import _alive
from datapath import abi, bpfsys, netns

from .conftest import wait_for
from .test_multi_node import (NODE_IPS, _agents_running, _lab_cli, _nodeport_service,
                              _wait_service, service_vip)

LOAD_NODE_PORT = 30090

# One bounded client loop (issue #12's load generator), in a pod's or ext's netns. mode "new":
# one HTTP/1.0 request a connection, to each host in turn; mode "keepalive": `conns` HTTP/1.1
# connections (connection i to host i mod len(hosts)) used in turn, a failed one replaced by a
# new one. `rate` requests a second in all, until `stopfile` exists or `limit` s have passed.
# Keep-alive mode first prints each connection's first backend ({"conn", "backend"}), then, as
# both modes do, one JSON line at the end: requests, ok, failed (when, where, which connection
# and the backend it had answered from, the error), resets among them, requests that took 0.9 s
# or more, the slowest, and every answer as [monotonic time, connection, backend].
LOAD = r"""
import json, os, socket, sys, time
hosts, port, rate, limit, stopfile, mode, nconn = sys.argv[1].split(","), int(sys.argv[2]), \
    float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7])
keep = mode == "keepalive"
REQ = b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n" if keep else \
    b"GET /api HTTP/1.0\r\nHost: x\r\n\r\n"

def answer(s, buf):
    while b"\r\n\r\n" not in buf:
        c = s.recv(4096)
        if not c:
            raise ConnectionError("closed by the peer")
        buf += c
    head, buf = buf.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.") or b" 200 " not in status:
        raise OSError(f"bad answer {status[:40]!r}")
    n = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")[1:]
              if l.lower().startswith(b"content-length:")), None)
    while (n is None or len(buf) < n) and (c := s.recv(4096)):
        buf += c
    if n is not None and len(buf) < n:
        raise ConnectionError("closed by the peer mid-answer")
    return json.loads(buf[:n] if n is not None else buf)["hostname"], buf[n:] if n else b""

t0 = time.monotonic()
n, ok, resets, failed, slow, slowest, answers = 0, 0, 0, [], [], 0.0, []
conns = [None] * nconn            # keep-alive: [socket, buffer, connection number, backend]
made = 0
first_seen = set()
while time.monotonic() - t0 < limit and not os.path.exists(stopfile):
    i = n % (nconn if keep else len(hosts))
    host = hosts[i % len(hosts)]
    n += 1
    start = time.monotonic()
    c = conns[i] if keep else None
    try:
        if c is None:
            s = socket.socket(); s.settimeout(3)
            c = [s, b"", made, None]
            made += 1
            if keep:
                conns[i] = c
            s.connect((host, port))
        s = c[0]
        s.sendall(REQ)
        backend, c[1] = answer(s, c[1])
        took = time.monotonic() - start
        ok += 1
        slowest = max(slowest, took)
        c[3] = backend
        answers.append([round(start, 3), c[2], backend])
        if keep and c[2] < nconn and c[2] not in first_seen:
            first_seen.add(c[2])
            print(json.dumps({"conn": c[2], "host": host, "backend": backend}), flush=True)
        if took >= 0.9:
            slow.append({"at": round(start - t0, 2), "host": host, "conn": c[2],
                         "took": round(took, 2)})
    except (OSError, ValueError) as e:
        resets += isinstance(e, ConnectionResetError)
        slowest = max(slowest, time.monotonic() - start)
        failed.append({"at": round(start - t0, 2), "t": round(start, 3), "host": host,
                       "conn": c[2] if c else None, "backend": c[3] if c else None,
                       "error": f"{type(e).__name__}: {e}"})
        if c:
            c[0].close()
        if keep:
            conns[i] = None
    finally:
        if not keep and c:
            c[0].close()
    time.sleep(max(0.0, n / rate - (time.monotonic() - t0)))
for c in conns:
    if c:
        c[0].close()
print(json.dumps({"requests": n, "ok": ok, "failed": failed, "resets": resets, "slow": slow,
                  "slowest": round(slowest, 3), "connections": made, "answers": answers,
                  "seconds": round(time.monotonic() - t0, 1)}), flush=True)
"""


class Load:
    """Issue #12's load, bounded: new connections at `rate`/s from curl-pod to the webpod
    ClusterIP and from ext to the NodePort on each node's address in turn, and keep-alive
    connections (`keepalive` of them from curl-pod to the ClusterIP, one from ext to each node's
    NodePort) at `rate`/2 each. A context manager: the loops are stopped (and killed if need be)
    on the way out. `.first` holds each keep-alive loop's connections' first backends."""

    def __init__(self, lab, tmp_path, rate: float = 20, keepalive: int = 6, limit: float = 900):
        vip, nodes = service_vip(lab), ",".join(NODE_IPS.values())
        self.lab, self.limit, self.stopfile = lab, limit, tmp_path / "stop-load"
        self.loops = {   # name: (source, hosts, port, mode, rate, connections)
            "curl-pod -> ClusterIP, new": ("curl-pod", vip, 80, "new", rate, 1),
            "ext -> NodePort, new": ("ext", nodes, LOAD_NODE_PORT, "new", rate, 1),
            "curl-pod -> ClusterIP, keep-alive": ("curl-pod", vip, 80, "keepalive", rate / 2,
                                                  keepalive),
            "ext -> NodePort, keep-alive": ("ext", nodes, LOAD_NODE_PORT, "keepalive", rate / 2,
                                            len(NODE_IPS)),
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.first: dict[str, list[dict]] = {}
        self.results: dict[str, dict] = {}

    def __enter__(self) -> "Load":
        self.stopfile.unlink(missing_ok=True)
        try:
            for what, (src, hosts, port, mode, rate, conns) in self.loops.items():
                self.procs[what] = subprocess.Popen(
                    netns.cmd(self.lab.ns(src), sys.executable, "-c", LOAD, hosts, str(port),
                              str(rate), str(self.limit), str(self.stopfile), mode, str(conns)),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for what, p in self.procs.items():       # every keep-alive connection answered once
                _, _, _, mode, _, conns = self.loops[what]
                if mode == "keepalive":
                    self.first[what] = [json.loads(p.stdout.readline()) for _ in range(conns)]
                    assert all("backend" in f for f in self.first[what]), self.first[what]
        except BaseException:
            self._kill()
            raise
        return self

    def stop(self) -> dict[str, dict]:
        """Stop every loop; their results by loop name."""
        self.stopfile.touch()
        for what, p in self.procs.items():
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
            self.results[what] = json.loads(out.strip().splitlines()[-1])
        return self.results

    def _kill(self) -> None:
        self.stopfile.touch()
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)

    def __exit__(self, *exc) -> None:
        self._kill()

    # ---- figures and the promise ----
    def totals(self, allowed=lambda f: False) -> dict:
        res = self.results.values()
        failed = [f for r in res for f in r["failed"] if not allowed(f)]
        return {"requests": sum(r["requests"] for r in res), "failed": failed,
                "resets": sum(f["error"].startswith("ConnectionResetError") for f in failed),
                "slowest": max(r["slowest"] for r in res)}

    def figures(self, scenario: str, allowed=lambda f: False, **extra) -> dict:
        """Print the loops' details and the one figures line; returns the totals."""
        t = self.totals(allowed)
        for what, r in self.results.items():
            print(f"  {what}: {r['requests']} requests in {r['seconds']} s over "
                  f"{r['connections']} connection(s), {len(r['failed'])} failed, "
                  f"{r['resets']} reset, slowest {r['slowest']} s")
            for f in r["failed"] + r["slow"]:
                print("     ", f)
        line = f"figures: {scenario}: requests={t['requests']} failures={len(t['failed'])} " \
               f"resets={t['resets']} slowest={t['slowest']}s"
        print(line + "".join(f" {k}={v}" for k, v in extra.items()))
        return t

    def assert_clean(self, allowed=lambda f: False) -> None:
        """Every loop ran the whole time; no request failed (bar `allowed` ones), none reset."""
        for what, r in self.results.items():
            assert r["requests"] >= 20 and r["ok"] + len(r["failed"]) == r["requests"], \
                (what, r["requests"])
        t = self.totals(allowed)
        assert t["failed"] == [] and t["resets"] == 0, t


@pytest.fixture(scope="module")
def load_np(native):
    """The NodePort the load's ext loops ask (backends on all three nodes)."""
    path = _nodeport_service(native, "web-load", LOAD_NODE_PORT)
    try:
        _wait_service(native, "web-load")
        yield LOAD_NODE_PORT
    finally:
        path.unlink()


# ---- 1. the agent restarted on every node, one after another ----

def test_agent_restart_on_every_node_under_load(native, load_np, tmp_path):
    """`datapath lab agent restart` on each node, one after another, in 2 to 4 rounds (some
    30 s) under the load. The verbs work (new pids, APIs answer, status says running)."""
    before = {n: r["agent_pid"] for n, r in native.lab.load()["nodes"].items()}
    restarts = []
    try:
        with Load(native, tmp_path) as load:
            t0 = time.monotonic()
            for round_ in range(4):        # every node in turn, rounds until some 30 s are done
                if round_ >= 2 and time.monotonic() - t0 > 30:
                    break
                for node in NODE_IPS:
                    start = time.monotonic()
                    r = _lab_cli(native, "agent", "restart", node)
                    assert r.returncode == 0, r.stderr
                    restarts.append((node, round(start - t0, 1), round(time.monotonic() - t0, 1),
                                     r.stdout.strip()))
            time.sleep(2)
            load.stop()
        print("\nagent restarts (node, from s, to s, verb's answer):")
        for row in restarts:
            print("  ", *row)
        longest = max(b - a for _, a, b, _ in restarts)
        t = load.figures("agent restart on every node", restarts=len(restarts),
                         longest_restart=f"{longest:.1f}s")
        if t["failed"]:
            drops = _lab_cli(native, "observe", "--verdict", "DROPPED", "--last", "50",
                             timeout=60)
            print("lab observe --verdict DROPPED --last 50:\n" + drops.stdout + drops.stderr)
        after = native.lab.load()["nodes"]
        for node in NODE_IPS:                       # the verbs did what they say
            assert after[node]["agent_pid"] != before[node] and _alive(after[node]["agent_pid"])
            assert native.client(node).get("/v1/healthz") is not None
        assert set(_agents_running(native).values()) == {"running"}
        load.assert_clean()
    finally:
        _agents_back(native)


def _agents_back(lab) -> None:
    for node in NODE_IPS:                       # leave the lab as found
        if not _alive(lab.lab.load()["nodes"][node].get("agent_pid")):
            lab.lab.start_agent(node)


# ---- 2. SIGKILL in the middle of a burst of 1,000 services ----

BURST = 1000
LB_MAPS = ("cilium_lb4_services_v2", "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat",
           "cilium_lb4_maglev")


def _burst(n: int) -> str:
    return "".join(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: burst-{i:04d}, "
                   "namespace: default}\nspec:\n  selector: {app: webpod}\n"
                   "  ports: [{port: 80, targetPort: http}]\n" for i in range(n))


class _Counts:
    """Key counts of a node's pinned LB maps (get_next_key walks: no values copied)."""

    def __init__(self, lab, node):
        pins = f"{lab.lab.bpffs}/datapath/{node}"
        self.fds = {m: bpfsys.obj_get(f"{pins}/{m}") for m in LB_MAPS}
        self.ksize = {m: bpfsys.map_info(fd).key_size for m, fd in self.fds.items()}

    def __call__(self) -> dict[str, int]:
        return {m: sum(1 for _ in bpfsys.map_keys(fd, self.ksize[m]))
                for m, fd in self.fds.items()}

    def close(self):
        for fd in self.fds.values():
            os.close(fd)


def fresh_plan(lab, node: str) -> tuple[dict[str, dict[bytes, bytes]], dict]:
    """The LB maps a fresh ServicePlanner makes for `node` from the manifests on disk, the lab's
    pods and the node's config, with the ids the agent holds in its state file; and that id
    table after planning (a fresh plan allocates no id: every one is the agent's)."""
    from agent.config import load_config
    from agent.lb import services
    from agent.manifests import load_manifests
    cfg = load_config(lab.node(node)["config"])
    st = lab.lab.load()
    state = json.loads((Path(cfg.stateDir) / "state.json").read_text())
    table = copy.deepcopy(state.get("lb_ids", {}))
    pods = {k: r for k, r in st["pods"].items() if r.get("ip")}
    view = services.NodeView(node_ip=lab.node(node)["ip"],
                             local_ips=frozenset(r["ip"] for r in pods.values()
                                                 if r["node"] == node),
                             node_name=node, node_port_range=cfg.nodePortRange,
                             algorithm=cfg.lbAlgorithm, maglev_size=cfg.maglevTableSize)
    planner = services.ServicePlanner(services.IdTable(table), cfg.serviceCIDR)
    built = planner.update(load_manifests(cfg.manifests),    # (the burst's 1,000 services
                           {k: r["ip"] for k, r in pods.items()}, view, None)   # share a table)
    maps = {m: {} for m in LB_MAPS}
    for _, b in built.values():
        for m, entries in b.maps.items():
            maps[m].update(entries)
    return maps, table


def _pinned_lb(lab, node) -> dict[str, dict[bytes, bytes]]:
    return {m: lab.pinned_map(m, node) for m in LB_MAPS}


def _plan_mismatch(lab, node) -> str:
    """'' when the node's pinned LB maps are exactly its fresh plan, else what differs."""
    want, table = fresh_plan(lab, node)
    state = json.loads((Path(native_state_dir(lab, node)) / "state.json").read_text())
    if table != state.get("lb_ids", {}):
        return "the fresh plan allocated ids the agent's state does not hold"
    have = _pinned_lb(lab, node)
    out = []
    for m in LB_MAPS:
        leaked = have[m].keys() - want[m].keys()
        missing = want[m].keys() - have[m].keys()
        wrong = sum(have[m][k] != want[m][k] for k in have[m].keys() & want[m].keys())
        if leaked or missing or wrong:
            out.append(f"{m}: {len(leaked)} leaked, {len(missing)} missing, {wrong} differ")
    return "; ".join(out)


def native_state_dir(lab, node) -> str:
    from agent.config import load_config
    return load_config(lab.node(node)["config"]).stateDir


def _no_duplicates(lab, node) -> None:
    """No frontend under two service ids, no backend address under two backend ids, and no
    two ids of one kind in the agent's id table."""
    rn = lab.pinned_map("cilium_lb4_reverse_nat", node)
    assert len(set(rn.values())) == len(rn), f"{node}: a frontend under two reverse NAT ids"
    be = [abi.Lb4Backend.from_buffer_copy(v) for v in
          lab.pinned_map("cilium_lb4_backends_v3", node).values()]
    addrs = [(b.address, b.port, b.proto) for b in be]
    assert len(set(addrs)) == len(addrs), f"{node}: a backend under two ids"
    ids = json.loads((Path(native_state_dir(lab, node)) / "state.json").read_text())["lb_ids"]
    for kind, table in ids.items():
        assert len(set(table.values())) == len(table), f"{node}: two {kind} keys, one id"


def _print_membership(lab, since: float) -> None:
    """Each agent's log lines about nodes joining or leaving its view, endpoints withdrawn and
    kvstore leases, since `since` (monotonic; the log's wall clock is mapped back to it)."""
    import datetime
    wall = time.time() - (time.monotonic() - since)
    for node in NODE_IPS:
        for line in Path(lab.node(node)["log"]).read_text(errors="replace").splitlines():
            if not any(w in line for w in ("the cluster (", "withdrawn", "lease", "holding",
                                           "starting agent", "ready:")):
                continue
            try:
                at = datetime.datetime.strptime(line[:23],      # (local time, as logged)
                                                "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if at >= wall:
                print(f"  {node} +{at - wall:6.1f}s {line[24:]}")


def test_agent_killed_mid_burst_of_1000_services_converges_to_a_fresh_plan(native, load_np,
                                                                           tmp_path):
    """1,000 services land in the manifests at once; k8s-ctr's agent is SIGKILLed while its
    LB maps hold some but not all of them, then started. It converges: on every node each LB
    map equals a fresh plan of the manifests (nothing leaked, missing or duplicated). The
    burst goes again afterwards, the same way."""
    node = "k8s-ctr"
    path = native.manifests / "burst.yaml"
    counts = _Counts(native, node)
    try:
        base = counts()
        full = base["cilium_lb4_services_v2"] + 4 * BURST     # a frontend and 3 slots each
        with Load(native, tmp_path) as load:
            tmp = path.with_name(".burst.yaml.tmp")
            tmp.write_text(_burst(BURST))
            t0 = time.monotonic()
            os.replace(tmp, path)                                    # the burst, at once
            mid, polls = None, 0
            while time.monotonic() - t0 < 300:          # (planning 1,000 Maglev services)
                c = counts()
                polls += 1
                if any(c[m] > base[m] for m in LB_MAPS) and c["cilium_lb4_services_v2"] < full:
                    native.lab.kill_agent(node)
                    mid = (round(time.monotonic() - t0, 2), c)
                    break
                if c["cilium_lb4_services_v2"] >= full:
                    break
                time.sleep(0.005)
            after_kill = counts()
            print(f"\nkilled at {mid[0] if mid else '-'} s after the burst, the maps then: "
                  f"{mid[1] if mid else c} ({polls} polls); after the kill: {after_kill}; "
                  f"the burst's full services map: {full}")
            assert mid, "the agent applied the whole burst before a poll saw it half done"
            start = time.monotonic()
            native.lab.start_agent(node)
            answered = time.monotonic() - start
            wait_for(lambda: counts()["cilium_lb4_services_v2"] >= full, timeout=300,
                     interval=0.2, what="the burst in k8s-ctr's services map")
            while (bad := _plan_mismatch(native, node)) and time.monotonic() - start < 300:
                time.sleep(0.5)
            converged = time.monotonic() - start
            assert not bad, f"{node} did not converge to a fresh plan in 300 s: {bad}"
            for other in NODE_IPS:
                wait_for(lambda: _plan_mismatch(native, other) == "", timeout=300, interval=1,
                         what=f"{other}'s LB maps to match a fresh plan")
                _no_duplicates(native, other)
            have = counts()
            path.unlink()
            t1 = time.monotonic()
            for other in NODE_IPS:
                c2 = _Counts(native, other)
                try:
                    wait_for(lambda: c2()["cilium_lb4_services_v2"] < full - 4 * BURST + 1,
                             timeout=300, what=f"the burst gone from {other}")
                finally:
                    c2.close()
            removed = time.monotonic() - t1
            load.stop()
        print(f"after: {have}; the burst removed from every node in {removed:.1f} s")
        load.figures("SIGKILL mid-burst of 1,000 services", killed_at=f"{mid[0]}s",
                     api_back=f"{answered:.1f}s", converge=f"{converged:.1f}s")
        for other in NODE_IPS:
            assert _plan_mismatch(native, other) == "", other
        if load.totals()["failed"]:         # what the agents saw of each other meanwhile
            _print_membership(native, since=t0)
        load.assert_clean()
    finally:
        counts.close()
        path.unlink(missing_ok=True)
        _agents_back(native)


# ---- 4. etcd stopped for 60 s ----

ETCD_DOWN = 60


def _kvstore_line(lab, node) -> str:
    from agent.runtime import _bin
    out = lab.run(node, *_bin("datapath"), "--socket", lab.node(node)["socket"], "status",
                  check=False).stdout
    return next((line for line in out.splitlines() if line.startswith("KVStore")), out)


def _identities(lab, node) -> list:
    return sorted((i["id"], sorted(i["labels"])) for i in lab.client(node).get("/v1/identity"))


def test_etcd_down_60s_keeps_forwarding_reports_failing_and_resyncs(native, load_np, tmp_path):
    """`lab etcd stop` for 60 s under the load: forwarding goes on; `datapath status` on every
    node says the kvstore is failing and cilium_kvstore_quorum_errors_total grows; `lab etcd
    start`: every node reports Ok again within seconds, the metric stops, and every node lists
    the same identities, with the same numbers, as before."""
    ids = {n: _identities(native, n) for n in NODE_IPS}
    numbering = {}                                  # one numbering cluster-wide
    for n, known in ids.items():
        for num, labels in known:
            assert numbering.setdefault(num, labels) == labels, (n, num, labels)
    errors = {n: native.metric("cilium_kvstore_quorum_errors_total", n) for n in NODE_IPS}
    try:
        with Load(native, tmp_path) as load:
            r = _lab_cli(native, "etcd", "stop")
            t0 = time.monotonic()
            assert r.returncode == 0 and "etcd on k8s-ctr" in r.stdout, r.stdout + r.stderr
            assert native.lab.load()["etcd"]["pid"] is None
            assert f"{native.lab.load()['etcd']['url']} (stopped)" in \
                _lab_cli(native, "status").stdout
            lines, noticed = {}, {}
            for node in NODE_IPS:
                lines[node] = wait_for(lambda: (line := _kvstore_line(native, node)) and
                                       "Failure" in line and line, timeout=40,
                                       what=f"{node} to report the kvstore")
                noticed[node] = round(time.monotonic() - t0, 1)
                wait_for(lambda: native.metric("cilium_kvstore_quorum_errors_total", node) >
                         errors[node], timeout=20, what=f"{node}'s kvstore error metric")
            print("\nwith etcd stopped:", *(f"\n  {n} (after {noticed[n]} s): {line}"
                                            for n, line in lines.items()))
            r = _lab_cli(native, "etcd", "stop")
            assert r.returncode == 0 and "already stopped" in r.stdout
            time.sleep(max(0.0, ETCD_DOWN - (time.monotonic() - t0)))
            during = {n: native.metric("cilium_kvstore_quorum_errors_total", n) - errors[n]
                      for n in NODE_IPS}
            r = _lab_cli(native, "etcd", "start")
            down = time.monotonic() - t0
            t1 = time.monotonic()
            assert r.returncode == 0 and "started" in r.stdout, r.stdout + r.stderr
            for node in NODE_IPS:
                line = wait_for(lambda: (line := _kvstore_line(native, node)) and
                                "Ok" in line.split()[1:2] and line, timeout=40,
                                what=f"{node}'s kvstore to recover")
                print(f"  after start, {node}: {line}")
            resync = time.monotonic() - t1
            settled = {n: native.metric("cilium_kvstore_quorum_errors_total", n)
                       for n in NODE_IPS}
            time.sleep(3)
            load.stop()
        load.figures("etcd down 60 s", etcd_down=f"{down:.0f}s", converge=f"{resync:.1f}s",
                     quorum_errors=sum(during.values()))
        for node in NODE_IPS:
            assert native.metric("cilium_kvstore_quorum_errors_total", node) == settled[node]
            assert _identities(native, node) == ids[node], node       # no identity renumbered
        r = _lab_cli(native, "etcd", "start")
        assert r.returncode == 0 and "already running" in r.stdout
        load.assert_clean()
    finally:
        if not _alive(native.lab.load()["etcd"].get("pid")):
            native.lab.start_etcd()


# ---- 5. a backend pod deleted during the run ----

def _webpod_backends(lab, node) -> dict[str, str]:
    (svc,) = [s for s in lab.client(node).get("/v1/service") if s["service"] == "default/webpod"]
    return {b["pod"].split("/")[1]: b["state"] for b in svc["backends"]}


def test_backend_pod_deleted_under_load_ends_only_its_connections(native, load_np, tmp_path):
    """A webpod holding keep-alive connections is deleted as Kubernetes does it: terminating
    first (no new flows; its connections carry on), then gone (its process and netns removed by
    `lab up`). Only the keep-alive connections to it end; every other request succeeds, and no
    new connection made after the terminating state reached every node goes to it."""
    path = original = None
    try:
        with Load(native, tmp_path, keepalive=8) as load:
            held = {f["backend"] for fs in load.first.values() for f in fs}
            victim = next(p for p in ("webpod-3", "webpod-2", "webpod-1") if p in held)
            path = native.manifests / f"{victim}.yaml"
            original = path.read_text()
            t0 = time.monotonic()
            path.write_text(original.replace(f"  name: {victim}", f"  name: {victim}\n  "
                                             "deletionTimestamp: '2026-11-24T00:00:00Z'"))
            wait_for(lambda: all(_webpod_backends(native, n).get(victim) == "terminating"
                                 for n in NODE_IPS), what=f"{victim} terminating on every node")
            terminating = time.monotonic()
            time.sleep(3)                                 # its connections carry on meanwhile
            path.unlink()
            native.lab.up()                               # the pod goes: process, netns, IP
            wait_for(lambda: all(victim not in _webpod_backends(native, n) for n in NODE_IPS),
                     what=f"{victim} gone from every node's service")
            gone = time.monotonic() - t0
            time.sleep(3)
            load.stop()
        res = load.results
        ended = {(what, f["conn"]) for what, r in res.items() for f in r["failed"]}
        to_victim = {(what, c["conn"]) for what, fs in load.first.items() for c in fs
                     if c["backend"] == victim}
        # keep-alive connections opened later (numbered from the loop's connection count on)
        late = [a for what, r in res.items() if what.endswith("keep-alive")
                for a in r["answers"] if a[2] == victim and a[1] >= len(load.first[what])]
        load.figures(f"backend {victim} deleted", allowed=lambda f: f["backend"] == victim,
                     connections_to_it=len(to_victim), ended=len(ended),
                     converge=f"{gone:.1f}s")
        # only connections to the victim ended; new connections after the terminating state
        # reached every node never went to it
        assert ended <= to_victim, (ended, to_victim)
        assert to_victim, "no keep-alive connection held the deleted backend"
        new_after = [a for what, r in res.items() if what.endswith(", new")
                     for a in r["answers"] if a[0] > terminating and a[2] == victim]
        assert new_after == [] and late == [], (new_after[:5], late[:5])
        load.assert_clean(allowed=lambda f: f["backend"] == victim)
    finally:
        if path and original:                   # the pod back, as it was
            deleted = not path.exists()
            path.write_text(original)
            if deleted:
                native.lab.up()
            wait_for(lambda: all(set(_webpod_backends(native, n).values()) == {"active"} and
                                 len(_webpod_backends(native, n)) == 3 for n in NODE_IPS),
                     timeout=60, what="three active webpod backends on every node again")


# ---- 3. an upgrade: programs recompiled with a changed constant, replaced under traffic ----

# Samples a node's attached programs (bpftool net) every 20 ms until `stopfile` exists: every
# program id seen on each hook, and each sample where a hook of the first sample was absent.
HOOKS = r"""
import json, os, subprocess, sys, time
stop, t0, first, seen, gaps, n = sys.argv[1], time.monotonic(), None, {}, [], 0
while not os.path.exists(stop) and time.monotonic() - t0 < 600:
    out = json.loads(subprocess.run(["bpftool", "-j", "net", "show"], capture_output=True,
                                    text=True).stdout or "[]")
    cur = {}
    for sec in out:
        for x in sec.get("xdp", []):
            cur[f"{x['devname']} xdp"] = x.get("id")
        for t in sec.get("tc", []):
            cur[f"{t['devname']} {t['kind']}"] = t.get("id")
    n += 1
    first = cur if first is None else first
    for hook, pid in cur.items():
        if pid not in seen.setdefault(hook, []):
            seen[hook].append(pid)
    gaps += [[round(time.monotonic() - t0, 2), h] for h in first if h not in cur]
    time.sleep(0.02)
print(json.dumps({"samples": n, "first": first, "seen": seen, "gaps": gaps}))
"""


def _hooks(lab, node) -> dict[str, int]:
    out = json.loads(lab.run(node, "bpftool", "-j", "net", "show").stdout)
    cur = {}
    for sec in out:
        cur.update({f"{x['devname']} xdp": x["id"] for x in sec.get("xdp", [])})
        cur.update({f"{t['devname']} {t['kind']}": t["id"] for t in sec.get("tc", [])})
    return cur


def _tag(prog_id: int) -> str:
    return json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                                     capture_output=True, text=True, check=True).stdout)["tag"]


def _pins(lab, node, read, progs: bool) -> dict:
    """read(fd) of each of the node's program pins (prog-<build stamp>-<name>), or of each of
    its map pins (progs False)."""
    pins, out = f"{lab.lab.bpffs}/datapath/{node}", {}
    for f in sorted(os.listdir(pins)):
        if f.startswith("prog-") != progs or f.startswith("tmp-") or \
                os.path.isdir(f"{pins}/{f}"):
            continue
        fd = bpfsys.obj_get(f"{pins}/{f}")
        try:
            out[f] = read(fd)
        finally:
            os.close(fd)
    return out


def _pinned_progs(lab, node) -> dict[str, str]:
    """The node's program pins and their tags."""
    return _pins(lab, node, lambda fd: bpfsys.prog_info(fd).tag, progs=True)


def _map_ids(lab, node) -> dict[str, int]:
    return _pins(lab, node, lambda fd: bpfsys.map_info(fd).id, progs=False)


def _lab_up_set(lab, setting: str) -> None:
    """What `datapath lab up --set setting` does (agent/lab/cli.py), in this process."""
    lab.lab.up(values=merge({}, parse_set(setting), keep_none=True))


def _upgrade(lab, tmp_path, setting: str) -> dict:
    """`datapath lab up --set setting` (every agent restarted with programs compiled anew)
    while each node's hooks are sampled; returns the figures of the change."""
    stop = tmp_path / f"stop-hooks-{setting.replace('=', '-')}"
    before = {n: _hooks(lab, n) for n in NODE_IPS}
    built = {n: _pinned_progs(lab, n) for n in NODE_IPS}
    maps = {n: _map_ids(lab, n) for n in NODE_IPS}
    ct = lab.pinned_map("cilium_ct4_global", "k8s-ctr")
    watchers = {n: subprocess.Popen(netns.cmd(lab.ns(n), sys.executable, "-c", HOOKS, str(stop)),
                                    stdout=subprocess.PIPE, text=True) for n in NODE_IPS}
    try:
        t0 = time.monotonic()
        _lab_up_set(lab, setting)
        took = time.monotonic() - t0
        stop.touch()
        seen = {n: json.loads(p.communicate(timeout=30)[0]) for n, p in watchers.items()}
    finally:
        stop.touch()
        for p in watchers.values():
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
    after = {n: _hooks(lab, n) for n in NODE_IPS}
    kept_ct = ct.keys() & lab.pinned_map("cilium_ct4_global", "k8s-ctr").keys()
    replaced = 0
    for n in NODE_IPS:
        assert seen[n]["samples"] >= 20 and seen[n]["gaps"] == [], (n, seen[n]["gaps"][:5])
        assert after[n].keys() == before[n].keys(), n              # the same hooks, all held
        new = _pinned_progs(lab, n)
        assert new.keys().isdisjoint(built[n]) and set(new.values()) != set(built[n].values()), n
        # every hook runs the new build's code: replaced where the code changed (a new id),
        # left alone where the constant changed nothing (the same tag)
        assert {_tag(p) for p in after[n].values()} <= set(new.values()), n
        changed = [h for h in after[n] if after[n][h] != before[n][h]]
        assert changed, f"{n}: no program replaced"
        replaced += len(changed)
        assert _map_ids(lab, n) == maps[n], n                       # the same maps
    assert kept_ct, "no conntrack entry survived the upgrade"
    hooks = replaced
    samples = sum(s["samples"] for s in seen.values())
    print(f"`lab up --set {setting}`: {took:.1f} s; {hooks} of "
          f"{sum(len(h) for h in after.values())} hooks on 3 nodes replaced, "
          f"none absent in {samples} samples; {len(kept_ct)} of {len(ct)} conntrack entries "
          "kept; every pinned map id the same")
    return {"took": took, "hooks": hooks, "samples": samples}


@pytest.mark.timeout(600)       # three agents compiling at once: 130-210 s on a loaded 2-CPU VM
def test_upgrade_replaces_tc_and_xdp_programs_atomically_and_keeps_the_maps(native, load_np,
                                                                           tmp_path):
    """An upgrade as the lab does one: `datapath lab up --set bpf.monitorInterval=7` (a -D
    constant, MONITOR_INTERVAL) restarts every agent with programs compiled anew, which replace
    the old ones in place (tc replace on the same prio/handle, one IFLA_XDP request). On every
    hook of every node the program changes (new id, new tag) and no sample sees a hook empty;
    the pinned maps keep their ids, conntrack entries survive, and the load loses nothing.
    No rollback (a second upgrade the same way, some 60-150 s of compiling on three nodes): this
    is the last test of the last module on the `native` lab (conftest takes it down next), so
    the setting it leaves behind reaches no other test; the lab is still checked healthy."""
    with Load(native, tmp_path) as load:
        up = _upgrade(native, tmp_path, "bpf.monitorInterval=7")
        for n in NODE_IPS:                        # the agents run the new setting
            assert native.client(n).get("/v1/status")["hubble"]["monitorInterval"] == 7
        time.sleep(1)
        load.stop()
    load.figures("upgrade", upgrade=f"{up['took']:.1f}s", hooks_replaced=up["hooks"],
                 hook_samples=up["samples"], absent=0)
    assert set(_agents_running(native).values()) == {"running"}
    load.assert_clean()
