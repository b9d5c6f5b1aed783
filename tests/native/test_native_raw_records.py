"""Records the native core writes from C values, with no event tuple: TASK_DONE.

The step runner writes a finished task's TASK_DONE straight into the window; it must read
back as the tuple the generic path writes, and the task must leave the window's status
table (which heads every new generation), whatever way the task ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

native = pytest.importorskip("flightdeck.core._native", reason="native core not built")

from flightdeck.core import events as ev  # noqa: E402
from flightdeck.snapshot.recorder import FlightRecorder  # noqa: E402


def _loops() -> list[Any]:
    out: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return out
    return [*out, pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.mark.parametrize("make", _loops())
def test_task_done_read_back_for_each_way_a_task_ends(make: Any) -> None:
    loop = make()
    rec = FlightRecorder(window=60.0, loop_blocked=None)

    async def ok() -> int:
        await asyncio.sleep(0)
        return 1

    async def fails() -> None:
        await asyncio.sleep(0)
        raise LookupError("boom")

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        rec.start()
        tasks = [
            asyncio.create_task(ok(), name="t-ok"),
            asyncio.create_task(fails(), name="t-fails"),
            asyncio.create_task(hangs(), name="t-hangs"),
        ]
        await asyncio.sleep(0)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)

    try:
        loop.run_until_complete(main())
        frozen = rec._window.freeze()
        evs = [e for seg in frozen.iter_segments() for e in seg]
    finally:
        rec.stop()
        loop.close()
    creates = {e[2]: e for e in evs if e[0] == ev.TASK_CREATE}
    done = {e[5]: e for e in evs if e[0] == ev.TASK_DONE}
    assert {"t-ok", "t-fails", "t-hangs"} <= set(done)
    assert done["t-ok"][3:5] == ("done", None)
    assert done["t-fails"][3:5] == ("error", "LookupError")
    assert done["t-hangs"][3:5] == ("cancelled", None)
    for name in ("t-ok", "t-fails", "t-hangs"):
        tid = done[name][2]
        assert tid in creates  # the same task id as its creation
        assert len(done[name]) == 6 and done[name][1] >= creates[tid][1]
        assert done[name][2] not in frozen.tasks  # left the status table
