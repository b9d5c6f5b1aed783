"""In-process ASGI driver for ``bench_instr.py``: ``N`` GET requests, 32 in flight.

Builds one app of ``apps.py`` (``steps``: three awaits; ``gather``: three child tasks
gathered; ``stream``: twenty chunks streamed; ``fastapi_body``: a POST with a pydantic body
and a dependency; ``fastapi``: a GET with 0.3 ms of CPU work; ``query``: the three-await
route called with a query string, so query redaction is on the path), wraps it per variant
(``bare``; ``middleware``: ``FlightDeck(app, instrument_loop=False)``; ``full``:
``FlightDeck(app)``; ``file``: ``full`` with a snapshot directory, so the window is kept in a
file too; ``otel``: OpenTelemetry's ASGI middleware, SDK tracer, no exporter),
triggers and endpoint off so no capture can fire, starts it as uvicorn would (lifespan
``startup``), warms up, then serves ``N`` requests, each its own task as a server would make
it. Exits non-zero if any response is not a 200. Meant to run under ``valgrind
--tool=callgrind``: the per-request cost is the difference between two ``N``.

``--time-scale S`` (``bench_instr.py`` passes it under valgrind, which runs Python about 50
x slower): every wall-clock threshold and period of the recorder is multiplied by ``S`` --
the wait and slow-step thresholds, the window's age and its generations' age, the recorder
thread's tick, the watchdog's block threshold and notable lag, the loop's guard period -- so
that a run at 1/S of native speed records what a native run records (without it, every task
of the 32 in flight "waited" past 50 ms under valgrind and none did natively, and
generations turned S times as often per request).

At the end it prints to stderr, as ``instr_driver timers: {json}``, the timer-driven work of
the measured requests (watchdog heartbeats and blocks, guard upkeeps on the loop): under
valgrind it should be a few per run, else the per-request figures carry wall-clock work.

``--events`` (not under valgrind): prints, as JSON, the events of each kind recorded per
measured request (from the window, by time), for the breakdown of ``bench_instr.py``.

Run: ``.venv/bin/python benchmarks/instr_driver.py 500 --app steps --variant full``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import apps as bench_apps
from bench_http import _new_loop, _scope

APPS = ("steps", "gather", "stream", "fastapi_body", "fastapi", "query")
VARIANTS = ("bare", "middleware", "full", "file", "otel")
#: The variants that run flightdeck (scaled clocks, closed at the end).
FLIGHTDECK_VARIANTS = ("middleware", "full", "file")
LOOPS = ("asyncio", "uvloop")
INFLIGHT = 32
#: What ``check_flightdeck`` found at the end of the measured requests.
PROBLEMS: list[str] = []
#: The query route: the three-await handler, with a query string to redact.
QUERY_PATH = "/steps?user=42&page=3&token=abc"


def scale_time(scale: float) -> None:
    """Multiply the recorder's wall-clock thresholds and periods by ``scale`` (see above)."""
    if scale == 1:
        return
    import flightdeck.asgi.middleware as middleware
    import flightdeck.instrument.gc as gc_monitor
    import flightdeck.instrument.watchdog as watchdog
    import flightdeck.snapshot.recorder as recorder
    import flightdeck.snapshot.windowfile as windowfile
    from flightdeck.core import cores

    def make_window(window_ns: int, max_bytes: int, **options: Any) -> Any:
        if cores.NativeWindow is None:
            return cores.Window(
                int(window_ns * scale), max_bytes, segment_ns=int(1e9 * scale), **options
            )
        return cores.NativeWindow(int(window_ns * scale), max_bytes, segment_ns=int(1e9 * scale))

    class Scaled(recorder.FlightRecorder):
        TICK = recorder.FlightRecorder.TICK * scale

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["wait_threshold"] = kwargs.get("wait_threshold", 0.05) * scale
            kwargs["slow_callback"] = kwargs.get("slow_callback", 0.01) * scale
            # The watchdog's threshold, which also bounds the recorder thread's tick.
            if kwargs.get("loop_blocked") is not None:
                kwargs["loop_blocked"] *= scale
            super().__init__(*args, **kwargs)

    windowfile.SCAN_INTERVAL *= scale  # the window file's scan of dead processes' files
    interval = windowfile.INTERVAL * scale  # and its writer's period

    class ScaledBox(windowfile.BlackBox):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["interval"] = interval
            super().__init__(*args, **kwargs)

    recorder.make_window = make_window  # type: ignore[assignment]
    windowfile.BlackBox = ScaledBox  # type: ignore[misc]  (recorder imports it when it starts)
    middleware.FlightRecorder = Scaled  # type: ignore[misc]
    # The loop's periods and thresholds outside the recorder's arguments: the guard that does
    # a starved recorder thread's upkeep on the loop, the lag worth recording, the refresh of
    # a block in progress. Unscaled, the guard found the (scaled) recorder thread "starved" at
    # every run and the watchdog saw blocks and lags no native run has, all at a rate set by
    # the wall clock: their cost per request then followed the machine's load.
    recorder.GUARD_INTERVAL *= scale  # type: ignore[attr-defined]
    # Likewise the GC pause worth recording: under valgrind most young collections pass 1 ms
    # and were recorded (and paid for) as no native run records them.
    gc_monitor.GC_THRESHOLD_NS = int(gc_monitor.GC_THRESHOLD_NS * scale)
    for name in ("LAG_NOTABLE_NS", "ONGOING_REFRESH_NS"):
        if hasattr(watchdog, name):
            setattr(watchdog, name, int(getattr(watchdog, name) * scale))


def build(app_name: str, variant: str) -> tuple[Any, str]:
    """The ASGI app to drive and the path (with query string) to request."""
    base = "steps" if app_name == "query" else app_name
    path = QUERY_PATH if app_name == "query" else bench_apps.PATHS[base]
    app = bench_apps.make_app(base)
    if variant == "bare":
        return app, path
    if variant == "otel":
        return bench_apps.wrap(app, "otel"), path
    from flightdeck import FlightDeck

    # No trigger and no endpoint: under valgrind a loop iteration can exceed any threshold,
    # and a capture (freeze + build thread) would swamp the per-request figure.
    off: dict[str, Any] = {
        "triggers": [],
        "slow_request": None,
        "server_errors": False,
        "loop_blocked": None,
        "endpoint": None,
        "enabled": True,  # a stray FLIGHTDECK_ENABLED=0 must not turn it into a no-op
    }
    if variant == "middleware":
        return FlightDeck(app, instrument_loop=False, **off), path
    if variant == "file":
        directory = tempfile.mkdtemp(prefix="fd-instr-")
        atexit.register(shutil.rmtree, directory, True)
        return FlightDeck(app, directory=directory, **off), path
    return FlightDeck(app, **off), path


class Lifespan:
    """The lifespan protocol as uvicorn speaks it: ``startup`` now, ``shutdown`` at the end."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}}
        scope["state"] = {}
        await self.app(scope, self.inbox.get, self.outbox.put)

    async def _step(self, what: str) -> None:
        await self.inbox.put({"type": f"lifespan.{what}"})
        reply = await self.outbox.get()
        if reply["type"] != f"lifespan.{what}.complete":
            raise SystemExit(f"lifespan {what} failed: {reply}")

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self._step("startup")

    async def shutdown(self) -> None:
        await self._step("shutdown")
        if self.task is not None:
            await self.task


#: (method, content type, body) of the app driven (GET without a body by default).
REQUEST: tuple[str, bytes, bytes] = ("GET", b"", b"")


def scope_of(path: str, i: int) -> dict[str, Any]:
    scope = _scope(path, i)
    method, ctype, body = REQUEST
    if method != "GET":
        scope["method"] = method
        scope["headers"] = [
            *scope["headers"],
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
        ]
    return scope


async def serve(app: Any, path: str, n: int, first: int = 0) -> int:
    """``n`` requests, :data:`INFLIGHT` at a time, each its own task; returns the 200s."""
    loop = asyncio.get_running_loop()
    body = REQUEST[2]
    ok = 0
    next_i = 0

    async def one(i: int) -> None:
        nonlocal ok
        done = asyncio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal ok
            t = message["type"]
            if t == "http.response.start":
                ok += message["status"] == 200
            elif t == "http.response.body" and not message.get("more_body", False):
                done.set()

        await app(scope_of(path, first + i), receive, send)

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            await loop.create_task(one(i))

    await asyncio.gather(*(worker() for _ in range(min(INFLIGHT, n))))
    return ok


def check_flightdeck(app: Any) -> list[str]:
    """Problems that would make the figures meaningless (best effort: private attributes)."""
    problems = []
    rec = getattr(app, "recorder", None)
    if rec is not None and not getattr(rec, "enabled", True):
        problems.append("the recorder is not started")
    if getattr(app, "captures", 0) or getattr(app, "capture_failures", 0):
        problems.append("a capture ran")
    errors = getattr(getattr(app, "errors", None), "counts", None)
    if errors:
        problems.append(f"internal errors {errors}")
    return problems


def count_events(app: Any, t0: int, t1: int, n: int) -> dict[str, float]:
    """Events of each kind whose first time lies in ``[t0, t1]``, per request."""
    from flightdeck.core import events as kinds

    names = {s.kind: s.name for s in kinds.SPECS.values()}
    counts: dict[str, int] = {}
    for evs in app.recorder._window.freeze().iter_segments():
        for e in evs:
            if isinstance(e[1], int) and t0 <= e[1] <= t1:
                k = names.get(e[0], str(e[0]))
                counts[k] = counts.get(k, 0) + 1
    return {k: v / n for k, v in sorted(counts.items())}


def timers(app: Any) -> dict[str, int]:
    """Counters of the recorder's timer-driven work so far (best effort: private attributes)."""
    rec = getattr(app, "recorder", None)
    if rec is None:
        return {}
    wd = getattr(rec, "_watchdog", None)
    out = {"guard_upkeeps": int(getattr(rec, "_starved", 0))}
    if wd is not None:
        out["heartbeats"] = int(getattr(wd, "_beats", 0))
        out["blocks"] = int(getattr(wd, "blocks", 0))
    return out


#: The measured requests' timer-driven work (``timers`` after minus before).
TIMERS: dict[str, int] = {}
#: Filled by ``run`` with ``--events``.
EVENTS: dict[str, float] = {}


async def run(app: Any, path: str, n: int, warmup: int, events: bool = False) -> int:
    lifespan = Lifespan(app)
    await lifespan.startup()
    fleet = getattr(app, "fleet", None)  # FLIGHTDECK_FLEET set: measure it connected
    for _ in range(3000):
        if fleet is None or fleet.client.connected:
            break
        await asyncio.sleep(0.01)
    else:
        raise SystemExit("instr_driver: the fleet did not connect to Redis")
    bad = warmup - await serve(app, path, warmup)
    before = timers(app)
    t0 = time.perf_counter_ns()
    bad += n - await serve(app, path, n, first=warmup)
    after = timers(app)
    TIMERS.update({k: after[k] - before.get(k, 0) for k in after})
    if events and hasattr(app, "recorder"):
        EVENTS.update(count_events(app, t0, time.perf_counter_ns(), n))
    # Checked before the shutdown, which stops the recording.
    PROBLEMS.extend(check_flightdeck(app) if app is not None and hasattr(app, "recorder") else [])
    await lifespan.shutdown()
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="measured requests")
    parser.add_argument("--app", choices=APPS, default="steps")
    parser.add_argument("--variant", choices=VARIANTS, default="bare")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--warmup", type=int, default=300, help="requests before the N")
    parser.add_argument("--events", action="store_true", help="print events per request")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply wall-clock thresholds (1)"
    )
    args = parser.parse_args()
    if args.time_scale <= 0:
        parser.error("--time-scale must be positive")
    if args.variant in FLIGHTDECK_VARIANTS:
        scale_time(args.time_scale)

    global REQUEST
    REQUEST = bench_apps.BODIES.get(args.app, REQUEST)
    app, path = build(args.app, args.variant)
    loop = _new_loop(args.loop)
    try:
        bad = loop.run_until_complete(run(app, path, args.n, args.warmup, args.events))
    finally:
        problems = PROBLEMS if args.variant != "bare" else []
        close = getattr(app, "close", None)
        if close is not None and args.variant != "bare":
            close()
        loop.close()
    if bad:
        sys.exit(f"instr_driver: {bad} of {args.warmup + args.n} responses were not 200")
    if problems:
        sys.exit("instr_driver: " + "; ".join(problems))
    if TIMERS:
        print(f"instr_driver timers: {json.dumps(TIMERS)}", file=sys.stderr)
    if args.events:
        print(json.dumps(EVENTS))


if __name__ == "__main__":
    main()
