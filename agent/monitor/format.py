"""How `datapath observe` and `datapath monitor` print what the API returns.

Flows as `hubble observe` prints them (hubble/pkg/printer):
    compact  "Nov 30 15:00:01.123: default/curl-pod:40000 (ID:256) -> default/webpod-1:80
              (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)"  ([node] after the time when
              the flows come from several nodes, as through Hubble Relay). The arrow says
              is_reply: "->" a request, "<-" a reply (source and destination swapped back), "<>"
              not known (drops); identities print as (ID:n), or (host), (world), ... reserved
    table    TIMESTAMP SOURCE DESTINATION TYPE VERDICT SUMMARY columns
    json     one GetFlowsResponse a line: {"flow": {...}, "node_name": ..., "time": ...}
TYPE is Hubble's GetFlowType: a drop's reason, a trace's observation point ("to-endpoint"), a
policy verdict's match type and direction ("policy-verdict:L3-L4 INGRESS", its VERDICT ALLOWED
or DENIED).
Monitor records as `cilium monitor` prints them (pkg/monitor/datapath_drop.go, _trace.go):
    "xx drop (Policy denied) flow 0x0 to endpoint 123, ifindex 5, file bpf_lxc.c:0, ,
     identity 256->257: 172.20.0.2:40000 -> 172.20.1.2:80 tcp SYN"
    "-> endpoint 123 flow 0x0 , identity 256->257 state new ifindex lxc0a1b orig-ip 0.0.0.0:
     172.20.0.2:40000 -> 172.20.1.2:80 tcp SYN"  (-> stack, -> network, -> overlay,
     <- network, <- overlay, <- endpoint 12 at the other points)
    "Policy verdict log: flow 0x0 local EP ID 123, remote ID 256, proto 6, ingress, action
     allow, auth: disabled, match L3-L4, 172.20.0.2:40000 -> 172.20.1.2:80 tcp SYN"
    -v: a separator, "MARK 0x0 FROM 12 DROP: 74 bytes, reason Policy denied, identity
        256->257, to endpoint 123" or "MARK 0x0 FROM 12 to-endpoint: 74 bytes (74 captured),
        state new, interface lxc0a1b, , identity 256->257, orig-ip 0.0.0.0, to endpoint 123"
        (Cilium prefixes "CPU 01: "; one ring buffer here does not say which CPU), then one
        line a decoded layer
        (a policy verdict: its one line, as Cilium prints it at every verbosity)
    json: DropNotifyVerbose's / TraceNotifyVerbose's fields; a policy verdict's fields (Cilium
        prints its text line there too)
"""
from __future__ import annotations

import datetime as dt
import json

from datapath import abi

from ..identity import RESERVED
from . import dissect
from .flows import (MESSAGE_TYPE_DROP, MESSAGE_TYPE_POLICY_VERDICT, MESSAGE_TYPE_TRACE,
                    obs_point_name)

SEPARATOR = "-" * 78     # cilium monitor's msgSeparator


def flow_time(flow: dict) -> str:
    """Go's time.StampMilli in local time, as Hubble prints: 'Nov 30 15:00:01.123'."""
    t = flow.get("time")
    if not t:
        return "N/A"
    base, _, frac = t.rstrip("Z").partition(".")
    when = dt.datetime.fromisoformat(base).replace(tzinfo=dt.timezone.utc).astimezone()
    return f"{when.strftime('%b %d %H:%M:%S')}.{(frac + '000')[:3]}"


def _ports(flow: dict) -> tuple[str, str]:
    l4 = flow.get("l4") or {}
    x = l4.get("TCP") or l4.get("UDP")
    if not x:
        return "", ""
    return str(x.get("source_port", "")), str(x.get("destination_port", ""))


def _host(ip: str | None, port: str, ep: dict) -> str:
    """Hubble's Hostname: the pod (ns/name) when known, else the address; then the port."""
    host = f"{ep['namespace']}/{ep['pod_name']}" if ep.get("pod_name") else (ip or "")
    if port and port != "0":
        host = f"{host}:{port}"
    return host


# reserved identities by number, as NumericIdentity.String() names them (0: unknown)
RESERVED_NAMES = {0: "unknown", **{n: name for name, n in RESERVED.items()}}


def identity(ep: dict) -> str:
    """Hubble's fmtIdentity: "(world)" for a reserved identity, else "(ID:1234)"."""
    n = int(ep.get("identity", 0) or 0)
    return f"({RESERVED_NAMES[n]})" if n in RESERVED_NAMES else f"(ID:{n})"


def hostnames(flow: dict) -> tuple[str, str]:
    ip = flow.get("IP")
    if not ip:
        eth = flow.get("ethernet") or {}
        return eth.get("source", ""), eth.get("destination", "")
    sp, dp = _ports(flow)
    return (_host(ip.get("source"), sp, flow.get("source") or {}),
            _host(ip.get("destination"), dp, flow.get("destination") or {}))


def flow_type(flow: dict) -> str:
    """Hubble's GetFlowType: a drop shows its reason, a trace its observation point."""
    et = flow.get("event_type") or {}
    if et.get("type") == MESSAGE_TYPE_DROP:
        return abi.reason_string(int(et.get("sub_type", 0)))
    if et.get("type") == MESSAGE_TYPE_TRACE:
        return obs_point_name(int(et.get("sub_type", 0)))
    if et.get("type") == MESSAGE_TYPE_POLICY_VERDICT:
        match = abi.POLICY_MATCH_NAMES.get(int(flow.get("policy_match_type", 0)), "unknown")
        return f"policy-verdict:{match} {flow.get('traffic_direction', '')}".rstrip()
    return "UNKNOWN"


def flow_verdict(flow: dict) -> str:
    """Hubble's getVerdict: a policy verdict's ALLOWED or DENIED, else the verdict's name."""
    v = flow.get("verdict", "VERDICT_UNKNOWN")
    if (flow.get("event_type") or {}).get("type") == MESSAGE_TYPE_POLICY_VERDICT:
        if v in ("FORWARDED", "REDIRECTED"):
            return "ALLOWED"
        if v in ("DROPPED", "ERROR"):
            return "DENIED"
        if v == "AUDIT":
            return "AUDITED"
    return v


def compact(flow: dict, node: bool = False) -> str:
    src, dst = hostnames(flow)
    src_id, dst_id = identity(flow.get("source") or {}), identity(flow.get("destination") or {})
    arrow = "->"
    if "is_reply" not in flow:
        arrow = "<>"                    # the direction is not known
    elif flow["is_reply"]:              # a reply: shown from the side that asked
        src, dst, src_id, dst_id, arrow = dst, src, dst_id, src_id, "<-"
    where = f" [{flow.get('node_name', '')}]" if node else ""
    return (f"{flow_time(flow)}{where}: {src} {src_id} {arrow} {dst} {dst_id} "
            f"{flow_type(flow)} {flow_verdict(flow)} "
            f"({flow.get('Summary', '')})")


TABLE_HEADER = ("TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")


def table(flows: list[dict], node: bool = False, header: bool = True) -> list[str]:
    """Hubble's tab output (columns padded by 3 spaces, as its tabwriter)."""
    head = (TABLE_HEADER[:1] + ("NODE",) + TABLE_HEADER[1:]) if node else TABLE_HEADER
    rows = [head] if header else []
    for f in flows:
        src, dst = hostnames(f)
        row = (flow_time(f), src, dst, flow_type(f), flow_verdict(f), f.get("Summary", ""))
        rows.append((row[:1] + (f.get("node_name", ""),) + row[1:]) if node else row)
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return ["".join(c.ljust(w + 3) for c, w in zip(r, widths)) + r[-1] for r in rows]


def json_line(flow: dict) -> str:
    """One GetFlowsResponse (observer.proto), protojson field names; our seq stays out."""
    f = {k: v for k, v in flow.items() if k != "seq"}
    return json.dumps({"flow": f, "node_name": f.get("node_name", ""), "time": f.get("time")},
                      sort_keys=False)


# ---- cilium monitor ----
def _ifname(rec: dict) -> str:
    """Cilium's link cache: the device's name (the agent resolved it), else its index."""
    return rec.get("ifname") or str(rec["ifindex"])


def trace_summary(rec: dict) -> str:
    """TraceNotify.traceSummary: where the packet went ("-> endpoint 123", "<- network")."""
    point = rec["subtype"]
    if point == 0:
        return f"-> endpoint {rec['dst_id']}"
    if point == 1:
        return "-> proxy" + (f" port {rec['dst_id']}" if rec["dst_id"] else "")
    if point == 5:
        return f"<- endpoint {rec['source']}"
    return {2: "-> host from", 3: "-> stack", 4: "-> overlay", 11: "-> network", 6: "<- proxy",
            7: "<- host", 8: "<- stack", 9: "<- overlay", 10: "<- network"}.get(
                point, "unknown trace")


def _orig_ip(rec: dict) -> str:
    return rec.get("orig_ip") or "0.0.0.0"


def policy_verdict_line(rec: dict, p: dissect.Packet) -> str:
    """PolicyVerdictNotify.DumpInfo (numeric identities)."""
    return (f"Policy verdict log: flow {rec['hash']:#x} local EP ID {rec['source']}, "
            f"remote ID {rec['remote_identity']}, proto {rec['proto']}, "
            f"{rec['direction'].lower()}, action {rec['action']}, auth: {rec['auth']}, "
            f"match {rec['match']}, {dissect.connection_summary(p)}")


def monitor_line(rec: dict) -> str:
    """DropNotify.DumpInfo / TraceNotify.DumpInfo / PolicyVerdictNotify.DumpInfo (numeric
    identities)."""
    p = dissect.parse(bytes.fromhex(rec["data"]))
    if rec["type_id"] == MESSAGE_TYPE_POLICY_VERDICT:
        return policy_verdict_line(rec, p)
    if rec["type_id"] == MESSAGE_TYPE_TRACE:
        enc = "encrypted " if rec["reason"] & 0x80 else ""
        head = f"{trace_summary(rec)} {enc} flow {rec['hash']:#x} " if enc else \
            f"{trace_summary(rec)} flow {rec['hash']:#x} "
        return (f"{head}, identity {rec['src_identity']}->{rec['dst_identity']} "
                f"state {rec['state']} ifindex {_ifname(rec)} orig-ip {_orig_ip(rec)}: "
                f"{dissect.connection_summary(p)}")
    return (f"xx drop ({rec['reason_desc']}) flow {rec['hash']:#x} to endpoint {rec['dst_id']}, "
            f"ifindex {rec['ifindex']}, file {rec['file']}:{rec['line']}, , "
            f"identity {rec['src_identity']}->{rec['dst_identity']}: "
            f"{dissect.connection_summary(p)}")


def monitor_verbose(rec: dict) -> list[str]:
    """DropNotify.DumpVerbose / TraceNotify.DumpVerbose with the layers dissected
    (cilium monitor -v)."""
    data = bytes.fromhex(rec["data"])
    if rec["type_id"] == MESSAGE_TYPE_POLICY_VERDICT:
        return [policy_verdict_line(rec, dissect.parse(data))]     # as Cilium: no more at -v
    if rec["type_id"] == MESSAGE_TYPE_TRACE:
        head = (f"MARK {rec['hash']:#x} FROM {rec['source']} {rec['obs_point']}: "
                f"{rec['len_orig']} bytes ({len(data)} captured), state {rec['state']}")
        if rec["ifindex"]:
            head += f", interface {_ifname(rec)}"
        if rec["src_identity"] or rec["dst_identity"]:
            head += f", , identity {rec['src_identity']}->{rec['dst_identity']}"
        head += f", orig-ip {_orig_ip(rec)}"
    else:
        head = (f"MARK {rec['hash']:#x} FROM {rec['source']} DROP: {rec['len_orig']} bytes, "
                f"reason {rec['reason_desc']}")
        if rec["src_identity"] or rec["dst_identity"]:
            head += f", identity {rec['src_identity']}->{rec['dst_identity']}"
    if rec["dst_id"]:
        head += f", to endpoint {rec['dst_id']}"
    lines = [SEPARATOR, head]
    if data:
        lines += dissect.layer_lines(dissect.parse(data))
    return lines


def monitor_json(rec: dict) -> str:
    """DropNotifyVerbose's / TraceNotifyVerbose's JSON (cilium monitor -o json), the summary
    from the dissected layers."""
    p = dissect.parse(bytes.fromhex(rec["data"]))
    if rec["type_id"] == MESSAGE_TYPE_TRACE:
        out = {"type": "trace", "mark": f"{rec['hash']:#x}", "ifindex": _ifname(rec),
               "state": rec["state"], "observationPoint": rec["obs_point"],
               "traceSummary": trace_summary(rec), "source": rec["source"],
               "bytes": rec["len_orig"], "srcLabel": rec["src_identity"],
               "dstLabel": rec["dst_identity"], "dstID": rec["dst_id"], "hook": rec["hook"],
               "time": rec["time"]}
    elif rec["type_id"] == MESSAGE_TYPE_POLICY_VERDICT:
        out = {"type": "policy-verdict", "mark": f"{rec['hash']:#x}", "source": rec["source"],
               "remoteLabel": rec["remote_identity"], "verdict": rec["verdict"],
               "action": rec["action"], "match": rec["match"],
               "direction": rec["direction"].lower(), "proto": rec["proto"],
               "dstPort": rec["dst_port"], "bytes": rec["len_orig"], "hook": rec["hook"],
               "time": rec["time"]}
    else:
        out = {"type": rec["type"], "mark": f"{rec['hash']:#x}", "reason": rec["reason_desc"],
               "source": rec["source"], "bytes": rec["len_orig"],
               "srcLabel": rec["src_identity"], "dstLabel": rec["dst_identity"],
               "dstID": rec["dst_id"], "Line": rec["line"], "File": rec["file"],
               "Ifindex": rec["ifindex"], "hook": rec["hook"], "time": rec["time"]}
    summary: dict = {}
    if p.eth_src:
        summary["l2"] = {"src": p.eth_src, "dst": p.eth_dst}
    if p.ip:
        summary["l3"] = {"src": p.ip["src"], "dst": p.ip["dst"]}
    if p.ports:
        summary["l4"] = {"src": str(p.ports[0]), "dst": str(p.ports[1])}
    if summary:
        out["summary"] = summary
    return json.dumps(out)
