"""The capture path writes the document task by task: same bytes as building it whole."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from flightdeck import FlightRecorder, Snapshot
from flightdeck.snapshot import build as builder
from flightdeck.snapshot.store import SnapshotStore

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


async def _work(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_streamed_json_equals_the_whole_document(run: Runner) -> None:
    async def main() -> Any:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        try:
            await asyncio.gather(*(asyncio.create_task(_work(i % 7 + 1)) for i in range(40)))
            # A lone surrogate (a name from undecodable bytes) must come out the same way.
            await asyncio.create_task(_work(2), name="bad\udcffname")
            pending = asyncio.create_task(asyncio.sleep(5))
            await asyncio.sleep(0)
            frozen = rec.freeze()
            pending.cancel()
            return rec, frozen
        finally:
            rec.stop()

    _rec, frozen = run(main())
    options: dict[str, Any] = {
        "snapshot_id": "20260101T000000Z-1-abcdef",
        "offset_ns": 0,
        "trigger": {"kind": "manual", "reason": "", "request": None},
        "process": {"pid": 1},
    }
    parts = builder.assemble(frozen, **options)
    streamed = b"".join(builder.iter_json(parts))
    whole = builder.build_document(frozen, **options)
    whole["created_at"] = parts["created_at"]
    assert streamed == Snapshot(whole).dumps("json")
    doc = orjson.loads(streamed)
    assert sum(len(t["steps"]) for t in doc["tasks"]) > 100
    assert any(str(t["name"]).startswith("bad\ufffd") for t in doc["tasks"])
    assert any(s[2] is None for t in doc["tasks"] for s in t["steps"])  # NaN -> null


def test_build_into_stores_a_loadable_snapshot(run: Runner) -> None:
    store = SnapshotStore(max_snapshots=3)

    async def main() -> Any:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        try:
            await asyncio.gather(*(_work(3) for _ in range(10)))
            info = await asyncio.to_thread(
                rec.build_into, store, rec.freeze(), kind="slow_request", reason="r"
            )
            return rec, info
        finally:
            rec.stop()

    rec, info = run(main())
    data = store.get_bytes(info.id, gzip=True)
    assert data is not None
    snap = Snapshot.load(gzip.decompress(data))
    assert snap.id == info.id and snap.trigger["kind"] == "slow_request"
    stored = store.get_stored(info.id)
    assert stored is not None and info.size == info.stored == len(stored)
    assert Snapshot.load(stored).dumps("json") == gzip.decompress(data)  # converted on read
    assert store.list()[0]["trigger"]["reason"] == "r"
    assert rec.stats["snapshots"] == 1


def test_encode_stream_batches_pieces_into_one_valid_member() -> None:
    from flightdeck.snapshot import codec

    # Pieces of many sizes, crossing the batch size: the member holds their concatenation.
    head = {"format": "flightdeck/1", "id": "20260101T000000Z-1-50fc206e", "trigger": {}}
    pieces = [bytes([65 + i % 26]) * (i * 7919 % (codec._BATCH // 3)) for i in range(40)]
    data, summary = codec.encode_stream(head, iter(pieces))
    assert gzip.decompress(data) == b"".join(pieces)
    assert summary["size"] == sum(map(len, pieces)) > 3 * codec._BATCH
    assert codec.encode_stream(head, iter([]))[1]["size"] == 0
