"""The native task feed (``core/native/builder.h``) builds the reference's very document.

``snapshot/build.py``'s ``_Builder`` is the reference; ``_NativeBuilder`` feeds a stored
native generation's task records in C and every other kind through the reference. Each
test here reads the same stored bytes both ways and compares the JSON byte for byte: a
window holding one event of every kind, a busy window (task ids reused, status records,
a task referenced before its creation, pending tasks with await chains), a window whose
records the C side refuses (the reference then builds it alone), and corrupted or
truncated generations fed straight to the C side (an error, never a crash).
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

import pytest
from export.test_kinds_rendered import TID, pending_forever, sample_events

from flightdeck import FlightRecorder
from flightdeck.core import events as ev
from flightdeck.core.cores import CORE
from flightdeck.snapshot import build, container
from flightdeck.snapshot.document import Snapshot

pytestmark = pytest.mark.skipif(CORE != "native", reason="the native task feed: native core only")


def _stored(work: Callable[[FlightRecorder], Any]) -> bytes:
    """The stored form (``write_to``) of a recorder's window after ``await work(rec)``."""

    async def main() -> bytes:
        rec = FlightRecorder(window=60.0, loop_blocked=None)
        rec.start()
        try:
            held = await work(rec)
            out = io.BytesIO()
            rec.write_to(out)
            for task in held or ():
                task.cancel()
            return out.getvalue()
        finally:
            rec.stop()

    return asyncio.run(main())


def _build(data: bytes, native: bool) -> tuple[bytes, list[str]]:
    """The document's JSON built from ``data`` with (or without) the native feed, and the
    builder classes made on the way (a fallback to the reference shows as both)."""
    head, frozen = container.read_frozen(data)
    made: list[str] = []
    original = build._Builder.__init__

    def spy(self: build._Builder, offset_ns: int) -> None:
        made.append(type(self).__name__)
        original(self, offset_ns)

    build._Builder.__init__ = spy  # type: ignore[method-assign]
    try:
        doc = build.build_document(
            frozen,
            snapshot_id=head["id"],
            offset_ns=head["clock_offset_ns"],
            trigger=container._trigger(head["trigger"]),
            trigger_time_ns=head.get("trigger_time_ns"),
            process=head["process"],
            native=native,
        )
    finally:
        build._Builder.__init__ = original  # type: ignore[method-assign]
    doc["created_at"] = "fixed"
    return Snapshot(doc).dumps("json"), made


def _same_both_ways(data: bytes) -> bytes:
    fast, made = _build(data, native=True)
    reference, made_ref = _build(data, native=False)
    assert made == ["_NativeBuilder"], "the native feed fell back to the reference"
    assert made_ref == ["_Builder"]
    assert fast == reference
    return fast


async def _every_kind(rec: FlightRecorder) -> list[asyncio.Task[None]]:
    task = asyncio.create_task(pending_forever())
    await asyncio.sleep(0.01)  # it runs a step and suspends
    for e in sample_events(perf_counter_ns() - 1_000_000_000):
        rec.emit(e)
    return [task]


def test_every_kind_builds_the_reference_document() -> None:
    data = _stored(_every_kind)
    out = _same_both_ways(data)
    # Every kind landed in its part of the document (build.KIND_PARTS).
    doc = Snapshot.load(out).to_dict()
    sample = [t for t in doc["tasks"] if t["coro"] == "task_create.coro"]
    assert sample and sample[0]["steps"] and sample[0]["waits"] and sample[0]["state"] == "error"
    assert {"block", "callback", "lag", "gc", "step"} <= {e["kind"] for e in doc["loop"]}
    kinds = {e["kind"] for e in doc["events"]}
    assert {"region", "log", "executor", "trigger", "cancel"} <= kinds
    request = [r for r in doc["requests"] if r["path"] == "/request_start.path"]
    assert request and request[0]["end"] is not None and request[0]["error_stack"]


async def _busy(rec: FlightRecorder) -> list[asyncio.Task[None]]:
    async def short(i: int) -> int:
        if i % 3:
            await asyncio.sleep(0)
        if i % 7 == 0:
            await asyncio.sleep(0.001)
        return i

    async def parent() -> None:
        await asyncio.gather(*(short(i) for i in range(30)))

    held = [asyncio.create_task(asyncio.sleep(30), name=f"held-{i}") for i in range(3)]
    await asyncio.sleep(0)
    rec.maintain(True)  # the held tasks are live at a seal: status records
    for round_ in range(20):
        await asyncio.gather(*(asyncio.create_task(parent()) for _ in range(5)))
        if round_ % 5 == 4:
            rec.maintain(True)
    # A task known by reference before its creation record (as a child made during an
    # eager first step is), and a step of a task whose creation is not in the window.
    t = perf_counter_ns()
    rec.emit((ev.TASK_STEP, t, t + 1000, TID + 16, t - 500))
    rec.emit((ev.TASK_CREATE, t + 2000, TID + 16, "late", "late.coro", None, None, None))
    rec.emit((ev.TASK_STEP, t + 3000, t + 4000, TID + 32, 0))  # no queue time
    rec.emit((ev.TASK_STEP, t + 5000, t + 6000, TID + 32, t + 5500))  # queued after start
    rec.emit((ev.TASK_DONE, t + 7000, TID + 32, "done", None, "renamed"))
    return held


def test_a_busy_window_builds_the_reference_document() -> None:
    data = _stored(_busy)
    doc = Snapshot.load(_same_both_ways(data)).to_dict()
    names = [t["name"] for t in doc["tasks"]]
    assert len(doc["tasks"]) > 600 and "late" in names and "renamed" in names
    assert any(t["awaiting"] for t in doc["tasks"] if str(t["name"]).startswith("held-"))


def test_records_the_native_feed_refuses_are_built_by_the_reference() -> None:
    # A task id past 64 bits (no recorder writes one): the C side refuses the window and
    # the reference builds it, so the document is still the reference's.
    async def odd(rec: FlightRecorder) -> None:
        t = perf_counter_ns()
        rec.emit((ev.TASK_CREATE, t, 1 << 70, "big", "big.coro", None, None, None))
        rec.emit((ev.TASK_STEP, t + 10, t + 20, 1 << 70, t + 5))

    data = _stored(odd)
    fast, made = _build(data, native=True)
    reference, _ = _build(data, native=False)
    assert made == ["_NativeBuilder", "_Builder"] and fast == reference
    assert b'"big"' in fast


def _generations(data: bytes) -> list[bytes]:
    return [raw for tag, raw in container.iter_chunks(data) if tag == container.GENR]


def _feed(payload: bytes) -> None:
    """Every record of one generation through the C side, the other kinds dropped."""
    from flightdeck.core import _native

    seg = _native.load_segment(payload)
    feed = _native.TaskFeed(0, build._stack, build._site)
    feed.begin(seg)
    while feed.next() is not None:
        pass
    feed.uids()
    feed.release()


def test_corrupted_and_truncated_generations_raise_and_never_crash() -> None:
    data = _stored(_busy)
    payloads = _generations(data)
    assert payloads
    rng = random.Random(20261204)
    outcomes = {"read": 0, "refused": 0}
    for _ in range(400):
        payload = bytearray(rng.choice(payloads))
        if rng.random() < 0.3:
            del payload[rng.randrange(1, len(payload)) :]
        for _ in range(rng.randint(1, 8)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        try:
            _feed(bytes(payload))
        except (ValueError, TypeError, OverflowError):
            outcomes["refused"] += 1
        else:
            outcomes["read"] += 1
    assert outcomes["refused"] > 0  # the corruption was seen, and told as an error
    # And through the whole read path: a document or ContainerError, nothing else.
    for _ in range(60):
        cut = rng.randrange(12, len(data))
        try:
            container.read_document(data[:cut])
        except container.ContainerError:
            pass


def test_the_task_feed_takes_only_a_segment() -> None:
    from flightdeck.core import _native

    feed = _native.TaskFeed(0, build._stack, build._site)
    with pytest.raises(TypeError):
        feed.begin(b"not a segment")  # type: ignore[arg-type]
    assert feed.next() is None  # nothing begun: nothing to feed
    with pytest.raises(ValueError):
        feed.task("not an id")
    with pytest.raises(TypeError):
        _native.TaskFeed(0, None, build._site)  # type: ignore[arg-type]


def test_a_malformed_site_or_stack_from_a_damaged_file_is_a_value_error() -> None:
    # A damaged generation can decode a site as a pair, or a frame as a bare string; the
    # builder then refuses the generation (ValueError) rather than failing on an index.
    with pytest.raises(ValueError):
        build._site(("handler", "app.py"))
    with pytest.raises(ValueError):
        build._stack([("handler", "app.py", 3, 4)])
    assert build._site(("handler", "app.py", 3)) == {
        "function": "handler",
        "file": "app.py",
        "line": 3,
    }
    assert build._stack(None) is None
