"""Loop instrumentation on asyncio and uvloop: steps, gaps, lifecycle, executor, install."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import pytest
import uvloop

from flightdeck import FlightRecorder
from flightdeck.instrument.context import current_request
from flightdeck.instrument.loop import LoopInstrumentation

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
THIS_FILE = __file__


@asynccontextmanager
async def recording(**options: Any) -> AsyncIterator[FlightRecorder]:
    options.setdefault("loop_blocked", None)
    rec = FlightRecorder(**options)
    rec.start()
    try:
        yield rec
    finally:
        rec.stop()


def named(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [t for t in doc["tasks"] if t["name"] == name]
    assert len(found) == 1, (name, [t["name"] for t in doc["tasks"]])
    return found[0]


def by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in doc["tasks"]}


# -- steps and gaps ----------------------------------------------------------------------------
def test_suspended_time_of_asyncio_sleep(run: Runner) -> None:
    async def sleeper() -> None:
        await asyncio.sleep(0.05)

    async def main() -> dict[str, Any]:
        async with recording() as rec:
            await asyncio.create_task(sleeper(), name="sleeper")
            return rec.snapshot().to_dict()

    doc = run(main())
    task = named(doc, "sleeper")
    assert task["coro"].endswith("sleeper")
    assert task["state"] == "done" and task["done"] is not None
    assert len(task["steps"]) == 2
    first, second = task["steps"]
    assert first[2] is not None and first[2] < 0.05  # created, then run soon
    waited, ready = second[2], second[3]
    # libuv's timers have a millisecond clock, so allow a hair early; anything far off is a bug.
    assert 0.048 <= waited < 1.0
    assert 0 <= ready < waited
    assert second[0] >= first[0] + first[1] + waited - 0.001


def test_overdue_timer_counts_as_woken_when_it_fell_due(run: Runner) -> None:
    async def sleeper() -> None:
        await asyncio.sleep(0.05)

    async def main() -> dict[str, Any]:
        async with recording() as rec:
            task = asyncio.create_task(sleeper(), name="sleeper")
            await asyncio.sleep(0)  # the sleeper arms its 50 ms timer
            time.sleep(0.15)  # and the loop is held well past the timer's due time
            await task
            return rec.snapshot().to_dict()

    doc = run(main())
    second = named(doc, "sleeper")["steps"][1]
    waited, ready = second[2], second[3]
    # Suspended for the sleep itself; the 100 ms the timer was overdue is scheduling delay.
    assert 0.048 <= waited < 0.1
    assert ready >= 0.09


def test_ready_wait_when_another_callback_holds_the_loop(run: Runner) -> None:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        async def waiter() -> None:
            await fut

        async with recording() as rec:
            task = asyncio.create_task(waiter(), name="waiter")
            await asyncio.sleep(0)  # waiter runs its first step and suspends on fut
            assert not task.done()
            # fut completes (waking the task), then a callback holds the loop for 60 ms
            # before the woken task gets to run: that is its scheduling delay.
            loop.call_soon(fut.set_result, None)
            loop.call_soon(time.sleep, 0.06)
            await task
            return rec.snapshot().to_dict()

    doc = run(main())
    steps = named(doc, "waiter")["steps"]
    assert len(steps) == 2
    assert steps[1][3] >= 0.06
    assert steps[1][2] is not None and steps[1][2] < 0.06


def test_cancelled_and_failed_tasks_have_their_state(run: Runner) -> None:
    async def boom() -> None:
        raise KeyError("x")

    async def forever() -> None:
        await asyncio.Event().wait()

    async def main() -> dict[str, Any]:
        async with recording() as rec:
            tb = asyncio.create_task(boom(), name="boom")
            tc = asyncio.create_task(forever(), name="cancelled")
            tp = asyncio.create_task(forever(), name="pending")
            await asyncio.sleep(0)
            tc.cancel()
            results = await asyncio.gather(tb, tc, return_exceptions=True)
            assert isinstance(results[0], KeyError)
            assert isinstance(results[1], asyncio.CancelledError)
            doc = rec.snapshot().to_dict()
            tp.cancel()
            return doc

    doc = run(main())
    boom_t = named(doc, "boom")
    assert boom_t["state"] == "error" and boom_t["error"] == "KeyError"
    assert named(doc, "cancelled")["state"] == "cancelled"
    pending = named(doc, "pending")
    assert pending["state"] == "pending" and pending["done"] is None
    # Where it waits right now, innermost last: asyncio's Event.wait inside forever().
    functions = [f["function"] for f in pending["awaiting"]]
    assert functions[0] == "test_cancelled_and_failed_tasks_have_their_state.<locals>.forever"
    assert functions[-1] == "Event.wait"
    assert pending["awaiting"][0]["file"] == THIS_FILE
    assert boom_t["awaiting"] is None


def test_task_cancelled_via_call_soon_is_not_a_wakeup(run: Runner) -> None:
    """``call_soon(task.cancel)`` schedules a builtin method of the task; it is no step."""

    async def forever() -> None:
        await asyncio.Event().wait()

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with recording() as rec:
            t = asyncio.create_task(forever(), name="victim")
            await asyncio.sleep(0)
            loop.call_soon(t.cancel)
            with pytest.raises(asyncio.CancelledError):
                await t
            return rec.snapshot().to_dict()

    doc = run(main())
    victim = named(doc, "victim")
    assert victim["state"] == "cancelled"
    # Its first step, and the step that ran the cancellation; not a third for cancel().
    assert len(victim["steps"]) == 2


def test_parents_across_gather_and_taskgroup(run: Runner) -> None:
    async def leaf() -> None:
        await asyncio.sleep(0)

    async def gatherer() -> None:
        await asyncio.gather(leaf(), leaf())

    async def grouper() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(leaf(), name="tg-1")
            tg.create_task(leaf(), name="tg-2")

    async def main() -> dict[str, Any]:
        async with recording() as rec:
            await asyncio.create_task(gatherer(), name="gatherer")
            await asyncio.create_task(grouper(), name="grouper")
            return rec.snapshot().to_dict()

    doc = run(main())
    tasks = by_id(doc)
    g = named(doc, "gatherer")
    children = [t for t in doc["tasks"] if t["parent"] == g["id"]]
    assert len(children) == 2 and all(c["coro"].endswith("leaf") for c in children)
    gr = named(doc, "grouper")
    assert named(doc, "tg-1")["parent"] == gr["id"] == named(doc, "tg-2")["parent"]
    for t in doc["tasks"]:
        assert t["parent"] is None or t["parent"] in tasks
    assert all(t["state"] == "done" for t in children)


def test_task_names_given_at_creation_and_renamed(run: Runner) -> None:
    async def work(ev: asyncio.Event) -> None:
        await ev.wait()

    async def main() -> dict[str, Any]:
        async with recording() as rec:
            ev = asyncio.Event()
            done = asyncio.create_task(work(ev), name="given")
            pending = asyncio.create_task(work(asyncio.Event()), name="before")
            await asyncio.sleep(0)
            pending.set_name("after")
            ev.set()
            await done
            doc = rec.snapshot().to_dict()
            pending.cancel()
            return doc

    doc = run(main())
    assert named(doc, "given")["state"] == "done"
    assert named(doc, "after")["state"] == "pending"


# -- executor ------------------------------------------------------------------------------------
def _blocking_work(x: int) -> int:
    time.sleep(0.01)
    return x * 2


def _failing_work() -> None:
    raise OSError("disk")


def test_executor_work_attributed_to_its_task(run: Runner) -> None:
    async def caller() -> None:
        loop = asyncio.get_running_loop()
        token = current_request.set(42)
        try:
            assert await loop.run_in_executor(None, _blocking_work, 1) == 2
            assert await asyncio.to_thread(_blocking_work, 2) == 4
            assert await anyio.to_thread.run_sync(_blocking_work, 3) == 6
            with pytest.raises(OSError):
                await loop.run_in_executor(None, _failing_work)
        finally:
            current_request.reset(token)

    async def main() -> dict[str, Any]:
        async with recording() as rec:
            await asyncio.create_task(caller(), name="caller")
            return rec.snapshot().to_dict()

    doc = run(main())
    task_id = named(doc, "caller")["id"]
    execs = [e for e in doc["events"] if e["kind"] == "executor"]
    assert [e["func"].rsplit(".", 1)[-1] for e in execs] == [
        "_blocking_work",
        "_blocking_work",
        "_blocking_work",
        "_failing_work",
    ]
    for e in execs:
        assert e["task"] == task_id
        assert e["request"] == 42
        assert e["start"] <= e["started"] <= e["end"]
    assert all(e["duration"] >= 0.0095 for e in execs[:3])
    # The loop's default executor names its threads "asyncio_N" (uvloop: "uvloop_N").
    assert execs[0]["thread"].startswith(("asyncio_", "uvloop_"))
    assert execs[1]["thread"].startswith(("asyncio_", "uvloop_"))
    assert execs[2]["thread"].startswith("AnyIO worker thread")
    assert execs[3]["error"] == "OSError" and execs[0]["error"] is None
    assert all(e["thread"] != threading.main_thread().name for e in execs)


def test_run_in_executor_still_refuses_coroutines(run: Runner) -> None:
    async def coro_fn() -> None:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)  # asyncio checks the callback in debug mode only; uvloop always
        async with recording():
            with pytest.raises(TypeError):
                await loop.run_in_executor(None, coro_fn)

    run(main())


# -- install / uninstall -------------------------------------------------------------------------
def _loop_state(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    return dict(vars(loop)) if hasattr(loop, "__dict__") else {}


def test_install_uninstall_leaves_the_loop_identical(run: Runner) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cls = type(loop)
        before = _loop_state(loop)
        assert loop.get_task_factory() is None
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        hooked = type(loop)
        assert hooked is not cls and issubclass(hooked, cls)
        assert hooked.__name__ == cls.__name__ and hooked.__module__ == cls.__module__
        assert loop.get_task_factory() is None  # tasks are seen in create_task instead
        await asyncio.sleep(0)
        rec.stop()
        assert type(loop) is cls
        assert loop.get_task_factory() is None
        after = _loop_state(loop)
        assert after.keys() == before.keys()
        for key, value in before.items():
            assert after[key] is value or after[key] == value, key
        rec.stop()  # twice: harmless
        assert type(loop) is cls

    run(main())


def test_user_task_factory_is_chained_and_restored(run: Runner) -> None:
    made: list[Any] = []

    def user_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    async def child() -> int:
        return 7

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(user_factory)
        async with recording() as rec:
            assert await asyncio.create_task(child(), name="chained") == 7
            doc = rec.snapshot().to_dict()
            assert [t.get_name() for t in made] == ["chained"]
        assert loop.get_task_factory() is user_factory
        return doc

    doc = run(main())
    assert named(doc, "chained")["state"] == "done"


def test_context_passes_through_the_factory(run: Runner) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def reader() -> str:
        return var.get()

    async def main() -> str:
        async with recording():
            ctx = contextvars.copy_context()
            ctx.run(var.set, "from-context")
            return await asyncio.get_running_loop().create_task(reader(), context=ctx)

    assert run(main()) == "from-context"


# asyncio.eager_task_factory and Task(eager_start=) do not exist before 3.12: nothing to test.
@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
def test_eager_task_factory_passes_through(run: Runner) -> None:
    async def immediate() -> int:
        return 1

    async def later() -> int:
        await asyncio.sleep(0)
        return 2

    async def parent() -> None:
        # A child created during the parent's eager first step.
        await asyncio.create_task(later(), name="eager-child")

    async def main() -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        probe = immediate()
        try:
            await asyncio.create_task(probe)
        except TypeError:
            probe.close()
            # uvloop on 3.13 passes eager_start= to the factory, which asyncio's own eager
            # factory refuses: flightdeck must change nothing about that either.
            async with recording():
                probe = immediate()
                with pytest.raises(TypeError):
                    asyncio.create_task(probe)  # noqa: RUF006 - it raises
                probe.close()
            loop.set_task_factory(None)  # or the runner's own shutdown tasks fail too
            return None
        async with recording() as rec:
            t1 = asyncio.create_task(immediate(), name="eager-done")
            assert t1.done() and t1.result() == 1  # it really ran eagerly
            t2 = asyncio.create_task(later(), name="eager-later")
            assert not t2.done()
            assert await t2 == 2
            await asyncio.create_task(parent(), name="eager-parent")
            doc = rec.snapshot().to_dict()
            stats = rec.stats
        assert loop.get_task_factory() is asyncio.eager_task_factory  # type: ignore[attr-defined]
        assert stats["live_tasks"] == 0  # the eagerly finished ones are not "alive" forever
        loop.set_task_factory(None)
        return doc

    doc = run(main())
    if doc is None:
        return
    assert named(doc, "eager-done")["state"] == "done"
    later_t = named(doc, "eager-later")
    assert later_t["state"] == "done" and len(later_t["steps"]) >= 1
    parent_t = named(doc, "eager-parent")
    assert parent_t["coro"].endswith("parent")
    assert named(doc, "eager-child")["parent"] == parent_t["id"]


def test_two_loops_in_two_threads(run: Runner) -> None:
    barrier = threading.Barrier(2, timeout=10)
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def worker(label: str) -> None:
        async def job() -> None:
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            async with recording() as rec:
                barrier.wait()  # both loops are instrumented at once
                await asyncio.create_task(job(), name=f"job-{label}")
                results[label] = (rec.snapshot().to_dict(), type(loop))
                barrier.wait()

        try:
            run(main())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    doc_a, cls_a = results["a"]
    doc_b, cls_b = results["b"]
    assert cls_a is not cls_b  # each loop got its own instrumented class
    assert len(named(doc_a, "job-a")["steps"]) == 3
    assert len(named(doc_b, "job-b")["steps"]) == 3
    assert not any(t["name"] == "job-b" for t in doc_a["tasks"])
    assert not any(t["name"] == "job-a" for t in doc_b["tasks"])


def test_a_loop_is_instrumented_by_one_recorder_at_a_time(run: Runner) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cls = type(loop)
        async with recording() as first:
            second = FlightRecorder(loop_blocked=None)
            with pytest.raises(RuntimeError, match="already instrumented"):
                second.start()
            assert not second.enabled
            assert not any(second.coverage.values())
            second.stop()
            assert first.enabled and type(loop) is not cls
        assert type(loop) is cls

    run(main())


def test_install_is_idempotent(run: Runner) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cls = type(loop)
        async with recording() as rec:
            inst = rec._instrumentation
            assert isinstance(inst, LoopInstrumentation)
            hooked = type(loop)
            inst.install()
            assert type(loop) is hooked
            inst.uninstall()
            inst.uninstall()
            assert type(loop) is cls

    run(main())


# -- references ----------------------------------------------------------------------------------
def test_nothing_in_the_window_keeps_tasks_alive(run: Runner) -> None:
    refs: list[weakref.ref[Any]] = []

    class Payload:
        pass

    async def waits_long(payload: Payload) -> None:
        await asyncio.sleep(0.03)  # over the wait threshold: its await chain is recorded

    async def fails(payload: Payload) -> None:
        await asyncio.sleep(0)
        raise ValueError("keeps a traceback")

    def in_thread(payload: Payload) -> Payload:
        return payload

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with recording(wait_threshold=0.01) as rec:
            p1, p2, p3 = Payload(), Payload(), Payload()
            t1 = asyncio.create_task(waits_long(p1))
            t2 = asyncio.create_task(fails(p2))
            fut = loop.run_in_executor(None, in_thread, p3)
            for obj in (t1, t2, t1.get_coro(), t2.get_coro(), fut, p1, p2, p3):
                refs.append(weakref.ref(obj))
            del obj
            await asyncio.wait([t1, t2, fut])
            assert isinstance(t2.exception(), ValueError)
            del t1, t2, fut, p1, p2, p3
            rec.snapshot()
            # The handle running this step holds its wakeup's argument (the awaited task);
            # asyncio itself keeps that until the next step.
            await asyncio.sleep(0)
            gc.collect()
            alive = [r() for r in refs if r() is not None]
            assert alive == []
            # ... while the recorder still holds their events.
            doc = rec.snapshot().to_dict()
            assert rec.enabled
            return doc

    doc = run(main())
    coros = {t["coro"].rsplit(".", 1)[-1] for t in doc["tasks"]}
    assert {"waits_long", "fails"} <= coros
    assert any(t["waits"] for t in doc["tasks"])


# -- what users see ----------------------------------------------------------------------------
def test_get_coro_and_repr_unchanged(run: Runner) -> None:
    async def sample() -> None:
        await asyncio.sleep(0)

    async def main() -> tuple[str, str]:
        coro = sample()
        plain = asyncio.create_task(coro, name="same")
        plain_repr = repr(plain)
        await plain
        async with recording():
            coro2 = sample()
            task = asyncio.create_task(coro2, name="same")
            assert task.get_coro() is coro2
            assert type(task) is asyncio.Task
            hooked_repr = repr(task)
            await task
        return plain_repr, hooked_repr

    plain_repr, hooked_repr = run(main())
    assert "flightdeck" not in hooked_repr
    # Same shape; only the line of the creation site differs between the two.
    norm = [r.split(" coro=")[0] for r in (plain_repr, hooked_repr)]
    assert norm[0] == norm[1]
    assert "sample()" in hooked_repr


def test_waits_name_the_await_site(run: Runner) -> None:
    async def slow_lock(lock: asyncio.Lock) -> None:
        async with lock:  # the await site that waited
            pass

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with recording(wait_threshold=0.02) as rec:
            lock = asyncio.Lock()
            await lock.acquire()
            t = asyncio.create_task(slow_lock(lock), name="locker")
            await asyncio.sleep(0)
            loop.call_later(0.05, lock.release)
            await t
            return rec.snapshot().to_dict()

    doc = run(main())
    locker = named(doc, "locker")
    assert len(locker["waits"]) == 1
    wait = locker["waits"][0]
    assert wait["duration"] >= 0.045
    frames = wait["stack"]
    assert frames[0]["function"].endswith("slow_lock") and frames[0]["file"] == THIS_FILE
    assert frames[-1]["function"] == "Lock.acquire"
    # A short suspension is not a wait.
    assert all(w["duration"] >= 0.02 for t in doc["tasks"] for w in t["waits"])


# -- degraded mode -------------------------------------------------------------------------------
def _degraded_doc(loop: asyncio.AbstractEventLoop) -> tuple[dict[str, Any], dict[str, Any]]:
    async def work() -> None:
        await asyncio.sleep(0)

    async def boom() -> None:
        raise ValueError

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        cls = type(loop)
        async with recording() as rec:
            assert type(loop) is cls
            await asyncio.create_task(work(), name="w")
            with pytest.raises(ValueError):
                await asyncio.create_task(boom(), name="b")
            stats = rec.stats
            assert stats["live_tasks"] == 0
            return rec.snapshot().to_dict(), stats

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _check_degraded(doc: dict[str, Any], stats: dict[str, Any]) -> None:
    for cov in (stats["coverage"], doc["process"]["coverage"]):
        assert cov["task_lifecycle"] is True
        assert cov["task_steps"] is False and cov["scheduling_delay"] is False
    assert stats["instrumentation"]["steps_hooked"] is False
    assert named(doc, "w")["state"] == "done"
    b = named(doc, "b")
    assert b["state"] == "error" and b["error"] == "ValueError"
    assert named(doc, "w")["steps"] == []


def test_degraded_when_the_loop_class_cannot_be_swapped() -> None:
    # uvloop's Cython base class is immutable: ``__class__`` assignment raises TypeError.
    loop = uvloop.loop.Loop()
    with pytest.raises(TypeError):
        loop.__class__ = type("X", (type(loop),), {"__slots__": ()})
    doc, stats = _degraded_doc(loop)
    _check_degraded(doc, stats)
    assert doc["process"]["loop"] == "uvloop"


def test_degraded_asyncio_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: LoopInstrumentation) -> None:
        raise TypeError("__class__ assignment only supported for mutable types")

    monkeypatch.setattr(LoopInstrumentation, "_install_class", refuse)
    doc, stats = _degraded_doc(asyncio.new_event_loop())
    _check_degraded(doc, stats)


def test_flightdeck_install_once_per_loop(run: Runner) -> None:
    import flightdeck

    async def main() -> FlightRecorder:
        rec = flightdeck.install(loop_blocked=None)
        try:
            assert flightdeck.install() is rec  # idempotent on the same loop
            assert rec.enabled
        finally:
            rec.stop()
        return rec

    first = run(main())
    second = run(main())  # a new loop (maybe at the same address) gets its own recorder
    assert first is not second
