"""Why a task was cancelled, told from the whole window once it is built.

The loop hook can only tell a timeout (the woken step took the cancellation back, as
``asyncio.timeout`` does). The rest needs what happened around it: the request's client
went away, or a sibling in the same task group failed just before.
"""

from __future__ import annotations

from typing import Any

#: A sibling's failure at most this long before a cancellation explains it (task groups
#: cancel the others within the same loop iteration).
SIBLING_WINDOW = 0.1


def explain(events: list[dict[str, Any]], tasks: dict[str, Any], requests: dict[int, Any]) -> None:
    """Set each ``cancel`` event's ``cause``: timeout, task group, client disconnect or unknown."""
    cancels = [e for e in events if e["kind"] == "cancel"]
    if not cancels:
        return
    failed: dict[str | None, list[tuple[float, str]]] = {}
    for task in tasks.values():
        if task["state"] == "error" and task["done"] is not None:
            failed.setdefault(task["parent"], []).append((task["done"], task["id"]))
    for event in cancels:
        task = tasks.get(event["task"])
        t = event["start"]
        cause = event["cause"]
        req = requests.get(task["request"]) if task is not None else None
        if req is not None and req["disconnected"] and (req["end"] is None or t <= req["end"]):
            cause = "client disconnect"
        elif cause is None and task is not None:
            siblings = failed.get(task["parent"], []) if task["parent"] is not None else []
            children = failed.get(task["id"], [])
            if any(
                t - SIBLING_WINDOW <= done <= t and tid != task["id"]
                for done, tid in (*siblings, *children)
            ):
                cause = "task group"
        event["cause"] = cause or "unknown"


def blocked_request(
    when: float, loop: list[dict[str, Any]], requests: dict[int, Any]
) -> dict[str, Any] | None:
    """The request a loop block happened in, for a ``loop_blocked`` trigger without one.

    The watchdog names a block after the request it caught running (``GET /block: ...``);
    the block is the last one ending by the trigger's time.
    """
    blocks = [e for e in loop if e["kind"] == "block" and e["start"] + e["duration"] <= when + 0.5]
    if not blocks:
        return None
    block = max(blocks, key=lambda e: e["start"] + e["duration"])
    label = block["callback"] or ""
    b0, b1 = block["start"], block["start"] + block["duration"]
    for req in requests.values():
        end = req["end"] if req["end"] is not None else b1
        if req["start"] <= b1 and end >= b0 and label.startswith(f"{req['method']} {req['path']}"):
            return dict(req)
    return None
