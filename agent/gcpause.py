"""The cyclic garbage collector paused around work that builds many long-lived objects at once
(a manifest load, a full desired-state build, a full reconcile's plan): each collection would
walk every object built so far, and at 10,000 services the gen-2 passes cost more than the work.

API:
    paused(freeze_over=0)   a context manager: collection paused inside (nests; restores what
                            was). With freeze_over, when the work left more than that many new
                            tracked objects (long-lived: a loaded manifest set, a desired
                            state), they go to the permanent generation (gc.freeze, as the
                            agent does after its start), so the collections that follow do not
                            walk them all again. Frozen objects are still freed by reference
                            counting; only garbage cycles among them would stay (they hold none).
"""
from __future__ import annotations

import gc


class paused:
    def __init__(self, freeze_over: int = 0):
        self.freeze_over = freeze_over

    def __enter__(self) -> None:
        self.was = gc.isenabled()
        self.count = gc.get_count()[0]
        gc.disable()

    def __exit__(self, *exc) -> None:
        if self.freeze_over and gc.get_count()[0] - self.count > self.freeze_over:
            gc.freeze()
        if self.was:
            gc.enable()
