"""The public surface is pinned."""

from __future__ import annotations

import flightdeck


def test_all_is_pinned() -> None:
    assert flightdeck.__all__ == [
        "FlightDeck",
        "FlightRecorder",
        "LoopBlocked",
        "RequestChecks",
        "RequestInfo",
        "ServerError",
        "SlowRequest",
        "Snapshot",
        "SnapshotError",
        "SnapshotInProgress",
        "Trigger",
        "__version__",
        "install",
        "log",
        "new_event_loop",
        "region",
    ]
    for name in flightdeck.__all__:
        assert hasattr(flightdeck, name), name


def test_exception_types() -> None:
    assert issubclass(flightdeck.SnapshotError, Exception)
    assert issubclass(flightdeck.SnapshotInProgress, RuntimeError)
    assert isinstance(flightdeck.__version__, str) and flightdeck.__version__


def test_snapshot_members() -> None:
    for member in ("id", "created_at", "trigger", "to_dict", "dumps", "write", "load"):
        assert hasattr(flightdeck.Snapshot, member), member
    for member in ("start", "stop", "snapshot", "write_to", "enabled", "stats", "capture"):
        assert hasattr(flightdeck.FlightRecorder, member), member
