"""The selector cache: every peer selector in use and the identities it selects, kept up to date
incrementally as Cilium's SelectorCache does.

An identity change matches only that identity against each selector; a new selector is matched
against every identity once. Selectors are refcounted by their users (rule peers), so two rules
naming one selector share it. Each selector carries a version that moves whenever its selection
changes, so a user can tell cheaply whether what it computed from the selection is stale. The
wildcard selects identity 0 (the map's "any peer"), whatever identities exist.

API:
    SelectorCache()
    .set_identities({id: labels}) / .add_identity(id, labels) / .remove_identity(id)
                                        -> the selectors whose selection changed
    .add_selector(sel) -> selection     .remove_selector(sel)     (refcounted)
    .selections(sel) -> frozenset[int]  .version(sel) -> int
    .listing() -> [{"selector", "identities", "users"}]   for `datapath policy selectors`
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from .selector import Peer, WildcardSelector, label_map

_ANY = frozenset({0})


class _Entry:
    __slots__ = ("selected", "frozen", "users", "version")

    def __init__(self, selected: set[int], version: int):
        self.selected = selected
        self.frozen: frozenset[int] | None = None   # the selection's snapshot, made on demand
        self.users = 1
        self.version = version


class SelectorCache:
    def __init__(self) -> None:
        self._labels: dict[int, tuple[str, ...]] = {}       # as given, sorted
        self._maps: dict[int, dict[str, str]] = {}          # the same, ready for matching
        self._entries: dict[Peer, _Entry] = {}
        self._clock = 0   # versions come from here: never reused, even by a re-added selector

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _changed(self, e: _Entry) -> None:
        e.frozen = None
        e.version = self._tick()

    # ---- identities ----
    def set_identities(self, mapping: Mapping[int, Iterable[str]]) -> set[Peer]:
        """Make the known identities exactly `mapping`."""
        changed: set[Peer] = set()
        for ident in [i for i in self._labels if i not in mapping]:
            changed |= self.remove_identity(ident)
        for ident, labels in mapping.items():
            changed |= self.add_identity(ident, labels)
        return changed

    def add_identity(self, ident: int, labels: Iterable[str]) -> set[Peer]:
        """Add an identity or change its labels."""
        key = tuple(sorted(labels))
        if self._labels.get(ident) == key:
            return set()
        self._labels[ident] = key
        lm = self._maps[ident] = label_map(key)
        changed: set[Peer] = set()
        for sel, e in self._entries.items():
            if isinstance(sel, WildcardSelector):
                continue
            if sel.matches(lm) != (ident in e.selected):
                e.selected.symmetric_difference_update((ident,))
                self._changed(e)
                changed.add(sel)
        return changed

    def remove_identity(self, ident: int) -> set[Peer]:
        if ident not in self._labels:
            return set()
        del self._labels[ident], self._maps[ident]
        changed: set[Peer] = set()
        for sel, e in self._entries.items():
            if ident in e.selected:
                e.selected.discard(ident)
                self._changed(e)
                changed.add(sel)
        return changed

    # ---- selectors ----
    def add_selector(self, sel: Peer) -> frozenset[int]:
        e = self._entries.get(sel)
        if e is not None:
            e.users += 1
        elif isinstance(sel, WildcardSelector):
            self._entries[sel] = _Entry(set(_ANY), self._tick())
        else:
            self._entries[sel] = _Entry({i for i, lm in self._maps.items() if sel.matches(lm)},
                                        self._tick())
        return self.selections(sel)

    def remove_selector(self, sel: Peer) -> None:
        e = self._entries[sel]
        e.users -= 1
        if not e.users:
            del self._entries[sel]

    def selections(self, sel: Peer) -> frozenset[int]:
        e = self._entries[sel]
        if e.frozen is None:
            e.frozen = frozenset(e.selected)
        return e.frozen

    def version(self, sel: Peer) -> int:
        return self._entries[sel].version

    def listing(self) -> list[dict]:
        return sorted(({"selector": str(sel), "identities": sorted(e.selected), "users": e.users}
                       for sel, e in self._entries.items()), key=lambda d: d["selector"])
