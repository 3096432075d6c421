"""Unit tests for agent/manifests.py's ManifestStore: incremental updates give the same set as a
full load, the right ManifestDelta, the same objects for what did not change, and the last good
state when a file is bad; the fast YAML path reads what PyYAML reads; and the cache across restarts
(a hit parses nothing, files changed while the agent was down win, a corrupt, foreign or
other-version cache is ignored)."""
from __future__ import annotations

import ast
import os
import random
from pathlib import Path

import pytest
import yaml

from agent.manifests import (EMPTY_DELTA, KindDelta, ManifestDelta, ManifestStore, _fast_load_all,
                             _parse, _split, load_manifests)
from datapath.errors import ManifestError

ROOT = Path(__file__).resolve().parents[2]


def pod(name: str, ns: str = "default", app: str = "web", node: str = "node-1") -> str:
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, "
            f"labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n"
            f"  containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]\n")


def svc(name: str, app: str = "web", port: int = 80) -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
            f"spec:\n  selector: {{app: {app}}}\n  ports: [{{name: http, port: {port}}}]\n")


def ns(name: str, team: str = "a") -> str:
    return ("apiVersion: v1\nkind: Namespace\n"
            f"metadata: {{name: {name}, labels: {{team: {team}}}}}\n")


def eps(name: str, ip: str = "10.1.0.1") -> str:
    return ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: {name}, namespace: default, "
            f"labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\n"
            f"endpoints: [{{addresses: [{ip}]}}]\nports: [{{name: http, port: 80}}]\n")


def pool(name: str, cidr: str = "10.0.10.0/24") -> str:
    return ("apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\n"
            f"metadata: {{name: {name}}}\nspec:\n  blocks: [{{cidr: {cidr}}}]\n")


def l2(name: str, iface: str = "eth0") -> str:
    return ("apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\n"
            f"metadata: {{name: {name}}}\n"
            f"spec:\n  interfaces: [{iface}]\n  loadBalancerIPs: true\n")


def netpol(name: str, app: str = "web") -> str:
    return ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: default}}\n"
            f"spec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n")


def deployment(name: str) -> str:
    return f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\n"


def docs(*texts: str) -> str:
    return "---\n".join(texts)


def write(d: Path, name: str, *texts: str) -> str:
    p = d / name
    p.write_text(docs(*texts))
    return str(p)


def fresh(d: Path):
    return ManifestStore(str(d)).load()


def same_sets(a, b) -> None:
    assert a == b
    for attr in ("pods", "namespaces", "services", "endpointslices", "ippools", "l2policies",
                 "policies"):
        assert list(getattr(a, attr)) == list(getattr(b, attr)) or \
            set(getattr(a, attr)) == set(getattr(b, attr))


def check_delta(old, new, delta: ManifestDelta) -> None:
    """The delta says exactly what differs between two sets, and nothing else."""
    for attr in ("pods", "namespaces", "services", "endpointslices", "ippools", "l2policies",
                 "policies"):
        a, b, kd = getattr(old, attr), getattr(new, attr), getattr(delta, attr)
        assert kd.added == b.keys() - a.keys(), attr
        assert kd.removed == a.keys() - b.keys(), attr
        assert kd.changed == {k for k in a.keys() & b.keys() if a[k] != b[k]}, attr
        for k in a.keys() & b.keys() - kd.changed:
            assert a[k] is b[k], (attr, k)          # unchanged: the same object
    assert delta.ignored_changed == (old.ignored != new.ignored)
    assert delta.policy_errors_changed == (old.policy_errors != new.policy_errors)


# --- deltas, kind by kind ----------------------------------------------------------------

KINDS = [("pods", pod, "default/{}"), ("services", svc, "default/{}"),
         ("namespaces", ns, "{}"), ("endpointslices", eps, "default/{}"),
         ("ippools", pool, "{}"), ("l2policies", l2, "{}"),
         ("policies", netpol, ("NetworkPolicy", "default", "{}"))]
CHANGED = {"pods": lambda n: pod(n, app="api"), "services": lambda n: svc(n, port=81),
           "namespaces": lambda n: ns(n, team="b"), "endpointslices": lambda n: eps(n, "10.1.0.2"),
           "ippools": lambda n: pool(n, "10.0.11.0/24"), "l2policies": lambda n: l2(n, "eth1"),
           "policies": lambda n: netpol(n, app="api")}


@pytest.mark.parametrize("attr,make,keyfmt", KINDS, ids=[k[0] for k in KINDS])
def test_add_change_remove_each_kind(tmp_path: Path, attr, make, keyfmt) -> None:
    def key(n):
        return tuple(x.format(n) for x in keyfmt) if isinstance(keyfmt, tuple) \
            else keyfmt.format(n)

    write(tmp_path, "a.yaml", pod("base"), make("one"), make("two"))
    store = ManifestStore(str(tmp_path))
    ms0 = store.load()
    base = ms0.pods["default/base"]
    assert key("one") in getattr(ms0, attr)

    f = write(tmp_path, "a.yaml", pod("base"), make("one"), CHANGED[attr]("two"), make("three"))
    ms1, d1 = store.update({f})
    assert getattr(d1, attr).added == {key("three")}
    assert getattr(d1, attr).changed == {key("two")}
    assert not getattr(d1, attr).removed
    assert set(getattr(d1, attr)) == {key("two"), key("three")}       # a frozenset of all
    assert getattr(ms1, attr)[key("one")] is getattr(ms0, attr)[key("one")]
    assert ms1.pods["default/base"] is base
    check_delta(ms0, ms1, d1)
    assert not d1.empty
    same_sets(ms1, fresh(tmp_path))

    f = write(tmp_path, "a.yaml", pod("base"), CHANGED[attr]("two"), make("three"))
    ms2, d2 = store.update({f})
    assert getattr(d2, attr).removed == {key("one")} and len(getattr(d2, attr)) == 1
    check_delta(ms1, ms2, d2)
    same_sets(ms2, fresh(tmp_path))
    for other in ("pods", "services", "namespaces"):          # untouched kinds: the same dict
        if other != attr:
            assert getattr(ms2, other) is getattr(ms1, other)


def test_files_created_and_deleted(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pod("p1"), svc("s1"))
    store = ManifestStore(str(tmp_path))
    ms0 = store.load()
    b = write(tmp_path, "b.yml", pod("p2"), deployment("d"))
    ms1, d = store.update({b, str(tmp_path / "notes.txt"), "/elsewhere/c.yaml"})
    assert d.pods.added == {"default/p2"} and d.ignored_changed
    assert ms1.ignored == [f"{b}: Deployment default/d"]
    check_delta(ms0, ms1, d)
    os.unlink(b)
    ms2, d = store.update({b})
    assert d.pods.removed == {"default/p2"} and ms2.ignored == []
    check_delta(ms1, ms2, d)
    same_sets(ms2, load_manifests(str(tmp_path)))
    assert store.update(set())[1] is EMPTY_DELTA
    assert store.update({str(tmp_path / "a.yaml")})[1].empty      # touched, same text


def test_directory_path_rescans_everything(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pod("p1"))
    store = ManifestStore(str(tmp_path) + "/")
    assert store.directory == str(tmp_path)
    store.load()
    write(tmp_path, "b.yaml", pod("p2"))
    write(tmp_path, "a.yaml", pod("p1", app="x"))
    ms, d = store.update({str(tmp_path)})
    assert d.pods.added == {"default/p2"} and d.pods.changed == {"default/p1"}
    # a ConfigMap volume swaps a '..data' link to a directory: everything is re-read
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..data").symlink_to("..v1")
    write(tmp_path, "b.yaml", pod("p2", app="y"))
    ms, d = store.update({str(tmp_path / "..data")})
    assert d.pods.changed == {"default/p2"}


def test_a_bad_file_keeps_the_last_good_state(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pod("p1"), pod("p2"))
    write(tmp_path, "b.yaml", svc("s1"))
    store = ManifestStore(str(tmp_path))
    good = store.load()
    f = write(tmp_path, "a.yaml", pod("p1", app="x"), pod("p3"), "kind: Pod\n")
    with pytest.raises(ManifestError) as ei:
        store.update({f})
    assert ei.value.file == f and ei.value.obj == "Pod (document 3)"
    assert store.manifests is good
    g = write(tmp_path, "b.yaml", svc("s1"), "a: [1,\n")     # YAML error, line numbers of the file
    with pytest.raises(ManifestError) as ei:
        store.update({g, f})
    assert ei.value.file == f                               # the first bad file in order
    write(tmp_path, "a.yaml", pod("p1", app="x"), pod("p3"))
    with pytest.raises(ManifestError) as ei:
        store.update({f})           # b.yaml failed before: it is read again, still bad
    # the line of the file, not of the document's piece
    assert ei.value.obj == "<yaml>" and ei.value.field.startswith("line 9,")
    assert store.manifests is good
    # fixed: the delta is relative to the last good set, and covers both files
    write(tmp_path, "a.yaml", pod("p1", app="x"), pod("p3"))
    write(tmp_path, "b.yaml", svc("s2"))
    ms, d = store.update({f, g})
    assert d.pods.added == {"default/p3"} and d.pods.removed == {"default/p2"}
    assert d.pods.changed == {"default/p1"}
    assert d.services.added == {"default/s2"} and d.services.removed == {"default/s1"}
    check_delta(good, ms, d)
    same_sets(ms, fresh(tmp_path))


def test_duplicates_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pod("p1"))
    write(tmp_path, "c.yaml", pod("p2"))
    store = ManifestStore(str(tmp_path))
    good = store.load()
    b = write(tmp_path, "b.yaml", pod("p1"))
    with pytest.raises(ManifestError) as ei:
        store.update({b})
    with pytest.raises(ManifestError) as full:
        load_manifests(str(tmp_path))
    assert str(ei.value) == str(full.value)
    assert "duplicate Pod: already defined in" in str(ei.value)
    # the file after it in order defines it too: the error is where a full load meets it
    b2 = write(tmp_path, "b.yaml", pod("p2"))
    with pytest.raises(ManifestError) as ei:
        store.update({b2})
    with pytest.raises(ManifestError) as full:
        load_manifests(str(tmp_path))
    assert str(ei.value) == str(full.value)
    assert store.manifests is good
    # moved from one file to another in one update: a change of source, not a duplicate
    os.unlink(tmp_path / "a.yaml")
    write(tmp_path, "b.yaml", pod("p1"))
    ms, d = store.update({b, str(tmp_path / "a.yaml")})
    assert d.pods.changed == {"default/p1"} and ms.pods["default/p1"].source == b
    check_delta(good, ms, d)
    # a duplicate within one file
    with pytest.raises(ManifestError):
        store.update({write(tmp_path, "b.yaml", pod("p1"), pod("p1"))})


def test_policy_duplicates_and_errors_follow_file_order(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", netpol("np", app="b"))
    store = ManifestStore(str(tmp_path))
    ms0 = store.load()
    bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\n"
    a = write(tmp_path, "a.yaml", netpol("np", app="a"), bad)
    ms1, d = store.update({a})
    assert d.policies.changed == {("NetworkPolicy", "default", "np")}
    assert ms1.policies[("NetworkPolicy", "default", "np")][0] == a    # the first file wins
    assert d.policy_errors_changed and len(ms1.policy_errors) == 2
    check_delta(ms0, ms1, d)
    same_sets(ms1, fresh(tmp_path))
    assert ms1.policy_errors == fresh(tmp_path).policy_errors
    # a document inserted before the bad policy: its error names the new document number
    assert "document 2" in ms1.policy_errors[0]
    a = write(tmp_path, "a.yaml", pod("p"), netpol("np", app="a"), bad)
    ms2, d = store.update({a})
    assert ms2.policy_errors == fresh(tmp_path).policy_errors
    assert "document 3" in ms2.policy_errors[0]


def test_unchanged_objects_keep_their_identity(tmp_path: Path) -> None:
    texts = [pod(f"p{i}") for i in range(50)]
    f = write(tmp_path, "a.yaml", *texts)
    store = ManifestStore(str(tmp_path))
    ms0 = store.load()
    texts[25] = pod("p25", app="api")
    ms1, d = store.update({write(tmp_path, "a.yaml", *texts)})
    assert d.pods == {"default/p25"}
    assert all(ms1.pods[k] is ms0.pods[k] for k in ms0.pods if k != "default/p25")
    # a comment-only edit re-parses that document: equal, so still the same object
    texts[10] = "# hello\n" + texts[10]
    ms2, d = store.update({write(tmp_path, "a.yaml", *texts)})
    assert d.empty and ms2.pods["default/p10"] is ms0.pods["default/p10"]
    assert ms2.pods is ms1.pods
    assert f == ms2.pods["default/p10"].source


def test_random_edits_match_a_full_load(tmp_path: Path) -> None:
    rng = random.Random(5)
    makers = [pod, svc, ns, eps, pool, l2, netpol, deployment]
    files: dict[str, list[str]] = {}
    store = ManifestStore(str(tmp_path))
    prev = store.load()
    for step in range(150):
        name = f"f{rng.randrange(4)}.yaml"
        cur = files.setdefault(name, [])
        op = rng.random()
        if op < 0.35 or not cur:
            cur.insert(rng.randrange(len(cur) + 1), rng.choice(makers)(f"o{rng.randrange(12)}"))
        elif op < 0.6:
            cur[rng.randrange(len(cur))] = rng.choice(makers)(f"o{rng.randrange(12)}")
        elif op < 0.8:
            del cur[rng.randrange(len(cur))]
        elif op < 0.85:
            cur.insert(rng.randrange(len(cur) + 1), "# only a comment\n")
        elif op < 0.9:
            cur.insert(rng.randrange(len(cur) + 1), "kind: Pod\nmetadata: {name: x}\n")  # bad
        else:
            files.pop(name)
        path = tmp_path / name
        if name in files:
            path.write_text(docs(*files[name]))
        elif path.exists():
            path.unlink()
        try:
            expected = fresh(tmp_path)
        except ManifestError as e:
            with pytest.raises(ManifestError):
                store.update({str(path)})
            assert store.manifests is prev, step
            bad = str(e)
            continue
        ms, d = store.update({str(path)})
        same_sets(ms, expected)
        assert ms.policy_errors == expected.policy_errors and ms.ignored == expected.ignored
        check_delta(prev, ms, d)
        prev = ms
    assert bad    # the walk met bad states too


# --- the examples and the e2e manifests: ManifestStore and load_manifests agree ---------

def l2_manifests() -> str:
    tree = ast.parse((ROOT / "tests/e2e/test_l2_announce.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "L2_MANIFESTS":
            return ast.literal_eval(node.value)
    raise AssertionError("L2_MANIFESTS not found")


def test_examples_and_e2e_manifests_load_the_same(tmp_path: Path) -> None:
    from tests.e2e import netpol as e2e_netpol
    lab = ROOT / "examples/lab"
    dirs = [lab]
    d = tmp_path / "e2e"
    d.mkdir()
    for f in lab.glob("*.yaml"):
        (d / f.name).write_text(f.read_text())
    (d / "l2.yaml").write_text(l2_manifests())
    e2e_netpol.write_model(d)
    (d / "policy.yaml").write_text(yaml.safe_dump_all([
        e2e_netpol.netpol("deny", "default"),
        e2e_netpol.cnp("allow", "default", {"endpointSelector": {}})]))
    dirs.append(d)
    for directory in dirs:
        full = load_manifests(str(directory))
        assert full.pods and (full.services or directory == d)
        store = ManifestStore(str(directory))
        same_sets(store.load(), full)
        assert store.manifests.policy_errors == full.policy_errors
        ms, delta = store.update({str(directory)})
        assert delta.empty and ms is store.manifests


# --- deltas merged -------------------------------------------------------------------------

def test_merged_deltas() -> None:
    a = ManifestDelta(pods=KindDelta(added={"x", "y"}, changed={"c"}, removed={"r", "s"}))
    b = ManifestDelta(pods=KindDelta(changed={"x"}, removed={"y", "c"}, added={"r"}))
    m = a.merged(b)
    assert m.pods.added == {"x"} and m.pods.changed == {"r"} and m.pods.removed == {"s", "c"}
    assert m.pods == {"x", "r", "s", "c"}
    assert a.merged(EMPTY_DELTA) is a and EMPTY_DELTA.merged(b) is b
    assert EMPTY_DELTA.empty and not a.empty
    assert not ManifestDelta(policy_errors_changed=True).empty


# --- YAML: the fast path reads what PyYAML reads -------------------------------------------

YAML_CASES = [
    "a: 1\nb: '1'\nc: 1.5\nd: true\ne: no\nf: ~\ng: ''\nh: 2024-01-02\ni: 0x1f\nj: 1_000\n",
    "a: [1, two, {x: y}]\nb: {}\nc: []\n? plain\n: value\n",
    "a: &x {k: v}\nb: *x\n",                 # alias: the reference loader
    "base: &b {k: v}\nm:\n  <<: *b\n  o: p\n",  # merge key
    "a: !!str 80\nb: !!int '7'\nc: !!float 1\nd: !foo bar\n",
    "a: |\n  line\n  two\nb: >-\n  folded\n  text\nc: |+\n  keep\n\n",
    "- a\n- b\n---\n- c\n---\n",
    "a: 'x\n---\n y'\n",                     # an error the whole text words
    "%YAML 1.1\n---\na: 1\n",
    "a: b\n...\n---\nc: d\n",
    "{a: 1, b: [2, 3]}\n",
    "a: .inf\nb: -.inf\nc: .nan\nd: +12\ne: 0o17\nf: 1:20\n",
    "=: x\n",
    "[1, 2]: x\n",
]


@pytest.mark.parametrize("text", YAML_CASES)
def test_fast_yaml_matches_pyyaml(text: str) -> None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        want = list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError:
        with pytest.raises(ManifestError):
            _parse("f.yaml", text)
        return
    got = _parse("f.yaml", text)
    assert repr(got) == repr(want)                   # repr: nan == nan, types of keys
    try:
        fast = _fast_load_all(text)
    except Exception:      # noqa: BLE001 -- left to the reference loader
        return
    assert repr(fast) == repr(want)
    assert "".join(_split(text)) == text


def test_split_keeps_every_character(tmp_path: Path) -> None:
    text = "a: 1\n---\nb: 2\n---x: 3\n--- \nd: 4\n---"
    pieces = _split(text)
    assert "".join(pieces) == text
    assert pieces == ["a: 1\n", "---\nb: 2\n---x: 3\n", "--- \nd: 4\n", "---"]
    assert [d for p in pieces for d in _parse("f", p)] == _parse("f", text)
    assert _split("%YAML 1.1\n---\na: 1\n---\nb: 2\n") == ["%YAML 1.1\n---\na: 1\n---\nb: 2\n"]


# ---- the cache across restarts (ManifestStore(directory, cache=...)) ----

def _no_parse(monkeypatch) -> None:
    """Any YAML parse from here on fails the test: the load must come from the cache."""
    def boom(*a, **k):
        raise AssertionError("parsed although the cache holds this text")
    monkeypatch.setattr("agent.manifests._parse", boom)


def _cached_dir(tmp_path: Path) -> tuple[Path, str]:
    d = tmp_path / "m"
    d.mkdir()
    write(d, "a.yaml", ns("team"), pod("p1"), pod("p2", app="db"), svc("web"))
    write(d, "b.yaml", eps("ext"), pool("pool"), l2("l2"), netpol("np"), deployment("dep"))
    cache = str(tmp_path / "state" / "manifests.cache")
    first = ManifestStore(str(d), cache=cache)
    first.load()
    assert not first.cache_used and os.path.isfile(cache)      # parsed, then written
    assert os.stat(cache).st_mode & 0o777 == 0o600
    return d, cache


def test_cache_hit_parses_nothing_and_gives_the_same_set(tmp_path: Path, monkeypatch) -> None:
    d, cache = _cached_dir(tmp_path)
    want = fresh(d)
    before = os.stat(cache).st_mtime_ns
    _no_parse(monkeypatch)
    store = ManifestStore(str(d), cache=cache)
    got = store.load()
    assert store.cache_used
    same_sets(got, want)
    assert got.policies == want.policies and got.ignored == want.ignored
    assert os.stat(cache).st_mtime_ns == before                 # nothing new: not rewritten
    # the restored store goes on incrementally like any other
    write(d, "a.yaml", ns("team"), pod("p1"), pod("p2", app="db"), svc("web", port=81))
    monkeypatch.undo()
    got2, delta = store.update([str(d / "a.yaml")])
    assert delta.services == KindDelta(changed=["default/web"]) and not delta.pods
    same_sets(got2, fresh(d))


def test_files_changed_while_down_win_over_the_cache(tmp_path: Path, monkeypatch) -> None:
    d, cache = _cached_dir(tmp_path)
    a = d / "a.yaml"
    st = os.stat(a)
    # the same size and mtime: only the text tells (the cache is checked by content)
    a.write_text(a.read_text().replace("app: db", "app: dc"))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(a).st_size == st.st_size
    (d / "b.yaml").unlink()                                     # deleted while down
    write(d, "c.yaml", pod("p3"))                               # created while down
    store = ManifestStore(str(d), cache=cache)
    got = store.load()
    assert store.cache_used
    same_sets(got, fresh(d))
    assert got.pods["default/p2"].labels == (("app", "dc"),) and "default/p3" in got.pods
    assert not got.endpointslices and not got.policies
    _no_parse(monkeypatch)                                      # rewritten with the new state
    again = ManifestStore(str(d), cache=cache)
    same_sets(again.load(), got)
    assert again.cache_used


def test_corrupt_truncated_or_foreign_caches_are_ignored(tmp_path: Path) -> None:
    d, cache = _cached_dir(tmp_path)
    want = fresh(d)
    good = Path(cache).read_bytes()
    bad = [good[:-40] + bytes(40),                               # payload bytes changed
           good[:len(good) // 2],                                # truncated
           b"garbage",
           b""]
    for blob in bad:
        Path(cache).write_bytes(blob)
        store = ManifestStore(str(d), cache=cache)
        same_sets(store.load(), want)
        assert not store.cache_used
        assert Path(cache).read_bytes() != blob                 # replaced by a good one
    other = tmp_path / "other"                                  # another directory's cache
    other.mkdir()
    write(other, "a.yaml", pod("x"))
    store = ManifestStore(str(other), cache=cache)
    assert set(store.load().pods) == {"default/x"} and not store.cache_used


def test_a_cache_from_other_code_is_ignored(tmp_path: Path, monkeypatch) -> None:
    d, cache = _cached_dir(tmp_path)
    monkeypatch.setattr("agent.manifests._code_hash", lambda: "another version")
    store = ManifestStore(str(d), cache=cache)
    same_sets(store.load(), fresh(d))
    assert not store.cache_used
    monkeypatch.setattr(ManifestStore, "_CACHE_FORMAT", 99)
    store = ManifestStore(str(d), cache=cache)
    store.load()
    assert not store.cache_used


def test_a_bad_file_while_down_is_rejected_and_the_cache_not_taken(tmp_path: Path) -> None:
    d, cache = _cached_dir(tmp_path)
    write(d, "a.yaml", pod("p1"), pod("p1"))                    # defined twice
    store = ManifestStore(str(d), cache=cache)
    with pytest.raises(ManifestError):
        store.load()
    assert store.manifests is None                              # no state but the files'
    write(d, "a.yaml", pod("p1"))
    same_sets(store.load(), fresh(d))


def test_save_cache_writes_what_changed_since(tmp_path: Path, monkeypatch) -> None:
    d, cache = _cached_dir(tmp_path)
    store = ManifestStore(str(d), cache=cache)
    store.load()
    assert store.save_cache() is False                          # nothing new
    write(d, "c.yaml", svc("new"))
    store.update([str(d / "c.yaml")])
    assert store.save_cache() is True and store.save_cache() is False
    _no_parse(monkeypatch)
    again = ManifestStore(str(d), cache=cache)
    assert "default/new" in again.load().services and again.cache_used
    assert ManifestStore(str(d)).save_cache() is False          # no cache file: nothing
