"""Garbage-collection pauses: every collection of at least ``threshold`` is recorded.

``gc.callbacks`` calls us at the start and the stop of each collection, on whichever thread
collects; a collection holds the GIL throughout, so it stalls the event loop wherever it
runs. A collection shorter than the threshold costs two calls and no event.
"""

from __future__ import annotations

import gc
from time import perf_counter_ns
from typing import Any

from ..core import events as ev
from ..core.sink import Sink

#: Collections at least this long are recorded (CONTRACT §8: ``gc`` loop entries >= 1 ms).
GC_THRESHOLD_NS = 1_000_000


class GcMonitor:
    """Records GC pauses into a sink while installed. ``install``/``uninstall`` are idempotent."""

    def __init__(self, sink: Sink, threshold_ns: int = GC_THRESHOLD_NS) -> None:
        self.sink = sink
        self.threshold_ns = threshold_ns
        self.installed = False
        self.pauses = 0
        self._t0 = 0
        emit = sink.emit
        GC = ev.GC

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            # Never raise: an exception here would be printed by the collector on every
            # collection (and the app's own callbacks run after ours).
            try:
                if phase == "start":
                    self._t0 = perf_counter_ns()
                    return
                t0 = self._t0
                self._t0 = 0
                if not t0:
                    return
                t1 = perf_counter_ns()
                if t1 - t0 >= self.threshold_ns:
                    self.pauses += 1
                    emit((GC, t0, t1, int(info.get("generation", -1)), int(info["collected"])))
            except Exception:
                sink.errors += 1

        self._callback = on_gc

    def install(self) -> None:
        if not self.installed:
            gc.callbacks.append(self._callback)
            self.installed = True
            self.sink.coverage["gc"] = True

    def uninstall(self) -> None:
        if self.installed:
            self.installed = False
            # Remove by identity: another recorder's callback compares equal to nothing else.
            for i, cb in enumerate(gc.callbacks):
                if cb is self._callback:
                    del gc.callbacks[i]
                    break

    def counters(self) -> dict[str, int]:
        return {"pauses": self.pauses}
