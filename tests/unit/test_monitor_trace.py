"""Trace points in the monitor: real trace_notify records (abi.TraceNotify) decoded by
datapath.events, turned into Hubble flows (FORWARDED, the observation point and CT state as
Hubble's enums, is_reply, direction), printed as Hubble and `cilium monitor` print them,
filtered by type and verdict, and merged across a lab's nodes by the time they happened."""
from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner

from datapath import abi

from agent import api
from agent.lab import lab as labmod
from agent.cli import cli
from agent.metrics import AgentMetrics
from agent.monitor import MonitorSubsystem
from agent.monitor import format as fmt
from agent.monitor import observe as obs
from agent.monitor.flows import (build_flow, event_record, metric_labels, obs_point_name,
                                 trace_point_enum, trace_reason_enum)
from agent.monitor.ring import FlowFilter

from .test_monitor_api import _cfg, fake_events
from .test_monitor_flows import (CURL, WEB1, StubView, decode, drop_record, packet,
                                 trace_record)

NODE_IP = "192.168.10.100"


def trace_flow(record: bytes, ifname=True) -> tuple[dict, dict]:
    rec = event_record(decode(record), 1_764_514_801.125)
    if ifname and rec["ifindex"]:
        rec["ifname"] = StubView().ifname(rec["ifindex"])   # the subsystem names it
    return build_flow(rec, StubView(), "k8s-ctr"), rec


# ---------------------------------------------------------------- names
def test_observation_points_and_reasons_as_cilium_and_hubble_name_them():
    assert [obs_point_name(i) for i in range(12)] == [
        "to-endpoint", "to-proxy", "to-host", "to-stack", "to-overlay", "from-endpoint",
        "from-proxy", "from-host", "from-stack", "from-overlay", "from-network", "to-network"]
    assert obs_point_name(99) == "99"
    # Cilium's 0 (TO_LXC) is Hubble's TO_ENDPOINT = 101; the others keep their number's name
    assert [trace_point_enum(i) for i in (0, 3, 4, 9, 10, 11)] == [
        "TO_ENDPOINT", "TO_STACK", "TO_OVERLAY", "FROM_OVERLAY", "FROM_NETWORK", "TO_NETWORK"]
    # the CT state: Hubble shifts 0..4 up by one and maps Cilium's unknown (5) to 0
    assert [trace_reason_enum(r) for r in range(9)] == [
        "NEW", "ESTABLISHED", "REPLY", "RELATED", "REOPENED", "TRACE_REASON_UNKNOWN",
        "SRV6_ENCAP", "SRV6_DECAP", "ENCRYPT_OVERLAY"]
    assert trace_reason_enum(0x80 | abi.TRACE_REASON_CT_REPLY) == "REPLY"    # encrypted bit
    for name, point in vars(abi).items():     # every point the datapath defines has names
        if name.startswith("TRACE_TO_") or name.startswith("TRACE_FROM_"):
            assert obs_point_name(point) == abi.TRACE_OBS_POINT_NAMES[point], name


# ---------------------------------------------------------------- flows
def test_to_endpoint_of_a_new_connection_is_a_forwarded_hubble_flow():
    flow, rec = trace_flow(trace_record(packet(), point=abi.TRACE_TO_LXC, source=34, dst_id=34))
    assert rec["type"] == "trace" and rec["obs_point"] == "to-endpoint" and \
        rec["state"] == "new" and rec["orig_ip"] is None
    assert flow["verdict"] == "FORWARDED" and "drop_reason" not in flow
    assert flow["event_type"] == {"type": 4, "sub_type": 0}
    assert flow["trace_observation_point"] == "TO_ENDPOINT"
    assert flow["trace_reason"] == "NEW" and flow["is_reply"] is False and "reply" not in flow
    assert flow["Type"] == "L3_L4" and flow["node_name"] == "k8s-ctr"
    assert flow["source"]["pod_name"] == "curl-pod" and flow["destination"]["ID"] == 34
    # delivered into webpod-1 (the event's endpoint), not sent by it, not a reply: ingress
    assert flow["traffic_direction"] == "INGRESS"
    assert flow["interface"] == {"index": 5, "name": "lxc0a1b"}
    assert flow["Summary"] == "TCP Flags: SYN"
    assert metric_labels(rec) == ("Trace", "to-endpoint")
    # protojson order: flow.proto's field numbers
    keys = list(flow)
    assert keys.index("event_type") < keys.index("traffic_direction") < \
        keys.index("trace_observation_point") < keys.index("is_reply") < \
        keys.index("interface") < keys.index("trace_reason") < keys.index("Summary")
    json.dumps(flow)


def test_a_reply_is_marked_and_printed_from_the_side_that_asked():
    flow, _ = trace_flow(trace_record(packet(src=WEB1, dst=CURL, sport=80, dport=40000,
                                             flags=0x12), point=abi.TRACE_TO_LXC,
                                      reason=abi.TRACE_REASON_CT_REPLY, src_label=257,
                                      dst_label=256, source=12, dst_id=12))
    assert flow["is_reply"] is True and flow["reply"] is True and flow["trace_reason"] == "REPLY"
    assert flow["traffic_direction"] == "EGRESS"      # curl-pod's connection, answered
    assert flow["Summary"] == "TCP Flags: SYN, ACK"   # Hubble's order: SYN before ACK
    line = fmt.compact(flow)
    assert line.endswith(": default/curl-pod:40000 (ID:256) <- default/webpod-1:80 (ID:257) "
                         "to-endpoint FORWARDED (TCP Flags: SYN, ACK)"), line


def test_points_without_ct_state_leave_is_reply_and_direction_unknown():
    flow, rec = trace_flow(trace_record(packet(dst="172.20.1.5", flags=0x18),
                                        point=abi.TRACE_TO_OVERLAY,
                                        reason=abi.TRACE_REASON_UNKNOWN, dst_label=300,
                                        source=0, dst_id=0, ifindex=0,
                                        hook=abi.EVENT_HOOK_FROM_CONTAINER))
    assert flow["trace_observation_point"] == "TO_OVERLAY" and flow["verdict"] == "FORWARDED"
    assert "is_reply" not in flow and "trace_reason" not in flow and "interface" not in flow
    assert flow["traffic_direction"] == "TRAFFIC_DIRECTION_UNKNOWN"
    assert flow["destination"]["pod_name"] == "a" and flow["Summary"] == "TCP Flags: ACK, PSH"
    assert fmt.compact(flow).endswith(": default/curl-pod:40000 (ID:256) <> x/a:80 (ID:300) "
                                      "to-overlay FORWARDED (TCP Flags: ACK, PSH)")
    assert metric_labels(rec) == ("Trace", "to-overlay")


def test_a_translated_source_shows_the_original_and_the_translation():
    flow, rec = trace_flow(trace_record(packet(src=NODE_IP, dst="203.0.113.10"),
                                        point=abi.TRACE_TO_NETWORK, source=12, dst_id=0,
                                        src_label=256, dst_label=2,
                                        orig_ip4=abi.ip4_to_be32(CURL)))
    assert rec["orig_ip"] == CURL
    assert flow["IP"] == {"source": CURL, "destination": "203.0.113.10", "ipVersion": "IPv4",
                          "source_xlated": NODE_IP}
    assert flow["source"]["pod_name"] == "curl-pod"
    assert flow["traffic_direction"] == "EGRESS"
    assert "orig-ip 172.20.0.2:" in fmt.monitor_line(rec)


# ---------------------------------------------------------------- cilium monitor lines
@pytest.mark.parametrize("point,summary", [
    (abi.TRACE_TO_LXC, "-> endpoint 34"), (abi.TRACE_TO_STACK, "-> stack"),
    (abi.TRACE_TO_NETWORK, "-> network"), (abi.TRACE_TO_OVERLAY, "-> overlay"),
    (abi.TRACE_FROM_NETWORK, "<- network"), (abi.TRACE_FROM_OVERLAY, "<- overlay"),
    (abi.TRACE_FROM_LXC, "<- endpoint 12"), (abi.TRACE_TO_HOST, "-> host from"),
    (abi.TRACE_FROM_STACK, "<- stack")])
def test_monitor_trace_line_at_every_point(point, summary):
    _, rec = trace_flow(trace_record(packet(), point=point, source=12, dst_id=34))
    assert fmt.monitor_line(rec) == (
        f"{summary} flow 0x0 , identity 256->257 state new ifindex lxc0a1b orig-ip 0.0.0.0: "
        f"{CURL}:40000 -> {WEB1}:80 tcp SYN")


def test_monitor_trace_line_names_state_hash_and_unnamed_interfaces():
    _, rec = trace_flow(trace_record(packet(flags=0x10), point=abi.TRACE_TO_STACK,
                                     reason=abi.TRACE_REASON_CT_ESTABLISHED, ifindex=77,
                                     hash_=0xBEEF), ifname=False)
    assert fmt.monitor_line(rec) == (
        "-> stack flow 0xbeef , identity 256->257 state established ifindex 77 orig-ip "
        f"0.0.0.0: {CURL}:40000 -> {WEB1}:80 tcp ACK")


def test_monitor_trace_verbose_and_json():
    _, rec = trace_flow(trace_record(packet(), point=abi.TRACE_TO_LXC, source=34, dst_id=34))
    lines = fmt.monitor_verbose(rec)
    assert lines[0] == fmt.SEPARATOR
    assert lines[1] == ("MARK 0x0 FROM 34 to-endpoint: 54 bytes (54 captured), state new, "
                        "interface lxc0a1b, , identity 256->257, orig-ip 0.0.0.0, to endpoint 34")
    assert lines[2].startswith("Ethernet\t") and lines[4].startswith("TCP\t{SrcPort=40000")
    got = json.loads(fmt.monitor_json(rec))
    assert {k: got[k] for k in ("type", "mark", "ifindex", "state", "observationPoint",
                                "traceSummary", "source", "bytes", "srcLabel", "dstLabel",
                                "dstID")} == {
        "type": "trace", "mark": "0x0", "ifindex": "lxc0a1b", "state": "new",
        "observationPoint": "to-endpoint", "traceSummary": "-> endpoint 34", "source": 34,
        "bytes": 54, "srcLabel": 256, "dstLabel": 257, "dstID": 34}
    assert got["summary"]["l4"] == {"src": "40000", "dst": "80"}


# ---------------------------------------------------------------- filters
def test_type_and_verdict_filters_pick_traces_and_drops():
    entries = [trace_flow(trace_record(packet())), trace_flow(drop_record(packet())),
               trace_flow(trace_record(packet(), point=abi.TRACE_TO_STACK))]

    def match(**q):
        f = FlowFilter.from_params({k: [v] for k, v in q.items()}, time.time())
        return [i for i, (flow, rec) in enumerate(entries) if f.match(flow, rec)]

    assert match(type="trace") == [0, 2] and match(type="drop") == [1]
    assert match(verdict="FORWARDED") == [0, 2] and match(verdict="DROPPED") == [1]
    assert match(type="trace", verdict="DROPPED") == []
    assert match(**{"related-to": "34"}) == [0, 1, 2]


def test_cli_observe_and_monitor_print_traces(tmp_path):
    mon = MonitorSubsystem(_cfg(tmp_path), AgentMetrics(), StubView(), events=fake_events([]))
    path = str(tmp_path / "a.sock")
    srv = api.serve(path, mon.routes())
    try:
        mon.handle(decode(trace_record(packet(), point=abi.TRACE_TO_LXC)))
        mon.handle(decode(drop_record(packet(sport=40001))))
        r = CliRunner().invoke(cli, ["--socket", path, "observe", "--type", "trace",
                                     "--verdict", "FORWARDED"])
        assert r.exit_code == 0, r.output
        out = r.output.splitlines()
        assert len(out) == 1 and out[0].endswith(
            "default/curl-pod:40000 (ID:256) -> default/webpod-1:80 (ID:257) to-endpoint "
            "FORWARDED (TCP Flags: SYN)"), out
        r = CliRunner().invoke(cli, ["--socket", path, "observe", "-o", "table", "--type",
                                     "trace"])
        assert r.output.splitlines()[1].split()[5:7] == ["to-endpoint", "FORWARDED"]
        threading.Timer(0.4, lambda: mon.handle(decode(trace_record(
            packet(), point=abi.TRACE_TO_STACK, ifindex=5)))).start()
        r = CliRunner().invoke(cli, ["--socket", path, "monitor", "--type", "trace",
                                     "--timeout", "1.2"])
        assert r.exit_code == 0, r.output
        assert r.stdout.splitlines() == [
            "-> stack flow 0x0 , identity 256->257 state new ifindex lxc0a1b orig-ip 0.0.0.0: "
            f"{CURL}:40000 -> {WEB1}:80 tcp SYN"]
    finally:
        srv.shutdown()
        srv.server_close()


# ---------------------------------------------------------------- lab monitor
class FakeNode:
    """An agent's /v1/monitor: records handed out by the poll they become visible in."""

    def __init__(self, batches):
        self.batches, self.calls, self.seq = batches, 0, 0

    def get(self, url):
        if "last=0" in url:
            return {"events": [], "seq": 0}
        batch = self.batches[self.calls] if self.calls < len(self.batches) else []
        self.calls += 1
        out = []
        for rec in batch:
            self.seq += 1
            out.append({**rec, "seq": self.seq})
        return {"events": out, "seq": self.seq}


def _rec(point, ktime_s, sport=40000):
    _, rec = trace_flow(trace_record(packet(sport=sport), point=point,
                                     ktime_ns=int(ktime_s * 1e9)))
    return rec


def test_lab_monitor_merges_nodes_by_ktime_and_holds_back_for_late_nodes(monkeypatch):
    """k8s-w1's from-overlay (t=10.2) reaches the CLI a poll after k8s-ctr's to-overlay
    (t=10.1) and k8s-w1's to-endpoint (t=10.3) came: printed in the order they happened."""
    monkeypatch.setattr(obs, "POLL_SECONDS", 0.01)
    ctr = FakeNode([[_rec(abi.TRACE_TO_OVERLAY, 10.1)]])
    w1 = FakeNode([[_rec(abi.TRACE_TO_LXC, 10.3)], [_rec(abi.TRACE_FROM_OVERLAY, 10.2)]])
    now = [int(10.35e9)]            # nothing old enough to print until the clock moves on

    def clock():
        now[0] += int(0.2e9)
        return now[0]

    lines, ready = [], []
    n = obs.lab_monitor({"k8s-ctr": ctr.get, "k8s-w1": w1.get}, {"type": ["trace"]}, "text",
                        False, timeout=0.3, echo=lines.append, clock=clock,
                        on_ready=lambda: ready.append(1))
    assert n == 3 and ready == [1]
    assert [ln.split(" flow ")[0] for ln in lines] == [
        "[k8s-ctr] -> overlay", "[k8s-w1] <- overlay", "[k8s-w1] -> endpoint 34"]


def test_lab_monitor_json_verbose_and_an_unavailable_node():
    from datapath.errors import AgentUnreachable

    def gone(url):
        raise AgentUnreachable("k8s-w2", "connection refused")

    ctr = FakeNode([[_rec(abi.TRACE_TO_NETWORK, 1.0)]])
    lines = []
    obs.lab_monitor({"k8s-ctr": ctr.get, "k8s-w2": gone}, {}, "json", False, timeout=0.3,
                    echo=lines.append)
    got = [json.loads(x) for x in lines]
    assert [(g["node_name"], g["traceSummary"]) for g in got] == [("k8s-ctr", "-> network")]
    ctr = FakeNode([[_rec(abi.TRACE_TO_STACK, 1.0)]])
    lines = []
    obs.lab_monitor({"k8s-ctr": ctr.get}, {}, "text", True, timeout=0.3, echo=lines.append)
    assert lines[0] == "[k8s-ctr] " + fmt.SEPARATOR and \
        lines[1].startswith("[k8s-ctr] MARK 0x0 FROM 34 to-stack: ")
    with pytest.raises(AgentUnreachable):
        obs.lab_monitor({"k8s-w2": gone}, {}, "text", False, timeout=0.3, echo=lines.append)


def test_cli_lab_monitor_over_two_agents(tmp_path, monkeypatch):
    """`datapath lab monitor` against two agents' sockets: what happens after it started,
    merged by time, each line prefixed with its node; drops left out with --type trace."""
    servers, nodes, mons = [], {}, {}
    for node in ("k8s-ctr", "k8s-w1"):
        mons[node] = MonitorSubsystem(_cfg(tmp_path, node=node), AgentMetrics(), StubView(),
                                      events=fake_events([]))
        mons[node].handle(decode(trace_record(packet(sport=1))))      # before: not printed
        path = str(tmp_path / f"{node}.sock")
        servers.append(api.serve(path, mons[node].routes()))
        nodes[node] = {"socket": path, "netns": node, "ip": "192.168.10.1",
                       "podCIDR": "172.20.0.0/24"}
    monkeypatch.setattr(labmod, "LAB_ROOT", tmp_path / "labs")
    labmod.Lab("tmon").save({"name": "tmon", "nodes": nodes, "pods": {}, "manifests": None})

    def traffic():
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        mons["k8s-w1"].handle(decode(trace_record(packet(), point=abi.TRACE_TO_LXC,
                                                  ktime_ns=t0 + 2_000_000)))
        mons["k8s-w1"].handle(decode(drop_record(packet(), ktime_ns=t0 + 3_000_000)))
        time.sleep(0.3)     # the earlier event reaches its agent later (within HOLD_NS)
        mons["k8s-ctr"].handle(decode(trace_record(packet(), point=abi.TRACE_TO_OVERLAY,
                                                   ktime_ns=t0 + 1_000_000)))

    try:
        threading.Timer(0.5, traffic).start()
        r = CliRunner().invoke(cli, ["lab", "monitor", "--name", "tmon", "--type", "trace",
                                     "--timeout", "2"])
        assert r.exit_code == 0, r.output
        assert "Press Ctrl-C to quit" in r.stderr
        assert [x.split(" flow ")[0] for x in r.stdout.splitlines()] == [
            "[k8s-ctr] -> overlay", "[k8s-w1] -> endpoint 34"]
        r = CliRunner().invoke(cli, ["lab", "monitor", "--name", "nolab", "--timeout", "0.1"])
        assert r.exit_code == 1 and "no nodes" in r.output
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
