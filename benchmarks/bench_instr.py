"""Instruction-count overhead benchmark: flightdeck vs bare, counted by callgrind.

Each (core, loop, app, variant) runs ``instr_driver.py`` under ``valgrind --tool=callgrind``
at two request counts; instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up,
imports and warm-up cancel out. Ir is callgrind's ``totals:`` over every thread (the loop
thread and flightdeck's recorder thread); the loop thread's share is reported too. The
"throughput ratio" of the targets is bare_instr / variant_instr.

Unlike wall-clock figures these do not depend on the machine's load, with one exception: the
recorder thread wakes on a wall-clock tick, and valgrind slows everything ~50x, so its share
per request is inflated here compared with a native run.

Routes (``--apps``): ``steps`` (three awaits), ``gather`` (three child tasks, each awaiting
once, gathered), ``stream`` (twenty chunks streamed), ``fastapi_body`` (a POST with a pydantic
body and a dependency); ``fastapi`` and ``query`` on request. Variants: ``bare``,
``middleware`` (``instrument_loop=False``), ``full``, and ``otel`` (OpenTelemetry's ASGI
middleware, SDK, no exporter) with ``--otel``.

Memory layouts (``--layouts K``): where the interpreter's objects and interned names land
moves some figures by up to 0.4 % with the code unchanged (CPython's attribute cache is indexed
by the address of the attribute's name, so which lookups evict each other each request
depends on it). Each run is made K times with the environment grown by
``LAYOUT_STEP`` bytes each time (a variable, ``BENCH_INSTR_LAYOUT``); a figure is the median
run's, and the range is reported beside it. ``make bench-instr`` uses three.

The breakdown: events of each kind per request (an uninstrumented run of the driver with
``--events``), and the loop thread's inclusive cost per request of flightdeck's native
functions, by what they pay for (``callgrind_annotate``, same two-count difference).

Outputs: markdown tables and ``benchmarks/results/bench_instr.json``.
Run: ``.venv/bin/python benchmarks/bench_instr.py [--quick]`` (``make bench-instr``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HERE, ROOT, command_line, header, machine, verdict, write_json

APPS = ("steps", "gather", "stream", "fastapi_body", "fastapi", "query")
DEFAULT_APPS = ("steps", "gather", "stream", "fastapi_body")
LOOPS = ("asyncio", "uvloop")
VARIANTS = ("bare", "middleware", "full", "file", "otel")
CORES = ("native", "python")
DRIVER = HERE / "instr_driver.py"
TARGETS = {"full_asyncio": 0.93, "full_uvloop": 0.90, "full_fastapi": 0.97, "middleware": 0.95}
#: The routes whose full target is ``full_fastapi`` (heavier handlers).
HEAVY = ("fastapi", "fastapi_body")
#: The FastAPI route with 0.3 ms of CPU work costs ~15x the three-await one: fewer requests
#: keep its runs short while the difference still spans >1e9 instructions.
FASTAPI_DIVISOR = 5
#: What flightdeck's native code pays for: bucket -> its functions (callgrind's names
#: without gcc's .isra/.part/.constprop suffixes). Each function's own cost is its self
#: cost plus the CPython/libc calls it makes (allocations, clock reads, dict updates), not
#: the calls that run the application (``FOREIGN``), so the buckets add up to everything
#: flightdeck's C code costs on the loop thread; what is not listed goes to "other".
BUCKETS = {
    "step (runner, clocks, done())": (
        "Runner_vectorcall",
        "runner_run",
        "StepCall_vectorcall",
        "StepCall_dealloc",
        "stepcall_new",
        "Stamp_dealloc",
        "stamp_new",
        "step_task",
        "task_done",
        "runner_woken",
        "u64tab_get",
        "u64tab_put",
        "u64tab_del",
        "u64tab_grow",
        "fut_is_cancelled",
    ),
    "step record": ("win_step",),
    "call_soon + handle": (
        "CallSoon_vectorcall",
        "CallSoon_descr_get",
        "HandleRun_vectorcall",
        "HandleRun_descr_get",
        "call_base_wrapped",
        "call_base_step",
        "queued_at",
        "BoundCallSoon_vectorcall",
    ),
    "task create": (
        "CreateTask_vectorcall",
        "create_record",
        "creation_site",
        "task_record",
        "task_record_new",
        "enc_task_create",
        "win_task_live",
        "status_event",
    ),
    "task done": ("runner_done", "task_method", "getset_attr", "win_task_done", "enc_task_done"),
    "task wait": ("runner_wait", "chain_of", "attr_or", "frame_site"),
    "events encoded from tuples": (
        "win_append",
        "Window_append",
        "enc_event",
        "enc_value",
        "intern_str",
        "strtab_find",
        "strtab_put",
        "strtab_grow",
        "enc_str",
        "enc_generic",
        "win_open",
        "seg_new",
        "win_seal",
        "byaddr_put",
    ),
}
#: Calls out of flightdeck's C code that run the application (a task's step, the app's
#: coroutine, the server's send/receive, the base loop's methods): not flightdeck's cost.
FOREIGN = ("PyObject_Vectorcall", "PyIter_Send", "_PyObject_Call", "PyObject_Call")
NATIVE_OBJECTS = ("_native.cpython", "_casgi.cpython", "_native.so", "_casgi.so")


def target(variant: str, loop: str, app: str = "steps") -> float:
    if variant == "middleware":
        return TARGETS["middleware"]
    return TARGETS["full_fastapi"] if app in HEAVY else TARGETS[f"full_{loop}"]


def counts(app: str, quick: bool, n1: int | None, n2: int | None) -> tuple[int, int, int]:
    """(N1, N2, warm-up requests) for ``app``."""
    # 1,000 requests apart by default: by then every variant of every route has made a full
    # collection of the cyclic GC (one costs ~25k instructions for each of 1,000 requests;
    # at 300 apart, where one falls decided a ratio: benchmarks/README.md, 2026-12-06).
    a, b, warm = (100, 300, 100) if quick else (200, 1200, 100)
    a, b = n1 or a, n2 or b
    if app == "fastapi":
        return max(1, a // FASTAPI_DIVISOR), max(2, b // FASTAPI_DIVISOR), 50
    return a, b, warm


def child_env(core: str, layout: int = 0) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FLIGHTDECK_NO_EXTENSIONS", None)
    env.pop(LAYOUT_VAR, None)
    if layout:
        env[LAYOUT_VAR] = "x" * (layout * LAYOUT_STEP)
    if core == "python":
        env["FLIGHTDECK_NO_EXTENSIONS"] = "1"
    # Same hash seed every run: set iteration orders (and so the instructions) repeat.
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


#: Bytes the environment grows by from one memory layout to the next (``--layouts``): 24
#: moved the three-await middleware figure between its two modes (benchmarks/README.md).
LAYOUT_STEP = 24
LAYOUT_VAR = "BENCH_INSTR_LAYOUT"


#: ``instr_driver.py --time-scale`` under valgrind: callgrind runs this driver about 50 x
#: slower than natively, so the recorder's wall-clock thresholds and periods are stretched as
#: much (``--time-scale`` of this script; 1 measures them unscaled).
TIME_SCALE = 50.0


def command(
    out: str, n: int | str, app: str, variant: str, loop: str, warm: int | str
) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",  # one out file per thread: the loop thread's share
        f"--callgrind-out-file={out}",
        sys.executable,
        str(DRIVER),
        str(n),
        "--app",
        app,
        "--variant",
        variant,
        "--loop",
        loop,
        "--warmup",
        str(warm),
        "--time-scale",
        f"{TIME_SCALE:g}",
    ]


def shown(cmd: list[str], core: str, layout: int = 0) -> str:
    env = "FLIGHTDECK_NO_EXTENSIONS=1 " if core == "python" else ""
    if layout:
        env += f"{LAYOUT_VAR}={'x' * (layout * LAYOUT_STEP)} "
    parts = []
    for c in cmd:
        try:
            c = os.path.relpath(c, ROOT) if c.startswith("/") else c
        except ValueError:
            pass
        parts.append(shlex.quote(c))
    return f"PYTHONHASHSEED=0 {env}" + " ".join(parts)


def _base(name: str) -> str:
    """A callgrind function name without gcc's clone suffixes and recursion marks."""
    return re.sub(r"(\.(isra|part|constprop|cold)\.?\d*)+$", "", name.split("'")[0])


def parse_callgrind(path: Path) -> dict[str, int]:
    """Own cost of each of flightdeck's native functions in one callgrind out file.

    Own = self cost + calls to non-flightdeck code except ``FOREIGN`` (the application);
    calls into other flightdeck functions are counted there. Keys: function names,
    ``_casgi`` functions prefixed ``casgi:``.
    """
    rx = re.compile(r"^(c?(?:fn|ob))=(?:\((\d+)\))?\s*(.*)$")
    names: dict[str, str] = {}
    objs: dict[str, str] = {}
    own: dict[str, int] = {}
    fn = ob = cob = cfn = None
    ours_fn = False
    pending: bool = False
    with open(path) as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if not ours_fn:
                    pending, cob = False, None if pending else cob
                    continue
                parts = line.split()
                v = int(parts[1]) if len(parts) > 1 else 0
                if pending:
                    # cob= names the callee's object for this one call (else the caller's)
                    pending, callee_ob, cob = False, cob or ob or "", None
                    callee_ours = any(o in callee_ob for o in NATIVE_OBJECTS)
                    if callee_ours or _base(cfn or "").startswith(FOREIGN):
                        continue
                own[fn] = own.get(fn, 0) + v  # type: ignore[index]
                continue
            if line.startswith("calls="):
                pending = True
                continue
            m = rx.match(line)
            if not m:
                continue
            key, i, rest = m.groups()
            rest = rest.strip()
            if key in ("ob", "cob"):
                o = objs.setdefault(i, rest) if i is not None and rest else objs.get(i, rest)
                if key == "ob":
                    ob, cob = o, None
                else:
                    cob = o
                continue
            name = names.setdefault(i, rest) if i is not None and rest else names.get(i, rest)
            if key == "fn":
                ours_fn = any(o in (ob or "") for o in NATIVE_OBJECTS)
                fn = ("casgi:" if "_casgi" in (ob or "") else "") + _base(name)
                cob = None
            else:
                cfn = name
    return own


def buckets(own: dict[str, int]) -> dict[str, int]:
    """Own costs grouped as ``BUCKETS`` says, plus the request path and the rest."""
    where = {fn: b for b, fns in BUCKETS.items() for fn in fns}
    out: dict[str, int] = {b: 0 for b in BUCKETS}
    out["request (C middleware)"] = 0
    out["other native"] = 0
    for fn, v in own.items():
        if fn.startswith("casgi:"):
            out["request (C middleware)"] += v
        else:
            out[where.get(fn, "other native")] += v
    out["total"] = sum(own.values())
    return out


def read_totals(path: Path) -> int:
    """The ``totals:`` (or ``summary:``) Ir of one callgrind out file."""
    summary = None
    with open(path) as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
            if line.startswith("summary:"):
                summary = int(line.split()[1])
    if summary is None:
        raise RuntimeError(f"no totals/summary line in {path}")
    return summary


def run_one(job: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """One valgrind run; returns the job with ``ir`` (all threads) and ``ir_loop`` (thread 1)."""
    key = "-".join(str(job[k]) for k in ("core", "loop", "app", "variant", "n", "layout"))
    out = tmp / f"{key}.out"
    cmd = command(str(out), job["n"], job["app"], job["variant"], job["loop"], job["warm"])
    print(f"   $ {shown(cmd, job['core'], job['layout'])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        env=child_env(job["core"], job["layout"]),
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"failed ({proc.returncode}): {shown(cmd, job['core'], job['layout'])}\n{proc.stderr}"
        )
    # With --separate-threads the files are <out>-01 (the main, loop thread), -02, ...
    files = sorted(tmp.glob(f"{key}.out-*"))
    if not files:
        raise RuntimeError(f"no callgrind output for {key}")
    per_thread = [read_totals(p) for p in files]
    timers = {}
    for line in proc.stderr.splitlines():
        if line.startswith("instr_driver timers: "):
            timers = json.loads(line.split(": ", 1)[1])
    own = parse_callgrind(files[0]) if job["variant"] in ("middleware", "full", "file") else {}
    for p in [*files, out]:
        p.unlink(missing_ok=True)
    return {
        **job,
        "ir": sum(per_thread),
        "ir_loop": per_thread[0],
        "threads": len(per_thread),
        "seconds": time.perf_counter() - t0,
        "native_own": own,
        "timers": timers,
    }


def count_events(job: dict[str, Any]) -> dict[str, float]:
    """Events of each kind per request: the driver run without valgrind, ``--events``."""
    cmd = [sys.executable, str(DRIVER), "400", "--app", job["app"], "--variant", job["variant"]]
    cmd += ["--loop", job["loop"], "--warmup", "100", "--events"]
    proc = subprocess.run(
        cmd, env=child_env(job["core"]), capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def summarize(
    runs: list[dict[str, Any]], bare_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """results[core][loop][app][variant] = per-request instructions and ratios to bare.

    Over several memory layouts, an entry is the median layout's (the lower of the two middle
    ones when even), with every layout's instructions per request in ``layouts``.
    ``bare_from``: an earlier run's ``results``, whose bare entries stand in for bare runs not
    made this time (bare runs no flightdeck code: its count does not change between commits).
    """
    by: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for r in runs:
        key = (r["core"], r["loop"], r["app"], r["variant"], r.get("layout", 0))
        by.setdefault(key, {})[r["n"]] = r
    per_layout: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for (core, loop, app, variant, _layout), pair in sorted(by.items()):
        (n1, r1), (n2, r2) = sorted(pair.items())
        dn = n2 - n1
        b1, b2 = buckets(r1["native_own"]), buckets(r2["native_own"])
        per_layout.setdefault((core, loop, app, variant), []).append(
            {
                "native_per_req": {k: (b2[k] - b1[k]) / dn for k in b2} if r1["native_own"] else {},
                "instr_per_req": (r2["ir"] - r1["ir"]) / dn,
                "loop_thread_per_req": (r2["ir_loop"] - r1["ir_loop"]) / dn,
                "other_threads_per_req": ((r2["ir"] - r2["ir_loop"]) - (r1["ir"] - r1["ir_loop"]))
                / dn,
                "n": [n1, n2],
                "ir": [r1["ir"], r2["ir"]],
                "ir_loop_thread": [r1["ir_loop"], r2["ir_loop"]],
                "seconds": [r1["seconds"], r2["seconds"]],
                "timers": [r1.get("timers", {}), r2.get("timers", {})],
            }
        )
    res: dict[str, Any] = {}
    for (core, loop, app, variant), entries in per_layout.items():
        figures = [e["instr_per_req"] for e in entries]
        mid = statistics.median_low(figures)
        entry = next(e for e in entries if e["instr_per_req"] == mid)
        entry["layouts"] = figures
        res.setdefault(core, {}).setdefault(loop, {}).setdefault(app, {})[variant] = entry
    for core, loops in res.items():
        for loop, apps_ in loops.items():
            for app, variants in apps_.items():
                if "bare" not in variants and bare_from is not None:
                    old = bare_from.get(core, {}).get(loop, {}).get(app, {}).get("bare")
                    if old is not None:
                        variants["bare"] = {**old, "from_file": True}
                bare = variants.get("bare")
                for e in variants.values() if bare is not None else ():
                    e["added_per_req"] = e["instr_per_req"] - bare["instr_per_req"]
                    e["ratio"] = bare["instr_per_req"] / e["instr_per_req"]
                    e["loop_thread_ratio"] = bare["loop_thread_per_req"] / e["loop_thread_per_req"]
                    e["ratio_range"] = [
                        bare["instr_per_req"] / max(e.get("layouts") or [e["instr_per_req"]]),
                        bare["instr_per_req"] / min(e.get("layouts") or [e["instr_per_req"]]),
                    ]
    return res


def checks(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for core, loops in res.items():
        for loop, apps_ in loops.items():
            for app, variants in apps_.items():
                for v in ("middleware", "full"):
                    e = variants.get(v)
                    if e is None or "ratio" not in e:
                        continue
                    tgt = target(v, loop, app)
                    out.append(
                        {
                            "check": f"{core} {loop} {app} {v} ratio",
                            "value": e["ratio"],
                            "target": f">= {tgt}",
                            "ok": e["ratio"] >= tgt,
                            "layouts": e.get("ratio_range"),
                        }
                    )
    return out


def _k(x: float | None) -> str:
    return "-" if x is None else f"{x / 1000:,.1f}k"


def table(res: dict[str, Any]) -> str:
    """One row per (core, loop, app); ratio = bare / variant, with PASS/MISS."""
    rows = [
        "| core | loop | app | bare | middleware | full | middleware added | full added "
        "| bare/middleware | bare/full | loop thread: bare/middleware, bare/full "
        "| OpenTelemetry added | OTel added / full added |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for core, loops in res.items():
        for loop, apps_ in loops.items():
            for app, vs in apps_.items():

                def get(v: str, field: str, vs: dict[str, Any] = vs) -> float | None:
                    return vs.get(v, {}).get(field)

                def ratio(v: str, vs: dict[str, Any] = vs, loop: str = loop, app: str = app) -> str:
                    e = vs.get(v)
                    if e is None or "ratio" not in e:
                        return "-"
                    tgt = target(v, loop, app)
                    cell = f"{e['ratio']:.3f} {verdict(e['ratio'] >= tgt)} (>= {tgt})"
                    if len(e.get("layouts", ())) > 1:
                        lo, hi = e["ratio_range"]
                        cell += f", layouts {lo:.3f}-{hi:.3f}"
                    return cell

                def lt(v: str, vs: dict[str, Any] = vs) -> str:
                    e = vs.get(v)
                    return "-" if e is None or "ratio" not in e else f"{e['loop_thread_ratio']:.3f}"

                added = [get(v, "added_per_req") for v in ("middleware", "full")]
                otel = get("otel", "added_per_req")
                if otel is None or added[1] is None:
                    times = "-"
                elif added[1] <= 0:  # full flightdeck costs less than bare: no ratio to take
                    times = "full adds none"
                else:
                    times = f"{otel / added[1]:.1f} x"
                rows.append(
                    f"| {core} | {loop} | {app} | {_k(get('bare', 'instr_per_req'))} "
                    f"| {_k(get('middleware', 'instr_per_req'))} "
                    f"| {_k(get('full', 'instr_per_req'))} "
                    + " ".join(f"| {'-' if a is None else f'+{a / 1000:,.1f}k'}" for a in added)
                    + f" | {ratio('middleware')} | {ratio('full')} "
                    f"| {lt('middleware')}, {lt('full')} | {_k(otel)} | {times} |"
                )
    return "\n".join(rows)


def breakdown_table(res: dict[str, Any], events: dict[str, Any]) -> str:
    """Per request: events recorded by kind, and flightdeck's native code by what it pays for."""
    kinds = sorted({k for e in events.values() for k in e})
    names = [*BUCKETS, "request (C middleware)", "other native", "total"]
    rows = [
        "| loop | app | variant | added | "
        + " | ".join(kinds)
        + " | "
        + " | ".join(f"C: {n}" for n in names)
        + " |",
        "|---|---|---|" + "---:|" * (1 + len(kinds) + len(names)),
    ]
    for loops in res.values():
        for loop, apps_ in loops.items():
            for app, vs in apps_.items():
                for v in ("middleware", "full"):
                    e = vs.get(v)
                    if e is None:
                        continue
                    ev = events.get(f"{loop}/{app}/{v}", {})
                    nat = e.get("native_per_req", {})
                    rows.append(
                        f"| {loop} | {app} | {v} | {_k(e.get('added_per_req'))} | "
                        + " | ".join(f"{ev.get(k, 0):.2f}" for k in kinds)
                        + " | "
                        + " | ".join(_k(nat.get(n)) for n in names)
                        + " |"
                    )
    return "\n".join(rows)


def valgrind_version() -> str:
    try:
        return subprocess.run(
            ["valgrind", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"valgrind": valgrind_version()}
    for name in (
        "flightdeck",
        "starlette",
        "fastapi",
        "pydantic",
        "uvloop",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-asgi",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main() -> None:
    global TIME_SCALE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N2=300 (fastapi /5)")
    parser.add_argument("--n1", type=int, help="requests of the short run (default 200)")
    parser.add_argument("--n2", type=int, help="requests of the long run (default 1200)")
    parser.add_argument("--apps", nargs="+", default=list(DEFAULT_APPS), choices=APPS)
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    parser.add_argument(
        "--variants", nargs="+", default=["bare", "middleware", "full"], choices=VARIANTS
    )
    parser.add_argument("--otel", action="store_true", help="add the otel variant")
    parser.add_argument("--cores", nargs="+", default=["native"], choices=CORES)
    parser.add_argument("--jobs", type=int, default=2, help="valgrind runs at a time (2)")
    parser.add_argument(
        "--layouts",
        type=int,
        default=1,
        help="memory layouts each run is made in; figures are the median layout's (1)",
    )
    parser.add_argument("--output", default="bench_instr.json", help="file name in results/")
    parser.add_argument(
        "--bare-from",
        metavar="JSON",
        help="take the bare figures from this earlier results file instead of running bare",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=TIME_SCALE,
        help=f"the driver's --time-scale under valgrind ({TIME_SCALE:g})",
    )
    args = parser.parse_args()
    TIME_SCALE = args.time_scale
    if args.layouts < 1:
        parser.error("--layouts must be at least 1")

    if shutil.which("valgrind") is None:
        sys.exit("bench_instr: valgrind not found (Debian/Ubuntu: apt-get install valgrind)")
    bare_from = None
    if args.bare_from:
        path = Path(args.bare_from)
        if not path.is_absolute() and not path.exists():
            path = HERE / "results" / path
        bare_from = json.loads(path.read_text())["results"]
        if "bare" in args.variants:
            args.variants.remove("bare")
    elif "bare" not in args.variants:
        args.variants.insert(0, "bare")  # every ratio is to bare
    if args.otel and "otel" not in args.variants:
        args.variants.append("otel")
    if "uvloop" in args.loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("   SKIP loop uvloop: not installed")
            args.loops.remove("uvloop")
    jobs_n = max(1, args.jobs)
    if jobs_n > (os.cpu_count() or 1):
        print(f"   note: --jobs {jobs_n} > {os.cpu_count()} CPUs (counts are unaffected)")
    header("bench_instr: instructions per request under callgrind, flightdeck vs bare")

    jobs: list[dict[str, Any]] = []
    for core in args.cores:
        for loop in args.loops:
            for app in args.apps:
                n1, n2, warm = counts(app, args.quick, args.n1, args.n2)
                if n2 <= n1:
                    sys.exit(f"bench_instr: N2 ({n2}) must be larger than N1 ({n1})")
                for variant in args.variants:
                    for layout in range(args.layouts):
                        for n in (n1, n2):
                            jobs.append(
                                {
                                    "core": core,
                                    "loop": loop,
                                    "app": app,
                                    "variant": variant,
                                    "n": n,
                                    "warm": warm,
                                    "layout": layout,
                                }
                            )
    # Longest runs first so the last ones to finish are short (better packing on --jobs).
    order = sorted(jobs, key=lambda j: -j["n"] * (15 if j["app"] == "fastapi" else 1))
    print(f"   {len(jobs)} valgrind runs, {jobs_n} at a time")
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bench_instr-") as tmp,
        ThreadPoolExecutor(max_workers=jobs_n) as pool,
    ):
        runs = list(pool.map(lambda j: run_one(j, Path(tmp)), order))
    elapsed = time.perf_counter() - t0

    res = summarize(runs, bare_from)
    events: dict[str, dict[str, float]] = {}
    for j in jobs:
        key = f"{j['loop']}/{j['app']}/{j['variant']}"
        if (
            j["variant"] in ("middleware", "full")
            and j["core"] == "native"
            and key not in events
            and j["layout"] == 0
        ):
            events[key] = count_events(j)
    md = table(res) + "\n\n" + breakdown_table(res, events)
    cks = checks(res)
    print()
    print(md)
    print()
    for c in cks:
        spread = (
            f"  layouts {c['layouts'][0]:.3f}-{c['layouts'][1]:.3f}" if args.layouts > 1 else ""
        )
        print(
            f"   {c['check']:<40} {c['value']:7.3f}  target {c['target']:<7} {verdict(c['ok'])}"
            + spread
        )
    data = {
        "machine": machine(),
        "versions": versions(),
        "command": command_line(),
        "elapsed_s": elapsed,
        "settings": {
            "quick": args.quick,
            "jobs": jobs_n,
            "requests": {a: counts(a, args.quick, args.n1, args.n2) for a in args.apps},
            "inflight": 32,
            "bare_from": args.bare_from,
            "layouts": args.layouts,
            "layout_step_bytes": LAYOUT_STEP,
        },
        "targets": TARGETS,
        "results": res,
        "events_per_request": events,
        "checks": cks,
        "table_markdown": md,
        "command_template": shown(command("OUT", "N", "APP", "VARIANT", "LOOP", "W"), "native"),
        "runs": runs,
    }
    path = write_json(args.output, data)
    print(f"\n   results: {path}\n   elapsed {elapsed:.0f} s")


if __name__ == "__main__":
    main()
