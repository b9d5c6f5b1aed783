"""End-to-end HTTP overhead benchmark: flightdeck vs bare and vs its peers.

Load: uvicorn (one worker, ``--no-access-log --http httptools``, ``--loop asyncio`` and
``--loop uvloop``) pinned to CPU 0 with ``taskset``; ``wrk`` pinned to CPU 1, 32
connections, bounded runs. For each loop and app, one server per variant runs (idle ones
cost nothing) and the variants are hit in shuffled order, round after round.

In-process: a driver calls the ASGI app directly (no sockets), 32 requests in flight, each
request its own task as a server would make it, and reports CPU microseconds per request
(``time.process_time``, so flightdeck's background thread counts), median of shuffled
rounds, on a fresh event loop and a fresh middleware instance per run.

Outputs: a markdown table, ``benchmarks/results/bench_http.json`` and ``bench_http.png``.
Run: ``.venv/bin/python benchmarks/bench_http.py [--quick]`` (``make bench-http``);
``--profile`` profiles the full variant on the three-await route in-process (cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import apps as bench_apps
from _common import HERE, RESULTS, ROOT, header, machine, median, write_json

LOOPS = ("asyncio", "uvloop")
LABELS = {
    "bare": "bare",
    "fd_mw": "flightdeck middleware",
    "fd_full": "flightdeck full",
    "otel": "OpenTelemetry ASGI",
    "sentry": "Sentry ASGI",
}
#: What the checks compare against (the overhead targets in benchmarks/README.md): the
#: three-await route's added in-process CPU per loop, wrk's full / bare on it and on FastAPI,
#: the middleware alone under wrk, full's p99 against bare's, OpenTelemetry's added CPU
#: against full flightdeck's.
TARGETS: dict[str, Any] = {
    "inprocess_added_us_steps": {"asyncio": 4.0, "uvloop": 5.0},
    "full_ratio_steps": 0.90,
    "full_ratio_fastapi": 0.98,
    "mw_ratio": 0.95,
    "p99_factor": 1.15,
    "otel_factor": 30.0,
}


# -- environment ------------------------------------------------------------------------------
def available_variants(wanted: list[str]) -> list[str]:
    out = []
    for v in wanted:
        try:
            if v == "otel":
                import opentelemetry.instrumentation.asgi
                import opentelemetry.sdk.trace  # noqa: F401
            elif v == "sentry":
                import sentry_sdk  # noqa: F401
        except ImportError as exc:
            print(f"   SKIP variant {v}: {exc} (install the 'bench' extra: make bench-http)")
            continue
        out.append(v)
    return out


def available_loops(wanted: list[str]) -> list[str]:
    out = []
    for lp in wanted:
        if lp == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                print("   SKIP loop uvloop: not installed")
                continue
        out.append(lp)
    return out


def taskset(cpu: int) -> list[str]:
    exe = shutil.which("taskset")
    return [exe, "-c", str(cpu)] if exe else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- load runs --------------------------------------------------------------------------------
class Server:
    def __init__(self, app: str, variant: str, loop: str) -> None:
        self.app, self.variant, self.loop = app, variant, loop
        self.port = free_port()
        self.cmd = [
            *taskset(0),
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(HERE),
            "--factory",
            "apps:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--no-access-log",
            "--http",
            "httptools",
            "--loop",
            loop,
            "--log-level",
            "warning",
        ]
        self.env = dict(os.environ, BENCH_APP=app, BENCH_VARIANT=variant)
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), self.env.get("PYTHONPATH", "")])
        self.log = RESULTS / f".server-{app}-{variant}-{loop}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{bench_apps.PATHS[self.app]}"

    def command(self) -> str:
        env = f"BENCH_APP={self.app} BENCH_VARIANT={self.variant} "
        return env + " ".join(shlex.quote(c) for c in self.cmd)

    def start(self, timeout: float = 30.0) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log}\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not answer within {timeout} s: {self.command()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        try:
            self.log.unlink()
        except OSError:
            pass


def wrk_cmd(url: str, duration: float, connections: int = 32) -> list[str]:
    return [
        *taskset(1),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",  # wrk takes whole seconds only
        "--timeout",
        "5s",
        "--latency",
        url,
    ]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": _ms(p50.group(1)) if p50 else float("nan"),
        "p99_ms": _ms(p99.group(1)) if p99 else float("nan"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


def run_wrk(url: str, duration: float) -> dict[str, Any]:
    out = subprocess.run(
        wrk_cmd(url, duration), capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    return parse_wrk(out)


def load_bench(
    loops: list[str],
    app_names: list[str],
    variants: list[str],
    rounds: int,
    dur: float,
    warm: float,
) -> tuple[dict[str, Any], list[str]]:
    rng = random.Random(7)
    results: dict[str, Any] = {}
    commands: list[str] = []
    for lp in loops:
        for app in app_names:
            servers = {v: Server(app, v, lp) for v in variants}
            try:
                for s in servers.values():
                    s.start()
                cmd = (
                    servers["bare"]
                    .command()
                    .replace(f"--port {servers['bare'].port}", "--port PORT")
                )
                cmd = cmd.replace("BENCH_APP=" + app, "BENCH_APP=<app>")
                cmd = cmd.replace("BENCH_VARIANT=bare", "BENCH_VARIANT=<variant>")
                if cmd not in commands:
                    commands.append(cmd)
                for s in servers.values():
                    run_wrk(s.url, warm)
                runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
                for _ in range(rounds):
                    order = list(variants)
                    rng.shuffle(order)
                    for v in order:
                        runs[v].append(run_wrk(servers[v].url, dur))
            finally:
                for s in servers.values():
                    s.stop()
            bare_rps = [r["rps"] for r in runs["bare"]]
            entry: dict[str, Any] = {}
            for v in variants:
                rps = [r["rps"] for r in runs[v]]
                entry[v] = {
                    "rps": median(rps),
                    "ratio": median([x / b for x, b in zip(rps, bare_rps, strict=True)]),
                    "p50_ms": median([r["p50_ms"] for r in runs[v]]),
                    "p99_ms": median([r["p99_ms"] for r in runs[v]]),
                    "non2xx": sum(r["non2xx"] for r in runs[v]),
                    "socket_errors": [r["socket_errors"] for r in runs[v] if r["socket_errors"]],
                    "runs": runs[v],
                }
            results.setdefault(lp, {})[app] = entry
            print(
                f"   load {lp}/{app}: " + ", ".join(f"{v} {entry[v]['rps']:.0f}" for v in variants)
            )
    commands.append(" ".join(shlex.quote(c) for c in wrk_cmd("http://127.0.0.1:PORT/PATH", dur)))
    return results, commands


# -- in-process driver ------------------------------------------------------------------------
def _scope(path_qs: str, i: int) -> dict[str, Any]:
    path, _, qs = path_qs.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 40000 + i % 20000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": qs.encode(),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
        "state": {},
    }


async def drive(app: Any, path: str, n: int, inflight: int = 32) -> int:
    """``n`` requests, ``inflight`` at a time, each its own task; returns non-200 count."""
    loop = asyncio.get_running_loop()
    bad = 0

    async def one(i: int) -> None:
        nonlocal bad
        done = asyncio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal bad
            t = message["type"]
            if t == "http.response.start":
                if message["status"] != 200:
                    bad += 1
            elif t == "http.response.body" and not message.get("more_body", False):
                done.set()

        await app(_scope(path, i), receive, send)

    async def worker(k: int, start: int) -> None:
        for j in range(k):
            await loop.create_task(one(start + j))

    per = n // inflight
    await asyncio.gather(*(worker(per, w * per) for w in range(inflight)))
    return bad


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def measure_inprocess(loop_kind: str, app_name: str, variant: str, n: int) -> dict[str, float]:
    app = bench_apps.wrap(bench_apps.make_app(app_name), variant)
    path = bench_apps.PATHS[app_name]
    loop = _new_loop(loop_kind)

    async def main() -> dict[str, float]:
        await drive(app, path, max(64, n // 5))  # warm up (and start flightdeck)
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        bad = await drive(app, path, n)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        return {"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6, "bad": float(bad)}

    try:
        return loop.run_until_complete(main())
    finally:
        close = getattr(app, "close", None)
        if variant.startswith("fd_") and close is not None:
            close()
        loop.close()


def inprocess_worker(args: argparse.Namespace) -> None:
    """Runs in a child process pinned to CPU 0; prints one JSON document."""
    rng = random.Random(11)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        a: {v: [] for v in args.variants} for a in args.apps
    }
    for _ in range(args.rounds):
        order = [(a, v) for a in args.apps for v in args.variants]
        rng.shuffle(order)
        for a, v in order:
            # The FastAPI route is ~20x slower: fewer requests keep the rounds balanced.
            n = args.requests // 4 if a == "fastapi" else args.requests
            runs[a][v].append(measure_inprocess(args.loop, a, v, n))
    print(json.dumps(runs))


def inprocess_bench(
    loops: list[str], app_names: list[str], variants: list[str], rounds: int, n: int
) -> tuple[dict[str, Any], list[str]]:
    results: dict[str, Any] = {}
    commands = []
    for lp in loops:
        cmd = [
            *taskset(0),
            sys.executable,
            str(Path(__file__).resolve()),
            "--inprocess-worker",
            "--loop",
            lp,
            "--rounds",
            str(rounds),
            "--requests",
            str(n),
            "--apps",
            *app_names,
            "--variants",
            *variants,
        ]
        commands.append(" ".join(shlex.quote(c) for c in cmd))
        env = dict(os.environ, FLIGHTDECK_ENDPOINT="/debug/flight")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"in-process worker failed:\n{proc.stderr[-3000:]}")
        runs = json.loads(proc.stdout.strip().splitlines()[-1])
        entry: dict[str, Any] = {}
        for a in app_names:
            base = median([r["cpu_us"] for r in runs[a]["bare"]])
            entry[a] = {}
            for v in variants:
                cpu = median([r["cpu_us"] for r in runs[a][v]])
                entry[a][v] = {
                    "cpu_us": cpu,
                    "added_us": cpu - base,
                    "bad": sum(r["bad"] for r in runs[a][v]),
                    "runs": [r["cpu_us"] for r in runs[a][v]],
                }
        results[lp] = entry
        print(
            f"   in-process {lp}: "
            + "; ".join(
                f"{a} " + ", ".join(f"{v} {entry[a][v]['cpu_us']:.1f}" for v in variants)
                for a in app_names
            )
        )
    return results, commands


# -- profile ----------------------------------------------------------------------------------
def profile(loop_kind: str, n: int, variant: str = "fd_full", app_name: str = "steps") -> None:
    import cProfile
    import pstats

    app = bench_apps.wrap(bench_apps.make_app(app_name), variant)
    path = bench_apps.PATHS[app_name]
    loop = _new_loop(loop_kind)
    prof = cProfile.Profile()

    async def main() -> None:
        await drive(app, path, 2000)
        gc.collect()
        prof.enable()
        await drive(app, path, n)
        prof.disable()

    try:
        loop.run_until_complete(main())
    finally:
        close = getattr(app, "close", None)
        if variant.startswith("fd_") and close is not None:
            close()
        loop.close()
    stats = pstats.Stats(prof)
    print(f"\n== cProfile: {variant} on /{app_name}, {loop_kind}, {n} requests")
    print(f"   {'tottime us/req':>14} {'cum us/req':>11} {'calls/req':>9}  function")
    rows = []
    for (file, lineno, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            (
                tt,
                ct,
                nc,
                f"{os.path.relpath(file, ROOT) if file.startswith('/') else file}:{lineno}({func})",
            )
        )
    rows.sort(reverse=True)
    for tt, ct, nc, name in rows[:30]:
        print(f"   {tt / n * 1e6:14.2f} {ct / n * 1e6:11.2f} {nc / n:9.2f}  {name}")
    ours = [r for r in rows if "flightdeck" in r[3]]
    print("\n   flightdeck functions only (by tottime):")
    for tt, ct, nc, name in ours[:20]:
        print(f"   {tt / n * 1e6:14.2f} {ct / n * 1e6:11.2f} {nc / n:9.2f}  {name}")


# -- report -----------------------------------------------------------------------------------
def table(load: dict[str, Any], inproc: dict[str, Any], variants: list[str]) -> str:
    out = [
        "| loop | app | variant | req/s | ratio | p50 ms | p99 ms | p99/bare | CPU us | added |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    loops = list(dict.fromkeys([*load.keys(), *inproc.keys()]))
    for lp in loops:
        app_names = list(dict.fromkeys([*load.get(lp, {}).keys(), *inproc.get(lp, {}).keys()]))
        for a in app_names:
            for v in variants:
                ld = load.get(lp, {}).get(a, {}).get(v)
                ip = inproc.get(lp, {}).get(a, {}).get(v)
                bare_p99 = load.get(lp, {}).get(a, {}).get("bare", {}).get("p99_ms")
                cells = [lp, a, LABELS[v]]
                if ld:
                    p99f = ld["p99_ms"] / bare_p99 if bare_p99 else float("nan")
                    cells += [
                        f"{ld['rps']:,.0f}",
                        f"{ld['ratio']:.3f}",
                        f"{ld['p50_ms']:.2f}",
                        f"{ld['p99_ms']:.2f}",
                        f"{p99f:.2f}",
                    ]
                else:
                    cells += ["-"] * 5
                if ip:
                    cells += [f"{ip['cpu_us']:.1f}", f"{ip['added_us']:+.1f}"]
                else:
                    cells += ["-", "-"]
                out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def verdicts(load: dict[str, Any], inproc: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float, target: str, ok: bool) -> None:
        checks.append({"check": name, "value": value, "target": target, "ok": bool(ok)})

    added_max: dict[str, float] = TARGETS["inprocess_added_us_steps"]
    otel = float(TARGETS["otel_factor"])
    for lp, apps_ in inproc.items():
        s = apps_.get("steps", {})
        if "fd_full" in s:
            limit = added_max.get(lp, min(added_max.values()))
            add(
                f"{lp} in-process full added us/req (steps)",
                s["fd_full"]["added_us"],
                f"<= {limit:g}",
                s["fd_full"]["added_us"] <= limit,
            )
            if "otel" in s and s["fd_full"]["added_us"] > 0:
                f = s["otel"]["added_us"] / s["fd_full"]["added_us"]
                add(f"{lp} OTel added / full added (steps)", f, f">= {otel:g}x", f >= otel)
    p99_max = float(TARGETS["p99_factor"])
    mw_min = float(TARGETS["mw_ratio"])
    for lp, apps_ in load.items():
        for a, e in apps_.items():
            bare_p99 = e["bare"]["p99_ms"]
            if "fd_full" in e:
                if a in ("steps", "fastapi"):
                    tgt = float(TARGETS[f"full_ratio_{a}"])
                    add(
                        f"{lp} load full ratio ({a})",
                        e["fd_full"]["ratio"],
                        f">= {tgt:g}",
                        e["fd_full"]["ratio"] >= tgt,
                    )
                p99f = e["fd_full"]["p99_ms"] / bare_p99
                add(f"{lp} load full p99/bare ({a})", p99f, f"<= {p99_max:g}", p99f <= p99_max)
            if "fd_mw" in e:
                add(
                    f"{lp} load middleware ratio ({a})",
                    e["fd_mw"]["ratio"],
                    f">= {mw_min:g}",
                    e["fd_mw"]["ratio"] >= mw_min,
                )
    return checks


def chart(load: dict[str, Any], inproc: dict[str, Any], variants: list[str], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("   matplotlib is not installed: no chart (install the 'bench' extra)")
        return False
    panels = [(lp, "load") for lp in load] + [(lp, "inproc") for lp in inproc]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    others = [v for v in variants if v != "bare"]
    width = 0.8 / max(1, len(others))
    for ax, (lp, kind) in zip(axes[0], panels, strict=True):
        data = load[lp] if kind == "load" else inproc[lp]
        app_names = list(data.keys())
        for i, v in enumerate(others):
            if kind == "load":
                vals = [data[a][v]["ratio"] for a in app_names]
            else:
                vals = [data[a]["bare"]["cpu_us"] / data[a][v]["cpu_us"] for a in app_names]
            xs = [j + (i - (len(others) - 1) / 2) * width for j in range(len(app_names))]
            ax.bar(xs, vals, width, label=LABELS[v])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(float(TARGETS["full_ratio_steps"]), color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(app_names)), app_names)
        ax.set_ylim(0, 1.1)
        what = (
            "req/s ratio to bare (wrk)" if kind == "load" else "bare CPU / variant CPU (in-process)"
        )
        ax.set_title(f"{lp}: {what}", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"flightdeck overhead vs bare and peers ({machine()['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (< 3 min)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per server")
    parser.add_argument("--requests", type=int, help="requests per in-process run")
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    # wrk sends GETs: the routes with a body are for bench_instr.py.
    get_apps = [a for a in bench_apps.APPS if a not in bench_apps.BODIES]
    parser.add_argument(
        "--apps", nargs="+", default=["hello", "steps", "fastapi"], choices=get_apps
    )
    parser.add_argument(
        "--variants", nargs="+", default=list(bench_apps.VARIANTS), choices=bench_apps.VARIANTS
    )
    parser.add_argument("--no-load", action="store_true", help="skip the wrk runs")
    parser.add_argument("--no-inprocess", action="store_true", help="skip the in-process driver")
    parser.add_argument("--profile", action="store_true", help="cProfile the full variant")
    parser.add_argument("--inprocess-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", choices=LOOPS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.inprocess_worker:
        inprocess_worker(args)
        return
    if args.profile:
        for lp in available_loops(args.loops):
            profile(lp, args.requests or 20000)
        return

    rounds = args.rounds or 3
    dur = args.duration or (1.0 if args.quick else 5.0)
    warm = args.warmup or (1.0 if args.quick else 2.0)
    n = args.requests or (3000 if args.quick else 8000)
    if "bare" not in args.variants:
        args.variants.insert(0, "bare")
    header("bench_http: end-to-end overhead vs bare and peers")
    variants = available_variants(args.variants)
    loops = available_loops(args.loops)
    if not taskset(0):
        print("   taskset not found (util-linux): server and load generator are NOT pinned")
    load: dict[str, Any] = {}
    commands: list[str] = []
    t0 = time.perf_counter()
    if not args.no_load:
        if shutil.which("wrk") is None:
            print("   SKIP load runs: wrk not found (Debian/Ubuntu: apt-get install wrk)")
        else:
            print(f"   load: {rounds} shuffled rounds x {dur:g} s per variant, {warm:g} s warm-up")
            load, cmds = load_bench(loops, args.apps, variants, rounds, dur, warm)
            commands += cmds
    inproc: dict[str, Any] = {}
    if not args.no_inprocess:
        ip_rounds = rounds + (1 if args.quick else 2)
        print(f"   in-process: {ip_rounds} shuffled rounds x {n} requests, 32 in flight")
        inproc, cmds = inprocess_bench(loops, args.apps, variants, ip_rounds, n)
        commands += cmds
    elapsed = time.perf_counter() - t0

    print()
    md = table(load, inproc, variants)
    print(md)
    checks = verdicts(load, inproc)
    print()
    for c in checks:
        mark = "PASS" if c["ok"] else "MISS"
        print(f"   {c['check']:<48} {c['value']:8.3f}  target {c['target']:<8} {mark}")
    png = RESULTS / "bench_http.png"
    has_chart = chart(load, inproc, variants, png)
    data = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "elapsed_s": elapsed,
        "settings": {"rounds": rounds, "duration_s": dur, "warmup_s": warm, "requests": n},
        "variants": variants,
        "load": load,
        "inprocess": inproc,
        "checks": checks,
        "targets": TARGETS,
        "table_markdown": md,
        "commands": commands,
    }
    path = write_json("bench_http.json", data)
    print(f"\n   results: {path}" + (f", chart: {png}" if has_chart else ""))
    print(f"   elapsed {elapsed:.0f} s. Commands:")
    for c in commands:
        print(f"     {c}")


if __name__ == "__main__":
    main()
