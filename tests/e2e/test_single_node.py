"""End to end on one node: pods talk through our datapath with real sockets, delivery bypasses the
node's IP stack, manifests drive endpoints, metrics move, restarts keep connections, bad config is
rejected. The lab is the session's shared single-node `lab` (conftest): every test that changes it
puts it back. Ordered: the last test tears the lab down and checks nothing is left; it is marked
tears_down_lab, so it runs after every other module that uses the lab too."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from agent.runtime import _alive
from agent.runtime import _bin
from datapath import attach, netns

from .conftest import promtool_clean, wait_for
from .traffic import TCP_CLIENT, TCP_ECHO, curl, spoofed_ping, udp_roundtrip

def test_pods_exchange_ping_tcp_udp(lab):
    pods = ["webpod-1", "webpod-2", "webpod-3"]
    for src in pods + ["curl-pod"]:
        for dst in pods:
            if src == dst:
                continue
            ping = lab.run(src, "ping", "-c", "1", "-W", "2", lab.pod_ip(dst), check=False)
            assert ping.returncode == 0, f"ping {src} -> {dst}: {ping.stdout}{ping.stderr}"
            http = curl(lab, src, lab.pod_ip(dst))
            assert f"Hostname: {dst}" in http.stdout, f"{src} -> {dst}: {http.stdout!r}"
            # the server sees the client's own pod IP: nothing NATs pod-to-pod traffic
            assert f"RemoteAddr: {lab.pod_ip(src)}:" in http.stdout
    out = udp_roundtrip(lab, "webpod-2", "webpod-1")
    assert out.startswith(f"{lab.pod_ip('webpod-1')}:") and out.endswith("hello-udp"), out


def test_delivery_bypasses_node_ip_stack(lab):
    """With forwarding off and the node's routes to the pods removed, the node's stack could not
    deliver a single packet; pods still reach each other because from-container redirects
    straight into the peer's netns."""
    node = "k8s-ctr"
    routes = [r for r in lab.run(node, "ip", "-4", "route", "show").stdout.splitlines()
              if r.startswith("172.20.0.")]
    assert routes, "expected the CNI plugin's /32 routes to pods"
    lab.run(node, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    try:
        for r in routes:
            lab.run(node, "ip", "route", "del", *r.split())
        before = _forwarded(lab)
        assert "Hostname: webpod-3" in curl(lab, "curl-pod", lab.pod_ip("webpod-3")).stdout
        ping = lab.run("webpod-1", "ping", "-c", "2", "-W", "2", lab.pod_ip("webpod-2"), check=False)
        assert ping.returncode == 0, ping.stdout
        assert _forwarded(lab) > before
        # and the node itself, with its routes gone, cannot reach the pod: the stack is out of play
        assert lab.run(node, "ping", "-c", "1", "-W", "1", lab.pod_ip("webpod-2"),
                       check=False).returncode != 0
    finally:
        lab.run(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for r in routes:
            lab.run(node, "ip", "route", "replace", *r.split(), check=False)


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _forwarded(lab) -> float:
    return _metric(lab.metrics(), "cilium_forward_count_total", direction="EGRESS")


def test_metrics_pass_promtool_and_counters_move(lab, tmp_path):
    text = lab.metrics()
    promtool_clean(text, tmp_path)
    for name in ("cilium_forward_count_total", "cilium_forward_bytes_total",
                 "cilium_endpoint_state", "cilium_endpoint_regenerations_total",
                 "cilium_bpf_map_ops_total", "cilium_identity"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    fwd = _forwarded(lab)
    curl(lab, "curl-pod", lab.pod_ip("webpod-1"))
    assert _forwarded(lab) > fwd

    # a spoofed source from a pod is dropped and counted with Cilium's reason string
    drops = _metric(lab.metrics(), "cilium_drop_count_total", reason="Invalid source ip",
                    direction="EGRESS")
    spoofed_ping(lab, "curl-pod", lab.pod_ip("webpod-1"))
    text = lab.metrics()
    assert _metric(text, "cilium_drop_count_total", reason="Invalid source ip",
                   direction="EGRESS") >= drops + 2
    assert _metric(text, "cilium_drop_bytes_total", reason="Invalid source ip",
                   direction="EGRESS") > 0
    assert _metric(text, "cilium_endpoint_state", endpoint_state="ready") == 4
    promtool_clean(text, tmp_path)          # again, now that drop series exist


def test_lab_up_twice_is_a_no_op(lab):
    before = lab.lab.load()
    lab.lab.up()
    after = lab.lab.load()
    assert after == before


def test_lab_up_set_reaches_the_agent_is_kept_and_shown(lab):
    """`lab up --set` as a user runs it: a bad value is refused naming its key with nothing
    changed; a setting the agent takes live reaches it without a restart; values are kept for
    later ups and shown by `lab status`; one the agent cannot take live restarts it; null drops
    a value again."""
    def up(*sets: str) -> subprocess.CompletedProcess:
        argv = [*_bin("datapath"), "lab", "up", "--name", lab.lab.name]
        for s in sets:
            argv += ["--set", s]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    def mode():
        return lab.client().get("/v1/status")["policy"]["mode"]

    def status() -> tuple[dict, str]:
        base = [*_bin("datapath"), "lab", "status", "--name", lab.lab.name]
        js = subprocess.run([*base, "-o", "json"], capture_output=True, text=True, check=True)
        return json.loads(js.stdout), subprocess.run(base, capture_output=True, text=True,
                                                     check=True).stdout

    pid = lab.node()["agent_pid"]
    cfg_text = open(lab.node()["config"]).read()
    r = up("policyEnforcementMode=sometimes")
    assert r.returncode != 0
    assert "policyEnforcementMode" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        r.stderr
    assert open(lab.node()["config"]).read() == cfg_text and lab.node()["agent_pid"] == pid
    try:
        r = up("policyEnforcementMode=always")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: mode() == "always" or None, timeout=20, what="policy mode always")
        assert lab.node()["agent_pid"] == pid           # taken live, from its config file
        assert up().returncode == 0                     # kept by a later up
        js, text = status()
        assert js["values"] == {"policyEnforcementMode": "always"}
        assert "values:  policyEnforcementMode=always" in text
        assert mode() == "always"
        r = up("kvstoreLeaseTTL=30")                    # a key the agent takes only at start
        assert r.returncode == 0, r.stderr
        new_pid = lab.node()["agent_pid"]
        assert new_pid != pid and _alive(new_pid)
        assert lab.client().get("/v1/status")["config"]["lastError"] is None
        assert status()[0]["values"] == {"kvstoreLeaseTTL": 30, "policyEnforcementMode": "always"}
    finally:
        r = up("policyEnforcementMode=null", "kvstoreLeaseTTL=null")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: mode() == "default" or None, timeout=20, what="policy mode default")
    assert status()[0]["values"] == {}


def test_restart_keeps_established_tcp_and_adopts_state(lab):
    node = lab.node()
    eps_before = lab.client().get("/v1/endpoint")
    port = "9100"
    srv = subprocess.Popen(netns.cmd(lab.ns("webpod-3"), sys.executable, "-c", TCP_ECHO, port),
                           stdout=subprocess.PIPE, text=True)
    cli = None
    try:
        time.sleep(0.5)
        cli = subprocess.Popen(netns.cmd(lab.ns("curl-pod"), sys.executable, "-c", TCP_CLIENT,
                                         lab.pod_ip("webpod-3"), port),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def say(word):
            cli.stdin.write(word + "\n")
            cli.stdin.flush()
            return cli.stdout.readline().strip()

        assert say("before") == "before"
        assert srv.stdout.readline().split() == ["peer", lab.pod_ip("curl-pod")]
        lab.lab.stop_agent("k8s-ctr")
        assert not _alive(node["agent_pid"])
        # agent gone: programs stay attached, maps pinned, traffic flows
        host_if = eps_before[0]["host_ifname"]
        assert netns.run(node["netns"], "tc", "filter", "show", "dev", host_if,
                         "ingress").stdout.count("datapath:from-container") == 1
        assert say("while-down") == "while-down"
        lab.lab.up()                                     # restarts the agent (idempotent up)
        new_pid = lab.node()["agent_pid"]
        assert new_pid != node["agent_pid"] and _alive(new_pid)
        assert say("after") == "after"
        eps_after = lab.client().get("/v1/endpoint")
        strip = [{k: e[k] for k in ("id", "ip", "identity", "host_ifname", "state")}
                 for e in eps_before]
        assert [{k: e[k] for k in ("id", "ip", "identity", "host_ifname", "state")}
                for e in eps_after] == strip
        runs = open(node["log"]).read().split("starting agent for node")
        assert len(runs) >= 3, "expected two agent starts in the log"
        startup = runs[-1].split("ready:")[0]
        assert "starting" not in startup and "reconcile (startup)" not in startup, \
            "the restarted agent re-wrote the datapath it should have adopted"
    finally:
        if cli:
            cli.stdin.close()
            cli.wait(timeout=10)
        srv.wait(timeout=10)


def _bpftool_dump(path: str) -> dict[bytes, bytes]:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", path], capture_output=True,
                         text=True, check=True).stdout
    return {bytes(int(x, 16) for x in e["key"]): bytes(int(x, 16) for x in e["value"])
            for e in json.loads(out)}


def _hex(b: bytes) -> list[str]:
    return [f"{x:02x}" for x in b]


def test_drift_behind_the_agents_back_is_repaired_and_counted(lab):
    """The agent never reads its maps back on a change; a full reconciliation (at
    reconciler.fullInterval) does, and puts back an entry changed and one deleted behind its
    back, counting them in cilium_reconciler_full_out_of_sync_total."""
    node = lab.node()
    path = f"{lab.lab.bpffs}/datapath/k8s-ctr/cilium_lb4_services_v2"
    before = _bpftool_dump(path)
    (k1, v1), (k2, _) = sorted(before.items())[:2]
    count = lab.metric("cilium_reconciler_full_out_of_sync_total",
                       module_id="cilium_lb4_services_v2")
    cfg = node["config"]
    good = open(cfg).read()
    try:
        with open(cfg, "w") as f:
            f.write(good + "reconciler:\n  fullInterval: 2s\n")
        wait_for(lambda: lab.client().get("/v1/status")["config"]["lastReload"], what="reload")
        subprocess.run(["bpftool", "map", "update", "pinned", path, "key", "hex", *_hex(k1),
                        "value", "hex", *_hex(bytes(b ^ 0xFF for b in v1))], check=True)
        subprocess.run(["bpftool", "map", "delete", "pinned", path, "key", "hex", *_hex(k2)],
                       check=True)
        assert _bpftool_dump(path) != before
        wait_for(lambda: _bpftool_dump(path) == before, timeout=20, what="drift repaired")
        assert lab.metric("cilium_reconciler_full_out_of_sync_total",
                          module_id="cilium_lb4_services_v2") >= count + 2
        assert lab.metric("cilium_reconciler_full_total") >= 1
    finally:
        with open(cfg, "w") as f:
            f.write(good)


def test_bad_config_is_rejected_and_datapath_unchanged(lab):
    node = lab.node()
    cfg_path = node["config"]
    good = open(cfg_path).read()
    eps = lab.client().get("/v1/endpoint")
    lxc_before = lab.pinned_map("cilium_lxc")
    assert len(lxc_before) == len(eps)
    tc_before = netns.run(node["netns"], "tc", "filter", "show", "dev", eps[0]["host_ifname"],
                          "ingress").stdout
    errors = _metric(lab.metrics(), "cilium_errors_warnings_total", level="error",
                     subsystem="config")
    try:
        for bad, key in ((good + "bogusKey: 1\n", "bogusKey"),
                         (good.replace("podCIDR: 172.20.0.0/24", "podCIDR: 172.20.0.0/33"),
                          "ipam.podCIDR")):
            with open(cfg_path, "w") as f:
                f.write(bad)
            st = wait_for(lambda: (s := lab.client().get("/v1/status"))["config"]["lastError"]
                          and key in s["config"]["lastError"] and s, what=f"{key} rejected")
            err = st["config"]["lastError"]
            assert cfg_path in err and key in err, err
            out = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", node["socket"],
                                  "status"], capture_output=True, text=True).stdout
            assert "Config:" in out and "Error:" in out and key in out
            assert lab.pinned_map("cilium_lxc") == lxc_before
            assert lab.client().get("/v1/endpoint") == eps
            assert netns.run(node["netns"], "tc", "filter", "show", "dev", eps[0]["host_ifname"],
                             "ingress").stdout == tc_before
            assert "Hostname: webpod-2" in curl(lab, "curl-pod", lab.pod_ip("webpod-2")).stdout
        assert _metric(lab.metrics(), "cilium_errors_warnings_total", level="error",
                       subsystem="config") >= errors + 2
    finally:
        with open(cfg_path, "w") as f:
            f.write(good)
    wait_for(lambda: lab.client().get("/v1/status")["config"]["lastError"] is None,
             what="good config to apply again")


BURST_SVC = """apiVersion: v1
kind: Service
metadata: {{name: burst-{i}, namespace: default}}
spec:
  selector: {{app: webpod}}
  ports: [{{name: http, port: {port}, targetPort: http}}]
"""


def test_a_burst_of_changes_is_coalesced_and_each_change_is_incremental(lab):
    """40 Service files written at once reach the maps in a few syncs, not 40
    (reconciler.minInterval); each sync writes only what changed; removing them takes the
    entries away again, and the services still answer through the ClusterIP."""
    syncs = lab.metric("cilium_reconciler_incremental_total")
    fulls = lab.metric("cilium_reconciler_full_total")
    before = lab.client().get("/v1/service")
    files = [lab.manifests / f"burst-{i}.yaml" for i in range(40)]
    try:
        for i, f in enumerate(files):
            f.write_text(BURST_SVC.format(i=i, port=8000 + i))
        wait_for(lambda: len(lab.client().get("/v1/service")) == len(before) + 40,
                 what="40 new services")
        assert lab.metric("cilium_reconciler_incremental_total") - syncs < 20
        assert lab.metric("cilium_reconciler_full_total") == fulls     # no read-back needed
        svc = next(s for s in lab.client().get("/v1/service") if s["service"] == "default/burst-7")
        vip = svc["frontend"].split(":")[0]
        assert "Hostname: webpod" in curl(lab, "curl-pod", f"{vip}:8007").stdout
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    wait_for(lambda: lab.client().get("/v1/service") == before, what="burst services removed")


def test_label_change_moves_endpoint_to_new_identity(lab):
    path = lab.manifests / "webpod-2.yaml"
    orig = path.read_text()
    ident = {e["pod"]: e["identity"] for e in lab.client().get("/v1/endpoint")}
    assert ident["webpod-2"] == ident["webpod-1"]
    try:
        path.write_text(orig.replace("app: webpod", "app: webpod\n    tier: canary"))
        # The endpoint passes through "regenerating" (as Cilium's does) between taking its new
        # identity and having its maps written: wait for both, then check the rest.
        new = wait_for(lambda: (i := {e["pod"]: e for e in lab.client().get("/v1/endpoint")})
                       ["webpod-2"]["identity"] != ident["webpod-2"]
                       and i["webpod-2"]["state"] == "ready" and i,
                       what="webpod-2 to change identity and be ready again")
        assert new["webpod-2"]["identity"] >= 256
        assert "k8s:tier=canary" in new["webpod-2"]["labels"]
        assert new["webpod-1"]["identity"] == ident["webpod-1"]
        assert "Hostname: webpod-2" in curl(lab, "curl-pod", lab.pod_ip("webpod-2")).stdout
    finally:
        path.write_text(orig)
    wait_for(lambda: {e["pod"]: e["identity"] for e in lab.client().get("/v1/endpoint")}
             ["webpod-2"] == ident["webpod-2"], what="identity to return")


def test_deleting_pod_manifest_removes_endpoint_and_veth(lab):
    eps = {e["pod"]: e for e in lab.client().get("/v1/endpoint")}
    victim = eps["webpod-3"]
    node_ns = lab.node()["netns"]
    assert netns.link_exists(node_ns, victim["host_ifname"])
    saved = (lab.manifests / "webpod-3.yaml").read_text()
    (lab.manifests / "webpod-3.yaml").unlink()
    try:
        wait_for(lambda: "webpod-3" not in {e["pod"] for e in lab.client().get("/v1/endpoint")},
                 what="endpoint removal")
        assert not netns.link_exists(node_ns, victim["host_ifname"])
        assert lab.client().get("/v1/status")["ipam"]["allocated"] == 3
        assert lab.run("curl-pod", "ping", "-c", "1", "-W", "1", victim["ip"],
                       check=False).returncode != 0
    finally:
        (lab.manifests / "webpod-3.yaml").write_text(saved)
    lab.lab.up()     # the "runtime" recreates the pod
    assert "Hostname: webpod-3" in curl(lab, "curl-pod", lab.pod_ip("webpod-3")).stdout


def test_cleanup_removes_what_we_installed_and_agent_rebuilds(lab):
    node = lab.node()
    eps = lab.client().get("/v1/endpoint")
    pin_dir = lab.client().get("/v1/status")["datapath"]["pinDir"]
    assert os.listdir(pin_dir)
    refused = subprocess.run(netns.cmd(node["netns"], sys.executable, "-m", "agent.cli",
                                       "cleanup", "--config", node["config"]),
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    lab.lab.stop_agent("k8s-ctr")
    out = subprocess.run(netns.cmd(node["netns"], sys.executable, "-m", "agent.cli", "cleanup",
                                   "--config", node["config"]), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("detached tc ingress program") == len(eps) + 1     # + eth1
    assert "detached tc ingress program from eth1" in out.stdout
    assert not os.path.exists(pin_dir)
    state_dir = os.path.join(os.path.dirname(node["config"]), "state")
    assert not os.path.exists(state_dir)
    for ep in eps:
        assert "datapath:" not in netns.run(node["netns"], "tc", "filter", "show", "dev",
                                            ep["host_ifname"], "ingress").stdout
    # the next `lab up` starts a fresh agent and re-creates the pods' endpoints through CNI
    lab.lab.up()
    assert len(lab.client().get("/v1/endpoint")) == len(eps)
    assert "Hostname: webpod-1" in curl(lab, "curl-pod", lab.pod_ip("webpod-1")).stdout


@pytest.mark.tears_down_lab
def test_lab_down_leaves_nothing(lab):
    st = lab.lab.load()
    pids = [n["agent_pid"] for n in st["nodes"].values()] + [p["pid"] for p in st["pods"].values()]
    names = [n["netns"] for n in st["nodes"].values()] + [p["netns"] for p in st["pods"].values()]
    bpffs = str(lab.lab.bpffs)
    lab.lab.down()
    assert not any(_alive(p) for p in pids)
    left = set(netns.list_names())
    assert not left & set(names + [lab.lab.segment_ns])
    assert bpffs not in open("/proc/mounts").read()
    assert not lab.lab.dir.exists()
    assert lab.lab.down() == ["nothing to remove"]      # idempotent
