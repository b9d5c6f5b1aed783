"""``Sink``: the narrow face of a recorder that instruments write into.

An instrument gets a sink, never the recorder: it can emit events, keep the live tables,
say what it covers and hook into freezes and loop blocks, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from .window import Event, Frozen


class Sink:
    __slots__ = (
        "block_listeners",
        "coverage",
        "emit",
        "errors",
        "freeze_hooks",
        "last_event_time",
        "live_requests",
        "live_tasks",
        "native",
        "slow_callback_ns",
        "to_epoch",
        "wait_threshold_ns",
    )

    def __init__(
        self,
        emit: Callable[[Event], None],
        live_tasks: MutableMapping[int, Event],
        live_requests: dict[int, tuple[Any, ...]],
        last_event_time: Callable[[], int | None],
        to_epoch: Callable[[int], float],
        *,
        wait_threshold_ns: int,
        slow_callback_ns: int,
        native: Any = None,
    ) -> None:
        #: The hot path: append one event tuple (see ``events``). Thread-safe, never raises.
        self.emit = emit
        #: Tasks alive now, ``tid -> TASK_CREATE event`` (for labels): a dict the loop hook
        #: keeps, or the native window's own table, kept from the events it records.
        self.live_tasks = live_tasks
        #: Requests in flight, ``rid -> (REQ_START event, scope, state)`` (the middleware's;
        #: the event bounded by ``window.live_start``).
        self.live_requests = live_requests
        self.last_event_time = last_event_time
        self.to_epoch = to_epoch
        self.wait_threshold_ns = wait_threshold_ns
        self.slow_callback_ns = slow_callback_ns
        #: The native window (``core._native.Window``) when the native core runs, else None:
        #: native instruments write into it directly.
        self.native = native
        #: What the instruments record, for ``process.coverage``.
        self.coverage: dict[str, bool] = {
            "task_lifecycle": False,
            "task_steps": False,
            "scheduling_delay": False,
            "loop_blocks": False,
            "executor": False,
        }
        #: Called on the loop's thread with a LOOP_BLOCK event when a block ends.
        self.block_listeners: list[Callable[[Event], None]] = []
        #: Called at freeze time on the freezing thread; may add to ``Frozen.extra``.
        self.freeze_hooks: list[Callable[[Frozen], None]] = []
        #: Failures inside instruments (counted, never raised into the app).
        self.errors = 0
