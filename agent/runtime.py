"""A minimal container runtime for pods on one node: what kubelet and a container runtime do for
networking, and no more. A pod is a network namespace wired by `datapath-cni` (called exactly as
a runtime calls a CNI plugin), its first container's command running inside it, and readiness
meaning every declared TCP port listens. The lab uses it per node; `datapath runtime sync` uses it
on a real host (the Vagrant VMs).

API:
    PodRuntime(node_netns, socket, log_dir, netns_prefix, salt)
        ensure(pod, have) -> record      create or repair the pod (idempotent)
        remove(record, cni_del=True)     stop it, CNI DEL, delete its namespace
    proc_ref / _alive / _kill            processes referred to as 'pid:starttime' (PID reuse safe)
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from datapath import netns
from datapath.errors import LabError


def _bin(name: str) -> list[str]:
    """A console script of ours next to this interpreter, else the module behind it."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return [str(cand)]
    mod = {"datapath": "agent.cli", "datapath-cni": "agent.cni"}[name]
    return [sys.executable, "-m", mod]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of pid (field 22 of /proc/pid/stat), None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def proc_ref(pid: int) -> str:
    """A reference to a process that a reused PID cannot match: 'pid:starttime'."""
    return f"{pid}:{_start_time(pid)}"


def _alive(ref: str | int | None) -> bool:
    if not ref:
        return False
    pid, _, started = str(ref).partition(":")
    now = _start_time(int(pid))
    return now is not None and (not started or now == started)


def _pid(ref: str | int) -> int:
    return int(str(ref).partition(":")[0])


def _kill(ref: str | int | None, timeout: float = 10) -> None:
    if not _alive(ref):
        return
    pid = _pid(ref)
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and _alive(ref):
        time.sleep(0.1)
    if _alive(ref):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    _reap(pid)


def _reap(pid: int, timeout: float = 5) -> None:
    """Collect the exit status when pid is our own child, so no zombie is left behind."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return              # not our child: its parent (or init) reaps it
        time.sleep(0.05)


def wait_http_ok(ns: str, url: str, ref: str, timeout: float = 30) -> bool:
    """Poll url from inside ns until it answers 2xx (True), or the process `ref` is gone or
    the time is up (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if netns.run(ns, "curl", "-sf", "-m", "2", url, check=False).returncode == 0:
            return True
        if not _alive(ref):
            return False
        time.sleep(0.2)
    return False


class PodRuntime:
    def __init__(self, node_netns: str | None, socket: str, log_dir: Path, netns_prefix: str = "",
                 salt: str = "default"):
        self.node_netns, self.socket = node_netns, socket
        self.log_dir, self.prefix, self.salt = Path(log_dir), netns_prefix, salt

    def pod_ns(self, namespace: str, pod: str) -> str:
        return f"{self.prefix}pod-{namespace}-{pod}"

    def container_id(self, namespace: str, pod: str) -> str:
        return hashlib.sha256(f"{self.salt}/{namespace}/{pod}".encode()).hexdigest()

    def cni(self, command: str, cid: str, pod_netns: str, namespace: str, pod: str) -> dict | None:
        env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_NETNS": netns.path(pod_netns), "CNI_IFNAME": "eth0",
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}",
               "CNI_PATH": str(Path(sys.executable).parent)}
        conf = json.dumps({"cniVersion": "1.0.0", "name": "datapath", "type": "datapath-cni",
                           "apiSocket": self.socket})
        p = subprocess.run(netns.cmd(self.node_netns, *_bin("datapath-cni")), input=conf,
                           capture_output=True, text=True, env=env, timeout=60)
        out = json.loads(p.stdout) if p.stdout.strip() else None
        if p.returncode != 0:
            raise LabError(f"CNI {command} for {namespace}/{pod} failed: "
                           f"{(out or {}).get('msg')}: {(out or {}).get('details') or p.stderr}")
        return out

    def ensure(self, pod, have: dict | None) -> dict:
        ns = self.pod_ns(pod.namespace, pod.name)
        cid = self.container_id(pod.namespace, pod.name)
        rec = dict(have or {})
        rec.update({"netns": ns, "container_id": cid,
                    "log": str(self.log_dir / f"pod-{pod.namespace}-{pod.name}.log")})
        self.log_dir.mkdir(parents=True, exist_ok=True)
        netns.add(ns)
        healthy = False
        if rec.get("ip"):
            try:
                self.cni("CHECK", cid, ns, pod.namespace, pod.name)
                healthy = True
            except LabError:
                healthy = False
        if not healthy:
            res = self.cni("ADD", cid, ns, pod.namespace, pod.name)
            rec["ip"] = res["ips"][0]["address"].split("/")[0]
        if not _alive(rec.get("pid")):
            rec["pid"] = self._start(ns, pod, rec["log"])
        try:
            self._wait_ready(ns, pod, rec)
        except LabError:
            _kill(rec["pid"])
            raise
        return rec

    def _wait_ready(self, ns: str, pod, rec: dict, timeout: float = 20) -> None:
        """Readiness: every declared TCP containerPort is listening in the pod's netns."""
        ports = {p.containerPort for c in pod.containers for p in c.ports if p.protocol == "TCP"}
        deadline = time.time() + timeout
        while ports and time.time() < deadline:
            out = netns.run(ns, "ss", "-Htln", check=False).stdout
            listening = {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()
                         if len(line.split()) > 3}
            if ports <= listening:
                return
            if not _alive(rec.get("pid")):
                raise LabError(f"pod {pod.key} exited; see {rec['log']}")
            time.sleep(0.1)
        if ports:
            raise LabError(f"pod {pod.key} not listening on {sorted(ports)} after {timeout}s; "
                           f"see {rec['log']}")

    def _start(self, ns: str, pod, log_path: str) -> str:
        c = pod.containers[0]
        argv = list(c.command) + list(c.args) or ["sleep", "infinity"]
        env = {**os.environ, "HOSTNAME": pod.name, "POD_NAME": pod.name,
               "POD_NAMESPACE": pod.namespace,
               "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        with open(log_path, "ab") as log:
            p = subprocess.Popen(netns.cmd(ns, *argv), stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        return proc_ref(p.pid)

    def remove(self, rec: dict, cni_del: bool = True) -> None:
        _kill(rec.get("pid"))
        if cni_del:
            try:
                self.cni("DEL", rec["container_id"], rec["netns"], "", "")
            except LabError:
                pass
        netns.delete(rec["netns"])


def sync(manifests: str, socket: str, state_path: str, node: str | None = None) -> list[str]:
    """`datapath runtime sync`: make this host's pods match the manifests (host netns)."""
    from .api import Client
    from .manifests import load_manifests
    mset = load_manifests(manifests)
    node = node or Client(socket).get("/v1/status")["nodeName"]
    path = Path(state_path)
    state = json.loads(path.read_text()) if path.exists() else {}
    rt = PodRuntime(None, socket, path.parent / "pods", "", salt=node)
    wanted = {p.key: p for p in mset.pods_on(node)}
    out = []
    for key in sorted(set(state) - set(wanted)):
        rt.remove(state.pop(key))
        out.append(f"pod {key} removed")
    for key, pod in sorted(wanted.items()):
        state[key] = rt.ensure(pod, state.get(key))
        out.append(f"pod {key} {state[key]['ip']}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=1, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1, sort_keys=True))
    return out or [f"no pods for node {node}"]
