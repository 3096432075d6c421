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
@click.option("--deadline", type=float, default=10.0, show_default=True,
              help="Seconds a check may take to see what it expects.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def test(lab_name, pattern, keep, deadline, output):
    """Run the connectivity checks; exits 1 when any fails."""
    from ..lab import Lab
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
