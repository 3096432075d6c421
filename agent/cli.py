"""The `datapath` command: the daemon, thin read commands over the agent API, cleanup, the lab.

Every read command takes -o json. The API socket comes from --socket or DATAPATH_SOCKET. An error
prints one line on stderr and exits non-zero.
"""
from __future__ import annotations

import json
import logging
import sys

import click

from datapath.errors import DatapathError

from . import api
from .monitor import observe as observe_mod


def _out(data, output: str, render) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        render(data)


output_opt = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                          help="Output format.")


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DatapathError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.option("--socket", "socket_path", envvar="DATAPATH_SOCKET", default=None,
              help="Agent API socket (default: $DATAPATH_SOCKET or /var/run/datapath/datapath.sock).")
@click.pass_context
def cli(ctx, socket_path):
    """datapath: an eBPF datapath for Kubernetes-style networking."""
    ctx.obj = {"socket": socket_path}


def _client(ctx) -> api.Client:
    return api.Client(ctx.obj["socket"])


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(),
              help="Agent config file (YAML, Cilium Helm value names).")
@click.option("--debug", is_flag=True, help="Debug logging.")
def agent(config_path, debug):
    """Run the agent daemon for this node (foreground)."""
    from .daemon import Agent
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Agent(config_path).run()


@cli.command()
@output_opt
@click.pass_context
def status(ctx, output):
    """Show the agent's status."""
    st = _client(ctx).get("/v1/status")

    def render(s):
        eps = s["endpoints"]
        ready = eps.get("ready", 0)
        other = ", ".join(f"{n} {k}" for k, n in sorted(eps.items()) if k != "ready")
        cfg = s["config"]
        rows = [
            ("Node", s["nodeName"]),
            ("KVStore", _kvstore_line(s["kvstore"])),
            ("Cluster nodes", f"{len(s.get('nodes', []))}: {', '.join(s.get('nodes', []))}"),
            ("Cluster health", _health_line(s.get("clusterHealth") or {})),
            ("Kubernetes", f"Ok (manifests: {s['kubernetes']['manifests'] or 'none'}, "
                           f"{s['kubernetes']['pods']} pods, {s['kubernetes']['namespaces']} "
                           "namespaces)"),
            ("KubeProxyReplacement", "True" if s["kubeProxyReplacement"] else "False"),
            ("Routing", f"Network: {s['routing']['mode'].capitalize()}"
                        + (f" [{s['routing']['tunnelProtocol']}]"
                           if s["routing"]["mode"] == "tunnel" else "") + "   Host: Legacy"),
            ("Masquerading", (f"BPF   [{', '.join(s['masquerading']['devices'])}]   "
                              f"{s['masquerading']['nativeRoutingCIDR']}")
                             if s["masquerading"]["enabled"] else "Disabled"),
            ("IPAM", f"IPv4: {s['ipam']['allocated']}/{s['ipam']['capacity']} allocated from "
                     f"{s['ipam']['podCIDR']}"),
            ("Endpoints", f"{ready} ready" + (f", {other}" if other else "")),
            ("Identities", f"{s['identities'].get('cluster_local', 0)} cluster-local, "
                           f"{s['identities'].get('reserved', 0)} reserved"),
            ("Policy", _policy_line(s.get("policy") or {})),
            ("Services", _services_line(s.get("services") or {})),
            ("Datapath", ", ".join(f"{k} (tag {v})" for k, v in s["datapath"]["programs"].items())
                         + f"; maps pinned in {s['datapath']['pinDir']}"),
            ("Config", "OK" if not cfg["lastError"] else f"Error: {cfg['lastError']}"),
            ("Prometheus", s["prometheus"] or "Disabled"),
        ]
        if s.get("hubble"):
            rows.append(("Hubble", _hubble_line(s["hubble"])))
        for k, v in rows:
            click.echo(f"{k + ':':<24}{v}")

    _out(st, output, render)


def _services_line(sv: dict) -> str:
    """'12 programmed, refused 1 (ns/big: cilium_lb4_backends_v3 full)'."""
    if not sv:
        return "unknown"
    line = f"{sv.get('programmed', 0)} programmed, refused {len(sv.get('refused', []))}"
    if sv.get("refused"):
        line += " (" + ", ".join(f"{r['service']}: {r['mapFull']} full"
                                 for r in sv["refused"][:5]) + \
            (", ..." if len(sv["refused"]) > 5 else "") + ")"
    return line


def _health_line(h: dict) -> str:
    """cilium status's "Cluster health: 2/3 reachable", the unreachable nodes named."""
    if not h.get("probedAt"):
        return "not probed yet" if h else "unknown"
    ok, bad = h["reachable"], h["unreachable"]     # other nodes; this one counts as reachable
    return f"{len(ok) + 1}/{len(ok) + len(bad) + 1} reachable" + \
        (f"   (unreachable: {', '.join(bad)})" if bad else "")


def _policy_line(p: dict) -> str:
    line = (f"{p.get('policies', 0)} policies in force (revision {p.get('revision', 0)}), "
            f"enforcement {p.get('mode', 'default')}, localhost {p.get('allowLocalhost')}")
    for e in p.get("errors", []):
        line += f"\n{'':<24}Error: {e}"
    return line


def _hubble_line(h: dict) -> str:
    state = h["state"] if not h.get("error") else f"{h['state']} ({h['error']})"
    line = (f"{state}   Current/Max Flows: {h['flows']}/{h['capacity']}   "
            f"Flows seen: {h['seen']}   Lost events: {h['lost']}")
    if h.get("monitorAggregation"):     # compiled into the programs (bpf.monitorAggregation)
        line += f"   Monitor aggregation: {h['monitorAggregation']}"
        if h["monitorAggregation"] in ("medium", "maximum"):
            line += f" (interval {h.get('monitorInterval', 5)}s)"
    return line


def _kvstore_line(kv) -> str:
    if not isinstance(kv, dict):
        return kv
    state = "Ok" if kv["connected"] else f"Failure   {kv['error']}"
    return f"{state}   etcd: {', '.join(kv['endpoints'])} (lease TTL {kv['leaseTTL']}s)"


@cli.group()
def endpoint():
    """Endpoints on this node."""


@endpoint.command("list")
@output_opt
@click.pass_context
def endpoint_list(ctx, output):
    """List endpoints (columns as `cilium endpoint list`)."""
    eps = _client(ctx).get("/v1/endpoint")

    def render(items):
        hdr = ("ENDPOINT", "POLICY (ingress)", "POLICY (egress)", "IDENTITY",
               "LABELS (source:key[=value])", "IPv6", "IPv4", "STATUS")
        fmt = "{:<10}{:<18}{:<17}{:<10}{:<58}{:<6}{:<16}{}"
        click.echo(fmt.format(*hdr))
        click.echo(fmt.format("", "ENFORCEMENT", "ENFORCEMENT", "", "", "", "", "").rstrip())
        for ep in items:
            labels = ep["labels"] or [""]
            enf = ep.get("policyEnforcement") or {}
            ing, eg = (("Enabled" if enf.get(d) else "Disabled") for d in ("ingress", "egress"))
            click.echo(fmt.format(ep["id"], ing, eg, ep["identity"], labels[0],
                                  "", ep["ip"], ep["state"]).rstrip())
            for lbl in labels[1:]:
                click.echo(fmt.format("", "", "", "", lbl, "", "", "").rstrip())

    _out(eps, output, render)


@endpoint.command("get")
@click.argument("endpoint_id")
@output_opt
@click.pass_context
def endpoint_get(ctx, endpoint_id, output):
    """Show one endpoint by id or container id."""
    ep = _client(ctx).get(f"/v1/endpoint/{endpoint_id}")
    _out(ep, output, lambda e: [click.echo(f"{k + ':':<16}{v}") for k, v in e.items()])


@cli.group()
def service():
    """Services (the load balancer's frontends and backends)."""


@service.command("list")
@output_opt
@click.pass_context
def service_list(ctx, output):
    """List services (columns as `cilium service list`)."""
    svcs = _client(ctx).get("/v1/service")

    def render(items):
        fmt = "{:<5}{:<24}{:<15}{}"
        click.echo(fmt.format("ID", "Frontend", "Service Type", "Backend"))
        for s in items:
            backends = [f"{i} => {b['address']} ({b['state']})"
                        for i, b in enumerate(s["backends"], start=1)] or [""]
            click.echo(fmt.format(s["id"], s["frontend"], s["type"], backends[0]).rstrip())
            for line in backends[1:]:
                click.echo(fmt.format("", "", "", line))
            if s.get("l2Leader"):
                click.echo(fmt.format("", "", "", f"(ARP answered by {s['l2Leader']})"))

    _out(svcs, output, render)


@cli.group()
def bpf():
    """BPF map contents, as `cilium bpf ...` shows them."""


@bpf.group("ct")
def bpf_ct():
    """Connection tracking tables."""


@bpf_ct.command("list")
@output_opt
@click.pass_context
def bpf_ct_list(ctx, output):
    """List conntrack entries (`cilium bpf ct list global`)."""
    entries = _client(ctx).get("/v1/bpf/ct")

    def render(items):
        for e in items:
            click.echo(f"{e['protocol']} {e['tuple']} flags={e['flags']} "
                       f"expires={e['expires_in']}s rev_nat={e['rev_nat_index']} "
                       f"backend={e['backend_id']} packets={e['packets']} bytes={e['bytes']}")

    _out(entries, output, render)


@bpf.group("nat")
def bpf_nat():
    """Masquerade (SNAT) mappings."""


@bpf_nat.command("list")
@output_opt
@click.pass_context
def bpf_nat_list(ctx, output):
    """List NAT mappings (`cilium bpf nat list`)."""
    entries = _client(ctx).get("/v1/bpf/nat")

    def render(items):
        for e in items:
            click.echo(f"{e['protocol']} {e['direction']} {e['tuple']} {e['xlate']} "
                       f"Created={e['created_ago']}sec ago Expires={e['expires_in']}sec")

    _out(entries, output, render)


@bpf.group("policy")
def bpf_policy():
    """Policy maps."""


@bpf_policy.command("get")
@click.argument("endpoint_id")
@output_opt
@click.pass_context
def bpf_policy_get(ctx, endpoint_id, output):
    """An endpoint's policy map entries (`cilium bpf policy get`)."""
    rows = _client(ctx).get(f"/v1/bpf/policy/{endpoint_id}")

    def render(items):
        width = max([len(lbl) for r in items for lbl in r["labels"]] + [27]) + 2
        fmt = "{:<8}{:<11}{:<" + str(width) + "}{:<16}{:<12}{:<10}{:<10}{}"
        click.echo(fmt.format("POLICY", "DIRECTION", "LABELS (source:key[=value])",
                              "PORT/PROTO", "PROXY PORT", "BYTES", "PACKETS", "PREFIX"))
        for r in items:
            labels = r["labels"] or [""]
            click.echo(fmt.format(r["policy"], r["direction"], labels[0], r["port"],
                                  r["proxyPort"], r["bytes"], r["packets"], r["prefix"]))
            for lbl in labels[1:]:
                click.echo(fmt.format("", "", lbl, "", "", "", "", "").rstrip())

    _out(rows, output, render)


@bpf.group("lb")
def bpf_lb():
    """Load balancer maps."""


@bpf_lb.command("list")
@output_opt
@click.pass_context
def bpf_lb_list(ctx, output):
    """List service slots (`cilium bpf lb list`)."""
    rows = _client(ctx).get("/v1/bpf/lb")

    def render(items):
        click.echo(f"{'SERVICE ADDRESS':<26}BACKEND ADDRESS (REVNAT_ID) (SLOT)")
        for r in items:
            click.echo(f"{r['service']:<26}{r['backend']} ({r['slot']})")

    _out(rows, output, render)


@cli.group()
def policy():
    """Network policies (NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy)."""


@policy.command("get")
@output_opt
@click.pass_context
def policy_get(ctx, output):
    """The rules in force (`cilium policy get`)."""
    got = _client(ctx).get("/v1/policy")

    def render(p):
        click.echo(json.dumps(p["policies"], indent=2, sort_keys=True))
        click.echo(f"Revision: {p['revision']}")
        for e in p["errors"]:
            click.echo(f"Error: {e}", err=True)

    _out(got, output, render)


@policy.command("selectors")
@output_opt
@click.pass_context
def policy_selectors(ctx, output):
    """Each selector in use and the identities it selects (`cilium policy selectors`)."""
    rows = _client(ctx).get("/v1/policy/selectors")

    def render(items):
        click.echo(f"{'SELECTOR':<70}{'USERS':<7}IDENTITIES")
        for r in items:
            ids = [str(i) for i in r["identities"]] or [""]
            click.echo(f"{r['selector']:<70}{r['users']:<7}{ids[0]}")
            for i in ids[1:]:
                click.echo(f"{'':<77}{i}")

    _out(rows, output, render)


@policy.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def policy_validate(files):
    """Check policy files as the agent would read them (`cilium policy validate`)."""
    from .policy.subsystem import validate_file
    bad = 0
    for f in files:
        try:
            n = validate_file(f)
            click.echo(f"{f}: {n} policies valid")
        except DatapathError as e:
            click.echo(f"Error: {e}", err=True)
            bad += 1
    if bad:
        sys.exit(1)


@cli.group()
def identity():
    """Security identities."""


@identity.command("list")
@output_opt
@click.pass_context
def identity_list(ctx, output):
    """List identities (reserved and allocated)."""
    ids = _client(ctx).get("/v1/identity")

    def render(items):
        click.echo(f"{'ID':<8}LABELS")
        for i in items:
            click.echo(f"{i['id']:<8}{i['labels'][0] if i['labels'] else ''}")
            for lbl in i["labels"][1:]:
                click.echo(f"{'':<8}{lbl}")

    _out(ids, output, render)


@cli.command()
@observe_mod.filter_options
@click.pass_context
def observe(ctx, follow, last, output, timeout, **kw):
    """Flows seen by this node's datapath, as `hubble observe`."""
    client = _client(ctx)
    observe_mod.observe({"": client.get}, observe_mod.filters_of(kw), output, follow, last,
                        timeout)


@cli.command()
@observe_mod.monitor_options("Only events from or to this endpoint id.")
@click.pass_context
def monitor(ctx, types, related_to, verbose, output, timeout):
    """Datapath events as they happen, as `cilium monitor` (Ctrl-C to quit)."""
    client = _client(ctx)
    filters = observe_mod.monitor_filters(types, related_to)
    # the banner once the agent has answered (said where "now" is)
    observe_mod.monitor(client.get, filters, output, verbose, timeout,
                        on_ready=lambda: click.echo("Press Ctrl-C to quit", err=True))


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path())
@click.option("--force", is_flag=True, help="Also when the agent still answers.")
def cleanup(config_path, force):
    """Remove everything the agent installed: our tc/XDP programs, pinned maps, state."""
    from .cleanup import cleanup as do_cleanup
    for line in do_cleanup(config_path, force=force):
        click.echo(line)


@cli.command()
@click.option("--port", default=80, show_default=True)
def whoami(port):
    """Serve the lab pods' HTTP answer (hostname, IPs, client address)."""
    from .whoami import serve
    serve(port)


@cli.group()
def runtime():
    """Pods on this host without a kubelet: netns + datapath-cni + the pod's command."""


@runtime.command("sync")
@click.option("--manifests", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--node", default=None, help="Node name (default: the agent's nodeName).")
@click.option("--state", "state_path", default="/var/run/datapath/runtime/pods.json",
              show_default=True)
@click.pass_context
def runtime_sync(ctx, manifests, node, state_path):
    """Create, repair or remove this node's pods to match the manifests (idempotent)."""
    from .runtime import sync
    from .api import socket_path
    for line in sync(manifests, socket_path(ctx.obj["socket"]), state_path, node):
        click.echo(line)


def _register_lab():
    from .connectivity.cli import connectivity
    from .lab.cli import lab
    cli.add_command(lab)
    cli.add_command(connectivity)


_register_lab()


def main() -> None:
    cli(prog_name="datapath")


if __name__ == "__main__":
    main()
