"""Bench (not a test): TCP throughput (iperf3) pod -> pod IP and pod -> ClusterIP, on one node and
across nodes, in native and tunnel routing: datapath beside the same paths built from plain Linux
routing with kube-proxy-style iptables rules, in one run, as ratios to the pod-IP limit.

datapath: the lab (agent/lab/lab.py) with the default topology's first two nodes (k8s-ctr and
k8s-w1 on one segment, etcd on k8s-ctr), once per routing mode (`routingMode` chosen as
`datapath lab up --routing-mode` does). Its manifests: curl-pod (the client) and iperf-1 on
k8s-ctr, iperf-2 on k8s-w1, each iperf pod running `iperf3 -s` as its command, and two ClusterIP services with one backend each
(iperf-local -> iperf-1, iperf-remote -> iperf-2), so every ClusterIP flow has one known path.

Reference ("iptables"): the same shape without the agent, built here in its own namespaces at
the same time as the lab, so runs of the two alternate: a segment bridge, two node namespaces
joined to it the way the lab joins its nodes (eth1 192.168.10.100/.101, tx checksumming off,
the lab's pass-everything XDP program on the bridge side of each node's veth), pods on veth
pairs (a /30 each, the node side as gateway) in 172.20.0.0/24 and 172.20.1.0/24. Across nodes:
  native  a route to the peer's pod CIDR via the peer's node IP (what autoDirectNodeRoutes does)
  tunnel  a Linux VXLAN device per node (VNI 1, UDP 8472, flannel's layout: the peer's pod CIDR
          via the peer's VTEP address, static neighbour and FDB entries), pod MTU 1450 as
          datapath's (1500 - 50)
and in the client's node, kube-proxy's iptables shape for the two ClusterIPs (nat PREROUTING /
OUTPUT -> KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* DNAT, KUBE-MARK-MASQ + KUBE-POSTROUTING
masquerade, filter KUBE-FORWARD; the `iptables-restore` this host has), written here for the two
services only. The pod-IP rows of the reference are plain routing: the "pod-IP limit".

Each measurement is `iperf3 -c <target> -t SECONDS -J` from the client pod; every target is run
`--runs` times, the targets alternating within a round (after one unmeasured 1 s run each),
and the median is reported (Gbit/s
received). Ratios: ClusterIP / pod IP of the same system and path, and each row / the plain-
routing pod IP of that path. Everything made here is uniquely named and removed in `finally`;
iperf3 servers run under `timeout`.

Outputs (--out-dir, default bench/results): throughput.json and throughput.png (grouped bars,
Gbit/s, one group a routing mode and path).

    python bench/throughput.py [--seconds 5] [--runs 3] [--routing native,tunnel] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):          # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datapath import netns                 # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PORT = 5201
ROUTING = ("native", "tunnel")
PATHS = ("same node", "across nodes")
TARGETS = ("pod IP", "ClusterIP")
SYSTEMS = ("datapath", "iptables")
NODE_IPS = ("192.168.10.100", "192.168.10.101")
POD_CIDRS = ("172.20.0.0/24", "172.20.1.0/24")
REF_VIPS = {"same node": "10.96.100.1", "across nodes": "10.96.100.2"}
SERVER_LIFETIME = 1800                      # s: every iperf3 server runs under `timeout`

POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: {name}}}
spec:
  nodeName: {node}
  containers:
    - name: main
      image: networkstatic/iperf3
      command: [{command}]
      ports: [{ports}]
"""
SERVICE = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: ClusterIP
  selector: {{app: {app}}}
  ports: [{{name: iperf, port: {port}, targetPort: iperf, protocol: TCP}}]
"""
# the default lab's first two nodes (examples/topologies/default.yaml) with etcd: the pods of
# this bench live on these two, and a third agent would only slow the lab down
TOPOLOGY = """routingMode: native
kvstoreLeaseTTL: 10
etcd: k8s-ctr
segments: {lan: 192.168.10.0/24}
nodes:
  - {name: k8s-ctr, segment: lan, ip: 192.168.10.100, podCIDR: 172.20.0.0/24}
  - {name: k8s-w1, segment: lan, ip: 192.168.10.101, podCIDR: 172.20.1.0/24}
"""
NAMESPACE = """apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels: {kubernetes.io/metadata.name: default}
"""


# ---------------------------------------------------------------------------------------------
# datapath: the lab
# ---------------------------------------------------------------------------------------------

def write_manifests(d: Path) -> None:
    iperf = f'"timeout", "{SERVER_LIFETIME}", "iperf3", "-s", "-p", "{PORT}"'
    (d / "namespace.yaml").write_text(NAMESPACE)
    (d / "curl-pod.yaml").write_text(POD.format(name="curl-pod", node="k8s-ctr",
                                                command='"sleep", "infinity"', ports=""))
    for name, node in (("iperf-1", "k8s-ctr"), ("iperf-2", "k8s-w1")):
        (d / f"{name}.yaml").write_text(POD.format(
            name=name, node=node, command=iperf,
            ports=f"{{name: iperf, containerPort: {PORT}}}"))
    (d / "services.yaml").write_text(
        SERVICE.format(name="iperf-local", app="iperf-1", port=PORT) + "---\n" +
        SERVICE.format(name="iperf-remote", app="iperf-2", port=PORT))


class DatapathSide:
    def __init__(self, routing: str, tag: str):
        from agent.lab.lab import Lab
        self.routing = routing
        self.lab = Lab(f"tp{tag}{routing[0]}")
        self.tmp = tempfile.TemporaryDirectory(prefix="dpbench-tp-")

    def up(self, log) -> dict:
        """Bring the lab up; returns {path: {target: (client netns, ip)}}."""
        from agent.api import Client
        self.lab.down()
        mdir = Path(self.tmp.name) / "manifests"
        mdir.mkdir()
        write_manifests(mdir)
        topo = Path(self.tmp.name) / "topology.yaml"
        topo.write_text(TOPOLOGY)
        t = time.perf_counter()
        st = self.lab.up(str(mdir), str(topo), self.routing)
        log(f"datapath {self.routing}: lab {self.lab.name} up in {time.perf_counter() - t:.0f} s")
        svcs = Client(st["nodes"]["k8s-ctr"]["socket"], timeout=10).get("/v1/service")
        vip = {s["service"]: s["frontend"].split("/")[0].split(":")[0] for s in svcs}
        client = st["pods"]["default/curl-pod"]["netns"]
        pod = {p: st["pods"][f"default/{p}"]["ip"] for p in ("iperf-1", "iperf-2")}
        return {"client": client,
                "same node": {"pod IP": pod["iperf-1"], "ClusterIP": vip["default/iperf-local"]},
                "across nodes": {"pod IP": pod["iperf-2"],
                                 "ClusterIP": vip["default/iperf-remote"]}}

    def down(self) -> None:
        try:
            self.lab.down()
        finally:
            self.tmp.cleanup()


# ---------------------------------------------------------------------------------------------
# the reference: plain routing + kube-proxy-style iptables rules
# ---------------------------------------------------------------------------------------------

def kube_proxy_rules(services: dict[str, tuple[str, str]]) -> str:
    """iptables-restore input in kube-proxy's shape for {name: (vip, backend ip)}, port PORT."""
    nat_chains = ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    nat = ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
           "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
           "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" "
           "-j KUBE-POSTROUTING",
           "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
           "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
           "-A KUBE-POSTROUTING -j MASQUERADE --random-fully",
           "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    for name, (vip, be) in sorted(services.items()):
        svc, sep = f"KUBE-SVC-{name.upper()}", f"KUBE-SEP-{name.upper()}"
        nat_chains += [svc, sep]
        nat += [f"-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport {PORT} -j {svc}",
                f"-A {svc} -d {vip}/32 -p tcp -m tcp --dport {PORT} ! -s 172.20.0.0/16 "
                "-j KUBE-MARK-MASQ",
                f"-A {svc} -j {sep}",
                f"-A {sep} -s {be}/32 -j KUBE-MARK-MASQ",
                f"-A {sep} -p tcp -m tcp -j DNAT --to-destination {be}:{PORT}"]
    filt = ["-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT",
            "-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    return "\n".join(["*filter", ":KUBE-FORWARD - [0:0]", *filt, "COMMIT", "*nat",
                      *[f":{c} - [0:0]" for c in nat_chains], *nat, "COMMIT", ""])


class ReferenceSide:
    """Two nodes with plain Linux routing (native or VXLAN) and kube-proxy's iptables DNAT."""

    def __init__(self, routing: str, tag: str):
        self.routing = routing
        self.p = f"dpbench-tp{tag}{routing[0]}"
        self.seg = f"{self.p}-net"
        self.nodes = [f"{self.p}-n0", f"{self.p}-n1"]
        self.pods = {"client": (0, 0), "iperf-1": (0, 1), "iperf-2": (1, 0)}  # node, slot
        self.pin = f"/sys/fs/bpf/{self.p}-xdp"
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.mtu = 1450 if routing == "tunnel" else 1500

    def ns(self, name: str) -> str:
        return f"{self.p}-{name}"

    def _add(self, ns: str) -> None:
        netns.add(ns)
        self.made.append(ns)
        netns.ip(ns, "link", "set", "lo", "up")

    def _xdp_pass(self) -> str:
        """The lab's pass-everything XDP program, pinned here (see agent/lab/lab.py)."""
        from bcc.libbcc import lib
        from datapath import build
        if not os.path.exists(self.pin):
            fn = build.load(build.compile_program("xdp_pass.c"), "xdp_pass", "xdp")
            if lib.bpf_obj_pin(fn.fd, self.pin.encode()) != 0:
                raise RuntimeError(f"pinning {self.pin} failed")
        return self.pin

    def up(self, log) -> dict:
        t = time.perf_counter()
        self._add(self.seg)
        netns.ip(self.seg, "link", "add", "br0", "type", "bridge")
        netns.ip(self.seg, "link", "set", "br0", "up")
        pin = self._xdp_pass()
        macs = []
        for i, node in enumerate(self.nodes):
            self._add(node)
            outer = f"n{i}"
            netns.ip(self.seg, "link", "add", outer, "type", "veth", "peer", "name", "eth1",
                     "netns", node)
            netns.ip(self.seg, "link", "set", outer, "master", "br0", "up")
            netns.ip(self.seg, "-force", "link", "set", "dev", outer, "xdpdrv", "pinned", pin)
            netns.ip(node, "addr", "add", f"{NODE_IPS[i]}/24", "dev", "eth1")
            netns.run(node, "ethtool", "-K", "eth1", "tx", "off")
            netns.ip(node, "link", "set", "eth1", "up")
            netns.run(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            if self.routing == "tunnel":
                netns.ip(node, "link", "add", "vx0", "type", "vxlan", "id", "1", "dstport",
                         "8472", "local", NODE_IPS[i], "dev", "eth1", "nolearning")
                netns.ip(node, "link", "set", "vx0", "mtu", "1450", "up")
                netns.ip(node, "addr", "add", f"{POD_CIDRS[i].split('/')[0]}/32", "dev", "vx0")
                macs.append(json.loads(netns.ip(node, "-j", "link", "show", "vx0").stdout)[0]
                            ["address"])
        for i, node in enumerate(self.nodes):
            j = 1 - i
            if self.routing == "native":
                netns.ip(node, "route", "add", POD_CIDRS[j], "via", NODE_IPS[j])
            else:
                vtep = POD_CIDRS[j].split("/")[0]
                netns.ip(node, "neigh", "add", vtep, "lladdr", macs[j], "dev", "vx0", "nud",
                         "permanent")
                netns.run(node, "bridge", "fdb", "append", macs[j], "dev", "vx0", "dst",
                          NODE_IPS[j])
                netns.ip(node, "route", "add", POD_CIDRS[j], "via", vtep, "dev", "vx0", "onlink")
        ips = {}
        for name, (i, slot) in self.pods.items():
            ns, node = self.ns(name), self.nodes[i]
            self._add(ns)
            base = POD_CIDRS[i].rsplit(".", 1)[0]
            gw, ip = f"{base}.{4 * slot + 1}", f"{base}.{4 * slot + 2}"
            host = f"p{slot}"
            netns.ip(node, "link", "add", host, "mtu", str(self.mtu), "type", "veth", "peer",
                     "name", "eth0", "mtu", str(self.mtu), "netns", ns)
            netns.ip(node, "addr", "add", f"{gw}/30", "dev", host)
            netns.ip(node, "link", "set", host, "up")
            netns.ip(ns, "addr", "add", f"{ip}/30", "dev", "eth0")
            netns.ip(ns, "link", "set", "eth0", "up")
            netns.ip(ns, "route", "add", "default", "via", gw)
            ips[name] = ip
        rules = kube_proxy_rules({"local": (REF_VIPS["same node"], ips["iperf-1"]),
                                  "remote": (REF_VIPS["across nodes"], ips["iperf-2"])})
        netns.run(self.nodes[0], "iptables-restore", "--noflush", input=rules)
        for name in ("iperf-1", "iperf-2"):
            p = subprocess.Popen(netns.cmd(self.ns(name), "timeout", str(SERVER_LIFETIME),
                                           "iperf3", "-s", "-p", str(PORT)),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            self.procs.append(p)
        for name in ("iperf-1", "iperf-2"):
            _wait_listen(self.ns(name))
        log(f"iptables {self.routing}: reference up in {time.perf_counter() - t:.0f} s "
            f"({netns.run(None, 'iptables-restore', '--version').stdout.strip()})")
        return {"client": self.ns("client"),
                "same node": {"pod IP": ips["iperf-1"], "ClusterIP": REF_VIPS["same node"]},
                "across nodes": {"pod IP": ips["iperf-2"],
                                 "ClusterIP": REF_VIPS["across nodes"]}}

    def down(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait(timeout=5)
        self.procs = []
        for ns in reversed(self.made):
            netns.delete(ns)
        self.made = []
        if os.path.exists(self.pin):
            os.unlink(self.pin)


def _wait_listen(ns: str, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if f":{PORT} " in netns.run(ns, "ss", "-Htln", check=False).stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"iperf3 server in {ns} not listening after {timeout:.0f} s")


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

def iperf(ns: str, ip: str, seconds: int) -> dict:
    """One bounded iperf3 run from `ns` to ip:PORT; Gbit/s received and retransmits."""
    argv = netns.cmd(ns, "iperf3", "-c", ip, "-p", str(PORT), "-t", str(seconds), "-J",
                     "--connect-timeout", "3000")
    for attempt in range(3):           # a server still closing the previous test says "busy"
        p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        try:
            out = json.loads(p.stdout)
        except json.JSONDecodeError:
            out = {"error": p.stderr.strip() or p.stdout.strip()}
        if "error" not in out:
            end = out["end"]
            return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                    "retransmits": end["sum_sent"].get("retransmits", 0)}
        if "busy" not in str(out["error"]):
            break
        time.sleep(0.5 * (attempt + 1))
    raise RuntimeError(f"iperf3 {ns} -> {ip}: {out['error']}")


def measure(routing: str, seconds: int, runs: int, tag: str, log) -> dict:
    sides = {"datapath": DatapathSide(routing, tag), "iptables": ReferenceSide(routing, tag)}
    out = {"runs": {}, "targets": {}}
    try:
        where = {name: side.up(log) for name, side in sides.items()}
        out["targets"] = where
        keys = [(s, path, t) for s in SYSTEMS for path in PATHS for t in TARGETS]
        for s, path, t in keys:        # warm-up, not kept: first flows, caches, neighbours
            iperf(where[s]["client"], where[s][path][t], 1)
        for r in range(runs):
            for s, path, t in (keys if r % 2 == 0 else keys[::-1]):
                x = iperf(where[s]["client"], where[s][path][t], seconds)
                out["runs"].setdefault(f"{s} | {path} | {t}", []).append(x)
                log(f"{routing:<6} {s:<8} {path:<12} {t:<9} {x['gbps']:7.2f} Gbit/s "
                    f"({x['retransmits']} retransmits)")
    finally:
        for side in sides.values():
            side.down()
    return out


def summarize(res: dict) -> list[dict]:
    rows = []
    for routing, m in res["routing"].items():
        for path in PATHS:
            med = {}
            for s in SYSTEMS:
                for t in TARGETS:
                    xs = [x["gbps"] for x in m["runs"].get(f"{s} | {path} | {t}", [])]
                    med[(s, t)] = statistics.median(xs) if xs else None
            limit = med[("iptables", "pod IP")]
            for s in SYSTEMS:
                for t in TARGETS:
                    g, own = med[(s, t)], med[(s, "pod IP")]
                    rows.append({"routing": routing, "path": path, "system": s, "target": t,
                                 "gbps": g,
                                 "ratio_to_own_pod_ip": g / own if g and own else None,
                                 "ratio_to_plain_pod_ip": g / limit if g and limit else None})
    return rows


def report(res: dict) -> str:
    f = lambda x: "     -" if x is None else f"{x:6.2f}"      # noqa: E731
    lines = [f"iperf3 -t {res['seconds']}, median of {res['runs_per_target']} runs, Gbit/s "
             "received. ratio/own = ClusterIP / pod IP of the same system; ratio/plain = "
             "/ the plain-routing pod IP (the iptables reference's pod-IP row)", "",
             "| routing | path         | system   | target    | Gbit/s | ratio/own | ratio/plain |",
             "|---------|--------------|----------|-----------|-------:|----------:|------------:|"]
    for r in res["rows"]:
        lines.append(f"| {r['routing']:<7} | {r['path']:<12} | {r['system']:<8} | "
                     f"{r['target']:<9} | {f(r['gbps'])} |    {f(r['ratio_to_own_pod_ip'])} |"
                     f"      {f(r['ratio_to_plain_pod_ip'])} |")
    return "\n".join(lines)


def chart(res: dict, out_dir: Path) -> Path:
    from bench.charts import bar_chart
    groups: dict[str, dict[str, float]] = {}
    for r in res["rows"]:
        groups.setdefault(f"{r['routing']}, {r['path']}", {})[
            f"{r['system']} -> {r['target']}"] = r["gbps"]
    return bar_chart(out_dir / "throughput.png",
                     f"iperf3 TCP throughput from a pod (median of {res['runs_per_target']} "
                     f"x {res['seconds']} s)", "Gbit/s", groups)


def run(routing: list[str], seconds: int, runs: int, log=print) -> dict:
    tag = f"{os.getpid() % 1000}{secrets.token_hex(1)}"
    from bench.first_packet import source
    res = {"bench": "throughput", "seconds": seconds, "runs_per_target": runs,
           "source": source(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "host": {"kernel": os.uname().release, "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg()[0]}, "routing": {}}
    for mode in routing:
        res["routing"][mode] = measure(mode, seconds, runs, tag, log)
    res["rows"] = summarize(res)
    res["host"]["loadavg_end"] = os.getloadavg()[0]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, help="iperf3 -t per run (1-30; default 5)")
    ap.add_argument("--runs", type=int, help="runs per target (default 3)")
    ap.add_argument("--routing", default=",".join(ROUTING), help="native,tunnel")
    ap.add_argument("--quick", action="store_true", help="1 s, 1 run (smoke test)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    seconds = a.seconds or (1 if a.quick else 5)
    runs = a.runs or (1 if a.quick else 3)
    routing = [m.strip() for m in a.routing.split(",") if m.strip()]
    if not 1 <= seconds <= 30 or runs < 1 or any(m not in ROUTING for m in routing):
        ap.error("--seconds 1-30, --runs >= 1, --routing from native,tunnel")
    log = lambda s: print(s, file=sys.stderr, flush=True)    # noqa: E731
    res = run(routing, seconds, runs, log)
    res["charts"] = [chart(res, a.out_dir).name]
    a.out_dir.mkdir(parents=True, exist_ok=True)
    (a.out_dir / "throughput.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1) if a.json else report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
