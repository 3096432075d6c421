"""Policy verdict events -> flows, lines and metrics: real policy_verdict_notify records
(abi.PolicyVerdictNotify) decoded, resolved against the stub view of test_monitor_flows, printed
as `hubble observe` and `cilium monitor` print them, filtered by --type policy-verdict, and
counted in hubble_policy_verdicts_total (and not a second time in hubble_drop_total or
hubble_tcp_flags_total)."""
from __future__ import annotations

import ctypes
import json

from prometheus_client import CollectorRegistry, generate_latest

from datapath import abi

from agent.metrics import HubbleMetrics
from agent.monitor import format as fmt
from agent.monitor.flows import metric_labels
from agent.monitor.ring import FlowFilter

from .test_monitor_flows import CURL, WEB1, drop_record, flow_of, packet, trace_record


def verdict_record(pkt: bytes, *, source=34, remote=256, verdict=0, dport=80, proto=6,
                   direction=abi.POLICY_VERDICT_DIR_INGRESS, match=abi.POLICY_MATCH_L3_L4,
                   hook=abi.EVENT_HOOK_TO_CONTAINER, ktime_ns=5_000_000_000) -> bytes:
    """A policy_verdict_notify record as the datapath writes it."""
    n = abi.PolicyVerdictNotify(type=abi.CILIUM_NOTIFY_POLICY_VERDICT, source=source,
                                len_orig=len(pkt), len_cap=min(len(pkt), abi.TRACE_PAYLOAD_LEN),
                                version=abi.NOTIFY_CAPTURE_VER, remote_label=remote,
                                verdict=verdict, dst_port=dport, proto=proto,
                                flags=direction | (match << abi.POLICY_VERDICT_MATCH_SHIFT),
                                hook=hook, ktime_ns=ktime_ns)
    cap = pkt[:abi.TRACE_PAYLOAD_LEN]
    ctypes.memmove(ctypes.addressof(n) + abi.PolicyVerdictNotify.data.offset, cap, len(cap))
    return bytes(n)[:abi.PolicyVerdictNotify.data.offset + len(cap)]


def test_allowed_ingress_verdict_is_a_forwarded_flow_of_the_new_connection():
    flow, rec = flow_of(verdict_record(packet()))
    assert (rec["type"], rec["action"], rec["match"], rec["direction"]) == \
        ("policy-verdict", "allow", "L3-L4", "INGRESS")
    assert (rec["source"], rec["remote_identity"], rec["dst_port"], rec["proto"]) == \
        (34, 256, 80, 6)
    assert flow["verdict"] == "FORWARDED" and "drop_reason" not in flow
    assert flow["event_type"] == {"type": 5, "sub_type": 0}
    assert flow["traffic_direction"] == "INGRESS" and flow["is_reply"] is False
    assert flow["policy_match_type"] == abi.POLICY_MATCH_L3_L4
    # the remote identity is the source on ingress; the local side resolves by its address
    assert flow["source"]["identity"] == 256 and flow["source"]["pod_name"] == "curl-pod"
    assert flow["destination"]["identity"] == 257 and flow["destination"]["ID"] == 34
    assert "interface" not in flow and flow["Summary"] == "TCP Flags: SYN"
    assert metric_labels(rec) == ("PolicyVerdict", "")
    line = fmt.compact(flow)
    assert line.endswith(": default/curl-pod:40000 (ID:256) -> default/webpod-1:80 (ID:257) "
                         "policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)")
    row = fmt.table([flow])[1]
    assert "   policy-verdict:L3-L4 INGRESS   ALLOWED   TCP Flags: SYN" in row
    assert fmt.monitor_line(rec) == (
        f"Policy verdict log: flow 0x0 local EP ID 34, remote ID 256, proto 6, ingress, "
        f"action allow, auth: disabled, match L3-L4, {CURL}:40000 -> {WEB1}:80 tcp SYN")
    assert fmt.monitor_verbose(rec) == [fmt.monitor_line(rec)]    # Cilium: one line at -v
    j = json.loads(fmt.monitor_json(rec))
    assert (j["type"], j["action"], j["match"], j["direction"], j["remoteLabel"],
            j["dstPort"]) == ("policy-verdict", "allow", "L3-L4", "ingress", 256, 80)
    json.dumps(flow)


def test_denied_egress_verdict_is_a_dropped_flow_with_its_reason():
    pkt = packet(proto=17, sport=5353, dport=53)
    flow, rec = flow_of(verdict_record(pkt, source=12, remote=257, verdict=-abi.DROP_POLICY,
                                       dport=53, proto=17, match=abi.POLICY_MATCH_NONE,
                                       direction=abi.POLICY_VERDICT_DIR_EGRESS,
                                       hook=abi.EVENT_HOOK_FROM_CONTAINER))
    assert (rec["action"], rec["match"], rec["reason_desc"]) == ("deny", "none", "Policy denied")
    assert flow["verdict"] == "DROPPED" and flow["drop_reason"] == abi.DROP_POLICY
    assert flow["drop_reason_desc"] == "POLICY_DENIED"
    assert flow["traffic_direction"] == "EGRESS" and "is_reply" not in flow
    assert "policy_match_type" not in flow                 # none: 0, left out
    assert flow["source"]["identity"] == 256 and flow["destination"]["identity"] == 257
    assert fmt.compact(flow).endswith(
        "default/curl-pod:5353 (ID:256) <> default/webpod-1:53 (ID:257) "
        "policy-verdict:none EGRESS DENIED (UDP)")
    assert "action deny, auth: disabled, match none," in fmt.monitor_line(rec)


def test_redirect_audit_auth_and_direction_bits_decode_as_cilium_does():
    redirect, rec = flow_of(verdict_record(packet(), verdict=15001))       # a proxy port
    assert redirect["verdict"] == "REDIRECTED" and fmt.flow_verdict(redirect) == "ALLOWED"
    assert rec["action"] == "redirect"
    raw = bytearray(verdict_record(packet()))
    raw[abi.PolicyVerdictNotify.flags.offset] |= abi.POLICY_VERDICT_F_AUDITED
    audited, rec = flow_of(bytes(raw))
    assert audited["verdict"] == "AUDIT" and fmt.flow_verdict(audited) == "AUDITED"
    assert rec["action"] == "audit"
    raw = bytearray(verdict_record(packet()))
    raw[abi.PolicyVerdictNotify.auth_type.offset] = 1
    assert "auth: spire," in fmt.monitor_line(flow_of(bytes(raw))[1])
    raw[abi.PolicyVerdictNotify.auth_type.offset] = 9
    assert "auth: Unknown-auth-type-9," in fmt.monitor_line(flow_of(bytes(raw))[1])
    for bits, direction in ((0, "EGRESS"), (1, "INGRESS"), (2, "EGRESS"), (3, "EGRESS")):
        raw = bytearray(verdict_record(packet()))
        raw[abi.PolicyVerdictNotify.flags.offset] = \
            (raw[abi.PolicyVerdictNotify.flags.offset] & ~abi.POLICY_VERDICT_DIR_MASK) | bits
        assert flow_of(bytes(raw))[0]["traffic_direction"] == direction, bits


def test_sender_names_the_source_only_for_an_egress_verdict():
    """A from-container program's verdict with a source address nobody knows: an ingress
    verdict names the receiving endpoint, not the sender, so the source stays unnamed; an
    egress one names the sending pod (the deciding endpoint is the sender)."""
    pkt = packet(src="172.20.0.99")
    ing, _ = flow_of(verdict_record(pkt, source=34, hook=abi.EVENT_HOOK_FROM_CONTAINER))
    assert "pod_name" not in ing["source"]
    eg, _ = flow_of(verdict_record(pkt, source=12, hook=abi.EVENT_HOOK_FROM_CONTAINER,
                                   direction=abi.POLICY_VERDICT_DIR_EGRESS))
    assert eg["source"]["pod_name"] == "curl-pod"


def test_type_filter_and_verdict_filter_select_policy_verdicts():
    v_flow, v_rec = flow_of(verdict_record(packet(), verdict=-abi.DROP_POLICY_DENY))
    d_flow, d_rec = flow_of(drop_record(packet()))
    t_flow, t_rec = flow_of(trace_record(packet()))
    only = FlowFilter.from_params({"type": ["policy-verdict"]}, 0)
    assert [only.match(f, r) for f, r in ((v_flow, v_rec), (d_flow, d_rec), (t_flow, t_rec))] \
        == [True, False, False]
    dropped = FlowFilter.from_params({"verdict": ["DROPPED"]}, 0)
    assert [dropped.match(f, r) for f, r in ((v_flow, v_rec), (d_flow, d_rec), (t_flow, t_rec))] \
        == [True, True, False]
    related = FlowFilter.from_params({"related-to": ["34"]}, 0)
    assert related.match(v_flow, v_rec)                    # the deciding endpoint


def test_policy_verdicts_metric_counts_once_per_verdict():
    registry = CollectorRegistry()
    m = HubbleMetrics(registry)
    for record in (verdict_record(packet()), verdict_record(packet(sport=40001)),
                   verdict_record(packet(), verdict=-abi.DROP_POLICY,
                                  match=abi.POLICY_MATCH_NONE),
                   verdict_record(packet(), direction=abi.POLICY_VERDICT_DIR_EGRESS,
                                  match=abi.POLICY_MATCH_ALL),
                   # the host reaching a local endpoint: not counted, as Hubble's handler
                   verdict_record(packet(src="172.20.0.1"), remote=abi.IDENTITY_HOST,
                                  match=abi.POLICY_MATCH_L3_ONLY)):
        flow, rec = flow_of(record)
        m.flow(*metric_labels(rec), flow)
    text = generate_latest(registry).decode()
    assert 'hubble_policy_verdicts_total{action="forwarded",direction="ingress",' \
           'match="l3-l4"} 2.0' in text
    assert 'hubble_policy_verdicts_total{action="dropped",direction="ingress",' \
           'match="none"} 1.0' in text
    assert 'hubble_policy_verdicts_total{action="forwarded",direction="egress",' \
           'match="all"} 1.0' in text
    assert 'match="l3-only"' not in text
    assert 'hubble_flows_processed_total{subtype="",type="PolicyVerdict",' \
           'verdict="FORWARDED"} 4.0' in text
    # the packets themselves are counted by their drop and trace events
    assert "hubble_drop_total{" not in text and "hubble_tcp_flags_total{" not in text
