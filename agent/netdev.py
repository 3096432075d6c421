"""The node's own network devices and addresses, as the agent reads and sets them up: interface
indexes and MACs, a device's subnets, this node's IP, every address the host may send from, and
the collect-metadata VXLAN device.
"""
from __future__ import annotations

import ipaddress
import json
import socket
import subprocess

from datapath import abi


def iface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def mac(dev: str) -> str:
    p = subprocess.run(["ip", "-j", "link", "show", "dev", dev], capture_output=True, text=True)
    links = json.loads(p.stdout or "[]")
    return links[0].get("address", "00:00:00:00:00:00") if links else "00:00:00:00:00:00"


def device_subnets(dev: str) -> list:
    p = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", dev], capture_output=True,
                       text=True)
    return [ipaddress.ip_interface(line.split()[3]).network for line in p.stdout.splitlines()
            if " inet " in line]


def ensure_vxlan(name: str, mtu: int) -> None:
    """The collect-metadata VXLAN device on Cilium's port; created once, kept across restarts.
    For the node's own packets to remote pods (routes with `encap`): its MTU (the pods' MTU)
    leaves room for the encapsulation, and no ARP (a request would carry no tunnel endpoint;
    the far end's from-overlay sets the MACs on delivery)."""
    if not iface_exists(name):
        subprocess.run(["ip", "link", "add", name, "type", "vxlan", "external", "dstport",
                        str(abi.TUNNEL_PORT)], check=True, capture_output=True)
    subprocess.run(["ip", "link", "set", name, "mtu", str(mtu), "arp", "off", "up"], check=True,
                   capture_output=True)


def host_addresses() -> list[str]:
    """Every IPv4 address of this node but loopback (the host identity in the ipcache)."""
    p = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    return sorted({line.split()[3].split("/")[0] for line in p.stdout.splitlines()
                   if " inet " in line and not line.split()[3].startswith("127.")})


def node_ip(cfg) -> str:
    """The first IPv4 address on the first configured device, else the node's hostname."""
    for dev in cfg.devices:
        p = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", dev], capture_output=True,
                           text=True)
        for line in p.stdout.splitlines():
            parts = line.split()
            if "inet" in parts:
                return parts[parts.index("inet") + 1].split("/")[0]
    return "127.0.0.1"
