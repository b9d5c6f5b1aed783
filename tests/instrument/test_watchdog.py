"""The watchdog: a blocked loop is named, with its stack taken while it is still blocked."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from flightdeck import FlightRecorder
from flightdeck.instrument.watchdog import Watchdog, blocking_site

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
THIS_FILE = __file__


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return False


async def await_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll from the loop itself, letting it run (the heartbeat runs on the loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.002)
    return False


def block_the_loop_until(release: threading.Event) -> None:
    # The blocking call the watchdog must name: the loop thread sits in time.sleep here.
    deadline = time.monotonic() + 10
    while not release.is_set() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_blocking_call_named_while_still_blocked(run: Runner) -> None:
    release = threading.Event()
    seen: dict[str, Any] = {}

    def observer(wd: Watchdog) -> None:
        # Runs in another thread while the loop is blocked: wait for the capture, then look.
        ok = wait_for(lambda: wd._blocked and bool(wd._block_stack))
        seen["ok"] = ok
        seen["stack"] = wd._block_stack
        seen["name"] = wd._block_name
        seen["still_blocked"] = not release.is_set()
        release.set()

    async def handler() -> None:
        block_the_loop_until(release)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        rec = FlightRecorder(loop_blocked=0.05)
        rec.start()
        try:
            wd = rec._watchdog
            assert isinstance(wd, Watchdog)
            obs = threading.Thread(target=observer, args=(wd,))
            obs.start()
            await asyncio.create_task(handler(), name="handler")
            obs.join(10)
            # The block ends when the heartbeat finally runs; wait for its event.
            assert await await_for(lambda: wd.blocks == 1)
            return rec.snapshot().to_dict(), rec.stats
        finally:
            rec.stop()

    doc, stats = run(main())
    assert seen["ok"] and seen["still_blocked"]
    functions = [f[0] for f in seen["stack"]]
    assert functions[-1] == "block_the_loop_until"  # innermost last
    assert functions[-2].endswith("handler")
    assert seen["stack"][-1][1] == THIS_FILE
    assert "handler" in seen["name"] and "test_watchdog.py" in seen["name"]
    blocks = [e for e in doc["loop"] if e["kind"] == "block"]
    assert len(blocks) == 1  # one block, one event
    block = blocks[0]
    assert block["duration"] >= 0.05
    assert block["stack"][-1]["function"] == "block_the_loop_until"
    assert block["stack"][-1]["file"] == THIS_FILE
    assert block["callback"] == seen["name"]
    assert stats["watchdog"]["blocks"] == 1 and stats["coverage"]["loop_blocks"]


def test_block_listener_called_once_with_the_block(run: Runner) -> None:
    release = threading.Event()
    got: list[tuple[Any, ...]] = []

    async def main() -> None:
        rec = FlightRecorder(loop_blocked=0.03)
        rec.block_listeners.append(got.append)
        rec.start()
        try:
            wd = rec._watchdog
            assert isinstance(wd, Watchdog)
            t = threading.Thread(
                target=lambda: (wait_for(lambda: bool(wd._block_stack)), release.set())
            )
            t.start()
            block_the_loop_until(release)
            t.join(10)
            assert await await_for(lambda: len(got) == 1)
        finally:
            rec.stop()

    run(main())
    (event,) = got
    assert event[2] - event[1] >= 30_000_000
    assert event[4][-1][0] == "block_the_loop_until"


def test_lag_is_recorded_for_short_delays(run: Runner) -> None:
    async def main() -> dict[str, Any]:
        rec = FlightRecorder(loop_blocked=1.0)
        rec.start()
        try:
            wd = rec._watchdog
            assert isinstance(wd, Watchdog)
            # Hold the loop once a heartbeat is pending, so it runs 20 ms late (no block).
            assert wait_for(lambda: wd._pending_since != 0)
            time.sleep(0.02)
            beats = wd._beats
            assert await await_for(lambda: wd._beats > beats)
            return rec.snapshot().to_dict()
        finally:
            rec.stop()

    doc = run(main())
    lags = [e for e in doc["loop"] if e["kind"] == "lag"]
    assert any(e["duration"] >= 0.02 for e in lags)
    assert not any(e["kind"] == "block" for e in doc["loop"])


def test_a_stopped_loop_is_not_blocked() -> None:
    loop = asyncio.new_event_loop()
    rec = FlightRecorder(loop_blocked=0.001)
    try:
        rec.start(loop)  # not running: no heartbeat can run until it does
        wd = rec._watchdog
        assert isinstance(wd, Watchdog)
        rec._stop.set()  # keep the recorder thread out of the way; drive tick() here
        assert rec._thread is not None
        rec._thread.join(5)
        wd.thread_id = threading.get_ident()
        for _ in range(3):
            wd.tick()
            time.sleep(0.003)  # > threshold between ticks: a running loop would be "blocked"
        assert not wd._blocked and wd.blocks == 0
    finally:
        rec.stop()
        loop.close()


def test_blocking_site_prefers_user_frames() -> None:
    stack = (
        ("user_fn", "/srv/app/views.py", 12),
        ("Handle._run", asyncio.events.__file__, 80),
    )
    assert blocking_site(stack) == "user_fn (views.py:12)"
    assert blocking_site(()) is None
    only_lib = (("Handle._run", asyncio.events.__file__, 80),)
    assert blocking_site(only_lib) == "Handle._run (events.py:80)"


def busy_for_a_while(done: Callable[[], bool]) -> None:
    # A slow callback (longer than slow_callback, shorter than loop_blocked).
    deadline = time.monotonic() + 5
    while not done() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_slow_callback_sampled_and_named(run: Runner) -> None:
    async def main() -> dict[str, Any]:
        rec = FlightRecorder(loop_blocked=2.0, slow_callback=0.01)
        rec.start()
        try:
            wd = rec._watchdog
            assert isinstance(wd, Watchdog)
            # Hold the loop until the watchdog has sampled the slow callback (no sleeps-and-
            # hope: the loop stays busy exactly until the sample exists, then lets go).
            assert wait_for(lambda: wd._pending_since != 0)
            busy_for_a_while(lambda: wd._slow_name is not None)
            beats = wd._beats
            assert await await_for(lambda: wd._beats > beats)
            return rec.snapshot().to_dict()
        finally:
            rec.stop()

    doc = run(main())
    slow = [e for e in doc["loop"] if e["kind"] == "callback"]
    assert len(slow) == 1, doc["loop"]
    assert slow[0]["duration"] >= 0.01
    assert "busy_for_a_while" in (slow[0]["callback"] or "")
    assert not any(e["kind"] == "block" for e in doc["loop"])


def test_a_block_in_progress_is_in_the_window_before_it_ends(run: Runner) -> None:
    """A snapshot taken while the loop is still held shows the block (``ongoing``), its
    stack refreshed while it lasts; once it ends, the block is there once, not ongoing."""
    release = threading.Event()
    seen: dict[str, Any] = {}

    def observer(rec: FlightRecorder, wd: Watchdog) -> None:
        try:
            assert wait_for(lambda: wd._blocked and bool(wd._block_stack))
            time.sleep(1.3)  # past one refresh (at most once a second)
            seen["doc"] = rec.snapshot("during").to_dict()
            seen["still_blocked"] = not release.is_set()
        finally:
            release.set()

    async def handler() -> None:
        block_the_loop_until(release)

    async def main() -> dict[str, Any]:
        rec = FlightRecorder(loop_blocked=0.05)
        rec.start()
        try:
            wd = rec._watchdog
            assert isinstance(wd, Watchdog)
            obs = threading.Thread(target=observer, args=(rec, wd))
            obs.start()
            await asyncio.create_task(handler(), name="handler")
            obs.join(10)
            assert await await_for(lambda: wd.blocks == 1)
            return rec.snapshot("after").to_dict()
        finally:
            rec.stop()

    after = run(main())
    assert seen["still_blocked"]
    during = [e for e in seen["doc"]["loop"] if e["kind"] == "block"]
    assert len(during) == 1, during  # the refreshed record replaces the first one
    assert during[0]["ongoing"] is True
    assert during[0]["duration"] >= 1.0
    assert during[0]["stack"][-1]["function"] == "block_the_loop_until"
    assert "handler" in during[0]["callback"]
    blocks = [e for e in after["loop"] if e["kind"] == "block"]
    assert len(blocks) == 1 and "ongoing" not in blocks[0]
    assert blocks[0]["start"] == during[0]["start"]
