"""datapath.build without a kernel: include inlining and the errors that name their fix."""
from __future__ import annotations

import sys

import pytest

from datapath import build
from datapath.errors import BuildError, MissingDependency


def test_amalgamate_inlines_quoted_includes_once_with_line_markers(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.h").write_text('#include "b.h"\nint a;\n')
    (tmp_path / "lib" / "b.h").write_text("int b;\n")
    (tmp_path / "main.c").write_text('#include <linux/bpf.h>\n#include "lib/a.h"\n'
                                     '#include "lib/b.h"\nint main_;\n')
    text = build.amalgamate(tmp_path / "main.c")
    assert text.count("int b;") == 1 and "#include <linux/bpf.h>" in text
    assert f'#line 1 "{tmp_path / "lib" / "a.h"}"' in text
    assert f'#line 3 "{tmp_path / "main.c"}"' in text       # back in main.c after a.h


def test_missing_include_is_a_build_error(tmp_path):
    (tmp_path / "m.c").write_text('#include "nope.h"\n')
    with pytest.raises(BuildError, match="nope.h"):
        build.amalgamate(tmp_path / "m.c")


def test_missing_headers_names_the_fix(tmp_path):
    with pytest.raises(MissingDependency) as e:
        build.check_toolchain(headers=tmp_path / "no-build")
    assert "linux-headers" in str(e.value) and "scripts/setup.sh" in str(e.value)


def test_missing_bcc_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", None)        # import bcc -> ImportError
    with pytest.raises(MissingDependency) as e:
        build.check_toolchain()
    assert "python3-bpfcc" in str(e.value) and "--system-site-packages" in str(e.value)


def test_defines_become_flags():
    assert build._flag("DP_PIN_DIR", "/sys/fs/bpf/x") == '-DDP_PIN_DIR="/sys/fs/bpf/x"'
    assert build._flag("ENDPOINTS_MAP_SIZE", 128) == "-DENDPOINTS_MAP_SIZE=128"
    assert build._flag("ENABLE_X", None) == "-DENABLE_X"
