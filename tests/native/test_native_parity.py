"""Both cores give the same snapshot document for the same events and the same workload."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from flightdeck import FlightDeck, FlightRecorder
from flightdeck.core import cores
from flightdeck.core.window import Window
from flightdeck.snapshot import recorder as recorder_mod
from flightdeck.snapshot.build import build_document
from tests.support import drive, http_scope

# Parity needs both cores: a pure install has one (FLIGHTDECK_EXPECT_NATIVE=1 fails this skip).
pytest.importorskip("flightdeck.core._native", reason="native core not built")
from flightdeck.core import native  # after the skip: it imports the extension

if cores.CORE != "native":
    # The pure-core run disables the native core on purpose: parity cannot be compared there.
    pytest.skip("the native core is disabled (FLIGHTDECK_NO_EXTENSIONS)", allow_module_level=True)

S = 1_000_000_000


def document(w: Any, offset: int = 0) -> dict[str, Any]:
    doc = build_document(
        w.freeze(),
        snapshot_id="20260101T000000Z-1-00000000",
        offset_ns=offset,
        trigger={"kind": "manual", "reason": "", "request": None},
        process={},
    )
    doc.pop("created_at")
    doc["window"].pop("end")  # t_now: each window reads its own clock
    doc["trigger"].pop("time")
    return doc


async def workload(prepare: Callable[[FlightRecorder], None] | None = None) -> dict[str, Any]:
    """Requests with child tasks, an error, a cancellation, a region, a log; its snapshot."""
    import flightdeck

    async def child(i: int) -> int:
        await asyncio.sleep(0)
        if i == 2:
            raise ValueError("child")
        await asyncio.sleep(0.001)
        return i

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with flightdeck.region("handler"):
            tasks = [asyncio.create_task(child(i), name=f"child-{i}") for i in range(4)]
            await asyncio.gather(*tasks, return_exceptions=True)
        flightdeck.log("app", f"served {scope['path']}")
        doomed = asyncio.create_task(asyncio.sleep(10), name="doomed")
        await asyncio.sleep(0)
        doomed.cancel()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    deck = FlightDeck(app, endpoint=None, slow_request=None, server_errors=False, loop_blocked=None)
    if prepare is not None:
        prepare(deck.recorder)
    try:
        for i in range(5):
            await drive(deck, http_scope(f"/p{i}"))
        await asyncio.sleep(0.01)
        return {
            "doc": deck.recorder.snapshot().to_dict(),
            "stats": deck.recorder.stats,
        }
    finally:
        deck.close()


def recorded_events(run: Callable[[Any], Any]) -> list[tuple[Any, ...]]:
    """The events a real workload emits (through the Python hook, into a list)."""
    events: list[tuple[Any, ...]] = []

    def tee(rec: FlightRecorder) -> None:
        rec.sink.native = None  # the Python hook: every event goes through emit
        rec.emit = rec.sink.emit = events.append

    run(workload(tee))
    return events


def test_same_events_same_document(run: Callable[[Any], Any]) -> None:
    events = recorded_events(run)
    assert len(events) > 100
    pure = Window(3600 * S, 64 << 20)
    nat = native.NativeWindow(3600 * S, 64 << 20)
    for e in events:
        pure.append(e)
        nat.append(e)
    pure.maintain(force_seal=True)
    assert document(pure) == document(nat)
    # and across generations, with status records carried over
    nat2 = native.NativeWindow(3600 * S, 64 << 20)
    for i, e in enumerate(events):
        nat2.append(e)
        if i % 37 == 0:
            nat2.maintain(force_seal=True)
    assert nat2.segments > 3
    assert document(nat2) == document(nat)


def _shape(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without timings or ids."""
    # auto-named tasks (Task-N) are numbered process-wide: compare their coroutine only
    tasks = sorted(
        (
            "" if t["name"].startswith("Task-") else t["name"],
            t["coro"],
            t["state"],
            str(t["error"]),
            len(t["steps"]),
            len(t["waits"]),
        )
        for t in doc["tasks"]
    )
    requests = sorted(
        (r["path"], r["status"], len(r["tasks"]), str(r["error"])) for r in doc["requests"]
    )
    events = sorted((e["kind"], str(e.get("name")), str(e.get("message"))) for e in doc["events"])
    return {"tasks": tasks, "requests": requests, "events": events}


def test_both_cores_record_the_same_workload_alike(
    run: Callable[[Any], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def snapshot_of(core: str) -> dict[str, Any]:
        if core == "python":
            monkeypatch.setattr(cores, "NativeWindow", None)
            monkeypatch.setattr(recorder_mod, "CORE", "python")
        try:
            out = run(workload())
        finally:
            monkeypatch.undo()
        assert out["stats"]["core"] == core and out["doc"]["process"]["core"] == core
        return out["doc"]  # type: ignore[no-any-return]

    nat, pure = snapshot_of("native"), snapshot_of("python")
    assert _shape(nat) == _shape(pure)
    assert {t["name"] for t in nat["tasks"]} >= {"child-0", "child-3", "doomed"}
