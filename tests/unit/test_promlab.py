"""The lab's Prometheus files (agent/lab/prometheus.py): the config and the recording rules pass
promtool's own checks, the dashboard's queries parse, and a missing tool is one clear error.
promtool comes with scripts/setup.sh (Debian's prometheus): these tests need it, never skip."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.lab import prometheus as promlab
from datapath.errors import LabError

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / \
    "datapath-dashboard.json"


def test_config_and_rules_pass_promtool(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(promlab.RULES))
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(promlab.config(
        {"k8s-ctr": "192.168.10.100:9962", "k8s-w1": "192.168.10.101:9962"}, str(rules))))
    for argv in (["promtool", "check", "rules", str(rules)],
                 ["promtool", "check", "config", str(cfg)]):
        p = subprocess.run(argv, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    doc = yaml.safe_load(cfg.read_text())
    (job,) = doc["scrape_configs"]
    assert job["job_name"] == promlab.JOB
    assert {(c["targets"][0], c["labels"]["node"]) for c in job["static_configs"]} == {
        ("192.168.10.100:9962", "k8s-ctr"), ("192.168.10.101:9962", "k8s-w1")}
    # the seed's names that Cilium's current metrics lack are recorded
    assert set(promlab.SEED_RULES) == {"cilium_datapath_packets_total",
                                       "cilium_endpoint_state_count",
                                       "cilium_policy_regeneration_time_stats_seconds"}


def test_every_dashboard_query_parses(tmp_path):
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
             for t in p["targets"]]
    assert len(exprs) >= 10
    # promtool parses PromQL when it checks rules: one rule a query
    rules = tmp_path / "dash.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    p = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_missing_tool_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(promlab.shutil, "which", lambda tool: None)
    with pytest.raises(LabError, match="prometheus not found: install Debian's"):
        promlab.start(tmp_path, "ns", "192.0.2.1", {}, None)
