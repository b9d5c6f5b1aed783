"""The native gc.callbacks entry: what it records, and that it never raises into a collection."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from flightdeck.core import events as ev
from flightdeck.core.cores import CORE
from flightdeck.instrument.gc import GcMonitor

native = pytest.importorskip("flightdeck.core._native", reason="native core not built")


class Sink:
    """A sink that keeps what it is given; ``fail`` makes emit raise."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.errors = 0
        self.fail = fail
        self.coverage: dict[str, bool] = {}

    def emit(self, event: tuple[Any, ...]) -> None:
        if self.fail:
            raise RuntimeError("sink full")
        self.events.append(event)


def test_a_collection_of_at_least_the_threshold_is_one_gc_event_with_its_info() -> None:
    sink = Sink()
    watch = native.GcWatch(sink, ev.GC, 0)
    watch("start", {"generation": 2})
    watch("stop", {"generation": 2, "collected": 7, "uncollectable": 0})
    assert watch.pauses == 1 and sink.errors == 0
    [(kind, t0, t1, generation, collected)] = sink.events
    assert (kind, generation, collected) == (ev.GC, 2, 7)
    assert 0 < t0 <= t1


def test_a_short_collection_and_a_stop_without_a_start_record_nothing() -> None:
    sink = Sink()
    watch = native.GcWatch(sink, ev.GC, 10**15)
    watch("start", {"generation": 0})
    watch("stop", {"generation": 0, "collected": 1})
    assert sink.events == [] and watch.pauses == 0
    eager = native.GcWatch(sink, ev.GC, 0)
    eager("stop", {"generation": 0, "collected": 1})  # installed mid-collection
    assert sink.events == []


def test_a_failing_sink_or_odd_arguments_are_counted_never_raised() -> None:
    sink = Sink(fail=True)
    watch = native.GcWatch(sink, ev.GC, 0)
    watch("start", {})
    watch("stop", {"collected": 3})
    assert sink.errors == 1 and watch.pauses == 1
    watch("start", {})
    watch("stop", {"generation": "two", "collected": 3})
    assert sink.errors == 2
    assert watch() is None and watch(1, 2) is None and watch("stop", None) is None


@pytest.mark.skipif(
    CORE != "native", reason="the pure core (FLIGHTDECK_NO_EXTENSIONS) watches in Python"
)
def test_the_monitor_uses_it_on_the_native_core_and_records_a_real_collection() -> None:
    sink = Sink()
    monitor = GcMonitor(sink, threshold_ns=0)  # type: ignore[arg-type]
    assert isinstance(monitor._callback, native.GcWatch)
    monitor.install()
    try:
        gc.collect(1)
    finally:
        monitor.uninstall()
    assert monitor._callback not in gc.callbacks
    assert monitor.pauses >= 1
    assert any(e[0] == ev.GC and e[3] == 1 for e in sink.events), sink.events
