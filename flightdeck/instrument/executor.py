"""Thread-pool work: ``run_in_executor``, ``asyncio.to_thread`` and ``anyio.to_thread.run_sync``.

A job is wrapped where it is handed over (on the loop, so the task and request it belongs
to are the caller's); the wrapper records when it was queued, started and finished.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence
from time import perf_counter_ns
from typing import Any

from ..core import events as ev
from ..core import registry
from .context import current_request
from .frames import callable_name

_current_task = asyncio.current_task


def timed_job(
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


def patch_anyio() -> None:
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

    async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not registry.active:
            return await original(func, *args, **kwargs)
        try:
            task = _current_task()
        except RuntimeError:
            task = None
        call = timed_job(func, task, [rec.emit for rec in registry.active])
        return await original(call, *args, **kwargs)

    functools.update_wrapper(run_sync, original)
    run_sync.__flightdeck__ = True  # type: ignore[attr-defined]
    to_thread.run_sync = run_sync  # type: ignore[assignment]


def unpatch_anyio() -> None:
    global _anyio_patch_count, _anyio_original
    if _anyio_patch_count == 0:
        return
    _anyio_patch_count -= 1
    if _anyio_patch_count == 0 and _anyio_original is not None:
        import anyio.to_thread as to_thread

        if getattr(to_thread.run_sync, "__flightdeck__", False):
            to_thread.run_sync = _anyio_original
        _anyio_original = None
