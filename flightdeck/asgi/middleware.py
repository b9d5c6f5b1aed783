"""``FlightDeck``: the pure ASGI middleware that records request spans and fires triggers.

Per request it appends two events to the window and wraps ``send``/``receive`` to note
the first byte, the status and a disconnect; it forwards every message at once and
buffers nothing. Everything after the app returns (trigger checks, snapshots) is guarded:
flightdeck's own failures are counted and logged once, never raised into the app. The
app's own exceptions are re-raised unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping
from time import perf_counter_ns
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core import events as ev
from ..core.config import (
    check_optional_seconds,
    check_positive_int,
    check_seconds,
    env,
    env_flag,
    env_seconds,
)
from ..core.text import ErrorLog, safe_text
from ..instrument.context import current_request
from ..snapshot.document import Snapshot, SnapshotInProgress
from ..snapshot.recorder import FlightRecorder
from ..snapshot.store import SnapshotStore
from .redact import MAX_METHOD, MAX_PATH, redact_query
from .redact import capture_headers as _capture_headers
from .tracecontext import trace_id_from_headers
from .triggers import (
    Gate,
    LoopBlocked,
    RateLimiter,
    RequestInfo,
    ServerError,
    SlowRequest,
    Trigger,
)

logger = logging.getLogger("flightdeck")
_current_task = asyncio.current_task

_UNSET: Any = object()
_SCOPE_KEY = "flightdeck"

#: Global rate limit across all triggers: at most this many snapshots per RATE_PERIOD.
RATE_COUNT = 6
RATE_PERIOD = 60.0


class FlightDeck:
    """Flight recorder middleware for any ASGI 3 app.

    ``FlightDeck(app, slow_request=0.5)`` or ``app.add_middleware(FlightDeck, ...)``. See
    the README for every option; each bad value raises ``ValueError``/``TypeError`` naming
    the option. ``FLIGHTDECK_ENABLED=0`` turns it into a pass-through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        window: float | None = None,
        max_bytes: int | None = None,
        slow_request: float | None = _UNSET,
        server_errors: bool = True,
        loop_blocked: float | None = _UNSET,
        triggers: Iterable[Trigger] | None = None,
        cooldown: float = 60.0,
        directory: str | os.PathLike[str] | None = _UNSET,
        max_snapshots: int = 20,
        endpoint: str | None = _UNSET,
        token: str | None = _UNSET,
        instrument_loop: bool = True,
        capture_headers: Iterable[str] = (),
        capture_delay: float = 0.25,
        slow_routes: Mapping[str, float | None] | None = None,
        rate_limit: tuple[int, float] = (RATE_COUNT, RATE_PERIOD),
        enabled: bool | None = None,
    ) -> None:
        self.app = app
        self.enabled = env_flag("FLIGHTDECK_ENABLED", True) if enabled is None else bool(enabled)
        if slow_request is _UNSET:
            slow_request = env_seconds("FLIGHTDECK_SLOW_REQUEST", 1.0, can_disable=True)
        if loop_blocked is _UNSET:
            loop_blocked = env_seconds("FLIGHTDECK_LOOP_BLOCKED", 0.1, can_disable=True)
        if directory is _UNSET:
            directory = env("FLIGHTDECK_DIR")
        if endpoint is _UNSET:
            endpoint = env("FLIGHTDECK_ENDPOINT") or "/debug/flight"
            if endpoint.lower() in ("off", "none", "0"):
                endpoint = None
        if token is _UNSET:
            token = env("FLIGHTDECK_TOKEN")
        self.slow_request = check_optional_seconds("slow_request", slow_request)
        self.loop_blocked = check_optional_seconds("loop_blocked", loop_blocked)
        if not isinstance(server_errors, bool):
            raise TypeError("server_errors must be a bool")
        cd = check_seconds("cooldown", cooldown)
        assert cd is not None
        self.cooldown = cd
        if isinstance(capture_delay, bool) or not isinstance(capture_delay, (int, float)):
            raise TypeError("capture_delay must be a number of seconds")
        if not math.isfinite(capture_delay) or capture_delay < 0:
            raise ValueError("capture_delay must be zero or a positive number of seconds")
        self.capture_delay = float(capture_delay)
        self.max_snapshots = check_positive_int("max_snapshots", max_snapshots)
        if endpoint is not None:
            if not isinstance(endpoint, str):
                raise TypeError("endpoint must be a path string or None")
            if not endpoint.startswith("/") or (len(endpoint) > 1 and endpoint.endswith("/")):
                raise ValueError("endpoint must start with '/' and not end with '/'")
        self.endpoint = endpoint
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ValueError("token must be a non-empty string or None")
        if isinstance(capture_headers, (str, bytes)):
            raise TypeError("capture_headers must be a list of header names, not a string")
        names = []
        for name in capture_headers:
            if not isinstance(name, str):
                raise TypeError("capture_headers must contain header names (str)")
            names.append(name.lower())
        self.capture_headers = frozenset(names)
        if not (isinstance(rate_limit, tuple) and len(rate_limit) == 2):
            raise TypeError("rate_limit must be a (count, period_seconds) tuple")
        rate_count = check_positive_int("rate_limit count", rate_limit[0])
        rate_period = check_seconds("rate_limit period", rate_limit[1])
        assert rate_period is not None

        if triggers is None:
            built: list[Trigger] = []
            if self.slow_request is not None:
                built.append(SlowRequest(self.slow_request, slow_routes))
            if server_errors:
                built.append(ServerError())
            if self.loop_blocked is not None:
                built.append(LoopBlocked(self.loop_blocked))
        else:
            if isinstance(triggers, Trigger):
                raise TypeError("triggers must be a list of Trigger objects")
            built = list(triggers)
            for trig in built:
                if not isinstance(trig, Trigger):
                    raise TypeError(f"triggers must be Trigger objects, not {type(trig).__name__}")
        self.triggers = built
        self._inflight_triggers = [
            t for t in built if type(t).on_inflight is not Trigger.on_inflight
        ]
        self._block_triggers = [t for t in built if type(t).on_block is not Trigger.on_block]
        self._poll_triggers = [t for t in built if type(t).poll is not Trigger.poll]
        self._request_triggers = [t for t in built if type(t).on_request is not Trigger.on_request]
        # Pre-check for the common case: only built-in request triggers, whose firing can be
        # ruled out from the status, the error and the duration against the lowest threshold.
        self._builtin_request_triggers = all(
            type(t) in (SlowRequest, ServerError) for t in self._request_triggers
        )
        floors = [
            min([t.threshold, *(v for v in t.routes.values() if v is not None)])
            for t in self._request_triggers
            if isinstance(t, SlowRequest)
        ]
        self._slow_floor_ns = int(min(floors) * 1e9) if floors else 1 << 62

        # The watchdog's threshold: the smallest block any trigger cares about.
        watch = self.loop_blocked
        self.recorder = FlightRecorder(
            window,
            max_bytes,
            instrument_loop=bool(instrument_loop),
            loop_blocked=watch if watch is not None else 0.1,
        )
        self.store = SnapshotStore(max_snapshots=self.max_snapshots, directory=directory)
        self.gate = Gate(self.cooldown, RateLimiter(rate_count, rate_period))
        self.errors = ErrorLog()
        self._started = False
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        # Requests in flight, shared with the watchdog (which labels blocks with them).
        self._inflight = self.recorder.live_requests
        self._capturing = False
        self.captures = 0
        self.capture_failures = 0
        self._endpoint_app: ASGIApp | None = None
        if self.enabled and endpoint is not None:
            from ..asgi.endpoint import make_endpoint

            self._endpoint_app = make_endpoint(self, prefix=endpoint, token=token)
            self._prefix_slash = endpoint + "/"

    # -- start ------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._started = True
        try:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self.recorder.block_listeners.append(self._on_block_threadsafe)
            self.recorder.start(loop)
            interval = 0.25
            if self.slow_request is not None:
                interval = min(interval, max(self.slow_request / 4, 0.01))
            self._tick_interval = interval
            loop.call_later(interval, self._tick)
        except Exception as exc:
            self.errors("start", exc)

    # -- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if (kind != "http" and kind != "websocket") or not self.enabled or _SCOPE_KEY in scope:
            await self._pass_through(scope, receive, send, kind)
            return
        if not self._started:
            self._start()
        if self._endpoint_app is not None and kind == "http":
            path = scope.get("path") or ""
            if path == self.endpoint or path.startswith(self._prefix_slash):
                await self._endpoint_app(scope, receive, send)
                return
        try:
            scope[_SCOPE_KEY] = self
        except TypeError:
            pass  # an immutable scope: nothing to mark, recording still works

        # The hot path: everything per request is inline here (one coroutine frame), raw
        # values are recorded as they come (sanitized off the loop, at snapshot time) and
        # triggers only see a RequestInfo when a cheap pre-check says one might fire.
        rid = next(self._ids)
        pc = perf_counter_ns
        # state: [status, t_ttfb, disconnected, t_body_end, fired_in_flight]
        state: list[Any] = [None, 0, False, 0, False]
        t0 = pc()
        try:
            start = self._start_event(scope, kind, rid, t0)
            self._inflight[rid] = (start, scope, state)
            self.recorder.emit(start)
        except Exception as exc:
            self.errors("request_start", exc)

        async def send_wrapper(message: Message) -> None:
            mtype = message.get("type")
            if mtype == "http.response.start":
                state[0] = message.get("status")
                state[1] = pc()
            elif mtype == "http.response.body":
                if not message.get("more_body", False):
                    state[3] = pc()
            elif mtype == "websocket.accept":
                state[1] = pc()
            await send(message)

        async def receive_wrapper() -> Message:
            message = await receive()
            mtype = message.get("type")
            # A disconnect after the last body byte is just the end of the exchange.
            if (mtype == "http.disconnect" and not state[3]) or mtype == "websocket.disconnect":
                state[2] = True
            return message

        token = current_request.set(rid)
        error: str | None = None
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except BaseException as exc:
            error = type(exc).__qualname__
            raise
        finally:
            current_request.reset(token)
            self._finish(rid, scope, state, t0, kind, error)

    async def _pass_through(self, scope: Scope, receive: Receive, send: Send, kind: Any) -> None:
        if kind == "lifespan" and self.enabled and _SCOPE_KEY not in scope:
            try:
                scope[_SCOPE_KEY] = self
            except TypeError:
                pass
            if not self._started:
                self._start()
        await self.app(scope, receive, send)

    def _start_event(self, scope: Scope, kind: str, rid: int, t0: int) -> tuple[Any, ...]:
        qs = scope.get("query_string")
        method = scope.get("method") or ("WS" if kind == "websocket" else "")
        path = scope.get("path") or ""
        client = scope.get("client")
        # Only the unusual is normalized here: str of sane length, (str, int) clients.
        if type(method) is not str or len(method) > MAX_METHOD:
            method = safe_text(method, MAX_METHOD)
        if type(path) is not str or len(path) > MAX_PATH:
            path = safe_text(path, MAX_PATH)
        if client is not None and not (
            type(client) is tuple
            and len(client) == 2
            and type(client[0]) is str
            and len(client[0]) <= 256
            and type(client[1]) is int
        ):
            client = _client(client)
        headers = None
        if self.capture_headers:
            captured = _capture_headers(scope.get("headers"), self.capture_headers)
            headers = tuple(captured.items()) if captured else None
        task = _current_task()
        raw_headers = scope.get("headers")
        return (
            ev.REQ_START,
            t0,
            rid,
            kind,
            method,
            path,
            redact_query(qs) if qs else "",
            client,
            headers,
            None if task is None else id(task),
            trace_id_from_headers(raw_headers) if raw_headers else None,
        )

    def _finish(
        self, rid: int, scope: Scope, state: list[Any], t0: int, kind: str, error: str | None
    ) -> None:
        try:
            t1 = perf_counter_ns()
            route = _route(scope)
            status = state[0]
            if error is not None and status is None and kind == "http":
                status = 500
            self.recorder.emit(
                (ev.REQ_END, t1, rid, status, state[1], route, state[2], error, state[3])
            )
            self._inflight.pop(rid, None)
            if not self._request_triggers:
                return
            if (
                self._builtin_request_triggers
                and error is None
                and (status is None or status < 500)
                and (state[4] or kind != "http" or t1 - t0 <= self._slow_floor_ns)
            ):
                return  # nothing can fire: the common case, decided without RequestInfo
            info = self._info(rid, scope, state, t0, kind, error, t1, status, route)
            for trig in self._request_triggers:
                if state[4] and isinstance(trig, SlowRequest):
                    continue  # fired while in flight; not again for the same request
                reason = trig.on_request(info)
                if reason:
                    trig_kind = trig.kind
                    if isinstance(trig, ServerError) and info.error is not None:
                        trig_kind = "exception"
                    self._fire(trig_kind, info.route or info.path, reason, info, trig.cooldown)
        except Exception as exc:
            self.errors("request_end", exc)

    def _info(
        self,
        rid: int,
        scope: Scope,
        state: list[Any],
        t0: int,
        kind: str,
        error: str | None,
        t_end: int | None,
        status: int | None,
        route: str | None,
    ) -> RequestInfo:
        rec = self.recorder
        now = perf_counter_ns()
        client = _client(scope.get("client"))
        return RequestInfo(
            id=rid,
            kind=kind,
            method=_method(scope, kind),
            path=safe_text(scope.get("path") or "", MAX_PATH),
            route=route,
            status=status,
            start=rec.to_epoch(t0),
            duration=None if t_end is None else (t_end - t0) / 1e9,
            elapsed=((t_end or now) - t0) / 1e9,
            ttfb=(state[1] - t0) / 1e9 if state[1] else None,
            client=f"{client[0]}:{client[1]}" if client else None,
            disconnected=bool(state[2]),
            error=error,
        )

    # -- periodic checks (on the loop) ------------------------------------------------------
    def _tick(self) -> None:
        loop = self._loop
        if loop is None or not self.recorder.enabled:
            return
        try:
            if self._inflight_triggers and self._inflight:
                for rid, (start, scope, state) in list(self._inflight.items()):
                    if state[4]:
                        continue
                    info = self._info(
                        rid, scope, state, start[1], start[3], None, None, state[0], _route(scope)
                    )
                    for trig in self._inflight_triggers:
                        reason = trig.on_inflight(info)
                        if reason:
                            state[4] = True
                            route = info.route or info.path
                            self._fire(trig.kind, route, reason, info, trig.cooldown)
                            break
            for trig in self._poll_triggers:
                reason = trig.poll()
                if reason:
                    self._fire(trig.kind, None, reason, None, trig.cooldown)
        except Exception as exc:
            self.errors("tick", exc)
        finally:
            try:
                loop.call_later(self._tick_interval, self._tick)
            except RuntimeError:
                pass  # loop closed

    def _on_block_threadsafe(self, event: tuple[Any, ...]) -> None:
        # Called on the loop thread by the watchdog's heartbeat when a block ended.
        try:
            _, t0, t1, where, _stack = event
            duration = (t1 - t0) / 1e9
            for trig in self._block_triggers:
                reason = trig.on_block(duration, where)
                if reason:
                    self._fire(trig.kind, None, reason, None, trig.cooldown)
        except Exception as exc:
            self.errors("block_trigger", exc)

    # -- snapshots --------------------------------------------------------------------------
    def _fire(
        self,
        kind: str,
        route: str | None,
        reason: str,
        info: RequestInfo | None,
        cooldown: float | None,
    ) -> None:
        if self._capturing:
            self.gate.suppress(kind)
            return
        if not self.gate.admit(kind, route, cooldown):
            return
        self.recorder.emit((ev.MARK, perf_counter_ns(), kind, reason[:500]))
        self._capturing = True
        record = info.to_record() if info is not None else None
        t_fire = perf_counter_ns()
        loop = self._loop
        if loop is None:
            self._capturing = False
            return
        loop.call_later(self.capture_delay, self._capture_now, kind, reason, record, t_fire)

    def _capture_now(
        self, kind: str, reason: str, record: dict[str, Any] | None, t_fire: int
    ) -> None:
        try:
            frozen = self.recorder.freeze()
        except Exception as exc:
            self._capturing = False
            self.capture_failures += 1
            self.errors("freeze", exc)
            return

        def work() -> None:
            try:
                snap = self.recorder.build(
                    frozen, kind=kind, reason=reason, request=record, trigger_time_ns=t_fire
                )
                self.store.put(snap)
                self.captures += 1
            except Exception as exc:
                self.capture_failures += 1
                self.errors("capture", exc)
            finally:
                self._capturing = False

        threading.Thread(target=work, name="flightdeck-snapshot", daemon=True).start()

    # -- endpoint backend -------------------------------------------------------------------
    async def capture(self, reason: str = "") -> Snapshot:
        """Take a manual snapshot now and keep it in the store (the endpoint's capture)."""
        import anyio.to_thread

        if not self._started:
            self._start()
        if self._capturing:
            raise SnapshotInProgress("a snapshot is already being built")
        self._capturing = True
        try:
            self.gate.fired["manual"] = self.gate.fired.get("manual", 0) + 1
            self.recorder.emit((ev.MARK, perf_counter_ns(), "manual", reason[:500]))
            frozen = self.recorder.freeze()

            def work() -> Snapshot:
                snap = self.recorder.build(frozen, kind="manual", reason=reason or "captured")
                self.store.put(snap)
                return snap

            snap = await anyio.to_thread.run_sync(work)
            self.captures += 1
            return snap
        finally:
            self._capturing = False

    def status(self) -> dict[str, Any]:
        """Counters for ``/debug/flight/status``."""
        stats = self.recorder.stats
        return {
            "enabled": self.enabled,
            "started": self._started,
            "window": stats["window"],
            "max_bytes": stats["max_bytes"],
            "events": stats["events"],
            "bytes": stats["bytes"],
            "recorded": stats["recorded"],
            "evicted": stats["evicted"],
            "dropped": stats["dropped"],
            "snapshots": self.captures,
            "capture_failures": self.capture_failures,
            "triggers": {
                "fired": dict(self.gate.fired),
                "suppressed": dict(self.gate.suppressed),
            },
            "loop": stats["loop"],
            "coverage": stats["coverage"],
            "inflight": len(self._inflight),
            "errors": dict(self.errors.counts),
            "recorder": stats,
        }

    def close(self) -> None:
        """Stop recording (the app keeps working; flightdeck becomes a pass-through)."""
        self.enabled = False
        self.recorder.stop()


def _method(scope: Scope, kind: str) -> str:
    # Paths and methods come from the server as str, possibly with lone surrogates (bytes a
    # server decoded with surrogateescape) or of any length: record them valid and capped.
    return safe_text(scope.get("method") or ("WS" if kind == "websocket" else ""), MAX_METHOD)


def _client(client: Any) -> tuple[str, int] | None:
    if client is None:
        return None
    try:
        host, port = client[0], client[1]
    except (TypeError, IndexError, KeyError):
        return None
    return (str(host)[:256], port if isinstance(port, int) else 0)


def _route(scope: Scope) -> str | None:
    route = scope.get("route")
    if route is None:
        return None
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else None
