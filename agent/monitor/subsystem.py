"""The monitor subsystem as the daemon holds it: the event reader, the flow ring, Hubble's
metrics and the /v1/flows and /v1/monitor routes.

Owns: turning each datapath event into a monitor record and a flow (resolved against what the
agent knows), keeping the last hubble.eventBufferCapacity of them, counting them, and serving
them. The daemon calls `start` once the datapath is loaded and `stop` when the agent stops.

API:
    MonitorSubsystem(cfg, metrics, view, events=None)    view: flows.AgentView (or a stub)
        .start(stop_event)   .stop()   .configure(cfg)   .handle(event)   .status()
        .routes()
    .status() also says the compiled-in monitor aggregation (bpf.monitorAggregation, and
    bpf.monitorInterval: the programs trace an active flow again after that many seconds)
Routes (plain request/response; a client follows by polling with after=<seq>):
    GET /v1/flows?[filters]&after=N&last=N  -> {"flows": [flow + "seq"], "seq", "lost",
                                                "count", "capacity", "node_name"}
    GET /v1/monitor?type=drop&related-to=ID&after=N&last=N -> {"events": [record + "seq"], ...}
  filters (repeatable; values of one filter are alternatives): pod, from-pod, to-pod
  (ns/name-prefix), namespace, ip (address or CIDR), port, protocol (tcp|udp|icmp), verdict,
  type (drop|trace|policy-verdict), since (5m or RFC3339).
"""
from __future__ import annotations

import logging
import threading
import time

from .flows import build_flow, event_record, metric_labels
from .reader import EventReader
from .ring import FlowFilter, FlowRing

log = logging.getLogger("datapath.monitor")


def _int(q: dict, key: str, default: int | None) -> int | None:
    vals = q.get(key)
    if not vals or vals[-1] == "":
        return default
    try:
        v = int(vals[-1])
    except ValueError:
        raise ValueError(f"{key} {vals[-1]!r}: expected a number") from None
    if v < 0:
        raise ValueError(f"{key} {v}: expected 0 or more")
    return v


class MonitorSubsystem:
    def __init__(self, cfg, metrics, view, events=None):
        from ..metrics import HubbleMetrics
        self.node_name = cfg.nodeName
        self.aggregation = (cfg.monitorAggregation, cfg.monitorInterval)
        self.pin_dir = cfg.pin_dir()
        self.view = view
        self._events = events
        self.ring = FlowRing(cfg.eventBufferCapacity)
        self.metrics = HubbleMetrics(metrics.registry, self.lost)
        self.reader = EventReader(self.pin_dir, self.handle, events)
        self._stop = threading.Event()
        self._boot_offset = time.time() - time.monotonic()

    def _module(self):
        if self._events is None:
            from datapath import events
            self._events = events
        return self._events

    def configure(self, cfg) -> None:
        """A reloaded config: hubble.eventBufferCapacity resizes the ring (newest kept)."""
        self.ring.resize(cfg.eventBufferCapacity)

    # ---- lifecycle ----
    def start(self, agent_stop: threading.Event | None = None) -> None:
        if agent_stop is not None:        # the agent's stop stops the reader too
            threading.Thread(target=lambda: (agent_stop.wait(), self._stop.set()),
                             name="monitor-stop", daemon=True).start()
        self.reader.start(self._stop)

    def stop(self) -> None:
        self._stop.set()
        self.reader.join()

    # ---- events ----
    def _wall(self, ktime_ns: int) -> float:
        try:
            return float(self._module().ktime_to_wall(ktime_ns))
        except Exception:       # no events module: CLOCK_MONOTONIC's offset taken at start
            return self._boot_offset + ktime_ns / 1e9

    def handle(self, ev) -> int:
        """One decoded event: record, flow, ring, metrics. Returns its sequence number."""
        rec = event_record(ev, self._wall(int(ev.ktime_ns)))
        flow = build_flow(rec, self.view, self.node_name)
        if rec["ifindex"]:      # named here: the CLI runs in another namespace
            rec["ifname"] = (flow.get("interface") or {}).get("name")
        seq = self.ring.add(flow, rec)
        self.metrics.flow(*metric_labels(rec), flow)
        return seq

    def lost(self) -> int:
        try:
            return int(self._module().read_stats(self.pin_dir)["lost"])
        except Exception:
            return 0

    # ---- API ----
    def _query(self, q: dict):
        flt = FlowFilter.from_params(q, time.time())
        return self.ring.query(flt, after=_int(q, "after", 0), last=_int(q, "last", None))

    def _meta(self, seq: int) -> dict:
        return {"seq": seq, "lost": self.lost(), "count": self.ring.count,
                "capacity": self.ring.capacity, "node_name": self.node_name}

    def routes(self) -> dict:
        def flows(p, _b):
            got, seq = self._query(p.get("query") or {})
            return {"flows": [{**f, "seq": s} for s, f, _ in got], **self._meta(seq)}

        def monitor(p, _b):
            got, seq = self._query(p.get("query") or {})
            return {"events": [{**r, "seq": s} for s, _, r in got], **self._meta(seq)}

        return {("GET", "/v1/flows"): flows, ("GET", "/v1/monitor"): monitor}

    def status(self) -> dict:
        return {"state": "Ok" if self.reader.running else "Disabled",
                "error": self.reader.error, "flows": self.ring.count,
                "capacity": self.ring.capacity, "seen": self.ring.seen, "lost": self.lost(),
                "monitorAggregation": self.aggregation[0],
                "monitorInterval": self.aggregation[1]}
