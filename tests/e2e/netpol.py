"""The NetworkPolicy truth-table model for the lab (after the upstream Kubernetes netpol e2e
suite, written from its description and the Kubernetes documentation): namespaces x, y, z
labelled ns=<name>; pods a, b, c in each labelled pod=<name>, a on k8s-ctr, b on k8s-w1, c on
k8s-w2; every pod serves TCP and UDP on 80 and 81 (named ports serve-80-tcp, serve-81-tcp,
serve-80-udp, serve-81-udp) answering with its "ns/name", plus a TCP echo on 8080 for
long-lived flows.

`PolicyLab` binds the model to a running lab: it writes policies and label changes into the
lab's manifests directory atomically (a temporary name, then rename), probes every pair from
inside the source pods (one process per source pod, its probes concurrent, each bounded by a
short timeout) and compares the observed matrix with a `Reachability`, polling until they match
or a timeout runs out; on a mismatch it raises with a readable matrix diff and what the agents
say (log lines, `datapath bpf policy get` of the endpoints involved).

Besides the model pods, a matrix may name the seed pods ("curl-pod", "webpod-N": whoami, asked
with an HTTP request), the webpod ClusterIP ("svc:webpod"), ext's two addresses ("ext" is
203.0.113.10, "ext2" 203.0.113.11, answering with that name) and, as sources, the nodes.

Self pairs (a pod to its own IP) never leave the pod (the kernel's local route), so they are
always expected reachable. NETPOL_TRACE=1 prints every probe round (with pytest -s).
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from datapath import netns

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
NODE_OF = {"a": "k8s-ctr", "b": "k8s-w1", "c": "k8s-w2"}
NODES = ("k8s-ctr", "k8s-w1", "k8s-w2")
ALL = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES)
TCP80, TCP81, UDP80, UDP81 = (80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")
PORTS = (TCP80, TCP81, UDP80, UDP81)
ECHO_PORT = 8080
EXT = "203.0.113.10"            # the lab's external host
EXT2 = "203.0.113.11"           # a second address the fixture gives it
EXT_NAMES = {"ext": EXT, "ext2": EXT2}
TRACE = bool(os.environ.get("NETPOL_TRACE"))   # print every probe round (pytest -s)

# The pod command: TCP and UDP on 80 and 81 answering with the pod's ns/name, and a line echo
# on 8080 (one thread per connection) for the long-lived-flow tests.
SERVER = r"""
import os, socket, threading
name = (os.environ["POD_NAMESPACE"] + "/" + os.environ["POD_NAME"]).encode()
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(512)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(name)
        except OSError:
            pass
        c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        _, addr = s.recvfrom(2048)
        try:
            s.sendto(name, addr)
        except OSError:
            pass
def echo_conn(c):
    try:
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
def echo(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo_conn, args=(c,), daemon=True).start()
ts = [threading.Thread(target=f, args=(p,), daemon=True)
      for f, p in ((tcp, 80), (tcp, 81), (udp, 80), (udp, 81), (echo, 8080))]
[t.start() for t in ts]
[t.join() for t in ts]
"""

# ext's server: TCP 80 on every address, answering "ext" or "ext2" by the address reached.
EXT_SERVER = r"""
import socket
names = {"%s": b"ext", "%s": b"ext2"}
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(512)
while True:
    c, _ = s.accept()
    try:
        c.sendall(names.get(c.getsockname()[0], b"?"))
    except OSError:
        pass
    c.close()
""" % (EXT, EXT2)

# One source's probes, all concurrent: argv[1] is a JSON list of [key, ip, port, proto,
# payload] (payload: what a TCP probe sends first, "" for nothing: our servers speak first,
# whoami needs a request), argv[2] the timeout in seconds. A TCP probe reads until the server
# closes; a UDP probe sends up to three datagrams within the timeout. Prints
# {key: what came back, or "error: ..."}.
PROBE = r"""
import json, socket, sys, threading, time
jobs, T = json.loads(sys.argv[1]), float(sys.argv[2])
out = {}
def one(key, ip, port, proto, payload):
    try:
        if proto == "TCP":
            s = socket.create_connection((ip, port), timeout=T)
            s.settimeout(T)
            if payload:
                s.sendall(payload.encode())
            data = b""
            while len(data) < 4096:
                d = s.recv(4096)
                if not d:
                    break
                data += d
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(T / 3)
            data, deadline = b"", time.time() + T
            while not data and time.time() < deadline:
                s.sendto(b"probe", (ip, port))
                try:
                    data = s.recv(256)
                except socket.timeout:
                    pass
            if not data:
                raise socket.timeout("no answer")
        s.close()
        out[key] = data.decode(errors="replace")
    except Exception as e:
        out[key] = "error: %s %s" % (type(e).__name__, e)
threads = [threading.Thread(target=one, args=j) for j in jobs]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
"""


# ---------------------------------------------------------------- manifests

def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so the agent never reads half a file (the temporary name does not end
    in .yaml, so the agent ignores it)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.rename(tmp, path)


def namespace_manifest(ns: str, labels: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": dict(labels)}}


def pod_manifest(ns: str, pod: str, labels: dict[str, str]) -> dict:
    ports = [{"name": f"serve-{p}-{proto.lower()}", "containerPort": p, "protocol": proto}
             for p, proto in PORTS]
    ports.append({"name": "echo", "containerPort": ECHO_PORT, "protocol": "TCP"})
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": ns, "labels": dict(labels)},
            "spec": {"nodeName": NODE_OF[pod],
                     "containers": [{"name": "cont", "image": "agnhost",
                                     "command": ["python3", "-c", SERVER], "ports": ports}]}}


def write_model(mdir: Path) -> None:
    """Namespaces x, y, z and their pods into a manifests directory."""
    for ns in NAMESPACES:
        write_atomic(mdir / f"ns-{ns}.yaml", yaml.safe_dump(namespace_manifest(ns, {"ns": ns})))
        for p in POD_NAMES:
            write_atomic(mdir / f"pod-{ns}-{p}.yaml",
                         yaml.safe_dump(pod_manifest(ns, p, {"pod": p})))


def sel(**labels) -> dict:
    """A matchLabels selector (keys with dots or slashes: pass a dict to `sel_of`)."""
    return {"matchLabels": labels}


def sel_of(labels: dict) -> dict:
    return {"matchLabels": dict(labels)}


def expr(key: str, op: str, *values: str) -> dict:
    e = {"key": key, "operator": op}
    if values:
        e["values"] = list(values)
    return e


def netpol(name: str, ns: str, pod_selector: dict | None = None, ingress: list | None = None,
           egress: list | None = None, types: list[str] | None = None) -> dict:
    """A NetworkPolicy; a section given as None is left out of the spec."""
    spec: dict = {"podSelector": pod_selector if pod_selector is not None else {}}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if types is not None:
        spec["policyTypes"] = types
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def cnp(name: str, ns: str, spec: dict | None = None, specs: list | None = None) -> dict:
    body = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}}
    if spec is not None:
        body["spec"] = spec
    if specs is not None:
        body["specs"] = specs
    return body


def ccnp(name: str, spec: dict) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def file_name(obj: dict) -> str:
    md = obj["metadata"]
    ns = md.get("namespace", "cluster")
    return f"policy-{obj['kind'].lower()}-{ns}-{md['name']}.yaml"


# ---------------------------------------------------------------- expectations

@dataclass
class Reachability:
    """The expected matrix for one port/protocol: sources x targets -> reachable.

    Patterns are fnmatch globs over "ns/pod" names ("x/*", "*/b", "*"); later calls override
    earlier ones. A source reaching itself is always expected (loopback never leaves the pod).
    """
    port: int = 80
    proto: str = "TCP"
    default: bool = True
    sources: tuple[str, ...] = ALL
    targets: tuple[str, ...] = ALL
    cells: dict = field(default_factory=dict)

    def __post_init__(self):
        for s in self.sources:
            for t in self.targets:
                self.cells[(s, t)] = self.default

    def set(self, src: str, dst: str, value: bool) -> "Reachability":
        for s in self.sources:
            for t in self.targets:
                if fnmatch.fnmatchcase(s, src) and fnmatch.fnmatchcase(t, dst):
                    self.cells[(s, t)] = value
        return self

    def allow(self, src: str, dst: str) -> "Reachability":
        return self.set(src, dst, True)

    def deny(self, src: str, dst: str) -> "Reachability":
        return self.set(src, dst, False)

    def expected(self, s: str, t: str) -> bool:
        return True if s == t else self.cells[(s, t)]

    @property
    def label(self) -> str:
        return f"{self.proto}/{self.port}"


def R(port_proto=TCP80, default=True, **kw) -> Reachability:
    return Reachability(port=port_proto[0], proto=port_proto[1], default=default, **kw)


HTTP_GET = "GET / HTTP/1.0\r\n\r\n"


def is_whoami(target: str) -> bool:
    """The seed lab's whoami servers (webpod-N) and the webpod service answer HTTP."""
    return target.startswith("webpod") or target.startswith("svc:")


def answered(target: str, got: str) -> bool:
    """Whether `got` is the answer of `target`: a model pod says its ns/name, ext its name, a
    whoami pod (or the service in front of them) its Hostname."""
    if target.startswith("svc:"):
        return "Hostname: webpod-" in got
    if is_whoami(target):
        return f"Hostname: {target}\r\n" in got or f"Hostname: {target}\n" in got
    return got == target


def brief(got: str) -> str:
    """An answer in a few words: the Hostname line of an HTTP answer, else the text."""
    m = re.search(r"Hostname: (\S+)", got)
    return f"HTTP from {m.group(1)}" if m else repr(got[:60] or "nothing")


def render(reach: Reachability, observed: dict) -> str:
    """Expected and observed side by side ('.' reachable, 'X' blocked), wrong cells marked '!',
    then the wrong cells one per line with what came back."""
    w = max(len(t) for t in reach.targets) + 2
    sw = max(len(s) for s in reach.sources) + 1
    head = " " * sw + "".join(f"{t:>{w - 1}} " for t in reach.targets)
    lines = [f"{reach.label + ': expected':<{len(head)}}   | observed ('!' = wrong)",
             head + "   | " + head]
    wrong = []
    for s in reach.sources:
        exp_row, obs_row = f"{s:<{sw}}", f"{s:<{sw}}"
        for t in reach.targets:
            e = reach.expected(s, t)
            got = observed.get((s, t), "")
            o = answered(t, got)
            exp_row += f"{('.' if e else 'X') + ' ':>{w}}"
            obs_row += f"{('.' if o else 'X') + ('!' if o != e else ' '):>{w}}"
            if o != e:
                wrong.append(f"  {s} -> {t} {reach.label}: expected "
                             f"{'reachable' if e else 'blocked'}, got {brief(got)}")
        lines.append(exp_row + "   | " + obs_row)
    return "\n".join(lines + wrong)


def mismatches(reach: Reachability, observed: dict) -> list[tuple[str, str]]:
    return [(s, t) for s in reach.sources for t in reach.targets
            if answered(t, observed.get((s, t), "")) != reach.expected(s, t)]


# ---------------------------------------------------------------- the lab side

class PolicyLab:
    """The model on a running lab (a tests/e2e/conftest.py LabHandle)."""

    def __init__(self, handle, datapath_bin: list[str]):
        self.h = handle
        self.dir: Path = handle.manifests
        self.bin = datapath_bin
        self.written: set[Path] = set()
        self.originals: dict[Path, str] = {}

    # -- manifests --
    def apply(self, *objs: dict) -> None:
        for obj in objs:
            path = self.dir / file_name(obj)
            write_atomic(path, yaml.safe_dump(obj, sort_keys=False))
            self.written.add(path)

    def write_raw(self, name: str, text: str) -> Path:
        path = self.dir / name
        write_atomic(path, text)
        self.written.add(path)
        return path

    def delete(self, *objs: dict | Path) -> None:
        for obj in objs:
            path = obj if isinstance(obj, Path) else self.dir / file_name(obj)
            path.unlink(missing_ok=True)
            self.written.discard(path)

    def _rewrite(self, path: Path, mutate) -> None:
        text = path.read_text()
        self.originals.setdefault(path, text)
        doc = yaml.safe_load(text)
        mutate(doc)
        write_atomic(path, yaml.safe_dump(doc, sort_keys=False))

    def set_namespace_labels(self, ns: str, labels: dict[str, str]) -> None:
        self._rewrite(self.dir / f"ns-{ns}.yaml",
                      lambda d: d["metadata"].__setitem__("labels", dict(labels)))

    def set_pod_labels(self, key: str, labels: dict[str, str]) -> None:
        ns, pod = key.split("/")
        path = self.dir / (f"pod-{ns}-{pod}.yaml" if ns != "default" else f"{pod}.yaml")
        self._rewrite(path, lambda d: d["metadata"].__setitem__("labels", dict(labels)))

    def reset(self) -> None:
        """Remove every policy written and restore every rewritten file."""
        for path in list(self.written):
            path.unlink(missing_ok=True)
        self.written.clear()
        for path, text in self.originals.items():
            write_atomic(path, text)
        self.originals.clear()

    # -- addresses --
    def ip(self, target: str) -> str:
        if target in EXT_NAMES:
            return EXT_NAMES[target]
        if target.startswith("svc:"):
            return self.service_vip(target[4:])
        key = target if "/" in target else f"default/{target}"
        return self.h.lab.load()["pods"][key]["ip"]

    def service_vip(self, name: str, ns: str = "default") -> str:
        for s in self.h.client().get("/v1/service"):
            if s["service"] == f"{ns}/{name}":
                return s["frontend"].split(":")[0]
        raise AssertionError(f"no service {ns}/{name}")

    # -- probing --
    def probe(self, sources, targets, ports, timeout: float = 1.0) -> dict:
        """{(port, proto): {(src, dst): answer}} from one concurrent round."""
        ips = {t: self.ip(t) for t in targets}
        procs = {}
        for s in sources:
            jobs = [[f"{t}|{p}|{pr}", ips[t], p, pr, HTTP_GET if is_whoami(t) else ""]
                    for t in targets for p, pr in ports]
            procs[s] = subprocess.Popen(
                netns.cmd(self.h.ns(s), sys.executable, "-S", "-c", PROBE, json.dumps(jobs),
                          str(timeout)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out: dict = {pp: {} for pp in ports}
        for s, p in procs.items():
            try:
                so, se = p.communicate(timeout=timeout * 3 + 20)
            except subprocess.TimeoutExpired:
                p.kill()
                so, se = p.communicate()
            try:
                res = json.loads(so)
            except ValueError:
                res = {}
                for t in targets:
                    for pp in ports:
                        res[f"{t}|{pp[0]}|{pp[1]}"] = f"error: probe failed: {se.strip()[-200:]}"
            for k, v in res.items():
                t, port, proto = k.split("|")
                out[(int(port), proto)][(s, t)] = v
        return out

    def expect(self, *reaches: Reachability, timeout: float = 20, probe_timeout: float = 1.0,
               what: str = "") -> None:
        """Poll until every matrix matches; on timeout raise with the diff and diagnostics."""
        sources = tuple(dict.fromkeys(s for r in reaches for s in r.sources))
        targets = tuple(dict.fromkeys(t for r in reaches for t in r.targets))
        ports = tuple(dict.fromkeys((r.port, r.proto) for r in reaches))
        start = time.time()
        deadline = start + timeout
        rounds = 0
        while True:
            rounds += 1
            obs = self.probe(sources, targets, ports, probe_timeout)
            bad = [r for r in reaches if mismatches(r, obs[(r.port, r.proto)])]
            if TRACE:
                print(f"[netpol] {what}: round {rounds} at {time.time() - start:.1f}s: "
                      f"{sum(len(mismatches(r, obs[(r.port, r.proto)])) for r in bad)} wrong",
                      file=sys.stderr)
            if not bad:
                return
            if time.time() >= deadline:
                break
            time.sleep(0.3)
        diff = "\n\n".join(render(r, obs[(r.port, r.proto)]) for r in bad)
        pods = sorted({p for r in bad for s, t in mismatches(r, obs[(r.port, r.proto)])
                       for p in (s, t) if p not in EXT_NAMES and p not in NODES
                       and not p.startswith("svc:")})
        raise AssertionError(f"{what or 'reachability'}: matrix still wrong after {timeout:.0f}s "
                             f"({rounds} rounds)\n{diff}\n\n{self.diagnostics(pods)}")

    # -- agent side --
    def socket(self, node: str) -> str:
        return self.h.node(node)["socket"]

    def cli(self, node: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """The public CLI against a node's agent (as `datapath lab exec NODE -- datapath ...`)."""
        p = subprocess.run([*self.bin, "--socket", self.socket(node), *args],
                           capture_output=True, text=True, timeout=30)
        if check:
            assert p.returncode == 0, f"datapath {' '.join(args)} on {node}: {p.stdout}{p.stderr}"
        return p

    def node_of(self, key: str) -> str:
        ns, pod = key.split("/") if "/" in key else ("default", key)
        return self.h.lab.load()["pods"][f"{ns}/{pod}"]["node"]

    def endpoint(self, key: str) -> dict:
        ns, pod = key.split("/") if "/" in key else ("default", key)
        for ep in self.h.client(self.node_of(key)).get("/v1/endpoint"):
            if ep.get("namespace", "default") == ns and ep["pod"] == pod:
                return ep
        raise AssertionError(f"no endpoint for {key}")

    def agent_log(self, node: str) -> str:
        return Path(self.h.node(node)["log"]).read_text(errors="replace")

    def diagnostics(self, pods: list[str], log_lines: int = 15) -> str:
        out = []
        for key in pods[:4]:
            try:
                ep = self.endpoint(key)
                node = self.node_of(key)
                p = self.cli(node, "bpf", "policy", "get", str(ep["id"]))
                out.append(f"--- {key} (endpoint {ep['id']} on {node}, identity "
                           f"{ep.get('identity')}): datapath bpf policy get {ep['id']} "
                           f"(rc {p.returncode})\n{(p.stdout + p.stderr).strip()[:3000]}")
            except Exception as e:      # diagnostics must never hide the real failure
                out.append(f"--- {key}: no diagnostics ({e})")
        for node in NODES:
            try:
                lines = [ln for ln in self.agent_log(node).splitlines()
                         if re.search(r"(?<!k8s\.)polic", ln, re.I) or " ERROR " in ln
                         or " WARNING " in ln]
                out.append(f"--- {node} agent log (policy/error lines, last {log_lines}):\n"
                           + "\n".join(lines[-log_lines:]))
            except OSError as e:
                out.append(f"--- {node} agent log unreadable: {e}")
        return "\n".join(out)
