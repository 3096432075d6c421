"""Unit tests for the monitor's config keys (agent/config.py): bpf.monitorAggregation and
bpf.monitorInterval as Cilium's Helm values, their errors, and that both need a restart (they
are compiled into the programs)."""
from __future__ import annotations

import pytest
import yaml

from agent.config import MONITOR_AGGREGATION_LEVELS, RESTART_KEYS, changed_keys, parse_config
from datapath.errors import ConfigError

MINIMAL = {"nodeName": "node-1", "ipam": {"podCIDR": "172.20.0.0/24"}}


def cfg(**bpf):
    return parse_config({**MINIMAL, "bpf": bpf} if bpf else dict(MINIMAL), "/etc/dp/config.yaml")


def error(**bpf) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        cfg(**bpf)
    return ei.value


def test_defaults_are_ciliums():
    c = cfg()
    assert c.monitorAggregation == "medium" and c.monitor_aggregation_level() == 3
    assert c.monitorInterval == 5


@pytest.mark.parametrize("value,name,level", [
    ("none", "none", 0), ("disabled", "none", 0), ("lowest", "lowest", 1), ("low", "low", 2),
    ("medium", "medium", 3), ("Medium", "medium", 3), ("maximum", "maximum", 4),
    ("max", "maximum", 4), (0, "none", 0), (3, "medium", 3), (4, "maximum", 4)])
def test_aggregation_names_aliases_and_numbers(value, name, level):
    c = cfg(monitorAggregation=value)
    assert c.monitorAggregation == name and c.monitor_aggregation_level() == level


def test_levels_are_ciliums_numbers():
    assert MONITOR_AGGREGATION_LEVELS == {"none": 0, "lowest": 1, "low": 2, "medium": 3,
                                          "maximum": 4}


@pytest.mark.parametrize("value,seconds", [(5, 5), ("5s", 5), ("10s", 10), ("1m", 60), (1, 1)])
def test_interval_in_seconds_or_helm_duration(value, seconds):
    assert cfg(monitorInterval=value).monitorInterval == seconds


@pytest.mark.parametrize("bpf,key,reason", [
    ({"monitorAggregation": "high"}, "bpf.monitorAggregation", "got 'high'"),
    ({"monitorAggregation": 5}, "bpf.monitorAggregation", "a level 0 to 4"),
    ({"monitorAggregation": True}, "bpf.monitorAggregation", "got true"),
    ({"monitorAggregation": None}, "bpf.monitorAggregation", "got null"),
    ({"monitorInterval": 0}, "bpf.monitorInterval", "expected seconds from 1 to 3600"),
    ({"monitorInterval": "5 minutes"}, "bpf.monitorInterval", "got '5 minutes'"),
    ({"monitorInterval": "500ms"}, "bpf.monitorInterval", "got '500ms'"),
])
def test_errors_name_the_key(bpf, key, reason):
    e = error(**bpf)
    assert e.key == key and reason in e.reason, (e.key, e.reason)


def test_both_keys_need_a_restart_and_show_in_a_diff():
    assert {"bpf.monitorAggregation", "bpf.monitorInterval"} <= RESTART_KEYS
    a, b = cfg(), cfg(monitorAggregation="none", monitorInterval="10s")
    assert changed_keys(a, b) == {"bpf.monitorAggregation", "bpf.monitorInterval"}
    assert changed_keys(a, cfg(monitorAggregation=3, monitorInterval="5s")) == set()


def test_helm_values_file_form():
    c = parse_config(yaml.safe_load("nodeName: n\nipam: {podCIDR: 10.0.0.0/24}\n"
                                    "bpf: {monitorAggregation: low, monitorInterval: 2s}\n"),
                     "/x/config.yaml")
    assert (c.monitorAggregation, c.monitorInterval) == ("low", 2)
