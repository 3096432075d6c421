"""Unit tests for agent/policy/selector.py, portrange.py and selectorcache.py."""
from __future__ import annotations

import functools
import ipaddress
import random

import pytest

from agent.policy import port_prefixes
from agent.policy.selector import (WILDCARD, CIDRSelector, EntitySelector, LabelSelector,
                                   Peer, Requirement, label_map, normalize_key)
from agent.policy.selectorcache import SelectorCache

HOST = ("reserved:host",)
WORLD = ("reserved:world",)
REMOTE = ("reserved:remote-node",)
HEALTH = ("reserved:health",)


def pod(ns: str, **labels: str) -> tuple[str, ...]:
    return tuple(sorted([f"k8s:{k}={v}" for k, v in labels.items()]
                        + [f"k8s:io.kubernetes.pod.namespace={ns}",
                           f"k8s:io.cilium.k8s.namespace.labels.ns={ns}"]))


def cidr(prefix: str) -> tuple[str, ...]:
    return (f"cidr:{prefix}", "reserved:world")


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def matches(sel: Peer, labels: tuple[str, ...]) -> bool:
    return sel.matches(label_map(labels))


# --- selectors ------------------------------------------------------------------------------

def test_label_map_and_keys() -> None:
    assert label_map(("k8s:app=web", "reserved:host", "cidr:10.0.0.0/8", "k8s:a=b=c")) == {
        "k8s:app": "web", "reserved:host": "", "cidr:10.0.0.0/8": "", "k8s:a": "b=c"}
    assert normalize_key("app") == "k8s:app"
    assert normalize_key("any:app") == "k8s:app"
    assert normalize_key("k8s:app.kubernetes.io/name") == "k8s:app.kubernetes.io/name"
    assert normalize_key("reserved:host") == "reserved:host"
    with pytest.raises(ValueError, match="unknown label source 'container'"):
        normalize_key("container:app")


def test_requirements() -> None:
    labels = label_map(pod("x", app="web", tier="fe"))
    assert Requirement("k8s:app", "In", ("db", "web")).matches(labels)
    assert not Requirement("k8s:app", "In", ("db",)).matches(labels)
    assert not Requirement("k8s:missing", "In", ("",)).matches(labels)
    assert Requirement("k8s:app", "NotIn", ("db",)).matches(labels)
    assert not Requirement("k8s:app", "NotIn", ("web",)).matches(labels)
    assert Requirement("k8s:missing", "NotIn", ("web",)).matches(labels)   # absent: not in
    assert Requirement("k8s:tier", "Exists").matches(labels)
    assert not Requirement("k8s:missing", "Exists").matches(labels)
    assert Requirement("k8s:missing", "DoesNotExist").matches(labels)
    assert not Requirement("k8s:tier", "DoesNotExist").matches(labels)
    assert [str(r) for r in (Requirement("k8s:a", "In", ("x",)),
                             Requirement("k8s:a", "In", ("x", "y")),
                             Requirement("k8s:a", "NotIn", ("x",)),
                             Requirement("k8s:a", "Exists"),
                             Requirement("k8s:a", "DoesNotExist"))] == [
        "k8s:a=x", "k8s:a in (x,y)", "k8s:a notin (x)", "k8s:a", "!k8s:a"]


def test_label_selector() -> None:
    s = LabelSelector.of({"k8s:app": "web"}, [Requirement("k8s:tier", "NotIn", ("db",))])
    assert matches(s, pod("x", app="web"))
    assert matches(s, pod("x", app="web", tier="fe"))
    assert not matches(s, pod("x", app="web", tier="db"))
    assert not matches(s, pod("x", app="db"))
    assert not matches(s, HOST)
    assert str(s) == "k8s:app=web,k8s:tier notin (db)"
    empty = LabelSelector()
    assert str(empty) == "{}" and all(matches(empty, x) for x in (HOST, WORLD, pod("x")))
    host = LabelSelector.of({"reserved:host": ""})
    assert matches(host, HOST) and not matches(host, REMOTE) and host.has_source("reserved")
    # one selector, however it is spelled
    assert LabelSelector.of({"k8s:a": "1"}).add(Requirement("k8s:b", "Exists")) == \
        LabelSelector.of(None, [Requirement("k8s:b", "Exists"), Requirement("k8s:a", "In", ("1",))])
    assert s.has_key("k8s:tier") and not s.has_key("k8s:env")


def test_cidr_selector() -> None:
    s = CIDRSelector(net("10.0.0.0/8"), (net("10.1.0.0/16"),))
    assert matches(s, cidr("10.0.0.0/8"))
    assert matches(s, cidr("10.2.0.0/16"))
    assert matches(s, cidr("10.0.0.0/15"))          # holds the except, is not inside it
    assert not matches(s, cidr("10.1.0.0/16"))      # the hole
    assert not matches(s, cidr("10.1.2.0/24"))      # inside the hole
    assert not matches(s, cidr("10.0.0.0/7"))       # wider than the cidr
    assert not matches(s, cidr("192.168.0.0/16"))
    assert not matches(s, WORLD) and not matches(s, pod("x")) and not matches(s, HOST)
    world = CIDRSelector(net("0.0.0.0/0"), (net("10.0.0.0/8"),))
    assert matches(world, WORLD)                    # 0.0.0.0/0 is world itself
    assert matches(world, cidr("203.0.113.0/24"))
    assert not matches(world, cidr("10.0.0.0/8"))
    assert not matches(world, HOST) and not matches(world, pod("x"))
    assert str(s) == "cidr:10.0.0.0/8 except 10.1.0.0/16"
    assert str(CIDRSelector(net("10.0.0.0/8"))) == "cidr:10.0.0.0/8"
    assert s.prefixes() == (net("10.0.0.0/8"), net("10.1.0.0/16"))


def test_entities() -> None:
    every = {"host": HOST, "world": WORLD, "cidr": cidr("10.0.0.0/8"), "remote": REMOTE,
             "health": HEALTH, "init": ("reserved:init",), "unmanaged": ("reserved:unmanaged",),
             "apiserver": ("reserved:kube-apiserver",), "ingress": ("reserved:ingress",),
             "pod": pod("x", app="a")}

    def selected(entity: str) -> set[str]:
        return {n for n, labels in every.items() if matches(EntitySelector(entity), labels)}

    assert selected("world") == selected("world-ipv4") == {"world", "cidr"}
    assert selected("cluster") == set(every) - {"world", "cidr"}
    assert selected("host") == {"host"}
    assert selected("remote-node") == {"remote"}
    assert selected("kube-apiserver") == {"apiserver"}
    assert selected("health") == {"health"}
    assert selected("init") == {"init"}
    assert selected("none") == selected("world-ipv6") == set()
    assert str(EntitySelector("cluster")) == "entity:cluster" and str(WILDCARD) == "entity:all"


# --- port prefixes ----------------------------------------------------------------------------

def _block_ports(port: int, bits: int) -> range:
    return range(port, port + (1 << (16 - bits)))


def _check_cover(lo: int, hi: int, cover: list[tuple[int, int]]) -> None:
    covered: list[int] = []
    for port, bits in cover:
        assert 0 <= bits <= 16
        assert port % (1 << (16 - bits)) == 0, (port, bits)   # aligned
        covered += _block_ports(port, bits)
    assert covered == list(range(lo, hi + 1))                 # exact, disjoint, in order


@functools.lru_cache(maxsize=None)
def _fewest(lo: int, hi: int) -> int:
    """The fewest aligned blocks covering [lo, hi] exactly, by brute force."""
    if lo > hi:
        return 0
    best = None
    size = 1
    while lo % size == 0 and lo + size - 1 <= hi:
        n = 1 + _fewest(lo + size, hi)
        best = n if best is None else min(best, n)
        size *= 2
    assert best is not None
    return best


def test_port_prefixes_exhaustive_small() -> None:
    for lo in range(0, 130):
        for hi in range(lo, 130):
            cover = port_prefixes(lo, hi)
            _check_cover(lo, hi, cover)
            assert len(cover) == _fewest(lo, hi), (lo, hi)


def test_port_prefixes_edges() -> None:
    assert port_prefixes(0, 65535) == [(0, 0)]
    assert port_prefixes(80, 80) == [(80, 16)]
    assert port_prefixes(0, 0) == [(0, 16)]
    assert port_prefixes(65535, 65535) == [(65535, 16)]
    assert port_prefixes(32768, 65535) == [(32768, 1)]
    assert port_prefixes(1, 65535) == [(1 << b, 16 - b) for b in range(16)]
    assert port_prefixes(0, 65534) == [(65536 - (65536 >> i), i + 1) for i in range(16)]
    assert port_prefixes(1024, 2047) == [(1024, 6)]
    _check_cover(1, 65535, port_prefixes(1, 65535))
    rnd = random.Random(9)
    for _ in range(300):
        lo = rnd.randrange(65536)
        hi = rnd.randrange(lo, 65536)
        cover = port_prefixes(lo, hi)
        assert len(cover) <= 30
        assert cover[0][0] == lo
        last_port, last_bits = cover[-1]
        assert last_port + (1 << (16 - last_bits)) - 1 == hi
        assert all(a + (1 << (16 - b)) == c for (a, b), (c, _) in zip(cover, cover[1:]))
    for lo, hi in ((1, 0), (-1, 5), (0, 65536)):
        with pytest.raises(ValueError):
            port_prefixes(lo, hi)


# --- selector cache -------------------------------------------------------------------------

SELECTORS: list[Peer] = [
    LabelSelector(),
    LabelSelector.of({"k8s:app": "a"}),
    LabelSelector.of({"k8s:io.kubernetes.pod.namespace": "x"}),
    LabelSelector.of(None, [Requirement("k8s:app", "NotIn", ("a", "b"))]),
    LabelSelector.of(None, [Requirement("k8s:tier", "DoesNotExist"),
                            Requirement("k8s:io.kubernetes.pod.namespace", "Exists")]),
    LabelSelector.of({"reserved:host": ""}),
    CIDRSelector(net("10.0.0.0/8"), (net("10.1.0.0/16"),)),
    CIDRSelector(net("0.0.0.0/0")),
    EntitySelector("cluster"),
    EntitySelector("world"),
    EntitySelector("remote-node"),
    WILDCARD,
]


def _random_labels(rnd: random.Random) -> tuple[str, ...]:
    kind = rnd.randrange(4)
    if kind == 0:
        return rnd.choice([HOST, WORLD, REMOTE, HEALTH])
    if kind == 1:
        return cidr(rnd.choice(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.168.0.0/16"]))
    labels = {"app": rnd.choice("abc")}
    if rnd.random() < 0.5:
        labels["tier"] = rnd.choice(["fe", "be"])
    return pod(rnd.choice("xyz"), **labels)


def _fresh(identities: dict[int, tuple[str, ...]], sel: Peer) -> frozenset[int]:
    if sel == WILDCARD:
        return frozenset({0})
    return frozenset(i for i, labels in identities.items() if matches(sel, labels))


def test_selector_cache_basics() -> None:
    c = SelectorCache()
    c.set_identities({1: HOST, 2: WORLD, 256: pod("x", app="a"), 257: pod("y", app="a")})
    app_a = LabelSelector.of({"k8s:app": "a"})
    assert c.add_selector(app_a) == {256, 257}
    assert c.add_selector(WILDCARD) == {0}
    assert c.add_selector(app_a) == {256, 257}           # a second user
    v = c.version(app_a)
    assert c.add_identity(258, pod("x", app="b")) == set()
    assert c.version(app_a) == v                          # untouched selection, same version
    assert c.add_identity(258, pod("x", app="a")) == {app_a}   # a label change
    assert c.selections(app_a) == {256, 257, 258} and c.version(app_a) > v
    assert c.add_identity(258, pod("x", app="a")) == set()     # unchanged: no work
    assert c.remove_identity(256) == {app_a}
    assert c.remove_identity(999) == set()
    assert c.listing() == [
        {"selector": "entity:all", "identities": [0], "users": 1},
        {"selector": "k8s:app=a", "identities": [257, 258], "users": 2},
    ]
    c.remove_selector(app_a)
    assert c.listing()[1]["users"] == 1
    c.remove_selector(app_a)
    assert [d["selector"] for d in c.listing()] == ["entity:all"]
    assert c.set_identities({}) == set()                  # the wildcard never changes
    assert c.selections(WILDCARD) == {0}
    with pytest.raises(KeyError):
        c.selections(app_a)


def test_selector_cache_incremental_equals_fresh() -> None:
    rnd = random.Random(1234)
    for _round in range(20):
        c = SelectorCache()
        truth: dict[int, tuple[str, ...]] = {}
        users = {sel: 0 for sel in SELECTORS}
        for _step in range(150):
            op = rnd.random()
            ident = rnd.randrange(1, 40)
            if op < 0.4:
                labels = _random_labels(rnd)
                changed = c.add_identity(ident, labels)
                before = dict(truth)
                truth[ident] = labels
            elif op < 0.55:
                changed = c.remove_identity(ident)
                before = dict(truth)
                truth.pop(ident, None)
            elif op < 0.65:
                before = dict(truth)
                truth = {i: _random_labels(rnd) if rnd.random() < 0.3 else labels
                         for i, labels in truth.items() if rnd.random() < 0.8}
                changed = c.set_identities(truth)
            else:
                sel = rnd.choice(SELECTORS)
                if users[sel] and rnd.random() < 0.5:
                    c.remove_selector(sel)
                    users[sel] -= 1
                else:
                    assert c.add_selector(sel) == _fresh(truth, sel)
                    users[sel] += 1
                continue
            in_use = [s for s in SELECTORS if users[s]]
            assert changed == {s for s in in_use if _fresh(before, s) != _fresh(truth, s)}
            for s in in_use:
                assert c.selections(s) == _fresh(truth, s)
        assert c.listing() == sorted(
            ({"selector": str(s), "identities": sorted(_fresh(truth, s)), "users": users[s]}
             for s in SELECTORS if users[s]), key=lambda d: str(d["selector"]))
