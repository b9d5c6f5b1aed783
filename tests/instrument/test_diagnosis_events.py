"""What the diagnosis reads: GC pauses, cancellations with their cause, long steps named."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from typing import Any

from flightdeck import FlightRecorder

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


def _garbage(n: int) -> None:
    items: list[list[Any]] = [[] for _ in range(n)]
    for item in items:
        item.append(item)  # a cycle each: only the cyclic collector frees them


def test_a_gc_pause_is_a_loop_entry_and_the_callback_goes_with_stop(run: Runner) -> None:
    async def main() -> dict[str, Any]:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        try:
            gc.collect()
            _garbage(300_000)
            gc.collect()
            return rec.snapshot().to_dict()
        finally:
            own = rec._gc._callback
            assert own in gc.callbacks
            rec.stop()
            # This recorder's own callback: another app's recorder (an earlier test's server)
            # may legitimately still have one installed.
            assert own not in gc.callbacks

    doc = run(main())
    pauses = [e for e in doc["loop"] if e["kind"] == "gc"]
    big = [e for e in pauses if e["collected"] >= 300_000]
    assert big, pauses
    assert big[0]["generation"] == 2 and big[0]["duration"] >= 0.001
    assert all(e["duration"] >= 0.001 for e in pauses)
    assert doc["process"]["coverage"]["gc"] is True
    paths = doc["process"]["paths"]
    assert paths["app"] is not None and paths["app"] in __name__
    assert any(p.endswith("-packages") for p in paths["site_packages"]) and paths["stdlib"]


async def _timed_out() -> None:
    try:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)
    except TimeoutError:
        pass


async def _sleeps() -> None:
    await asyncio.sleep(5)


async def _fails() -> None:
    await asyncio.sleep(0.01)
    raise ValueError("boom")


async def _grouped() -> None:
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_sleeps(), name="sibling")
            tg.create_task(_fails(), name="failing")
    except ExceptionGroup:
        pass


def test_cancellations_are_recorded_with_their_cause(run: Runner) -> None:
    async def main() -> dict[str, Any]:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        try:
            await asyncio.gather(
                *(asyncio.create_task(_timed_out(), name=f"to{i}") for i in range(3))
            )
            plain = asyncio.create_task(_sleeps(), name="plain")
            await asyncio.sleep(0.005)
            plain.cancel()
            await asyncio.gather(plain, return_exceptions=True)
            await _grouped()
            return rec.snapshot().to_dict()
        finally:
            rec.stop()

    doc = run(main())
    names = {t["id"]: t["name"] for t in doc["tasks"]}
    cancels = {names[e["task"]]: e for e in doc["events"] if e["kind"] == "cancel"}
    for i in range(3):
        assert cancels[f"to{i}"]["cause"] == "timeout"
        assert any(f["function"] == "_timed_out" for f in cancels[f"to{i}"]["stack"])
    assert cancels["plain"]["cause"] == "unknown"
    assert any(f["function"] == "_sleeps" for f in cancels["plain"]["stack"])
    assert cancels["sibling"]["cause"] == "task group"


async def _hog() -> None:
    await asyncio.sleep(0)
    end = time.perf_counter() + 0.03
    while time.perf_counter() < end:
        pass
    await asyncio.sleep(0.001)


def test_a_step_past_slow_callback_is_named_with_where_it_stood(run: Runner) -> None:
    async def main() -> dict[str, Any]:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        try:
            await asyncio.create_task(_hog(), name="hog")
            await asyncio.sleep(0.002)
            return rec.snapshot().to_dict()
        finally:
            rec.stop()

    doc = run(main())
    hog = next(t for t in doc["tasks"] if t["name"] == "hog")
    steps = [e for e in doc["loop"] if e["kind"] == "step"]
    mine = [e for e in steps if e["task"] == hog["id"]]
    assert len(mine) == 1, steps
    assert mine[0]["duration"] >= 0.03
    assert mine[0]["callback"] == "_hog"
    assert mine[0]["stack"][0]["function"] == "_hog"
