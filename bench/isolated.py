"""The isolation every map-programming bench runs in: a private network namespace and a private
bpffs pin directory, with the measuring code in a child process inside that namespace, both
removed whatever happens (no program is attached anywhere).

API:
    run(script, args, log) -> dict         parent side: the child's results
    add_child_options(ap)                  the hidden options the child is started with
    child(a, measure) -> int               child side: measure(workdir, pin_dir, log) -> dict
    Timer()                                t(phase, fn, *args): call fn, keep its seconds
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from datapath import netns
from datapath.loader import remove_pins


def run(script: str, args: list[str], log=print, timeout: float = 600) -> dict:
    """Make a private netns and pin dir, run `script --inside ARGS` in the netns, remove both;
    returns the results the child wrote."""
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    ns, pin_dir = f"dpbench-{tag}", f"/sys/fs/bpf/dpbench-{tag}"
    netns.add(ns)
    try:
        with tempfile.TemporaryDirectory(prefix="dpbench-") as tmp:
            result, work = Path(tmp) / "result.json", Path(tmp) / "work"
            work.mkdir()
            argv = netns.cmd(ns, sys.executable, str(Path(script).resolve()), "--inside", *args,
                             "--pin-dir", pin_dir, "--workdir", str(work),
                             "--result", str(result))
            tail: list[str] = []
            with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) as p:
                try:
                    for line in p.stdout:
                        log(f"  {line.rstrip()}")
                        tail = (tail + [line])[-40:]
                    p.wait(timeout=timeout)
                finally:
                    if p.poll() is None:
                        p.kill()
            if p.returncode != 0:
                raise RuntimeError(f"bench child failed ({p.returncode}):\n{''.join(tail)}")
            return json.loads(result.read_text())
    finally:
        if os.path.isdir(pin_dir):      # the child removes it; this covers a crashed child
            remove_pins(pin_dir)
        netns.delete(ns)


def add_child_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pin-dir", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)


def child(a: argparse.Namespace, measure: Callable[[Path, str, Callable], dict]) -> int:
    """The child's side: measure, write the results, remove the pins."""
    try:
        r = measure(Path(a.workdir), a.pin_dir, lambda s: print(s, flush=True))
        Path(a.result).write_text(json.dumps(r))
    finally:
        remove_pins(a.pin_dir)
    return 0


class Timer:
    """Seconds per named phase: t("read", fn, *args) calls fn and records how long it took."""

    def __init__(self):
        self.phases: dict[str, float] = {}

    def __call__(self, name: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.phases[name] = time.perf_counter() - t
        return out
