"""Event-loop instrumentation benchmark: throughput with flightdeck on vs bare.

A workload of many short tasks (each awaits a few times, then gathers a fan-out of child
tasks that await too) runs on a fresh loop per run, in three variants interleaved in
shuffled rounds in ONE process, on asyncio and on uvloop:

- ``bare``: no flightdeck;
- ``full``: ``FlightRecorder()`` started on the loop (loop instrumentation + watchdog);
- ``watchdog``: ``FlightRecorder(instrument_loop=False)`` (watchdog and recorder thread only).

The process is pinned to one CPU (as a one-worker-per-core server is), so the recorder
thread's compaction competes with the loop, as it would in production. Reported: the
median throughput ratio to bare and the added microseconds per recorded task step
(steps counted from the recorder's own window in a calibration run).

Run: ``.venv/bin/python benchmarks/bench_loop.py [--quick] [--no-pin]`` (also ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import header, line, machine, median, write_json

from flightdeck import FlightRecorder
from flightdeck.core import events as ev

TARGET_RATIO = 0.92
TARGET_US_PER_STEP = 0.5
TARGET_WATCHDOG_RATIO = 0.98
VARIANTS = ("bare", "full", "watchdog")

FANOUT = 4
CONCURRENCY = 100


async def _leaf() -> int:
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return 1


async def _unit() -> int:
    for _ in range(3):
        await asyncio.sleep(0)
    done = await asyncio.gather(*(_leaf() for _ in range(FANOUT)))
    return len(done)


async def workload(units: int) -> None:
    """``units`` units of work, CONCURRENCY at a time, each one a task."""
    left = units
    while left > 0:
        n = min(CONCURRENCY, left)
        await asyncio.gather(*(_unit() for _ in range(n)))
        left -= n


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


def _thread_cpu(rec: FlightRecorder | None) -> float:
    """CPU seconds of the recorder's background thread so far (0 when unknown)."""
    thread = getattr(rec, "_thread", None)  # private: a diagnostic only
    ident = getattr(thread, "ident", None)
    if ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except OSError:
        return 0.0


def run_once(kind: str, variant: str, units: int) -> dict[str, Any]:
    """One timed run on a fresh loop; returns seconds and what the recorder recorded."""
    loop = _loop_factory(kind)()

    async def main() -> dict[str, Any]:
        rec: FlightRecorder | None = None
        if variant == "full":
            rec = FlightRecorder()
        elif variant == "watchdog":
            rec = FlightRecorder(instrument_loop=False)
        if rec is not None:
            rec.start()
        try:
            await workload(max(1, units // 20))  # warm up this loop and the recorder
            gc.collect()
            before = rec.stats["recorded"] if rec is not None else 0
            if rec is not None:
                rec.maintain()
                before = rec.stats["recorded"]
            bg0 = _thread_cpu(rec)
            t0 = time.perf_counter()
            c0 = time.process_time()
            await workload(units)
            cpu = time.process_time() - c0
            wall = time.perf_counter() - t0
            # CPU the recorder's own thread spent (drain, compaction, watchdog) meanwhile.
            background = _thread_cpu(rec) - bg0
            recorded = 0
            if rec is not None:
                rec.maintain()
                recorded = rec.stats["recorded"] - before
            return {"wall": wall, "cpu": cpu, "bg_cpu": background, "recorded": recorded}
        finally:
            if rec is not None:
                rec.stop()

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def count_events(kind: str, units: int) -> dict[str, float]:
    """Events of each kind per unit, from the recorder's own window (nothing evicted)."""
    loop = _loop_factory(kind)()

    async def main() -> Counter[int]:
        rec = FlightRecorder(window=3600.0, max_bytes=1 << 30)
        rec.start()
        try:
            await workload(units)
            rec.maintain(force_seal=True)
            frozen = rec.freeze()
            counts: Counter[int] = Counter()
            for events in frozen.iter_segments():
                counts.update(e[0] for e in events)
            return counts
        finally:
            rec.stop()

    try:
        counts = loop.run_until_complete(main())
    finally:
        loop.close()
    return {ev.NAMES.get(k, str(k)): n / units for k, n in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--units", type=int, default=None, help="units of work per run")
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 9)
    units = args.units or (6000 if args.quick else 15000)
    pinned = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = cpu
    header("bench_loop: event-loop instrumentation overhead")
    print(f"   pinned to CPU {pinned}" if pinned is not None else "   not pinned")
    kinds = ["asyncio"]
    try:
        import uvloop  # noqa: F401

        kinds.append("uvloop")
    except ImportError:
        print("   uvloop is not installed: asyncio only")

    per_unit = {k: count_events(k, 500) for k in kinds}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {v: [] for v in VARIANTS} for k in kinds}
    rng = random.Random(1234)
    t_start = time.perf_counter()
    for _ in range(rounds):
        order = [(k, v) for k in kinds for v in VARIANTS]
        rng.shuffle(order)
        for k, v in order:
            runs[k][v].append(run_once(k, v, units))
    elapsed = time.perf_counter() - t_start

    print(
        f"\n   workload: {units:,} units/run, {CONCURRENCY} in flight, each 3 awaits + gather "
        f"of {FANOUT} children awaiting twice; {rounds} shuffled rounds ({elapsed:.0f} s)"
    )
    results: dict[str, Any] = {}
    for k in kinds:
        steps = per_unit[k].get("task_step", 0.0)
        print(f"\n== {k}: per unit {', '.join(f'{n} {c:g}' for n, c in per_unit[k].items())}")
        bare_wall = [r["wall"] for r in runs[k]["bare"]]
        bare_cpu = [r["cpu"] for r in runs[k]["bare"]]
        res: dict[str, Any] = {"events_per_unit": per_unit[k], "variants": {}}
        for v in VARIANTS:
            wall = [r["wall"] for r in runs[k][v]]
            cpu = [r["cpu"] for r in runs[k][v]]
            thr = units / median(wall)
            # Paired per round: each round ran every variant back to back.
            ratios = [b / w for b, w in zip(bare_wall, wall, strict=True)]
            added_us_unit = (median(wall) - median(bare_wall)) / units * 1e6
            added_cpu_unit = (median(cpu) - median(bare_cpu)) / units * 1e6
            recorded = median([float(r["recorded"]) for r in runs[k][v]]) / units
            bg_us = median([r["bg_cpu"] for r in runs[k][v]]) / units * 1e6
            res["variants"][v] = {
                "units_per_s": thr,
                "ratio": median(ratios),
                "ratio_of_medians": median(bare_wall) / median(wall),
                "us_per_unit": median(wall) / units * 1e6,
                "added_us_per_unit": added_us_unit,
                "added_cpu_us_per_unit": added_cpu_unit,
                "added_us_per_step": added_us_unit / steps if steps else None,
                "events_recorded_per_unit": recorded,
                "recorder_thread_cpu_us_per_unit": bg_us,
                "wall_s": wall,
            }
            print(
                f"   {v:<9} {thr:10,.0f} units/s  {median(wall) / units * 1e6:7.2f} us/unit"
                f"  ratio {median(ratios):.3f}  added {added_us_unit:+6.2f} us/unit"
                f"  ({bg_us:5.2f} in the recorder thread)  recorded {recorded:4.1f} ev/unit"
            )
        full = res["variants"]["full"]
        wd = res["variants"]["watchdog"]
        print(
            line(
                f"{k}: full / bare throughput (median)",
                f"{full['ratio']:.3f}",
                f">= {TARGET_RATIO}",
                full["ratio"] >= TARGET_RATIO,
            )
        )
        per_step = full["added_us_per_step"]
        print(
            line(
                f"{k}: added us per recorded step ({steps:g}/unit)",
                f"{per_step:.3f} us",
                f"<= {TARGET_US_PER_STEP}",
                per_step is not None and per_step <= TARGET_US_PER_STEP,
            )
        )
        print(
            line(
                f"{k}: watchdog only / bare (median)",
                f"{wd['ratio']:.3f}",
                f">= {TARGET_WATCHDOG_RATIO}",
                wd["ratio"] >= TARGET_WATCHDOG_RATIO,
            )
        )
        results[k] = res
    path = write_json(
        "bench_loop.json",
        {
            "machine": machine(),
            "command": " ".join(sys.argv),
            "pinned_cpu": pinned,
            "rounds": rounds,
            "units_per_run": units,
            "results": results,
            "targets": {
                "ratio": TARGET_RATIO,
                "us_per_step": TARGET_US_PER_STEP,
                "watchdog_ratio": TARGET_WATCHDOG_RATIO,
            },
        },
    )
    print(f"\n   results: {path}")


if __name__ == "__main__":
    main()
