"""What the fleet needs of the capture engine, and what the follower needs of the fleet.

``engine.Fleet`` creates its ``follow.Follower`` and hands it itself; the follower sees it
through ``FleetPort`` only, so ``follow.py`` never imports ``engine.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ...core.text import ErrorLog
from ...snapshot.recorder import FlightRecorder
from ...snapshot.store import SnapshotStore, StoredInfo
from ..triggers import Gate
from .client import Counters
from .options import FleetOptions
from .signing import Signer


class Engine(Protocol):
    """What the fleet needs of the capture engine (``capture.CaptureEngine``) it serves."""

    recorder: FlightRecorder
    store: SnapshotStore
    gate: Gate
    errors: ErrorLog
    captures: int
    building: bool

    @property
    def capturing(self) -> bool:
        """A local capture is pending, being built or queued."""
        ...

    def _built(self) -> None:
        """A build ended: start the queued capture, if any, else clear ``building``."""
        ...


class FleetPort(Protocol):
    """What the follower needs of the fleet (``engine.Fleet``)."""

    engine: Engine
    options: FleetOptions
    counters: Counters
    signer: Signer
    app_loop: asyncio.AbstractEventLoop | None

    @property
    def sender(self) -> str:
        """This process among the fleet."""
        ...

    def remember(self, doc: dict[str, Any]) -> None:
        """Note what ``share`` will say of this document (its incident head) before it is stored."""
        ...

    def share(self, stored: StoredInfo) -> None:
        """Upload a stored snapshot of an incident (in the background; never raises)."""
        ...
