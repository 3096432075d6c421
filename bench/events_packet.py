"""Bench (not a test): nanoseconds per packet of the monitor event code (bpf/lib/events.h drop
notifications and trace points, lib/conntrack.h's aggregation decision), by test-run: each case
measured with the events compiled in at monitor aggregation medium (the default), compiled out
(-DEVENTS_DISABLED), and for the established flow at none too, all in one run.

Method: bench/packet.py's (pktbench's pbcore.py at run time: BPF_PROG_TEST_RUN with repeat=1, the
kernel's per-call duration as the sample, N calls per case and round, rounds interleaved over
every case, one pinned CPU, 64-byte frames), in a private network namespace (bench/isolated.py),
programs compiled without pins and attached nowhere. The same fills as bench/packet.py (pods A
and B with allow-all policy and a cached policy revision; a NodePort service with a remote
backend in native routing).

Cases (each at medium and with events compiled out; the first at none too)
    tc pod to pod established      cil_from_container, one flow's ACKs (SYN and one ACK before
                                   every round): medium sends nothing, none sends from-endpoint
                                   and to-endpoint on every packet
    tc pod to pod new flow         a SYN with a new source port every call: medium sends one
                                   to-endpoint trace per call (192-byte record)
    tc drop (invalid source)       a spoofed source from pod A: one drop notification per call
    xdp nodeport established       cil_xdp_entry, one flow's ACKs (the XDP flow cache): XDP sends
                                   no traces; what is left is the CT code's share
    floors: TC_ACT_OK and XDP_PASS compiled by BCC
The ring (1 MiB) is drained, and conntrack emptied for the new-flow case, every 2048 calls and
before every round, outside the timed region; dp_event_stats' sent / lost per round are kept
(lost must stay 0: a full ring would time the cheaper failure path).

    python bench/events_packet.py [-n 100000] [--rounds 5] [--cpu K] [--quick]
                                  [--out bench/results/events_packet.json]
Writes the JSON to --out and a PNG chart (ns per packet, medium / none / compiled out) beside it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):          # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import isolated, packet                            # noqa: E402
from bench.packet import (CLIENT_EST, FRAME_LEN, NODE_IP, NODE_MAC, NODE_PORT,  # noqa: E402
                          POD_A, POD_B, ROUTER_MAC)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "events_packet.json"
HOOK_EVERY = 2048           # calls between two ring drains (a none packet writes 2 records)
BUILDS = {"medium": {}, "none": {"MONITOR_AGGREGATION": 0}, "off": {"EVENTS_DISABLED": 1}}
SPOOFED = "172.20.0.99"


class CheckFailed(RuntimeError):
    pass


def _case_name(base: str, build: str) -> str:
    return f"{base} [{build}]"


def _ours(pb, n: int, log) -> tuple[list, dict]:
    from datapath import abi, build, events, testrun
    from datapath.events import EventRing
    from datapath.maps import open_maps
    eth1 = packet._netns_setup()
    t = time.perf_counter()
    lxc, xdp = {}, {}
    for b, defines in BUILDS.items():
        o = build.compile_program("bpf_lxc.c", defines)
        lxc[b] = (o, build.load(o, "cil_from_container", "tc"))
        if b != "none":
            o = build.compile_program("bpf_xdp.c", defines)
            xdp[b] = (o, build.load(o, "cil_xdp_entry", "xdp"))
    xfloor = build.load(build.compile_program("xdp_pass.c"), "xdp_pass", "xdp")
    tfloor = build.load(build.compile_text("int tc_ok(struct __sk_buff *skb)\n"
                                           "{\n\treturn 0;\t/* TC_ACT_OK */\n}\n",
                                           name="tc floor"), "tc_ok", "tc")
    log(f"compiled and loaded bpf_lxc.c x3, bpf_xdp.c x2 and the floors in "
        f"{time.perf_counter() - t:.1f}s (no pins)")
    rings = {}
    for objs, fill in ((lxc, packet._fill_lxc), (xdp, packet._fill_xdp)):
        for o, _ in objs.values():
            m = open_maps(o)
            for tm in m.values():
                tm.clear()
            fill(m)
            rings[id(o)] = EventRing(o["cilium_events"].map_fd)

    def drain(o):
        return len(rings[id(o)].poll(0))

    def stats(o):
        return events.stats_totals(open_maps(o)["dp_event_stats"])

    xctx = bytes(testrun.XdpMd(data_end=FRAME_LEN, ingress_ifindex=eth1))
    tctx = bytes(testrun.tc_ctx(POD_A[3]))
    a_ip, a_mac, a_lxc = POD_A[0], POD_A[1], POD_A[2]
    p2p_syn = pb.tcp4_frame(a_ip, POD_B[0], 40001, 80, "S", smac=a_mac, dmac=a_lxc,
                            frame_len=FRAME_LEN)
    p2p_ack = pb.tcp4_frame(a_ip, POD_B[0], 40001, 80, "A", smac=a_mac, dmac=a_lxc,
                            frame_len=FRAME_LEN, seq=2, ack=1)
    spoofed = pb.tcp4_frame(SPOOFED, POD_B[0], 40002, 80, "S", smac=a_mac, dmac=a_lxc,
                            frame_len=FRAME_LEN)
    np_syn = pb.tcp4_frame(CLIENT_EST, NODE_IP, 51000, NODE_PORT, "S", smac=ROUTER_MAC,
                           dmac=NODE_MAC, frame_len=FRAME_LEN)
    np_ack = pb.tcp4_frame(CLIENT_EST, NODE_IP, 51000, NODE_PORT, "A", smac=ROUTER_MAC,
                           dmac=NODE_MAC, frame_len=FRAME_LEN, seq=2, ack=1)

    def new_frames(k, r):
        return packet.new_flow_frames(pb, k, r, POD_B[0], 80, src=a_ip, smac=a_mac, dmac=a_lxc)

    # ---- every case's path and event count checked once before anything is timed
    problems = []

    def check(name, o, fd, frames, ctx, want_ret, want_records, reset=None):
        if reset:
            reset()
        drain(o)
        for f in frames:
            rv, out, _ = pb.test_run_once(fd, f, ctx=ctx)
            if rv != want_ret or len(out) != FRAME_LEN:
                problems.append(f"{name}: verdict {rv} length {len(out)}")
        got = drain(o)
        ok = got == want_records
        log(f"  check {name}: verdict {rv}, {got} event records (want {want_records})"
            + ("  ok" if ok else "  PROBLEM"))
        if not ok:
            problems.append(f"{name}: {got} records")

    for b, (o, prog) in lxc.items():
        per_ack = {"medium": 0, "none": 2, "off": 0}[b]
        per_syn = {"medium": 1, "none": 2, "off": 0}[b]
        check(f"pod to pod handshake [{b}]", o, prog.fd, [p2p_syn, p2p_ack], tctx,
              abi.CTX_ACT_REDIRECT, per_syn + per_ack,
              reset=lambda o=o: packet._empty_flow_state(o))
        check(f"pod to pod established [{b}]", o, prog.fd, [p2p_ack] * 3, tctx,
              abi.CTX_ACT_REDIRECT, 3 * per_ack)
        check(f"pod to pod new flow [{b}]", o, prog.fd, new_frames(3, 99), tctx,
              abi.CTX_ACT_REDIRECT, 3 * per_syn, reset=lambda o=o: packet._empty_flow_state(o))
        check(f"drop [{b}]", o, prog.fd, [spoofed] * 2, tctx, abi.CTX_ACT_DROP,
              0 if b == "off" else 2 + (2 if b == "none" else 0))   # none: from-endpoint too
    for b, (o, prog) in xdp.items():
        check(f"xdp nodeport established [{b}]", o, prog.fd, [np_syn, np_ack, np_ack], xctx,
              abi.XDP_TX, 0, reset=lambda o=o: packet._empty_flow_state(o))
    if problems:
        raise CheckFailed(f"a case does not take its intended path: {problems}")

    # ---- the cases
    def with_events(case, o, empty_flows=False):
        """Drain the ring (and empty conntrack for new flows) every HOOK_EVERY calls and before
        every round; dp_event_stats' sent / lost per round kept in the JSON."""
        state = {}
        prev_before = case.before_round

        def hook(_i=0):
            drain(o)
            if empty_flows:
                packet._empty_flow_state(o)

        def before(r):
            if prev_before:
                prev_before(r)
            hook()
            state["stats"] = stats(o)

        def after(r, res):
            s = stats(o)
            case.extra.setdefault("events_sent_lost_per_round", []).append(
                [s["sent"] - state["stats"]["sent"], s["lost"] - state["stats"]["lost"]])
        case.before_round, case.after_round, case.hook, case.hook_every = \
            before, after, hook, HOOK_EVERY
        return case

    def established(name, o, fd, ctx, ret, syn, ack, note):
        case = pb.Case(name, fd, pb.PacketSet([ack]), ret, FRAME_LEN,
                       pb.XDP_NAMES.get(ret) if ctx is xctx else pb.TC_NAMES.get(ret), ctx=ctx,
                       note=note)

        def before(r):          # the handshake, outside the timed region
            packet._empty_flow_state(o)
            for pkt in (syn, ack):
                rv, _, _ = pb.test_run_once(fd, pkt, ctx=ctx)
                if rv != ret:
                    raise CheckFailed(f"{name}: its handshake got verdict {rv}")
        case.before_round = before
        return with_events(case, o)

    cases = [pb.Case("floor tc TC_ACT_OK", tfloor.fd, pb.PacketSet([p2p_ack]), 0, FRAME_LEN,
                     "TC_ACT_OK", ctx=tctx, note="returns TC_ACT_OK, compiled by BCC")]
    for b in ("medium", "none", "off"):
        o, prog = lxc[b]
        cases.append(established(_case_name("tc pod to pod established", b), o, prog.fd, tctx,
                                 abi.CTX_ACT_REDIRECT, p2p_syn, p2p_ack,
                                 "one flow's ACKs; SYN and one ACK before every round"))
    for b in ("medium", "off"):
        o, prog = lxc[b]
        c = pb.Case(_case_name("tc pod to pod new flow", b), prog.fd,
                    pb.PacketSet(new_frames(1, 0)), abi.CTX_ACT_REDIRECT, FRAME_LEN,
                    "TC_ACT_REDIRECT", ctx=tctx,
                    note=f"a SYN with a new source port every call; conntrack emptied every "
                         f"{HOOK_EVERY} calls")
        c.before_round = (lambda r, c=c: setattr(c, "pkts", pb.PacketSet(new_frames(n, r))))
        cases.append(with_events(c, o, empty_flows=True))
    for b in ("medium", "off"):
        o, prog = lxc[b]
        cases.append(with_events(pb.Case(
            _case_name("tc drop (invalid source)", b), prog.fd, pb.PacketSet([spoofed]),
            abi.CTX_ACT_DROP, FRAME_LEN, "TC_ACT_SHOT", ctx=tctx,
            note="a spoofed source from pod A: DROP_INVALID_SIP, one drop_notify a call"), o))
    cases.append(pb.Case("floor xdp_pass", xfloor.fd, pb.PacketSet([np_ack]), abi.XDP_PASS,
                         FRAME_LEN, "XDP_PASS", ctx=xctx, note="bpf/xdp_pass.c compiled by BCC"))
    for b in ("medium", "off"):
        o, prog = xdp[b]
        cases.append(established(_case_name("xdp nodeport established", b), o, prog.fd, xctx,
                                 abi.XDP_TX, np_syn, np_ack,
                                 "one NodePort flow's ACKs to a remote backend (XDP flow cache)"))
    info = {"xdp_ingress_ifindex": eth1, "hook_every": HOOK_EVERY,
            "builds": {b: d for b, d in BUILDS.items()}}
    return cases, info


def measure(a, work: Path, pin_dir: str, log) -> dict:
    """The child, inside its private netns: every case, rounds interleaved, one pinned CPU."""
    pb = packet._pb()
    cases, info = _ours(pb, a.calls, log)
    log(f"measuring: {a.calls} calls x {a.rounds} rounds per case, repeat=1 per call, "
        f"pinned to CPU {a.cpu}")
    pb.run_cases(cases, a.calls, a.rounds, a.cpu, log=log)
    log(pb.table("", cases))
    return {"env": pb.environment(a.cpu), "ours": info, "order": [c.name for c in cases],
            "cases": {c.name: c.summary() for c in cases}}


# ------------------------------------------------------------------ parent: report

BASES = ("tc pod to pod established", "tc pod to pod new flow", "tc drop (invalid source)",
         "xdp nodeport established")


def annotate(doc: dict) -> None:
    """Per base case: the event code's cost (medium - off, none - off) in ns and as a ratio."""
    cases, cost = doc["cases"], {}
    for base in BASES:
        off = cases.get(_case_name(base, "off"))
        if not off:
            continue
        row = {"off_ns": off["median_ns"]}
        for b in ("medium", "none"):
            s = cases.get(_case_name(base, b))
            if s:
                row[f"{b}_ns"] = s["median_ns"]
                row[f"{b}_minus_off_ns"] = s["median_ns"] - off["median_ns"]
                row[f"{b}_over_off"] = round(s["median_ns"] / off["median_ns"], 3)
        cost[base] = row
    doc["event_cost"] = cost


def report(doc: dict) -> str:
    lines = [f"ns per packet (median), BPF_PROG_TEST_RUN repeat=1, {doc['calls_per_round']} "
             f"calls x {doc['rounds']} rounds per case, CPU {doc['env']['pinned_cpu']}, kernel "
             f"{doc['env']['kernel']}, {FRAME_LEN}-byte frames",
             f"{'case':<28} {'off':>6} {'medium':>7} {'+ns':>5} {'ratio':>6} {'none':>6} "
             f"{'+ns':>5} {'ratio':>6}"]
    lines.append("-" * len(lines[-1]))
    for base, r in doc["event_cost"].items():
        lines.append(
            f"{base:<28} {r['off_ns']:>6.0f} {r.get('medium_ns', 0):>7.0f} "
            f"{r.get('medium_minus_off_ns', 0):>5.0f} {r.get('medium_over_off', 0):>5.2f}x "
            + (f"{r['none_ns']:>6.0f} {r['none_minus_off_ns']:>5.0f} {r['none_over_off']:>5.2f}x"
               if "none_ns" in r else ""))
    floors = {k: doc["cases"][k]["median_ns"] for k in ("floor tc TC_ACT_OK", "floor xdp_pass")
              if k in doc["cases"]}
    lines.append("off: -DEVENTS_DISABLED; medium: the default (bpf.monitorAggregation); none: "
                 "every packet traced; floors " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                             floors.items()))
    lost = {n: s["events_sent_lost_per_round"] for n, s in doc["cases"].items()
            if "events_sent_lost_per_round" in s}
    lines.append("events sent/lost per round: " + "; ".join(
        f"{n}: {v[0][0]}/{v[0][1]}" for n, v in lost.items() if v and v[0][0]))
    return "\n".join(lines)


def chart(doc: dict, path: Path) -> Path | None:
    try:
        from bench import charts
    except ImportError as e:
        print(f"no chart: bench/charts.py not importable ({e})", file=sys.stderr)
        return None
    groups = {}
    for base, r in doc["event_cost"].items():
        groups[base] = {k: r[f"{k}_ns"] for k in ("off", "medium", "none") if f"{k}_ns" in r}
    charts.bar_chart(str(path), "event code per packet: compiled out, medium, none "
                                "(BPF_PROG_TEST_RUN median)", "ns per packet", groups)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--calls", type=int, default=100_000, help="calls per case and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpu", type=int, help="CPU to pin to (default: the last allowed one)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON path; the PNG goes beside it")
    ap.add_argument("--quick", action="store_true", help="smoke run: -n 4096, 2 rounds")
    isolated.add_child_options(ap)
    a = ap.parse_args(argv)
    if a.quick:
        a.calls, a.rounds = min(a.calls, 4096), min(a.rounds, 2)
    if not (packet.PKTBENCH / "pbcore.py").is_file():
        sys.exit(f"events_packet.py: pktbench not found at {packet.PKTBENCH} (its pbcore.py "
                 "measures every case; it lives in ../shared/bench/pktbench, or set "
                 "PKTBENCH_DIR)")
    pb = packet._pb()
    if a.cpu is None:
        a.cpu = pb.default_cpu()
    if a.inside:
        return isolated.child(a, lambda work, pins, log: measure(a, work, pins, log))
    if os.geteuid() != 0:
        sys.exit("run as root (BPF, a network namespace)")
    args = ["-n", str(a.calls), "--rounds", str(a.rounds), "--cpu", str(a.cpu)]
    t = time.monotonic()
    r = isolated.run(__file__, args, log=lambda s: print(s, file=sys.stderr, flush=True),
                     timeout=3600)
    doc = {"tool": "bench/events_packet.py",
           "method": "BPF_PROG_TEST_RUN repeat=1 per call (pktbench's pbcore.py), N calls per "
                     "case and round, kernel-reported duration per call, rounds interleaved, "
                     "one pinned CPU; each case built with events at medium, none and compiled "
                     "out (-DEVENTS_DISABLED)",
           "calls_per_round": a.calls, "rounds": a.rounds, "frame_len": FRAME_LEN,
           "seconds": round(time.monotonic() - t, 1), **r}
    annotate(doc)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pb.write_json(str(out), doc)
    print(report(doc))
    png = chart(doc, out.with_suffix(".png"))
    print(f"\nJSON: {out}" + (f"\nPNG:  {png}" if png else ""))
    bad = sum(s["bad_retval"] + s["bad_len"] for s in doc["cases"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
