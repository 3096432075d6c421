"""Attach and detach our programs on tc (clsact ingress/egress) and XDP, in the caller's netns.

Replacing is atomic: tc uses `replace` on a fixed prio/handle, XDP swaps the program in one
netlink request. Only what we attached is removed: our tc filters carry a name starting with
OWNER_PREFIX, and XDP programs are removed only when their name is one we load.

API:
    tc_attach(ifname, fd, direction, name)   attach or atomically replace; returns TcProg
    tc_query(ifname, direction)              our filter there, or None
    tc_detach(ifname, direction)             remove our filter (and clsact if it is then empty);
                                             returns True when something was removed
    xdp_attach(ifname, fd, mode) / xdp_query(ifname) / xdp_detach(ifname, names)
    prog_tag(fd)                             the kernel's tag of a program we hold
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from .errors import AttachError

OWNER_PREFIX = "datapath:"
PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
_PRIO, _HANDLE = 1, 1


@dataclass(frozen=True)
class TcProg:
    ifname: str
    direction: str
    name: str          # filter name (ours start with OWNER_PREFIX)
    prog_id: int
    tag: str
    pref: int = _PRIO
    handle: int = _HANDLE


def _ipr():
    from pyroute2 import IPRoute
    return IPRoute()


def _ifindex(ipr, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise AttachError(f"no interface {ifname!r} in this network namespace")
    return idx[0]


def _run_json(args: list[str]):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise AttachError(f"{' '.join(args)}: {p.stderr.strip()}")
    return json.loads(p.stdout or "[]")


def prog_tag(fd: int) -> str:
    """Tag of a program fd held by this process, as /proc/self/fdinfo reports it."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("prog_tag:"):
                return line.split()[1]
    raise AttachError(f"fd {fd} is not a BPF program")


def _filters(ifname: str, direction: str) -> list[dict]:
    try:
        return [f for f in _run_json(["tc", "-j", "filter", "show", "dev", ifname, direction])
                if f.get("options")]
    except AttachError as e:
        if "Cannot find device" in str(e):
            return []
        raise


def _is_ours(f: dict) -> bool:
    return f.get("kind") == "bpf" and f["options"].get("bpf_name", "").startswith(OWNER_PREFIX)


def tc_query(ifname: str, direction: str) -> TcProg | None:
    """Our filter on ifname/direction, or None (another tool's filters are not reported)."""
    for f in _filters(ifname, direction):
        if _is_ours(f):
            opts = f["options"]
            prog = opts.get("prog") or {}
            return TcProg(ifname, direction, opts["bpf_name"], int(prog.get("id", 0)),
                          prog.get("tag", ""), int(f.get("pref", _PRIO)),
                          int(str(opts.get("handle", _HANDLE)), 0))
    return None


def tc_attach(ifname: str, fd: int, direction: str, name: str) -> TcProg:
    """Attach program fd on ifname's clsact `direction`, replacing ours atomically."""
    if direction not in PARENTS:
        raise AttachError(f"direction must be ingress or egress, not {direction!r}")
    if not name.startswith(OWNER_PREFIX):
        name = OWNER_PREFIX + name
    for f in _filters(ifname, direction):
        if int(f.get("pref", 0)) == _PRIO and not _is_ours(f):
            raise AttachError(f"{ifname} {direction}: tc priority {_PRIO} is held by another "
                              f"tool's filter ({f.get('kind')} "
                              f"{f['options'].get('bpf_name', '')}); not replacing it")
    with _ipr() as ipr:
        idx = _ifindex(ipr, ifname)
        try:
            ipr.tc("add", "clsact", idx)
        except Exception as e:  # EEXIST: clsact already there
            if getattr(e, "code", None) != 17:
                raise AttachError(f"{ifname}: adding clsact failed: {e}") from e
        try:
            ipr.tc("replace-filter", "bpf", idx, f":{_HANDLE}", fd=fd, name=name,
                   parent=PARENTS[direction], classid=1, direct_action=True, prio=_PRIO)
        except Exception as e:
            raise AttachError(f"{ifname} {direction}: attaching {name} failed: {e}") from e
    got = tc_query(ifname, direction)
    if got is None:
        raise AttachError(f"{ifname} {direction}: {name} attached but not found afterwards")
    return got


def tc_detach(ifname: str, direction: str) -> bool:
    """Remove our filter from ifname/direction; drop clsact when no filter is left on it."""
    ours = tc_query(ifname, direction)
    if ours is None:
        return False
    with _ipr() as ipr:
        idx = _ifindex(ipr, ifname)
        try:
            ipr.tc("del-filter", "bpf", idx, f":{ours.handle:x}", parent=PARENTS[direction],
                   prio=ours.pref)
        except Exception as e:
            raise AttachError(f"{ifname} {direction}: detach failed: {e}") from e
        left = [f for d in PARENTS.values()
                for f in ipr.get_filters(index=idx, parent=int(d.replace(":", ""), 16))
                if f.get_attr("TCA_OPTIONS")]
        if not left:
            try:
                ipr.tc("del", "clsact", idx)
            except Exception:  # already gone with the last filter
                pass
    return True


XDP_MODES = {"native": 1 << 2, "generic": 1 << 1}     # XDP_FLAGS_DRV_MODE / SKB_MODE


def xdp_query(ifname: str) -> dict | None:
    """{'id', 'name', 'tag', 'mode'} of the XDP program on ifname, or None."""
    links = _run_json(["ip", "-j", "-d", "link", "show", "dev", ifname])
    xdp = links[0].get("xdp") if links else None
    if not xdp:
        return None
    prog = xdp.get("prog") or {}
    return {"id": prog.get("id"), "name": prog.get("name", ""), "tag": prog.get("tag", ""),
            "mode": xdp.get("mode")}


def _set_xdp(ifname: str, fd: int, flags: int) -> int:
    from bcc.libbcc import lib     # netlink IFLA_XDP: one request, so a replace is atomic
    return lib.bpf_attach_xdp(ifname.encode(), fd, flags)


def xdp_attach(ifname: str, fd: int, mode: str = "native") -> dict:
    """Attach (or atomically replace) the XDP program on ifname."""
    if mode not in XDP_MODES:
        raise AttachError(f"XDP mode must be one of {sorted(XDP_MODES)}, not {mode!r}")
    if _set_xdp(ifname, fd, XDP_MODES[mode]) < 0:
        raise AttachError(f"{ifname}: XDP attach ({mode}) failed")
    got = xdp_query(ifname)
    if not got:
        raise AttachError(f"{ifname}: XDP attached but not found afterwards")
    return got


def xdp_detach(ifname: str, names: set[str]) -> bool:
    """Remove the XDP program on ifname if it is one of ours (its name is in `names`)."""
    cur = xdp_query(ifname)
    if not cur or cur["name"] not in names:
        return False
    for flags in XDP_MODES.values():
        _set_xdp(ifname, -1, flags)
    return xdp_query(ifname) is None
