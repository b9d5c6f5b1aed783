"""``make memcheck``: tests under valgrind memcheck, judged on flightdeck's native modules.

Usage: ``python tests/memcheck.py MODULE[,MODULE] TEST...``. CPython itself reports a few
uninitialised reads and "definitely lost" blocks at start-up and exit under valgrind (they
are not ours); this fails on any error or definite leak whose stack goes through one of
MODULE (e.g. ``_casgi``), prints them, and fails if the tests fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _ours(block: str) -> bool:
    """A report (not the banner), and not tracemalloc's own bookkeeping: a test measuring
    memory with tracemalloc leaves its tracebacks "lost" wherever the stack was."""
    if "_tracemalloc.c" in block:
        return False
    return (
        re.search(r"definitely lost|Invalid (read|write|free)|uninitialised|Mismatched", block)
        is not None
    )


def main() -> int:
    modules = sys.argv[1].split(",")
    tests = sys.argv[2:]
    log = Path(os.environ.get("MEMCHECK_LOG", "memcheck.log"))
    cmd = [
        "valgrind",
        "--tool=memcheck",
        "--leak-check=full",
        "--show-leak-kinds=definite",
        "--errors-for-leak-kinds=definite",
        "--num-callers=40",
        f"--log-file={log}",
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *tests,
    ]
    env = dict(os.environ, PYTHONMALLOC="malloc")
    env.pop("FLIGHTDECK_NO_EXTENSIONS", None)
    print(" ".join(cmd), flush=True)
    result = subprocess.run(cmd, env=env, check=False)
    return judge(log, modules, result.returncode)


def judge(log: Path, modules: list[str], returncode: int) -> int:
    """Print what memcheck found in ``modules``; non-zero when anything or the tests failed."""
    text = log.read_text(errors="replace")
    blocks = re.split(r"\n==\d+== \n", text)
    ours = [b for b in blocks if any(m in b for m in modules) and _ours(b)]
    lost = re.findall(r"definitely lost: ([\d,]+) bytes", text)
    errors = re.findall(r"ERROR SUMMARY: (\d+) errors", text)
    print(
        f"memcheck: {len(ours)} report(s) in {', '.join(modules)}; process totals (CPython's "
        f"own included): definitely lost {lost[-1] if lost else '?'} bytes, "
        f"{errors[-1] if errors else '?'} errors; log: {log}"
    )
    for block in ours:
        print(block)
    if returncode != 0:
        print("memcheck: the tests failed under valgrind")
        return 1
    return 1 if ours else 0


if __name__ == "__main__":
    raise SystemExit(main())
