"""Endpoint ids stay within the 16 bits a policy key holds, and a removed endpoint's flows
leave conntrack with it (no root needed: maps are stand-ins)."""
from __future__ import annotations

import pytest

from agent import ctgc
from agent.endpoint import MAX_ENDPOINT_ID, next_endpoint_id
from datapath import abi


def test_ids_count_up_skip_used_and_wrap_below_65536():
    assert next_endpoint_id(set(), 1) == 1
    assert next_endpoint_id({5, 6}, 5) == 7
    assert next_endpoint_id({MAX_ENDPOINT_ID}, MAX_ENDPOINT_ID) == 1
    assert next_endpoint_id({1, 2}, MAX_ENDPOINT_ID + 1) == 3       # a counter past the end
    with pytest.raises(RuntimeError):
        next_endpoint_id(set(range(1, MAX_ENDPOINT_ID + 1)), 1)


class FakeMap(dict):
    def items(self):
        return list(super().items())

    def delete(self, k):
        del self[k]


def tup(saddr, daddr, flags):
    return abi.Ipv4CtTuple(daddr=abi.ip4_to_be32(daddr), saddr=abi.ip4_to_be32(saddr),
                           dport=abi.be16(80), sport=abi.be16(40000), nexthdr=6, flags=flags)


def test_forget_endpoint_drops_only_its_policy_tracked_flows():
    out = abi.TUPLE_F_POLICY | abi.TUPLE_F_OUT
    inn = abi.TUPLE_F_POLICY | abi.TUPLE_F_IN
    keep = [tup("10.0.0.9", "10.0.0.8", out),                 # another endpoint's flow
            tup("10.0.0.5", "10.96.0.1", abi.TUPLE_F_SERVICE)]  # a service entry of the LB
    gone = [tup("10.0.0.5", "198.51.100.1", out), tup("198.51.100.1", "10.0.0.5", inn)]
    maps = {"cilium_ct4_global": FakeMap({k: None for k in keep + gone}),
            "cilium_ct_any4_global": FakeMap()}
    assert ctgc.forget_endpoint(maps, "10.0.0.5") == 2
    assert set(map(bytes, maps["cilium_ct4_global"])) == set(map(bytes, keep))
