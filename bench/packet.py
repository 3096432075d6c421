"""Bench (not a test): nanoseconds per packet of our XDP NodePort path and of cil_from_container,
beside Katran's XDP balancer, with pktbench's method, all in one run.

Method (../shared/bench/pktbench/README.md; its pbcore.py is used at run time, not copied):
BPF_PROG_TEST_RUN with repeat=1, N calls per case and round, the input frame handed in again on
every call (a rewriting program takes its real path every time), the kernel's per-call duration
as the sample, the process pinned to one CPU, rounds interleaved over every case (ours and
Katran's), 64-byte Ethernet/IPv4/TCP frames. Reported per case: median, p10, p90, p99, mean,
per-round medians, bad_retval / bad_len, the median minus the floor of its hook (XDP_PASS or
TC_ACT_OK measured in the same run), and for the XDP cases the ratio to Katran's matching case.

Cases
    ours, XDP (cil_xdp_entry, native routing, next hop resolved):
      NodePort new flow to a remote backend    every call a new 5-tuple: DNAT + SNAT + FIB, XDP_TX
      NodePort established, remote backend     one flow whose SYN and one ACK go before every round
      not a service                             TCP to the node's port 22: XDP_PASS untouched
    ours, tc (cil_from_container on pod A's veth):
      pod to ClusterIP new flow                 every call a new source port: DNAT, local delivery
      pod to ClusterIP established              SYN and one ACK before every round, then ACKs
      pod to pod, same node, established        SYN and one ACK before every round, then ACKs
    floors: XDP_PASS (bpf/xdp_pass.c) and TC_ACT_OK, both compiled by BCC as ours are
    Katran (katran_ref.py's build, load and map fill): SYN to VIP (new flow), ACK (established,
      LRU hit), SYN to a non-VIP (pass)

New flows: client source ports cycle through 32768 + (k mod 16384) (inside Linux's ephemeral range
and the NAT port range, so the client's own port is the SNAT port); a new client address every
16384 flows. Our conntrack, NAT (and XDP flow) maps are emptied before every round and every 16384
calls, outside the timed region, so no flow ever finds an earlier one's state and the NAT port
space never runs out. Katran's SYNs are katran_ref's (its LRU is large enough not to be emptied).

Isolation: the measuring child runs in a private network namespace (bench/isolated.py) holding a
veth "eth1" with a route to the remote pod CIDR and a resolved neighbour (the FIB lookup of the
remote case); our programs are compiled without pins (maps private to the process) and attached
nowhere; Katran is pinned under a private /sys/fs/bpf/dpbench-katran-<pid>-<rand>, removed in
`finally`. Katran needs clang, llvm, bpftool and libbpf-dev (apt); without them use --no-katran.

    python bench/packet.py [-n 100000] [--rounds 5] [--cpu K] [--out bench/results/packet.json]
                           [--quick] [--no-katran] [--lru-size 8000000] [--before OLD.json]
Writes the JSON to --out and a PNG chart (ns per packet, Katran beside ours) next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import struct
import sys
import time
from pathlib import Path

if __package__ in (None, ""):          # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import isolated                                    # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# the reference harness beside the project (../shared/bench/pktbench), or PKTBENCH_DIR
PKTBENCH = Path(os.environ.get("PKTBENCH_DIR") or
                ROOT / ".." / "shared" / "bench" / "pktbench").resolve()
DEFAULT_OUT = ROOT / "bench" / "results" / "packet.json"

FRAME_LEN = 64
# the node, its next hop and a remote backend (native routing), as in tests/bpf
NODE_IP, NODE_MAC = "192.168.10.100", "02:00:00:00:aa:00"
NEXT_HOP, NEXT_HOP_MAC = "192.168.10.101", "02:00:00:00:aa:01"
REMOTE_CIDR, REMOTE_POD = "172.20.1.0/24", "172.20.1.9"
ROUTER_MAC = "02:00:00:00:aa:fe"
NODE_PORT, BPORT, NP_REV_NAT = 30080, 8080, 21
# two local pods; from-container runs on ifindex 1 (lo), made pod A's veth
POD_A = ("172.20.0.10", "02:00:00:00:00:0a", "02:00:00:00:01:0a", 1, 10, 1000)
POD_B = ("172.20.0.11", "02:00:00:00:00:0b", "02:00:00:00:01:0b", 42, 11, 1001)
VIP, VPORT, VIP_REV_NAT = "10.96.0.10", 80, 7
CLIENT_NEW_NET = "198.18"          # new-flow clients 198.18.x.y
CLIENT_EST = "192.0.2.7"
FLOW_SPAN = 16384                  # new flows between two emptyings of the flow-state maps
# flow state emptied for new-flow cases (those the compiled object has)
FLOW_MAPS = ("cilium_ct4_global", "cilium_ct_any4_global", "cilium_snat_v4_external",
             "dp_xdp_flow4")

# ours -> Katran's matching case
KATRAN_MATCH = {
    "xdp nodeport new flow (remote)": "katran SYN to VIP (new flow)",
    "xdp nodeport established (remote)": "katran ACK (established, LRU hit)",
    "xdp not a service (pass)": "katran SYN to non-VIP (pass)",
}
SHORT = {"floor xdp_pass": "XDP floor", "xdp nodeport new flow (remote)": "XDP NP new",
         "xdp nodeport established (remote)": "XDP NP est.",
         "xdp not a service (pass)": "XDP not svc", "floor tc TC_ACT_OK": "tc floor",
         "tc pod to ClusterIP new flow": "tc ClusterIP new",
         "tc pod to ClusterIP established": "tc ClusterIP est.",
         "tc pod to pod established": "tc pod-pod est."}
FLOOR_OF = {"xdp": "floor xdp_pass", "tc": "floor tc TC_ACT_OK"}


def _pb():
    if str(PKTBENCH) not in sys.path:
        sys.path.insert(0, str(PKTBENCH))
    import pbcore
    return pbcore


# ------------------------------------------------------------------ child: setup and cases

def _netns_setup() -> int:
    """In the private netns: eth1 (the node's MAC and address), a route to the remote pod CIDR
    via the next hop, the neighbour resolved, forwarding on. Returns eth1's ifindex."""
    import socket
    from datapath import netns
    netns.ip(None, "link", "add", "eth1", "address", NODE_MAC, "type", "veth", "peer", "name",
             "eth1p")
    for dev in ("lo", "eth1", "eth1p"):
        netns.ip(None, "link", "set", dev, "up")
    netns.ip(None, "addr", "add", f"{NODE_IP}/24", "dev", "eth1")
    netns.ip(None, "route", "add", REMOTE_CIDR, "via", NEXT_HOP, "dev", "eth1")
    netns.ip(None, "neigh", "add", NEXT_HOP, "lladdr", NEXT_HOP_MAC, "dev", "eth1")
    # bpf_fib_lookup answers only for a device that forwards (this netns's own sysctls)
    netns.run(None, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=1")
    netns.run(None, "sysctl", "-qw", "net.ipv4.conf.eth1.forwarding=1")
    return socket.if_nametoindex("eth1")


def _endpoints(m) -> None:
    from tests.bpf.endpoints import add_endpoint
    for ip, mac, lxc, ifindex, ep_id, ident in (POD_A, POD_B):
        add_endpoint(m, ip, ifindex=ifindex, lxc_id=ep_id, mac=mac, node_mac=lxc, sec_id=ident)


def _service(m, addr, port, rev_nat, backends, flags=0) -> None:
    """A TCP frontend (EXT scope, random) whose slots hold backends [(id, ip, port)]."""
    from tests.bpf.services import frontend
    frontend(m, backends, addr=addr, port=port, rev_nat=rev_nat, flags=flags)


def _fill_xdp(m) -> None:
    """A node in native routing (host routing on), no masquerade; one NodePort service whose
    one backend is a pod on the next-hop node."""
    from datapath import abi
    _endpoints(m)
    m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
        flags=abi.NODE_CFG_F_HOST_ROUTING, node_ip=abi.ip4_to_be32(NODE_IP)))
    m["cilium_ipmasq_v4"].update(abi.ipmasq_key("172.20.0.0/16"), abi.U8Value(1))
    m["cilium_ipcache"].update(abi.ipcache_key("0.0.0.0/0"), abi.remote_endpoint_info(2))
    m["cilium_ipcache"].update(abi.ipcache_key(f"{NEXT_HOP}/32"), abi.remote_endpoint_info(6))
    m["cilium_ipcache"].update(abi.ipcache_key(f"{REMOTE_POD}/32"),
                               abi.remote_endpoint_info(1234, NEXT_HOP))
    _service(m, NODE_IP, NODE_PORT, NP_REV_NAT, [(1, REMOTE_POD, BPORT)],
             flags=abi.SVC_FLAG_NODEPORT | abi.SVC_FLAG_ROUTABLE)


def _fill_lxc(m) -> None:
    """Pods A and B on this node (allow-all policy), from-container on A's veth; a ClusterIP
    service whose one backend is B."""
    from datapath import abi
    from tests.bpf.endpoints import set_sender
    _endpoints(m)
    set_sender(m, POD_A[0], POD_A[3])
    m["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
        flags=abi.NODE_CFG_F_HOST_ROUTING, node_ip=abi.ip4_to_be32(NODE_IP)))
    _service(m, VIP, VPORT, VIP_REV_NAT, [(2, POD_B[0], BPORT)])
    # the agent bumps the policy revision after writing policy (agent/policy/subsystem.py);
    # at 0 conntrack caches no verdict, which no running agent leaves
    m["dp_policy_revision"].update(abi.U32Key(0), abi.PolicyRevision(revision=1))


def new_flow_frames(pb, n: int, r: int, dst: str, dport: int, *, src: str | None = None,
                    smac: str = ROUTER_MAC, dmac: str = NODE_MAC) -> list[bytes]:
    """n new flows of round r: source port 32768 + (k mod FLOW_SPAN) for the k-th flow of the
    run; without src, a new client address every FLOW_SPAN flows."""
    frames, cur, base = [], None, None
    for i in range(n):
        k = r * n + i
        client = src or f"{CLIENT_NEW_NET}.{(k // FLOW_SPAN) // 250 % 250}." \
                        f"{(k // FLOW_SPAN) % 250 + 1}"
        if client != cur:
            base = pb.tcp4_frame(client, dst, 32768, dport, "S", smac=smac, dmac=dmac,
                                 frame_len=FRAME_LEN)
            cur = client
        frames.append(pb.with_sport(base, 32768 + k % FLOW_SPAN))
    return frames


def _decode(pb, frame: bytes) -> dict:
    """The fields a check looks at, with whether both checksums hold."""
    ip = frame[14:34]
    tcp = frame[34:]
    tot = struct.unpack("!H", ip[2:4])[0]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, tot - 20)
    return {"dmac": frame[0:6].hex(":"), "smac": frame[6:12].hex(":"), "ttl": ip[8],
            "src": ".".join(map(str, ip[12:16])), "dst": ".".join(map(str, ip[16:20])),
            "sport": struct.unpack("!H", tcp[0:2])[0], "dport": struct.unpack("!H", tcp[2:4])[0],
            "csum_ok": pb.csum16(ip) == 0 and pb.csum16(pseudo + frame[34:14 + tot]) == 0}


def _flow_entries(obj) -> int:
    n = 0
    for name in FLOW_MAPS:
        try:
            n += sum(1 for _ in obj[name].keys())
        except KeyError:
            pass
    return n


def _cache_hits(obj) -> int | None:
    """dp_xdp_flow_stats[XDP_FLOW_STAT_HIT] summed over CPUs (None: no flow cache)."""
    try:
        table = obj["dp_xdp_flow_stats"]
    except KeyError:
        return None
    return sum(int(v) for v in table[table.Key(0)])


def _empty_flow_state(obj) -> None:
    """Empty the flow-state maps in batches (BCC's clear() deletes while it iterates, which
    restarts the walk after every delete: quadratic)."""
    for name in FLOW_MAPS:
        try:
            table = obj[name]
        except KeyError:
            continue
        try:
            for _ in table.items_lookup_and_delete_batch():
                pass
        except Exception:       # no batch ops: collect the keys first, then delete
            for k in list(table.keys()):
                del table[k]


class CheckFailed(RuntimeError):
    pass


def _ours(pb, n: int, log) -> tuple[list, dict]:
    """Compile, fill and check our programs; returns (cases, info)."""
    from datapath import abi, build, testrun
    from datapath.maps import open_maps
    eth1 = _netns_setup()
    t = time.perf_counter()
    xdp_obj = build.compile_program("bpf_xdp.c")
    xdp = build.load(xdp_obj, "cil_xdp_entry", "xdp")
    lxc_obj = build.compile_program("bpf_lxc.c")
    lxc = build.load(lxc_obj, "cil_from_container", "tc")
    xfloor = build.load(build.compile_program("xdp_pass.c"), "xdp_pass", "xdp")
    tfloor = build.load(build.compile_text("int tc_ok(struct __sk_buff *skb)\n"
                                           "{\n\treturn 0;\t/* TC_ACT_OK */\n}\n",
                                           name="tc floor"), "tc_ok", "tc")
    log(f"compiled and loaded bpf_xdp.c, bpf_lxc.c and the floors in "
        f"{time.perf_counter() - t:.1f}s (no pins: maps private to this process)")
    xm, lm = open_maps(xdp_obj), open_maps(lxc_obj)
    for m in (xm, lm):
        for tm in m.values():
            tm.clear()
    _fill_xdp(xm)
    _fill_lxc(lm)

    xctx = bytes(testrun.XdpMd(data_end=FRAME_LEN, ingress_ifindex=eth1))
    tctx = bytes(testrun.tc_ctx(POD_A[3]))
    np_est_syn = pb.tcp4_frame(CLIENT_EST, NODE_IP, 51000, NODE_PORT, "S", smac=ROUTER_MAC,
                               dmac=NODE_MAC, frame_len=FRAME_LEN)
    np_est_ack = pb.tcp4_frame(CLIENT_EST, NODE_IP, 51000, NODE_PORT, "A", smac=ROUTER_MAC,
                               dmac=NODE_MAC, frame_len=FRAME_LEN, seq=2, ack=1)
    not_svc = pb.tcp4_frame(CLIENT_EST, NODE_IP, 51001, 22, "S", smac=ROUTER_MAC, dmac=NODE_MAC,
                            frame_len=FRAME_LEN)
    a_ip, a_mac, a_lxc = POD_A[0], POD_A[1], POD_A[2]
    vip_syn = pb.tcp4_frame(a_ip, VIP, 40000, VPORT, "S", smac=a_mac, dmac=a_lxc,
                            frame_len=FRAME_LEN)
    vip_ack = pb.tcp4_frame(a_ip, VIP, 40000, VPORT, "A", smac=a_mac, dmac=a_lxc,
                            frame_len=FRAME_LEN, seq=2, ack=1)
    p2p_syn = pb.tcp4_frame(a_ip, POD_B[0], 40001, 80, "S", smac=a_mac, dmac=a_lxc,
                            frame_len=FRAME_LEN)
    p2p_ack = pb.tcp4_frame(a_ip, POD_B[0], 40001, 80, "A", smac=a_mac, dmac=a_lxc,
                            frame_len=FRAME_LEN, seq=2, ack=1)

    # ---- check every case once, decoding its output, before anything is timed
    problems = []

    def check(name, fd, frame, ctx, want_ret, want: dict | None):
        rv, out, _ = pb.test_run_once(fd, frame, ctx=ctx)
        got = _decode(pb, out) if want is not None and len(out) >= 54 else {}
        bad = [f"{k}={got.get(k)!r} (want {v!r})" for k, v in (want or {}).items()
               if got.get(k) != v and not callable(v)]
        bad += [f"{k}={got.get(k)!r}" for k, v in (want or {}).items()
                if callable(v) and not v(got.get(k))]
        if rv != want_ret:
            bad.insert(0, f"verdict {rv} (want {want_ret})")
        if want is None and out != frame:
            bad.append("output differs from input (want untouched)")
        if len(out) != FRAME_LEN:
            bad.append(f"length {len(out)}")
        log(f"  check {name}: verdict {rv}, {len(out)}B, "
            + (", ".join(f"{k}={v}" for k, v in got.items()) if got else "untouched"
               if out == frame else "changed")
            + (f"  PROBLEMS: {bad}" if bad else "  ok"))
        if bad:
            problems.append(name)
        return got

    def in_nat(p):
        return p is not None and abi.NODEPORT_PORT_MIN_NAT <= p <= abi.NODEPORT_PORT_MAX_NAT

    remote_want = {"dst": REMOTE_POD, "dport": BPORT, "src": NODE_IP, "sport": in_nat,
                   "ttl": 63, "smac": NODE_MAC, "dmac": NEXT_HOP_MAC, "csum_ok": True}
    first = new_flow_frames(pb, 1, 0, NODE_IP, NODE_PORT)[0]
    _empty_flow_state(xdp_obj)
    g = check("xdp nodeport new flow (remote)", xdp.fd, first, xctx, abi.XDP_TX, remote_want)
    if g.get("sport") != 32768:
        log(f"  note: the SNAT port is {g.get('sport')}, not the client's own 32768")
    syn_out = check("xdp nodeport established: its SYN", xdp.fd, np_est_syn, xctx, abi.XDP_TX,
                    remote_want)
    check("xdp nodeport established (remote)", xdp.fd, np_est_ack, xctx, abi.XDP_TX,
          dict(remote_want, sport=syn_out.get("sport")))
    check("xdp not a service (pass)", xdp.fd, not_svc, xctx, abi.XDP_PASS, None)
    check("floor xdp_pass", xfloor.fd, not_svc, xctx, abi.XDP_PASS, None)
    deliver_b = {"dst": POD_B[0], "src": a_ip, "ttl": 63, "smac": POD_B[2], "dmac": POD_B[1],
                 "csum_ok": True}
    _empty_flow_state(lxc_obj)
    first = new_flow_frames(pb, 1, 0, VIP, VPORT, src=a_ip, smac=a_mac, dmac=a_lxc)[0]
    check("tc pod to ClusterIP new flow", lxc.fd, first, tctx, abi.CTX_ACT_REDIRECT,
          dict(deliver_b, dport=BPORT))
    check("tc pod to ClusterIP established: its SYN", lxc.fd, vip_syn, tctx,
          abi.CTX_ACT_REDIRECT, dict(deliver_b, dport=BPORT))
    check("tc pod to ClusterIP established", lxc.fd, vip_ack, tctx, abi.CTX_ACT_REDIRECT,
          dict(deliver_b, dport=BPORT, sport=40000))
    check("tc pod to pod established: its SYN", lxc.fd, p2p_syn, tctx, abi.CTX_ACT_REDIRECT,
          dict(deliver_b, dport=80))
    check("tc pod to pod established", lxc.fd, p2p_ack, tctx, abi.CTX_ACT_REDIRECT,
          dict(deliver_b, dport=80, sport=40001))
    check("floor tc TC_ACT_OK", tfloor.fd, vip_syn, tctx, 0, None)
    if problems:
        raise CheckFailed(f"a case does not take its intended path: {problems}")

    # ---- the cases
    empties = {"xdp": 0, "tc": 0}

    def new_flow_case(name, hook_kind, obj, fd, ctx, ret, frames_for, note):
        case = pb.Case(name, fd, pb.PacketSet([first]), ret, FRAME_LEN,
                       pb.XDP_NAMES.get(ret) if hook_kind == "xdp" else pb.TC_NAMES.get(ret),
                       ctx=ctx, note=note)

        def empty(_i=0):
            _empty_flow_state(obj)
            empties[hook_kind] += 1

        def before(r):
            case.pkts = pb.PacketSet(frames_for(n, r))
            empty()
        case.before_round, case.hook, case.hook_every = before, empty, FLOW_SPAN
        return case

    def established_case(name, hook_kind, obj, fd, ctx, ret, syn, ack, note):
        case = pb.Case(name, fd, pb.PacketSet([ack]), ret, FRAME_LEN,
                       pb.XDP_NAMES.get(ret) if hook_kind == "xdp" else pb.TC_NAMES.get(ret),
                       ctx=ctx, note=note)
        state = {}

        def before(r):          # the handshake, outside the timed region
            for pkt in (syn, ack):
                rv, _, _ = pb.test_run_once(fd, pkt, ctx=ctx)
                if rv != ret:
                    raise CheckFailed(f"{name}: its handshake got verdict {rv}")
            state["entries"] = _flow_entries(obj)
            state["hits"] = _cache_hits(obj)

        def after(r, res):
            case.extra.setdefault("flow_state_entries_before_after_round", []).append(
                [state["entries"], _flow_entries(obj)])
            hits = _cache_hits(obj)
            if hits is not None:
                case.extra.setdefault("xdp_flow_cache_hits_per_round", []).append(
                    hits - state["hits"])
        case.before_round, case.after_round = before, after
        return case

    cases = [
        pb.Case("floor xdp_pass", xfloor.fd, pb.PacketSet([not_svc]), abi.XDP_PASS, FRAME_LEN,
                "XDP_PASS", ctx=xctx, note="bpf/xdp_pass.c compiled by BCC"),
        new_flow_case("xdp nodeport new flow (remote)", "xdp", xdp_obj, xdp.fd, xctx, abi.XDP_TX,
                      lambda k, r: new_flow_frames(pb, k, r, NODE_IP, NODE_PORT),
                      f"every call a new 5-tuple (client {CLIENT_NEW_NET}.x.y, sport 32768 + "
                      f"k mod {FLOW_SPAN}); conntrack/NAT/flow maps emptied before every round and "
                      f"every {FLOW_SPAN} calls, outside the timed region"),
        established_case("xdp nodeport established (remote)", "xdp", xdp_obj, xdp.fd, xctx,
                         abi.XDP_TX, np_est_syn, np_est_ack,
                         "one flow (ACKs); its SYN and one ACK sent before every round"),
        pb.Case("xdp not a service (pass)", xdp.fd, pb.PacketSet([not_svc]), abi.XDP_PASS,
                FRAME_LEN, "XDP_PASS", ctx=xctx, note="TCP SYN to the node's port 22"),
        pb.Case("floor tc TC_ACT_OK", tfloor.fd, pb.PacketSet([vip_syn]), 0, FRAME_LEN,
                "TC_ACT_OK", ctx=tctx, note="returns TC_ACT_OK, compiled by BCC"),
        new_flow_case("tc pod to ClusterIP new flow", "tc", lxc_obj, lxc.fd, tctx,
                      abi.CTX_ACT_REDIRECT,
                      lambda k, r: new_flow_frames(pb, k, r, VIP, VPORT, src=a_ip, smac=a_mac,
                                                   dmac=a_lxc),
                      f"pod A, every call a new source port (32768 + k mod {FLOW_SPAN}); "
                      f"conntrack maps emptied before every round and every {FLOW_SPAN} calls, "
                      f"outside the timed region"),
        established_case("tc pod to ClusterIP established", "tc", lxc_obj, lxc.fd, tctx,
                         abi.CTX_ACT_REDIRECT, vip_syn, vip_ack,
                         "one flow (ACKs), backend a local pod; SYN and one ACK before every "
                         "round"),
        established_case("tc pod to pod established", "tc", lxc_obj, lxc.fd, tctx,
                         abi.CTX_ACT_REDIRECT, p2p_syn, p2p_ack,
                         "one flow (ACKs), allow-all policy both ends; SYN and one ACK before "
                         "every round"),
    ]
    info = {"xdp_ingress_ifindex": eth1, "flow_state_maps_emptied": list(FLOW_MAPS),
            "flow_span": FLOW_SPAN, "empties": empties,
            "map_sizes": {"CT_MAP_SIZE_TCP": abi.CT_MAP_SIZE_TCP,
                          "SNAT_MAPPING_IPV4_SIZE": abi.SNAT_MAPPING_IPV4_SIZE}}
    return cases, info


def _katran(pb, n: int, lru_size: int, log, cleanup: list) -> tuple[list, dict]:
    """katran_ref's build, load and fill (its functions), under a private pin directory; its
    three cases as katran_ref.measure_all builds them."""
    import katran_ref as kr
    kr.PIN_DIR = Path(f"/sys/fs/bpf/dpbench-katran-{os.getpid()}-{secrets.token_hex(3)}")
    src, commit = kr.get_source(kr.KATRAN_SRC)
    obj, build_info = kr.build_katran(src, commit, False)
    floor_obj = kr.build_floor()
    c = kr.consts(src)
    pb.ensure_bpffs()
    cleanup.append(kr.remove_pins)
    t = time.perf_counter()
    k = kr.Katran(obj, floor_obj, c, lru_size)
    log(f"Katran {commit[:12]} loaded and filled in {time.perf_counter() - t:.1f}s "
        f"(LRU {k.lru_per_core}/core on CPUs {k.cpus}, pins {kr.PIN_DIR})")
    ack_syn = pb.tcp4_frame(kr.CLIENT_ACK, kr.VIP, 40000, kr.VPORT, "S", frame_len=FRAME_LEN)
    ack = pb.tcp4_frame(kr.CLIENT_ACK, kr.VIP, 40000, kr.VPORT, "A", frame_len=FRAME_LEN,
                        seq=2, ack=1)
    novip = pb.tcp4_frame(kr.CLIENT_ACK, kr.NON_VIP, 40001, kr.VPORT, "S", frame_len=FRAME_LEN)
    syn0 = kr.syn_frames(1, 0, kr.VIP)[0]
    problems = []
    rv, out, _ = pb.test_run_once(k.prog, syn0)
    log(f"  check katran SYN to VIP: {rv}, {kr.check_encap(out, syn0)}")
    problems += [] if rv == 3 and "NOT" not in kr.check_encap(out, syn0) else ["syn"]
    rv1, out1, _ = pb.test_run_once(k.prog, ack_syn)
    rv2, out2, _ = pb.test_run_once(k.prog, ack)
    log(f"  check katran ACK after SYN: {rv2}, {kr.check_encap(out2, ack)}")
    problems += [] if rv2 == 3 and out1[30:34] == out2[30:34] else ["ack"]
    rv, out, _ = pb.test_run_once(k.prog, novip)
    log(f"  check katran SYN to non-VIP: {rv}, untouched={out == novip}")
    problems += [] if rv == 2 and out == novip else ["novip"]
    if problems:
        raise CheckFailed(f"Katran sanity check failed: {problems}")
    flood = [0]

    def reset_flood(_i=0):
        flood[0] = max(flood[0], k.reset_conn_rate())

    syn = pb.Case("katran SYN to VIP (new flow)", k.prog, pb.PacketSet([syn0]), 3,
                  FRAME_LEN + 20, "XDP_TX", hook=reset_flood, hook_every=50_000,
                  note="katran_ref's SYN case: a new 5-tuple every call, NEW_CONN_RATE zeroed "
                       "every 50k calls")

    def syn_before(r):
        syn.pkts = pb.PacketSet(kr.syn_frames(n, r, kr.VIP))
        reset_flood()
    syn.before_round = syn_before
    ackc = pb.Case("katran ACK (established, LRU hit)", k.prog, pb.PacketSet([ack]), 3,
                   FRAME_LEN + 20, "XDP_TX", note="one flow; its SYN sent before every round")

    def ack_before(r):
        if pb.test_run_once(k.prog, ack_syn)[0] != 3:
            raise CheckFailed("katran ACK: its SYN was not XDP_TX")
    ackc.before_round = ack_before

    def lru_misses(case):
        state = {}

        def b(r, prev=case.before_round):
            if prev:
                prev(r)
            state["v"] = k.counter("LRU_MISS_CNTR", os.sched_getaffinity(0).pop())

        def a(r, res):
            after = k.counter("LRU_MISS_CNTR", os.sched_getaffinity(0).pop())
            case.extra.setdefault("katran_lru_misses_per_round", []).append(
                after[0] - state["v"][0])
        case.before_round, case.after_round = b, a
        return case

    novipc = pb.Case("katran SYN to non-VIP (pass)", k.prog, pb.PacketSet([novip]), 2,
                     FRAME_LEN, "XDP_PASS")
    info = {"commit": commit, "build": build_info, "lru_size_total": lru_size,
            "lru_per_core": k.lru_per_core, "vip": f"{kr.VIP}:{kr.VPORT}/tcp", "reals": kr.REALS,
            "flood_max": flood}
    return [lru_misses(syn), lru_misses(ackc), novipc], info


def measure(a, work: Path, pin_dir: str, log) -> dict:
    """The child, inside its private netns: every case, rounds interleaved, one pinned CPU."""
    pb = _pb()
    cleanup: list = []
    try:
        cases, info = _ours(pb, a.calls, log)
        kinfo = None
        if not a.no_katran:
            kcases, kinfo = _katran(pb, a.calls, a.lru_size, log, cleanup)
            cases += kcases
        log(f"measuring: {a.calls} calls x {a.rounds} rounds per case, repeat=1 per call, "
            f"pinned to CPU {a.cpu}")
        pb.run_cases(cases, a.calls, a.rounds, a.cpu, log=log)
        log(pb.table("", cases))
        if kinfo:
            kinfo["max_new_conn_rate_counter_seen"] = kinfo.pop("flood_max")[0]
        return {"env": pb.environment(a.cpu), "ours": info, "katran": kinfo,
                "order": [c.name for c in cases],
                "cases": {c.name: c.summary() for c in cases}}
    finally:
        for fn in cleanup:
            fn()


# ------------------------------------------------------------------ parent: report

def _hook(name: str) -> str | None:
    if name.startswith(("xdp", "katran")) or name == "floor xdp_pass":
        return "xdp"
    if name.startswith("tc") or name == "floor tc TC_ACT_OK":
        return "tc"
    return None


def annotate(doc: dict, before: dict | None = None) -> None:
    """minus_floor_ns, katran_match and ratio_to_katran on every case; with `before` (an earlier
    run's JSON) before_median_ns and after_over_before (ratios of the two runs' floor-relative
    costs would be fairer; both runs' floors are kept)."""
    cases = doc["cases"]
    if before:
        doc["before"] = {"file": before.get("_path"), "time_utc": before["env"]["time_utc"],
                         "floors_ns": {f: before["cases"].get(f, {}).get("median_ns")
                                       for f in FLOOR_OF.values()}}
        for name, s in cases.items():
            b = before["cases"].get(name)
            if b and not name.startswith("katran"):
                s["before_median_ns"] = b["median_ns"]
                s["after_over_before"] = round(s["median_ns"] / b["median_ns"], 2)
    for name, s in cases.items():
        floor = cases.get(FLOOR_OF.get(_hook(name) or "", ""))
        if floor and not name.startswith("floor"):
            s["minus_floor_ns"] = s["median_ns"] - floor["median_ns"]
        k = cases.get(KATRAN_MATCH.get(name, ""))
        if k:
            s["katran_match"] = KATRAN_MATCH[name]
            s["ratio_to_katran"] = round(s["median_ns"] / k["median_ns"], 2)
            if floor and k["median_ns"] > floor["median_ns"]:
                s["ratio_to_katran_minus_floor"] = round(
                    (s["median_ns"] - floor["median_ns"]) / (k["median_ns"] - floor["median_ns"]),
                    2)


def _num(v, fmt: str) -> str:
    return "" if v is None else fmt.format(v)


def report(doc: dict) -> str:
    hdr = (f"{'case':<36} {'verdict':<15} {'median':>7} {'p10':>6} {'p90':>6} {'p99':>7} "
           f"{'-floor':>7} {'katran':>7} {'ratio':>6} {'bad':>4}"
           + (f" {'before':>7} {'after/before':>12}" if doc.get("before") else ""))
    lines = [f"ns per packet, BPF_PROG_TEST_RUN repeat=1, {doc['calls_per_round']} calls x "
             f"{doc['rounds']} rounds per case, CPU {doc['env']['pinned_cpu']}, kernel "
             f"{doc['env']['kernel']}, {FRAME_LEN}-byte frames"
             + (f"; Katran {doc['katran']['commit'][:12]}" if doc.get("katran") else
                f"; Katran not run ({doc.get('katran_skipped', '--no-katran')})"),
             hdr, "-" * len(hdr)]
    for name in doc["order"]:
        s = doc["cases"][name]
        k = doc["cases"].get(s.get("katran_match", ""), {})
        mf = s.get("minus_floor_ns")
        lines.append(
            f"{name:<36} {s['expected_verdict']:<15} {s['median_ns']:>7.0f} {s['p10_ns']:>6.0f} "
            f"{s['p90_ns']:>6.0f} {s['p99_ns']:>7.0f} "
            f"{_num(mf, '{:.0f}'):>7} {_num(k.get('median_ns'), '{:.0f}'):>7} "
            f"{_num(s.get('ratio_to_katran'), '{:.2f}x'):>6} "
            f"{s['bad_retval'] + s['bad_len']:>4}"
            + (f" {_num(s.get('before_median_ns'), '{:.0f}'):>7} "
               f"{_num(s.get('after_over_before'), '{:.2f}x'):>12}" if doc.get("before") else ""))
    lines.append("-floor: median minus the same hook's floor in this run; ratio: our median / "
                 "Katran's matching case's median (same run, same CPU)")
    if doc.get("before"):
        b = doc["before"]
        lines.append(f"before: {b['file']} ({b['time_utc']}; another run: its floors were "
                     + ", ".join(f"{k} {_num(v, '{:.0f}')}" for k, v in b["floors_ns"].items())
                     + " ns)")
    return "\n".join(lines)


def chart(doc: dict, path: Path) -> Path | None:
    """A bar chart next to the JSON: our cases, Katran's matching ones beside them."""
    try:
        from bench import charts
    except ImportError as e:
        print(f"no chart: bench/charts.py not importable ({e})", file=sys.stderr)
        return None
    groups: dict[str, dict[str, float]] = {}
    for name in doc["order"]:
        if name.startswith("katran"):
            continue
        s = doc["cases"][name]
        bars = {}
        if "before_median_ns" in s:
            bars["ours before"] = s["before_median_ns"]
        bars["ours"] = s["median_ns"]
        if "katran_match" in s:
            bars["Katran"] = doc["cases"][s["katran_match"]]["median_ns"]
        groups[SHORT.get(name, name)] = bars
    charts.bar_chart(str(path), f"ns per packet (BPF_PROG_TEST_RUN, median of "
                                f"{doc['calls_per_round'] * doc['rounds']} calls)",
                     "ns per packet", groups)
    return path


def katran_missing() -> str | None:
    """Why Katran cannot be built here, or None."""
    missing = [t for t in ("clang", "llc", "bpftool") if not shutil.which(t)]
    if not Path("/usr/include/bpf/bpf_helpers.h").is_file():
        missing.append("libbpf-dev (/usr/include/bpf)")
    if not (PKTBENCH / "katran_ref.py").is_file():
        return f"no {PKTBENCH}/katran_ref.py"
    return f"missing {', '.join(missing)} (apt-get install clang llvm bpftool " \
           f"libbpf-dev)" if missing else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--calls", type=int, default=100_000, help="calls per case and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpu", type=int, help="CPU to pin to (default: the last allowed one)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON path; the PNG goes beside it")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: -n 2000, 2 rounds, Katran LRU 100000")
    ap.add_argument("--no-katran", action="store_true", help="our cases only")
    ap.add_argument("--before", metavar="JSON",
                    help="an earlier run's JSON (e.g. on the code before a change): its medians "
                         "beside this run's in the table and the chart")
    ap.add_argument("--lru-size", type=int, default=8_000_000,
                    help="Katran LruSize over all CPUs (default Katran's 8,000,000)")
    isolated.add_child_options(ap)
    a = ap.parse_args(argv)
    if a.quick:
        a.calls, a.rounds, a.lru_size = min(a.calls, 2000), min(a.rounds, 2), 100_000
    if not (PKTBENCH / "pbcore.py").is_file():
        sys.exit(f"packet.py: pktbench not found at {PKTBENCH} (its pbcore.py measures every "
                 "case; it lives in ../shared/bench/pktbench, or set PKTBENCH_DIR)")
    pb = _pb()
    if a.cpu is None:
        a.cpu = pb.default_cpu()
    if a.inside:
        return isolated.child(a, lambda work, pins, log: measure(a, work, pins, log))
    if os.geteuid() != 0:
        sys.exit("run as root (BPF, a network namespace)")
    skipped = None
    if not a.no_katran:
        skipped = katran_missing()
        if skipped:
            sys.exit(f"Katran cannot be built: {skipped}; or run with --no-katran")
    args = ["-n", str(a.calls), "--rounds", str(a.rounds), "--cpu", str(a.cpu),
            "--lru-size", str(a.lru_size)] + (["--no-katran"] if a.no_katran else [])
    t = time.monotonic()
    r = isolated.run(__file__, args, log=lambda s: print(s, file=sys.stderr, flush=True),
                     timeout=3600)
    doc = {"tool": "bench/packet.py",
           "method": "BPF_PROG_TEST_RUN repeat=1 per call (pktbench's pbcore.py), N calls per "
                     "case and round, kernel-reported duration per call, rounds interleaved "
                     "over every case (ours and Katran's), one pinned CPU",
           "calls_per_round": a.calls, "rounds": a.rounds, "frame_len": FRAME_LEN,
           "seconds": round(time.monotonic() - t, 1), **r}
    if a.no_katran:
        doc["katran_skipped"] = "--no-katran"
    before = None
    if a.before:
        before = json.loads(Path(a.before).read_text())
        before["_path"] = a.before
    annotate(doc, before)
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
