"""bench/policy_program.py does not rot: on a small cluster in its own netns and pin dir, cold
programming writes exactly the desired policy rows (plus the CIDR identities' ipcache rows), a
policy or label change is a diff of a few map ops, and a no-op writes nothing. Correctness only:
the bench's timings are never asserted."""
from __future__ import annotations

import os

import pytest

from bench import policy_program
from datapath import netns


@pytest.fixture(scope="module")
def result(privileged):
    before = {n for n in netns.list_names() if n.startswith("dpbench-")}
    r = policy_program.run(30, 20, 1, log=lambda s: None)
    assert {n for n in netns.list_names() if n.startswith("dpbench-")} <= before
    assert not [d for d in os.listdir("/sys/fs/bpf") if d.startswith(f"dpbench-{os.getpid()}-")]
    return r


def test_cold_writes_every_row_once(result):
    cold = result["cold"]
    assert cold["failed"] == 0 and cold["errors"] == []
    # policy rows, and one ipcache row per CIDR identity (4 blocks x cidr and except)
    assert cold["map_ops"] == cold["policy_entries"] + 8


def test_changes_are_diffs_and_a_no_op_writes_nothing(result):
    for case in ("policy_changed", "policy_restored", "pod_label_changed"):
        assert result[case]["failed"] == 0
        assert 0 < min(result[case]["map_ops"]) < result["cold"]["policy_entries"] // 4, case
    assert result["policy_changed"]["map_ops"] == result["policy_restored"]["map_ops"]
    assert result["noop"]["map_ops"] == [0]
