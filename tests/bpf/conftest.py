"""BPF test-run fixtures: each program is compiled once per session; maps are emptied and the
event ring buffer drained around every test so cases are independent."""
from __future__ import annotations

import pytest

from datapath import build
from datapath.events import EventRing

MAPS = ("cilium_lxc", "dp_ep_ifindex", "cilium_metrics", "cilium_ipcache", "dp_node_config",
        "cilium_lb4_services_v2", "cilium_lb4_backends_v3", "cilium_lb4_reverse_nat",
        "cilium_ct4_global", "cilium_ct_any4_global", "cilium_lb4_affinity",
        "cilium_snat_v4_external", "cilium_ipmasq_v4", "cilium_lb4_maglev",
        "cilium_l2_responder_v4", "dp_netdev", "dp_agent_liveness", "cilium_policy_v2",
        "cilium_ipv4_frag_datagrams", "dp_policy_revision", "dp_event_stats")


def mocked_object(source: str, mock: str):
    """`source` compiled with `mock` (C that redefines a helper) ahead of it: a test run cannot
    carry tunnel metadata, so the tunnel-key helpers are mocked as Cilium's BPF tests do."""
    bpf = build.bpf_dir()
    text = build.amalgamate(bpf / "lib" / "common.h") + mock + build.amalgamate(bpf / source)
    return build.compile_text(text, name=f"{source} (mocked)")


# bpf_host.c built small, for the pressure cases (test_pressure.py: a full conntrack table;
# test_nat.py, test_nodeport.py: an exhausted port range): one compile serves them all
PRESSURE_DEFINES = {"CT_MAP_SIZE_TCP": 256, "NODEPORT_PORT_MIN_NAT": 40000,
                    "NODEPORT_PORT_MAX_NAT": 40001}


# maps only some objects hold (the XDP flow cache): cleared where present
OPTIONAL_MAPS = ("dp_xdp_flow4", "dp_xdp_flow_stats")


_rings: dict[int, EventRing] = {}


def event_ring(obj) -> EventRing:
    """The consumer of a compiled object's cilium_events (one per object, kept for the session:
    each object has its own ring when not pinned)."""
    ring = _rings.get(id(obj))
    if ring is None:
        ring = _rings[id(obj)] = EventRing(obj["cilium_events"].map_fd)
    return ring


def _clear(obj):
    event_ring(obj).poll(0)         # drained: a test sees only its own events
    for name in MAPS:
        obj[name].clear()
    for name in OPTIONAL_MAPS:
        try:
            table = obj[name]
        except KeyError:
            continue
        table.clear()


def _program(source: str, obj_name: str, clean_name: str, entries: dict[str, tuple[str, str]]):
    """Fixtures for one source file: `obj_name` compiled once per session, one session fixture
    per entry program (name -> (function, type)), and `clean_name`: the object with its maps
    emptied around a test."""
    first = next(iter(entries))

    @pytest.fixture(scope="session", name=obj_name)
    def obj(privileged):
        return build.compile_program(source)

    made = {obj_name: obj}
    for fixture, (function, prog_type) in entries.items():
        def load(request, function=function, prog_type=prog_type):
            return build.load(request.getfixturevalue(obj_name), function, prog_type)
        made[fixture] = pytest.fixture(scope="session", name=fixture)(load)

    @pytest.fixture(name=clean_name)
    def clean(request):
        o = request.getfixturevalue(obj_name)
        request.getfixturevalue(first)
        _clear(o)
        yield o
        _clear(o)

    made[clean_name] = clean
    return made


# module globals, for pytest to collect; lxc / host / xdp / overlay give a clean object
for _args in (
        ("bpf_lxc.c", "lxc_obj", "lxc", {"from_container": ("cil_from_container", "tc"),
                                         "to_container": ("cil_to_container", "tc")}),
        ("bpf_host.c", "host_obj", "host", {"from_netdev": ("cil_from_netdev", "tc"),
                                            "to_netdev": ("cil_to_netdev", "tc"),
                                            "to_netdev_nomasq": ("cil_to_netdev_nomasq", "tc")}),
        ("bpf_xdp.c", "xdp_obj", "xdp", {"xdp_entry": ("cil_xdp_entry", "xdp")}),
        ("bpf_overlay.c", "overlay_obj", "overlay", {"from_overlay": ("cil_from_overlay", "tc")})):
    globals().update({f"_fx_{k}": v for k, v in _program(*_args).items()})
