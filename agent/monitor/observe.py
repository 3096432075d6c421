"""The client side of `datapath observe`, `datapath lab observe` and `datapath monitor`: the
filter options, the query string, and the loop that prints and follows (polling the agents'
/v1/flows or /v1/monitor with after=<seq> every POLL_SECONDS, as Hubble's client streams).

Several sources (one agent socket per lab node) are merged by flow time, as Hubble Relay does;
a node whose agent does not answer is named on stderr and left out. `lab_monitor` merges every
node's monitor records by their bpf_ktime_get_ns() stamp (the lab's nodes share one kernel, so
one clock): a record is printed once HOLD_NS have passed since it happened, so a slower node's
earlier record still comes first; each line is prefixed with its node. Ctrl-C ends a follow with
exit status 0.

API:
    filter_options(fn)                    the click options every observe command takes
    query_string(filters, after, last)    -> "verdict=DROPPED&pod=default%2Fcurl&..."
    observe(sources, filters, output, follow, last, timeout, node_column, echo)
    monitor(source, filters, output, verbose, timeout, echo, on_ready)
    lab_monitor(sources, filters, output, verbose, timeout, echo, on_ready) -> records printed
      sources: {node name: callable(url) -> response dict}   (api.Client(...).get)
    record_lines(rec, output, verbose, node=None) -> lines of one monitor record
"""
from __future__ import annotations

import heapq
import json
import time
import urllib.parse
from typing import Callable

import click

from datapath.errors import AgentUnreachable

from . import format as fmt

POLL_SECONDS = 0.2
HOLD_NS = 600_000_000      # lab monitor: how long a record waits for other nodes' earlier ones
DEFAULT_LAST = 20          # hubble observe without --follow, --since or --last
FILTERS = ("pod", "from_pod", "to_pod", "namespace", "ip", "port", "protocol", "verdict", "type")


def filter_options(fn):
    opts = [
        click.option("--pod", multiple=True, help="Flows from or to this pod ([ns/]name prefix; "
                                                  "namespace default)."),
        click.option("--from-pod", multiple=True, help="Flows from this pod ([ns/]name)."),
        click.option("--to-pod", multiple=True, help="Flows to this pod ([ns/]name)."),
        click.option("--namespace", multiple=True, help="Flows from or to this namespace."),
        click.option("--ip", multiple=True, help="Flows from or to this address or CIDR."),
        click.option("--port", multiple=True, type=click.IntRange(1, 65535),
                     help="Flows from or to this L4 port."),
        click.option("--protocol", multiple=True,
                     type=click.Choice(["tcp", "udp", "icmp"], case_sensitive=False)),
        click.option("--verdict", multiple=True,
                     type=click.Choice(["FORWARDED", "DROPPED"], case_sensitive=False)),
        click.option("--type", "type_", multiple=True,
                     type=click.Choice(["drop", "trace", "policy-verdict"]),
                     help="Event type: drop, trace (trace points, as bpf.monitorAggregation "
                          "lets them through), policy-verdict."),
        click.option("--since", default=None, help="Flows since a duration ago (5m, 1h) or an "
                                                   "RFC3339 time."),
        click.option("--last", type=click.IntRange(0), default=None,
                     help=f"The last N flows (default {DEFAULT_LAST} without --follow/--since)."),
        click.option("-f", "--follow", is_flag=True, help="Keep printing new flows."),
        click.option("-o", "--output", type=click.Choice(["compact", "json", "table"]),
                     default="compact", show_default=True),
        click.option("--timeout", type=click.FloatRange(0), default=0,
                     help="Stop following after this many seconds (0: until interrupted)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def monitor_options(related_help: str):
    """`monitor`'s options (-t/--type, --related-to, -v, -o, --timeout), for the node's command
    and the lab's."""
    def apply(fn):
        opts = [
            click.option("-t", "--type", "types", multiple=True,
                         type=click.Choice(["drop", "trace", "policy-verdict"]),
                         help="Only these event types."),
            click.option("--related-to", multiple=True, type=int, metavar="ENDPOINT",
                         help=related_help),
            click.option("-v", "--verbose", is_flag=True, help="Decoded packet headers."),
            click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text"),
            click.option("--timeout", type=click.FloatRange(0), default=0,
                         help="Stop after this many seconds (0: until interrupted)."),
        ]
        for o in reversed(opts):
            fn = o(fn)
        return fn
    return apply


def monitor_filters(types, related_to) -> dict[str, list[str]]:
    """`monitor`'s options -> the API's query parameters."""
    out: dict[str, list[str]] = {}
    if types:
        out["type"] = list(types)
    if related_to:
        out["related-to"] = [str(i) for i in related_to]
    return out


def filters_of(kw: dict) -> dict[str, list[str]]:
    """The command's keyword arguments -> the API's query parameters."""
    out: dict[str, list[str]] = {}
    for k in FILTERS:
        vals = kw.get("type_" if k == "type" else k) or ()
        if vals:
            out[k.replace("_", "-")] = [str(v).upper() if k == "verdict" else str(v)
                                        for v in vals]
    if kw.get("since"):
        out["since"] = [kw["since"]]
    return out


def query_string(filters: dict[str, list[str]], after: int | None = None,
                 last: int | None = None) -> str:
    q = dict(filters)
    if after is not None:
        q["after"] = [str(after)]
    if last is not None:
        q["last"] = [str(last)]
    return urllib.parse.urlencode(q, doseq=True)


def _print_flows(flows: list[dict], output: str, node_column: bool, header: bool, echo) -> None:
    if output == "json":
        for f in flows:
            echo(fmt.json_line(f))
    elif output == "table":
        for line in fmt.table(flows, node=node_column, header=header):
            echo(line)
    else:
        for f in flows:
            echo(fmt.compact(f, node=node_column))


def observe(sources: dict[str, Callable[[str], dict]], filters: dict, output: str,
            follow: bool, last: int | None, timeout: float = 0, node_column: bool = False,
            echo=click.echo) -> int:
    """Print the flows the sources hold (merged by time), then follow. Returns how many."""
    if last is None and not follow and "since" not in filters:
        last = DEFAULT_LAST
    if last is None and follow and "since" not in filters:
        last = 0                         # follow from now
    seqs: dict[str, int] = {}
    batch: list[dict] = []
    for node, get in list(sources.items()):
        try:
            got = get("/v1/flows?" + query_string(filters, last=last))
        except AgentUnreachable as e:
            if len(sources) == 1:
                raise
            # as Hubble Relay: the other nodes' flows still come, the gap is said
            click.echo(f"Warning: node {node} is unavailable: {e}", err=True)
            del sources[node]
            continue
        seqs[node] = got["seq"]
        batch += got["flows"]
    if not sources:
        raise AgentUnreachable("every node", "no agent answered")
    batch.sort(key=lambda f: f.get("time", ""))
    if last is not None:
        batch = batch[max(0, len(batch) - last):]
    _print_flows(batch, output, node_column, True, echo)
    printed = len(batch)
    if not follow:
        return printed
    deadline = time.monotonic() + timeout if timeout else None
    header = not printed
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            batch = []
            for node, get in list(sources.items()):
                try:
                    got = _since(get, "flows", filters, seqs[node])
                except AgentUnreachable as e:
                    if len(sources) == 1:
                        raise
                    click.echo(f"Warning: node {node} is unavailable: {e}", err=True)
                    del sources[node]
                    continue
                seqs[node] = got["seq"]
                batch += got["flows"]
            batch.sort(key=lambda f: f.get("time", ""))
            if batch:
                _print_flows(batch, output, node_column, header, echo)
                header = False
                printed += len(batch)
    except KeyboardInterrupt:
        pass
    return printed


def _since(get: Callable[[str], dict], what: str, filters: dict, after: int) -> dict:
    """What came after seq `after`. An agent that restarted numbers from 1 again: its seq went
    back below `after`, so everything it holds is new to this client."""
    got = get(f"/v1/{what}?" + query_string(filters, after=after))
    if got["seq"] < after:
        got = get(f"/v1/{what}?" + query_string(filters, after=0))
    return got


def record_lines(rec: dict, output: str, verbose: bool, node: str | None = None) -> list[str]:
    """One monitor record as `cilium monitor` prints it; with a node (lab monitor) each line is
    prefixed "[node] " and the JSON gets a node_name."""
    if output == "json":
        line = fmt.monitor_json(rec)
        if node is not None:
            line = json.dumps({**json.loads(line), "node_name": node})
        return [line]
    lines = fmt.monitor_verbose(rec) if verbose else [fmt.monitor_line(rec)]
    return [f"[{node}] {x}" for x in lines] if node is not None else lines


def monitor(get: Callable[[str], dict], filters: dict, output: str, verbose: bool,
            timeout: float = 0, echo=click.echo, on_ready=None) -> int:
    """Follow the agent's monitor records from now on, as `cilium monitor` does; on_ready()
    runs once the agent has said where "now" is (the CLI's banner)."""
    seq = get("/v1/monitor?" + query_string(filters, last=0))["seq"]
    if on_ready is not None:
        on_ready()
    deadline = time.monotonic() + timeout if timeout else None
    printed = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            got = _since(get, "monitor", filters, seq)
            seq = got["seq"]
            for rec in got["events"]:
                for line in record_lines(rec, output, verbose):
                    echo(line)
                printed += 1
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        pass
    return printed


def _mono_ns() -> int:
    """CLOCK_MONOTONIC, the clock bpf_ktime_get_ns() reads (namespaces do not change it)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def lab_monitor(sources: dict[str, Callable[[str], dict]], filters: dict, output: str,
                verbose: bool, timeout: float = 0, echo=click.echo, clock=_mono_ns,
                on_ready=None) -> int:
    """Follow every node's monitor records from now on, merged by the time they happened.
    on_ready() runs once every node has said where "now" is (the CLI's banner)."""
    seqs: dict[str, int] = {}
    for node, get in list(sources.items()):
        try:
            seqs[node] = get("/v1/monitor?" + query_string(filters, last=0))["seq"]
        except AgentUnreachable as e:
            click.echo(f"Warning: node {node} is unavailable: {e}", err=True)
            del sources[node]
    if not sources:
        raise AgentUnreachable("every node", "no agent answered")
    if on_ready is not None:
        on_ready()
    pending: list = []          # heap of (ktime_ns, arrival, node, record)
    arrivals = 0
    printed = 0
    deadline = time.monotonic() + timeout if timeout else None

    def flush(upto: int | None) -> None:
        nonlocal printed
        while pending and (upto is None or pending[0][0] <= upto):
            _, _, node, rec = heapq.heappop(pending)
            for line in record_lines(rec, output, verbose, node):
                echo(line)
            printed += 1

    try:
        while True:
            last_round = deadline is not None and time.monotonic() >= deadline
            for node, get in list(sources.items()):
                try:
                    got = _since(get, "monitor", filters, seqs[node])
                except AgentUnreachable as e:
                    click.echo(f"Warning: node {node} is unavailable: {e}", err=True)
                    del sources[node]
                    continue
                seqs[node] = got["seq"]
                for rec in got["events"]:
                    arrivals += 1
                    heapq.heappush(pending, (int(rec.get("ktime_ns", 0)), arrivals, node, rec))
            if last_round or not sources:
                break
            flush(clock() - HOLD_NS)
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        pass
    flush(None)
    return printed
