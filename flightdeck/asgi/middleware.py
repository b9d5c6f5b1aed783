"""``FlightDeck``: the pure ASGI middleware that records request spans.

Per request it emits one event at the start and one at the end, and wraps ``send`` and
``receive`` to note the first byte, the status and a disconnect; it forwards every message
at once and buffers nothing. Deciding whether to snapshot is the capture engine's
(``capture.py``), asked only when an integer pre-check says a trigger may fire. flightdeck's
own failures are counted and logged once, never raised into the app; the app's exceptions
are re-raised unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import sys
import threading
from collections.abc import Awaitable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core import events as ev
from ..core.text import safe_text
from ..core.window import LIVE_TEXT_MAX, live_start
from ..instrument.context import current_request
from ..instrument.frames import error_stack
from ..snapshot.document import Snapshot
from ..snapshot.recorder import FlightRecorder
from ..snapshot.store import SnapshotStore
from .accel import casgi, native_asgi
from .capture import (
    INT64_MAX,
    INT64_MIN,
    CaptureEngine,
    RequestState,
    clamp64,
    client_of,
    route_of,
    watchdog_threshold,
)
from .config import Config
from .fleet import Fleet, resolve_service
from .locate import locate
from .redact import MAX_METHOD, MAX_PATH
from .tracecontext import trace_id_from_headers

_current_task = asyncio.current_task
_SCOPE_KEY = "flightdeck"
#: What the app sends when the lifespan's shutdown is over (recording stops then).
_SHUTDOWN = frozenset({"lifespan.shutdown.complete", "lifespan.shutdown.failed"})
#: The recorded forms of query strings of at most QUERY_CACHE_BYTES bytes are kept, up to
#: QUERY_CACHE_ENTRIES of them (then all are dropped): redacting a query is pure Python (25k
#: instructions for "token=abc"), and a service sees the same few queries again and again.
#: The raw bytes are the keys: held in memory as the server's buffers hold them, never recorded.
QUERY_CACHE_ENTRIES = 256
QUERY_CACHE_BYTES = 256


if TYPE_CHECKING:
    from ._casgi import Middleware as _Base
elif casgi is None:

    class _Base:
        """The pure-Python build: ``FlightDeck.__call__`` is ``_py_call``."""

else:
    _Base = casgi.Middleware  # its __call__ takes the common case natively


def _current_task_lookup() -> dict[str, Any]:
    # On 3.11 asyncio.current_task() is a Python function; the native path does the same
    # lookup (the running loop's entry in asyncio's table) without its frame.
    tasks = getattr(asyncio.tasks, "_current_tasks", None)
    if sys.version_info < (3, 12) and isinstance(tasks, dict):
        return {"current_tasks": tasks, "running_loop": asyncio.get_running_loop}
    return {}


def _async_call() -> Any:
    """The native ``__call__``, marked so that servers see an ASGI 3 (async) callable."""
    assert casgi is not None
    call = casgi.AsyncCall()
    # uvicorn tells ASGI 3 from 2 by asyncio.iscoroutinefunction(app.__call__); Starlette
    # and Python 3.12+ by inspect's marker. A bound method forwards both to this object.
    call._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(call)
    # hypercorn asks inspect.iscoroutinefunction(app.__call__), which on 3.11 knows no
    # marker: it accepts a "function-like" object whose __code__ is a coroutine's. The
    # attributes come from an ``async def`` of the same signature, so inspect.signature
    # reads (scope, receive, send) too. Nothing calls that code.
    call.__code__ = _asgi3_signature.__code__
    call.__name__ = call.__qualname__ = "__call__"
    call.__defaults__ = None
    call.__kwdefaults__ = None
    call.__annotations__ = dict(_asgi3_signature.__annotations__)
    call.__doc__ = "Record the request natively, then call the wrapped app."
    return call


async def _asgi3_signature(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """The signature the native ``__call__`` presents to servers' detection."""
    raise NotImplementedError


class FlightDeck(_Base):
    """Flight recorder middleware for any ASGI 3 app.

    ``FlightDeck(app, slow_request=0.5)`` or ``app.add_middleware(FlightDeck, ...)``. The
    options are :class:`~flightdeck.asgi.config.Config`'s (see the README for each); a bad
    argument raises ``ValueError``/``TypeError`` naming the option, a bad environment value
    is logged and ignored (``config_errors`` in the status). ``FLIGHTDECK_ENABLED=0`` turns
    it into a pass-through.

    With the extension built, ``__call__`` is native (``_casgi.c``): it records HTTP and
    WebSocket requests once recording has started and hands everything else (lifespan, the
    endpoint, the first request, a closed deck) to :meth:`_py_call`, the pure-Python path,
    which is the whole of ``__call__`` without the extension.

    It holds the whole pure request path (``_py_call``, ``_start_event``, ``_finish``) that
    ``_casgi.c`` mirrors: side by side is what keeps the two in step. Options are in
    ``config.py``, decisions in ``capture.py``.
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.config = config = Config.from_env(**options)
        self.enabled = config.enabled
        self.recorder = FlightRecorder(
            config.window,
            config.max_bytes,
            instrument_loop=config.instrument_loop,
            loop_blocked=watchdog_threshold(config),  # what the triggers need
        )
        self.store = SnapshotStore(
            max_snapshots=config.max_snapshots,
            max_bytes=config.max_store_bytes,
            directory=config.directory,
        )
        if config.directory is not None and self.enabled:
            # The window in a file under the directory: a crash leaves a snapshot.
            self.recorder.keep_window_in(self.store)
        self.engine = engine = CaptureEngine(config, self.recorder, self.store)
        self.errors = engine.errors
        self.service = self.recorder.service = resolve_service(config.service, app)
        self.fleet: Fleet | None = None
        if config.fleet is not None and self.enabled:
            self.fleet = engine.fleet = Fleet(engine, config.fleet, self.service)
        self._started = False
        self._start_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._inflight = engine.inflight
        self._capture_headers = config.capture_headers
        self.redactor = config.redactor
        #: Raw query bytes -> their redacted form, for both request paths (``_redacted_query``).
        self._query_cache: dict[bytes, str] = {}
        self._endpoint_app: ASGIApp | None = None
        endpoint = config.endpoint
        if self.enabled and endpoint is not None:
            from ..asgi.endpoint import ViewOptions, make_endpoint

            self._endpoint_app = make_endpoint(
                self,
                prefix=endpoint,
                token=config.token,
                allowed_hosts=config.allowed_hosts,
                view_options=ViewOptions(config.convert_deadline, config.convert_memory),
            )
            self._prefix, self._prefix_slash = endpoint, endpoint + "/"
        #: The request id is set in the context running each request for the loop's
        #: instrumentation (task and executor records name their request); with the loop not
        #: instrumented nothing reads it, and the set and reset are skipped.
        self._request_in_context = bool(config.instrument_loop)
        self._native = native_asgi()
        if casgi is not None:
            self._native_setup(
                app=app,
                recorder=self.recorder,
                report=self.errors,
                inflight=self._inflight,
                done=engine.request_done,
                py_call=self._py_call,
                start_event=self._start_event,
                query=self.redactor.query,
                trace_id=trace_id_from_headers,
                current_task=_current_task,
                contextvar=current_request if self._request_in_context else None,
                prefix=endpoint if self._endpoint_app is not None else None,
                slow_floor_ns=engine.slow_floor_ns,
                status_floor=engine.status_floor,
                triggers=bool(engine.request_triggers),
                precheck=engine.request_precheck,
                error_fires=engine.error_fires,
                headers=bool(self._capture_headers),
                **_current_task_lookup(),
                error_stack=error_stack,
                query_cache=self._query_cache,
                cache_entries=QUERY_CACHE_ENTRIES,
                cache_bytes=QUERY_CACHE_BYTES,
            )

    @property
    def asgi_path(self) -> str:
        """``"native"`` when requests are recorded by ``_casgi``, else ``"python"``."""
        return "native" if self._native else "python"

    # Options read by the endpoint and by users.
    @property
    def slow_request(self) -> float | None:
        return self.config.slow_request

    @property
    def loop_blocked(self) -> float | None:
        return self.config.loop_blocked

    @property
    def endpoint(self) -> str | None:
        return self.config.endpoint

    @property
    def triggers(self) -> list[Any]:
        return self.config.triggers

    @property
    def _capturing(self) -> bool:
        return self.engine.capturing

    # -- start ------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._started = True
        try:
            loop = asyncio.get_running_loop()
            self.engine.start(loop)
            self.recorder.start(loop)
            if self.fleet is not None:
                self.fleet.start(loop)
            if self._native and self.enabled:
                self._native_fast = True  # from now on __call__ records natively
        except Exception as exc:
            self.errors("start", exc)

    def _next_id(self) -> int:
        if casgi is None:
            return next(self._ids)
        self._native_rid += 1  # one sequence for both paths
        return self._native_rid

    # -- ASGI -------------------------------------------------------------------------------
    async def _py_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if (kind != "http" and kind != "websocket") or not self.enabled or _SCOPE_KEY in scope:
            await self._pass_through(scope, receive, send, kind)
            return
        if not self._started:
            self._start()
        if self._endpoint_app is not None and kind == "http" and self._for_endpoint(scope):
            await self._endpoint_app(scope, receive, send)
            return
        try:
            scope[_SCOPE_KEY] = self
        except TypeError:
            pass  # an immutable scope: nothing to mark, recording still works

        # The hot path: one coroutine frame per request (this one), none per message: send
        # is wrapped by a plain function returning the server's awaitable. Raw values are
        # recorded as they come (sanitized off the loop, at snapshot time) and triggers only
        # see a RequestInfo when an integer pre-check says one might fire. A message that is
        # not a dict is forwarded untouched, so the server raises what it would raise alone.
        rid = self._next_id()
        pc = perf_counter_ns
        state = RequestState()
        t0 = pc()
        try:
            start = self._start_event(scope, kind, rid, t0)
            live = start  # what the live table keeps: bounded (see core.window.live_start)
            if len(start[ev.REQ_START_PATH]) + len(start[ev.REQ_START_QUERY]) > LIVE_TEXT_MAX:
                live = live_start(start)
            self._inflight[rid] = (live, scope, state)
            self.recorder.emit(start)
            # This frame lives as long as the request: it must not hold the whole event.
            del start, live
        except Exception as exc:
            self.errors("request_start", exc)

        def send_wrapper(message: Message) -> Awaitable[None]:
            if type(message) is dict:
                mtype = message.get("type")
                if mtype == "http.response.body":
                    if not message.get("more_body", False):
                        state.body_end = pc()
                elif mtype == "http.response.start" or mtype == "websocket.http.response.start":
                    state.status = message.get("status")
                    state.ttfb = pc()
                elif mtype == "websocket.accept":
                    state.ttfb = pc()
                elif mtype == "websocket.close" and state.close_code is None:
                    state.close_code = message.get("code", 1000)
            return send(message)

        async def receive_wrapper() -> Message:
            message = await receive()
            if type(message) is dict:
                mtype = message.get("type")
                # A disconnect after the last body byte is just the end of the exchange; a
                # WebSocket disconnect after the app closed is the close completing.
                if mtype == "http.disconnect":
                    if not state.body_end:
                        state.disconnected = True
                elif mtype == "websocket.disconnect" and state.close_code is None:
                    state.disconnected = True
                    state.close_code = message.get("code", 1005)
            return message

        token = current_request.set(rid) if self._request_in_context else None
        error: str | None = None
        raised_at: tuple[Any, ...] = ()
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except BaseException as exc:
            error = type(exc).__qualname__
            # Taken here, the frames only: ``exc`` (and through its traceback every frame's
            # locals) is not kept past this block.
            try:
                raised_at = error_stack(exc)
            except Exception as failure:
                self.errors("request_error", failure)
            raise
        finally:
            try:
                if token is not None:
                    current_request.reset(token)
            except ValueError:
                pass  # closed from another context (collected in a cycle): the id goes with it
            self._finish(rid, scope, state, t0, kind, error, raised_at)

    if casgi is None:
        __call__ = _py_call
    else:
        __call__ = _async_call()

    def _for_endpoint(self, scope: Scope) -> bool:
        """Whether the request is for the debug endpoint (below ``root_path``, if any)."""
        return locate(scope, self._prefix, self._prefix_slash) is not None

    async def _pass_through(self, scope: Scope, receive: Receive, send: Send, kind: Any) -> None:
        if kind == "lifespan" and self.enabled and _SCOPE_KEY not in scope:
            try:
                scope[_SCOPE_KEY] = self
            except TypeError:
                pass
            if not self._started:
                self._start()
            send = self._lifespan_send(send)
        await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        """``send`` for the lifespan: once the app says it has shut down, recording stops.

        The server closes its loop next: the recorder's thread, the loop's hooks and the
        engine's timer must not outlive it (a test suite starting the app once per test
        would pile up recorder threads). A later ``startup`` starts recording again.
        """

        async def lifespan_send(message: Message) -> None:
            await send(message)
            if type(message) is dict and message.get("type") in _SHUTDOWN:
                self._stop()

        return lifespan_send

    def _stop(self) -> None:
        with self._start_lock:
            if not self._started:
                return
            self._started = False
        if casgi is not None:
            self._native_fast = False
        try:
            self.engine.stop()
            self.recorder.stop()
        except Exception as exc:
            self.errors("stop", exc)

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
        path = self.redactor.path(path)
        if client is not None and not (
            type(client) is tuple
            and len(client) == 2
            and type(client[0]) is str
            and len(client[0]) <= 256
            and type(client[1]) is int
        ):
            client = client_of(client)
        headers = None
        if self._capture_headers:
            captured = self.redactor.headers(scope.get("headers"), self._capture_headers)
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
            self._redacted_query(qs) if qs else "",
            client,
            headers,
            None if task is None else id(task),
            trace_id_from_headers(raw_headers) if raw_headers else None,
        )

    def _redacted_query(self, qs: Any) -> str:
        """The recorded form of a non-empty query string; short ones from the bounded cache."""
        redactor = self.redactor
        if type(qs) is not bytes or len(qs) > QUERY_CACHE_BYTES:
            return redactor.query(qs)
        cache = self._query_cache
        text = cache.get(qs)
        if text is None:
            text = redactor.query(qs)
            if type(text) is str:
                if len(cache) >= QUERY_CACHE_ENTRIES:
                    cache.clear()
                cache[qs] = text
        return text

    def _finish(
        self,
        rid: int,
        scope: Scope,
        state: RequestState,
        t0: int,
        kind: str,
        error: str | None,
        raised_at: tuple[Any, ...] = (),
    ) -> None:
        try:
            t1 = perf_counter_ns()
            if raised_at:
                self.recorder.emit((ev.REQ_ERROR, t1, rid, raised_at))
            route = route_of(scope)
            status = state.status
            if type(status) is not int:
                status = None  # not an HTTP status: the server refuses it
            elif not INT64_MIN <= status <= INT64_MAX:
                status = clamp64(status, self.errors)
            if error is not None and status is None and kind == "http":
                status = 500
            close = state.close_code
            if type(close) is not int:
                close = None
            elif not INT64_MIN <= close <= INT64_MAX:
                close = clamp64(close, self.errors)
            self.recorder.emit(
                (
                    ev.REQ_END,
                    t1,
                    rid,
                    status,
                    state.ttfb,
                    route,
                    state.disconnected,
                    error,
                    state.body_end,
                    close,
                )
            )
            self._inflight.pop(rid, None)
            engine = self.engine
            if not engine.request_triggers:
                return
            if (
                engine.request_precheck
                and (error is None or not engine.error_fires)
                and (type(status) is not int or status < engine.status_floor)
                and (state.fired or kind != "http" or t1 - t0 <= engine.slow_floor_ns)
            ):
                return  # nothing can fire: the common case, decided without RequestInfo
            engine.request_done(rid, scope, state, t0, t1, kind, status, route, error)
        except Exception as exc:
            self.errors("request_end", exc)

    # -- endpoint backend -------------------------------------------------------------------
    async def capture(self, reason: str = "", scope: str = "process") -> Snapshot:
        """Take a manual snapshot now and keep it in the store (the endpoint's capture);
        ``scope="host"``: of every live process sharing the snapshot directory."""
        if not self._started:
            self._start()
        return await self.engine.capture(reason, scope)

    def status(self) -> dict[str, Any]:
        """Counters for ``/debug/flight/status``."""
        stats = self.recorder.stats
        engine = self.engine.status()
        return {
            "enabled": self.enabled,
            "started": self._started,
            "core": stats["core"],
            "window": stats["window"],
            "max_bytes": stats["max_bytes"],
            "events": stats["events"],
            "bytes": stats["bytes"],
            "recorded": stats["recorded"],
            "evicted": stats["evicted"],
            "dropped": stats["dropped"],
            "snapshots": engine["snapshots"],
            "capture_failures": engine["capture_failures"],
            "triggers": engine["triggers"],
            "loop": stats["loop"],
            "coverage": stats["coverage"],
            "inflight": len(self._inflight),
            "errors": dict(self.errors.counts),
            "asgi": self.asgi_path,
            "recorder": stats,
            "service": self.service,
            "fleet": None if self.fleet is None else self.fleet.stats(),
            "config_errors": list(self.config.env_errors),
            "not_captured": self.engine.gate.not_captured(),
        }

    def close(self) -> None:
        """Stop recording (the app keeps working; flightdeck becomes a pass-through)."""
        self.enabled = False
        if casgi is not None:
            self._native_fast = False
        self.recorder.stop()
        if self.fleet is not None:
            self.fleet.close()
