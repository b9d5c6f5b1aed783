"""The window file's writer: CPU time of each write while the loop runs tiny tasks flat out.

    python benchmarks/bench_windowfile.py [--seconds S]          # the native core
    FLIGHTDECK_NO_EXTENSIONS=1 python benchmarks/bench_windowfile.py   # the pure core
    python benchmarks/bench_windowfile.py --http [--rounds N]    # wrk: memory vs file

Prints the loop's rate with the window only in memory, then with it in a file too, and the
median and maximum CPU time (``time.thread_time``) of the writer's writes (native: one every
``windowfile.INTERVAL / 5``, the state with every fifth; pure: one every ``INTERVAL``).
The rates are noisy on a shared machine; the CPU times are not.

``--http``: the example app (``examples/fastapi_app``) under uvicorn pinned to CPU 0, wrk
pinned to CPU 1 (32 connections, ``/fast``), with the window in memory only and with
it in a file too (``FLIGHTDECK_DIR``), alternating, ``--rounds`` times each; the medians of
requests/s and p99 latency.
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
        # Both kinds of write: the whole one (state included) every INTERVAL, and the
        # native core's records alone in between (every INTERVAL / 5).
        for name in ("sync", "sync_records"):
            original = getattr(box, name)

            def timed(original: Any = original) -> None:
                t = time.thread_time()
                original()
                cpu.append(time.thread_time() - t)

            setattr(box, name, timed)

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


def _wrk_run(directory: str | None, seconds: int) -> tuple[float, float]:
    """(requests/s, p99 ms) of one wrk run against a fresh server."""
    import os
    import re
    import socket
    import subprocess
    import sys
    import urllib.request

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    env.pop("FLIGHTDECK_DIR", None)
    if directory is not None:
        env["FLIGHTDECK_DIR"] = directory
    server = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "uvicorn", "--app-dir",
         os.path.join(root, "examples/fastapi_app"), "app:app", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/fast"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        out = subprocess.run(
            ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return rps, float(p99) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def http(rounds: int, seconds: int) -> None:
    runs: dict[str, list[tuple[float, float]]] = {"memory": [], "file": []}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(rounds):
            runs["memory"].append(_wrk_run(None, seconds))
            runs["file"].append(_wrk_run(directory, seconds))
    for name, got in runs.items():
        rps = sorted(r for r, _ in got)[len(got) // 2]
        p99 = sorted(p for _, p in got)[len(got) // 2]
        print(f"{name:6}: {rps:,.0f} requests/s, p99 {p99:.2f} ms (median of {len(got)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--http", action="store_true", help="wrk against the example app")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.http:
        http(args.rounds, int(args.seconds))
        return
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
