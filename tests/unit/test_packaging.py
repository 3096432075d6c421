"""A plain (non-editable) wheel carries the C sources where datapath.build finds them."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_bpf_sources(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (whl,) = tmp_path.glob("datapath-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    c_files = {str(f.relative_to(ROOT)) for f in (ROOT / "bpf").rglob("*") if f.is_file()}
    assert c_files and {f"datapath/{f}" for f in c_files} <= names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(whl).read(entry[0]).decode()
    assert "datapath = agent.cli:main" in text and "datapath-cni = agent.cni:main" in text
    py_files = {str(f.relative_to(ROOT)) for d in ("agent", "datapath")
                for f in (ROOT / d).rglob("*.py")}
    assert py_files <= names, f"left out of the wheel: {sorted(py_files - names)}"
