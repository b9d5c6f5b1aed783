""" "What stands out": findings ranked by their impact on the trigger request, then on the
window. Each names a function or a task, not only a symptom."""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
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
    split_processes,
    task_label,
    text,
)
from .diagnose import (
    FLIGHTDECK,
    FLIGHTDECK_CODE,
    FLIGHTDECK_OWN,
    SERVER,
    SLOW_CALLBACK,
    USER,
    Hog,
    burst,
    cancellations,
    first_use,
    grouped,
    hogs,
    owners,
    request_of,
)
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


#: Something that ended this long before the trigger's request began did not cost it.
MARGIN = 0.1
#: A capture runs this soon after its trigger (``capture_delay``, 0.25 s by default).
CAPTURE_AFTER = 1.0


@dataclass
class Finding:
    on_trigger: float  # seconds of the trigger request it accounts for
    on_window: float  # seconds of loop or request time it accounts for in the window
    text: str
    #: 0: a cause (what held the loop, GC, cancellations, the pool); 1: a symptom (slow or
    #: failed requests, delays, lag); 2: about the recording itself.
    tier: int = 0
    #: When it happened (None: the whole window); ranked() sets ``earlier`` from it.
    end: float | None = None
    earlier: bool = False


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
        self.owners = owners(doc, self.index)
        self.marks = [
            t
            for e in dicts(doc.get("events"))
            if e.get("kind") == "trigger" and (t := num(e.get("start"))) is not None
        ]
        self.hogs = hogs(doc, self.index)
        self.span = self._span()
        self._delays: list[tuple[float, float | None, dict[str, Any]]] | None = None
        self._waits: list[tuple[float, dict[str, Any], dict[str, Any]]] | None = None

    def delays_and_waits(
        self,
    ) -> tuple[
        list[tuple[float, float | None, dict[str, Any]]],
        list[tuple[float, dict[str, Any], dict[str, Any]]],
    ]:
        """``sched_delays(doc, r)`` and ``long_waits(doc, r)``, made once in one pass over
        the app's tasks (the findings and the summary both list them); copies, to sort."""
        if self._delays is None or self._waits is None:
            delays: list[tuple[float, float | None, dict[str, Any]]] = []
            waits: list[tuple[float, dict[str, Any], dict[str, Any]]] = []
            owners, window_end = self.owners, self.window_end
            for task in dicts(self.doc.get("tasks")):
                if owners.get(task.get("id"), USER) != USER:
                    continue
                _task_delay(task, delays)
                if task.get("waits") or task.get("awaiting"):  # most tasks have neither
                    _task_waits(task, window_end, waits)
            # Worst first; ties keep the tasks' order (a reversed sort is stable too).
            delays.sort(key=itemgetter(0), reverse=True)
            waits.sort(key=itemgetter(0), reverse=True)
            self._delays, self._waits = delays, waits
        return list(self._delays), list(self._waits)

    def owner(self, tid: Any) -> str:
        """``user``, ``server`` or ``flightdeck`` (see ``diagnose.owners``)."""
        return self.owners.get(tid, USER)

    def hog_owner(self, h: Hog) -> str:
        """Whose work held the loop: the app's code wherever it ran; else the task's owner;
        with no task, flightdeck (its frames, or a capture just after a trigger) or the
        loop's own machinery."""
        frames = dicts(h.stack)
        files = [text(f.get("file")).replace("\\", "/") for f in frames]
        user = self.folder.user_frame(frames)
        if user is not None and not any(m in files[frames.index(user)] for m in FLIGHTDECK_CODE):
            return USER  # the app's code ran, whichever task it ran in
        if h.task is not None:
            return self.owner(h.task)
        named = h.entry.get("callback") if isinstance(h.entry, dict) else None
        if h.kind == "callback" and ": " in h.label:
            named = h.label
        if h.request is not None or (named and ": " in text(named)):
            if text(named).split(": ", 1)[0].endswith("run_asgi"):
                return FLIGHTDECK  # sampled in a request task with no request: the endpoint's
            return USER
        if h.kind in ("callback", "block"):
            # No task was running. flightdeck's frames, or soon after a trigger: flightdeck
            # capturing that snapshot (the watchdog names no frame of flightdeck's, so its
            # sample shows an outer one); else the loop's own I/O and callbacks.
            if any(any(m in f for m in FLIGHTDECK_OWN) for f in files):
                return FLIGHTDECK
            if any(m <= h.start <= m + CAPTURE_AFTER for m in self.marks):
                return FLIGHTDECK
            return SERVER
        return USER

    def _span(self) -> tuple[float, float] | None:
        """The trigger's own interval: its request's, else its block's, else None."""
        b = self.trigger
        if b is not None:
            return b.start, b.end
        trig = section(self.doc, "trigger")
        t = num(trig.get("time"))
        if t is None or trig.get("kind") != "loop_blocked":
            return None
        ends = [
            (s, s + d)
            for e in self.index.entries
            if e.get("kind") == "block"
            and (s := num(e.get("start"))) is not None
            and (d := num(e.get("duration"))) is not None
            and s + d <= t + 0.5
        ]
        return max(ends, key=lambda x: x[1]) if ends else None

    def is_earlier(self, end: float | None) -> bool:
        """Whether something that ended at ``end`` was over before the trigger began."""
        return self.span is not None and end is not None and end < self.span[0] - MARGIN

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
        if block.get("ongoing") is True:
            line += " and still blocked (ongoing when the window ends)"
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


def raised(req: dict[str, Any], folder: StackFolder) -> str:
    """``GET /error 500 raised RuntimeError at error (app.py:62)``: where, when recorded.

    The frame comes from ``error_stack`` (frames, innermost last) on the request when the
    recorder kept it; the innermost user frame is the one named.
    """
    line = f"{request_label(req)} raised {text(req.get('error')) or 'an exception'}"
    frames = dicts(req.get("error_stack"))
    if frames:
        frame = folder.user_frame(frames) or frames[-1]
        return f"{line} at {folder.site([frame])}"
    return line + " (the raising frame is not in this snapshot)"


def why(r: Reading) -> str | None:
    """The trigger's line: where its request raised for an exception trigger (what the
    reader asks first), else where its time went; None without a trigger request."""
    if r.trigger is None:
        return None
    if section(r.doc, "trigger").get("kind") == "exception":
        return raised(r.trigger.request, r.folder)
    return sentence(r.trigger)


def _hog_end(h: Hog) -> float:
    return h.start + h.duration


def ranked(r: Reading) -> list[Finding]:
    """Findings, the trigger's first: by what they cost its request, then the window.

    flightdeck's own work is never a finding; what was over before the trigger's request
    began is marked ``earlier`` and ranked after everything that was not.
    """
    doc = r.doc
    out: list[Finding] = []
    b = r.trigger
    add = out.append
    if b is not None:
        add(Finding(b.total, b.total, sentence(b), end=b.end))
        if section(doc, "trigger").get("kind") == "exception":
            add(Finding(float("inf"), b.total, raised(b.request, r.folder), end=b.end))
    mine = [h for h in r.hogs if h.kind != "gc" and r.hog_owner(h) != FLIGHTDECK]
    for g in [g for g in grouped(mine) if not first_use(g.first.label, g.first.stack)][:8]:
        on_trigger = sum(_on_trigger(b, h.start, h.start + h.duration, h.task) for h in g.hogs)
        line = _hog_text(g.first, r)
        tier = 0
        if "(linecache.py:" in g.first.label or "(traceback.py:" in g.first.label:
            line += " (formatting a traceback)"
            tier = 1
        if len(g.hogs) > 1:
            line = (
                f"{g.first.label} held the loop {len(g.hogs)} times, {fmt_duration(g.total)} in"
                f" all (longest {fmt_duration(g.longest)}){request_of(r.index, g.first.request)}"
            )
        if r.hog_owner(g.first) == SERVER:
            if on_trigger <= 0:
                continue  # the server's machinery, which did not hold the trigger up
            if g.first.kind in ("callback", "block"):
                # Only an outer library frame was running: say what it was, not where.
                where = g.first.label.removeprefix("at ")
                line = (
                    f"the event loop's own callbacks and I/O (no task running; sampled in"
                    f" {where}) held the loop {len(g.hogs)} time"
                    f"{'s' if len(g.hogs) != 1 else ''}, {fmt_duration(g.total)} in all"
                )
            else:
                line += " (the server's own work)"
        add(Finding(on_trigger, g.total, line, tier, end=max(_hog_end(h) for h in g.hogs)))
    trigger_id = b.request.get("id") if b is not None else None
    errors, slow = [], []
    for req in dicts(doc.get("requests")):
        status = req.get("status")
        if (isinstance(status, int) and status >= 500) or req.get("error"):
            errors.append(req)
        dur, in_flight = request_duration(req, r.window_end)
        if dur is not None and (dur >= SLOW_REQUEST or in_flight) and req.get("id") != trigger_id:
            slow.append((dur, in_flight, req))
    slow.sort(key=lambda x: (r.is_earlier(num(x[2].get("end"))), -x[0]))  # current first
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
        add(Finding(0.0, dur, line, 1, end=num(req.get("end"))))
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
        if req.get("id") == trigger_id and section(doc, "trigger").get("kind") == "exception":
            continue  # the trigger itself: said first
        line = f"{request_label(req)} failed" + (
            f": {text(req.get('error'))}" if req.get("error") else ""
        )
        if dicts(req.get("error_stack")):
            line += f" at {r.folder.site(req.get('error_stack'))}"
        add(Finding(0.0, num(req.get("duration")) or 0.001, line, 1, end=num(req.get("end"))))
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
    for f in out:
        f.earlier = r.is_earlier(f.end)
    order = {id(f): i for i, f in enumerate(out)}
    return sorted(out, key=lambda f: (f.earlier, -f.on_trigger, f.tier, -f.on_window, order[id(f)]))


def _cancel_findings(r: Reading, add: Any) -> None:
    """The cancellation burst (or many cancellations): the trigger's part, then earlier ones.

    A burst among the trigger request's own tasks cost it the time it spent on them.
    """
    parts: list[tuple[tuple[float, float] | None, bool]] = []
    if r.span is None:
        parts.append((None, False))
    else:
        lo = r.span[0] - MARGIN
        parts.append(((lo, float("inf")), False))
        parts.append(((float("-inf"), lo), True))
    for between, earlier in parts:
        groups, delivered, ended = cancellations(r.doc, r.index, between)
        if not groups:
            continue
        top = groups[0]
        detail = f"{top.count} × {top.what} at {top.site} ({top.cause})"
        found = burst(r.doc, r.index, between)
        on_trigger = _cancel_cost(r, between) if not earlier else 0.0
        end = max(g.last for g in groups)
        if found is not None:
            n, _, span = found
            line = f"cancellation burst: {n} within {fmt_duration(span)}; {detail}"
            add(Finding(on_trigger, 0.01 * n, line, end=end))
        elif delivered + ended >= 3:
            line = f"{delivered} cancellations delivered, {ended} tasks ended cancelled; {detail}"
            add(Finding(on_trigger, 0.0, line, end=end))


def _cancel_cost(r: Reading, between: tuple[float, float] | None) -> float:
    """How long the trigger request spent on its own tasks that were cancelled."""
    b = r.trigger
    if b is None:
        return 0.0
    rid = b.request.get("id")
    # Tasks woken by a cancellation (a timeout's TimeoutError ends them in error) and
    # tasks that ended cancelled.
    hit = {e.get("task") for e in dicts(r.doc.get("events")) if e.get("kind") == "cancel"}
    lo, hi = None, None
    for task in r.index.tasks.values():
        if task.get("request") != rid:
            continue
        if task.get("state") != "cancelled" and task.get("id") not in hit:
            continue
        created, done = num(task.get("created")), num(task.get("done"))
        if created is None or done is None:
            continue
        if between is not None and not between[0] <= done <= between[1]:
            continue
        lo = created if lo is None else min(lo, created)
        hi = done if hi is None else max(hi, done)
    if lo is None or hi is None:
        return 0.0
    return max(0.0, min(hi, b.end) - max(lo, b.start))


def _gc_finding(r: Reading, add: Any) -> None:
    """One finding for the GC pauses of the trigger's time (and one for earlier ones)."""
    pauses = [e for e in r.index.entries if e.get("kind") == "gc"]
    now = [e for e in pauses if not r.is_earlier(_entry_end(e))]
    before = [e for e in pauses if r.is_earlier(_entry_end(e))]
    b = r.trigger
    for group, during in ((now, b.gc if b is not None else 0.0), (before, 0.0)):
        if not group:
            continue
        total = sum(num(e.get("duration")) or 0.0 for e in group)
        worst = max(group, key=lambda e: num(e.get("duration")) or 0.0)
        longest = num(worst.get("duration")) or 0.0
        # A small share of the trigger's time, spent collecting nothing, is no finding.
        share = b is not None and during >= max(0.001, 0.05 * b.total)
        if total < GC_TOTAL and not share and longest < SLOW_CALLBACK:
            continue
        line = (
            f"garbage collection paused the loop {len(group)} time"
            f"{'s' if len(group) != 1 else ''}, {fmt_duration(total)} in all;"
            f" worst {fmt_duration(longest)} (generation {text(worst.get('generation'))},"
            f" {text(worst.get('collected'))} collected)"
        )
        if b is not None and during > 0:
            line += f"; {fmt_duration(during)} of it during {request_label(b.request)}"
        collected = sum(num(e.get("collected")) or 0.0 for e in group)
        # A pause that did not cost the trigger, or collected nothing (allocation churn,
        # not garbage), is background: ranked with the symptoms.
        add(
            Finding(
                during,
                total,
                line,
                0 if collected and during > 0 else 1,
                end=max(_entry_end(e) or 0.0 for e in group),
            )
        )


def _entry_end(e: dict[str, Any]) -> float | None:
    s, d = num(e.get("start")), num(e.get("duration"))
    return None if s is None else s + (d or 0.0)


def _finite(value: object) -> float | None:
    """``num(value)``, the float case first (steps are floats)."""
    if type(value) is float:
        return value if value - value == 0.0 else None  # NaN and infinities are not
    return num(value)


def _task_delay(
    task: dict[str, Any], out: list[tuple[float, float | None, dict[str, Any]]]
) -> None:
    """Append ``task``'s worst step by ``ready``: (ready, step start, task)."""
    worst: tuple[float, float | None] | None = None
    steps = task.get("steps")
    for step in steps if isinstance(steps, list) else ():
        if not isinstance(step, (list, tuple)) or len(step) < 4:
            continue
        ready = step[3]
        if type(ready) is float:  # ``num``, inline for the floats the builder writes
            if ready - ready != 0.0:
                continue
        elif (ready := num(ready)) is None:
            continue
        if worst is None or ready > worst[0]:
            worst = (ready, _finite(step[0]))
    if worst is not None:
        out.append((worst[0], worst[1], task))


def _task_waits(
    task: dict[str, Any],
    window_end: float | None,
    out: list[tuple[float, dict[str, Any], dict[str, Any]]],
) -> None:
    """Append ``task``'s suspensions of at least LONG_WAIT: (duration, wait, task)."""
    if task.get("waits"):
        for wait in dicts(task.get("waits")):
            dur = num(wait.get("duration"))
            if dur is not None and dur >= LONG_WAIT:
                out.append((dur, wait, task))
    if not task.get("awaiting"):
        return
    awaiting = dicts(task.get("awaiting"))
    if awaiting and num(task.get("done")) is None and window_end is not None:
        since = _last_step_end(task)
        if since is None:
            since = num(task.get("created"))
        if since is not None and window_end - since >= LONG_WAIT:
            wait = {"start": since, "duration": None, "stack": awaiting, "ongoing": True}
            out.append((window_end - since, wait, task))


def sched_delays(
    doc: dict[str, Any], r: Reading | None = None
) -> list[tuple[float, float | None, dict[str, Any]]]:
    """(ready, step start, task), worst first; one entry per task (its worst step).

    With ``r``, flightdeck's own tasks and the server's machinery are left out: they wait
    for the loop like everyone else, and saying so names no cause.
    """
    if r is not None and r.doc is doc:
        return r.delays_and_waits()[0]
    out: list[tuple[float, float | None, dict[str, Any]]] = []
    for task in dicts(doc.get("tasks")):
        if r is not None and r.owner(task.get("id")) != USER:
            continue
        _task_delay(task, out)
    out.sort(key=lambda x: -x[0])
    return out


def long_waits(
    doc: dict[str, Any], r: Reading | None = None
) -> list[tuple[float, dict[str, Any], dict[str, Any]]]:
    """(duration, wait, task) for suspensions of at least LONG_WAIT, longest first.

    A task still suspended when the snapshot was taken has waited since its last step
    (``wait["ongoing"]`` is True, its stack is where it awaits). With ``r``, flightdeck's
    own tasks and the server's machinery are left out.
    """
    if r is not None and r.doc is doc:
        return r.delays_and_waits()[1]
    out: list[tuple[float, dict[str, Any], dict[str, Any]]] = []
    window_end = num(section(doc, "window").get("end"))
    for task in dicts(doc.get("tasks")):
        if r is not None and r.owner(task.get("id")) != USER:
            continue
        _task_waits(task, window_end, out)
    out.sort(key=lambda x: -x[0])
    return out


def _wait_end(wait: dict[str, Any], dur: float) -> float | None:
    start = num(wait.get("start"))
    return None if start is None else start + dur


def _last_step_end(task: dict[str, Any]) -> float | None:
    last = None
    steps = task.get("steps")
    for step in steps if isinstance(steps, list) else ():
        if isinstance(step, (list, tuple)) and len(step) >= 2:
            s, d = num(step[0]), num(step[1])
            if s is not None and d is not None:
                last = s + d if last is None else max(last, s + d)
    return last


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
    delays = sched_delays(r.doc, r)
    # The worst of the trigger's time first (the first of the others if there is none).
    first = next((d for d in delays if not r.is_earlier(d[1])), delays[0] if delays else None)
    if first is not None and first[0] >= SCHED_DELAY:
        ready, start, task = first
        add(
            Finding(
                0.0,
                ready,
                f"worst scheduling delay {fmt_duration(ready)} for task {task_label(task)}"
                + request_of(r.index, task.get("request")).replace(" in ", " (", 1)
                + (")" if r.index.requests.get(task.get("request")) else ""),
                1,
                end=start,
            )
        )
    own = r.trigger.task.get("id") if r.trigger is not None and r.trigger.task else None
    waits = [w for w in long_waits(r.doc, r) if w[2].get("id") != own]  # own: the "why"
    # The longest of the trigger's time first (the first of the others if there is none).
    longest = next(
        (w for w in waits if not r.is_earlier(_wait_end(w[1], w[0]))), waits[0] if waits else None
    )
    if longest is not None:
        dur, wait, task = longest
        still = " (still waiting at capture)" if wait.get("ongoing") else ""
        start = num(wait.get("start"))
        add(
            Finding(
                0.0,
                dur,
                f"longest wait {fmt_duration(dur)}{still}: task {task_label(task)}"
                f" at {wait_site(wait, r.folder)}",
                1,
                end=None if start is None else start + dur,
            )
        )
    lags = [
        (num(e.get("duration")) or 0.0, num(e.get("start")))
        for e in dicts(r.doc.get("loop"))
        if e.get("kind") == "lag"
    ]
    now = [x for x in lags if not r.is_earlier(x[1])]
    for group in (now, [x for x in lags if r.is_earlier(x[1])]):
        if group and max(group)[0] >= LAG:
            worst, at = max(group)
            add(
                Finding(
                    0.0, worst * 0.5, f"event loop lagged up to {fmt_duration(worst)}", 1, end=at
                )
            )
    queued = [
        (started - start, job)
        for job in dicts(r.doc.get("events"))
        if job.get("kind") == "executor"
        and not text(job.get("func")).startswith("flightdeck.")
        and r.owner(job.get("task")) != FLIGHTDECK
        and (start := num(job.get("start"))) is not None
        and (started := num(job.get("started"))) is not None
    ]
    if queued:
        worst_q, job = max(queued, key=lambda x: x[0])
        b = r.trigger
        mine = b is not None and job.get("request") == b.request.get("id")
        if worst_q >= LONG_WAIT:
            add(
                Finding(
                    b.pool_queued if mine and b is not None else 0.0,
                    worst_q,
                    f"thread pool saturated: {text(job.get('func'))}"
                    f" queued {fmt_duration(worst_q)}",
                    end=num(job.get("started")),
                )
            )


def findings(doc: dict[str, Any], reading: Reading | None = None) -> list[str]:
    """Short human lines on what stands out in the snapshot, most important first; what
    was over before the trigger's request began comes last, marked ``earlier:``."""
    parts = split_processes(doc)
    if len(parts) > 1:
        return host_findings(parts)
    return [("earlier: " if f.earlier else "") + f.text for f in ranked(reading or Reading(doc))]


def host_findings(parts: list[dict[str, Any]]) -> list[str]:
    """The findings of a host capture (``common.split_processes``), each read in its own
    process and named after it (``pid 4711: ...``): the capturing process's first, then the
    others'; what was over before the trigger's request began last."""
    now: list[str] = []
    earlier: list[str] = []
    for part in parts:
        pid = text(section(part, "process").get("pid"))
        for f in ranked(Reading(part)):
            if f.earlier:
                earlier.append(f"earlier: pid {pid}: {f.text}")
            else:
                now.append(f"pid {pid}: {f.text}")
    return now + earlier
