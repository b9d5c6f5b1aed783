"""The native window: exact round trips, the byte bound, age eviction, status, threads."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightdeck.core.events import (
    EXECUTOR,
    GC,
    LOG,
    LOOP_BLOCK,
    LOOP_CALLBACK,
    LOOP_LAG,
    MARK,
    REGION,
    REQ_END,
    REQ_START,
    SPECS,
    TASK_CANCEL,
    TASK_CREATE,
    TASK_DONE,
    TASK_SLOW_STEP,
    TASK_STEP,
    TASK_WAIT,
    native_layout,
)

# A pure install has no extension to test; FLIGHTDECK_EXPECT_NATIVE=1 fails this skip.
native = pytest.importorskip("flightdeck.core._native", reason="native core not built")

S = 1_000_000_000
T0 = 1_000_000 * S  # a plausible perf_counter_ns value

# Numbers below the largest kind that no kind has: any layout is stored.
UNUSED_KINDS = sorted(set(range(1, max(SPECS))) - set(SPECS))


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def held(w: Any) -> list[tuple[Any, ...]]:
    segs = w._freeze_parts()[0]
    return [e for s in segs for e in s.events()]


def status(w: Any) -> tuple[dict[Any, Any], dict[Any, Any]]:
    _, tasks, requests, _, _ = w._freeze_parts()
    return tasks, requests


def test_the_encoder_has_the_table_s_layout_for_every_kind() -> None:
    # A kind missing from the built module's table would be stored in the larger generic
    # form, silently: the module shows the layouts it was built with.
    layouts = native.SCHEMA.split(",")
    assert len(layouts) == max(SPECS) + 1
    for kind, spec in SPECS.items():
        assert layouts[kind] == native_layout(spec), spec.name
    assert all(layouts[k] == "" for k in UNUSED_KINDS)


# -- strategies ---------------------------------------------------------------------------
ts = st.integers(min_value=0, max_value=2**62)
tid = st.integers(min_value=2**20, max_value=2**47)
text = st.text(max_size=40)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**100), max_value=2**100),
    text,
    st.floats(allow_nan=False),
    st.binary(max_size=20),
)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.tuples(inner, inner), st.lists(inner, max_size=3)),
    max_leaves=6,
)
frames = st.lists(st.tuples(text, text, st.integers(0, 10_000)), max_size=5).map(tuple)
opt_tid = st.one_of(st.none(), tid)
t_or_0 = st.one_of(st.just(0), ts)

events = st.one_of(
    st.tuples(st.just(TASK_CREATE), ts, tid, text, text, opt_tid, value, st.none() | frames),
    st.tuples(st.just(TASK_STEP), ts, ts, tid, t_or_0),
    st.tuples(st.just(TASK_DONE), ts, tid, st.sampled_from(["done", "error"]), value, text),
    st.tuples(st.just(TASK_WAIT), ts, ts, tid, frames),
    st.tuples(st.just(LOOP_BLOCK), ts, ts, value, frames),
    st.tuples(st.just(LOOP_CALLBACK), ts, ts, text),
    st.tuples(st.just(LOOP_LAG), ts, st.integers(0, 2**40)),
    st.tuples(st.just(REQ_START), ts, value, text, text, text, text, value, value, opt_tid, value),
    st.tuples(
        st.just(REQ_END), ts, value, value, t_or_0, value, st.booleans(), value, t_or_0, value
    ),
    st.tuples(st.just(GC), ts, ts, st.integers(0, 2), st.integers(0, 10**6)),
    st.tuples(st.just(TASK_CANCEL), ts, tid, frames, st.none() | st.just("timeout")),
    st.tuples(st.just(TASK_SLOW_STEP), ts, ts, tid, frames),
    st.tuples(st.just(REGION), ts, ts, text, opt_tid),
    st.tuples(st.just(LOG), ts, text, text, opt_tid),
    st.tuples(st.just(EXECUTOR), ts, t_or_0, t_or_0, text, text, opt_tid, value, value),
    st.tuples(st.sampled_from([*UNUSED_KINDS, MARK]), ts, value, value),
    # off-layout events: stored generically, still exact
    st.tuples(st.integers(-3, 40), value, value),
    st.tuples(st.just(TASK_STEP), st.booleans(), ts, value, ts),
)


@settings(max_examples=int(os.environ.get("FLIGHTDECK_HYPOTHESIS_EXAMPLES", 300)), deadline=None)
@given(st.lists(events, min_size=1, max_size=40))
def test_every_kind_round_trips_exactly(evs: list[tuple[Any, ...]]) -> None:
    w = native.Window(10 * S, 64 << 20)
    for e in evs:
        w.append(e)
    out = held(w)
    assert out == evs
    # same types too (True is not 1, 1.0 is not 1)
    assert [[type(x) for x in e] for e in out] == [[type(x) for x in e] for e in evs]
    assert w.recorded == len(evs) and w.dropped == 0


# Ints read from their digits where they have at most two (30-bit digits: 2**60): the
# boundaries on both sides, both signs, in every field kind (T, R, N, n, I and V).
EDGES = [
    b + d
    for b in (0, 2**15, 2**30, 2**45, 2**60, 2**62, 2**63, 2**64)
    for d in (-1, 0, 1)
    if b + d >= 0
]


@pytest.mark.parametrize("sign", [1, -1])
def test_ints_at_digit_boundaries_round_trip(sign: int) -> None:
    w = native.Window(10 * S, 1 << 20)
    evs: list[tuple[Any, ...]] = []
    for v in (sign * x for x in EDGES):
        evs.append((LOOP_LAG, T0, v))  # N
        evs.append((LOG, T0, "c", ("m", v, [v]), None))  # V, nested
        if 0 <= v < 2**62:
            evs.append((TASK_STEP, v, v + 1, 2**20 + v, 0))  # T, R, I
            evs.append((REQ_END, T0, v, v, 0, None, False, None, 0, v))  # n
    for e in evs:
        w.append(e)
    assert held(w) == evs
    assert w.dropped == 0


def test_the_same_str_object_again_round_trips_across_generations() -> None:
    # The encoder knows strings it holds by address: many distinct ones (sharing address
    # slots), each repeated, through several generations (the table starts empty in each).
    w = native.Window(10 * S, 256 << 10)
    names = [f"module.function_{i}" * 3 for i in range(600)]
    evs = [(LOOP_CALLBACK, T0 + i, T0 + i + 1, names[(i * 7) % len(names)]) for i in range(6000)]
    for e in evs:
        w.append(e)
    out = held(w)
    assert out == evs[len(evs) - len(out) :] and len(out) > 1000
    assert w._freeze_parts()[0][0] is not w._freeze_parts()[0][-1]  # several generations


@pytest.mark.parametrize("distinct", [60, 160, 300])
def test_strings_taking_turns_in_the_address_cache_each_keep_their_own_index(
    distinct: int,
) -> None:
    # A short cycle of held strings: about one, two or more per set of the encoder's address
    # cache, so a string pushed to its set's second entry is found there on its next turn
    # (a second entry answering with the first's index would decode as another string).
    w = native.Window(10 * S, 64 << 20)
    names = [f"handler.route_{i}/" * 4 for i in range(distinct)]
    evs = [(LOOP_CALLBACK, T0 + i, T0 + i + 1, names[i % distinct]) for i in range(20 * distinct)]
    for e in evs:
        w.append(e)
    assert held(w) == evs


def test_typed_step_matches_the_tuple_path() -> None:
    w = native.Window(10 * S, 1 << 20)
    w.emit_step(T0 + 10, T0 + 20, 140_000_000_123, T0 + 5)
    w.append((TASK_STEP, T0 + 30, T0 + 40, 140_000_000_123, 0))
    assert held(w) == [
        (TASK_STEP, T0 + 10, T0 + 20, 140_000_000_123, T0 + 5),
        (TASK_STEP, T0 + 30, T0 + 40, 140_000_000_123, 0),
    ]
    assert w.last_event_time() == T0 + 40


def test_bad_input_never_raises_and_is_counted() -> None:
    w = native.Window(10 * S, 1 << 20)
    bad: list[Any] = ["x", (), (1,), None, [1, 2], (LOG, T0, object(), "m", None), (LOG, {1: 2})]
    for e in bad:
        w.append(e)
    w.emit_step("a", 1, 2, 3)
    w.emit_step(1, 2)
    assert w.recorded == 0
    assert w.dropped == len(bad) + 2 and w.seal_errors == len(bad) + 2
    deep: Any = ()
    for _ in range(20):
        deep = (deep,)
    w.append((LOG, T0, "c", deep, None))
    assert w.seal_errors == len(bad) + 3


def test_a_str_subclass_is_stored_as_str() -> None:
    class Name(str):
        def __hash__(self) -> int:  # would run Python code inside the encoder
            raise AssertionError

    w = native.Window(10 * S, 1 << 20)
    w.append((LOG, T0, Name("cat"), "m", None))
    (e,) = held(w)
    assert e == (LOG, T0, "cat", "m", None) and type(e[2]) is str


def test_clock_is_perf_counter_ns() -> None:
    for _ in range(1000):
        a = time.perf_counter_ns()
        b = native.clock()
        c = time.perf_counter_ns()
        assert a <= b <= c


@pytest.mark.parametrize("max_bytes", [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20])
def test_byte_bound_holds_under_bursts(max_bytes: int) -> None:
    clock = FakeClock()
    w = native.Window(3600 * S, max_bytes, clock=clock)
    t = T0
    n = 0
    stack = tuple((f"f{i}", f"/srv/app/module{i}.py", i) for i in range(30))
    for _burst in range(6):
        for i in range(40_000):
            t += 1000
            k = i % 8
            if k == 0:
                e: tuple[Any, ...] = (
                    REQ_START,
                    t,
                    n,
                    "http",
                    "GET",
                    f"/items/{n}",
                    "",
                    ("127.0.0.1", 40000 + i % 1000),
                    None,
                    140_000_000_000 + (i % 64) * 64,
                    None,
                )
            elif k == 1:
                e = (REQ_END, t, n - 1, 200, t - 500, "/items/{id}", False, None, t, None)
            elif k == 2:
                e = (
                    TASK_CREATE,
                    t,
                    140_000_000_000 + (i % 640) * 64,
                    f"Task-{n}",
                    "handler",
                    None,
                    n,
                    None,
                )
            elif k == 3 and i % 400 == 3:
                e = (TASK_WAIT, t, t + 9, 140_000_000_000, stack)
            elif k == 4:
                e = (LOG, t, "app", "x" * (i % 300), None)
            else:
                e = (TASK_STEP, t, t + 700, 140_000_000_000 + (i % 640) * 64, t - 300)
            w.append(e)
            n += 1
            if i % 997 == 0:
                assert w.nbytes <= max_bytes
        clock.now = t
        w.maintain()
        assert w.nbytes <= max_bytes
    # every event is held, evicted by age or dropped (at emit or pushed out by bytes)
    assert w.events + w.evicted + w.dropped == n and w.seal_errors == 0
    # what is held decodes, and is the most recent
    out = held(w)
    assert len(out) == w.events
    assert out[-1][1] == t or out[-1][0] == TASK_STEP
    if max_bytes <= 4 << 20:
        assert w.dropped > 0  # these budgets are far below 240k events


def test_a_single_event_bigger_than_a_generation_is_dropped() -> None:
    w = native.Window(10 * S, 64 << 10)
    w.append((LOG, T0, "c", "x" * (1 << 20), None))
    assert w.events == 0 and w.dropped == 1 and w.overflows == 1
    w.append((LOG, T0, "c", "small", None))
    assert w.events == 1


def test_tiny_budget_holds() -> None:
    w = native.Window(10 * S, 100)
    for i in range(100):
        w.append((LOG, T0 + i, "c", "m", None))
        assert w.nbytes <= 100
    assert w.dropped > 50 and w.events + w.evicted + w.dropped == 100


def test_eviction_by_age_with_a_fake_clock() -> None:
    clock = FakeClock()
    w = native.Window(10 * S, 64 << 20, clock=clock)
    for sec in range(15):
        clock.now = T0 + sec * S
        for i in range(10):
            w.append((LOG, clock.now, "c", f"s{sec}-{i}", None))
        w.maintain(force_seal=True)
    # At 14 s the horizon is 4 s: the generations that ended at 0..3 s are gone.
    assert w.segments == 11 and w.evicted == 40 and w.dropped == 0
    clock.now = T0 + 16 * S + 1
    w.maintain()
    assert w.segments == 8 and w.evicted == 70
    messages = [e[3] for e in held(w)]
    assert messages[0] == "s7-0" and messages[-1] == "s14-9"


def test_generations_rotate_by_age_without_force() -> None:
    clock = FakeClock()
    w = native.Window(10 * S, 64 << 20, clock=clock)
    assert w.generation_ns * (w.generations - 1) <= 10 * S
    for step in range(40):
        clock.now = T0 + step * (S // 2)
        w.append((LOG, clock.now, "c", str(step), None))
        w.maintain()
    # everything younger than the window is still held
    msgs = [e[3] for e in held(w)]
    assert msgs[-1] == "39"
    assert int(msgs[0]) <= 40 - 20


def test_status_is_carried_across_generations() -> None:
    clock = FakeClock()
    w = native.Window(10 * S, 64 << 20, clock=clock)
    t1, t2 = 140_000_000_064, 140_000_000_128
    w.append((TASK_CREATE, T0, t1, "long", "main", None, None, None))
    w.append((TASK_CREATE, T0, t2, "short", "main", None, None, None))
    w.append((REQ_START, T0, 7, "http", "GET", "/", "", None, None, t1, None))
    w.append((REQ_START, T0, 8, "http", "GET", "/b", "", None, None, t2, None))
    w.append((TASK_DONE, T0 + 1, t2, "done", None, "short"))
    w.append((REQ_END, T0 + 1, 8, 200, 0, None, False, None, 0, None))
    w.maintain(force_seal=True)
    for sec in range(1, 30):
        clock.now = T0 + sec * S
        w.append((LOG, clock.now, "c", "tick", None))
        w.maintain(force_seal=True)
    tasks, requests = status(w)
    assert set(tasks) == {t1} and tasks[t1][3] == "long"
    assert set(requests) == {7} and requests[7][5] == "/"
    assert all(e[0] == LOG for e in held(w))


def test_status_tables_are_bounded() -> None:
    w = native.Window(10 * S, 64 << 10)
    for i in range(10_000):
        w.append((TASK_CREATE, T0 + i, 140_000_000_000 + i * 64, "t", "c", None, None, None))
        assert w.nbytes <= 64 << 10


def test_threads_emit_concurrently() -> None:
    w = native.Window(10 * S, 64 << 20)
    n, k = 20_000, 4
    start = threading.Barrier(k)

    def run(name: str) -> None:
        start.wait()
        for i in range(n):
            w.append((LOG, T0 + i, name, str(i), None))

    threads = [threading.Thread(target=run, args=(f"t{j}",)) for j in range(k)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out = held(w)
    assert len(out) == n * k and w.dropped == 0
    for j in range(k):
        mine = [int(e[3]) for e in out if e[2] == f"t{j}"]
        assert mine == list(range(n))


def test_freeze_is_a_stable_view() -> None:
    w = native.Window(10 * S, 64 << 20)
    for i in range(100):
        w.append((LOG, T0 + i, "c", str(i), None))
    segs = w._freeze_parts()[0]
    for i in range(100, 200):
        w.append((LOG, T0 + i, "c", str(i), None))
    w.maintain(force_seal=True)
    w.clear()
    assert [e[3] for s in segs for e in s.events()] == [str(i) for i in range(100)]


def test_clear_and_after_fork_start_empty() -> None:
    w = native.Window(10 * S, 1 << 20)
    w.append((TASK_CREATE, T0, 140_000_000_064, "t", "c", None, None, None))
    w.after_fork()
    assert w.events == 0 and w.recorded == 0 and status(w) == ({}, {})
    assert w.last_event_time() is None
    w.append((LOG, T0, "c", "m", None))
    assert held(w) == [(LOG, T0, "c", "m", None)]


def test_a_subclass_keeps_attributes() -> None:
    class W(native.Window):  # type: ignore[misc]
        pass

    w = W(10 * S, 1 << 20)
    w.live_requests = {1: 2}
    w.append((TASK_CREATE, 5, 0x1000, "Task-1", "main", None, None, None))
    assert list(w.live_tasks) == [0x1000]
    w.clear()
    assert w.live_requests == {}
    assert w.live_tasks == {}


def test_live_tasks_is_the_status_table_kept_by_create_and_done() -> None:
    # The hook and the window share one table of live tasks: the window keeps it from the
    # events it records, including a TASK_DONE written without a tuple.
    w = native.Window(10 * S, 1 << 20)
    create = (TASK_CREATE, 5, 0x1000, "Task-1", "main", None, 7, None)
    w.append(create)
    live = w.live_tasks
    assert live == {0x1000: create}
    assert live.get(0x1000) is create and 0x1000 in live and len(live) == 1
    w.append((TASK_DONE, 9, 0x1000, "done", None, "Task-1"))
    assert live == {} and live.get(0x1000) is None and len(live) == 0


def test_repeated_one_off_strings_round_trip() -> None:
    # a task's name at its creation and its end (inline, then a back-reference), a path
    # seen over and over (then interned), and the same across a generation boundary
    w = native.Window(10 * S, 64 << 20)
    evs: list[tuple[Any, ...]] = []
    for i in range(50):
        name = "".join(["Task-", str(i)])  # a fresh, non-interned str
        path = "".join(["/items/", "x"])
        evs.append((TASK_CREATE, T0 + i, 140_000_000_000 + i * 64, name, "c", None, i, None))
        evs.append((LOG, T0 + i, "c", path, None))
        evs.append((TASK_DONE, T0 + i, 140_000_000_000 + i * 64, "done", None, name))
        if i == 25:
            for e in evs:
                w.append(e)
            w.maintain(force_seal=True)
    for e in evs[78:]:
        w.append(e)
    assert held(w) == evs


@pytest.mark.parametrize("max_bytes", [64 << 10, 1 << 20, 4 << 20])
def test_byte_bound_holds_with_more_live_tasks_and_requests_than_it_can_describe(
    max_bytes: int,
) -> None:
    # Both status tables share one eighth of the budget: 10k requests in flight, each with
    # its task, overflowed it when each table had that share to itself.
    clock = FakeClock()
    w = native.Window(3600 * S, max_bytes, clock=clock)
    t = T0
    for i in range(10_000):
        t += 1000
        clock.now = t
        w.append((TASK_CREATE, t, 16 * (i + 1), f"Task-{i}", "handler", None, i, None))
        w.append(
            (
                REQ_START,
                t,
                i,
                "http",
                "GET",
                f"/r{i}",
                "",
                ("127.0.0.1", 1),
                None,
                16 * (i + 1),
                None,
            )
        )
    # Then fill the ring with steps: the window is full while both tables are at their limit.
    for j in range(400_000):
        t += 1000
        clock.now = t
        w.append((TASK_STEP, t, t + 500, 16 * (j % 10_000 + 1), t - 100))
        if j % 20_000 == 0:
            assert w.nbytes <= max_bytes, (j, w.nbytes)
    w.maintain()
    assert w.nbytes <= max_bytes


def test_live_tasks_reads_and_writes_as_a_mapping() -> None:
    # The pure-Python hook and the watchdog use it as they use the pure window's dict.
    w = native.Window(10 * S, 1 << 20)
    live = w.live_tasks
    a = (TASK_CREATE, 5, 16, "Task-1", "main", None, None, None)
    b = (TASK_CREATE, 6, 0, "Task-0", "main", None, None, None)
    live[16] = a
    live[0] = b  # 0 and 1 are ids too (the table keeps them shifted)
    assert sorted(live) == [0, 16] and sorted(live.keys()) == [0, 16]
    assert sorted(live.items()) == [(0, b), (16, a)]
    assert live.copy() == {0: b, 16: a} and live == {16: a, 0: b} and live != {}
    assert live[16] is a and live.get(17, "none") == "none"
    assert live.pop(16) is a and live.pop(16, None) is None
    with pytest.raises(KeyError):
        live.pop(16)
    with pytest.raises(KeyError):
        del live[16]
    with pytest.raises(KeyError):
        live[-1]
    with pytest.raises(TypeError):
        live["x"] = a
    assert "x" not in live and -1 not in live and 2**70 not in live
    del live[0]
    assert len(live) == 0 and repr(live) == "LiveTasks({})"


def test_the_live_tasks_head_each_new_generation() -> None:
    # A generation opened while tasks are alive starts with their TASK_CREATE (its status),
    # read from the native table.
    w = native.Window(10 * S, 1 << 20)
    create = (TASK_CREATE, T0, 0x2000, "Task-7", "main", None, 3, None)
    w.append(create)
    w.maintain(True)  # seal: the next event opens a generation headed by the status
    w.append((TASK_STEP, T0 + 10, T0 + 20, 0x2000, T0 + 5))
    segments, tasks, _reqs, _dropped, _now = w._freeze_parts()
    assert len(segments) == 2
    assert tasks == {}  # the status at the window's start: before the task was made
    assert segments[-1].status()[0] == {0x2000: create}
