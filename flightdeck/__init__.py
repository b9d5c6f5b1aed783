"""flightdeck: a flight recorder for asyncio web services.

Always on, bounded in age and bytes; snapshots the last seconds of what the event loop
and the requests did when a request is slow, fails, or the loop is blocked.
"""

from . import export  # noqa: F401  (registers the export formats with Snapshot.dumps)
from ._version import __version__
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
