"""Event kinds and the tuple layout of each, as appended to the window.

Every event is a flat tuple of ints, strings, ``None`` and nested tuples of those (so a
sealed segment can be compacted with :mod:`marshal`). Times are ``perf_counter_ns``
values; the snapshot builder turns them into Unix epoch seconds. Task ids are the raw
``id()`` of the task: CPython reuses addresses, so the builder disambiguates them by the
order of ``TASK_CREATE`` events.
"""

from __future__ import annotations

from typing import Final

# (TASK_CREATE, t, tid, name, coro, parent_tid | None, request_id | None, site | None)
TASK_CREATE: Final = 1
# (TASK_STEP, t_start, t_end, tid, t_queued) -- t_queued: when the step was scheduled
# (call_soon of the step or of its wakeup), 0 when the loop cannot tell.
TASK_STEP: Final = 2
# (TASK_DONE, t, tid, state, exc_type | None, name) -- state: "done" | "cancelled" | "error";
# name: the task's name when it finished (older recordings may lack it)
TASK_DONE: Final = 3
# (TASK_WAIT, t_start, t_end, tid, stack) -- a suspension longer than the wait threshold
TASK_WAIT: Final = 4
# (LOOP_BLOCK, t_start, t_end, callback, stack) -- stack taken while the loop was blocked
LOOP_BLOCK: Final = 5
# (LOOP_CALLBACK, t_start, t_end, name) -- a slow callback that is not a task step
LOOP_CALLBACK: Final = 6
# (LOOP_LAG, t, lag_ns)
LOOP_LAG: Final = 7
# (REQ_START, t, rid, scope_type, method, path, query, client, headers, tid | None)
# tid: the task that runs the request (the server's per-connection/per-request task)
REQ_START: Final = 8
# (REQ_END, t, rid, status, t_ttfb | 0, route | None, disconnected, error | None, t_body_end | 0)
REQ_END: Final = 9
# (REGION, t_start, t_end, name, tid | None)
REGION: Final = 10
# (LOG, t, category, message, tid | None)
LOG: Final = 11
# (EXECUTOR, t_queued, t_start, t_end, func, thread, tid | None, request_id | None, error | None)
EXECUTOR: Final = 12
# (REQ_ROUTE, t, rid, route) -- the route template, once the framework has resolved it
REQ_ROUTE: Final = 13
# (REQ_TTFB, t, rid, status) -- http.response.start was sent
REQ_TTFB: Final = 14
# (MARK, t, kind, reason) -- a trigger fired
MARK: Final = 15

NAMES: Final = {
    TASK_CREATE: "task_create",
    TASK_STEP: "task_step",
    TASK_DONE: "task_done",
    TASK_WAIT: "task_wait",
    LOOP_BLOCK: "loop_block",
    LOOP_CALLBACK: "loop_callback",
    LOOP_LAG: "loop_lag",
    REQ_START: "request_start",
    REQ_END: "request_end",
    REGION: "region",
    LOG: "log",
    EXECUTOR: "executor",
    REQ_ROUTE: "request_route",
    REQ_TTFB: "request_ttfb",
    MARK: "mark",
}
