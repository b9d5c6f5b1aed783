"""FlightRecorder: options, lifecycle, snapshots (one at a time), stats."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import pytest

import flightdeck.snapshot.container as container_mod
from flightdeck import FlightRecorder, Snapshot, SnapshotInProgress
from flightdeck.core import events as ev
from flightdeck.snapshot.container import is_container
from flightdeck.snapshot.recorder import active_recorders


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"window": 0}, ValueError, "window"),
        ({"window": -1.0}, ValueError, "window"),
        ({"window": float("nan")}, ValueError, "window"),
        ({"window": "ten"}, ValueError, "window"),
        ({"window": True}, TypeError, "window"),
        ({"max_bytes": 0}, ValueError, "max_bytes"),
        ({"max_bytes": -5}, ValueError, "max_bytes"),
        ({"max_bytes": 1.5}, TypeError, "max_bytes"),
        ({"max_bytes": "16M"}, TypeError, "max_bytes"),
        ({"loop_blocked": 0}, ValueError, "loop_blocked"),
        ({"loop_blocked": "x"}, ValueError, "loop_blocked"),
        ({"wait_threshold": -1}, ValueError, "wait_threshold"),
        ({"slow_callback": None}, TypeError, "slow_callback"),
        ({"instrument_loop": 1}, TypeError, "instrument_loop"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict[str, Any], exc: type, name: str) -> None:
    with pytest.raises(exc, match=name):
        FlightRecorder(**kwargs)


def test_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTDECK_WINDOW", "3.5")
    monkeypatch.setenv("FLIGHTDECK_MAX_BYTES", "1000")
    rec = FlightRecorder()
    assert rec.window == 3.5 and rec.max_bytes == 1000
    monkeypatch.setenv("FLIGHTDECK_WINDOW", "soon")  # refused and logged: the default stays
    assert FlightRecorder().window == 10.0


def test_lifecycle_without_a_loop() -> None:
    rec = FlightRecorder(loop_blocked=None)
    assert not rec.enabled
    with pytest.raises(RuntimeError, match="not started"):
        rec.snapshot()
    rec.stop()  # not started: harmless
    rec.start()  # no running loop: records what is emitted, instruments nothing
    try:
        assert rec.enabled and rec in active_recorders()
        with pytest.raises(RuntimeError, match="already started"):
            rec.start()
        rec.emit((ev.LOG, 1, "c", "m", None))
        snap = rec.snapshot(reason="why")
        assert snap.trigger["kind"] == "manual" and snap.trigger["reason"] == "why"
        assert snap.to_dict()["process"]["loop"] == "none"
        assert [e["message"] for e in snap.to_dict()["events"]] == ["m"]
    finally:
        rec.stop()
    rec.stop()
    assert not rec.enabled and rec not in active_recorders()
    with pytest.raises(RuntimeError):
        rec.snapshot()
    assert "stopped" in repr(rec)


def test_restart_after_stop() -> None:
    async def main() -> None:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        rec.stop()
        rec.start()
        try:
            await asyncio.create_task(asyncio.sleep(0), name="again")
            assert any(t["name"] == "again" for t in rec.snapshot().to_dict()["tasks"])
        finally:
            rec.stop()

    asyncio.run(main())


def test_concurrent_snapshot_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = FlightRecorder(loop_blocked=None)
    rec.start()
    entered = threading.Event()
    release = threading.Event()
    real = container_mod.write

    def slow_build(*args: Any, **kwargs: Any) -> list[bytes]:
        entered.set()
        assert release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(container_mod, "write", slow_build)
    out: list[Snapshot] = []
    try:
        t = threading.Thread(target=lambda: out.append(rec.snapshot(reason="first")))
        t.start()
        assert entered.wait(10)
        with pytest.raises(SnapshotInProgress):
            rec.snapshot(reason="second")  # answered at once, not queued
        assert rec.stats["snapshots_refused"] == 1
        release.set()
        t.join(10)
        assert out and out[0].trigger["reason"] == "first"
        monkeypatch.setattr(container_mod, "write", real)
        assert rec.snapshot(reason="third").trigger["reason"] == "third"  # free again
        assert rec.stats["snapshots"] == 2
    finally:
        release.set()
        rec.stop()


def test_stats_keys_and_counts() -> None:
    rec = FlightRecorder(window=5.0, max_bytes=1 << 20, loop_blocked=None)
    rec.start()
    try:
        for i in range(10):
            rec.emit((ev.LOG, i, "c", str(i), None))
        rec.maintain(force_seal=True)
        stats = rec.stats
    finally:
        rec.stop()
    for key in (
        "enabled",
        "window",
        "max_bytes",
        "events",
        "bytes",
        "segments",
        "recorded",
        "evicted",
        "dropped",
        "snapshots",
        "loop",
        "coverage",
        "live_tasks",
        "live_requests",
    ):
        assert key in stats, key
    assert stats["events"] == 10 and stats["recorded"] == 10 and stats["segments"] == 1
    assert 0 < stats["bytes"] < 1 << 20
    assert stats["window"] == 5.0 and stats["max_bytes"] == 1 << 20


def test_write_to_binary_and_text() -> None:
    rec = FlightRecorder(loop_blocked=None)
    rec.start()
    try:
        rec.emit((ev.LOG, 1, "c", "héllo", None))
        bio = io.BytesIO()
        n = rec.write_to(bio)
        assert n == len(bio.getvalue()) > 0
        # The stored form (the window's records), read back into the same document.
        assert is_container(bio.getvalue())
        assert Snapshot.load(bio.getvalue()).to_dict()["events"][0]["message"] == "héllo"
        with pytest.raises(TypeError, match="binary"):
            rec.write_to(io.StringIO())  # type: ignore[arg-type]
    finally:
        rec.stop()


def test_capture_builds_off_the_loop() -> None:
    async def main() -> tuple[Snapshot, int, int]:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        seen: list[int] = []
        real = container_mod.write

        def spy(*a: Any, **k: Any) -> list[bytes]:
            seen.append(threading.get_ident())
            return real(*a, **k)

        container_mod.write = spy  # type: ignore[assignment]
        try:
            snap = await rec.capture("async")
        finally:
            container_mod.write = real
            rec.stop()
        return snap, seen[0], threading.get_ident()

    snap, build_thread, loop_thread = asyncio.run(main())
    assert snap.trigger["reason"] == "async"
    assert build_thread != loop_thread


def test_to_epoch_is_wall_clock() -> None:
    import time

    rec = FlightRecorder(loop_blocked=None)
    rec.start()
    try:
        now = rec.to_epoch(time.perf_counter_ns())
        assert abs(now - time.time()) < 1.0
    finally:
        rec.stop()
