"""BPF_PROG_TEST_RUN cases for cil_from_netdev, cil_from_overlay and from-container's forwarding
to pods on other nodes (tunnel and native)."""
from __future__ import annotations

import os

import pytest

from datapath import abi, netns, testrun
from datapath.maps import metrics_totals, open_maps

from ..nsfork import run_in_netns
from . import packets as P
from .endpoints import add_endpoint, set_sender


def _local_pod_b(maps):
    add_endpoint(maps, P.POD_B_IP, ifindex=P.LXC_B_IFINDEX, lxc_id=11, mac=P.POD_B_MAC,
                 node_mac=P.LXC_B_MAC, sec_id=1001)


def test_from_netdev_delivers_to_local_pod_without_the_stack(host, from_netdev):
    maps = open_maps(host)
    _local_pod_b(maps)
    res = testrun.run(from_netdev.fd, P.REMOTE_POD_C_TO_POD_B, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(P.routed(P.REMOTE_POD_C_TO_POD_B, src_mac=P.LXC_B_MAC,
                                   dst_mac=P.POD_B_MAC), res.data)
    counts = metrics_totals(maps["cilium_metrics"])
    assert counts[(abi.REASON_FORWARDED, abi.METRIC_INGRESS)][0] == 1


def test_from_netdev_passes_node_traffic_untouched(host, from_netdev):
    maps = open_maps(host)
    _local_pod_b(maps)
    res = testrun.run(from_netdev.fd, P.OUTSIDE_TO_NODE, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_OK
    testrun.assert_packet(P.OUTSIDE_TO_NODE, res.data)


def test_from_netdev_truncated_ip_dropped_as_invalid(host, from_netdev):
    maps = open_maps(host)
    data = P.truncated_ip_total_length()
    res = testrun.run(from_netdev.fd, data, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_DROP
    assert metrics_totals(maps["cilium_metrics"])[(abi.DROP_INVALID, abi.METRIC_INGRESS)] == \
        (1, len(data))


def test_from_overlay_without_tunnel_key_is_dropped_147(overlay, from_overlay):
    maps = open_maps(overlay)
    _local_pod_b(maps)
    res = testrun.run(from_overlay.fd, P.REMOTE_POD_C_TO_POD_B, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_DROP
    assert metrics_totals(maps["cilium_metrics"])[(abi.DROP_NO_TUNNEL_KEY, abi.METRIC_INGRESS)][0] == 1
    assert abi.reason_string(abi.DROP_NO_TUNNEL_KEY) == "Error retrieving tunnel key"


def _pod_a_with_remote_c(maps, flags, tunnel_ifindex=0, ifindex=P.LXC_A_IFINDEX):
    add_endpoint(maps, P.POD_A_IP, ifindex=ifindex, lxc_id=10, mac=P.POD_A_MAC,
                 node_mac=P.LXC_A_MAC, sec_id=1000)
    set_sender(maps, P.POD_A_IP, ifindex)
    maps["cilium_ipcache"].update(abi.ipcache_key(f"{P.POD_C_IP}/32"),
                                  abi.remote_endpoint_info(1002, P.NODE_W1_IP))
    maps["dp_node_config"].update(abi.U32Key(0), abi.NodeConfig(
        flags=flags, tunnel_ifindex=tunnel_ifindex, node_ip=abi.ip4_to_be32(P.NODE_CTR_IP)))


def test_tunnel_mode_encapsulates_to_the_hosting_node(lxc, from_container):
    maps = open_maps(lxc)
    _pod_a_with_remote_c(maps, abi.NODE_CFG_F_TUNNEL, tunnel_ifindex=1)
    res = testrun.run(from_container.fd, P.POD_A_TO_REMOTE_POD_C, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_REDIRECT
    out = P.POD_A_TO_REMOTE_POD_C.copy()
    out["IP"].ttl -= 1
    del out["IP"].chksum
    testrun.assert_packet(P.Ether(bytes(out)), res.data)     # inner packet: TTL - 1 only


def test_tunnel_mode_without_tunnel_device_is_a_counted_drop(lxc, from_container):
    maps = open_maps(lxc)
    _pod_a_with_remote_c(maps, abi.NODE_CFG_F_TUNNEL, tunnel_ifindex=0)
    res = testrun.run(from_container.fd, P.POD_A_TO_REMOTE_POD_C, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_DROP
    assert metrics_totals(maps["cilium_metrics"])[(abi.DROP_NO_TUNNEL_ENDPOINT,
                                                    abi.METRIC_EGRESS)][0] == 1


def test_without_node_config_remote_pods_go_to_the_stack(lxc, from_container):
    maps = open_maps(lxc)
    _pod_a_with_remote_c(maps, 0)
    res = testrun.run(from_container.fd, P.POD_A_TO_REMOTE_POD_C, ctx=testrun.tc_ctx(1))
    assert res.retval == abi.CTX_ACT_OK
    testrun.assert_packet(P.POD_A_TO_REMOTE_POD_C, res.data)


@pytest.fixture
def routed_ns(privileged):
    """A netns where 172.20.1.0/24 is routed via 192.168.10.101 on eth1, neighbour known."""
    name = f"dpt-fib-{os.getpid()}"
    netns.add(name)
    try:
        netns.ip(name, "link", "add", "lxcf0", "type", "veth", "peer", "name", "lxcf1")
        netns.ip(name, "link", "add", "eth1", "address", P.NODE_CTR_MAC, "type", "veth", "peer",
                 "name", "eth1p")
        for dev in ("lxcf0", "lxcf1", "eth1", "eth1p"):
            netns.ip(name, "link", "set", dev, "up")
        netns.ip(name, "addr", "add", f"{P.NODE_CTR_IP}/24", "dev", "eth1")
        netns.ip(name, "route", "add", "172.20.1.0/24", "via", P.NODE_W1_IP, "dev", "eth1")
        netns.ip(name, "neigh", "add", P.NODE_W1_IP, "lladdr", P.NODE_W1_MAC, "dev", "eth1")
        netns.run(name, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=1")
        netns.run(name, "sysctl", "-qw", "net.ipv4.conf.lxcf0.forwarding=1")
        yield name
    finally:
        netns.delete(name)


def _run_fib(fd, pkt):
    import socket
    idx = socket.if_nametoindex("lxcf0")
    eth1 = socket.if_nametoindex("eth1")
    res = testrun.run(fd, pkt, ctx=testrun.tc_ctx(idx))
    return idx, eth1, res.retval, res.data


def test_native_mode_fib_redirects_to_next_hop(lxc, from_container, routed_ns):
    import socket
    maps = open_maps(lxc)
    idx = run_in_netns(routed_ns, lambda: socket.if_nametoindex("lxcf0"))
    _pod_a_with_remote_c(maps, abi.NODE_CFG_F_HOST_ROUTING, ifindex=idx)
    _, _, retval, data = run_in_netns(routed_ns, _run_fib, from_container.fd,
                                      bytes(P.POD_A_TO_REMOTE_POD_C))
    assert retval == abi.CTX_ACT_REDIRECT
    testrun.assert_packet(P.routed(P.POD_A_TO_REMOTE_POD_C, src_mac=P.NODE_CTR_MAC,
                                   dst_mac=P.NODE_W1_MAC), data)
