"""Run a function inside a network namespace in a forked child, so the test process itself never
changes namespace. Returns the function's (picklable) result or re-raises its error."""
from __future__ import annotations

import multiprocessing as mp
import traceback


def _child(q, ns, fn, args):
    try:
        from pyroute2 import netns as pnetns
        pnetns.setns(ns)
        q.put(("ok", fn(*args)))
    except BaseException as e:  # report everything to the parent
        q.put(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run_in_netns(ns: str, fn, *args, timeout: float = 60):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, ns, fn, args))
    p.start()
    try:
        status, value = q.get(timeout=timeout)
    finally:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    if status == "err":
        raise AssertionError(f"in netns {ns}: {value}")
    return value
