"""The capture engine: triggers, the gate (cooldown, rate limit), the pending capture.

The middleware hands it finished requests (``request_done``) only when an integer pre-check
says a trigger may fire; the engine checks requests in flight and polled triggers on a
periodic tick, hears loop blocks from the watchdog, and fires: a ``MARK`` event now, the
capture ``capture_delay`` later (so the aftermath is in it), the document built in a thread.
Everything here runs guarded: a failure is counted in ``errors`` and never reaches the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from time import perf_counter_ns
from typing import Any

from ..core import events as ev
from ..core.text import ErrorLog, safe_text
from ..snapshot.document import Snapshot, SnapshotInProgress
from ..snapshot.recorder import FlightRecorder
from ..snapshot.store import SnapshotStore
from .config import Config
from .redact import MAX_METHOD, MAX_PATH
from .triggers import (
    DEFAULT_BLOCK_THRESHOLD,
    Gate,
    RateLimiter,
    RequestInfo,
    ServerError,
    Trigger,
)


class RequestState:
    """What the middleware notes about one request while it runs (times in ns)."""

    __slots__ = ("body_end", "close_code", "disconnected", "fired", "status", "ttfb")

    def __init__(self) -> None:
        self.status: Any = None  # as the app sent it (an int unless the app is broken)
        self.ttfb = 0  # when http.response.start (or websocket.accept) was sent
        self.disconnected = False
        self.body_end = 0  # when the last body byte was sent
        self.fired = False  # an in-flight trigger fired for this request
        self.close_code: Any = None  # WebSocket: the first close code sent or received


#: The range of the integers every snapshot format holds: orjson refuses any past 64 bits,
#: and the native core's window keeps -2**63 for None.
INT64_MIN, INT64_MAX = -((1 << 63) - 1), (1 << 63) - 1


def clamp64(value: int, errors: ErrorLog | None = None) -> int:
    """``value`` if it fits in 64 bits, else the nearest bound (counted in ``errors``).

    A broken app may send any int as a status or close code; recorded as is, it would make
    every capture of the window fail. ``_casgi.c`` clamps and counts alike.
    """
    if INT64_MIN <= value <= INT64_MAX:
        return value
    if errors is not None:
        errors.once(
            "status_clamped",
            "flightdeck: the app sent a status or close code past 64 bits; recorded clamped",
        )
    return INT64_MAX if value > 0 else INT64_MIN


#: At most this many triggers join one snapshot's ``trigger.also``; more are suppressed.
MAX_ALSO = 32


class PendingCapture:
    """A trigger admitted by the gate whose snapshot is not built yet."""

    __slots__ = ("also", "kind", "reason", "record", "t_fire")

    def __init__(self, kind: str, reason: str, record: dict[str, Any] | None, t_fire: int):
        self.kind = kind
        self.reason = reason
        self.record = record
        self.t_fire = t_fire
        self.also: list[dict[str, Any]] = []


class CaptureEngine:
    """Decides when to snapshot and takes the snapshot; one per ``FlightDeck``.

    The gate, the pending capture and the queued one (``trigger.also``) share state that one
    lock-free path on the loop must read consistently; the trigger checks themselves live in
    ``triggers.py``.
    """

    def __init__(self, config: Config, recorder: FlightRecorder, store: SnapshotStore) -> None:
        self.config = config
        self.recorder = recorder
        self.store = store
        self.gate = Gate(config.cooldown, RateLimiter(config.rate_count, config.rate_period))
        self.errors = ErrorLog()
        triggers = config.triggers
        self.inflight_triggers = [t for t in triggers if _overrides(t, "on_inflight")]
        self.block_triggers = [t for t in triggers if _overrides(t, "on_block")]
        self.poll_triggers = [t for t in triggers if _overrides(t, "poll")]
        self.request_triggers = [t for t in triggers if _overrides(t, "on_request")]
        # The request path's pre-check: what the triggers say they need to see of finished
        # requests (RequestChecks), combined. When every request trigger states it, a
        # request that raised nothing (or that no trigger checks errors of), with a status
        # under status_floor and no slower than slow_floor_ns, is ruled out with integers.
        checks = [t.request_checks() for t in self.request_triggers]
        stated = [c for c in checks if c is not None]
        #: Every request trigger states its RequestChecks: the pre-check applies.
        self.request_precheck = len(stated) == len(checks)
        #: An exception escaping the app can fire a trigger.
        self.error_fires = any(c.errors for c in stated)
        statuses = [c.status_at_least for c in stated if c.status_at_least is not None]
        #: No finished request with a status under this can fire (by its status).
        self.status_floor = min(statuses) if statuses else 1 << 62
        floors = [c.slower_than for c in stated if c.slower_than is not None]
        #: No finished request faster than this (ns) can fire (by its duration).
        self.slow_floor_ns = int(min(floors) * 1e9) if floors else 1 << 62
        #: How often requests in flight and polled triggers are checked (seconds): a
        #: quarter of the shortest duration an in-flight trigger states, within 10-250 ms.
        inflight = [t.request_checks() for t in self.inflight_triggers]
        limits = [c.slower_than for c in inflight if c is not None and c.slower_than is not None]
        self.tick_interval = min(0.25, max(min(limits) / 4, 0.01)) if limits else 0.25
        #: Requests in flight, shared with the watchdog (which labels blocks with them):
        #: rid -> (REQ_START event, scope, RequestState).
        self.inflight = recorder.live_requests
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ticks = 0  # the current chain of periodic checks (see _tick)
        self.pending: PendingCapture | None = None  # fired, its window not frozen yet
        self.building = False  # a document is being built in a thread
        self.queued: PendingCapture | None = None  # fired while building: captured next
        self.joined: dict[str, int] = {}  # triggers listed in another's trigger.also
        self.captures = 0
        self.capture_failures = 0
        #: The fleet (``fleet.Fleet``) when one is configured: told of every capture built.
        self.fleet: Any = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin the periodic checks and listen for loop blocks (on ``loop``)."""
        self.loop = loop
        if self.on_block not in self.recorder.block_listeners:
            self.recorder.block_listeners.append(self.on_block)
        self._ticks += 1
        loop.call_later(self.tick_interval, self._tick, self._ticks)

    def stop(self) -> None:
        """Stop the periodic checks (the pending one ends them) and the block listener.

        A capture waiting for its ``capture_delay`` is taken now: its timer would not run
        on a loop that is closing.
        """
        if self.pending is not None and self.loop is not None:
            self._capture_now()
        self.loop = None
        self._ticks += 1
        with contextlib.suppress(ValueError):
            self.recorder.block_listeners.remove(self.on_block)

    # -- requests ---------------------------------------------------------------------------
    def request_done(
        self,
        rid: int,
        scope: Any,
        state: RequestState,
        t0: int,
        t1: int,
        kind: str,
        status: int | None,
        route: str | None,
        error: str | None,
    ) -> None:
        """A finished request that the middleware's pre-check could not rule out."""
        try:
            info = self.info(rid, scope, state, t0, kind, error, t1, status, route)
            for trig in self.request_triggers:
                if state.fired and _overrides(trig, "on_inflight"):
                    continue  # fired while in flight; not again for the same request
                reason = trig.on_request(info)
                if reason:
                    trig_kind = trig.kind
                    if isinstance(trig, ServerError) and info.error is not None:
                        trig_kind = "exception"
                    self.fire(trig_kind, info.route or info.path, reason, info, trig.cooldown)
        except Exception as exc:
            self.errors("request_end", exc)

    def info(
        self,
        rid: int,
        scope: Any,
        state: RequestState,
        t0: int,
        kind: str,
        error: str | None,
        t_end: int | None,
        status: int | None,
        route: str | None,
    ) -> RequestInfo:
        """What a trigger sees of a request, finished (``t_end``) or in flight."""
        now = perf_counter_ns()
        client = client_of(scope.get("client"))
        return RequestInfo(
            id=rid,
            kind=kind,
            method=method_of(scope, kind),
            path=safe_text(scope.get("path") or "", MAX_PATH),
            route=route,
            status=status,
            start=self.recorder.to_epoch(t0),
            duration=None if t_end is None else (t_end - t0) / 1e9,
            elapsed=((t_end or now) - t0) / 1e9,
            ttfb=(state.ttfb - t0) / 1e9 if state.ttfb else None,
            client=f"{client[0]}:{client[1]}" if client else None,
            disconnected=state.disconnected,
            error=error,
        )

    # -- periodic checks and blocks (on the loop) -------------------------------------------
    def _tick(self, ticks: int) -> None:
        # A tick armed before a stop() (or an earlier start()) ends its chain here.
        loop = self.loop
        if loop is None or ticks != self._ticks or not self.recorder.enabled:
            return
        try:
            if self.inflight_triggers and self.inflight:
                for rid, (start, scope, state) in list(self.inflight.items()):
                    if not state.fired:
                        self._check_inflight(rid, start, scope, state)
            for trig in self.poll_triggers:
                reason = trig.poll()
                if reason:
                    self.fire(trig.kind, None, reason, None, trig.cooldown)
        except Exception as exc:
            self.errors("tick", exc)
        finally:
            try:
                loop.call_later(self.tick_interval, self._tick, ticks)
            except RuntimeError:
                pass  # loop closed

    def _check_inflight(self, rid: int, start: Any, scope: Any, state: RequestState) -> None:
        info = self.info(
            rid,
            scope,
            state,
            start[ev.REQ_START_T],
            start[ev.REQ_START_SCOPE_TYPE],
            None,
            None,
            clamp64(state.status) if type(state.status) is int else None,
            route_of(scope),
        )
        for trig in self.inflight_triggers:
            reason = trig.on_inflight(info)
            if reason:
                state.fired = True
                self.fire(trig.kind, info.route or info.path, reason, info, trig.cooldown)
                return

    def on_block(self, event: tuple[Any, ...]) -> None:
        """Called on the loop thread by the watchdog's heartbeat when a block ended."""
        try:
            _, t0, t1, where, _stack = event
            duration = (t1 - t0) / 1e9
            for trig in self.block_triggers:
                reason = trig.on_block(duration, where)
                if reason:
                    info = self._blocked(where)
                    self.fire(trig.kind, None, reason, info, trig.cooldown)
                    pending = self.pending or self.queued
                    if info is None and pending is not None and pending.record is None:
                        pending.record = _label_record(where)
        except Exception as exc:
            self.errors("block_trigger", exc)

    def _blocked(self, where: object) -> RequestInfo | None:
        """The request in flight that a block is named after (the watchdog labels a block
        ``"GET /path: ..."`` after the request it caught running), for the trigger record:
        the stored form's header carries it, so listings show it without a conversion."""
        if not isinstance(where, str):
            return None
        for rid, (start, scope, state) in list(self.inflight.items()):
            label = f"{start[ev.REQ_START_METHOD]} {start[ev.REQ_START_PATH]}"
            if where.startswith(label):
                kind = start[ev.REQ_START_SCOPE_TYPE]
                t0 = start[ev.REQ_START_T]
                return self.info(
                    rid, scope, state, t0, kind, None, None, state.status, route_of(scope)
                )
        return None

    # -- snapshots --------------------------------------------------------------------------
    def fire(
        self,
        kind: str,
        route: str | None,
        reason: str,
        info: RequestInfo | None,
        cooldown: float | None,
    ) -> None:
        """A trigger fired: admit it through the gate, then capture it or join it to one.

        One capture at a time. While one is pending (before its window is frozen), a new
        trigger joins it (``trigger.also``); while one is being built, the first new trigger
        is queued to be captured next and later ones join that. Nothing admitted is lost;
        whatever is refused is counted in ``gate.why`` with the reason.
        """
        pending = self.pending or self.queued
        if pending is not None:
            if len(pending.also) >= MAX_ALSO:
                self.gate.suppress(kind, "capture_full")
                return
            if not self.gate.admit(kind, route, cooldown, rate=False):
                return
            self.joined[kind] = self.joined.get(kind, 0) + 1
            request = info.to_record() if info is not None else None
            pending.also.append({"kind": kind, "reason": reason, "request": request})
            self.recorder.emit((ev.MARK, perf_counter_ns(), kind, reason[:500]))
            return
        loop = self.loop
        if loop is None or not self.gate.admit(kind, route, cooldown):
            return
        self.recorder.emit((ev.MARK, perf_counter_ns(), kind, reason[:500]))
        record = info.to_record() if info is not None else None
        capture = PendingCapture(kind, reason, record, perf_counter_ns())
        if self.building:
            self.queued = capture  # captured as soon as the build running now is done
            return
        self.pending = capture
        loop.call_later(self.config.capture_delay, self._capture_now)

    @property
    def capturing(self) -> bool:
        """A capture is pending, being built, or queued."""
        return self.pending is not None or self.building or self.queued is not None

    def _capture_now(self) -> None:
        capture = self.pending
        if capture is None:
            return
        try:
            frozen = self.recorder.freeze()
        except Exception as exc:
            self.pending = None
            self.capture_failures += 1
            self.errors("freeze", exc)
            return
        self.pending = None
        self.building = True

        def work() -> None:
            try:
                fleet = self.fleet
                stored = self.recorder.build_into(
                    self.store,
                    frozen,
                    kind=capture.kind,
                    reason=capture.reason,
                    request=capture.record,
                    trigger_time_ns=capture.t_fire,
                    extra={"also": capture.also},
                    # The fleet may open an incident (trigger.incident); it never raises.
                    annotate=None if fleet is None else fleet.originate,
                    scope=self.config.capture_scope,
                )
                self.captures += 1
                if fleet is not None:
                    fleet.share(stored)  # uploads in the background; never raises
            except Exception as exc:
                self.capture_failures += 1
                self.errors("capture", exc)
            finally:
                self._built()

        threading.Thread(target=work, name="flightdeck-snapshot", daemon=True).start()

    def _built(self) -> None:
        # On the build thread: hand a queued capture to the loop (or drop it if it is gone).
        loop = self.loop
        if self.queued is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(self._start_queued)
                return
            except RuntimeError:
                self.queued = None  # the loop is closed: nothing left to capture
        self.building = False

    def _start_queued(self) -> None:
        self.building = False
        self.pending, self.queued = self.queued, None
        self._capture_now()

    async def capture(self, reason: str = "", scope: str = "process") -> Snapshot:
        """Take a manual snapshot now and keep it in the store (the endpoint's capture).

        ``scope="host"``: with every live process's window sharing the store's directory
        (``ValueError`` without a directory).
        """
        import anyio.to_thread

        if scope == "host" and self.store.directory is None:
            raise ValueError("a host capture needs a snapshot directory")

        if self.capturing:
            raise SnapshotInProgress("a snapshot is already being built")
        self.building = True
        try:
            self.gate.fired["manual"] = self.gate.fired.get("manual", 0) + 1
            self.recorder.emit((ev.MARK, perf_counter_ns(), "manual", reason[:500]))
            frozen = self.recorder.freeze()

            def work() -> Snapshot:
                # Written straight into the store: the stored form is never held whole here.
                return self.recorder.capture_into(
                    self.store, frozen, kind="manual", reason=reason or "captured", scope=scope
                )

            snap = await anyio.to_thread.run_sync(work)
            self.captures += 1
            return snap
        finally:
            self.building = False

    def status(self) -> dict[str, Any]:
        """The engine's part of ``/debug/flight/status``."""
        return {
            "snapshots": self.captures,
            "capture_failures": self.capture_failures,
            "triggers": {
                "fired": dict(self.gate.fired),
                "suppressed": dict(self.gate.suppressed),
                "suppressed_why": {why: dict(c) for why, c in self.gate.why.items()},
                "joined": dict(self.joined),
                "pending": self.pending is not None,
                "queued": self.queued is not None,
            },
        }


def _label_record(where: object) -> dict[str, Any] | None:
    """``{"id": None, "method", "path"}`` from a block's label (``"GET /path: site"``) when
    its request ended before the block was heard of: what a listing shows. The document's
    full record is found on read (``causes.blocked_request``), as ``id`` is None."""
    if not isinstance(where, str):
        return None
    method, _, rest = where.partition(" ")
    if not (method.isalpha() and method.isupper() and rest.startswith("/")):
        return None
    path = rest.split(": ", 1)[0].split(" (", 1)[0]
    return {"id": None, "method": method[:MAX_METHOD], "path": path[:MAX_PATH]}


def watchdog_threshold(config: Config) -> float:
    """The loop watchdog's threshold: the smallest block any ``on_block`` trigger needs.

    With no such trigger, the ``loop_blocked`` option's (blocks are recorded all the same).
    """
    needs = [t.block_threshold() for t in config.triggers if _overrides(t, "on_block")]
    if needs:
        return min(needs)
    return config.loop_blocked if config.loop_blocked is not None else DEFAULT_BLOCK_THRESHOLD


def _overrides(trig: Trigger, hook: str) -> bool:
    return getattr(type(trig), hook) is not getattr(Trigger, hook)


def method_of(scope: Any, kind: str) -> str:
    """The request method, valid and capped (servers may hand over any str)."""
    # Paths and methods come from the server as str, possibly with lone surrogates (bytes a
    # server decoded with surrogateescape) or of any length: record them valid and capped.
    return safe_text(scope.get("method") or ("WS" if kind == "websocket" else ""), MAX_METHOD)


def client_of(client: Any) -> tuple[str, int] | None:
    """The scope's ``client`` as ``(host, port)``, whatever shape the server gave."""
    if client is None:
        return None
    try:
        host, port = client[0], client[1]
    except (TypeError, IndexError, KeyError):
        return None
    return (str(host)[:256], port if isinstance(port, int) else 0)


def route_of(scope: Any) -> str | None:
    """The route template the framework matched (Starlette's ``scope["route"]``), else None."""
    route = scope.get("route")
    if route is None:
        return None
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else None
