"""The app while a snapshot's JSON or HTML view streams to a client, under a partial load.

A real server (uvicorn, one worker, ``--http httptools``, pinned to CPU 0) runs the benchmark
app with flightdeck's defaults (``apps.py``, variant ``fd_full``, route ``gather`` by default);
``wrk`` (pinned to CPU 1) fills its window, then measures the app's saturated throughput R.
The load of the measured runs is paced (a wrk Lua ``delay()`` per request, calibrated once)
to about ``--load`` (0.7) of R: a saturated 2-core box has no spare core for a converter, a
partially loaded one does. Each round: a fresh manual capture (its views are not cached
yet), 5 s of paced load ("steady"), then 5 s of the same load during which the snapshot's
view (``--format``, JSON by default, not gzip'd) is downloaded, starting 1 s in. Reported
per loop: medians over the rounds of the downloading run's p99 against the steady run's,
of its throughput against steady's, the download's time and size, and the server process's
RSS (``/proc/<pid>/status`` VmRSS sampled every 20 ms; the converter is a child process and
not counted: it is what keeps the app's memory flat): the peak during the download less the
steady run's median.

Targets (the capture issue): p99 <= 1.25 x steady, RSS + 8 MiB at most.

Command: .venv/bin/python benchmarks/bench_download_load.py [--loops asyncio,uvloop]
    [--rounds 3] [--duration 5] [--load 0.7] [--format json|html] [--store memory|directory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import header, line, median, write_json
from bench_capture_load import fill, status
from bench_http import Server, parse_wrk, run_wrk, taskset

TARGET_P99 = 1.25
TARGET_RSS_MIB = 8.0
CONNECTIONS = 16


def paced_wrk(url: str, duration: float, delay_ms: float) -> dict[str, Any]:
    """wrk with every request ``delay_ms`` after the previous answer on its connection."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"function delay()\n  return {max(0.0, delay_ms):.3f}\nend\n")
    try:
        cmd = [*taskset(1), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(duration))}s"]
        cmd += ["--timeout", "5s", "--latency", "-s", script.name, url]
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 30, check=True
        ).stdout
    finally:
        os.unlink(script.name)
    return parse_wrk(out)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append(rss_mib(self.pid))
            except OSError:
                return
            self.stop.wait(0.02)


class Download(threading.Thread):
    """GET one view of snapshot ``ident`` after ``delay`` seconds; its status, size, time."""

    def __init__(self, base: str, ident: str, fmt: str, delay: float) -> None:
        super().__init__(daemon=True)
        self.url = f"{base}/debug/flight/snapshots/{ident}?format={fmt}"
        self.delay = delay
        self.status = 0
        self.size = 0
        self.seconds = float("nan")
        self.started = self.ended = float("nan")

    def run(self) -> None:
        time.sleep(self.delay)
        self.started = time.perf_counter()
        request = urllib.request.Request(self.url, headers={"Accept-Encoding": "identity"})
        try:
            with urllib.request.urlopen(request, timeout=180) as resp:
                self.status = resp.status
                while chunk := resp.read(1 << 16):
                    self.size += len(chunk)
        except urllib.error.HTTPError as exc:
            self.status = exc.code
        self.ended = time.perf_counter()
        self.seconds = self.ended - self.started


def capture(base: str) -> str:
    request = urllib.request.Request(
        f"{base}/debug/flight/snapshots?reason=bench", method="POST", data=b""
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        return str(json.load(resp)["id"])


def measured(server: Server, duration: float, delay_ms: float) -> tuple[dict[str, Any], RssSampler]:
    assert server.proc is not None
    sampler = RssSampler(server.proc.pid)
    sampler.start()
    try:
        result = paced_wrk(server.url, duration, delay_ms)
    finally:
        sampler.stop.set()
        sampler.join()
    return result, sampler


def calibrate(server: Server, target_rps: float) -> float:
    """The per-request delay that paces CONNECTIONS connections to about ``target_rps``."""
    delay = max(0.0, CONNECTIONS / target_rps * 1e3 - 1.0)
    for _ in range(3):
        got = paced_wrk(server.url, 3, delay)["rps"]
        if abs(got / target_rps - 1) < 0.05:
            break
        # rate = C / (delay + latency): keep the latency, scale the cycle
        cycle = CONNECTIONS / got * 1e3
        delay = max(0.0, delay + (cycle * got / target_rps - cycle))
    return delay


def one_loop(
    loop: str, app: str, rounds: int, duration: float, load: float, fmt: str, store: str
) -> dict[str, Any]:
    server = Server(app, "fd_full", loop)
    server.env.update(FLIGHTDECK_SLOW_REQUEST="off", FLIGHTDECK_LOOP_BLOCKED="off")
    tmp = None
    if store == "directory":
        tmp = tempfile.TemporaryDirectory(prefix="fd-bench-")
        server.env["FLIGHTDECK_DIR"] = tmp.name
    base = f"http://127.0.0.1:{server.port}"
    server.start()
    try:
        window = fill(server, base, 90.0)
        saturated = run_wrk(server.url, duration)["rps"]
        delay_ms = calibrate(server, load * saturated)
        runs = []
        for _ in range(rounds):
            ident = capture(base)
            steady, steady_rss = measured(server, duration, delay_ms)
            download = Download(base, ident, fmt, 1.0)
            download.start()
            during, during_rss = measured(server, duration, delay_ms)
            download.join(timeout=180)
            base_rss = statistics.median(steady_rss.samples)
            runs.append(
                {
                    "steady": steady,
                    "downloading": during,
                    "p99_ratio": during["p99_ms"] / steady["p99_ms"],
                    "throughput_ratio": during["rps"] / steady["rps"],
                    "download_status": download.status,
                    "download_bytes": download.size,
                    "download_s": download.seconds,
                    "download_within_run": download.seconds <= duration - 1.0,
                    "steady_rss_mib": base_rss,
                    "rss_peak_added_mib": max(during_rss.samples) - base_rss,
                }
            )
        stats = status(base)
    finally:
        server.stop()
        if tmp is not None:
            tmp.cleanup()
    return {
        "loop": loop,
        "app": app,
        "format": fmt,
        "store": store,
        "window": window,
        "saturated_rps": saturated,
        "load": load,
        "delay_ms": delay_ms,
        "command": server.command(),
        "runs": runs,
        "views": stats.get("views"),
        "p99_ratio": median([r["p99_ratio"] for r in runs]),
        "throughput_ratio": median([r["throughput_ratio"] for r in runs]),
        "steady_rps": median([r["steady"]["rps"] for r in runs]),
        "steady_p99_ms": median([r["steady"]["p99_ms"] for r in runs]),
        "downloading_p99_ms": median([r["downloading"]["p99_ms"] for r in runs]),
        "download_s": median([r["download_s"] for r in runs]),
        "rss_peak_added_mib": median([r["rss_peak_added_mib"] for r in runs]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--app", default="gather")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--load", type=float, default=0.7, help="of the saturated throughput")
    parser.add_argument("--format", default="json", choices=("json", "html", "perfetto"))
    parser.add_argument("--store", default="memory", choices=("memory", "directory"))
    parser.add_argument("--output", default="bench_download_load.json")
    args = parser.parse_args()
    header("a view downloading under a partial load")
    results = {}
    for loop in args.loops.split(","):
        r = one_loop(loop, args.app, args.rounds, args.duration, args.load, args.format, args.store)
        results[loop] = r
        statuses = sorted({x["download_status"] for x in r["runs"]})
        print(
            f"{loop}: saturated {r['saturated_rps']:.0f} req/s, paced to "
            f"{r['steady_rps']:.0f} ({r['steady_rps'] / r['saturated_rps']:.2f}); "
            f"download {r['format']} {statuses} "
            f"{median([x['download_bytes'] for x in r['runs']]) / 2**20:.1f} MiB in "
            f"{r['download_s']:.2f} s"
        )
        p99 = (
            f"{r['steady_p99_ms']:.2f} -> {r['downloading_p99_ms']:.2f} ms, {r['p99_ratio']:.2f} x"
        )
        print(
            line("p99 while downloading", p99, f"<= {TARGET_P99} x", r["p99_ratio"] <= TARGET_P99)
        )
        print(line("throughput while downloading", f"{r['throughput_ratio']:.3f}", "-", None))
        rss = r["rss_peak_added_mib"]
        print(
            line(
                "app RSS peak added",
                f"+{rss:.1f} MiB",
                f"<= {TARGET_RSS_MIB} MiB",
                rss <= TARGET_RSS_MIB,
            )
        )
    write_json(args.output, results)


if __name__ == "__main__":
    main()
