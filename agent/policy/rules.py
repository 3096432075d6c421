"""The policy model: what parse.py makes of a policy object and mapstate.py turns into entries.

One Rule per NetworkPolicy, and per spec of a CiliumNetworkPolicy or
CiliumClusterwideNetworkPolicy. A rule's subject selects the endpoints it applies to; each
direction holds RuleBlocks (allow and deny alike), each naming peers and ports:

    peers   ()          no peer: the block allows nothing (Cilium's `ingress: [{}]`)
            (WILDCARD,) every peer (identity 0)
    ports   ()          every port of every protocol
            PortRule    one protocol (ANY = TCP, UDP and SCTP; with no port: any protocol at
                        all), one port, a range port..end_port, a named port, or no port (all)

`enforce_ingress` / `enforce_egress` say whether the rule puts the direction into default deny
for the endpoints it selects.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .selector import LabelSelector, Peer

PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}


@dataclass(frozen=True)
class PortRule:
    protocol: str                 # TCP | UDP | SCTP | ANY
    port: int | None = None       # None: every port (or a named port)
    end_port: int | None = None   # set only above port: the range port..end_port
    name: str | None = None       # a named port, resolved per pod

    def __str__(self) -> str:
        if self.name is not None:
            return f"{self.name}/{self.protocol}"
        if self.end_port is not None:
            return f"{self.port}-{self.end_port}/{self.protocol}"
        return f"{self.port or 0}/{self.protocol}"


@dataclass(frozen=True)
class RuleBlock:
    peers: tuple[Peer, ...]
    ports: tuple[PortRule, ...] = ()
    deny: bool = False

    def to_dict(self) -> dict:
        return {"deny": self.deny, "peers": [str(p) for p in self.peers],
                "ports": [str(p) for p in self.ports]}


@dataclass(frozen=True)
class Rule:
    kind: str                      # NetworkPolicy | CiliumNetworkPolicy | ...Clusterwide...
    namespace: str                 # "" for CiliumClusterwideNetworkPolicy
    name: str
    subject: LabelSelector         # namespaced kinds: restricted to their namespace
    ingress: tuple[RuleBlock, ...]
    egress: tuple[RuleBlock, ...]
    enforce_ingress: bool
    enforce_egress: bool
    file: str
    index: int = 0                 # the spec's place in a Cilium policy (spec first, specs)

    @property
    def policy(self) -> str:
        """The object, as errors and the CLI name it: "NetworkPolicy x/deny-all"."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace \
            else f"{self.kind} {self.name}"

    def peers(self) -> Iterator[Peer]:
        for block in self.ingress + self.egress:
            yield from block.peers

    def to_dict(self) -> dict:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                "file": self.file, "index": self.index, "subject": str(self.subject),
                "enforce": {"ingress": self.enforce_ingress, "egress": self.enforce_egress},
                "ingress": [b.to_dict() for b in self.ingress],
                "egress": [b.to_dict() for b in self.egress]}
