"""One endpoint's desired policy map state: the rules that select it, turned into
cilium_policy_v2 entries {peer identity, direction, protocol, port prefix} -> {deny}.

    compute(rules, selections, own_ports, named_ports_of, mode, allow_localhost)
        -> EndpointPolicy(ingress_enforced, egress_enforced, entries {MapKey: MapValue})
    verdict(entries, identity, egress, proto, port) -> "allow" | "deny" | "drop"

How entries are made:
- every peer identity a block selects (0 for the wildcard) gets one entry per port: a port is
  (proto, port, 16); a range is its prefix cover (portrange.py); every port of one protocol is
  (proto, 0, 0); ANY with a port means TCP, UDP and SCTP; no ports at all is (0, 0, 0): any
  protocol (ICMP included), any port.
- named ports: ingress ones resolve against the endpoint's own container ports; egress ones
  against the ports of the pods behind each peer identity (`named_ports_of({id})`, or
  `named_ports_of(None)`, every pod, for the wildcard). A name that resolves to nothing allows
  nothing.
- deny wins: an allow entry that a deny entry of the same identity covers (same identity, any
  protocol or the same protocol with a covering port prefix) is written as a deny. A deny of
  another identity (the wildcard's, say) needs no rewriting: the datapath looks up both the
  peer's identity and identity 0, and a deny from either wins (see `verdict`).
- enforcement: mode "always" enforces both directions, "never" neither, "default" a direction
  some selecting rule enforces. A direction that is not enforced gets the allow-all entry
  (0, dir, 0, 0, 0), plus the entries of rules that select the endpoint without enforcing
  (Cilium's enableDefaultDeny: false), so their denies still hold ("never": allow-all only).
  allowLocalhost "always" allows identity 1 (host) into an enforced ingress; denies still beat it.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .portrange import PORT_BITS, port_prefixes
from .rules import PROTO_NUMBERS, PortRule, Rule
from .selector import Peer

INGRESS, EGRESS = 0, 1
MODES = ("default", "always", "never")
ALLOW_LOCALHOST = ("always", "policy")
HOST_IDENTITY = 1
ANY_PROTOCOLS = tuple(PROTO_NUMBERS.values())   # what ANY with a port stands for
# derived_from of the entries no rule makes (Cilium's labels)
LOCALHOST_LABEL = "allow-localhost-ingress"
ALLOW_ANY_LABELS = ("allow-any-ingress", "allow-any-egress")

# {port name: [(protocol "TCP" or its number, port)]}
NamedPorts = Mapping[str, Iterable[tuple[str | int, int]]]
NamedPortsOf = Callable[[frozenset[int] | None], NamedPorts]
_PortTable = dict[str, set[tuple[int, int]]]
_Key3 = tuple[int, int, int]   # (proto, port, prefix)


@dataclass(frozen=True, order=True)
class MapKey:
    identity: int   # the peer's security identity; 0 = any peer
    egress: int     # INGRESS or EGRESS
    proto: int      # IPPROTO_*; 0 = any protocol (then port and prefix are 0)
    port: int       # destination port, host order
    prefix: int     # port prefix bits, 0..16 (0: every port)


@dataclass(frozen=True)
class MapValue:
    deny: bool
    derived_from: tuple[str, ...]   # the policies behind the entry (for the CLI)


@dataclass(frozen=True)
class EndpointPolicy:
    ingress_enforced: bool
    egress_enforced: bool
    entries: dict[MapKey, MapValue]   # shared with the engine's cache: read only


def _port_table(ports: NamedPorts) -> _PortTable:
    """Named ports with protocol numbers."""
    return {name: {(p if isinstance(p, int) else PROTO_NUMBERS[p], n) for p, n in pairs}
            for name, pairs in ports.items()}


def _fixed_keys(ports: tuple[PortRule, ...]) -> list[_Key3]:
    """The (proto, port, prefix) of a block's numeric ports; no ports at all: anything."""
    if not ports:
        return [(0, 0, 0)]
    out = []
    for p in ports:
        if p.name is not None:
            continue
        if p.protocol == "ANY" and p.port is None:
            out.append((0, 0, 0))
            continue
        protos = ANY_PROTOCOLS if p.protocol == "ANY" else (PROTO_NUMBERS[p.protocol],)
        ranges = [(0, 0)] if p.port is None else port_prefixes(p.port, p.end_port or p.port)
        out += [(proto, port, bits) for proto in protos for port, bits in ranges]
    return out


def _named_keys(p: PortRule, table: _PortTable) -> list[_Key3]:
    allowed = ANY_PROTOCOLS if p.protocol == "ANY" else (PROTO_NUMBERS[p.protocol],)
    return sorted((proto, port, PORT_BITS) for proto, port in table.get(p.name or "", ())
                  if proto in allowed)


def _covers(d: MapKey, a: MapKey) -> bool:
    """Deny entry d covers allow entry a (both of one identity and direction)."""
    if d.proto == 0:
        return True
    shift = PORT_BITS - d.prefix
    return d.proto == a.proto and d.prefix <= a.prefix and d.port >> shift == a.port >> shift


def _resolve(allow: Mapping[MapKey, set[str]], deny: Mapping[MapKey, set[str]]
             ) -> dict[MapKey, MapValue]:
    """Deny precedence within each identity: covered allows become denies."""
    denies: dict[tuple[int, int], list[MapKey]] = defaultdict(list)
    for k in deny:
        denies[(k.identity, k.egress)].append(k)
    out = {k: MapValue(True, tuple(sorted(names))) for k, names in deny.items()}
    for k, names in allow.items():
        covering = [d for d in denies.get((k.identity, k.egress), ()) if _covers(d, k)]
        if covering:
            out[k] = MapValue(True, tuple(sorted(names.union(*(deny[d] for d in covering)))))
        else:
            out[k] = MapValue(False, tuple(sorted(names)))
    return out


def compute(rules: Sequence[Rule], selections: Callable[[Peer], frozenset[int]],
            own_ports: NamedPorts, named_ports_of: NamedPortsOf, mode: str = "default",
            allow_localhost: str = "always") -> EndpointPolicy:
    """The map state of an endpoint that `rules` (and only they) select."""
    own = _port_table(own_ports)
    peer_tables: dict[int, _PortTable] = {}

    def peer_ports(ident: int) -> _PortTable:
        if ident not in peer_tables:
            peer_tables[ident] = _port_table(named_ports_of(frozenset({ident}) if ident else None))
        return peer_tables[ident]

    allow: dict[MapKey, set[str]] = defaultdict(set)
    deny: dict[MapKey, set[str]] = defaultdict(set)
    enforced = []
    for d in (INGRESS, EGRESS):
        on = mode == "always" or mode == "default" and any(
            r.enforce_egress if d else r.enforce_ingress for r in rules)
        enforced.append(on)
        for r in rules if mode != "never" else ():
            name = r.policy
            for block in r.egress if d else r.ingress:
                target = deny if block.deny else allow
                fixed = _fixed_keys(block.ports)
                named = [p for p in block.ports if p.name is not None]
                for peer in block.peers:
                    for ident in selections(peer):
                        keys = fixed
                        if named:
                            table = peer_ports(ident) if d else own
                            keys = fixed + [k for p in named for k in _named_keys(p, table)]
                        for proto, port, prefix in keys:
                            target[MapKey(ident, d, proto, port, prefix)].add(name)
        if on and d == INGRESS and allow_localhost == "always":
            allow[MapKey(HOST_IDENTITY, INGRESS, 0, 0, 0)].add(LOCALHOST_LABEL)
        if not on:
            allow[MapKey(0, d, 0, 0, 0)].add(ALLOW_ANY_LABELS[d])
    return EndpointPolicy(enforced[INGRESS], enforced[EGRESS], _resolve(allow, deny))


def _lookup(entries: Mapping[MapKey, MapValue], identity: int, egress: int, proto: int,
            port: int) -> MapValue | None:
    """The longest-prefix match among one identity's entries, as the LPM trie finds it."""
    best, best_len = None, -1
    for k, v in entries.items():
        if k.identity != identity or k.egress != egress:
            continue
        if k.proto == 0:
            length = 0
        elif k.proto == proto and port >> (PORT_BITS - k.prefix) == k.port >> (
                PORT_BITS - k.prefix):
            length = 8 + k.prefix
        else:
            continue
        if length > best_len:
            best, best_len = v, length
    return best


def verdict(entries: Mapping[MapKey, MapValue], identity: int, egress: int, proto: int,
            port: int) -> str:
    """The datapath's decision (bpf/lib/policy.h) for a packet from/to peer `identity`:
    "deny" (181) if the peer's or the wildcard's match is a deny, else "allow" if either
    matched, else "drop" (133)."""
    found = [_lookup(entries, i, egress, proto, port) for i in (identity, 0)]
    if any(v is not None and v.deny for v in found):
        return "deny"
    return "allow" if any(v is not None for v in found) else "drop"
