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


# ---- batches: a long run of one map's updates (or deletes) goes in BPF_MAP_*_BATCH calls ----

class FakeTable:
    """RawMap's batch side over a FakeMap: writes in order, stops at a key in `fail` (the
    kernel's partial batch) or refuses every call (`refuse`: a map type without batches)."""

    def __init__(self, m, refuse=False):
        self.m, self.refuse = m, refuse
        self.batch_ok, self.percpu, self.value_len = True, False, None
        self.calls = []

    def _run(self, keys, each):
        self.calls.append(list(keys))
        if self.refuse:
            return 0
        for i, k in enumerate(keys):
            if k in self.m.fail or each(i, k) is False:
                return i
        return len(keys)

    def update_batch(self, keys, values):
        return self._run(keys, lambda i, k: self.m.data.__setitem__(k, values[i]))

    def delete_batch(self, keys):
        return self._run(keys, lambda i, k: self.m.data.pop(k, None) is not None)


def batch_dp(refuse=False):
    """FakeDP whose maps take batches; what a batch wrote is reported through the map's count()
    (datapath/maps.py TypedMap.count), collected in `hooked`."""
    dp = FakeDP()
    hooked = []
    for m in dp.maps.values():
        m.table = FakeTable(m, refuse)
        m.count = (lambda name: lambda op, outcome, n: hooked.append((name, op, outcome, n)))(
            m.name)
    return dp, hooked


def keys(n, prefix=b"k"):
    return {prefix + b"%03d" % i: b"v%d" % i for i in range(n)}


def test_a_long_run_goes_in_one_batch_in_order_with_late_keys_last():
    dp, hooked = batch_dp()
    rec = Reconciler()
    want = keys(40)
    rec.set_section("s", Section(maps={SVC: want, BE: {b"b": b"1"}},
                                 late=frozenset({(SVC, b"k000")})))
    res = rec.flush(dp)
    assert not res.failed and len(res.ops) == 41
    table = dp.maps[SVC].table
    assert table.calls == [sorted(want)[1:] + [b"k000"]]          # one call; the late key last
    assert dp.maps[SVC].writes == 0 and dp.maps[BE].writes == 1   # nothing one by one but BE
    assert dp.maps[SVC].data == want
    assert hooked == [(SVC, "update", "success", 40)]             # counted once, for 40
    assert rec.flush(dp).ops == []                                # recorded as written
    rec.set_section("s", Section(maps={BE: {b"b": b"1"}}))
    res = rec.flush(dp)
    assert [o.kind for o in res.ops] == ["map_delete"] * 40 and not res.failed
    assert table.calls[-1] == sorted(want) and dp.maps[SVC].data == {}


def test_a_refused_batch_falls_back_to_one_by_one():
    dp, _ = batch_dp(refuse=True)
    rec = Reconciler()
    rec.set_section("s", Section(maps={SVC: keys(20)}))
    res = rec.flush(dp)
    assert not res.failed and len(dp.maps[SVC].table.calls) == 1
    assert dp.maps[SVC].writes == 20 and dp.maps[SVC].data == keys(20)


def test_a_batch_stopped_by_one_key_finds_it_and_keeps_only_it_pending():
    dp, hooked = batch_dp()
    rec = Reconciler()
    dp.maps[SVC].fail = {b"k007"}
    errors = []
    rec.set_section("s", Section(maps={SVC: keys(30)}))
    res = rec.flush(dp, lambda op, e: errors.append(op.key))
    assert [o.key for o, _ in res.failed] == [b"k007"] and errors == [b"k007"]
    assert hooked == [(SVC, "update", "success", 7)]   # the 7 before it, in one count
    assert dp.maps[SVC].writes == 22              # after the failing key: one by one
    assert set(dp.maps[SVC].data) == set(keys(30)) - {b"k007"}
    assert rec.has_pending()
    dp.maps[SVC].fail = set()
    res = rec.flush(dp)
    assert [o.key for o in res.ops] == [b"k007"] and not res.failed and not rec.has_pending()
    assert dp.maps[SVC].data == keys(30)


def test_full_reconcile_repairs_drift_in_batches(no_routes):
    dp, _ = batch_dp()
    rec = Reconciler()
    want = keys(50)
    rec.set_section("s", Section(maps={SVC: want}))
    assert len(rec.full(dp, set(), set()).ops) == 50             # cold: every key written
    assert rec.full(dp, set(), set()).ops == []                  # adopted: nothing
    for k in list(want)[:20]:
        dp.maps[SVC].data[k] = b"corrupt"
    for i in range(20):
        dp.maps[SVC].data[b"stray%02d" % i] = b"x"
    res = rec.full(dp, set(), set())
    assert res.by_target() == {SVC: 40} and not res.failed
    assert dp.maps[SVC].data == want


def test_an_op_is_an_immutable_value():
    import copy
    import pickle

    from agent.reconcile import Op
    op = Op("map_update", SVC, b"k", b"v")
    assert (op.kind, op.target, op.key, op.value) == ("map_update", SVC, b"k", b"v")
    assert Op("xdp_detach", "eth0") == Op("xdp_detach", "eth0", b"", b"") and hash(op)
    assert pickle.loads(pickle.dumps(op)) == op == copy.copy(op)
    assert str(op) == f"map_update {SVC} 6b" and repr(op).startswith("Op(kind='map_update'")
    with pytest.raises(AttributeError):
        op.key = b"x"


def test_a_fresh_reconciler_has_every_desired_key_pending():
    dp, rec = FakeDP(), Reconciler()
    assert not rec.has_pending()
    rec.set_section("a", Section(maps={SVC: {b"a1": b"x", b"a2": b"y"}, BE: {b"b": b"1"}}))
    rec.set_section("b", Section(maps={SVC: {b"b1": b"z"}}))
    rec.set_section("b", None)                                  # gone before the first flush
    rec.set_section("a", Section(maps={SVC: {b"a1": b"x", b"a2": b"Y"}}))
    assert rec.has_pending()
    res = rec.flush(dp)
    assert sorted((o.target, o.key, o.value) for o in res.ops) == [
        (SVC, b"a1", b"x"), (SVC, b"a2", b"Y")]
    assert not rec.has_pending() and rec.flush(dp).ops == []


def test_a_cold_full_reconcile_records_what_it_wrote(no_routes):
    dp, _ = batch_dp()
    rec = Reconciler()
    want = keys(40)
    rec.set_section("s", Section(maps={SVC: want}, late=frozenset({(SVC, b"k003")})))
    assert len(rec.full(dp, set(), set()).ops) == 40
    assert rec.written[SVC] == want and rec.written[SVC] is not rec.desired[SVC]
    rec.set_section("s", Section(maps={SVC: {**want, b"k001": b"new"}}))
    assert [(o.key, o.value) for o in rec.flush(dp).ops] == [(b"k001", b"new")]
    assert dp.maps[SVC].data[b"k001"] == b"new" and want[b"k001"] == b"v1"
