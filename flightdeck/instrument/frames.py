"""Stacks and names as the window stores them: ``(function, file, line)`` tuples and strings.

Nothing here keeps a frame, task or callable alive: only these plain values are recorded.
"""

from __future__ import annotations

import collections
import functools
import os
import types
from collections.abc import Callable
from contextvars import Context
from types import ModuleType
from typing import Any

from ..core.cores import native_module

_native: ModuleType | None = native_module()

MAX_STACK = 48
#: The instruments' own frames (step runners, job wrappers) are noise in a user's stack.
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def stack_of(frame: types.FrameType | None, limit: int = MAX_STACK) -> tuple[Any, ...]:
    """``(function, file, line)`` tuples, innermost last."""
    out: list[tuple[str, str, int]] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        if not code.co_filename.startswith(_OWN_DIR):
            out.append((code.co_qualname, code.co_filename, frame.f_lineno))
        frame = frame.f_back
    out.reverse()
    return tuple(out)


#: The package's files: flightdeck's frames (the middleware an exception passed through)
#: are not where an app's exception was raised.
_PACKAGE_DIR = os.path.dirname(_OWN_DIR.rstrip(os.sep)) + os.sep
#: A traceback is walked this far at most (a RecursionError's has about a thousand frames).
_MAX_TRACEBACK = 10_000


def error_stack(exc: BaseException, limit: int = MAX_STACK) -> tuple[Any, ...]:
    """Where ``exc`` was raised: ``(function, file, line)`` of its traceback, innermost last.

    The innermost ``limit`` frames are kept, flightdeck's own left out. Code locations only:
    nothing of a frame's locals is read. Empty for ``GeneratorExit`` (a coroutine closed
    from outside: nothing was raised in it) and for an exception without a traceback.
    """
    if isinstance(exc, GeneratorExit):
        return ()
    frames: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=limit)
    tb = exc.__traceback__
    hops = 0
    while tb is not None and hops < _MAX_TRACEBACK:
        code = tb.tb_frame.f_code
        if not code.co_filename.startswith(_PACKAGE_DIR):
            line = tb.tb_lineno
            frames.append((code.co_qualname, code.co_filename, line if type(line) is int else 0))
        tb = tb.tb_next
        hops += 1
    return tuple(frames)


def _py_await_chain(coro: Any, limit: int = MAX_STACK) -> tuple[Any, ...]:
    """Where a suspended coroutine waits: its await chain's frames, innermost last."""
    out: list[tuple[str, str, int]] = []
    hops = 0
    while coro is not None and len(out) < limit and hops < 4 * limit:
        hops += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            out.append((code.co_qualname, code.co_filename, frame.f_lineno))
        following = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if frame is None and following is None:
            break
        # An awaitable without a frame (FlightDeck's native request, asgi/_casgi.c) still
        # says what it awaits: follow it.
        coro = following
    return tuple(out)


await_chain: Callable[..., tuple[Any, ...]] = _py_await_chain
if _native is not None:
    # The same walk in C (core/_native.c ``chain_of``), with line numbers cached per
    # (code, offset): a frame's line otherwise costs a walk of its line table.
    await_chain = _native.await_chain


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
