"""Reconcile: a pure plan from desired and actual datapath state to ordered operations, and an
apply step that executes them against a NodeDatapath.

Both states have the same shape:
    DatapathState(maps={map_name: {key_bytes: value_bytes}},
                  tc={(ifname, direction): (program_name, tag)},
                  xdp={ifname: (program_name, tag)},
                  routes={dst_cidr: (via, dev)})           # routes carry proto ROUTE_PROTO
A route over TUNNEL_DEVICE (collect-metadata VXLAN) has no next hop: `via` is the node at the
far end, and the route encapsulates to it (`encap ip id <host identity> dst <via>`).
plan() emits only differences, in an order that never shows a program a half-built world:
detach first, then map writes, then attaches, then routes, then map deletes. Applying the same
desired state twice yields no operations the second time. In a map named in `counters` the
values belong to the datapath (it counts in them): a missing key is created with the desired
value, an unwanted one deleted, and a present one left alone. In a map named in `owned_prefix`
only the value's first N bytes are the agent's (the policy map's verdict; its packet and byte
counters follow): a value is rewritten only when those bytes differ. Maps are written in name
order, except that policy entries go first: an endpoint is never reachable before its policy.
In a map, keys go in sorted order, except into an empty map (a cold start), where they go in
the desired state's own order (no sort of 10^5 keys); late keys last either way.
apply() hands a run of BATCH_MIN or more updates (or deletes) of one map to the kernel in
BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH calls, which write the elements in the same order;
where a batch stops at an element, or the map type takes none, the rest of the run goes one by
one, so a failing op is reported (and counted) exactly as it would be alone.
"""
from __future__ import annotations

import collections
import functools
import itertools
import json
import operator
import subprocess
from dataclasses import dataclass, field
from typing import Callable

from datapath import attach
from datapath.loader import MANAGED_MAPS, PROGRAMS


ROUTE_PROTO = "202"     # the rtnetlink protocol our routes carry, so we touch only ours
TUNNEL_DEVICE = "cilium_vxlan"
TUNNEL_HOST_VNI = "1"   # the VNI of the node's own packets: Cilium's host identity


@dataclass
class DatapathState:
    maps: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    tc: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    routes: dict[str, tuple[str, str]] = field(default_factory=dict)
    xdp: dict[str, tuple[str, str]] = field(default_factory=dict)
    counters: set[str] = field(default_factory=set)
    # keys written after every other update of their map (a service frontend after its slots,
    # so no packet sees a count that points past the slots written so far)
    late: set[tuple[str, bytes]] = field(default_factory=set)
    # map -> how many leading value bytes the agent owns (the rest are datapath counters)
    owned_prefix: dict[str, int] = field(default_factory=dict)


class Op(tuple):
    """One operation, immutable and hashable: Op(kind, target, key=b"", value=b"") with
    .kind      tc_detach | xdp_detach | map_update | tc_attach | xdp_attach | route_replace |
               route_del | map_delete
    .target    map name or interface
    .key, .value
    (a tuple: a full plan makes 10^5 of them, and a frozen dataclass costs 3x as much each)."""
    __slots__ = ()

    def __new__(cls, kind: str, target: str, key: bytes | str = b"", value: bytes | str = b""):
        return tuple.__new__(cls, (kind, target, key, value))

    kind = property(operator.itemgetter(0))
    target = property(operator.itemgetter(1))
    key = property(operator.itemgetter(2))
    value = property(operator.itemgetter(3))

    def __getnewargs__(self):            # pickle / copy: Op(*fields), not Op(fields)
        return tuple(self)

    def __repr__(self):
        return f"Op(kind={self.kind!r}, target={self.target!r}, key={self.key!r}, " \
               f"value={self.value!r})"

    def __str__(self):
        if self.kind.startswith("map"):
            return f"{self.kind} {self.target} {self.key.hex()}"
        return f"{self.kind} {self.target} {self.key} {self.value}"


_op = functools.partial(tuple.__new__, Op)    # Op from one (kind, target, key, value) tuple


_ORDER = {"tc_detach": 0, "xdp_detach": 0, "map_update": 1, "tc_attach": 2, "xdp_attach": 2,
          "route_replace": 3, "route_del": 4, "map_delete": 5}
XDP_MODE = "native"
_MAPS_FIRST = ("cilium_policy_v2",)


def _map_order(name: str) -> tuple[int, str]:
    return (0 if name in _MAPS_FIRST else 1, name)


def plan(desired: DatapathState, actual: DatapathState) -> list[Op]:
    updates: list[Op] = []            # map ops by kind: the bulk of a plan, already in order
    deletes: list[Op] = []
    ops: list[Op] = []                # the rest (links), sorted by kind at the end
    late = {}
    for m, k in desired.late:
        late.setdefault(m, set()).add(k)
    for name in sorted(set(desired.maps) | set(actual.maps), key=_map_order):
        want, have = desired.maps.get(name, {}), actual.maps.get(name, {})
        if not have:        # an empty map (a cold start): the desired order, no 10^5-key sort
            last = late.get(name, set()) & want.keys()
            keys, values = want.keys(), want.values()
            if last:                                # the rest in order, then the late keys
                last, rest = sorted(last), dict(want)
                collections.deque(map(rest.__delitem__, last), 0)
                keys = itertools.chain(rest.keys(), last)
                values = itertools.chain(rest.values(), map(want.__getitem__, last))
            updates += map(_op, zip(itertools.repeat("map_update"), itertools.repeat(name),
                                    keys, values))      # (C speed: 10^5 ops)
            continue
        n = desired.owned_prefix.get(name)
        if name in desired.counters:
            todo = want.keys() - have.keys()
        elif n:
            todo = {k for k, v in want.items() if (h := have.get(k)) is None or h[:n] != v[:n]}
        else:
            todo = {k for k, v in want.items() if have.get(k) != v}   # missing or different
        last = late.get(name, set()) & todo
        updates += [_op(("map_update", name, k, want[k]))
                    for k in sorted(todo - last) + sorted(last)]
        deletes += [_op(("map_delete", name, k, b""))
                    for k in sorted(have.keys() - want.keys())]
    for (ifname, direction) in sorted(set(desired.tc) | set(actual.tc)):
        want = desired.tc.get((ifname, direction))
        have = actual.tc.get((ifname, direction))
        if want and have != want:
            ops.append(Op("tc_attach", ifname, direction, want[0]))
        elif have and not want:
            ops.append(Op("tc_detach", ifname, direction))
    for ifname in sorted(set(desired.xdp) | set(actual.xdp)):
        want, have = desired.xdp.get(ifname), actual.xdp.get(ifname)
        if want and have != want:
            ops.append(Op("xdp_attach", ifname, XDP_MODE, want[0]))
        elif have and not want:
            ops.append(Op("xdp_detach", ifname))
    for dst in sorted(set(desired.routes) | set(actual.routes)):
        want, have = desired.routes.get(dst), actual.routes.get(dst)
        if want and have != want:
            ops.append(Op("route_replace", dst, want[0], want[1]))
        elif have and not want:
            ops.append(Op("route_del", dst, have[0], have[1]))
    ops.sort(key=lambda o: _ORDER[o.kind])               # stable: keeps per-kind order
    first = _ORDER["map_update"]
    return [o for o in ops if _ORDER[o.kind] < first] + updates + \
        [o for o in ops if _ORDER[o.kind] > first] + deletes   # map_delete: the last kind


def read_routes() -> dict[str, tuple[str, str]]:
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "proto", ROUTE_PROTO],
                         capture_output=True, text=True)
    routes = {}
    # an encap route has two "dst" keys: the prefix, then the tunnel endpoint
    for pairs in json.loads(out.stdout or "[]", object_pairs_hook=list):
        dsts = [v for k, v in pairs if k == "dst"]
        r = dict(pairs)
        routes[dsts[0]] = (dsts[1] if r.get("encap") == "ip" else r.get("gateway", ""),
                           r.get("dev", ""))
    return routes


def route_argv(verb: str, dst: str, via: str, dev: str) -> list[str]:
    if dev == TUNNEL_DEVICE and verb != "del":
        nexthop = ["encap", "ip", "id", TUNNEL_HOST_VNI, "dst", via, "ttl", "64"]
    else:
        nexthop = ["via", via] if via and dev != TUNNEL_DEVICE else []
    return ["ip", "route", verb, dst, *nexthop, "dev", dev, "proto", ROUTE_PROTO]


def xdp_names() -> set[str]:
    """The names the kernel shows for our XDP programs (BCC names a program by its function,
    cut to BPF_OBJ_NAME_LEN - 1)."""
    return {spec.function[:15] for spec in PROGRAMS.values() if spec.prog_type == "xdp"}


def read_actual(dp, interfaces: set[str], maps=MANAGED_MAPS,
                xdp_interfaces: set[str] = frozenset()) -> DatapathState:
    """What the datapath holds now: managed maps, our filters on `interfaces`, our XDP
    programs on `xdp_interfaces`, our routes."""
    st = DatapathState(maps={m: dp.read_map(m) for m in maps}, routes=read_routes())
    by_function = {spec.function[:15]: name for name, spec in PROGRAMS.items()
                   if spec.prog_type == "xdp"}
    for ifname in sorted(xdp_interfaces):
        got = attach.xdp_query(ifname)
        if got and got["name"] in by_function:
            st.xdp[ifname] = (by_function[got["name"]], got["tag"])
    directions = {spec.direction for spec in PROGRAMS.values() if spec.prog_type == "tc"}
    for ifname in sorted(interfaces):
        for direction in sorted(directions):
            got = attach.tc_query(ifname, direction)
            if got is not None:
                st.tc[(ifname, direction)] = (got.name.removeprefix(attach.OWNER_PREFIX),
                                              got.tag)
    return st


BATCH_MIN = 16   # a run of at least this many updates (or deletes) of one map goes in batches
_KIND_TARGET = operator.itemgetter(0, 1)     # an Op's (kind, target), key, value
_KEY, _VALUE = operator.itemgetter(2), operator.itemgetter(3)


def _batch(ops: list[Op], dp) -> int:
    """Write a run of map_update (or map_delete) ops of one map by the raw map's batch call,
    in order; returns how many leading ops were applied (the caller applies the rest one by
    one). 0 when the map has no batch call or takes values that are not bytes (seen from the
    first op: a later key or value that is no buffer of the map's sizes makes the raw batch
    call raise or stop before it, and apply() takes the rest one by one)."""
    tm = dp.maps[ops[0].target]
    raw = getattr(tm, "table", None)
    if raw is None or not hasattr(raw, "update_batch") or not raw.batch_ok:
        return 0
    if type(ops[0].key) is not bytes:
        return 0
    keys = list(map(_KEY, ops))
    if ops[0].kind == "map_update":
        if type(ops[0].value) is not bytes:
            return 0
        values = list(map(_VALUE, ops))
        if raw.percpu:                           # one value for every CPU, as update() does
            values = [v if len(v) == raw.value_len else raw.per_cpu(v) for v in values]
        done, what = raw.update_batch(keys, values), "update"
    else:
        done, what = raw.delete_batch(keys), "delete"
    if done:
        tm.count(what, "success", done)
    return done





def apply(ops: list[Op], dp, on_error: Callable[[Op, Exception], None] | None = None) -> int:
    """Execute ops in order; returns how many failed (each reported to on_error). A run of
    BATCH_MIN or more updates (or deletes) of one map goes to the kernel in batches, in the
    same order; when a batch stops at an element (or the map takes no batches) the rest of the
    run is applied one by one, so each failing op is found and reported as it would be alone."""
    failed = 0
    maps = getattr(dp, "maps", {})
    for (kind, target), run in itertools.groupby(ops, _KIND_TARGET):
        run = list(run)
        if len(run) >= BATCH_MIN and kind in ("map_update", "map_delete") and target in maps:
            try:
                done = _batch(run, dp)
            except Exception:  # noqa: BLE001 -- the one-by-one path reports the error
                done = 0
            run = run[done:]
        failed += _apply_each(run, dp, on_error)
    return failed


def _apply_each(ops: list[Op], dp, on_error) -> int:
    failed = 0
    for op in ops:
        try:
            if op.kind == "map_update":           # maps take the bytes as they are
                dp.maps[op.target].update(op.key, op.value)
            elif op.kind == "map_delete":
                dp.maps[op.target].delete(op.key)
            elif op.kind == "tc_attach":
                fd, _ = dp.program(op.value)
                attach.tc_attach(op.target, fd, op.key, op.value)
            elif op.kind == "tc_detach":
                attach.tc_detach(op.target, op.key)
            elif op.kind == "xdp_attach":
                fd, _ = dp.program(op.value)
                attach.xdp_attach(op.target, fd, op.key)
            elif op.kind == "xdp_detach":
                attach.xdp_detach(op.target, xdp_names())
            elif op.kind in ("route_replace", "route_del"):
                args = route_argv("replace" if op.kind == "route_replace" else "del",
                                  op.target, op.key, op.value)
                p = subprocess.run(args, capture_output=True, text=True)
                if p.returncode != 0:
                    raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
        except Exception as e:  # one failed op must not stop the rest; the caller counts it
            failed += 1
            if on_error:
                on_error(op, e)
    return failed
