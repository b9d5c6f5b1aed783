"""What held the loop (blocks and hogs below the block threshold), cancellations grouped by
site and cause, and GC pauses: the readings behind the summary's findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .common import dicts, num, request_label, text
from .loop_index import LoopIndex

#: Steps and callbacks at least this long hold the loop noticeably (asyncio's own
#: ``slow_callback_duration`` default is 100 ms; flightdeck samples from 10 ms).
SLOW_CALLBACK = 0.01
#: This many cancellations within BURST_SPAN seconds make a burst.
BURST_COUNT = 10
BURST_SPAN = 1.0


@dataclass
class Hog:
    start: float
    duration: float
    kind: str  # "block", "step", "callback" or "gc"
    label: str
    task: Any = None
    request: Any = None
    stack: Any = None
    entry: Any = None


def hogs(doc: dict[str, Any], index: LoopIndex, slow: float = SLOW_CALLBACK) -> list[Hog]:
    """Everything that held the loop at least ``slow``, longest first, each named once.

    A block is also a long step and a watchdog sample: the block (whose stack was taken
    while it held the loop) stands for them; a step takes the name of the sample that
    overlaps it.
    """
    folder = index.folder
    out: list[Hog] = []
    blocks = []
    for e in index.entries:
        s, d = num(e.get("start")), num(e.get("duration"))
        if s is None or d is None:
            continue
        if e.get("kind") == "block":
            blocks.append((s, s + d))
    for e in index.entries:
        s, d = num(e.get("start")), num(e.get("duration"))
        kind = e.get("kind")
        if kind == "block" and (s is None or d is None):
            s, d = s or 0.0, d or 0.0  # a block is named even when its times are damaged
        elif s is None or d is None or d < slow:
            continue
        if kind == "block":
            steps = index.steps_between(s, s + d)
            tid = max(steps, key=lambda x: x[1] - x[0])[2] if steps else None
            task = index.tasks.get(tid, {})
            who = f"{text(tid)} {text(task.get('coro')) or text(task.get('name'))} " if tid else ""
            label = (
                f"{who}at {folder.site(e.get('stack'))}"
                if dicts(e.get("stack"))
                else (who + (text(e.get("callback")) or "unknown callback"))
            )
            req = task.get("request")
            out.append(Hog(s, d, "block", label.strip(), tid, req, e.get("stack"), e))
        elif kind in ("step", "callback"):
            if any(s < b1 and s + d > b0 for b0, b1 in blocks):
                continue
            if kind == "callback" and any(
                x.get("kind") == "step" and _overlaps(x, s, s + d) for x in index.entries
            ):
                continue  # the step entry names it, with this sample's name
            if kind == "step":
                tid = e.get("task")
                label = index.step_label(s, s + d, tid)
                req = index.tasks.get(tid, {}).get("request")
                out.append(Hog(s, d, "step", _strip_request(label), tid, req, e.get("stack")))
            else:
                out.append(Hog(s, d, "callback", text(e.get("callback")) or "callback"))
        elif kind == "gc":
            gen = e.get("generation")
            out.append(Hog(s, d, "gc", f"garbage collection (generation {text(gen)})"))
    out.sort(key=lambda h: -h.duration)
    return out


def _overlaps(e: dict[str, Any], a: float, b: float) -> bool:
    s, d = num(e.get("start")), num(e.get("duration"))
    return s is not None and d is not None and s < b and s + d > a


def _strip_request(label: str) -> str:
    return label.split(" in ", 1)[0] if " in " in label else label


@dataclass
class CancelGroup:
    count: int
    what: str
    site: str
    cause: str
    first: float
    last: float


def cancellations(doc: dict[str, Any], index: LoopIndex) -> tuple[list[CancelGroup], int, int]:
    """(groups, delivered, ended_cancelled): cancellations grouped by coroutine, site, cause.

    ``delivered`` counts tasks woken by a cancellation (they may have caught it, as a
    timeout's ``TimeoutError``); tasks that ended cancelled without one (cancelled before
    they ran, or not awaiting anything cancellable) are grouped as well.
    """
    folder = index.folder
    groups: dict[tuple[str, str, str], CancelGroup] = {}
    seen: set[Any] = set()
    delivered = 0

    def add(what: str, site: str, cause: str, t: float) -> None:
        g = groups.get((what, site, cause))
        if g is None:
            groups[(what, site, cause)] = CancelGroup(1, what, site, cause, t, t)
        else:
            g.count += 1
            g.first, g.last = min(g.first, t), max(g.last, t)

    for e in dicts(doc.get("events")):
        if e.get("kind") != "cancel":
            continue
        t = num(e.get("start"))
        if t is None:
            continue
        delivered += 1
        task = index.tasks.get(e.get("task"), {})
        seen.add(e.get("task"))
        what = text(task.get("coro")) or text(task.get("name")) or "task"
        add(what, folder.site(e.get("stack")), text(e.get("cause")) or "unknown", t)
    ended = 0
    for task in index.tasks.values():
        if task.get("state") != "cancelled":
            continue
        ended += 1
        if task.get("id") in seen:
            continue
        t = num(task.get("done")) or num(task.get("created")) or 0.0
        what = text(task.get("coro")) or text(task.get("name")) or "task"
        waits = dicts(task.get("waits"))
        site = folder.site(waits[-1].get("stack")) if waits else "before it was suspended"
        cause = "unknown"
        req = index.requests.get(task.get("request"))
        if req is not None and req.get("disconnected"):
            cause = "client disconnect"
        add(what, site, cause, t)
    return sorted(groups.values(), key=lambda g: -g.count), delivered, ended


def burst(doc: dict[str, Any], index: LoopIndex) -> tuple[int, float, float] | None:
    """(count, start, span) of the densest run of cancellations within BURST_SPAN, if a burst."""
    cancels = [e for e in dicts(doc.get("events")) if e.get("kind") == "cancel"]
    woken = {e.get("task") for e in cancels}
    raw = [num(e.get("start")) for e in cancels]
    raw += [
        num(t.get("done"))
        for t in index.tasks.values()
        if t.get("state") == "cancelled" and t.get("id") not in woken
    ]
    times = sorted(t for t in raw if t is not None)
    best: tuple[int, float, float] | None = None
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - BURST_SPAN:
            j += 1
        n = i - j + 1
        if best is None or n > best[0]:
            best = (n, times[j], t - times[j])
    if best is None or best[0] < BURST_COUNT:
        return None
    return best


def request_of(index: LoopIndex, rid: Any) -> str:
    req = index.requests.get(rid)
    return f" in {request_label(req)}" if req else ""


@dataclass
class HogGroup:
    """The same thing holding the loop several times (a loop of CPU work between awaits)."""

    hogs: list[Hog]

    @property
    def first(self) -> Hog:
        return self.hogs[0]

    @property
    def total(self) -> float:
        return sum(h.duration for h in self.hogs)

    @property
    def longest(self) -> float:
        return max(h.duration for h in self.hogs)


def grouped(hogs: list[Hog]) -> list[HogGroup]:
    """Hogs with the same kind, name, task and request together, by loop time taken."""
    groups: dict[tuple[str, str, Any, Any], HogGroup] = {}
    for h in hogs:
        key = (h.kind, h.label, h.task, h.request)
        if key in groups:
            groups[key].hogs.append(h)
        else:
            groups[key] = HogGroup([h])
    return sorted(groups.values(), key=lambda g: -g.total)
