"""`datapath lab agent stop|start|restart|kill NODE` and `lab etcd stop|start` (agent/lab): CLI
parsing, the one-line errors, and stop/kill on stand-in processes, with a fake lab state file."""
from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.lab import lab as labmod
from agent.runtime import _alive, proc_ref


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A lab 'tverbs' whose two nodes' 'agents' (and etcd) are sleeping stand-ins."""
    monkeypatch.setattr(labmod, "LAB_ROOT", tmp_path / "labs")
    procs = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(3)]
    nodes = {n: {"socket": str(tmp_path / f"{n}.sock"), "netns": n, "ip": "192.168.10.1",
                 "podCIDR": "172.20.0.0/24", "config": str(tmp_path / f"{n}.yaml"),
                 "log": str(tmp_path / f"{n}.log"), "agent_pid": proc_ref(p.pid)}
             for n, p in zip(("k8s-ctr", "k8s-w1"), procs)}
    lab = labmod.Lab("tverbs")
    lab.save({"name": "tverbs", "nodes": nodes, "pods": {}, "manifests": None,
              "etcd": {"node": "k8s-ctr", "netns": "k8s-ctr", "url": "http://192.168.10.1:2379",
                       "log": str(tmp_path / "etcd.log"), "data": str(tmp_path / "etcd"),
                       "pid": proc_ref(procs[2].pid)}})
    yield lab
    for p in procs:
        p.kill()
        p.wait()


def run(*args):
    return CliRunner().invoke(cli, ["lab", *args])


def one_error_line(r) -> str:
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    return lines[0]


@pytest.mark.parametrize("verb", ["stop", "start", "restart", "kill"])
def test_agent_verbs_need_a_known_node_of_a_lab_that_is_up(fake, verb):
    line = one_error_line(run("agent", verb, "k8s-w9", "--name", "tverbs"))
    assert "no node 'k8s-w9' in lab tverbs" in line and "k8s-ctr, k8s-w1" in line
    line = one_error_line(run("agent", verb, "k8s-ctr", "--name", "nolab"))
    assert "lab nolab is not up" in line


@pytest.mark.parametrize("args", [["agent"], ["agent", "stop"], ["agent", "pause", "k8s-ctr"],
                                  ["etcd", "restart"]])
def test_agent_and_etcd_verbs_refuse_bad_usage(fake, args):
    assert run(*args, "--name", "tverbs").exit_code == 2


def test_stop_sigterms_waits_and_records_then_is_a_no_op(fake):
    ref = fake.load()["nodes"]["k8s-w1"]["agent_pid"]
    r = run("agent", "stop", "k8s-w1", "--name", "tverbs")
    assert r.exit_code == 0 and "agent on k8s-w1 (pid" in r.output and "stopped in" in r.output
    assert not _alive(ref)
    st = fake.load()
    assert st["nodes"]["k8s-w1"]["agent_pid"] is None
    assert _alive(st["nodes"]["k8s-ctr"]["agent_pid"])              # the other node untouched
    assert {n["name"]: n["agent"] for n in fake.status()["nodes"]} == \
        {"k8s-ctr": "running", "k8s-w1": "stopped"}
    r = run("agent", "stop", "k8s-w1", "--name", "tverbs")
    assert r.exit_code == 0 and r.output.strip() == "agent on k8s-w1 already stopped"
    r = run("agent", "kill", "k8s-w1", "--name", "tverbs")
    assert r.exit_code == 0 and r.output.strip() == "agent on k8s-w1 already stopped"


def test_kill_sigkills(fake):
    ref = fake.load()["nodes"]["k8s-ctr"]["agent_pid"]
    r = run("agent", "kill", "k8s-ctr", "--name", "tverbs")
    assert r.exit_code == 0 and "killed in" in r.output, r.output
    assert not _alive(ref) and fake.load()["nodes"]["k8s-ctr"]["agent_pid"] is None


def test_start_of_a_running_agent_is_a_no_op_that_says_so(fake):
    before = fake.load()
    r = run("agent", "start", "k8s-ctr", "--name", "tverbs")
    pid = before["nodes"]["k8s-ctr"]["agent_pid"].split(":")[0]
    assert r.exit_code == 0 and r.output.strip() == f"agent on k8s-ctr already running (pid {pid})"
    assert fake.load() == before


def test_etcd_stop_then_start_of_a_running_etcd(fake):
    ref = fake.load()["etcd"]["pid"]
    r = run("etcd", "start", "--name", "tverbs")
    assert r.exit_code == 0 and "etcd on k8s-ctr already running" in r.output
    r = run("etcd", "stop", "--name", "tverbs")
    assert r.exit_code == 0 and "stopped in" in r.output and not _alive(ref)
    assert fake.load()["etcd"]["pid"] is None
    assert fake.status()["etcdProcess"] == "stopped"
    r = run("etcd", "stop", "--name", "tverbs")
    assert r.output.strip() == "etcd on k8s-ctr already stopped"


def test_etcd_verbs_on_a_lab_without_etcd(fake):
    st = fake.load()
    del st["etcd"]
    fake.save(st)
    for verb in ("stop", "start"):
        assert "runs no etcd" in one_error_line(run("etcd", verb, "--name", "tverbs"))
