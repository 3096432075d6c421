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
    return dict(re.findall(r"^#define (\w+)\s+(\S+)\s*$", ABI_H.read_text(), re.M))


def test_every_abi_struct_has_a_mirror():
    assert c_structs() == {s.c_name for s in abi.STRUCTS}


def test_every_numeric_abi_constant_is_mirrored():
    numeric = {k for k, v in c_defines().items() if v.isdigit()}
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
    consts = [k for k, v in c_defines().items() if v.isdigit()]
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
