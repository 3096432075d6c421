"""BPF test-run fixtures: each program is compiled once per session; maps are emptied around
every test so cases are independent."""
from __future__ import annotations

import pytest

from datapath import build

MAPS = ("cilium_lxc", "dp_ep_ifindex", "cilium_metrics", "cilium_ipcache", "dp_node_config",
        "cilium_lb4_services_v2", "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat",
        "cilium_ct4_global", "cilium_ct_any4_global", "cilium_lb4_affinity",
        "cilium_snat_v4_external", "cilium_ipmasq_v4", "cilium_lb4_maglev",
        "cilium_l2_responder_v4", "dp_netdev", "dp_agent_liveness")


def _clear(obj):
    for name in MAPS:
        obj[name].clear()


@pytest.fixture(scope="session")
def lxc_obj(privileged):
    return build.compile_program("bpf_lxc.c")


@pytest.fixture(scope="session")
def from_container(lxc_obj):
    return build.load(lxc_obj, "cil_from_container", "tc")


@pytest.fixture
def lxc(lxc_obj, from_container):
    """The compiled bpf_lxc object with empty maps."""
    _clear(lxc_obj)
    yield lxc_obj
    _clear(lxc_obj)


@pytest.fixture(scope="session")
def host_obj(privileged):
    return build.compile_program("bpf_host.c")


@pytest.fixture(scope="session")
def from_netdev(host_obj):
    return build.load(host_obj, "cil_from_netdev", "tc")


@pytest.fixture(scope="session")
def to_netdev(host_obj):
    return build.load(host_obj, "cil_to_netdev", "tc")


@pytest.fixture
def host(host_obj, from_netdev):
    _clear(host_obj)
    yield host_obj
    _clear(host_obj)


@pytest.fixture(scope="session")
def xdp_obj(privileged):
    return build.compile_program("bpf_xdp.c")


@pytest.fixture(scope="session")
def xdp_entry(xdp_obj):
    return build.load(xdp_obj, "cil_xdp_entry", "xdp")


@pytest.fixture
def xdp(xdp_obj, xdp_entry):
    _clear(xdp_obj)
    yield xdp_obj
    _clear(xdp_obj)


@pytest.fixture(scope="session")
def overlay_obj(privileged):
    return build.compile_program("bpf_overlay.c")


@pytest.fixture(scope="session")
def from_overlay(overlay_obj):
    return build.load(overlay_obj, "cil_from_overlay", "tc")


@pytest.fixture
def overlay(overlay_obj, from_overlay):
    _clear(overlay_obj)
    yield overlay_obj
    _clear(overlay_obj)
