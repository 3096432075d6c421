"""`datapath connectivity` (lab): the thin click group over runner.py."""
from __future__ import annotations

import json
import re

import click

from datapath.errors import LabError


@click.group()
def connectivity():
    """Check a lab's connectivity, as `cilium connectivity test`."""


@connectivity.command("test")
@click.option("--name", "lab_name", default="default", show_default=True, help="The lab.")
@click.option("--test", "pattern", default=None, metavar="REGEX",
              help="Run only the checks whose name matches REGEX.")
@click.option("--keep", is_flag=True, help="Leave the test's pods and services in the lab.")
@click.option("--deadline", type=click.FloatRange(0, min_open=True), default=10.0,
              show_default=True,
              help="Seconds a check may take to see what it expects.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def test(lab_name, pattern, keep, deadline, output):
    """Run the connectivity checks; exits 1 when any fails."""
    from ..lab.lab import Lab
    from .runner import ConnectivityTest
    if pattern:
        try:
            re.compile(pattern)
        except re.error as e:
            raise LabError(f"--test {pattern!r}: not a regular expression: {e}") from e
    text = output == "text"

    def show(r):
        c = r.check
        click.echo(f"[{r.status}] {c.name:<52} {c.src or '-'} -> {c.what}"
                   + (f" ({c.dst})" if c.dst and r.status != "SKIP" else "") + f": {r.detail}")
        for line in r.flows:
            click.echo(f"         flow {line}")

    results = ConnectivityTest(
        Lab(lab_name), pattern, keep, deadline,
        progress=(lambda m: click.echo(f"... {m}")) if text else None,
        on_result=show if text else None).run()
    counts = {s: sum(1 for r in results if r.status == s) for s in ("PASS", "FAIL", "SKIP")}
    if text:
        click.echo(f"\n{len(results)} checks: {counts['PASS']} passed, {counts['FAIL']} failed, "
                   f"{counts['SKIP']} skipped")
        failed = [r.check.name for r in results if r.status == "FAIL"]
        if failed:
            click.echo(f"FAILED: {', '.join(failed)}")
    else:
        click.echo(json.dumps([{"name": r.check.name, "status": r.status, "detail": r.detail,
                                "source": r.check.src, "destination": r.check.dst,
                                "target": r.check.what, "expect": r.check.expect,
                                "flows": r.flows} for r in results], indent=2))
    if counts["FAIL"]:
        raise SystemExit(1)


@connectivity.command("perf")
@click.option("--name", "lab_name", default="default", show_default=True, help="The lab.")
@click.option("--duration", type=float, default=3.0, show_default=True,
              help="Seconds each measurement runs.")
@click.option("--keep", is_flag=True, help="Leave the test's pods and services in the lab.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def perf(lab_name, duration, keep, output):
    """TCP throughput (iperf3) and request/response latency on the lab's main paths."""
    from ..lab.lab import Lab
    from .perf import ConnectivityPerf
    if not 0.5 <= duration <= 60:
        raise LabError(f"--duration {duration}: must be between 0.5 and 60 seconds")
    rows = ConnectivityPerf(Lab(lab_name), duration, keep,
                            progress=(lambda m: click.echo(f"... {m}"))
                            if output == "text" else None).run()
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    cells = [("PATH", "TARGET", "THROUGHPUT", "RR TPS", "RR LATENCY p50/p90/p99")]
    for r in rows:
        if r.get("skip"):
            cells.append((r["path"], r["target"], "-", "-", f"skipped: {r['skip']}"))
            continue
        rr = r["rr"]
        cells.append((r["path"], f"{r['target']} ({r['address']})", f"{r['gbps']:.2f} Gb/s",
                      f"{rr['tps']:,}",
                      f"{rr['p50_us']:.0f}/{rr['p90_us']:.0f}/{rr['p99_us']:.0f} us"))
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    for c in cells:
        click.echo("  ".join(c[i].ljust(widths[i]) if i < 2 else c[i].rjust(widths[i])
                             for i in range(5)).rstrip())
