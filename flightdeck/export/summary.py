"""Plain-text reading of a snapshot: the "what stands out" findings and the CLI summary.

Every accessor is defensive: documents come from disk or other versions of flightdeck, so
any list may be empty, any value null or of an unexpected type.
"""

from __future__ import annotations

import gc
from typing import Any

from .breakdown import breakdown, sentence, table
from .common import (
    dicts,
    fmt_duration,
    num,
    request_label,
    section,
    split_processes,
    task_label,
    text,
    utc_text,
)
from .diagnose import FLIGHTDECK, SERVER, USER, cancellations, first_use, grouped
from .findings import (
    LONG_WAIT,
    Reading,
    findings,
    host_findings,
    long_waits,
    ranked,
    request_duration,
    sched_delays,
    wait_site,
    why,
)

__all__ = ["findings", "fmt_duration", "request_duration", "summarize"]


class UnknownRequest(LookupError):
    """``summarize(request=ID)`` names a request the snapshot does not hold."""


def _window(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    win = section(doc, "window")
    return num(win.get("start")), num(win.get("end"))


def _request_of(task: dict[str, Any], reqs: dict[Any, dict[str, Any]]) -> str:
    req = reqs.get(task.get("request"))
    return f" ({request_label(req)})" if req else ""


def _utc(ts: float | None) -> str:
    return utc_text(ts, "%H:%M:%S.%f")


def _rel(ts: float | None, w_start: float | None) -> str:
    if ts is None or w_start is None:
        return "?"
    return f"+{ts - w_start:.3f} s"


def _fleet_line(trig: dict[str, Any]) -> str:
    """The incident a snapshot belongs to, who opened it, and the trigger request's trace."""
    bits = []
    if trig.get("incident"):
        bits.append(f"incident {text(trig.get('incident'))}")
    origin = trig.get("origin")
    if isinstance(origin, dict):
        bits.append(
            f"opened by {text(origin.get('service'))} (pid {text(origin.get('pid'))} on"
            f" {text(origin.get('hostname'))}): {text(origin.get('kind'))}"
        )
    request = trig.get("request")
    if isinstance(request, dict) and request.get("trace_id"):
        bits.append(f"trace {text(request.get('trace_id'))}")
    return ", ".join(bits)


def summarize(doc: dict[str, Any], *, request: Any = None, full: bool = False) -> str:
    """The ``flightdeck summary`` text: the trigger and why it was slow, then what stands out.

    ``request``: explain this request id instead of the trigger's (``UnknownRequest`` if the
    snapshot lacks it). ``full``: show library frames instead of folding them.
    """
    # A whole window's document is millions of objects, and a reading makes many more that
    # live as long: the cyclic GC's passes over them would cost more than the reading.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _summarize(doc, request=request, full=full)
    finally:
        if gc_was_enabled:
            gc.enable()


def _summarize(doc: dict[str, Any], *, request: Any, full: bool) -> str:
    lines: list[str] = []
    add = lines.append
    parts = split_processes(doc)
    if len(parts) > 1:
        return host_summary(doc, parts, request=request, full=full)
    trig = section(doc, "trigger")
    proc = section(doc, "process")
    win = section(doc, "window")
    w_start, w_end = _window(doc)
    r = Reading(doc)
    reqs = r.index.requests
    folder = r.folder
    focus = r.trigger
    if request is not None:
        req = r.request(request)
        if req is None:
            raise UnknownRequest(f"no request {request} in this snapshot")
        focus = breakdown(doc, req, r.index)

    add(f"snapshot {text(doc.get('id'))}  created {text(doc.get('created_at'))}")
    reason = text(trig.get("reason"))
    add(f"trigger:  {text(trig.get('kind')) or '?'}" + (f" — {reason}" if reason else ""))
    why_line = why(r) if request is None else sentence(focus) if focus is not None else None
    if why_line is not None:
        add(f"why:      {why_line}")
    fleet = _fleet_line(trig)
    if fleet:
        add(f"fleet:    {fleet}")
    service = text(proc.get("service"))
    add(
        ("process:  " + (f"{service}, " if service else ""))
        + f"pid {text(proc.get('pid')) or '?'} on {text(proc.get('hostname')) or '?'}, "
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
    every = ranked(r)
    found = [f.text for f in every if not f.earlier]
    if why_line is not None:
        found = [f for f in found if f != why_line]  # said on the "why" line already
    lines.extend(f"  - {f}" for f in found) if found else add("  nothing")
    before = [f.text for f in every if f.earlier]
    if before:
        add("")
        add("earlier in the window (over before the trigger's request began):")
        lines.extend(f"  - {f}" for f in before)

    if focus is not None:
        add("")
        rid = text(focus.request.get("id"))
        add(f"where the time of {request_label(focus.request)} (request {rid}) went:")
        lines.extend(f"  {line}" for line in table(focus))

    add("")
    add(f"what held the loop (≥ {fmt_duration(0.01)}, blocks and steps together):")
    if not r.hogs:
        add("  nothing")
    for hg in grouped(r.hogs)[:8]:
        h = hg.first
        where = f"  at {_rel(h.start, w_start)}"
        if len(hg.hogs) > 1:
            where = f"  {len(hg.hogs)} times, longest {fmt_duration(hg.longest)}, first{where}"
        req = reqs.get(h.request)
        whose = r.hog_owner(h)
        note = (
            " (flightdeck's own)"
            if whose == FLIGHTDECK
            else " (the server's)"
            if whose == SERVER
            else " (first use: import or set-up)"
            if first_use(h.label, h.stack)
            else ""
        )
        add(
            f"  {fmt_duration(hg.total):>9}  {h.kind:<8} {h.label}"
            + (f" ({request_label(req)})" if req else "")
            + note
            + where
        )

    add("")
    rows = []
    for req in dicts(doc.get("requests")):
        dur, in_flight = request_duration(req, w_end)
        rows.append((dur if dur is not None else -1.0, in_flight, req))
    rows.sort(key=lambda x: -x[0])
    add(f"slowest requests ({len(rows)} in window):")
    if not rows:
        add("  none")
    for dur, in_flight, req in rows[:5]:
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
        if req.get("trace_id"):
            bits.append(f"trace {text(req.get('trace_id'))}")
        if req.get("error"):
            raised_at = dicts(req.get("error_stack"))
            bits.append(
                f"error {text(req.get('error'))}"
                + (f" raised at {folder.site(raised_at)}" if raised_at else "")
            )
        if req.get("disconnected"):
            bits.append("client disconnected")
        tasks = req.get("tasks")
        if isinstance(tasks, list) and tasks:
            bits.append(f"[{len(tasks)} task{'s' if len(tasks) != 1 else ''}]")
        bits.append(f"id {text(req.get('id'))}")
        bits.append(f"at {_rel(num(req.get('start')), w_start)}")
        add("  " + "  ".join(bits))

    add("")
    blocks = sorted(
        (e for e in dicts(doc.get("loop")) if e.get("kind") == "block"),
        key=lambda e: -(num(e.get("duration")) or 0.0),
    )
    add(f"worst loop blocks ({len(blocks)}):")
    if not blocks:
        add("  none")
    for block in blocks[:3]:
        head = f"  {fmt_duration(num(block.get('duration'))):>9}"
        head += f"  at {_rel(num(block.get('start')), w_start)}"
        if block.get("callback"):
            head += f"  {text(block.get('callback'))}"
        if block.get("ongoing") is True:
            head += "  (ongoing: had not ended when the window ends)"
        add(head)
        frames = dicts(block.get("stack"))
        if frames:
            add("      stack (innermost last):")
            lines.extend(f"        {ln}" for ln in folder.lines(frames, full=full))
        else:
            add("      (no stack captured)")

    groups, delivered, ended = cancellations(doc, r.index)
    if groups:
        add("")
        add(f"cancellations: {delivered} delivered to waiting tasks, {ended} tasks ended cancelled")
        for g in groups[:6]:
            add(f"  {g.count:>6} ×  {g.what} at {g.site}  cause: {g.cause}")
        if len(groups) > 6:
            add(f"  ... {len(groups) - 6} more groups")

    pauses = [e for e in r.index.entries if e.get("kind") == "gc"]
    if pauses:
        total = sum(num(e.get("duration")) or 0.0 for e in pauses)
        add("")
        add(f"garbage collection: {len(pauses)} pauses ≥ 1 ms, {fmt_duration(total)} in all")
        for e in sorted(pauses, key=lambda e: -(num(e.get("duration")) or 0.0))[:3]:
            add(
                f"  {fmt_duration(num(e.get('duration'))):>9}"
                f"  generation {text(e.get('generation'))}, {text(e.get('collected'))} collected"
                f"  at {_rel(num(e.get('start')), w_start)}"
            )

    add("")
    delays = sched_delays(doc, r)
    add("worst scheduling delays (woken but waiting for the loop):")
    if not delays:
        add("  none measured")
    for ready, start, task in delays[:5]:
        add(
            f"  {fmt_duration(ready):>9}  task {task_label(task)}{_request_of(task, reqs)}"
            f"  at {_rel(start, w_start)}"
        )

    add("")
    waits = long_waits(doc, r)
    add(f"long waits (suspended ≥ {fmt_duration(LONG_WAIT)}):")
    if not waits:
        add("  none")
    for dur, wait, task in waits[:5]:
        still = "  (still waiting at capture)" if wait.get("ongoing") else ""
        add(f"  {fmt_duration(dur):>9}  task {task_label(task)}{_request_of(task, reqs)}{still}")
        add(f"             at {wait_site(wait, folder)}")
    pending = [t for t in dicts(doc.get("tasks")) if t.get("awaiting") and dicts(t.get("awaiting"))]
    # The app's own first; flightdeck's and the server's are said to be theirs.
    pending.sort(key=lambda t: r.owner(t.get("id")) != USER)
    if pending:
        add("")
        add(f"tasks still pending at snapshot time ({len(pending)}):")
        for task in pending[:5]:
            whose = r.owner(task.get("id"))
            note = {FLIGHTDECK: " (flightdeck's own)", SERVER: " (the server's)"}.get(whose, "")
            add(f"  task {task_label(task)}{_request_of(task, reqs)}{note}")
            add(f"             awaiting at {wait_site({'stack': task.get('awaiting')}, folder)}")

    add("")
    add(f"dropped: {int(num(win.get('dropped')) or 0)} events")
    return "\n".join(lines) + "\n"


def host_summary(
    doc: dict[str, Any], parts: list[dict[str, Any]], *, request: Any = None, full: bool = False
) -> str:
    """The summary of a host capture: the capturing process's (or, with ``request``, the one
    holding that request), its "what stands out" reading across every process, each finding
    named after its process; then a line for each other process."""
    focus = parts[0]
    if request is not None:
        holding = [p for p in parts if Reading(p).request(request) is not None]
        if not holding:
            raise UnknownRequest(f"no request {request} in this snapshot")
        focus = holding[0]
    lines = summarize(focus, request=request, full=full).splitlines()
    listed = []
    for p in dicts(doc.get("processes")):
        if p.get("error"):
            listed.append(f"pid {text(p.get('pid')) or '?'} (not read: {text(p.get('error'))})")
        else:
            listed.append(f"pid {text(p.get('pid'))}")
    at = next((i for i, line in enumerate(lines) if line.startswith("process:")), 0)
    lines.insert(at + 1, f"processes: {len(listed)} in this capture: {', '.join(listed)}")
    # "what stands out": every process's findings, named after their process.
    start = lines.index("what stands out:") + 1
    end = start
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    every = host_findings(parts)
    found = [f for f in every if not f.startswith("earlier: ")]
    lines[start:end] = [f"  - {f}" for f in found] or ["  nothing"]
    head = "earlier in the window (over before the trigger's request began):"
    if head in lines:
        start = lines.index(head) + 1
        end = start
        while end < len(lines) and lines[end].startswith("  "):
            end += 1
        lines[start:end] = [f"  - {f.removeprefix('earlier: ')}" for f in every if f not in found]
    lines.append("")
    lines.append(f"the other processes ({len(parts) - 1}):")
    for part in parts:
        if part is focus:
            continue
        proc = section(part, "process")
        reqs = dicts(part.get("requests"))
        blocks = [
            num(e.get("duration")) or 0.0
            for e in dicts(part.get("loop"))
            if e.get("kind") == "block"
        ]
        worst = f", worst {fmt_duration(max(blocks))}" if blocks else ""
        lines.append(
            f"  pid {text(proc.get('pid'))} on {text(proc.get('hostname')) or '?'}:"
            f" {len(reqs)} requests, {len(dicts(part.get('tasks')))} tasks,"
            f" {len(blocks)} loop blocks{worst}"
        )
    return "\n".join(lines) + "\n"
