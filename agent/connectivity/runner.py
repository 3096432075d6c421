"""Running the connectivity checks on a lab: deploy the test's objects (resources.py) into the
lab's manifests directory and let the lab create the pods, wait until every agent programs the
services, run each check (agent/connectivity/checks.py) from its source's namespace with curl
or ping, apply and remove the policy phases, then remove what it deployed.

Owns: the run (its order, retries and timeouts), each check's outcome, the flows shown for a
failure (every node's recent flows of the check's source address, from the agents' flow API),
and the external host's echo server for pod-to-world.

A check passes as soon as it sees what it expects (an answer from one of its backends, or no
answer for a drop) within its deadline; policy takes effect asynchronously, so a check retries.

API:
    ConnectivityTest(lab, pattern=None, keep=False, deadline=10.0, progress=None,
                     on_result=None).run() -> [Result]     progress(str), on_result(Result)
    ConnectivityTest(...).deployed()         context manager: the test's objects up (yields Env)
    Result(check, status PASS|FAIL|SKIP, detail, flows)
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from datapath import netns
from datapath.errors import DatapathError, LabError

from ..api import Client
from ..monitor.format import compact
from ..runtime import _bin, _kill, proc_ref
from . import resources as res
from .checks import PHASES, WORLD_PORT, Check, Env, Frontends, plan

# what curl's exit codes mean to someone reading a failure
_CURL = {6: "could not resolve", 7: "connection refused", 28: "timed out",
         52: "empty reply", 56: "connection reset"}
ANSWER_TIMEOUT, DROP_TIMEOUT = 3, 1     # seconds one attempt waits
READY_TIMEOUT = 90.0                    # deploying: pods, services on every agent


@dataclass
class Result:
    check: Check
    status: str                 # PASS | FAIL | SKIP
    detail: str
    flows: list[str] = field(default_factory=list)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ConnectivityTest:
    def __init__(self, lab, pattern: str | None = None, keep: bool = False,
                 deadline: float = 10.0, progress=None, on_result=None):
        self.lab, self.keep, self.deadline = lab, keep, deadline
        self.pattern = re.compile(pattern) if pattern else None
        self.log = progress or (lambda _msg: None)
        self.on_result = on_result or (lambda _r: None)
        self.st: dict = {}

    # ---- the run ----
    def run(self) -> list[Result]:
        with self.deployed() as env:
            return self._checks(env)

    @contextlib.contextmanager
    def deployed(self):
        """The test's objects in the lab, their pods created and services programmed on every
        agent (yields the Env); removed afterwards unless keep, policies always."""
        self.st = self.lab.load()
        if not self.st.get("nodes"):
            raise LabError(f"lab {self.lab.name} is not up: run `datapath lab up` first")
        mdir = Path(self.st["manifests"])
        try:
            try:
                self._deploy(mdir)
            except OSError as e:        # the manifests directory: one line, naming it
                raise LabError(f"connectivity test: {mdir}: {e.strerror or e}") from e
            yield self._env()
        finally:
            try:
                (mdir / res.POLICY_FILE).unlink(missing_ok=True)
                if not self.keep:
                    (mdir / res.FILE).unlink(missing_ok=True)
                    self.lab.up()       # the lab removes the pods no manifest names any more
            except (OSError, DatapathError) as e:
                self.log(f"cleaning up the test's objects failed: {e} (run `lab up` again)")

    def _checks(self, env: Env) -> list[Result]:
        mdir = Path(self.st["manifests"])
        server = None
        try:
            checks = [c for c in plan(env) if not self.pattern or self.pattern.search(c.name)]
            if not checks:
                raise LabError(f"no check matches {self.pattern.pattern!r}")
            if any(c.name == "pod-to-world" and not c.skip for c in checks):
                server = self._world_server(env)
            results = []
            for phase in PHASES:
                todo = [c for c in checks if c.phase == phase]
                if not todo:
                    continue
                if phase != "none":
                    self._policy(mdir, phase)
                for c in todo:
                    results.append(self._run(c))
                    self.on_result(results[-1])
            return results
        finally:
            if server is not None:
                _kill(server)

    def _deploy(self, mdir: Path) -> None:
        """Write the test's objects and let the lab create its pods; a deployment already in
        place (--keep) is used as it is, as `cilium connectivity test` reuses its own (so a
        backend stopped on purpose stays stopped)."""
        text = res.objects(list(self.st["nodes"]))
        path = mdir / res.FILE
        pods = res.pod_keys(len(self.st["nodes"]))
        if path.exists() and path.read_text() == text and pods <= set(self.st["pods"]):
            self.log(f"using the test's pods and services already in {res.NS}")
            return
        self.log(f"deploying the test's pods and services in {res.NS} and {res.PEER_NS}")
        _write(path, text)
        self.lab.up()
        self.st = self.lab.load()

    def _env(self) -> Env:
        nodes = [(n, r["ip"]) for n, r in self.st["nodes"].items()]
        hosts = {n: r["ip"] for n, r in self.st.get("others", {}).items()
                 if r.get("role") == "host" and r.get("ip")}
        pods = {k: r.get("ip") for k, r in self.st["pods"].items() if k.split("/")[0]
                in (res.NS, res.PEER_NS)}
        want = {res.SERVICES["cluster-ip"]: ("ClusterIP",), res.SERVICES["load-balancer"]:
                ("LoadBalancer",)}
        if len(nodes) > 1:
            want[res.SERVICES["node-port"]] = ("ClusterIP", "NodePort")
        deadline = time.time() + READY_TIMEOUT
        while True:
            views = [self._services(r["socket"]) for r in self.st["nodes"].values()]
            missing = [f"{key} ({kind}) on {node}" for node, view in zip(self.st["nodes"], views)
                       for key, kinds in want.items() for kind in kinds
                       if not any(s["type"] == kind and s["backends"]
                                  for s in view.get(key, []))]
            if not missing:
                break
            if time.time() > deadline:
                raise LabError("the test's services were not programmed within "
                               f"{READY_TIMEOUT:.0f} s: {', '.join(missing[:4])}")
            time.sleep(0.5)
        services = {}
        for key, rows in views[0].items():
            def addr(kind):
                row = next((s for s in rows if s["type"] == kind), None)
                return row["frontend"].split("/")[0].rsplit(":", 1) if row else (None, None)
            cip = addr("ClusterIP")[0]
            np_port = addr("NodePort")[1]
            lb_ip = addr("LoadBalancer")[0]
            services[key] = Frontends(cip, int(np_port) if np_port else None, lb_ip)
        return Env(nodes, pods, services, hosts)

    @staticmethod
    def _services(socket: str) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for s in Client(socket, timeout=10).get("/v1/service"):
            out.setdefault(s["service"], []).append(s)
        return out

    def _world_server(self, env: Env):
        name, ip = sorted(env.hosts.items())[0]
        ns = self.st["others"][name]["netns"]
        p = subprocess.Popen(netns.cmd(ns, *_bin("datapath"), "whoami", "--port",
                                       str(WORLD_PORT)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "HOSTNAME": name})
        ref = proc_ref(p.pid)
        deadline = time.time() + 10
        while time.time() < deadline:
            if netns.run(ns, "curl", "-s", "-m", "1", f"http://{ip}:{WORLD_PORT}/api",
                         check=False).returncode == 0:
                return ref
            time.sleep(0.1)
        _kill(ref)
        raise LabError(f"the echo server on {name} did not start")

    def _policy(self, mdir: Path, phase: str) -> None:
        """Write the phase's policies and wait until every agent has them in force."""
        self.log(f"policy phase {phase}: applying {', '.join(res.POLICY_NAMES[phase])}")
        _write(mdir / res.POLICY_FILE, res.DENY_ALL if phase == "deny-all" else
               res.ALLOW_FROM_NS)
        deadline = time.time() + READY_TIMEOUT
        for rec in self.st["nodes"].values():
            while True:
                doc = json.dumps(Client(rec["socket"], timeout=10).get("/v1/policy"))
                if all(f'"{n}"' in doc for n in res.POLICY_NAMES[phase]) and \
                        (phase != "deny-all" or
                         f'"connectivity-allow-from-{res.NS}"' not in doc):
                    break
                if time.time() > deadline:
                    raise LabError(f"the {phase} policies did not reach {rec['netns']}")
                time.sleep(0.2)

    # ---- one check ----
    def _source(self, c: Check) -> tuple[str, str]:
        if c.src in self.st["pods"]:
            rec = self.st["pods"][c.src]
            return rec["netns"], rec["ip"]
        rec = self.st["others"][c.src]
        return rec["netns"], rec["ip"]

    def _attempt(self, c: Check, ns: str) -> tuple[str, str]:
        """(outcome, what happened): outcome "answer", "timeout" (no answer at all, as a drop
        gives) or "error" (refused, reset, ...: the packet got somewhere)."""
        t = ANSWER_TIMEOUT if c.expect == "answer" else DROP_TIMEOUT
        if c.proto == "icmp":
            p = netns.run(ns, "ping", "-c", "1", "-W", str(t), c.dst, check=False,
                          timeout=t + 10)
            if p.returncode == 0:
                return "answer", "ICMP echo answered"
            return ("timeout", f"no ICMP echo reply within {t} s") if p.returncode == 1 else \
                ("error", f"ping failed ({p.stderr.strip() or p.returncode})")
        p = netns.run(ns, "curl", "-s", "-m", str(t), f"http://{c.dst}/api", check=False,
                      timeout=t + 10)
        if p.returncode == 28:
            return "timeout", f"timed out (curl exit 28, after {t} s)"
        if p.returncode:
            return "error", f"{_CURL.get(p.returncode, 'failed')} (curl exit {p.returncode})"
        try:
            host = json.loads(p.stdout)["hostname"]
        except (ValueError, KeyError, TypeError):
            host = "?"
        return "answer", f"answered by {host}"

    def _run(self, c: Check) -> Result:
        if c.skip:
            return Result(c, "SKIP", c.skip)
        ns, src_ip = self._source(c)
        started = time.time()
        if not src_ip or c.dst.split(":")[0] in ("", "None"):
            return Result(c, "FAIL", f"no address for {c.src if not src_ip else c.what}")
        deadline = started + self.deadline
        while True:
            outcome, what = self._attempt(c, ns)
            if c.expect == "answer":
                ok = outcome == "answer" and (not c.backends or
                                              what.removeprefix("answered by ") in c.backends)
                if outcome == "answer" and not ok:
                    what += f", expected {' or '.join(c.backends)}"
            elif outcome != "timeout":
                ok, what = False, f"{what}: expected a policy drop"
            else:       # no answer: a drop only when an agent saw the policy deny it
                seen = self._policy_drop(src_ip, time.time() - started)
                ok = bool(seen)
                what = f"dropped as expected: {what}; {seen}" if ok else \
                    f"{what}, but no agent reported a policy drop"
            if ok or time.time() >= deadline:
                break
            time.sleep(0.2)
        if ok:
            return Result(c, "PASS", what)
        return Result(c, "FAIL", what, self._flows(src_ip, time.time() - started))

    def _node_flows(self, ip: str, age: float, query: str = ""):
        """(node, flow) for every node's flows of ip's packets in the last `age` seconds (none
        from a node whose agent does not answer)."""
        for node, rec in self.st["nodes"].items():
            try:
                doc = Client(rec["socket"], timeout=5).get(
                    f"/v1/flows?ip={ip}&since={int(age) + 2}s{query}")
            except DatapathError:
                continue
            for f in doc.get("flows") or []:
                yield node, f

    def _policy_drop(self, ip: str, age: float) -> str | None:
        """"POLICY_DENIED on <node>" when a node reported a policy drop of ip's packets since."""
        return next((f"POLICY_DENIED on {node}" for node, f in
                     self._node_flows(ip, age, "&verdict=DROPPED")
                     if f.get("drop_reason_desc") == "POLICY_DENIED"), None)

    def _flows(self, ip: str, age: float) -> list[str]:
        """Every node's last 10 flows of the source address since the check began, as compact
        lines (none when the agents serve no flows)."""
        per_node: dict[str, list[str]] = {}
        for node, f in self._node_flows(ip, age):
            per_node.setdefault(node, []).append(f"{node}: {compact(f)}")
        return [line for lines in per_node.values() for line in lines[-10:]]

