"""datapath-cni against a running agent, called exactly as a runtime calls it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

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
        assert rc == 1 and err["code"] in (5, 11)
    finally:
        call(lab, "DEL", cid, pod_ns)
        netns.delete(pod_ns)
