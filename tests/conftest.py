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
