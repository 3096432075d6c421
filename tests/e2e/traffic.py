"""Real-socket traffic between lab namespaces: curl to the whoami pods, a UDP echo round trip,
a long-lived TCP echo pair, the source of an echo request as a host sees it and echo requests
from a spoofed source, each bounded in count and time."""
from __future__ import annotations

import subprocess
import sys
import time

from datapath import netns

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(15)
s.bind(("0.0.0.0", int(sys.argv[1])))
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):   # datagrams to answer
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    s.sendto(("%s:%d " % addr).encode() + data, addr)
"""
ECHO_REQUEST_SOURCE = """
import select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
print("ready", flush=True)
deadline = time.time() + 15
while time.time() < deadline:
    if select.select([s], [], [], 0.5)[0]:
        data = s.recv(2048)
        if data[(data[0] & 15) * 4] == 8:          # an echo request: print its source
            print(socket.inet_ntoa(data[12:16]), flush=True)
            break
"""
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for _ in range(10):
    s.sendto(b"hello-udp", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(2048)[0].decode()); break
    except socket.timeout:
        continue
"""
TCP_ECHO = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(1); srv.settimeout(60)
c, addr = srv.accept(); c.settimeout(120)
print("peer", addr[0], flush=True)
while True:
    d = c.recv(1024)
    if not d: break
    c.sendall(d)
"""
TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
for line in sys.stdin:
    c.sendall(line.encode()); print(c.recv(1024).decode().strip(), flush=True)
"""


def spoofed_ping(lab, pod: str, dst: str, spoof: str = "172.20.0.250",
                 count: int = 2) -> None:
    """`count` echo requests from `pod` with a source address that is not its own (added to
    its eth0 for the moment): from-container drops them as an invalid source."""
    lab.run(pod, "ip", "addr", "add", f"{spoof}/32", "dev", "eth0")
    try:
        lab.run(pod, "ping", "-c", str(count), "-W", "1", "-I", spoof, dst, check=False)
    finally:
        lab.run(pod, "ip", "addr", "del", f"{spoof}/32", "dev", "eth0")


def curl(lab, src, ip):
    return lab.run(src, "curl", "-s", "-m", "5", f"http://{ip}/", check=False)


def udp_roundtrip(lab, server, client, port=5353):
    srv = subprocess.Popen(netns.cmd(lab.ns(server), sys.executable, "-c", UDP_ECHO, str(port)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        out = lab.py(client, UDP_CLIENT, lab.pod_ip(server), str(port)).stdout.strip()
    finally:
        srv.wait(timeout=20)
    return out




def ping_seen_from(lab, host, src, dst):
    """`src` pings `dst` once; returns (whether the reply came back, the source address `host`
    saw on the echo request, or '' when none arrived)."""
    rec = subprocess.Popen(netns.cmd(lab.ns(host), sys.executable, "-c", ECHO_REQUEST_SOURCE),
                           stdout=subprocess.PIPE, text=True)
    try:
        assert rec.stdout.readline().strip() == "ready"
        ping = lab.run(src, "ping", "-c", "1", "-W", "2", dst, check=False)
        seen = rec.stdout.readline().strip()
    finally:
        if rec.poll() is None:
            rec.kill()
        rec.wait(timeout=10)
    return ping.returncode == 0, seen
