"""``NativeWindow``: the window of the native core (``core/_native.c``), same API as ``Window``.

Events are encoded when emitted (no tuple is kept); ``freeze()`` hands the sealed
generations (immutable) and a copy of the open one to the snapshot builder, which decodes
them off the loop. Importing this module fails when the extension is not built: use
``core.cores`` to pick a core.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from . import _native
from .window import Event, Frozen


class NativeWindow(_native.Window):
    """Bounded storage of recent events, encoded natively. ``append`` is the hot path."""

    def __init__(
        self,
        window_ns: int,
        max_bytes: int,
        segment_events: int = 4096,
        segment_ns: int = 1_000_000_000,
        clock: Callable[[], int] = perf_counter_ns,
    ) -> None:
        super().__init__(window_ns, max_bytes, segment_events, segment_ns, clock)
        #: What the instrumentation knows is alive now (for labels; mutated by the loop).
        self.live_tasks: dict[int, Event] = {}
        #: Requests in flight: ``rid -> (REQ_START event, scope, state)`` (the middleware's).
        self.live_requests: dict[int, tuple[Any, ...]] = {}

    def freeze(self) -> Frozen:
        """An immutable view: sealed generations shared, the open one copied."""
        segments, tasks, requests, dropped, t_now = self._freeze_parts()
        return Frozen(segments, [], tasks, requests, dropped, t_now)
