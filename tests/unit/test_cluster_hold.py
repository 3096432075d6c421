"""A restarted agent holds the nodes of its saved cluster view that the kvstore lacks (their
agents restarting too, leases run out) until they register again or the grace ends
(ClusterView.hold), so an upgrade of every node does not drop the others' pods from its
services for the seconds before they come back; the view checks records and logs membership;
the lease is kept by a thread of its own, and taken again at once by a restarting agent."""
from __future__ import annotations

import time
from types import SimpleNamespace

from agent.cluster import ClusterView

W1 = {"ip": "192.168.10.101", "podCIDR": "172.20.1.0/24"}
W2 = {"ip": "192.168.10.102", "podCIDR": "172.20.2.0/24"}
EP2 = {"identity": 257, "hostIP": W1["ip"], "node": "k8s-w1", "namespace": "default",
       "pod": "webpod-2"}
EP3 = {"identity": 257, "hostIP": W2["ip"], "node": "k8s-w2", "namespace": "default",
       "pod": "webpod-3"}


def restarted(ttl: int = 15) -> ClusterView:
    """An agent just started with a saved view holding k8s-w1 and k8s-w2 and their pods."""
    return ClusterView("k8s-ctr", ttl, {"nodes": {"k8s-w1": W1, "k8s-w2": W2},
                                        "endpoints": {"172.20.1.2": EP2, "172.20.2.2": EP3}})


def hold(a, nodes, eps):
    return a.hold(nodes, eps)


def test_nodes_missing_at_the_first_sync_are_held_until_they_register():
    a = restarted()
    # first sync: the kvstore has neither worker (both still compiling): both kept
    assert hold(a, {}, {}) == ({"k8s-w1": W1, "k8s-w2": W2},
                               {"172.20.1.2": EP2, "172.20.2.2": EP3})
    assert a._restored_until > time.monotonic() + 29
    # k8s-w1 registers, its endpoints not ready yet: its pods still held
    assert hold(a, {"k8s-w1": W1}, {}) == ({"k8s-w1": W1, "k8s-w2": W2},
                                           {"172.20.1.2": EP2, "172.20.2.2": EP3})
    # k8s-w1 publishes its pod under a new address: its list wins, its old pod is not held
    new2 = {**EP2, "pod": "webpod-2b"}
    assert hold(a, {"k8s-w1": W1}, {"172.20.1.9": new2}) == (
        {"k8s-w1": W1, "k8s-w2": W2}, {"172.20.1.9": new2, "172.20.2.2": EP3})
    assert set(a._restored["nodes"]) == {"k8s-w2"}
    # k8s-w2 is back with its endpoints: nothing held any more, the kvstore's view alone
    assert hold(a, {"k8s-w1": W1, "k8s-w2": W2}, {"172.20.2.2": EP3}) == (
        {"k8s-w1": W1, "k8s-w2": W2}, {"172.20.2.2": EP3})
    assert a._restored is None
    assert hold(a, {"k8s-w1": W1}, {}) == ({"k8s-w1": W1}, {})      # a later loss: dropped


def test_a_node_that_does_not_come_back_is_dropped_after_the_grace():
    a = restarted(ttl=10)
    assert hold(a, {"k8s-w1": W1}, {"172.20.1.2": EP2}) == (
        {"k8s-w1": W1, "k8s-w2": W2}, {"172.20.1.2": EP2, "172.20.2.2": EP3})
    a._restored_until = time.monotonic() - 0.1                       # 2 x TTL passed
    assert hold(a, {"k8s-w1": W1}, {"172.20.1.2": EP2}) == ({"k8s-w1": W1},
                                                            {"172.20.1.2": EP2})
    assert a._restored is None


def test_an_agent_without_a_saved_view_takes_the_kvstore_as_it_is():
    a = ClusterView("k8s-ctr", 15, {})
    assert hold(a, {"k8s-w1": W1}, {}) == ({"k8s-w1": W1}, {})
    assert not a.grace_over()


def test_records_are_checked_and_this_nodes_own_left_out(caplog):
    a = ClusterView("k8s-ctr", 15, {})
    own = {"ip": "192.168.10.100", "podCIDR": "172.20.0.0/24"}
    with caplog.at_level("WARNING", logger="datapath.kvstore"):
        got = a.offer({"k8s-ctr": own, "k8s-w1": W1, "bad": {"ip": "x", "podCIDR": "y"}},
                      {"172.20.1.2": {**EP2, "extra": 1}, "nope": EP3,
                       "172.20.0.5": {**EP2, "node": "k8s-ctr"}})
    assert got == ({"k8s-w1": W1}, {"172.20.1.2": EP2})
    assert len(caplog.records) == 2 and a.raw is not None


def test_the_grace_ends_once_with_the_last_kvstore_view_offered_again():
    a = restarted(ttl=10)
    a.replace(*a.offer({"k8s-w1": W1}, {"172.20.1.2": EP2}))
    assert set(a.nodes) == {"k8s-w1", "k8s-w2"} and not a.grace_over()
    a._restored_until = time.monotonic() - 0.1
    assert a.grace_over()
    a.replace(*a.offer(*a.raw))
    assert set(a.nodes) == {"k8s-w1"} and not a.grace_over()


def test_the_lease_is_refreshed_by_its_own_thread_while_a_round_waits_on_the_agent():
    """ClusterSync.keep_lease refreshes the lease while step() is stuck in on_change (the
    agent's lock held by a long apply); a failing kvstore does not end it."""
    import threading

    from agent.cluster import ClusterSync
    from datapath.errors import KVStoreError
    calls, entered, release = [], threading.Event(), threading.Event()

    def keepalive(lease):
        calls.append(lease)
        if len(calls) == 1:
            raise KVStoreError("etcd unreachable")
        return 3

    def on_change(nodes, ips):              # the agent's lock, held elsewhere
        entered.set()
        release.wait(10)

    client = SimpleNamespace(lease_keepalive=keepalive, lease_grant=lambda ttl: 7,
                             put=lambda *a, **k: None, delete=lambda k: None,
                             get_prefix=lambda p: {})
    sync = ClusterSync(client, "default", "k8s-ctr", ttl=3, on_change=on_change)
    stop = threading.Event()
    round_ = threading.Thread(target=sync.step)
    round_.start()
    assert entered.wait(10)                 # the round granted lease 7 and now waits
    keeper = threading.Thread(target=sync.keep_lease, args=(stop,))
    keeper.start()
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    release.set()
    keeper.join(10)
    round_.join(10)
    assert calls[:2] == [7, 7] and round_.is_alive() is False


def test_a_node_joining_or_leaving_and_a_withdrawn_endpoint_are_logged_once(caplog):
    """The operator's trail of membership: a node's lease run out (with its endpoints), a node
    back, and an endpoint withdrawn by a node that stays (not ready, or deleted)."""
    a = ClusterView("k8s-ctr", 10, {"nodes": {"k8s-w1": W1, "k8s-w2": W2},
                                    "endpoints": {"172.20.1.2": EP2, "172.20.2.2": EP3}})
    with caplog.at_level("INFO", logger="datapath.kvstore"):
        a.replace({"k8s-w1": W1}, {})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["node k8s-w2 left the cluster (192.168.10.102), 1 endpoint(s) with it",
                     "endpoint 172.20.1.2 (default/webpod-2) of node k8s-w1 withdrawn"]
    caplog.clear()
    with caplog.at_level("INFO", logger="datapath.kvstore"):
        a.replace({"k8s-w1": W1, "k8s-w2": W2}, {"172.20.2.2": EP3})
        a.replace({"k8s-w1": W1, "k8s-w2": W2}, {"172.20.2.2": EP3})    # nothing changed
    assert [r.getMessage() for r in caplog.records] == [
        "node k8s-w2 joined the cluster (192.168.10.102), 1 endpoint(s) with it"]


def test_a_restarting_agent_publishes_what_it_restored_before_its_first_round():
    """publish_early: a lease and the restored records at once (before a compile that may take
    minutes), the lease's refresh thread started once; the first round then writes nothing
    again, and a kvstore that is down is left to the rounds."""
    import threading

    from agent.cluster import ClusterSync
    from datapath.errors import KVStoreError
    puts, grants = [], []
    client = SimpleNamespace(lease_keepalive=lambda lease: 10,
                             lease_grant=lambda ttl: grants.append(ttl) or 41,
                             put=lambda k, v, lease=None: puts.append((k, lease)),
                             delete=lambda k: None, get_prefix=lambda p: {})
    sync = ClusterSync(client, "default", "k8s-w1", ttl=10, on_change=lambda n, e: None)
    sync.set_local({"name": "k8s-w1", "ip": W1["ip"]}, {"172.20.1.2": EP2})
    try:
        sync.publish_early()
        assert grants == [10] and sorted(puts) == sorted(
            [(sync.ip_key("172.20.1.2"), 41), (sync.node_key("k8s-w1"), 41)])
        keeper = sync._keep_lease
        assert keeper is not None and keeper.is_alive()
        sync.step()                                     # the first round: nothing new to write
        stop = threading.Event()
        stop.set()                                      # the agent's stop: the lease goes on
        sync.start(stop)
        assert len(puts) == 2 and grants == [10] and sync._keep_lease is keeper
        time.sleep(0.1)
        assert keeper.is_alive()
    finally:
        sync.stop_lease()
    keeper.join(5)
    assert not keeper.is_alive()

    def down(ttl):
        raise KVStoreError("etcd unreachable")
    client.lease_grant = down
    later = ClusterSync(client, "default", "k8s-w2", ttl=10, on_change=lambda n, e: None)
    try:
        later.publish_early()                           # no raise: the rounds report it
        assert later.lease is None and later._keep_lease.is_alive()
    finally:
        later.stop_lease()


def test_sigterm_arms_a_watchdog_that_logs_every_stack_and_exits(monkeypatch):
    """An agent hung after SIGTERM (seen once in CI: it never logged `stopping`) is not left
    to the lab's SIGKILL: STOP_SECONDS later faulthandler writes every thread's stack to its
    log and ends it."""
    import threading

    from agent import daemon
    armed = []
    monkeypatch.setattr(daemon.faulthandler, "dump_traceback_later",
                        lambda t, exit=False: armed.append((t, exit)))
    a = SimpleNamespace(stop_event=threading.Event(), _wake=threading.Event())
    daemon.Agent._stop(a)
    assert armed == [(daemon.STOP_SECONDS, True)]
    assert a.stop_event.is_set() and a._wake.is_set()
