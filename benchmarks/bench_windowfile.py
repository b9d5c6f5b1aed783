"""The window file's writer: CPU time of each write while the loop runs tiny tasks flat out.

    python benchmarks/bench_windowfile.py [--seconds S]          # the native core
    FLIGHTDECK_NO_EXTENSIONS=1 python benchmarks/bench_windowfile.py   # the pure core

Prints the loop's rate with the window only in memory, then with it in a file too, and the
median and maximum CPU time (``time.thread_time``) of the writer's writes (one every
``windowfile.INTERVAL``). The rates are noisy on a shared machine; the CPU times are not.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

from flightdeck import FlightRecorder
from flightdeck.snapshot.store import SnapshotStore


async def run(seconds: float, directory: str | None) -> dict[str, Any]:
    rec = FlightRecorder()
    if directory is not None:
        rec.keep_window_in(SnapshotStore(directory=directory))
    rec.start()
    box = rec._blackbox
    cpu: list[float] = []
    if box is not None:
        sync = box.sync

        def timed() -> None:
            t = time.thread_time()
            sync()
            cpu.append(time.thread_time() - t)

        box.sync = timed  # type: ignore[method-assign]

    async def work() -> None:
        await asyncio.sleep(0)

    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await asyncio.gather(*(work() for _ in range(50)))
        n += 50
    elapsed = time.perf_counter() - t0
    stats = rec.stats
    rec.stop()
    cpu.sort()
    return {
        "tasks_per_s": n / elapsed,
        "writes": len(cpu),
        "median_ms": cpu[len(cpu) // 2] * 1e3 if cpu else None,
        "max_ms": cpu[-1] * 1e3 if cpu else None,
        "core": stats["core"],
        "file": stats.get("window_file"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    memory = asyncio.run(run(args.seconds, None))
    with tempfile.TemporaryDirectory() as directory:
        infile = asyncio.run(run(args.seconds, directory))
    print(f"core {memory['core']}: memory only {memory['tasks_per_s']:,.0f} tasks/s")
    print(
        f"core {infile['core']}: with the file {infile['tasks_per_s']:,.0f} tasks/s;"
        f" {infile['writes']} writes, CPU median {infile['median_ms']:.2f} ms,"
        f" max {infile['max_ms']:.2f} ms; file {infile['file']}"
    )


if __name__ == "__main__":
    main()
