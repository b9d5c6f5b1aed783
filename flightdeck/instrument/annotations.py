"""User annotations: ``region()`` and ``log()``, recorded into every started recorder."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from time import perf_counter_ns
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from ..core import events as ev
from ..core import registry

try:
    from _asyncio import current_task as _current_task  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - pure-Python asyncio
    from asyncio import current_task as _current_task

P = ParamSpec("P")
R = TypeVar("R")

MAX_TEXT = 1024


def _task_id() -> int | None:
    try:
        task = _current_task()
    except RuntimeError:
        return None
    return None if task is None else id(task)


def _text(value: object) -> str:
    s = value if isinstance(value, str) else str(value)
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + "…[truncated]"


class region:
    """Mark a span of work on the timeline: ``with region("db.query"): ...``.

    Also a decorator, for plain and ``async def`` functions. Costs almost nothing when no
    recorder is started.
    """

    __slots__ = ("_name", "_t0")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"region name must be a str, not {type(name).__name__}")
        self._name = _text(name)
        self._t0 = 0

    def __enter__(self) -> region:
        self._t0 = perf_counter_ns()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if registry.active:
            event = (ev.REGION, self._t0, perf_counter_ns(), self._name, _task_id())
            for rec in registry.active:
                rec.emit(event)

    async def __aenter__(self) -> region:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R]: ...
    @overload
    def __call__(self, func: Any) -> Any: ...
    def __call__(self, func: Any) -> Any:
        name = self._name
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with region(name):
                    return await func(*args, **kwargs)

            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with region(name):
                return func(*args, **kwargs)

        return wrapper


def log(category: str, message: str) -> None:
    """Record a one-line message under ``category`` on the timeline."""
    if registry.active:
        event = (ev.LOG, perf_counter_ns(), _text(category), _text(message), _task_id())
        for rec in registry.active:
            rec.emit(event)
