"""Local endpoints for the test-run fixtures: the cilium_lxc entry and, by default, an allow-all
policy entry per direction (an endpoint with no policy entry at all is denied everything, as
Cilium's; the agent writes these for an endpoint that does not enforce policy)."""
from __future__ import annotations

from datapath import abi


def allow_all(maps, ep_id: int, *directions) -> None:
    """One allow-all entry {ep_id, any identity, dir} for each direction (default: both)."""
    for d in directions or (abi.POLICY_INGRESS, abi.POLICY_EGRESS):
        maps["cilium_policy_v2"].update(abi.policy_key(ep_id, 0, d), abi.policy_entry())


def set_sender(maps, ip: str, ifindex: int) -> None:
    """Make ifindex the host-side veth of the endpoint at ip: its dp_ep_ifindex row, a copy of
    the endpoint's cilium_lxc entry, as the agent writes it."""
    info = maps["cilium_lxc"].get(abi.endpoint_key(ip))
    assert info is not None, f"no endpoint at {ip}"
    maps["dp_ep_ifindex"].update(abi.EpIfindexKey(ifindex), info)


def add_endpoint(maps, ip: str, *, ifindex: int, lxc_id: int, mac: str, node_mac: str,
                 sec_id: int, flags: int = 0, policy: bool = True) -> abi.EndpointInfo:
    """A local endpoint at ip; with policy, allow-all in both directions."""
    info = abi.endpoint_info(ifindex=ifindex, lxc_id=lxc_id, mac=mac, node_mac=node_mac,
                             sec_id=sec_id, ip=ip, flags=flags)
    if policy:
        allow_all(maps, lxc_id)
    maps["cilium_lxc"].update(abi.endpoint_key(ip), info)
    return info


def add_pods_a_and_b(maps) -> None:
    """Pods A (sending, on lo) and B on this node, with no policy entry at all."""
    from . import packets as P
    add_endpoint(maps, P.POD_A_IP, ifindex=P.LXC_A_IFINDEX, lxc_id=P.EP_A, mac=P.POD_A_MAC,
                 node_mac=P.LXC_A_MAC, sec_id=P.ID_A, policy=False)
    add_endpoint(maps, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=P.EP_B, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=P.ID_B, policy=False)
    set_sender(maps, P.POD_A_IP, P.LXC_A_IFINDEX)
