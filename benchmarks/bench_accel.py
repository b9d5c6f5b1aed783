"""Prototype of a compiled step hook (issue 7): what would a C ``run_step`` save?

Builds benchmarks/accel/_fdaccel.c with the system C compiler into a temporary directory,
then runs a step-heavy asyncio workload bare, with flightdeck's pure-Python step hook and
with the compiled one, interleaved in shuffled rounds in one process, on asyncio and uvloop.
Reports CPU microseconds per task step (recorder thread included) and what each adds.

Command: .venv/bin/python benchmarks/bench_accel.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TASKS = 2000
AWAITS = 5


def build() -> Any:
    out = Path(tempfile.mkdtemp()) / f"_fdaccel{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    cmd = ["cc", "-O2", "-shared", "-fPIC", f"-I{include}", str(HERE / "accel" / "_fdaccel.c")]
    subprocess.run([*cmd, "-o", str(out)], check=True)
    spec = importlib.util.spec_from_file_location("_fdaccel", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def work() -> None:
    for _ in range(AWAITS):
        await asyncio.sleep(0)


async def workload() -> None:
    await asyncio.gather(*(work() for _ in range(TASKS)))


def once(variant: str, loop_name: str, accel: Any) -> float:
    import flightdeck._loop as fl
    from flightdeck import FlightRecorder

    async def main() -> float:
        rec = None
        if variant != "bare":
            fl._step_runner_factory = accel.StepRunner if variant == "compiled" else None
            rec = FlightRecorder(loop_blocked=None)
            rec.start()
        t = time.process_time()
        await workload()
        spent = time.process_time() - t
        if rec is not None:
            rec.stop()
        fl._step_runner_factory = None
        return spent

    if loop_name == "uvloop":
        import uvloop

        return float(uvloop.run(main()))
    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--awaits", type=int, default=5, help="steps per task, less one")
    args = parser.parse_args()
    global AWAITS
    AWAITS = args.awaits
    accel = build()
    steps = TASKS * (AWAITS + 1)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print("| loop | variant | CPU us/step (median) | added us/step |")
    print("|---|---|---:|---:|")
    for loop_name in ("asyncio", "uvloop"):
        variants = ["bare", "python", "compiled"]
        results: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            random.shuffle(variants)
            for v in variants:
                results[v].append(once(v, loop_name, accel) / steps * 1e6)
        bare = statistics.median(results["bare"])
        for v in ("bare", "python", "compiled"):
            med = statistics.median(results[v])
            print(f"| {loop_name} | {v} | {med:.2f} | {med - bare:+.2f} |")


if __name__ == "__main__":
    main()
