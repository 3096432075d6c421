"""Host-scope IPAM: pod addresses from this node's pod CIDR, one per container, kept in the
agent's state so they survive agent restarts. The first host address is the pods' gateway.

API:
    HostIPAM(cidr, allocations)   allocate(owner) -> ip (the same ip again for the same owner),
                                  release(owner) -> bool, gateway, owner_of(ip)
"""
from __future__ import annotations

import ipaddress

from datapath.errors import DatapathError


class IPAMExhausted(DatapathError):
    pass


class HostIPAM:
    def __init__(self, cidr: str, allocations: dict[str, str]):
        self.net = ipaddress.ip_network(cidr)
        self.gateway = str(next(self.net.hosts()))
        self.allocations = allocations          # owner -> ip (shared with the state dict)

    def allocate(self, owner: str) -> str:
        if owner in self.allocations:
            return self.allocations[owner]
        used = set(self.allocations.values()) | {self.gateway}
        for host in self.net.hosts():
            ip = str(host)
            if ip not in used:
                self.allocations[owner] = ip
                return ip
        raise IPAMExhausted(f"no free address left in {self.net}")

    def release(self, owner: str) -> bool:
        return self.allocations.pop(owner, None) is not None

    def owner_of(self, ip: str) -> str | None:
        for owner, a in self.allocations.items():
            if a == ip:
                return owner
        return None
