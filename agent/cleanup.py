"""`datapath cleanup`: remove what the agent installed on this node, and nothing else: our tc
filters (by name) and XDP programs on every interface in this netns, our routes (by protocol),
the VXLAN device, the pinned maps, the state directory and the API socket. Pod veths belong to
pods and stay."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess

from datapath import attach, loader
from datapath.errors import APIError

from .api import Client
from .config import load_config
from .daemon import VXLAN_DEVICE
from .reconcile import ROUTE_PROTO, read_routes, xdp_names

OUR_XDP_NAMES: set[str] = xdp_names()     # the kernel's names of the XDP programs we load


def cleanup(config_path: str, force: bool = False) -> list[str]:
    cfg = load_config(config_path)
    out = []
    if not force:
        try:
            Client(cfg.apiSocket, timeout=2).get("/v1/healthz")
            raise APIError(f"the agent still answers on {cfg.apiSocket}: stop it first "
                           "(or pass --force)", 409)
        except APIError as e:
            if e.status == 409:
                raise
    for _, ifname in socket.if_nameindex():
        for direction in attach.PARENTS:
            if attach.tc_detach(ifname, direction):
                out.append(f"detached tc {direction} program from {ifname}")
        if OUR_XDP_NAMES and attach.xdp_detach(ifname, OUR_XDP_NAMES):
            out.append(f"detached XDP program from {ifname}")
    for dst, (via, dev) in read_routes().items():
        subprocess.run(["ip", "route", "del", dst, "proto", ROUTE_PROTO], capture_output=True)
        out.append(f"removed route {dst} via {via} dev {dev}")
    if subprocess.run(["ip", "link", "del", VXLAN_DEVICE], capture_output=True).returncode == 0:
        out.append(f"removed device {VXLAN_DEVICE}")
    for pin in loader.remove_pins(cfg.pin_dir()):
        out.append(f"removed pin {pin}")
    if os.path.isdir(cfg.stateDir):
        shutil.rmtree(cfg.stateDir)
        out.append(f"removed state {cfg.stateDir}")
    if os.path.exists(cfg.apiSocket):
        os.unlink(cfg.apiSocket)
        out.append(f"removed socket {cfg.apiSocket}")
    return out or ["nothing to clean up"]
