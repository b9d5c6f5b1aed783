"""BlockWatch (``core/native/blockwatch.h``): its thread's lifecycle and arguments, and the
record it writes for a task step running past its threshold (read by ``recovery.py``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from flightdeck import FlightRecorder
from flightdeck.core.cores import native_module
from flightdeck.snapshot.recovery import _watch_record
from flightdeck.snapshot.windowfile import SLOT

_native = native_module()
if _native is None:
    # As every native test: the pure-core run disables the extension on purpose.
    pytest.skip("the native core is disabled or not built", allow_module_level=True)


def test_arguments_are_checked_and_close_is_idempotent() -> None:
    for bad in ((0, 1), (1, 0), (-5, 10), (1, 61 * 10**9)):
        with pytest.raises(ValueError):
            _native.BlockWatch(*bad)
    w = _native.BlockWatch(10**8, 10**7)
    assert w.running
    with pytest.raises(ValueError):
        w.set_fd(1, -1)
    w.close()
    w.close()
    assert not w.running
    w.set_fd(-1, 0)  # after close: nothing to tell, no error


def test_a_step_past_the_threshold_is_recorded_in_the_slot(tmp_path: Path) -> None:
    """A task step running past the threshold (``time.sleep`` here: the watch never needs
    the GIL, so a step holding it is seen the same) is recorded with its start, its last
    sighting and its task."""
    path = tmp_path / "slot"
    path.write_bytes(b"\0" * 4096)
    fd = os.open(path, os.O_RDWR)
    watch = _native.BlockWatch(50_000_000, 10_000_000)
    seen: dict[str, int] = {}

    async def hold() -> None:
        await asyncio.sleep(0)
        seen["task"] = id(asyncio.current_task())
        time.sleep(0.3)  # one step of 0.3 s

    async def main() -> None:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()  # installs the step runner on this loop
        try:
            watch.set_fd(fd, 4096 - SLOT)
            await asyncio.create_task(hold())
        finally:
            watch.set_fd(-1, 0)
            rec.stop()

    try:
        asyncio.run(main())
    finally:
        watch.close()
        os.close(fd)
    got = _watch_record(path.read_bytes())
    assert got is not None and watch.writes >= 1
    t0, last, task = got
    assert task == seen["task"]
    assert 0.2e9 <= last - t0 <= 1e9
