"""Service admission: which services' load-balancer entries fit the maps (issue #12). Owns
nothing in the datapath; it decides which of the planner's services (agent/lb/services.py) are
handed to the reconciler.

A service is programmed whole or not at all. Each service map (cilium_lb4_services_v2,
_backends_v3, _reverse_nat, _maglev) has a capacity (its max entries, -D sized: bpf.lbMapMax);
a service's entries are its frontend and backend slots, its backends, one reverse NAT entry and
one Maglev table a frontend. A key two services share (a backend) is counted once. Services
are admitted in a stable order: the ones already programmed keep their room, changed programmed
services are tried first, then the waiting ones (new, or refused before) by name; a service
whose entries do not fit is refused whole (none of its entries is written; a programmed service
whose change no longer fits leaves the maps) and named with the map that is full. Refused
services are tried again when room appears: a service removed, or bigger maps after a restart.

Room is counted as the kernel sees it while a flush writes: the reconciler deletes after it
writes, so an entry let go stays in its map until the flush after which `settled` is called
(`lingering`). At start the keys already in the maps are lingering (a previous agent's).

API:
    Admission(capacity)                  capacity: {map name: max entries}
        .update(changed) -> {key: (before, after)}   changed: the planner's {key: (old, new)};
                                         out: what to program instead (a _Built or None each)
        .settled(still_there) -> bool    the flush ran; True when room appeared for a refused one
        .occupied(map, keys)             entries in the map that no service holds (yet)
        .admitted {key: _Built}   .refused {key: full map name}   .used(map) -> entries
"""
from __future__ import annotations

import itertools
from collections import _count_elements      # (Counter.update's C loop, on a plain dict)

from .services import SERVICE_MAPS


class Admission:
    def __init__(self, capacity: dict[str, int]):
        self.capacity = {m: int(capacity[m]) for m in SERVICE_MAPS if m in capacity}
        self.admitted: dict[str, object] = {}             # key -> its programmed build
        self.refused: dict[str, str] = {}                  # key -> the map that is full
        self._waiting: dict[str, object] = {}             # refused key -> its build
        self._refs: dict[str, dict[bytes, int]] = {m: {} for m in SERVICE_MAPS}
        # keys no admitted service holds that may still be in their map (deleted at the end of
        # the next flush): they take room until settled
        self.lingering: dict[str, set[bytes]] = {m: set() for m in SERVICE_MAPS}
        self._room = False                                 # room may have appeared: retry

    def used(self, m: str) -> int:
        """Entries map `m` holds while the next flush writes."""
        return len(self._refs[m]) + len(self.lingering[m])

    def occupied(self, m: str, keys) -> None:
        """Keys found in map `m` (a previous agent's): they take room until settled."""
        refs = self._refs[m]
        self.lingering[m].update(k for k in keys if k not in refs)

    def _full_map(self, b) -> str | None:
        """The first map that cannot take b's new keys, or None."""
        cap = self.capacity
        for m, entries in b.maps.items():          # (a build's maps come in SERVICE_MAPS order)
            c = cap.get(m)
            if c is None:
                continue
            refs, linger = self._refs[m], self.lingering[m]
            used = len(refs) + len(linger)
            if used + len(entries) <= c:            # fits even with no key shared
                continue
            if used + sum(1 for k in entries if k not in refs and k not in linger) > c:
                return m
        return None

    def _all_fit(self, keys) -> bool:
        """Whether these waiting services fit all together even if they shared no key."""
        waiting = self._waiting
        for m, c in self.capacity.items():
            n = self.used(m)
            for key in keys:
                n += len(waiting[key].maps.get(m, ()))
            if n > c:
                return False
        return True

    def _add(self, b) -> None:
        for m, entries in b.maps.items():
            refs, linger = self._refs[m], self.lingering[m]
            if refs.keys().isdisjoint(entries):     # (most services: no key shared)
                refs.update(dict.fromkeys(entries, 1))
                if linger:
                    linger.difference_update(entries)
                continue
            for k in entries:
                n = refs.get(k)
                if n is None:
                    refs[k] = 1
                    linger.discard(k)
                else:
                    refs[k] = n + 1

    def _remove(self, b) -> None:
        for m, entries in b.maps.items():
            refs, linger = self._refs[m], self.lingering[m]
            for k in entries:
                n = refs[k]
                if n == 1:
                    del refs[k]
                    linger.add(k)
                else:
                    refs[k] = n - 1

    def update(self, changed: dict) -> dict:
        """Take the planner's changes ({key: (old, new)}, new None: gone); returns
        {key: (programmed before, programmed now)} for every service whose programmed entries
        changed (each a build or None)."""
        before: dict[str, object] = {}
        first: list[str] = []                      # programmed services that changed
        for key, (_, new) in changed.items():
            old = self.admitted.pop(key, None)
            if old is not None:
                self._remove(old)
                before[key] = old
                if new is not None:
                    first.append(key)
            else:
                before[key] = None
                self._waiting.pop(key, None)
            if new is not None:
                self._waiting[key] = new
            else:
                self.refused.pop(key, None)
        order = sorted(first)
        if self._room:                             # everybody waiting, by name
            rest = self._waiting.keys() - set(first)
        else:                                      # only the new ones: no room appeared
            rest = {k for k in changed if k in self._waiting} - set(first)
        order += sorted(rest)
        self._room = False
        if len(order) > 1 and self._all_fit(order):   # (a cold start: no check a service)
            waiting, admitted, refused = self._waiting, self.admitted, self.refused
            builds = [waiting.pop(key) for key in order]
            for m in SERVICE_MAPS:
                refs, linger = self._refs[m], self.lingering[m]
                got = [b.maps[m] for b in builds if m in b.maps]
                _count_elements(refs, itertools.chain.from_iterable(got))
                if linger:
                    linger.difference_update(*got)
            for key, b in zip(order, builds):
                admitted[key] = b
                refused.pop(key, None)
                before.setdefault(key, None)
            order = []
        for key in order:
            b = self._waiting[key]
            full = self._full_map(b)
            if full is None:
                del self._waiting[key]
                self._add(b)
                self.admitted[key] = b
                self.refused.pop(key, None)
                before.setdefault(key, None)
            else:
                self.refused[key] = full
        return {k: (was, self.admitted.get(k)) for k, was in before.items()
                if was is not self.admitted.get(k)}

    def settled(self, still_there: dict[str, set[bytes]] | None = None) -> bool:
        """The flush ran: lingering keys are gone from their maps, except `still_there` (deletes
        that failed). True when that made room and a service waits for it."""
        freed = False
        for m, linger in self.lingering.items():
            keep = linger & (still_there or {}).get(m, set())
            if len(keep) < len(linger):
                freed = True
                self.lingering[m] = keep
        if freed:
            self._room = True
        return freed and bool(self.refused)

    def grow(self, capacity: dict[str, int]) -> None:
        """New capacities (the maps were re-created): the refused are tried again."""
        self.capacity = {m: int(capacity[m]) for m in SERVICE_MAPS if m in capacity}
        self._room = True
