""" "What stands out": findings ranked by their impact on the trigger request, then on the
window. Each names a function or a task, not only a symptom."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .breakdown import Breakdown, breakdown, sentence
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
)
from .diagnose import SLOW_CALLBACK, Hog, burst, cancellations, grouped, hogs, request_of
from .loop_index import LoopIndex
from .stacks import StackFolder

#: Requests slower than this are called out as findings.
SLOW_REQUEST = 0.5
#: Scheduling delays (``ready``) at least this long are worth a finding.
SCHED_DELAY = 0.005
#: Suspensions at least this long are listed under "long waits".
LONG_WAIT = 0.1
#: Loop lag at least this long is worth a finding.
LAG = 0.05
#: GC pauses adding up to this much in the window are worth a finding.
GC_TOTAL = 0.01


@dataclass
class Finding:
    on_trigger: float  # seconds of the trigger request it accounts for
    on_window: float  # seconds of loop or request time it accounts for in the window
    text: str
    #: 0: a cause (what held the loop, GC, cancellations, the pool); 1: a symptom (slow or
    #: failed requests, delays, lag); 2: about the recording itself.
    tier: int = 0


class Reading:
    """One pass over a document shared by the findings and the summary's sections."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.folder = StackFolder(doc)
        self.index = LoopIndex(doc, self.folder)
        self.window_end = num(section(doc, "window").get("end"))
        self.trigger_request = self._trigger_request()
        self.trigger = (
            breakdown(doc, self.trigger_request, self.index)
            if self.trigger_request is not None
            else None
        )
        self.hogs = hogs(doc, self.index)

    def _trigger_request(self) -> dict[str, Any] | None:
        req = section(self.doc, "trigger").get("request")
        if not isinstance(req, dict):
            return None
        return self.index.requests.get(req.get("id"), req)

    def request(self, rid: Any) -> dict[str, Any] | None:
        for key in (rid, _int(rid)):
            if key in self.index.requests:
                return self.index.requests[key]
        return None


def _int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


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


def _on_trigger(b: Breakdown | None, start: float, end: float, tid: Any = None) -> float:
    """How much of the trigger request's time the interval accounts for."""
    if b is None:
        return 0.0
    if tid is not None and b.task is not None and tid == b.task.get("id"):
        return max(0.0, min(end, b.end) - max(start, b.start))
    return sum(max(0.0, min(end, s1) - max(start, s0)) for s0, s1 in b.ready_spans)


def _hog_text(h: Hog, r: Reading) -> str:
    dur = fmt_duration(h.duration)
    if h.kind == "block":
        block = h.entry if isinstance(h.entry, dict) else {}
        line = f"loop blocked {fmt_duration(num(block.get('duration')))}"
        frame = r.folder.user_frame(h.stack) or innermost(h.stack)
        if frame is not None:
            line += f" in {text(frame.get('function')) or '?'} at "
            line += frame_text({**frame, "function": None}, short=True)
        if block.get("callback"):
            line += f" ({text(block.get('callback'))})"
        elif h.task is not None:
            line += f" (task {task_label(r.index.tasks.get(h.task, {'id': h.task}))})"
        return line
    if h.kind == "gc":
        return f"{h.label} paused the loop {dur}"
    return f"{h.label} held the loop {dur}{request_of(r.index, h.request)}"


def ranked(r: Reading) -> list[Finding]:
    doc = r.doc
    out: list[Finding] = []
    b = r.trigger
    add = out.append
    if b is not None:
        add(Finding(b.total, b.total, sentence(b)))
    for g in [g for g in grouped(r.hogs) if g.first.kind != "gc"][:8]:
        on_trigger = sum(_on_trigger(b, h.start, h.start + h.duration, h.task) for h in g.hogs)
        line = _hog_text(g.first, r)
        if len(g.hogs) > 1:
            line = (
                f"{g.first.label} held the loop {len(g.hogs)} times, {fmt_duration(g.total)} in"
                f" all (longest {fmt_duration(g.longest)}){request_of(r.index, g.first.request)}"
            )
        add(Finding(on_trigger, g.total, line))
    trigger_id = b.request.get("id") if b is not None else None
    errors, slow = [], []
    for req in dicts(doc.get("requests")):
        status = req.get("status")
        if (isinstance(status, int) and status >= 500) or req.get("error"):
            errors.append(req)
        dur, in_flight = request_duration(req, r.window_end)
        if dur is not None and (dur >= SLOW_REQUEST or in_flight) and req.get("id") != trigger_id:
            slow.append((dur, in_flight, req))
    slow.sort(key=lambda x: -x[0])
    for dur, in_flight, req in slow[:3]:
        if in_flight:
            line = (
                f"{request_label(req).removesuffix(' …')} still in flight after {fmt_duration(dur)}"
            )
        else:
            line = f"{request_label(req)} took {fmt_duration(dur)}"
        rb = breakdown(doc, req, r.index)
        if rb is not None and rb.task is not None:
            line += "; " + sentence(rb).split(": ", 1)[-1].split("; ")[0]
        add(Finding(0.0, dur, line, 1))
    if len(slow) > 3:
        add(
            Finding(
                0.0,
                0.0,
                f"{len(slow) - 3} more requests slower than {fmt_duration(SLOW_REQUEST)}",
                1,
            )
        )
    for req in errors[:3]:
        line = f"{request_label(req)} failed" + (
            f": {text(req.get('error'))}" if req.get("error") else ""
        )
        add(Finding(0.0, num(req.get("duration")) or 0.001, line, 1))
    if len(errors) > 3:
        add(Finding(0.0, 0.0, f"{len(errors) - 3} more failed requests", 1))
    _cancel_findings(r, add)
    _gc_finding(r, add)
    _delays_and_waits(r, add)
    dropped = num(section(doc, "window").get("dropped"))
    if dropped:
        add(Finding(0.0, 0.0, f"{int(dropped)} events dropped (window bounds or overload)", 2))
    coverage = section(section(doc, "process"), "coverage")
    missing = [k.replace("_", " ") for k, v in coverage.items() if v is False]
    if missing:
        loop = text(section(doc, "process").get("loop")) or "this loop"
        add(Finding(0.0, 0.0, f"not measured on {loop}: {', '.join(missing)}", 2))
    w_start = num(section(doc, "window").get("start"))
    if w_start is not None and r.window_end is not None and r.window_end < w_start:
        add(Finding(0.0, 0.0, "window end precedes its start (clock skew?)", 2))
    order = {id(f): i for i, f in enumerate(out)}
    return sorted(out, key=lambda f: (-f.on_trigger, f.tier, -f.on_window, order[id(f)]))


def _cancel_findings(r: Reading, add: Any) -> None:
    groups, delivered, ended = cancellations(r.doc, r.index)
    if not groups:
        return
    top = groups[0]
    detail = f"{top.count} × {top.what} at {top.site} ({top.cause})"
    found = burst(r.doc, r.index)
    if found is not None:
        n, _, span = found
        add(
            Finding(0.0, 0.01 * n, f"cancellation burst: {n} within {fmt_duration(span)}; {detail}")
        )
    elif delivered + ended >= 3:
        add(
            Finding(
                0.0,
                0.0,
                f"{delivered} cancellations delivered, {ended} tasks ended cancelled; {detail}",
            )
        )


def _gc_finding(r: Reading, add: Any) -> None:
    """One finding for all GC pauses: how often, how long, and how much of the trigger."""
    pauses = [e for e in r.index.entries if e.get("kind") == "gc"]
    total = sum(num(e.get("duration")) or 0.0 for e in pauses)
    b = r.trigger
    during = b.gc if b is not None else 0.0
    worst = max(pauses, key=lambda e: num(e.get("duration")) or 0.0) if pauses else {}
    if total < GC_TOTAL and during < 0.001 and (num(worst.get("duration")) or 0.0) < SLOW_CALLBACK:
        return
    line = (
        f"garbage collection paused the loop {len(pauses)} time{'s' if len(pauses) != 1 else ''},"
        f" {fmt_duration(total)} in all; worst {fmt_duration(num(worst.get('duration')))}"
        f" (generation {text(worst.get('generation'))}, {text(worst.get('collected'))} collected)"
    )
    if b is not None and during > 0:
        line += f"; {fmt_duration(during)} of it during {request_label(b.request)}"
    add(Finding(during, total, line))


def sched_delays(doc: dict[str, Any]) -> list[tuple[float, float | None, dict[str, Any]]]:
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


def long_waits(doc: dict[str, Any]) -> list[tuple[float, dict[str, Any], dict[str, Any]]]:
    """(duration, wait, task) for recorded suspensions of at least LONG_WAIT, longest first."""
    out = []
    for task in dicts(doc.get("tasks")):
        for wait in dicts(task.get("waits")):
            dur = num(wait.get("duration"))
            if dur is not None and dur >= LONG_WAIT:
                out.append((dur, wait, task))
    out.sort(key=lambda x: -x[0])
    return out


def wait_site(wait: dict[str, Any], folder: StackFolder | None = None) -> str:
    """Where a task waited: the innermost user frame, and what it awaited there.

    The innermost frames are usually asyncio's own (``locks.py in acquire``); the user's
    frame says *where*, the innermost one *what*.
    """
    frames = dicts(wait.get("stack"))
    if not frames:
        return "unknown site"
    inner = frames[-1]
    folder = folder or StackFolder({})
    user = folder.user_frame(frames) or next(
        (f for f in reversed(frames) if "asyncio/" not in text(f.get("file")).replace("\\", "/")),
        inner,
    )
    site = frame_text(user, short=True)
    if user is not inner and inner.get("function"):
        site += f" (awaiting {text(inner.get('function'))})"
    return site


def _delays_and_waits(r: Reading, add: Any) -> None:
    delays = sched_delays(r.doc)
    if delays and delays[0][0] >= SCHED_DELAY:
        ready, _, task = delays[0]
        add(
            Finding(
                0.0,
                ready,
                f"worst scheduling delay {fmt_duration(ready)} for task {task_label(task)}"
                + request_of(r.index, task.get("request")).replace(" in ", " (", 1)
                + (")" if r.index.requests.get(task.get("request")) else ""),
                1,
            )
        )
    waits = long_waits(r.doc)
    if waits:
        dur, wait, task = waits[0]
        add(
            Finding(
                0.0,
                dur,
                f"longest wait {fmt_duration(dur)}: task {task_label(task)}"
                f" at {wait_site(wait, r.folder)}",
                1,
            )
        )
    lags = [
        num(e.get("duration")) or 0.0 for e in dicts(r.doc.get("loop")) if e.get("kind") == "lag"
    ]
    if lags and max(lags) >= LAG:
        add(Finding(0.0, max(lags) * 0.5, f"event loop lagged up to {fmt_duration(max(lags))}", 1))
    queued = [
        (started - start, job)
        for job in dicts(r.doc.get("events"))
        if job.get("kind") == "executor"
        and (start := num(job.get("start"))) is not None
        and (started := num(job.get("started"))) is not None
    ]
    if queued:
        worst_q, job = max(queued, key=lambda x: x[0])
        if worst_q >= LONG_WAIT:
            add(
                Finding(
                    0.0,
                    worst_q,
                    f"thread pool saturated: {text(job.get('func'))}"
                    f" queued {fmt_duration(worst_q)}",
                )
            )


def findings(doc: dict[str, Any], reading: Reading | None = None) -> list[str]:
    """Short human lines on what stands out in the snapshot, most important first."""
    return [f.text for f in ranked(reading or Reading(doc))]
