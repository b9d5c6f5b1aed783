"""Where a request's time went: running, waiting for the loop (and who held it), suspended
(at which await sites), and in the thread pool (queued, running).

Go's goroutine analysis is the model. The request's own task (the one running the ASGI call)
is followed from the request's start to its end: each gap between two of its steps is split
into suspended time (until it was woken) and ready time (woken, waiting for the loop);
suspended time overlapping its thread-pool jobs counts as queued or running there. Child
tasks are listed beside it, not summed. The parts add up to the request's duration.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Any

from .common import dicts, num, request_label, task_label, text
from .loop_index import LoopIndex
from .stacks import StackFolder, short_site

#: Own steps at least this long are named by what they ran (flightdeck's slow_callback).
SLOW_STEP = 0.01
#: A wait and a suspension that start this close together are the same suspension.
_SAME = 2e-6


@dataclass
class Breakdown:
    request: dict[str, Any]
    task: dict[str, Any] | None
    start: float
    end: float
    in_flight: bool
    running: float = 0.0
    ready: float = 0.0
    suspended: float = 0.0
    pool_queued: float = 0.0
    pool_running: float = 0.0
    #: What held the loop while the task was woken: label -> seconds.
    holders: dict[str, float] = field(default_factory=dict)
    #: Where it was suspended: label -> seconds.
    sites: dict[str, float] = field(default_factory=dict)
    #: Thread-pool work: label -> seconds (queued and running together).
    pool: dict[str, float] = field(default_factory=dict)
    #: What its own long steps ran (blocks and steps >= slow_callback): label -> seconds.
    ran: dict[str, float] = field(default_factory=dict)
    #: GC pauses during its running or ready time, seconds.
    gc: float = 0.0
    children: list[dict[str, Any]] = field(default_factory=list)
    #: The intervals it was woken but waiting for the loop (for findings about them).
    ready_spans: list[tuple[float, float]] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.end - self.start

    @property
    def accounted(self) -> float:
        return self.running + self.ready + self.suspended + self.pool_queued + self.pool_running


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _add(d: dict[str, float], key: str, value: float) -> None:
    if value > 0:
        d[key] = d.get(key, 0.0) + value


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def own_task(req: dict[str, Any], tasks: dict[Any, dict[str, Any]]) -> dict[str, Any] | None:
    """The task running the request: ``requests[].task``, else its earliest top-level task."""
    task = tasks.get(req.get("task"))
    if task is not None:
        return task
    ids = _list(req.get("tasks"))
    mine = [tasks[t] for t in ids if t in tasks]
    roots = [t for t in mine if t.get("parent") not in ids]
    roots.sort(key=lambda t: num(t.get("created")) or 0.0)
    return roots[0] if roots else None


def _wait_label(folder: StackFolder, wait: dict[str, Any] | None, fallback: str) -> str:
    if wait is None:
        return fallback
    frames = dicts(wait.get("stack"))
    if not frames:
        return fallback
    user = folder.user_frame(frames) or frames[-1]
    label = f"awaiting in {short_site(user)}"
    inner = frames[-1]
    if inner is not user and inner.get("function"):
        label = f"awaiting {text(inner.get('function'))} at {short_site(user)}"
    return label


def breakdown(
    doc: dict[str, Any], req: dict[str, Any], index: LoopIndex | None = None
) -> Breakdown | None:
    """The breakdown of ``req``'s own task, or None when the request has no known task."""
    folder = index.folder if index is not None else StackFolder(doc)
    index = index or LoopIndex(doc, folder)
    task = own_task(req, index.tasks)
    start = num(req.get("start"))
    if start is None:
        return None
    end = num(req.get("end"))
    in_flight = end is None
    if end is None:
        end = (
            num((doc.get("window") or {}).get("end"))
            if isinstance(doc.get("window"), dict)
            else None
        )
    if end is None or end < start:
        return None
    out = Breakdown(req, task, start, end, in_flight)
    if task is None:
        out.suspended = end - start
        _add(out.sites, "no task recorded for it", end - start)
        return out
    tid = task.get("id")
    jobs = [
        j for j in dicts(doc.get("events")) if j.get("kind") == "executor" and j.get("task") == tid
    ]
    out.children = [
        t
        for t in index.tasks.values()
        if t.get("parent") == tid and t.get("request") == req.get("id")
    ]

    def _short(a: float, b: float) -> str:
        # No stack for waits under the wait threshold: say what it likely awaited.
        alive = sum(
            1
            for c in out.children
            if (num(c.get("created")) or b) < b and (num(c.get("done")) or b) > a
        )
        if alive:
            return "awaiting its child tasks"
        return "short awaits"

    waits = sorted(dicts(task.get("waits")), key=lambda w: num(w.get("start")) or 0.0)
    wait_starts = [num(w.get("start")) or 0.0 for w in waits]

    def suspended(a: float, b: float, tail: bool = False) -> None:
        a, b = max(a, start), min(b, end)
        if b <= a:
            return
        rest = b - a
        if jobs:
            # Several jobs may overlap: each moment counts once, as queued when one of the
            # task's jobs waits for a thread (the pool holds the request up), else as
            # running when one of them runs.
            cuts = {a, b}
            spans = []
            for job in jobs:
                q, s0, e0 = num(job.get("start")), num(job.get("started")), num(job.get("end"))
                if q is None:
                    continue
                s1 = s0 if s0 is not None else b
                e1 = e0 if e0 is not None else b
                spans.append((q, s1, e1, text(job.get("func")) or "job"))
                cuts.update(x for x in (q, s1, e1) if a < x < b)
            edges = sorted(cuts)
            for x0, x1 in itertools.pairwise(edges):
                mid = (x0 + x1) / 2
                queued = next((f for q, s1, e1, f in spans if q <= mid < s1), None)
                if queued is not None:
                    out.pool_queued += x1 - x0
                    _add(out.pool, f"{queued} queued", x1 - x0)
                    rest -= x1 - x0
                    continue
                run = next((f for q, s1, e1, f in spans if s1 <= mid < e1), None)
                if run is not None:
                    out.pool_running += x1 - x0
                    _add(out.pool, f"{run} running", x1 - x0)
                    rest -= x1 - x0
        if rest <= 0:
            return
        out.suspended += rest
        if tail:
            label = _wait_label(folder, {"stack": task.get("awaiting")}, "still suspended")
        else:
            i = bisect.bisect_left(wait_starts, a - _SAME)
            wait = waits[i] if i < len(waits) and abs(wait_starts[i] - a) <= _SAME else None
            label = _wait_label(folder, wait, _short(a, b))
        _add(out.sites, label, rest)

    def ready(a: float, b: float) -> None:
        a, b = max(a, start), min(b, end)
        if b <= a:
            return
        out.ready += b - a
        out.ready_spans.append((a, b))
        held = 0.0
        for s, e, other in index.steps_between(a, b):
            if other == tid:
                continue
            o = _overlap(a, b, s, e)
            held += o
            _add(out.holders, index.step_label(s, e, other), o)
        for g in index.entries_between(a, b, "gc"):
            gs, gd = num(g.get("start")) or 0.0, num(g.get("duration")) or 0.0
            out.gc += _overlap(a, b, gs, gs + gd)
        if b - a - held > 1e-6:
            _add(out.holders, "the loop's own callbacks and I/O", b - a - held)

    prev_end = num(task.get("created"))
    for step in _list(task.get("steps")):
        if not isinstance(step, (list, tuple)) or len(step) < 4:
            continue
        s, d, rdy = num(step[0]), num(step[1]), num(step[3])
        if s is None or d is None:
            continue
        if prev_end is not None and s > prev_end:
            woken = s - rdy if rdy is not None else s
            suspended(prev_end, max(prev_end, woken))
            ready(max(prev_end, woken), s)
        elif prev_end is None and s > start:
            suspended(start, s)
        run = _overlap(start, end, s, s + d)
        out.running += run
        if run >= SLOW_STEP and (what := index.step_label(s, s + d, None)) != "?":
            _add(out.ran, what, run)
        if run > 0:
            for g in index.entries_between(s, s + d, "gc"):
                gs, gd = num(g.get("start")) or 0.0, num(g.get("duration")) or 0.0
                out.gc += _overlap(max(s, start), min(s + d, end), gs, gs + gd)
        prev_end = s + d
    if prev_end is None:
        prev_end = start
    if prev_end < end:
        # A step that had not ended: the block the watchdog saw in progress (``ongoing``),
        # named after this request, is its task running on the loop, not suspended.
        label = f"{req.get('method')} {req.get('path')}"
        held = [
            b
            for b in index.entries_between(prev_end, end, "block")
            if b.get("ongoing") is True and (text(b.get("callback")) or "").startswith(label)
        ]
        b0 = max(prev_end, min(num(b.get("start")) or end for b in held)) if held else end
        if b0 < end:
            suspended(prev_end, b0, tail=True)
            out.running += end - b0
            site = (text(held[0].get("callback")) or "?").removeprefix(label + ": ")
            _add(out.ran, f"a step still running at the end: {site}", end - b0)
        else:
            suspended(prev_end, end, tail=True)
    return out


def _top(d: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(d.items(), key=lambda kv: -kv[1])


def _names(d: dict[str, float], total: float) -> str:
    """The one or two items that make up most of ``total``, with their share."""
    from .common import fmt_duration as fd

    items = [(k, v) for k, v in _top(d) if v >= 0.1 * total][:2]
    if len(items) == 1 and items[0][1] >= 0.9 * total:
        return items[0][0]
    return ", ".join(f"{k} {fd(v)}" for k, v in items)


def sentence(b: Breakdown) -> str:
    """``GET /pdf 200 took 1.30 s: 1.10 s waiting for the loop while ... held it; ...``."""
    from .common import fmt_duration as fd

    head = request_label(b.request)
    head += f" in flight for {fd(b.total)}" if b.in_flight else f" took {fd(b.total)}"
    parts: list[tuple[float, str]] = []
    if b.ready > 0:
        who = _names(b.holders, b.ready) or "?"
        parts.append((b.ready, f"{fd(b.ready)} waiting for the loop while {who} held it"))
    if b.suspended > 0:
        where = _names(b.sites, b.suspended)
        parts.append((b.suspended, f"{fd(b.suspended)} suspended ({where})"))
    if b.pool_queued > 0:
        parts.append((b.pool_queued, f"{fd(b.pool_queued)} queued for the thread pool"))
    if b.pool_running > 0:
        parts.append((b.pool_running, f"{fd(b.pool_running)} running in the thread pool"))
    if b.running > 0:
        what = _names(b.ran, b.running)
        parts.append(
            (b.running, f"{fd(b.running)} running on the loop" + (f" ({what})" if what else ""))
        )
    parts = [p for p in parts if p[0] >= 0.02 * b.total] or parts
    if b.gc >= 0.02 * b.total:
        parts.append((b.gc * 0.0, f"garbage collection paused it {fd(b.gc)} of that"))
    parts.sort(key=lambda p: -p[0])
    return head + ": " + "; ".join(p[1] for p in parts) if parts else head


def table(b: Breakdown) -> list[str]:
    """The breakdown as indented lines: each part, then what it is made of."""
    from .common import fmt_duration as fd

    total = b.total or 1e-12
    lines = []
    task = b.task
    lines.append(f"own task {task_label(task)}" if task is not None else "own task: not recorded")
    rows = [
        ("running on the loop", b.running, b.ran),
        ("waiting for the loop", b.ready, b.holders),
        ("suspended", b.suspended, b.sites),
        (
            "thread pool queued",
            b.pool_queued,
            {k: v for k, v in b.pool.items() if k.endswith("queued")},
        ),
        (
            "thread pool running",
            b.pool_running,
            {k: v for k, v in b.pool.items() if k.endswith("running")},
        ),
    ]
    for name, value, detail in rows:
        if value <= 0 and name != "running on the loop":
            continue
        lines.append(f"  {name:<22}{fd(value):>10}  {100 * value / total:3.0f} %")
        for k, v in _top(detail)[:4]:
            lines.append(f"      {fd(v):>9}  {k}")
    if b.gc > 0:
        lines.append(f"  of which GC pauses    {fd(b.gc):>10}")
    for child in b.children[:5]:
        ran = sum(
            num(s[1]) or 0.0
            for s in _list(child.get("steps"))
            if isinstance(s, (list, tuple)) and len(s) > 1
        )
        lines.append(f"  child task {task_label(child)}: ran {fd(ran)}, {text(child.get('state'))}")
    if len(b.children) > 5:
        lines.append(f"  ... {len(b.children) - 5} more child tasks")
    return lines
