"""Service frontends for the test-run fixtures (and bench/packet.py): the entries the agent's
service planner writes for one frontend in one scope, in cilium_lb4_services_v2 (the head and one
slot a backend), cilium_lb4_backends_v3 and cilium_lb4_reverse_nat."""
from __future__ import annotations

from datapath import abi


def frontend(m, backends, *, addr: str, port: int, rev_nat: int, proto: int = 6,
             flags: int = 0, algo: int = abi.LB_ALGORITHM_RANDOM,
             scope: int = abi.LB_LOOKUP_SCOPE_EXT, flags2: int = 0) -> None:
    """A frontend addr:port/proto (one scope) whose slots hold backends [(id, ip, port)]."""
    key = abi.Lb4Key(address=abi.ip4_to_be32(addr), dport=abi.be16(port), proto=proto,
                     scope=scope)
    for bid, ip, bport in backends:
        m["cilium_lb4_backends_v3"].update(abi.Lb4BackendKey(bid), abi.Lb4Backend(
            address=abi.ip4_to_be32(ip), port=abi.be16(bport), proto=proto))
    for slot, (bid, _, _) in enumerate(backends, start=1):
        k = abi.Lb4Key.from_bytes(bytes(key))
        k.backend_slot = slot
        m["cilium_lb4_services_v2"].update(k, abi.Lb4Service(backend_id=bid,
                                                             rev_nat_index=rev_nat))
    m["cilium_lb4_services_v2"].update(key, abi.Lb4Service(
        count=len(backends), rev_nat_index=rev_nat, flags=flags, flags2=flags2,
        backend_id=algo << abi.LB_ALGORITHM_SHIFT))
    m["cilium_lb4_reverse_nat"].update(abi.Lb4ReverseNatKey(rev_nat), abi.Lb4ReverseNat(
        address=abi.ip4_to_be32(addr), port=abi.be16(port)))
