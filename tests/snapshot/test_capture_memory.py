"""The capture path's peak memory (tracemalloc on a big synthetic window; RSS on a server).

A capture writes the window's own records (``container.py``): its peak is the stored form
plus one segment in flight, never a record per task, step or request.
"""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

from flightdeck import FlightRecorder
from flightdeck.core import events as ev
from flightdeck.core.window import Frozen
from flightdeck.snapshot.container import is_container, read_document
from flightdeck.snapshot.store import SnapshotStore

TASKS = 100
SEGMENTS = 12
PER_SEGMENT = 10_000
BASE = 10**13
RAW = 0x7F3A_0000_0000


class _Segment:
    """A sealed segment that decodes to fresh tuples each time, holding nothing itself."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = PER_SEGMENT + (TASKS if index == 0 else 0)

    def events(self) -> list[tuple[Any, ...]]:
        rng = random.Random(self.index)
        out: list[tuple[Any, ...]] = []
        t = BASE + self.index * PER_SEGMENT * 12_000
        if self.index == 0:
            out += [
                (ev.TASK_CREATE, t, RAW + 16 * k, f"worker-{k}", "work", None, None, None)
                for k in range(TASKS)
            ]
        for i in range(PER_SEGMENT):
            t0 = t + rng.randrange(1_000, 20_000)
            t1 = t0 + rng.randrange(2_000, 60_000)
            out.append((ev.TASK_STEP, t0, t1, RAW + 16 * (i % TASKS), t0 - rng.randrange(9_000)))
            t = t1
        return out


def test_capture_peak_stays_near_the_stored_size() -> None:
    frozen = Frozen([_Segment(i) for i in range(SEGMENTS)], [], {}, {}, 0, BASE + 10**12)
    store = SnapshotStore()
    rec = FlightRecorder(loop_blocked=None)
    tracemalloc.start()
    try:
        one_segment = _Segment(1).events()
        decoded = tracemalloc.get_traced_memory()[0]
        del one_segment
        decoded -= tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        info = rec.build_into(store, frozen, kind="test")
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data = store.get_stored(info.id)
    assert data is not None and len(data) == info.stored and is_container(data)
    doc = read_document(data)
    steps = sum(len(t["steps"]) for t in doc["tasks"])
    assert steps == SEGMENTS * PER_SEGMENT
    assert frozen.segments == []  # build_into let go of each segment once written
    # Held at the end: the stored form. On the way: one decoded segment, its JSON and the
    # JSON compressed. Nothing is built per task or per step on the capture path.
    extra = peak - before
    assert after - before <= info.stored + (1 << 20)  # the stored form, free lists
    bound = info.stored + 2 * decoded + (2 << 20)
    assert extra <= bound, (extra, bound, info.stored, decoded)
