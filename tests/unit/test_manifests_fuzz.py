"""Hostile and broken input (issue #12): hypothesis corrupts a valid manifest of every kind the
agent reads (Pod, Namespace, Service, EndpointSlice, CiliumLoadBalancerIPPool,
CiliumL2AnnouncementPolicy, NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
an ignored kind, a List of them) and the agent's config and Helm values files: a wrong type at
any path, huge and negative numbers, unknown fields, invalid CIDRs and IPs, 64 KiB strings,
deep nesting, lists for maps, and text-level damage (non-UTF-8 bytes, cut-off text, alias bombs,
self-referencing anchors, integers past Python's 4300 digits, empty documents, duplicates).

Properties: reading either succeeds with valid objects (which the desired-state builder then
takes without crashing) or raises the project's error (ManifestError / ConfigError) naming the
file, the object and the field -- never another exception; and in the agent's reload (the real
Agent.reload on a stand-in agent, as tests/unit/test_desired.py does), a bad file added or
changed leaves the desired datapath (what would be written to the maps) equal to the last good
one, reports the error (`status` lastError, policy errors) and counts it in
cilium_errors_warnings_total. The crashes these found are kept as explicit examples.

Examples per test: the "ci" profile (the default; HYPOTHESIS_PROFILE=dev for more)."""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import threading
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from agent.config import MAX_YAML_DEPTH, load_config, parse_config
from agent.daemon import Agent
from agent.desired import DesiredBuilder, NodeFacts
from agent.identity import RESERVED
from agent.lab import values as helm_values
from agent.lb import services
from agent.manifests import ManifestSet, ManifestStore
from agent.metrics import AgentMetrics
from agent.policy.parse import parse_policy
from agent.policy.subsystem import PolicySubsystem
from agent.reconciler import Reconciler
from datapath.errors import ConfigError, DatapathError, ManifestError

# ci (the default): the same 60 examples a property every run, nothing written to .hypothesis/
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
# applied to each test here (not loaded globally: other modules keep hypothesis' defaults)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# ---- one valid object of every kind (a coherent set: the slice is the Service's, the pool
# serves the LoadBalancer Service) ---------------------------------------------------------

NS = {"apiVersion": "v1", "kind": "Namespace",
      "metadata": {"name": "team-a", "labels": {"team": "a"}}}
POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "web-1", "namespace": "team-a", "labels": {"app": "web"}},
       "spec": {"nodeName": "n1", "serviceAccountName": "web",
                "containers": [{"name": "web", "image": "nginx", "args": ["-g", "x"],
                                "ports": [{"name": "http", "containerPort": 8080}]}]},
       "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
SVC = {"apiVersion": "v1", "kind": "Service",
       "metadata": {"name": "web", "namespace": "team-a", "labels": {"app": "web"}},
       "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                          {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}}
LB = {"apiVersion": "v1", "kind": "Service",
      "metadata": {"name": "web-lb", "namespace": "team-a", "labels": {"expose": "yes"}},
      "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
               "externalTrafficPolicy": "Local", "externalIPs": ["198.51.100.7"],
               "ports": [{"port": 443, "targetPort": 8080, "nodePort": 30443}]}}
SLICE = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-abc", "namespace": "team-a",
                      "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "n2",
                        "conditions": {"ready": True, "serving": True, "terminating": False}}],
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
POOL = {"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumLoadBalancerIPPool",
        "metadata": {"name": "pool-a"},
        "spec": {"blocks": [{"cidr": "203.0.113.0/28"},
                            {"start": "203.0.113.100", "stop": "203.0.113.110"}],
                 "serviceSelector": {"matchLabels": {"expose": "yes"}}, "disabled": False}}
L2 = {"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumL2AnnouncementPolicy",
      "metadata": {"name": "l2-a"},
      "spec": {"interfaces": ["^eth[0-9]+"], "externalIPs": True, "loadBalancerIPs": True,
               "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "n1"}},
               "serviceSelector": {"matchLabels": {"expose": "yes"}}}}
NP = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
      "metadata": {"name": "allow-web", "namespace": "team-a"},
      "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}},
                                     {"namespaceSelector": {"matchExpressions": [
                                         {"key": "team", "operator": "In", "values": ["a"]}]}},
                                     {"ipBlock": {"cidr": "192.0.2.0/24",
                                                  "except": ["192.0.2.128/25"]}}],
                            "ports": [{"protocol": "TCP", "port": 8080, "endPort": 8090}]}]}}
CNP = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
       "metadata": {"name": "web-egress", "namespace": "team-a"},
       "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                "egress": [{"toCIDR": ["198.51.100.0/24"],
                            "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
                           {"toEndpoints": [{"matchLabels": {"app": "db"}}]}],
                "ingressDeny": [{"fromEntities": ["world"]}]}}
CCNP = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "to-dns"},
        "specs": [{"endpointSelector": {},
                   "egress": [{"toCIDRSet": [{"cidr": "203.0.113.0/24",
                                              "except": ["203.0.113.0/26"]}]}]}]}
CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "team-a"},
      "data": {"k": "v"}}
GOOD = [NS, POD, SVC, LB, SLICE, POOL, L2, NP, CNP, CCNP, CM]
POLICY_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")

# ---- what a corruption puts in --------------------------------------------------------------

BIG = "a" * 65536                               # a 64 KiB string (label value, name, ...)
# raw YAML text put where a value was (things a dumper cannot write)
RAW = ["0x" + "f" * 5000,                      # a 20000-bit integer (its decimal is 6000 digits)
       "9" * 5000,                             # past Python's 4300-digit int limit
       "-" + "9" * 4300,
       "&a [*a]",                              # an anchor that contains itself
       "*nowhere",                             # an undefined alias
       "[" * (MAX_YAML_DEPTH + 20) + "]" * (MAX_YAML_DEPTH + 20),
       "[" * 50000 + "]" * 50000,              # libyaml's C composer overflowed its stack here
       "2001-13-45",                           # not a date
       "!!binary zz",
       "!!python/object/apply:os.system [true]",
       "{a: 1, a: 2}",
       ".nan", "-.inf", "0o777777777777777777777777", "1_000_000", "~", "''", "!!str 80"]
BOMB = ("&a [x, x, x, x, x, x, x, x, x, x]", [f"*{c}" for c in "abcdefgh"])


def bomb() -> str:
    """A billion-laughs flow sequence: 9 levels of ten aliases of the one before."""
    levels = [BOMB[0]]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"&{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "[" + ", ".join(levels) + "]"


RAW.append(bomb())

hostile = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, -1, -80, 65535, 65536, 2**31, 2**63, 2**64, 10**4000, -10**4000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", " ", "TCP", "ICMP", "None", "LoadBalancer", "ExternalName", "IPv6",
                     "10.0.0.0/33", "300.1.1.1/24", "10.0.0.1/24", "::1/128", "10.0.0.0",
                     "0.0.0.0", "127.0.0.1", "256.0.0.1", "1.2.3", "fe80::1", "a/b/c", "..",
                     "In", "Exists", "all", "world", "*", "(", "Web", "-x", "a--b",
                     "k8s:app", "reserved:host", BIG, "x" * 64, "a." * 130, "\x00\x01",
                     "\u202e\u00e9\u4e2d", "0", "65536", "-1", "0x50"]),
    st.lists(st.integers(-3, 70000), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.just({BIG: "x"}), st.just({"a": BIG}), st.just([[[[[]]]]]),
    st.integers(1, 60).map(lambda n: [0] * n),
)


def paths(doc, here=()):
    """Every path into a document (the document itself first)."""
    yield here
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, here + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, here + (i,))


def at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def put(doc, path, value):
    if not path:
        return value
    at(doc, path[:-1])[path[-1]] = value
    return doc


PLACEHOLDER = "@@raw@@"


@st.composite
def corrupted(draw, docs=GOOD):
    """(file text or bytes, the object's name, where it was corrupted): a valid object with
    one change (or none: the unchanged object must stay good)."""
    doc = copy.deepcopy(draw(st.sampled_from(docs)))
    ps = list(paths(doc))
    path = draw(st.sampled_from(ps))
    how = draw(st.sampled_from(["value", "value", "value", "raw", "delete", "unknown", "wrap",
                                "dup", "none"]))
    target = at(doc, path)
    if how == "value":
        doc = put(doc, path, draw(hostile))
    elif how == "raw":
        doc = put(doc, path, PLACEHOLDER)
    elif how == "delete" and path:
        parent = at(doc, path[:-1])
        del parent[path[-1]]
    elif how == "unknown" and isinstance(target, dict):
        target[draw(st.sampled_from(["extra", "specs", "matchExpression", "nodeSelector",
                                     "toFQDNs", "rules", "icmps", "x" * 300]))] = \
            draw(st.sampled_from([1, "x", [], {}, None]))
    elif how == "wrap":
        doc = put(doc, path, [target])
    elif how == "dup" and isinstance(target, list) and target:
        target.append(copy.deepcopy(target[0]))
    fmt = draw(st.sampled_from(["yaml", "yaml", "json", "list"]))
    if fmt == "list":
        doc = {"apiVersion": "v1", "kind": "List", "items": [doc]}
    if fmt == "json" and how != "raw":
        text = json.dumps(doc, allow_nan=True, default=str)
    else:
        text = yaml.safe_dump(doc, sort_keys=False, width=1 << 20)
    if how == "raw":
        raw = draw(st.sampled_from(RAW))
        text = text.replace(PLACEHOLDER, raw.replace("\\", "\\\\"), 1)
    damage = draw(st.sampled_from([None] * 8 + ["cut", "bytes", "bom", "empty-docs", "twice"]))
    data: str | bytes = text
    if damage == "cut":
        data = text[:draw(st.integers(0, len(text)))]
    elif damage == "bytes":
        i = draw(st.integers(0, len(text)))
        data = text[:i].encode() + draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\x80\x80",
                                                         b"\x00"])) + text[i:].encode()
    elif damage == "bom":
        data = "\ufeff" + text
    elif damage == "empty-docs":
        data = "---\n---\n" + text + "\n---\n...\n"
    elif damage == "twice":                       # a duplicate object in one file
        data = text + "\n---\n" + text
    name = doc.get("metadata", {}).get("name") if isinstance(doc, dict) and \
        isinstance(doc.get("metadata"), dict) else None
    if fmt == "list":
        name = None
    return data, name, (how, path, damage)


def write(d: str, fname: str, data: str | bytes) -> str:
    p = os.path.join(d, fname)
    with open(p, "wb") as f:
        f.write(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return p


def check_error(e: DatapathError, path: str, name, where) -> None:
    """The error names the file, the object and the field; an object whose header survived
    is named by its name."""
    assert isinstance(e, ManifestError), repr(e)
    assert e.file == path, (e.file, path)
    assert e.obj and e.field and e.reason, str(e)
    how, p, damage = where
    header = p[:1] in ((), ("metadata",), ("kind",), ("apiVersion",)) or how == "raw"
    # (a .json text is read as YAML, which takes no implicit key over 1024 characters: a JSON
    # object with a 64 KiB key is a YAML syntax error, named by line and column)
    if isinstance(name, str) and name and damage is None and not header and e.obj != "<yaml>":
        assert name in e.obj, (name, str(e))


# ---- a stand-in agent whose desired datapath is built as the agent builds it ----------------

def stand_in(state_dir: str, manifests_dir: str | None = None) -> SimpleNamespace:
    cfg_path = os.path.join(state_dir, "config.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump({"nodeName": "n1", "ipam": {"podCIDR": "10.244.0.0/24"},
                        "routingMode": "native", "stateDir": state_dir,
                        "manifests": manifests_dir or ""}, f)
    cfg = load_config(cfg_path)
    state = {"identities": {}}
    a = SimpleNamespace(cfg=cfg, config_path=cfg.path, endpoints={}, remote_endpoints={},
                        remote_nodes={}, cluster_gen=0, manifests=ManifestSet(), l2=None,
                        l2_selection={}, lb_ids=services.IdTable({}), node_ip="192.168.10.100",
                        metrics=AgentMetrics(), lock=threading.RLock(), _retry_paths=set(),
                        _delta=None, last_error=None, last_reload=0.0, store=None,
                        monitor=SimpleNamespace(configure=lambda cfg: None),
                        sync_manifests=lambda delta: None, trigger=lambda why: None,
                        dp=SimpleNamespace(program=lambda name: (0, f"tag-{name}")))
    a.policy = PolicySubsystem(cfg, state, a.metrics)
    a.known_identities = lambda: {n: (f"reserved:{k}",) for k, n in RESERVED.items()}
    a.builder = DesiredBuilder(a)
    a.builder.facts = NodeFacts(host_addresses=["192.168.10.100"])
    a.rec = Reconciler()
    return a


def desired(a) -> dict:
    """Every map entry the agent would write now (a map with none left out)."""
    a.builder.build(a.rec, None)
    return {m: dict(v) for m, v in a.rec.desired.items() if v}


# ---- parsing: ManifestError or valid objects, never another exception -----------------------

@PROFILE
@given(corrupted())
@example(("kind: Pod\nmetadata: " + "[" * 50000 + "]" * 50000 + "\n", None,
          ("raw", (), None)))                       # was: a segfault in libyaml's composer
@example(("a: " + "9" * 5000 + "\n", None, ("raw", (), None)))          # was: ValueError
@example((yaml.safe_dump(POD).replace("web-1", "@@"), None, ("raw", (), None)))
def test_a_corrupted_manifest_is_read_or_rejected_by_name(case):
    data, name, where = case
    with tempfile.TemporaryDirectory(prefix="dp-fuzz-") as d:
        path = write(d, "m.yaml", data)
        store = ManifestStore(d)
        try:
            ms = store.load()
        except DatapathError as e:
            event("rejected")
            check_error(e, path, name, where)
            assert store.manifests is None
            return
        event("read")
        for msg in ms.policy_errors:                  # a policy left out names its file
            assert msg.startswith(f"{path}: "), msg
        for (kind, _ns, pname), (file, doc) in ms.policies.items():
            assert kind in POLICY_KINDS and file == path
            try:
                parse_policy(doc, file)
            except ManifestError as e:
                check_error(e, path, pname, where)
        # a valid set is taken by the desired-state builder without a crash
        a = stand_in(d)
        a.manifests = ms
        a.policy.load(ms)
        desired(a)


def test_the_yaml_bounds_name_line_and_reason(tmp_path):
    """Each bound, as the agent reports it (deep nesting, alias bombs and cycles, long ints;
    an invalid date has no line). Was: a cycle (`&a [*a]`) read into a policy made the policy
    engine's next comparison of versions recurse until RecursionError; 50,000 nested `[`
    segfaulted libyaml's composer; a 5,000-digit integer raised ValueError."""
    cases = {"deep": ("x: " + "[" * 101 + "]" * 101, "line 1, column 103",
                      "nested deeper than 100 levels"),
             "bomb": ("x: " + bomb(), "line 1, column",
                      "excessive aliasing"),
             "cycle": ("x: &a [*a]", "line 1, column 8", "anchor 'a' value contains itself"),
             "int": ("x: " + "1" * 4301, "line 1, column 4",
                     "an integer of 4301 digits is too long (at most 4300)"),
             "date": ("x: 2001-13-45", "<document>", "cannot read a value: month must be in")}
    for name, (text, field, reason) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "m.yaml").write_text(text)
        with pytest.raises(ManifestError) as ei:
            ManifestStore(str(d)).load()
        assert ei.value.obj == "<yaml>" and ei.value.field.startswith(field), str(ei.value)
        assert ei.value.reason.startswith(reason), str(ei.value)
    # 100 levels and a few aliases are fine
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "m.yaml").write_text(
        "kind: Thing\nx: " + "[" * 99 + "]" * 99 + "\ny: &l {a: b}\nz: *l\n")
    assert ManifestStore(str(tmp_path / "ok")).load().ignored


def test_error_lines_stay_short(tmp_path):
    """A 64 KiB label value is quoted cut short, and a 20000-bit port by its size (was: a
    ValueError from Python's int-to-str limit)."""
    doc = copy.deepcopy(POD)
    doc["metadata"]["labels"]["app"] = BIG
    write(str(tmp_path), "p.yaml", yaml.safe_dump(doc))
    with pytest.raises(ManifestError) as ei:
        ManifestStore(str(tmp_path)).load()
    assert ei.value.field == "metadata.labels[app]" and len(str(ei.value)) < 600
    assert f"({len(BIG)} characters)" in ei.value.reason
    write(str(tmp_path), "p.yaml", yaml.safe_dump(POD).replace(
        "containerPort: 8080", "containerPort: 0x" + "f" * 5000))
    with pytest.raises(ManifestError) as ei:
        ManifestStore(str(tmp_path)).load()
    assert ei.value.field == "spec.containers[0].ports[0].containerPort"
    assert ei.value.reason.endswith("got an integer of 20000 bits"), ei.value.reason


def test_a_policy_port_of_5000_digits_is_rejected_by_name():
    """Was: int() past Python's 4300-digit limit (ValueError) in parse_policy."""
    doc = copy.deepcopy(CNP)
    doc["spec"]["egress"][0]["toPorts"][0]["ports"][0]["port"] = "9" * 5000
    with pytest.raises(ManifestError) as ei:
        parse_policy(doc, "p.yaml")
    assert ei.value.field == "spec.egress[0].toPorts[0].ports[0].port"
    assert "CiliumNetworkPolicy team-a/web-egress" == ei.value.obj


def test_a_huge_integer_key_is_named_not_a_crash():
    """Was: formatting a 20000-bit key into a field path (ValueError) in labels, selectors,
    config keys and policy fields."""
    key = 16 ** 5000
    doc = copy.deepcopy(NP)
    doc["spec"]["podSelector"]["matchLabels"] = {key: "x"}
    with pytest.raises(ManifestError) as ei:
        parse_policy(doc, "p.yaml")
    assert "an integer of" in ei.value.field
    doc = copy.deepcopy(NP)
    doc["spec"][key] = 1
    with pytest.raises(ManifestError) as ei:
        parse_policy(doc, "p.yaml")
    assert "an integer of" in ei.value.field
    with pytest.raises(ConfigError) as ei:
        parse_config({"nodeName": "n1", "ipam": {"podCIDR": "10.244.0.0/24"}, key: 1}, "/c.yaml")
    assert "an integer of" in ei.value.key


# ---- the store and the agent's reload: the last good state stays in force ------------------

BAD_TEXTS = st.sampled_from(["", "---\n", "[]", "42", "- a\n", "kind: Pod\n", b"\xff\xfe\x00",
                             "kind: [\n", "x: " + bomb(), "&a [*a]"])


@contextlib.contextmanager
def good_agent():
    """A manifests directory with one file per object and an agent stand-in that loaded it
    (a new one for each example: the outcome never depends on the examples before)."""
    with tempfile.TemporaryDirectory(prefix="dp-fuzz-agent-") as d:
        mdir = os.path.join(d, "manifests")
        os.mkdir(mdir)
        files = {}
        for i, doc in enumerate(GOOD):
            files[write(mdir, f"{i:02d}-{doc['kind'].lower()}.yaml",
                        yaml.safe_dump(doc, sort_keys=False))] = None
        for p in files:
            with open(p, "rb") as f:
                files[p] = f.read()
        a = stand_in(d, mdir)
        a.store = ManifestStore(mdir)
        a.manifests = a.store.load()
        a.policy.load(a.manifests)
        assert not a.policy.errors
        a.files = files
        a.good = desired(a)
        assert a.good["cilium_lb4_services_v2"] and a.good["cilium_ipcache"]
        handler = a.metrics.log_handler()
        logging.getLogger("datapath").addHandler(handler)
        try:
            yield a
        finally:
            logging.getLogger("datapath").removeHandler(handler)


def errors_counted(a) -> float:
    return sum(s.value for m in a.metrics.errors_warnings.collect() for s in m.samples
               if s.name.endswith("_total"))


@PROFILE
@given(st.data())
def test_a_bad_file_leaves_the_last_good_desired_state(data):
    """Change one file (or add one) to something hostile: the reload is rejected (or leaves the
    bad policy out), the desired datapath stays the last good one, the error is reported and
    counted; putting the file back restores the good state."""
    with good_agent() as a:
        i = data.draw(st.integers(0, len(GOOD)), label="file")    # len(GOOD): a new file
        target = sorted(a.files)[i] if i < len(GOOD) else "new"
        bad = data.draw(st.one_of(corrupted(docs=GOOD[i:i + 1] or GOOD).map(lambda c: c[0]),
                                  BAD_TEXTS), label="text")
        path = target if target != "new" else os.path.join(a.cfg.manifests, "zz-new.yaml")
        before, counted = a.manifests, errors_counted(a)
        write(a.cfg.manifests, os.path.basename(path), bad)
        ok = Agent.reload(a, {path})
        if not ok:                                   # rejected whole: nothing taken
            event("rejected whole")
            assert a.manifests is before
            # (a duplicate is reported at its second definition: that file, naming the first)
            assert a.last_error and path in a.last_error, a.last_error
            assert errors_counted(a) > counted
            assert desired(a) == a.good
        else:                                        # taken: a changed policy may be left out
            changed = {k for k in a.manifests.policies
                       if a.manifests.policies[k] != before.policies.get(k)}
            # (rejected by the policy parser: its last good rules stay; a duplicate in one file
            # is another matter: the first definition is taken, the second reported)
            rejected = changed and all(k in a.policy.engine.errors for k in changed)
            others_same = all(getattr(a.manifests, attr) == getattr(before, attr)
                              for attr in ("pods", "namespaces", "services", "endpointslices",
                                           "ippools", "l2policies"))
            if rejected and others_same and not (set(before.policies) - set(a.manifests.policies)):
                event("a bad policy left out")
                assert desired(a) == a.good        # the bad policy's last good rules stay
                assert errors_counted(a) > counted
            else:
                event("taken")
                desired(a)                          # whatever it is, it builds
        if target == "new":
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(a.files[path])
        assert Agent.reload(a, {path}), a.last_error
        assert not a.policy.errors, a.policy.errors
        assert desired(a) == a.good


# ---- config and Helm values files -----------------------------------------------------------

GOOD_CONFIG = {"nodeName": "n1", "devices": ["eth1"], "ipam": {"podCIDR": "10.244.0.0/24"},
               "routingMode": "native", "ipv4NativeRoutingCIDR": "10.244.0.0/16",
               "bpf": {"masquerade": True, "natPortRange": "32768-65535",
                       "monitorAggregation": "medium", "monitorInterval": "5s"},
               "kvstore": "etcd", "kvstoreOpt": {"etcd.endpoints": "http://192.0.2.1:2379"},
               "ipMasqAgent": {"enabled": True,
                               "config": {"nonMasqueradeCIDRs": ["10.0.0.0/8"]}},
               "nodePort": {"range": "30000-32767"}, "MTU": 1450,
               "l2announcements": {"enabled": True, "leaseDuration": "15s"},
               "reconciler": {"minInterval": "100ms"}, "hubble": {"eventBufferCapacity": 4095},
               "egressMasqueradeInterfaces": "eth1 eth2", "maglev": {"tableSize": 16381},
               "loadBalancer": {"algorithm": "maglev"}, "serviceCIDR": "10.96.0.0/16"}


@PROFILE
@given(corrupted(docs=[GOOD_CONFIG]))
@example(("bpf:\n  natPortRange: '" + "9" * 5000 + "-1'\n", None, ("raw", (), None)))
@example(("nodeName: n1\nipam: {podCIDR: 10.244.0.0/24}\nconntrackGCInterval: '"
          + "9" * 5000 + "s'\n", None, ("raw", (), None)))
@example(("nodeName: " + "[" * 50000 + "]" * 50000 + "\n", None, ("raw", (), None)))
@example(("nodeName: n1\n0x" + "f" * 5000 + ": 1\n", None, ("raw", (), None)))
def test_a_corrupted_config_is_read_or_rejected_by_key(case):
    data, _, _ = case
    with tempfile.TemporaryDirectory(prefix="dp-fuzz-cfg-") as d:
        path = write(d, "config.yaml", data)
        try:
            load_config(path)
        except ConfigError as e:
            assert e.file == path and e.key and e.reason, str(e)[:300]


@PROFILE
@given(corrupted(docs=[GOOD_CONFIG]))
@example(("a: " + "9" * 5000 + "\n", None, ("raw", (), None)))
@example((b"nodeName: \xff\n", None, ("raw", (), "bytes")))
@example(("0x" + "f" * 5000 + ": {a: 1}\n", None, ("raw", (), None)))
def test_a_corrupted_values_file_is_read_or_rejected(case):
    data, _, _ = case
    with tempfile.TemporaryDirectory(prefix="dp-fuzz-values-") as d:
        path = write(d, "values.yaml", data)
        try:
            v = helm_values.load_values(path)
        except ConfigError as e:
            assert e.file == path and e.key and e.reason, str(e)[:300]
            return
        try:                     # what the lab does with it: merge, list, check, validate
            merged = helm_values.merge(GOOD_CONFIG, v)
            helm_values.flatten(merged)
            helm_values.check_lab_owned(v, path)
            parse_config(merged, path)
        except ConfigError as e:
            assert e.key and e.reason


@PROFILE
@given(st.text(max_size=60) | st.sampled_from(["a=" + "9" * 5000, "a." * 2000 + "b=1",
                                                "a={" + "9" * 5000 + "}", "=", "a.=1"]))
@example("a=" + "9" * 5000)                          # was: int() past the 4300-digit limit
@example("a." * 2000 + "b=1")                        # was: RecursionError in merge
def test_a_set_argument_is_read_or_rejected(text):
    try:
        v = helm_values.parse_set(text)
    except ConfigError as e:
        assert e.file == "--set" and e.key
        return
    helm_values.flatten(helm_values.merge({}, v))
