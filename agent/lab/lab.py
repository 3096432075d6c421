"""The lab (`datapath lab`, agent/lab/cli.py): a Kubernetes-like cluster built from network
namespaces on one machine.

A topology (agent/lab/topology.py; default examples/topologies/default.yaml) names segments, nodes,
a router and external hosts. One namespace holds a bridge per segment; every node, the router
and each host is a namespace joined to its segment by a veth (`eth1` in nodes and hosts). etcd
runs on the topology's etcd node; each node runs its own agent (own config, state dir, API
socket, metrics on <node IP>:9962) with maps pinned in a bpffs instance mounted for this lab
only. Every Pod scheduled on a node gets a namespace created through `datapath-cni`, called as a
container runtime calls it, and its command runs inside that namespace.

Names: the default lab uses the seed names (node namespace `k8s-ctr`); `--name X` prefixes every
namespace with `X-` so tests can run labs side by side. `up` is idempotent; `down` leaves no
namespace, link, pin, mount or process behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from datapath import netns
from datapath.errors import DatapathError, LabError

from ..api import Client
from ..config import RESTART_KEYS, changed_keys, parse_config
from ..manifests import load_manifests
from ..runtime import PodRuntime, _alive, _bin, _kill, _pid, _reap, proc_ref, wait_http_ok
from . import prometheus as promlab
from .topology import Topology, load_topology
from .values import check_lab_owned, flatten, merge

LAB_ROOT = Path(os.environ.get("DATAPATH_LAB_ROOT", "/var/run/datapath/lab"))
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lab"
ETCD_PORT = 2379
METRICS_PORT = 9962               # every agent's prometheus.port (lab-owned)
# How long a starting agent may take to answer: a cold start compiles four programs (~15 s of
# CPU each), which takes minutes on a loaded two-CPU machine.
AGENT_START_SECONDS = 600


class Lab:
    def __init__(self, name: str = "default"):
        if not name.replace("-", "").isalnum() or len(name) > 12:
            raise LabError(f"lab name {name!r}: use up to 12 letters, digits or '-'")
        self.name = name
        self.prefix = "" if name == "default" else f"{name}-"
        self.dir = LAB_ROOT / name
        self.state_path = self.dir / "lab.json"
        self.bpffs = self.dir / "bpffs"
        self.segment_ns = f"{self.prefix}lab-net"

    # ---- state ----
    def load(self) -> dict:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"name": self.name, "nodes": {}, "pods": {}, "manifests": None}

    def save(self, st: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    # ---- up ----
    def up(self, manifests: str | None = None, topology: str | None = None,
           routing_mode: str | None = None, values: dict | None = None,
           prometheus: bool = False) -> dict:
        """values: Helm-style agent settings (agent/lab/values.py) merged into the ones kept from
        earlier ups (a None value drops a key), then into every node's agent config. Every
        node's config is validated before anything is built or changed. prometheus: run a
        Prometheus scraping every agent (agent/lab/prometheus.py); once on, later ups keep it."""
        st = self.load()
        kept = st.get("values", st.pop("agentConfig", None) or {})
        if values:
            check_lab_owned(values, "lab values (--set/--values)")
        values = merge(kept, values or {})
        if st.get("topology") and topology and os.path.abspath(topology) != st["topology"]:
            raise LabError(f"lab {self.name} is up with {st['topology']}; run `lab down` first")
        if st.get("routingMode") and routing_mode and routing_mode != st["routingMode"]:
            raise LabError(f"lab {self.name} is up in {st['routingMode']} mode; run `lab down` "
                           "first to change the routing mode")
        topo = load_topology(topology or st.get("topology"),
                             routing_mode or st.get("routingMode"))
        # without --manifests: the lab's own copy of examples/lab, made once it is built
        own = not (manifests or st.get("manifests"))
        manifests = str(self.dir / "manifests") if own else \
            os.path.abspath(manifests or st["manifests"])
        mset = load_manifests(str(EXAMPLES) if own else manifests)   # fail before building
        configs = {node.name: self._node_config(topo, node, manifests, values)
                   for node in topo.nodes}
        for name, cfg in configs.items():     # a bad key or value: refused, naming it
            parse_config(cfg, str(self._config_path(name)))
        st.update({"manifests": manifests, "topology": topo.path,
                   "routingMode": topo.routingMode, "values": values})
        st.setdefault("others", {})
        self.dir.mkdir(parents=True, exist_ok=True)
        if own:
            self._copy_examples(Path(manifests))
        self.bpffs.mkdir(exist_ok=True)
        if not os.path.ismount(self.bpffs):
            subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)], check=True)
        self.save(st)
        self._segments(topo)
        if topo.router:
            st["others"][topo.router] = self._router(topo)
        for h in topo.hosts:
            st["others"][h.name] = self._host(topo, h)
        self.save(st)
        for node in topo.nodes:
            self._node_net(topo, node)
        if topo.etcd:
            st["etcd"] = self._etcd(topo, st.get("etcd"))
            self.save(st)
        spawned = {}
        for node in topo.nodes:     # every agent compiles its programs: start them together
            st["nodes"][node.name], spawned[node.name] = self._node(
                node, configs[node.name], st["nodes"].get(node.name))
            self.save(st)
        for name, proc in spawned.items():
            if proc is not None:
                self._wait_agent(st["nodes"][name], proc)
        wanted = {}
        for node in st["nodes"]:
            for pod in mset.pods_on(node):
                wanted[pod.key] = (node, pod)
        for key in sorted(set(st["pods"]) - set(wanted)):
            self._pod_down(st["pods"].pop(key), st)
            self.save(st)
        for key, (node, pod) in sorted(wanted.items()):
            st["pods"][key] = self._pod(node, pod, st, st["pods"].get(key))
            self.save(st)
        if topo.etcd:
            self._wait_converged(st)
        if prometheus or st.get("prometheus"):
            home = next(n for n in topo.nodes if n.name == (topo.etcd or topo.nodes[0].name))
            st["prometheus"] = promlab.start(
                self.dir, self.node_ns(home.name), home.ip,
                {name: f"{rec['ip']}:{METRICS_PORT}" for name, rec in st["nodes"].items()},
                st.get("prometheus"))
            self.save(st)
        return st

    @staticmethod
    def _copy_examples(own: Path) -> None:
        """Without --manifests: a copy of examples/lab in the lab's directory, the lab's own to
        change (the connectivity test adds its objects there), never the source tree."""
        if not own.exists():
            tmp = own.with_name(f".{own.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(EXAMPLES, tmp)
            os.replace(tmp, own)

    def _wait_converged(self, st: dict, timeout: float = 30) -> None:
        """Every agent knows every node and every other node's pods (through etcd)."""
        per_node = {n: sum(1 for p in st["pods"].values() if p["node"] == n) for n in st["nodes"]}
        total = sum(per_node.values())
        deadline = time.time() + timeout
        lagging = list(st["nodes"])
        while time.time() < deadline:
            lagging = []
            for name, rec in st["nodes"].items():
                try:
                    s = Client(rec["socket"], timeout=5).get("/v1/status")
                except DatapathError:
                    lagging.append(name)
                    continue
                if len(s.get("nodes", [])) != len(st["nodes"]) or \
                        s.get("remoteEndpoints", 0) != total - per_node[name]:
                    lagging.append(name)
            if not lagging:
                return
            time.sleep(0.2)
        raise LabError(f"cluster state did not converge within {timeout}s on "
                       f"{', '.join(lagging)}; see their agent.log")

    def _segments(self, topo: Topology) -> None:
        netns.add(self.segment_ns)
        netns.ip(self.segment_ns, "link", "set", "lo", "up")
        for seg in topo.segments:
            br = f"br-{seg}"[:15]
            if not netns.link_exists(self.segment_ns, br):
                netns.ip(self.segment_ns, "link", "add", br, "type", "bridge")
            netns.ip(self.segment_ns, "link", "set", br, "up")

    def _plug(self, topo: Topology, ns: str, who: str, seg: str, ifname: str, ip: str) -> str:
        """Join namespace `ns` to segment `seg` with interface `ifname` holding `ip`; returns
        the name of the segment side of the veth."""
        netns.add(ns)
        netns.ip(ns, "link", "set", "lo", "up")
        outer = "v" + hashlib.sha256(f"{self.name}/{who}/{seg}".encode()).hexdigest()[:12]
        if netns.link_exists(ns, ifname):
            return outer
        netns.ip(self.segment_ns, "link", "add", outer, "type", "veth", "peer", "name", ifname,
                 "netns", ns)
        netns.ip(self.segment_ns, "link", "set", outer, "master", f"br-{seg}"[:15], "up")
        netns.ip(ns, "addr", "add", f"{ip}/{topo.prefix(seg)}", "dev", ifname)
        # a wire carries complete checksums: without tx checksumming the kernel finishes every
        # checksum before the frame enters the segment, as a NIC would. Otherwise a veth passes
        # CHECKSUM_PARTIAL packets along, and what XDP rewrites and sends on (XDP_TX) would
        # carry only the pseudo-header sum.
        netns.run(ns, "ethtool", "-K", ifname, "tx", "off")
        netns.ip(ns, "link", "set", ifname, "up")
        return outer

    def _xdp_tx_through(self, outer: str) -> None:
        """Run a pass-everything XDP program on the segment side of a node's veth: a veth takes
        the frames its peer sends with XDP_TX (the node's L2 responder) only when it runs XDP
        itself. Loaded once, pinned in the lab's bpffs, attached with iproute2."""
        pin = self.bpffs / "lab_xdp_pass"
        if not pin.exists():
            from datapath import build
            from bcc.libbcc import lib
            fn = build.load(build.compile_program("xdp_pass.c"), "xdp_pass", "xdp")
            if lib.bpf_obj_pin(fn.fd, str(pin).encode()) != 0:
                raise LabError(f"pinning the lab's XDP pass program at {pin} failed")
        netns.ip(self.segment_ns, "-force", "link", "set", "dev", outer, "xdpdrv", "pinned",
                 str(pin))           # -force: replace on a second `up`

    def _router(self, topo: Topology) -> dict:
        ns = f"{self.prefix}{topo.router}"
        for i, (seg, ip) in enumerate(sorted(topo.router_addresses.items()), start=1):
            self._plug(topo, ns, topo.router, seg, f"eth{i}", ip)
        netns.run(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return {"netns": ns, "role": "router", "addresses": topo.router_addresses}

    def _host(self, topo: Topology, h) -> dict:
        ns = f"{self.prefix}{h.name}"
        self._plug(topo, ns, h.name, h.segment, "eth1", h.ip)
        gw = topo.gateway(h.segment)
        if gw:
            netns.ip(ns, "route", "replace", "default", "via", gw)
        return {"netns": ns, "role": "host", "ip": h.ip}

    def _node_net(self, topo: Topology, node) -> None:
        ns = self.node_ns(node.name)
        self._xdp_tx_through(self._plug(topo, ns, node.name, node.segment, "eth1", node.ip))
        netns.run(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        gw = topo.gateway(node.segment)
        if gw:
            netns.ip(ns, "route", "replace", "default", "via", gw)

    def _etcd(self, topo: Topology, have: dict | None) -> dict:
        node = next(n for n in topo.nodes if n.name == topo.etcd)
        rec = dict(have or {})
        rec.update({"node": node.name, "netns": self.node_ns(node.name),
                    "url": f"http://{node.ip}:{ETCD_PORT}", "log": str(self.dir / "etcd.log"),
                    "data": str(self.dir / "etcd")})
        return self._start_etcd(rec)

    def _start_etcd(self, rec: dict) -> dict:
        """Start etcd as its record says unless it runs; wait until it is healthy."""
        ns, url, name = rec.get("netns") or self.node_ns(rec["node"]), rec["url"], rec["node"]
        if not _alive(rec.get("pid")):
            peer = "http://127.0.0.1:2380"
            with open(rec["log"], "ab") as log:
                p = subprocess.Popen(netns.cmd(
                    ns, "etcd", "--name", name, "--data-dir", rec["data"],
                    "--listen-client-urls", f"{url},http://127.0.0.1:{ETCD_PORT}",
                    "--advertise-client-urls", url, "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", f"{name}={peer}"),
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            rec["pid"] = proc_ref(p.pid)
        if wait_http_ok(ns, f"{url}/health", rec["pid"]):
            return rec
        _kill(rec["pid"])
        raise LabError(f"etcd on {name} did not become healthy; see {rec['log']}")

    def _config_path(self, node: str) -> Path:
        return self.dir / node / "config.yaml"

    def _node_config(self, topo: Topology, node, manifests: str, values: dict) -> dict:
        """A node's agent config: what the lab sets, with the user's values merged in."""
        ndir = self.dir / node.name
        cfg = {
            "nodeName": node.name, "devices": ["eth1"],
            "ipam": {"podCIDR": node.podCIDR},
            "routingMode": topo.routingMode, "tunnelProtocol": "vxlan",
            "ipv4NativeRoutingCIDR": "172.20.0.0/16",
            "autoDirectNodeRoutes": True,
            "kubeProxyReplacement": True,
            "bpf": {"root": str(self.bpffs), "masquerade": True},
            "prometheus": {"port": METRICS_PORT},
            "conntrackGCInterval": 10,
            "apiSocket": str(ndir / "datapath.sock"),
            "stateDir": str(ndir / "state"),
            "manifests": manifests,
        }
        if topo.etcd:
            etcd_ip = next(n.ip for n in topo.nodes if n.name == topo.etcd)
            cfg.update({"kvstore": "etcd",
                        "kvstoreOpt": {"etcd.endpoints": f"http://{etcd_ip}:{ETCD_PORT}"},
                        "kvstoreLeaseTTL": topo.kvstoreLeaseTTL,
                        "cluster": {"name": "default"}})
        return merge(cfg, values)

    def _node(self, node, cfg: dict, have: dict | None) -> tuple[dict, subprocess.Popen | None]:
        """A node's config written and its record, its agent started when not running, or
        restarted when a setting it cannot take live changed (returns the new process, to wait
        for with _wait_agent, or None). A running agent takes other changes from its file."""
        name, ns = node.name, self.node_ns(node.name)
        ndir = self.dir / name
        ndir.mkdir(parents=True, exist_ok=True)
        cfg_path = self._config_path(name)
        text = yaml.safe_dump(cfg, sort_keys=False)
        old = cfg_path.read_text() if cfg_path.exists() else None
        rec = dict(have or {})
        if old is not None and old != text and _alive(rec.get("agent_pid")) and \
                self._needs_restart(old, cfg, str(cfg_path)):
            _kill(rec.get("agent_pid"), timeout=30)
        if old != text:
            tmp = cfg_path.with_name(f".{cfg_path.name}.tmp")     # the agent watches the file:
            tmp.write_text(text)                                  # never half of it
            os.replace(tmp, cfg_path)
        rec.update({"netns": ns, "ip": node.ip, "podCIDR": node.podCIDR,
                    "config": str(cfg_path), "socket": cfg["apiSocket"],
                    "log": str(ndir / "agent.log")})
        proc = None
        if not _alive(rec.get("agent_pid")):
            proc = self._spawn_agent(rec)
            rec["agent_pid"] = proc_ref(proc.pid)
        return rec, proc

    @staticmethod
    def _needs_restart(old_text: str, new: dict, path: str) -> bool:
        try:
            old_cfg = parse_config(yaml.safe_load(old_text), path)
        except (DatapathError, yaml.YAMLError):
            return True                 # an unreadable old config: start afresh
        return bool(changed_keys(old_cfg, parse_config(new, path)) & RESTART_KEYS)

    def _spawn_agent(self, rec: dict) -> subprocess.Popen:
        with open(rec["log"], "ab") as log:
            return subprocess.Popen(netns.cmd(rec["netns"], *_bin("datapath"), "agent",
                                              "--config", rec["config"]),
                                    stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_agent(self, rec: dict, p: subprocess.Popen) -> str:
        deadline = time.time() + AGENT_START_SECONDS
        while time.time() < deadline:
            if p.poll() is not None:
                raise LabError(f"agent for {rec['netns']} exited ({p.returncode}); "
                               f"see {rec['log']}")
            try:
                Client(rec["socket"], timeout=2).get("/v1/healthz")
                return proc_ref(p.pid)
            except DatapathError:
                time.sleep(0.2)
        _kill(proc_ref(p.pid))
        raise LabError(f"agent for {rec['netns']} did not answer within "
                       f"{AGENT_START_SECONDS} s; see {rec['log']}")

    # ---- operator verbs: one node's agent, the lab's etcd (`datapath lab agent|etcd ...`) ----
    def _up_state(self) -> dict:
        st = self.load()
        if not st["nodes"]:
            raise LabError(f"lab {self.name} is not up (run `datapath lab up` first)")
        return st

    def _node_rec(self, st: dict, node: str) -> dict:
        if node not in st["nodes"]:
            raise LabError(f"no node {node!r} in lab {self.name} "
                           f"(nodes: {', '.join(sorted(st['nodes']))})")
        return st["nodes"][node]

    def start_agent(self, node: str) -> str:
        """Start a node's agent as `up` does and wait until its API answers; a no-op when it
        runs. Returns what was done, in one line."""
        st = self._up_state()
        rec = self._node_rec(st, node)
        if _alive(rec.get("agent_pid")):
            return f"agent on {node} already running (pid {_pid(rec['agent_pid'])})"
        proc = self._spawn_agent(rec)
        rec["agent_pid"] = proc_ref(proc.pid)
        self.save(st)                           # the pid is known before the wait
        try:
            self._wait_agent(rec, proc)
        except LabError:                        # it exited or was killed: not running
            rec["agent_pid"] = None
            self.save(st)
            raise
        return f"agent on {node} started (pid {proc.pid})"

    def stop_agent(self, node: str, timeout: float = 30) -> str:
        """SIGTERM a node's agent and wait for it to exit, SIGKILL after `timeout` s (the
        datapath stays, as in production); a no-op when it is stopped."""
        return self._signal_agent(node, signal.SIGTERM, timeout)

    def kill_agent(self, node: str) -> str:
        """SIGKILL a node's agent: no shutdown of its own, as a crash."""
        return self._signal_agent(node, signal.SIGKILL, 0)

    def restart_agent(self, node: str) -> str:
        return f"{self.stop_agent(node)}; {self.start_agent(node)}"

    def _signal_agent(self, node: str, sig: int, timeout: float) -> str:
        st = self._up_state()
        rec = self._node_rec(st, node)
        ref = rec.get("agent_pid")
        if not _alive(ref):
            if ref:
                rec["agent_pid"] = None
                self.save(st)
            return f"agent on {node} already stopped"
        how = _stop(ref, sig, timeout)
        rec["agent_pid"] = None
        self.save(st)
        return f"agent on {node} (pid {_pid(ref)}) {how}"

    def _etcd_state(self) -> tuple[dict, dict]:
        st = self._up_state()
        if not st.get("etcd"):
            raise LabError(f"lab {self.name} runs no etcd (its topology names no etcd node; "
                           "the agents use embedded stores)")
        return st, st["etcd"]

    def start_etcd(self) -> str:
        st, rec = self._etcd_state()
        if _alive(rec.get("pid")):
            return f"etcd on {rec['node']} already running (pid {_pid(rec['pid'])})"
        rec["pid"] = None
        try:
            self._start_etcd(rec)
        finally:
            self.save(st)
        return f"etcd on {rec['node']} started (pid {_pid(rec['pid'])})"

    def stop_etcd(self, timeout: float = 30) -> str:
        st, rec = self._etcd_state()
        ref = rec.get("pid")
        if not _alive(ref):
            return f"etcd on {rec['node']} already stopped"
        how = _stop(ref, signal.SIGTERM, timeout)
        rec["pid"] = None
        self.save(st)
        return f"etcd on {rec['node']} (pid {_pid(ref)}) {how}"

    def runtime(self, st: dict, node: str) -> PodRuntime:
        rec = st["nodes"][node]
        return PodRuntime(rec["netns"], rec["socket"], self.dir / node, self.prefix, self.name)

    def _pod(self, node: str, pod, st: dict, have: dict | None) -> dict:
        rec = self.runtime(st, node).ensure(pod, have)
        rec["node"] = node
        return rec

    def _pod_down(self, rec: dict, st: dict, cni_del: bool = True) -> None:
        node_rec = st["nodes"].get(rec["node"])
        if node_rec and netns.exists(node_rec["netns"]):
            self.runtime(st, rec["node"]).remove(rec, cni_del)
        else:
            _kill(rec.get("pid"))
            netns.delete(rec["netns"])

    # ---- down / status / exec ----
    def down(self) -> list[str]:
        st = self.load()
        done = []
        for key, rec in sorted(st["pods"].items()):
            self._pod_down(rec, st, cni_del=False)
            done.append(f"pod {key} removed")
        for name, rec in sorted(st["nodes"].items()):
            _kill(rec.get("agent_pid"))
            netns.delete(rec["netns"])
            done.append(f"node {name} removed")
        if st.get("etcd"):
            _kill(st["etcd"].get("pid"))
            done.append("etcd removed")
        if st.get("prometheus"):
            promlab.stop(st["prometheus"])
            done.append("prometheus removed")
        for name, rec in sorted(st.get("others", {}).items()):
            netns.delete(rec["netns"])
            done.append(f"{rec['role']} {name} removed")
        # namespaces of a lab whose state file was lost
        known = set()
        try:
            topo = load_topology(st.get("topology"))
            known = {m.name for m in topo.nodes + topo.hosts} | {topo.router or ""}
        except LabError:
            pass
        for ns in netns.list_names():
            if ns == self.segment_ns or (self.prefix and ns.startswith(self.prefix)) or \
                    (not self.prefix and (ns.startswith("pod-") or ns in known)):
                netns.delete(ns)
        if os.path.ismount(self.bpffs):
            subprocess.run(["umount", str(self.bpffs)], check=False)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        return done or ["nothing to remove"]

    def status(self) -> dict:
        st = self.load()
        out = {"name": self.name, "manifests": st.get("manifests"),
               "topology": st.get("topology"), "routingMode": st.get("routingMode"),
               "etcd": (st["etcd"]["url"] if st.get("etcd") else None),
               "etcdProcess": (("running" if _alive(st["etcd"].get("pid")) else "stopped")
                               if st.get("etcd") else None),
               "prometheus": (st["prometheus"]["url"] if st.get("prometheus") else None),
               "values": dict(flatten(st.get("values", st.get("agentConfig") or {}))),
               "nodes": [], "pods": [],
               "others": [{"name": n, "netns": r["netns"], "role": r["role"]}
                          for n, r in sorted(st.get("others", {}).items())]}
        for name, rec in sorted(st["nodes"].items()):
            out["nodes"].append({"name": name, "netns": rec["netns"], "ip": rec["ip"],
                                 "podCIDR": rec["podCIDR"], "socket": rec["socket"],
                                 "agent": "running" if _alive(rec.get("agent_pid")) else "stopped",
                                 "metrics": f"http://{rec['ip']}:{METRICS_PORT}/metrics"})
        for key, rec in sorted(st["pods"].items()):
            out["pods"].append({"name": key, "node": rec["node"], "netns": rec["netns"],
                                "ip": rec.get("ip"),
                                "process": "running" if _alive(rec.get("pid")) else "stopped"})
        return out

    def resolve(self, target: str) -> tuple[str, str]:
        """A node name or pod (ns/name, or name in default) -> (netns, that node's socket)."""
        st = self.load()
        if target in st["nodes"]:
            rec = st["nodes"][target]
            return rec["netns"], rec["socket"]
        if target in st.get("others", {}):
            first = next(iter(st["nodes"].values()), None)
            return st["others"][target]["netns"], first["socket"] if first else ""
        key = target if "/" in target else f"default/{target}"
        if key in st["pods"]:
            rec = st["pods"][key]
            return rec["netns"], st["nodes"][rec["node"]]["socket"]
        raise LabError(f"no node or pod {target!r} in lab {self.name} "
                       f"(nodes: {', '.join(sorted(st['nodes'])) or 'none'})")


def _stop(ref: str, sig: int, timeout: float) -> str:
    """Signal a process's group (it was started in a session of its own) and wait, bounded, until
    it is gone; SIGTERM escalates to SIGKILL after `timeout` s. Returns what happened."""
    pid = _pid(ref)
    t0 = time.monotonic()
    try:
        os.killpg(pid, sig)
    except OSError:
        os.kill(pid, sig)
    deadline = t0 + (timeout if sig == signal.SIGTERM else 5)
    while time.monotonic() < deadline and _alive(ref):
        time.sleep(0.05)
    how = ("stopped" if sig == signal.SIGTERM else "killed") + \
        f" in {time.monotonic() - t0:.1f} s"
    if _alive(ref):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        while time.monotonic() < deadline + 5 and _alive(ref):
            time.sleep(0.05)
        how = f"did not exit within {timeout:g} s of SIGTERM: killed"
    _reap(pid)
    if _alive(ref):
        raise LabError(f"process {pid} is still alive after SIGKILL")
    return how
