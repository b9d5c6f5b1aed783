"""Plain-text reading of a snapshot: the "what stands out" findings and the CLI summary.

Every accessor is defensive: documents come from disk or other versions of flightdeck, so
any list may be empty, any value null or of an unexpected type.
"""

from __future__ import annotations

from typing import Any

from .common import (
    dicts,
    fmt_duration,
    frame_text,
    innermost,
    num,
    request_label,
    section,
    task_label,
    text,
    utc_text,
)

__all__ = ["findings", "fmt_duration", "summarize"]

#: Requests slower than this are called out as findings.
SLOW_REQUEST = 0.5
#: Scheduling delays (``ready``) at least this long are worth a finding.
SCHED_DELAY = 0.005
#: Suspensions at least this long are listed under "long waits".
LONG_WAIT = 0.1
#: Loop lag at least this long is worth a finding.
LAG = 0.05


def _window(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    win = section(doc, "window")
    return num(win.get("start")), num(win.get("end"))


def request_duration(req: dict[str, Any], window_end: float | None) -> tuple[float | None, bool]:
    """(duration, in_flight): an in-flight request's age at the end of the window."""
    dur = num(req.get("duration"))
    if dur is not None:
        return dur, False
    start, end = num(req.get("start")), num(req.get("end"))
    if start is not None and end is not None:
        return end - start, False
    if start is not None and window_end is not None:
        return max(0.0, window_end - start), True
    return None, num(req.get("end")) is None


def _requests_by_id(doc: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {r.get("id"): r for r in dicts(doc.get("requests")) if r.get("id") is not None}


def _blocks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = [e for e in dicts(doc.get("loop")) if e.get("kind") == "block"]
    return sorted(blocks, key=lambda e: -(num(e.get("duration")) or 0.0))


def _sched_delays(doc: dict[str, Any]) -> list[tuple[float, float | None, dict[str, Any]]]:
    """(ready, step start, task), worst first; one entry per task (its worst step)."""
    out = []
    for task in dicts(doc.get("tasks")):
        worst: tuple[float, float | None] | None = None
        steps = task.get("steps")
        for step in steps if isinstance(steps, list) else ():
            if not isinstance(step, (list, tuple)) or len(step) < 4:
                continue
            ready = num(step[3])
            if ready is not None and (worst is None or ready > worst[0]):
                worst = (ready, num(step[0]))
        if worst is not None:
            out.append((worst[0], worst[1], task))
    out.sort(key=lambda x: -x[0])
    return out


def _long_waits(doc: dict[str, Any]) -> list[tuple[float, dict[str, Any], dict[str, Any]]]:
    """(duration, wait, task) for recorded suspensions of at least LONG_WAIT, longest first."""
    out = []
    for task in dicts(doc.get("tasks")):
        for wait in dicts(task.get("waits")):
            dur = num(wait.get("duration"))
            if dur is not None and dur >= LONG_WAIT:
                out.append((dur, wait, task))
    out.sort(key=lambda x: -x[0])
    return out


def _request_of(task: dict[str, Any], reqs: dict[Any, dict[str, Any]]) -> str:
    req = reqs.get(task.get("request"))
    return f" ({request_label(req)})" if req else ""


def _wait_site(wait: dict[str, Any]) -> str:
    """Where a task waited: the innermost frame of non-asyncio code, and what it awaited.

    The innermost frames are usually asyncio's own (``locks.py in acquire``); the user's
    frame says *where*, asyncio's says *what*.
    """
    frames = dicts(wait.get("stack"))
    if not frames:
        return "unknown site"
    inner = frames[-1]
    user = next(
        (f for f in reversed(frames) if "asyncio/" not in text(f.get("file")).replace("\\", "/")),
        inner,
    )
    site = frame_text(user, short=True)
    if user is not inner and inner.get("function"):
        site += f" (awaiting {text(inner.get('function'))})"
    return site


def findings(doc: dict[str, Any]) -> list[str]:
    """Short human lines on what stands out in the snapshot, most important first."""
    out: list[str] = []
    w_start, w_end = _window(doc)
    reqs = _requests_by_id(doc)
    for block in _blocks(doc)[:3]:
        line = f"loop blocked {fmt_duration(num(block.get('duration')))}"
        frame = innermost(block.get("stack"))
        if frame is not None:
            line += f" in {text(frame.get('function')) or '?'} at "
            line += frame_text({**frame, "function": None}, short=True)
        if block.get("callback"):
            line += f" ({text(block.get('callback'))})"
        out.append(line)
    errors = []
    slow = []
    for req in dicts(doc.get("requests")):
        status = req.get("status")
        if (isinstance(status, int) and status >= 500) or req.get("error"):
            errors.append(req)
        dur, in_flight = request_duration(req, w_end)
        if dur is not None and (dur >= SLOW_REQUEST or in_flight):
            slow.append((dur, in_flight, req))
    slow.sort(key=lambda x: -x[0])
    for dur, in_flight, req in slow[:3]:
        if in_flight:
            label = request_label(req).removesuffix(" …")
            out.append(f"{label} still in flight after {fmt_duration(dur)}")
        else:
            out.append(f"{request_label(req)} took {fmt_duration(dur)}")
    if len(slow) > 3:
        out.append(f"{len(slow) - 3} more requests slower than {fmt_duration(SLOW_REQUEST)}")
    for req in errors[:3]:
        line = f"{request_label(req)} failed"
        if req.get("error"):
            line += f": {text(req.get('error'))}"
        out.append(line)
    if len(errors) > 3:
        out.append(f"{len(errors) - 3} more failed requests")
    delays = _sched_delays(doc)
    if delays and delays[0][0] >= SCHED_DELAY:
        ready, _, task = delays[0]
        out.append(
            f"worst scheduling delay {fmt_duration(ready)} for task {task_label(task)}"
            + _request_of(task, reqs)
        )
    waits = _long_waits(doc)
    if waits:
        dur, wait, task = waits[0]
        out.append(
            f"longest wait {fmt_duration(dur)}: task {task_label(task)} at {_wait_site(wait)}"
        )
    lags = [num(e.get("duration")) or 0.0 for e in dicts(doc.get("loop")) if e.get("kind") == "lag"]
    if lags and max(lags) >= LAG:
        out.append(f"event loop lagged up to {fmt_duration(max(lags))}")
    jobs = [e for e in dicts(doc.get("events")) if e.get("kind") == "executor"]
    queued = [
        (started - start, job)
        for job in jobs
        if (start := num(job.get("start"))) is not None
        and (started := num(job.get("started"))) is not None
    ]
    if queued:
        worst_q, job = max(queued, key=lambda x: x[0])
        if worst_q >= LONG_WAIT:
            out.append(f"executor job {text(job.get('func'))} queued {fmt_duration(worst_q)}")
    dropped = num(section(doc, "window").get("dropped"))
    if dropped:
        out.append(f"{int(dropped)} events dropped (window bounds or overload)")
    coverage = section(section(doc, "process"), "coverage")
    missing = [k.replace("_", " ") for k, v in coverage.items() if v is False]
    if missing:
        loop = text(section(doc, "process").get("loop")) or "this loop"
        out.append(f"not measured on {loop}: {', '.join(missing)}")
    if w_start is not None and w_end is not None and w_end < w_start:
        out.append("window end precedes its start (clock skew?)")
    return out


def _utc(ts: float | None) -> str:
    return utc_text(ts, "%H:%M:%S.%f")


def _rel(ts: float | None, w_start: float | None) -> str:
    if ts is None or w_start is None:
        return "?"
    return f"+{ts - w_start:.3f} s"


def summarize(doc: dict[str, Any]) -> str:
    """The ``flightdeck summary`` text: trigger, process and window, then the worst offenders."""
    lines: list[str] = []
    add = lines.append
    trig = section(doc, "trigger")
    proc = section(doc, "process")
    win = section(doc, "window")
    w_start, w_end = _window(doc)
    reqs = _requests_by_id(doc)

    add(f"snapshot {text(doc.get('id'))}  created {text(doc.get('created_at'))}")
    reason = text(trig.get("reason"))
    add(f"trigger:  {text(trig.get('kind')) or '?'}" + (f" — {reason}" if reason else ""))
    add(
        f"process:  pid {text(proc.get('pid')) or '?'} on {text(proc.get('hostname')) or '?'}, "
        f"Python {text(proc.get('python')) or '?'}, loop {text(proc.get('loop')) or '?'}, "
        f"flightdeck {text(proc.get('flightdeck')) or '?'}"
    )
    span = w_end - w_start if w_start is not None and w_end is not None else None
    events = num(win.get("events"))
    add(
        f"window:   {fmt_duration(span)} ({_utc(w_start)} → {_utc(w_end)} UTC)"
        + (f", {int(events)} events" if events is not None else "")
        + f", {int(num(win.get('dropped')) or 0)} dropped"
    )

    add("")
    add("what stands out:")
    found = findings(doc)
    lines.extend(f"  - {f}" for f in found) if found else add("  nothing")

    add("")
    ranked = []
    for req in dicts(doc.get("requests")):
        dur, in_flight = request_duration(req, w_end)
        ranked.append((dur if dur is not None else -1.0, in_flight, req))
    ranked.sort(key=lambda x: -x[0])
    add(f"slowest requests ({len(ranked)} in window):")
    if not ranked:
        add("  none")
    for dur, in_flight, req in ranked[:5]:
        bits = [f"{fmt_duration(dur if dur >= 0 else None):>9}", request_label(req)]
        if in_flight:
            bits.append("(in flight)")
        if req.get("route"):
            bits.append(f"route {text(req.get('route'))}")
        ttfb = num(req.get("ttfb"))
        if ttfb is not None:
            bits.append(f"ttfb {fmt_duration(ttfb)}")
        if req.get("client"):
            bits.append(f"client {text(req.get('client'))}")
        if req.get("error"):
            bits.append(f"error {text(req.get('error'))}")
        if req.get("disconnected"):
            bits.append("client disconnected")
        tasks = req.get("tasks")
        if isinstance(tasks, list) and tasks:
            bits.append(f"[{len(tasks)} task{'s' if len(tasks) != 1 else ''}]")
        bits.append(f"at {_rel(num(req.get('start')), w_start)}")
        add("  " + "  ".join(bits))

    add("")
    blocks = _blocks(doc)
    add(f"worst loop blocks ({len(blocks)}):")
    if not blocks:
        add("  none")
    for block in blocks[:3]:
        head = f"  {fmt_duration(num(block.get('duration'))):>9}"
        head += f"  at {_rel(num(block.get('start')), w_start)}"
        if block.get("callback"):
            head += f"  {text(block.get('callback'))}"
        add(head)
        frames = dicts(block.get("stack"))
        if frames:
            add("      stack (innermost last):")
            lines.extend(f"        {frame_text(f)}" for f in frames)
        else:
            add("      (no stack captured)")

    add("")
    delays = _sched_delays(doc)
    add("worst scheduling delays (woken but waiting for the loop):")
    if not delays:
        add("  none measured")
    for ready, start, task in delays[:5]:
        add(
            f"  {fmt_duration(ready):>9}  task {task_label(task)}{_request_of(task, reqs)}"
            f"  at {_rel(start, w_start)}"
        )

    add("")
    waits = _long_waits(doc)
    add(f"long waits (suspended ≥ {fmt_duration(LONG_WAIT)}):")
    if not waits:
        add("  none")
    for dur, wait, task in waits[:5]:
        add(f"  {fmt_duration(dur):>9}  task {task_label(task)}{_request_of(task, reqs)}")
        add(f"             at {_wait_site(wait)}")
    pending = [t for t in dicts(doc.get("tasks")) if dicts(t.get("awaiting"))]
    if pending:
        add("")
        add(f"tasks still pending at snapshot time ({len(pending)}):")
        for task in pending[:5]:
            frame = innermost(task.get("awaiting"))
            add(f"  task {task_label(task)}{_request_of(task, reqs)}  awaiting {frame_text(frame)}")

    add("")
    add(f"dropped: {int(num(win.get('dropped')) or 0)} events")
    return "\n".join(lines) + "\n"
