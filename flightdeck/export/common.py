"""Reading a snapshot document defensively: what every exporter shares.

Exporters read documents that may come from another version or another machine: every
helper here tolerates missing keys and wrong types instead of raising.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any


def num(value: object) -> float | None:
    """``value`` as a finite float, or None (bools, strings, NaN are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def text(value: object) -> str:
    """``value`` as a display string; None becomes ''."""
    return "" if value is None else str(value)


def dicts(value: object) -> list[dict[str, Any]]:
    """The dict items of ``value`` when it is a list, else []."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, dict)]


def section(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def fmt_duration(seconds: float | None) -> str:
    """Human duration: ``850 µs``, ``40.0 ms``, ``400 ms``, ``1.20 s``, ``2 min 5 s``."""
    if seconds is None:
        return "?"
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s < 0.001:
        return f"{sign}{s * 1e6:.0f} µs"
    if s < 0.1:
        return f"{sign}{s * 1e3:.1f} ms"
    if s < 1.0:
        return f"{sign}{s * 1e3:.0f} ms"
    if s < 120:
        return f"{sign}{s:.2f} s"
    return f"{sign}{int(s // 60)} min {int(s % 60)} s"


def frame_text(frame: object, short: bool = False) -> str:
    """``file:line in function`` (``short``: only the last two path components)."""
    if not isinstance(frame, dict):
        return text(frame)
    file = text(frame.get("file")) or "?"
    if short:
        file = "/".join(file.replace("\\", "/").split("/")[-2:])
        if file.count("/") and len(file) > 40:
            file = file.rsplit("/", 1)[-1]
    line = frame.get("line")
    where = f"{file}:{line}" if isinstance(line, int) and line > 0 else file
    fn = text(frame.get("function"))
    return f"{where} in {fn}" if fn else where


def innermost(stack: object) -> dict[str, Any] | None:
    """The innermost frame (stacks are stored innermost last)."""
    frames = dicts(stack)
    return frames[-1] if frames else None


def request_label(req: dict[str, Any]) -> str:
    """``GET /slow 200`` (``…`` while in flight, ``ERR`` when it raised before responding)."""
    method = text(req.get("method")) or ("WS" if req.get("kind") == "websocket" else "?")
    path = text(req.get("path")) or text(req.get("route")) or "?"
    status = req.get("status")
    if isinstance(status, int) and not isinstance(status, bool):
        tail = str(status)
    elif req.get("error"):
        tail = "ERR"
    elif num(req.get("end")) is None:
        tail = "…"
    else:
        tail = "-"
    return f"{method} {path} {tail}"


def task_label(task: dict[str, Any]) -> str:
    """``t12 handler.<locals>.work`` (falls back to the task name)."""
    what = text(task.get("coro")) or text(task.get("name")) or "task"
    tid = text(task.get("id"))
    return f"{tid} {what}" if tid else what


def utc_text(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S.%f") -> str:
    """A Unix time as UTC text to the millisecond, or ``?``."""
    if ts is None:
        return "?"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime(fmt)[:-3]
    except (OverflowError, OSError, ValueError):
        return "?"


def host_processes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The processes a host capture holds (``processes``, those read), else []."""
    return [
        p
        for p in dicts(doc.get("processes"))
        if isinstance(p.get("pid"), int)
        and not isinstance(p.get("pid"), bool)
        and not p.get("error")
    ]


def split_processes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A host capture's document as one document per process (the capturing one first, with
    the trigger; the others with ``trigger`` None), each with the whole capture's window so
    that they share one time origin; ``[doc]`` for a capture of one process."""
    processes = host_processes(doc)
    if len(processes) < 2:
        return [doc]
    first = processes[0]["pid"]
    parts: dict[Any, dict[str, list[dict[str, Any]]]] = {
        p["pid"]: {"requests": [], "tasks": [], "loop": [], "events": []} for p in processes
    }
    for key in ("requests", "tasks", "loop", "events"):
        for item in dicts(doc.get(key)):
            part = parts.get(item.get("pid"), parts[first])
            part[key].append(item)
    out = []
    for p in processes:
        one = {**doc, **parts[p["pid"]], "process": p}
        del one["processes"]  # one process: read as any capture's document
        if p["pid"] != first:
            one["trigger"] = None
        out.append(one)
    return out
