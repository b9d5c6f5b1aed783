"""The trace writer shared by the Perfetto exports: tracks, slices, instants, flows.

Slices are held per track until :meth:`TraceWriter.flush_slices` makes every track properly
nested (both viewers misdraw slices that overlap without nesting); flows are placed inside
the slices they join. The track builders (``tracks.py``) write through it; ``perfetto.py``
serialises what it holds as Chrome Trace Event JSON.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Any

from .common import dicts, frame_text, num, section, text

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


def pack(intervals: list[tuple[float, float]]) -> list[int]:
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


def frames_text(stack: object) -> list[str]:
    return [frame_text(f) for f in dicts(stack)]


def _r3(x: float) -> float:
    # Three decimals without round(), which dominates the export time of big windows.
    return int(x * 1000.0 + (0.5 if x >= 0 else -0.5)) / 1000.0


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else _r3(seconds * 1e3)


class TraceWriter:
    """One process (the snapshot's pid) and its tracks (Chrome "threads")."""

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
        #: Flow ids start past this (a host capture's processes share one id space).
        self.flow_base = 0
        #: After flushing: each slice by (track, start, end), and each flow as
        #: (id, source slice key, destination slice key), for the protobuf writer.
        self.slice_at: dict[tuple[int, float, float], dict[str, Any]] = {}
        self.links: list[tuple[int, tuple[int, float, float], tuple[int, float, float]]] = []

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

    # -- writing -----------------------------------------------------------------------

    def counter(self, tid: int, t: float, name: str, args: dict[str, Any]) -> None:
        self.out.append(
            {"ph": "C", "name": name, "ts": self.us(t), "pid": self.pid, "tid": tid, "args": args}
        )

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
                self.slice_at[(tid, start, end)] = ev
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
        flows = enumerate(self.flows, start=1 + self.flow_base)
        for n, (src, src_ts, dst, dst_ts, name, args) in flows:
            a = self._inside(src, src_ts)
            b = self._inside(dst, dst_ts)
            if a is None or b is None:
                continue
            self.links.append((n, (src, *a), (dst, *b)))
            common = {"name": name, "cat": "flow", "id": n, "pid": self.pid}
            self.out.append({**common, "ph": "s", "ts": src_ts, "tid": src, "args": args})
            self.out.append({**common, "ph": "f", "bp": "e", "ts": dst_ts, "tid": dst})

    # -- metadata ---------------------------------------------------------------------

    def metadata(self) -> None:
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

    def doc_metadata(self) -> dict[str, Any]:
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
