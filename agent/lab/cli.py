"""`datapath lab ...`: the lab's commands (up, down, status, observe, monitor, exec, and the
operator's verbs `agent stop|start|restart|kill NODE` and `etcd stop|start`), thin over
agent/lab/lab.py's Lab."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from datapath import netns
from datapath.errors import LabError

from ..api import Client
from ..monitor.observe import filter_options as observe_filter_options, filters_of
from ..monitor.observe import lab_monitor as monitor_records, monitor_filters, monitor_options
from ..monitor.observe import observe as observe_flows
from .lab import Lab
from .values import load_values, merge, parse_set, show_value


name_opt = click.option("--name", "lab_name", default="default", show_default=True,
                        help="Lab name; other than 'default' it prefixes every namespace.")


@click.group()
def lab():
    """A multi-namespace lab: nodes, agents and pods on this machine."""


@lab.command()
@name_opt
@click.option("--manifests", type=click.Path(exists=True, file_okay=False), default=None,
              help="Directory of Pod/Namespace manifests (default: examples/lab).")
@click.option("--topology", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Topology YAML (default: examples/topologies/default.yaml).")
@click.option("--routing-mode", type=click.Choice(["native", "tunnel"]), default=None,
              help="Override the topology's routingMode.")
@click.option("--values", "values_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="A YAML file of Helm values for every agent (repeatable; later files win).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A Helm value for every agent, e.g. loadBalancer.algorithm=maglev "
                   "(repeatable, applied after --values; KEY=null drops a kept value).")
@click.option("--prometheus", is_flag=True,
              help="Also run Prometheus, scraping every agent (kept for later `lab up` calls).")
def up(lab_name, manifests, topology, routing_mode, values_files, sets, prometheus):
    """Build the lab (idempotent). Values given are kept for later `lab up` calls."""
    values: dict = {}
    for f in values_files:
        values = merge(values, load_values(f), keep_none=True)
    for s in sets:
        values = merge(values, parse_set(s), keep_none=True)
    st = Lab(lab_name).up(manifests, topology, routing_mode, values, prometheus)
    click.echo(f"lab {lab_name}: {len(st['nodes'])} node(s), {len(st['pods'])} pod(s) up "
               f"({st['routingMode']} routing)")
    if st.get("prometheus"):
        click.echo(f"prometheus: {st['prometheus']['url']} (in {st['prometheus']['netns']})")


@lab.command()
@name_opt
def down(lab_name):
    """Tear the lab down completely (idempotent)."""
    for line in Lab(lab_name).down():
        click.echo(line)


@lab.group("agent")
def lab_agent():
    """Stop, start, restart or kill one node's agent (the datapath stays in place)."""


def _agent_verb(verb: str, doc: str):
    @lab_agent.command(verb, help=doc)
    @name_opt
    @click.argument("node")
    def cmd(lab_name, node):
        click.echo(getattr(Lab(lab_name), f"{verb}_agent")(node))
    return cmd


for _verb, _doc in (
        ("stop", "SIGTERM NODE's agent and wait until it exits (SIGKILL after 30 s)."),
        ("start", "Start NODE's agent as `lab up` does and wait until its API answers."),
        ("restart", "Stop NODE's agent, then start it."),
        ("kill", "SIGKILL NODE's agent: no shutdown of its own, as a crash.")):
    _agent_verb(_verb, _doc)


@lab.group("etcd")
def lab_etcd():
    """Stop or start the lab's etcd (on the topology's etcd node)."""


@lab_etcd.command("stop")
@name_opt
def etcd_stop(lab_name):
    """SIGTERM etcd and wait until it exits; the agents keep their last cluster view."""
    click.echo(Lab(lab_name).stop_etcd())


@lab_etcd.command("start")
@name_opt
def etcd_start(lab_name):
    """Start etcd again on its data and wait until it is healthy."""
    click.echo(Lab(lab_name).start_etcd())


@lab.command("status")
@name_opt
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def lab_status(lab_name, output):
    """Show nodes and pods."""
    s = Lab(lab_name).status()
    if output == "json":
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"{'NODE':<12}{'NETNS':<20}{'IP':<17}{'POD CIDR':<17}{'AGENT':<9}METRICS")
    for n in s["nodes"]:
        click.echo(f"{n['name']:<12}{n['netns']:<20}{n['ip']:<17}{n['podCIDR']:<17}"
                   f"{n['agent']:<9}{n['metrics']}")
    for o in s["others"]:
        click.echo(f"{o['name']:<12}{o['netns']:<20}({o['role']})")
    etcd = f"{s['etcd']} ({s['etcdProcess']})" if s["etcd"] else "none (embedded stores)"
    click.echo(f"\nrouting: {s['routingMode']}   etcd: {etcd}")
    click.echo(f"manifests: {s['manifests']}")
    if s["prometheus"]:
        click.echo(f"prometheus: {s['prometheus']}")
    click.echo("values:  " + (", ".join(f"{k}={show_value(v)}" for k, v in s["values"].items())
                              or "none (the lab's defaults)"))
    click.echo(f"\n{'POD':<24}{'NODE':<12}{'IP':<16}PROCESS")
    for p in s["pods"]:
        click.echo(f"{p['name']:<24}{p['node']:<12}{p['ip'] or '-':<16}{p['process']}")


def _node_sources(lab_name: str) -> dict:
    """Every node's API getter, by node name."""
    st = Lab(lab_name).load()
    if not st["nodes"]:
        raise LabError(f"lab {lab_name} has no nodes (run `datapath lab up` first)")
    return {name: Client(rec["socket"], timeout=10).get
            for name, rec in sorted(st["nodes"].items())}


@lab.command("observe")
@name_opt
@observe_filter_options
def lab_observe(lab_name, follow, last, output, timeout, **kw):
    """Every node's flows merged by time, as `hubble observe` through Hubble Relay."""
    observe_flows(_node_sources(lab_name), filters_of(kw), output, follow, last, timeout,
                  node_column=True)


@lab.command("monitor")
@name_opt
@monitor_options("Only events from or to this endpoint id (on any node: ids are per node).")
def lab_monitor(lab_name, types, related_to, verbose, output, timeout):
    """Every node's datapath events as they happen, as `cilium monitor`, merged in the order
    they happened (the nodes share one clock), each line prefixed with its node."""
    monitor_records(_node_sources(lab_name), monitor_filters(types, related_to), output,
                    verbose, timeout,
                    on_ready=lambda: click.echo("Press Ctrl-C to quit", err=True))


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@name_opt
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(lab_name, target, command):
    """Run COMMAND in a node's or a pod's network namespace."""
    ns, sock = Lab(lab_name).resolve(target)
    env = {**os.environ, "DATAPATH_SOCKET": sock,
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    argv = netns.cmd(ns, *command)
    os.execvpe(argv[0], argv, env)
