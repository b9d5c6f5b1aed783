"""Recorder core benchmark: hot-path cost, memory per event, snapshot cost.

1. Recording one event through ``rec.emit`` (as the instrumentation does) against a bare
   ``deque.append((perf_counter_ns(), a, b))``, interleaved in the same run; medians.
2. Memory per event in sealed segments, with tracemalloc, for a window filled to
   ``max_bytes`` with realistic request events; total window memory against ``max_bytes``.
3. Loop-thread time of ``freeze()`` on a full default window (16 MiB) with a worst-case
   unsealed tail and pending tasks, and off-loop ``build()`` + ``dumps()`` throughput.

Run: ``.venv/bin/python benchmarks/bench_recorder.py [--quick]`` (also ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import tracemalloc
from collections import deque
from pathlib import Path
from time import perf_counter_ns
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import header, line, machine, median, write_json
from _workload import EventSource

from flightdeck import FlightRecorder

TARGET_RATIO = 2.0
TARGET_BYTES_PER_EVENT = 40.0
TARGET_MEMORY_FACTOR = 1.2
TARGET_FREEZE_MS = 5.0
TARGET_EVENTS_PER_S = 1_000_000.0


# -- 1. hot path -----------------------------------------------------------------------------
def _emit_loop(emit: Any, n: int) -> int:
    pc = perf_counter_ns
    a = 0x7F3A_2C00_0000
    t0 = pc()
    for b in range(n):
        emit((2, pc(), a, b))
    return pc() - t0


def _bare_loop(append: Any, n: int) -> int:
    pc = perf_counter_ns
    a = 0x7F3A_2C00_0000
    t0 = pc()
    for b in range(n):
        append((pc(), a, b))
    return pc() - t0


def _step_loop(emit: Any, n: int) -> int:
    """What a task step really records: two clock reads and a 5-tuple."""
    pc = perf_counter_ns
    a = 0x7F3A_2C00_0000
    t0 = pc()
    for b in range(n):
        s = pc()
        emit((2, s, pc(), a, b))
    return pc() - t0


def bench_hot_path(runs: int, n: int) -> dict[str, Any]:
    rec = FlightRecorder()
    emit = rec.emit
    bare: deque[tuple[int, int, int]] = deque()
    emit_ns: list[float] = []
    bare_ns: list[float] = []
    step_ns: list[float] = []
    ratios: list[float] = []
    for i in range(runs):
        gc.collect()
        # Alternate which goes first so neither always gets the warmer cache.
        if i % 2:
            e = _emit_loop(emit, n) / n
            b = _bare_loop(bare.append, n) / n
        else:
            b = _bare_loop(bare.append, n) / n
            e = _emit_loop(emit, n) / n
        s = _step_loop(emit, n) / n
        emit_ns.append(e)
        bare_ns.append(b)
        step_ns.append(s)
        ratios.append(e / b)
        bare.clear()
        rec.maintain(force_seal=True)  # compact what was emitted (outside the timing)
    return {
        "runs": runs,
        "events_per_run": n,
        "emit_ns": median(emit_ns),
        "bare_deque_ns": median(bare_ns),
        "step_emit_ns": median(step_ns),
        "ratio": median(ratios),
        "ratio_of_medians": median(emit_ns) / median(bare_ns),
    }


# -- 2. memory -------------------------------------------------------------------------------
def bench_memory(max_bytes: int) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    # A long window so that max_bytes, not age, is what bounds it.
    rec = FlightRecorder(window=3600.0, max_bytes=max_bytes)
    src = EventSource(rec.emit, rec.live_tasks, rec.live_requests)
    seg = 32768
    pending = 0
    full_at: int | None = None
    segments_after_full = 0
    t_start = time.perf_counter()
    while True:
        pending += src.request()
        if pending >= seg:
            pending = 0
            rec.maintain(force_seal=True)
            st = rec.stats
            if full_at is None and st["dropped"] + st["evicted"] > 0:
                full_at = st["recorded"]
            elif full_at is not None:
                segments_after_full += 1
                if segments_after_full >= 4:
                    break
    rec.maintain(force_seal=True)
    fill_s = time.perf_counter() - t_start
    del src
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    st = rec.stats
    total = current - base
    events = st["events"]
    segs = list(rec._window._segments)  # private, read only: exact compacted sizes
    data_bytes = sum(len(s.data) for s in segs)
    seg_events = sum(s.count for s in segs)
    return {
        "max_bytes": max_bytes,
        "events_held": events,
        "segments": st["segments"],
        "recorder_estimate_bytes": st["bytes"],
        "tracemalloc_bytes": total,
        "tracemalloc_peak_bytes": peak - base,
        "bytes_per_event_tracemalloc": total / events if events else float("nan"),
        "bytes_per_event_segment_data": data_bytes / seg_events if seg_events else float("nan"),
        "memory_factor": total / max_bytes,
        "fill_seconds_with_tracemalloc": fill_s,
    }


# -- 3. freeze + build ------------------------------------------------------------------------
async def _freeze_and_build(
    reps: int, builds: int, tail: int, pending_tasks: int
) -> dict[str, Any]:
    rec = FlightRecorder()  # defaults: 10 s, 16 MiB, loop instrumentation and watchdog on
    rec.start()
    try:
        gate = asyncio.Event()
        waiters = [asyncio.create_task(gate.wait()) for _ in range(pending_tasks)]
        await asyncio.sleep(0)
        src = EventSource(rec.emit, rec.live_tasks, rec.live_requests)
        # Fill to max_bytes (events beyond it are evicted/dropped, as in production).
        pending = 0
        after_full = 0
        while after_full < 4:
            pending += src.request()
            if pending >= 32768:
                pending = 0
                rec.maintain(force_seal=True)
                st = rec.stats
                if st["dropped"] + st["evicted"] > 0:
                    after_full += 1
        freeze_ms: list[float] = []
        held: list[int] = []
        for _ in range(reps):
            rec.maintain(force_seal=True)
            n = 0
            while n < tail:  # a worst-case unsealed tail (a whole open segment)
                n += src.request()
            gc.collect()
            t0 = perf_counter_ns()
            frozen = rec.freeze()
            freeze_ms.append((perf_counter_ns() - t0) / 1e6)
            held.append(sum(s.count for s in frozen.segments) + len(frozen.tail))
        build_s: list[float] = []
        dumps_s: list[float] = []
        rates: list[float] = []
        rates_nogc: list[float] = []
        sizes: list[int] = []
        events: list[int] = []
        for i in range(2 * builds):
            frozen = rec.freeze()
            count = sum(s.count for s in frozen.segments) + len(frozen.tail)
            # Every other build with the cyclic GC off: how much of the build time is the
            # collector walking the millions of containers the builder allocates.
            no_gc = i % 2 == 1

            def work(fr: Any = frozen, no_gc: bool = no_gc) -> tuple[float, float, int]:
                if no_gc:
                    gc.disable()
                try:
                    t0 = time.perf_counter()
                    snap = rec.build(fr, kind="manual", reason="bench")
                    t1 = time.perf_counter()
                    data = snap.dumps("json")
                    t2 = time.perf_counter()
                finally:
                    gc.enable()
                return t1 - t0, t2 - t1, len(data)

            gc.collect()
            b, d, size = await asyncio.to_thread(work)
            if no_gc:
                rates_nogc.append(count / (b + d))
                continue
            build_s.append(b)
            dumps_s.append(d)
            sizes.append(size)
            events.append(count)
            rates.append(count / (b + d))
        gate.set()
        await asyncio.gather(*waiters)
        return {
            "window_events": median([float(h) for h in held]),
            "unsealed_tail_events": tail,
            "pending_tasks": pending_tasks,
            "freeze_ms": median(freeze_ms),
            "freeze_ms_max": max(freeze_ms),
            "build_s": median(build_s),
            "dumps_s": median(dumps_s),
            "json_bytes": int(median([float(s) for s in sizes])),
            "events_built": int(median([float(e) for e in events])),
            "events_per_s": median(rates),
            "events_per_s_gc_disabled": median(rates_nogc),
            "coverage": rec.stats["coverage"],
        }
    finally:
        rec.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    args = parser.parse_args()
    header("bench_recorder: the recorder core")
    runs = 9 if args.quick else 21
    n = 50_000 if args.quick else 200_000

    hot = bench_hot_path(runs, n)
    print(f"\n1. recording one event (median of {runs} interleaved runs x {n:,} events)")
    print(f"   rec.emit((kind, perf_counter_ns(), a, b))       {hot['emit_ns']:7.1f} ns/event")
    print(
        f"   bare deque.append((perf_counter_ns(), a, b))     {hot['bare_deque_ns']:7.1f} ns/event"
    )
    print(
        f"   a task step's record (2 clock reads, 5-tuple)    {hot['step_emit_ns']:7.1f} ns/event"
    )
    print(
        line(
            "emit / bare deque.append (median of ratios)",
            f"{hot['ratio']:.2f}x",
            f"<= {TARGET_RATIO:.1f}x",
            hot["ratio"] <= TARGET_RATIO,
        )
    )

    mem = bench_memory(16 << 20)
    print(f"\n2. memory (tracemalloc, window filled past max_bytes = {mem['max_bytes']:,} B)")
    print(f"   events held {mem['events_held']:,} in {mem['segments']} sealed segments")
    print(f"   compacted segment data alone: {mem['bytes_per_event_segment_data']:.1f} B/event")
    print(
        line(
            "bytes/event (tracemalloc, whole window)",
            f"{mem['bytes_per_event_tracemalloc']:.1f} B",
            f"<= {TARGET_BYTES_PER_EVENT:.0f} B",
            mem["bytes_per_event_tracemalloc"] <= TARGET_BYTES_PER_EVENT,
        )
    )
    print(
        line(
            "events a 16 MiB window holds",
            f"{mem['events_held']:,}",
            ">= 400,000",
            mem["events_held"] >= 400_000,
        )
    )
    print(
        line(
            "window memory / max_bytes (tracemalloc)",
            f"{mem['memory_factor']:.2f}x",
            f"<= {TARGET_MEMORY_FACTOR}x",
            mem["memory_factor"] <= TARGET_MEMORY_FACTOR,
        )
    )

    reps = 7 if args.quick else 15
    builds = 2 if args.quick else 3
    snap = asyncio.run(_freeze_and_build(reps, builds, tail=32768, pending_tasks=500))
    print(
        f"\n3. snapshot of a full default window ({int(snap['window_events']):,} events, "
        f"{snap['unsealed_tail_events']:,} unsealed, {snap['pending_tasks']} pending tasks)"
    )
    print(
        line(
            f"freeze() on the loop thread (median of {reps})",
            f"{snap['freeze_ms']:.2f} ms",
            f"<= {TARGET_FREEZE_MS:.0f} ms",
            snap["freeze_ms"] <= TARGET_FREEZE_MS,
        )
    )
    print(f"   worst freeze() {snap['freeze_ms_max']:.2f} ms")
    build_ms, dumps_ms = snap["build_s"] * 1e3, snap["dumps_s"] * 1e3
    mb = snap["json_bytes"] / 1e6
    print(f"   off-loop build() {build_ms:.0f} ms + dumps() {dumps_ms:.0f} ms", end="")
    print(f" for {snap['events_built']:,} events ({mb:.1f} MB JSON)")
    print(
        line(
            f"build+dumps throughput (median of {builds})",
            f"{snap['events_per_s'] / 1e6:.2f} M ev/s",
            ">= 1.0 M ev/s",
            snap["events_per_s"] >= TARGET_EVENTS_PER_S,
        )
    )
    print(
        f"   (diagnostic) same with gc.disable() during build: "
        f"{snap['events_per_s_gc_disabled'] / 1e6:.2f} M ev/s"
    )
    path = write_json(
        "bench_recorder.json",
        {
            "machine": machine(),
            "command": " ".join(sys.argv),
            "hot_path": hot,
            "memory": mem,
            "snapshot": snap,
            "targets": {
                "ratio": TARGET_RATIO,
                "bytes_per_event": TARGET_BYTES_PER_EVENT,
                "memory_factor": TARGET_MEMORY_FACTOR,
                "freeze_ms": TARGET_FREEZE_MS,
                "events_per_s": TARGET_EVENTS_PER_S,
            },
        },
    )
    print(f"\n   results: {path}")


if __name__ == "__main__":
    main()
