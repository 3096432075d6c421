"""One node's datapath as the agent holds it: the programs compiled once with the node's -D
settings, maps pinned under the node's pin directory (reused when they already exist, so a
restarted agent adopts the state the running programs use), and typed handles on those maps.

Programs are pinned too, as pin_dir/prog-<stamp16>-<name>, where the stamp (build.build_stamp)
covers everything a compile depends on. A restarted agent whose stamp's program pins all exist,
and whose programs use exactly the maps pinned as pin_dir/<map name>, adopts them: no BCC compile,
the same programs (same tags) the previous agent attached, so its reconcile changes nothing.

API:
    PROGRAMS                          attachable programs: name -> (source, function, type, hook)
    NodeDatapath(pin_dir, on_op, defines)
        .maps, .program(name) -> (fd, tag), .read_map(name) (batched), .stamp,
        .adopted (True: opened from pins without compiling; else .why_compiled says why,
        with the map pins of another layout it dropped first, also in .dropped_pins),
        .bcc_object(source) (compiles now if adopted)
    lb_map_defines(n)                 the -D sizes for bpf.lbMapMax = n
    ct_map_defines(tcp, any)          the -D sizes for bpf.ctTcpMax / bpf.ctAnyMax
    monitor_defines(level, interval)  the -D settings of bpf.monitorAggregation (a name as
                                      Cilium's, "none".."maximum", or MONITOR_AGGREGATION_*) and
                                      bpf.monitorInterval (seconds, or a "5s"-style string)
    remove_pins(pin_dir)              unlink our pins, maps and programs (`datapath cleanup`)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import abi, bpfsys, build
from .errors import BPFObjectError, BuildError
from .maps import OpHook, drop_stale_pins, open_maps, open_pinned


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
PROG_PIN_PREFIX = "prog-"
TMP_PIN_PREFIX = "tmp-"  # a program pin being made (bpffs names may not hold dots)
STAMP_LEN = 16          # hex digits of the stamp in a program pin's name


def prog_pin_name(stamp: str, name: str) -> str:
    return f"{PROG_PIN_PREFIX}{stamp[:STAMP_LEN]}-{name}"


class _Pinned:
    """A program opened from its pin: our own fd (closed with the datapath)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __del__(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


class NodeDatapath:
    def __init__(self, pin_dir: str, on_op: OpHook | None = None, defines: dict | None = None):
        self.pin_dir = pin_dir
        Path(pin_dir).mkdir(parents=True, exist_ok=True)
        self.defines = {"DP_PIN_DIR": pin_dir, **(defines or {})}
        self._on_op = on_op
        self._objs = {}
        self._progs = {}          # name -> (object holding the fd, tag)
        self.dropped_pins: list[str] = []
        self.stamp = build.build_stamp({s.source for s in PROGRAMS.values()}, self.defines)
        self.adopted = self._adopt()
        if not self.adopted:
            # BCC reuses a map pinned under the name; one of another layout (left by an older
            # version) would fail the verifier or be misread: it goes, and is made anew
            self.dropped_pins = drop_stale_pins(pin_dir, self.defines)
            if self.dropped_pins:
                self.why_compiled += "; map pins of another layout dropped and made anew (" + \
                    "; ".join(self.dropped_pins) + ")"
            self._compile()

    # ---- the two ways in ----
    def _adopt(self) -> bool:
        """Open every program of this stamp and the maps from their pins; False (nothing kept,
        the reason in .why_compiled) when a program pin is missing or a program uses a map that
        is not pinned here (a map pin replaced under the running programs)."""
        paths = {n: os.path.join(self.pin_dir, prog_pin_name(self.stamp, n)) for n in PROGRAMS}
        missing = [n for n, p in paths.items() if not os.path.exists(p)]
        if missing:
            self.why_compiled = f"no program pins for stamp {self.stamp[:STAMP_LEN]} " \
                                f"({', '.join(missing)})"
            return False
        progs, used = {}, set()
        try:
            for name, path in paths.items():
                holder = _Pinned(bpfsys.obj_get(path))
                info = bpfsys.prog_info(holder.fd)
                progs[name] = (holder, info.tag)
                used.update(info.map_ids)
            pinned = _pinned_map_ids(self.pin_dir)
            maps = open_pinned(self.pin_dir, self._on_op)
        except BPFObjectError as e:
            self.why_compiled = f"opening the pins failed: {e}"
            return False
        if not used <= pinned:
            self.why_compiled = f"the pinned programs use {len(used - pinned)} map(s) not " \
                                f"pinned in {self.pin_dir}"
            return False
        self._progs, self.maps = progs, maps
        self.why_compiled = None
        return True

    def _compile(self) -> None:
        for name, spec in PROGRAMS.items():
            fn = build.load(self.bcc_object(spec.source), spec.function, spec.prog_type)
            self._progs[name] = (fn, bpfsys.prog_info(fn.fd).tag)
        self.maps = {}
        for obj in self._objs.values():
            self.maps.update(open_maps(obj, self._on_op))
        self._pin_programs()

    def _pin_programs(self) -> None:
        """Pin this stamp's programs (each by a temporary name, then renamed over any older pin
        of the same name), then remove the program pins of other stamps."""
        keep = set()
        for name, (holder, _) in self._progs.items():
            final = prog_pin_name(self.stamp, name)
            tmp = os.path.join(self.pin_dir, f"{TMP_PIN_PREFIX}{os.getpid()}-{final}")
            try:
                bpfsys.obj_pin(holder.fd, tmp)
                os.rename(tmp, os.path.join(self.pin_dir, final))
            except (BPFObjectError, OSError) as e:
                _unlink(tmp)
                raise BuildError(f"pinning program {name} in {self.pin_dir} failed: {e}") from e
            keep.add(final)
        for f in os.listdir(self.pin_dir):
            if f.startswith((PROG_PIN_PREFIX, TMP_PIN_PREFIX)) and f not in keep:
                _unlink(os.path.join(self.pin_dir, f))

    def bcc_object(self, source: str):
        """The BCC object of one source compiled with this node's settings (compiles now when
        the datapath was adopted; its maps are the pinned ones)."""
        obj = self._objs.get(source)
        if obj is None:
            obj = self._objs[source] = build.compile_program(source, self.defines)
        return obj

    # ---- use ----
    def program(self, name: str) -> tuple[int, str]:
        holder, tag = self._progs[name]
        return holder.fd, tag

    def read_map(self, name: str) -> dict[bytes, bytes]:
        return self.maps[name].read_raw()


def lb_map_defines(lb_map_max: int) -> dict[str, int]:
    """The -D sizes of bpf.lbMapMax (Cilium's --bpf-lb-map-max): the service and backend maps
    (a service takes 1 + backends entries); the reverse NAT and Maglev maps are keyed by a 16-bit
    service id and stay at 65,536. Empty at the default, so the build stamp stays the same."""
    if lb_map_max == abi.LB_SERVICE_MAP_MAX_ENTRIES:
        return {}
    return {"LB_SERVICE_MAP_MAX_ENTRIES": lb_map_max, "LB_BACKENDS_MAP_MAX_ENTRIES": lb_map_max}


def ct_map_defines(tcp_max: int, any_max: int) -> dict[str, int]:
    """The -D sizes of bpf.ctTcpMax and bpf.ctAnyMax (Cilium's --bpf-ct-global-tcp-max and
    --bpf-ct-global-any-max): the TCP and non-TCP conntrack maps. Only the sizes that differ from
    abi.h's defaults, so the build stamp stays the same at the defaults."""
    out = {}
    if tcp_max != abi.CT_MAP_SIZE_TCP:
        out["CT_MAP_SIZE_TCP"] = tcp_max
    if any_max != abi.CT_MAP_SIZE_ANY:
        out["CT_MAP_SIZE_ANY"] = any_max
    return out


def monitor_defines(level: str | int = "medium", interval: int | float | str = 5) -> dict[str, int]:
    """The -D settings of bpf.monitorAggregation and bpf.monitorInterval (Cilium's
    --monitor-aggregation and --monitor-aggregation-interval). Empty at the defaults (medium,
    5 s), so the build stamp stays the same. Raises ValueError for an unknown level or an
    interval below one second."""
    if isinstance(level, str):
        key = level.strip().lower()
        if key not in abi.MONITOR_AGGREGATION_LEVELS:
            raise ValueError(f"monitor aggregation level {level!r}: one of "
                             f"{', '.join(abi.MONITOR_AGGREGATION_LEVELS)}")
        level = abi.MONITOR_AGGREGATION_LEVELS[key]
    if not abi.MONITOR_AGGREGATION_NONE <= int(level) <= abi.MONITOR_AGGREGATION_MAX:
        raise ValueError(f"monitor aggregation level {level}: 0..{abi.MONITOR_AGGREGATION_MAX}")
    if isinstance(interval, str):
        interval = float(interval.strip().removesuffix("s"))
    seconds = int(interval)
    if seconds < 1:
        raise ValueError(f"monitor interval {interval}: at least 1 second")
    out = {}
    if int(level) != abi.MONITOR_AGGREGATION:
        out["MONITOR_AGGREGATION"] = int(level)
    if seconds != abi.MONITOR_INTERVAL:
        out["MONITOR_INTERVAL"] = seconds
    return out


def _pinned_map_ids(pin_dir: str) -> set[int]:
    """Kernel ids of the maps pinned in pin_dir (any name but our program pins)."""
    ids = set()
    for f in os.listdir(pin_dir):
        path = os.path.join(pin_dir, f)
        if f.startswith((PROG_PIN_PREFIX, TMP_PIN_PREFIX)) or os.path.isdir(path):
            continue
        fd = bpfsys.obj_get(path)
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-map":
                ids.add(bpfsys.map_info(fd).id)
        finally:
            os.close(fd)
    return ids


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_pins(pin_dir: str) -> list[str]:
    """Unlink every pin under pin_dir (maps and program pins), then the directory."""
    removed = []
    p = Path(pin_dir)
    if not p.is_dir():
        return removed
    for root, dirs, files in os.walk(p, topdown=False):
        for f in sorted(files):
            os.unlink(os.path.join(root, f))
            removed.append(os.path.join(root, f))
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    p.rmdir()
    return removed
