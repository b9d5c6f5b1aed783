"""region() and log(): recorded in every started recorder, with the current task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import flightdeck
from flightdeck import FlightRecorder


def test_nothing_happens_without_a_recorder() -> None:
    with flightdeck.region("idle"):
        flightdeck.log("c", "m")


def test_bad_region_name() -> None:
    with pytest.raises(TypeError, match="region name"):
        flightdeck.region(42)  # type: ignore[arg-type]


def test_region_and_log_with_tasks() -> None:
    @flightdeck.region("sync.fn")
    def sync_fn(x: int) -> int:
        return x + 1

    @flightdeck.region("async.fn")
    async def async_fn() -> int:
        await asyncio.sleep(0)
        return 2

    async def worker() -> None:
        with flightdeck.region("db.query"):
            await asyncio.sleep(0.01)
        async with flightdeck.region("async.with"):
            pass
        flightdeck.log("cache", "miss user=42")
        assert sync_fn(1) == 2
        assert await async_fn() == 2

    async def main() -> dict[str, Any]:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        try:
            await asyncio.create_task(worker(), name="worker")
            flightdeck.log("main", "x" * 5000)
            return rec.snapshot().to_dict()
        finally:
            rec.stop()

    doc = asyncio.run(main())
    worker_id = next(t["id"] for t in doc["tasks"] if t["name"] == "worker")
    regions = {e["name"]: e for e in doc["events"] if e["kind"] == "region"}
    assert set(regions) == {"db.query", "async.with", "sync.fn", "async.fn"}
    assert regions["db.query"]["duration"] >= 0.009
    assert all(r["task"] == worker_id for r in regions.values())
    logs = [e for e in doc["events"] if e["kind"] == "log"]
    assert logs[0]["category"] == "cache" and logs[0]["message"] == "miss user=42"
    assert logs[0]["task"] == worker_id
    main_task = next(t for t in doc["tasks"] if t["id"] == logs[1]["task"])
    assert main_task["id"] != worker_id
    assert len(logs[1]["message"]) < 1100 and logs[1]["message"].endswith("[truncated]")


def test_region_records_into_every_started_recorder() -> None:
    a = FlightRecorder(loop_blocked=None)
    b = FlightRecorder(loop_blocked=None)
    a.start()
    b.start()
    try:
        with flightdeck.region("both"):
            pass
        b.stop()
        flightdeck.log("only", "a")
        ea = a.snapshot().to_dict()["events"]
    finally:
        a.stop()
        b.stop()
    assert [e.get("name") or e.get("message") for e in ea] == ["both", "a"]
    assert ea[0]["task"] is None  # no task outside a loop


def test_region_decorator_keeps_exceptions_and_records() -> None:
    rec = FlightRecorder(loop_blocked=None)
    rec.start()
    try:

        @flightdeck.region("fails")
        def fails() -> None:
            raise KeyError("k")

        with pytest.raises(KeyError):
            fails()
        (event,) = rec.snapshot().to_dict()["events"]
    finally:
        rec.stop()
    assert event["name"] == "fails" and event["duration"] >= 0
