"""Agent configuration: the one place that reads, validates and diffs the agent's YAML config.

The file uses Cilium's Helm value names (nested mappings such as `ipam.podCIDR`, `bpf.root`).
`load_config` turns it into an immutable `Config` with every default applied, or raises
`ConfigError(file, key, reason)` for the first problem found (key is the dotted path).
`changed_keys` tells a reload which effective values differ; `RESTART_KEYS` says which of
those cannot be applied without restarting the agent.
"""
from __future__ import annotations

import copy
import difflib
import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml

from datapath.errors import ConfigError

__all__ = ["Config", "RESTART_KEYS", "load_config", "parse_config", "changed_keys"]

# dotted YAML key -> Config attribute; also the complete set of accepted keys
_FIELDS: dict[str, str] = {
    "nodeName": "nodeName",
    "devices": "devices",
    "ipam.podCIDR": "podCIDR",
    "ipam.mode": "ipamMode",
    "routingMode": "routingMode",
    "tunnelProtocol": "tunnelProtocol",
    "ipv4NativeRoutingCIDR": "ipv4NativeRoutingCIDR",
    "autoDirectNodeRoutes": "autoDirectNodeRoutes",
    "kubeProxyReplacement": "kubeProxyReplacement",
    "bpf.masquerade": "bpfMasquerade",
    "bpf.root": "bpfRoot",
    "loadBalancer.algorithm": "lbAlgorithm",
    "loadBalancer.acceleration": "lbAcceleration",
    "policyEnforcementMode": "policyEnforcementMode",
    "allowLocalhost": "allowLocalhost",
    "prometheus.enabled": "prometheusEnabled",
    "prometheus.port": "prometheusPort",
    "apiSocket": "apiSocket",
    "stateDir": "stateDir",
    "manifests": "manifests",
    "MTU": "mtu",
    "debug.enabled": "debug",
    "cluster.name": "clusterName",
    "kvstore": "kvstore",
    "kvstoreOpt": "kvstoreEndpoints",     # a leaf: its keys are Cilium's dotted option names
    "kvstoreLeaseTTL": "kvstoreLeaseTTL",
    "serviceCIDR": "serviceCIDR",
    "conntrackGCInterval": "conntrackGCInterval",
    "ipMasqAgent.enabled": "ipMasqAgentEnabled",
    "ipMasqAgent.config.nonMasqueradeCIDRs": "nonMasqueradeCIDRs",
    "ipMasqAgent.config.masqLinkLocal": "masqLinkLocal",
    "egressMasqueradeInterfaces": "egressMasqueradeInterfaces",
    "bpf.natPortRange": "natPortRange",
    "nodePort.range": "nodePortRange",
    "maglev.tableSize": "maglevTableSize",
    "bpf.lbMapMax": "lbMapMax",
    "bpf.ctTcpMax": "ctTcpMax",
    "bpf.ctAnyMax": "ctAnyMax",
    "l2announcements.enabled": "l2Enabled",
    "l2announcements.leaseDuration": "l2LeaseDuration",
    "l2announcements.leaseRenewDeadline": "l2LeaseRenewDeadline",
    "l2announcements.leaseRetryPeriod": "l2LeaseRetryPeriod",
    "reconciler.minInterval": "reconcileMinInterval",
    "reconciler.fullInterval": "reconcileFullInterval",
    "hubble.eventBufferCapacity": "eventBufferCapacity",
    "bpf.monitorAggregation": "monitorAggregation",
    "bpf.monitorInterval": "monitorInterval",
}

# kvstoreOpt keys accepted (Cilium's --kvstore-opt names; etcd.endpoints is a shorthand)
KVSTORE_OPTS = ("etcd.config", "etcd.endpoints")

RESTART_KEYS: frozenset[str] = frozenset({
    "nodeName", "ipam.podCIDR", "apiSocket", "stateDir", "bpf.root",
    "prometheus.port", "prometheus.enabled", "devices", "cluster.name", "kvstore", "kvstoreOpt",
    "kvstoreLeaseTTL", "routingMode", "tunnelProtocol", "bpf.natPortRange",
    "maglev.tableSize", "l2announcements.enabled", "bpf.lbMapMax", "bpf.ctTcpMax", "bpf.ctAnyMax",
    # read once at start (the tunnel device's MTU; the L2 announcer's leases)
    "MTU", "l2announcements.leaseDuration", "l2announcements.leaseRenewDeadline",
    "l2announcements.leaseRetryPeriod",
    # compiled into the programs (-DMONITOR_AGGREGATION, -DMONITOR_INTERVAL)
    "bpf.monitorAggregation", "bpf.monitorInterval",
})

# bpf.monitorAggregation: Cilium's level names (Helm's none|low|medium|maximum, and the agent's
# aliases) -> the canonical name; MONITOR_AGGREGATION_LEVELS gives its number (0..4)
MONITOR_AGGREGATION_LEVELS = {"none": 0, "lowest": 1, "low": 2, "medium": 3, "maximum": 4}
_MONITOR_AGGREGATION_ALIASES = {"disabled": "none", "max": "maximum"}

# bpf.lbMapMax bounds: Cilium's default is the floor; a service map of 2^24 entries is ~0.8 GiB
LB_MAP_MAX_MIN, LB_MAP_MAX_MAX = 65536, 1 << 24

# bpf.ctTcpMax / bpf.ctAnyMax bounds: Cilium's LimitTableMin and LimitTableMax
CT_MAP_MIN, CT_MAP_MAX = 1 << 10, 1 << 24

# Cilium's accepted Maglev table sizes (primes; M should be well above 100 x the backend count)
MAGLEV_TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MISSING = object()


def _tree(keys: list[str]) -> dict[str, Any]:
    """Nested dict of accepted keys: leaves are None, sections are dicts."""
    tree: dict[str, Any] = {}
    for dotted in keys:
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = None
    return tree


_SCHEMA = _tree(list(_FIELDS))


@dataclass(frozen=True)
class Config:
    path: str
    nodeName: str
    devices: tuple[str, ...]
    podCIDR: str
    ipamMode: str
    routingMode: str
    tunnelProtocol: str
    ipv4NativeRoutingCIDR: str | None
    autoDirectNodeRoutes: bool
    kubeProxyReplacement: bool
    bpfMasquerade: bool
    bpfRoot: str
    lbAlgorithm: str
    lbAcceleration: str
    policyEnforcementMode: str
    prometheusEnabled: bool
    prometheusPort: int
    apiSocket: str
    stateDir: str
    manifests: str | None
    mtu: int
    debug: bool
    clusterName: str = "default"
    kvstore: str | None = None                  # "etcd" or None (embedded local store)
    kvstoreEndpoints: tuple[str, ...] = ()      # from kvstoreOpt
    kvstoreLeaseTTL: int = 900                  # seconds; a dead node's entries expire after it
    serviceCIDR: str = "10.96.0.0/16"           # ClusterIPs not given in a manifest come from here
    conntrackGCInterval: int = 0                # seconds between conntrack GC runs; 0 = dynamic
    ipMasqAgentEnabled: bool = False
    nonMasqueradeCIDRs: tuple[str, ...] = ()    # ip-masq-agent: destinations that keep pod IPs
    masqLinkLocal: bool = False                 # masquerade link-local destinations too
    egressMasqueradeInterfaces: tuple[str, ...] = ()   # devices that masquerade ('eth+' = prefix)
    natPortRange: tuple[int, int] = (32768, 65535)     # SNAT source ports (compile-time)
    nodePortRange: tuple[int, int] = (30000, 32767)    # nodePorts given or allocated
    maglevTableSize: int = 16381                       # Maglev lookup table size (a prime)
    lbMapMax: int = 65536                       # entries of the service and backend maps
    ctTcpMax: int = 524288                      # entries of cilium_ct4_global (compile-time)
    ctAnyMax: int = 262144                      # entries of cilium_ct_any4_global (compile-time)
    l2Enabled: bool = False                     # L2 announcements (ARP for LB/external IPs)
    l2LeaseDuration: int = 15                   # seconds a leader's lease lives unrenewed
    l2LeaseRenewDeadline: int = 5               # a leader unable to renew this long steps down
    l2LeaseRetryPeriod: int = 2                 # seconds between renewals and follower tries
    allowLocalhost: str = "always"              # the local host reaches local pods: always|policy
    reconcileMinInterval: float = 0.1           # seconds between two incremental syncs (bursts coalesce)
    reconcileFullInterval: float = 300.0        # seconds between full read-back reconciliations
    eventBufferCapacity: int = 4095             # flows kept in memory (2^n - 1, at most 65535)
    monitorAggregation: str = "medium"          # trace events: none|lowest|low|medium|maximum
    monitorInterval: int = 5                    # seconds: an active flow is traced again after it
    # the parsed mapping as given; not part of equality (two spellings of one config are equal)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def pin_dir(self) -> str:
        return f"{self.bpfRoot}/datapath/{self.nodeName}"

    def monitor_aggregation_level(self) -> int:
        """bpf.monitorAggregation as Cilium's number (MONITOR_AGGREGATION: 0 none .. 4 max)."""
        return MONITOR_AGGREGATION_LEVELS[self.monitorAggregation]

    def gateway_ip(self) -> str:
        net = ipaddress.IPv4Network(self.podCIDR)
        return str(net.network_address + 1)


_DESCRIBE_CHARS = 256     # a longer string is quoted cut short, with its length (a DNS name: 253)


def describe(v: object) -> str:
    """How a bad YAML value is quoted in an error reason (config and manifests); a huge number
    or a long string is cut short (an error line stays readable, and Python's int-to-str limit
    is never hit)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if v.bit_length() <= 256 else f"an integer of {v.bit_length()} bits"
    if isinstance(v, float):
        return str(v)
    if isinstance(v, str):
        if len(v) > _DESCRIBE_CHARS:
            return f"{v[:_DESCRIBE_CHARS]!r}... ({len(v)} characters)"
        return repr(v)
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


def key_text(k: object) -> str:
    """A mapping key as a field path shows it (a non-string key as describe() quotes it)."""
    return k if isinstance(k, str) else describe(k)


# What a YAML text may hold before it is built into Python objects (config, values and
# manifests): PyYAML's libyaml composer recurses in C and overflows the stack on deep nesting
# (a segfault, not an exception), Python's own copies, compares and pickles recurse too; an
# alias repeated inside aliases expands exponentially for anything that walks the result, and
# one inside its own anchor makes a cycle (Kubernetes' YAML decoder rejects both: "excessive
# aliasing", "anchor value contains itself"); and Python refuses to read an integer of more than
# 4300 digits (ValueError). yaml_problem finds each before the loader runs.
MAX_YAML_DEPTH = 100               # nesting levels (a Kubernetes object needs about 10)
MAX_YAML_EXPANSION = 100_000       # nodes a document may reach through aliases, and ...
MAX_YAML_ALIAS_RATIO = 10          # ... at most this many times the nodes it has
_INT_DIGITS = re.compile(r"^[-+]?[0-9_]+$")
_EVENT_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def yaml_problem(text: str) -> tuple[str, str] | None:
    """(where, reason) when the YAML text is nested too deep, expands too far through aliases
    or holds an integer too long to read; None otherwise (and for a syntax error: the loader
    words that). Walks the parser's events only (libyaml's parser does not recurse)."""
    depth = nodes = expanded = 0
    sizes: dict[str, int] = {}            # anchor -> the nodes its value expands to
    open_: list[tuple[str | None, int]] = []   # anchor and expanded count of each open node
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0

    def at(ev) -> str:
        m = ev.start_mark
        return f"line {m.line + 1}, column {m.column + 1}" if m else "<document>"
    try:
        for ev in yaml.parse(text, Loader=_EVENT_LOADER):
            cls = type(ev)
            if cls is yaml.DocumentStartEvent:
                nodes = expanded = 0
                sizes.clear()
            elif cls in (yaml.MappingStartEvent, yaml.SequenceStartEvent):
                depth += 1
                nodes += 1
                expanded += 1
                if depth > MAX_YAML_DEPTH:
                    return at(ev), f"nested deeper than {MAX_YAML_DEPTH} levels"
                open_.append((ev.anchor, expanded - 1))
            elif cls in (yaml.MappingEndEvent, yaml.SequenceEndEvent):
                depth -= 1
                anchor, start = open_.pop()
                if anchor is not None:
                    sizes[anchor] = expanded - start
            elif cls is yaml.ScalarEvent:
                nodes += 1
                expanded += 1
                if ev.anchor is not None:
                    sizes[ev.anchor] = 1
                if limit and len(ev.value) > limit and ev.implicit[0] and \
                        _INT_DIGITS.match(ev.value):
                    return at(ev), (f"an integer of {len(ev.value)} digits is too long "
                                    f"(at most {limit})")
            elif cls is yaml.AliasEvent:
                if any(a == ev.anchor for a, _ in open_):   # a cycle: go-yaml's words
                    return at(ev), f"anchor {ev.anchor!r} value contains itself"
                nodes += 1
                expanded += sizes.get(ev.anchor, 1)
                if expanded > MAX_YAML_EXPANSION and expanded > MAX_YAML_ALIAS_RATIO * nodes:
                    return at(ev), (f"excessive aliasing: the document expands to more than "
                                   f"{expanded} nodes from {nodes}")
    except yaml.YAMLError:
        return None
    return None


class _Reader:
    """Typed access to the parsed mapping by dotted key; every failure is a ConfigError."""

    def __init__(self, data: dict, file: str):
        self.data, self.file = data, file

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ConfigError(self.file, key, reason)

    def get(self, key: str, default: object = _MISSING) -> object:
        node: object = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is _MISSING:
                    self.fail(key, "required key is missing")
                return default
            node = node[part]
        return node

    def boolean(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            self.fail(key, f"expected a boolean (true or false), got {describe(v)}")
        return v

    def enum(self, key: str, choices: tuple[str, ...], default: str) -> str:
        v = self.get(key, default)
        if not isinstance(v, str) or v not in choices:
            want = ", ".join(repr(c) for c in choices)
            self.fail(key, f"expected one of {want}, got {describe(v)}")
        return v

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        v = self.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            self.fail(key, f"expected an integer from {lo} to {hi}, got {describe(v)}")
        return v

    def abspath(self, key: str, default: str) -> str:
        v = self.get(key, default)
        if not isinstance(v, str) or not os.path.isabs(v):
            self.fail(key, f"expected an absolute path, got {describe(v)}")
        return os.path.normpath(v)

    def cidr(self, key: str, default: object = _MISSING) -> ipaddress.IPv4Network | None:
        v = self.get(key, default)
        if (v is None or v == "") and default is not _MISSING:
            return None  # optional CIDR left unset (Helm's values.yaml writes "")
        bad = f"expected an IPv4 CIDR like 10.0.0.0/24, got {describe(v)}"
        if not isinstance(v, str) or "/" not in v:
            self.fail(key, bad)
        try:
            return ipaddress.IPv4Network(v)
        except ValueError:
            pass
        try:
            loose = ipaddress.IPv4Network(v, strict=False)
        except ValueError:
            self.fail(key, bad)
        self.fail(key, f"host bits set, did you mean {loose}?")


def _check_keys(data: dict, schema: dict[str, Any], r: _Reader, prefix: str = "") -> None:
    """Reject unknown keys and sections that are not mappings, in document order."""
    for k, v in data.items():
        dotted = f"{prefix}{key_text(k)}"
        if k not in schema:
            reason = "unknown key"
            if isinstance(k, str):
                # case-insensitive so 'mtu' suggests 'MTU' and 'podCidr' suggests 'podCIDR'
                lower = {s.lower(): s for s in schema}
                close = difflib.get_close_matches(k.lower(), list(lower), n=1)
                if close:
                    reason += f", did you mean '{lower[close[0]]}'?"
            r.fail(dotted, reason)
        sub = schema[k]
        if sub is not None:
            if not isinstance(v, dict):
                r.fail(dotted, f"expected a mapping, got {describe(v)}")
            _check_keys(v, sub, r, dotted + ".")


def _devices(r: _Reader) -> tuple[str, ...]:
    v = r.get("devices", [])
    if isinstance(v, str):
        names = [n for n in re.split(r"[\s,]+", v) if n]
    elif isinstance(v, list):
        names = v
    else:
        r.fail("devices", f"expected a list of interface names or a string, got {describe(v)}")
    seen: list[str] = []
    for n in names:
        if not isinstance(n, str) or not 1 <= len(n) <= 15 or "/" in n or re.search(r"\s", n):
            r.fail("devices", "expected interface names of 1 to 15 characters without '/' "
                              f"or whitespace, got {describe(n)}")
        if n in seen:
            r.fail("devices", f"device {n!r} is listed twice")
        seen.append(n)
    return tuple(seen)


def _kube_proxy_replacement(r: _Reader) -> bool:
    v = r.get("kubeProxyReplacement", False)
    if isinstance(v, bool):
        return v
    if v in ("true", "false"):
        return v == "true"
    if v in ("strict", "partial", "disabled"):
        r.fail("kubeProxyReplacement",
               f"{v!r} was removed in Cilium 1.14; use true or false")
    r.fail("kubeProxyReplacement", f"expected true or false, got {describe(v)}")


def _cidr_list(r: _Reader, key: str) -> tuple[str, ...]:
    v = r.get(key, [])
    if v is None:
        return ()
    if not isinstance(v, list):
        r.fail(key, f"expected a list of IPv4 CIDRs, got {describe(v)}")
    out = []
    for item in v:
        try:
            out.append(str(ipaddress.IPv4Network(item)))
        except (ValueError, TypeError):
            r.fail(key, f"expected IPv4 CIDRs like 10.0.0.0/8, got {describe(item)}")
    return tuple(out)


def _names(r: _Reader, key: str) -> tuple[str, ...]:
    v = r.get(key, "")
    if v is None or v == "":
        return ()
    items = re.split(r"[,\s]+", v) if isinstance(v, str) else v
    if not isinstance(items, list) or not all(
            isinstance(i, str) and re.match(r"^[A-Za-z0-9_.:-]{1,15}\+?$", i) for i in items if i):
        r.fail(key, f"expected interface names (a trailing + matches a prefix), got {describe(v)}")
    return tuple(i for i in items if i)


def _port_range(r: _Reader, key: str, default: str = "32768-65535",
                lowest: int = 1024) -> tuple[int, int]:
    v = r.get(key, default)
    m = re.match(r"^(\d{1,9})\s*[-,]\s*(\d{1,9})$", v) if isinstance(v, str) else None
    lo, hi = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not m or not lowest <= lo <= hi <= 65535:
        r.fail(key, f"expected a port range like {default} within {lowest}-65535, "
                    f"got {describe(v)}")
    return lo, hi


def _node_port_range(r: _Reader) -> tuple[int, int]:
    """nodePort.range; it may not overlap bpf.natPortRange, or a reply to a SNATed flow could be
    taken for a new NodePort request."""
    lo, hi = _port_range(r, "nodePort.range", "30000-32767", 1)
    nat_lo, nat_hi = _port_range(r, "bpf.natPortRange")
    if lo <= nat_hi and nat_lo <= hi:
        r.fail("nodePort.range", f"{lo}-{hi} overlaps bpf.natPortRange {nat_lo}-{nat_hi}")
    return lo, hi


def _maglev_table_size(r: _Reader) -> int:
    v = r.get("maglev.tableSize", 16381)
    if type(v) is not int or v not in MAGLEV_TABLE_SIZES:
        r.fail("maglev.tableSize", f"expected one of the primes {', '.join(map(str, MAGLEV_TABLE_SIZES))}"
                                   f", got {describe(v)}")
    return v


def _seconds(r: _Reader, key: str, default: int) -> int:
    """Whole seconds, as an integer or as Helm writes durations ("15s", "1m")."""
    v = r.get(key, default)
    if isinstance(v, str):
        m = re.match(r"^(\d{1,9})(s|m)$", v.strip())
        v = int(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else v
    if type(v) is not int or not 1 <= v <= 3600:
        r.fail(key, f"expected seconds from 1 to 3600 (an integer, or a duration like "
                    f"'15s'), got {describe(v)}")
    return v


def _duration(r: _Reader, key: str, default: float, lo: float, hi: float) -> float:
    """Seconds, given as a number or a duration like '100ms', '15s' or '5m'."""
    v = r.get(key, default)
    if isinstance(v, str):
        m = re.match(r"^(\d+(?:\.\d+)?)(ms|s|m)$", v.strip())
        v = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)] if m else v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        r.fail(key, f"expected a duration from {lo:g}s to {hi:g}s (seconds, or like '100ms', "
                    f"'15s', '5m'), got {describe(v)}")
    return float(v)


def _l2_leases(r: _Reader) -> tuple[int, int, int]:
    """leaseDuration > leaseRenewDeadline > leaseRetryPeriod, as leader election needs: a
    leader steps down before its lease can expire, and renews more than once in time."""
    base = "l2announcements."
    dur = _seconds(r, base + "leaseDuration", 15)
    renew = _seconds(r, base + "leaseRenewDeadline", 5)
    retry = _seconds(r, base + "leaseRetryPeriod", 2)
    if renew >= dur:
        r.fail(base + "leaseRenewDeadline",
               f"must be shorter than leaseDuration ({dur}s), got {renew}s")
    if retry >= renew:
        r.fail(base + "leaseRetryPeriod",
               f"must be shorter than leaseRenewDeadline ({renew}s), got {retry}s")
    return dur, renew, retry


def _event_buffer_capacity(r: _Reader) -> int:
    """Cilium's rule for hubble-event-buffer-capacity: one less than a power of two, at most
    65535."""
    v = r.integer("hubble.eventBufferCapacity", 4095, 1, 65535)
    if v & (v + 1):
        r.fail("hubble.eventBufferCapacity", f"expected one less than a power of two (1, 3, 7, "
                                             f"..., 4095, ..., 65535), got {v}")
    return v


def _monitor_aggregation(r: _Reader) -> str:
    """Cilium's monitor aggregation level: a name (none, lowest, low, medium, maximum; disabled
    and max as Cilium's agent takes them) or its number 0..4; kept as the canonical name."""
    key = "bpf.monitorAggregation"
    v = r.get(key, "medium")
    if isinstance(v, int) and not isinstance(v, bool):
        if 0 <= v <= 4:
            return next(n for n, lvl in MONITOR_AGGREGATION_LEVELS.items() if lvl == v)
    elif isinstance(v, str):
        name = _MONITOR_AGGREGATION_ALIASES.get(v.lower(), v.lower())
        if name in MONITOR_AGGREGATION_LEVELS:
            return name
    r.fail(key, f"expected one of 'none', 'low', 'medium', 'maximum' (or 'lowest', or a level "
                f"0 to 4), got {describe(v)}")


def _cluster_name(r: _Reader) -> str:
    v = r.get("cluster.name", "default")
    if not isinstance(v, str) or len(v) > 32 or not _DNS_LABEL.match(v):
        r.fail("cluster.name", f"expected a DNS-1123 label of at most 32 characters, got {describe(v)}")
    return v


def _kvstore(r: _Reader, path: str) -> tuple[str | None, tuple[str, ...]]:
    kind = r.get("kvstore", None)
    if kind in (None, ""):
        kind = None
    elif kind != "etcd":
        r.fail("kvstore", f"expected etcd (or empty for the embedded store), got {describe(kind)}")
    opts = r.get("kvstoreOpt", {})
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        r.fail("kvstoreOpt", f"expected a mapping, got {describe(opts)}")
    for k in opts:
        if k not in KVSTORE_OPTS:
            r.fail(f"kvstoreOpt.{key_text(k)}",
                   f"unknown option; expected one of {', '.join(KVSTORE_OPTS)}")
    endpoints: list = []
    if "etcd.endpoints" in opts:
        v = opts["etcd.endpoints"]
        endpoints = [e for e in re.split(r"[,\s]+", v) if e] if isinstance(v, str) else v
    elif "etcd.config" in opts:
        cfg_file = os.path.join(os.path.dirname(path), str(opts["etcd.config"]))
        try:
            with open(cfg_file, encoding="utf-8") as f:
                text = f.read()
            problem = yaml_problem(text)
            if problem:
                raise ValueError(f"{problem[0]}: {problem[1]}")
            endpoints = (yaml.safe_load(text) or {}).get("endpoints") or []
        except (OSError, yaml.YAMLError, AttributeError, ValueError, RecursionError) as e:
            r.fail("kvstoreOpt.etcd.config", f"cannot read endpoints from {cfg_file}: {e}")
    if not isinstance(endpoints, list) or not all(
            isinstance(e, str) and re.match(r"^https?://[^/\s]+$", e) for e in endpoints):
        r.fail("kvstoreOpt", f"expected etcd endpoint URLs like http://10.0.0.1:2379, "
                             f"got {describe(endpoints)}")
    if kind and not endpoints:
        r.fail("kvstoreOpt", "kvstore etcd needs etcd.endpoints or etcd.config")
    return kind, tuple(endpoints)


def _allow_localhost(r: _Reader) -> str:
    """Cilium's --allow-localhost: auto (always, as Cilium decides in Kubernetes, so kubelet
    probes reach pods), always, or policy (the host is a peer like any other)."""
    v = r.enum("allowLocalhost", ("auto", "always", "policy"), "auto")
    return "always" if v == "auto" else v


def parse_config(data: object, path: str) -> Config:
    """Validate an already-parsed YAML object; `path` is the file it came from."""
    path = os.path.abspath(path)
    if data is None:
        raise ConfigError(path, "<file>", "file is empty; expected a mapping with at least "
                                          "nodeName and ipam.podCIDR")
    if not isinstance(data, dict):
        raise ConfigError(path, "<top-level>", f"expected a mapping, got {describe(data)}")
    r = _Reader(data, path)
    _check_keys(data, _SCHEMA, r)

    node = r.get("nodeName")
    if not isinstance(node, str) or len(node) > 63 or not _DNS_LABEL.match(node):
        r.fail("nodeName", "expected a DNS-1123 label (lowercase letters, digits and '-', "
                           f"at most 63, starting and ending with a letter or digit), got {describe(node)}")

    pod_cidr = r.cidr("ipam.podCIDR")
    assert pod_cidr is not None
    if not 8 <= pod_cidr.prefixlen <= 30:
        r.fail("ipam.podCIDR", f"prefix length must be between /8 and /30, got /{pod_cidr.prefixlen}")

    tunnel = r.enum("tunnelProtocol", ("vxlan", "geneve"), "vxlan")
    if tunnel == "geneve":
        r.fail("tunnelProtocol", "geneve is not available on this kernel; use vxlan")

    native = r.cidr("ipv4NativeRoutingCIDR", None)

    manifests = r.get("manifests", None)
    if manifests is not None and not isinstance(manifests, str):
        r.fail("manifests", f"expected a path, got {describe(manifests)}")
    if manifests:
        manifests = os.path.normpath(os.path.join(os.path.dirname(path), manifests))
    else:
        manifests = None

    mtu = r.get("MTU", 0)
    if type(mtu) is not int or not (mtu == 0 or 576 <= mtu <= 9000):
        r.fail("MTU", f"expected 0 (auto) or an integer from 576 to 9000, got {describe(mtu)}")
    mtu = mtu or 1500  # 0 = auto
    kvstore, kv_endpoints = _kvstore(r, path)
    l2_lease, l2_renew, l2_retry = _l2_leases(r)

    return Config(
        path=path,
        nodeName=node,
        devices=_devices(r),
        podCIDR=str(pod_cidr),
        ipamMode=r.enum("ipam.mode", ("kubernetes", "cluster-pool"), "kubernetes"),
        routingMode=r.enum("routingMode", ("native", "tunnel"), "tunnel"),
        tunnelProtocol=tunnel,
        ipv4NativeRoutingCIDR=str(native) if native else None,
        autoDirectNodeRoutes=r.boolean("autoDirectNodeRoutes", False),
        kubeProxyReplacement=_kube_proxy_replacement(r),
        bpfMasquerade=r.boolean("bpf.masquerade", False),
        bpfRoot=r.abspath("bpf.root", "/sys/fs/bpf"),
        lbAlgorithm=r.enum("loadBalancer.algorithm", ("random", "maglev"), "random"),
        lbAcceleration=r.enum("loadBalancer.acceleration",
                              ("disabled", "native", "best-effort"), "disabled"),
        policyEnforcementMode=r.enum("policyEnforcementMode",
                                     ("default", "always", "never"), "default"),
        prometheusEnabled=r.boolean("prometheus.enabled", True),
        prometheusPort=r.integer("prometheus.port", 9962, 1, 65535),
        apiSocket=r.abspath("apiSocket", "/var/run/datapath/datapath.sock"),
        stateDir=r.abspath("stateDir", "/var/run/datapath/state"),
        manifests=manifests,
        mtu=mtu,
        debug=r.boolean("debug.enabled", False),
        clusterName=_cluster_name(r),
        kvstore=kvstore,
        kvstoreEndpoints=kv_endpoints,
        kvstoreLeaseTTL=r.integer("kvstoreLeaseTTL", 900, 5, 86400),
        serviceCIDR=str(r.cidr("serviceCIDR", "10.96.0.0/16")),
        conntrackGCInterval=r.integer("conntrackGCInterval", 0, 0, 86400),
        ipMasqAgentEnabled=r.boolean("ipMasqAgent.enabled", False),
        nonMasqueradeCIDRs=_cidr_list(r, "ipMasqAgent.config.nonMasqueradeCIDRs"),
        masqLinkLocal=r.boolean("ipMasqAgent.config.masqLinkLocal", False),
        egressMasqueradeInterfaces=_names(r, "egressMasqueradeInterfaces"),
        natPortRange=_port_range(r, "bpf.natPortRange"),
        nodePortRange=_node_port_range(r),
        maglevTableSize=_maglev_table_size(r),
        lbMapMax=r.integer("bpf.lbMapMax", 65536, LB_MAP_MAX_MIN, LB_MAP_MAX_MAX),
        ctTcpMax=r.integer("bpf.ctTcpMax", 524288, CT_MAP_MIN, CT_MAP_MAX),
        ctAnyMax=r.integer("bpf.ctAnyMax", 262144, CT_MAP_MIN, CT_MAP_MAX),
        l2Enabled=r.boolean("l2announcements.enabled", False),
        l2LeaseDuration=l2_lease,
        l2LeaseRenewDeadline=l2_renew,
        l2LeaseRetryPeriod=l2_retry,
        allowLocalhost=_allow_localhost(r),
        reconcileMinInterval=_duration(r, "reconciler.minInterval", 0.1, 0, 60),
        reconcileFullInterval=_duration(r, "reconciler.fullInterval", 300, 1, 86400),
        eventBufferCapacity=_event_buffer_capacity(r),
        monitorAggregation=_monitor_aggregation(r),
        monitorInterval=_seconds(r, "bpf.monitorInterval", 5),
        raw=copy.deepcopy(data),
    )


def load_config(path: str) -> Config:
    """Read, parse and validate the config file at `path`."""
    apath = os.path.abspath(path)
    try:
        with open(apath, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(apath, "<file>", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(apath, "<file>", "is a directory, expected a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(apath, "<file>", "not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(apath, "<file>", (e.strerror or str(e)).lower()) from None
    problem = yaml_problem(text)
    if problem:
        raise ConfigError(apath, "<yaml>", f"{problem[0]}: {problem[1]}")
    try:
        data = yaml.safe_load(text)
    except (ValueError, RecursionError) as e:   # e.g. an invalid date (2001-13-45)
        raise ConfigError(apath, "<yaml>", f"cannot read a value: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(apath, "<yaml>", f"{where}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(apath, "<yaml>", str(e)) from None
    return parse_config(data, apath)


def changed_keys(old: Config, new: Config) -> set[str]:
    """Dotted keys whose effective value differs between two configs."""
    return {k for k, attr in _FIELDS.items() if getattr(old, attr) != getattr(new, attr)}
