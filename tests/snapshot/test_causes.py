"""Why a task was cancelled, told from the window: disconnect, task group, timeout, unknown."""

from __future__ import annotations

from typing import Any

from flightdeck.snapshot.causes import blocked_request, explain


def _task(tid: str, parent: str | None, request: int | None, **kw: Any) -> dict[str, Any]:
    return {"id": tid, "parent": parent, "request": request, "state": "pending", "done": None} | kw


def test_causes_from_the_window() -> None:
    tasks = {
        "t1": _task("t1", None, 1),
        "t2": _task("t2", "t1", 2),
        "t3": _task("t3", "t1", 2, state="error", done=10.05),  # failed just before
        "t4": _task("t4", "t1", 3),
        "t5": _task("t5", None, None),
    }
    requests = {
        1: {"disconnected": True, "end": 11.0},
        2: {"disconnected": False, "end": 11.0},
        3: {"disconnected": False, "end": 11.0},
    }
    events = [
        {"kind": "cancel", "start": 10.1, "task": "t1", "cause": None},  # its client left
        {"kind": "cancel", "start": 10.1, "task": "t2", "cause": None},  # sibling t3 failed
        {"kind": "cancel", "start": 10.5, "task": "t4", "cause": None},  # too late for t3
        {"kind": "cancel", "start": 10.1, "task": "t5", "cause": "timeout"},
        {"kind": "log", "start": 10.0},
    ]
    explain(events, tasks, requests)
    assert [e.get("cause") for e in events] == [
        "client disconnect",
        "task group",
        "unknown",
        "timeout",
        None,
    ]


def test_a_block_is_attributed_to_the_request_it_happened_in() -> None:
    loop = [
        {"kind": "lag", "start": 1.0, "duration": 0.2, "callback": None},
        {"kind": "block", "start": 2.0, "duration": 0.3, "callback": "GET /block: f (a.py:1)"},
    ]
    requests = {
        1: {"id": 1, "method": "GET", "path": "/other", "start": 1.9, "end": 2.4},
        2: {"id": 2, "method": "GET", "path": "/block", "start": 1.95, "end": 2.35},
    }
    found = blocked_request(2.31, loop, requests)
    assert found is not None and found["id"] == 2 and found is not requests[2]
    assert blocked_request(1.5, loop, requests) is None  # no block had ended by then
