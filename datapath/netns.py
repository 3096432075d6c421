"""Network-namespace plumbing shared by the CNI plugin, the lab and the tests: create and delete
named namespaces, run commands inside one (network namespace only: the mount namespace, and so
bpffs, stay shared), and small `ip` wrappers that raise LabError with the command's stderr.

API:
    add(name) / delete(name) / exists(name) / list_names()
    path(name)                      /var/run/netns/<name>
    cmd(ns, *args) -> argv          argv that runs args inside ns (nsenter --net)
    run(ns, *args, check=True)      run it; returns CompletedProcess
    ip(ns, *args)                   `ip` inside ns (ns None: the caller's namespace)
"""
from __future__ import annotations

import os
import subprocess

from .errors import LabError

NETNS_DIR = "/var/run/netns"


def path(name: str) -> str:
    return name if name.startswith("/") else os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def add(name: str) -> None:
    if not exists(name):
        _check(["ip", "netns", "add", name])


def delete(name: str) -> None:
    if exists(name):
        _check(["ip", "netns", "del", name])


def cmd(ns: str | None, *args: str) -> list[str]:
    if ns is None:
        return list(args)
    return ["nsenter", f"--net={path(ns)}", "--", *args]


def run(ns: str | None, *args: str, check: bool = True, timeout: float = 30,
        **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd(ns, *args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise LabError(f"[{ns or 'host'}] {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def ip(ns: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(ns, "ip", *args, check=check)


def _check(argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {p.stderr.strip()}")


def link_exists(ns: str | None, ifname: str) -> bool:
    return ip(ns, "link", "show", "dev", ifname, check=False).returncode == 0


def link_mac(ns: str | None, ifname: str) -> str:
    """MAC of ifname inside ns (read through ip, since /sys shows the mounting namespace)."""
    import json
    links = json.loads(ip(ns, "-j", "link", "show", "dev", ifname).stdout)
    return links[0]["address"]
