"""The native core's own figures: ns per event, bytes per event, decoding rate, memory bound.

1. Record cost of a task step on the native hook path, measured from C
   (``_native.bench_step``, compiled into a benchmark-only build: the encoder the step
   runner calls, with and without its two clock reads), and what a Python emitter's
   ``append(tuple)`` costs (vs ``deque.append``).
2. Bytes per event held in the window after the mixed HTTP workload of the benchmarks
   (three-await Starlette route, 32 in flight, full recording), both loops.
3. Decoding rate of a full default window (events/s, ``Segment.events()`` in C) and of the
   whole snapshot build.
4. Memory: RSS growth over the RSS after warm-up (before the recorder starts) while 200 tasks
   loop on ``sleep(0.001)``, ``max_bytes`` 2 MiB and 16 MiB, each core in its own process
   (``FLIGHTDECK_NO_EXTENSIONS=1`` for the pure one); target <= 1.25 x max_bytes + 8 MiB.

Run: ``.venv/bin/python benchmarks/bench_native.py [--quick]`` (``make bench-native``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import ROOT, header, machine, verdict, write_json


def best(f: Any, reps: int = 7) -> float:
    return min(f() for _ in range(reps))


def bench_native_module() -> Any:
    """The native core with its benchmark hook (``bench_step``), which shipped builds leave out.

    Built once into a temporary directory with ``FLIGHTDECK_BENCH_HOOKS=1`` and loaded from
    there, so the package's own extension stays the production build.
    """
    import importlib.util
    import tempfile

    from flightdeck.core import _native

    if hasattr(_native, "bench_step"):
        return _native
    out = Path(tempfile.mkdtemp(prefix="flightdeck-bench-"))
    env = {**os.environ, "FLIGHTDECK_BENCH_HOOKS": "1"}
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(out)]
    subprocess.run([*cmd, "--build-temp", str(out / "tmp")], cwd=ROOT, env=env, check=True)
    so = next(out.glob("flightdeck/core/_native*"))
    spec = importlib.util.spec_from_file_location("flightdeck.core._native", so)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def record_cost(n: int) -> dict[str, float]:
    _native = bench_native_module()

    def step(clocks: bool) -> float:
        w = _native.Window(10**10, 16 << 20)
        return _native.bench_step(w, n, clocks) / n

    def clock_only() -> float:
        t0 = time.perf_counter_ns()
        c = _native.clock
        for _ in range(n):
            c()
        return (time.perf_counter_ns() - t0) / n

    def py_append() -> float:
        w = _native.Window(10**10, 16 << 20)
        e = (2, 10**12, 10**12 + 5000, 140_000_000_123, 10**12 - 2000)
        ap = w.append
        t0 = time.perf_counter_ns()
        for _ in range(n):
            ap(e)
        return (time.perf_counter_ns() - t0) / n

    def deque_append() -> float:
        d: deque[Any] = deque(maxlen=1 << 20)
        e = (2, 10**12, 10**12 + 5000, 140_000_000_123, 10**12 - 2000)
        ap = d.append
        t0 = time.perf_counter_ns()
        for _ in range(n):
            ap(e)
        return (time.perf_counter_ns() - t0) / n

    def empty_loop() -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            pass
        return (time.perf_counter_ns() - t0) / n

    loop_ns = best(empty_loop)
    return {
        "step_with_clocks_ns": best(lambda: step(True)),
        "step_encode_only_ns": best(lambda: step(False)),
        "python_append_ns": best(py_append) - loop_ns,
        "deque_append_ns": best(deque_append) - loop_ns,
        "python_clock_call_ns": best(clock_only) - loop_ns,
    }


async def _http_workload(n: int) -> dict[str, Any]:
    import apps as bench_apps
    from bench_http import drive

    from flightdeck import FlightDeck

    app = FlightDeck(
        bench_apps.make_app("steps"),
        triggers=[],
        slow_request=None,
        server_errors=False,
        endpoint=None,
    )
    await drive(app, bench_apps.PATHS["steps"], 200)
    rec = app.recorder
    before = rec.stats["recorded"]
    t0 = time.perf_counter()
    await drive(app, bench_apps.PATHS["steps"], n)
    elapsed = time.perf_counter() - t0
    rec.maintain(force_seal=True)
    stats = rec.stats
    frozen = rec.freeze()
    t1 = time.perf_counter()
    count = sum(len(s.events()) for s in frozen.segments)
    decode_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    snap = rec.build(frozen)
    build_s = time.perf_counter() - t2
    app.close()
    events = stats["events"]
    return {
        "core": stats["core"],
        "requests": n,
        "events_per_request": (stats["recorded"] - before) / n,
        "events_held": events,
        "bytes": stats["bytes"],
        "bytes_per_event": stats["bytes"] / events if events else None,
        "decode_events_per_s": count / decode_s if decode_s else None,
        "build_events_per_s": count / build_s if build_s else None,
        "snapshot_tasks": len(snap.to_dict()["tasks"]),
        "wall_s": elapsed,
    }


def http_bytes(loop: str, n: int) -> dict[str, Any]:
    from bench_http import _new_loop

    ev_loop = _new_loop(loop)
    try:
        return ev_loop.run_until_complete(_http_workload(n))
    finally:
        ev_loop.close()


_MEMORY_CHILD = r"""
import asyncio, gc, json, os, sys, time
sys.path.insert(0, {root!r})
from flightdeck import FlightRecorder

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

async def main(max_bytes, seconds):
    stop = False
    async def spin():
        while not stop:
            await asyncio.sleep(0.001)
    tasks = [asyncio.create_task(spin()) for _ in range(200)]
    await asyncio.sleep(1.0)  # warm-up, recorder not started
    gc.collect()
    base = rss()
    rec = FlightRecorder(max_bytes=max_bytes, loop_blocked=None)
    rec.start()
    peak = 0; peak_bytes = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.05)
        peak = max(peak, rss() - base)
        peak_bytes = max(peak_bytes, rec.stats["bytes"])
    stats = rec.stats
    rec.stop()
    stop = True
    await asyncio.gather(*tasks)
    print(json.dumps({{"core": stats["core"], "max_bytes": max_bytes, "rss_growth": peak,
                      "peak_stats_bytes": peak_bytes, "recorded": stats["recorded"],
                      "dropped": stats["dropped"], "events": stats["events"]}}))

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""


def memory(core: str, max_bytes: int, seconds: float) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("FLIGHTDECK_NO_EXTENSIONS", None)
    if core == "python":
        env["FLIGHTDECK_NO_EXTENSIONS"] = "1"
    code = _MEMORY_CHILD.format(root=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code, str(max_bytes), str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    res["limit"] = int(1.25 * max_bytes + (8 << 20))
    res["ok"] = res["rss_growth"] <= res["limit"] and res["peak_stats_bytes"] <= max_bytes
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    header("bench_native: the native core's per-event cost, density and memory bound")
    n = 200_000 if args.quick else 1_000_000
    out: dict[str, Any] = {"machine": machine()}
    cost = record_cost(n)
    out["record_cost"] = cost
    print(
        f"record cost, native hook path (from C): {cost['step_with_clocks_ns']:.1f} ns/step "
        f"with its two clock reads, {cost['step_encode_only_ns']:.1f} ns encoding only "
        f"[{verdict(cost['step_with_clocks_ns'] <= 60)} <= 60 ns]"
    )
    print(
        f"python emitter: Window.append(tuple) {cost['python_append_ns']:.1f} ns "
        f"(deque.append {cost['deque_append_ns']:.1f} ns; _native.clock() "
        f"{cost['python_clock_call_ns']:.1f} ns)"
    )
    reqs = 3000 if args.quick else 20000
    out["http"] = {}
    for loop in ("asyncio", "uvloop"):
        r = http_bytes(loop, reqs)
        out["http"][loop] = r
        print(
            f"{loop}: {r['events_per_request']:.1f} events/request, "
            f"{r['bytes_per_event']:.2f} bytes/event held ({r['events_held']} events, "
            f"{r['bytes']} bytes) [{verdict((r['bytes_per_event'] or 99) <= 16)} <= 16]; "
            f"decode {r['decode_events_per_s'] / 1e6:.2f} M events/s "
            f"[{verdict((r['decode_events_per_s'] or 0) >= 1e6)} >= 1M], whole build "
            f"{r['build_events_per_s'] / 1e6:.2f} M events/s"
        )
    seconds = 3.0 if args.quick else 8.0
    out["memory"] = []
    for core in ("native", "python"):
        for mb in (2 << 20, 16 << 20):
            m = memory(core, mb, seconds)
            out["memory"].append(m)
            print(
                f"memory {core:6s} max_bytes {mb >> 20:2d} MiB: RSS +{m['rss_growth'] / 2**20:.1f}"
                f" MiB (limit {m['limit'] / 2**20:.1f}), stats.bytes peak "
                f"{m['peak_stats_bytes'] / 2**20:.2f} MiB, dropped {m['dropped']} "
                f"[{verdict(m['ok'])}]"
            )
    write_json("bench_native.json", out)


if __name__ == "__main__":
    main()
