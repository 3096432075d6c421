"""The lab's Prometheus (`datapath lab up --prometheus`): a real Prometheus server (Debian's
`prometheus`) in a lab node's namespace, scraping every node's agent, with recording rules that
give the seed notes' four queries data.

Owns: the server's config, rules and data (all under the lab's directory), its process, and the
recording rules. agent/lab/lab.py starts it on `up --prometheus` (and rewrites its targets on later
ups: a SIGHUP reloads them) and stops it on `down`.

The seed notes watch four series. Two are served under Cilium's names as they are
(cilium_bpf_map_ops_total, and cilium_policy_regeneration_time_stats_seconds, a histogram whose
bare name a recording rule fills with the mean); the other two are not Cilium's current names,
so rules record them from Cilium's: cilium_datapath_packets_total (forwarded plus dropped
packets, from cilium_forward_count_total and cilium_drop_count_total) and
cilium_endpoint_state_count (cilium_endpoint_state).

API:
    config(targets, rules_path) -> dict      the prometheus.yml ({node: "ip:port"} targets)
    RULES                                    the recording rules file, as a dict
    start(lab_dir, ns, ip, targets, have) -> rec    started (or reloaded) and ready
    stop(rec)
    query(ns, url, expr) -> list             the HTTP API's instant query result
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
from pathlib import Path

import yaml

from datapath import netns
from datapath.errors import LabError

from ..runtime import _alive, _kill, _pid, proc_ref, wait_http_ok

PORT = 9090
JOB = "datapath-agent"
SCRAPE_INTERVAL = "5s"      # a lab: series move within seconds of traffic

# name -> PromQL: the seed's queries, recorded where Cilium's names differ
SEED_RULES = {
    "cilium_datapath_packets_total":
        'sum by (instance, node, direction) '
        '({__name__=~"cilium_forward_count_total|cilium_drop_count_total"})',
    "cilium_endpoint_state_count": "cilium_endpoint_state",
    "cilium_policy_regeneration_time_stats_seconds":
        "cilium_policy_regeneration_time_stats_seconds_sum"
        " / cilium_policy_regeneration_time_stats_seconds_count",
}
RULES = {"groups": [{"name": "datapath-seed-queries", "interval": SCRAPE_INTERVAL,
                     "rules": [{"record": k, "expr": v} for k, v in SEED_RULES.items()]}]}


def config(targets: dict[str, str], rules_path: str) -> dict:
    """prometheus.yml: one job scraping every node's agent, labelled with the node's name."""
    return {"global": {"scrape_interval": SCRAPE_INTERVAL,
                       "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [rules_path],
            "scrape_configs": [{"job_name": JOB, "static_configs": [
                {"targets": [addr], "labels": {"node": node}}
                for node, addr in sorted(targets.items())]}]}


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def _tools() -> None:
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            raise LabError(f"{tool} not found: install Debian's `prometheus` package "
                           "(scripts/setup.sh does)")


def start(lab_dir: Path, ns: str, ip: str, targets: dict[str, str],
          have: dict | None) -> dict:
    """Write the config and rules (checked by promtool before they replace the last good
    ones); start the server in `ns` (listening on ip:PORT) unless it runs, else reload it
    (SIGHUP) when its config changed. Returns its record once ready."""
    _tools()
    pdir = lab_dir / "prometheus"
    pdir.mkdir(parents=True, exist_ok=True)
    cfg_path, rules_path = pdir / "prometheus.yml", pdir / "rules.yml"
    _write(rules_path, RULES)
    new = pdir / ".prometheus.yml.new"
    new.write_text(yaml.safe_dump(config(targets, str(rules_path)), sort_keys=False))
    check = subprocess.run(["promtool", "check", "config", str(new)], capture_output=True,
                           text=True)
    if check.returncode:
        new.unlink()
        raise LabError(f"prometheus config for {lab_dir.name}: "
                       f"{(check.stdout or check.stderr).strip().splitlines()[-1]}")
    changed = not cfg_path.exists() or cfg_path.read_text() != new.read_text()
    os.replace(new, cfg_path)
    rec = dict(have or {})
    rec.update({"netns": ns, "url": f"http://{ip}:{PORT}", "dir": str(pdir),
                "config": str(cfg_path), "log": str(pdir / "prometheus.log")})
    started = not _alive(rec.get("pid"))
    if not started:
        if changed:
            os.kill(_pid(rec["pid"]), signal.SIGHUP)
    else:
        with open(rec["log"], "ab") as log:
            p = subprocess.Popen(netns.cmd(
                ns, "prometheus", f"--config.file={cfg_path}",
                f"--storage.tsdb.path={pdir / 'data'}", f"--web.listen-address={ip}:{PORT}",
                "--storage.tsdb.retention.time=1d", "--log.level=warn"),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        rec["pid"] = proc_ref(p.pid)
    if wait_http_ok(ns, f"{rec['url']}/-/ready", rec["pid"]):
        return rec
    if started:                 # only the one started here: a running server stays
        _kill(rec["pid"])
    raise LabError(f"prometheus in {ns} did not become ready; see {rec['log']}")


def stop(rec: dict | None) -> None:
    if rec:
        _kill(rec.get("pid"))


def query(ns: str, url: str, expr: str) -> list:
    """An instant query through the HTTP API, run inside the lab (the server listens there)."""
    q = urllib.parse.urlencode({"query": expr})
    out = netns.run(ns, "curl", "-sf", "-m", "5", f"{url}/api/v1/query?{q}", check=False)
    if out.returncode:
        raise LabError(f"prometheus at {url}: query {expr!r} failed ({out.returncode})")
    try:
        doc = json.loads(out.stdout)
    except ValueError as e:
        raise LabError(f"prometheus at {url}: query {expr!r}: not JSON ({e})") from e
    if doc.get("status") != "success":
        raise LabError(f"prometheus at {url}: {expr!r}: {doc.get('error')}")
    return doc["data"]["result"]
