"""BPF test-run fixtures: each program is compiled once per session; maps are emptied around
every test so cases are independent."""
from __future__ import annotations

import pytest

from datapath import build


@pytest.fixture(scope="session")
def lxc_obj(privileged):
    return build.compile_program("bpf_lxc.c")


@pytest.fixture(scope="session")
def from_container(lxc_obj):
    return build.load(lxc_obj, "cil_from_container", "tc")


@pytest.fixture
def lxc(lxc_obj, from_container):
    """The compiled bpf_lxc object with empty maps."""
    for name in ("cilium_lxc", "dp_ep_ifindex", "cilium_metrics"):
        lxc_obj[name].clear()
    yield lxc_obj
    for name in ("cilium_lxc", "dp_ep_ifindex", "cilium_metrics"):
        lxc_obj[name].clear()
