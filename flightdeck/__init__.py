"""flightdeck: a flight recorder for asyncio web services.

Always on, bounded in age and bytes; snapshots the last seconds of what the event loop
and the requests did when a request is slow, fails, or the loop is blocked.

The public names are imported on first use (PEP 562): ``python -m flightdeck convert``,
which the debug endpoint runs in a child process, and ``flightdeck summary`` then import
only what they use, not the middleware, the fleet client and every exporter.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import export  # noqa: F401  (registers the export formats with Snapshot.dumps)
from ._version import __version__

if TYPE_CHECKING:
    from .asgi.middleware import FlightDeck
    from .asgi.triggers import (
        LoopBlocked,
        RequestChecks,
        RequestInfo,
        ServerError,
        SlowRequest,
        Trigger,
    )
    from .instrument.annotations import log, region
    from .snapshot.document import Snapshot, SnapshotError, SnapshotInProgress
    from .snapshot.loops import install, new_event_loop
    from .snapshot.recorder import FlightRecorder

__all__ = [
    "FlightDeck",
    "FlightRecorder",
    "LoopBlocked",
    "RequestChecks",
    "RequestInfo",
    "ServerError",
    "SlowRequest",
    "Snapshot",
    "SnapshotError",
    "SnapshotInProgress",
    "Trigger",
    "__version__",
    "install",
    "log",
    "new_event_loop",
    "region",
]

#: Each public name's module, imported when the name is first looked up.
_LAZY: dict[str, str] = {
    "FlightDeck": ".asgi.middleware",
    "FlightRecorder": ".snapshot.recorder",
    "LoopBlocked": ".asgi.triggers",
    "RequestChecks": ".asgi.triggers",
    "RequestInfo": ".asgi.triggers",
    "ServerError": ".asgi.triggers",
    "SlowRequest": ".asgi.triggers",
    "Snapshot": ".snapshot.document",
    "SnapshotError": ".snapshot.document",
    "SnapshotInProgress": ".snapshot.document",
    "Trigger": ".asgi.triggers",
    "install": ".snapshot.loops",
    "log": ".instrument.annotations",
    "new_event_loop": ".snapshot.loops",
    "region": ".instrument.annotations",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
