"""The incremental reconciler (agent/reconciler.py) against an in-memory datapath: sections in,
ops for exactly the keys that changed out, failures retried, drift found by a full read-back."""
from types import SimpleNamespace

import pytest

from agent.reconciler import Reconciler, Section

_IDENTITY = SimpleNamespace(from_bytes=lambda b: b)


class FakeMap:
    def __init__(self, name, fail=None):
        self.name, self.data, self.fail = name, {}, fail or set()
        self.spec = SimpleNamespace(key=_IDENTITY, value=_IDENTITY)
        self.writes = 0

    def update(self, k, v):
        if k in self.fail:
            raise OSError("no space left")
        self.writes += 1
        self.data[k] = v

    def delete(self, k):
        self.writes += 1
        return self.data.pop(k, None) is not None


class FakeDP:
    def __init__(self, names=("cilium_lb4_services_v2", "cilium_lb4_backends_v3",
                              "cilium_policy_v2", "cilium_l2_responder_v4")):
        self.maps = {n: FakeMap(n) for n in names}

    def read_map(self, name):
        m = self.maps.get(name)
        return dict(m.data) if m else {}

    def writes(self):
        return sum(m.writes for m in self.maps.values())


@pytest.fixture
def no_routes(monkeypatch):
    """read_actual reads our routes from the host's table: none here."""
    monkeypatch.setattr("agent.reconcile.read_routes", lambda: {})


SVC, BE = "cilium_lb4_services_v2", "cilium_lb4_backends_v3"


def test_sections_become_ops_for_what_changed_only():
    dp, rec = FakeDP(), Reconciler()
    rec.set_section("a", Section(maps={SVC: {b"a1": b"x", b"a2": b"y"}}))
    rec.set_section("b", Section(maps={SVC: {b"b1": b"z"}}))
    res = rec.flush(dp)
    assert [(o.kind, o.key) for o in res.ops] == [("map_update", b"a1"), ("map_update", b"a2"),
                                                  ("map_update", b"b1")]
    assert rec.flush(dp).ops == []                       # nothing changed: nothing to do
    rec.set_section("a", Section(maps={SVC: {b"a1": b"x", b"a2": b"Y"}}))
    res = rec.flush(dp)
    assert [(o.kind, o.key, o.value) for o in res.ops] == [("map_update", b"a2", b"Y")]
    rec.set_section("b", None)
    assert [(o.kind, o.key) for o in rec.flush(dp).ops] == [("map_delete", b"b1")]
    assert dp.maps[SVC].data == {b"a1": b"x", b"a2": b"Y"}


def test_a_key_shared_by_two_sections_stays_until_the_last_drops_it():
    dp, rec = FakeDP(), Reconciler()
    rec.set_section("s1", Section(maps={BE: {b"be": b"10.0.0.1"}}))
    rec.set_section("s2", Section(maps={BE: {b"be": b"10.0.0.1"}}))
    assert len(rec.flush(dp).ops) == 1
    rec.set_section("s1", None)
    assert rec.flush(dp).ops == []
    rec.set_section("s2", None)
    assert [o.kind for o in rec.flush(dp).ops] == ["map_delete"]
    assert dp.maps[BE].data == {}


def test_order_policy_first_late_keys_last_deletes_at_the_end():
    dp, rec = FakeDP(), Reconciler()
    rec.set_section("old", Section(maps={BE: {b"gone": b"1"}}))
    rec.flush(dp)
    rec.set_section("old", None)
    rec.set_section("svc", Section(maps={SVC: {b"head": b"h", b"slot": b"s"}, BE: {b"b": b"1"}},
                                   late=frozenset({(SVC, b"head")})))
    rec.set_section("pol", Section(maps={"cilium_policy_v2": {b"p": b"allow"}}))
    ops = rec.flush(dp).ops
    assert [(o.kind, o.target, o.key) for o in ops] == [
        ("map_update", "cilium_policy_v2", b"p"), ("map_update", BE, b"b"),
        ("map_update", SVC, b"slot"), ("map_update", SVC, b"head"), ("map_delete", BE, b"gone")]


def test_a_failed_write_is_retried_by_the_next_flush():
    dp, rec = FakeDP(), Reconciler()
    dp.maps[SVC].fail = {b"k"}
    rec.set_section("a", Section(maps={SVC: {b"k": b"v", b"ok": b"v"}}))
    res = rec.flush(dp)
    assert [o.key for o, _ in res.failed] == [b"k"]
    dp.maps[SVC].fail = set()
    res = rec.flush(dp)
    assert [(o.kind, o.key) for o in res.ops] == [("map_update", b"k")] and not res.failed
    assert dp.maps[SVC].data == {b"k": b"v", b"ok": b"v"}


def test_full_reconcile_adopts_without_writes_and_repairs_drift(no_routes):
    dp, rec = FakeDP(), Reconciler()
    dp.maps[SVC].data = {b"a": b"1", b"b": b"2"}                 # a previous agent's work
    rec.set_section("s", Section(maps={SVC: {b"a": b"1", b"b": b"2"}}))
    res = rec.full(dp, set(), set())
    assert res.ops == [] and dp.writes() == 0                    # adopted as it is
    dp.maps[SVC].data[b"a"] = b"corrupt"                         # behind the agent's back
    dp.maps[SVC].data[b"stray"] = b"x"
    del dp.maps[SVC].data[b"b"]
    assert rec.flush(dp).ops == []                               # incremental: no read-back
    res = rec.full(dp, set(), set())
    assert sorted((o.kind, o.key) for o in res.ops) == [
        ("map_delete", b"stray"), ("map_update", b"a"), ("map_update", b"b")]
    assert res.by_target() == {SVC: 3}
    assert dp.maps[SVC].data == {b"a": b"1", b"b": b"2"}
    assert rec.full(dp, set(), set()).ops == []


def test_counter_maps_and_owned_prefixes_are_not_rewritten_for_datapath_bytes(no_routes):
    pol, l2 = "cilium_policy_v2", "cilium_l2_responder_v4"
    dp = FakeDP()
    rec = Reconciler(counters=frozenset({l2}), owned_prefix={pol: 2})
    rec.set_section("n", Section(maps={pol: {b"p": b"AL\x00\x00"}, l2: {b"ip": b"\x00"}}))
    rec.flush(dp)
    dp.maps[pol].data[b"p"] = b"AL\x05\x09"                      # the datapath counted
    dp.maps[l2].data[b"ip"] = b"\x07"
    assert rec.full(dp, set(), set()).ops == []
    rec.set_section("n", Section(maps={pol: {b"p": b"DE\x00\x00"}, l2: {b"ip": b"\x00"}}))
    assert [(o.target, o.value) for o in rec.flush(dp).ops] == [(pol, b"DE\x00\x00")]


def test_links_are_diffed_against_what_was_applied(monkeypatch):
    calls = []
    monkeypatch.setattr("agent.reconcile.attach.tc_attach", lambda *a: calls.append(a))
    dp, rec = FakeDP(), Reconciler()
    dp.program = lambda name: (7, "tag")
    rec.set_links({("lxc1", "ingress"): ("from-container", "t1")}, {}, {})
    assert [o.kind for o in rec.flush(dp).ops] == ["tc_attach"]
    assert rec.flush(dp).ops == []
    assert len(calls) == 1
