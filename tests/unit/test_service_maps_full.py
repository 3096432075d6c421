"""Issue #12, maps full, on a real agent: the agent's own code (Agent init, reload, reconcile, its
API and `datapath status`, as its main loop runs them) on real BPF maps compiled small (-D
LB_*_MAX_ENTRIES), in a private netns and pin directory, no device attached. The service that
does not fit is refused whole: the maps hold exactly the admitted services and nothing of it;
`status`, the log and cilium_errors_warnings_total{level="error",subsystem="service"} say so,
once; when a service is deleted and its entries are gone, the refused one is programmed.

The node has no device and no endpoint, so no program is attached or asked for: only the XDP
source (bpf/bpf_xdp.c, declaring every map of bpf/lib/maps.h like the others) is compiled, which
keeps this test to one BCC compile (~9 s of CPU instead of ~45 s for all four).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time

from datapath import netns
from datapath.loader import remove_pins

from ..nsfork import run_in_netns

SMALL = {"LB_SERVICE_MAP_MAX_ENTRIES": 16, "LB_BACKENDS_MAP_MAX_ENTRIES": 6,
         "LB_REV_NAT_MAP_MAX_ENTRIES": 16, "LB_MAGLEV_MAP_MAX_ENTRIES": 16}
LB_MAPS = ("cilium_lb4_services_v2", "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat")
# services a, b, c, d: two backends of their own each (the backends map takes 3 services);
# e: a's pods again (its backends are a's: no room needed there)
SERVICES = {"a": "a", "b": "b", "c": "c", "d": "d", "e": "a"}
POD = """apiVersion: v1
kind: Pod
metadata: {{name: {app}-{j}, namespace: full, labels: {{app: {app}}}}}
spec:
  nodeName: n1
  containers: [{{name: web, ports: [{{name: http, containerPort: 8080}}]}}]
---
"""
SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: full}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


def _setup(work, pin_root: str) -> str:
    mdir, sdir = work / "manifests", work / "state"
    mdir.mkdir()
    sdir.mkdir()
    pods, endpoints = "", {}
    for i, app in enumerate("abcd"):
        for j in range(2):
            pods += POD.format(app=app, j=j)
            endpoints[f"10.244.1.{10 * i + j + 1}"] = {
                "identity": 20001 + i, "hostIP": "192.168.10.101", "node": "n1",
                "namespace": "full", "pod": f"{app}-{j}"}
    (mdir / "pods.yaml").write_text(pods)
    for name, app in SERVICES.items():
        (mdir / f"svc-{name}.yaml").write_text(SVC.format(name=name, app=app))
    (sdir / "state.json").write_text(json.dumps({
        "version": 1, "identities": {}, "ipam": {}, "endpoints": {}, "next_endpoint_id": 1,
        "cluster": {"nodes": {"n1": {"ip": "192.168.10.101", "podCIDR": "10.244.1.0/24"}},
                    "endpoints": endpoints}}))
    cfg = work / "full.yaml"
    cfg.write_text(json.dumps({
        "nodeName": "full", "devices": [], "ipam": {"podCIDR": "10.244.0.0/24"},
        "routingMode": "native", "bpf": {"root": pin_root}, "stateDir": str(sdir),
        "apiSocket": str(work / "full.sock"), "manifests": str(mdir),
        "prometheus": {"enabled": False}}))
    return str(cfg)


def _scenario(cfg: str, work_dir: str) -> dict:
    """In the netns (a forked child): the agent with small service maps."""
    from click.testing import CliRunner

    import agent.daemon as daemon
    from agent import api
    from agent.cli import cli

    from datapath import loader
    daemon.lb_map_defines = lambda n: dict(SMALL)     # the -D sizes: small (this child only)
    loader.PROGRAMS = {"xdp": loader.PROGRAMS["xdp"]}  # one compile (nothing is attached)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
    logging.getLogger("datapath.service").addHandler(Keep(level=logging.INFO))
    logging.getLogger("datapath.service").setLevel(logging.INFO)
    out: dict = {}
    t = time.perf_counter()
    a = daemon.Agent(cfg)
    out["agent_init_seconds"] = time.perf_counter() - t
    srv = None
    try:
        def errors() -> float:
            return a.metrics.errors_warnings.labels("error", "service")._value.get()

        def maps() -> dict:
            return {m: a.dp.read_map(m) for m in LB_MAPS}

        def programmed() -> dict:
            """What the admitted services' entries are, merged."""
            got: dict = {m: {} for m in LB_MAPS}
            for b in a.builder.admission.admitted.values():
                for m in LB_MAPS:
                    got[m].update(b.maps.get(m, {}))
            return got

        assert a.start_sync() == 0                    # as Agent.run: no map write failed
        for m, n in SMALL.items():
            name = {"LB_SERVICE_MAP_MAX_ENTRIES": "cilium_lb4_services_v2",
                    "LB_BACKENDS_MAP_MAX_ENTRIES": "cilium_lb4_backends_v3",
                    "LB_REV_NAT_MAP_MAX_ENTRIES": "cilium_lb4_reverse_nat",
                    "LB_MAGLEV_MAP_MAX_ENTRIES": "cilium_lb4_maglev"}[m]
            assert a.dp.maps[name].max_entries == n
        assert set(a.builder.admission.admitted) == {"full/a", "full/b", "full/c", "full/e"}
        assert a.builder.refused == {"full/d": "cilium_lb4_backends_v3"}
        have, want = maps(), programmed()
        assert have == want                           # exactly the admitted services
        assert len(have["cilium_lb4_backends_v3"]) == 6
        d = a.builder.planner.built["full/d"]           # built, never written
        for m in LB_MAPS:
            assert not d.maps[m].keys() - want[m].keys() & have[m].keys()
            own = d.maps[m].keys() - want[m].keys()
            assert own and not own & have[m].keys()
        assert errors() == 1
        assert sum("full/d refused: map cilium_lb4_backends_v3 is full" in x for x in lines) == 1
        assert not {r["service"] for r in a.builder.listing} & {"full/d"}

        srv = api.serve(str(work_dir + "/full.sock"), a.routes())
        res = CliRunner().invoke(cli, ["--socket", work_dir + "/full.sock", "status"])
        assert res.exit_code == 0, res.output
        out["status_line"] = next(x for x in res.output.splitlines()
                                  if x.startswith("Services:"))
        st = json.loads(CliRunner().invoke(
            cli, ["--socket", work_dir + "/full.sock", "status", "-o", "json"]).output)
        out["status_json"] = st["services"]

        # nothing changed: no new log line, no new count, nothing written
        assert a.reconcile("again") == 0
        assert errors() == 1 and len(lines) == 1

        # b deleted: its entries go at the end of that flush, then d is programmed
        os.unlink(work_dir + "/manifests/svc-b.yaml")
        a.reload({work_dir + "/manifests/svc-b.yaml"})
        assert a.reconcile("b deleted") == 0
        assert "service maps have room" in a._dirty
        assert a.reconcile("service maps have room") == 0
        assert set(a.builder.admission.admitted) == {"full/a", "full/c", "full/d", "full/e"}
        assert not a.builder.refused
        assert maps() == programmed()
        assert any("full/d programmed" in x for x in lines)
        assert errors() == 1
        out["log"] = lines
        return out
    finally:
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        a.watcher.close()


def test_service_maps_full_refuse_whole_and_program_when_room(privileged, tmp_path):
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    ns, pin_root = f"dpt-full-{tag}", f"/sys/fs/bpf/dpt-full-{tag}"
    cfg = _setup(tmp_path, pin_root)
    netns.add(ns)
    t = time.perf_counter()
    try:
        out = run_in_netns(ns, _scenario, cfg, str(tmp_path), timeout=300)
    finally:
        netns.delete(ns)
        remove_pins(pin_root)
    print(f"agent init (compile) {out['agent_init_seconds']:.1f} s, "
          f"whole test {time.perf_counter() - t:.1f} s")
    print(out["status_line"])
    print("\n".join(out["log"]))
    assert out["status_line"].split(None, 1)[1] == \
        "4 programmed, refused 1 (full/d: cilium_lb4_backends_v3 full)"
    assert out["status_json"]["refused"] == [{"service": "full/d",
                                              "mapFull": "cilium_lb4_backends_v3"}]
    assert out["status_json"]["maps"]["cilium_lb4_backends_v3"] == {"used": 6, "max": 6}
