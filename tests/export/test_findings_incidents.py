"""What stands out in real snapshots of the example's ``/incident/...`` routes.

The example app (``tests/export/incident_app.py``: its routes, captures unthrottled) runs
under a real uvicorn while a client keeps browsing ``/debug/flight``, as a user opening the
list page would; each route's snapshot must rank the route's cause first, never
flightdeck's own requests or the server's machinery, and keep incidents from seconds
earlier out of the current one's findings.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from support import drive, http_scope, make_deck

from flightdeck.export.summary import findings, summarize

#: Words that only flightdeck's own work or the server's machinery would put in a finding.
NOT_FINDINGS = ("flightdeck.", "SnapshotStore", "Server.serve", "patch_anyio", "flightdeck's")


def _current(summary: str) -> list[str]:
    """The "what stands out" lines (not the earlier ones)."""
    part = summary.split("what stands out:\n", 1)[1].split("\n\n", 1)[0]
    return [ln.removeprefix("  - ") for ln in part.splitlines() if ln.startswith("  - ")]


def _why(summary: str) -> str:
    return next(ln for ln in summary.splitlines() if ln.startswith("why:"))


def _check_common(doc: dict[str, Any]) -> tuple[str, list[str]]:
    text = summarize(doc)
    current = _current(text)
    for line in current:
        assert not any(word in line for word in NOT_FINDINGS), (line, text)
    return text, current


def test_hog_is_named_first_and_earlier_incidents_are_apart(
    incidents: dict[str, dict[str, Any]],
) -> None:
    text, current = _check_common(incidents["/incident/hog"])
    assert "render_report" in _why(text) or "hog (app.py" in _why(text), text
    # Its hog first: held the loop (or, on a loaded machine, blocked it past the threshold).
    assert "GET /incident/hog" in current[0], text
    assert "render_report" in current[0] or "hog (app.py:" in current[0], text
    # /block and /error came seconds before: never among the current findings.
    assert not any("/block" in ln or "/error" in ln for ln in current), text
    earlier = text.split("earlier in the window", 1)[1].split("\n\n", 1)[0]
    assert "GET /error 500" in earlier or "GET /block" in earlier, text


def test_timeouts_burst_outranks_everything(incidents: dict[str, dict[str, Any]]) -> None:
    text, current = _check_common(incidents["/incident/timeouts"])
    assert current[0].startswith("cancellation burst: 200 within"), text
    assert "200 × _fetch_with_timeout at _fetch_with_timeout (app.py:" in current[0], text
    assert current[0].endswith("(timeout)"), text
    assert not any("render_report" in ln for ln in current), text  # the hog was earlier


def test_gc_pause_is_named_with_its_route(incidents: dict[str, dict[str, Any]]) -> None:
    text, current = _check_common(incidents["/incident/gc"])
    top = current[:2]
    assert any(ln.startswith("garbage collection paused the loop") for ln in top), text
    assert all("/incident/gc" in ln or "gc_pause" in ln for ln in top), text
    assert not any("_fetch_with_timeout" in ln for ln in current), text  # earlier


def test_lock_waiter_still_waiting_is_a_long_wait(incidents: dict[str, dict[str, Any]]) -> None:
    text, current = _check_common(incidents["/incident/lock"])
    assert "lock_holder (app.py:" in _why(text), text
    # The waiter, blocked by the trigger's lock, among the first (a busy loop's hog that
    # delayed the holder's wake-up may rightly come before it).
    assert any("lock_waiter" in ln and "Lock.acquire" in ln for ln in current[:3]), text
    waits = text.split("long waits", 1)[1].split("\n\n", 1)[0]
    assert "(still waiting at capture)" in waits and "lock_waiter" in waits, text


def test_pool_queue_first(incidents: dict[str, dict[str, Any]]) -> None:
    text, current = _check_common(incidents["/incident/pool"])
    assert "queued for the thread pool" in _why(text), text
    assert current[0].startswith("thread pool saturated: app._blocking_io queued"), text


def test_block_and_error(incidents: dict[str, dict[str, Any]]) -> None:
    text, current = _check_common(incidents["/block"])
    assert current[0].startswith("loop blocked") and "block (app.py:" in current[0], text
    text, current = _check_common(incidents["/error"])
    # The first thing said of an exception is where it was raised (the route's own frame).
    example = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app" / "app.py"
    lines = example.read_text().splitlines()
    line = next(i for i, ln in enumerate(lines, 1) if 'raise RuntimeError("boom' in ln)
    assert _why(text) == f"why:      GET /error 500 raised RuntimeError at error (app.py:{line})"
    assert not any("raised" in ln for ln in current), text  # said once, on the why line


def test_pending_tasks_fold_library_frames(incidents: dict[str, dict[str, Any]]) -> None:
    text = summarize(incidents["/incident/lock"])
    pending = text.split("tasks still pending", 1)[1].split("\n\n", 1)[0]
    # The waiter's site is its own frame, with the library call it awaits beside it.
    assert "app.py:" in pending and "in lock_waiter (awaiting Lock.acquire)" in pending, pending
    assert "locks.py" not in pending, pending


# -- in-process snapshots ------------------------------------------------------------------


async def _fetch_price() -> None:
    await asyncio.sleep(1)


async def _call_upstream() -> int:
    try:
        await asyncio.wait_for(_fetch_price(), timeout=0.005)
    except TimeoutError:
        return 1
    return 0


async def _call_upstream_with_timeout() -> int:
    try:
        async with asyncio.timeout(0.005):
            await _fetch_price()
    except TimeoutError:
        return 1
    return 0


def _capture(fn: Any, n: int = 500) -> dict[str, Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        done = sum(await asyncio.gather(*(fn() for _ in range(n))))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(done).encode()})

    async def main() -> dict[str, Any]:
        decks: list[Any] = []
        deck = make_deck(app, decks, slow_request=None, loop_blocked=None)
        try:
            await drive(deck, http_scope("/quotes"))
            snap = await deck.capture("test")
            return snap.to_dict()
        finally:
            deck.close()

    return asyncio.run(main())


def test_wait_for_timeouts_are_named_by_the_caller() -> None:
    """``wait_for`` on 3.11 cancels an inner task running the awaited coroutine: the burst
    is named by the user's function that called ``wait_for``, cause timeout."""
    found = findings(_capture(_call_upstream))
    burst = next(f for f in found if f.startswith("cancellation burst"))
    assert "500 × _call_upstream at _call_upstream (test_findings_incidents.py:" in burst, found
    assert burst.endswith("(timeout)"), found
    assert "tasks.py" not in burst and "sleep" not in burst, found


def test_asyncio_timeout_is_named_by_user_frames() -> None:
    found = findings(_capture(_call_upstream_with_timeout))
    burst = next(f for f in found if f.startswith("cancellation burst"))
    assert "500 × _call_upstream_with_timeout at _fetch_price (test_findings_incidents" in burst
    assert burst.endswith("(timeout)") and "tasks.py" not in burst, found


def test_wait_for_on_newer_pythons_reads_the_same() -> None:
    """3.12+ ``wait_for`` wraps ``asyncio.timeout``: the caller's own task takes the
    cancellation, its stack running through ``wait_for``; the same words as on 3.11."""
    doc = _capture(_call_upstream)
    here = str(Path(__file__).resolve())
    tasks = doc["tasks"]
    inner = {t["id"] for t in tasks if t["coro"] == "_fetch_price"}
    doc["tasks"] = [t for t in tasks if t["id"] not in inner]
    callers = [t for t in doc["tasks"] if t["coro"] == "_call_upstream"]
    tasks_py = str(Path(asyncio.__file__).parent / "tasks.py")
    doc["events"] = [e for e in doc["events"] if e["kind"] != "cancel"]
    for t in callers:
        doc["events"].append(
            {
                "kind": "cancel",
                "start": t["done"],
                "task": t["id"],
                "cause": "timeout",
                "stack": [
                    {"function": "_call_upstream", "file": here, "line": 150},
                    {"function": "wait_for", "file": tasks_py, "line": 520},
                    {"function": "_fetch_price", "file": here, "line": 146},
                    {"function": "sleep", "file": tasks_py, "line": 665},
                ],
            }
        )
    found = findings(doc)
    burst = next(f for f in found if f.startswith("cancellation burst"))
    assert "500 × _call_upstream at _call_upstream (test_findings_incidents.py:" in burst, found
    assert burst.endswith("(timeout)"), found


def _trigger_request(doc: dict[str, Any]) -> dict[str, Any]:
    rid = doc["trigger"]["request"]["id"]
    return next(r for r in doc["requests"] if r["id"] == rid)


def test_a_small_empty_gc_pause_does_not_outrank_the_burst(
    incidents: dict[str, dict[str, Any]],
) -> None:
    doc = copy.deepcopy(incidents["/incident/timeouts"])
    req = _trigger_request(doc)
    own = next(t for t in doc["tasks"] if t["id"] == req["task"])
    s = own["steps"][0][0]  # inside the request's first step: it cost the request
    doc["loop"].append(
        {"kind": "gc", "start": s, "duration": 0.0024, "generation": 1, "collected": 0}
    )
    text = summarize(doc)
    current = _current(text)
    assert current[0].startswith("cancellation burst: 200 within"), text


def test_first_use_imports_are_not_loop_hogs(incidents: dict[str, dict[str, Any]]) -> None:
    """Two steps of the trigger request's own task that imported a module and built a TLS
    context (as the watchdog's samples name them) are first-use costs, not hogs."""
    doc = copy.deepcopy(incidents["/incident/timeouts"])
    req = _trigger_request(doc)
    own = next(t for t in doc["tasks"] if t["id"] == req["task"])
    for i, name in enumerate(("<module> (pickle.py:103)", "create_default_context (ssl.py:770)")):
        s = req["start"] + 0.3 + 0.3 * i  # while the request sleeps: nothing else ran then
        own["steps"].append([s, 0.2, 0.0, 0.0])
        doc["loop"].append({"kind": "step", "start": s, "duration": 0.2, "task": own["id"]})
        doc["loop"].append(
            {
                "kind": "callback",
                "start": s + 0.001,
                "duration": 0.198,
                "callback": f"GET /incident/timeouts: {name}",
                "stack": None,
            }
        )
    own["steps"].sort(key=lambda step: step[0])
    text = summarize(doc)
    assert not any("pickle.py" in ln or "ssl.py" in ln for ln in _current(text)), text
    held = text.split("what held the loop", 1)[1].split("\n\n", 1)[0]
    assert "<module> (pickle.py:103)" in held and "(first use: import or set-up)" in held, held
