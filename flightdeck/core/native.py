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
from .window import Frozen

#: Generation size from which a window is cut into ``MAX_GENERATIONS`` (below, the C default:
#: at most 16, at least 64 KiB each).
_MIN_GENERATION = 256 << 10
MAX_GENERATIONS = 32


def generations(max_bytes: int) -> int:
    """How many generations a window of ``max_bytes`` gets (0: the C default, up to 16).

    A snapshot decodes one generation at a time, into about 23 times its encoded size as
    tuples (``benchmarks/README.md``, "Capture memory"): with 16 generations that is 1.25 x
    ``max_bytes`` at once, most of a capture's 2 x ``max_bytes`` allowance. 32 halve it;
    each generation stays >= 256 KiB, so the status tables that head it (at most half of
    it) leave room for events.
    """
    ring = max_bytes * 7 // 8  # an eighth goes to the status tables (``_native.c``)
    n = ring // _MIN_GENERATION
    return min(n, MAX_GENERATIONS) if n > 16 else 0


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
        super().__init__(
            window_ns, max_bytes, segment_events, segment_ns, clock, generations(max_bytes)
        )
        #: Requests in flight: ``rid -> (REQ_START event, scope, state)`` (the middleware's).
        self.live_requests: dict[int, tuple[Any, ...]] = {}

    def freeze(self) -> Frozen:
        """An immutable view: sealed generations shared, the open one copied."""
        segments, tasks, requests, dropped, t_now = self._freeze_parts()
        return Frozen(segments, [], tasks, requests, dropped, t_now)
