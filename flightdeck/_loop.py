"""Event-loop instrumentation: task lifecycle, task steps, await gaps, executor work.

How (see shared NOTES-instrumentation): the C Task schedules every step and every wakeup
through ``loop.call_soon`` by method lookup. We swap the running loop's class for a
trivial subclass (``__slots__ = ()``, same layout, same name) whose ``call_soon`` times
task steps and wakeups; that works on asyncio's loops and on ``uvloop.Loop`` alike, and
``stop()`` swaps the class back. A task factory (chained to the user's) records creation
with the parent task and the request; completion is noticed after the step that finished
the task, so no done-callback is added. Coroutines are never wrapped: ``get_coro()`` and
``repr(task)`` stay as they were. Nothing here keeps a task, frame or future alive: the
window holds ids, names and ``(function, file, line)`` tuples only.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import threading
import types
import weakref
from collections.abc import Callable, Sequence
from contextvars import Context
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

from . import _events as ev
from ._context import current_request

if TYPE_CHECKING:
    from ._recorder import FlightRecorder
    from ._window import Frozen

_current_task = asyncio.current_task
_THIS_FILE = __file__
MAX_STACK = 48
MAX_AWAITING_TASKS = 1000
MAX_LIVE_TASKS = 200_000

#: Which instrumentation owns a loop. Keyed by id but holding a weak reference to the loop,
#: so a loop that was closed and collected without ``stop()`` does not block a new loop that
#: happens to get the same address.
_instrumented: dict[int, tuple[weakref.ref[Any], LoopInstrumentation]] = {}
_instrumented_lock = threading.Lock()


def _step_wrapper_type() -> type:
    """The type of the C Task's step callback (``TaskStepMethWrapper``)."""
    seen: list[type] = []

    class _Probe(asyncio.SelectorEventLoop):
        def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:  # type: ignore[override]
            seen.append(type(callback))
            return super().call_soon(callback, *args, context=context)

    async def noop() -> None:
        return None

    loop = _Probe()
    coro = noop()
    try:
        # The constructor schedules the first step; no need to run the loop (which may
        # not be possible here: another loop may be running in this thread).
        task = asyncio.Task(coro, loop=loop)
        task._log_destroy_pending = False  # type: ignore[attr-defined]
    finally:
        coro.close()
        loop.close()
    return seen[0] if seen else type(None)


_STEP_TYPE: type = _step_wrapper_type()
_BUILTIN_METHOD = types.BuiltinMethodType
_BASE_CALL_SOON = asyncio.base_events.BaseEventLoop.call_soon
#: Benchmark seam: ``factory(emit, last_end, finished) -> run_step`` (benchmarks/accel).
_step_runner_factory: Callable[..., Any] | None = None
_SLEEP_CALLBACK: Any = getattr(asyncio.futures, "_set_result_unless_cancelled", None)


def describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    """A short name for the loop implementation: ``asyncio``, ``uvloop`` or the module."""
    for klass in type(loop).__mro__:
        mod = klass.__module__.partition(".")[0]
        if mod == "uvloop":
            return "uvloop"
        if mod == "asyncio":
            return "asyncio"
    return type(loop).__module__.partition(".")[0] or "unknown"


def _frames(frame: types.FrameType | None, limit: int = MAX_STACK) -> tuple[Any, ...]:
    """``(function, file, line)`` tuples, innermost last."""
    out: list[tuple[str, str, int]] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        if code.co_filename != _THIS_FILE:  # our step wrappers are noise in a user's stack
            out.append((code.co_qualname, code.co_filename, frame.f_lineno))
        frame = frame.f_back
    out.reverse()
    return tuple(out)


def await_chain(coro: Any, limit: int = MAX_STACK) -> tuple[Any, ...]:
    """Where a suspended coroutine waits: its await chain's frames, innermost last."""
    out: list[tuple[str, str, int]] = []
    while coro is not None and len(out) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        out.append((code.co_qualname, code.co_filename, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return tuple(out)


def callable_name(fn: Any) -> str:
    """A readable name for a callable (unwrapping ``partial`` and ``Context.run``)."""
    for _ in range(4):
        if isinstance(fn, functools.partial):
            inner = fn.func
            if getattr(inner, "__name__", None) == "run" and isinstance(
                getattr(inner, "__self__", None), Context
            ):
                fn = fn.args[0] if fn.args else inner
            else:
                # Framework wrappers (e.g. FastAPI's sync-endpoint runner) carry the user's
                # function as an argument: that is the name worth showing.
                user = next(
                    (
                        a
                        for a in (*fn.args, *fn.keywords.values())
                        if isinstance(a, types.FunctionType)
                    ),
                    None,
                )
                fn = user if user is not None and _is_framework(inner) else inner
        else:
            break
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        name = type(fn).__qualname__
    mod = getattr(fn, "__module__", None)
    return f"{mod}.{name}" if mod and mod not in ("builtins", "__main__") else str(name)


_FRAMEWORKS = ("fastapi", "starlette", "anyio")


def _is_framework(fn: Any) -> bool:
    return str(getattr(fn, "__module__", "")).partition(".")[0] in _FRAMEWORKS


def _done_event(kind: int, t: int, raw: int, task: Any) -> tuple[Any, ...]:
    """``(TASK_DONE, t, tid, state, exc_type, name)`` for a finished task.

    The name is taken now because on 3.11/3.12 ``create_task(name=...)`` names the task
    only after the task factory has run (and ``set_name`` may rename it later).
    """
    if task.cancelled():
        return (kind, t, raw, "cancelled", None, task.get_name())
    exc = task._exception  # not .exception(): that would mark it retrieved
    if exc is None:
        return (kind, t, raw, "done", None, task.get_name())
    return (kind, t, raw, "error", type(exc).__qualname__, task.get_name())


def _coro_name(coro: Any) -> str:
    return getattr(coro, "__qualname__", None) or type(coro).__qualname__


class LoopInstrumentation:
    """Hooks one event loop for one recorder. ``install()``/``uninstall()`` are idempotent."""

    def __init__(self, recorder: FlightRecorder, loop: asyncio.AbstractEventLoop) -> None:
        self.rec = recorder
        self.loop = loop
        self.installed = False
        self._base: type | None = None
        self._hooked: type | None = None
        self._factory: Callable[..., Any] | None = None
        self._prev_factory: Any = None
        self._last_end: dict[int, int] = {}
        self.steps_hooked = False
        self.errors = 0

    # -- install ----------------------------------------------------------------------------
    def install(self) -> None:
        if self.installed:
            return
        key = id(self.loop)
        with _instrumented_lock:
            entry = _instrumented.get(key)
            if entry is not None and entry[0]() is self.loop and entry[1] is not self:
                raise RuntimeError(
                    "this event loop is already instrumented by another FlightRecorder"
                )
            _instrumented[key] = (weakref.ref(self.loop), self)
        self.installed = True
        cov = self.rec.coverage
        try:
            self._install_class()
            cov["task_steps"] = cov["scheduling_delay"] = cov["executor"] = True
            cov["task_lifecycle"] = True
            self.steps_hooked = True
        except Exception:
            # A loop we cannot subclass: degrade to lifecycle + watchdog (reported in
            # coverage). Creations then come from a chained task factory and completions
            # from done callbacks it adds.
            self.errors += 1
            try:
                self._install_factory()
                cov["task_lifecycle"] = True
            except Exception:
                self.errors += 1
        _patch_anyio()
        self.rec.freeze_hooks.append(self._freeze_hook)

    def uninstall(self) -> None:
        if not self.installed:
            return
        self.installed = False
        loop = self.loop
        if self._hooked is not None and type(loop) is self._hooked:
            try:
                loop.__class__ = self._base  # type: ignore[assignment]
            except TypeError:
                self.errors += 1
        self._hooked = None
        if self._factory is not None:
            try:
                if loop.get_task_factory() is self._factory:
                    loop.set_task_factory(self._prev_factory)
            except Exception:
                self.errors += 1
        self._factory = None
        if self._freeze_hook in self.rec.freeze_hooks:
            self.rec.freeze_hooks.remove(self._freeze_hook)
        self._last_end.clear()
        _unpatch_anyio()
        with _instrumented_lock:
            entry = _instrumented.get(id(loop))
            if entry is not None and entry[1] is self:
                del _instrumented[id(loop)]

    def counters(self) -> dict[str, Any]:
        return {
            "steps_hooked": self.steps_hooked,
            "errors": self.errors,
            "tracked_tasks": len(self._last_end),
        }

    # -- task creation ----------------------------------------------------------------------
    def _creation_recorder(self, *, track_done: bool) -> Callable[[Any, Any, Any], None]:
        """``created(task, coro, context)``: record a new task (and an eager completion).

        ``track_done``: add a done callback to notice the completion (no step hook).
        """
        loop = self.loop
        emit = self.rec.emit
        live = self.rec.live_tasks
        last_end = self._last_end
        pc = perf_counter_ns
        current_task = _current_task
        TASK_CREATE = ev.TASK_CREATE
        get_request = current_request.get
        done_callback = self._done_callback()
        # Without the step hook nothing notices completions: ask the task to tell us.
        on_done = done_callback if track_done else None

        def created(task: Any, coro: Any, context: Any) -> None:
            parent = current_task(loop)
            raw = id(task)
            t = pc()
            event = (
                TASK_CREATE,
                t,
                raw,
                task.get_name(),
                _coro_name(coro),
                None if parent is None or parent is task else id(parent),
                # The task runs in ``context`` when one is given: its request is that one's.
                get_request() if context is None else context.get(current_request),
                None,
            )
            emit(event)
            if task.done():
                # eager_start: the task ran to completion inside create_task(). Recorded
                # from a done callback (scheduled right away) rather than now, because
                # asyncio.create_task() on 3.11/3.12 names the task only after this returns.
                task.add_done_callback(done_callback)
                return
            if len(live) < MAX_LIVE_TASKS:
                live[raw] = event
            if on_done is not None:
                task.add_done_callback(on_done)
            else:
                # An eager task's next step is a wakeup: its wait counts from here.
                last_end[raw] = t

        return created

    def _install_factory(self) -> None:
        loop = self.loop
        prev = loop.get_task_factory()
        self._prev_factory = prev
        Task = asyncio.Task
        counters = self
        # Only used when the step hook is missing: completions come from done callbacks.
        created = self._creation_recorder(track_done=True)

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            task: Any
            if prev is None:
                task = Task(coro, loop=loop, **kwargs)
            else:
                task = prev(loop, coro, **kwargs)
            try:
                created(task, coro, kwargs.get("context"))
            except Exception:
                counters.errors += 1
            return task

        loop.set_task_factory(factory)
        self._factory = factory

    def _done_callback(self) -> Callable[[Any], None]:
        emit = self.rec.emit
        live = self.rec.live_tasks
        DONE = ev.TASK_DONE

        def on_done(task: Any) -> None:
            raw = id(task)
            live.pop(raw, None)
            emit(_done_event(DONE, perf_counter_ns(), raw, task))

        return on_done

    # -- steps ------------------------------------------------------------------------------
    def _install_class(self) -> None:
        loop = self.loop
        base = type(loop)
        emit = self.rec.emit
        live = self.rec.live_tasks
        last_end = self._last_end
        pc = perf_counter_ns
        STEP = ev.TASK_STEP
        DONE = ev.TASK_DONE
        WAIT = ev.TASK_WAIT
        wait_ns = int(self.rec.wait_threshold * 1e9)
        step_type = _STEP_TYPE
        builtin_method = _BUILTIN_METHOD
        base_call_soon = base.call_soon
        base_run_in_executor = base.run_in_executor
        base_create_task = base.create_task
        current_task = _current_task
        counters = self
        created = self._creation_recorder(track_done=False)  # run_step notices completions
        iscoroutine = asyncio.iscoroutine
        iscoroutinefunction = inspect.iscoroutinefunction

        def finished(task: Any, raw: int, t: int) -> None:
            last_end.pop(raw, None)
            live.pop(raw, None)
            emit(_done_event(DONE, t, raw, task))

        def run_step(callback: Any, t_queued: int) -> None:
            t0 = pc()
            try:
                callback()
            finally:
                t1 = pc()
                task = callback.__self__
                raw = id(task)
                emit((STEP, t0, t1, raw, t_queued))
                if task.done():
                    finished(task, raw, t1)
                else:
                    last_end[raw] = t1

        if _step_runner_factory is not None:
            # A compiled stand-in for run_step (benchmarks/accel: a prototype, not shipped).
            run_step = _step_runner_factory(emit, last_end, finished)

        def run_wakeup(callback: Any, t_queued: int, *args: Any) -> None:
            task = callback.__self__
            raw = id(task)
            prev = last_end.get(raw)
            if prev is not None and t_queued - prev > wait_ns:
                # Still suspended at its await: this is where it waited so long.
                try:
                    emit((WAIT, prev, t_queued, raw, await_chain(task.get_coro())))
                except Exception:
                    counters.errors += 1
            t0 = pc()
            try:
                callback(*args)
            finally:
                t1 = pc()
                emit((STEP, t0, t1, raw, t_queued))
                if task.done():
                    finished(task, raw, t1)
                else:
                    last_end[raw] = t1

        # asyncio.sleep()'s timer: while it runs, the task it wakes counts as woken when the
        # timer fell due, not when an overdue timer finally ran (that delay is the loop's).
        sleep_done = _SLEEP_CALLBACK
        base_call_later = base.call_later
        due: list[int] = [0]

        def timer_fired(t_due: int, *args: Any) -> None:
            due[0] = t_due
            try:
                sleep_done(*args)
            finally:
                due[0] = 0

        def woken() -> int:
            now = pc()
            t_due = due[0]
            return t_due if 0 < t_due < now else now

        def call_later(
            self: Any, delay: float, callback: Any, *args: Any, context: Any = None
        ) -> Any:
            if callback is sleep_done:
                t_due = pc() + int(max(delay, 0) * 1e9)
                return base_call_later(self, delay, timer_fired, t_due, *args, context=context)
            if args:
                return base_call_later(self, delay, callback, *args, context=context)
            return base_call_later(self, delay, callback, context=context)

        def call_soon(self: Any, callback: Any, *args: Any, context: Any = None) -> Any:
            cls = type(callback)
            if cls is step_type:
                return base_call_soon(self, run_step, callback, pc(), context=context)
            # Only the Task's own wakeup: ``call_soon(task.cancel)`` is a builtin method of a
            # task too, and is not a step of it.
            if cls is builtin_method and callback.__name__ == "task_wakeup":
                return base_call_soon(self, run_wakeup, callback, woken(), *args, context=context)
            if args:
                return base_call_soon(self, callback, *args, context=context)
            # No star-args: a call with ``*args`` and a keyword builds a tuple and a dict.
            return base_call_soon(self, callback, context=context)

        if base.call_soon is _BASE_CALL_SOON and hasattr(loop, "_ready"):
            # asyncio's own loop: do what BaseEventLoop.call_soon does (3.11-3.13) in this
            # one frame instead of two, which halves what the hook costs per step. Debug mode
            # and a closed loop take the original path, with its checks and errors.
            handle_type = asyncio.events.Handle
            generic_call_soon = call_soon

            def call_soon(self: Any, callback: Any, *args: Any, context: Any = None) -> Any:
                if self._debug or self._closed:
                    return generic_call_soon(self, callback, *args, context=context)
                cls = type(callback)
                if cls is step_type:
                    handle = handle_type(run_step, (callback, pc()), self, context)
                elif cls is builtin_method and callback.__name__ == "task_wakeup":
                    handle = handle_type(run_wakeup, (callback, woken(), *args), self, context)
                else:
                    handle = handle_type(callback, args, self, context)
                self._ready.append(handle)
                return handle

        def create_task(self: Any, coro: Any, **kwargs: Any) -> Any:
            # Recorded here rather than in a task factory: the user's factory (if any) stays
            # in place untouched, and on 3.11-3.13 the name is only set after the factory.
            if kwargs:
                task = base_create_task(self, coro, **kwargs)
                context = kwargs.get("context")
            else:  # the common case, without building a call from a dict
                task = base_create_task(self, coro)
                context = None
            try:
                created(task, coro, context)
            except Exception:
                counters.errors += 1
            return task

        def run_in_executor(self: Any, executor: Any, func: Any, *args: Any) -> Any:
            if iscoroutinefunction(func) or iscoroutine(func):
                # Let the loop refuse it (TypeError) exactly as it would have.
                return base_run_in_executor(self, executor, func, *args)
            call = _timed_job(func, current_task(self), (emit,))
            return base_run_in_executor(self, executor, call, *args)

        ns = {
            "__slots__": (),
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
            "call_soon": call_soon,
            "run_in_executor": run_in_executor,
            "create_task": create_task,
            "call_later": call_later,
            "_flightdeck_base": base,
        }
        hooked = type(base.__name__, (base,), ns)
        loop.__class__ = hooked
        self._base = base
        self._hooked = hooked

    # -- freeze -----------------------------------------------------------------------------
    def _freeze_hook(self, frozen: Frozen) -> None:
        """Record the await chain of each pending task (bounded)."""
        awaiting: dict[int, Any] = {}
        names: dict[int, Any] = {}
        try:
            tasks = list(asyncio.all_tasks(self.loop))
        except RuntimeError:
            return
        for task in tasks[:MAX_AWAITING_TASKS]:
            try:
                coro = task.get_coro()
                awaiting[id(task)] = await_chain(coro)
                names[id(task)] = (task.get_name(), _coro_name(coro))
            except Exception:
                continue
        frozen.extra["awaiting"] = awaiting
        frozen.extra["names"] = names


def _timed_job(
    func: Callable[..., Any], task: Any, emitters: Sequence[Callable[[tuple[Any, ...]], None]]
) -> Callable[..., Any]:
    """Wrap a thread-pool job so it records when it was queued, started and finished.

    Called on the loop, where the job is handed over: the task and request it belongs to are
    the caller's. The wrapper runs in the worker thread.
    """
    t_queued = perf_counter_ns()
    tid = None if task is None else id(task)
    rid = current_request.get()
    name = callable_name(func)

    def call(*args: Any) -> Any:
        t0 = perf_counter_ns()
        error = None
        try:
            return func(*args)
        except BaseException as exc:
            error = type(exc).__qualname__
            raise
        finally:
            thread = threading.current_thread().name
            event = (ev.EXECUTOR, t_queued, t0, perf_counter_ns(), name, thread, tid, rid, error)
            for emit in emitters:
                emit(event)

    return call


# -- anyio.to_thread.run_sync (FastAPI/Starlette sync routes go through it) --------------------
_anyio_patch_count = 0
_anyio_original: Any = None


def _patch_anyio() -> None:
    global _anyio_patch_count, _anyio_original
    try:
        import anyio.to_thread as to_thread
    except ImportError:  # pragma: no cover
        return
    _anyio_patch_count += 1
    if _anyio_patch_count > 1:
        return
    original = to_thread.run_sync
    _anyio_original = original
    from ._recorder import _active

    async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not _active:
            return await original(func, *args, **kwargs)
        try:
            task = _current_task()
        except RuntimeError:
            task = None
        call = _timed_job(func, task, [rec.emit for rec in _active])
        return await original(call, *args, **kwargs)

    functools.update_wrapper(run_sync, original)
    run_sync.__flightdeck__ = True  # type: ignore[attr-defined]
    to_thread.run_sync = run_sync  # type: ignore[assignment]


def _unpatch_anyio() -> None:
    global _anyio_patch_count, _anyio_original
    if _anyio_patch_count == 0:
        return
    _anyio_patch_count -= 1
    if _anyio_patch_count == 0 and _anyio_original is not None:
        import anyio.to_thread as to_thread

        if getattr(to_thread.run_sync, "__flightdeck__", False):
            to_thread.run_sync = _anyio_original
        _anyio_original = None


def current_frames_of(thread_id: int) -> tuple[Any, ...]:
    """The stack of another thread right now, innermost last (empty if unknown)."""
    frame = sys._current_frames().get(thread_id)
    return _frames(frame) if frame is not None else ()
