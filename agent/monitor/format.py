"""How `datapath observe` and `datapath monitor` print what the API returns.

Flows as `hubble observe` prints them:
    compact  "Nov 30 15:00:01.123: default/curl-pod:40000 (ID:256) -> default/webpod-1:80
              (ID:257) Policy denied DROPPED (TCP Flags: SYN)"  ([node] after the time when
              the flows come from several nodes, as through Hubble Relay)
    table    TIMESTAMP SOURCE DESTINATION TYPE VERDICT SUMMARY columns
    json     one GetFlowsResponse a line: {"flow": {...}, "node_name": ..., "time": ...}
Monitor records as `cilium monitor` prints them (pkg/monitor/datapath_drop.go):
    "xx drop (Policy denied) flow 0x0 to endpoint 123, ifindex 5, file bpf_lxc.c:0, ,
     identity 256->257: 172.20.0.2:40000 -> 172.20.1.2:80 tcp SYN"
    -v: a separator, "MARK 0x0 FROM 12 DROP: 74 bytes, reason Policy denied, identity
        256->257, to endpoint 123" (Cilium prefixes "CPU 01: "; one ring buffer here does not
        say which CPU), then one line a decoded layer
    json: DropNotifyVerbose's fields
"""
from __future__ import annotations

import datetime as dt
import json

from datapath import abi

from . import dissect
from .flows import MESSAGE_TYPE_DROP, MESSAGE_TYPE_TRACE

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
    host = f"{ep['namespace']}/{ep['pod_name']}" if ep.get("pod_name") else (ip or "")
    if port and port != "0":
        host = f"{host}:{port}"
    if ep.get("identity"):
        host += f" (ID:{ep['identity']})"
    return host


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
        return flow.get("trace_observation_point", "UNKNOWN")
    return "UNKNOWN"


def compact(flow: dict, node: bool = False) -> str:
    src, dst = hostnames(flow)
    where = f" [{flow.get('node_name', '')}]" if node else ""
    return (f"{flow_time(flow)}{where}: {src} -> {dst} {flow_type(flow)} "
            f"{flow.get('verdict', 'VERDICT_UNKNOWN')} ({flow.get('Summary', '')})")


TABLE_HEADER = ("TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")


def table(flows: list[dict], node: bool = False, header: bool = True) -> list[str]:
    """Hubble's tab output (columns padded by 3 spaces, as its tabwriter)."""
    head = (TABLE_HEADER[:1] + ("NODE",) + TABLE_HEADER[1:]) if node else TABLE_HEADER
    rows = [head] if header else []
    for f in flows:
        src, dst = hostnames(f)
        row = (flow_time(f), src, dst, flow_type(f), f.get("verdict", ""), f.get("Summary", ""))
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
def monitor_line(rec: dict) -> str:
    """DropNotify.DumpInfo."""
    p = dissect.parse(bytes.fromhex(rec["data"]))
    return (f"xx drop ({rec['reason_desc']}) flow {rec['hash']:#x} to endpoint {rec['dst_id']}, "
            f"ifindex {rec['ifindex']}, file {rec['file']}:{rec['line']}, , "
            f"identity {rec['src_identity']}->{rec['dst_identity']}: "
            f"{dissect.connection_summary(p)}")


def monitor_verbose(rec: dict) -> list[str]:
    """DropNotify.DumpVerbose with the layers dissected (cilium monitor -v)."""
    head = (f"MARK {rec['hash']:#x} FROM {rec['source']} DROP: {rec['len_orig']} bytes, "
            f"reason {rec['reason_desc']}")
    if rec["src_identity"] or rec["dst_identity"]:
        head += f", identity {rec['src_identity']}->{rec['dst_identity']}"
    if rec["dst_id"]:
        head += f", to endpoint {rec['dst_id']}"
    lines = [SEPARATOR, head]
    data = bytes.fromhex(rec["data"])
    if data:
        lines += dissect.layer_lines(dissect.parse(data))
    return lines


def monitor_json(rec: dict) -> str:
    """DropNotifyVerbose's JSON (cilium monitor -o json), summary from the dissected layers."""
    p = dissect.parse(bytes.fromhex(rec["data"]))
    out = {"type": rec["type"], "mark": f"{rec['hash']:#x}", "reason": rec["reason_desc"],
           "source": rec["source"], "bytes": rec["len_orig"], "srcLabel": rec["src_identity"],
           "dstLabel": rec["dst_identity"], "dstID": rec["dst_id"], "Line": rec["line"],
           "File": rec["file"], "Ifindex": rec["ifindex"], "hook": rec["hook"],
           "time": rec["time"]}
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
