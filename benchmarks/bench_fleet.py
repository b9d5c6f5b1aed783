"""What a configured fleet costs on the request path: CPU per request, in-process.

The same app and driver as ``bench_http.py``'s in-process mode (no sockets, 32 requests in
flight, each its own task), wrapped by ``FlightDeck`` with its defaults (``fd_full``) or
the same plus ``fleet=`` pointing at a real local ``redis-server`` (``fd_fleet``), each with
and without a ``traceparent`` header on every request. CPU is ``time.process_time``: all
threads of the process, so the fleet's own thread (its Redis subscription) is counted too.
Variants run interleaved in shuffled order, in fresh event loops, pinned to one CPU when
``taskset`` exists; the figure is the median over rounds of microseconds per request.

    .venv/bin/python benchmarks/bench_fleet.py [--rounds 15] [--requests 20000] [--app steps]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import apps as bench_apps  # noqa: E402
from bench_http import _new_loop, _scope, free_port  # noqa: E402

TRACEPARENT = (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
VARIANTS = ("fd_full", "fd_fleet", "fd_full+tp", "fd_fleet+tp")


async def drive(app: Any, path: str, n: int, traced: bool, inflight: int = 32) -> int:
    """``bench_http.drive`` with an optional ``traceparent`` on every request."""
    loop = asyncio.get_running_loop()
    bad = 0

    async def one(i: int) -> None:
        nonlocal bad
        done = asyncio.Event()
        sent = False
        scope = _scope(path, i)
        if traced:
            scope["headers"] = [*scope["headers"], TRACEPARENT]

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal bad
            if message["type"] == "http.response.start" and message["status"] != 200:
                bad += 1
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await app(scope, receive, send)

    async def worker(k: int, start: int) -> None:
        for j in range(k):
            await loop.create_task(one(start + j))

    per = n // inflight
    await asyncio.gather(*(worker(per, w * per) for w in range(inflight)))
    return bad


def measure(app_name: str, variant: str, n: int, redis_url: str) -> float:
    from flightdeck import FlightDeck

    options: dict[str, Any] = {"service": "bench"}
    if variant.startswith("fd_fleet"):
        options["fleet"] = redis_url
        options["fleet_namespace"] = "bench" + str(os.getpid())
        options["fleet_secret"] = "bench-fleet-secret-0123"
    app = FlightDeck(bench_apps.make_app(app_name), **options)
    traced = variant.endswith("+tp")
    path = bench_apps.PATHS[app_name]
    loop = _new_loop("asyncio")

    async def main() -> float:
        await drive(app, path, max(64, n // 5), traced)  # warm up, start flightdeck
        if app.fleet is not None:
            deadline = time.monotonic() + 10
            while not app.fleet.client.connected:
                if time.monotonic() > deadline:
                    raise RuntimeError("the fleet did not connect to Redis")
                await asyncio.sleep(0.01)
        gc.collect()
        c0 = time.process_time()
        bad = await drive(app, path, n, traced)
        cpu = time.process_time() - c0
        if bad:
            raise RuntimeError(f"{bad} requests failed")
        return cpu / n * 1e6

    try:
        return loop.run_until_complete(main())
    finally:
        app.close()
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--app", default="steps", choices=bench_apps.APPS)
    parser.add_argument("--out", default=str(HERE / "results" / "bench_fleet.json"))
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    taskset = shutil.which("taskset")
    if taskset and not args.pinned:
        cmd = [taskset, "-c", "0", sys.executable, __file__, *sys.argv[1:], "--pinned"]
        raise SystemExit(subprocess.call(cmd))

    import random

    workdir = tempfile.mkdtemp(prefix="bench-fleet-")
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--dir", workdir]
    redis = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        url = f"redis://127.0.0.1:{port}/0"
        runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
        rng = random.Random(7)
        for r in range(args.rounds):
            order = list(VARIANTS)
            rng.shuffle(order)
            for variant in order:
                runs[variant].append(measure(args.app, variant, args.requests, url))
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    finally:
        redis.kill()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    med = {v: median(runs[v]) for v in VARIANTS}
    print(f"app {args.app}, {args.rounds} rounds x {args.requests} requests, CPU us/request:")
    for v in VARIANTS:
        spread = sorted(runs[v])
        q1, q3 = spread[len(spread) // 4], spread[(3 * len(spread)) // 4]
        print(f"  {v:<12} median {med[v]:7.2f}  (quartiles {q1:.2f} .. {q3:.2f})")
    print(f"  fleet adds       {med['fd_fleet'] - med['fd_full']:+.2f} us (no traceparent)")
    print(f"  fleet adds       {med['fd_fleet+tp'] - med['fd_full+tp']:+.2f} us (traceparent)")
    print(f"  traceparent adds {med['fd_full+tp'] - med['fd_full']:+.2f} us (no fleet)")
    result = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/bench_fleet.py"]),
        "args": {"rounds": args.rounds, "requests": args.requests, "app": args.app},
        "python": sys.version.split()[0],
        "median_cpu_us": med,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
