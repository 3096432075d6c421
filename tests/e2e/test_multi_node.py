"""Multi-node lab end to end: three nodes sharing state through etcd, pods talking across nodes
in both routing modes, VXLAN carrying the sender's identity, the cross-subnet topology, a node
agent stopping and coming back, cluster-wide identity allocation under a race, masquerade (on in
both labs: pods reach the outside with their node's address, pod-to-pod and pod-to-node traffic
keeps the pod's), and teardown. The native lab is the session's (conftest `native`: test_policy
runs on it too); the tunnel lab is this module's, and the last test takes it down.
Every test that changes a lab puts it back as it found it."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.all import IP, UDP, VXLAN, bind_layers, rdpcap

from agent.lab.topology import TOPOLOGIES
from agent.runtime import _alive, _bin
from datapath import abi, netns

from .conftest import built_lab, copy_manifests, external_service, wait_for
from .netpol import TCP80, PolicyLab, R, mismatches, render, write_atomic
from .test_observe import ALLOW_CURL_TO_WEBPOD_80
from .traffic import curl, spoofed_ping, udp_roundtrip

PODS = {"curl-pod": "k8s-ctr", "webpod-1": "k8s-ctr", "webpod-2": "k8s-w1", "webpod-3": "k8s-w2"}
WEB = ["webpod-1", "webpod-2", "webpod-3"]


def _name(tag: str) -> str:
    return f"m{os.getpid() % 10000}{tag}"


@pytest.fixture(scope="module")
def tunnel(privileged, tmp_path_factory):
    mdir = copy_manifests(tmp_path_factory.mktemp("m-tunnel"))
    with built_lab(_name("t"), mdir, str(TOPOLOGIES / "default.yaml"), "tunnel") as h:
        yield h


@pytest.fixture(params=["native", "tunnel"])
def cluster(request):
    return request.getfixturevalue(request.param)


def identity_of(lab, pod: str) -> int:
    node = PODS[pod]
    for ep in lab.client(node).get("/v1/endpoint"):
        if ep["pod"] == pod:
            return ep["identity"]
    raise AssertionError(f"no endpoint for {pod} on {node}")


def test_pods_on_all_nodes_reach_each_other(cluster):
    assert {p["name"].split("/")[1]: p["node"] for p in cluster.lab.status()["pods"]} == PODS
    for node in ("k8s-ctr", "k8s-w1", "k8s-w2"):       # so "never NATed" below means something
        assert cluster.client(node).get("/v1/status")["masquerading"]["enabled"]
    for src in PODS:
        for dst in WEB:
            if src == dst:
                continue
            ping = cluster.run(src, "ping", "-c", "1", "-W", "2", cluster.pod_ip(dst), check=False)
            assert ping.returncode == 0, f"ping {src} -> {dst}: {ping.stdout}"
            http = curl(cluster, src, cluster.pod_ip(dst)).stdout
            assert f"Hostname: {dst}" in http, f"{src} -> {dst}: {http!r}"
            assert f"RemoteAddr: {cluster.pod_ip(src)}:" in http      # never NATed
    for server, client in (("webpod-2", "curl-pod"), ("webpod-3", "webpod-2")):
        out = udp_roundtrip(cluster, server, client)
        assert out.startswith(f"{cluster.pod_ip(client)}:") and out.endswith("hello-udp"), out


def test_same_labels_same_identity_on_every_node(cluster):
    ids = {p: identity_of(cluster, p) for p in PODS}
    assert ids["webpod-1"] == ids["webpod-2"] == ids["webpod-3"] >= 256
    assert ids["curl-pod"] != ids["webpod-1"]


def test_native_routes_and_delivery_without_stack_forwarding(native):
    routes = native.run("k8s-ctr", "ip", "route", "show", "proto", "202").stdout
    assert "172.20.1.0/24 via 192.168.10.101 dev eth1" in routes
    assert "172.20.2.0/24 via 192.168.10.102 dev eth1" in routes
    # on k8s-w1: packets arriving on eth1 may not be forwarded by the stack, and the node has no
    # route to its own pods; from-netdev delivers them anyway
    w1 = "k8s-w1"
    pod_routes = [r for r in native.run(w1, "ip", "-4", "route").stdout.splitlines()
                  if r.startswith("172.20.1.")]
    native.run(w1, "sysctl", "-qw", "net.ipv4.conf.eth1.forwarding=0")
    try:
        for r in pod_routes:
            native.run(w1, "ip", "route", "del", *r.split())
        assert "Hostname: webpod-2" in curl(native, "curl-pod", native.pod_ip("webpod-2")).stdout
        assert native.run("webpod-3", "ping", "-c", "2", "-W", "2", native.pod_ip("webpod-2"),
                          check=False).returncode == 0
    finally:
        native.run(w1, "sysctl", "-qw", "net.ipv4.conf.eth1.forwarding=1")
        for r in pod_routes:
            native.run(w1, "ip", "route", "replace", *r.split(), check=False)


def test_tunnel_carries_sender_identity_in_vni(tunnel, tmp_path):
    pcap = tmp_path / "vxlan.pcap"
    cap = subprocess.Popen(netns.cmd(tunnel.ns("k8s-ctr"), "tcpdump", "-i", "eth1", "-U", "-c",
                                     "4", "-w", str(pcap), "udp", "port", "8472"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        tunnel.run("curl-pod", "ping", "-c", "2", "-W", "2", tunnel.pod_ip("webpod-2"))
        cap.wait(timeout=15)
    finally:
        if cap.poll() is None:
            cap.kill()
    bind_layers(UDP, VXLAN, dport=8472)
    pkts = [p for p in rdpcap(str(pcap)) if VXLAN in p]
    assert len(pkts) >= 4
    ids = {"192.168.10.100": identity_of(tunnel, "curl-pod"),
           "192.168.10.101": identity_of(tunnel, "webpod-2")}
    for p in pkts:
        outer, inner = p[IP], p[VXLAN][IP]
        assert {outer.src, outer.dst} == {"192.168.10.100", "192.168.10.101"}
        assert p[UDP].dport == 8472
        assert p[VXLAN].vni == ids[outer.src], (outer.src, p[VXLAN].vni, ids)
        assert inner.src in (tunnel.pod_ip("curl-pod"), tunnel.pod_ip("webpod-2"))


ETCD_KEYS = """
import json, sys
from agent.kvstore import EtcdClient
c = EtcdClient([sys.argv[1]])
print(json.dumps(sorted(c.get_prefix("cilium/state/").keys())))
"""


def etcd_keys(lab) -> list[str]:
    import json
    url = lab.lab.load()["etcd"]["url"]
    return json.loads(lab.py("k8s-ctr", ETCD_KEYS, url).stdout)


def test_stopped_agent_keeps_datapath_entries_expire_and_restart_restores(native):
    before = etcd_keys(native)
    ids_before = [k for k in before if "/identities/" in k]
    assert "cilium/state/nodes/v1/default/k8s-w1" in before
    assert f"cilium/state/ip/v1/default/{native.pod_ip('webpod-2')}" in before
    ident = identity_of(native, "webpod-2")
    native.lab.stop_agent("k8s-w1")
    # the pinned datapath keeps working without its agent
    assert "Hostname: webpod-2" in curl(native, "curl-pod", native.pod_ip("webpod-2")).stdout
    assert native.run("webpod-2", "ping", "-c", "1", "-W", "2", native.pod_ip("webpod-3"),
                      check=False).returncode == 0
    # its entries expire with its lease (TTL 10 s in the default topology)
    wait_for(lambda: "cilium/state/nodes/v1/default/k8s-w1" not in etcd_keys(native),
             timeout=30, what="k8s-w1's lease to expire")
    # ...and the other nodes drop it, as Cilium drops a deleted node: no route, no ipcache entry
    wait_for(lambda: "172.20.1.0/24" not in native.run("k8s-ctr", "ip", "route").stdout,
             what="k8s-ctr to drop k8s-w1's pod route")
    assert curl(native, "curl-pod", native.pod_ip("webpod-2")).returncode != 0
    # pods on the stopped node still talk among themselves and to their node
    assert native.run("webpod-2", "ping", "-c", "1", "-W", "2", "192.168.10.101",
                      check=False).returncode == 0
    after = etcd_keys(native)
    assert f"cilium/state/ip/v1/default/{native.pod_ip('webpod-2')}" not in after
    assert [k for k in after if "/identities/" in k] == ids_before     # identities persist
    native.lab.up()                                                    # restarts the agent
    wait_for(lambda: "cilium/state/nodes/v1/default/k8s-w1" in etcd_keys(native),
             what="k8s-w1 to register again")
    assert identity_of(native, "webpod-2") == ident
    assert [k for k in etcd_keys(native) if "/identities/" in k] == ids_before
    wait_for(lambda: "Hostname: webpod-2" in curl(native, "curl-pod",
                                                  native.pod_ip("webpod-2")).stdout,
             what="cross-node traffic to k8s-w1 again")


RACE = """
import json, multiprocessing as mp, sys
from agent.kvstore import EtcdClient, EtcdIdentityStore

def alloc(url, labels, barrier, q):
    store = EtcdIdentityStore(EtcdClient([url]))
    barrier.wait()
    q.put((labels, store.allocate(labels)[0]))

url, tag = sys.argv[1], sys.argv[2]
sets = [("k8s:app=race-" + tag,)] * 4 + [("k8s:app=race-%s-%d" % (tag, i),) for i in range(6)]
barrier, q = mp.Barrier(len(sets)), mp.Queue()
procs = [mp.Process(target=alloc, args=(url, s, barrier, q)) for s in sets]
[p.start() for p in procs]
out = [q.get(timeout=60) for _ in procs]
[p.join() for p in procs]
print(json.dumps(out))
"""


def test_concurrent_identity_allocation_is_race_free(native):
    import json
    url = native.lab.load()["etcd"]["url"]
    out = json.loads(native.py("k8s-ctr", RACE, url, str(os.getpid()), timeout=120).stdout)
    same = {ident for labels, ident in out if len(labels[0].split("-")) == 2}
    assert len(same) == 1, out                       # one label set, four racers, one number
    distinct = [ident for labels, ident in out if len(labels[0].split("-")) == 3]
    assert len(set(distinct)) == len(distinct) == 6  # different sets never share a number
    assert not same & set(distinct)


def _agent_logs(lab) -> dict[str, str]:
    return {n: open(r["log"]).read() for n, r in lab.lab.load()["nodes"].items()}


def test_lab_up_twice_is_a_no_op(tunnel):
    before, logs = tunnel.lab.load(), _agent_logs(tunnel)
    tunnel.lab.up()
    assert tunnel.lab.load() == before
    for node, text in _agent_logs(tunnel).items():
        new = text[len(logs[node]):]
        assert "created for" not in new and "ops," not in new, (node, new)   # no CNI re-ADD


def test_restarted_agent_adopts_cluster_state_without_changes(tunnel):
    """Restart k8s-w2 within its lease: the startup reconcile finds routes, ipcache and
    programs as they should be (the last cluster view is in its state file) and does nothing."""
    log = tunnel.lab.load()["nodes"]["k8s-w2"]["log"]
    tunnel.lab.stop_agent("k8s-w2")
    tunnel.lab.up()
    run = open(log).read().split("starting agent for node")[-1].split("ready:")[0]
    assert "reconcile (startup)" not in run, run
    assert "Hostname: webpod-3" in curl(tunnel, "curl-pod", tunnel.pod_ip("webpod-3")).stdout


def test_tunnel_pod_mtu_leaves_room_for_vxlan(tunnel):
    link = tunnel.run("curl-pod", "ip", "-o", "link", "show", "eth0").stdout
    assert " mtu 1450 " in link
    dst = tunnel.pod_ip("webpod-3")                 # across nodes, through VXLAN
    full = tunnel.run("curl-pod", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", dst,
                      check=False)
    assert full.returncode == 0, full.stdout + full.stderr            # 1450-byte packets pass
    over = tunnel.run("curl-pod", "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1423", dst,
                      check=False)
    assert over.returncode != 0


# The seed's cross-subnet case cut to what it needs (examples/topologies/cross-subnet.yaml
# without k8s-w1 and k8s-w2, which only add compiles; tests/unit/test_topologies.py loads the
# whole file): k8s-ctr on the node LAN, k8s-w0 on 192.168.20.0/24 behind the router.
CROSS_SUBNET = """routingMode: native
kvstoreLeaseTTL: 10
etcd: k8s-ctr
segments: {lan: 192.168.10.0/24, lan2: 192.168.20.0/24, ext: 203.0.113.0/24}
router:
  name: k8s-rtr
  addresses: {lan: 192.168.10.200, lan2: 192.168.20.200, ext: 203.0.113.254}
nodes:
  - {name: k8s-ctr, segment: lan, ip: 192.168.10.100, podCIDR: 172.20.0.0/24}
  - {name: k8s-w0, segment: lan2, ip: 192.168.20.100, podCIDR: 172.20.3.0/24}
hosts:
  - {name: ext, segment: ext, ip: 203.0.113.10}
"""


def test_cross_subnet_native_fails_tunnel_works(privileged, tmp_path):
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    copy_manifests(mdir, node="k8s-ctr")          # every pod on the LAN side, but webpod-0
    (mdir / "webpod-0.yaml").write_text((mdir / "webpod-2.yaml").read_text()
                                        .replace("webpod-2", "webpod-0")
                                        .replace("nodeName: k8s-ctr", "nodeName: k8s-w0"))
    topo = tmp_path / "cross-subnet.yaml"
    topo.write_text(CROSS_SUBNET)
    with built_lab(_name("x"), mdir, str(topo), "native") as lab:
        # positive controls: webpod-0 itself is fine (its own node reaches it), and curl-pod
        # reaches a pod of its own node
        assert "Hostname: webpod-0" in curl(lab, "k8s-w0", lab.pod_ip("webpod-0")).stdout
        assert "Hostname: webpod-1" in curl(lab, "curl-pod", lab.pod_ip("webpod-1")).stdout
        # no route to k8s-w0's pod CIDR: the router gets the packets and knows no pod network
        assert "172.20.3.0/24" not in lab.run("k8s-ctr", "ip", "route").stdout
        assert "172.20." not in lab.run("k8s-rtr", "ip", "route").stdout
        assert curl(lab, "curl-pod", lab.pod_ip("webpod-0")).returncode != 0
        assert lab.run("webpod-0", "ping", "-c", "1", "-W", "1", lab.pod_ip("webpod-1"),
                       check=False).returncode != 0
    with built_lab(_name("y"), mdir, str(topo), "tunnel") as lab:
        assert "Hostname: webpod-0" in curl(lab, "curl-pod", lab.pod_ip("webpod-0")).stdout
        assert f"RemoteAddr: {lab.pod_ip('webpod-0')}:" in curl(lab, "webpod-0",
                                                                  lab.pod_ip("webpod-1")).stdout


def test_ipcache_filled_from_kvstore_and_router_ext_reachable(native):
    from datapath import abi
    ipc = {abi.IpcacheKey.from_bytes(k): abi.RemoteEndpointInfo.from_bytes(v)
           for k, v in native.pinned_map("cilium_ipcache", "k8s-ctr").items()}
    by_ip = {(abi.be32_to_ip4(k.ip4), k.lpm_key_prefixlen - abi.IPCACHE_PREFIX_BASE): v
             for k, v in ipc.items()}
    remote = by_ip[(native.pod_ip("webpod-2"), 32)]
    assert remote.sec_identity == identity_of(native, "webpod-2")
    assert abi.be32_to_ip4(remote.tunnel_endpoint) == "192.168.10.101"
    local = by_ip[(native.pod_ip("curl-pod"), 32)]
    assert local.sec_identity == identity_of(native, "curl-pod") and local.tunnel_endpoint == 0
    assert by_ip[("192.168.10.102", 32)].sec_identity == abi.IDENTITY_REMOTE_NODE
    assert by_ip[("192.168.10.100", 32)].sec_identity == abi.IDENTITY_HOST
    assert by_ip[("0.0.0.0", 0)].sec_identity == abi.IDENTITY_WORLD
    # the router and the external host are lab members too
    assert "172.20." not in native.run("k8s-rtr", "ip", "route").stdout   # knows no pod CIDR
    assert native.run("ext", "ping", "-c", "1", "-W", "2", "192.168.10.101",
                      check=False).returncode == 0
    metrics = native.run("ext", "curl", "-s", "-m", "5", "http://192.168.10.102:9962/metrics")
    assert "cilium_forward_count_total" in metrics.stdout                 # <node IP>:9962


def service_vip(lab, name="default/webpod") -> str:
    for s in lab.client().get("/v1/service"):
        if s["service"] == name:
            return s["frontend"].split(":")[0]
    raise AssertionError(f"no service {name}")


def test_clusterip_spreads_over_backends_on_every_node(cluster):
    import json
    from collections import Counter
    vip = service_vip(cluster)
    # every agent programs the same ClusterIP and all three backends
    for node in ("k8s-ctr", "k8s-w1", "k8s-w2"):
        (svc,) = [s for s in cluster.client(node).get("/v1/service")
                  if s["service"] == "default/webpod"]
        assert svc["frontend"] == f"{vip}:80/TCP" and len(svc["backends"]) == 3
    out = cluster.run("curl-pod", "sh", "-c",
                      f"for i in $(seq 300); do curl -s -m 5 http://{vip}/api; done",
                      timeout=180).stdout
    answers = [json.loads(line) for line in out.replace("}{", "}\n{").splitlines() if line]
    assert len(answers) == 300
    spread = Counter(a["hostname"] for a in answers)
    assert set(spread) == {"webpod-1", "webpod-2", "webpod-3"}
    assert min(spread.values()) >= 60, spread                      # each >= 20%
    assert {a["remoteAddr"].split(":")[0] for a in answers} == {cluster.pod_ip("curl-pod")}


def test_hairpin_and_service_without_backends(native):
    vip = service_vip(native)
    out = native.run("webpod-2", "sh", "-c",
                     f"for i in $(seq 20); do curl -s -m 5 http://{vip}/api; echo; done",
                     timeout=120).stdout
    assert out.count('"hostname"') == 20 and "webpod-2" in out    # reached itself too
    path = native.manifests / "nobody.yaml"
    path.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: nobody, namespace: default}\n"
                    "spec:\n  selector: {app: nobody}\n  ports: [{port: 8080}]\n")
    try:
        empty = wait_for(lambda: service_vip(native, "default/nobody")
                         if any(s["service"] == "default/nobody"
                                for s in native.client().get("/v1/service")) else None,
                         what="the empty service")
        before = _drops(native)
        assert native.run("curl-pod", "curl", "-s", "-m", "2", f"http://{empty}:8080/",
                          check=False).returncode != 0
        assert _drops(native) > before
    finally:
        path.unlink()


def _drops(lab) -> float:
    return lab.metric("cilium_drop_count_total", reason="Service backend not found")


def test_client_ip_affinity_keeps_a_client_on_one_backend(native):
    import json
    path = native.manifests / "sticky.yaml"
    path.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: default}\n"
                    "spec:\n  selector: {app: webpod}\n  sessionAffinity: ClientIP\n"
                    "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"
                    "  ports: [{port: 81, targetPort: http}]\n")
    try:
        wait_for(lambda: any(s["service"] == "default/sticky" and len(s["backends"]) == 3
                             for s in native.client().get("/v1/service")), what="sticky service")
        vip = service_vip(native, "default/sticky")
        out = native.run("curl-pod", "sh", "-c",
                         f"for i in $(seq 40); do curl -s -m 5 http://{vip}:81/api; echo; done",
                         timeout=120).stdout
        hosts = {json.loads(line)["hostname"] for line in out.splitlines() if line}
        assert len(hosts) == 1, hosts                   # 40 connections, one backend
    finally:
        path.unlink()


KEEPALIVE = """
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], 80, timeout=10)
for line in sys.stdin:
    c.request("GET", "/api")
    print(json.loads(c.getresponse().read())["hostname"], flush=True)
"""


def assert_new_flows_avoid(lab, vip, victim, n):
    """n new connections from curl-pod to the service all succeed and none reaches victim."""
    out = lab.run("curl-pod", "sh", "-c",
                  f"for i in $(seq {n}); do curl -s -m 5 http://{vip}/api; echo; done",
                  timeout=120).stdout
    hosts = [line for line in out.splitlines() if line]
    assert len(hosts) == n and not any(f'"{victim}"' in h for h in hosts)


def test_terminating_backend_finishes_its_connections_and_gets_no_new_ones(native):
    vip = service_vip(native)
    cli = subprocess.Popen(netns.cmd(native.ns("curl-pod"), sys.executable, "-c", KEEPALIVE, vip),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask():
        cli.stdin.write("go\n")
        cli.stdin.flush()
        return cli.stdout.readline().strip()

    path = None
    try:
        victim = ask()
        assert victim in ("webpod-1", "webpod-2", "webpod-3")
        path = native.manifests / f"{victim}.yaml"
        original = path.read_text()
        path.write_text(original.replace("  name: " + victim,
                                         "  name: " + victim + "\n  deletionTimestamp: "
                                         "'2026-11-24T00:00:00Z'"))
        wait_for(lambda: all(any(b["pod"] == f"default/{victim}" and b["state"] == "terminating"
                                 for b in s["backends"])
                             for s in native.client().get("/v1/service")
                             if s["service"] == "default/webpod"),
                 what=f"{victim} to become a terminating backend")
        assert ask() == victim                    # the established connection carries on
        assert_new_flows_avoid(native, vip, victim, 60)
    finally:
        cli.stdin.close()
        cli.wait(timeout=10)
        if path:
            path.write_text(original)
            wait_for(lambda: all(len([b for b in s["backends"] if b["state"] == "active"]) == 3
                                 for node in ("k8s-ctr", "k8s-w1", "k8s-w2")
                                 for s in native.client(node).get("/v1/service")
                                 if s["service"] == "default/webpod"),
                     what="all three backends active again on every node")


def test_conntrack_and_lb_tables_are_visible_and_gc_runs(native):
    vip = service_vip(native)
    native.run("curl-pod", "curl", "-s", "-m", "2", f"http://{vip}/")
    node = native.node("k8s-ctr")

    def cli(*args):
        p = subprocess.run(netns.cmd(node["netns"], sys.executable, "-m", "agent.cli", "--socket",
                                     node["socket"], *args), capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return p.stdout

    ct = cli("bpf", "ct", "list")
    assert f"-> {vip}:80" in ct and "TCP" in ct
    lb = cli("bpf", "lb", "list")
    assert f"{vip}:80/6" in lb and "[3 backends]" in lb
    assert f"{vip}:80/TCP" in cli("service", "list")
    wait_for(lambda: "cilium_datapath_conntrack_gc_runs_total{" in native.metrics(), timeout=30,
             what="a conntrack GC run (every 10 s in the lab)")
    text = native.metrics()
    assert 'cilium_datapath_conntrack_gc_entries{family="ipv4",protocol="TCP",status="alive"}' \
        in text
    assert "_created" not in text
    pressure = [line for line in text.splitlines()
                if line.startswith('cilium_bpf_map_pressure{map_name="cilium_lb4_services_v2"}')]
    assert pressure and float(pressure[0].split()[-1]) > 0
    adds = [line for line in text.splitlines()
            if line.startswith('cilium_services_events_total{action="add"}')]
    assert adds and float(adds[0].split()[-1]) >= 1


UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for _ in range(10):
    s.sendto(b"hello-udp", (sys.argv[1], int(sys.argv[2])))
    try:
        data, addr = s.recvfrom(2048)
        print(addr[0], addr[1], data.decode()); break
    except socket.timeout:
        continue
"""


REFUSED = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
try:
    s.send(b"anyone?"); s.recv(100); print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""


def test_udp_service_from_an_endpointslice(native):
    from .traffic import UDP_ECHO
    target = native.pod_ip("webpod-2")
    path = native.manifests / "dns.yaml"
    path.write_text(external_service("dns", "10.96.0.53", 53, 5353, target, "UDP"))
    srv = None
    try:
        wait_for(lambda: any(s["service"] == "default/dns" and s["backends"]
                             for s in native.client().get("/v1/service")), what="dns service")
        srv = subprocess.Popen(netns.cmd(native.ns("webpod-2"), sys.executable, "-c", UDP_ECHO,
                                         "5353"), stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        out = native.py("curl-pod", UDP_ASK, "10.96.0.53", "53").stdout.split()
        # the answer comes back from the frontend, and the server saw the client's pod IP
        assert out[:2] == ["10.96.0.53", "53"], out
        assert out[2].startswith(f"{native.pod_ip('curl-pod')}:") and out[3] == "hello-udp"
        srv.wait(timeout=20)
        # nothing listens now: the backend's port-unreachable reaches the client's socket only
        # if it is translated back to the frontend (outer source and quoted destination)
        refused = native.py("curl-pod", REFUSED, "10.96.0.53", "53").stdout.strip()
        assert refused == "refused", refused
    finally:
        if srv and srv.poll() is None:
            srv.kill()
        path.unlink()


def test_pods_on_every_node_reach_the_outside_with_their_node_address(cluster):
    """Masquerade in both routing modes: every pod on every node reaches ext over TCP, UDP and
    ping, ext sees the pod's node address each time, and every reply finds its pod."""
    import json
    from .traffic import UDP_ECHO, ping_seen_from
    ext, node_ip = "203.0.113.10", {n: cluster.node(n)["ip"] for n in ("k8s-ctr", "k8s-w1",
                                                                       "k8s-w2")}
    srv = subprocess.Popen(netns.cmd(cluster.ns("ext"), sys.executable, "-m", "agent.cli",
                                     "whoami", "--port", "8080"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    udp = subprocess.Popen(netns.cmd(cluster.ns("ext"), sys.executable, "-c", UDP_ECHO, "9053",
                                     "40"), stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: ":8080" in cluster.run("ext", "ss", "-Htln").stdout, what="ext server")
        wait_for(lambda: ":9053" in cluster.run("ext", "ss", "-Hlun").stdout, what="ext UDP")
        for pod, node in PODS.items():
            ans = json.loads(cluster.run(pod, "curl", "-s", "-m", "3",
                                         f"http://{ext}:8080/api").stdout)
            assert ans["remoteAddr"].split(":")[0] == node_ip[node], (pod, ans)
            out = cluster.py(pod, UDP_ASK, ext, "9053").stdout.split()
            assert out[:2] == [ext, "9053"], (pod, out)                  # the reply came back
            assert out[2].split(":")[0] == node_ip[node] and out[3] == "hello-udp", (pod, out)
            assert ping_seen_from(cluster, "ext", pod, ext) == (True, node_ip[node]), pod
        # a node's status says how it masquerades
        status = cluster.client("k8s-w2").get("/v1/status")["masquerading"]
        assert status["enabled"] and status["devices"] == ["eth1"]
    finally:
        srv.kill()
        srv.wait(timeout=10)
        udp.kill()
        udp.wait(timeout=10)


WHOAMI_PORT = 8181


def test_pod_to_node_traffic_is_never_masqueraded(cluster):
    """With masquerade on, a pod that talks to its own node or to another node (a server in
    the node's namespace) keeps its pod address."""
    import json
    nodes = ("k8s-ctr", "k8s-w1", "k8s-w2")
    servers = [subprocess.Popen(netns.cmd(cluster.ns(n), sys.executable, "-m", "agent.cli",
                                          "whoami", "--port", str(WHOAMI_PORT)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for n in nodes]
    try:
        for n in nodes:
            wait_for(lambda: f":{WHOAMI_PORT}" in cluster.run(n, "ss", "-Htln").stdout,
                     what=f"a server on {n}")
        for pod, home in PODS.items():
            for n in nodes:
                got = cluster.run(pod, "curl", "-s", "-m", "3",
                                  f"http://{cluster.node(n)['ip']}:{WHOAMI_PORT}/api",
                                  check=False).stdout
                assert got, f"{pod} (on {home}) -> {n}: no answer"
                assert json.loads(got)["remoteAddr"].split(":")[0] == cluster.pod_ip(pod), \
                    (pod, home, n, got)
    finally:
        for p in servers:
            p.kill()
            p.wait(timeout=10)


def test_the_agents_add_no_iptables_or_nftables_rule(native):
    for node in ("k8s-ctr", "k8s-w1", "k8s-w2"):
        assert native.run(node, "nft", "list", "ruleset").stdout.strip() == ""
        rules = native.run(node, "iptables-save").stdout
        assert not [line for line in rules.splitlines() if line.startswith("-A")], rules


NODE_IPS = {"k8s-ctr": "192.168.10.100", "k8s-w1": "192.168.10.101", "k8s-w2": "192.168.10.102"}
WEB_NODE = {"webpod-1": "k8s-ctr", "webpod-2": "k8s-w1", "webpod-3": "k8s-w2"}
EXT_IP = "203.0.113.10"
# ext asks a node's NodePort from a fixed source port (or an ephemeral one with 0): one JSON line
# per request, a fresh connection each time
EXT_ASK = """
import json, socket, sys
host, port, sport, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for _ in range(n):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    if sport: s.bind(("0.0.0.0", sport))
    try:
        s.connect((host, port))
        s.sendall(b"GET /api HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096): data += chunk
        print(json.dumps(json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])), flush=True)
    except OSError as e:
        print(json.dumps({"error": str(e)}), flush=True)
    finally:
        s.close()
"""


def _nodeport_service(lab, name, node_port, extra="", selector="{app: webpod}"):
    path = lab.manifests / f"{name}.yaml"
    path.write_text(f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
                    f"spec:\n  type: NodePort\n  selector: {selector}\n{extra}"
                    f"  ports: [{{port: 80, targetPort: http, nodePort: {node_port}}}]\n")
    return path


def _wait_service(lab, name, kind="NodePort", backends=3):
    wait_for(lambda: all(any(s["service"] == f"default/{name}" and s["type"] == kind and
                             len(s["backends"]) == backends
                             for s in lab.client(n).get("/v1/service")) for n in NODE_IPS),
             what=f"{kind} frontends of {name} on every node")


def ext_ask(lab, host, port, n=1, sport=0) -> list[dict]:
    import json
    out = lab.py("ext", EXT_ASK, host, str(port), str(sport), str(n), timeout=30 + 6 * n).stdout
    return [json.loads(line) for line in out.splitlines() if line]


def test_nodeport_answers_from_outside_on_every_node(cluster):
    """eTP Cluster: every node IP serves; a backend on the node that was asked sees ext's
    address, one on another node sees that node's address (SNAT), and replies come back."""
    from collections import Counter
    path = _nodeport_service(cluster, "web-np", 30080)
    try:
        _wait_service(cluster, "web-np")
        seen = Counter()
        for node, ip in NODE_IPS.items():
            for ans in ext_ask(cluster, ip, 30080, n=12):
                assert "error" not in ans, (node, ans)
                host, peer = ans["hostname"], ans["remoteAddr"].split(":")[0]
                want = EXT_IP if WEB_NODE[host] == node else ip
                assert peer == want, (node, ans)
                seen[host] += 1
        assert set(seen) == set(WEB), seen
    finally:
        path.unlink()


def test_external_traffic_policy_local_keeps_the_client_and_drops_without_a_backend(native):
    # every node has one local webpod: it serves, and sees ext's own address
    local = _nodeport_service(native, "web-local", 30081, "  externalTrafficPolicy: Local\n")
    # only webpod-2 (on k8s-w1) backs this one: k8s-ctr has no local backend and drops
    only = native.manifests / "only-w1.yaml"
    only.write_text(external_service("only-w1", "10.96.0.82", 80, 80,
                                     native.pod_ip("webpod-2")).replace(
        "spec:\n", "spec:\n  type: NodePort\n  externalTrafficPolicy: Local\n", 1).replace(
        "targetPort: 80,", "targetPort: 80, nodePort: 30082,").replace(
        "  - addresses:", "  - nodeName: k8s-w1\n    addresses:"))
    try:
        _wait_service(native, "web-local", backends=1)
        for node, ip in NODE_IPS.items():
            answers = ext_ask(native, ip, 30081, n=5)
            assert {a.get("hostname") for a in answers} == \
                {p for p, n in WEB_NODE.items() if n == node}, (node, answers)
            assert {a["remoteAddr"].split(":")[0] for a in answers} == {EXT_IP}
        wait_for(lambda: any(s["service"] == "default/only-w1" and s["type"] == "NodePort"
                             for s in native.client().get("/v1/service")), what="only-w1")
        (ans,) = ext_ask(native, NODE_IPS["k8s-w1"], 30082)
        assert ans.get("hostname") == "webpod-2" and ans["remoteAddr"].startswith(EXT_IP + ":")
        before = _drops(native)
        (ans,) = ext_ask(native, NODE_IPS["k8s-ctr"], 30082)
        assert "error" in ans
        assert _drops(native) > before
    finally:
        local.unlink()
        only.unlink()


def test_maglev_sends_one_flow_to_one_backend_from_every_node(native):
    """The same 5-tuple (bar the node's address, which Maglev leaves out) picks the same backend
    on all three nodes, each with its own conntrack, and different flows spread."""
    path = _nodeport_service(native, "web-maglev", 30083)
    try:
        _wait_service(native, "web-maglev")
        picks = {}
        for sport in range(41000, 41010):
            hosts = {ext_ask(native, ip, 30083, sport=sport)[0].get("hostname")
                     for ip in NODE_IPS.values()}
            assert len(hosts) == 1 and None not in hosts, (sport, hosts)
            picks[sport] = hosts.pop()
        assert len(set(picks.values())) >= 2, picks
    finally:
        path.unlink()


def test_removed_backend_gets_no_new_flows_and_other_connections_carry_on(native):
    vip = service_vip(native)
    clients = [subprocess.Popen(netns.cmd(native.ns("curl-pod"), sys.executable, "-c", KEEPALIVE,
                                          vip), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True) for _ in range(8)]

    def ask(c):
        c.stdin.write("go\n")
        c.stdin.flush()
        return c.stdout.readline().strip()

    path = original = None
    try:
        first = [ask(c) for c in clients]
        assert len(set(first)) >= 2, first
        victim = first[0]
        path = native.manifests / f"{victim}.yaml"
        original = path.read_text()
        path.write_text(original + "status:\n  conditions: [{type: Ready, status: 'False'}]\n")
        wait_for(lambda: all(len(s["backends"]) == 2 and
                             all(b["pod"] != f"default/{victim}" for b in s["backends"])
                             for n in NODE_IPS for s in native.client(n).get("/v1/service")
                             if s["service"] == "default/webpod"),
                 what=f"{victim} to leave the service on every node")
        for c, was in zip(clients, first):
            if was != victim:
                assert ask(c) == was          # established connections to the others go on
        assert_new_flows_avoid(native, vip, victim, 30)
    finally:
        for c in clients:
            c.stdin.close()
            c.wait(timeout=10)
        if path and original:
            path.write_text(original)
            wait_for(lambda: all(len(s["backends"]) == 3
                                 for n in NODE_IPS for s in native.client(n).get("/v1/service")
                                 if s["service"] == "default/webpod"),
                     what="all three backends again on every node")


def _xdp_tx(lab, node) -> int:
    stats = lab.run(node, "ethtool", "-S", "eth1").stdout
    return sum(int(line.split(":")[1]) for line in stats.splitlines()
               if line.strip().startswith("rx_queue_") and line.strip().split(":")[0]
               .endswith("_xdp_tx"))


def test_xdp_acceleration_sends_nodeport_flows_to_remote_backends_without_the_stack(native):
    import json
    for node in NODE_IPS:
        link = json.loads(native.run(node, "ip", "-j", "-d", "link", "show", "eth1").stdout)[0]
        assert link["xdp"]["prog"]["name"] == "cil_xdp_entry", (node, link.get("xdp"))
    path = _nodeport_service(native, "web-xdp", 30084)
    try:
        _wait_service(native, "web-xdp")
        before = _xdp_tx(native, "k8s-ctr")
        answers = ext_ask(native, NODE_IPS["k8s-ctr"], 30084, n=12)
        assert all("error" not in a for a in answers), answers
        remote = [a for a in answers if WEB_NODE[a["hostname"]] != "k8s-ctr"]
        assert remote and all(a["remoteAddr"].startswith(NODE_IPS["k8s-ctr"] + ":")
                              for a in remote)
        # the requests to backends on other nodes went back out of eth1 from XDP (XDP_TX)
        assert _xdp_tx(native, "k8s-ctr") > before
    finally:
        path.unlink()


def test_pods_reach_every_nodes_nodeport_and_see_the_frontend_answer(cluster):
    """curl-pod (k8s-ctr) -> each node's NodePort with externalTrafficPolicy Local: another
    node takes it as external (its own webpod answers), its own node as internal (any backend,
    as Cilium); the server sees the pod's address, and the reply comes from the frontend (in
    tunnel mode it crosses VXLAN, so it is translated before the tunnel)."""
    import json
    path = _nodeport_service(cluster, "web-pods", 30085, "  externalTrafficPolicy: Local\n")
    try:
        _wait_service(cluster, "web-pods", backends=1)
        for node, ip in NODE_IPS.items():
            out = cluster.run("curl-pod", "curl", "-s", "-m", "5", f"http://{ip}:30085/api")
            ans = json.loads(out.stdout)
            assert node == "k8s-ctr" or WEB_NODE[ans["hostname"]] == node, (node, ans)
            assert ans["remoteAddr"].split(":")[0] == cluster.pod_ip("curl-pod"), (node, ans)
    finally:
        path.unlink()


# ---------------------------------------------------------------- identity policy across nodes

WEB_POLICY = "policy-cnp-default-web-from-curl.yaml"


def _web_from_curl(*entities: str) -> str:
    """A CNP: webpod pods take ingress from curl pods on 80/TCP only (plus `entities`)."""
    import yaml
    ingress = [{"fromEndpoints": [{"matchLabels": {"app": "curl"}}],
                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]
    if entities:
        ingress.append({"fromEntities": list(entities)})
    return yaml.safe_dump({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                           "metadata": {"name": "web-from-curl", "namespace": "default"},
                           "spec": {"endpointSelector": {"matchLabels": {"app": "webpod"}},
                                    "ingress": ingress}}, sort_keys=False)


def _expect_matrix(pl: PolicyLab, *reaches, what: str, timeout: float = 20) -> None:
    """Probe every source -> target on 80/TCP (each probe bounded to 1 s) until every matrix
    matches, polled with wait_for; on timeout raise with the matrices and the agents' view."""
    sources = tuple(dict.fromkeys(s for r in reaches for s in r.sources))
    targets = tuple(dict.fromkeys(t for r in reaches for t in r.targets))
    last: dict = {}

    def ok():
        last.clear()
        last.update(pl.probe(sources, targets, (TCP80,), timeout=1.0)[TCP80])
        return not any(mismatches(r, last) for r in reaches)
    try:
        wait_for(ok, timeout=timeout, interval=0.3, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: still wrong after {timeout:.0f}s\n"
                             + "\n\n".join(render(r, last) for r in reaches) + "\n\n"
                             + pl.diagnostics(WEB)) from None


def test_cnp_across_nodes_by_vni_or_ipcache(cluster):
    """A CNP selecting the webpod pods, ingress from curl pods on 80/TCP only, in both routing
    modes (the peer's identity comes from the VNI in tunnel mode, from the ipcache in native):
    curl-pod reaches every webpod by pod IP and through the ClusterIP; webpod-1 does not reach
    the other webpods; another node's host (remote-node) is shut out while a pod's own node gets
    in (allowLocalhost); fromEntities remote-node lets the other nodes in."""
    import json
    from agent.runtime import _bin
    pl = PolicyLab(cluster, _bin("datapath"))
    path = cluster.manifests / WEB_POLICY
    web = ("webpod-1", "webpod-2", "webpod-3")
    hosts = ("k8s-ctr", "k8s-w1")

    def curl_pod():
        return R(TCP80, sources=("curl-pod",), targets=web + ("svc:webpod",))

    def webpod_1(allowed: bool):         # not through the service: it may pick webpod-1 itself
        return R(TCP80, sources=("webpod-1",), targets=("webpod-2", "webpod-3"), default=allowed)

    def nodes(remote: bool):
        return R(TCP80, sources=hosts, targets=("webpod-1", "webpod-2"), default=remote) \
            .allow("k8s-ctr", "webpod-1").allow("k8s-w1", "webpod-2")
    everything = (curl_pod(), webpod_1(True), nodes(True))
    _expect_matrix(pl, *everything, what="no policy: everything reachable")
    try:
        write_atomic(path, _web_from_curl())
        _expect_matrix(pl, curl_pod(), webpod_1(False), nodes(False),
                       what="webpods from curl pods on 80/TCP: webpod-1 and remote nodes denied")
        # the ClusterIP, a few flows, so more than one backend answers: all allowed
        vip = service_vip(cluster)
        out = cluster.run("curl-pod", "sh", "-c", f"for i in $(seq 9); do curl -s -m 2 "
                          f"http://{vip}/api; echo; done", timeout=60).stdout
        answers = [json.loads(line)["hostname"] for line in out.splitlines() if line.strip()]
        assert len(answers) == 9 and len(set(answers)) >= 2, out
        # webpod-1's policy map on k8s-ctr, through the lab's public interface
        (ep,) = [e for e in cluster.client("k8s-ctr").get("/v1/endpoint")
                 if e["pod"] == "webpod-1"]
        p = subprocess.run([*_bin("datapath"), "lab", "exec", "--name", cluster.lab.name,
                            "k8s-ctr", "--", "datapath", "bpf", "policy", "get", str(ep["id"]),
                            "-o", "json"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
        rows = json.loads(p.stdout)
        curl_id = identity_of(cluster, "curl-pod")
        assert any((r["policy"], r["direction"], r["identity"], r["port"]) ==
                   ("Allow", "Ingress", curl_id, "80/TCP") for r in rows), rows
        # other nodes' hosts allowed too (remote-node); webpod-1 still denied
        write_atomic(path, _web_from_curl("remote-node"))
        _expect_matrix(pl, curl_pod(), webpod_1(False), nodes(True),
                       what="+ fromEntities remote-node: every node's host gets in")
    finally:
        path.unlink(missing_ok=True)
        _expect_matrix(pl, *everything, what="policy deleted: everything reachable again")


DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "datapath-dashboard.json"
SEED_QUERIES = ("cilium_bpf_map_ops_total", "cilium_datapath_packets_total",
                "cilium_policy_regeneration_time_stats_seconds", "cilium_endpoint_state_count")


def test_lab_prometheus_scrapes_every_agent_and_its_series_move(native):
    """`datapath lab up --prometheus` as a user runs it, on the running lab: a real Prometheus
    scrapes all three agents; the forward, drop and service series move with traffic and a new
    service; the seed's four queries and every dashboard query return data (a policy the
    webpods enforce gives the policy verdict panel its data)."""
    from agent.lab import prometheus as promlab
    dp = _bin("datapath")
    name = native.lab.name
    up = subprocess.run([*dp, "lab", "up", "--name", name, "--prometheus"], capture_output=True,
                        text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    rec = native.lab.load()["prometheus"]
    assert f"prometheus: {rec['url']}" in up.stdout
    status = subprocess.run([*dp, "lab", "status", "--name", name], capture_output=True,
                            text=True, timeout=30)
    assert f"prometheus: {rec['url']}" in status.stdout
    assert _alive(rec["pid"])

    def q(expr):
        return promlab.query(rec["netns"], rec["url"], expr)

    def total(metric):
        return sum(float(r["value"][1]) for r in q(f"sum({metric})"))

    wait_for(lambda: {r["metric"]["node"] for r in q('up{job="datapath-agent"} == 1')}
             == {"k8s-ctr", "k8s-w1", "k8s-w2"}, timeout=30, what="every agent scraped and up")
    before = {m: total(m) for m in ("cilium_forward_count_total", "cilium_drop_count_total",
                                    "cilium_services_events_total")}
    vip = service_vip(native)
    native.run("curl-pod", "sh", "-c", f"for i in $(seq 10); do curl -s -m 5 http://{vip}/; done",
               timeout=120)
    # a spoofed source: dropped and counted ("Invalid source ip")
    spoofed_ping(native, "curl-pod", native.pod_ip("webpod-2"))
    path = native.manifests / "prom-probe.yaml"
    path.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: prom-probe, namespace: "
                    "default}\nspec:\n  selector: {app: webpod}\n  ports: [{port: 8081}]\n")
    try:
        wait_for(lambda: all(total(m) > v for m, v in before.items()), timeout=40,
                 what=f"forward, drop and service series above {before}")
    finally:
        path.unlink()
    for expr in SEED_QUERIES:
        assert wait_for(lambda: q(expr), timeout=30, what=f"data for {expr}")
    # a policy the webpods enforce (curl-pod still allowed): policy verdicts for the dashboard
    policy = native.manifests / "prom-policy.yaml"
    policy.write_text(ALLOW_CURL_TO_WEBPOD_80.replace("observe-deny", "prom-policy"))
    try:
        def verdicts():
            native.run("curl-pod", "curl", "-s", "-m", "5", f"http://{vip}/", check=False)
            return total("hubble_policy_verdicts_total") > 0
        wait_for(verdicts, timeout=60, interval=2, what="policy verdicts in Prometheus")
        # every query of the shipped dashboard parses and returns data (promtool, as a user
        # checks)
        exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
                 for t in p["targets"]]
        assert len(exprs) >= 10
        for expr in exprs:
            def answered(expr=expr):
                out = netns.run(rec["netns"], "promtool", "query", "instant", rec["url"],
                                expr, check=False)
                assert out.returncode == 0, f"{expr}: {out.stderr}"
                return out.stdout.strip()
            wait_for(answered, timeout=30, what=f"data for the dashboard's {expr}")
    finally:
        policy.unlink()


def test_agent_health_cluster_health_and_api_metrics(native):
    """`datapath status` shows cilium's "Cluster health" line; the agent-health series a
    Prometheus user watches (API timings, process, unreachable nodes) are served."""
    def status(node):
        out = subprocess.run([*_bin("datapath"), "--socket", native.lab.resolve(node)[1],
                              "status"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    for node in ("k8s-ctr", "k8s-w1", "k8s-w2"):
        # every node knows the others (etcd) and has probed them since
        wait_for(lambda: re.search(r"^Cluster health:\s+3/3 reachable$", status(node), re.M),
                 timeout=20, what=f"{node}: Cluster health 3/3 reachable")
        assert native.metric("cilium_unreachable_nodes", node) == 0
        assert native.metric("cilium_agent_api_process_time_seconds_count", node,
                             path="/v1/status", method="GET", return_code="200") >= 1
        assert native.metric("cilium_process_resident_memory_bytes", node) > 0


def connectivity_test(lab, *args: str) -> subprocess.CompletedProcess:
    """`datapath connectivity test` on the lab, as a user runs it."""
    return subprocess.run([*_bin("datapath"), "connectivity", "test", "--name", lab.lab.name,
                           *args], capture_output=True, text=True, timeout=600)


def _statuses(out: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r"^\[(PASS|FAIL|SKIP)\] (\S+)", out, re.M)}


def test_connectivity_test_passes_and_leaves_the_lab_as_it_found_it(cluster):
    pods = set(cluster.lab.load()["pods"])
    r = connectivity_test(cluster)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^19 checks: 19 passed, 0 failed, 0 skipped$", r.stdout, re.M), r.stdout
    names = _statuses(r.stdout)
    for name in ("pod-to-pod/same-node", "pod-to-pod/other-node", "pod-to-service/cluster-ip",
                 "pod-to-service/node-port/k8s-w2", "outside-to-service/node-port/k8s-ctr",
                 "pod-to-service/load-balancer", "pod-to-world",
                 "policy/deny-all-ingress/pod-to-pod",
                 "policy/allow-from-namespace/other-namespace"):
        assert names.get(name) == "PASS", name
    assert set(cluster.lab.load()["pods"]) == pods
    assert not list(cluster.manifests.glob("zz-connectivity-test*"))


def test_connectivity_test_names_what_broke(native):
    """A route deleted on purpose, then a backend killed: the run fails (exit 1) and names the
    checks that broke; the others still pass. Each broken check waits out its whole deadline
    before it fails: 5 s here rather than the default 10 (a working path answers in well under
    one)."""
    node_ns = native.ns("k8s-ctr")
    route = next(line for line in netns.ip(node_ns, "route", "show").stdout.splitlines()
                 if line.startswith("172.20.1.0/24 "))
    netns.ip(node_ns, "route", "del", "172.20.1.0/24")
    try:
        r = connectivity_test(native, "--keep", "--deadline", "5", "--test", "^pod-to-pod/")
    finally:
        netns.ip(node_ns, "route", "replace", *route.split())
    assert r.returncode == 1, r.stdout + r.stderr
    assert _statuses(r.stdout) == {"pod-to-pod/same-node": "PASS",
                                   "pod-to-pod/other-node": "FAIL"}, r.stdout
    assert re.search(r"^FAILED: pod-to-pod/other-node$", r.stdout, re.M)
    # the backend of echo-other-node killed; the kept deployment is reused as it is
    from agent.runtime import _kill
    _kill(native.lab.load()["pods"]["cilium-test/echo-other-node"]["pid"])
    r = connectivity_test(native, "--deadline", "5", "--test",
                          "^pod-to-(pod|service/cluster-ip)")
    assert r.returncode == 1, r.stdout + r.stderr
    assert _statuses(r.stdout) == {"pod-to-pod/same-node": "PASS",
                                   "pod-to-pod/other-node": "FAIL",
                                   "pod-to-service/cluster-ip": "PASS",
                                   "pod-to-service/cluster-ip-other-node": "FAIL"}, r.stdout
    assert "connection refused" in r.stdout
    assert not any(k.startswith("cilium-test") for k in native.lab.load()["pods"])


def test_connectivity_perf_measures_every_path(native):
    """`datapath connectivity perf`: iperf3 and request/response on each path, as a table (and
    JSON); the servers it started in the pods are gone afterwards."""
    r = subprocess.run([*_bin("datapath"), "connectivity", "perf", "--name", native.lab.name,
                        "--duration", "1", "-o", "json"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)
    assert [row["path"] for row in rows] == ["pod-to-pod/same-node", "pod-to-pod/other-node",
                                              "host-to-pod/same-node",
                                              "pod-to-service/cluster-ip"]
    for row in rows:
        assert row["gbps"] > 0 and row["rr"]["transactions"] > 0, row
        assert 0 < row["rr"]["p50_us"] <= row["rr"]["p90_us"] <= row["rr"]["p99_us"], row
    assert not any(k.startswith("cilium-test") for k in native.lab.load()["pods"])
    leftover = subprocess.run(["pgrep", "-f", "iperf3 -s -p 5201"], capture_output=True)
    assert leftover.returncode == 1, leftover.stdout


def test_lab_monitor_shows_one_cross_node_request_in_order(cluster):
    """Acceptance 2: one curl from curl-pod (k8s-ctr) to webpod-2 (k8s-w1) in `datapath lab
    monitor --type trace` (run as a user runs it), every node's trace points merged by time.
    With the default aggregation (medium) the SYN is seen leaving k8s-ctr (to-overlay /
    to-network) and then delivered on k8s-w1 (to-endpoint); the from-* points are Cilium's
    none level only (tests/bpf/test_trace.py shows them; switching a shared lab's agents to
    none would recompile every node twice)."""
    lab = cluster
    web2, curl_ip = lab.pod_ip("webpod-2"), lab.pod_ip("curl-pod")
    mode = lab.lab.load()["routingMode"]
    out_point, in_point = ("-> overlay", "<- overlay") if mode == "tunnel" else \
        ("-> network", "<- network")
    web2_ep = next(e["id"] for e in lab.client("k8s-w1").get("/v1/endpoint")
                   if e["pod"] == "webpod-2")

    def syn_points(port: int, seconds: int = 6) -> list[tuple[str, str]]:
        """(node, trace summary) of every lab monitor line about the SYN of one curl from
        `port`, in the order printed."""
        p = subprocess.Popen([*_bin("datapath"), "lab", "monitor", "--name", lab.lab.name,
                              "--type", "trace", "--timeout", str(seconds)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            banner = p.stderr.readline()        # every agent has said where "now" is
            assert "Press Ctrl-C to quit" in banner, banner
            r = lab.run("curl-pod", "curl", "-s", "-m", "5", "--local-port", str(port),
                        f"http://{web2}/", check=False)
            assert "Hostname: webpod-2" in r.stdout, r.stdout + r.stderr
            out, err = p.communicate(timeout=seconds + 30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err
        print(out)
        syn = f": {curl_ip}:{port} -> {web2}:80 tcp SYN"
        return [(line[1:].partition("] ")[0], line.partition("] ")[2].split(" flow ")[0])
                for line in out.splitlines() if line.endswith(syn)]

    def in_order(got, want) -> bool:
        """`want` is a subsequence of `got` (summaries compared by their start), and every
        k8s-ctr line comes before every k8s-w1 line."""
        it = iter(got)
        nodes = [n for n, _ in got]
        return all(any(n == wn and s.startswith(ws) for n, s in it) for wn, ws in want) and \
            nodes == sorted(nodes, key=["k8s-ctr", "k8s-w1"].index)

    got = syn_points(40601)
    assert in_order(got, [("k8s-ctr", out_point), ("k8s-w1", f"-> endpoint {web2_ep}")]), got
    assert not any(s.startswith("<-") for _, s in got), got      # medium: no from-* points


# ext floods a NodePort with SYNs from random 203.0.113.0/24 sources (never ext's own .10 nor the
# router's .254) and random ports, no handshake: a raw socket, bounded in count and time. Prints
# "go" when it starts sending, then the sources it used, one a line, then "sent N".
SYN_FLOOD = """
import random, socket, sys, time
from scapy.layers.inet import IP, TCP
dst, port, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
hosts = [h for h in range(1, 254) if h != 10]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
print("go", flush=True)
sent, used, deadline = 0, set(), time.monotonic() + 30
while sent < n and time.monotonic() < deadline:
    src = f"203.0.113.{rnd.choice(hosts)}"
    pkt = IP(src=src, dst=dst, ttl=64) / TCP(sport=rnd.randrange(1024, 65536), dport=port,
                                             flags="S", seq=rnd.randrange(1 << 32), window=64240)
    s.sendto(bytes(pkt), (dst, 0))
    used.add(src)
    sent += 1
    if sent % 100 == 0:
        time.sleep(0.2)             # some 400 a second for 5 s: ext's requests run meanwhile
for src in sorted(used):
    print(src)
print("sent", sent, flush=True)
"""


def test_syn_flood_to_a_nodeport_holds_no_state_beyond_the_syn_lifetime(native):
    """2,000 SYNs from random 203.0.113.0/24 sources to k8s-ctr's NodePort (backends on all
    three nodes, so most flows are SNATed to a remote one): no conntrack or NAT entry they made,
    on any node, has more than CT_SYN_TIMEOUT (60 s) to live, and ext's real requests to the
    NodePort all succeed during and after the flood."""
    path = _nodeport_service(native, "web-flood", 30086)
    flood = None
    try:
        _wait_service(native, "web-flood")
        node_ip = NODE_IPS["k8s-ctr"]
        assert all("error" not in a for a in ext_ask(native, node_ip, 30086, n=3))
        flood = subprocess.Popen(netns.cmd(native.ns("ext"), sys.executable, "-c", SYN_FLOOD,
                                           node_ip, "30086", "2000", "12"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert flood.stdout.readline().strip() == "go"
        during = ext_ask(native, node_ip, 30086, n=10)
        out, err = flood.communicate(timeout=60)
        assert flood.returncode == 0, err
        lines = out.splitlines()
        sources, sent = set(lines[:-1]), int(lines[-1].split()[1])
        after = ext_ask(native, node_ip, 30086, n=10)
        assert sent == 2000
        failed = [a for a in during + after if "error" in a]
        assert not failed, failed

        def flood_src(tuple_text: str) -> bool:
            return any(part.split(":")[0] in sources for part in tuple_text.split(" -> "))

        # the flows' NAT mappings on k8s-ctr: their node ports towards each backend
        nat = native.client("k8s-ctr").get("/v1/bpf/nat")
        flood_nat = [e for e in nat if flood_src(e["tuple"]) or
                     e["xlate"].split()[-1].split(":")[0] in sources]
        snat_ports = {(e["tuple"].split(" -> ")[1].split(":")[0], e["xlate"].split(":")[-1])
                      for e in flood_nat if e["direction"] == "OUT"}
        ct_seen = []
        for node in NODE_IPS:
            for e in native.client(node).get("/v1/bpf/ct"):
                src, dst = (p.rsplit(":", 1) for p in e["tuple"].split(" -> "))
                snated = (src[0] == node_ip and (dst[0], src[1]) in snat_ports) or \
                    (dst[0] == node_ip and (src[0], dst[1]) in snat_ports)
                if flood_src(e["tuple"]) or (node != "k8s-ctr" and snated):
                    ct_seen.append((node, e))
        lifetimes = [e["expires_in"] for e in flood_nat] + [e["expires_in"] for _, e in ct_seen]
        print(f"\nSYN flood: {sent} SYNs from {len(sources)} sources; NAT entries "
              f"{len(flood_nat)} ({len(snat_ports)} remote-backend flows), CT entries "
              f"{len(ct_seen)} on {len({n for n, _ in ct_seen})} nodes; max lifetime left "
              f"{max(lifetimes)} s; ext requests during {len(during)}, after {len(after)}, "
              f"failed {len(failed)}")
        assert len(flood_nat) >= 2 * 500 and len(ct_seen) >= 2000
        assert max(lifetimes) <= abi.CT_SYN_TIMEOUT, \
            sorted(((e["expires_in"], e["tuple"]) for e in flood_nat), reverse=True)[:5]
    finally:
        if flood and flood.poll() is None:
            flood.kill()
            flood.wait(timeout=10)
        path.unlink()


def _lab_cli(lab, *args, timeout=240):
    return subprocess.run([*_bin("datapath"), "lab", *args, "--name", lab.lab.name],
                          capture_output=True, text=True, timeout=timeout)


def _agents_running(lab) -> dict[str, str]:
    return {n["name"]: n["agent"] for n in lab.lab.status()["nodes"]}


def test_agent_verbs_stop_kill_start_and_no_ops(native):
    """stop, kill and start through the CLI: the state file and `lab status` follow, a second
    stop or start says it has nothing to do, and the node's pods stay reachable meanwhile."""
    node = "k8s-w2"
    try:
        r = _lab_cli(native, "agent", "stop", node)
        assert r.returncode == 0 and "stopped in" in r.stdout, r.stdout + r.stderr
        assert _agents_running(native)[node] == "stopped"
        assert native.lab.load()["nodes"][node]["agent_pid"] is None
        status = _lab_cli(native, "status")
        assert re.search(rf"^{node}\s.*\sstopped\s", status.stdout, re.M), status.stdout
        r = _lab_cli(native, "agent", "stop", node)
        assert r.returncode == 0 and r.stdout.strip() == f"agent on {node} already stopped"
        assert "Hostname: webpod-3" in curl(native, "curl-pod", native.pod_ip("webpod-3")).stdout
        r = _lab_cli(native, "agent", "start", node)
        assert r.returncode == 0 and "started" in r.stdout, r.stdout + r.stderr
        pid = native.lab.load()["nodes"][node]["agent_pid"]
        assert _alive(pid) and native.client(node).get("/v1/healthz") is not None
        r = _lab_cli(native, "agent", "start", node)
        assert r.returncode == 0 and "already running" in r.stdout
        r = _lab_cli(native, "agent", "kill", node)
        assert r.returncode == 0 and "killed in" in r.stdout, r.stdout + r.stderr
        assert not _alive(pid) and _agents_running(native)[node] == "stopped"
        assert "Hostname: webpod-3" in curl(native, "curl-pod", native.pod_ip("webpod-3")).stdout
        r = _lab_cli(native, "agent", "restart", node)   # restart of a stopped agent: starts it
        assert r.returncode == 0 and "already stopped; agent on" in r.stdout, r.stdout + r.stderr
        assert _agents_running(native)[node] == "running"
        r = _lab_cli(native, "agent", "stop", "k8s-w9")
        assert r.returncode == 1 and "no node 'k8s-w9'" in r.stderr
    finally:
        if not _alive(native.lab.load()["nodes"][node].get("agent_pid")):
            native.lab.start_agent(node)


def test_lab_down_leaves_nothing(tunnel):
    """Last in this file, on purpose: it takes the module's tunnel lab down (no lab is built for
    it), after every other test that uses it. Three nodes, etcd, Prometheus (started here),
    router, host, the pods and whatever the tests before left behind: nothing may remain."""
    lab = tunnel
    st = lab.lab.up(prometheus=True)
    procs = [n["agent_pid"] for n in st["nodes"].values()] + \
        [p["pid"] for p in st["pods"].values()] + [st["etcd"]["pid"], st["prometheus"]["pid"]]
    assert all(_alive(p) for p in procs)
    names = [r["netns"] for r in list(st["nodes"].values()) + list(st["pods"].values())
             + list(st["others"].values())] + [lab.lab.segment_ns]
    etcd_data = st["etcd"]["data"]
    assert os.path.exists(etcd_data)
    lab.lab.down()
    assert not any(_alive(p) for p in procs)
    assert not set(names) & set(netns.list_names())
    assert not os.path.exists(etcd_data) and not lab.lab.dir.exists()
    assert str(lab.lab.bpffs) not in open("/proc/mounts").read()
    assert lab.lab.down() == ["nothing to remove"]
