"""datapath-cni: a CNI spec 1.0.0 plugin (ADD, DEL, CHECK, VERSION), called exactly as a container
runtime calls it: CNI_* environment variables, the network config as JSON on stdin, the result or
an error as JSON on stdout.

ADD asks the agent for an address, creates the veth pair (host side lxc<hash>, pod side
CNI_IFNAME), moves one end into CNI_NETNS, configures the address as /32 with a gateway route
(the datapath answers ARP for the gateway), adds the node's /32 route to the pod, and registers
the endpoint with the agent. DEL undoes it and succeeds when there is nothing left to undo.

Hostile input is refused before anything is allocated or created, with the spec's codes: 6
undecodable stdin (not JSON, not UTF-8, over 1 MiB), 7 a bad field in it, 1 an unsupported
cniVersion, 4 a bad CNI_CONTAINERID (libcni's rule), CNI_IFNAME (<= 15 bytes, no /, :, whitespace,
not . or ..), CNI_NETNS (must be a network namespace, checked with NS_GET_NSTYPE, and not the
node's own) or CNI_ARGS (K=V;K=V, no duplicates, pod namespace a DNS label, pod name a DNS
subdomain), 2 unknown CNI_ARGS keys without IgnoreUnknown=1, 3 CHECK of an unknown container;
plugin-specific: 100 an ADD for a container attached to another netns or ifname, 101 CNI_IFNAME
already taken in CNI_NETNS. A failed ADD leaves no veth, address, allocation or endpoint.

Network config fields of ours: "apiSocket" (default: DATAPATH_SOCKET or the agent default),
"mtu" (default: what the agent's IPAM answer says).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import sys

from datapath import netns
from datapath.errors import AgentUnreachable, APIError, CNIError, DatapathError

from .api import Client

SUPPORTED = ["1.0.0"]      # results are built in the 1.0.0 shape only
CONTAINER_EXISTS = 100     # plugin-specific: ADD for a container attached to another netns/ifname
IFNAME_TAKEN = 101         # plugin-specific: CNI_IFNAME already exists in CNI_NETNS
MAX_STDIN = 1 << 20        # a network config beyond 1 MiB is refused unread
NS_GET_NSTYPE, CLONE_NEWNET = 0xb703, 0x40000000     # linux/nsfs.h, linux/sched.h

# libcni's rules (ValidateContainerID, ValidateNetworkName, ValidateInterfaceName, LoadArgs)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")
_ARG_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")   # agent/manifests.py's (no yaml import)
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL.pattern}(\.{_DNS_LABEL.pattern})*")
_ARG_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]{0,253}")   # printable, no space, ';' or '='
KNOWN_ARGS = {"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID",
              "K8S_POD_UID"}


def host_ifname(container_id: str) -> str:
    return "lxc" + hashlib.sha256(container_id.encode()).hexdigest()[:11]


def _env(name: str, required: bool = True) -> str:
    v = os.environ.get(name, "")
    if required and not v:
        raise CNIError(CNIError.INVALID_ENV, f"missing environment variable {name}")
    return v


def _container_id() -> str:
    cid = _env("CNI_CONTAINERID")
    if not _ID.fullmatch(cid):
        raise CNIError(CNIError.INVALID_ENV, "CNI_CONTAINERID: invalid characters or length",
                       f"{cid[:80]!r}: want [A-Za-z0-9][A-Za-z0-9_.-]*, at most 255")
    return cid


def _ifname() -> str:
    name = _env("CNI_IFNAME")
    why = ("longer than 15 bytes" if len(name.encode()) > 15 else
           "is '.' or '..'" if name in (".", "..") else
           "contains '/', ':', whitespace or a control character"
           if any(c in "/:" or c.isspace() or not c.isprintable() for c in name) else "")
    if why:
        raise CNIError(CNIError.INVALID_ENV, f"CNI_IFNAME: {why}", repr(name[:80]))
    return name


def _ns_id(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of the network namespace at path; CNIError if it is none."""
    if not os.path.isabs(path):
        raise CNIError(CNIError.INVALID_ENV, "CNI_NETNS: not an absolute path", repr(path[:200]))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CNIError(CNIError.INVALID_ENV, f"CNI_NETNS: cannot open {path}",
                       e.strerror or str(e)) from None
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != CLONE_NEWNET:
            raise CNIError(CNIError.INVALID_ENV, f"CNI_NETNS: {path} is not a network namespace",
                           "want an nsfs file such as /var/run/netns/<name> or /proc/<pid>/ns/net")
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)


def _netns() -> str:
    """CNI_NETNS, checked: a network namespace, and not the node's (ours, or init's)."""
    path = _env("CNI_NETNS")
    have = _ns_id(path)
    for own in ("/proc/self/ns/net", "/proc/1/ns/net"):
        try:
            st = os.stat(own)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == have:
            raise CNIError(CNIError.INVALID_ENV,
                           f"CNI_NETNS: {path} is the node's own network namespace",
                           "a pod needs a network namespace of its own")
    return path


def _same_netns(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _cni_args() -> dict[str, str]:
    """CNI_ARGS as libcni reads it (K=V;K=V), stricter: no duplicate keys, values printable
    without ';', '=' or whitespace, unknown keys only with IgnoreUnknown, and the pod's
    namespace and name valid Kubernetes names (they name the endpoint)."""
    raw = os.environ.get("CNI_ARGS", "")
    out: dict[str, str] = {}
    if not raw:
        return out
    for part in raw.split(";"):
        key, eq, value = part.partition("=")
        if not eq or not _ARG_KEY.fullmatch(key) or not _ARG_VALUE.fullmatch(value):
            raise CNIError(CNIError.INVALID_ENV, "CNI_ARGS: want K=V pairs separated by ';'",
                           f"bad pair {part[:80]!r}")
        if key in out:
            raise CNIError(CNIError.INVALID_ENV, f"CNI_ARGS: {key} given twice")
        out[key] = value
    unknown = sorted(set(out) - KNOWN_ARGS)
    if unknown and out.get("IgnoreUnknown", "").lower() not in ("1", "true"):
        raise CNIError(CNIError.UNSUPPORTED_FIELD, f"CNI_ARGS: unknown args {', '.join(unknown)}",
                       "set IgnoreUnknown=1 to ignore them")
    for key, rx, what, limit in (("K8S_POD_NAMESPACE", _DNS_LABEL, "DNS-1123 label", 63),
                                 ("K8S_POD_NAME", _DNS_SUBDOMAIN, "DNS-1123 subdomain", 253)):
        v = out.get(key, "")
        if v and (len(v) > limit or not rx.fullmatch(v)):
            raise CNIError(CNIError.INVALID_ENV, f"CNI_ARGS: {key} is not a {what}", repr(v[:80]))
    return out


def _netconf(raw: bytes) -> dict:
    if len(raw) > MAX_STDIN:
        raise CNIError(CNIError.DECODE_FAILURE, "network config larger than 1 MiB")
    try:
        conf = json.loads(raw.decode("utf-8") or "{}")
    except (ValueError, RecursionError) as e:
        raise CNIError(CNIError.DECODE_FAILURE, "network config is not JSON",
                       f"{type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(conf, dict):
        raise CNIError(CNIError.INVALID_NETCONF, "network config must be a JSON object")
    ver = conf.get("cniVersion", "1.0.0")
    if not isinstance(ver, str):
        raise CNIError(CNIError.INVALID_NETCONF, "cniVersion must be a string")
    if ver not in SUPPORTED:
        raise CNIError(CNIError.INCOMPATIBLE_VERSION, f"cniVersion {ver[:40]} not supported",
                       f"supported: {', '.join(SUPPORTED)}")
    for key in ("name", "type"):
        if key in conf and not (isinstance(conf[key], str) and _ID.fullmatch(conf[key])):
            raise CNIError(CNIError.INVALID_NETCONF, f"network config: {key} must be a name "
                           "([A-Za-z0-9][A-Za-z0-9_.-]*)", repr(conf[key])[:80])
    sock = conf.get("apiSocket")
    if sock is not None and not (isinstance(sock, str) and os.path.isabs(sock)
                                 and "\0" not in sock and len(sock) < 108):
        raise CNIError(CNIError.INVALID_NETCONF, "network config: apiSocket must be an absolute "
                       "path (under 108 bytes)", repr(sock)[:120])
    mtu = conf.get("mtu")
    if mtu is not None and not (type(mtu) is int and 68 <= mtu <= 65535):
        raise CNIError(CNIError.INVALID_NETCONF, "network config: mtu must be an integer "
                       "68..65535", repr(mtu)[:40])
    return conf


def cmd_add(conf: dict) -> dict:
    # every input checked before anything is allocated or created
    cid, ifname, args, ns_path = _container_id(), _ifname(), _cni_args(), _netns()
    pod_ns = args.get("K8S_POD_NAMESPACE") or "default"
    pod = args.get("K8S_POD_NAME") or cid[:12]
    client = Client(conf.get("apiSocket"))
    host = host_ifname(cid)
    tmp = "tmp" + host[3:]
    try:
        ep = client.get(f"/v1/endpoint/{cid}")
    except AgentUnreachable:
        raise
    except APIError as e:
        if e.status != 404:
            raise
        ep = None
    if ep is not None and ep.get("container_id") != cid:
        ep = None       # an endpoint whose numeric id happens to equal cid
    if ep is not None and os.path.exists(ep.get("netns", "")):
        if not (_same_netns(ep["netns"], ns_path) and ep.get("ifname") == ifname):
            raise CNIError(CONTAINER_EXISTS, f"container {cid} is already attached",
                           f"as {ep.get('ifname')} in {ep.get('netns')}; DEL it first")
        readd = True    # the same ADD again: repair in place, same address
    else:               # our veth pair still there (an agent that lost its state): reuse it
        readd = _is_our_veth(ns_path, ifname, host)
        if not readd and netns.link_exists(ns_path, ifname):
            raise CNIError(IFNAME_TAKEN, f"{ns_path} already has an interface {ifname}")
    alloc = client.post("/v1/ipam", {"owner": cid})
    ip, gw = alloc["ip"], alloc["gateway"]
    mtu = int(conf.get("mtu") or alloc.get("mtu") or 1500)
    try:
        if not readd:       # leftovers of an ADD that died half-way go first
            netns.ip(None, "link", "del", host, check=False)
            netns.ip(None, "link", "del", tmp, check=False)
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
        # a failed ADD leaves nothing: no veth (its peer goes with it), no address, no endpoint
        netns.ip(None, "link", "del", host, check=False)
        for url in (f"/v1/endpoint/{cid}", f"/v1/ipam/{cid}"):
            try:
                client.delete(url)
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


def _is_our_veth(ns_path: str, ifname: str, host: str) -> bool:
    """ifname in ns_path is the peer of our host-side veth host."""
    if not netns.link_exists(None, host):
        return False
    out = netns.run(ns_path, "ip", "-j", "link", "show", "dev", ifname, check=False).stdout
    try:
        return json.loads(out)[0].get("link_index") == socket.if_nametoindex(host)
    except (ValueError, IndexError, OSError):
        return False


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
    """Undo an ADD; succeeds when there is nothing to undo (an unknown container, a netns gone)."""
    cid = _container_id()
    _ifname()
    _cni_args()
    client = Client(conf.get("apiSocket"))
    try:
        client.delete(f"/v1/endpoint/{cid}")
        client.delete(f"/v1/ipam/{cid}")
    except AgentUnreachable:
        pass        # the agent drops endpoints whose veth is gone when it next starts
    netns.ip(None, "link", "del", host_ifname(cid), check=False)


def cmd_check(conf: dict) -> None:
    cid, ifname, _, ns_path = _container_id(), _ifname(), _cni_args(), _netns()
    host = host_ifname(cid)
    try:
        ep = Client(conf.get("apiSocket")).get(f"/v1/endpoint/{cid}")
    except AgentUnreachable:
        raise
    except APIError as e:
        if e.status == 404:
            raise CNIError(CNIError.UNKNOWN_CONTAINER, f"container {cid} is not known") from e
        raise CNIError(CNIError.TRY_LATER, "endpoint not readable from the agent", str(e)) from e
    if not netns.link_exists(None, host):
        raise CNIError(CNIError.IO_FAILURE, f"host interface {host} is missing")
    addrs = netns.run(ns_path, "ip", "-4", "-o", "addr", "show", "dev", ifname,
                      check=False).stdout
    if f"{ep['ip']}/32" not in addrs:
        raise CNIError(CNIError.IO_FAILURE, f"{ifname} in {ns_path} lacks {ep['ip']}/32")
    if ep.get("state") != "ready":
        raise CNIError(CNIError.TRY_LATER, f"endpoint {ep['id']} is {ep.get('state')}")


COMMANDS = {"ADD": lambda conf: print(json.dumps(cmd_add(conf))), "DEL": cmd_del,
            "CHECK": cmd_check}


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    conf: dict = {}
    try:
        if command == "VERSION":
            print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED}))
            return 0
        if command not in COMMANDS:
            raise CNIError(CNIError.INVALID_ENV, f"unknown CNI_COMMAND {command[:40]!r}")
        conf = _netconf(sys.stdin.buffer.read(MAX_STDIN + 1) if not sys.stdin.isatty() else b"")
        COMMANDS[command](conf)
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
