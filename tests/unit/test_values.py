"""Helm-style lab values (agent/lab/values.py) and their validation by `lab up` before anything is
built (agent/lab/lab.py), without root: a refused value leaves no lab behind."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

import agent.lab.lab as lab_mod
from agent.lab.values import check_lab_owned, flatten, load_values, merge, parse_set
from datapath.errors import ConfigError


def test_set_parses_dotted_keys_and_helm_scalars():
    assert parse_set("loadBalancer.algorithm=maglev") == {"loadBalancer": {"algorithm": "maglev"}}
    assert parse_set("bpf.masquerade=false,maglev.tableSize=1021,MTU=+1400") == {
        "bpf": {"masquerade": False}, "maglev": {"tableSize": 1021}, "MTU": 1400}
    assert parse_set("devices={eth1,eth2}") == {"devices": ["eth1", "eth2"]}
    assert parse_set("egressMasqueradeInterfaces={}") == {"egressMasqueradeInterfaces": []}
    assert parse_set(r"kvstoreOpt.etcd\.endpoints=http://a:2379") == {
        "kvstoreOpt": {"etcd.endpoints": "http://a:2379"}}
    assert parse_set("a.b=null") == {"a": {"b": None}}
    assert parse_set("serviceCIDR=10.96.0.0/16") == {"serviceCIDR": "10.96.0.0/16"}


@pytest.mark.parametrize("bad", ["novalue", "=1", "a..b=1", "a.=1"])
def test_set_refuses_what_is_not_key_equals_value(bad):
    with pytest.raises(ConfigError) as e:
        parse_set(bad)
    assert e.value.file == "--set"


def test_merge_is_deep_and_null_drops_a_key():
    kept = {"bpf": {"masquerade": False}, "loadBalancer": {"algorithm": "maglev"}}
    out = merge(kept, {"bpf": {"natPortRange": "40000-40100"}, "loadBalancer": None})
    assert out == {"bpf": {"masquerade": False, "natPortRange": "40000-40100"}}
    assert kept == {"bpf": {"masquerade": False}, "loadBalancer": {"algorithm": "maglev"}}
    assert merge({}, {"a": {"b": None, "c": 1}}) == {"a": {"c": 1}}
    assert merge({"lb": {"algorithm": "maglev"}}, {"lb": {"algorithm": None}}) == {}
    assert merge({"a": {"b": {"c": 1}, "d": 2}}, {"a": {"b": {"c": None}}}) == {"a": {"d": 2}}
    assert merge({}, {"ipMasqAgent": {}}) == {"ipMasqAgent": {}}      # given empty: kept
    assert merge({}, {"a": {"b": None}}, keep_none=True) == {"a": {"b": None}}


def test_flatten_lists_dotted_keys_sorted():
    assert flatten({"b": {"y": 1, "x": [1]}, "a": True, "kvstoreOpt": {"etcd.config": "f"}}) == [
        ("a", True), ("b.x", [1]), ("b.y", 1), ("kvstoreOpt.etcd\\.config", "f")]


def test_lab_owned_keys_are_refused_by_name():
    with pytest.raises(ConfigError) as e:
        check_lab_owned({"bpf": {"root": "/x"}}, "src")
    assert e.value.key == "bpf.root"
    with pytest.raises(ConfigError) as e:
        check_lab_owned(parse_set(r"kvstoreOpt.etcd\.endpoints=x"), "src")
    assert e.value.key == "kvstoreOpt"
    check_lab_owned({"bpf": {"masquerade": False}, "loadBalancer": {"algorithm": "maglev"}},
                    "src")


def test_values_file(tmp_path):
    f = tmp_path / "v.yaml"
    f.write_text("loadBalancer:\n  algorithm: maglev\n")
    assert load_values(str(f)) == {"loadBalancer": {"algorithm": "maglev"}}
    f.write_text("")
    assert load_values(str(f)) == {}
    f.write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_values(str(f))
    f.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not YAML"):
        load_values(str(f))


@pytest.fixture
def lab_root(tmp_path, monkeypatch):
    monkeypatch.setattr(lab_mod, "LAB_ROOT", tmp_path / "labs")
    return tmp_path / "labs"


@pytest.mark.parametrize("values, key", [
    ({"loadBalancer": {"algorithm": "magl"}}, "loadBalancer.algorithm"),
    ({"maglev": {"tableSize": 7}}, "maglev.tableSize"),
    ({"bogus": 1}, "bogus"),
    ({"nodeName": "x"}, "nodeName"),
    ({"routingMode": "tunnel"}, "routingMode"),
])
def test_lab_up_refuses_a_bad_value_before_building_anything(lab_root, values, key):
    with pytest.raises(ConfigError) as e:
        lab_mod.Lab("vals").up(None, None, None, values)
    assert e.value.key == key
    assert not lab_root.exists()


def test_cli_names_the_key_in_one_line_and_exits_non_zero(lab_root):
    from agent.cli import cli
    r = CliRunner().invoke(cli, ["lab", "up", "--name", "vals", "--set",
                                 "loadBalancer.acceleration=turbo"])
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "loadBalancer.acceleration" in lines[0], r.output
    assert not lab_root.exists()
