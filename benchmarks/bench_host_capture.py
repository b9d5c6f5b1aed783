"""A capture of one worker against a capture of all of them (scope ``host``), under load.

``uvicorn --workers 4`` serves the benchmark app (``apps.py``, the fan-out route ``gather``,
flightdeck's defaults) on one snapshot directory; ``wrk`` loads it for ``--fill`` seconds so
that each worker's window (and so its window file) fills. Then, each round, three runs of
``--duration`` seconds of load: steady, one with ``POST /debug/flight/snapshots`` (scope
``process``) one second in, one with ``...?scope=host`` one second in. Reported per run
kind, medians over ``--rounds``: throughput and p99 (wrk), the POST's answer time (the
capture, trigger to stored: for ``host``, the other workers' window files copied in too)
and the stored size (the listing's ``size``); and the processes a host capture holds. The
automatic triggers are off (their captures would answer 409).

Command: .venv/bin/python benchmarks/bench_host_capture.py [--rounds 3] [--fill 20]
    [--duration 5] [--core native|python]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import HERE, ROOT, command_line, median
from bench_http import free_port, parse_wrk, wrk_cmd

from flightdeck.snapshot import host

WORKERS = 4


def _post(url: str) -> tuple[int, dict[str, Any], float]:
    request = urllib.request.Request(url, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    t0 = time.perf_counter()
    try:
        with opener.open(request, timeout=120) as answer:
            body = json.loads(answer.read())
            return answer.status, body, time.perf_counter() - t0
    except urllib.error.HTTPError as error:
        return error.code, {}, time.perf_counter() - t0


def _get(url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as answer:
        return json.loads(answer.read())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fill", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--core", choices=["native", "python"], default="native")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="bench-host-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, BENCH_APP="gather", BENCH_VARIANT="fd_full")
    env.update(
        FLIGHTDECK_DIR=str(directory / "snaps"),
        FLIGHTDECK_SLOW_REQUEST="off",
        FLIGHTDECK_LOOP_BLOCKED="off",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    if args.core == "python":
        env["FLIGHTDECK_NO_EXTENSIONS"] = "1"
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--factory"]
    cmd += ["apps:create_app", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(WORKERS), "--no-access-log", "--log-level", "warning"]
    log = open(directory / "server.log", "wb")  # noqa: SIM115 (kept open for the server)
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wrk = None
    try:
        deadline = time.monotonic() + 60
        windows = directory / "snaps" / "windows"
        while time.monotonic() < deadline:
            if windows.exists() and len(list(windows.glob("*.fdk"))) == WORKERS:
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"{WORKERS} workers did not start: {directory / 'server.log'}")
        fill = wrk_cmd(f"{base}/gather", args.fill)
        wrk = subprocess.Popen(fill, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wrk.wait(timeout=args.fill + 60)
        wrk = None
        sizes = {}
        for path in windows.glob("*.fdk"):  # written, not reserved: up to the last chunk
            fd = os.open(path, os.O_RDONLY)
            try:
                sizes[path.name] = host.read_window(fd)[1]
            finally:
                os.close(fd)
        runs: dict[str, dict[str, list[float]]] = {}
        held: list[int] = []
        for _ in range(args.rounds):
            for kind in ("steady", "process", "host"):
                load = subprocess.Popen(
                    wrk_cmd(f"{base}/gather", args.duration),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                got = runs.setdefault(kind, {"rps": [], "p99": [], "ms": [], "mib": []})
                if kind != "steady":
                    time.sleep(1.0)
                    query = "?scope=host" if kind == "host" else ""
                    status, body, took = _post(f"{base}/debug/flight/snapshots{query}")
                    if status == 201:
                        listing = _get(f"{base}/debug/flight/snapshots")
                        entry = next(s for s in listing if s["id"] == body["id"])
                        got["ms"].append(took * 1e3)
                        got["mib"].append(entry["size"] / (1 << 20))
                        if kind == "host":
                            held.append(len([p for p in body["processes"] if "error" not in p]))
                    else:
                        print(f"{kind}: POST answered {status}")
                out, _ = load.communicate(timeout=args.duration + 60)
                measured = parse_wrk(out)
                got["rps"].append(measured["rps"])
                got["p99"].append(measured["p99_ms"])
        print(f"# {command_line()}")
        print(
            f"core {args.core}, {WORKERS} workers, wrk {args.duration:.0f} s runs on /gather,"
            f" {args.fill:.0f} s fill, {args.rounds} rounds"
        )
        written = ", ".join(f"{s / (1 << 20):.1f} MiB" for s in sizes.values())
        print(f"window files (written part) after the fill: {written}")
        for kind, got in runs.items():
            line = f"{kind:<8} {median(got['rps']):8.0f} req/s  p99 {median(got['p99']):7.1f} ms"
            if got["ms"]:
                line += (
                    f"  capture {median(got['ms']):7.1f} ms"
                    f" (all: {', '.join(f'{v:.0f}' for v in got['ms'])})"
                    f"  stored {median(got['mib']):6.2f} MiB"
                )
            print(line)
        if held:
            print(f"processes held by each host capture: {held}")
    finally:
        if wrk is not None:
            wrk.terminate()
            wrk.wait(timeout=10)
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
