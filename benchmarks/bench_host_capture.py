"""A capture of one worker against a capture of all of them (scope ``host``), under load.

``uvicorn --workers 4`` serves the benchmark app (``apps.py``, the fan-out route ``gather``,
flightdeck's defaults) on one snapshot directory; ``wrk`` loads it for ``--fill`` seconds so
that each worker's window (and so its window file) fills, then keeps loading it while
``POST /debug/flight/snapshots`` (scope ``process``) and ``...?scope=host`` are taken in
turn, ``--gap`` seconds apart. Reported per scope: the POST's answer time (the capture,
trigger to stored: for ``host``, the other workers' window files copied in too) and the
stored size (the listing's ``size``), medians over ``--rounds``; and the processes a host
capture holds. The automatic triggers are off (their captures would answer 409).

Command: .venv/bin/python benchmarks/bench_host_capture.py [--rounds 3] [--fill 20]
    [--gap 3] [--core native|python]
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
from bench_http import free_port

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
    parser.add_argument("--gap", type=float, default=3.0)
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
        total = args.fill + args.rounds * 2 * args.gap + 30
        wrk_cmd = ["wrk", "-t2", "-c32", f"-d{int(total)}s", f"{base}/gather"]
        wrk = subprocess.Popen(wrk_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(args.fill)
        sizes = {}
        for path in windows.glob("*.fdk"):  # written, not reserved: up to the last chunk
            fd = os.open(path, os.O_RDONLY)
            try:
                sizes[path.name] = host.read_window(fd)[1]
            finally:
                os.close(fd)
        results: dict[str, dict[str, list[float]]] = {}
        held: list[int] = []
        for _ in range(args.rounds):
            for scope in ("process", "host"):
                query = "?scope=host" if scope == "host" else ""
                status, body, took = _post(f"{base}/debug/flight/snapshots{query}")
                if status != 201:
                    print(f"{scope}: POST answered {status}; skipped")
                    time.sleep(args.gap)
                    continue
                listing = _get(f"{base}/debug/flight/snapshots")
                entry = next(s for s in listing if s["id"] == body["id"])
                bucket = results.setdefault(scope, {"ms": [], "mib": []})
                bucket["ms"].append(took * 1e3)
                bucket["mib"].append(entry["size"] / (1 << 20))
                if scope == "host":
                    held.append(len([p for p in body["processes"] if "error" not in p]))
                time.sleep(args.gap)
        print(f"# {command_line()}")
        print(
            f"core {args.core}, {WORKERS} workers, wrk -t2 -c32 on /gather, {args.fill:.0f} s fill"
        )
        written = ", ".join(f"{s / (1 << 20):.1f} MiB" for s in sizes.values())
        print(f"window files (written part) after the fill: {written}")
        for scope, got in results.items():
            ms, mib = got["ms"], got["mib"]
            print(
                f"scope {scope:<7}  capture (POST answer) median {median(ms):7.1f} ms"
                f" (all: {', '.join(f'{v:.0f}' for v in ms)})  stored {median(mib):6.2f} MiB"
            )
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
