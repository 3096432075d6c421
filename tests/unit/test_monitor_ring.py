"""The flow ring (capacity, sequence numbers, resize) and the observe filters; the
hubble.eventBufferCapacity config key."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from datapath import abi
from datapath.errors import ConfigError

from agent.config import RESTART_KEYS, changed_keys, parse_config
from agent.monitor.ring import FlowFilter, FlowRing, parse_since

from .test_monitor_flows import CURL, WEB1, drop_record, flow_of, packet

NOW = 1_764_514_800.0


def _q(**kw) -> dict:
    return {k.replace("_", "-"): (v if isinstance(v, list) else [str(v)]) for k, v in kw.items()}


def _f(**kw) -> FlowFilter:
    return FlowFilter.from_params(_q(**kw), NOW)


def _flows():
    """curl-pod -> webpod-1:80 TCP (policy), a world source -> webpod-1 ICMP (invalid source),
    curl-pod -> x/a:53 UDP (no service), at NOW-600, NOW-60 and NOW-1."""
    return [flow_of(drop_record(packet()), wall=NOW - 600),
            flow_of(drop_record(packet(src="10.9.9.9", proto=1), reason=abi.DROP_INVALID_SIP,
                                src_label=2), wall=NOW - 60),
            flow_of(drop_record(packet(dst="172.20.1.5", proto=17, dport=53),
                                reason=abi.DROP_NO_SERVICE, dst_id=0), wall=NOW - 1)]


def _match(flt: FlowFilter) -> list[int]:
    return [i for i, (f, r) in enumerate(_flows()) if flt.match(f, r)]


def test_filters_each_criterion():
    assert _match(_f()) == [0, 1, 2]
    assert _match(_f(pod="default/curl-pod")) == [0, 2]
    assert _match(_f(pod="curl")) == [0, 2]                # default namespace, name prefix
    assert _match(_f(pod="webpod-1")) == [0, 1]            # either end
    assert _match(_f(pod="x/")) == [2]                     # a whole namespace
    assert _match(_f(from_pod="default/curl-pod")) == [0, 2]
    assert _match(_f(to_pod="default/webpod")) == [0, 1]
    assert _match(_f(from_pod="curl-pod", to_pod="x/a")) == [2]
    assert _match(_f(namespace="x")) == [2]
    assert _match(_f(ip="10.9.9.9")) == [1]
    assert _match(_f(ip="172.20.1.0/24")) == [2]
    assert _match(_f(ip=WEB1)) == [0, 1]
    assert _match(_f(port=80)) == [0] and _match(_f(port=40000)) == [0, 2]
    assert _match(_f(protocol="udp")) == [2] and _match(_f(protocol="ICMP")) == [1]
    assert _match(_f(protocol=["tcp", "udp"])) == [0, 2]   # values of one filter: OR
    assert _match(_f(verdict="DROPPED")) == [0, 1, 2] and _match(_f(verdict="forwarded")) == []
    assert _match(_f(type="drop")) == [0, 1, 2] and _match(_f(type="trace")) == []
    assert _match(_f(since="5m")) == [1, 2] and _match(_f(since="30s")) == [2]
    assert _match(_f(related_to=34)) == [0, 1] and _match(_f(related_to=12)) == [0, 1, 2]
    assert _match(_f(pod="curl-pod", protocol="tcp")) == [0]   # criteria: AND
    assert _match(_f(ip=f"{CURL},10.9.9.9")) == [0, 1, 2]       # comma-separated values


def test_bad_filter_values_are_refused_naming_the_value():
    for kw, word in ((dict(verdict="MAYBE"), "MAYBE"), (dict(type="l7"), "l7"),
                     (dict(protocol="sctp2"), "sctp2"), (dict(port=0), "port"),
                     (dict(since="yesterday"), "yesterday"),
                     (dict(ip="1.2.3"), "^ip '1.2.3': expected an address or CIDR"),
                     (dict(port="http"), "^port 'http': expected a port number"),
                     (dict(related_to="ep9"), "^related-to 'ep9': expected an endpoint id")):
        with pytest.raises(ValueError, match=word):
            _f(**kw)


def test_parse_since_durations_and_rfc3339():
    assert parse_since("5m", NOW) == NOW - 300
    assert parse_since("1h30m", NOW) == NOW - 5400
    assert parse_since("90s", NOW) == NOW - 90 and parse_since("500ms", NOW) == NOW - 0.5
    t = dt.datetime(2026, 11, 30, 15, 0, tzinfo=dt.timezone.utc).timestamp()
    assert parse_since("2026-11-30T15:00:00Z", NOW) == t
    assert parse_since("2026-11-30T16:00:00+01:00", NOW) == t


def test_ring_keeps_the_last_capacity_flows_with_increasing_sequence_numbers():
    ring = FlowRing(3)
    flows = _flows() + _flows()
    seqs = [ring.add(f, r) for f, r in flows]

    def seqs_of(*a, **k):
        entries, _last = ring.query(*a, **k)
        return [s for s, _, _ in entries]
    assert seqs == [1, 2, 3, 4, 5, 6] and ring.last_seq == 6 and ring.seen == 6
    assert ring.count == 3 and seqs_of() == [4, 5, 6]
    assert seqs_of(after=4) == [5, 6]
    assert seqs_of(after=1) == [4, 5, 6]     # wrapped: what is left
    assert seqs_of(last=2) == [5, 6]
    assert ring.query(last=0) == ([], 6) and ring.query(after=6) == ([], 6)
    assert seqs_of(_f(protocol="tcp")) == [4]
    # the seq a client follows from is the ring's at the query, even when nothing matched
    assert ring.query(_f(protocol="udp"), after=5)[1] == 6
    ring.resize(7)
    ring.add(*flows[0])
    assert ring.capacity == 7 and seqs_of() == [4, 5, 6, 7]
    ring.resize(2)
    assert seqs_of() == [6, 7]


def _cfg(tmp_path: Path, **extra) -> dict:
    return {"nodeName": "n1", "ipam": {"podCIDR": "10.0.0.0/24"},
            "stateDir": str(tmp_path), **extra}


def test_event_buffer_capacity_key(tmp_path):
    assert parse_config(_cfg(tmp_path), str(tmp_path / "c.yaml")).eventBufferCapacity == 4095
    for good in (1, 3, 8191, 65535):
        c = parse_config(_cfg(tmp_path, hubble={"eventBufferCapacity": good}),
                         str(tmp_path / "c.yaml"))
        assert c.eventBufferCapacity == good
    for bad in (0, 4096, 100, 131071, "big", True):
        with pytest.raises(ConfigError, match="hubble.eventBufferCapacity"):
            parse_config(_cfg(tmp_path, hubble={"eventBufferCapacity": bad}),
                         str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match="hubble.enabled"):
        parse_config(_cfg(tmp_path, hubble={"enabled": True}), str(tmp_path / "c.yaml"))
    a = parse_config(_cfg(tmp_path), str(tmp_path / "c.yaml"))
    b = parse_config(_cfg(tmp_path, hubble={"eventBufferCapacity": 255}),
                     str(tmp_path / "c.yaml"))
    # a reload resizes the ring: not a restart key
    assert changed_keys(a, b) == {"hubble.eventBufferCapacity"}
    assert "hubble.eventBufferCapacity" not in RESTART_KEYS
