"""Memory bound: RSS growth of a process recording with flightdeck, against ``max_bytes``.

Each scenario runs in a fresh child process. The child warms its workload up without
flightdeck, takes its RSS as the baseline, starts recording, then samples RSS every 20 ms
(from a thread reading /proc/self/statm) and ``stats["bytes"]`` while the load runs:

``sleep``
    200 tasks looping on ``asyncio.sleep(0.001)`` for 8 s (a FlightRecorder on the loop).
``storm``
    a 5xx storm through ``FlightDeck`` (defaults, so captures fire and are rate limited):
    an ASGI app answering 500, driven in-process at up to ~4k requests/s for 6 s.
``capture``
    the sleep workload for 8 s with default bounds, then a capture of the full window
    (trigger to stored gzip): the peak during the capture against the steady state.

Targets: outside captures, growth <= 1.25 x max_bytes + 8 MiB at every sample
and ``stats.bytes`` <= max_bytes; while a capture runs, at most 2 x max_bytes more.

Command: .venv/bin/python benchmarks/bench_memory.py [--cores native,python] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, line, write_json

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sampler:
    """Samples RSS (and a stats callable) every 20 ms on its own thread."""

    def __init__(self, stats: Any = None) -> None:
        self.stats = stats
        self.peak_rss = 0
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_rss = max(self.peak_rss, rss())
            if self.stats is not None:
                try:
                    self.peak_bytes = max(self.peak_bytes, int(self.stats()["bytes"]))
                except Exception:
                    pass
            self.samples += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _sleepers(n: int, stop: asyncio.Event) -> None:
    async def one() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.001)

    await asyncio.gather(*(one() for _ in range(n)))


async def scenario_sleep(max_bytes: int, seconds: float, capture: bool) -> dict[str, Any]:
    from flightdeck import FlightRecorder

    stop = asyncio.Event()
    load = asyncio.create_task(_sleepers(200, stop))
    await asyncio.sleep(min(2.0, seconds / 3))  # warm-up without flightdeck
    base = rss()
    rec = FlightRecorder(max_bytes=max_bytes, loop_blocked=None)
    rec.start()
    out: dict[str, Any] = {"baseline_mib": base / MIB}
    with Sampler(lambda: rec.stats) as s:
        await asyncio.sleep(seconds)
    out["growth_mib"] = (s.peak_rss - base) / MIB
    out["peak_stats_bytes"] = s.peak_bytes
    out["events"] = rec.stats["events"]
    out["core"] = rec.stats.get("core", "python")
    if capture:
        steady = rss()
        window_at_freeze = rec.stats["bytes"]
        from flightdeck.snapshot.store import SnapshotStore

        store = SnapshotStore()
        frozen = rec.freeze()
        cpu: list[float] = []

        def capture() -> Any:
            start = time.thread_time()
            try:
                return rec.build_into(store, frozen, kind="bench")
            finally:
                cpu.append(time.thread_time() - start)

        with Sampler(lambda: rec.stats) as c:
            # What a trigger does: build off the loop straight into the store (gzip'd). The
            # loop keeps running the sleepers meanwhile; a 10 ms ticker measures its lag.
            started = time.perf_counter()
            build = asyncio.ensure_future(asyncio.to_thread(capture))
            lag = 0.0
            while not build.done():
                tick = time.perf_counter()
                await asyncio.sleep(0.01)
                lag = max(lag, time.perf_counter() - tick - 0.01)
            info = build.result()
            out["capture_wall_s"] = time.perf_counter() - started
        out["capture_cpu_s"] = cpu[0]
        out["capture_loop_lag_max_ms"] = lag * 1e3
        out["capture_extra_mib"] = (c.peak_rss - steady) / MIB
        # The window keeps recording meanwhile: part of the extra is its own growth.
        out["capture_window_growth_mib"] = (c.peak_bytes - window_at_freeze) / MIB
        out["capture_json_mib"] = info.size / MIB
        out["capture_stored_mib"] = info.stored / MIB
    rec.stop()
    stop.set()
    await load
    return out


async def scenario_storm(max_bytes: int, seconds: float) -> dict[str, Any]:
    from flightdeck import FlightDeck

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"boom"})

    deck = FlightDeck(app, max_bytes=max_bytes, endpoint=None)

    async def one(i: int) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "path": f"/storm/{i % 50}",
            "raw_path": b"/storm",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 40000 + i % 1000),
            "server": ("127.0.0.1", 8000),
            "scheme": "http",
            "root_path": "",
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            return None

        await deck(scope, receive, send)

    async def drive(until: float) -> int:
        n = 0
        while time.monotonic() < until:
            t = time.monotonic()
            await asyncio.gather(*(one(n + k) for k in range(40)))
            n += 40
            # ~4k/s: 40 requests per 10 ms at most
            delay = 0.01 - (time.monotonic() - t)
            await asyncio.sleep(max(delay, 0))
        return n

    await drive(time.monotonic() + 1.0)  # warm-up; starts the recorder too
    base = rss()
    with Sampler(lambda: deck.recorder.stats) as s:
        n = await drive(time.monotonic() + seconds)
    out = {
        "baseline_mib": base / MIB,
        "growth_mib": (s.peak_rss - base) / MIB,
        "peak_stats_bytes": s.peak_bytes,
        "requests_per_s": n / seconds,
        "snapshots": deck.recorder.stats["snapshots"],
        "core": deck.recorder.stats.get("core", "python"),
    }
    deck.close()
    return out


def child(args: argparse.Namespace) -> None:
    if args.scenario == "storm":
        result = asyncio.run(scenario_storm(args.max_bytes, args.seconds))
    else:
        result = asyncio.run(
            scenario_sleep(args.max_bytes, args.seconds, capture=args.scenario == "capture")
        )
    print(json.dumps(result))


def run_child(scenario: str, max_bytes: int, seconds: float, core: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("FLIGHTDECK_NO_EXTENSIONS", None)
    if core == "python":
        env["FLIGHTDECK_NO_EXTENSIONS"] = "1"
    cmd = [sys.executable, __file__, "--child", scenario, "--max-bytes", str(max_bytes)]
    cmd += ["--seconds", str(seconds)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=180)
    except subprocess.TimeoutExpired:
        # Seen with the capture scenario before builds lowered the GIL switch interval
        # (flightdeck/snapshot/switching.py): say so instead of hanging.
        return {"timeout": True, "core": core}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="native,python")
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--child", choices=["sleep", "storm", "capture"], help=argparse.SUPPRESS)
    parser.add_argument("--max-bytes", type=int, default=16 * MIB, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=8.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.scenario = args.child
        child(args)
        return
    header("bench_memory: RSS growth against max_bytes")
    results: dict[str, Any] = {"runs": []}
    scale = 0.5 if args.quick else 1.0
    for core in args.cores.split(","):
        for scenario, max_bytes, seconds in (
            ("sleep", 2 * MIB, 8.0),
            ("sleep", 16 * MIB, 8.0),
            ("storm", 2 * MIB, 6.0),
            ("storm", 16 * MIB, 6.0),
            ("capture", 16 * MIB, 8.0),
        ):
            r = run_child(scenario, max_bytes, seconds * scale, core)
            r.update(scenario=scenario, max_bytes=max_bytes, requested_core=core)
            results["runs"].append(r)
            if r.get("timeout"):
                print(
                    f"  {core:<6} {scenario:<7} max_bytes {max_bytes // MIB:>2} MiB:"
                    " no result in 180 s  MISS"
                )
                continue
            bound = 1.25 * max_bytes / MIB + 8
            label = f"{r['core']:<6} {scenario:<7} max_bytes {max_bytes // MIB:>2} MiB"
            if scenario == "capture":
                print(
                    f"  {label} capture took {r['capture_wall_s']:.2f} s wall,"
                    f" {r['capture_cpu_s']:.2f} s CPU in its thread; loop lag at most"
                    f" {r['capture_loop_lag_max_ms']:.0f} ms"
                )
                print(
                    line(
                        label + " capture",
                        f"+{r['capture_extra_mib']:.1f} MiB",
                        f"<= {2 * max_bytes // MIB} MiB",
                        r["capture_extra_mib"] <= 2 * max_bytes / MIB,
                    )
                )
            print(
                line(
                    label,
                    f"+{r['growth_mib']:.1f} MiB",
                    f"<= {bound:.1f} MiB",
                    r["growth_mib"] <= bound,
                )
            )
            print(
                line(
                    label + " stats.bytes",
                    f"{r['peak_stats_bytes'] / MIB:.2f} MiB",
                    f"<= {max_bytes // MIB} MiB",
                    r["peak_stats_bytes"] <= max_bytes,
                )
            )
    path = write_json("bench_memory.json", results)
    print(f"   results: {path}")


if __name__ == "__main__":
    main()
