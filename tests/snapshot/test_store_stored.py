"""The store keeps stored forms: listed from their header, bounded by count and bytes,
evicted manual first, then fleet follower captures, then the rest; gzip'd JSON of earlier
versions is still listed, read and served beside them."""

from __future__ import annotations

import gzip
import os
import secrets
from pathlib import Path
from typing import Any

import orjson
import pytest
from endpoint_samples import make_snapshot

from flightdeck.asgi.config import Config
from flightdeck.core import events as ev
from flightdeck.core.window import Frozen
from flightdeck.snapshot import container
from flightdeck.snapshot.document import Snapshot, new_id, rfc3339
from flightdeck.snapshot.store import DEFAULT_MAX_STORE_BYTES, SnapshotStore, encode

BASE = 1_764_121_800.0


def stored(
    kind: str, created: float, pad: int = 1000, **trigger: Any
) -> tuple[list[bytes], dict[str, Any]]:
    """A stored form of ``pad`` bytes of (incompressible) log text, created at ``created``."""
    head: dict[str, Any] = {
        "id": new_id(created),
        "created_at": rfc3339(created + 0.25),
        "trigger": {"kind": kind, "reason": f"{kind} at {created}", "request": None, **trigger},
        "process": {"pid": 4321, "service": "svc"},
        "clock_offset_ns": 0,
        "trigger_time_ns": None,
    }
    text = secrets.token_hex(pad // 2)
    frozen = Frozen([], [(ev.LOG, 10, "cat", text, None)], {}, {}, 0, 100)
    return container.write(frozen, head, level=0), head


@pytest.mark.parametrize("where", ["memory", "directory"])
def test_eviction_order_manual_then_fleet_then_the_rest(where: str, tmp_path: Path) -> None:
    store = SnapshotStore(max_snapshots=4, directory=tmp_path if where == "directory" else None)
    kinds = ["manual", "slow_request", "fleet", "manual", "server_error", "fleet"]
    ids = []
    for i, kind in enumerate(kinds):
        pieces, head = stored(kind, BASE + i)
        ids.append(store.put_stored(pieces, head).id)
    # Six in, four kept: the two manual captures went first, oldest first.
    assert sorted(s["id"] for s in store.list()) == sorted([ids[1], ids[2], ids[4], ids[5]])
    pieces, head = stored("crash", BASE + 10)
    ids.append(store.put_stored(pieces, head).id)
    # Then the oldest fleet follower capture, before any automatic snapshot.
    assert sorted(s["id"] for s in store.list()) == sorted([ids[1], ids[4], ids[5], ids[6]])


@pytest.mark.parametrize("where", ["memory", "directory"])
def test_bounded_by_bytes_newest_kept(where: str, tmp_path: Path) -> None:
    one = sum(map(len, stored("slow_request", BASE)[0]))
    store = SnapshotStore(
        max_snapshots=100,
        max_bytes=3 * one + one // 2,
        directory=tmp_path if where == "directory" else None,
    )
    ids = [store.put_stored(*stored("slow_request", BASE + i)).id for i in range(6)]
    listed = [s["id"] for s in store.list()]
    assert listed == ids[:2:-1]  # the three newest, newest first
    if where == "directory":
        total = sum(p.stat().st_size for p in tmp_path.iterdir() if p.name.endswith(".fdk"))
    else:
        total = store.stats()["bytes"]
    assert total <= 3 * one + one // 2
    # A snapshot larger than the whole bound is still kept (alone): the newest never goes.
    big = store.put_stored(*stored("server_error", BASE + 20, pad=8 * one))
    assert [s["id"] for s in store.list()] == [big.id]


def test_listing_comes_from_the_header(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path)
    request = {"method": "GET", "path": "/x", "status": 500, "duration": 0.5}
    incident = new_id(BASE - 1)
    pieces, head = stored("server_error", BASE, request=request, incident=incident)
    info = store.put_stored(pieces, head)
    assert info.path is not None and info.path.endswith(".fdk")
    # A fresh store (another worker) lists the file from its header alone.
    (item,) = SnapshotStore(directory=tmp_path).list()
    assert item["id"] == info.id and item["pid"] == 4321 and item["service"] == "svc"
    assert item["request"] == {"method": "GET", "path": "/x", "status": 500, "duration": 0.5}
    assert item["incident"] == incident and item["size"] == info.stored


def test_earlier_gzip_json_and_stored_forms_served_side_by_side(tmp_path: Path) -> None:
    # A directory written by the previous version: gzip'd JSON files.
    old = make_snapshot(created=BASE)
    data, _ = encode(old)
    (tmp_path / f"{old.id}.json.gz").write_bytes(data)
    os.chmod(tmp_path, 0o700)
    store = SnapshotStore(directory=tmp_path)
    new = store.put_stored(*stored("server_error", BASE + 5))
    assert [s["id"] for s in store.list()] == [new.id, old.id]
    # Raw: each as stored. JSON: the old one as it was, the new one converted.
    assert store.get_stored(old.id) == data
    raw = store.get_stored(new.id)
    assert raw is not None and container.is_container(raw)
    assert store.get_bytes(old.id, gzip=False) == old.dumps("json")
    body = store.get_bytes(new.id, gzip=False)
    assert body is not None and orjson.loads(body)["id"] == new.id
    zipped = store.get_bytes(new.id, gzip=True)
    assert zipped is not None and gzip.decompress(zipped) == body
    for ident in (old.id, new.id):
        snap = store.get(ident)
        assert snap is not None and snap.to_dict()["format"] == "flightdeck/1"
    assert Snapshot.load(raw).id == new.id


def test_corrupt_stored_file_is_quarantined(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path)
    info = store.put_stored(*stored("server_error", BASE))
    assert info.path is not None
    data = bytearray(Path(info.path).read_bytes())
    data[-30] ^= 0xFF
    Path(info.path).write_bytes(bytes(data))
    fresh = SnapshotStore(directory=tmp_path)
    assert fresh.list() == [] and fresh.get(info.id) is None
    assert (tmp_path / f".corrupt-{info.id}.fdk").is_file()


def test_max_store_bytes_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config.from_env().max_store_bytes == DEFAULT_MAX_STORE_BYTES == 256 << 20
    monkeypatch.setenv("FLIGHTDECK_MAX_STORE_BYTES", "64MiB")
    assert Config.from_env().max_store_bytes == 64 << 20
    assert Config.from_env(max_store_bytes=1 << 20).max_store_bytes == 1 << 20
    with pytest.raises(ValueError, match="max_store_bytes"):
        Config(max_store_bytes=0)
