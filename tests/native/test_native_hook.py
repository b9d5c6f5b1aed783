"""The native call_soon and step runner, on asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

native = pytest.importorskip("flightdeck.core._native", reason="native core not built")

TASK_CREATE, TASK_STEP, TASK_DONE, TASK_WAIT = 1, 2, 3, 4


def _step_type() -> type:
    seen: list[type] = []

    class Probe(asyncio.SelectorEventLoop):
        def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:  # type: ignore[override]
            seen.append(type(callback))
            return super().call_soon(callback, *args, context=context)

    async def noop() -> None:
        return None

    loop = Probe()
    coro = noop()
    task = asyncio.Task(coro, loop=loop)
    task._log_destroy_pending = False  # type: ignore[attr-defined]
    coro.close()
    loop.close()
    return seen[0]


STEP_TYPE = _step_type()


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
            self.window, self.live, wait_cb, kw.get("wait_ns", 10**9), STEP_TYPE
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
