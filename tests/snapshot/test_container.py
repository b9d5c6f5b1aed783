"""The stored form (``container.py``): the same document as a build, safe on any bytes."""

from __future__ import annotations

import asyncio
import os
import random
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightdeck import FlightRecorder
from flightdeck.core import events as ev
from flightdeck.core.cores import CORE
from flightdeck.core.window import Segment, Window
from flightdeck.snapshot import build as builder
from flightdeck.snapshot import container
from flightdeck.snapshot.container import ContainerError
from flightdeck.snapshot.document import Snapshot, SnapshotError, new_id
from flightdeck.snapshot.records import Generation


async def _workload(rec: FlightRecorder) -> list[asyncio.Task[None]]:
    async def work(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 3))
        if i % 17 == 0:
            await asyncio.sleep(0)
        return i

    for _ in range(10):
        await asyncio.gather(*(work(i) for i in range(40)))
    held = [asyncio.create_task(asyncio.sleep(30), name=f"held-{i}") for i in range(4)]
    await asyncio.sleep(0.005)
    rid = 7
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    t = ev_now()
    rec.emit(
        (
            ev.REQ_START,
            t,
            rid,
            "http",
            "GET",
            "/p\udc80é",
            "q=1",
            ("1.2.3.4", 5),
            (("a", "b"),),
            None,
            trace,
        )
    )
    rec.emit((ev.LOG, t + 1, "cat", "héllo \udcff", None))
    rec.emit((ev.REQ_END, t + 2, rid, 500, t + 1, "/p", False, "ValueError", t + 2, None))
    rec.maintain(True)  # a sealed segment, then an open one
    await asyncio.gather(*(work(i) for i in range(40)))
    return held


def ev_now() -> int:
    import time

    return time.perf_counter_ns()


def _capture() -> tuple[dict[str, Any], bytes, int]:
    """A window frozen once, built today's way and written as a stored form."""

    async def main() -> tuple[dict[str, Any], bytes, int]:
        rec = FlightRecorder(loop_blocked=None, max_bytes=1 << 20)
        rec.start()
        held = await _workload(rec)
        try:
            frozen = rec.freeze()
            ident = new_id()
            trigger = {"kind": "server_error", "reason": "r", "request": {"id": 7}}
            process = rec._process_info()
            doc = builder.build_document(
                frozen,
                snapshot_id=ident,
                offset_ns=rec._clock_offset_ns,
                trigger=dict(trigger),
                process=process,
                trigger_time_ns=frozen.t_now - 5,
            )
            head = {
                "id": ident,
                "trigger": dict(trigger),
                "process": process,
                "clock_offset_ns": rec._clock_offset_ns,
                "trigger_time_ns": frozen.t_now - 5,
            }
            data = b"".join(container.write(frozen, head))
            return doc, data, rec.stats["bytes"]
        finally:
            for task in held:
                task.cancel()
            rec.stop()

    return asyncio.run(main())


def test_read_document_is_the_build_of_the_same_window() -> None:
    doc, data, window_bytes = _capture()
    assert container.is_container(data) and not container.is_container(b"{}")
    got = container.read_document(data)
    got["created_at"] = doc["created_at"]  # the capture's end, stamped in the header
    assert got == doc or Snapshot(got).dumps("json") == Snapshot(doc).dumps("json")
    assert any(t["name"] == "held-0" and t["awaiting"] for t in got["tasks"])
    assert any(r["path"].startswith("/p") for r in got["requests"])
    head = container.read_header(data)
    assert head["id"] == doc["id"] and head["core"] == CORE
    assert head["trace_ids"] == ["4bf92f3577b34da6a3ce929d0e0e4736"]
    assert head["events"] == doc["window"]["events"]
    assert len(data) <= window_bytes  # the window's own records, no bigger


@pytest.mark.skipif(CORE != "native", reason="native generations")
def test_pure_python_reader_decodes_native_generations() -> None:
    _, data, _ = _capture()
    gens = [raw for tag, raw in container.iter_chunks(data) if tag == container.GENR]
    assert gens
    from flightdeck.core import _native

    for raw in gens:
        native = _native.load_segment(raw)
        assert Generation(raw).events() == native.events()
        assert Generation(raw).status() == native.status()


def test_torn_tail_is_ignored_only_when_not_strict() -> None:
    _, data, _ = _capture()
    torn = data[: len(data) - 7]
    with pytest.raises(ContainerError, match="truncated"):
        container.read_document(torn)
    tags = [tag for tag, _ in container.iter_chunks(torn, strict=False)]
    assert tags[0] == container.HEAD and container.END not in tags
    assert container.read_header(torn)["id"] == container.read_header(data)["id"]


def test_clear_errors_on_foreign_and_newer_bytes() -> None:
    _, data, _ = _capture()
    with pytest.raises(ContainerError, match="magic"):
        container.read_header(b"\x1f\x8b" + data)
    newer = container.MAGIC + struct.pack("<I", 99) + data[12:]
    with pytest.raises(ContainerError, match="upgrade"):
        container.read_document(newer)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    with pytest.raises(ContainerError):
        container.read_document(bytes(flipped))
    with pytest.raises(SnapshotError):
        Snapshot.load(bytes(flipped))


def _rechecksummed(data: bytes, rng: random.Random) -> bytes:
    """``data`` with bytes of one chunk's payload changed and its checksum made right again:
    what only the parsers stand between (a tampered file, not a torn one)."""
    out = bytearray(data)
    pos = 12
    chunks = []
    while pos < len(out):
        _tag, flags, length, _ = struct.unpack_from("<4sB3xII", out, pos)
        chunks.append((pos, flags, length))
        pos += 16 + length
    pos, flags, length = rng.choice(chunks[1:-1] or chunks)
    payload = bytes(out[pos + 16 : pos + 16 + length])
    if flags & 1:
        payload = zlib.decompress(payload)
    mutable = bytearray(payload)
    for _ in range(rng.randint(1, 6)):
        if mutable:
            mutable[rng.randrange(len(mutable))] = rng.randrange(256)
    new = zlib.compress(bytes(mutable)) if flags & 1 else bytes(mutable)
    header = struct.pack("<4sB3xII", bytes(out[pos : pos + 4]), flags, len(new), zlib.crc32(new))
    return bytes(out[:pos]) + header + new + bytes(out[pos + 16 + length :])


_DATA: list[bytes] = []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_any_tampered_payload_raises_container_error_or_reads(seed: int) -> None:
    if not _DATA:
        _DATA.append(_capture()[1])
    tampered = _rechecksummed(_DATA[0], random.Random(seed))
    try:
        container.read_document(tampered)
    except ContainerError:
        pass  # the only way out besides a document: never a crash, never another error


def test_no_marshal_or_pickle_on_the_read_path() -> None:
    here = os.path.dirname(container.__file__)
    for name in ("container.py", "records.py"):
        with open(os.path.join(here, name)) as f:
            text = f.read()
        assert "import marshal" not in text and "import pickle" not in text


# -- the pure core: a capture is a copy of its sealed segments --------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _pure_window(requests: int = 60) -> Window:
    """A pure window with compressed and uncompressed sealed segments and an open tail,
    its requests carrying trace ids (what the recorder makes, whichever core it runs)."""
    w = Window(
        10**15,
        192 << 10,
        segment_events=10**6,
        clock=lambda: 2 * 10**9,  # two freezes see the same window
        encode=container.encode_events,
    )
    t = 10**9
    for rid in range(1, requests + 1):
        tid = 0x7F00_0000 + 16 * rid
        w.append(
            (ev.REQ_START, t, rid, "http", "GET", f"/r{rid}", "", None, None, tid, f"{rid:032x}")
        )
        w.append((ev.TASK_CREATE, t + 1, tid, f"Task-{rid}", "handler", None, rid, None))
        for k in range(30):
            w.append((ev.TASK_STEP, t + 2 + 10 * k, t + 7 + 10 * k, tid, t + 1 + 10 * k))
        w.append((ev.TASK_DONE, t + 400, tid, "done", None, f"Task-{rid}"))
        w.append((ev.REQ_END, t + 401, rid, 200, t + 300, "/r", False, None, t + 401, tid))
        t += 1000
        if rid < requests:  # the last request stays in the append buffer: the open tail
            w.maintain(force_seal=rid % 10 == 0)
    # Past half its budget, the window compressed its oldest segments; nothing was lost.
    assert w.dropped == w.evicted == 0 and w.events == requests * 34
    return w


def _head() -> dict[str, Any]:
    return {
        "id": new_id(),
        "trigger": {"kind": "manual", "reason": "", "request": None},
        "process": {"pid": 1},
        "clock_offset_ns": 0,
        "trigger_time_ns": None,
    }


def test_a_pure_capture_writes_the_sealed_segments_bytes_without_decoding_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _pure_window()
    frozen = w.freeze()
    segs = list(frozen.segments)
    packed = [s for s in segs if s.compressed]
    assert packed and len(packed) < len(segs) and frozen.tail
    expected = builder.build_document(
        w.freeze(),
        snapshot_id="20260101T000000Z-1-00000000",
        offset_ns=0,
        trigger={"kind": "manual", "reason": "", "request": None},
        process={"pid": 1},
    )

    def refuse(self: Segment) -> list[Any]:
        raise AssertionError("a sealed segment was decoded to capture")

    monkeypatch.setattr(Segment, "events", refuse)
    head = _head()
    head["id"] = expected["id"]
    pieces = container.write(frozen, head)
    # What the window compressed: its own bytes objects, shared with the stored form, not
    # copies. What it had not: compressed now, from its JSON as it is.
    assert all(any(p is s.data for p in pieces) for s in packed)
    monkeypatch.undo()
    data = b"".join(pieces)
    stored = [(tag, raw) for tag, raw in container.iter_chunks(data) if tag == container.EVTS]
    assert len(stored) == len(segs) + 1  # then the open tail, encoded at capture
    for (_, raw), seg in zip(stored, segs, strict=False):
        assert raw == (zlib.decompress(seg.data) if seg.compressed else seg.data)
    assert len(data) < sum(len(s.data) for s in segs)  # everything stored compressed
    read = container.read_header(data)
    assert read["events"] == w.events and read["core"] == "python"
    assert read["trace_ids"] == [f"{rid:032x}" for rid in range(1, 61)]
    got = container.read_document(data)
    got["created_at"] = expected["created_at"]
    assert got == expected


def test_a_pure_capture_finds_the_trigger_trace_past_the_header_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(container, "MAX_TRACE_IDS", 5)
    w = _pure_window()
    head = _head()
    head["trigger"]["request"] = {"id": 37}  # sealed, well past the first five trace ids
    seen: list[dict[str, Any]] = []
    data = b"".join(container.write(w.freeze(), head, annotate=lambda h: seen.append(dict(h))))
    assert container.read_header(data)["trace_ids"] == [f"{rid:032x}" for rid in range(1, 6)]
    assert seen[0]["requests"][0] == {"id": 37, "trace_id": f"{37:032x}"}


def test_a_pure_capture_into_the_store_pins_the_windows_bytes(tmp_path: Any) -> None:
    from flightdeck.snapshot.store import SnapshotStore

    w = _pure_window()
    frozen = w.freeze()
    packed = [s for s in frozen.segments if s.compressed]
    assert packed
    rec = FlightRecorder(loop_blocked=None)
    store = SnapshotStore()
    info = rec.build_into(store, frozen, kind="test")
    kept, _ = store._memory[info.id]
    assert all(any(p is s.data for p in kept) for s in packed)  # not copied: shared
    data = store.get_stored(info.id)
    assert data is not None and container.read_header(data)["events"] == w.events
    # Uncompressed (level 0), every sealed segment is the window's own bytes.
    frozen = w.freeze()
    segs = list(frozen.segments)
    pieces = container.write(frozen, _head(), level=0)
    assert all(any(p is s.data for p in pieces) for s in segs)
    assert container.read_document(b"".join(pieces))["window"]["events"] == w.events


# Only the pure window takes an encoder; the native one encodes in C.
@pytest.mark.skipif(CORE != "python", reason="the pure core's window")
def test_the_recorders_pure_window_seals_with_the_stored_forms_encoder() -> None:
    rec = FlightRecorder(loop_blocked=None)
    assert rec._window._encode is container.encode_events
