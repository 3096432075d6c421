"""The Python mirrors in datapath/abi.py against what BCC compiled from bpf/abi.h: size and
every field offset of every struct, and every constant's value."""
from __future__ import annotations

import ctypes
import re

import pytest

from datapath import abi, build, testrun

ABI_H = build.bpf_dir() / "abi.h"


def c_structs() -> set[str]:
    return set(re.findall(r"^struct (\w+) \{", ABI_H.read_text(), re.M))


def c_defines() -> dict[str, str]:
    """Every #define with a value, a trailing comment left out."""
    return dict(re.findall(r"^#define[ \t]+(\w+)[ \t]+(.+?)[ \t]*(?:/\*.*)?$", ABI_H.read_text(),
                           re.M))


_NUMERIC = re.compile(r"^\(?\s*(0x[0-9a-fA-F]+|\d+)(\s*<<\s*\d+)?\s*\)?$")


def c_numeric() -> dict[str, str]:
    """The defines whose value is a number: decimal, hex, or a shift like (1 << 24)."""
    return {k: v for k, v in c_defines().items() if _NUMERIC.match(v)}


def test_every_abi_struct_has_a_mirror():
    assert c_structs() == {s.c_name for s in abi.STRUCTS}


def test_numeric_defines_are_found_whatever_their_shape():
    found = c_numeric()
    for name in ("DROP_POLICY_DENY", "DROP_FRAG_NOT_FOUND", "IDENTITY_SCOPE_LOCAL",
                 "POLICY_MAP_SIZE", "TUPLE_F_POLICY", "POLICY_PREFIX_BASE", "NODE_CFG_F_TUNNEL",
                 "IPV4_LOOPBACK_HOST"):
        assert name in found, name


def test_every_numeric_abi_constant_is_mirrored():
    numeric = set(c_numeric())
    assert numeric, "no constants parsed from abi.h"
    assert numeric <= set(abi.CONSTANTS), sorted(numeric - set(abi.CONSTANTS))


def test_every_produced_drop_reason_has_ciliums_string():
    for name in c_defines():
        if name.startswith("DROP_"):
            assert abi.CONSTANTS[name] in abi.REASON_STRINGS, name


@pytest.fixture(scope="session")
def probe(privileged):
    """Compile a program that writes sizeof/offsetof of every mirrored field and every constant
    into an array map, run it once, and return {expression: value} as the compiler saw it."""
    exprs = []
    for s in abi.STRUCTS:
        exprs.append(f"sizeof(struct {s.c_name})")
        exprs += [f"offsetof(struct {s.c_name}, {f})" for f, *_ in s._fields_]
        exprs += [f"sizeof(((struct {s.c_name} *)0)->{f})" for f, *_ in s._fields_]
    consts = list(c_numeric())
    exprs += consts
    body = "\n".join(f"  i = {n}; v = (u64)({e}); out.update(&i, &v);" for n, e in enumerate(exprs))
    text = (build.amalgamate(ABI_H) + f"\nBPF_ARRAY(out, u64, {len(exprs)});\n"
            "int abi_probe(struct __sk_buff *skb) {\n  u32 i; u64 v;\n" + body + "\n  return 0;\n}\n")
    b = build.compile_text(text, name="abi_probe")
    fn = build.load(b, "abi_probe", "tc")
    testrun.run(fn.fd, bytes(64))
    table = b["out"]
    return {e: table[table.Key(n)].value for n, e in enumerate(exprs)}


@pytest.mark.parametrize("struct", abi.STRUCTS, ids=lambda s: s.c_name)
def test_struct_layout_matches_compiled(probe, struct):
    assert ctypes.sizeof(struct) == probe[f"sizeof(struct {struct.c_name})"]
    for field, *_ in struct._fields_:
        assert getattr(struct, field).offset == probe[f"offsetof(struct {struct.c_name}, {field})"], field
        assert getattr(struct, field).size == probe[f"sizeof(((struct {struct.c_name} *)0)->{field})"], field


def test_constants_match_compiled(probe):
    for name, value in probe.items():
        if not name.startswith(("sizeof", "offsetof")):
            assert abi.CONSTANTS[name] == value, name


def test_policy_key_helper_matches_the_design():
    any_proto = abi.policy_key(7, 0, abi.POLICY_EGRESS)
    assert (any_proto.lpm_key_prefixlen, any_proto.protocol, any_proto.dport) == \
        (abi.POLICY_PREFIX_BASE, 0, 0)
    assert any_proto.egress == abi.POLICY_EGRESS and any_proto.endpoint_id == 7
    exact = abi.policy_key(7, 300, False, proto=6, port=8080)
    assert exact.lpm_key_prefixlen == abi.POLICY_FULL_PREFIX and exact.egress == abi.POLICY_INGRESS
    assert bytes(exact)[12:14] == (8080).to_bytes(2, "big")          # dport in network order
    every_port = abi.policy_key(7, 300, True, proto=17, port=53, port_prefix=0)
    assert every_port.lpm_key_prefixlen == abi.POLICY_PREFIX_BASE + 8 and every_port.dport == 0
    ranged = abi.policy_key(7, 300, True, proto=6, port=8191, port_prefix=6)   # 7168..8191
    assert bytes(ranged)[12:14] == (8191 & 0xFC00).to_bytes(2, "big")
    with pytest.raises(ValueError):
        abi.policy_key(7, 300, True, proto=6, port=1, port_prefix=17)
    assert abi.policy_entry().deny == 0 and abi.policy_entry(deny=True).deny == 1
    assert bytes(abi.policy_entry(deny=True))[2] == 1
    assert abi.reason_string(abi.DROP_FRAG_NOT_FOUND) == "First logical datagram fragment not found"
    assert abi.reason_string(abi.DROP_POLICY_DENY) == "Policy denied by denylist"
