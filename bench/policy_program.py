"""Bench (not a test): how long the agent takes from a policy change to its entries being in
every affected policy map row, at E endpoints and P policies, and how many map writes it takes.

It runs the agent's own code path for one node holding all E endpoints, phase by phase:
    parse   agent.manifests.load_manifests over the YAML in a temp directory (re-read whole,
            as the daemon does on a change)
    policy  PolicySubsystem.load + set_identities + desired (the policy map's desired rows)
    read    agent.reconcile.read_actual over every managed map (as the daemon reads them)
    diff    agent.reconcile.plan
    apply   agent.reconcile.apply against datapath.loader.NodeDatapath's pinned maps
Cases: cold (every policy into empty maps); one policy file rewritten (its peer selector moves
from one app to another); the same change undone; one pod's labels changed (its endpoint moves
to another identity, as the daemon re-identifies it); a no-op. Each change case runs --runs
times and is reported as the median. The agent notices a changed manifests directory within its
watch interval (agent.daemon.WATCH_SECONDS, 0.25 s), which comes on top.

Isolation: programs compiled and maps pinned under a private bpffs directory, the measuring
process in a private network namespace; nothing is attached. Both removed in `finally`.

    python bench/policy_program.py [--endpoints 100] [--policies 200] [--runs 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):          # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import parse_config                         # noqa: E402
from agent.endpoint import Endpoint                           # noqa: E402
from agent.identity import RESERVED, LocalIdentityStore, security_labels   # noqa: E402
from agent.manifests import load_manifests                    # noqa: E402
from agent.metrics import AgentMetrics                        # noqa: E402
from agent.policy.subsystem import PolicySubsystem            # noqa: E402
from agent.reconcile import DatapathState, apply, plan, read_actual   # noqa: E402
from datapath.loader import NodeDatapath                      # noqa: E402
from bench import isolated                                    # noqa: E402
from bench.isolated import Timer                              # noqa: E402

NAMESPACES = 10
APPS = 20

POD = """apiVersion: v1
kind: Pod
metadata: {{name: p{i}, namespace: ns{ns}, labels: {{app: a{app}, tier: t{tier}}}}}
spec:
  nodeName: bench
  containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]
"""
NS = """apiVersion: v1
kind: Namespace
metadata: {{name: ns{ns}, labels: {{team: team{team}}}}}
"""
POLICY = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: np{i}, namespace: ns{ns}}}
spec:
  podSelector: {{matchLabels: {{app: a{subject}}}}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - namespaceSelector: {{}}
          podSelector: {{matchLabels: {{app: a{peer}}}}}
        - namespaceSelector: {{matchLabels: {{team: team{team}}}}}
          podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [t0, t1]}}]}}
      ports: [{{protocol: TCP, port: {port}}}, {{protocol: TCP, port: http}}]
  egress:
    - to:
        - podSelector: {{matchLabels: {{app: a{peer}}}}}
      ports: [{{protocol: TCP, port: 8000, endPort: 8099}}]
    - to:
        - ipBlock: {{cidr: 203.0.{block}.0/24, except: [203.0.{block}.128/25]}}
"""


def write_manifests(d: Path, n_eps: int, n_pols: int) -> None:
    (d / "namespaces.yaml").write_text("---\n".join(
        NS.format(ns=n, team=n % 3) for n in range(NAMESPACES)))
    for i in range(n_eps):
        (d / f"pod-{i:04d}.yaml").write_text(POD.format(i=i, ns=i % NAMESPACES, app=i % APPS,
                                                        tier=i % 4))
    for i in range(n_pols):
        write_policy(d, i, peer=(i + 1) % APPS)


def write_policy(d: Path, i: int, peer: int) -> None:
    tmp = d / f".np-{i:04d}.tmp"
    tmp.write_text(POLICY.format(i=i, ns=i % NAMESPACES, subject=i % APPS, peer=peer,
                                 team=i % 3, port=80 + i % 50, block=i % 4))
    os.replace(tmp, d / f"np-{i:04d}.yaml")         # atomically, as a user would


class Node:
    """The part of the daemon the bench drives: endpoints, identities and the policy subsystem
    over a NodeDatapath, reconciled as Agent.reconcile does."""

    def __init__(self, workdir: Path, pin_dir: str, counter: Counter):
        self.workdir = workdir
        cfg = parse_config({"nodeName": "bench", "ipam": {"podCIDR": "10.0.0.0/16"}},
                           str(workdir / "config.yaml"))
        self.state: dict = {}
        self.policy = PolicySubsystem(cfg, self.state, AgentMetrics())
        self.store = LocalIdentityStore({})
        self.dp = NodeDatapath(pin_dir, on_op=lambda m, op, o, n: counter.update({(m, op, o): n}))
        self.endpoints: dict[str, Endpoint] = {}

    def identify(self, manifests) -> None:
        for key, pod in sorted(manifests.pods.items()):
            labels = security_labels(pod.namespace, pod.label_dict,
                                     manifests.namespace_labels(pod.namespace))
            ident, _ = self.store.allocate(labels)
            ep = self.endpoints.get(key)
            if ep is None:
                n = len(self.endpoints) + 1
                ep = self.endpoints[key] = Endpoint(
                    id=n, container_id=f"c{n}", namespace=pod.namespace, pod=pod.name,
                    ifname="eth0", host_ifname=f"lxc{n}", host_ifindex=1000 + n,
                    ip=f"10.0.{n >> 8}.{n & 255}", mac="02:00:00:00:00:01",
                    host_mac="02:00:00:00:00:02", netns="")
            ep.identity, ep.labels = ident, list(labels)

    def reconcile(self, t: "Timer", counter: Counter) -> dict:
        counter.clear()
        manifests = t("parse", load_manifests, str(self.workdir))

        def policy():
            self.identify(manifests)
            self.policy.load(manifests)
            used = {ep.identity for ep in self.endpoints.values()}
            ids = {n: tuple(k.split(";")) for k, n in self.store.table.items() if n in used}
            ids.update({n: (f"reserved:{name}",) for name, n in RESERVED.items()})
            self.policy.set_identities(ids)
            st = DatapathState(maps={"cilium_ipcache": {}})
            rows = st.maps["cilium_ipcache"]

            def ipcache(cidr, ident):
                from datapath import abi
                rows[bytes(abi.ipcache_key(cidr))] = bytes(abi.remote_endpoint_info(ident))

            eps = list(self.endpoints.values())
            self.policy.desired(st, eps, manifests.pods,
                                {ep.pod_key: ep.identity for ep in eps}, ipcache)
            return st

        desired = t("policy", policy)
        actual = t("read", read_actual, self.dp, set())
        desired.maps = {m: v for m, v in desired.maps.items()}
        for m in actual.maps:                       # maps the bench does not drive: as they are
            desired.maps.setdefault(m, actual.maps[m])
        ops = t("diff", plan, desired, actual)
        errors: list[str] = []
        failed = t("apply", apply, ops, self.dp, lambda op, e: errors.append(f"{op}: {e}"))
        self.policy.applied(failed == 0)
        return {"seconds": dict(t.phases), "total": sum(t.phases.values()),
                "map_ops": sum(n for (m, op, outcome), n in counter.items()
                               if outcome == "success"),
                "failed": failed, "errors": errors[:5],
                "policy_entries": len(desired.maps["cilium_policy_v2"])}


def median_case(runs: list[dict]) -> dict:
    out = dict(runs[len(runs) // 2])
    out["total"] = statistics.median(r["total"] for r in runs)
    out["seconds"] = {k: statistics.median(r["seconds"][k] for r in runs)
                      for k in runs[0]["seconds"]}
    out["runs"] = [round(r["total"], 4) for r in runs]
    out["map_ops"] = sorted({r["map_ops"] for r in runs})
    return out


def measure(n_eps: int, n_pols: int, runs: int, workdir: Path, pin_dir: str, log=print) -> dict:
    counter: Counter = Counter()
    write_manifests(workdir, n_eps, n_pols)
    t = time.perf_counter()
    node = Node(workdir, pin_dir, counter)
    out: dict = {"endpoints": n_eps, "policies": n_pols, "runs": runs,
                 "compile_seconds": time.perf_counter() - t}
    out["cold"] = node.reconcile(Timer(), counter)
    log(f"cold: {out['cold']['total']:.3f} s, {out['cold']['map_ops']} map ops, "
        f"{out['cold']['policy_entries']} policy entries")
    change, undo, label, noop = [], [], [], []
    victim = workdir / "pod-0000.yaml"
    original = victim.read_text()
    for _ in range(runs):
        write_policy(workdir, 0, peer=7)                 # np0's peer app moves a1 -> a7
        change.append(node.reconcile(Timer(), counter))
        write_policy(workdir, 0, peer=1)
        undo.append(node.reconcile(Timer(), counter))
        victim.write_text(original.replace("tier: t0", "tier: t3"))   # p0 changes identity
        label.append(node.reconcile(Timer(), counter))
        victim.write_text(original)
        node.reconcile(Timer(), counter)
        noop.append(node.reconcile(Timer(), counter))
    out["policy_changed"] = median_case(change)
    out["policy_restored"] = median_case(undo)
    out["pod_label_changed"] = median_case(label)
    out["noop"] = median_case(noop)
    for k in ("policy_changed", "policy_restored", "pod_label_changed", "noop"):
        log(f"{k}: {out[k]['total'] * 1000:.1f} ms, map ops {out[k]['map_ops']}")
    return out


def run(n_eps: int, n_pols: int, runs: int, log=print) -> dict:
    """`measure` in a private netns and pin dir (bench/isolated.py); returns its results."""
    return isolated.run(__file__, ["--endpoints", str(n_eps), "--policies", str(n_pols),
                                   "--runs", str(runs)], log)


def report(r: dict) -> str:
    rows = [("cold: every policy into empty maps", r["cold"]),
            ("one policy file changed", r["policy_changed"]),
            ("the change undone", r["policy_restored"]),
            ("one pod's labels changed", r["pod_label_changed"]),
            ("no-op", r["noop"])]
    lines = [f"{r['endpoints']} endpoints, {r['policies']} policies on one node "
             f"({r['cold']['policy_entries']} policy map entries; median of {r['runs']} runs; "
             f"compile+load {r['compile_seconds']:.1f} s)", "",
             f"| {'change':<36} | parse ms | policy ms | read ms | diff ms | apply ms | "
             "total ms | map ops |",
             f"|{'-' * 38}|---------:|----------:|--------:|--------:|---------:|---------:|"
             "--------:|"]
    for name, x in rows:
        s = x["seconds"]
        ops = x["map_ops"]
        ops = "/".join(str(o) for o in ops) if isinstance(ops, list) else str(ops)
        lines.append(f"| {name:<36} | {s['parse'] * 1e3:8.1f} | {s['policy'] * 1e3:9.1f} | "
                     f"{s['read'] * 1e3:7.1f} | {s['diff'] * 1e3:7.1f} | "
                     f"{s['apply'] * 1e3:8.1f} | {x['total'] * 1e3:8.1f} | {ops:>7} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", type=int, default=100)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    isolated.add_child_options(ap)
    a = ap.parse_args(argv)
    if a.inside:
        return isolated.child(a, lambda work, pins, log: measure(
            a.endpoints, a.policies, a.runs, work, pins, log=log))
    r = run(a.endpoints, a.policies, a.runs, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
