"""agent/lb/services.py ServicePlanner: after any sequence of changes, the incremental planner holds
exactly what a full build gives (same ids, byte for byte), and it rebuilds only the services a
change touches."""
from __future__ import annotations

import copy
import random

import pytest

from agent.lb import services
from agent.manifests import ManifestStore

CIDR = "10.96.0.0/16"
POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}, tier: {tier}}}}}
spec:
  nodeName: {node}
  containers: [{{name: c, ports: [{{name: http, containerPort: {port}}}]}}]
{status}"""
SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  type: {type}
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""
SLICE_SVC = """apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  ports: [{name: http, port: 80}]
"""
SLICE = """apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ext-1, namespace: default, labels: {{kubernetes.io/service-name: ext}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{endpoints}]
"""
NOT_READY = "status: {conditions: [{type: Ready, status: 'False'}]}\n"


def merged(built: dict) -> dict:
    out: dict = {}
    for key in sorted(built):
        for m, entries in built[key].maps.items():
            out.setdefault(m, {}).update(entries)
    return out


class World:
    """A manifests directory, one file an object, that the test mutates."""

    def __init__(self, tmp_path, seed):
        self.dir, self.rng = tmp_path, random.Random(seed)
        self.pods: dict[str, dict] = {}
        self.svcs: dict[str, dict] = {}
        for i in range(6):
            self.svcs[f"s{i}"] = {"ns": "default", "app": f"a{i % 4}", "type": "ClusterIP"}
        for i in range(20):
            self.pods[f"p{i}"] = {"ns": "default", "app": f"a{i % 5}", "tier": "t",
                                  "node": "n1" if i % 2 else "n2", "port": 8000 + i % 3,
                                  "status": ""}
        self.slice_eps = ["10.1.0.1", "10.1.0.2"]
        for k in self.pods:
            self.write_pod(k)
        for k in self.svcs:
            self.write_svc(k)
        (self.dir / "ext.yaml").write_text(SLICE_SVC)
        self.write_slice()

    def write_pod(self, k):
        (self.dir / f"pod-{k}.yaml").write_text(POD.format(name=k, **self.pods[k]))

    def write_svc(self, k):
        (self.dir / f"svc-{k}.yaml").write_text(SVC.format(name=k, **self.svcs[k]))

    def write_slice(self):
        eps = ", ".join(f"{{addresses: [{a}], conditions: {{ready: true}}}}"
                        for a in self.slice_eps)
        (self.dir / "slice.yaml").write_text(SLICE.format(endpoints=eps))

    def mutate(self) -> set[str]:
        """One random change; returns the paths written or removed."""
        r = self.rng
        kind = r.choice(["relabel", "ready", "delete_pod", "add_pod", "svc_type", "add_svc",
                         "delete_svc", "slice", "port"])
        if kind in ("relabel", "ready", "delete_pod", "port") and self.pods:
            k = r.choice(sorted(self.pods))
            if kind == "delete_pod":
                del self.pods[k]
                (self.dir / f"pod-{k}.yaml").unlink()
            else:
                p = self.pods[k]
                if kind == "relabel":
                    p["app"] = f"a{r.randrange(5)}"
                elif kind == "ready":
                    p["status"] = "" if p["status"] else NOT_READY
                else:
                    p["port"] = 8000 + r.randrange(4)
                self.write_pod(k)
            return {str(self.dir / f"pod-{k}.yaml")}
        if kind == "add_pod":
            k = f"p{r.randrange(100, 10_000)}"
            self.pods[k] = {"ns": "default", "app": f"a{r.randrange(5)}", "tier": "t",
                            "node": "n1", "port": 8001, "status": ""}
            self.write_pod(k)
            return {str(self.dir / f"pod-{k}.yaml")}
        if kind in ("svc_type", "delete_svc") and self.svcs:
            k = r.choice(sorted(self.svcs))
            if kind == "delete_svc":
                del self.svcs[k]
                (self.dir / f"svc-{k}.yaml").unlink()
            else:
                s = self.svcs[k]
                s["type"] = "NodePort" if s["type"] == "ClusterIP" else "ClusterIP"
                self.write_svc(k)
            return {str(self.dir / f"svc-{k}.yaml")}
        if kind == "add_svc":
            k = f"s{r.randrange(100, 10_000)}"
            self.svcs[k] = {"ns": "default", "app": f"a{r.randrange(5)}", "type": "ClusterIP"}
            self.write_svc(k)
            return {str(self.dir / f"svc-{k}.yaml")}
        self.slice_eps = sorted(r.sample([f"10.1.0.{i}" for i in range(1, 6)], r.randrange(4)))
        self.write_slice()
        return {str(self.dir / "slice.yaml")}


def pod_ips(world: World, rng) -> dict[str, str]:
    return {f"default/{k}": f"172.20.{i // 250}.{i % 250 + 1}"
            for i, k in enumerate(sorted(world.pods)) if rng.random() < 0.95}


def test_incremental_planner_matches_a_full_build_after_random_changes(tmp_path):
    for seed in range(3):
        d = tmp_path / f"w{seed}"
        d.mkdir()
        world, rng = World(d, seed), random.Random(seed + 100)
        store = ManifestStore(str(d))
        ms = store.load()
        ips = pod_ips(world, rng)
        view = services.NodeView(node_ip="192.168.10.100", local_ips=frozenset(), node_name="n1")
        planner = services.ServicePlanner(services.IdTable({}), CIDR)
        planner.update(ms, ips, view)
        for step in range(40):
            ms, delta = store.update(world.mutate())
            if step % 7 == 0:
                ips = pod_ips(world, rng)
            if step % 11 == 0:
                view = services.NodeView(node_ip="192.168.10.100", node_name="n1",
                                         local_ips=frozenset(list(ips.values())[:step % 5]))
            planner.update(ms, ips, view, delta)
            fresh = services.ServicePlanner(services.IdTable(copy.deepcopy(planner.ids.table)),
                                            CIDR)
            fresh.update(ms, ips, view)
            assert merged(planner.built) == merged(fresh.built), (seed, step)
            assert planner.listing() == fresh.listing(), (seed, step)


def test_a_pod_change_rebuilds_only_the_services_that_select_it(tmp_path):
    world = World(tmp_path, 7)
    store = ManifestStore(str(tmp_path))
    ms = store.load()
    ips = {f"default/{k}": f"172.20.0.{i + 1}" for i, k in enumerate(sorted(world.pods))}
    planner = services.ServicePlanner(services.IdTable({}), CIDR)
    view = services.NodeView(node_ip="192.168.10.100")
    assert len(planner.update(ms, ips, view)) == len(ms.services)
    world.pods["p1"]["status"] = NOT_READY            # app a1: selected by s1 and s5
    world.write_pod("p1")
    ms, delta = store.update({str(tmp_path / "pod-p1.yaml")})
    assert set(planner.update(ms, ips, view, delta)) == {"default/s1", "default/s5"}
    ms, delta = store.update(set())
    assert planner.update(ms, ips, view, delta) == {}


def test_cluster_ips_kept_incrementally_equal_the_full_allocation():
    """Many services in a small CIDR, so searches collide: after each random add or remove
    the incremental allocation is what a full pass gives."""
    from agent.manifests import Service
    rng = random.Random(5)

    def svc(name, ip=None):
        return Service(namespace="default", name=name, type="ClusterIP", clusterIP=ip,
                       selector=None, ports=(), externalIPs=(), loadBalancerIP=None,
                       sessionAffinity="None", affinityTimeout=0,
                       externalTrafficPolicy="Cluster", internalTrafficPolicy="Cluster",
                       labels=(), source="x")
    cidr = "10.96.0.0/26"                      # 62 addresses
    svcs = {f"default/s{i}": svc(f"s{i}") for i in range(30)}
    svcs["default/fixed"] = svc("fixed", "10.96.0.7")
    alloc = services.ClusterIPs(cidr)
    alloc.full(svcs.values())
    fast = 0
    for step in range(300):
        key = f"default/s{rng.randrange(60)}"
        if key in svcs:
            del svcs[key]
        else:
            svcs[key] = svc(key.split("/")[1])
        before = dict(alloc.ips)
        moved = alloc.update(svcs, {key})
        want = services.ClusterIPs(cidr).full(svcs.values())
        assert alloc.ips == want, step
        assert moved == {k for k in before.keys() | want.keys() if before.get(k) != want.get(k)}
        fast += moved == {key}
    assert fast > 100                          # most changes move only themselves


def test_the_address_index_matches_a_dict_of_sets():
    from collections import defaultdict
    rng = random.Random(5)
    for _ in range(50):
        got, want = services._Addresses(), defaultdict(set)
        for _ in range(200):
            ip, key = f"10.0.0.{rng.randrange(4)}", f"s{rng.randrange(5)}"
            if rng.random() < 0.55:
                got.add(ip, key)
                want[ip].add(key)
            else:
                got.discard(ip, key)
                want[ip].discard(key)
            assert all(got.get(f"10.0.0.{i}") == want[f"10.0.0.{i}"] for i in range(4))


def test_a_build_that_runs_out_of_ids_leaves_the_counts_as_they_were(tmp_path):
    """A service that cannot get a new id keeps its old entries, and the ids and addresses
    the unfinished build counted are not left counted (they would never be freed)."""
    from collections import Counter

    def recount(p):
        u = {"services": Counter(), "backends": Counter()}
        for b in p.built.values():
            u["services"].update(b.frontends)
            u["backends"].update(b.backends)
        return {k: dict(v) for k, v in u.items()}

    world = World(tmp_path, 1)
    store = ManifestStore(str(tmp_path))
    ms = store.load()
    ips = {f"default/{k}": f"172.20.0.{i + 1}" for i, k in enumerate(sorted(world.pods))}
    view = services.NodeView(node_ip="192.168.10.100", node_name="n1")
    p = services.ServicePlanner(services.IdTable({}), CIDR)
    p.update(ms, ips, view)
    before = (recount(p), {k: dict(v) for k, v in p._users.items()})
    sv = p.ids._kinds["services"]
    sv.limit = max(sv.used) + 1                 # the service id space is full
    world.svcs["s1"]["type"] = "NodePort"       # s1 needs a new id for its NodePort
    world.write_svc("s1")
    ms, delta = store.update({str(tmp_path / "svc-s1.yaml")})
    with pytest.raises(ValueError):
        p.update(ms, ips, view, delta)
    assert recount(p) == before[0]
    assert {k: dict(v) for k, v in p._users.items()} == before[1]
    # deleting s1 then frees its ids
    world.svcs.pop("s1")
    (tmp_path / "svc-s1.yaml").unlink()
    ms, delta = store.update({str(tmp_path / "svc-s1.yaml")})
    p.update(ms, ips, view, delta)
    ms, delta = store.update(set())             # ids unused since are released here
    p.update(ms, ips, view, delta)
    assert not [k for k in p._users["services"] if "s1:" in k]
    assert not [k for k in p.ids.table["services"] if "s1:" in k]
