"""tc and XDP attach in a throwaway netns: atomic replace, ownership, clean detach."""
from __future__ import annotations

import os
import subprocess

import pytest

from datapath import attach, build, netns

from ..nsfork import run_in_netns

XDP_TEXT = "int xdp_probe_pass(struct xdp_md *ctx) { return XDP_PASS; }\n"


@pytest.fixture
def ns(privileged):
    name = f"dpt-attach-{os.getpid()}"
    netns.add(name)
    netns.ip(name, "link", "add", "lxct0", "type", "veth", "peer", "name", "lxct1")
    netns.ip(name, "link", "set", "lxct0", "up")
    netns.ip(name, "link", "set", "lxct1", "up")
    yield name
    netns.delete(name)


def _tc_cycle(fd):
    first = attach.tc_attach("lxct0", fd, "ingress", "from-container")
    again = attach.tc_attach("lxct0", fd, "ingress", "from-container")    # replace in place
    out = subprocess.run(["tc", "filter", "show", "dev", "lxct0", "ingress"],
                         capture_output=True, text=True).stdout
    from pyroute2 import IPRoute
    with IPRoute() as ipr:          # another tool's filter: a bpf filter not named by us
        idx = ipr.link_lookup(ifname="lxct0")[0]
        ipr.tc("add-filter", "bpf", idx, ":1", fd=fd, name="other-tool", parent="ffff:fff3",
               classid=1, direct_action=True, prio=9)
    foreign_ours = attach.tc_query("lxct0", "egress")
    with IPRoute() as ipr:          # another tool holding our slot on egress: we refuse to replace
        ipr.tc("add-filter", "bpf", idx, ":1", fd=fd, name="slot-holder", parent="ffff:fff3",
               classid=1, direct_action=True, prio=1)
    try:
        attach.tc_attach("lxct0", fd, "egress", "from-container")
        slot_refused = False
    except Exception as e:
        slot_refused = "held by another tool" in str(e)
    removed = attach.tc_detach("lxct0", "ingress")
    after = attach.tc_query("lxct0", "ingress")
    egress_left = subprocess.run(["tc", "filter", "show", "dev", "lxct0", "egress"],
                                 capture_output=True, text=True).stdout
    return (first, again, out.count("datapath:from-container"), removed, after,
            attach.tc_detach("lxct0", "ingress"), foreign_ours, egress_left,
            attach.tc_detach("lxct0", "egress"), slot_refused)


def test_tc_attach_replace_and_detach_only_ours(ns, lxc_obj):
    fn = build.load(lxc_obj, "cil_from_container", "tc")
    (first, again, count, removed, after, twice, foreign_ours, egress_left, detach_foreign,
     slot_refused) = run_in_netns(ns, _tc_cycle, fn.fd)
    assert slot_refused
    assert first.name == "datapath:from-container" and first.tag == attach.prog_tag(fn.fd)
    assert count == 1 and again.tag == first.tag
    assert removed and after is None and twice is False
    # another tool's filter is neither reported as ours nor removed, and keeps its clsact
    assert foreign_ours is None and detach_foreign is False
    assert "other-tool" in egress_left and "slot-holder" in egress_left


def _xdp_cycle(fd):
    got = attach.xdp_attach("lxct1", fd, "native")
    not_ours = attach.xdp_detach("lxct1", {"something_else"})
    still = attach.xdp_query("lxct1")
    ours = attach.xdp_detach("lxct1", {got["name"]})
    return got, not_ours, still, ours, attach.xdp_query("lxct1")


def test_xdp_attach_and_owner_checked_detach(ns):
    b = build.compile_text(XDP_TEXT, name="xdp_probe")
    fn = build.load(b, "xdp_probe_pass", "xdp")
    got, not_ours, still, ours, gone = run_in_netns(ns, _xdp_cycle, fn.fd)
    assert got["name"].startswith("xdp_probe_pass"[:15]) and got["tag"] == attach.prog_tag(fn.fd)
    assert not_ours is False and still is not None
    assert ours is True and gone is None
