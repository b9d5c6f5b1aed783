"""Export a snapshot as Chrome Trace Event JSON, for ui.perfetto.dev and chrome://tracing.

Layout: one process (the snapshot's pid) with these tracks (Chrome "threads"), in order:
the event loop, request lanes (overlapping requests spread over as few lanes as possible),
executor threads, region lanes, then one track per task grouped by request. Only complete
("X") events are used for slices, and every track is made properly nested before it is
written, because both viewers misdraw slices that overlap without nesting.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Any

import orjson

from .common import dicts, fmt_duration, frame_text, num, request_label, section, text

__all__ = ["to_perfetto"]

# Chrome's reserved color names (trace_viewer's color scheme); Perfetto ignores most.
C_STEP = "thread_state_running"
C_READY = "thread_state_runnable"
C_SUSPENDED = "thread_state_sleeping"
C_BLOCK = "terrible"
C_CALLBACK = "generic_work"
C_OK = "good"
C_WARN = "yellow"
C_ERROR = "bad"
C_PENDING = "grey"
C_REGION = "olive"
C_EXECUTOR = "rail_load"
C_GC = "rail_idle"

# Sort priority among slices that start together: the lower one becomes the parent.
P_BLOCK, P_NORMAL = 0, 1


def _pack(intervals: list[tuple[float, float]]) -> list[int]:
    """Assign each (start, end) a lane so that slices in a lane do not overlap."""
    order = sorted(range(len(intervals)), key=lambda i: intervals[i])
    lanes = [0] * len(intervals)
    busy: list[tuple[float, int]] = []  # (end, lane)
    free: list[int] = []
    n_lanes = 0
    for i in order:
        start, end = intervals[i]
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane = n_lanes
            n_lanes += 1
        lanes[i] = lane
        heapq.heappush(busy, (max(end, start), lane))
    return lanes


def _frames(stack: object) -> list[str]:
    return [frame_text(f) for f in dicts(stack)]


def _r3(x: float) -> float:
    # Three decimals without round(), which dominates the export time of big windows.
    return int(x * 1000.0 + (0.5 if x >= 0 else -0.5)) / 1000.0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else _r3(seconds * 1e3)


class _Builder:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        proc = section(doc, "process")
        pid = proc.get("pid")
        self.pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else 1
        win = section(doc, "window")
        self.w_start = num(win.get("start"))
        self.w_end = num(win.get("end"))
        if self.w_start is None or self.w_end is None:
            times = self._times() or [0.0]
            self.w_start = min(times) if self.w_start is None else self.w_start
            self.w_end = max(times) if self.w_end is None else self.w_end
        if self.w_end < self.w_start:
            self.w_end = self.w_start
        self.out: list[dict[str, Any]] = []
        # Per track: pending slices (start_us, end_us, priority, event) until nesting is fixed.
        self.pending: dict[int, list[tuple[float, float, int, dict[str, Any]]]] = {}
        # Per track after emission: sorted (start_us, end_us), for placing flow endpoints.
        self.spans: dict[int, list[tuple[float, float]]] = {}
        self.names: dict[int, tuple[str, int]] = {}
        self.next_tid = 1
        self.flows: list[tuple[int, float, int, float, str, dict[str, Any]]] = []

    def _times(self) -> list[float]:
        """Every start and end in the document, for when the window bounds are missing."""
        times: list[float] = []
        for r in dicts(self.doc.get("requests")):
            times += [t for k in ("start", "end") if (t := num(r.get(k))) is not None]
        for e in dicts(self.doc.get("loop")) + dicts(self.doc.get("events")):
            if (s := num(e.get("start"))) is not None:
                times += [s, s + (num(e.get("duration")) or 0.0)]
        for task in dicts(self.doc.get("tasks")):
            steps = task.get("steps")
            for step in steps if isinstance(steps, list) else ():
                if isinstance(step, list) and len(step) > 1 and (s := num(step[0])) is not None:
                    times += [s, s + (num(step[1]) or 0.0)]
        return times

    # -- helpers -----------------------------------------------------------------------

    def us(self, t: float) -> float:
        assert self.w_start is not None
        return _r3((t - self.w_start) * 1e6)

    def track(self, name: str, sort: int) -> int:
        tid = self.next_tid
        self.next_tid += 1
        self.names[tid] = (name, sort)
        return tid

    def slice(
        self,
        tid: int,
        start: float,
        end: float,
        name: str,
        cat: str,
        args: dict[str, Any],
        cname: str | None = None,
        prio: int = P_NORMAL,
    ) -> None:
        s, e = self.us(start), self.us(end)
        ev: dict[str, Any] = {"ph": "X", "name": name, "cat": cat, "pid": self.pid, "tid": tid}
        ev["args"] = {k: v for k, v in args.items() if v is not None}
        if cname:
            ev["cname"] = cname
        self.pending.setdefault(tid, []).append((s, max(s, e), prio, ev))

    def instant(
        self, tid: int, t: float, name: str, cat: str, args: dict[str, Any], scope: str = "t"
    ) -> None:
        ev = {"ph": "i", "s": scope, "name": name, "cat": cat, "ts": self.us(t), "pid": self.pid}
        ev["tid"] = tid
        ev["args"] = {k: v for k, v in args.items() if v is not None}
        self.out.append(ev)

    def flow(
        self, src: int, src_t: float, dst: int, dst_t: float, name: str, args: dict[str, Any]
    ) -> None:
        self.flows.append((src, self.us(src_t), dst, self.us(dst_t), name, args))

    def flush_slices(self) -> None:
        """Emit pending slices with children clamped inside their parent, per track."""
        for tid, items in self.pending.items():
            items.sort(key=lambda x: (x[0], x[0] - x[1], x[2]))
            open_ends: list[float] = []
            spans: list[tuple[float, float]] = []
            for start, end, _prio, ev in items:
                while open_ends and open_ends[-1] <= start:
                    open_ends.pop()
                if open_ends and end > open_ends[-1]:
                    # Overlap without nesting (clock granularity, a block reported a hair
                    # off its step): the viewers need strict nesting, so clip the child.
                    end = open_ends[-1]
                open_ends.append(end)
                ev["ts"] = start
                ev["dur"] = _r3(end - start)
                spans.append((start, end))
                self.out.append(ev)
            self.spans[tid] = spans
        self.pending.clear()

    def _inside(self, tid: int, ts: float) -> tuple[float, float] | None:
        """A slice on ``tid`` containing ``ts`` (the innermost-starting one), if any."""
        spans = self.spans.get(tid)
        if not spans:
            return None
        i = bisect.bisect_right(spans, (ts, float("inf"))) - 1
        # Slices are nested, so walking back over at most a few enclosing ones suffices.
        for j in range(i, max(-1, i - 64), -1):
            s, e = spans[j]
            if s <= ts <= e:
                return s, e
        return None

    def flush_flows(self) -> None:
        for n, (src, src_ts, dst, dst_ts, name, args) in enumerate(self.flows, start=1):
            a = self._inside(src, src_ts)
            b = self._inside(dst, dst_ts)
            if a is None or b is None:
                continue
            common = {"name": name, "cat": "flow", "id": n, "pid": self.pid}
            self.out.append({**common, "ph": "s", "ts": src_ts, "tid": src, "args": args})
            self.out.append({**common, "ph": "f", "bp": "e", "ts": dst_ts, "tid": dst})

    # -- tracks ------------------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        doc = self.doc
        assert self.w_start is not None and self.w_end is not None
        w_end = self.w_end
        requests = dicts(doc.get("requests"))
        tasks = dicts(doc.get("tasks"))
        events = dicts(doc.get("events"))
        loop_tid = self.track("event loop", 0)

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
        req_lanes = _pack(req_iv)
        lane_tids: dict[int, int] = {}
        for lane in sorted(set(req_lanes)):
            label = "requests" if lane == 0 else f"requests ({lane + 1})"
            lane_tids[lane] = self.track(label, 100 + lane)
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
                "duration_ms": _ms(num(r.get("duration"))),
                "ttfb_ms": _ms(ttfb),
                "client": r.get("client"),
                "disconnected": r.get("disconnected"),
                "error": r.get("error"),
                "in_flight": True if in_flight else None,
                "headers": r.get("headers") or None,
                "tasks": r.get("tasks") or None,
            }
            self.slice(tid, start, end, request_label(r), "request", args, cname)
            if ttfb is not None and 0 <= ttfb <= end - start:
                self.instant(tid, start + ttfb, "first byte", "request", {"request": r.get("id")})
            if r.get("id") is not None:
                req_tid[r.get("id")] = (tid, start, end)

        # Executor threads.
        thread_tids: dict[str, int] = {}
        for ev in events:
            if ev.get("kind") != "executor":
                continue
            thread = text(ev.get("thread")) or "executor"
            if thread not in thread_tids:
                thread_tids[thread] = self.track(thread, 10_000 + len(thread_tids))

        # Regions, packed into lanes.
        regions = [
            (ev, s, s + (num(ev.get("duration")) or 0.0))
            for ev in events
            if ev.get("kind") == "region" and (s := num(ev.get("start"))) is not None
        ]
        region_lanes = _pack([(s, e) for _, s, e in regions])
        region_tids: dict[int, int] = {}
        for lane in sorted(set(region_lanes)):
            label = "regions" if lane == 0 else f"regions ({lane + 1})"
            region_tids[lane] = self.track(label, 20_000 + lane)

        # Tasks, grouped by request in request order.
        req_order = {r.get("id"): i for i, r in enumerate(sorted(req_ok, key=lambda r: r["start"]))}

        def task_key(t: dict[str, Any]) -> tuple[int, float]:
            created = num(t.get("created"))
            return (req_order.get(t.get("request"), -1), created if created is not None else 0.0)

        req_by_id = {r.get("id"): r for r in requests}
        task_tid: dict[Any, int] = {}
        first_step: dict[Any, tuple[float, float]] = {}
        task_steps: dict[Any, list[tuple[float, float]]] = {}
        for n, task in enumerate(sorted(tasks, key=task_key)):
            label = (
                f"task {text(task.get('id'))} {text(task.get('coro')) or text(task.get('name'))}"
            )
            req = req_by_id.get(task.get("request"))
            if req is not None:
                label += f" [{request_label(req)}]"
            tid = self.track(label.strip(), 30_000 + n)
            task_tid[task.get("id")] = tid
            steps = self._task(task, tid, loop_tid)
            task_steps[task.get("id")] = steps
            if steps:
                first_step[task.get("id")] = steps[0]

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
                self.flow(rtid, src_t, task_tid[t_id], dst_t, "spawn", {"task": t_id})

        self._loop(loop_tid)

        for ev in events:
            kind = ev.get("kind")
            if kind == "executor":
                self._executor(ev, thread_tids, task_tid, task_steps)
            elif kind == "cancel":
                start = num(ev.get("start"))
                ctid = task_tid.get(ev.get("task"))
                if start is None or ctid is None:
                    continue
                cause = text(ev.get("cause")) or "unknown"
                cargs = {"cause": cause, "task": ev.get("task"), "at": _frames(ev.get("stack"))}
                self.instant(ctid, start, f"cancelled ({cause})", "cancel", cargs)
            elif kind == "log":
                start = num(ev.get("start"))
                if start is None:
                    continue
                tid = task_tid.get(ev.get("task"), loop_tid)
                cat, msg = text(ev.get("category")), text(ev.get("message"))
                name = f"{cat}: {msg}" if cat else msg
                args = {"category": cat, "message": msg, "task": ev.get("task")}
                self.instant(tid, start, name[:120] or "log", "log", args)
        for (ev, s, e), lane in zip(regions, region_lanes, strict=True):
            args = {"name": ev.get("name"), "task": ev.get("task"), "duration_ms": _ms(e - s)}
            name = text(ev.get("name")) or "region"
            self.slice(region_tids[lane], s, e, name, "region", args, C_REGION)

        self._triggers(loop_tid)
        self.flush_slices()
        self.flush_flows()
        self._metadata()
        return {
            "traceEvents": self.out,
            "displayTimeUnit": "ms",
            "metadata": self._doc_metadata(),
        }

    def _task(self, task: dict[str, Any], tid: int, loop_tid: int) -> list[tuple[float, float]]:
        """Steps, suspensions and ready periods of one task; returns its (start, end) steps."""
        assert self.w_start is not None and self.w_end is not None
        t_id = task.get("id")
        what = text(task.get("coro")) or text(task.get("name")) or f"task {text(t_id)}"
        created = num(task.get("created"))
        done = num(task.get("done"))
        prev_end = max(created, self.w_start) if created is not None else None
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
            args = {**base, **extra, "duration_ms": _ms(b - a)}
            i = bisect.bisect_right(wait_starts, b) - 1
            if 0 <= i < len(waits) and waits[i][1] > a:
                args["await_stack"] = _frames(waits[i][2].get("stack"))
            self.slice(tid, a, b, "suspended", "suspended", args, C_SUSPENDED)

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
                prev_end = max(self.w_start, start - (ready or 0.0) - waited)
            if prev_end is not None and prev_end < start:
                woke = start - ready if ready is not None else start
                woke = min(start, max(prev_end, woke))
                if woke > prev_end:
                    suspended(prev_end, woke, {"waited_ms": _ms(waited)})
                if start > woke:
                    args = {**base, "ready_ms": _ms(ready)}
                    self.slice(tid, woke, start, "ready", "ready", args, C_READY)
            args = {
                **base,
                "coro": task.get("coro"),
                "name": task.get("name"),
                "duration_ms": _ms(end - start),
                "waited_ms": _ms(waited),
                "ready_ms": _ms(ready),
            }
            self.slice(tid, start, end, what, "step", args, C_STEP)
            # The loop track carries only what identifies the task, to keep big traces small.
            self.slice(loop_tid, start, end, what, "step", base, C_STEP)
            out.append((start, end))
            prev_end = end if prev_end is None else max(prev_end, end)
        state = text(task.get("state"))
        if prev_end is not None:
            if done is None and state in ("pending", ""):
                # Still suspended when the snapshot was taken: show where.
                if self.w_end > prev_end:
                    extra = {"awaiting": _frames(task.get("awaiting")) or None}
                    suspended(prev_end, self.w_end, extra)
            elif done is not None and done > prev_end:
                suspended(prev_end, min(done, self.w_end), {})
        if done is not None and state in ("error", "cancelled"):
            name = f"task {state}" + (f": {text(task.get('error'))}" if task.get("error") else "")
            self.instant(tid, done, name, "task", {**base, "state": state})
        return out

    def _loop(self, loop_tid: int) -> None:
        for ev in dicts(self.doc.get("loop")):
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
                gargs["duration_ms"] = _ms(dur)
                self.slice(
                    loop_tid, start, start + dur, f"GC gen {gen}", "gc", gargs, C_GC, P_BLOCK
                )
                continue
            if kind == "block":
                name = f"loop blocked {fmt_duration(dur)}" + (f" ({cb})" if cb else "")
                args: dict[str, Any] = {"callback": cb or None, "duration_ms": _ms(dur)}
                args["stack"] = _frames(ev.get("stack")) or None
                self.slice(loop_tid, start, start + dur, name, "block", args, C_BLOCK, P_BLOCK)
            elif kind == "lag":
                self.out.append(
                    {
                        "ph": "C",
                        "name": "loop lag (ms)",
                        "ts": self.us(start),
                        "pid": self.pid,
                        "tid": loop_tid,
                        "args": {"lag": _ms(dur)},
                    }
                )
                self.out.append(
                    {
                        "ph": "C",
                        "name": "loop lag (ms)",
                        "ts": self.us(start + max(dur, 0.001)),
                        "pid": self.pid,
                        "tid": loop_tid,
                        "args": {"lag": 0},
                    }
                )
            else:
                args = {"callback": cb or None, "kind": kind, "duration_ms": _ms(dur)}
                args["stack"] = _frames(ev.get("stack")) or None
                self.slice(
                    loop_tid, start, start + dur, cb or text(kind), "callback", args, C_CALLBACK
                )

    def _executor(
        self,
        ev: dict[str, Any],
        thread_tids: dict[str, int],
        task_tid: dict[Any, int],
        task_steps: dict[Any, list[tuple[float, float]]],
    ) -> None:
        assert self.w_end is not None
        queued = num(ev.get("start"))
        started = num(ev.get("started"))
        if started is None:
            return
        end = num(ev.get("end"))
        if end is None or end < started:
            end = max(started, self.w_end)
        tid = thread_tids[text(ev.get("thread")) or "executor"]
        func = text(ev.get("func")) or "executor job"
        args = {
            "func": func,
            "thread": ev.get("thread"),
            "task": ev.get("task"),
            "request": ev.get("request"),
            "queued_ms": _ms(started - queued) if queued is not None else None,
            "duration_ms": _ms(end - started),
            "error": ev.get("error"),
            "running": True if num(ev.get("end")) is None else None,
        }
        self.slice(
            tid, started, end, func, "executor", args, C_ERROR if ev.get("error") else C_EXECUTOR
        )
        src_tid = task_tid.get(ev.get("task"))
        if src_tid is not None and queued is not None:
            # The submit happened inside one of the task's steps, if it was recorded.
            for s, e in task_steps.get(ev.get("task"), ()):
                if s <= queued <= e:
                    self.flow(src_tid, queued, tid, (started + end) / 2, "executor", {"func": func})
                    break

    def _triggers(self, loop_tid: int) -> None:
        assert self.w_end is not None
        trig = section(self.doc, "trigger")
        kind = text(trig.get("kind")) or "trigger"
        reason = text(trig.get("reason"))
        t = num(trig.get("time"))
        marks = [e for e in dicts(self.doc.get("events")) if e.get("kind") == "trigger"]
        if t is None:
            same = [num(m.get("start")) for m in marks if m.get("trigger_kind") == kind]
            t = next((s for s in reversed(same) if s is not None), self.w_end)
        req = trig.get("request") if isinstance(trig.get("request"), dict) else None
        args = {"kind": kind, "reason": reason, "request": request_label(req) if req else None}
        self.instant(loop_tid, t, f"TRIGGER {kind}", "trigger", args, scope="g")
        for m in marks:
            s = num(m.get("start"))
            if s is None or (m.get("trigger_kind") == kind and abs(s - t) < 0.001):
                continue
            mk = text(m.get("trigger_kind")) or "trigger"
            margs = {"kind": mk, "reason": text(m.get("reason"))}
            self.instant(loop_tid, s, f"trigger {mk}", "trigger", margs, scope="g")

    def _metadata(self) -> None:
        proc = section(self.doc, "process")
        host = text(proc.get("hostname"))
        pname = f"flightdeck pid {self.pid}" + (f" on {host}" if host else "")
        base = {"ph": "M", "pid": self.pid, "ts": 0}
        self.out.append({**base, "name": "process_name", "tid": 0, "args": {"name": pname}})
        labels = ", ".join(
            f"{k} {text(proc.get(k))}" for k in ("python", "loop", "flightdeck") if proc.get(k)
        )
        if labels:
            self.out.append(
                {**base, "name": "process_labels", "tid": 0, "args": {"labels": labels}}
            )
        for tid, (name, sort) in self.names.items():
            self.out.append({**base, "name": "thread_name", "tid": tid, "args": {"name": name}})
            self.out.append(
                {**base, "name": "thread_sort_index", "tid": tid, "args": {"sort_index": sort}}
            )

    def _doc_metadata(self) -> dict[str, Any]:
        trig = section(self.doc, "trigger")
        return {
            "source": "flightdeck",
            "format": self.doc.get("format"),
            "snapshot_id": self.doc.get("id"),
            "created_at": self.doc.get("created_at"),
            "trigger": {"kind": trig.get("kind"), "reason": trig.get("reason")},
            "process": section(self.doc, "process"),
            "window": section(self.doc, "window"),
            "time_origin": "window.start (Unix seconds); ts are microseconds after it",
        }


def _not_json(obj: object) -> Any:
    return repr(obj)


def to_perfetto(doc: dict[str, Any]) -> bytes:
    """Chrome Trace Event JSON for a ``flightdeck/1`` document (timestamps in µs after
    ``window.start``); opens in ui.perfetto.dev and chrome://tracing."""
    trace = _Builder(doc).build()
    return orjson.dumps(trace, default=_not_json, option=orjson.OPT_NON_STR_KEYS)
