"""BPF_PROG_TEST_RUN cases for the datapath under pressure (issue #12): one flow driven from two
CPUs at once keeps exact conntrack counters and its flags (lib/conntrack.h's atomic updates),
and a conntrack table built small (-DCT_MAP_SIZE_TCP) that fills up evicts by LRU: new flows
still pass while the flows in use keep their entries."""
from __future__ import annotations

import os
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from datapath import abi, build, testrun
from datapath.maps import metrics_totals, open_maps

from . import packets as P
from .conftest import MAPS, PRESSURE_DEFINES
from .endpoints import add_endpoint, set_sender

EXT = "192.0.2.7"
RUNS = 200_000                   # test runs per CPU (one BPF_PROG_TEST_RUN call with repeat)


def pod_a_to_ext(flags, sport=43000, payload=b""):
    """Pod A's packet to a world address: passed to the stack untouched (native routing without
    host routing), so a repeated test run sees the same packet every time."""
    return Ether(bytes(Ether(src=P.POD_A_MAC, dst=P.LXC_A_MAC)
                       / IP(src=P.POD_A_IP, dst=EXT, ttl=64, id=9)
                       / TCP(sport=sport, dport=443, flags=flags, seq=1, ack=1) / payload))


def _run_on_cpu(cpu, prog, pkt, repeat, out, errors):
    try:
        os.sched_setaffinity(0, {cpu})          # this thread only
        out[cpu] = testrun.run(prog.fd, pkt, ctx=testrun.tc_ctx(P.LXC_A_IFINDEX), repeat=repeat)
    except Exception as e:  # reported by the test, not lost in the thread
        errors.append(e)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 and not os.environ.get("CI"),
                    reason="needs two CPUs")
def test_one_flow_driven_from_two_cpus_keeps_exact_counters_and_its_closing_flag(lxc,
                                                                               from_container):
    """CPU 0 sends ACKs while CPU 1 sends FIN-ACKs on the same established flow, RUNS packets
    each, at the same time: the flow's conntrack entry counts every packet and every byte, and
    the FIN's closing mark and the established mark both stay."""
    assert len(os.sched_getaffinity(0)) >= 2, "needs two CPUs"
    m = open_maps(lxc)
    add_endpoint(m, P.POD_A_IP, ifindex=P.LXC_A_IFINDEX, lxc_id=P.EP_A, mac=P.POD_A_MAC,
                 node_mac=P.LXC_A_MAC, sec_id=P.ID_A)
    set_sender(m, P.POD_A_IP, P.LXC_A_IFINDEX)
    m["dp_policy_revision"].update(abi.U32Key(0), abi.PolicyRevision(revision=1))
    syn, ack, fin = pod_a_to_ext("S"), pod_a_to_ext("A", payload=b"x" * 100), pod_a_to_ext("FA")
    res = testrun.run(from_container.fd, syn, ctx=testrun.tc_ctx(P.LXC_A_IFINDEX))
    assert res.retval == abi.CTX_ACT_OK
    key = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(EXT), saddr=abi.ip4_to_be32(P.POD_A_IP),
                          dport=abi.be16(443), sport=abi.be16(43000), nexthdr=6,
                          flags=abi.TUPLE_F_POLICY | abi.TUPLE_F_OUT)
    assert m["cilium_ct4_global"].get(key).packets == 1

    out, errors = {}, []
    threads = [threading.Thread(target=_run_on_cpu, args=(cpu, from_container, pkt, RUNS, out,
                                                          errors))
               for cpu, pkt in ((0, ack), (1, fin))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    assert not errors, errors
    assert out[0].retval == out[1].retval == abi.CTX_ACT_OK
    entry = m["cilium_ct4_global"].get(key)
    print(f"\n2 x {RUNS} test runs on CPUs 0 and 1 in {wall:.2f} s: entry counts "
          f"{entry.packets} packets (want {1 + 2 * RUNS}), {entry.bytes} bytes")
    assert entry.packets == 1 + 2 * RUNS
    assert entry.bytes == len(bytes(syn)) + RUNS * (len(bytes(ack)) + len(bytes(fin)))
    want = abi.CT_F_SEEN_NON_SYN | abi.CT_F_RX_CLOSING | abi.CT_F_TX_CLOSING
    assert entry.flags & want == want
    assert entry.lifetime - time.monotonic() <= abi.CT_CLOSE_TIMEOUT + 1
    assert len(m["cilium_ct4_global"]) == 1


# ---- a full conntrack table (bpf_host.c built with -DCT_MAP_SIZE_TCP=CT_SMALL) ----
CT_SMALL = 256
ACTIVE = (60001, 60002, 60003, 60004)   # client ports of the flows kept in use
NEW_FLOWS = 400                         # each takes 3 entries: service, reply, backend's policy
BATCH = 8                               # new flows between two rounds of the active flows


@pytest.fixture(scope="module")
def small_ct(privileged):
    """bpf_host.c with a 256-entry TCP conntrack map, its from-netdev and to-netdev programs."""
    obj = build.compile_program("bpf_host.c", PRESSURE_DEFINES)
    return (obj, build.load(obj, "cil_from_netdev", "tc"),
            build.load(obj, "cil_to_netdev", "tc"))


def test_a_full_conntrack_table_evicts_idle_flows_and_keeps_the_ones_in_use(small_ct):
    """NEW_FLOWS NodePort flows to a local backend go through a conntrack table of CT_SMALL
    entries (under a fifth of what they need) while ACTIVE flows exchange a packet each way every
    BATCH new flows: every new flow is forwarded (LRU makes room, no DROP_CT_CREATE_FAILED), the
    map fills up but never holds more than its size, and the flows in use keep their
    entries to the end: the backend's reply still gets the frontend back. The fill, sampled
    every BATCH new flows, is printed."""
    from .test_nat import NODE_IP, in_pkt, out_pkt, run, setup
    from .test_nodeport import BPORT, NODE_PORT, frontend
    obj, from_netdev, to_netdev = small_ct
    for name in MAPS:
        obj[name].clear()
    m = setup(obj, masquerade=False)
    frontend(m, [(1, P.POD_B_IP, BPORT)])
    ct = m["cilium_ct4_global"]
    assert ct.max_entries == CT_SMALL

    def client(sport, flags):
        return in_pkt(EXT, NODE_IP, TCP(sport=sport, dport=NODE_PORT, flags=flags, seq=1), b"q")

    def backend_reply(sport):
        return out_pkt(P.POD_B_IP, EXT, TCP(sport=BPORT, dport=sport, flags="A"), b"r")

    def use_active():
        for sport in ACTIVE:
            assert run(from_netdev, client(sport, "A")).retval == abi.CTX_ACT_REDIRECT
            out = Ether(run(to_netdev, backend_reply(sport)).data)
            assert (out[IP].src, out[TCP].sport) == (NODE_IP, NODE_PORT), "reply entry lost"

    for sport in ACTIVE:
        assert run(from_netdev, client(sport, "S")).retval == abi.CTX_ACT_REDIRECT
    use_active()
    verdicts, fills = {}, []
    t0 = time.monotonic()
    with testrun.one_cpu():                     # one CPU's LRU free list, as a flow sees it
        for i in range(NEW_FLOWS):
            res = run(from_netdev, client(10000 + i, "S"))
            verdicts[res.retval] = verdicts.get(res.retval, 0) + 1
            if i % BATCH == BATCH - 1:
                fills.append(len(ct))
                use_active()
    wall = time.monotonic() - t0
    fill = len(ct) / ct.max_entries
    print(f"\n{NEW_FLOWS} new flows ({3 * NEW_FLOWS} entries) through a {CT_SMALL}-entry CT map "
          f"in {wall:.2f} s: verdicts {verdicts}, fill (entries) {fills}, pressure at the end "
          f"{fill:.3f}")
    assert verdicts == {abi.CTX_ACT_REDIRECT: NEW_FLOWS}
    drops = {k: v for k, v in metrics_totals(m["cilium_metrics"]).items() if k[0] != 0}
    assert drops == {}
    # full, never over: the kernel's LRU makes room in batches (up to 128 entries a CPU, kept
    # on each CPU's free list), so a map this small saw-tooths between about half and full
    # (seen once at most 188 of 256 when the flows had run on both CPUs)
    assert max(fills) <= CT_SMALL
    assert max(fills) >= CT_SMALL // 2
    # the flows in use kept all three entries
    for sport in ACTIVE:
        service = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(NODE_IP), saddr=abi.ip4_to_be32(EXT),
                                  dport=abi.be16(NODE_PORT), sport=abi.be16(sport), nexthdr=6,
                                  flags=abi.TUPLE_F_SERVICE)
        reply = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(EXT), saddr=abi.ip4_to_be32(P.POD_B_IP),
                                dport=abi.be16(sport), sport=abi.be16(BPORT), nexthdr=6,
                                flags=abi.TUPLE_F_IN)
        policy = abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(P.POD_B_IP), saddr=abi.ip4_to_be32(EXT),
                                 dport=abi.be16(BPORT), sport=abi.be16(sport), nexthdr=6,
                                 flags=abi.TUPLE_F_POLICY | abi.TUPLE_F_IN)
        for key in (service, reply, policy):
            assert ct.get(key) is not None, (sport, key)
        assert ct.get(service).packets == 1 + NEW_FLOWS // BATCH + 1
    # while most of the idle ones are gone
    assert sum(ct.get(abi.Ipv4CtTuple(
        daddr=abi.ip4_to_be32(NODE_IP), saddr=abi.ip4_to_be32(EXT), dport=abi.be16(NODE_PORT),
        sport=abi.be16(10000 + i), nexthdr=6, flags=abi.TUPLE_F_SERVICE)) is not None
        for i in range(NEW_FLOWS)) < CT_SMALL
