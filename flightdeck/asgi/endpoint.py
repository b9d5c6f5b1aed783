"""The debug endpoint (``/debug/flight`` by default): list, capture and download snapshots.

A small ASGI app built on starlette's Request and Response. The middleware forwards it
every HTTP request whose path is the prefix or below it, with the scope unchanged. Who may
use it is decided in ``access.py``; the login form and its page are in ``pages.py``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import export  # noqa: F401  (registers the formats in FORMATS)
from ..core.config import CAPTURE_SCOPES, check_endpoint, check_hosts, check_token
from ..core.text import safe_text
from ..snapshot.document import FORMATS, ExportFormat, Snapshot, SnapshotInProgress, is_valid_id
from ..snapshot.store import SnapshotStore
from . import views
from .access import MANUAL_RATE, Access, ManualLimit
from .fleet import TRACE_ID, list_incidents, snapshots_of_trace, with_fleet_snapshots
from .locate import locate
from .pages import login_page, render_index

logger = logging.getLogger("flightdeck")

_COMMON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_MAX_LOGIN_BODY = 4096
_READ_METHODS = ("GET", "HEAD")
#: Seconds a client refused while a converter child runs is told to wait.
_BUSY_RETRY = 5
# The exported page is self-contained; the sandbox gives it an opaque origin, so even a
# markup injection in it could not read the endpoint, and nothing may be fetched.
_EXPORT_CSP = (
    "sandbox allow-scripts allow-downloads; default-src 'none'; script-src 'unsafe-inline';"
    " style-src 'unsafe-inline'; img-src data: blob:; font-src data:"
)
_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self';"
    " frame-ancestors 'none'"
)
_warned_tokenless = False


class EndpointBackend(Protocol):
    """What the endpoint needs from the recorder."""

    store: SnapshotStore

    async def capture(self, reason: str, scope: str = "process") -> Snapshot:
        """Take a manual snapshot and put it in the store (may raise SnapshotInProgress);
        ``scope="host"``: of every live process sharing the store's directory."""
        ...

    def status(self) -> dict[str, Any]:
        """Recorder counters for ``GET {prefix}/status``."""
        ...


@dataclass(frozen=True)
class ViewOptions:
    """How the endpoint's converter child is bounded (``Config``: ``convert_deadline``,
    ``convert_memory``)."""

    deadline: float = views.DEFAULT_DEADLINE  #: seconds before the child is killed
    memory: int = views.DEFAULT_MEMORY  #: the child's address space (RLIMIT_AS), bytes


def make_endpoint(
    backend: EndpointBackend,
    *,
    prefix: str = "/debug/flight",
    token: str | None = None,
    allowed_hosts: Iterable[str] = (),
    view_options: ViewOptions | None = None,
) -> ASGIApp:
    """The ASGI app serving the debug endpoint under ``prefix``.

    With ``token``, every request must carry ``Authorization: Bearer <token>`` or the
    session cookie of ``{prefix}/login``; without, only loopback clients that came through
    no proxy and asked for a loopback ``Host`` (or one of ``allowed_hosts``) are answered.
    """
    global _warned_tokenless
    checked = check_endpoint(prefix)
    if checked is None:
        raise ValueError("endpoint must be a path like '/debug/flight', not None")
    token = check_token(token)
    hosts = check_hosts(allowed_hosts)
    if token is None and not _warned_tokenless:
        _warned_tokenless = True
        logger.warning(
            "flightdeck: the debug endpoint %s has no token; only loopback clients without"
            " proxy headers are answered (set FLIGHTDECK_TOKEN to allow remote access)",
            prefix,
        )
    return _Endpoint(backend, checked, Access(token, hosts), view_options or ViewOptions())


def _response(
    body: bytes | str,
    status: int = 200,
    media_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        body,
        status_code=status,
        media_type=media_type,
        headers={**_COMMON_HEADERS, **(headers or {})},
    )


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)
    return _response(body, status, "application/json", headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": message}, status, headers)


def _not_found() -> Response:
    # Also the answer to clients that may not see the endpoint: nothing tells them apart.
    return _response("Not Found", 404, "text/plain")


def _accepts_gzip(accept_encoding: str) -> bool:
    wildcard = False
    for part in accept_encoding.split(","):
        name, _, params = part.partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        name = name.strip().lower()
        if name in ("gzip", "x-gzip"):
            return quality > 0
        if name == "*":
            wildcard = quality > 0
    return wildcard


def _cross_site(request: Request) -> bool:
    """A browser request sent by another site (CSRF), which must not trigger a capture."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        # Set by the browser, never by a page: authoritative where present. (Under the
        # pages' Referrer-Policy no-referrer, Chromium sends a form's Origin as "null".)
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()


class _Streamed:
    """A view streamed as it is read from ``source``; ``first`` (already read) proves the
    source works before the status line goes out. A failure after that raises, so that the
    server drops the connection: a client never takes a truncated body for a whole one.
    """

    def __init__(
        self, source: views.Source, first: bytes, media_type: str, headers: dict[str, str]
    ) -> None:
        self.source = source
        self.first = first
        self.headers = {**_COMMON_HEADERS, **headers, "Content-Type": media_type}
        if source.length is not None:
            self.headers["Content-Length"] = str(source.length)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            raw = [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
            ]
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            chunk = self.first
            while chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await self.source.read()
            # Closed before the last message: the client's next request finds the
            # converter slot free.
            await self.source.close()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.source.close()


class _Endpoint:
    def __init__(
        self, backend: EndpointBackend, prefix: str, access: Access, view_options: ViewOptions
    ) -> None:
        self.backend = backend
        self.prefix = prefix
        self.access = access
        self.manual = ManualLimit(*MANUAL_RATE)
        self.view_options = view_options
        self.view_stats = views.ViewStats()
        store = backend.store
        self.views = views.ViewCache(
            getattr(store, "directory", None), lambda: {s["id"] for s in store.list()}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope, receive)
        try:
            response = await self._handle(request)
        except Exception as exc:
            self._report("endpoint", exc, scope)
            response = _error(500, "internal error")
        try:
            await response(scope, receive, send)
        except views.ViewFailed as exc:
            # Mid-stream: re-raised so that the server drops the connection (the status line
            # is out; only an abort tells the client the body is not whole).
            self._report("convert", exc, scope)
            raise

    def _report(self, kind: str, exc: Exception, scope: Scope) -> None:
        # The middleware's error log counts failures (shown in status) and logs each kind
        # once, so a broken exporter hit in a loop cannot flood the logs.
        report = getattr(self.backend, "errors", None)
        if callable(report):
            report(kind, exc)
        else:
            logger.warning(
                "flightdeck: the debug endpoint failed on %s: %s", scope.get("path"), exc
            )

    def _denied(self, request: Request, base: str, sub: str) -> Response | None:
        access = self.access
        if access.token is None:
            refused = access.tokenless_refusal(request.scope)
            if refused is None:
                return None
            status, reason = refused
            return _not_found() if status == 404 else _response(reason, status, "text/plain")
        if sub in ("/login", "/logout"):
            return None
        limited = self._limited(request.scope)
        if limited is not None:
            return limited
        if access.authorized(request.scope):
            return None
        if access.has_credentials(request.scope):
            access.failures.failed(access.address(request.scope))
        if (
            sub in ("", "/")
            and request.method in _READ_METHODS
            and "text/html" in request.headers.get("accept", "")
            and "authorization" not in request.headers
        ):
            return _response(b"", 303, "text/plain", {"Location": f"{base}/login"})
        return _error(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})

    async def _handle(self, request: Request) -> Response | _Streamed:
        located = locate(request.scope, self.prefix, self.prefix + "/")
        if located is None:
            return _not_found()
        base, sub = located
        denied = self._denied(request, base, sub)
        if denied is not None:
            return denied
        method = request.method
        if sub == "/login":
            return await self._login(request, base)
        if sub == "/logout":
            return self._logout(request, base)
        if sub in ("", "/"):
            if method not in _READ_METHODS:
                return _error(405, "method not allowed", {"Allow": "GET, HEAD"})
            return await self._index(request, base)
        if sub == "/snapshots":
            if method in _READ_METHODS:
                trace_id = request.query_params.get("trace_id")
                if trace_id is None:
                    return _json(await anyio.to_thread.run_sync(self.backend.store.list))
                if not TRACE_ID.match(trace_id):
                    return _error(400, "trace_id must be 32 lowercase hex digits")
                return _json(
                    await anyio.to_thread.run_sync(snapshots_of_trace, self.backend, trace_id)
                )
            if method == "POST":
                return await self._capture(request, base)
            return _error(405, "method not allowed", {"Allow": "GET, HEAD, POST"})
        if sub.startswith("/snapshots/"):
            ident = sub[len("/snapshots/") :]
            if ident != "latest" and not is_valid_id(ident):
                return _not_found()
            if method not in _READ_METHODS:
                return _error(405, "method not allowed", {"Allow": "GET, HEAD"})
            return await self._download(request, ident)
        if sub == "/incidents":
            if method not in _READ_METHODS:
                return _error(405, "method not allowed", {"Allow": "GET, HEAD"})
            return _json(await anyio.to_thread.run_sync(list_incidents, self.backend))
        if sub == "/status":
            if method not in _READ_METHODS:
                return _error(405, "method not allowed", {"Allow": "GET, HEAD"})
            status = dict(self.backend.status())
            status.setdefault("store", self.backend.store.stats())
            status.setdefault("manual_refused", self.manual.refused)
            status.setdefault("auth_limited", self.access.failures.refused)
            status.setdefault("views", self.view_stats.as_dict())
            return _json(status)
        return _not_found()

    async def _login(self, request: Request, base: str) -> Response:
        if self.access.token is None:
            return _not_found()  # nothing to log in to: loopback access needs no login
        headers = {"Content-Security-Policy": _PAGE_CSP, "Referrer-Policy": "no-referrer"}
        if request.method in _READ_METHODS:
            return _response(login_page(base), 200, "text/html", headers)
        if request.method != "POST":
            return _error(405, "method not allowed", {"Allow": "GET, HEAD, POST"})
        if _cross_site(request):
            return _error(403, "cross-site login refused")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_LOGIN_BODY:
                return _error(413, "login form too large")
        limited = self._limited(request.scope)
        if limited is not None:
            return limited
        given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if not self.access.token_matches(given.strip().encode()):
            self.access.failures.failed(self.access.address(request.scope))
            page = login_page(base, "That token was refused.")
            return _response(page, 401, "text/html", headers)
        cookie = self.access.session_cookie(base, request.url.scheme in ("https", "wss"))
        return _response(b"", 303, "text/plain", {"Location": f"{base}/", "Set-Cookie": cookie})

    def _limited(self, scope: Scope) -> Response | None:
        """``429`` while the client's address is past the failed-attempt limit."""
        wait = self.access.failures.retry_after(self.access.address(scope))
        if not wait:
            return None
        message = f"too many failed attempts; try again in {wait} s"
        return _error(429, message, {"Retry-After": str(wait)})

    def _logout(self, request: Request, base: str) -> Response:
        if self.access.token is None:
            return _not_found()
        if request.method != "POST":
            return _error(405, "method not allowed", {"Allow": "POST"})
        if _cross_site(request):
            return _error(403, "cross-site logout refused")
        cookie = self.access.clear_cookie(base)
        return _response(
            b"", 303, "text/plain", {"Location": f"{base}/login", "Set-Cookie": cookie}
        )

    async def _capture(self, request: Request, base: str) -> Response:
        if _cross_site(request):
            return _error(403, "cross-site capture refused")
        wait = self.manual.retry_after()
        if wait:
            message = f"too many manual captures; try again in {wait} s"
            return _error(429, message, {"Retry-After": str(wait)})
        reason = safe_text(request.query_params.get("reason") or "", 200)
        scope = request.query_params.get("scope") or "process"
        if scope not in CAPTURE_SCOPES:
            return _error(400, f"scope must be one of {', '.join(CAPTURE_SCOPES)}")
        if scope == "host" and self.backend.store.directory is None:
            return _error(
                400,
                "scope=host needs a snapshot directory shared by the processes"
                " (directory= or FLIGHTDECK_DIR); this process has none",
            )
        reason = reason or "captured from the debug endpoint"
        try:
            if scope == "host":
                snapshot = await self.backend.capture(reason, scope)
            else:
                snapshot = await self.backend.capture(reason)
        except SnapshotInProgress:
            return _error(409, "a snapshot is being taken; try again in a moment")
        url = f"{base}/snapshots/{snapshot.id}"
        trigger = snapshot.trigger
        body: dict[str, Any] = {
            "id": snapshot.id,
            "created_at": snapshot.created_at,
            "trigger": {"kind": trigger.get("kind"), "reason": trigger.get("reason")},
            "url": url,
        }
        processes = getattr(snapshot, "_head", {}).get("processes")
        if scope == "host" and isinstance(processes, list):
            body["scope"] = "host"
            body["processes"] = [
                {k: p.get(k) for k in ("pid", "hostname", "error") if p.get(k) is not None}
                for p in processes
                if isinstance(p, dict)
            ]
        return _json(body, 201, {"Location": url})

    async def _download(self, request: Request, ident: str) -> Response | _Streamed:
        fmt = FORMATS.get(request.query_params.get("format", "json"))
        if fmt is None:
            return _error(400, f"format must be one of {', '.join(FORMATS)}")
        store = self.backend.store
        if ident == "latest":
            latest = await anyio.to_thread.run_sync(store.latest_id)
            if latest is None:
                return _not_found()
            ident = latest
        gzip = _accepts_gzip(request.headers.get("accept-encoding", ""))
        headers = {"Content-Disposition": f'{fmt.disposition}; filename="{ident}{fmt.suffix}"'}
        if fmt.name == "html":
            headers["Content-Security-Policy"] = _EXPORT_CSP
        # The JSON view is kept gzip'd (served so to clients that take gzip, decompressed
        # as it streams to the others); the other views as they are.
        key = "json.gz" if fmt.name == "json" else fmt.name
        if fmt.name == "json":
            headers["Vary"] = "Accept-Encoding"
            if gzip:
                headers["Content-Encoding"] = "gzip"
        if fmt.convert is not None:
            cached = await anyio.to_thread.run_sync(self.views.get, ident, key)
            if cached is not None:
                self.view_stats.count("cached")
                return await self._serve(request, views.any_source(cached), fmt, headers, gzip)
        data = await anyio.to_thread.run_sync(store.get_stored, ident)
        if data is None:
            return _not_found()
        if fmt.convert is None:
            from ..convert import raw_suffix

            name = f"{ident}{raw_suffix(data)}"
            headers["Content-Disposition"] = f'{fmt.disposition}; filename="{name}"'
            return await self._serve(request, views.BytesSource(data), fmt, headers, True)
        if fmt.name == "json" and data[:2] == b"\x1f\x8b":
            # Gzip'd native JSON, as earlier versions stored it: the view is the bytes.
            return await self._serve(request, views.BytesSource(data), fmt, headers, gzip)
        if request.method == "HEAD":
            return _response(b"", 200, fmt.media_type, headers)
        return await self._convert(request, ident, data, fmt, key, headers, gzip)

    async def _convert(
        self,
        request: Request,
        ident: str,
        data: bytes,
        fmt: ExportFormat,
        key: str,
        headers: dict[str, str],
        gzip: bool,
    ) -> Response | _Streamed:
        """Stream ``fmt`` made by a converter child; one child per process at a time."""
        if not views.acquire_slot():
            self.view_stats.count("busy")
            message = "a snapshot is being converted; try again in a moment"
            return _error(429, message, {"Retry-After": str(_BUSY_RETRY)})
        options = self.view_options
        sink = None
        try:
            sink = await anyio.to_thread.run_sync(self.views.sink, ident, key)
            child = await anyio.to_thread.run_sync(
                views.ChildSource.start,
                data,
                fmt.name,
                key.endswith(".gz"),
                sink,
                self.view_stats,
                options.deadline,
                options.memory,
            )
        except BaseException:
            if sink is not None:
                sink.discard()
            views.release_slot()
            raise
        del data
        return await self._serve(request, child, fmt, headers, gzip, key.endswith(".gz"))

    async def _serve(
        self,
        request: Request,
        source: views.Source,
        fmt: ExportFormat,
        headers: dict[str, str],
        gzip: bool,
        gzipped: bool | None = None,
    ) -> Response | _Streamed:
        """Answer with ``source``, reading its first chunk first; a gzip'd JSON source is
        decompressed as it streams for a client that does not take gzip."""
        if gzipped is None:
            gzipped = fmt.name == "json"
        if gzipped and not gzip:
            source = views.GunzipSource(source)
        try:
            if request.method == "HEAD":
                await source.close()
                return _response(b"", 200, fmt.media_type, headers)
            first = await source.read()
        except views.ViewFailed as exc:
            await source.close()
            self._report("convert", exc, request.scope)
            if exc.timed_out:
                # The converter runs at the lowest priority: on a saturated process it may
                # not finish; the stored bytes are served as they are, and convert anywhere.
                message = (
                    "converting the snapshot took longer than its deadline (the converter"
                    " takes only the CPU the app leaves); download ?format=raw and run"
                    " `flightdeck convert` on it elsewhere"
                )
                return _error(504, message)
            return _error(500, "the snapshot could not be converted")
        except BaseException:
            await source.close()
            raise
        return _Streamed(source, first, fmt.media_type, headers)

    async def _index(self, request: Request, base: str) -> Response:
        listing = await anyio.to_thread.run_sync(self.backend.store.list)
        accept = request.headers.get("accept", "").lower()
        if "application/json" in accept and "text/html" not in accept:
            return _json(listing)
        # The page also lists the fleet's snapshots of this process's incidents (any process
        # serves them), grouped with the local ones.
        listing = await anyio.to_thread.run_sync(with_fleet_snapshots, self.backend, listing)
        nonce = secrets.token_urlsafe(16)
        csp = _PAGE_CSP + f"; script-src 'nonce-{nonce}'; connect-src 'self'"
        headers = {"Content-Security-Policy": csp, "Referrer-Policy": "no-referrer"}
        status = self.backend.status()  # configuration errors, then refused captures
        notes = [*status.get("config_errors", ()), *status.get("not_captured", ())]
        logout = self.access.token is not None
        host = self.backend.store.directory is not None
        page = render_index(listing, base, nonce, logout=logout, not_captured=notes, host=host)
        return _response(page, 200, "text/html", headers)
