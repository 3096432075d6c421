"""Every map operation of every program reaches the verifier with one constant map, so it is
inlined (lookups) or called directly (updates, deletes): none is left to the generic helper's
indirect call (retpolines here), which a call site fed two maps would force (lib/conntrack.h's
TCP / non-TCP maps). Read from the translated program as the kernel runs it."""
from __future__ import annotations

import re
import subprocess

import pytest

from datapath import bpfsys

PROGRAMS = ("from_container", "to_container", "from_netdev", "to_netdev", "to_netdev_nomasq",
            "xdp_entry", "from_overlay")
GENERIC = re.compile(r"call (bpf_map_(?:lookup|update|delete)_elem)#")


@pytest.mark.parametrize("fixture", PROGRAMS)
def test_no_map_call_goes_through_the_generic_helper(request, fixture):
    prog = request.getfixturevalue(fixture)
    pid = bpfsys.prog_info(prog.fd).id
    xlated = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(pid)],
                            capture_output=True, text=True, check=True).stdout
    assert "call" in xlated and len(xlated.splitlines()) > 100
    assert GENERIC.findall(xlated) == []
