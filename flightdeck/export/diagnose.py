"""What held the loop (blocks and hogs below the block threshold), cancellations grouped by
site and cause, and GC pauses: the readings behind the summary's findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .common import dicts, num, request_label, text
from .loop_index import LoopIndex
from .stacks import short_site

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
                out.append(_callback_hog(index, e, s, d))
        elif kind == "gc":
            gen = e.get("generation")
            out.append(Hog(s, d, "gc", f"garbage collection (generation {text(gen)})"))
    out.sort(key=lambda h: -h.duration)
    return out


def _callback_hog(index: LoopIndex, e: dict[str, Any], s: float, d: float) -> Hog:
    """A slow callback; when many short task steps ran in it (a burst of wake-ups), it is
    named by those tasks rather than by whatever frame the watchdog's sample caught."""
    label = text(e.get("callback")) or "callback"
    steps = index.steps_between(s, s + d)
    covered = sum(min(b, s + d) - max(a, s) for a, b, _ in steps)
    if len(steps) >= 10 and covered >= 0.5 * d:
        counts: dict[Any, int] = {}
        for _, _, tid in steps:
            counts[tid] = counts.get(tid, 0) + 1
        coros: dict[str, int] = {}
        reqs: dict[Any, int] = {}
        for tid, n in counts.items():
            task = index.tasks.get(tid, {})
            what = text(task.get("coro")) or text(task.get("name")) or "task"
            coros[what] = coros.get(what, 0) + n
            reqs[task.get("request")] = reqs.get(task.get("request"), 0) + n
        what = max(coros, key=lambda k: coros[k])
        req = max(reqs, key=lambda k: reqs[k])
        label = f"{len(steps)} steps of {len(counts)} tasks ({what})"
        return Hog(s, d, "callback", label, None, req, None, e)
    return Hog(s, d, "callback", label, entry=e)


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


def cancellations(
    doc: dict[str, Any], index: LoopIndex, between: tuple[float, float] | None = None
) -> tuple[list[CancelGroup], int, int]:
    """(groups, delivered, ended_cancelled): cancellations grouped by coroutine, site, cause.

    ``delivered`` counts tasks woken by a cancellation (they may have caught it, as a
    timeout's ``TimeoutError``); tasks that ended cancelled without one (cancelled before
    they ran, or not awaiting anything cancellable) are grouped as well. A group is named
    by the user's code (see ``cancel_name``). ``between``: only those in that interval.
    """
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

    def inside(t: float) -> bool:
        return between is None or between[0] <= t <= between[1]

    for e in dicts(doc.get("events")):
        if e.get("kind") != "cancel":
            continue
        t = num(e.get("start"))
        if t is None:
            continue
        seen.add(e.get("task"))
        if not inside(t):
            continue
        delivered += 1
        task = index.tasks.get(e.get("task"), {})
        add(*cancel_name(index, task, e.get("stack"), text(e.get("cause")) or "unknown", t), t)
    ended = 0
    for task in index.tasks.values():
        if task.get("state") != "cancelled":
            continue
        t = num(task.get("done")) or num(task.get("created")) or 0.0
        if not inside(t):
            continue
        ended += 1
        if task.get("id") in seen:
            continue
        waits = dicts(task.get("waits"))
        cause = "unknown"
        req = index.requests.get(task.get("request"))
        if req is not None and req.get("disconnected"):
            cause = "client disconnect"
        add(*cancel_name(index, task, waits[-1].get("stack") if waits else None, cause, t), t)
    return sorted(groups.values(), key=lambda g: -g.count), delivered, ended


def _fn_matches(site_fn: str, coro: str) -> bool:
    return bool(site_fn) and (
        coro == site_fn or coro.rsplit(".", 1)[-1] == site_fn.rsplit(".", 1)[-1]
    )


def cancel_name(
    index: LoopIndex, task: dict[str, Any], stack: object, cause: str, t: float
) -> tuple[str, str, str]:
    """(what, site, cause) of one cancellation, named by the user's code.

    ``asyncio.wait_for`` on 3.11 runs the awaited coroutine as an inner task and cancels it
    on timeout: that task was created by the function that called ``wait_for`` and its
    parent carried on (a child its creator cancels by hand and outlives reads the same).
    It is named as on 3.12+ (where the caller's own task takes the cancellation from
    ``asyncio.timeout``): the caller, where it awaited, cause timeout.
    """
    folder = index.folder
    what = text(task.get("coro")) or text(task.get("name")) or "task"
    created_at = task.get("site") if isinstance(task.get("site"), dict) else None
    parent = index.tasks.get(task.get("parent"))
    if (
        parent is not None
        and created_at is not None
        and not folder.is_library(created_at)
        and _fn_matches(text(created_at.get("function")), text(parent.get("coro")))
        and cause == "unknown"
        and _outlived(parent, t)
    ):
        return text(parent.get("coro")) or what, short_site(created_at), "timeout"
    frames = dicts(stack)
    for i, frame in enumerate(frames):
        # 3.12+ wait_for runs in the caller's own task: the caller is the frame outside it.
        if text(frame.get("function")) == "wait_for" and folder.is_library(frame):
            caller = folder.user_frame(frames[:i])
            if caller is not None:
                return what, short_site(caller), cause
    if frames and folder.user_frame(frames) is None and created_at is not None:
        # Only library frames where it was cancelled: say where the user's code started it.
        return what, f"{folder.site(stack)} started at {short_site(created_at)}", cause
    return what, folder.site(stack) if dicts(stack) else "before it was suspended", cause


def _outlived(parent: dict[str, Any], t: float) -> bool:
    """The parent went on after the child's cancellation (it took it back as a timeout)."""
    if parent.get("state") == "cancelled":
        return False
    done = num(parent.get("done"))
    return done is None or done >= t


def burst(
    doc: dict[str, Any], index: LoopIndex, between: tuple[float, float] | None = None
) -> tuple[int, float, float] | None:
    """(count, start, span) of the densest run of cancellations within BURST_SPAN, if a burst
    (``between``: only those in that interval)."""
    cancels = [e for e in dicts(doc.get("events")) if e.get("kind") == "cancel"]
    woken = {e.get("task") for e in cancels}
    raw = [num(e.get("start")) for e in cancels]
    raw += [
        num(t.get("done"))
        for t in index.tasks.values()
        if t.get("state") == "cancelled" and t.get("id") not in woken
    ]
    times = sorted(
        t for t in raw if t is not None and (between is None or between[0] <= t <= between[1])
    )
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


# -- whose work it is ---------------------------------------------------------------------

#: Who a task works for: the app ("user"), the server's own machinery, or flightdeck.
USER, SERVER, FLIGHTDECK = "user", "server", "flightdeck"
#: Where flightdeck's own work runs (its endpoint, captures, exports) ...
FLIGHTDECK_OWN = ("/flightdeck/asgi/", "/flightdeck/snapshot/", "/flightdeck/export/")
#: ... and every frame of flightdeck's, with the hooks it puts into the app's own calls.
FLIGHTDECK_CODE = (*FLIGHTDECK_OWN, "/flightdeck/instrument/", "/flightdeck/core/")


def _frames_of(task: dict[str, Any]) -> list[dict[str, Any]]:
    frames = dicts(task.get("awaiting")) if task.get("awaiting") else []
    if task.get("waits"):
        for wait in dicts(task.get("waits")):
            frames += dicts(wait.get("stack"))
    site = task.get("site")
    if isinstance(site, dict):
        frames.append(site)
    return frames


def owners(doc: dict[str, Any], index: LoopIndex) -> dict[Any, str]:
    """Each task's owner.

    Every HTTP and WebSocket request is recorded except those to flightdeck's own endpoint,
    so a server's request task (``run_asgi``) without a request serves the endpoint; so
    does a task whose thread-pool jobs or frames are flightdeck's. A task with no request
    whose every frame is library code is the server's (uvicorn's ``Server.serve`` ticker).
    Children inherit their parent's owner.
    """
    folder = index.folder
    fd_jobs = {
        e.get("task")
        for e in dicts(doc.get("events"))
        if e.get("kind") == "executor" and text(e.get("func")).startswith("flightdeck.")
    }
    out: dict[Any, str] = {}
    # Tasks are many, their coroutines and files few: each is looked at once.
    asgi_coro: dict[Any, bool] = {}
    own_file: dict[Any, bool] = {}

    def is_asgi(coro: Any) -> bool:
        found = asgi_coro.get(coro) if type(coro) is str else None
        if found is None:
            found = "asgi" in text(coro).lower()
            if type(coro) is str:
                asgi_coro[coro] = found
        return found

    def is_own(file: Any) -> bool:
        found = own_file.get(file) if type(file) is str else None
        if found is None:
            f = text(file).replace("\\", "/")
            found = any(m in f for m in FLIGHTDECK_OWN)
            if type(file) is str:
                own_file[file] = found
        return found

    def own(task: dict[str, Any], depth: int = 0) -> str:
        tid = task.get("id")
        who = out.get(tid)
        if who is not None:
            return who
        if task.get("request") is not None:
            who = USER
        elif tid in fd_jobs or is_asgi(task.get("coro")):
            who = FLIGHTDECK
        else:
            if task.get("awaiting") or task.get("waits"):
                frames = _frames_of(task)
            else:  # most tasks: where they were created, and nothing else
                site = task.get("site")
                frames = [site] if isinstance(site, dict) else []
            parent = index.tasks.get(task.get("parent"))
            fd_frame = False
            for f in frames:
                if is_own(f.get("file")):
                    fd_frame = True
                    break
            if fd_frame:
                who = FLIGHTDECK
            elif parent is not None and depth < 50:
                who = out.get(parent.get("id")) or own(parent, depth + 1)
            elif (frames and all(folder.is_library(f) for f in frames)) or (
                not frames and text(task.get("coro")).startswith(("Server.", "LifespanOn."))
            ):
                who = SERVER
            else:
                who = USER
        out[tid] = who
        return who

    for task in index.tasks.values():
        own(task)
    return out


#: Sites that cost once per process (an import, a TLS context's certificates): the first
#: request to need them pays, and they are not the app's steady work.
_FIRST_USE = ("create_default_context", "load_verify_locations", "set_default_verify_paths")


def first_use(label: str, stack: object) -> bool:
    """Whether a hog is a one-time set-up: a module import or a TLS context's creation."""
    called = False  # a <module> frame below a function call is an import, not the script
    for frame in dicts(stack):
        file, fn = text(frame.get("file")), text(frame.get("function"))
        if file.startswith("<frozen importlib") or (fn == "<module>" and called):
            return True
        if fn != "<module>" and "runpy" not in file.replace("\\", "/").rsplit("/", 1)[-1]:
            called = True
    if "<module> (" in label:
        return True
    return any(f"{name} (ssl.py:" in label for name in _FIRST_USE)
