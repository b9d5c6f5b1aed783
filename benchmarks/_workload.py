"""Synthetic but realistic recorder events: what the instrumentation emits for one request.

A request recorded by full flightdeck is a REQ_START, the server's task creation, a few
task steps, the task's completion and a REQ_END. Timestamps advance like a busy server
(tens of microseconds apart); task ids are ``id()``-like addresses that get reused; paths
and task names are fresh strings each time, as a server would hand them over.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from flightdeck.core import events as ev

CORO = "RequestResponseCycle.run_asgi"
ROUTE = "/items/{item_id}"
ADDRESSES = [0x7F3A_2C00_0000 + 0x1F0 * i for i in range(256)]


class EventSource:
    """Emits the events of one request at a time into ``emit`` (and the live tables)."""

    def __init__(
        self,
        emit: Callable[[tuple[Any, ...]], None],
        live_tasks: dict[int, Any],
        live_requests: dict[int, Any],
        steps: int = 4,
    ) -> None:
        self.emit = emit
        self.live_tasks = live_tasks
        self.live_requests = live_requests
        self.steps = steps
        self.t = perf_counter_ns()
        self.rid = 0
        self.per_request = 4 + steps

    def request(self) -> int:
        """Emit one request's events; returns how many were emitted."""
        emit = self.emit
        self.rid += 1
        rid = self.rid
        t = self.t
        tid = ADDRESSES[rid % 256]
        conn = ADDRESSES[(rid * 7 + 3) % 256]
        start = (
            ev.REQ_START,
            t,
            rid,
            "http",
            "GET",
            f"/items/{rid % 1000}",
            f"q=widget&limit={rid % 50}",
            ("127.0.0.1", 40000 + rid % 20000),
            None,
            conn,
            None,
        )
        self.live_requests[rid] = start
        emit(start)
        create = (ev.TASK_CREATE, t + 900, tid, f"Task-{rid}", CORO, conn, rid, None)
        self.live_tasks[tid] = create
        emit(create)
        s = t + 2_000
        for _ in range(self.steps):
            e = s + 6_000 + (rid % 13) * 100
            emit((ev.TASK_STEP, s, e, tid, s - 1_500))
            s = e + 9_000
        emit((ev.TASK_DONE, s, tid, "done", None, create[ev.TASK_CREATE_NAME]))
        self.live_tasks.pop(tid, None)
        emit((ev.REQ_END, s + 400, rid, 200, s - 8_000, ROUTE, False, None, s + 300, None))
        self.live_requests.pop(rid, None)
        self.t = s + 20_000
        return self.per_request
