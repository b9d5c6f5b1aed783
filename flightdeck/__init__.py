"""flightdeck: a flight recorder for asyncio web services.

Always on, bounded in age and bytes; snapshots the last seconds of what the event loop
and the requests did when a request is slow, fails, or the loop is blocked.
"""

from ._annotations import log, region
from ._loops import install, new_event_loop
from ._middleware import FlightDeck
from ._recorder import FlightRecorder
from ._snapshot import Snapshot, SnapshotError, SnapshotInProgress
from ._triggers import LoopBlocked, RequestInfo, ServerError, SlowRequest, Trigger
from ._version import __version__

__all__ = [
    "FlightDeck",
    "FlightRecorder",
    "LoopBlocked",
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
