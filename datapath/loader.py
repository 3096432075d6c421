"""One node's datapath as the agent holds it: the programs compiled once with the node's -D
settings, maps pinned under the node's pin directory (reused when they already exist, so a
restarted agent adopts the state the running programs use), and typed handles on those maps.

API:
    PROGRAMS                          attachable programs: name -> (source, function, type, hook)
    NodeDatapath(pin_dir, on_op)      .maps, .program(name) -> (fd, tag), .read_map(name)
    remove_pins(pin_dir)              unlink our pins (used by `datapath cleanup`)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import attach, build
from .maps import OpHook, open_maps


@dataclass(frozen=True)
class ProgramSpec:
    source: str
    function: str
    prog_type: str      # tc | xdp
    direction: str      # tc direction it attaches to ("xdp" for XDP programs)


PROGRAMS = {
    "from-container": ProgramSpec("bpf_lxc.c", "cil_from_container", "tc", "ingress"),
    "to-container": ProgramSpec("bpf_lxc.c", "cil_to_container", "tc", "egress"),
    "from-netdev": ProgramSpec("bpf_host.c", "cil_from_netdev", "tc", "ingress"),
    "to-netdev": ProgramSpec("bpf_host.c", "cil_to_netdev", "tc", "egress"),
    "to-netdev-nomasq": ProgramSpec("bpf_host.c", "cil_to_netdev_nomasq", "tc", "egress"),
    "from-overlay": ProgramSpec("bpf_overlay.c", "cil_from_overlay", "tc", "ingress"),
    "xdp": ProgramSpec("bpf_xdp.c", "cil_xdp_entry", "xdp", "xdp"),
}
MANAGED_MAPS = ("cilium_lxc", "dp_ep_ifindex", "cilium_ipcache", "dp_node_config",
                "cilium_lb4_services_v2", "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat",
                "cilium_lb4_maglev",
                "cilium_ipmasq_v4", "cilium_l2_responder_v4", "dp_netdev", "cilium_policy_v2")


class NodeDatapath:
    def __init__(self, pin_dir: str, on_op: OpHook | None = None, defines: dict | None = None):
        self.pin_dir = pin_dir
        Path(pin_dir).mkdir(parents=True, exist_ok=True)
        self.defines = {"DP_PIN_DIR": pin_dir, **(defines or {})}
        self._objs = {}
        self._progs = {}
        for name, spec in PROGRAMS.items():
            obj = self._objs.get(spec.source)
            if obj is None:
                obj = self._objs[spec.source] = build.compile_program(spec.source, self.defines)
            fn = build.load(obj, spec.function, spec.prog_type)
            self._progs[name] = (fn, attach.prog_tag(fn.fd))
        self.maps = {}
        for obj in self._objs.values():
            self.maps.update(open_maps(obj, on_op))

    def program(self, name: str) -> tuple[int, str]:
        fn, tag = self._progs[name]
        return fn.fd, tag

    def read_map(self, name: str) -> dict[bytes, bytes]:
        return {bytes(k): bytes(v) for k, v in self.maps[name].items()}


def remove_pins(pin_dir: str) -> list[str]:
    removed = []
    p = Path(pin_dir)
    if not p.is_dir():
        return removed
    for f in sorted(p.iterdir()):
        os.unlink(f)
        removed.append(str(f))
    p.rmdir()
    return removed
