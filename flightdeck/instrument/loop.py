"""Event-loop instrumentation: task lifecycle, task steps, await gaps, executor work.

How (measured in docs/instrumentation-notes.md): the C Task schedules every step and every wakeup
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
import inspect
import os
import sys
import threading
import types
import weakref
from asyncio import format_helpers
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from ..core import events as ev
from ..core.sink import Sink
from ..core.window import Frozen
from .context import current_request
from .executor import patch_anyio, timed_job, unpatch_anyio
from .frames import await_chain

_current_task = asyncio.current_task
_CURRENT_TASKS: Any = getattr(asyncio.tasks, "_current_tasks", None)
if sys.version_info >= (3, 12) or not isinstance(_CURRENT_TASKS, dict):
    _CURRENT_TASKS = None
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
_SLEEP_CALLBACK: Any = getattr(asyncio.futures, "_set_result_unless_cancelled", None)


_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_getframe = sys._getframe


def creation_site() -> tuple[str, str, int] | None:
    """Where ``create_task`` was called from: the first frame outside asyncio and this hook.

    Called from the hooked ``create_task``, so frame 2 is its caller (``asyncio.create_task``,
    a ``TaskGroup``, or the user's code calling ``loop.create_task`` directly).
    """
    try:
        frame: Any = _getframe(2)
    except ValueError:
        return None
    while frame is not None and frame.f_code.co_filename.startswith(_ASYNCIO_DIR):
        frame = frame.f_back
    if frame is None:
        return None
    code = frame.f_code
    return (code.co_qualname, code.co_filename, frame.f_lineno)


def describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    """A short name for the loop implementation: ``asyncio``, ``uvloop`` or the module."""
    for klass in type(loop).__mro__:
        mod = klass.__module__.partition(".")[0]
        if mod == "uvloop":
            return "uvloop"
        if mod == "asyncio":
            return "asyncio"
    return type(loop).__module__.partition(".")[0] or "unknown"


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


def _handle_error(handle: Any, exc: BaseException) -> None:
    """What ``asyncio.events.Handle._run`` does with a callback's exception (3.11-3.13)."""
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


_STEP_HANDLE: Any = None


def _step_handle_type() -> Any:
    """The handle of a task step on asyncio's loop: a ``Handle`` whose slots the native
    call_soon fills and whose ``_run`` is native (no Python frame to make or run a step),
    or plain ``Handle`` when its layout is not the one expected."""
    global _STEP_HANDLE
    if _STEP_HANDLE is None:
        from ..core import _native

        class Handle(asyncio.events.Handle):
            __slots__ = ()

        try:
            Handle._run = _native.HandleRun(Handle, _handle_error)  # type: ignore[method-assign,assignment]
        except TypeError:
            _STEP_HANDLE = asyncio.events.Handle
        else:
            Handle.__module__ = asyncio.events.Handle.__module__
            Handle.__qualname__ = "Handle"
            _STEP_HANDLE = Handle
    return _STEP_HANDLE


def _coro_name(coro: Any) -> str:
    return getattr(coro, "__qualname__", None) or type(coro).__qualname__


class LoopInstrumentation:
    """Hooks one event loop for one recorder. ``install()``/``uninstall()`` are idempotent.

    The pure-Python hook is built as closures over locals in ``_install_class`` (one frame
    per task step, no attribute lookups), and the native hook is wired from the same state;
    apart, every step would pay for the lookups again.
    """

    def __init__(self, sink: Sink, loop: asyncio.AbstractEventLoop) -> None:
        self.sink = sink
        self.loop = loop
        self.installed = False
        self._base: type | None = None
        self._hooked: type | None = None
        self._factory: Callable[..., Any] | None = None
        self._prev_factory: Any = None
        self._last_end: dict[int, int] = {}
        #: The native step runner (``core._native.StepRunner``) when the native core runs.
        self._runner: Any = None
        #: Its ``call_soon`` (``core._native.CallSoon``), which keeps the loop it last bound.
        self._call_soon: Any = None
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
        cov = self.sink.coverage
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
        patch_anyio()
        self.sink.freeze_hooks.append(self._freeze_hook)

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
        if self._freeze_hook in self.sink.freeze_hooks:
            self.sink.freeze_hooks.remove(self._freeze_hook)
        self._last_end.clear()
        if self._runner is not None:
            self._runner.forget()
        if self._call_soon is not None:
            self._call_soon.forget()  # the loop is no longer kept by its hooked class
            self._call_soon = None
        unpatch_anyio()
        with _instrumented_lock:
            entry = _instrumented.get(id(loop))
            if entry is not None and entry[1] is self:
                del _instrumented[id(loop)]

    def counters(self) -> dict[str, Any]:
        return {
            "steps_hooked": self.steps_hooked,
            "errors": self.errors,
            "tracked_tasks": len(self._last_end) if self._runner is None else self._runner.tracked,
            "native_steps": self._runner is not None,
        }

    # -- task creation ----------------------------------------------------------------------
    def _creation_recorder(self, *, track_done: bool) -> Callable[..., None]:
        """``created(task, coro, context, site=None)``: record a new task (and an eager completion).

        ``track_done``: add a done callback to notice the completion (no step hook).
        """
        loop = self.loop
        emit = self.sink.emit
        live = self.sink.live_tasks
        last_end = self._last_end
        pc = perf_counter_ns
        current_task = _current_task
        TASK_CREATE = ev.TASK_CREATE
        get_request = current_request.get
        done_callback = self._done_callback()
        track = last_end.__setitem__ if self._runner is None else self._runner.track
        # Without the step hook nothing notices completions: ask the task to tell us.
        on_done = done_callback if track_done else None

        def created(task: Any, coro: Any, context: Any, site: Any = None) -> None:
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
                site,
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
                track(raw, t)

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
        emit = self.sink.emit
        live = self.sink.live_tasks
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
        emit = self.sink.emit
        live = self.sink.live_tasks
        last_end = self._last_end
        pc = perf_counter_ns
        STEP = ev.TASK_STEP
        DONE = ev.TASK_DONE
        WAIT = ev.TASK_WAIT
        SLOW = ev.TASK_SLOW_STEP
        CANCEL = ev.TASK_CANCEL
        wait_ns = self.sink.wait_threshold_ns
        slow_ns = self.sink.slow_callback_ns
        step_type = _STEP_TYPE
        builtin_method = _BUILTIN_METHOD
        base_call_soon = base.call_soon
        base_run_in_executor = base.run_in_executor
        base_create_task = base.create_task
        current_task = _current_task
        counters = self
        iscoroutine = asyncio.iscoroutine
        iscoroutinefunction = inspect.iscoroutinefunction

        def finished(task: Any, raw: int, t: int) -> None:
            last_end.pop(raw, None)
            live.pop(raw, None)
            emit(_done_event(DONE, t, raw, task))

        def slow_step(task: Any, raw: int, t0: int, t1: int) -> None:
            # A step past slow_callback: where the task stood when it ended names the hog
            # when the watchdog had no sample of it (diagnosis: loop hogs).
            try:
                chain = () if task.done() else await_chain(task.get_coro())
                emit((SLOW, t0, t1, raw, chain))
            except Exception:
                counters.errors += 1

        def cancelled_wakeup(task: Any, raw: int, t_queued: int, callback: Any, *args: Any) -> None:
            # What the task awaited was cancelled: record where it was delivered, run the
            # step, and call it a timeout when that step took the cancellation back
            # (``asyncio.timeout`` uncancels and raises TimeoutError in the same step).
            try:
                chain = await_chain(task.get_coro())
                before = task.cancelling()
            except Exception:
                counters.errors += 1
                chain, before = (), 0
            t0 = pc()
            try:
                callback(*args)
            finally:
                t1 = pc()
                emit((STEP, t0, t1, raw, t_queued))
                cause = None
                try:
                    if task.cancelling() < before or (
                        task.done()
                        and not task.cancelled()
                        and isinstance(task._exception, TimeoutError)
                    ):
                        cause = "timeout"
                except Exception:
                    counters.errors += 1
                emit((CANCEL, t_queued, raw, chain, cause))
                if t1 - t0 > slow_ns:
                    slow_step(task, raw, t0, t1)
                if task.done():
                    finished(task, raw, t1)
                else:
                    last_end[raw] = t1

        native = self.sink.native
        if native is not None and step_type is not type(None):
            # The native core: call_soon and the step runner in C (core/_native.c), writing
            # TASK_STEP and TASK_DONE straight into the window. The rare cases call back here:
            # a long wait (its await chain), a slow step, a cancelled wakeup.
            from ..core import _native

            def wait_cb(task: Any, raw: int, prev: int, t_queued: int) -> None:
                emit((WAIT, prev, t_queued, raw, await_chain(task.get_coro())))

            def cancel_begin(task: Any) -> tuple[Any, int]:
                return await_chain(task.get_coro()), task.cancelling()

            def cancel_end(task: Any, raw: int, t_queued: int, state: tuple[Any, int]) -> None:
                chain, before = state
                cause = None
                if task.cancelling() < before or (
                    task.done()
                    and not task.cancelled()
                    and isinstance(task._exception, TimeoutError)
                ):
                    cause = "timeout"
                emit((CANCEL, t_queued, raw, chain, cause))

            self._runner = _native.StepRunner(
                native,
                live,
                wait_cb,
                wait_ns,
                step_type,
                slow_cb=slow_step,
                slow_ns=slow_ns,
                cancel_begin=cancel_begin,
                cancel_end=cancel_end,
                # TASK_WAIT with its await chain walked in C (wait_cb is then unused): on a
                # keep-alive connection or a long poll every wakeup may be one.
                native_wait=True,
            )
        created = self._creation_recorder(track_done=False)  # run_step notices completions

        def run_step(callback: Any, t_queued: int) -> None:
            t0 = pc()
            try:
                callback()
            finally:
                t1 = pc()
                task = callback.__self__
                raw = id(task)
                emit((STEP, t0, t1, raw, t_queued))
                if t1 - t0 > slow_ns:
                    slow_step(task, raw, t0, t1)
                if task.done():
                    finished(task, raw, t1)
                else:
                    last_end[raw] = t1

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
            try:
                if args[0].cancelled():
                    return cancelled_wakeup(task, raw, t_queued, callback, *args)
            except Exception:  # a foreign future without cancelled(): an ordinary wakeup
                pass
            t0 = pc()
            try:
                callback(*args)
            finally:
                t1 = pc()
                emit((STEP, t0, t1, raw, t_queued))
                if t1 - t0 > slow_ns:
                    slow_step(task, raw, t0, t1)
                if task.done():
                    finished(task, raw, t1)
                else:
                    last_end[raw] = t1

        # asyncio.sleep()'s timer: while it runs, the task it wakes counts as woken when the
        # timer fell due, not when an overdue timer finally ran (that delay is the loop's).
        sleep_done = _SLEEP_CALLBACK
        base_call_later = base.call_later
        due: list[int] = [0]

        runner = self._runner

        def timer_fired(t_due: int, *args: Any) -> None:
            due[0] = t_due
            if runner is not None:
                runner.due = t_due
            try:
                sleep_done(*args)
            finally:
                due[0] = 0
                if runner is not None:
                    runner.due = 0

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
                created(task, coro, context, creation_site())
            except Exception:
                counters.errors += 1
            return task

        def run_in_executor(self: Any, executor: Any, func: Any, *args: Any) -> Any:
            if iscoroutinefunction(func) or iscoroutine(func):
                # Let the loop refuse it (TypeError) exactly as it would have.
                return base_run_in_executor(self, executor, func, *args)
            call = timed_job(func, current_task(self), (emit,))
            return base_run_in_executor(self, executor, call, *args)

        if runner is not None:
            one_frame = base.call_soon is _BASE_CALL_SOON and hasattr(loop, "_ready")
            handle = _step_handle_type() if one_frame else None
            call_soon = _native.CallSoon(runner, base_call_soon, handle)  # type: ignore[assignment]
            self._call_soon = call_soon
            # A server schedules a timer on every response (uvicorn: the keep-alive
            # timeout); in C it costs no Python frame.
            call_later = _native.CallLater(base_call_later, sleep_done, timer_fired)
            create_task = _native.CreateTask(  # type: ignore[assignment]
                runner,
                base_create_task,
                current_task,
                current_request,
                self._done_callback(),
                _ASYNCIO_DIR,
                MAX_LIVE_TASKS,
                # 3.11's current_task() is Python: read its table instead (3.12+: C)
                current_tasks=_CURRENT_TASKS,
            )

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
