"""The client side of `datapath observe`, `datapath lab observe` and `datapath monitor`: the
filter options, the query string, and the loop that prints and follows (polling the agents'
/v1/flows or /v1/monitor with after=<seq> every POLL_SECONDS, as Hubble's client streams).

Several sources (one agent socket per lab node) are merged by flow time, as Hubble Relay does;
a node whose agent does not answer is named on stderr and left out. Ctrl-C ends a follow with
exit status 0.

API:
    filter_options(fn)                    the click options every observe command takes
    query_string(filters, after, last)    -> "verdict=DROPPED&pod=default%2Fcurl&..."
    observe(sources, filters, output, follow, last, timeout, node_column, echo)
    monitor(source, filters, output, verbose, timeout, echo)
      sources: {node name: callable(url) -> response dict}   (api.Client(...).get)
"""
from __future__ import annotations

import time
import urllib.parse
from typing import Callable

import click

from datapath.errors import AgentUnreachable

from . import format as fmt

POLL_SECONDS = 0.2
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
                     help="Event type (this round the datapath sends drops)."),
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
            for node, get in sources.items():
                got = get("/v1/flows?" + query_string(filters, after=seqs[node]))
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


def monitor(get: Callable[[str], dict], filters: dict, output: str, verbose: bool,
            timeout: float = 0, echo=click.echo) -> int:
    """Follow the agent's monitor records from now on, as `cilium monitor` does."""
    seq = get("/v1/monitor?" + query_string(filters, last=0))["seq"]
    deadline = time.monotonic() + timeout if timeout else None
    printed = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            got = get("/v1/monitor?" + query_string(filters, after=seq))
            seq = got["seq"]
            for rec in got["events"]:
                if output == "json":
                    echo(fmt.monitor_json(rec))
                elif verbose:
                    for line in fmt.monitor_verbose(rec):
                        echo(line)
                else:
                    echo(fmt.monitor_line(rec))
                printed += 1
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        pass
    return printed
