"""Convenience entry points for programs that are not ASGI apps, and for uvicorn's ``--loop``.

The instrumentation swaps the running loop's class for an instrumented subclass, which
works on asyncio's loops and on ``uvloop.Loop`` alike, so no special loop is required:
``install()`` simply starts a process-wide recorder on the running loop.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from .recorder import FlightRecorder

#: The recorder ``install()`` started on each loop. Weak keys: a closed loop's address may
#: be reused by a new loop, which must get a recorder of its own.
_installed: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FlightRecorder] = (
    weakref.WeakKeyDictionary()
)


def install(**options: Any) -> FlightRecorder:
    """Start a :class:`FlightRecorder` on the running loop, once per loop; returns it.

    ``options`` are :class:`FlightRecorder`'s. Calling it again on the same loop returns
    the recorder already installed.
    """
    loop = asyncio.get_running_loop()
    rec = _installed.get(loop)
    if rec is not None and rec.enabled:
        return rec
    rec = FlightRecorder(**options)
    rec.start(loop)
    _installed[loop] = rec
    return rec


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when it is installed, else asyncio's.

    Usable as ``uvicorn --loop flightdeck:new_event_loop``; the instrumentation itself is
    installed by :class:`FlightDeck` or :func:`install` on whatever loop runs.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
