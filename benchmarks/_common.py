"""Helpers shared by the benchmarks: medians, PASS/MISS lines, machine info, JSON results."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def command_line() -> str:
    """The command that ran this benchmark, relative to the repository root when possible."""
    exe = sys.executable
    try:
        exe = os.path.relpath(exe, ROOT)
    except ValueError:
        pass
    script = sys.argv[0]
    try:
        script = os.path.relpath(os.path.abspath(script), ROOT)
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in [exe, script, *sys.argv[1:]])


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def line(label: str, value: str, target: str, ok: bool | None) -> str:
    """One result line: ``label  value  (target ...)  PASS|MISS``."""
    tail = "" if ok is None else verdict(ok)
    return f"  {label:<46} {value:>16}   target {target:<14} {tail}"


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def header(title: str) -> None:
    m = machine()
    print(f"== {title}")
    print(f"   command: {command_line()}")
    print(f"   {m['date']} | Python {m['python']} | {m['cpu']} x{m['cpus']}")
