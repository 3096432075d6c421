"""Identity policy, as Cilium enforces it: Kubernetes NetworkPolicy, CiliumNetworkPolicy and
CiliumClusterwideNetworkPolicy (L3/L4) turned into per-endpoint policy map entries.

    selector.py       label, CIDR and entity selectors over identity label sets
    rules.py          the model: Rule, RuleBlock, PortRule
    parse.py          policy objects -> rules, validated (ManifestError names file, object, field)
    portrange.py      port ranges -> LPM prefixes
    selectorcache.py  selectors -> the identities they select, updated incrementally
    mapstate.py       rules -> one endpoint's map entries (deny precedence, enforcement)
    engine.py         PolicyEngine: what the daemon holds
    subsystem.py      the daemon's side: maps, metrics, API routes
"""
from __future__ import annotations

from .engine import PolicyEngine
from .mapstate import EndpointPolicy, MapKey, MapValue
from .parse import parse_policy
from .portrange import port_prefixes

__all__ = ["PolicyEngine", "EndpointPolicy", "MapKey", "MapValue", "parse_policy",
           "port_prefixes"]
