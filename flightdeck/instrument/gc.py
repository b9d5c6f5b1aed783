"""Garbage-collection pauses: every collection of at least ``threshold`` is recorded.

``gc.callbacks`` calls us at the start and the stop of each collection, on whichever thread
collects; a collection holds the GIL throughout, so it stalls the event loop wherever it
runs. A collection shorter than the threshold costs two calls and no event: C calls on the
native core (``core._native.GcWatch``, no Python frame), Python ones on the pure core.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from ..core import events as ev
from ..core.cores import native_module
from ..core.sink import Sink

#: Collections at least this long are recorded (CONTRACT §8: ``gc`` loop entries >= 1 ms).
GC_THRESHOLD_NS = 1_000_000


class GcMonitor:
    """Records GC pauses into a sink while installed. ``install``/``uninstall`` are idempotent."""

    def __init__(self, sink: Sink, threshold_ns: int | None = None) -> None:
        self.sink = sink
        if threshold_ns is None:
            threshold_ns = GC_THRESHOLD_NS  # read here, so that a benchmark can scale it
        self.threshold_ns = threshold_ns
        self.installed = False
        self._pauses = 0
        self._t0 = 0
        native = native_module()
        #: The C callback on the native core (it counts its own pauses), else None.
        self._native: Any = None
        if native is not None:
            self._native = native.GcWatch(sink, ev.GC, threshold_ns)
            self._callback: Callable[[str, dict[str, Any]], None] = self._native
            return
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
                    self._pauses += 1
                    emit((GC, t0, t1, int(info.get("generation", -1)), int(info["collected"])))
            except Exception:
                sink.errors += 1

        self._callback = on_gc

    @property
    def pauses(self) -> int:
        """Collections recorded (those of at least the threshold)."""
        return int(self._native.pauses) if self._native is not None else self._pauses

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
