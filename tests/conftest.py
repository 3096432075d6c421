"""Shared test policy: a test that needs root, BPF or netns fails (never skips) under CI=true."""
from __future__ import annotations

import os

import pytest

CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _privileged_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.ismount("/sys/fs/bpf"):
        return "bpffs not mounted at /sys/fs/bpf (run scripts/setup.sh)"
    try:
        from datapath.build import check_toolchain
        check_toolchain()
    except Exception as e:  # MissingDependency names the fix
        return str(e)
    return None


@pytest.fixture(scope="session")
def privileged():
    """Depend on this in every test that needs root/BPF/netns."""
    why = _privileged_reason()
    if why:
        if CI:
            pytest.fail(f"CI=true and this test cannot run: {why}")
        pytest.skip(why)


# ---- the bench smoke runs in the background (tests/benchpool.py) ----

def _is_e2e(item) -> bool:
    return "tests/e2e/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("e2e/")


def pytest_collection_finish(session):
    """Start the collected bench modules' runs now, one at a time, so they overlap the tests
    before them (heaviest first); none when this session cannot run them (their tests then fail
    under CI=true or skip, through `privileged`, as before)."""
    from tests import benchpool
    if session.config.option.collectonly:
        return
    jobs = {}
    for item in session.items:
        job = getattr(item.module, "BENCH_JOB", None) if hasattr(item, "module") else None
        if job is not None:
            jobs.setdefault(item.module.__name__, job)
    if jobs and _privileged_reason() is None:
        order = sorted(jobs, key=lambda n: -getattr(jobs[n], "weight", 0))
        if _is_e2e(session.items[0]):
            benchpool.pause()              # nothing beside an e2e test, from the first one
        benchpool.start({n: jobs[n] for n in order})


def pytest_runtest_setup(item):
    from tests import benchpool
    if _is_e2e(item):
        benchpool.pause()
    else:
        benchpool.resume()


def pytest_sessionfinish(session):
    from tests import benchpool
    benchpool.stop()
