"""The e2e labs' plumbing: `built_lab` (uniquely named, torn down even when tests fail) and the
labs shared by every module that asks for them, one per session (building one costs ~40 s on one
node, ~100 s on three): the single-node `lab` (its users run together, its tear-down test last)
and the three-node `native` lab (down after the last module that uses it)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.api import Client
from agent.lab.lab import EXAMPLES, Lab
from agent.lab.topology import TOPOLOGIES
from datapath import netns


NATIVE_LB = {"algorithm": "maglev", "acceleration": "native"}     # the `native` lab's


class LabHandle:
    def __init__(self, lab: Lab, manifests: Path):
        self.lab, self.manifests = lab, manifests

    def ns(self, target: str) -> str:
        return self.lab.resolve(target)[0]

    def run(self, target: str, *argv: str, check: bool = True, timeout: float = 30):
        return netns.run(self.ns(target), *argv, check=check, timeout=timeout)

    def py(self, target: str, code: str, *args: str, check: bool = True, timeout: float = 30):
        return self.run(target, sys.executable, "-c", code, *args, check=check, timeout=timeout)

    def client(self, node: str = "k8s-ctr") -> Client:
        return Client(self.lab.resolve(node)[1], timeout=10)

    def pod_ip(self, pod: str) -> str:
        return self.lab.load()["pods"][f"default/{pod}"]["ip"]

    def node(self, node: str = "k8s-ctr") -> dict:
        return self.lab.load()["nodes"][node]

    def pinned_map(self, name: str, node: str = "k8s-ctr") -> dict[bytes, bytes]:
        """A map's contents read from its bpffs pin (not through the agent)."""
        from datapath.maps import open_pinned
        return open_pinned(f"{self.lab.bpffs}/datapath/{node}")[name].read_raw()

    def metric(self, name: str, node: str = "k8s-ctr", **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics(node).splitlines():
            if line.split("{")[0].split(" ")[0] == name and \
                    all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def metrics(self, node: str = "k8s-ctr") -> str:
        ip = self.node(node)["ip"]
        return self.run(node, "curl", "-s", "-m", "5", f"http://{ip}:9962/metrics").stdout


def external_service(name: str, cluster_ip: str, port: int, target: int, address: str,
                     proto: str = "TCP") -> str:
    """A selector-less Service and the EndpointSlice that gives it one backend."""
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {cluster_ip}
  ports: [{{name: p, port: {port}, targetPort: {target}, protocol: {proto}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: p, port: {target}, protocol: {proto}}}]
endpoints:
  - addresses: [{address}]
"""


def promtool_clean(text: str, tmp_path) -> None:
    """`promtool check metrics` has nothing to say about a metrics page."""
    f = tmp_path / "metrics.txt"
    f.write_text(text)
    p = subprocess.run(f"promtool check metrics < {f}", shell=True, capture_output=True,
                       text=True)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


def wait_for(fn, timeout: float = 15, interval: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def copy_manifests(dst: Path, node: str | None = None) -> Path:
    """The example manifests, every Pod moved to `node` when given."""
    for f in EXAMPLES.glob("*.yaml"):
        text = f.read_text()
        if node:
            text = "\n".join(f"  nodeName: {node}" if line.startswith("  nodeName:") else line
                             for line in text.splitlines()) + "\n"
        (dst / f.name).write_text(text)
    return dst


@contextlib.contextmanager
def built_lab(name: str, manifests: Path, topology: str, routing_mode: str | None = None,
              agent_config: dict | None = None):
    lab = Lab(name)
    lab.down()
    try:
        lab.up(str(manifests), topology, routing_mode, agent_config)
        yield LabHandle(lab, manifests)
    finally:
        lab.down()


LAB_TEARDOWN = "tears_down_lab"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{LAB_TEARDOWN}: takes the shared single-node `lab` down (runs after every "
                   "other test that uses it)")


def _module(item) -> str:
    return item.nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    """The modules that use the shared `lab` run one after another (where the first of them
    stood), so the lab lives no longer than they need it, and a test marked tears_down_lab runs
    after all of them. Whole modules move, so module-scoped fixtures are still built once."""
    module = _module
    users = {module(i) for i in items if "lab" in getattr(i, "fixturenames", ())}
    if not users:
        return
    first = next(n for n, i in enumerate(items) if module(i) in users)
    group = [i for i in items if module(i) in users]
    group = [i for i in group if not i.get_closest_marker(LAB_TEARDOWN)] + \
        [i for i in group if i.get_closest_marker(LAB_TEARDOWN)]
    rest = [i for i in items if module(i) not in users]
    items[:] = rest[:first] + group + rest[first:]


# A session lab other than `lab` goes down right after the last test of the last module that
# uses it (a module, not a test: a test may reach it through request.getfixturevalue), so the
# tests after it do not share the machine with an idle lab.
_SESSION_LABS = ("native",)
_up: dict[str, LabHandle] = {}          # fixture name -> its lab, while up
_down_after: dict[str, str] = {}        # test nodeid -> the fixture whose lab goes down after it


def pytest_collection_finish(session):
    module = _module
    _down_after.clear()
    for name in _SESSION_LABS:
        mods = {module(i) for i in session.items if name in getattr(i, "fixturenames", ())}
        last = [i for i in session.items if module(i) in mods]
        if last:
            _down_after[last[-1].nodeid] = name


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        name = _down_after.get(item.nodeid)
        if name in _up:
            _up.pop(name).lab.down()


@pytest.fixture(scope="session")
def lab(privileged, tmp_path_factory):
    """The foundation's lab: one node, every pod on it, no kvstore. One per session, shared by
    test_cni, test_observe, test_single_node, test_spoof and test_trace: a test that changes it puts it back
    as it found it (in a finally), and a test that reads flows or counters filters by its own
    pods, ports or sequence numbers. test_single_node's test_lab_down_leaves_nothing takes it
    down, last (pytest_collection_modifyitems); down again here is a no-op then."""
    mdir = copy_manifests(tmp_path_factory.mktemp("manifests"), node="k8s-ctr")
    with built_lab(f"t{os.getpid() % 10000}s", mdir,
                   str(TOPOLOGIES / "single-node.yaml")) as handle:
        yield handle


@pytest.fixture(scope="session")
def native(privileged, tmp_path_factory):
    """Three nodes and etcd in native routing, the example pods spread over them, Maglev and
    XDP acceleration: test_multi_node's native lab, which test_policy's model runs on too (with
    its own pods and the default load-balancer settings while it runs, then taken away
    again). Down after the last module that uses it (pytest_runtest_teardown)."""
    mdir = copy_manifests(tmp_path_factory.mktemp("m-native"))
    # the native lab load-balances with Maglev and in XDP, the tunnel lab at random and in tc
    with built_lab(f"m{os.getpid() % 10000}n", mdir, str(TOPOLOGIES / "default.yaml"), "native",
                   {"loadBalancer": NATIVE_LB}) as h:
        _up["native"] = h
        try:
            yield h
        finally:
            _up.pop("native", None)
