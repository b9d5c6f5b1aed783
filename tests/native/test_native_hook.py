"""The native call_soon and step runner, on asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import operator
import sys
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flightdeck.instrument.loop import _STEP_TYPE

# A pure install (no compiler, CC=false) has no extension to test; where one is expected
# (FLIGHTDECK_EXPECT_NATIVE=1, the Makefile's native runs) tests/conftest.py fails this skip.
native = pytest.importorskip("flightdeck.core._native", reason="native core not built")

TASK_CREATE, TASK_STEP, TASK_DONE, TASK_WAIT = 1, 2, 3, 4


# The C Task's step callback type, as the hook finds it (instrument/loop.py).
STEP_TYPE = _STEP_TYPE


def loops() -> Iterator[tuple[str, Callable[[], asyncio.AbstractEventLoop], bool]]:
    yield "asyncio-one-frame", asyncio.new_event_loop, True
    yield "asyncio-base", asyncio.new_event_loop, False
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return
    yield "uvloop", uvloop.new_event_loop, False


class Hooked:
    def __init__(self, make: Callable[[], asyncio.AbstractEventLoop], fast: bool, **kw: Any):
        self.loop = make()
        self.base = type(self.loop)
        self.window = native.Window(10**10, 1 << 22)
        self.live: dict[int, Any] = {}
        self.waits: list[tuple[Any, ...]] = []
        wait_cb = kw.get("wait_cb", lambda task, raw, prev, tq: self.waits.append((raw, prev, tq)))
        self.runner = native.StepRunner(
            self.window,
            self.live,
            wait_cb,
            kw.get("wait_ns", 10**9),
            STEP_TYPE,
            native_wait=kw.get("native_wait", False),
        )
        handle = asyncio.events.Handle if fast else None
        cs = native.CallSoon(self.runner, self.base.call_soon, handle)
        ns = {"__slots__": (), "call_soon": cs, "__module__": self.base.__module__}
        self.loop.__class__ = type(self.base.__name__, (self.base,), ns)

    def events(self) -> list[tuple[Any, ...]]:
        return [e for s in self.window._freeze_parts()[0] for e in s.events()]

    def close(self) -> None:
        self.loop.__class__ = self.base
        self.loop.close()


PARAMS = [pytest.param(m, f, id=name) for name, m, f in loops()]


@pytest.mark.parametrize(("make", "fast"), PARAMS)
def test_steps_and_completions_are_recorded(make: Any, fast: bool) -> None:
    h = Hooked(make, fast)

    async def child(i: int) -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if i == 3:
            raise ValueError("boom")
        return i

    async def main() -> list[Any]:
        tasks = [asyncio.create_task(child(i), name=f"c{i}") for i in range(5)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        out = h.loop.run_until_complete(main())
    finally:
        h.close()
    assert out[:3] == [0, 1, 2] and isinstance(out[3], ValueError)
    evs = h.events()
    steps = [e for e in evs if e[0] == TASK_STEP]
    done = {e[5]: e for e in evs if e[0] == TASK_DONE}
    assert set(done) >= {f"c{i}" for i in range(5)}
    assert done["c3"][3:5] == ("error", "ValueError") and done["c0"][3:5] == ("done", None)
    # three steps per child (start, two wakeups after sleep(0))
    tids = {e[2] for e in done.values() if e[5].startswith("c")}
    assert sum(1 for e in steps if e[3] in tids) == 15
    for e in steps:
        assert e[1] <= e[2] and (e[4] == 0 or e[4] <= e[1])
    assert h.runner.errors == 0 and h.runner.tracked == 0


@pytest.mark.parametrize(("make", "fast"), PARAMS)
def test_other_callbacks_pass_through_untouched(make: Any, fast: bool) -> None:
    h = Hooked(make, fast)
    var: contextvars.ContextVar[str] = contextvars.ContextVar("v")
    seen: list[Any] = []
    try:
        ctx = contextvars.copy_context()
        ctx.run(var.set, "in-ctx")
        h.loop.call_soon(lambda a, b: seen.append((a, b, var.get("none"))), 1, 2, context=ctx)
        h.loop.call_soon(h.loop.stop)
        h.loop.run_forever()
        with pytest.raises(TypeError):
            h.loop.call_soon(print, context=ctx, bogus=1)  # type: ignore[call-arg]
    finally:
        h.close()
    assert seen == [(1, 2, "in-ctx")]
    assert h.events() == []


@pytest.mark.parametrize(("make", "fast"), PARAMS)
def test_closed_and_debug_loops_behave_as_without_the_hook(make: Any, fast: bool) -> None:
    h = Hooked(make, fast)

    async def main() -> int:
        await asyncio.sleep(0)
        return 7

    h.loop.set_debug(True)
    try:
        assert h.loop.run_until_complete(main()) == 7
    finally:
        h.loop.set_debug(False)
    h.loop.close()
    with pytest.raises(RuntimeError):
        h.loop.call_soon(print)
    h.loop.__class__ = h.base
    assert any(e[0] == TASK_STEP for e in h.events())


@pytest.mark.parametrize(("make", "fast"), PARAMS)
def test_a_long_wait_calls_back(make: Any, fast: bool) -> None:
    h = Hooked(make, fast, wait_ns=1)

    async def main() -> None:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, None)
        await fut

    try:
        h.loop.run_until_complete(main())
    finally:
        h.close()
    assert h.waits and all(prev < tq for _, prev, tq in h.waits)


@pytest.mark.parametrize(("make", "fast"), PARAMS)
def test_a_long_wait_is_recorded_natively_with_its_await_chain(make: Any, fast: bool) -> None:
    def unused(*a: Any) -> None:
        raise AssertionError("native_wait must not call wait_cb")

    h = Hooked(make, fast, wait_ns=5_000_000, native_wait=True, wait_cb=unused)

    async def parked(fut: asyncio.Future[None]) -> None:
        await fut

    async def main() -> int:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.02, fut.set_result, None)
        task = asyncio.create_task(parked(fut), name="parked")
        await asyncio.sleep(0)  # its first step: it is now suspended on fut
        await task
        return id(task)

    try:
        tid = h.loop.run_until_complete(main())
    finally:
        h.close()
    assert h.runner.errors == 0
    waits = [e for e in h.events() if e[0] == TASK_WAIT and e[3] == tid]
    assert len(waits) == 1, waits
    _, prev, tq, _, chain = waits[0]
    assert tq - prev > 5_000_000
    assert [f[0].rpartition(".")[2] for f in chain] == ["parked"]
    assert chain[0][1] == __file__ and isinstance(chain[0][2], int)


def test_native_await_chain_walks_as_the_python_one() -> None:
    import types

    from flightdeck.instrument import frames

    class Frameless:
        """An awaitable without a frame (like the native request) that says what it awaits."""

        def __init__(self, inner: Any) -> None:
            self.cr_await = inner

    @types.coroutine
    def park() -> Any:
        yield

    async def leaf() -> None:
        await park()

    def gen_based() -> Any:
        yield from leaf().__await__()

    async def middle() -> None:
        await leaf()

    async def top() -> None:
        await middle()

    async def deep(n: int) -> None:
        if n:
            await deep(n - 1)
        else:
            await park()

    async def on_future(fut: Any) -> None:
        await fut

    class Late:
        """A class that gains ``cr_await`` after the walk has seen it: never resolved once."""

    coros = [top(), deep(60), leaf()]
    gen = gen_based()
    for c in coros:
        c.send(None)
    next(gen)
    loop = asyncio.new_event_loop()
    fut = loop.create_future()
    waiting = on_future(fut)
    waiting.send(None)  # its chain ends in the future's iterator (a C type with no frame)
    late = Late()
    assert native.await_chain(late) == frames._py_await_chain(late) == ()
    Late.cr_await = coros[2]  # type: ignore[attr-defined]
    assert native.await_chain(late) == frames._py_await_chain(late) != ()
    for c in [*coros, gen, waiting, fut, Frameless(coros[0]), None, 42, Frameless(None)]:
        # 100 and 10**9: past the sites the walk gathers on the stack (64), and a limit no
        # chain reaches (nothing is allocated for it)
        for limit in (48, 2, 0, 100, 10**9):
            assert native.await_chain(c, limit) == frames._py_await_chain(c, limit)
    assert len(native.await_chain(coros[1])) == 48
    assert len(native.await_chain(coros[1], 100)) == 62  # deep(60..0), then park
    names = [f[0].rpartition(".")[2] for f in native.await_chain(coros[0])]
    assert names == ["top", "middle", "leaf", "park"]
    for c in coros:
        c.close()
    gen.close()
    waiting.close()
    loop.close()
    assert native.await_chain(coros[0]) == ()  # finished: no frame
    with pytest.raises(TypeError):
        native.await_chain()


@pytest.mark.parametrize(("make", "fast"), PARAMS)
def test_a_failing_wait_callback_is_counted_not_raised(make: Any, fast: bool) -> None:
    def bad(*a: Any) -> None:
        raise RuntimeError("bug")

    h = Hooked(make, fast, wait_ns=1, wait_cb=bad)

    async def main() -> int:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, 5)
        return await fut

    try:
        assert h.loop.run_until_complete(main()) == 5
    finally:
        h.close()
    assert h.runner.errors >= 1


# asyncio.eager_task_factory does not exist before 3.12: nothing to test on 3.11.
@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
@pytest.mark.parametrize(("make", "fast"), PARAMS)
def test_eager_tasks(make: Any, fast: bool) -> None:
    plain = make()
    plain.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]

    async def probe() -> None:
        await asyncio.create_task(asyncio.sleep(0))

    try:
        plain.run_until_complete(probe())
    except TypeError as exc:  # uvloop 0.23 on 3.13 passes eager_start= to the factory
        # The loop itself (not flightdeck) cannot run eager tasks: there is no behaviour to check.
        pytest.skip(f"this loop rejects asyncio.eager_task_factory: {exc}")
    finally:
        plain.close()
    h = Hooked(make, fast)
    h.loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]

    async def quick() -> int:
        return 1

    async def slow() -> int:
        await asyncio.sleep(0)
        return 2

    async def main() -> list[int]:
        a = asyncio.create_task(quick(), name="quick")
        b = asyncio.create_task(slow(), name="slow")
        return [await a, await b]

    try:
        assert h.loop.run_until_complete(main()) == [1, 2]
    finally:
        h.close()
    names = {e[5] for e in h.events() if e[0] == TASK_DONE}
    assert "slow" in names  # its later step ran through the hook


def test_restoring_the_class_leaves_no_trace() -> None:
    loop = asyncio.new_event_loop()
    base = type(loop)
    h = Hooked(lambda: loop, True)
    h.loop.__class__ = base
    assert type(loop) is base and "call_soon" not in vars(loop)
    loop.close()


def _native_handle_type() -> Any:
    from flightdeck.instrument.loop import _step_handle_type

    cls = _step_handle_type()
    assert cls is not asyncio.events.Handle, "the native handle layout was refused"
    return cls


# The cancelled first step leaves child() never started: its "never awaited" is expected.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
def test_step_handles_are_handles_filled_natively_and_cancellable() -> None:
    from flightdeck import FlightRecorder
    from flightdeck.core.cores import CORE

    if CORE != "native":
        # The pure-core run (make pytest-pure) imports the extension but never installs its
        # handles; this test is about those handles only.
        pytest.skip("the native core is disabled (FLIGHTDECK_NO_EXTENSIONS)")

    cls = _native_handle_type()
    ran: list[str] = []
    seen: list[Any] = []

    async def child() -> None:
        ran.append("child")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(child())
        handle = loop._ready[-1]  # type: ignore[attr-defined]
        seen.append(handle)
        assert type(handle) is cls and isinstance(handle, asyncio.Handle)
        assert handle._context is not None and handle._loop is loop and not handle.cancelled()
        assert "TaskStepMethWrapper" in repr(handle) or "Handle" in repr(handle)
        handle.cancel()  # the loop skips it: the task never runs its first step
        assert handle.cancelled()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert ran == [] and not task.done()
        task.cancel()

    rec = FlightRecorder(loop_blocked=None)
    loop = asyncio.new_event_loop()
    try:
        rec.start(loop)
        loop.run_until_complete(main())
    finally:
        rec.stop()
        loop.close()
    assert seen


def test_handle_run_reports_exceptions_as_asyncio_does() -> None:
    cls = _native_handle_type()
    var: contextvars.ContextVar[str] = contextvars.ContextVar("v", default="outside")
    loop = asyncio.new_event_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))

    def boom(x: int) -> None:
        assert var.get() == "inside"
        raise ValueError(x)

    try:
        ctx = contextvars.copy_context()
        ctx.run(var.set, "inside")
        for kind in (cls, asyncio.events.Handle):
            kind(boom, (7,), loop, ctx)._run()
        native_ctx, plain_ctx = reported
        assert native_ctx["message"] == plain_ctx["message"]
        assert native_ctx["message"].startswith("Exception in callback")
        assert isinstance(native_ctx["exception"], ValueError) and type(native_ctx["handle"]) is cls
        assert native_ctx["exception"].__traceback__ is not None
        assert var.get() == "outside"  # the context was left
        for fatal in (SystemExit, KeyboardInterrupt):

            def die(exc: type[BaseException] = fatal) -> None:
                raise exc()

            with pytest.raises(fatal):
                cls(die, (), loop, ctx)._run()
        assert len(reported) == 2
        with pytest.raises(TypeError):
            cls._run(object())
        with pytest.raises(TypeError):
            native.HandleRun(int, print)
    finally:
        loop.close()


def test_native_await_chain_lines_stay_right_past_the_site_cache() -> None:
    """More distinct suspension sites than the native line cache holds (it keeps 512): every
    walk, the first and the ones after entries were evicted and replaced, names the same
    lines as the Python walk."""
    import types

    from flightdeck.instrument import frames

    @types.coroutine
    def park() -> Any:
        yield

    n = 700
    source = "\n".join(
        f"async def f{i}():\n    x = {i}\n    await {'f' + str(i + 1) if i + 1 < n else 'park'}()"
        for i in range(n)
    )
    space: dict[str, Any] = {"park": park}
    exec(compile(source, "<many-sites>", "exec"), space)
    coro = space["f0"]()
    coro.send(None)
    try:
        expected = frames._py_await_chain(coro, 10**9)
        assert len(expected) == n + 1 and expected[-2][2] == 3 * n  # the last f, then park
        for _ in range(3):
            assert native.await_chain(coro, 10**9) == expected
    finally:
        coro.close()


@pytest.mark.parametrize(("make", "fast"), PARAMS)
def test_call_soon_is_bound_once_per_loop_and_forget_lets_the_loop_go(
    make: Any, fast: bool
) -> None:
    # A task looks call_soon up on the loop for every step it schedules: the hook hands out
    # one bound callable per loop instead of a new method object each time, and keeps it (and
    # so the loop) only until forget().
    h = Hooked(make, fast)
    bound = h.loop.call_soon
    assert h.loop.call_soon is bound and bound.__self__ is h.loop and bound.__name__ == "call_soon"
    seen: list[Any] = []
    many = tuple(range(20))  # past the bound call's small argument buffer
    try:
        bound(lambda *a: seen.append(a), *many)
        h.loop.call_soon(h.loop.stop)
        h.loop.run_forever()

        async def main() -> int:
            await asyncio.sleep(0)
            return 3

        assert h.loop.run_until_complete(main()) == 3
    finally:
        h.close()
    assert seen == [many]
    cs, loop = bound.__func__, h.loop
    del bound
    before = sys.getrefcount(loop)
    cs.forget()  # what uninstall() does: the loop is no longer held by its hooked class
    assert sys.getrefcount(loop) == before - 1
    # Without forget() the reference is a cycle (loop -> hooked class -> call_soon -> loop)
    # that the collector sees through: a dropped loop is freed.
    h2 = Hooked(make, fast)
    h2.loop.call_soon(print)
    ref = weakref.ref(h2.loop)
    h2.close()
    del h2, loop, cs, h
    gc.collect()
    assert ref() is None


def test_a_runner_given_the_windows_live_tasks_keeps_them_there() -> None:
    # With the native window's own table, the hook keeps no second one: the window adds a task
    # when it records its TASK_CREATE and takes it out at its TASK_DONE.
    loop = asyncio.new_event_loop()
    base = type(loop)
    window = native.Window(10**10, 1 << 22)
    runner = native.StepRunner(window, window.live_tasks, lambda *a: None, 10**9, STEP_TYPE)
    cs = native.CallSoon(runner, base.call_soon, None)
    rid: contextvars.ContextVar[int] = contextvars.ContextVar("rid")
    ct = native.CreateTask(
        runner, base.create_task, asyncio.current_task, rid, lambda t: None, "/nonexistent/", 100
    )
    ns = {"__slots__": (), "call_soon": cs, "create_task": ct}
    loop.__class__ = type(base.__name__, (base,), ns)
    seen: dict[str, int] = {}

    async def child() -> None:
        seen["during"] = len(window.live_tasks)
        await asyncio.sleep(0)

    async def main() -> None:
        await loop.create_task(child())

    try:
        loop.run_until_complete(main())
    finally:
        loop.__class__ = base
        loop.close()
    assert seen["during"] == 2 and len(window.live_tasks) == 0  # main and child, then none
    assert runner.errors == 0


def test_a_step_handle_carries_when_it_was_queued_as_a_number() -> None:
    # The hook passes the queued-at time to the runner among the handle's arguments, as a
    # small object of its own (from a free list): it still reads as the int it is.
    h = Hooked(asyncio.new_event_loop, True)

    async def noop() -> None:
        pass

    try:
        before = time.perf_counter_ns()
        task = h.loop.create_task(noop())
        handle = h.loop._ready[-1]  # type: ignore[attr-defined]
        stamp = handle._args[1]
        after = time.perf_counter_ns()
        assert before <= int(stamp) <= after and repr(stamp) == str(int(stamp))
        assert int(stamp) == operator.index(stamp)
        h.loop.run_until_complete(task)
    finally:
        h.close()
    step = next(e for e in h.events() if e[0] == TASK_STEP)
    assert step[4] == int(stamp)  # the runner read it back


def test_a_task_recorded_from_c_values_is_stored_as_its_tuple_would_be() -> None:
    # With the window's own live tasks the hook writes TASK_CREATE from C values (no tuple):
    # the generation holds the bytes the tuple would have made, and the live table answers
    # with the tuple.
    import os

    def clock() -> int:  # the same generation bases in both windows
        return 10**15

    a = native.Window(10**10, 1 << 22, 0, 10**9, clock)
    loop = asyncio.new_event_loop()
    base = type(loop)
    runner = native.StepRunner(a, a.live_tasks, lambda *x: None, 10**9, STEP_TYPE)
    rid: contextvars.ContextVar[int | None] = contextvars.ContextVar("rid", default=None)
    ct = native.CreateTask(
        runner,
        base.create_task,
        asyncio.current_task,
        rid,
        lambda t: None,
        os.path.dirname(asyncio.__file__),
        100,
    )
    ns = {"__slots__": (), "call_soon": native.CallSoon(runner, base.call_soon), "create_task": ct}
    loop.__class__ = type(base.__name__, (base,), ns)
    seen: list[Any] = []

    async def child(i: int) -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        rid.set(42)
        t = loop.create_task(child(0), name="first")
        seen.append(a.live_tasks.get(id(t)))
        await asyncio.gather(child(1), child(2))
        await t

    try:
        loop.run_until_complete(main())
    finally:
        loop.__class__ = base
        loop.close()
    assert runner.errors == 0
    created = seen[0]
    assert created[0] == TASK_CREATE and created[3] == "first" and created[4].endswith("child")
    assert created[6] == 42 and created[7][0].endswith("main") and created[5] is not None
    segments = a._freeze_parts()[0]
    events = [e for s in segments for e in s.events()]
    assert created in events
    assert sum(1 for e in events if e[0] == TASK_CREATE) == 4  # main and three children
    b = native.Window(10**10, 1 << 22, 0, 10**9, clock)
    for e in events:
        b.append(e)
    assert [s.dump() for s in b._freeze_parts()[0]] == [s.dump() for s in segments]


def _with_call_later(make: Callable[[], asyncio.AbstractEventLoop]) -> tuple[Any, list[Any]]:
    """A loop whose class takes the native call_later, and the calls of its timer_fired."""
    from flightdeck.instrument.loop import _SLEEP_CALLBACK

    loop = make()
    base = type(loop)
    fired: list[Any] = []

    def timer_fired(t_due: int, *args: Any) -> None:
        fired.append((t_due, time.perf_counter_ns()))
        _SLEEP_CALLBACK(*args)

    cl = native.CallLater(base.call_later, _SLEEP_CALLBACK, timer_fired)
    ns = {"__slots__": (), "call_later": cl, "__module__": base.__module__}
    loop.__class__ = type(base.__name__, (base,), ns)
    return loop, fired


@pytest.mark.parametrize(
    "make", [m for _, m, fast in loops() if not fast], ids=[n for n, _, f in loops() if not f]
)
def test_native_call_later_stamps_sleeps_and_passes_other_timers_through(make: Any) -> None:
    loop, fired = _with_call_later(make)
    seen: list[Any] = []
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")

    async def main() -> None:
        before = time.perf_counter_ns()
        await asyncio.sleep(0.01)  # asyncio.sleep's timer: through timer_fired, due time first
        assert len(fired) == 1
        t_due, t_ran = fired[0]
        assert before + 10_000_000 <= t_due <= t_ran
        # Any other timer reaches the base unchanged: arguments, context, cancel.
        ctx = contextvars.copy_context()
        ctx.run(var.set, "inner")
        done = loop.create_future()
        h = loop.call_later(
            0.001, lambda *a: (seen.append((a, var.get())), done.set_result(1)), 1, 2, context=ctx
        )
        assert h.when() >= loop.time()  # the base's own timer handle
        gone = loop.call_later(0.001, seen.append, "cancelled")
        gone.cancel()
        await done
        await asyncio.sleep(0.005)
        # A sleep with an enormous delay is stamped without overflow; cancelled at once.
        waiter = asyncio.ensure_future(asyncio.sleep(1e12))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    try:
        loop.run_until_complete(main())
        assert seen == [((1, 2), "inner")]
        assert len(fired) == 2  # the two short sleeps; the cancelled one never fired
        # What the base refuses, it still refuses: the delay is not looked at first.
        with pytest.raises(TypeError):
            loop.call_later("soon", print)
        with pytest.raises(TypeError):
            loop.call_later()
        assert type(loop).call_later is type(loop).__dict__["call_later"]
        assert loop.call_later.__self__ is loop  # bound like a method when looked up
    finally:
        loop.close()


@pytest.mark.parametrize("make", [m for _, m, _ in loops()][1:], ids=[n for n, _, _ in loops()][1:])
def test_create_task_read_as_an_attribute_binds_to_the_loop_and_records_the_task(
    make: Any,
) -> None:
    # ``f = loop.create_task`` (not a call) goes through the descriptor: it must bind like a
    # method, not as call_soon binds (a call_soon's layout read from a create_task).
    from flightdeck import FlightRecorder
    from flightdeck.core.cores import CORE

    if CORE != "native":
        pytest.skip("the native core is disabled (FLIGHTDECK_NO_EXTENSIONS): no native hook")

    loop = make()

    async def child() -> int:
        await asyncio.sleep(0)
        return 7

    async def main() -> tuple[Any, int, list[dict[str, Any]]]:
        rec = FlightRecorder(loop_blocked=None)
        rec.start()
        try:
            create = loop.create_task
            result = await create(child())
            tasks = rec.snapshot().to_dict()["tasks"]
            return create, result, tasks
        finally:
            rec.stop()

    try:
        create, result, tasks = loop.run_until_complete(main())
    finally:
        loop.close()
    assert type(create) is types.MethodType
    assert isinstance(create.__func__, native.CreateTask) and create.__self__ is loop
    assert result == 7
    assert any(t.get("coro", "").endswith("child") for t in tasks), tasks
