"""The incremental reconciler: what the agent wants in the datapath, held in memory by section,
and what it last wrote, so a change becomes the map operations for exactly the keys it touched,
with nothing read back. A full reconciliation (at start, then at a slow interval) reads every
managed map, filter, XDP program and route back, repairs what drifted, and counts the repairs.

A section is one producer's share of the maps (a service, a backend, the node's own entries, the
cluster's endpoints). Sections may share a key only with the same value (two services with one
backend); a key leaves the desired state when its last section drops it. The non-map state (tc
filters, XDP programs, routes) is small and is diffed whole against what was last applied.

Operations keep reconcile.plan's order (policy map first; in a map, `late` keys after the rest;
detach, updates, attach, routes, deletes) and its rules for counter maps and owned prefixes. A
failed operation stays pending and is retried by the next flush. Long runs of one map's writes
go in batches (reconcile.apply); the cyclic collector is paused while a flush or a full
reconciliation plans and applies (10^5 ops at 10,000 services).

API:
    Section(maps, late)                          one producer's entries (or anything with
                                                 .maps and .late: kept as given, not copied, so
                                                 the producer must not change it afterwards)
    Reconciler(counters, owned_prefix)
        .set_section(id, Section | None)         replace (None: remove) one section
        .set_links(tc, xdp, routes)              the desired non-map state
        .flush(dp, on_error) -> Result           ops for what changed since the last flush
        .has_pending() -> bool                   failed writes waiting for a retry
        .full(dp, interfaces, xdp_interfaces, on_error) -> Result   read back, repair drift
        .desired_state() -> DatapathState        everything desired (for a read-back plan)
"""
from __future__ import annotations

import itertools
import operator
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable

from datapath.loader import MANAGED_MAPS

from . import gcpause
from .reconcile import _ORDER, DatapathState, Op, _map_order, apply, plan, read_actual


@dataclass
class Section:
    maps: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    late: frozenset = frozenset()       # (map, key) written after the rest of their map


EMPTY = Section()
_KIND_TARGET = operator.attrgetter("kind", "target")
_KEY, _VALUE = operator.attrgetter("key"), operator.attrgetter("value")


@dataclass
class Result:
    ops: list[Op]
    failed: list[tuple[Op, Exception]]
    seconds: float
    _by_target: dict | None = field(default=None, repr=False, compare=False)

    def by_target(self) -> dict[str, int]:
        """Ops per map (or tc / xdp / route)."""
        if self._by_target is None:
            out: Counter = Counter()
            for (kind, target), n in Counter(map(_KIND_TARGET, self.ops)).items():
                out[target if kind[0] == "m" else kind.split("_")[0]] += n
            self._by_target = dict(out)
        return dict(self._by_target)


class Reconciler:
    def __init__(self, counters: frozenset = frozenset(), owned_prefix: dict | None = None):
        self.counters = set(counters)             # maps whose values the datapath counts in
        self.owned_prefix = dict(owned_prefix or {})  # map -> value bytes the agent owns
        self.sections: dict[Hashable, Section] = {}
        self.desired: dict[str, dict[bytes, bytes]] = defaultdict(dict)
        # map -> key -> how many sections want it besides the first (keys shared by sections)
        self.refs: dict[str, dict[bytes, int]] = defaultdict(dict)
        self.late: set[tuple[str, bytes]] = set()
        self.written: dict[str, dict[bytes, bytes]] = defaultdict(dict)
        self.links = DatapathState()              # desired tc / xdp / routes
        self.applied = DatapathState()            # tc / xdp / routes as last applied
        self.pending: dict[str, set[bytes]] = defaultdict(set)   # keys for the next flush
        # nothing planned yet: every desired key is pending (not copied into `pending`: at a
        # cold start that is 10^5 keys, and the full reconciliation that comes first reads all)
        self._fresh = True

    # ---- desired state ----
    def set_section(self, sid: Hashable, section: Section | None) -> None:
        old = self.sections.get(sid, EMPTY)
        new = section or EMPTY
        if new is old or (new.maps == old.maps and new.late == old.late):
            return
        if section is None:
            self.sections.pop(sid, None)
        else:
            self.sections[sid] = section
        if not old.maps:                           # a new section: every key is new to it
            desired, pending, fresh = self.desired, self.pending, self._fresh
            for m, now in new.maps.items():
                want = desired[m]
                if not want.keys().isdisjoint(now):     # (no set made when none is shared)
                    refs = self.refs[m]
                    for k in now.keys() & want.keys():
                        refs[k] = refs.get(k, 0) + 1
                want.update(now)
                if not fresh:
                    pending[m].update(now)
            if old.late:
                self.late.difference_update(old.late)
            if new.late:
                self.late.update(new.late)
            return
        for m in old.maps.keys() | new.maps.keys():
            was, now = old.maps.get(m, {}), new.maps.get(m, {})
            want, pend, refs = self.desired[m], self.pending[m], self.refs[m]
            for k in was.keys() - now.keys():
                n = refs.get(k)
                if n:                              # another section still wants it
                    if n == 1:
                        del refs[k]
                    else:
                        refs[k] = n - 1
                else:
                    want.pop(k, None)
                    pend.add(k)
            if was:
                for k in (now.keys() - was.keys()) & want.keys():
                    refs[k] = refs.get(k, 0) + 1
                changed = {k: v for k, v in now.items() - was.items()}
            else:                                  # a new section: every key is new to it
                for k in now.keys() & want.keys():
                    refs[k] = refs.get(k, 0) + 1
                changed = now
            want.update(changed)
            pend.update(changed.keys())
        self.late.difference_update(old.late)
        self.late.update(new.late)

    def has_pending(self) -> bool:
        """Writes that failed and wait for the next flush."""
        return any(self.pending.values()) or (self._fresh and any(self.desired.values()))

    def set_links(self, tc: dict, xdp: dict, routes: dict) -> None:
        self.links = DatapathState(tc=dict(tc), xdp=dict(xdp), routes=dict(routes))

    def desired_state(self) -> DatapathState:
        maps = {m: dict(self.desired.get(m, {})) for m in MANAGED_MAPS}
        return DatapathState(maps=maps, tc=dict(self.links.tc), xdp=dict(self.links.xdp),
                             routes=dict(self.links.routes), counters=set(self.counters),
                             late=set(self.late), owned_prefix=dict(self.owned_prefix))

    # ---- planning ----
    def _differs(self, m: str, have: bytes, want: bytes) -> bool:
        if m in self.counters:
            return False
        n = self.owned_prefix.get(m)
        return have[:n] != want[:n] if n else have != want

    def plan(self) -> list[Op]:
        """The ops for the pending keys and the non-map state (pure: nothing is applied)."""
        ops: list[Op] = []
        pending = self.pending
        if self._fresh:                            # every desired key (nothing written yet)
            pending = {m: pending.get(m, set()) | want.keys() for m, want in self.desired.items()}
        for m, keys in pending.items():
            desired, written = self.desired.get(m, {}), self.written.get(m, {})
            for k in keys:
                want, have = desired.get(k), written.get(k)
                if want is not None:
                    if have is None or self._differs(m, have, want):
                        ops.append(Op("map_update", m, k, want))
                elif have is not None:
                    ops.append(Op("map_delete", m, k))
        links = plan(DatapathState(tc=self.links.tc, xdp=self.links.xdp,
                                   routes=self.links.routes),
                     DatapathState(tc=self.applied.tc, xdp=self.applied.xdp,
                                   routes=self.applied.routes))
        late = self.late
        ops.sort(key=lambda op: (_ORDER[op.kind], _map_order(op.target),
                                 (op.target, op.key) in late, op.key))
        # the links plan is already in order; map ops go between its kinds
        return sorted(ops + links, key=lambda op: _ORDER[op.kind])

    # ---- applying ----
    def _record(self, op: Op) -> None:
        """What a successful op leaves in the datapath."""
        if op.kind == "map_update":
            self.written[op.target][op.key] = op.value
        elif op.kind == "map_delete":
            self.written[op.target].pop(op.key, None)
        elif op.kind == "tc_attach":
            self.applied.tc[(op.target, op.key)] = self.links.tc[(op.target, op.key)]
        elif op.kind == "tc_detach":
            self.applied.tc.pop((op.target, op.key), None)
        elif op.kind == "xdp_attach":
            self.applied.xdp[op.target] = self.links.xdp[op.target]
        elif op.kind == "xdp_detach":
            self.applied.xdp.pop(op.target, None)
        elif op.kind == "route_replace":
            self.applied.routes[op.target] = self.links.routes[op.target]
        elif op.kind == "route_del":
            self.applied.routes.pop(op.target, None)

    def _apply(self, ops: list[Op], dp, on_error, t0: float) -> Result:
        failed: list[tuple[Op, Exception]] = []

        def err(op, e):
            failed.append((op, e))
            if on_error:
                on_error(op, e)
        apply(ops, dp, err)
        bad = {id(op) for op, _ in failed}
        self.pending, self._fresh = defaultdict(set), False
        for op, _ in failed:
            if op.kind.startswith("map"):
                self.pending[op.target].add(op.key)
        written, by_target = self.written, Counter()     # (Result.by_target, counted here)
        for (kind, target), run in itertools.groupby(ops, _KIND_TARGET):
            run = list(run)
            by_target[target if kind[0] == "m" else kind.split("_")[0]] += len(run)
            if kind == "map_update" and not bad:      # (the bulk of a full plan: C speed)
                have, want = written[target], self.desired.get(target, {})
                if not have and len(run) == len(want):
                    # into an empty map, every desired key (a plan writes each key once, with
                    # its desired value): a copy, not 10^5 inserts into a growing dict
                    written[target] = want.copy()
                else:
                    have.update(zip(map(_KEY, run), map(_VALUE, run)))
                continue
            for op in run:
                if id(op) not in bad:
                    self._record(op)
        return Result(ops, failed, time.perf_counter() - t0, dict(by_target))

    def flush(self, dp, on_error: Callable[[Op, Exception], None] | None = None) -> Result:
        """Apply what changed since the last flush (and retry what failed then)."""
        t0 = time.perf_counter()
        with gcpause.paused():
            return self._apply(self.plan(), dp, on_error, t0)

    def full(self, dp, interfaces: set[str], xdp_interfaces: set[str],
             on_error: Callable[[Op, Exception], None] | None = None) -> Result:
        """Read everything back, then make it what is desired: adopts a restarted agent's
        datapath with no writes when nothing changed, and repairs drift."""
        t0 = time.perf_counter()
        with gcpause.paused():
            actual = read_actual(dp, interfaces, MANAGED_MAPS, xdp_interfaces)
            self.written = defaultdict(dict, actual.maps)
            self.applied = DatapathState(tc=actual.tc, xdp=actual.xdp, routes=actual.routes)
            desired = DatapathState(       # desired_state() without copying the maps
                maps={m: self.desired.get(m, {}) for m in MANAGED_MAPS}, tc=self.links.tc,
                xdp=self.links.xdp, routes=self.links.routes, counters=self.counters,
                late=self.late, owned_prefix=self.owned_prefix)
            ops = plan(desired, actual)
            return self._apply(ops, dp, on_error, t0)
