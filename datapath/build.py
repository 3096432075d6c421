"""Compile BPF programs with BCC, once per process for each (source, settings) pair.

Settings go in as -D flags only. BCC rewrites map method calls (`map.lookup(&k)`) only in the
file it is given, so `amalgamate` inlines our own quoted `#include "..."` headers into one unit,
with `#line` markers so compiler errors still name the real header and line.

API:
    amalgamate(path) -> str            a source with our headers inlined
    compile_program(source, defines)   a BCC object (cached per process); load(obj, fn, type)
    build_stamp(sources, defines)      sha256 hex of everything a compile depends on (sources'
                                       amalgamated text, -D flags, kernel release, BCC version,
                                       fixed cflags): equal stamps give the same programs
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from pathlib import Path
from typing import Mapping

from .errors import BuildError, MissingDependency

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_cache: dict[tuple, object] = {}
_lock = threading.Lock()


def bpf_dir() -> Path:
    """Where the C sources are: packaged beside this module, or the repo's top-level bpf/."""
    here = Path(__file__).resolve().parent
    for cand in (here / "bpf", here.parent / "bpf"):
        if (cand / "abi.h").is_file():
            return cand
    raise BuildError(f"BPF sources not found next to {here} (expected bpf/abi.h)")


def amalgamate(path: Path, _seen: set[Path] | None = None) -> str:
    """Return `path` with every quoted include inlined once (depth first), with #line markers."""
    seen = _seen if _seen is not None else set()
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    out = [f'#line 1 "{path}"']
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        m = _INCLUDE.match(line)
        if m:
            inc = (path.parent / m.group(1)).resolve()
            if not inc.is_file():
                raise BuildError(f"{path}:{n}: include not found: {m.group(1)}")
            out.append(amalgamate(inc, seen))
            out.append(f'#line {n + 1} "{path}"')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def check_toolchain(headers: Path | None = None) -> None:
    """Raise MissingDependency naming the fix when BCC or the kernel headers are absent."""
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        raise MissingDependency(
            f"BCC is not importable ({e}): install Debian's python3-bpfcc and use a venv made with "
            "`/usr/bin/python3 -m venv --system-site-packages` (scripts/setup.sh does both)") from e
    build = headers or Path(f"/lib/modules/{os.uname().release}/build")
    if not (build / "Makefile").exists():
        raise MissingDependency(
            f"kernel headers missing at {build}: install linux-headers for this kernel, or link "
            "Debian's linux-headers-amd64 there as `build` (scripts/setup.sh does this)")


def _flag(name: str, value) -> str:
    if value is None or value is True:
        return f"-D{name}"
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        return f'-D{name}="{value}"'
    return f"-D{name}={value}"


_CFLAGS = ("-Wno-macro-redefined", "-Wno-incompatible-pointer-types-discards-qualifiers")


def _dflags(defines: Mapping[str, object]) -> list[str]:
    return [_flag(k, v) for k, v in sorted(defines.items())]


def bcc_version() -> str:
    """BCC's version, read from its package without importing it (importing loads libbcc)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return "none"
    for loc in spec.submodule_search_locations:
        f = Path(loc) / "version.py"
        if f.is_file():
            for line in f.read_text().splitlines():
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("'\"")
    return "unknown"


def build_stamp(sources, defines: Mapping[str, object] | None = None) -> str:
    """sha256 (hex) over each source's amalgamated text, the sorted -D flags, the kernel release,
    BCC's version and our fixed cflags: what decides the programs a compile produces."""
    h = hashlib.sha256()
    for source in sorted(set(sources)):
        src = bpf_dir() / source
        if not src.is_file():
            raise BuildError(f"no BPF source {src}")
        h.update(f"source {source}\n".encode() + amalgamate(src).encode() + b"\0")
    for part in (*_dflags(dict(defines or {})), f"kernel {os.uname().release}",
                 f"bcc {bcc_version()}", *_CFLAGS):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def compile_program(source: str, defines: Mapping[str, object] | None = None):
    """Compile bpf/<source> with -D defines; the same pair returns the same BCC object."""
    src = bpf_dir() / source
    if not src.is_file():
        raise BuildError(f"no BPF source {src}")
    return compile_text(amalgamate(src), defines, name=source)


def compile_text(text: str, defines: Mapping[str, object] | None = None, *, name: str = "<text>"):
    """Compile C text (our headers already inlined, see amalgamate) once per process."""
    defines = dict(defines or {})
    key = (text, tuple(sorted((k, str(v)) for k, v in defines.items())))
    with _lock:
        if key in _cache:
            return _cache[key]
        check_toolchain()
        from bcc import BPF

        cflags = [f"-I{bpf_dir()}", *_CFLAGS]
        cflags += _dflags(defines)
        try:
            b = BPF(text=text, cflags=cflags)
        except Exception as e:  # BCC raises bare Exception
            raise BuildError(f"compiling {name} failed: {e}") from e
        _cache[key] = b
        return b


def load(b, fn_name: str, prog_type: str):
    """Load one function of a compiled object; prog_type is 'tc' or 'xdp'. BCC caches loads."""
    from bcc import BPF
    types = {"tc": BPF.SCHED_CLS, "xdp": BPF.XDP}
    try:
        return b.load_func(fn_name, types[prog_type])
    except Exception as e:
        raise BuildError(f"loading {fn_name} ({prog_type}) failed: {e}") from e
