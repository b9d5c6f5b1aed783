"""The watchdog: notices a blocked loop from another thread and takes its stack meanwhile.

The recorder's thread posts a heartbeat to the loop (``call_soon_threadsafe``) whenever
none is pending. A heartbeat that has not run after ``loop_blocked`` seconds means one
callback or task step holds the loop: the loop thread's stack is taken right then
(``sys._current_frames``), so a handler stuck in ``time.sleep`` or a CPU-bound loop is named
even if it never returns. When the heartbeat finally runs, one ``LOOP_BLOCK`` event is
recorded with the block's full duration. Heartbeat delays double as the loop-lag measure.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from time import perf_counter_ns
from typing import Any

from ..core import events as ev
from ..core.sink import Sink
from .frames import stack_of

#: A block in progress is recorded again (a fresh stack) at most this often (ns).
ONGOING_REFRESH_NS = 1_000_000_000
#: Heartbeat delays above this are recorded as loop lag; others once every LAG_EVERY beats.
LAG_NOTABLE_NS = 2_000_000
LAG_EVERY = 10

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_user_frame(filename: str) -> bool:
    return not (
        filename.startswith(_ASYNCIO_DIR)
        or filename.startswith(_OWN_DIR)
        or filename.startswith("<")
        or "/site-packages/uvicorn/" in filename
        or "/site-packages/starlette/" in filename
        or "/site-packages/anyio/" in filename
        or "/site-packages/fastapi/" in filename
    )


def blocking_site(stack: tuple[Any, ...]) -> str | None:
    """The innermost frame that belongs to the application, as ``function (file:line)``."""
    for function, filename, line in reversed(stack):
        if _is_user_frame(filename):
            return f"{function} ({os.path.basename(filename)}:{line})"
    if stack:
        function, filename, line = stack[-1]
        return f"{function} ({os.path.basename(filename)}:{line})"
    return None


class Watchdog:
    def __init__(self, sink: Sink, loop: asyncio.AbstractEventLoop, threshold: float) -> None:
        self.sink = sink
        self.loop = loop
        self.threshold_ns = int(threshold * 1e9)
        self._lock = threading.Lock()
        self._pending_since = 0
        self._last_beat = perf_counter_ns()
        self._blocked = False
        self._block_start = 0
        self._block_stack: tuple[Any, ...] = ()
        self._block_name: str | None = None
        #: The block's application frame (``function (file:line)``) and the request whose task
        #: held the loop (``{id, method, path}``), for what a crash snapshot says of the end.
        self._block_site: str | None = None
        self._block_request: dict[str, Any] | None = None
        self._described: tuple[str | None, dict[str, Any] | None] = (None, None)
        self._stopped_in: dict[str, Any] | None = None  # the block the loop stopped in
        self._ongoing_at = 0  # when the block in progress was last recorded (LOOP_BLOCK_ONGOING)
        #: A heartbeat later than this means a slow callback, sampled and named (not a block).
        self.slow_ns = sink.slow_callback_ns
        self._slow_name: str | None = None
        self._beats = 0
        self.blocks = 0
        self.closed = False
        self.thread_id: int | None = None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.thread_id = threading.get_ident()
        else:
            loop.call_soon_threadsafe(self._learn_thread)
        sink.coverage["loop_blocks"] = True

    def _learn_thread(self) -> None:
        self.thread_id = threading.get_ident()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pending_since = 0
        self._blocked = False
        self._stopped_in = None

    def close(self) -> None:
        self.closed = True

    def block_in_progress(self) -> dict[str, Any] | None:
        """The block the loop is in now, as far as the watchdog saw it: ``{start, site,
        request}`` (``start`` in the recorder's clock), or None. A loop that stopped while
        blocked (and has not run a heartbeat since) is still in that block."""
        with self._lock:
            if not self._blocked:
                return self._stopped_in
            return self._block_state()

    def _block_state(self) -> dict[str, Any]:
        return {
            "start": self._block_start,
            "site": self._block_site,
            "request": self._block_request,
        }

    def counters(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "beats": self._beats, "blocked_now": self._blocked}

    # -- on the loop ------------------------------------------------------------------------
    def _beat(self) -> None:
        now = perf_counter_ns()
        with self._lock:
            posted = self._pending_since
            self._pending_since = 0
            self._last_beat = now
            blocked = self._blocked
            self._blocked = False
            self._stopped_in = None
            start, stack, name = self._block_start, self._block_stack, self._block_name
            slow_name = self._slow_name
            self._slow_name = None
        self._beats += 1
        emit = self.sink.emit
        if blocked:
            event = (ev.LOOP_BLOCK, start, now, name, stack)
            emit(event)
            self.blocks += 1
            for listener in list(self.sink.block_listeners):
                try:
                    listener(event)
                except Exception:
                    self.sink.errors += 1
        elif posted:
            lag = now - posted
            if slow_name is not None and lag > self.slow_ns:
                # Busy past the slow-callback threshold but short of a block: named by the
                # stack sampled meanwhile (a sample, not an exact account of one callback).
                emit((ev.LOOP_CALLBACK, posted, now, slow_name))
            if lag > LAG_NOTABLE_NS or self._beats % LAG_EVERY == 0:
                emit((ev.LOOP_LAG, posted, lag))

    def post_from_loop(self) -> None:
        """Post the heartbeat from the loop itself, when the recorder's thread is starved.

        Loop lag is then still measured (from now to when the ready callbacks ahead of it
        have run); a block that starts meanwhile is found as usual, since a loop that does
        not poll lets the recorder's thread take the GIL.
        """
        if self.closed:
            return
        with self._lock:
            if self._pending_since:
                return
            self._pending_since = perf_counter_ns()
        self.loop.call_soon(self._beat)

    # -- on the recorder's thread -----------------------------------------------------------
    def tick(self) -> None:
        if self.closed or self.loop.is_closed():
            return
        if not self.loop.is_running():
            # A stopped loop runs no heartbeat: that is not a block. Forget a pending one so
            # the wait is not counted from before the loop ran again. A loop that stopped in
            # the middle of a block (an exception such as gunicorn's SystemExit raised inside
            # the blocked step) is remembered: the process is ending because of it.
            with self._lock:
                if self._blocked:
                    self._stopped_in = self._block_state()
                self._pending_since = 0
                self._blocked = False
            return
        now = perf_counter_ns()
        slow = capture = False
        with self._lock:
            posted = self._pending_since
            if posted == 0:
                self._pending_since = now
                post = True
            else:
                post = False
                slow = (
                    self._slow_name is None
                    and not self._blocked
                    and self.slow_ns < now - posted <= self.threshold_ns
                )
                if not self._blocked and now - posted > self.threshold_ns:
                    self._blocked = True
                    self._block_start = max(self._last_beat, self._last_activity(posted))
                    self._block_stack = ()
                    self._block_name = None
                    self._block_site = None
                    self._block_request = None
                    capture = True
                else:
                    capture = False
        if post:
            try:
                self.loop.call_soon_threadsafe(self._beat)
            except RuntimeError:  # loop closed meanwhile
                with self._lock:
                    self._pending_since = 0
            return
        if slow and self.thread_id is not None:
            frame = sys._current_frames().get(self.thread_id)
            name = self._describe(stack_of(frame)) if frame is not None else None
            with self._lock:
                if self._pending_since == posted and not self._blocked:
                    self._slow_name = name or "busy"
        refresh = False
        if not capture and self._blocked and now - self._ongoing_at >= ONGOING_REFRESH_NS:
            refresh = True
        if (capture or refresh) and self.thread_id is not None:
            frame = sys._current_frames().get(self.thread_id)
            stack = stack_of(frame) if frame is not None else ()
            name = self._describe(stack)
            site, request = self._described
            with self._lock:
                still = self._blocked
                if still:
                    self._block_stack = stack
                    self._block_name = name
                    self._block_site = site
                    self._block_request = request
                    start = self._block_start
            if still:
                # In the window now, not only when the block ends: a process killed in the
                # middle of it (gunicorn's timeout) still says what held its loop.
                self._ongoing_at = now
                rid = request.get("id") if request is not None else None
                self.sink.emit(
                    (
                        ev.LOOP_BLOCK_ONGOING,
                        start,
                        now,
                        name,
                        stack,
                        rid if type(rid) is int else None,
                    )
                )

    def _last_activity(self, posted: int) -> int:
        """Best guess of when the current callback started: the loop's last recorded event."""
        last = self.sink.last_event_time()
        if last is None or last > posted:
            return self._last_beat
        return last

    def _describe(self, stack: tuple[Any, ...]) -> str | None:
        """The block's label; its site and request are left in ``_described``."""
        site = blocking_site(stack)
        self._described = (site, None)
        try:
            task = asyncio.current_task(self.loop)
        except Exception:
            task = None
        if task is not None:
            coro = task.get_coro()
            cname = getattr(coro, "__qualname__", None) or task.get_name()
            tid = id(task)
            info = self.sink.live_tasks.get(tid)
            live = self.sink.live_requests
            rid = info[ev.TASK_CREATE_REQUEST] if info else None
            entry = live.get(rid) if rid is not None else None
            req = entry[0] if entry is not None else None
            if req is None:
                for candidate, _scope, _state in list(live.values()):
                    if candidate[ev.REQ_START_TID] == tid:
                        req = candidate
                        break
            if req is not None:
                method, path = req[ev.REQ_START_METHOD], req[ev.REQ_START_PATH]
                label = f"{method} {path}"
                self._described = (
                    site,
                    {"id": req[ev.REQ_START_RID], "method": method, "path": path},
                )
                return f"{label}: {site}" if site else f"{label} ({cname})"
            return f"{cname}: {site}" if site else cname
        return site
