"""The monitor subsystem end to end without a kernel: a fake ring buffer feeds real drop_notify
records to the reader; the subsystem builds flows, counts metrics and serves /v1/flows and
/v1/monitor over a real unix socket; the CLI (observe, monitor, lab observe) prints them."""
from __future__ import annotations

import json
import threading
import time
import types

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from datapath import abi

from agent import api
from agent.lab import lab as labmod
from agent.cli import cli
from agent.config import parse_config
from agent.metrics import AgentMetrics
from agent.monitor import MonitorSubsystem
from agent.monitor import reader as readermod

from .test_monitor_flows import StubView, drop_record, events_module, packet, trace_record


class FakeRing:
    """EventRing's API over a list the test appends to."""
    opened: list[str] = []

    def __init__(self, records):
        self.records, self.closed = records, False

    def poll(self, timeout_ms):
        if not self.records:        # (not time.sleep: a test patches that for the CLI)
            threading.Event().wait(timeout_ms / 1000 / 10)
            return []
        out, self.records[:] = list(self.records), []
        return out

    def fileno(self):
        return -1

    def close(self):
        self.closed = True


def fake_events(records: list, lost: int = 0, missing: bool = False):
    real = events_module()
    rings = []

    def open_pinned(path):
        if missing:
            raise FileNotFoundError(2, "No such file or directory", path)
        FakeRing.opened.append(path)
        rings.append(FakeRing(records))
        return rings[-1]

    return types.SimpleNamespace(EventRing=types.SimpleNamespace(open_pinned=open_pinned),
                                 decode=real.decode, ktime_to_wall=real.ktime_to_wall,
                                 read_stats=lambda pin_dir: {"sent": 9, "lost": lost},
                                 rings=rings)


def _cfg(tmp_path, node="k8s-ctr", cap=4095):
    return parse_config({"nodeName": node, "ipam": {"podCIDR": "10.0.0.0/24"},
                         "bpf": {"root": str(tmp_path / "bpffs")},
                         "hubble": {"eventBufferCapacity": cap}}, str(tmp_path / "c.yaml"))


def _wait(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture
def served(tmp_path):
    """A subsystem reading a fake ring, served on a socket; yields (subsystem, records, path)."""
    records: list[bytes] = []
    metrics = AgentMetrics()
    ev = fake_events(records, lost=3)
    mon = MonitorSubsystem(_cfg(tmp_path), metrics, StubView(), events=ev)
    stop = threading.Event()
    mon.start(stop)
    path = str(tmp_path / "a.sock")
    srv = api.serve(path, mon.routes())
    yield types.SimpleNamespace(mon=mon, records=records, path=path, metrics=metrics, ev=ev)
    srv.shutdown()
    srv.server_close()
    stop.set()
    mon.stop()
    assert all(r.closed for r in ev.rings)        # the reader closed its ring on stop


def _feed(s, *records, flows=None):
    before = s.mon.ring.last_seq
    s.records.extend(records)
    _wait(lambda: s.mon.ring.last_seq >= before + (len(records) if flows is None else flows))


def test_reader_feeds_flows_and_metrics(served):
    assert FakeRing.opened[-1].endswith("/bpffs/datapath/k8s-ctr/cilium_events")
    _feed(served, drop_record(packet()), drop_record(packet(flags=0x12)),
          drop_record(packet(proto=17, dport=53), reason=abi.DROP_NO_SERVICE),
          b"\x07" * 8,                       # not a known record: skipped, the reader goes on
          trace_record(packet()), trace_record(packet(flags=0x12), point=abi.TRACE_TO_STACK),
          trace_record(packet(flags=0x11), point=abi.TRACE_TO_STACK), flows=6)
    assert served.mon.ring.count == 6
    text = generate_latest(served.metrics.registry).decode()
    assert 'hubble_flows_processed_total{subtype="",type="Drop",verdict="DROPPED"} 3.0' in text
    assert 'hubble_flows_processed_total{subtype="to-endpoint",type="Trace",' \
           'verdict="FORWARDED"} 1.0' in text
    assert 'hubble_flows_processed_total{subtype="to-stack",type="Trace",' \
           'verdict="FORWARDED"} 2.0' in text
    assert 'hubble_drop_total{protocol="TCP",reason="POLICY_DENIED"} 2.0' in text
    assert 'hubble_drop_total{protocol="UDP",reason="SERVICE_BACKEND_NOT_FOUND"} 1.0' in text
    # Hubble's tcp handler counts forwarded flows only (the dropped SYN and SYN-ACK are not)
    assert 'hubble_tcp_flags_total{family="IPv4",flag="SYN"} 1.0' in text
    assert 'hubble_tcp_flags_total{family="IPv4",flag="SYN-ACK"} 1.0' in text
    assert 'hubble_tcp_flags_total{family="IPv4",flag="FIN"} 1.0' in text
    assert 'hubble_lost_events_total{source="PERF_EVENT_RING_BUFFER"} 3.0' in text
    st = served.mon.status()
    assert st == {"state": "Ok", "error": None, "flows": 6, "capacity": 4095, "seen": 6,
                  "lost": 3, "monitorAggregation": "medium", "monitorInterval": 5}


def test_api_filters_after_last_and_errors(served):
    _feed(served, drop_record(packet()), drop_record(packet(proto=1), reason=abi.DROP_INVALID_SIP),
          drop_record(packet(proto=17, dport=53)))
    c = api.Client(served.path)
    got = c.get("/v1/flows")
    assert [f["seq"] for f in got["flows"]] == [1, 2, 3]
    assert got["seq"] == 3 and got["lost"] == 3 and got["count"] == 3 and \
        got["capacity"] == 4095 and got["node_name"] == "k8s-ctr"
    assert [f["seq"] for f in c.get("/v1/flows?after=1")["flows"]] == [2, 3]
    assert [f["seq"] for f in c.get("/v1/flows?last=1")["flows"]] == [3]
    assert c.get("/v1/flows?last=0") == {**got, "flows": []}
    assert [f["seq"] for f in c.get("/v1/flows?protocol=tcp&protocol=udp")["flows"]] == [1, 3]
    assert [f["seq"] for f in c.get("/v1/flows?pod=default%2Fcurl-pod&port=53")["flows"]] == [3]
    ev = c.get("/v1/monitor?type=drop&related-to=34&after=1")
    assert [e["seq"] for e in ev["events"]] == [2, 3] and ev["events"][0]["reason"] == 132
    with pytest.raises(api.APIError) as e:
        c.get("/v1/flows?verdict=MAYBE")
    assert e.value.status == 400 and "MAYBE" in str(e.value)
    with pytest.raises(api.APIError, match="after"):
        c.get("/v1/flows?after=x")


def test_cli_observe_formats_and_follow(served):
    _feed(served, drop_record(packet()), drop_record(packet(proto=1), reason=abi.DROP_INVALID_SIP))
    run = CliRunner().invoke
    r = run(cli, ["--socket", served.path, "observe", "--verdict", "DROPPED"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("default/curl-pod:40000 (ID:256) <> default/webpod-1:80 (ID:257) "
                             "Policy denied DROPPED (TCP Flags: SYN)")
    assert lines[1].endswith("Invalid source ip DROPPED (ICMPv4 EchoRequest)")
    r = run(cli, ["--socket", served.path, "observe", "-o", "json", "--protocol", "icmp"])
    got = [json.loads(x) for x in r.output.splitlines()]
    assert len(got) == 1 and got[0]["flow"]["drop_reason_desc"] == "INVALID_SOURCE_IP"
    r = run(cli, ["--socket", served.path, "observe", "-o", "table", "--last", "1"])
    assert r.output.splitlines()[0].split()[0] == "TIMESTAMP" and len(r.output.splitlines()) == 2
    r = run(cli, ["--socket", served.path, "observe", "--since", "nonsense"])
    assert r.exit_code == 1 and "nonsense" in r.output and "Traceback" not in r.output
    # --follow prints what arrives after it started, nothing older
    t = threading.Timer(0.5, lambda: served.records.append(
        drop_record(packet(dport=8080), reason=abi.DROP_POLICY_DENY)))
    t.start()
    r = run(cli, ["--socket", served.path, "observe", "-f", "--timeout", "1.5"])
    t.join()
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 1 and "webpod-1:8080" in r.output and \
        "Policy denied by denylist DROPPED" in r.output


def test_cli_monitor_lines_verbose_json_and_related_to(served):
    run = CliRunner().invoke
    feed = [drop_record(packet(), dst_id=34), drop_record(packet(), dst_id=99, source=98)]

    def later():
        time.sleep(0.5)
        served.records.extend(feed)

    for args, check in (
            ([], lambda out: out[0].startswith("xx drop (Policy denied) flow 0x0 to endpoint 34, "
                                               "ifindex 5, file bpf_lxc.c:0, , identity "
                                               "256->257: ") and len(out) == 2),
            (["--related-to", "34"], lambda out: len(out) == 1),
            (["-v", "--type", "drop"], lambda out: out[1].startswith("MARK 0x0 FROM 12 DROP: ")
             and out[2].startswith("Ethernet\t") and out[4].startswith("TCP\t")),
            (["-o", "json"], lambda out: json.loads(out[0])["dstID"] == 34)):
        t = threading.Thread(target=later)
        t.start()
        r = run(cli, ["--socket", served.path, "monitor", "--timeout", "1.5", *args])
        t.join()
        assert r.exit_code == 0, r.stderr
        assert "Press Ctrl-C to quit" in r.stderr
        assert check(r.stdout.splitlines()), (args, r.stdout)


def test_cli_monitor_ctrl_c_exits_zero(served, monkeypatch):
    from agent.monitor import observe as obs

    def interrupted(_s):
        raise KeyboardInterrupt

    # the module's clock only (patching time.sleep itself would stop the reader thread too)
    monkeypatch.setattr(obs, "time", types.SimpleNamespace(sleep=interrupted,
                                                           monotonic=time.monotonic))
    r = CliRunner().invoke(cli, ["--socket", served.path, "monitor"])
    assert r.exit_code == 0 and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["--socket", served.path, "observe", "-f"])
    assert r.exit_code == 0


def test_status_shows_the_hubble_line(tmp_path, served):
    from agent.cli import _hubble_line
    assert _hubble_line(served.mon.status()) == \
        "Ok   Current/Max Flows: 0/4095   Flows seen: 0   Lost events: 3   " \
        "Monitor aggregation: medium (interval 5s)"
    assert _hubble_line({**served.mon.status(), "monitorAggregation": "none"}).endswith(
        "Lost events: 3   Monitor aggregation: none")


def test_missing_ring_is_logged_once_and_not_fatal(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(readermod, "RETRY_SECONDS", 0.05)
    mon = MonitorSubsystem(_cfg(tmp_path), AgentMetrics(), StubView(),
                           events=fake_events([], missing=True))
    stop = threading.Event()
    with caplog.at_level("INFO", logger="datapath.monitor"):
        mon.start(stop)
        time.sleep(0.4)                      # several retries
        stop.set()
        mon.stop()
    warnings = [r for r in caplog.records if "not available" in r.getMessage()]
    assert len(warnings) == 1 and "cilium_events" in warnings[0].getMessage()
    st = mon.status()
    assert st["state"] == "Disabled" and "No such file" in st["error"]


def test_ring_capacity_and_reload_resize(tmp_path):
    mon = MonitorSubsystem(_cfg(tmp_path, cap=3), AgentMetrics(), StubView(),
                           events=fake_events([]))
    for i in range(5):
        mon.handle(events_module().decode(drop_record(packet(sport=1000 + i))))
    assert mon.ring.count == 3 and mon.ring.seen == 5
    got = mon.routes()[("GET", "/v1/flows")]({"query": {}}, None)
    assert [f["l4"]["TCP"]["source_port"] for f in got["flows"]] == [1002, 1003, 1004]
    mon.configure(_cfg(tmp_path, cap=1))
    assert mon.status()["capacity"] == 1 and mon.ring.count == 1


def test_lab_observe_merges_nodes_by_time(tmp_path, monkeypatch):
    """Two agents' flows, interleaved in time, printed as one stream with node names."""
    servers, nodes = [], {}
    for i, node in enumerate(("k8s-ctr", "k8s-w1")):
        mon = MonitorSubsystem(_cfg(tmp_path, node=node), AgentMetrics(), StubView(),
                               events=fake_events([]))
        for k in range(2):     # ctr at t=1,3; w1 at t=2,4 (seconds)
            mon.handle(events_module().decode(drop_record(
                packet(sport=40000 + 10 * i + k), ktime_ns=(1 + 2 * k + i) * 10**9)))
        path = str(tmp_path / f"{node}.sock")
        servers.append(api.serve(path, mon.routes()))
        nodes[node] = {"socket": path, "netns": node, "ip": "192.168.10.1",
                       "podCIDR": "172.20.0.0/24"}
    nodes["k8s-w2"] = {**nodes["k8s-w1"], "socket": str(tmp_path / "gone.sock")}   # agent down
    monkeypatch.setattr(labmod, "LAB_ROOT", tmp_path / "labs")
    lab = labmod.Lab("tobs")
    lab.save({"name": "tobs", "nodes": nodes, "pods": {}, "manifests": None})
    try:
        r = CliRunner().invoke(cli, ["lab", "observe", "--name", "tobs"])
        assert r.exit_code == 0, r.output
        assert "Warning: node k8s-w2 is unavailable" in r.stderr
        out = r.stdout.splitlines()
        assert [x.split(" [")[1].split("]")[0] for x in out] == \
            ["k8s-ctr", "k8s-w1", "k8s-ctr", "k8s-w1"]
        assert [x.split("curl-pod:")[1].split(" ")[0] for x in out] == \
            ["40000", "40010", "40001", "40011"]
        r = CliRunner().invoke(cli, ["lab", "observe", "--name", "tobs", "--last", "1",
                                     "-o", "json"])
        got = [json.loads(x) for x in r.stdout.splitlines()]
        assert [g["node_name"] for g in got] == ["k8s-w1"]
        r = CliRunner().invoke(cli, ["lab", "observe", "--name", "nolab"])
        assert r.exit_code == 1 and "no nodes" in r.output
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def test_following_survives_an_agent_restart_and_a_node_going_away():
    """An agent that restarted numbers its flows from 1 again: a follower asks for all it has
    instead of waiting for the old number; in a lab follow, a node that stops answering is
    left out with a warning while the others go on."""
    from agent.monitor import observe as obs
    from datapath.errors import AgentUnreachable

    def flow(seq, t):
        return {"seq": seq, "time": f"2026-11-30T15:00:0{t}Z", "verdict": "DROPPED",
                "IP": {"source": "10.0.0.1", "destination": "10.0.0.2"}}

    replies = {"a": [{"flows": [], "seq": 500},                      # the first call
                     {"flows": [], "seq": 2},                        # restarted: seq went back
                     {"flows": [flow(1, 1), flow(2, 2)], "seq": 2}],   # ... so after=0
               "b": [{"flows": [], "seq": 7}, AgentUnreachable("b", "gone")]}
    asked = []

    def source(node):
        def get(path):
            asked.append((node, path))
            r = replies[node].pop(0) if replies[node] else {"flows": [], "seq": 2}
            if isinstance(r, Exception):
                raise r
            return r
        return get

    out = []
    n = obs.observe({"a": source("a"), "b": source("b")}, {}, "json", True, 0, timeout=0.5,
                    echo=out.append)
    assert n == 2 and len(out) == 2
    assert ("a", "/v1/flows?after=500") in asked and ("a", "/v1/flows?after=0") in asked
