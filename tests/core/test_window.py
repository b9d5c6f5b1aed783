"""The rolling window: eviction by age and bytes (fake clock), status records, threads."""

from __future__ import annotations

import json
import os
import threading
import zlib
from typing import Any

import pytest

from flightdeck.core import events as ev
from flightdeck.core import window as _window
from flightdeck.core.window import Event, Traces, Window
from flightdeck.snapshot.build import build_document

S = 1_000_000_000  # one second in ns


class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def make(clock: FakeClock, **kw: Any) -> Window:
    opts: dict[str, Any] = {"window_ns": 10 * S, "max_bytes": 1 << 30, "segment_ns": S}
    opts.update(kw)
    return Window(clock=clock, **opts)


def log(w: Window, clock: FakeClock, n: int, tag: str = "x") -> None:
    for i in range(n):
        w.append((ev.LOG, clock.now, "c", f"{tag}{i}", None))


def build(w: Window) -> dict[str, Any]:
    frozen = w.freeze()
    return build_document(
        frozen,
        snapshot_id="20260101T000000Z-1-00000000",
        offset_ns=0,
        trigger={"kind": "manual", "reason": "", "request": None},
        process={},
    )


def test_eviction_by_age_keeps_at_least_the_window() -> None:
    clock = FakeClock()
    w = make(clock)
    for sec in range(15):
        clock.now = sec * S
        log(w, clock, 10, tag=f"s{sec}-")
        w.maintain(force_seal=True)  # one segment per second
    # At 14 s the horizon is 4 s: the segments that ended at 0..3 s are out of the window.
    assert w.segments == 11 and w.evicted == 4 * 10
    clock.now = 16 * S + 1
    w.maintain()
    # horizon = 6 s + 1 ns: segments ending at 0..6 s are older than the window; 7..14 stay.
    assert w.segments == 8
    assert w.evicted == 7 * 10
    assert w.dropped == 0
    doc = build(w)
    messages = {e["message"] for e in doc["events"]}
    assert "s7-0" in messages and "s14-9" in messages
    assert not any(m.startswith(("s0-", "s6-")) for m in messages)
    assert doc["window"]["events"] == 80


def test_eviction_by_bytes_wins_over_window() -> None:
    clock = FakeClock()
    w = make(clock, window_ns=3600 * S, max_bytes=4096)
    total = 0
    for sec in range(40):
        clock.now = sec * S
        log(w, clock, 50, tag=f"s{sec}-")
        total += 50
        w.maintain(force_seal=True)
        assert w.nbytes <= w.max_bytes
    # Everything is younger than the hour-long window, yet old segments went: counted dropped.
    assert w.evicted == 0
    assert w.dropped > 0
    assert w.events + w.dropped == total
    assert w.recorded == total
    doc = build(w)
    assert doc["window"]["dropped"] == w.dropped
    assert any(e["message"] == "s39-49" for e in doc["events"])  # the newest is kept


def test_segment_sealed_when_old_or_large_enough() -> None:
    clock = FakeClock()
    w = make(clock, segment_events=100)
    log(w, clock, 99)
    w.maintain()
    assert w.segments == 0  # neither 100 events nor a second old
    log(w, clock, 1)
    w.maintain()
    assert w.segments == 1
    log(w, clock, 5)
    w.maintain()
    assert w.segments == 1
    clock.now += S
    w.maintain()
    assert w.segments == 2 and w.sealed == 2


def test_status_records_survive_eviction_of_the_creation() -> None:
    clock = FakeClock()
    w = make(clock)
    # A task and a request created at t=0, alive for a minute; another task done at t=1.
    w.append((ev.TASK_CREATE, 0, 111, "Task-1", "long_job", None, 7, None))
    w.append((ev.REQ_START, 0, 7, "http", "GET", "/hang", "", None, (), 111, None))
    w.append((ev.TASK_CREATE, 0, 222, "Task-2", "short_job", None, None, None))
    w.maintain(force_seal=True)
    clock.now = S
    w.append((ev.TASK_DONE, S, 222, "done", None, "Task-2"))
    w.maintain(force_seal=True)
    for sec in range(2, 60):
        clock.now = sec * S
        w.append((ev.TASK_STEP, clock.now, clock.now + 1000, 111, clock.now - 10))
        w.maintain(force_seal=True)
    assert w.evicted > 0
    doc = build(w)
    tasks = {t["id"]: t for t in doc["tasks"]}
    (long_job,) = [t for t in doc["tasks"] if t["coro"] == "long_job"]
    assert long_job["name"] == "Task-1" and long_job["request"] == 7
    assert long_job["created"] == 0.0 and long_job["state"] == "pending"
    assert len(long_job["steps"]) >= 10
    # The first step held follows evicted ones: its ``waited`` is unknown, not "since creation".
    assert long_job["steps"][0][2] is None and long_job["steps"][1][2] is not None
    assert not any(t["coro"] == "short_job" for t in doc["tasks"])  # ended before the window
    (req,) = doc["requests"]
    assert req["id"] == 7 and req["path"] == "/hang" and req["tasks"] == [long_job["id"]]
    # Referential integrity: every reference points into the document.
    for t in doc["tasks"]:
        assert t["name"] is not None
        assert t["parent"] is None or t["parent"] in tasks
    for r in doc["requests"]:
        assert all(tid in tasks for tid in r["tasks"])


def test_status_comes_from_events_not_from_a_racing_live_table() -> None:
    """A task that ends in the first batch of a segment is still described after eviction.

    (A status table copied from the loop's live dict at drain time missed such a task: its
    completion was drained with the copy already taken without it.)
    """
    clock = FakeClock()
    w = make(clock, window_ns=5 * S)
    w.append((ev.TASK_CREATE, 0, 333, "Task-3", "quick", None, None, None))
    w.maintain(force_seal=True)
    # The loop already dropped it from its live table when the next segment opened.
    assert w.live_tasks == {}
    clock.now = S
    w.append((ev.TASK_STEP, S, S + 5, 333, S - 5))
    w.append((ev.TASK_DONE, S + 5, 333, "error", "ValueError", "renamed"))
    w.maintain(force_seal=True)
    clock.now = 5 * S + S // 2  # horizon 0.5 s: evicts the creation segment only
    w.maintain()
    assert w.segments == 1 and w.evicted == 1
    (task,) = build(w)["tasks"]
    assert task["coro"] == "quick" and task["name"] == "renamed"
    assert task["state"] == "error" and task["error"] == "ValueError"


def test_ended_request_is_not_in_the_next_status() -> None:
    clock = FakeClock()
    w = make(clock, window_ns=2 * S)
    w.append((ev.REQ_START, 0, 9, "http", "GET", "/a", "", None, (), None, None))
    w.append((ev.REQ_END, 10, 9, 200, 5, "/a", False, None, 10, None))
    w.append((ev.TASK_CREATE, 1, 444, "T", "bg", None, 9, None))  # outlives its request
    w.maintain(force_seal=True)
    for sec in range(1, 6):
        clock.now = sec * S
        w.append((ev.TASK_STEP, clock.now, clock.now + 1, 444, clock.now))
        w.maintain(force_seal=True)
    doc = build(w)
    assert doc["requests"] == []
    (task,) = doc["tasks"]
    assert task["coro"] == "bg"
    assert task["request"] is None  # the request is not in the document: no dangling ref


def test_threads_emitting_while_maintaining_lose_nothing() -> None:
    w = Window(60 * S, 1 << 30, segment_events=500)
    n_threads, per_thread = 4, 20_000
    go = threading.Event()
    done = threading.Event()

    def producer(k: int) -> None:
        append = w.append
        go.wait()
        for i in range(per_thread):
            append((ev.LOG, i, "t", k, None))

    def maintainer() -> None:
        go.wait()
        while not done.is_set():
            w.maintain()
            w.freeze()

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(n_threads)]
    m = threading.Thread(target=maintainer)
    for t in [*threads, m]:
        t.start()
    go.set()
    for t in threads:
        t.join()
    done.set()
    m.join()
    w.maintain(force_seal=True)
    total = n_threads * per_thread
    assert w.recorded == total
    assert w.events == total and w.dropped == 0 and w.evicted == 0
    frozen = w.freeze()
    seen: dict[int, list[int]] = {k: [] for k in range(n_threads)}
    for events in frozen.iter_segments():
        for e in events:
            seen[e[3]].append(e[1])
    for k in range(n_threads):
        assert seen[k] == list(range(per_thread))  # each thread's events, all, in order


def test_concurrent_maintain_keeps_segments_in_order() -> None:
    clock_lock = threading.Lock()
    ticks = [0]

    def clock() -> int:
        with clock_lock:
            ticks[0] += 1
            return ticks[0]

    w = Window(1 << 62, 1 << 30, segment_events=1, clock=clock)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            w.append((ev.LOG, 0, "c", "m", None))
            w.maintain(force_seal=True)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = threading.Event()
    deadline.wait(0.3)  # how long to hammer it; correctness does not depend on it
    stop.set()
    for t in threads:
        t.join()
    w.maintain(force_seal=True)
    segs = list(w._segments)
    assert [s.t_start for s in segs] == sorted(s.t_start for s in segs)
    assert sum(s.count for s in segs) == w.recorded


def test_freeze_while_a_segment_is_being_sealed(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    w = make(clock)
    entered = threading.Event()
    release = threading.Event()
    real_encode = w._encode

    def slow_encode(value: list[Event]) -> bytes:
        entered.set()
        assert release.wait(10)
        return real_encode(value)

    w.append((ev.TASK_CREATE, 0, 5, "T", "c", None, None, None))
    w.maintain(force_seal=True)
    log(w, clock, 3, tag="sealing")
    monkeypatch.setattr(w, "_encode", slow_encode)
    sealer = threading.Thread(target=w.maintain, kwargs={"force_seal": True})
    sealer.start()
    assert entered.wait(10)
    log(w, clock, 2, tag="open")
    frozen = w.freeze()  # the sealing events are neither lost nor duplicated
    release.set()
    sealer.join()
    msgs = [e[3] for events in frozen.iter_segments() for e in events if e[0] == ev.LOG]
    assert msgs == ["sealing0", "sealing1", "sealing2", "open0", "open1"]
    assert len(frozen.segments) == 1 and frozen.tasks == {}  # status before the oldest event
    assert w.segments == 2


def test_buffer_overflow_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_window, "BUFFER_MAXLEN", 8)
    clock = FakeClock()
    w = make(clock)
    assert w._buffer.maxlen == 8
    log(w, clock, 20)
    w.maintain()
    assert w.overflows == 1 and w.dropped >= 1
    assert w.recorded == 8


def test_unencodable_event_counts_as_dropped() -> None:
    clock = FakeClock()
    w = make(clock)
    w.append((ev.LOG, 0, "c", object(), None))  # JSON cannot hold it: a bug elsewhere
    w.maintain(force_seal=True)
    assert w.seal_errors == 1 and w.dropped == 1 and w.segments == 0
    log(w, clock, 1)
    w.maintain(force_seal=True)
    assert w.segments == 1


def test_clear_forgets_everything() -> None:
    clock = FakeClock()
    w = make(clock)
    w.append((ev.TASK_CREATE, 0, 5, "T", "c", None, None, None))
    w.maintain(force_seal=True)
    log(w, clock, 3)
    w.clear()
    frozen = w.freeze()
    assert frozen.tasks == {} and frozen.segments == [] and frozen.tail == []
    assert w.events == 0


def test_last_event_time() -> None:
    clock = FakeClock()
    w = make(clock)
    assert w.last_event_time() is None
    w.append((ev.TASK_STEP, 10, 25, 1, 5))
    assert w.last_event_time() == 25
    w.maintain()
    assert w.last_event_time() == 25  # from the open segment once drained


def test_segments_compressed_only_past_half_the_budget() -> None:
    clock = FakeClock()
    w = Window(10**12, 64 << 10, clock=clock)
    for i in range(200):
        w.append((ev.TASK_STEP, i, i + 1, 7, i))
    w.maintain(force_seal=True)
    assert w.segments == 1 and not w._segments[0].compressed  # room to spare: no zlib
    for batch in range(40):
        for i in range(500):
            w.append((ev.TASK_STEP, 10**9 + i, 10**9 + i + 1, batch, i))
        w.maintain(force_seal=True)
    assert w.nbytes <= w.max_bytes
    assert any(s.compressed for s in w._segments)  # pressure: oldest compressed first
    flags = [s.compressed for s in w._segments]
    assert flags == sorted(flags, reverse=True)
    frozen = w.freeze()
    events = [e for seg in frozen.iter_segments() for e in seg]
    assert len(events) == sum(s.count for s in frozen.segments) + len(frozen.tail)


def test_a_new_segment_never_shows_past_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # While the recorder thread compresses (zlib releases the GIL), the loop appends and
    # anyone may read stats: the new segment, the old ones and a full append buffer together
    # must still be within max_bytes.
    clock = FakeClock()
    w = Window(10**12, 256 << 10, clock=clock)
    seen: list[int] = []
    compress = w._compress

    def loop_appends_meanwhile() -> None:
        for i in range(w.buffer_maxlen - len(w._buffer)):
            w.append((ev.LOG, clock.now, "c", f"during-{i}", None))
        seen.append(w.nbytes)
        compress()

    monkeypatch.setattr(w, "_compress", loop_appends_meanwhile)
    for _batch in range(40):
        for _ in range(w.buffer_maxlen):  # incompressible: the budget is reached in a few
            w.append((ev.LOG, clock.now, "c", os.urandom(40).hex(), None))
        w.maintain(force_seal=True)
        clock.now += 1000
    assert w.dropped > 0  # the budget was the limit
    assert max(seen) <= w.max_bytes, (max(seen), w.max_bytes)


# -- sealed segments in the stored form's encoding --------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _request(rid: int, t: int, trace: object) -> Event:
    return (ev.REQ_START, t, rid, "http", "GET", "/p", "", None, None, None, trace)


def test_a_sealed_segment_is_its_events_as_json_and_reads_back_as_tuples() -> None:
    from flightdeck.snapshot.container import encode_events

    awkward: list[Event] = [
        (
            ev.REQ_START,
            5,
            1,
            "http",
            "GET",
            "/p\udc80é",
            "q=1",
            ("1.2.3.4", 5),
            (("a", "b"),),
            9,
            None,
        ),
        (ev.LOG, 6, "cat", "h\udcff", None),  # a lone surrogate: orjson refuses it
        (ev.LOG, 7, "big", str(2**70), 2**70),  # past 64 bits: orjson refuses it
        (ev.TASK_CREATE, 8, 3, "T", "c", None, None, ("f", "x.py", 3)),
        (ev.REQ_END, 9, 1, 200, 8, "/p", False, None, 9, None),
    ]
    for encode in (_window.encode_events, encode_events):  # the core's default, the recorder's
        clock = FakeClock()
        w = Window(10 * S, 1 << 30, clock=clock, encode=encode)
        for e in awkward:
            w.append(e)
        w.maintain(force_seal=True)
        (seg,) = w._segments
        assert not seg.compressed and seg.data.startswith(b"[[8,5,1,")  # JSON arrays
        assert seg.events() == awkward  # tuples all the way down, the same values
        compressed, crc, payload = seg.stored()
        assert (compressed, payload) == (False, seg.data) and crc == zlib.crc32(seg.data)


def test_compressed_segments_are_zlib_over_the_same_json() -> None:
    clock = FakeClock()
    w = Window(10**12, 64 << 10, clock=clock)
    for batch in range(40):
        for i in range(500):
            w.append((ev.TASK_STEP, 10**9 + i, 10**9 + i + 1, batch, i))
        w.maintain(force_seal=True)
    packed = [s for s in w._segments if s.compressed]
    assert packed
    for seg in packed:
        raw = zlib.decompress(seg.data)
        assert raw.startswith(b"[[2,") and seg.events() == [tuple(e) for e in json.loads(raw)]
        assert seg.stored() == (True, zlib.crc32(seg.data), seg.data)  # crc taken when packed


def test_trace_ids_are_kept_beside_a_segment_compactly_and_in_order() -> None:
    pairs: list[tuple[Any, Any]] = [
        (1, TRACE),
        (2, "not-a-w3c-id"),
        (3, TRACE.upper()),  # would not read back the same from bytes
        (2**70, "0" * 32),  # a request id past 64 bits
        ("odd", "a" * 32),
        (1, "b" * 32),  # the same request again: its last wins in find()
    ]
    traces = Traces(pairs)
    assert list(traces.pairs()) == pairs and len(traces) == 6
    assert traces.find(1) == "b" * 32 and traces.find(2) == "not-a-w3c-id"
    assert traces.find("odd") == "a" * 32 and traces.find(99) is None
    plain = Traces([(5, TRACE), (6, "c" * 32), (5, "d" * 32)])
    assert not plain.odd and plain.find(5) == "d" * 32 and plain.find(7) is None
    assert plain.nbytes == 200 + 3 * 24 and Traces([]).nbytes == 0
    # Each way out of the packed-in-one-go path: an uppercase id, a request id past 64 bits,
    # a bool for a request id (an int to array(), not to the header).
    for odd in ((1, TRACE.upper()), (2**64, TRACE), (True, TRACE)):
        traces = Traces([(5, TRACE), odd])
        assert list(traces.pairs()) == [(5, TRACE), odd] and traces.odd == {1: odd}
        assert type(list(traces.pairs())[1][0]) is type(odd[0])


def test_a_segment_keeps_its_requests_trace_ids_and_counts_them() -> None:
    clock = FakeClock()
    w = make(clock)
    w.append(_request(1, 1, TRACE))
    w.append(_request(2, 2, None))  # no trace id: not kept
    w.append(_request(3, 3, "e" * 32))
    w.append((ev.LOG, 4, "c", "m", None))
    w.maintain(force_seal=True)
    (seg,) = w._segments
    assert list(seg.traces.pairs()) == [(1, TRACE), (3, "e" * 32)]
    assert seg.nbytes == len(seg.data) + seg.status_nbytes + seg.traces.nbytes
    assert seg.traces.nbytes > 0 and w.nbytes >= seg.nbytes
    log(w, clock, 3)
    w.maintain(force_seal=True)
    assert w._segments[1].traces is _window.NO_TRACES  # none: nothing held for them
