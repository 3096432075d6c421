"""Unit tests for agent/config.py: defaults, every validation error (file, key, reason), diffing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from agent.config import RESTART_KEYS, Config, changed_keys, load_config, parse_config
from datapath.errors import ConfigError, DatapathError

MINIMAL = "nodeName: node-1\nipam:\n  podCIDR: 172.20.0.0/24\n"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def cfg(tmp_path: Path, **extra: object) -> Config:
    """Load MINIMAL merged (one level deep) with `extra`."""
    data: dict = yaml.safe_load(MINIMAL)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return load_config(write(tmp_path, yaml.safe_dump(data)))


def error(tmp_path: Path, **extra: object) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        cfg(tmp_path, **extra)
    return ei.value


# --- defaults and happy path ------------------------------------------------------------

def test_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    c = load_config(path)
    assert c.path == path
    assert c.nodeName == "node-1"
    assert c.devices == ()
    assert c.podCIDR == "172.20.0.0/24"
    assert c.ipamMode == "kubernetes"
    assert c.routingMode == "tunnel"
    assert c.tunnelProtocol == "vxlan"
    assert c.ipv4NativeRoutingCIDR is None
    assert c.autoDirectNodeRoutes is False
    assert c.kubeProxyReplacement is False
    assert c.bpfMasquerade is False
    assert c.bpfRoot == "/sys/fs/bpf"
    assert c.lbAlgorithm == "random"
    assert c.lbAcceleration == "disabled"
    assert c.policyEnforcementMode == "default"
    assert c.allowLocalhost == "always"          # Cilium's auto, in Kubernetes
    assert c.prometheusEnabled is True
    assert c.prometheusPort == 9962
    assert c.apiSocket == "/var/run/datapath/datapath.sock"
    assert c.stateDir == "/var/run/datapath/state"
    assert c.manifests is None
    assert c.mtu == 1500
    assert c.debug is False
    assert c.raw == yaml.safe_load(MINIMAL)


def test_full_config(tmp_path: Path) -> None:
    text = """
nodeName: worker-2
devices: [eth0, eth1]
ipam: {podCIDR: 10.244.1.0/24, mode: cluster-pool}
routingMode: native
tunnelProtocol: vxlan
ipv4NativeRoutingCIDR: 10.244.0.0/16
autoDirectNodeRoutes: true
kubeProxyReplacement: true
bpf: {masquerade: true, root: /mnt/bpf/}
loadBalancer: {algorithm: maglev, acceleration: best-effort}
policyEnforcementMode: always
allowLocalhost: policy
prometheus: {enabled: false, port: 9000}
apiSocket: /run/dp.sock
stateDir: /var/lib/dp
manifests: /etc/dp/manifests
MTU: 9000
debug: {enabled: true}
"""
    c = load_config(write(tmp_path, text))
    assert c.nodeName == "worker-2"
    assert c.devices == ("eth0", "eth1")
    assert (c.podCIDR, c.ipamMode) == ("10.244.1.0/24", "cluster-pool")
    assert c.routingMode == "native"
    assert c.ipv4NativeRoutingCIDR == "10.244.0.0/16"
    assert c.autoDirectNodeRoutes is True and c.kubeProxyReplacement is True
    assert c.bpfMasquerade is True and c.bpfRoot == "/mnt/bpf"  # normalised
    assert (c.lbAlgorithm, c.lbAcceleration) == ("maglev", "best-effort")
    assert c.policyEnforcementMode == "always"
    assert c.allowLocalhost == "policy"
    assert (c.prometheusEnabled, c.prometheusPort) == (False, 9000)
    assert (c.apiSocket, c.stateDir) == ("/run/dp.sock", "/var/lib/dp")
    assert c.manifests == "/etc/dp/manifests"
    assert c.mtu == 9000 and c.debug is True
    assert c.pin_dir() == "/mnt/bpf/datapath/worker-2"


def test_helpers(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    assert c.pin_dir() == "/sys/fs/bpf/datapath/node-1"
    assert c.gateway_ip() == "172.20.0.1"
    assert cfg(tmp_path, ipam={"podCIDR": "10.8.0.0/16"}).gateway_ip() == "10.8.0.1"


@pytest.mark.parametrize("value, expected", [
    ("eth0", ("eth0",)),
    ("eth0 eth1", ("eth0", "eth1")),
    ("eth0,eth1", ("eth0", "eth1")),
    (" eth0 , eth1 ", ("eth0", "eth1")),
    ("", ()),
    ([], ()),
    (["enp0s3"], ("enp0s3",)),
])
def test_devices_forms(tmp_path: Path, value: object, expected: tuple) -> None:
    assert cfg(tmp_path, devices=value).devices == expected


@pytest.mark.parametrize("value, expected", [(True, True), (False, False),
                                             ("true", True), ("false", False)])
def test_kube_proxy_replacement_accepts_strings(tmp_path: Path, value: object,
                                                expected: bool) -> None:
    assert cfg(tmp_path, kubeProxyReplacement=value).kubeProxyReplacement is expected


def test_mtu_zero_is_auto_and_explicit_kept(tmp_path: Path) -> None:
    assert cfg(tmp_path, MTU=0).mtu == 1500
    assert cfg(tmp_path, MTU=576).mtu == 576
    assert cfg(tmp_path, MTU=1450).mtu == 1450


def test_unset_native_routing_cidr(tmp_path: Path) -> None:
    # Helm's values.yaml writes "" for "unset"
    assert cfg(tmp_path, ipv4NativeRoutingCIDR="").ipv4NativeRoutingCIDR is None
    assert cfg(tmp_path, ipv4NativeRoutingCIDR=None).ipv4NativeRoutingCIDR is None


def test_pod_cidr_normalised(tmp_path: Path) -> None:
    c = cfg(tmp_path, ipam={"podCIDR": "172.20.0.0/255.255.255.0"})
    assert c.podCIDR == "172.20.0.0/24"


# --- manifests path ---------------------------------------------------------------------

def test_relative_manifests_resolve_against_config_dir(tmp_path: Path, monkeypatch) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, MINIMAL + "manifests: ../manifests\n")
    monkeypatch.chdir("/")  # cwd must not matter
    assert load_config(path).manifests == str(tmp_path / "manifests")


def test_relative_config_path_becomes_absolute(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, MINIMAL + "manifests: m\n")
    monkeypatch.chdir(tmp_path)
    c = load_config("config.yaml")
    assert c.path == str(tmp_path / "config.yaml")
    assert c.manifests == str(tmp_path / "m")


def test_absolute_manifests_kept(tmp_path: Path) -> None:
    assert cfg(tmp_path, manifests="/srv/m").manifests == "/srv/m"


def test_parse_config_uses_path_for_manifests_and_errors(tmp_path: Path) -> None:
    data = yaml.safe_load(MINIMAL + "manifests: k8s\n")
    c = parse_config(data, str(tmp_path / "x.yaml"))
    assert c.manifests == str(tmp_path / "k8s")
    assert c.path == str(tmp_path / "x.yaml")
    with pytest.raises(ConfigError) as ei:
        parse_config({"nodeName": "n"}, str(tmp_path / "x.yaml"))
    assert (ei.value.file, ei.value.key) == (str(tmp_path / "x.yaml"), "ipam.podCIDR")


# --- file-level errors ------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert (ei.value.file, ei.value.key, ei.value.reason) == (path, "<file>", "no such file")
    assert isinstance(ei.value, DatapathError)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert ei.value.file == path
    assert ei.value.key == "<file>"
    assert "empty" in ei.value.reason
    assert path in str(ei.value)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "nodeName: n\nipam:\n  podCIDR: [10.0.0.0/24\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert (ei.value.file, ei.value.key) == (path, "<yaml>")
    assert "line 4" in ei.value.reason


@pytest.mark.parametrize("text, got", [("- a\n- b\n", "a list"), ("just words\n", "'just words'")])
def test_top_level_must_be_mapping(tmp_path: Path, text: str, got: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert ei.value.file == path
    assert ei.value.key == "<top-level>"
    assert ei.value.reason == f"expected a mapping, got {got}"


# --- required keys, unknown keys, sections ----------------------------------------------

def test_missing_node_name(tmp_path: Path) -> None:
    path = write(tmp_path, "ipam: {podCIDR: 10.0.0.0/24}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert (ei.value.file, ei.value.key, ei.value.reason) == (
        path, "nodeName", "required key is missing")


@pytest.mark.parametrize("text", ["nodeName: n\n", "nodeName: n\nipam: {mode: kubernetes}\n"])
def test_missing_pod_cidr(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    assert (ei.value.key, ei.value.reason) == ("ipam.podCIDR", "required key is missing")


@pytest.mark.parametrize("extra, key, reason", [
    ("mtu: 1500\n", "mtu", "unknown key, did you mean 'MTU'?"),
    ("nodename: x\n", "nodename", "unknown key, did you mean 'nodeName'?"),
    ("kubeProxyReplacment: true\n", "kubeProxyReplacment",
     "unknown key, did you mean 'kubeProxyReplacement'?"),
    ("bpf:\n  masqurade: true\n", "bpf.masqurade", "unknown key, did you mean 'masquerade'?"),
    ("loadBalancer:\n  algo: maglev\n", "loadBalancer.algo",
     "unknown key, did you mean 'algorithm'?"),
    ("hubble: {enabled: true}\n", "hubble.enabled", "unknown key"),
    ("debug:\n  verbose: flow\n", "debug.verbose", "unknown key"),
])
def test_unknown_keys(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert (ei.value.file, ei.value.key, ei.value.reason) == (path, key, reason)


def test_unknown_nested_key_suggests_case_insensitively(tmp_path: Path) -> None:
    path = write(tmp_path, "nodeName: n\nipam:\n  podCidr: 10.0.0.0/24\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert (ei.value.key, ei.value.reason) == (
        "ipam.podCidr", "unknown key, did you mean 'podCIDR'?")


@pytest.mark.parametrize("section", ["ipam", "bpf", "loadBalancer", "prometheus", "debug"])
def test_section_must_be_mapping(tmp_path: Path, section: str) -> None:
    data = yaml.safe_load(MINIMAL)
    data[section] = "true"
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, yaml.safe_dump(data)))
    assert (ei.value.key, ei.value.reason) == (section, "expected a mapping, got 'true'")


# --- per-key value errors ----------------------------------------------------------------

@pytest.mark.parametrize("extra, key, reason", [
    # nodeName
    ({"nodeName": "Node1"}, "nodeName", "got 'Node1'"),
    ({"nodeName": "-node"}, "nodeName", "got '-node'"),
    ({"nodeName": "node.1"}, "nodeName", "got 'node.1'"),
    ({"nodeName": "a" * 64}, "nodeName", "DNS-1123 label"),
    ({"nodeName": 7}, "nodeName", "got 7"),
    # devices
    ({"devices": ["eth0", "x" * 16]}, "devices", "1 to 15 characters"),
    ({"devices": ["eth/0"]}, "devices", "got 'eth/0'"),
    ({"devices": [3]}, "devices", "got 3"),
    ({"devices": {"eth0": True}}, "devices", "got a mapping"),
    ({"devices": "eth0 eth0"}, "devices", "device 'eth0' is listed twice"),
    # ipam
    ({"ipam": {"podCIDR": "banana"}}, "ipam.podCIDR",
     "expected an IPv4 CIDR like 10.0.0.0/24, got 'banana'"),
    ({"ipam": {"podCIDR": "10.0.0.1"}}, "ipam.podCIDR",
     "expected an IPv4 CIDR like 10.0.0.0/24, got '10.0.0.1'"),
    ({"ipam": {"podCIDR": "fd00::/64"}}, "ipam.podCIDR",
     "expected an IPv4 CIDR like 10.0.0.0/24, got 'fd00::/64'"),
    ({"ipam": {"podCIDR": "10.0.0.0/33"}}, "ipam.podCIDR", "got '10.0.0.0/33'"),
    ({"ipam": {"podCIDR": 10}}, "ipam.podCIDR", "got 10"),
    ({"ipam": {"podCIDR": None}}, "ipam.podCIDR",
     "expected an IPv4 CIDR like 10.0.0.0/24, got null"),
    ({"ipam": {"podCIDR": ""}}, "ipam.podCIDR",
     "expected an IPv4 CIDR like 10.0.0.0/24, got ''"),
    ({"ipam": {"podCIDR": "172.20.0.5/24"}}, "ipam.podCIDR",
     "host bits set, did you mean 172.20.0.0/24?"),
    ({"ipam": {"podCIDR": "10.0.0.0/7"}}, "ipam.podCIDR",
     "prefix length must be between /8 and /30, got /7"),
    ({"ipam": {"podCIDR": "10.0.0.0/31"}}, "ipam.podCIDR",
     "prefix length must be between /8 and /30, got /31"),
    ({"ipam": {"mode": "eni"}}, "ipam.mode",
     "expected one of 'kubernetes', 'cluster-pool', got 'eni'"),
    # enums
    ({"routingMode": "direct"}, "routingMode", "expected one of 'native', 'tunnel', got 'direct'"),
    ({"routingMode": True}, "routingMode", "expected one of 'native', 'tunnel', got true"),
    ({"tunnelProtocol": "gre"}, "tunnelProtocol",
     "expected one of 'vxlan', 'geneve', got 'gre'"),
    ({"tunnelProtocol": "geneve"}, "tunnelProtocol",
     "geneve is not available on this kernel; use vxlan"),
    ({"loadBalancer": {"algorithm": "round-robin"}}, "loadBalancer.algorithm",
     "expected one of 'random', 'maglev', got 'round-robin'"),
    ({"loadBalancer": {"acceleration": "yes"}}, "loadBalancer.acceleration",
     "expected one of 'disabled', 'native', 'best-effort', got 'yes'"),
    ({"policyEnforcementMode": "Always"}, "policyEnforcementMode",
     "expected one of 'default', 'always', 'never', got 'Always'"),
    ({"allowLocalhost": "never"}, "allowLocalhost",
     "expected one of 'auto', 'always', 'policy', got 'never'"),
    # native routing CIDR
    ({"ipv4NativeRoutingCIDR": "10.0.0.0"}, "ipv4NativeRoutingCIDR",
     "expected an IPv4 CIDR like 10.0.0.0/24, got '10.0.0.0'"),
    ({"ipv4NativeRoutingCIDR": "10.1.2.3/16"}, "ipv4NativeRoutingCIDR",
     "host bits set, did you mean 10.1.0.0/16?"),
    # booleans must be real booleans
    ({"autoDirectNodeRoutes": "yes"}, "autoDirectNodeRoutes",
     "expected a boolean (true or false), got 'yes'"),
    ({"autoDirectNodeRoutes": "true"}, "autoDirectNodeRoutes",
     "expected a boolean (true or false), got 'true'"),
    ({"bpf": {"masquerade": 1}}, "bpf.masquerade", "expected a boolean (true or false), got 1"),
    ({"prometheus": {"enabled": "on"}}, "prometheus.enabled",
     "expected a boolean (true or false), got 'on'"),
    ({"debug": {"enabled": None}}, "debug.enabled",
     "expected a boolean (true or false), got null"),
    # kubeProxyReplacement
    ({"kubeProxyReplacement": "strict"}, "kubeProxyReplacement",
     "'strict' was removed in Cilium 1.14; use true or false"),
    ({"kubeProxyReplacement": "partial"}, "kubeProxyReplacement",
     "'partial' was removed in Cilium 1.14; use true or false"),
    ({"kubeProxyReplacement": "disabled"}, "kubeProxyReplacement",
     "'disabled' was removed in Cilium 1.14; use true or false"),
    ({"kubeProxyReplacement": "yes"}, "kubeProxyReplacement", "expected true or false, got 'yes'"),
    # paths
    ({"bpf": {"root": "sys/fs/bpf"}}, "bpf.root", "expected an absolute path, got 'sys/fs/bpf'"),
    ({"apiSocket": "dp.sock"}, "apiSocket", "expected an absolute path, got 'dp.sock'"),
    ({"stateDir": 5}, "stateDir", "expected an absolute path, got 5"),
    ({"manifests": ["a"]}, "manifests", "expected a path, got a list"),
    # integers
    ({"prometheus": {"port": 0}}, "prometheus.port", "expected an integer from 1 to 65535, got 0"),
    ({"prometheus": {"port": 65536}}, "prometheus.port",
     "expected an integer from 1 to 65535, got 65536"),
    ({"prometheus": {"port": "9962"}}, "prometheus.port",
     "expected an integer from 1 to 65535, got '9962'"),
    ({"prometheus": {"port": True}}, "prometheus.port",
     "expected an integer from 1 to 65535, got true"),
    ({"MTU": 575}, "MTU", "expected 0 (auto) or an integer from 576 to 9000, got 575"),
    ({"MTU": 9001}, "MTU", "expected 0 (auto) or an integer from 576 to 9000, got 9001"),
    ({"MTU": "1500"}, "MTU", "expected 0 (auto) or an integer from 576 to 9000, got '1500'"),
    ({"MTU": False}, "MTU", "expected 0 (auto) or an integer from 576 to 9000, got false"),
])
def test_value_errors(tmp_path: Path, extra: dict, key: str, reason: str) -> None:
    e = error(tmp_path, **extra)
    assert e.file == str(tmp_path / "config.yaml")
    assert e.key == key
    assert reason in e.reason
    assert str(e) == f"{e.file}: {key}: {e.reason}"


def test_first_error_wins(tmp_path: Path) -> None:
    # unknown keys are reported before bad values, so a typo is not hidden behind its effect
    e = error(tmp_path, routingMode="bogus", mtuu=1)
    assert e.key == "mtuu"


# --- diffing ------------------------------------------------------------------------------

def test_changed_keys_none_when_equivalent(tmp_path: Path) -> None:
    a = cfg(tmp_path, devices="eth0,eth1", MTU=0)
    b = cfg(tmp_path, devices=["eth0", "eth1"], MTU=1500, routingMode="tunnel")
    assert changed_keys(a, b) == set()
    assert a == b  # raw differs, effective values do not


def test_changed_keys_dotted(tmp_path: Path) -> None:
    a = cfg(tmp_path)
    b = cfg(tmp_path, ipam={"podCIDR": "172.21.0.0/24"}, bpf={"masquerade": True},
            loadBalancer={"algorithm": "maglev"}, MTU=1400, debug={"enabled": True},
            devices="eth0")
    changed = changed_keys(a, b)
    assert changed == {"ipam.podCIDR", "bpf.masquerade", "loadBalancer.algorithm", "MTU",
                       "debug.enabled", "devices"}
    assert changed & RESTART_KEYS == {"ipam.podCIDR", "devices", "MTU"}
    assert changed_keys(b, a) == changed


def test_restart_keys() -> None:
    assert RESTART_KEYS == {"nodeName", "ipam.podCIDR", "apiSocket", "stateDir", "bpf.root",
                            "prometheus.port", "prometheus.enabled", "devices", "cluster.name",
                            "kvstore", "kvstoreOpt", "kvstoreLeaseTTL", "routingMode",
                            "tunnelProtocol", "bpf.natPortRange", "maglev.tableSize",
                            "l2announcements.enabled", "bpf.lbMapMax", "bpf.ctTcpMax",
                            "bpf.ctAnyMax", "MTU",
                            "l2announcements.leaseDuration", "l2announcements.leaseRenewDeadline",
                            "l2announcements.leaseRetryPeriod", "bpf.monitorAggregation",
                            "bpf.monitorInterval"}
    assert isinstance(RESTART_KEYS, frozenset)


def test_config_is_frozen_and_hashable(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    with pytest.raises(AttributeError):
        c.nodeName = "other"  # type: ignore[misc]
    assert hash(c) == hash(cfg(tmp_path))


def test_raw_is_a_copy(tmp_path: Path) -> None:
    data = yaml.safe_load(MINIMAL)
    c = parse_config(data, str(tmp_path / "c.yaml"))
    data["ipam"]["podCIDR"] = "changed"
    assert c.raw["ipam"]["podCIDR"] == "172.20.0.0/24"
    assert os.path.isabs(c.path)


# ---- kvstore ----
def _kv(tmp_path, extra: str):
    p = tmp_path / "kv.yaml"
    p.write_text("nodeName: n1\nipam: {podCIDR: 10.0.0.0/24}\n" + extra)
    return p


def test_kvstore_defaults_to_embedded_store(tmp_path):
    c = load_config(str(_kv(tmp_path, "")))
    assert (c.kvstore, c.kvstoreEndpoints, c.kvstoreLeaseTTL, c.clusterName) == \
        (None, (), 900, "default")


def test_kvstore_etcd_endpoints_and_config_file(tmp_path):
    c = load_config(str(_kv(tmp_path, "kvstore: etcd\nkvstoreOpt: {etcd.endpoints: "
                                      "'http://10.0.0.1:2379, http://10.0.0.2:2379'}\n"
                                      "kvstoreLeaseTTL: 10\n")))
    assert c.kvstoreEndpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert c.kvstoreLeaseTTL == 10
    (tmp_path / "etcd.yaml").write_text("endpoints:\n- http://10.9.9.9:2379\n")
    c = load_config(str(_kv(tmp_path, "kvstore: etcd\nkvstoreOpt: {etcd.config: etcd.yaml}\n")))
    assert c.kvstoreEndpoints == ("http://10.9.9.9:2379",)


@pytest.mark.parametrize("extra,key,reason", [
    ("kvstore: consul\n", "kvstore", "expected etcd"),
    ("kvstore: etcd\n", "kvstoreOpt", "needs etcd.endpoints"),
    ("kvstoreOpt: {etcd.qps: 3}\n", "kvstoreOpt.etcd.qps", "unknown option"),
    ("kvstore: etcd\nkvstoreOpt: {etcd.endpoints: 'ftp://x'}\n", "kvstoreOpt", "endpoint URLs"),
    ("kvstoreLeaseTTL: 1\n", "kvstoreLeaseTTL", ""),
    ("cluster: {name: Bad_Name}\n", "cluster.name", "DNS-1123"),
])
def test_kvstore_errors_name_the_key(tmp_path, extra, key, reason):
    with pytest.raises(ConfigError) as e:
        load_config(str(_kv(tmp_path, extra)))
    assert e.value.key == key and reason in e.value.reason


def test_masquerade_keys(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("nodeName: n1\nipam: {podCIDR: 10.0.0.0/24}\nbpf: {masquerade: true, "
                 "natPortRange: '40000-40001'}\nipMasqAgent: {enabled: true, config: "
                 "{nonMasqueradeCIDRs: [198.51.100.0/24], masqLinkLocal: true}}\n"
                 "egressMasqueradeInterfaces: 'eth1 ens+'\n")
    c = load_config(str(p))
    assert c.bpfMasquerade and c.natPortRange == (40000, 40001)
    assert c.nonMasqueradeCIDRs == ("198.51.100.0/24",) and c.masqLinkLocal
    assert c.egressMasqueradeInterfaces == ("eth1", "ens+")


def test_service_keys(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("nodeName: n1\nipam: {podCIDR: 10.0.0.0/24}\nnodePort: {range: '20000,20100'}\n"
                 "maglev: {tableSize: 251}\nloadBalancer: {algorithm: maglev}\n")
    c = load_config(str(p))
    assert c.nodePortRange == (20000, 20100) and c.maglevTableSize == 251
    assert c.lbAlgorithm == "maglev"
    d = cfg(tmp_path)
    assert d.nodePortRange == (30000, 32767) and d.maglevTableSize == 16381


@pytest.mark.parametrize("extra,key", [
    ("bpf: {natPortRange: '70000-80000'}\n", "bpf.natPortRange"),
    ("ipMasqAgent: {config: {nonMasqueradeCIDRs: [banana]}}\n",
     "ipMasqAgent.config.nonMasqueradeCIDRs"),
    ("egressMasqueradeInterfaces: 'a/b'\n", "egressMasqueradeInterfaces"),
    ("nodePort: {range: '30000-40000'}\n", "nodePort.range"),          # overlaps NAT ports
    ("nodePort: {range: '30000'}\n", "nodePort.range"),
    ("bpf: {natPortRange: '30500-31000'}\n", "nodePort.range"),
    ("maglev: {tableSize: 1000}\n", "maglev.tableSize"),
    ("bpf: {lbMapMax: 1000}\n", "bpf.lbMapMax"),                     # below Cilium's default
    ("bpf: {lbMapMax: '128k'}\n", "bpf.lbMapMax"),
    ("bpf: {ctTcpMax: 256}\n", "bpf.ctTcpMax"),                      # below Cilium's 1024
    ("bpf: {ctAnyMax: 33554432}\n", "bpf.ctAnyMax"),                 # above Cilium's 2^24
])
def test_masquerade_key_errors(tmp_path, extra, key):
    p = tmp_path / "m.yaml"
    p.write_text("nodeName: n1\nipam: {podCIDR: 10.0.0.0/24}\n" + extra)
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert e.value.key == key


def test_lb_map_max_sizes_the_service_and_backend_maps(tmp_path):
    from datapath.loader import lb_map_defines
    assert cfg(tmp_path).lbMapMax == 65536 and lb_map_defines(65536) == {}
    c = cfg(tmp_path, bpf={"lbMapMax": 131072})
    assert lb_map_defines(c.lbMapMax) == {"LB_SERVICE_MAP_MAX_ENTRIES": 131072,
                                          "LB_BACKENDS_MAP_MAX_ENTRIES": 131072}


def test_ct_max_sizes_the_conntrack_maps(tmp_path):
    from datapath.loader import ct_map_defines
    d = cfg(tmp_path)
    assert (d.ctTcpMax, d.ctAnyMax) == (524288, 262144)
    assert ct_map_defines(d.ctTcpMax, d.ctAnyMax) == {}
    c = cfg(tmp_path, bpf={"ctTcpMax": 1024, "ctAnyMax": 2048})
    assert ct_map_defines(c.ctTcpMax, c.ctAnyMax) == {"CT_MAP_SIZE_TCP": 1024,
                                                      "CT_MAP_SIZE_ANY": 2048}


def test_l2_announcement_defaults_are_ciliums(tmp_path):
    c = cfg(tmp_path)
    assert (c.l2Enabled, c.l2LeaseDuration, c.l2LeaseRenewDeadline,
            c.l2LeaseRetryPeriod) == (False, 15, 5, 2)


def test_l2_announcement_keys_in_seconds_or_helm_durations(tmp_path):
    c = cfg(tmp_path, l2announcements={"enabled": True, "leaseDuration": "1m",
                                       "leaseRenewDeadline": 2, "leaseRetryPeriod": "1s"})
    assert (c.l2Enabled, c.l2LeaseDuration, c.l2LeaseRenewDeadline,
            c.l2LeaseRetryPeriod) == (True, 60, 2, 1)


@pytest.mark.parametrize("l2,key,reason", [
    ({"enabled": "yes"}, "l2announcements.enabled", "expected a boolean"),
    ({"leaseDuration": "15 minutes"}, "l2announcements.leaseDuration", "expected seconds"),
    ({"leaseDuration": 0}, "l2announcements.leaseDuration", "expected seconds"),
    ({"leaseRetryPeriod": 1.5}, "l2announcements.leaseRetryPeriod", "expected seconds"),
    ({"leaseDuration": 5, "leaseRenewDeadline": 5}, "l2announcements.leaseRenewDeadline",
     "must be shorter than leaseDuration (5s), got 5s"),
    ({"leaseRenewDeadline": 2, "leaseRetryPeriod": 3}, "l2announcements.leaseRetryPeriod",
     "must be shorter than leaseRenewDeadline (2s), got 3s"),
    ({"leaseTTL": 5}, "l2announcements.leaseTTL", "unknown key"),
])
def test_l2_announcement_key_errors(tmp_path, l2, key, reason):
    e = error(tmp_path, l2announcements=l2)
    assert e.key == key and reason in e.reason
