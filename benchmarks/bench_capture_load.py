"""The app while a capture is taken: throughput and p99 under load, with and without one.

A real server (uvicorn, one worker, ``--http httptools``, pinned to CPU 0) runs a benchmark
app with flightdeck's defaults (``apps.py``, variant ``fd_full``; by default the fan-out
route ``gather``: three child tasks per request); ``wrk`` (pinned to CPU 1, 32 connections)
loads it until the default window is full: its byte bound (16 MiB) or its age bound (the
``window`` seconds) has pushed events out (``/debug/flight/status``), whichever comes first at
the app's rate. Then, each round: 5 s of load during which one manual capture is taken,
``POST /debug/flight/snapshots`` one second in (what the "capture now" button does), then 5 s
of load without ("steady"); the first round starts with a steady run too. Reported per loop:
the medians over the rounds of the capturing run's throughput against the steady run's
before it, and of its p99 against that steady p99, and the same against the mean of the
steady runs on both sides (which cancels a drift of the machine's speed: other work on a
shared box); the POST's answer time (the capture, trigger to stored) and the window then.
Also the server process's CPU time in each run (``/proc/<pid>/stat``; CPU time is not
taken by other work on the box, wall-clock throughput is): what the capture cost the app is
the capturing run's CPU less its requests at the steady runs' CPU per request, and on a
saturated core the throughput it would take is that over the run's length.
The automatic triggers are off (``FLIGHTDECK_SLOW_REQUEST=off``, ``FLIGHTDECK_LOOP_BLOCKED=off``):
on a loaded box a slow request would start a capture of its own, and the manual one would
get 409.

The endpoint allows five manual captures a minute: a round that would pass that limit waits
through more steady runs first, and a round whose capture was refused anyway stays listed but
out of the medians.

Targets (the capture issue): throughput >= 0.95 of steady, p99 <= 1.25 x steady.

Command: .venv/bin/python benchmarks/bench_capture_load.py [--loops asyncio,uvloop]
    [--rounds 3] [--duration 5] [--app gather] [--core native|python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import header, line, median, write_json
from bench_http import Server, run_wrk, wrk_cmd

from flightdeck.asgi.access import MANUAL_RATE

TARGET_THROUGHPUT = 0.95
TARGET_P99 = 1.25


def process_cpu_s(pid: int) -> float:
    """User + system CPU of a process, all its threads (clock ticks, ~10 ms steps)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(server: Server, duration: float) -> dict[str, Any]:
    """A wrk run, with the server's CPU time over it."""
    assert server.proc is not None
    before = process_cpu_s(server.proc.pid)
    result = run_wrk(server.url, duration)
    result["server_cpu_s"] = process_cpu_s(server.proc.pid) - before
    result["requests"] = result["rps"] * duration
    return result


def status(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/debug/flight/status", timeout=10) as resp:
        result: dict[str, Any] = json.load(resp)
    return result


def fill(server: Server, base: str, limit_s: float) -> dict[str, Any]:
    """Load the server until its window is full (events pushed out by either bound)."""
    wrk = subprocess.Popen(
        wrk_cmd(server.url, limit_s + 5), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            rec = status(base)["recorder"]
            if rec["dropped"] > rec["overflows"] or rec["evicted"]:
                break
            time.sleep(0.5)
    finally:
        wrk.terminate()
        wrk.wait(timeout=10)
    rec = status(base)["recorder"]
    by_bytes = rec["dropped"] > rec["overflows"]
    bound = "bytes" if by_bytes else "age" if rec["evicted"] else None
    return {
        "events": rec["events"],
        "bytes": rec["bytes"],
        "full": bound is not None,
        "bound": bound,
    }


class Capture(threading.Thread):
    """``POST /debug/flight/snapshots`` after ``delay`` seconds; its status and answer time."""

    def __init__(self, base: str, delay: float) -> None:
        super().__init__(daemon=True)
        self.base, self.delay = base, delay
        self.status = 0
        self.seconds = float("nan")
        self.body: dict[str, Any] = {}

    def run(self) -> None:
        time.sleep(self.delay)
        request = urllib.request.Request(
            f"{self.base}/debug/flight/snapshots?reason=bench", method="POST", data=b""
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                self.status = resp.status
                self.body = json.load(resp)
        except urllib.error.HTTPError as exc:
            self.status = exc.code
        self.seconds = time.perf_counter() - started


def one_loop(loop: str, app: str, rounds: int, duration: float, fill_s: float) -> dict[str, Any]:
    server = Server(app, "fd_full", loop)
    server.env.update(FLIGHTDECK_SLOW_REQUEST="off", FLIGHTDECK_LOOP_BLOCKED="off")
    base = f"http://127.0.0.1:{server.port}"
    server.start()
    try:
        window = fill(server, base, fill_s)
        runs = []
        captured_at: list[float] = []
        after = measured(server, duration)
        for _ in range(rounds):
            # The endpoint allows MANUAL_RATE captures a period: past it, more steady load
            # (the next round's steady run) until the round's capture would be allowed.
            count, period = MANUAL_RATE
            while len([t for t in captured_at if time.monotonic() - t < period]) >= count:
                after = measured(server, duration)
            steady = after
            captured_at.append(time.monotonic() + 1.0)
            capture = Capture(base, 1.0)
            capture.start()
            during = measured(server, duration)
            capture.join(timeout=60)
            stored = None
            if capture.status == 201:
                ident = capture.body.get("id")
                listing = json.loads(
                    urllib.request.urlopen(f"{base}/debug/flight/snapshots", timeout=10).read()
                )
                items = listing if isinstance(listing, list) else listing.get("snapshots", [])
                stored = next((s.get("size") for s in items if s.get("id") == ident), None)
            after = measured(server, duration)
            per_request = (steady["server_cpu_s"] + after["server_cpu_s"]) / (
                steady["requests"] + after["requests"]
            )
            capture_cpu = during["server_cpu_s"] - during["requests"] * per_request
            around_rps = (steady["rps"] + after["rps"]) / 2
            around_p99 = (steady["p99_ms"] + after["p99_ms"]) / 2
            runs.append(
                {
                    "steady": steady,
                    "capturing": during,
                    "steady_after": after,
                    "throughput_ratio": during["rps"] / steady["rps"],
                    "p99_ratio": during["p99_ms"] / steady["p99_ms"],
                    "throughput_ratio_around": during["rps"] / around_rps,
                    "p99_ratio_around": during["p99_ms"] / around_p99,
                    "server_cpu_us_per_request": per_request * 1e6,
                    "capture_cpu_s": capture_cpu,
                    "capture_status": capture.status,
                    "capture_s": capture.seconds,
                    "stored_bytes": stored,
                }
            )
    finally:
        server.stop()
    # A refused capture (429, 409) measured nothing: its rounds stay listed, out of the medians.
    listed, runs = runs, [r for r in runs if r["capture_status"] == 201] or runs
    return {
        "loop": loop,
        "app": app,
        "window": window,
        "command": server.command(),
        "runs": listed,
        "throughput_ratio": median([r["throughput_ratio"] for r in runs]),
        "p99_ratio": median([r["p99_ratio"] for r in runs]),
        "throughput_ratio_around": median([r["throughput_ratio_around"] for r in runs]),
        "p99_ratio_around": median([r["p99_ratio_around"] for r in runs]),
        "steady_rps": median([r["steady"]["rps"] for r in runs]),
        "steady_p99_ms": median([r["steady"]["p99_ms"] for r in runs]),
        "capturing_rps": median([r["capturing"]["rps"] for r in runs]),
        "capturing_p99_ms": median([r["capturing"]["p99_ms"] for r in runs]),
        "capture_s": median([r["capture_s"] for r in runs]),
        "capture_cpu_s": median([r["capture_cpu_s"] for r in runs]),
        "server_cpu_us_per_request": median([r["server_cpu_us_per_request"] for r in runs]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--app", default="gather")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--fill", type=float, default=90.0, help="at most this long to fill")
    parser.add_argument("--core", choices=("native", "python"), default="native")
    args = parser.parse_args()
    os.environ.pop("FLIGHTDECK_NO_EXTENSIONS", None)
    if args.core == "python":
        os.environ["FLIGHTDECK_NO_EXTENSIONS"] = "1"
    header(f"bench_capture_load: the app while a capture is taken ({args.core} core)")
    results: dict[str, Any] = {"core": args.core, "loops": []}
    for loop in args.loops.split(","):
        r = one_loop(loop, args.app, args.rounds, args.duration, args.fill)
        results["loops"].append(r)
        w = r["window"]
        print(
            f"  {loop}: window {w['events'] / 1e3:.0f}k events, {w['bytes'] / 2**20:.1f} MiB"
            f" (full by {w['bound'] or 'neither bound: NOT full'});"
            f" steady {r['steady_rps']:.0f} req/s,"
            f" p99 {r['steady_p99_ms']:.2f} ms; capturing {r['capturing_rps']:.0f} req/s,"
            f" p99 {r['capturing_p99_ms']:.2f} ms; capture answered in {r['capture_s']:.3f} s"
            f" ({', '.join(str(x['capture_status']) for x in r['runs'])})"
        )
        print(
            line(
                f"{loop} throughput capturing / steady",
                f"{r['throughput_ratio']:.3f}",
                f">= {TARGET_THROUGHPUT}",
                r["throughput_ratio"] >= TARGET_THROUGHPUT,
            )
        )
        print(
            line(
                f"{loop} p99 capturing / steady",
                f"{r['p99_ratio']:.2f} x",
                f"<= {TARGET_P99} x",
                r["p99_ratio"] <= TARGET_P99,
            )
        )
        print(
            f"  {loop} against the steady runs on both sides: throughput"
            f" {r['throughput_ratio_around']:.3f}, p99 {r['p99_ratio_around']:.2f} x; the"
            f" capture cost the server {r['capture_cpu_s'] * 1e3:.0f} ms of CPU"
            f" ({r['server_cpu_us_per_request']:.0f} us a request steady): on a saturated core,"
            f" {1 - r['capture_cpu_s'] / args.duration:.3f} of the throughput"
        )
        for i, x in enumerate(r["runs"]):
            print(
                f"    round {i + 1}: {x['steady']['rps']:.0f} -> {x['capturing']['rps']:.0f}"
                f" -> {x['steady_after']['rps']:.0f} req/s ({x['throughput_ratio']:.3f}),"
                f" p99 {x['steady']['p99_ms']:.2f} -> {x['capturing']['p99_ms']:.2f} ->"
                f" {x['steady_after']['p99_ms']:.2f} ms ({x['p99_ratio']:.2f} x), capture"
                f" {x['capture_s']:.3f} s, {x['capture_cpu_s'] * 1e3:.0f} ms CPU,"
                f" stored {x['stored_bytes']}"
            )
    path = write_json(f"bench_capture_load_{args.core}.json", results)
    print(f"   results: {path}")


if __name__ == "__main__":
    main()
