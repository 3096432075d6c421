"""Agent health: the node reachability probe (agent/health.py), the API's timing hook
(cilium_agent_api_process_time_seconds), the process collector and cilium_unreachable_nodes."""
from __future__ import annotations

import threading
import time
import uuid

import pytest
from prometheus_client import generate_latest

from agent import api, health
from agent.cli import _health_line
from agent.metrics import AgentMetrics
from datapath import netns
from tests.nsfork import run_in_netns


@pytest.fixture
def scratch_ns(privileged):
    """A network namespace of the test's own with only lo up: nothing leaves it."""
    name = f"hl-{uuid.uuid4().hex[:8]}"
    netns.add(name)
    try:
        netns.ip(name, "link", "set", "lo", "up")
        netns.ip(name, "addr", "add", "192.0.2.10/32", "dev", "lo")
        yield name
    finally:
        netns.delete(name)


def test_probe_tells_reachable_from_unreachable(scratch_ns):
    # 127.0.0.1 and 192.0.2.10 (on lo) answer; 192.0.2.99 and 198.51.100.1 have no route
    got = run_in_netns(scratch_ns, health.probe,
                       ["127.0.0.1", "192.0.2.10", "192.0.2.99", "198.51.100.1"], 0.5)
    assert got == {"127.0.0.1", "192.0.2.10"}
    assert run_in_netns(scratch_ns, health.probe, [], 0.5) == set()


def test_node_health_counts_unreachable_nodes(scratch_ns):
    def rounds():
        h = health.NodeHealth(lambda: {"a": "127.0.0.1", "b": "198.51.100.1", "c": "192.0.2.10"},
                              interval=60, timeout=0.5)
        before = h.status()
        h.round()
        return before, h.status(), h.unreachable()
    before, after, unreachable = run_in_netns(scratch_ns, rounds)
    assert before == {"reachable": [], "unreachable": [], "probedAt": None}
    assert after["reachable"] == ["a", "c"] and after["unreachable"] == ["b"]
    assert after["probedAt"] and unreachable == 1
    assert _health_line(after) == "3/4 reachable   (unreachable: b)"
    assert _health_line(before) == "not probed yet"


def test_node_health_thread_stops_with_the_agent(scratch_ns):
    def run():
        stop = threading.Event()
        h = health.NodeHealth(lambda: {"a": "127.0.0.1"}, interval=0.05, timeout=0.2)
        t = h.start(stop)
        stop.wait(0.3)
        stop.set()
        t.join(2)
        return t.is_alive(), h.status()["reachable"]
    alive, reachable = run_in_netns(scratch_ns, run)
    assert not alive and reachable == ["a"]


def test_api_calls_are_timed_by_route_method_and_code(tmp_path):
    m = AgentMetrics()

    def boom(p, b):
        raise api.APIError("nope", 409)
    srv = api.serve(str(tmp_path / "a.sock"), {("GET", "/v1/thing/{name}"): lambda p, b: {},
                                                ("GET", "/v1/boom"): boom}, m.api_call)
    try:
        c = api.Client(str(tmp_path / "a.sock"))
        c.get("/v1/thing/x")
        c.get("/v1/thing/y")
        for path in ("/v1/boom", "/v1/missing"):
            with pytest.raises(api.APIError):
                c.get(path)
    finally:
        srv.shutdown()
        srv.server_close()
    text = generate_latest(m.registry).decode()
    for labels, n in (('method="GET",path="/v1/thing/{name}",return_code="200"', 2),
                      ('method="GET",path="/v1/boom",return_code="409"', 1),
                      ('method="GET",path="none",return_code="404"', 1)):
        line = next(ln for ln in text.splitlines()
                    if ln.startswith("cilium_agent_api_process_time_seconds_count{")
                    and all(part in ln for part in labels.split(",")))
        assert float(line.rsplit(" ", 1)[1]) == n, line


def test_process_metrics_are_cilium_prefixed():
    text = generate_latest(AgentMetrics().registry).decode()
    for name in ("cilium_process_cpu_seconds_total", "cilium_process_resident_memory_bytes",
                 "cilium_process_open_fds", "cilium_process_start_time_seconds"):
        assert f"\n{name} " in text, name


def test_a_node_joining_is_probed_without_waiting_an_interval(scratch_ns):
    def run():
        nodes = {"a": "127.0.0.1"}
        stop = threading.Event()
        h = health.NodeHealth(lambda: dict(nodes), interval=3600, timeout=0.2)
        t = h.start(stop)
        deadline = time.monotonic() + 5
        while h.status()["reachable"] != ["a"] and time.monotonic() < deadline:
            time.sleep(0.05)
        nodes["b"] = "192.0.2.10"
        while h.status()["reachable"] != ["a", "b"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join(3)
        return h.status()["reachable"]
    assert run_in_netns(scratch_ns, run) == ["a", "b"]


def test_failed_kvstore_rounds_count_as_cilium_kvstore_quorum_errors():
    """A kvstore round that fails (etcd unreachable) reaches on_error, which the agent wires to
    cilium_kvstore_quorum_errors_total{error}; a round that succeeds does not."""
    from agent.cluster import ClusterSync
    from datapath.errors import KVStoreError

    class Etcd:
        endpoints, up, rounds = ["http://192.0.2.1:2379"], False, 0

        def lease_grant(self, ttl):
            self.rounds += 1
            if not self.up:
                raise KVStoreError("etcd unreachable at http://192.0.2.1:2379: refused")
            return 7

        def lease_keepalive(self, lease):
            return 60

        def put(self, *a, **kw):
            pass

        def get_prefix(self, prefix):
            return {}

    m, etcd, stop = AgentMetrics(), Etcd(), threading.Event()

    def on_error(err):
        m.kvstore_quorum_errors.labels(err).inc()
        if etcd.rounds >= 3:
            etcd.up = True

    sync = ClusterSync(etcd, "default", "n1", 60, lambda *a: None, on_error=on_error)
    t = threading.Thread(target=sync.run, args=(stop, 0.01))
    t.start()
    try:
        deadline = time.time() + 10
        while not sync.connected and time.time() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(timeout=10)
    assert sync.connected and sync.last_error is None
    assert m.registry.get_sample_value(
        "cilium_kvstore_quorum_errors_total",
        {"error": "etcd unreachable at http://192.0.2.1:2379: refused"}) == 3
    assert "cilium_kvstore_quorum_errors_total" in generate_latest(m.registry).decode()
