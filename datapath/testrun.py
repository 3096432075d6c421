"""BPF_PROG_TEST_RUN harness: a packet (scapy or bytes) and an optional __sk_buff context in,
the verdict and the packet out, and a readable diff when the packet is not the expected one.

It calls the bpf(2) syscall directly (BPF_PROG_TEST_RUN = 10), so it does not depend on the
libbpf version BCC links.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass

from . import abi
from .errors import DatapathError

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
_BPF_PROG_TEST_RUN = 10
_libc = ctypes.CDLL(None, use_errno=True)


class _TestAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class SkBuff(ctypes.Structure):
    """struct __sk_buff (uapi/linux/bpf.h) up to hwtstamp; the kernel accepts only some fields
    as input (mark, priority, ingress_ifindex, ifindex, cb, tstamp, wire_len, gso_*)."""
    _fields_ = [("len", ctypes.c_uint32), ("pkt_type", ctypes.c_uint32), ("mark", ctypes.c_uint32),
                ("queue_mapping", ctypes.c_uint32), ("protocol", ctypes.c_uint32),
                ("vlan_present", ctypes.c_uint32), ("vlan_tci", ctypes.c_uint32),
                ("vlan_proto", ctypes.c_uint32), ("priority", ctypes.c_uint32),
                ("ingress_ifindex", ctypes.c_uint32), ("ifindex", ctypes.c_uint32),
                ("tc_index", ctypes.c_uint32), ("cb", ctypes.c_uint32 * 5),
                ("hash", ctypes.c_uint32), ("tc_classid", ctypes.c_uint32),
                ("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("napi_id", ctypes.c_uint32), ("family", ctypes.c_uint32),
                ("remote_ip4", ctypes.c_uint32), ("local_ip4", ctypes.c_uint32),
                ("remote_ip6", ctypes.c_uint32 * 4), ("local_ip6", ctypes.c_uint32 * 4),
                ("remote_port", ctypes.c_uint32), ("local_port", ctypes.c_uint32),
                ("data_meta", ctypes.c_uint32), ("flow_keys", ctypes.c_uint64),
                ("tstamp", ctypes.c_uint64), ("wire_len", ctypes.c_uint32),
                ("gso_segs", ctypes.c_uint32), ("sk", ctypes.c_uint64),
                ("gso_size", ctypes.c_uint32), ("tstamp_type", ctypes.c_uint8),
                ("_pad", ctypes.c_uint8 * 3), ("hwtstamp", ctypes.c_uint64)]


class XdpMd(ctypes.Structure):
    """struct xdp_md as BPF_PROG_TEST_RUN takes it (data offsets are filled by the kernel)."""
    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("data_meta", ctypes.c_uint32), ("ingress_ifindex", ctypes.c_uint32),
                ("rx_queue_index", ctypes.c_uint32), ("egress_ifindex", ctypes.c_uint32)]


@dataclass
class RunResult:
    retval: int
    data: bytes
    ctx: SkBuff | XdpMd | None
    duration_ns: int

    @property
    def verdict(self) -> str:
        return abi.VERDICT_NAMES.get(self.retval, str(self.retval))


class TestRunError(DatapathError):
    pass


def run(prog_fd: int, packet, *, ctx: SkBuff | XdpMd | None = None, repeat: int = 1,
        out_room: int = 256) -> RunResult:
    """Run a loaded program once (or `repeat` times) over `packet`; return verdict and output."""
    data = bytes(packet)
    inbuf = ctypes.create_string_buffer(data, len(data))
    outbuf = ctypes.create_string_buffer(len(data) + out_room)
    attr = _TestAttr(prog_fd=prog_fd, data_size_in=len(data), data_size_out=len(outbuf),
                     data_in=ctypes.addressof(inbuf), data_out=ctypes.addressof(outbuf),
                     repeat=repeat)
    ctx_out = None
    if ctx is not None:
        ctx_in = type(ctx).from_buffer_copy(bytes(ctx))
        if isinstance(ctx_in, XdpMd):
            ctx_in.data_end = len(data)     # the kernel wants the frame's extent here
        ctx_out = type(ctx)()
        attr.ctx_size_in = attr.ctx_size_out = ctypes.sizeof(type(ctx))
        attr.ctx_in, attr.ctx_out = ctypes.addressof(ctx_in), ctypes.addressof(ctx_out)
    rc = _libc.syscall(_NR_BPF, _BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc != 0:
        err = ctypes.get_errno()
        raise TestRunError(f"BPF_PROG_TEST_RUN failed: {os.strerror(err)} (errno {err})")
    return RunResult(retval=attr.retval, data=outbuf.raw[: attr.data_size_out], ctx=ctx_out,
                     duration_ns=attr.duration)


@contextlib.contextmanager
def one_cpu(cpu: int | None = None):
    """The calling thread on one CPU (the lowest it may use, by default) for the block, then
    back on the CPUs it had: test runs and map writes then meet one CPU's LRU free lists, as
    the packets of one flow do."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus) if cpu is None else cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


def xdp_ctx(ingress_ifindex: int) -> XdpMd:
    """A context for an XDP program receiving the packet on `ingress_ifindex`."""
    return XdpMd(ingress_ifindex=ingress_ifindex)


def tc_ctx(ifindex: int = 1, **fields) -> SkBuff:
    """A context for a tc program seeing the packet on `ifindex` (1 = lo, which always exists)."""
    ctx = SkBuff(ifindex=ifindex)
    for k, v in fields.items():
        setattr(ctx, k, v)
    return ctx


def packet_diff(expected: bytes, actual: bytes) -> str:
    """Human-readable difference: both packets decoded by scapy, then the differing bytes."""
    expected, actual = bytes(expected), bytes(actual)
    if expected == actual:
        return ""
    lines = []
    try:
        from scapy.layers.l2 import Ether
        lines.append("expected:\n" + Ether(expected).show(dump=True))
        lines.append("actual:\n" + Ether(actual).show(dump=True))
    except Exception:  # a packet scapy cannot decode is still diffed byte by byte
        pass
    if len(expected) != len(actual):
        lines.append(f"length: expected {len(expected)}, actual {len(actual)}")
    diffs = [i for i in range(min(len(expected), len(actual))) if expected[i] != actual[i]]
    for i in diffs[:32]:
        lines.append(f"  byte {i:4d}: expected {expected[i]:02x}, actual {actual[i]:02x}")
    if len(diffs) > 32:
        lines.append(f"  ... and {len(diffs) - 32} more differing bytes")
    return "\n".join(lines)


def assert_packet(expected, actual) -> None:
    """Raise AssertionError with packet_diff when the two packets are not byte for byte equal."""
    d = packet_diff(bytes(expected), bytes(actual))
    if d:
        raise AssertionError("packet mismatch\n" + d)
