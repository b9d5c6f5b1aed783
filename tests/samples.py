"""Synthetic ``flightdeck/1`` documents for exporter, summary and CLI tests.

``make_doc`` is a small but realistic window (a fast request, a slow request that fans out
to three tasks, a request that blocks the loop with ``time.sleep``, a 500, a request still
in flight, executor work, regions and logs). ``make_big_doc`` scales to ~100k events.
"""

from __future__ import annotations

import copy
from typing import Any

T0 = 1764121790.0
DOC_ID = "20261126T015000Z-1234-a1b2c3d4"


def _frame(function: str, file: str, line: int) -> dict[str, Any]:
    return {"function": function, "file": file, "line": line}


def _request(
    rid: int,
    method: str,
    path: str,
    start: float,
    duration: float | None,
    status: int | None,
    tasks: list[str],
    *,
    route: str | None = None,
    ttfb: float | None = None,
    error: str | None = None,
    query: str = "",
) -> dict[str, Any]:
    return {
        "id": rid,
        "kind": "http",
        "method": method,
        "path": path,
        "query": query,
        "route": route,
        "status": status,
        "start": start,
        "end": None if duration is None else start + duration,
        "duration": duration,
        "ttfb": ttfb,
        "client": "127.0.0.1:5555",
        "disconnected": False,
        "error": error,
        "headers": {"user-agent": "curl/8.5"},
        "tasks": tasks,
    }


def _task(
    tid: str,
    coro: str,
    steps: list[list[float | None]],
    *,
    request: int | None,
    parent: str | None = None,
    created: float | None = None,
    done: float | None = None,
    state: str = "done",
    error: str | None = None,
    awaiting: list[dict[str, Any]] | None = None,
    waits: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    first = steps[0][0] if steps else None
    return {
        "id": tid,
        "name": f"Task-{tid[1:]}",
        "coro": coro,
        "parent": parent,
        "request": request,
        "created": created if created is not None else first,
        "done": done,
        "state": state,
        "error": error,
        "site": _frame(coro.rsplit(".", 1)[-1], "app.py", 20),
        "steps": steps,
        "awaiting": awaiting,
        "waits": waits or [],
    }


def make_doc(**overrides: Any) -> dict[str, Any]:
    """A realistic small snapshot document; top-level keys can be replaced via ``overrides``."""
    t = T0
    slow = _request(
        2,
        "GET",
        "/slow",
        t + 6.0,
        1.2,
        200,
        ["t3", "t4", "t5"],
        route="/slow",
        ttfb=1.19,
        query="ms=1200&token=REDACTED",
    )
    requests = [
        _request(1, "GET", "/fast", t + 0.5, 0.012, 200, ["t2"], route="/fast", ttfb=0.011),
        slow,
        _request(
            3, "GET", "/error", t + 8.0, 0.01, 500, ["t6"], route="/error", error="ValueError"
        ),
        _request(4, "GET", "/block", t + 3.0, 1.25, 200, ["t7"], route="/block", ttfb=1.24),
        _request(5, "POST", "/upload", t + 9.0, None, None, ["t8"]),
    ]
    serve_steps: list[list[float | None]] = [
        [t + 0.05 + 0.5 * k, 0.0002, 0.4998, 0.00005] for k in range(20)
    ]
    tasks = [
        _task(
            "t1",
            "Server.serve",
            serve_steps,
            request=None,
            created=t - 100.0,
            state="pending",
            awaiting=[
                _frame("serve", "uvicorn/server.py", 80),
                _frame("sleep", "asyncio/tasks.py", 649),
            ],
        ),
        _task(
            "t2",
            "RequestResponseCycle.run_asgi",
            [[t + 0.5001, 0.002, 0.0, 0.0001], [t + 0.505, 0.003, 0.0029, 0.0001]],
            request=1,
            done=t + 0.508,
        ),
        _task(
            "t3",
            "RequestResponseCycle.run_asgi",
            [
                [t + 6.0002, 0.001, 0.0, 0.0001],
                [t + 7.121, 0.05, 1.1193, 0.0005],
                [t + 7.19, 0.009, 0.0189, 0.0001],
            ],
            request=2,
            created=t + 6.0,
            done=t + 7.199,
            waits=[
                {
                    "start": t + 6.0012,
                    "duration": 1.1193,
                    "stack": [
                        _frame("slow", "app.py", 41),
                        _frame("gather", "asyncio/tasks.py", 720),
                    ],
                }
            ],
        ),
        _task(
            "t4",
            "slow.<locals>.fetch_user",
            [[t + 6.0015, 0.0005, 0.0, 0.0004], [t + 6.5, 0.01, 0.458, 0.04]],
            request=2,
            parent="t3",
            created=t + 6.0011,
            done=t + 6.51,
            waits=[
                {
                    "start": t + 6.002,
                    "duration": 0.458,
                    "stack": [
                        _frame("fetch_user", "app.py", 52),
                        _frame("acquire", "asyncio/locks.py", 114),
                    ],
                }
            ],
        ),
        _task(
            "t5",
            "slow.<locals>.load_report",
            [[t + 6.002, 0.0004, 0.0008, 0.0002], [t + 7.1, 0.02, 1.0976, 0.0]],
            request=2,
            parent="t3",
            created=t + 6.0011,
            done=t + 7.12,
            waits=[
                {
                    "start": t + 6.0024,
                    "duration": 1.0976,
                    "stack": [
                        _frame("load_report", "app.py", 60),
                        _frame("run_in_executor", "asyncio/base_events.py", 830),
                    ],
                }
            ],
        ),
        _task(
            "t6",
            "RequestResponseCycle.run_asgi",
            [[t + 8.0001, 0.009, 0.0, 0.0001]],
            request=3,
            done=t + 8.0101,
            state="error",
            error="ValueError",
        ),
        _task(
            "t7",
            "RequestResponseCycle.run_asgi",
            [
                [t + 3.0001, 0.001, 0.0, 0.0001],
                [t + 3.01, 1.2, 0.008, 0.0009],
                [t + 4.24, 0.005, 0.0, 0.03],
            ],
            request=4,
            done=t + 4.25,
        ),
        _task(
            "t8",
            "RequestResponseCycle.run_asgi",
            [[t + 9.0001, 0.001, 0.0, None]],
            request=5,
            state="pending",
            awaiting=[
                _frame("upload", "app.py", 75),
                _frame("receive", "starlette/requests.py", 230),
            ],
        ),
    ]
    block_stack = [
        _frame("run_asgi", "uvicorn/protocols/http/httptools_impl.py", 401),
        _frame("__call__", "flightdeck/_middleware.py", 120),
        _frame("block", "app.py", 30),
    ]
    loop = [
        {
            "kind": "callback",
            "start": t + 2.0,
            "duration": 0.02,
            "callback": "TimerHandle(_flush)",
            "stack": None,
        },
        {
            "kind": "block",
            "start": t + 3.01,
            "duration": 1.2,
            "callback": "handler /block",
            "stack": block_stack,
        },
        {"kind": "lag", "start": t + 4.21, "duration": 1.19, "callback": None, "stack": None},
    ]
    events = [
        {"kind": "region", "start": t + 6.0021, "duration": 1.1, "name": "db.query", "task": "t5"},
        {"kind": "region", "start": t + 7.19, "duration": 0.008, "name": "render", "task": "t3"},
        {
            "kind": "log",
            "start": t + 6.0023,
            "category": "cache",
            "message": "miss user=42",
            "task": "t5",
        },
        {"kind": "log", "start": t + 1.0, "category": "startup", "message": "warm", "task": None},
        {
            "kind": "executor",
            "start": t + 6.0022,
            "started": t + 6.003,
            "end": t + 7.09,
            "duration": 1.087,
            "func": "read_report",
            "thread": "ThreadPoolExecutor-0_0",
            "task": "t5",
            "request": 2,
            "error": None,
        },
        {
            "kind": "executor",
            "start": t + 8.5,
            "started": t + 8.5001,
            "end": t + 8.6,
            "duration": 0.0999,
            "func": "resize",
            "thread": "ThreadPoolExecutor-0_1",
            "task": None,
            "request": None,
            "error": "OSError",
        },
        {
            "kind": "trigger",
            "start": t + 7.2,
            "trigger_kind": "slow_request",
            "reason": "GET /slow took 1.20 s (threshold 1.00 s)",
        },
    ]
    doc: dict[str, Any] = {
        "format": "flightdeck/1",
        "id": DOC_ID,
        "created_at": "2026-11-26T01:50:00.200Z",
        "trigger": {
            "kind": "slow_request",
            "reason": "GET /slow took 1.20 s (threshold 1.00 s)",
            "time": t + 7.2,
            "request": copy.deepcopy(slow),
        },
        "process": {
            "pid": 1234,
            "hostname": "web-1",
            "python": "3.11.7",
            "loop": "asyncio",
            "flightdeck": "0.1.0",
            "coverage": {
                "task_lifecycle": True,
                "task_steps": True,
                "scheduling_delay": True,
                "loop_blocks": True,
                "executor": True,
            },
        },
        "window": {"start": t, "end": t + 10.2, "dropped": 3, "events": 97},
        "requests": requests,
        "tasks": tasks,
        "loop": loop,
        "events": events,
    }
    for key, value in overrides.items():
        doc[key] = value
    return doc


def make_empty_doc() -> dict[str, Any]:
    """A valid document with nothing in it (an idle process, manual trigger)."""
    return make_doc(
        trigger={"kind": "manual", "reason": "", "time": None, "request": None},
        requests=[],
        tasks=[],
        loop=[],
        events=[],
        window={"start": T0, "end": T0 + 10.0, "dropped": 0, "events": 0},
    )


def make_big_doc(n_events: int = 100_000) -> dict[str, Any]:
    """A ~``n_events`` document: overlapping requests whose task steps interleave on the loop."""
    span = 10.0
    steps_per_task = 10
    n_req = max(3, n_events // 25)
    n_slots = n_req * 2 * steps_per_task
    dt = span / n_slots
    t = T0
    requests: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    loop: list[dict[str, Any]] = []
    task_steps: list[list[list[float | None]]] = [[] for _ in range(n_req * 2)]
    # Slots come in groups of 60 shared by three requests, so requests overlap in time.
    for slot in range(n_slots):
        group, pos = divmod(slot, 60)
        req = min(n_req - 1, group * 3 + pos % 3)
        task = req * 2 + (pos // 3) % 2
        steps = task_steps[task]
        start = t + slot * dt
        prev_end = steps[-1][0] + steps[-1][1] if steps else start  # type: ignore[operator]
        ready = dt * 0.2
        waited = max(0.0, start - ready - prev_end) if steps else 0.0
        steps.append([start, dt * 0.6, waited, ready])
    for r in range(n_req):
        ts = [task_steps[r * 2], task_steps[r * 2 + 1]]
        if not ts[0] or not ts[1]:
            ts = [s for s in ts if s]
        if not ts:
            continue
        start = min(s[0][0] for s in ts) - dt * 0.1  # type: ignore[type-var]
        end = max(s[-1][0] + s[-1][1] for s in ts) + dt * 0.1  # type: ignore[operator]
        tids = []
        for k, steps in enumerate(ts):
            tid = f"t{r * 2 + k + 10}"
            tids.append(tid)
            tasks.append(
                _task(
                    tid,
                    "handler.<locals>.work" if k else "RequestResponseCycle.run_asgi",
                    steps,
                    request=r + 1,
                    created=start,
                    done=steps[-1][0] + steps[-1][1],  # type: ignore[operator]
                )
            )
        requests.append(
            _request(
                r + 1,
                "GET",
                f"/item/{r}",
                start,
                end - start,
                500 if r % 97 == 5 else 200,
                tids,
                route="/item/{id}",
                ttfb=(end - start) * 0.9,
            )
        )
        events.append(
            {
                "kind": "region",
                "start": start,
                "duration": (end - start) / 2,
                "name": "db",
                "task": tids[0],
            }
        )
        events.append(
            {"kind": "log", "start": start, "category": "req", "message": f"r{r}", "task": tids[0]}
        )
        if r % 50 == 0:
            events.append(
                {
                    "kind": "executor",
                    "start": start,
                    "started": start,
                    "end": end,
                    "duration": end - start,
                    "func": "io",
                    "thread": f"ThreadPoolExecutor-0_{r % 4}",
                    "task": tids[0],
                    "request": r + 1,
                    "error": None,
                }
            )
    # Loop blocks reuse the interval of a step so they nest, as real ones do.
    for i, task_doc in enumerate(tasks[:: max(1, len(tasks) // 20)]):
        s = task_doc["steps"][0]
        loop.append(
            {
                "kind": "block",
                "start": s[0],
                "duration": s[1],
                "callback": f"step {i}",
                "stack": [_frame("handler", "app.py", 10 + i), _frame("compute", "app.py", 99)],
            }
        )
    mid = requests[len(requests) // 2]
    return make_doc(
        trigger={
            "kind": "slow_request",
            "reason": f"GET {mid['path']} took long",
            "time": mid["end"],
            "request": copy.deepcopy(mid),
        },
        window={"start": t, "end": t + span, "dropped": 0, "events": n_events},
        requests=requests,
        tasks=tasks,
        loop=loop,
        events=events,
    )
