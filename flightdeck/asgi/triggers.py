"""Triggers: when to snapshot, and the engine that keeps a storm down to a few snapshots.

A trigger looks at finished requests, requests still in flight, loop blocks, or polls a
metric of its own, and answers with a reason when it fires. The gate applies a cooldown
per (kind, route) and a global rate limit, and counts what it refuses and why; the capture
engine (``capture.py``) builds one snapshot at a time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.config import (
    DEFAULT_LOOP_BLOCKED,
    DEFAULT_SLOW_REQUEST,
    check_optional_seconds,
    check_seconds,
)
from .notcaptured import not_captured, things, why

logger = logging.getLogger("flightdeck")


@dataclass(slots=True)
class RequestInfo:
    """What a trigger sees of a request (finished, or in flight when ``duration`` is None)."""

    id: int
    kind: str
    method: str
    path: str
    route: str | None
    status: int | None
    start: float
    duration: float | None
    elapsed: float
    ttfb: float | None
    client: str | None
    disconnected: bool
    error: str | None

    def to_record(self) -> dict[str, Any]:
        end = None if self.duration is None else self.start + self.duration
        return {
            "id": self.id,
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "status": self.status,
            "start": self.start,
            "end": end,
            "duration": self.duration,
            "ttfb": self.ttfb,
            "client": self.client,
            "disconnected": self.disconnected,
            "error": self.error,
        }

    @property
    def label(self) -> str:
        return f"{self.method} {self.route or self.path}"


@dataclass(frozen=True, slots=True)
class RequestChecks:
    """Which finished requests a trigger's ``on_request`` can fire on; it sees no others.

    A request is shown when any field matches: ``errors`` (an exception escaped the app),
    ``status_at_least`` (an int status at or past it), ``slower_than`` (an HTTP request
    longer than this many seconds that no in-flight trigger fired on already). ``None`` and
    ``False`` match nothing. The request path decides this with integers, per request,
    without building a ``RequestInfo``.
    """

    errors: bool = False
    status_at_least: int | None = None
    slower_than: float | None = None


#: The watchdog's threshold when no trigger states one (seconds): ``loop_blocked``'s default.
DEFAULT_BLOCK_THRESHOLD = DEFAULT_LOOP_BLOCKED


class Trigger:
    """Base class of triggers. Override any of the hooks; each returns a reason to fire.

    ``kind`` names the trigger in snapshots; ``cooldown`` (seconds, ``None`` for the
    engine's default) is the least time between two snapshots of this kind and route.
    A trigger also states what it needs to hear of: :meth:`block_threshold` (the loop
    watchdog's threshold is the smallest any ``on_block`` trigger states) and
    :meth:`request_checks` (which finished requests reach ``on_request``).
    """

    kind: str = "custom"
    cooldown: float | None = None

    def block_threshold(self) -> float:
        """The shortest loop block (seconds) ``on_block`` must hear of."""
        return DEFAULT_BLOCK_THRESHOLD

    def request_checks(self) -> RequestChecks | None:
        """Which finished requests ``on_request`` must see; ``None`` (the default): all."""
        return None

    def on_request(self, request: RequestInfo) -> str | None:
        """A request finished."""
        return None

    def on_inflight(self, request: RequestInfo) -> str | None:
        """A request is still running (checked periodically)."""
        return None

    def on_block(self, duration: float, where: str | None) -> str | None:
        """The loop was blocked for ``duration`` seconds."""
        return None

    def poll(self) -> str | None:
        """Called periodically on the event loop, for triggers on a metric of your own."""
        return None


class SlowRequest(Trigger):
    """Fires when a request takes longer than ``threshold`` (per-route overrides allowed).

    Checked at completion and while the request is still in flight, so a hung request is
    captured while it hangs. Websocket connections never fire: their length is not latency.
    """

    kind = "slow_request"

    def __init__(
        self,
        threshold: float | str = DEFAULT_SLOW_REQUEST,
        routes: Mapping[str, float | str | None] | None = None,
    ):
        self.threshold = check_seconds("slow_request", threshold)
        self.routes: dict[str, float | None] = {}
        if routes is not None and not isinstance(routes, Mapping):
            raise TypeError("slow_routes must be a dict of route template to seconds or None")
        for route, value in (routes or {}).items():
            if not isinstance(route, str):
                raise TypeError("slow_routes must map route templates (str) to seconds")
            self.routes[route] = check_optional_seconds(f"slow_routes[{route!r}]", value)

    def request_checks(self) -> RequestChecks:
        # No finished request faster than the lowest threshold can fire.
        limits = [self.threshold, *(v for v in self.routes.values() if v is not None)]
        return RequestChecks(slower_than=min(limits))

    def limit(self, request: RequestInfo) -> float | None:
        for key in (request.route, request.path):
            if key is not None and key in self.routes:
                return self.routes[key]
        return self.threshold

    def on_request(self, request: RequestInfo) -> str | None:
        if request.kind != "http" or request.duration is None:
            return None
        limit = self.limit(request)
        if limit is not None and request.duration > limit:
            return f"{request.label} took {request.duration:.3f} s (threshold {limit:g} s)"
        return None

    def on_inflight(self, request: RequestInfo) -> str | None:
        if request.kind != "http":
            return None
        limit = self.limit(request)
        if limit is not None and request.elapsed > limit:
            return (
                f"{request.label} still running after {request.elapsed:.3f} s"
                f" (threshold {limit:g} s)"
            )
        return None


class ServerError(Trigger):
    """Fires on a 5xx response, or an exception escaping the app (kind ``exception``)."""

    kind = "server_error"

    def request_checks(self) -> RequestChecks:
        return RequestChecks(errors=True, status_at_least=500)

    def on_request(self, request: RequestInfo) -> str | None:
        if request.error is not None:
            return f"{request.label} raised {request.error}"
        if request.status is not None and request.status >= 500:
            return f"{request.label} answered {request.status}"
        return None


class LoopBlocked(Trigger):
    """Fires when one callback or task step held the loop longer than ``threshold``."""

    kind = "loop_blocked"

    def __init__(self, threshold: float | str = DEFAULT_LOOP_BLOCKED) -> None:
        self.threshold = check_seconds("loop_blocked", threshold)

    def block_threshold(self) -> float:
        return self.threshold

    def on_block(self, duration: float, where: str | None) -> str | None:
        if duration >= self.threshold:
            return f"event loop blocked for {duration:.3f} s" + (f" in {where}" if where else "")
        return None


class RateLimiter:
    """At most ``count`` firings per ``period`` seconds (sliding window)."""

    def __init__(self, count: int, period: float, clock: Any = time.monotonic) -> None:
        self.count = count
        self.period = period
        self.clock = clock
        self._times: deque[float] = deque()

    def allow(self) -> bool:
        now = self.clock()
        times = self._times
        while times and now - times[0] >= self.period:
            times.popleft()
        if len(times) >= self.count:
            return False
        times.append(now)
        return True

    def wait(self) -> float:
        """Seconds until :meth:`allow` would allow again (0 when it would now)."""
        times = self._times
        if len(times) < self.count:
            return 0.0
        return max(0.0, self.period - (float(self.clock()) - times[-self.count]))


class Gate:
    """Cooldowns per (kind, route) and a global rate limit; counts fired and suppressed.

    ``why`` says why each suppression happened: ``{reason: {kind: count}}`` with reasons
    ``cooldown``, ``rate_limit`` and whatever the capture engine passes to :meth:`suppress`.
    """

    def __init__(
        self,
        cooldown: float,
        rate: RateLimiter,
        clock: Any = time.monotonic,
    ) -> None:
        self.cooldown = cooldown
        self.rate = rate
        self.clock = clock
        self._last: dict[tuple[str, str | None], float] = {}
        self.fired: dict[str, int] = {}
        self.suppressed: dict[str, int] = {}
        self.why: dict[str, dict[str, int]] = {}
        #: (time, kind, reason) of the latest refusals, for ``notcaptured``; and whether one
        #: was logged since a trigger was last admitted (one log line per burst).
        self.recent: deque[tuple[float, str, str]] = deque(maxlen=4096)
        self._logged = False

    def admit(
        self, kind: str, route: str | None, cooldown: float | None = None, *, rate: bool = True
    ) -> bool:
        """Whether a trigger of ``kind`` on ``route`` may fire now (and note that it did).

        ``rate=False``: the firing makes no snapshot of its own (it joins a pending one), so
        it is not counted against the rate limit; its cooldown still applies and starts.
        """
        now = self.clock()
        key = (kind, route)
        wait = self.cooldown if cooldown is None else cooldown
        last = self._last.get(key)
        if last is not None and now - last < wait:
            self.suppress(kind, "cooldown")
            return False
        if rate and not self.rate.allow():
            self.suppress(kind, "rate_limit")
            return False
        if len(self._last) > 10_000:  # many distinct routes: forget the oldest half
            for old in list(self._last)[:5_000]:
                del self._last[old]
        self._last[key] = now
        self.fired[kind] = self.fired.get(kind, 0) + 1
        self._logged = False
        return True

    def not_captured(self) -> list[str]:
        """The refusals of the last minute (or rate period), one sentence per reason."""
        return not_captured(self)

    def suppress(self, kind: str, reason: str = "capturing") -> None:
        self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
        counts = self.why.setdefault(reason, {})
        counts[kind] = counts.get(kind, 0) + 1
        self.recent.append((self.clock(), kind, reason))
        if reason != "cooldown" and not self._logged:  # a cooldown is the expected de-dup
            self._logged = True
            logger.warning(
                "flightdeck: %s not captured: %s (more are counted in the status, not logged)",
                things({kind: 1}),
                why(self, reason),
            )
