"""agent/lb/admission.py: services are programmed whole or not at all within the service maps'
capacity (issue #12). Pure: real planner builds from manifests in, admitted / refused out."""
from __future__ import annotations

import random

from agent.lb import services
from agent.lb.admission import Admission
from agent.manifests import ManifestStore

SVC_MAP, BE_MAP, RN_MAP = ("cilium_lb4_services_v2", "cilium_lb4_backends_v3",
                           "cilium_lb4_reverse_nat")
BIG = 1 << 20
POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}
spec:
  nodeName: n2
  containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]
"""
SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


class World:
    """Services over pods in a manifests directory; `plan` runs the planner, then admission."""

    def __init__(self, tmp_path, pods: dict[str, str], svcs: dict[str, str], capacity: dict):
        self.dir = tmp_path
        self.ips = {}
        for i, (name, app) in enumerate(sorted(pods.items())):
            self.pod(name, app)
            self.ips[f"default/{name}"] = f"10.244.2.{10 + i}"
        for name, app in svcs.items():
            self.svc(name, app)
        self.store = ManifestStore(str(tmp_path))
        self.ms = self.store.load()
        self.planner = services.ServicePlanner(services.IdTable({}), "10.96.0.0/16")
        self.adm = Admission(capacity)
        self.sections: dict[str, object] = {}        # what the reconciler would hold
        self._apply(self.planner.update(self.ms, self.ips, services.NodeView()))

    def pod(self, name, app):
        (self.dir / f"pod-{name}.yaml").write_text(POD.format(name=name, app=app))

    def svc(self, name, app):
        (self.dir / f"svc-{name}.yaml").write_text(SVC.format(name=name, app=app))

    def _apply(self, planned):
        for key, (before, after) in self.adm.update(planned).items():
            assert self.sections.get(key) is before
            if after is None:
                self.sections.pop(key, None)
            else:
                self.sections[key] = after

    def change(self, *paths):
        self.ms, delta = self.store.update({str(self.dir / p) for p in paths})
        self._apply(self.planner.update(self.ms, self.ips, services.NodeView(), delta))

    def retry(self):
        """The flush ran (the deletes landed): what the agent does next."""
        self.adm.settled()
        self._apply(self.planner.update(self.ms, self.ips, services.NodeView(),
                                        self.store.update(set())[1]))

    def maps(self) -> dict[str, dict[bytes, bytes]]:
        out: dict = {}
        for b in self.sections.values():
            for m, entries in b.maps.items():
                out.setdefault(m, {}).update(entries)
        return out


def check_whole(w: World, capacity: dict) -> None:
    """Every built service is programmed whole or refused with nothing of its own written; no
    map holds more than its capacity."""
    maps = w.maps()
    for m, n in capacity.items():
        assert len(maps.get(m, {})) <= n
    assert set(w.sections) == set(w.adm.admitted)
    assert not set(w.adm.admitted) & set(w.adm.refused)
    for key, b in w.planner.built.items():
        if key in w.adm.admitted:
            assert w.sections[key] is b             # the planner's latest build, whole
        else:
            assert key in w.adm.refused
            # its own entries (frontends, slots, reverse NAT) are nowhere
            assert not b.maps[SVC_MAP].keys() & maps.get(SVC_MAP, {}).keys()
            assert not b.maps[RN_MAP].keys() & maps.get(RN_MAP, {}).keys()


def test_refused_whole_shared_backends_count_once(tmp_path):
    # a: 2 backends, b: 2, c: 3 (its own), d: a's 2 again; backends map of 5
    pods = {"a1": "a", "a2": "a", "b1": "b", "b2": "b", "c1": "c", "c2": "c", "c3": "c"}
    cap = {SVC_MAP: BIG, BE_MAP: 5, RN_MAP: BIG}
    w = World(tmp_path, pods, {"a": "a", "b": "b", "c": "c", "d": "a"}, cap)
    assert set(w.adm.admitted) == {"default/a", "default/b", "default/d"}
    assert w.adm.refused == {"default/c": BE_MAP}
    assert len(w.maps()[BE_MAP]) == 4 == w.adm.used(BE_MAP)
    check_whole(w, cap)


def test_service_slots_full_and_existing_keep_their_room(tmp_path):
    # a ClusterIP service with k backends takes 1 + k entries of the services map
    pods = {"a1": "a", "b1": "b", "b2": "b"}
    cap = {SVC_MAP: 5, BE_MAP: BIG, RN_MAP: BIG}
    w = World(tmp_path, pods, {"m": "a", "n": "b"}, cap)
    assert set(w.adm.admitted) == {"default/m", "default/n"} and not w.adm.refused
    # a newcomer named before both does not push an existing service out
    w.svc("a", "a")
    w.change("svc-a.yaml")
    assert set(w.adm.admitted) == {"default/m", "default/n"}
    assert w.adm.refused == {"default/a": SVC_MAP}
    check_whole(w, cap)


def test_room_after_delete_is_used_once_the_deletes_landed(tmp_path):
    pods = {"a1": "a", "b1": "b", "c1": "c"}
    cap = {SVC_MAP: BIG, BE_MAP: 2, RN_MAP: BIG}
    w = World(tmp_path, pods, {"a": "a", "b": "b", "c": "c"}, cap)
    assert w.adm.refused == {"default/c": BE_MAP}
    (tmp_path / "svc-b.yaml").unlink()
    w.change("svc-b.yaml")
    # b's backend is still in the map until the flush deletes it: c waits
    assert set(w.adm.admitted) == {"default/a"} and w.adm.refused == {"default/c": BE_MAP}
    check_whole(w, cap)
    assert w.adm.settled() is True                  # room for a refused service: sync again
    w._apply(w.planner.update(w.ms, w.ips, services.NodeView(), w.store.update(set())[1]))
    assert set(w.adm.admitted) == {"default/a", "default/c"} and not w.adm.refused
    check_whole(w, cap)
    assert w.adm.settled() is False                 # nobody waits


def test_bigger_maps_admit_the_refused(tmp_path):
    pods = {"a1": "a", "b1": "b"}
    w = World(tmp_path, pods, {"a": "a", "b": "b"}, {SVC_MAP: 3, BE_MAP: BIG, RN_MAP: BIG})
    assert w.adm.refused == {"default/b": SVC_MAP}
    w.adm.grow({SVC_MAP: 4, BE_MAP: BIG, RN_MAP: BIG})
    w.retry()
    assert set(w.adm.admitted) == {"default/a", "default/b"}


def test_a_programmed_service_that_outgrows_the_maps_leaves_whole(tmp_path):
    pods = {"a1": "a", "b1": "b"}
    cap = {SVC_MAP: BIG, BE_MAP: 2, RN_MAP: BIG}
    w = World(tmp_path, pods, {"a": "a", "b": "b"}, cap)
    assert set(w.adm.admitted) == {"default/a", "default/b"}
    w.pod("b2", "b")
    w.ips["default/b2"] = "10.244.2.99"
    w.change("pod-b2.yaml")
    assert w.adm.refused == {"default/b": BE_MAP} and set(w.adm.admitted) == {"default/a"}
    check_whole(w, cap)
    # its backend leaves again: b fits once its old entries are gone from the maps
    (tmp_path / "pod-b2.yaml").unlink()
    w.change("pod-b2.yaml")
    w.retry()
    assert set(w.adm.admitted) == {"default/a", "default/b"} and not w.adm.refused
    check_whole(w, cap)


def test_random_changes_never_half_program_or_overfill(tmp_path):
    rng = random.Random(12)
    pods = {f"p{i}": f"a{i % 5}" for i in range(15)}
    svcs = {f"s{i}": f"a{i % 5}" for i in range(8)}
    cap = {SVC_MAP: 20, BE_MAP: 10, RN_MAP: 6}
    w = World(tmp_path, pods, svcs, cap)
    check_whole(w, cap)
    for step in range(60):
        what = rng.random()
        if what < 0.4:
            name = f"s{rng.randrange(12)}"
            path = tmp_path / f"svc-{name}.yaml"
            if path.exists() and rng.random() < 0.5:
                path.unlink()
            else:
                w.svc(name, f"a{rng.randrange(6)}")
            w.change(path.name)
        elif what < 0.8:
            name = f"p{rng.randrange(15)}"
            w.pod(name, f"a{rng.randrange(6)}")
            w.change(f"pod-{name}.yaml")
        else:
            w.retry()
        check_whole(w, cap)
    # at rest (the deletes landed), whatever is refused really does not fit
    w.retry()
    w.retry()
    check_whole(w, cap)
    for key in w.adm.refused:
        b = w.planner.built[key]
        m = w.adm.refused[key]
        have = w.maps().get(m, {})
        assert len(have) + len(b.maps[m].keys() - have.keys()) > cap[m]


def test_all_at_once_counts_as_one_by_one(tmp_path):
    # a cold start admits everything in one step when all fits; the room it counts (shared
    # backends once) is what admitting the services one at a time counts
    pods = {f"p{i}": f"a{i % 4}" for i in range(12)}
    svcs = {f"s{i}": f"a{i % 4}" for i in range(8)}
    cap = {SVC_MAP: BIG, BE_MAP: BIG, RN_MAP: BIG}
    w = World(tmp_path, pods, svcs, cap)
    assert len(w.adm.admitted) == 8
    one = Admission(cap)
    for key, b in sorted(w.planner.built.items()):
        one.update({key: (None, b)})
    assert one._refs == w.adm._refs
    assert {m: w.adm.used(m) for m in cap} == {m: len(e) for m, e in w.maps().items()}
