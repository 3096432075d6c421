"""Lab topologies: the YAML that describes segments, nodes, a router and external hosts.

    routingMode: native | tunnel       kvstoreLeaseTTL: seconds     etcd: <node name> (optional)
    segments: {name: cidr}
    router: {name, addresses: {segment: ip}}            (optional)
    nodes: [{name, segment, ip, podCIDR}]
    hosts: [{name, segment, ip}]                        (optional; default route via the router)

API: load_topology(path) -> Topology; raises LabError naming the file, key and reason.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from datapath.errors import LabError

TOPOLOGIES = Path(__file__).resolve().parents[2] / "examples" / "topologies"
DEFAULT_TOPOLOGY = TOPOLOGIES / "default.yaml"


@dataclass(frozen=True)
class Member:
    name: str
    segment: str
    ip: str
    podCIDR: str | None = None


@dataclass
class Topology:
    path: str
    routingMode: str
    kvstoreLeaseTTL: int
    etcd: str | None
    segments: dict[str, ipaddress.IPv4Network]
    nodes: list[Member]
    hosts: list[Member] = field(default_factory=list)
    router: str | None = None
    router_addresses: dict[str, str] = field(default_factory=dict)

    def prefix(self, segment: str) -> int:
        return self.segments[segment].prefixlen

    def gateway(self, segment: str) -> str | None:
        return self.router_addresses.get(segment)


def _fail(path, key, reason):
    raise LabError(f"{path}: {key}: {reason}")


def load_topology(path: str | Path | None = None, routing_mode: str | None = None) -> Topology:
    path = str(Path(path or DEFAULT_TOPOLOGY).resolve())
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise LabError(f"{path}: cannot read topology: {e}") from e
    if not isinstance(data, dict):
        _fail(path, "<top-level>", "expected a mapping")
    known = {"routingMode", "kvstoreLeaseTTL", "etcd", "segments", "router", "nodes", "hosts"}
    for k in data:
        if k not in known:
            _fail(path, k, "unknown key")
    mode = routing_mode or data.get("routingMode", "native")
    if mode not in ("native", "tunnel"):
        _fail(path, "routingMode", f"expected native or tunnel, got {mode!r}")
    segs = {}
    for name, cidr in (data.get("segments") or {}).items():
        try:
            segs[str(name)] = ipaddress.ip_network(cidr)
        except ValueError as e:
            _fail(path, f"segments.{name}", str(e))
    if not segs:
        _fail(path, "segments", "at least one segment is needed")

    def member(kind, i, m, pod=False):
        where = f"{kind}[{i}]"
        if not isinstance(m, dict) or not {"name", "segment", "ip"} <= set(m):
            _fail(path, where, "expected {name, segment, ip" + (", podCIDR}" if pod else "}"))
        if m["segment"] not in segs:
            _fail(path, f"{where}.segment", f"no segment {m['segment']!r}")
        if ipaddress.ip_address(m["ip"]) not in segs[m["segment"]]:
            _fail(path, f"{where}.ip", f"{m['ip']} is not in {segs[m['segment']]}")
        if pod:
            try:
                ipaddress.ip_network(m.get("podCIDR"))
            except (TypeError, ValueError):
                _fail(path, f"{where}.podCIDR", f"expected a CIDR, got {m.get('podCIDR')!r}")
        if len(str(m["name"])) > 12:
            _fail(path, f"{where}.name", "at most 12 characters (interface names derive from it)")
        return Member(str(m["name"]), m["segment"], str(m["ip"]), m.get("podCIDR") if pod else None)

    nodes = [member("nodes", i, m, pod=True) for i, m in enumerate(data.get("nodes") or [])]
    if not nodes:
        _fail(path, "nodes", "at least one node is needed")
    hosts = [member("hosts", i, m) for i, m in enumerate(data.get("hosts") or [])]
    router = data.get("router")
    raddrs = {}
    if router:
        for seg, ip in (router.get("addresses") or {}).items():
            if seg not in segs or ipaddress.ip_address(ip) not in segs[seg]:
                _fail(path, f"router.addresses.{seg}", f"{ip} is not on a known segment")
            raddrs[seg] = str(ip)
    names = [m.name for m in nodes + hosts] + ([router["name"]] if router else [])
    if len(set(names)) != len(names):
        _fail(path, "nodes", "names must be unique across nodes, hosts and the router")
    etcd = data.get("etcd")
    if etcd is not None and etcd not in {n.name for n in nodes}:
        _fail(path, "etcd", f"no node {etcd!r}")
    ttl = data.get("kvstoreLeaseTTL", 15)
    if type(ttl) is not int or not 5 <= ttl <= 86400:
        _fail(path, "kvstoreLeaseTTL", f"expected seconds from 5 to 86400, got {ttl!r}")
    return Topology(path=path, routingMode=mode, kvstoreLeaseTTL=ttl, etcd=etcd, segments=segs,
                    nodes=nodes, hosts=hosts, router=router["name"] if router else None,
                    router_addresses=raddrs)
