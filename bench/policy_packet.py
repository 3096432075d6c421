"""Bench (not a test): what identity policy costs per packet on cil_from_container, pod -> pod on
one node, an established TCP flow (so both ends' conntrack entries exist and every packet takes
the forward path: the sender's egress policy, then the receiver's ingress policy on delivery).

Two settings of the same program and packet:
    allow-all   neither endpoint enforces: one allow-all entry per endpoint and direction
    50 rules    both enforce: the sender's egress and the receiver's ingress hold 50 entries
                each (49 other identities and ports, and the one that matches)
Both live side by side in the one policy map (two sender/receiver pairs). The policy revision
(dp_policy_revision, `--revision`, default 1 as the agent keeps it) lets each flow's conntrack
entry cache its verdict, so an established packet skips the LPM lookups; `--revision 0` measures
the uncached path, every packet decided. A run is `calls` test
runs (BPF_PROG_TEST_RUN with `repeat`: the kernel's own timing, ns per packet) of each setting,
alternating call by call so both see the same machine; a run's value is the median of its
calls, and the median of the runs is reported with the ratio. The packet carries TTL 255: a
test run reuses its buffer across repeats and local delivery takes one off each time (repeat
stays below 255, so every repeat is a real delivery).

Isolation: the programs are compiled without pinning (maps private to this process) and run on
ifindex 1 (lo); nothing is attached. The process pins itself to one CPU when it can.

    python bench/policy_packet.py [--runs 7] [--calls 200] [--repeat 250] [--revision 1]
                                  [--cpu N] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):          # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.inet import IP, TCP                       # noqa: E402
from scapy.layers.l2 import Ether                           # noqa: E402

from datapath import abi, build, testrun                   # noqa: E402
from datapath.maps import open_maps                        # noqa: E402

# (ip, pod MAC, lxc MAC, ifindex, endpoint id, identity): a sender and a receiver per setting
PAIRS = {
    "allow-all": (("172.20.0.10", "02:00:00:00:00:0a", "02:00:00:00:01:0a", 1, 10, 1000),
                  ("172.20.0.11", "02:00:00:00:00:0b", "02:00:00:00:01:0b", 42, 11, 1001)),
    "50 rules": (("172.20.0.20", "02:00:00:00:00:14", "02:00:00:00:01:14", 1, 20, 1010),
                 ("172.20.0.21", "02:00:00:00:00:15", "02:00:00:00:01:15", 43, 21, 1011)),
}
SPORT, DPORT = 40000, 80
RULES = 50


def _packet(src, dst, flags: str, ttl: int) -> bytes:
    return bytes(Ether(src=src[1], dst=src[2]) / IP(src=src[0], dst=dst[0], ttl=ttl, id=1)
                 / TCP(sport=SPORT, dport=DPORT, flags=flags, seq=1, ack=1) / (b"x" * 64))


def _setup(maps) -> dict[str, int]:
    """Both pairs' endpoints and policies in the one policy map; returns entries per setting."""
    pol, entries = maps["cilium_policy_v2"], {}
    for setting, (a, b) in PAIRS.items():
        for ip, mac, lxc, ifindex, ep, ident in (a, b):
            maps["cilium_lxc"].update(abi.endpoint_key(ip), abi.endpoint_info(
                ifindex=ifindex, lxc_id=ep, mac=mac, node_mac=lxc, sec_id=ident, ip=ip))
        keys = []
        if setting == "allow-all":          # neither endpoint enforces
            keys = [abi.policy_key(ep, 0, d) for ep in (a[4], b[4])
                    for d in (abi.POLICY_INGRESS, abi.POLICY_EGRESS)]
        else:                               # the sender's egress, the receiver's ingress
            for ep, peer, d in ((a[4], b[5], abi.POLICY_EGRESS), (b[4], a[5], abi.POLICY_INGRESS)):
                keys += [abi.policy_key(ep, 2000 + i, d, 6, 8000 + i) for i in range(RULES - 1)]
                keys.append(abi.policy_key(ep, peer, d, 6, DPORT))
            # the directions the flow does not use stay open
            keys += [abi.policy_key(a[4], 0, abi.POLICY_INGRESS),
                     abi.policy_key(b[4], 0, abi.POLICY_EGRESS)]
        for k in keys:
            pol.update(k, abi.policy_entry())
        entries[setting] = len(keys)
    return entries


def _send_as(maps, sender) -> None:
    """From-container runs on ifindex 1 (lo): make it the sender's veth."""
    from tests.bpf.endpoints import set_sender
    set_sender(maps, sender[0], 1)


def _set_revision(obj, revision: int) -> None:
    """dp_policy_revision[0], as the agent writes it (0: nothing cached)."""
    table = obj["dp_policy_revision"]
    table[table.Key(0)] = table.Leaf(revision, 0)


def measure(runs: int = 7, calls: int = 200, repeat: int = 250, cpu: int | None = None,
            log=print, revision: int = 1) -> dict:
    if not 1 <= repeat <= 254:
        raise ValueError("repeat must be 1..254 (each repeat takes one off the TTL of 255)")
    pinned = None
    if cpu is None:
        cpu = max(os.sched_getaffinity(0))
    try:
        os.sched_setaffinity(0, {cpu})
        pinned = cpu
    except OSError as e:
        log(f"could not pin to CPU {cpu}: {e}")
    t = time.perf_counter()
    obj = build.compile_program("bpf_lxc.c")
    fn = build.load(obj, "cil_from_container", "tc")
    compile_s = time.perf_counter() - t
    log(f"compiled and loaded cil_from_container in {compile_s:.1f} s")
    maps = open_maps(obj)
    for m in maps.values():
        m.clear()
    entries = _setup(maps)
    _set_revision(obj, revision)
    ctx = testrun.tc_ctx(1)
    acks = {}
    for setting, (a, b) in PAIRS.items():      # open each flow: both ends' entries exist
        _send_as(maps, a)
        if testrun.run(fn.fd, _packet(a, b, "S", 64), ctx=ctx).retval != abi.CTX_ACT_REDIRECT:
            raise RuntimeError(f"{setting}: the flow's first packet was not delivered")
        acks[setting] = _packet(a, b, "A", 255)
    per_run = {s: [] for s in PAIRS}
    for i in range(runs):
        # the settings alternate call by call, so both see the same machine
        samples = {s: [] for s in PAIRS}
        for c in range(2 * calls):
            setting = list(PAIRS)[(c + i) % 2]
            _send_as(maps, PAIRS[setting][0])
            res = testrun.run(fn.fd, acks[setting], ctx=ctx, repeat=repeat)
            if res.retval != abi.CTX_ACT_REDIRECT:
                raise RuntimeError(f"{setting}: expected a delivery, got {res.verdict}")
            samples[setting].append(res.duration_ns)
        for s in PAIRS:
            per_run[s].append(statistics.median(samples[s]))
        log(f"run {i + 1}/{runs}: " + ", ".join(f"{s} {per_run[s][-1]:.0f} ns" for s in PAIRS))
    med = {s: statistics.median(v) for s, v in per_run.items()}
    names = list(PAIRS)
    return {"runs": runs, "calls": calls, "repeat": repeat, "cpu": pinned, "revision": revision,
            "packets_per_run": calls * repeat, "compile_seconds": compile_s,
            "policy_entries": entries, "ns_per_packet": per_run, "median_ns": med,
            "ratio": med[names[1]] / med[names[0]]}


def report(r: dict) -> str:
    a, b = r["median_ns"]
    lines = [f"cil_from_container, pod -> pod on one node, established TCP flow: "
             f"{r['runs']} runs x {r['packets_per_run']} packets (test runs of {r['repeat']}), "
             f"CPU {r['cpu'] if r['cpu'] is not None else 'not pinned'}, policy revision "
             f"{r['revision']} ({'verdicts cached' if r['revision'] else 'every packet decided'})",
             "",
             f"| {'policy':<32} | {'entries':>7} | {'median ns/packet':>16} | "
             f"{'range':>15} |",
             f"|{'-' * 34}|{'-' * 9}|{'-' * 18}|{'-' * 17}|"]
    names = {a: "allow-all (not enforced)", b: f"{RULES} rules a direction (enforced)"}
    for s in (a, b):
        v = r["ns_per_packet"][s]
        lines.append(f"| {names[s]:<32} | {r['policy_entries'][s]:>7} | "
                     f"{r['median_ns'][s]:>16.0f} | {min(v):>6.0f} - {max(v):>6.0f} |")
    lines += ["", f"ratio enforced / allow-all: {r['ratio']:.2f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="runs per setting (median)")
    ap.add_argument("--calls", type=int, default=200, help="test runs per run")
    ap.add_argument("--repeat", type=int, default=250, help="packets per test run (1..254)")
    ap.add_argument("--revision", type=int, default=1,
                    help="dp_policy_revision (0: no verdict cache, every packet decided)")
    ap.add_argument("--cpu", type=int, help="CPU to pin to (default: the highest allowed)")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    a = ap.parse_args(argv)
    r = measure(a.runs, a.calls, a.repeat, a.cpu,
                log=lambda s: print(s, file=sys.stderr, flush=True), revision=a.revision)
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
