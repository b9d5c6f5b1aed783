"""The tracks of a Perfetto export, one function each, written through a ``TraceWriter``.

Order (Chrome "threads"): the event loop, request lanes (overlapping requests spread over as
few lanes as possible), executor threads, region lanes, then one track per task grouped by
request; flows join a request to its tasks' first steps and a task to its executor jobs.
"""

from __future__ import annotations

import bisect
from typing import Any

from .common import dicts, fmt_duration, num, request_label, section, text
from .trace import (
    C_BLOCK,
    C_CALLBACK,
    C_ERROR,
    C_EXECUTOR,
    C_GC,
    C_OK,
    C_PENDING,
    C_READY,
    C_REGION,
    C_STEP,
    C_SUSPENDED,
    C_WARN,
    P_BLOCK,
    TraceWriter,
    frames_text,
    ms,
    pack,
)

Spans = dict[Any, list[tuple[float, float]]]

#: How the trace exports (``perfetto.py`` and ``pftrace.py``, both through these functions)
#: draw each part of a document (``snapshot/build.py`` ``PARTS``): part -> where.
#: tests/export/test_kinds_rendered.py fails on a part in neither this nor ``NOT_DRAWN``,
#: and looks for each of these in a real export of one event of every kind.
DRAWN: dict[str, str] = {
    "requests": "a slice on a requests lane",
    "requests[].end": "the request slice's end, status and exception",
    "requests[].error_stack": "the request slice's raised_at argument (where it raised)",
    "tasks": "one track per task, grouped by request",
    "tasks[].steps": "step slices on the task's track and the event loop's",
    "tasks[].state": "an instant where a task ended in error or was cancelled",
    "tasks[].waits": "the await stack of the suspended slice it overlaps",
    "tasks[].awaiting": "the last suspended slice of a pending task (its awaiting argument)",
    "loop[block]": "a slice on the event loop with the stack taken while blocked",
    "loop[callback]": "a slice on the event loop",
    "loop[lag]": "the loop lag counter",
    "loop[gc]": "a slice on the event loop",
    "events[region]": "a slice on a regions lane",
    "events[log]": "an instant on its task's track (else the loop's)",
    "events[executor]": "a slice on its thread's track, a flow from the task that queued it",
    "events[cancel]": "an instant on the cancelled task's track",
    "events[trigger]": "a global instant for each trigger other than the snapshot's",
    "trigger": "the global instant TRIGGER",
}
#: Parts the trace exports leave out, with the reason.
NOT_DRAWN: dict[str, str] = {
    "loop[step]": "a long task step is already drawn as its task's step (tasks[].steps)",
}


def request_tracks(
    w: TraceWriter, requests: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[Any, tuple[int, float, float]]]:
    """Request spans packed into lanes; returns the drawn requests and ``id -> (tid, s, e)``."""
    assert w.w_end is not None
    w_end = w.w_end
    # Requests, packed into lanes.
    req_iv: list[tuple[float, float]] = []
    req_ok: list[dict[str, Any]] = []
    for r in requests:
        start = num(r.get("start"))
        if start is None:
            continue
        end = num(r.get("end"))
        req_iv.append((start, end if end is not None and end >= start else w_end))
        req_ok.append(r)
    req_lanes = pack(req_iv)
    lane_tids: dict[int, int] = {}
    for lane in sorted(set(req_lanes)):
        label = "requests" if lane == 0 else f"requests ({lane + 1})"
        lane_tids[lane] = w.track(label, 100 + lane)
    req_tid: dict[Any, tuple[int, float, float]] = {}
    for r, (start, end), lane in zip(req_ok, req_iv, req_lanes, strict=True):
        tid = lane_tids[lane]
        status = r.get("status")
        in_flight = num(r.get("end")) is None
        if in_flight:
            cname = C_PENDING
        elif r.get("error") or (isinstance(status, int) and status >= 500):
            cname = C_ERROR
        elif isinstance(status, int) and status >= 400:
            cname = C_WARN
        else:
            cname = C_OK
        ttfb = num(r.get("ttfb"))
        args = {
            "request": r.get("id"),
            "method": r.get("method"),
            "path": r.get("path"),
            "query": r.get("query") or None,
            "route": r.get("route"),
            "status": status,
            "duration_ms": ms(num(r.get("duration"))),
            "ttfb_ms": ms(ttfb),
            "client": r.get("client"),
            "disconnected": r.get("disconnected"),
            "error": r.get("error"),
            "raised_at": frames_text(r.get("error_stack")) or None,
            "in_flight": True if in_flight else None,
            "headers": r.get("headers") or None,
            "tasks": r.get("tasks") or None,
        }
        w.slice(tid, start, end, request_label(r), "request", args, cname)
        if ttfb is not None and 0 <= ttfb <= end - start:
            w.instant(tid, start + ttfb, "first byte", "request", {"request": r.get("id")})
        if r.get("id") is not None:
            req_tid[r.get("id")] = (tid, start, end)

    return req_ok, req_tid


def thread_tracks(w: TraceWriter, events: list[dict[str, Any]]) -> dict[str, int]:
    """One track per executor thread, in order of first use."""
    # Executor threads.
    thread_tids: dict[str, int] = {}
    for ev in events:
        if ev.get("kind") != "executor":
            continue
        thread = text(ev.get("thread")) or "executor"
        if thread not in thread_tids:
            thread_tids[thread] = w.track(thread, 10_000 + len(thread_tids))

    return thread_tids


def region_tracks(
    w: TraceWriter, events: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], float, float, int]]:
    """Region lanes; returns ``(region, start, end, tid)`` to draw once the tasks are placed."""
    # Regions, packed into lanes.
    regions = [
        (ev, s, s + (num(ev.get("duration")) or 0.0))
        for ev in events
        if ev.get("kind") == "region" and (s := num(ev.get("start"))) is not None
    ]
    region_lanes = pack([(s, e) for _, s, e in regions])
    region_tids: dict[int, int] = {}
    for lane in sorted(set(region_lanes)):
        label = "regions" if lane == 0 else f"regions ({lane + 1})"
        region_tids[lane] = w.track(label, 20_000 + lane)

    return [
        (ev, s, e, region_tids[lane])
        for (ev, s, e), lane in zip(regions, region_lanes, strict=True)
    ]


def region_slices(w: TraceWriter, regions: list[tuple[dict[str, Any], float, float, int]]) -> None:
    for ev, s, e, tid in regions:
        args = {"name": ev.get("name"), "task": ev.get("task"), "duration_ms": ms(e - s)}
        name = text(ev.get("name")) or "region"
        w.slice(tid, s, e, name, "region", args, C_REGION)


def task_tracks(
    w: TraceWriter,
    tasks: list[dict[str, Any]],
    requests: list[dict[str, Any]],
    req_ok: list[dict[str, Any]],
    loop_tid: int,
) -> tuple[dict[Any, int], Spans]:
    """One track per task, grouped by request in request order; ``(tids, steps)`` by task id."""
    # Tasks, grouped by request in request order.
    req_order = {r.get("id"): i for i, r in enumerate(sorted(req_ok, key=lambda r: r["start"]))}

    def task_key(t: dict[str, Any]) -> tuple[int, float]:
        created = num(t.get("created"))
        return (req_order.get(t.get("request"), -1), created if created is not None else 0.0)

    req_by_id = {r.get("id"): r for r in requests}
    task_tid: dict[Any, int] = {}
    task_steps: dict[Any, list[tuple[float, float]]] = {}
    for n, task in enumerate(sorted(tasks, key=task_key)):
        label = f"task {text(task.get('id'))} {text(task.get('coro')) or text(task.get('name'))}"
        req = req_by_id.get(task.get("request"))
        if req is not None:
            label += f" [{request_label(req)}]"
        tid = w.track(label.strip(), 30_000 + n)
        task_tid[task.get("id")] = tid
        steps = task_track(w, task, tid, loop_tid)
        task_steps[task.get("id")] = steps
    return task_tid, task_steps


def spawn_flows(
    w: TraceWriter,
    req_ok: list[dict[str, Any]],
    req_tid: dict[Any, tuple[int, float, float]],
    task_tid: dict[Any, int],
    task_steps: Spans,
) -> None:
    """A flow from each request to the first step of each of its tasks."""
    first_step = {k: v[0] for k, v in task_steps.items() if v}
    # Request -> first step of each of its tasks.
    for r in req_ok:
        where = req_tid.get(r.get("id"))
        tids = r.get("tasks")
        if where is None or not isinstance(tids, list):
            continue
        rtid, rs, re_ = where
        for t_id in tids:
            if not isinstance(t_id, (str, int)) or t_id not in first_step:
                continue
            s, e = first_step[t_id]
            dst_t = (s + e) / 2  # mid-slice: a slice edge is shared with its neighbour
            src_t = s if rs < s < re_ else (rs + re_) / 2
            w.flow(rtid, src_t, task_tid[t_id], dst_t, "spawn", {"task": t_id})


def event_marks(
    w: TraceWriter,
    events: list[dict[str, Any]],
    thread_tids: dict[str, int],
    task_tid: dict[Any, int],
    task_steps: Spans,
    loop_tid: int,
) -> None:
    """Executor jobs, cancellations and log lines, on the track they belong to."""
    for ev in events:
        kind = ev.get("kind")
        if kind == "executor":
            executor_job(w, ev, thread_tids, task_tid, task_steps)
        elif kind == "cancel":
            start = num(ev.get("start"))
            ctid = task_tid.get(ev.get("task"))
            if start is None or ctid is None:
                continue
            cause = text(ev.get("cause")) or "unknown"
            cargs = {"cause": cause, "task": ev.get("task"), "at": frames_text(ev.get("stack"))}
            w.instant(ctid, start, f"cancelled ({cause})", "cancel", cargs)
        elif kind == "log":
            start = num(ev.get("start"))
            if start is None:
                continue
            tid = task_tid.get(ev.get("task"), loop_tid)
            cat, msg = text(ev.get("category")), text(ev.get("message"))
            name = f"{cat}: {msg}" if cat else msg
            args = {"category": cat, "message": msg, "task": ev.get("task")}
            w.instant(tid, start, name[:120] or "log", "log", args)


def task_track(
    w: TraceWriter, task: dict[str, Any], tid: int, loop_tid: int
) -> list[tuple[float, float]]:
    """Steps, suspensions and ready periods of one task; returns its (start, end) steps."""
    assert w.w_start is not None and w.w_end is not None
    t_id = task.get("id")
    what = text(task.get("coro")) or text(task.get("name")) or f"task {text(t_id)}"
    created = num(task.get("created"))
    done = num(task.get("done"))
    prev_end = max(created, w.w_start) if created is not None else None
    waits = sorted(
        (
            (s, s + (num(w.get("duration")) or 0.0), w)
            for w in dicts(task.get("waits"))
            if (s := num(w.get("start"))) is not None
        ),
        key=lambda x: x[0],
    )
    wait_starts = [w[0] for w in waits]
    base = {"task": t_id, "request": task.get("request")}
    out: list[tuple[float, float]] = []

    def suspended(a: float, b: float, extra: dict[str, Any]) -> None:
        # Attach the recorded await stack of the suspension that overlaps most.
        args = {**base, **extra, "duration_ms": ms(b - a)}
        i = bisect.bisect_right(wait_starts, b) - 1
        if 0 <= i < len(waits) and waits[i][1] > a:
            args["await_stack"] = frames_text(waits[i][2].get("stack"))
        w.slice(tid, a, b, "suspended", "suspended", args, C_SUSPENDED)

    steps = task.get("steps")
    for step in steps if isinstance(steps, list) else ():
        if not isinstance(step, (list, tuple)) or not step:
            continue
        start = num(step[0])
        dur = num(step[1]) if len(step) > 1 else None
        if start is None:
            continue
        end = start + max(0.0, dur or 0.0)
        waited = num(step[2]) if len(step) > 2 else None
        ready = num(step[3]) if len(step) > 3 else None
        if prev_end is None and waited is not None:
            prev_end = max(w.w_start, start - (ready or 0.0) - waited)
        if prev_end is not None and prev_end < start:
            woke = start - ready if ready is not None else start
            woke = min(start, max(prev_end, woke))
            if woke > prev_end:
                suspended(prev_end, woke, {"waited_ms": ms(waited)})
            if start > woke:
                args = {**base, "ready_ms": ms(ready)}
                w.slice(tid, woke, start, "ready", "ready", args, C_READY)
        args = {
            **base,
            "coro": task.get("coro"),
            "name": task.get("name"),
            "duration_ms": ms(end - start),
            "waited_ms": ms(waited),
            "ready_ms": ms(ready),
        }
        w.slice(tid, start, end, what, "step", args, C_STEP)
        # The loop track carries only what identifies the task, to keep big traces small.
        w.slice(loop_tid, start, end, what, "step", base, C_STEP)
        out.append((start, end))
        prev_end = end if prev_end is None else max(prev_end, end)
    state = text(task.get("state"))
    if prev_end is not None:
        if done is None and state in ("pending", ""):
            # Still suspended when the snapshot was taken: show where.
            if w.w_end > prev_end:
                extra = {"awaiting": frames_text(task.get("awaiting")) or None}
                suspended(prev_end, w.w_end, extra)
        elif done is not None and done > prev_end:
            suspended(prev_end, min(done, w.w_end), {})
    if done is not None and state in ("error", "cancelled"):
        name = f"task {state}" + (f": {text(task.get('error'))}" if task.get("error") else "")
        w.instant(tid, done, name, "task", {**base, "state": state})
    return out


def loop_track(w: TraceWriter, loop_tid: int) -> None:
    """Blocks, GC pauses, slow callbacks and the lag counter on the event-loop track."""
    for ev in dicts(w.doc.get("loop")):
        kind = ev.get("kind")
        start = num(ev.get("start"))
        dur = max(0.0, num(ev.get("duration")) or 0.0)
        if start is None:
            continue
        cb = text(ev.get("callback"))
        if kind == "step":
            continue  # a long task step: already drawn as that task's step
        if kind == "gc":
            gen = text(ev.get("generation"))
            gargs = {"generation": ev.get("generation"), "collected": ev.get("collected")}
            gargs["duration_ms"] = ms(dur)
            w.slice(loop_tid, start, start + dur, f"GC gen {gen}", "gc", gargs, C_GC, P_BLOCK)
            continue
        if kind == "block":
            name = f"loop blocked {fmt_duration(dur)}" + (f" ({cb})" if cb else "")
            if ev.get("ongoing") is True:
                name += " (ongoing)"
            args: dict[str, Any] = {"callback": cb or None, "duration_ms": ms(dur)}
            args["stack"] = frames_text(ev.get("stack")) or None
            w.slice(loop_tid, start, start + dur, name, "block", args, C_BLOCK, P_BLOCK)
        elif kind == "lag":
            w.counter(loop_tid, start, "loop lag (ms)", {"lag": ms(dur)})
            w.counter(loop_tid, start + max(dur, 0.001), "loop lag (ms)", {"lag": 0})
        else:
            args = {"callback": cb or None, "kind": kind, "duration_ms": ms(dur)}
            args["stack"] = frames_text(ev.get("stack")) or None
            w.slice(loop_tid, start, start + dur, cb or text(kind), "callback", args, C_CALLBACK)


def executor_job(
    w: TraceWriter,
    ev: dict[str, Any],
    thread_tids: dict[str, int],
    task_tid: dict[Any, int],
    task_steps: dict[Any, list[tuple[float, float]]],
) -> None:
    assert w.w_end is not None
    queued = num(ev.get("start"))
    started = num(ev.get("started"))
    if started is None:
        return
    end = num(ev.get("end"))
    if end is None or end < started:
        end = max(started, w.w_end)
    tid = thread_tids[text(ev.get("thread")) or "executor"]
    func = text(ev.get("func")) or "executor job"
    args = {
        "func": func,
        "thread": ev.get("thread"),
        "task": ev.get("task"),
        "request": ev.get("request"),
        "queued_ms": ms(started - queued) if queued is not None else None,
        "duration_ms": ms(end - started),
        "error": ev.get("error"),
        "running": True if num(ev.get("end")) is None else None,
    }
    w.slice(tid, started, end, func, "executor", args, C_ERROR if ev.get("error") else C_EXECUTOR)
    src_tid = task_tid.get(ev.get("task"))
    if src_tid is not None and queued is not None:
        # The submit happened inside one of the task's steps, if it was recorded.
        for s, e in task_steps.get(ev.get("task"), ()):
            if s <= queued <= e:
                w.flow(src_tid, queued, tid, (started + end) / 2, "executor", {"func": func})
                break


def trigger_marks(w: TraceWriter, loop_tid: int) -> None:
    """The trigger as a global instant, and every other trigger mark in the window."""
    assert w.w_end is not None
    trig = section(w.doc, "trigger")
    kind = text(trig.get("kind")) or "trigger"
    reason = text(trig.get("reason"))
    t = num(trig.get("time"))
    marks = [e for e in dicts(w.doc.get("events")) if e.get("kind") == "trigger"]
    if t is None:
        same = [num(m.get("start")) for m in marks if m.get("trigger_kind") == kind]
        t = next((s for s in reversed(same) if s is not None), w.w_end)
    req = trig.get("request") if isinstance(trig.get("request"), dict) else None
    args = {"kind": kind, "reason": reason, "request": request_label(req) if req else None}
    w.instant(loop_tid, t, f"TRIGGER {kind}", "trigger", args, scope="g")
    for m in marks:
        s = num(m.get("start"))
        if s is None or (m.get("trigger_kind") == kind and abs(s - t) < 0.001):
            continue
        mk = text(m.get("trigger_kind")) or "trigger"
        margs = {"kind": mk, "reason": text(m.get("reason"))}
        w.instant(loop_tid, s, f"trigger {mk}", "trigger", margs, scope="g")
