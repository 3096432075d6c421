"""datapath-cni: a CNI spec 1.0.0 plugin (ADD, DEL, CHECK, VERSION), called exactly as a container
runtime calls it: CNI_* environment variables, the network config as JSON on stdin, the result or
an error as JSON on stdout.

ADD asks the agent for an address, creates the veth pair (host side lxc<hash>, pod side
CNI_IFNAME), moves one end into CNI_NETNS, configures the address as /32 with a gateway route
(the datapath answers ARP for the gateway), adds the node's /32 route to the pod, and registers
the endpoint with the agent. DEL undoes it and succeeds when there is nothing left to undo.

Network config fields of ours: "apiSocket" (default: DATAPATH_SOCKET or the agent default),
"mtu" (default: what the agent's IPAM answer says).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

from datapath import netns
from datapath.errors import AgentUnreachable, APIError, CNIError, DatapathError

from .api import Client

SUPPORTED = ["1.0.0"]      # results are built in the 1.0.0 shape only


def host_ifname(container_id: str) -> str:
    return "lxc" + hashlib.sha256(container_id.encode()).hexdigest()[:11]


def _env(name: str, required: bool = True) -> str:
    v = os.environ.get(name, "")
    if required and not v:
        raise CNIError(CNIError.INVALID_ENV, f"missing environment variable {name}")
    return v


def _cni_args() -> dict[str, str]:
    out = {}
    for part in os.environ.get("CNI_ARGS", "").split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


def _netconf(raw: str) -> dict:
    try:
        conf = json.loads(raw or "{}")
    except ValueError as e:
        raise CNIError(CNIError.DECODE_FAILURE, "network config is not JSON", str(e)) from e
    if not isinstance(conf, dict):
        raise CNIError(CNIError.INVALID_NETCONF, "network config must be a JSON object")
    ver = conf.get("cniVersion", "1.0.0")
    if ver not in SUPPORTED:
        raise CNIError(CNIError.INCOMPATIBLE_VERSION, f"cniVersion {ver} not supported",
                       f"supported: {', '.join(SUPPORTED)}")
    return conf


def cmd_add(conf: dict) -> dict:
    cid, ns_path, ifname = _env("CNI_CONTAINERID"), _env("CNI_NETNS"), _env("CNI_IFNAME")
    if not os.path.exists(ns_path):
        raise CNIError(CNIError.INVALID_ENV, f"CNI_NETNS {ns_path} does not exist")
    args = _cni_args()
    pod_ns = args.get("K8S_POD_NAMESPACE", "default")
    pod = args.get("K8S_POD_NAME", cid[:12])
    client = Client(conf.get("apiSocket"))
    alloc = client.post("/v1/ipam", {"owner": cid})
    ip, gw = alloc["ip"], alloc["gateway"]
    mtu = int(conf.get("mtu") or alloc.get("mtu") or 1500)
    host = host_ifname(cid)
    tmp = "tmp" + host[3:]
    try:
        if not netns.link_exists(None, host):
            netns.ip(None, "link", "add", host, "mtu", str(mtu), "type", "veth", "peer", "name",
                     tmp, "mtu", str(mtu))
            _move_to_netns(tmp, ns_path)
            netns.run(ns_path, "ip", "link", "set", tmp, "name", ifname)
        netns.run(ns_path, "ip", "link", "set", "lo", "up")
        netns.run(ns_path, "ip", "link", "set", ifname, "mtu", str(mtu), "up")
        netns.run(ns_path, "ip", "addr", "replace", f"{ip}/32", "dev", ifname)
        for stale in _ipv4_addrs(ns_path, ifname) - {f"{ip}/32"}:   # a re-ADD with a new address
            netns.run(ns_path, "ip", "addr", "del", stale, "dev", ifname)
        netns.run(ns_path, "ip", "route", "replace", gw, "dev", ifname, "scope", "link")
        netns.run(ns_path, "ip", "route", "replace", "default", "via", gw, "dev", ifname)
        netns.ip(None, "link", "set", host, "up")
        netns.ip(None, "route", "replace", f"{ip}/32", "dev", host, "scope", "link")
        pod_mac = netns.link_mac(ns_path, ifname)
        h_mac = netns.link_mac(None, host)
        client.put(f"/v1/endpoint/{cid}", {
            "ifname": ifname, "host_ifname": host, "ip": ip, "mac": pod_mac, "host_mac": h_mac,
            "netns": ns_path, "namespace": pod_ns, "pod": pod,
        })
    except Exception:
        netns.ip(None, "link", "del", host, check=False)
        try:
            client.delete(f"/v1/ipam/{cid}")
        except DatapathError:
            pass
        raise
    return {
        "cniVersion": conf.get("cniVersion", "1.0.0"),
        "interfaces": [{"name": host, "mac": h_mac},
                       {"name": ifname, "mac": pod_mac, "sandbox": ns_path}],
        "ips": [{"address": f"{ip}/32", "gateway": gw, "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": gw}],
        "dns": {},
    }


def _ipv4_addrs(ns_path: str, ifname: str) -> set[str]:
    out = netns.run(ns_path, "ip", "-4", "-o", "addr", "show", "dev", ifname).stdout
    return {line.split()[3] for line in out.splitlines() if " inet " in line}


def _move_to_netns(ifname: str, ns_path: str) -> None:
    from pyroute2 import IPRoute
    fd = os.open(ns_path, os.O_RDONLY)
    try:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=idx, net_ns_fd=fd)
    finally:
        os.close(fd)


def cmd_del(conf: dict) -> None:
    cid = _env("CNI_CONTAINERID")
    client = Client(conf.get("apiSocket"))
    try:
        client.delete(f"/v1/endpoint/{cid}")
        client.delete(f"/v1/ipam/{cid}")
    except AgentUnreachable:
        pass        # the agent drops endpoints whose veth is gone when it next starts
    netns.ip(None, "link", "del", host_ifname(cid), check=False)


def cmd_check(conf: dict) -> None:
    cid, ns_path, ifname = _env("CNI_CONTAINERID"), _env("CNI_NETNS"), _env("CNI_IFNAME")
    host = host_ifname(cid)
    if not netns.link_exists(None, host):
        raise CNIError(CNIError.IO_FAILURE, f"host interface {host} is missing")
    try:
        ep = Client(conf.get("apiSocket")).get(f"/v1/endpoint/{cid}")
    except APIError as e:
        raise CNIError(CNIError.TRY_LATER, "endpoint not known to the agent", str(e)) from e
    addrs = netns.run(ns_path, "ip", "-4", "-o", "addr", "show", "dev", ifname,
                      check=False).stdout
    if f"{ep['ip']}/32" not in addrs:
        raise CNIError(CNIError.IO_FAILURE, f"{ifname} in {ns_path} lacks {ep['ip']}/32")
    if ep.get("state") != "ready":
        raise CNIError(CNIError.TRY_LATER, f"endpoint {ep['id']} is {ep.get('state')}")


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    conf: dict = {}
    try:
        if command == "VERSION":
            print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED}))
            return 0
        conf = _netconf(sys.stdin.read() if not sys.stdin.isatty() else "")
        if command == "ADD":
            print(json.dumps(cmd_add(conf)))
        elif command == "DEL":
            cmd_del(conf)
        elif command == "CHECK":
            cmd_check(conf)
        else:
            raise CNIError(CNIError.INVALID_ENV, f"unknown CNI_COMMAND {command!r}")
        return 0
    except CNIError as e:
        err = {"code": e.code, "msg": e.msg, "details": e.details}
    except AgentUnreachable as e:
        err = {"code": CNIError.TRY_LATER, "msg": "agent unreachable", "details": str(e)}
    except DatapathError as e:
        err = {"code": 999, "msg": type(e).__name__, "details": str(e)}
    except Exception as e:  # the runtime must always get an error object, never a traceback
        err = {"code": 999, "msg": "internal error", "details": f"{type(e).__name__}: {e}"}
    print(json.dumps({"cniVersion": conf.get("cniVersion", "1.0.0"), **err}))
    return 1


if __name__ == "__main__":
    sys.exit(main())
