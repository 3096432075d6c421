"""Conntrack GC (agent/ctgc.py): an entry the datapath refreshes while the walk runs is kept."""
from __future__ import annotations

from types import SimpleNamespace

from agent import ctgc


class RacingMap:
    """A CT or NAT map whose entries the datapath refreshes between the GC's snapshot
    (items()) and its delete: as a new SYN reopening a closed flow's tuple does."""

    def __init__(self, entries: dict, refreshed: dict):
        self.entries, self.refreshed = dict(entries), refreshed
        self.deleted = []

    def items(self):
        snap = [(k, SimpleNamespace(lifetime=v)) for k, v in self.entries.items()]
        self.entries.update(self.refreshed)           # the datapath, during the walk
        return iter(snap)

    def get(self, key):
        v = self.entries.get(key)
        return None if v is None else SimpleNamespace(lifetime=v)

    def delete(self, key) -> bool:
        self.deleted.append(key)
        return self.entries.pop(key, None) is not None


def test_an_entry_refreshed_during_the_walk_is_not_deleted():
    now = 1000.0
    # a, b expired at the snapshot; b is reopened meanwhile; c is alive; d vanishes meanwhile
    m = RacingMap({"a": 900, "b": 990, "c": 1100, "d": 950}, {"b": 1060})
    real_items = m.items

    def items():
        snap = list(real_items())
        m.entries.pop("d")                            # deleted by someone else meanwhile
        return iter(snap)
    m.items = items
    assert ctgc.collect({"cilium_ct4_global": m}, now) == {"TCP": (2, 1)}
    assert m.deleted == ["a"] and set(m.entries) == {"b", "c"}
    nat = RacingMap({"x": 10, "y": 20}, {"y": 2000})
    assert ctgc.collect_nat({ctgc.NAT_MAP: nat}, now) == (1, 1)
    assert nat.deleted == ["x"]
