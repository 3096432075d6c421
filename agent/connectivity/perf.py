"""`datapath connectivity perf` (lab): TCP throughput (iperf3) and request/response latency on
the lab's main paths, as `cilium connectivity perf`, on the connectivity test's own pods.

Owns: the paths measured, the servers started in the echo pods (iperf3 and a one-byte echo,
both stopped afterwards), and the measurements. The request/response client is netperf's
TCP_RR in Python: one connection, one byte each way, one transaction at a time, for a fixed
time; its own cost is in every figure alike, so compare paths with each other.

API:
    PATHS                                    the paths, in order
    ConnectivityPerf(lab, duration=3.0, keep=False, progress=None).run() -> [dict]
        one row a path: {path, source, target, gbps, rr: {transactions, tps, p50_us,
        p90_us, p99_us}} (a row's "skip" says why a path could not run)
"""
from __future__ import annotations

import json
import subprocess
import sys

from datapath import netns
from datapath.errors import LabError

from ..runtime import _kill, proc_ref
from . import resources as res
from .runner import ConnectivityTest

PATHS = ("pod-to-pod/same-node", "pod-to-pod/other-node", "host-to-pod/same-node",
         "pod-to-service/cluster-ip")

RR_SERVER = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(64)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
RR_CLIENT = """
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
c = socket.create_connection((host, port), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
lat, now = [], time.perf_counter_ns
start = now()
end = start + int(seconds * 1e9)
while now() < end:
    t = now(); c.sendall(b"x")
    if not c.recv(1):
        break
    lat.append(now() - t)
if not lat:
    sys.exit("no transaction completed")
lat.sort()
pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] / 1000, 1)
elapsed = (now() - start) / 1e9
print(json.dumps({"transactions": len(lat), "tps": round(len(lat) / elapsed),
                  "p50_us": pick(0.5), "p90_us": pick(0.9), "p99_us": pick(0.99)}))
"""
SERVER_LIFETIME = 900       # seconds: every server runs under `timeout`, whatever happens here


class ConnectivityPerf:
    def __init__(self, lab, duration: float = 3.0, keep: bool = False, progress=None):
        self.duration = duration
        self.test = ConnectivityTest(lab, keep=keep, progress=progress)
        self.log = progress or (lambda _m: None)

    def run(self) -> list[dict]:
        with self.test.deployed() as env:
            st = self.test.st
            echo = {k: st["pods"][k] for k in (res.ECHO_SAME, res.ECHO_OTHER) if k in st["pods"]}
            servers = []
            try:
                for rec in echo.values():
                    servers += [self._server(rec["netns"], "iperf3", "-s", "-p",
                                             str(res.IPERF_PORT)),
                                self._server(rec["netns"], sys.executable, "-c", RR_SERVER,
                                             str(res.RR_PORT))]
                client = st["pods"][res.CLIENT]
                node0 = next(iter(st["nodes"].values()))
                target_svc = res.SERVICES["cluster-ip"]       # echo-same-node's ClusterIP
                paths = {
                    "pod-to-pod/same-node": (res.CLIENT, client["netns"], res.ECHO_SAME,
                                             (echo[res.ECHO_SAME] or {}).get("ip")),
                    "pod-to-pod/other-node": (res.CLIENT, client["netns"], res.ECHO_OTHER,
                                              (echo.get(res.ECHO_OTHER) or {}).get("ip")),
                    "host-to-pod/same-node": (f"node {next(iter(st['nodes']))}",
                                              node0["netns"], res.ECHO_SAME,
                                              (echo[res.ECHO_SAME] or {}).get("ip")),
                    "pod-to-service/cluster-ip": (res.CLIENT, client["netns"],
                                                  f"service {target_svc}",
                                                  env.services[target_svc].cluster_ip),
                }
                rows = []
                for name in PATHS:
                    src, ns, target, addr = paths[name]
                    row = {"path": name, "source": src, "target": target, "address": addr}
                    if not addr:
                        row["skip"] = "the lab has one node"
                    else:
                        self.log(f"{name}: {src} -> {target} ({addr})")
                        row["gbps"] = self._iperf(ns, addr)
                        row["rr"] = self._rr(ns, addr)
                    rows.append(row)
                return rows
            finally:
                for ref in servers:
                    _kill(ref)

    @staticmethod
    def _server(ns: str, *argv: str) -> str:
        p = subprocess.Popen(netns.cmd(ns, "timeout", str(SERVER_LIFETIME), *argv),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        return proc_ref(p.pid)

    def _iperf(self, ns: str, addr: str) -> float:
        for _attempt in range(20):      # the server may still be starting
            p = netns.run(ns, "iperf3", "-c", addr, "-p", str(res.IPERF_PORT), "-t",
                          str(self.duration), "-J", check=False, timeout=self.duration + 30)
            try:
                doc = json.loads(p.stdout)
            except ValueError:
                doc = {}
            # a run the server cut short ends without sum_received: another attempt
            received = (doc.get("end") or {}).get("sum_received") or {}
            if p.returncode == 0 and "bits_per_second" in received:
                return round(received["bits_per_second"] / 1e9, 2)
            netns.run(ns, "sleep", "0.25", check=False)
        raise LabError(f"iperf3 to {addr} failed: {doc.get('error') or p.stderr.strip()}")

    def _rr(self, ns: str, addr: str) -> dict:
        for _attempt in range(20):
            p = netns.run(ns, sys.executable, "-c", RR_CLIENT, addr, str(res.RR_PORT),
                          str(self.duration), check=False, timeout=self.duration + 30)
            if p.returncode == 0:
                return json.loads(p.stdout)
            netns.run(ns, "sleep", "0.25", check=False)
        raise LabError(f"request/response to {addr}:{res.RR_PORT} failed: {p.stderr.strip()}")
