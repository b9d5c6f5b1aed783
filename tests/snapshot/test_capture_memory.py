"""The capture path's peak memory on a big synthetic window (tracemalloc, deterministic).

A capture is bounded to 2 x ``max_bytes`` over the steady state; the pieces that used to
break it were the steps held as four doubles each, the compressed body joined at the end,
and two decoded segments alive at once (``benchmarks/README.md``, "Capture memory").
"""

from __future__ import annotations

import gzip
import random
import tracemalloc
from typing import Any

import orjson

from flightdeck import FlightRecorder
from flightdeck.core import events as ev
from flightdeck.core.window import Frozen
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
    data = store.get_bytes(info.id, gzip=True)
    assert data is not None and len(data) == info.stored
    doc = orjson.loads(gzip.decompress(data))
    steps = sum(len(t["steps"]) for t in doc["tasks"])
    assert steps == SEGMENTS * PER_SEGMENT and info.size > 5 << 20
    assert frozen.segments == []  # build_into let go of each segment once decoded
    # Held at the end: the stored member. On the way: one decoded segment, the steps
    # packed (about 7 bytes each), one compression batch (1 MiB), one task's rows.
    # Four doubles a step alone would be 3.8 MB here; a joined body another info.stored.
    extra = peak - before
    assert after - before <= info.stored + (1 << 20)  # the stored member, free lists
    bound = info.stored + decoded + 10 * steps + (2 << 20)
    assert extra <= bound, (extra, bound, info.stored, decoded)
    assert extra < info.stored + 32 * steps
