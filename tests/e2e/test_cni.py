"""datapath-cni against a running agent, called exactly as a runtime calls it."""
from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from agent.cni import host_ifname
from agent.runtime import _bin
from datapath import netns


def call(lab, command, cid, pod_ns, name="cni-test"):
    node = lab.node()
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": netns.path(pod_ns), "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}", "CNI_PATH": "/opt/cni/bin"}
    conf = json.dumps({"cniVersion": "1.0.0", "name": "datapath", "type": "datapath-cni",
                       "apiSocket": node["socket"]})
    p = subprocess.run(netns.cmd(node["netns"], *_bin("datapath-cni")), input=conf, env=env,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None


def test_add_check_del_is_idempotent(lab):
    pod_ns = f"{lab.lab.prefix}cni-test"
    cid = "cni-test-" + str(os.getpid())
    netns.add(pod_ns)
    try:
        rc, res = call(lab, "ADD", cid, pod_ns)
        assert rc == 0, res
        ip = res["ips"][0]["address"].split("/")[0]
        assert res["cniVersion"] == "1.0.0" and res["ips"][0]["gateway"] == "172.20.0.1"
        assert res["interfaces"][1] == {"name": "eth0", "mac": netns.link_mac(pod_ns, "eth0"),
                                        "sandbox": netns.path(pod_ns)}
        assert res["interfaces"][0]["name"] == host_ifname(cid)
        routes = netns.ip(pod_ns, "route", "show").stdout
        assert "default via 172.20.0.1 dev eth0" in routes
        assert call(lab, "CHECK", cid, pod_ns)[0] == 0
        ep = lab.client().get(f"/v1/endpoint/{cid}")
        assert ep["state"] == "ready" and ep["ip"] == ip and ep["identity"] >= 256
        # the new pod reaches a lab pod through the datapath (ARP for its gateway answered by BPF)
        assert netns.run(pod_ns, "ping", "-c", "1", "-W", "2", lab.pod_ip("webpod-1"),
                         check=False).returncode == 0
        neigh = netns.ip(pod_ns, "neigh", "show", "172.20.0.1").stdout
        assert res["interfaces"][0]["mac"] in neigh
        # ADD again for the same container: same address, still one endpoint
        rc, again = call(lab, "ADD", cid, pod_ns)
        assert rc == 0 and again["ips"] == res["ips"]
        assert sum(e["container_id"] == cid for e in lab.client().get("/v1/endpoint")) == 1

        assert call(lab, "DEL", cid, pod_ns) == (0, None)
        assert not netns.link_exists(lab.node()["netns"], host_ifname(cid))
        assert cid not in {e["container_id"] for e in lab.client().get("/v1/endpoint")}
        assert call(lab, "DEL", cid, pod_ns) == (0, None)          # idempotent
        rc, err = call(lab, "CHECK", cid, pod_ns)
        assert rc == 1 and err["code"] == 3        # unknown container
    finally:
        call(lab, "DEL", cid, pod_ns)
        netns.delete(pod_ns)


def invoke(lab, stdin: str, **cni_env: str):
    """The plugin binary in the node's netns with exactly these CNI_* variables."""
    node = lab.node()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({f"CNI_{k}": v for k, v in cni_env.items()}, CNI_PATH="/opt/cni/bin")
    p = subprocess.run(netns.cmd(node["netns"], *_bin("datapath-cni")), env=env,
                       input=stdin.encode(errors="surrogateescape"), capture_output=True,
                       timeout=60)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None


def _links(ns: str) -> list[str]:
    return sorted(x["ifname"] for x in json.loads(netns.ip(ns, "-j", "link").stdout))


def _addrs(ns: str) -> list[str]:
    """Every address of ns as ifname/address/prefix (flags such as IPv6 DAD's left out)."""
    return sorted(f"{link['ifname']}/{a['local']}/{a['prefixlen']}"
                  for link in json.loads(netns.ip(ns, "-j", "addr").stdout)
                  for a in link.get("addr_info", []))


def _snapshot(lab, *pod_nss: str) -> dict:
    node_ns = lab.node()["netns"]
    st = lab.client().get("/v1/status")
    return {
        "node links": _links(node_ns),
        "node addrs": _addrs(node_ns),
        "node routes": netns.ip(node_ns, "route").stdout,
        "endpoints": sorted(e["container_id"] for e in lab.client().get("/v1/endpoint")),
        "ipam allocated": st["ipam"]["allocated"],
        "cilium_lxc": sorted(lab.pinned_map("cilium_lxc")),
        **{f"{ns} links": _links(ns) for ns in pod_nss},
        **{f"{ns} routes": netns.ip(ns, "route").stdout for ns in pod_nss},
        **{f"{ns} addrs": _addrs(ns) for ns in pod_nss},
    }


def test_hostile_input_gets_spec_codes_and_leaves_nothing(lab, tmp_path):
    """Each hostile call through the real binary against the lab's agent gets its CNI error code;
    afterwards no veth, address, route, allocation, endpoint or cilium_lxc entry is new, and
    the pod that was there before (whose netns and container id the calls aim at) still works."""
    prefix, node_ns = lab.lab.prefix, lab.node()["netns"]
    ns_a, ns_b = f"{prefix}cni-ha", f"{prefix}cni-hb"
    cid_a, cid_b = f"cni-ha-{os.getpid()}", f"cni-hb-{os.getpid()}"
    conf = json.dumps({"cniVersion": "1.0.0", "name": "datapath", "type": "datapath-cni",
                       "apiSocket": lab.node()["socket"]})
    (tmp_path / "file").write_text("")
    good = {"NETNS": netns.path(ns_b), "IFNAME": "eth0",
            "ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=cni-hostile"}
    cases = [       # (what, code, stdin, CNI_* variables)
        ("stdin not JSON", 6, "{\"cniVersion\": ", {}),
        ("stdin not UTF-8", 6, "\udcff", {}),
        ("stdin unsupported cniVersion", 1, conf.replace("1.0.0", "0.4.0"), {}),
        ("stdin mtu not a number", 7, conf[:-1] + ', "mtu": "9000; reboot"}', {}),
        ("netns missing", 4, conf, {"NETNS": netns.path(f"{prefix}cni-none")}),
        ("netns a regular file", 4, conf, {"NETNS": str(tmp_path / "file")}),
        ("netns not a netns", 4, conf, {"NETNS": "/proc/self/ns/mnt"}),
        ("netns the node's own", 4, conf, {"NETNS": netns.path(node_ns)}),
        ("ADD for a container that exists elsewhere", 100, conf, {"CONTAINERID": cid_a}),
        ("ADD into a taken ifname", 101, conf, {"NETNS": netns.path(ns_a)}),
        ("ADD as lo", 101, conf, {"IFNAME": "lo"}),
        ("CNI_ARGS newline", 4, conf, {"ARGS": "K8S_POD_NAME=x\nK8S_POD_NAMESPACE=kube-system"}),
        ("CNI_ARGS ';' in a value", 4, conf, {"ARGS": "K8S_POD_NAME=x;rm -rf /"}),
        ("CNI_ARGS pod name traversal", 4, conf, {"ARGS": "K8S_POD_NAME=../../etc"}),
        ("CNI_ARGS unknown key", 2, conf, {"ARGS": "K8S_POD_NAME=x;EVIL=1"}),
        ("container id traversal", 4, conf, {"CONTAINERID": "../../../run/datapath"}),
        ("ifname traversal", 4, conf, {"IFNAME": "../eth0"}),
        ("ifname too long", 4, conf, {"IFNAME": "eth0123456789abc"}),
        ("CHECK of an unknown container", 3, conf, {"COMMAND": "CHECK"}),
        ("DEL of an unknown container", 0, conf, {"COMMAND": "DEL"}),
    ]
    netns.add(ns_a)
    netns.add(ns_b)
    try:
        rc, res = invoke(lab, conf, COMMAND="ADD", CONTAINERID=cid_a, NETNS=netns.path(ns_a),
                         IFNAME="eth0", ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=cni-ha")
        assert rc == 0, res
        before = _snapshot(lab, ns_a, ns_b)
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda c: invoke(lab, c[2], **{
                "COMMAND": "ADD", "CONTAINERID": cid_b, **good, **c[3]}), cases))
        print(f"{len(cases)} hostile calls in {time.perf_counter() - started:.1f}s")
        for (what, code, _, _), (rc, out) in zip(cases, got):
            if code == 0:
                assert (rc, out) == (0, None), (what, out)
            else:
                assert rc == 1 and out["code"] == code and out["msg"], (what, out)
        assert _snapshot(lab, ns_a, ns_b) == before
        assert _links(ns_b) == ["lo"]       # the netns every hostile ADD aimed at
        assert invoke(lab, conf, COMMAND="CHECK", CONTAINERID=cid_a, NETNS=netns.path(ns_a),
                      IFNAME="eth0") == (0, None)
    finally:
        for cid, ns in ((cid_a, ns_a), (cid_b, ns_b)):
            invoke(lab, conf, COMMAND="DEL", CONTAINERID=cid, NETNS=netns.path(ns), IFNAME="eth0")
            netns.delete(ns)
    assert cid_a not in {e["container_id"] for e in lab.client().get("/v1/endpoint")}
