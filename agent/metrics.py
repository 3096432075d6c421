"""Prometheus metrics with Cilium's names and labels.

Datapath counters are read from cilium_metrics at scrape time (summed over CPUs); agent-side
counters live in this registry. Served on prometheus.port by prometheus_client's HTTP server.

    cilium_forward_count_total / cilium_forward_bytes_total {direction}
    cilium_drop_count_total / cilium_drop_bytes_total {reason, direction}
    cilium_endpoint_state {endpoint_state}          cilium_endpoint
    cilium_endpoint_regenerations_total {outcome}
    cilium_bpf_map_ops_total {map_name, operation, outcome}
    cilium_errors_warnings_total {level, subsystem}
    cilium_identity {type}
    cilium_datapath_conntrack_gc_runs_total / cilium_datapath_conntrack_gc_entries
        {family, protocol, status}
    cilium_services_events_total {action}
    cilium_bpf_map_pressure {map_name}     (entries / max entries, read at scrape time)
    cilium_policy                          (policies in force, read at scrape time)
    cilium_policy_change_total {outcome}
    cilium_policy_endpoint_enforcement_status {enforcement}   (none|ingress|egress|both)
    cilium_policy_implementation_delay {source}    (histogram: a policy change read -> in maps)
    cilium_policy_regeneration_time_stats_seconds {scope, status}   (histogram)
    cilium_reconciler_incremental_total / _errors_total / _duration_seconds {module_id}
    cilium_reconciler_full_total / _errors_total / _duration_seconds {module_id}
    cilium_reconciler_full_out_of_sync_total {module_id}   (entries a full reconciliation
        found out of sync and repaired; module_id is the map, or tc / xdp / route)
    hubble_flows_processed_total {type, subtype, verdict}  hubble_drop_total {reason, protocol}
    hubble_tcp_flags_total {flag, family}       (HubbleMetrics: counted as flows are built)
    hubble_policy_verdicts_total {direction, match, action}   (ingress|egress, l3-l4|all|none|..,
                                                forwarded|dropped)
    hubble_lost_events_total {source}           (dp_event_stats' lost slot, read at scrape time)
    cilium_agent_api_process_time_seconds {path, method, return_code}   (histogram)
    cilium_process_*                       (prometheus_client's process collector)
    cilium_unreachable_nodes               (other nodes whose last health probe failed)
"""
from __future__ import annotations

import logging

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, disable_created_metrics)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from datapath import abi
from datapath.maps import metrics_totals

disable_created_metrics()          # Cilium exports no *_created series

MODULE = "agent.datapath"          # the module_id of the datapath reconciler's metrics
ENDPOINT_STATES = ("waiting-for-identity", "not-ready", "waiting-to-regenerate", "regenerating",
                   "restoring", "ready", "disconnecting", "disconnected", "invalid")


class AgentMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.regenerations = Counter("cilium_endpoint_regenerations", "Count of all endpoint "
                                     "regenerations that have completed, tagged by outcome",
                                     ["outcome"], registry=self.registry)
        self.map_ops = Counter("cilium_bpf_map_ops", "Total operations on map, tagged by map "
                               "name", ["map_name", "operation", "outcome"],
                               registry=self.registry)
        self.errors_warnings = Counter("cilium_errors_warnings", "Number of total errors in "
                                       "cilium-agent instances", ["level", "subsystem"],
                                       registry=self.registry)
        self.services_events = Counter("cilium_services_events", "Number of services events "
                                       "labeled by action type", ["action"],
                                       registry=self.registry)
        for action in ("add", "update", "delete"):
            self.services_events.labels(action)
        # Cilium's: one a failed round with the kvstore (here: the cluster sync's), by error
        self.kvstore_quorum_errors = Counter("cilium_kvstore_quorum_errors", "Number of quorum "
                                             "errors", ["error"], registry=self.registry)
        self.ct_gc_runs = Counter("cilium_datapath_conntrack_gc_runs", "Number of times that the "
                                  "conntrack garbage collector process was run",
                                  ["family", "protocol", "status"], registry=self.registry)
        self.ct_gc_entries = Gauge("cilium_datapath_conntrack_gc_entries", "The number of alive "
                                   "and deleted conntrack entries at the end of a garbage "
                                   "collector run", ["family", "protocol", "status"],
                                   registry=self.registry)
        self.nat_gc_entries = Gauge("cilium_datapath_nat_gc_entries", "The number of alive and "
                                    "deleted nat entries at the end of a garbage collector run "
                                    "labeled by datapath family", ["family", "status"],
                                    registry=self.registry)
        for outcome in ("success", "fail"):
            self.regenerations.labels(outcome)
        self.policy_change = Counter("cilium_policy_change", "Number of policy changes by "
                                     "outcome", ["outcome"], registry=self.registry)
        for outcome in ("success", "failure"):
            self.policy_change.labels(outcome)
        self.policy_implementation_delay = Histogram(
            "cilium_policy_implementation_delay", "Time between receiving a policy change and "
            "it being fully deployed into the datapath", ["source"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.policy_regeneration = Histogram(
            "cilium_policy_regeneration_time_stats_seconds", "Policy regeneration time stats "
            "labeled by the scope", ["scope", "status"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        r = self.registry
        self.rec_count = {k: Counter(f"cilium_reconciler_{k}", f"Number of {k} reconciliations "
                                     "performed", ["module_id"], registry=r)
                          for k in ("incremental", "full")}
        self.rec_errors = {k: Counter(f"cilium_reconciler_{k}_errors", "Total number of errors "
                                      f"encountered during {k} reconciliation", ["module_id"],
                                      registry=r) for k in ("incremental", "full")}
        self.rec_seconds = {k: Histogram(
            f"cilium_reconciler_{k}_duration_seconds", f"Histogram of per-operation duration "
            f"during {k} reconciliation", ["module_id"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
            for k in ("incremental", "full")}
        self.out_of_sync = Counter("cilium_reconciler_full_out_of_sync", "Number of entries a "
                                   "full reconciliation found out of sync and repaired",
                                   ["module_id"], registry=r)
        self.api_time = Histogram("cilium_agent_api_process_time_seconds", "Duration of "
                                  "processed API calls labeled by path, method and return code.",
                                  ["path", "method", "return_code"], registry=r,
                                  buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25, 0.5, 1, 2.5, 5))
        ProcessCollector(namespace="cilium", registry=r)
        self._agent = None

    def reconciled(self, full: bool, result) -> None:
        """One sync of the datapath (agent/reconciler.py Result)."""
        k = "full" if full else "incremental"
        self.rec_count[k].labels(MODULE).inc()
        self.rec_seconds[k].labels(MODULE).observe(result.seconds)
        if result.failed:
            self.rec_errors[k].labels(MODULE).inc(len(result.failed))
        if full:
            for target, n in result.by_target().items():
                self.out_of_sync.labels(target).inc(n)

    def bind(self, agent) -> None:
        """Attach the running agent whose maps and endpoints the collector reads."""
        self._agent = agent
        self.registry.register(_ScrapeCollector(agent))

    def map_op(self, map_name: str, operation: str, outcome: str, n: int = 1) -> None:
        """The maps' op hook; n: the elements one batch call wrote (agent/reconcile.py)."""
        self.map_ops.labels(map_name, operation, outcome).inc(n)

    def api_call(self, method: str, path: str, status: int, seconds: float) -> None:
        """The API server's observe hook (agent/api.py serve)."""
        self.api_time.labels(path, method, str(status)).observe(seconds)

    def log_handler(self) -> logging.Handler:
        return _ErrorsWarningsHandler(self.errors_warnings)


class _ErrorsWarningsHandler(logging.Handler):
    """Counts every warning and error log record by level and subsystem (logger name tail)."""

    def __init__(self, counter):
        super().__init__(level=logging.WARNING)
        self.counter = counter

    def emit(self, record):
        level = "error" if record.levelno >= logging.ERROR else "warning"
        self.counter.labels(level, record.name.rsplit(".", 1)[-1]).inc()


class _ScrapeCollector:
    def __init__(self, agent):
        self.agent = agent

    def describe(self):
        return []

    def collect(self):
        fwd_c = CounterMetricFamily("cilium_forward_count", "Total forwarded packets, tagged by "
                                    "ingress/egress direction", labels=["direction"])
        fwd_b = CounterMetricFamily("cilium_forward_bytes", "Total forwarded bytes, tagged by "
                                    "ingress/egress direction", labels=["direction"])
        drop_c = CounterMetricFamily("cilium_drop_count", "Total dropped packets, tagged by "
                                     "drop reason and ingress/egress direction",
                                     labels=["reason", "direction"])
        drop_b = CounterMetricFamily("cilium_drop_bytes", "Total dropped bytes, tagged by drop "
                                     "reason and ingress/egress direction",
                                     labels=["reason", "direction"])
        fwd: dict[str, list[int]] = {}
        drops: dict[tuple[str, str], list[int]] = {}
        for (reason, direction), (pkts, nbytes) in metrics_totals(
                self.agent.dp.maps["cilium_metrics"]).items():
            d = abi.DIRECTION_NAMES.get(direction, "UNKNOWN")
            if abi.is_drop(reason):
                acc = drops.setdefault((abi.reason_string(reason), d), [0, 0])
            else:
                acc = fwd.setdefault(d, [0, 0])
            acc[0] += pkts
            acc[1] += nbytes
        for d, (p, b) in sorted(fwd.items()):
            fwd_c.add_metric([d], p)
            fwd_b.add_metric([d], b)
        for (r, d), (p, b) in sorted(drops.items()):
            drop_c.add_metric([r, d], p)
            drop_b.add_metric([r, d], b)
        yield from (fwd_c, fwd_b, drop_c, drop_b)

        states = GaugeMetricFamily("cilium_endpoint_state", "Count of all endpoints, tagged by "
                                   "different endpoint states", labels=["endpoint_state"])
        counts = self.agent.endpoint_state_counts()
        for s in ENDPOINT_STATES:
            states.add_metric([s], counts.get(s, 0))
        yield states
        yield GaugeMetricFamily("cilium_endpoint", "Number of endpoints managed by this agent",
                                value=sum(counts.values()))
        pressure = GaugeMetricFamily("cilium_bpf_map_pressure", "Fill percentage of map, tagged "
                                     "by map name", labels=["map_name"])
        for name, fill in sorted(self.agent.map_pressure().items()):
            pressure.add_metric([name], fill)
        yield pressure
        ident = GaugeMetricFamily("cilium_identity", "Number of identities currently allocated",
                                  labels=["type"])
        for t, n in sorted(self.agent.identity_counts().items()):
            ident.add_metric([t], n)
        yield ident
        yield GaugeMetricFamily("cilium_unreachable_nodes", "Number of nodes that cannot be "
                                "reached", value=self.agent.health.unreachable())
        yield GaugeMetricFamily("cilium_policy", "Number of policies currently loaded",
                                value=self.agent.policy.count())
        enf = GaugeMetricFamily("cilium_policy_endpoint_enforcement_status", "Number of "
                                "endpoints labeled by policy enforcement status",
                                labels=["enforcement"])
        for t, n in sorted(self.agent.policy.enforcement_counts().items()):
            enf.add_metric([t], n)
        yield enf


class HubbleMetrics:
    """Hubble's flow metrics on the agent's registry (agent/monitor counts every flow it builds:
    drops, trace points and policy verdicts, a trace's subtype its observation point, e.g.
    type="Trace", subtype="to-endpoint", verdict="FORWARDED"); `lost` returns the datapath's
    lost-event count, read at scrape time."""

    def __init__(self, registry, lost=None):
        self.flows = Counter("hubble_flows_processed", "Total number of flows processed",
                             ["type", "subtype", "verdict"], registry=registry)
        self.drops = Counter("hubble_drop", "Number of drops", ["reason", "protocol"],
                             registry=registry)
        self.tcp_flags = Counter("hubble_tcp_flags", "TCP flag occurrences", ["flag", "family"],
                                 registry=registry)
        self.policy_verdicts = Counter("hubble_policy_verdicts",
                                       "Number of policy verdicts: a new flow allowed, a packet "
                                       "denied", ["direction", "match", "action"],
                                       registry=registry)
        if lost is not None:
            registry.register(_LostEventsCollector(lost))

    def flow(self, type_name: str, subtype: str, flow: dict) -> None:
        verdict = flow.get("verdict", "VERDICT_UNKNOWN")
        self.flows.labels(type_name, subtype, verdict).inc()
        if type_name == "PolicyVerdict":
            # Hubble's policy handler (which leaves out the host: it may reach any local
            # endpoint); the packet is counted in drops and flags by its drop or trace event
            # (Hubble counts a denied packet's verdict as a second drop)
            if (flow.get("source") or {}).get("identity") == abi.IDENTITY_HOST:
                return
            match = abi.POLICY_MATCH_NAMES.get(int(flow.get("policy_match_type", 0)),
                                               "unknown").lower()
            self.policy_verdicts.labels(flow.get("traffic_direction", "").lower(), match,
                                        verdict.lower()).inc()
            return
        l4 = flow.get("l4") or {}
        protocol = next(iter(l4), "")
        if verdict == "DROPPED":
            self.drops.labels(flow.get("drop_reason_desc", "DROP_REASON_UNKNOWN"), protocol).inc()
        if verdict not in ("FORWARDED", "REDIRECTED"):
            return              # Hubble's tcp handler counts the flags of forwarded packets
        flags = (l4.get("TCP") or {}).get("flags") or {}
        family = (flow.get("IP") or {}).get("ipVersion", "")
        # Hubble's tcp handler: SYN-ACK counted as one flag, then FIN, RST (and SYN alone)
        if flags.get("SYN"):
            self.tcp_flags.labels("SYN-ACK" if flags.get("ACK") else "SYN", family).inc()
        for f in ("FIN", "RST"):
            if flags.get(f):
                self.tcp_flags.labels(f, family).inc()


class _LostEventsCollector:
    def __init__(self, lost):
        self.lost = lost

    def describe(self):
        return []

    def collect(self):
        c = CounterMetricFamily("hubble_lost_events", "Number of lost events",
                                labels=["source"])
        c.add_metric(["PERF_EVENT_RING_BUFFER"], self.lost())
        yield c
