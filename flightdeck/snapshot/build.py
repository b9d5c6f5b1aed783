"""Turn a frozen window into a ``flightdeck/1`` document (runs off the event loop).

The event feed (``_Builder.feed``), the task identity it relies on (``TaskTable``) and the
two ways out (``build_document`` whole, ``iter_json`` streamed) share one document shape,
kept in one file so they cannot drift.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

from ..core import events as ev
from ..core.window import Event, Frozen
from . import causes
from .document import FORMAT, rfc3339, sanitize
from .steps import PACK_STEPS, Steps, packer
from .steps import plain as plain_steps

Doc = dict[str, Any]

#: The part of the document each event kind lands in (``_Builder.feed``), by kind: a
#: section (``requests``, ``tasks``), a field of its entries (``tasks[].steps``) or an entry
#: kind of ``loop`` or ``events`` (``loop[block]``). Every kind of ``events.SPECS`` has its
#: row, and every exporter says how it draws each part (``export/tracks.py`` ``DRAWN``,
#: ``export/timeline.js`` ``PARTS``): tests/export/test_kinds_rendered.py checks both, and
#: records one event of each kind through a recorder to find it in every output.
KIND_PARTS: dict[int, tuple[str, ...]] = {
    ev.TASK_CREATE: ("tasks",),
    ev.TASK_STEP: ("tasks[].steps",),
    ev.TASK_DONE: ("tasks[].state",),
    ev.TASK_WAIT: ("tasks[].waits",),
    ev.LOOP_BLOCK: ("loop[block]",),
    ev.LOOP_CALLBACK: ("loop[callback]",),
    ev.LOOP_LAG: ("loop[lag]",),
    ev.REQ_START: ("requests",),
    ev.REQ_END: ("requests[].end",),
    ev.REGION: ("events[region]",),
    ev.LOG: ("events[log]",),
    ev.EXECUTOR: ("events[executor]",),
    ev.MARK: ("events[trigger]",),
    ev.GC: ("loop[gc]",),
    ev.TASK_CANCEL: ("events[cancel]",),
    ev.TASK_SLOW_STEP: ("loop[step]",),
    ev.REQ_ERROR: ("requests[].error_stack",),
    # A block seen in progress: the block's own entry, ``ongoing`` while it has not ended.
    ev.LOOP_BLOCK_ONGOING: ("loop[block]",),
}
#: Parts made from something other than an event: the header's trigger, and the await
#: chains of the tasks still pending when the window was frozen (``Frozen.extra``).
OTHER_PARTS: dict[str, str] = {
    "trigger": "the trigger of the snapshot (its header)",
    "tasks[].awaiting": "where each task still pending at the freeze was suspended",
}
#: Every part of the document an exporter may have to draw.
PARTS: frozenset[str] = frozenset(
    [p for parts in KIND_PARTS.values() for p in parts] + list(OTHER_PARTS)
)


def _text(value: Any) -> Any:
    """Recorded raw on the hot path; made valid text here (lone surrogates become U+FFFD)."""
    if isinstance(value, str) and not value.isascii():
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _stack(frames: Any) -> list[dict[str, Any]] | None:
    """Recorded ``(function, file, line)`` triples; a malformed one raises ValueError."""
    if not frames:
        return None
    return [{"function": fn, "file": file, "line": line} for fn, file, line in frames]


def _site(site: Any) -> dict[str, Any] | None:
    """A recorded ``(function, file, line)``; a malformed one (a damaged file) raises ValueError."""
    if not site:
        return None
    fn, file, line = site
    return {"function": fn, "file": file, "line": line}


class TaskTable:
    """Task records by raw id, telling apart tasks that reused an address (CPython does)."""

    def __init__(self, offset_ns: int) -> None:
        self.offset = offset_ns
        self.uid: dict[int, str] = {}
        #: Earlier tasks that had the same raw id (CPython reuses addresses): raw ->
        #: [(created_ns, uid), ...], so an event stamped before a reuse finds its own task.
        self.older: dict[int, list[tuple[int, str]]] = {}
        self.created_ns: dict[str, int] = {}
        self.tasks: dict[str, Doc] = {}
        self.last_end: dict[str, int] = {}
        self.n = 0
        self.status_tasks: dict[int, Event] = {}

    def ts(self, t_ns: int) -> float:
        return (t_ns + self.offset) / 1e9

    # -- tasks ------------------------------------------------------------------------------
    def _new_task(self, raw: int, e: Event | None, *, status: bool = False) -> Doc:
        """A task record; ``status``: from a status table (its earlier steps are not held)."""
        prev_uid = self.uid.get(raw)
        if prev_uid is not None:
            self.older.setdefault(raw, []).append((self.created_ns.get(prev_uid, 0), prev_uid))
        self.n += 1
        uid = f"t{self.n}"
        # A copy of the id (``+ 0`` makes a new int): the table outlives the segment the
        # event was decoded from, and a few hundred of its ints kept alive would keep most
        # of its ~20 MiB of pymalloc arenas mapped while the document is written.
        self.uid[raw + 0] = uid
        if e is None:
            rec: Doc = {"id": uid, "name": None, "coro": None, "parent": None, "request": None}
            rec["created"] = None
            rec["site"] = None
        else:
            _, t, _, name, coro, parent, rid, site = e
            rec = {
                "id": uid,
                "name": name,
                "coro": coro,
                "parent": self.task(parent)["id"] if parent is not None else None,
                "request": rid,
                "created": self.ts(t),
                "site": _site(site),
            }
            self.created_ns[uid] = t
        # Its first step's ``waited`` counts from creation; for a status record the previous
        # step is outside the window, so that step's ``waited`` is unknown.
        origin = t if e is not None and not status else None
        if origin is not None:
            self.last_end[uid] = origin
        # Steps are most of a document: three ints each until written out (``steps.py``).
        rec.update(
            done=None,
            state="pending",
            error=None,
            steps=Steps(self.offset, origin),
            awaiting=None,
            waits=[],
        )
        self.tasks[uid] = rec
        return rec

    def task(self, raw: int) -> Doc:
        uid = self.uid.get(raw)
        if uid is None:
            return self._new_task(raw, None)
        return self.tasks[uid]

    def task_at(self, raw: int, t: int) -> Doc:
        """The task that had id ``raw`` at time ``t`` (for events recorded after the fact)."""
        uid = self.uid.get(raw)
        if uid is not None and self.created_ns.get(uid, 0) > t:
            for created, old in reversed(self.older.get(raw, ())):
                if created <= t:
                    return self.tasks[old]
        return self.task(raw)

    def _create(self, raw: int, e: Event) -> None:
        uid = self.uid.get(raw)
        if uid is not None:
            rec = self.tasks[uid]
            if self.status_tasks.get(raw) == e and rec["created"] is not None:
                return  # the status record already describes this very task
            if rec["created"] is None and rec["state"] == "pending":
                # Referenced before its creation was recorded (a child made during an
                # eager first step is created before its parent's factory returns): the
                # same live task, since a pending task's address cannot be reused.
                self._fill(rec, e)
                return
        self._new_task(raw, e)

    def _fill(self, rec: Doc, e: Event) -> None:
        _, t, _, name, coro, parent, rid, site = e
        uid = rec["id"]
        rec["name"] = name
        rec["coro"] = coro
        rec["parent"] = self.task(parent)["id"] if parent is not None else None
        if rec["request"] is None:
            rec["request"] = rid
        rec["created"] = self.ts(t)
        rec["site"] = _site(site)
        self.created_ns[uid] = t


class _Builder(TaskTable):
    """Feeds events, in order, into the document's requests, tasks, loop and events."""

    def __init__(self, offset_ns: int) -> None:
        super().__init__(offset_ns)
        self.requests: dict[int, Doc] = {}
        self.loop: list[Doc] = []
        self.events: list[Doc] = []
        self.t_min: int | None = None
        self.packer = packer()
        #: The steps of the tasks the last ``feed`` touched (raw id -> hot-path entry).
        self.touched: dict[int, tuple[str, Steps, Any]] = {}
        #: Blocks seen in progress (t_start -> their latest LOOP_BLOCK_ONGOING), and the
        #: starts of the blocks that ended (a LOOP_BLOCK): see ``close_ongoing``.
        self.ongoing: dict[int, Event] = {}
        self.ended: set[int] = set()

    # -- requests ---------------------------------------------------------------------------
    def _request(self, e: Event) -> Doc:
        _, t, rid, kind, method, path, query, client, headers, host, trace_id = e
        rec: Doc = {
            "id": rid,
            "kind": kind,
            "method": _text(method),
            "path": _text(path),
            "query": query,
            "route": None,
            "status": None,
            "start": self.ts(t),
            "end": None,
            "duration": None,
            "ttfb": None,
            "body_end": None,
            "close_code": None,
            "client": f"{client[0]}:{client[1]}" if client else None,
            "disconnected": False,
            "error": None,
            "error_stack": None,
            "headers": dict(headers) if headers else {},
            "trace_id": trace_id,
            "tasks": [],
            "_t0": t,
        }
        self.requests[rid] = rec
        rec["task"] = None
        if host is not None:
            task = self.task(host)
            rec["task"] = task["id"]
            if task["request"] is None:
                task["request"] = rid
        return rec

    def feed_status(self, tasks: dict[int, Event], requests: dict[int, Event]) -> None:
        # Tasks first: a request names the task that runs it.
        self.status_tasks = tasks
        for raw, e in tasks.items():
            self._new_task(raw, e, status=True)
        for e in requests.values():
            self._request(e)

    def feed(self, events: list[Event]) -> None:
        ts = self.ts
        # Task steps are most of the window, and a capture builds them under a busy loop
        # that leaves it a share of the GIL: their branch is kept to local lookups and one
        # ``extend``, the task's uid, ``Steps`` and its ``data.extend`` cached by raw id
        # (dropped when a creation may give that raw id to a new task; ``_new_task`` is only
        # reached through those for an id already known). The floats are made when the
        # document is written (``steps.py``).
        STEP = ev.TASK_STEP
        hot: dict[int, tuple[str, Steps, Any]] = {}
        hot_get = hot.get
        last_end = self.last_end
        last_get = last_end.get
        t_min = self.t_min
        for e in events:
            k = e[0]
            t = e[1]
            if t_min is None or t < t_min:
                t_min = t
            if k == STEP:
                _, t0, t1, raw, tq = e
                cached = hot_get(raw)
                if cached is None:
                    task = self.task(raw)
                    steps = task["steps"]
                    cached = hot[raw] = (task["id"], steps, steps.data.extend)
                uid, steps, extend = cached
                prev = last_get(uid)
                if prev is None:
                    # Its first step, creation not held: the gaps count from this step.
                    prev = steps.origin = t0
                if not tq:
                    steps.add_unqueued(t0 - prev, t1 - t0)
                    hot[raw] = (uid, steps, steps.data.extend)  # it may have widened
                else:
                    try:
                        extend((t0 - prev, t1 - t0, t0 - tq))
                    except OverflowError:  # a value past 32 bits: the task's array widens
                        steps.add((t0 - prev, t1 - t0, t0 - tq))
                        hot[raw] = (uid, steps, steps.data.extend)
                last_end[uid] = t1
                continue
            self.t_min = t_min
            if k == ev.TASK_CREATE:
                raw = e[ev.TASK_CREATE_TID]
                hot.pop(raw, None)
                self._create(raw, e)
            elif k == ev.TASK_DONE:
                _, t, raw, state, error, name = e
                task = self.task(raw)
                task["done"] = ts(t)
                task["state"] = state
                task["error"] = error
                if name is not None:
                    task["name"] = name
            elif k == ev.TASK_WAIT:
                _, t0, t1, raw, stack = e
                self.task(raw)["waits"].append(
                    {"start": ts(t0), "duration": (t1 - t0) / 1e9, "stack": _stack(stack) or []}
                )
            elif k == ev.REQ_START:
                self._request(e)
            elif k == ev.REQ_END:
                _, t, rid, status, t_ttfb, route, disconnected, error, t_body, close = e
                req = self.requests.get(rid)
                if req is None:
                    continue
                if status is not None:
                    req["status"] = status
                if route is not None:
                    req["route"] = route
                if t_ttfb and req["ttfb"] is None:
                    req["ttfb"] = (t_ttfb - req["_t0"]) / 1e9
                req["end"] = ts(t)
                req["duration"] = (t - req["_t0"]) / 1e9
                req["body_end"] = ts(t_body) if t_body else None
                req["disconnected"] = bool(disconnected)
                req["error"] = error
                req["close_code"] = close
            elif k == ev.REQ_ERROR:
                req = self.requests.get(e[ev.REQ_ERROR_RID])
                if req is not None:
                    req["error_stack"] = _stack(e[ev.REQ_ERROR_STACK])
            elif k == ev.LOOP_BLOCK:
                _, t0, t1, cb, stack = e
                self._loop_entry("block", t0, t1 - t0, cb, _stack(stack) or [])
                self.ended.add(t0)
            elif k == ev.LOOP_BLOCK_ONGOING:
                self.ongoing[e[ev.LOOP_BLOCK_ONGOING_START]] = e
            elif k == ev.LOOP_CALLBACK:
                _, t0, t1, name = e
                self._loop_entry("callback", t0, t1 - t0, name, None)
            elif k == ev.LOOP_LAG:
                self._loop_entry("lag", t, e[ev.LOOP_LAG_LAG], None, None)
            elif k == ev.REGION:
                _, t0, t1, name, raw = e
                self.events.append(
                    {
                        "kind": "region",
                        "start": ts(t0),
                        "duration": (t1 - t0) / 1e9,
                        "name": name,
                        "task": self._task_ref(raw),
                    }
                )
            elif k == ev.LOG:
                _, t, category, message, raw = e
                self.events.append(
                    {
                        "kind": "log",
                        "start": ts(t),
                        "category": category,
                        "message": message,
                        "task": self._task_ref(raw),
                    }
                )
            elif k == ev.EXECUTOR:
                _, tq, t0, t1, func, thread, raw, rid, error = e
                self.events.append(
                    {
                        "kind": "executor",
                        "start": ts(tq),
                        "started": ts(t0) if t0 else None,
                        "end": ts(t1) if t1 else None,
                        "duration": (t1 - t0) / 1e9 if t0 and t1 else None,
                        "func": func,
                        "thread": thread,
                        "task": self._task_ref(raw, tq),
                        "request": rid,
                        "error": error,
                    }
                )
            elif k == ev.GC:
                _, t0, t1, generation, collected = e
                self._loop_entry("gc", t0, t1 - t0, None, None)
                self.loop[-1].update(generation=generation, collected=collected)
            elif k == ev.TASK_SLOW_STEP:
                _, t0, t1, raw, stack = e
                self._loop_entry("step", t0, t1 - t0, None, _stack(stack))
                self.loop[-1]["task"] = self.task_at(raw, t0)["id"]
            elif k == ev.TASK_CANCEL:
                _, t, raw, stack, cause = e
                self.events.append(
                    {
                        "kind": "cancel",
                        "start": ts(t),
                        "task": self.task_at(raw, t)["id"],
                        "cause": cause,
                        "stack": _stack(stack) or [],
                    }
                )
            elif k == ev.MARK:
                _, t, kind, reason = e
                self.events.append(
                    {"kind": "trigger", "start": ts(t), "trigger_kind": kind, "reason": reason}
                )
        self.t_min = t_min
        self.touched = hot

    def pack(self) -> None:
        """Pack the steps the last ``feed`` added (``steps.py``), once its events are gone.

        Not in ``feed``: the small objects a run packs into would land among the segment's
        decoded tuples and keep their arenas mapped after the tuples are freed (CPython's
        small-object allocator returns an arena only when all of it is free).
        """
        compressor = self.packer
        for _, steps, _ in self.touched.values():
            if len(steps.data) >= 3 * PACK_STEPS:
                steps.pack(compressor)
        self.touched = {}

    def close_ongoing(self, t_now: int) -> None:
        """A loop entry ``block`` with ``ongoing: true`` for each block seen in progress that
        did not end in the window (the process died in it, or it still holds the loop): its
        duration so far, to the window's end, with the latest stack the watchdog took."""
        for t0, e in self.ongoing.items():
            if t0 in self.ended:
                continue
            _, _, t_seen, cb, stack, _rid = e
            self._loop_entry("block", t0, max(t_seen, t_now) - t0, cb, _stack(stack) or [])
            self.loop[-1]["ongoing"] = True
        self.ongoing = {}
        self.ended = set()

    def _loop_entry(
        self, kind: str, t0: int, dur_ns: int, callback: str | None, stack: Any
    ) -> None:
        self.loop.append(
            {
                "kind": kind,
                "start": self.ts(t0),
                "duration": dur_ns / 1e9,
                "callback": callback,
                "stack": stack,
            }
        )

    def _task_ref(self, raw: int | None, t: int | None = None) -> str | None:
        if raw is None:
            return None
        uid: str = (self.task(raw) if t is None else self.task_at(raw, t))["id"]
        return uid

    def finish(
        self, awaiting: dict[int, Any], names: dict[int, Any]
    ) -> tuple[list[Doc], list[Doc]]:
        for raw, frames in awaiting.items():
            uid = self.uid.get(raw)
            if uid is not None and self.tasks[uid]["state"] == "pending":
                task = self.tasks[uid]
                task["awaiting"] = _stack(frames)
                if raw in names:
                    # Its name now (create_task(name=) on 3.11/3.12 names it after the
                    # factory ran; set_name() may have renamed it since).
                    name, coro = names[raw]
                    task["name"] = name
                    if task["coro"] is None:
                        task["coro"] = coro
        for task in self.tasks.values():
            rid = task["request"]
            if rid is not None:
                req = self.requests.get(rid)
                if req is not None:
                    req["tasks"].append(task["id"])
                else:
                    # The request ended before the window: refer to nothing missing.
                    task["request"] = None
        for req in self.requests.values():
            del req["_t0"]
        for entry in self.loop:
            if entry["kind"] == "step":
                entry["callback"] = self.tasks[entry["task"]]["coro"]
        causes.explain(self.events, self.tasks, self.requests)
        return list(self.requests.values()), list(self.tasks.values())


class _NativeBuilder(_Builder):
    """``_Builder`` with its task table and its task kinds (create, step, done, wait) in C.

    ``core/native/builder.h`` (``TaskFeed``) reads a native generation's records straight
    into the very task records ``_Builder`` makes, steps already as their rows, and hands
    every other kind back, in order, to ``_Builder.feed`` (the reference), which reaches
    the table through the methods below. Only for stored native generations: see
    :func:`_native_runs`. Any record it does not expect raises ValueError, and
    :func:`assemble` then builds the document with ``_Builder`` alone.
    """

    def __init__(self, offset_ns: int, native: Any) -> None:
        super().__init__(offset_ns)
        self.native = native.TaskFeed(offset_ns, _stack, _site)
        self.tasks = self.native.tasks

    def task(self, raw: int) -> Doc:
        rec: Doc = self.native.task(raw)
        return rec

    def task_at(self, raw: int, t: int) -> Doc:
        rec: Doc = self.native.task_at(raw, t)
        return rec

    def _create(self, raw: int, e: Event) -> None:
        self.native.create(raw, e)

    def _new_task(self, raw: int, e: Event | None, *, status: bool = False) -> Doc:
        rec: Doc = self.native.new_task(raw, e, status)
        return rec

    def feed_status(self, tasks: dict[int, Event], requests: dict[int, Event]) -> None:
        self.native.status_tasks = tasks
        super().feed_status(tasks, requests)

    def feed_segment(self, segment: Any) -> None:
        native = self.native
        native.begin(segment)
        feed = self.feed
        while (e := native.next()) is not None:
            feed([e])
        t_min = native.t_min
        if t_min is not None and (self.t_min is None or t_min < self.t_min):
            self.t_min = t_min

    def finish(
        self, awaiting: dict[int, Any], names: dict[int, Any]
    ) -> tuple[list[Doc], list[Doc]]:
        self.uid = self.native.uids()
        self.native.release()
        return super().finish(awaiting, names)


def _native_runs(frozen: Frozen) -> tuple[Any, list[Any]] | None:
    """The native module and each run of ``frozen`` as a native ``Segment``, when the
    native core runs and every run is a stored native generation (no tail); else None."""
    from ..core.cores import native_module

    native = native_module()
    if native is None or frozen.tail or not hasattr(native, "TaskFeed"):
        return None
    runs = []
    for seg in frozen.segments:
        load = getattr(seg, "native_segment", None)
        if load is None:
            return None
        try:
            run = load()
        except ValueError:
            return None  # corrupt: the reference path says so
        if run is None:
            return None
        runs.append(run)
    return native, runs


def _feed_native(b: _NativeBuilder, runs: list[Any]) -> int:
    for run in runs:
        b.feed_segment(run)
    fed: int = b.native.fed
    return fed


def assemble(
    frozen: Frozen,
    *,
    snapshot_id: str,
    offset_ns: int,
    trigger: dict[str, Any],
    process: dict[str, Any],
    trigger_time_ns: int | None = None,
    release: bool = False,
    native: bool | None = None,
) -> Doc:
    """The document, except that each task's ``steps`` may still be compact (``steps.Steps``).

    :func:`build_document` makes it plain; :func:`iter_json` writes it out task by task,
    so a capture never holds every step as Python objects at once. ``release``: let go of
    each segment of ``frozen`` once fed (``Frozen.iter_segments``; it is left empty).
    ``native``: False builds with the Python ``_Builder`` only (the reference); otherwise
    stored native generations go through ``_NativeBuilder`` when the native core runs
    (the same document, its steps already plain rows).
    """
    b: _Builder | None = None
    count = 0
    fast = _native_runs(frozen) if native is not False else None
    if fast is not None:
        module, runs = fast
        b = _NativeBuilder(offset_ns, module)
        try:
            b.feed_status(frozen.tasks, frozen.requests)
            count = _feed_native(b, runs)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            b = None  # a record it does not take: the reference builds the whole document
        del runs
    if b is None:
        b = _Builder(offset_ns)
        b.feed_status(frozen.tasks, frozen.requests)
        count = 0
        for events in frozen.iter_segments(release):
            count += len(events)
            b.feed(events)
            # Let go of this segment's tuples before the next one is decoded: a native
            # generation decodes to about 200 bytes an event, 20 MiB for a full default one.
            del events
            b.pack()
    # Only the feed needs these; they hold ints of the last segments decoded.
    b.last_end.clear()
    b.created_ns.clear()
    b.older.clear()
    b.close_ongoing(frozen.t_now)
    requests, tasks = b.finish(frozen.extra.get("awaiting", {}), frozen.extra.get("names", {}))
    end = b.ts(frozen.t_now)
    start = b.ts(b.t_min) if b.t_min is not None else end
    trig = dict(trigger)
    trig["time"] = b.ts(trigger_time_ns if trigger_time_ns is not None else frozen.t_now)
    if trig.get("request") is None and trig.get("kind") == "loop_blocked":
        trig["request"] = causes.blocked_request(trig["time"], b.loop, b.requests)
    elif trig.get("kind") == "crash" and isinstance(trig.get("request"), dict):
        # A crash names the request its loop was blocked in by id: the window's record of it.
        found = b.requests.get(trig["request"].get("id"))
        trig["request"] = dict(found) if found is not None else None
    _with_tasks(trig, b.requests)
    return {
        "format": FORMAT,
        "id": snapshot_id,
        "created_at": rfc3339(time.time()),
        "trigger": trig,
        "process": process,
        "window": {"start": start, "end": end, "dropped": frozen.dropped, "events": count},
        "requests": requests,
        "tasks": tasks,
        "loop": b.loop,
        "events": b.events,
    }


def _with_tasks(trig: dict[str, Any], requests: dict[int, Any]) -> None:
    """Give each request the trigger names (its own and its ``also`` entries') its tasks.

    The middleware names a request by what it saw of it; the document's request records
    always carry ``tasks``, and so does the trigger's copy: the window's, or none.
    """
    entries = [trig, *(e for e in trig.get("also") or () if isinstance(e, dict))]
    for entry in entries:
        req = entry.get("request")
        if isinstance(req, dict) and "tasks" not in req:
            rid = req.get("id")
            found = requests.get(rid) if isinstance(rid, int) else None
            entry["request"] = {**req, "tasks": list(found["tasks"]) if found is not None else []}


def _json_steps(steps: Any) -> Any:
    """Like ``steps.plain``, for orjson only: NaN is left in, orjson writes it as null."""
    return steps.rows() if isinstance(steps, Steps) else steps


def build_document(
    frozen: Frozen,
    *,
    snapshot_id: str,
    offset_ns: int,
    trigger: dict[str, Any],
    process: dict[str, Any],
    trigger_time_ns: int | None = None,
    native: bool | None = None,
) -> Doc:
    """Assemble the native document from a frozen window (``native``: see :func:`assemble`)."""
    doc = assemble(
        frozen,
        snapshot_id=snapshot_id,
        offset_ns=offset_ns,
        trigger=trigger,
        process=process,
        trigger_time_ns=trigger_time_ns,
        native=native,
    )
    for task in doc["tasks"]:
        if type(task["steps"]) is Steps:  # the native feed's are plain already
            task["steps"] = plain_steps(task["steps"])
    return doc


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # Lone surrogates (undecodable bytes) somewhere: make the text valid.
        return orjson.dumps(sanitize(value), option=orjson.OPT_NON_STR_KEYS)


#: Items of a long list (requests, loop entries, events) written per piece.
_SLICE = 512


def iter_json(doc: Doc, *, release: bool = False) -> Iterator[bytes]:
    """The document from :func:`assemble` as native JSON, in pieces (tasks one at a time).

    The bytes are those ``Snapshot(build_document(...)).dumps("json")`` would give. With
    ``release``, each task is dropped from ``doc["tasks"]`` once written (the capture
    path: its steps never coexist with the whole compressed body).
    """
    yield b"{"
    first = True
    for key, value in doc.items():
        yield (b"" if first else b",") + _dumps(key) + b":"
        first = False
        if key == "tasks":
            yield b"["
            for i in range(len(value)):
                task = dict(value[i])
                task["steps"] = _json_steps(task["steps"])
                piece = (b"," if i else b"") + _dumps(task)
                del task  # its step rows: about 100 bytes a step as Python objects
                if release:
                    value[i] = None
                yield piece
            yield b"]"
        elif isinstance(value, list) and len(value) > _SLICE:
            # orjson's compact list is its items' JSON joined by commas, so slices of it
            # give the same bytes without one piece as large as the whole list.
            yield b"["
            for i in range(0, len(value), _SLICE):
                yield (b"," if i else b"") + _dumps(value[i : i + _SLICE])[1:-1]
            yield b"]"
        else:
            yield _dumps(value)
    yield b"}"
