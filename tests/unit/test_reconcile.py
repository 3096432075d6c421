"""The reconcile plan is pure: differences only, in a safe order, and idempotent."""
from __future__ import annotations

import subprocess

from agent.reconcile import DatapathState, Op, plan


def st(lxc=None, tc=None):
    return DatapathState(maps={"cilium_lxc": dict(lxc or {}), "dp_ep_ifindex": {}},
                         tc=dict(tc or {}))


def test_identical_states_need_no_ops():
    s = st({b"a": b"1"}, {("lxc1", "ingress"): ("from-container", "t1")})
    assert plan(s, st({b"a": b"1"}, {("lxc1", "ingress"): ("from-container", "t1")})) == []


def test_new_endpoint_writes_maps_before_attaching():
    ops = plan(st({b"a": b"1"}, {("lxc1", "ingress"): ("from-container", "t1")}), st())
    assert [o.kind for o in ops] == ["map_update", "tc_attach"]
    assert ops[1] == Op("tc_attach", "lxc1", "ingress", "from-container")


def test_removed_endpoint_detaches_before_deleting_map_entries():
    ops = plan(st(), st({b"a": b"1"}, {("lxc1", "ingress"): ("from-container", "t1")}))
    assert [o.kind for o in ops] == ["tc_detach", "map_delete"]


def test_changed_value_updates_in_place_and_unchanged_rows_are_left_alone():
    ops = plan(st({b"a": b"2", b"b": b"1"}), st({b"a": b"1", b"b": b"1"}))
    assert ops == [Op("map_update", "cilium_lxc", b"a", b"2")]


def test_stale_program_tag_is_replaced_atomically_not_detached():
    ops = plan(st(tc={("lxc1", "ingress"): ("from-container", "new")}),
               st(tc={("lxc1", "ingress"): ("from-container", "old")}))
    assert [o.kind for o in ops] == ["tc_attach"]


def test_applying_the_plan_converges():
    desired = st({b"a": b"1", b"c": b"3"}, {("lxc1", "ingress"): ("from-container", "t")})
    actual = st({b"a": b"0", b"b": b"2"})
    for op in plan(desired, actual):       # a model of apply() on the actual state
        if op.kind == "map_update":
            actual.maps[op.target][op.key] = op.value
        elif op.kind == "map_delete":
            del actual.maps[op.target][op.key]
        elif op.kind == "tc_attach":
            actual.tc[(op.target, op.key)] = desired.tc[(op.target, op.key)]
    assert actual == desired
    assert plan(desired, actual) == []


def test_routes_are_diffed_and_come_after_attaches():
    want = DatapathState(routes={"172.20.1.0/24": ("192.168.10.101", "eth1")},
                         tc={("eth1", "ingress"): ("from-netdev", "t")})
    have = DatapathState(routes={"172.20.9.0/24": ("192.168.10.109", "eth1")})
    ops = plan(want, have)
    assert [o.kind for o in ops] == ["tc_attach", "route_replace", "route_del"]
    assert ops[1] == Op("route_replace", "172.20.1.0/24", "192.168.10.101", "eth1")
    assert plan(want, DatapathState(routes=dict(want.routes), tc=dict(want.tc))) == []


def test_late_keys_are_written_after_the_rest_of_their_map():
    want = DatapathState(maps={"svc": {b"\x00": b"count=2", b"\x01": b"slot1", b"\x02": b"slot2"}},
                         late={("svc", b"\x00")})
    ops = plan(want, DatapathState(maps={"svc": {}}))
    assert [o.key for o in ops] == [b"\x01", b"\x02", b"\x00"]


def test_a_cold_plan_writes_every_key_in_the_desired_order_late_keys_last():
    # into empty maps no key is compared or sorted: the desired state's order, late keys last
    # (sorted), the policy map first; counter and owned-prefix maps get every key too
    want = DatapathState(maps={"svc": {b"\x09": b"a", b"\x00": b"head", b"\x03": b"b"},
                               "cnt": {b"z": b"0", b"y": b"0"},
                               "cilium_policy_v2": {b"p2": b"v" * 8, b"p1": b"w" * 8}},
                         late={("svc", b"\x00"), ("svc", b"\x77")}, counters={"cnt"},
                         owned_prefix={"cilium_policy_v2": 4})
    ops = plan(want, DatapathState())
    assert [(o.kind, o.target, o.key) for o in ops] == [
        ("map_update", "cilium_policy_v2", b"p2"), ("map_update", "cilium_policy_v2", b"p1"),
        ("map_update", "cnt", b"z"), ("map_update", "cnt", b"y"),
        ("map_update", "svc", b"\x09"), ("map_update", "svc", b"\x03"),
        ("map_update", "svc", b"\x00")]
    assert ops[-1].value == b"head"
    assert plan(want, DatapathState(maps={m: dict(v) for m, v in want.maps.items()})) == []


def test_tunnel_routes_encapsulate_to_the_far_node_and_read_back_alike(monkeypatch):
    from agent import reconcile
    assert reconcile.route_argv("replace", "172.20.1.0/24", "192.168.10.101", "eth1") == \
        ["ip", "route", "replace", "172.20.1.0/24", "via", "192.168.10.101", "dev", "eth1",
         "proto", "202"]
    assert reconcile.route_argv("replace", "172.20.1.0/24", "192.168.10.101", "cilium_vxlan") == \
        ["ip", "route", "replace", "172.20.1.0/24", "encap", "ip", "id", "1", "dst",
         "192.168.10.101", "ttl", "64", "dev", "cilium_vxlan", "proto", "202"]
    assert reconcile.route_argv("del", "172.20.1.0/24", "192.168.10.101", "cilium_vxlan") == \
        ["ip", "route", "del", "172.20.1.0/24", "dev", "cilium_vxlan", "proto", "202"]
    # `ip -j route` names both the prefix and the tunnel endpoint "dst"
    shown = ('[{"dst":"172.20.1.0/24","encap":"ip","id":1,"src":"0.0.0.0",'
             '"dst":"192.168.10.101","ttl":64,"dev":"cilium_vxlan","scope":"link"},'
             '{"dst":"172.20.2.0/24","gateway":"192.168.10.102","dev":"eth1"}]')
    monkeypatch.setattr(reconcile.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, shown, ""))
    assert reconcile.read_routes() == {"172.20.1.0/24": ("192.168.10.101", "cilium_vxlan"),
                                       "172.20.2.0/24": ("192.168.10.102", "eth1")}


def test_counter_maps_keep_the_datapaths_values():
    m = "cilium_l2_responder_v4"
    want = DatapathState(maps={m: {b"a": b"\0", b"b": b"\0"}}, counters={m})
    have = DatapathState(maps={m: {b"a": b"\x07", b"c": b"\x03"}})
    assert plan(want, have) == [Op("map_update", m, b"b", b"\0"), Op("map_delete", m, b"c")]


def test_xdp_programs_are_diffed_like_tc_ones():
    want = DatapathState(xdp={"eth1": ("xdp", "t2"), "eth2": ("xdp", "t2")})
    have = DatapathState(xdp={"eth1": ("xdp", "t1"), "eth3": ("xdp", "t1")},
                         maps={"m": {b"k": b"v"}})
    assert plan(want, have) == [Op("xdp_detach", "eth3"), Op("xdp_attach", "eth1", "native", "xdp"),
                                Op("xdp_attach", "eth2", "native", "xdp"),
                                Op("map_delete", "m", b"k")]
    assert plan(want, DatapathState(xdp=dict(want.xdp))) == []


def test_policy_entries_are_written_before_the_endpoint_they_guard():
    want = DatapathState(maps={"cilium_lxc": {b"ep": b"1"}, "cilium_policy_v2": {b"k": b"v"},
                               "cilium_ipcache": {b"ip": b"1"}})
    ops = plan(want, DatapathState(maps={}))
    assert [o.target for o in ops] == ["cilium_policy_v2", "cilium_ipcache", "cilium_lxc"]


def test_owned_prefix_leaves_datapath_counters_alone_but_rewrites_the_verdict():
    verdict_allow, verdict_deny = b"\x00\x00\x00\x00", b"\x00\x00\x01\x00"
    zero = b"\x00" * 4
    want = DatapathState(maps={"cilium_policy_v2": {b"a": verdict_allow + zero,
                                                     b"b": verdict_deny + zero}},
                         owned_prefix={"cilium_policy_v2": 4})
    have = DatapathState(maps={"cilium_policy_v2": {b"a": verdict_allow + b"\x09" * 4,
                                                     b"b": verdict_allow + b"\x07" * 4}})
    # a's counters moved (left alone); b's verdict changed (rewritten)
    assert plan(want, have) == [Op("map_update", "cilium_policy_v2", b"b", verdict_deny + zero)]
