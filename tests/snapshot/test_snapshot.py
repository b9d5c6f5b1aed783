"""Snapshot: round trip through dumps/write/load (gzip too) and clear load errors."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from flightdeck import FlightRecorder, Snapshot, SnapshotError
from flightdeck.core import events as ev
from flightdeck.snapshot.document import ID_PATTERN, is_valid_id, new_id, rfc3339


@pytest.fixture
def snap() -> Snapshot:
    rec = FlightRecorder(loop_blocked=None)
    rec.start()
    try:
        rec.emit((ev.LOG, 1, "cat", "msg \udcff undecodable", None))
        rec.emit((ev.TASK_CREATE, 2, 10, "Task-1", "job", None, None, None))
        rec.emit((ev.TASK_STEP, 3, 4, 10, 2))
        return rec.snapshot(reason="round trip")
    finally:
        rec.stop()


def test_round_trip_dumps_and_load(snap: Snapshot) -> None:
    data = snap.dumps()
    back = Snapshot.load(data)
    assert back.id == snap.id and back.created_at == snap.created_at
    assert back.trigger == snap.trigger
    assert back.to_dict() == orjson.loads(data)
    assert back.to_dict()["tasks"][0]["coro"] == "job"
    assert "\ufffd" in back.to_dict()["events"][0]["message"] or "?" in data.decode()
    assert ID_PATTERN.match(snap.id) and is_valid_id(snap.id)
    assert repr(back).startswith(f"<Snapshot {snap.id}")


def test_write_and_load_path_and_gzip(snap: Snapshot, tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    n = snap.write(path)
    assert n == path.stat().st_size
    assert Snapshot.load(path).to_dict() == Snapshot.load(str(path)).to_dict()
    gz = tmp_path / "s.json.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert Snapshot.load(gz).id == snap.id
    assert Snapshot.load(gzip.compress(path.read_bytes())).id == snap.id


def test_other_formats(snap: Snapshot, tmp_path: Path) -> None:
    assert b"traceEvents" in snap.dumps("perfetto")
    assert snap.dumps("html").lstrip().lower().startswith(b"<!doctype html")
    with pytest.raises(ValueError, match="format"):
        snap.dumps("xml")  # type: ignore[arg-type]


def _doc(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "format": "flightdeck/1",
        "id": new_id(),
        "created_at": rfc3339(0),
        "trigger": {"kind": "manual", "reason": "", "request": None},
        "process": {},
        "window": {},
        "requests": [],
        "tasks": [],
        "loop": [],
        "events": [],
    }
    doc.update(changes)
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not JSON"),
        (b"<html>", "not JSON"),
        (b'{"format": "flightdeck/1", "id": ', "truncated"),
        (b"[1, 2]", "not a flightdeck snapshot"),
        (_doc(format="otel/1"), "not a flightdeck snapshot"),
        (_doc(format=...), "not a flightdeck snapshot"),
        (_doc(format="flightdeck/2"), "newer"),
        (_doc(format="flightdeck/x"), "unsupported"),
        (_doc(tasks=...), "missing tasks"),
        (_doc(id="../../etc/passwd"), "malformed snapshot id"),
        (gzip.compress(b"not json"), "not JSON"),
        (gzip.compress(_doc())[:20], "gzip"),
        (b"\x1f\x8b" + b"\x00" * 30, "gzip"),
    ],
)
def test_load_errors_are_clear(data: bytes, message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        Snapshot.load(data)


def test_load_from_missing_or_directory(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no such file"):
        Snapshot.load(tmp_path / "nope.json")
    with pytest.raises(SnapshotError, match="directory"):
        Snapshot.load(tmp_path)


def test_load_of_a_valid_minimal_doc() -> None:
    assert Snapshot.load(_doc()).trigger["kind"] == "manual"
