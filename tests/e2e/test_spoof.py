"""Spoofing from a pod, end to end (issue 12): on the shared single-node `lab`, curl-pod writes
frames straight onto its eth0 (an AF_PACKET socket, so its kernel adds or checks nothing) with
another pod's source IP, the node's IP, a source MAC that is not its own, and ARP claiming
another pod's IP or a MAC not its own. webpod-1 listens and gets only the genuine datagrams sent
around them; the node's neighbour table learns nothing (arp_accept is on, for the test, on
curl-pod's lxc, and the pod's own gratuitous ARP is learned: a spoofed one that got through
would be too); and
cilium_drop_count_total{reason} rises by exactly the number sent, phase by phase.

The lab is left as found: the sysctl is restored and any neighbour entry the test could have
caused is removed, even on failure."""
from __future__ import annotations

import subprocess
import sys
import time

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from datapath import netns

from .conftest import wait_for

PORT = 40512
FAKE_MAC = "02:de:ad:be:ef:01"
BCAST = "ff:ff:ff:ff:ff:ff"
SIP, SMAC = "Invalid source ip", "Invalid source mac"

# frames as hex arguments, written in order onto eth0 as they are
SEND_FRAMES = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for h in sys.argv[1:]:
    s.send(bytes.fromhex(h))
"""
# every datagram to PORT, until b"end" (or 10 s of silence): "<source> <payload>" a line
LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    print(addr[0], data.decode(errors="replace"), flush=True)
    if data == b"end":
        break
"""


def _drops(lab) -> dict[str, float]:
    """cilium_drop_count_total{direction="EGRESS"} of both reasons, from one scrape."""
    got = {SIP: 0.0, SMAC: 0.0}
    for line in lab.metrics().splitlines():
        if line.startswith("cilium_drop_count_total{") and 'direction="EGRESS"' in line:
            for r in got:
                if f'reason="{r}"' in line:
                    got[r] += float(line.rsplit(" ", 1)[1])
    return got


def _neigh(lab, *args: str) -> str:
    return lab.run("k8s-ctr", "ip", "-4", "neigh", "show", *args).stdout


def test_spoofed_ip_mac_and_arp_from_a_pod_are_dropped_and_counted(lab):
    t0 = time.monotonic()
    eps = {e["pod"]: e for e in lab.client().get("/v1/endpoint")}
    me, victim = eps["curl-pod"], eps["webpod-1"]
    other_ip, node_ip = lab.pod_ip("webpod-2"), lab.node()["ip"]
    lxc, my_ip, my_mac, gw_mac = me["host_ifname"], me["ip"], me["mac"], me["host_mac"]
    dst = victim["ip"]

    def udp(payload: str, src_ip: str = my_ip, src_mac: str = my_mac) -> str:
        return bytes(Ether(src=src_mac, dst=gw_mac) / IP(src=src_ip, dst=dst, ttl=64)
                     / UDP(sport=PORT, dport=PORT) / payload.encode()).hex()

    def arp(op: str, hwsrc: str, psrc: str, pdst: str) -> str:
        return bytes(Ether(src=my_mac, dst=BCAST)
                     / ARP(op=op, hwsrc=hwsrc, psrc=psrc, hwdst="00:00:00:00:00:00",
                           pdst=pdst)).hex()

    # (reason, frames): each phase's frames are all dropped with that reason
    phases = [
        (SIP, [udp("spoof-pod-ip", src_ip=other_ip)] * 3),                 # another pod's IP
        (SIP, [udp("spoof-node-ip", src_ip=node_ip)] * 3),                 # the node's IP
        (SMAC, [udp("spoof-mac", src_mac=FAKE_MAC)] * 2),                  # not its MAC
        (SIP, [arp("who-has", my_mac, dst, dst), arp("is-at", my_mac, dst, dst)]),  # GARP
        (SMAC, [arp("is-at", FAKE_MAC, my_ip, my_ip)]),                    # ARP, not its MAC
    ]
    sysctl = f"net.ipv4.conf.{lxc}.arp_accept"
    accept = lab.run("k8s-ctr", "sysctl", "-n", sysctl).stdout.strip()
    listener = subprocess.Popen(netns.cmd(lab.ns("webpod-1"), sys.executable, "-c", LISTEN,
                                          str(PORT)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        lab.run("k8s-ctr", "sysctl", "-qw", f"{sysctl}=1")
        lab.py("curl-pod", SEND_FRAMES, udp("control"))
        # controls: the pod's own gratuitous ARP passes and the node learns it (so a spoofed one
        # that got through would be learned too)
        lab.run("k8s-ctr", "ip", "neigh", "del", my_ip, "dev", lxc, check=False)
        lab.py("curl-pod", SEND_FRAMES, arp("who-has", my_mac, my_ip, my_ip))
        wait_for(lambda: my_mac in _neigh(lab, my_ip, "dev", lxc), timeout=5,
                 what="the node to learn the pod's own gratuitous ARP")
        for reason, frames in phases:
            before = _drops(lab)
            lab.py("curl-pod", SEND_FRAMES, *frames)
            want = {r: n + (len(frames) if r == reason else 0) for r, n in before.items()}
            wait_for(lambda: _drops(lab) == want, timeout=5,
                     what=f"{reason!r} drops to rise by {len(frames)} (from {before})")
        lab.py("curl-pod", SEND_FRAMES, udp("end"))
        out, err = listener.communicate(timeout=15)
        for_dst, for_me = _neigh(lab, dst), _neigh(lab, my_ip)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(timeout=5)
        lab.run("k8s-ctr", "sysctl", "-qw", f"{sysctl}={accept or 0}", check=False)
        lab.run("k8s-ctr", "ip", "neigh", "del", dst, "dev", lxc, check=False)  # never real
        if FAKE_MAC in _neigh(lab, my_ip):
            lab.run("k8s-ctr", "ip", "neigh", "del", my_ip, "dev", lxc, check=False)
    # the victim got the genuine datagrams only, and from the sender's own address
    assert out.splitlines() == [f"{my_ip} control", f"{my_ip} end"], (out, err)
    # the node learned neither webpod-1's IP at the sender's MAC nor the sender's at a fake one
    assert my_mac not in for_dst, for_dst
    assert FAKE_MAC not in for_me, for_me
    print(f"spoofing e2e: {sum(len(f) for _, f in phases)} frames dropped, "
          f"{time.monotonic() - t0:.1f} s")
