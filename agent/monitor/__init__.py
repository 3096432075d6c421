"""Seeing the datapath: the agent's side of `cilium monitor` and `hubble observe`.

    reader.py     the thread that drains <pin_dir>/cilium_events (datapath.events decodes)
    dissect.py    the packet bytes an event carries -> headers, Cilium's summaries
    flows.py      events -> monitor records and Hubble flows (pods, identities, labels)
    ring.py       the last hubble.eventBufferCapacity flows, sequence numbers, filters
    format.py     compact / table / json flow lines, `cilium monitor` lines (the CLI prints them)
    subsystem.py  what the daemon wires: start/stop, metrics, /v1/flows and /v1/monitor
"""
from __future__ import annotations

from .flows import AgentView
from .subsystem import MonitorSubsystem

__all__ = ["AgentView", "MonitorSubsystem"]
