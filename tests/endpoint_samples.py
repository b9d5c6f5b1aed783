"""Synthetic snapshots for the store and endpoint tests."""

from __future__ import annotations

import os
import time
from typing import Any

from flightdeck.snapshot.document import FORMAT, Snapshot, new_id, rfc3339
from flightdeck.snapshot.store import SnapshotStore


def make_document(
    *,
    created: float | None = None,
    kind: str = "slow_request",
    reason: str = "GET /slow took 1.20 s (threshold 1.00 s)",
    path: str = "/slow",
    format: str = FORMAT,
    padding: int = 0,
) -> dict[str, Any]:
    """A small valid ``flightdeck/1`` document with a fresh id."""
    now = time.time() if created is None else created
    request = {
        "id": 1,
        "kind": "http",
        "method": "GET",
        "path": path,
        "query": "",
        "route": path,
        "status": 200,
        "start": now - 1.2,
        "end": now,
        "duration": 1.2,
        "ttfb": 0.01,
        "client": "127.0.0.1:5555",
        "disconnected": False,
        "error": None,
        "headers": {},
        "tasks": ["t1"],
    }
    return {
        "format": format,
        "id": new_id(now),
        "created_at": rfc3339(now),
        "trigger": {"kind": kind, "reason": reason, "time": now, "request": request},
        "process": {
            "pid": os.getpid(),
            "hostname": "test",
            "python": "3.11",
            "loop": "asyncio",
            "flightdeck": "0.0.0",
        },
        "window": {"start": now - 10, "end": now, "dropped": 0, "events": 3},
        "requests": [request],
        "tasks": [
            {
                "id": "t1",
                "name": "Task-1",
                "coro": "handler",
                "parent": None,
                "request": 1,
                "created": now - 1.2,
                "done": now,
                "state": "done",
                "error": None,
                "site": None,
                "steps": [[now - 1.2, 0.001, 0.0, 0.0001]],
                "awaiting": None,
                "waits": [],
            }
        ],
        "loop": [],
        "events": [
            {"kind": "log", "start": now - 0.5, "category": "pad", "message": f"{i:08x}" * 8}
            for i in range(padding)
        ],
    }


def make_snapshot(**kwargs: Any) -> Snapshot:
    """``Snapshot(make_document(**kwargs))``."""
    return Snapshot(make_document(**kwargs))


def write_many(directory: str, count: int, max_snapshots: int, start: Any, results: Any) -> None:
    """Process target: wait for ``start``, put ``count`` snapshots, report (written, errors)."""
    store = SnapshotStore(max_snapshots=max_snapshots, directory=directory)
    start.wait(30)
    for i in range(count):
        store.put(make_snapshot(reason=f"{os.getpid()}-{i}"))
    results.put((store.written, store.errors))
