"""The reader: a thread that drains the datapath's event ring buffer (<pin_dir>/cilium_events,
bpf/lib/events.h) and hands every decoded event on.

It opens the pinned map once the datapath is loaded; a missing map (events compiled out, or an
older datapath) is logged once, not fatal, and looked for again every RETRY_SECONDS. It stops
when its stop event is set (within one poll timeout) and closes the ring.

API:
    EventReader(pin_dir, on_event, events=None)   events: the module with EventRing / decode
        .start(stop_event) -> thread              (datapath.events unless given; tests pass one)
        .join(timeout)   .running   .error (the last open or read error, or None)
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

log = logging.getLogger("datapath.monitor")

EVENTS_MAP = "cilium_events"
POLL_MS = 200           # the longest a stop waits for the reader
RETRY_SECONDS = 5.0     # how often a missing ring is looked for again


class EventReader:
    def __init__(self, pin_dir: str, on_event: Callable[[object], None], events=None):
        self.path = os.path.join(pin_dir, EVENTS_MAP)
        self.on_event = on_event
        self._events = events
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.running = False
        self._warned = False

    def _module(self):
        if self._events is None:
            from datapath import events     # evb's module; absent -> events are not read
            self._events = events
        return self._events

    def start(self, stop: threading.Event) -> threading.Thread:
        self._thread = threading.Thread(target=self._run, args=(stop,), name="monitor-reader",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float = 5) -> None:
        if self._thread:
            self._thread.join(timeout)

    def _open(self):
        try:
            ring = self._module().EventRing.open_pinned(self.path)
        except Exception as e:          # missing pin, no events module, no permission
            self.error = f"{self.path}: {e}"
            if not self._warned:
                log.warning("datapath events not available, flows will not be recorded "
                            "(retrying every %.0fs): %s", RETRY_SECONDS, self.error)
                self._warned = True
            return None
        if self._warned:
            log.info("datapath events available again: %s", self.path)
        self._warned, self.error = False, None
        log.info("reading datapath events from %s", self.path)
        return ring

    def _run(self, stop: threading.Event) -> None:
        ring = None
        try:
            while not stop.is_set():
                if ring is None:
                    ring = self._open()
                    if ring is None:
                        stop.wait(RETRY_SECONDS)
                        continue
                    self.running = True
                try:
                    records = ring.poll(POLL_MS)
                except Exception as e:      # a reader that fails: say so, reopen later
                    log.warning("reading %s failed: %s", self.path, e)
                    self.error, self.running = str(e), False
                    ring.close()
                    ring = None
                    continue
                decode = self._module().decode
                for raw in records:
                    try:
                        ev = decode(raw)
                    except Exception as e:      # one bad record must not stop the reader
                        log.warning("undecodable event (%d bytes): %s", len(raw), e)
                        continue
                    if ev is None:
                        continue
                    try:
                        self.on_event(ev)
                    except Exception:
                        log.exception("handling an event failed")
        finally:
            self.running = False
            if ring is not None:
                ring.close()
