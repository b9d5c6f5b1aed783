"""The debug endpoint (``/debug/flight`` by default): list, capture and download snapshots.

A small ASGI app built on starlette's Request and Response. The middleware forwards it
every HTTP request whose path is the prefix or below it, with the scope unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import logging
import secrets
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.text import safe_text
from ..snapshot.document import Snapshot, SnapshotInProgress, is_valid_id
from ..snapshot.store import SnapshotStore

logger = logging.getLogger("flightdeck")

_COMMON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_PROXY_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip"})
_READ_METHODS = ("GET", "HEAD")
_EXPORTS = {
    "perfetto": ("application/json", "attachment", "perfetto.json"),
    "html": ("text/html; charset=utf-8", "inline", "html"),
}
# The exported page is self-contained; the sandbox gives it an opaque origin, so even a
# markup injection in it could not read the endpoint, and nothing may be fetched.
_EXPORT_CSP = (
    "sandbox allow-scripts allow-downloads; default-src 'none'; script-src 'unsafe-inline';"
    " style-src 'unsafe-inline'; img-src data: blob:; font-src data:"
)
_warned_tokenless = False


class EndpointBackend(Protocol):
    """What the endpoint needs from the recorder."""

    store: SnapshotStore

    async def capture(self, reason: str) -> Snapshot:
        """Take a manual snapshot and put it in the store (may raise SnapshotInProgress)."""
        ...

    def status(self) -> dict[str, Any]:
        """Recorder counters for ``GET {prefix}/status``."""
        ...


def make_endpoint(
    backend: EndpointBackend, *, prefix: str = "/debug/flight", token: str | None = None
) -> ASGIApp:
    """The ASGI app serving the debug endpoint under ``prefix``.

    With ``token``, every request must carry ``Authorization: Bearer <token>``; without,
    only loopback clients that came through no proxy are answered.
    """
    global _warned_tokenless
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError(f"endpoint must be a path like '/debug/flight', not {prefix!r}")
    if token is not None:
        if not isinstance(token, str):
            raise TypeError(f"token must be a str or None, not {type(token).__name__}")
        if not token or token != token.strip() or any(c.isspace() for c in token):
            raise ValueError("token must be a non-empty string without whitespace")
    elif not _warned_tokenless:
        _warned_tokenless = True
        logger.warning(
            "flightdeck: the debug endpoint %s has no token; only loopback clients without"
            " proxy headers are answered (set FLIGHTDECK_TOKEN to allow remote access)",
            prefix,
        )
    return _Endpoint(backend, prefix, token)


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


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


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
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()


class _Endpoint:
    def __init__(self, backend: EndpointBackend, prefix: str, token: str | None) -> None:
        self.backend = backend
        self.prefix = prefix
        self._token_digest = None if token is None else hashlib.sha256(token.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope, receive)
        try:
            response = await self._handle(request)
        except Exception as exc:
            # The middleware's error log counts failures (shown in status) and logs each kind
            # once, so a broken exporter hit in a loop cannot flood the logs.
            report = getattr(self.backend, "errors", None)
            if callable(report):
                report("endpoint", exc)
            else:
                logger.exception("flightdeck: the debug endpoint failed on %s", scope.get("path"))
            response = _error(500, "internal error")
        await response(scope, receive, send)

    def _denied(self, scope: Scope) -> Response | None:
        headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
        if self._token_digest is not None:
            given = next((value for name, value in headers if name == b"authorization"), None)
            scheme, _, credentials = (given or b"").partition(b" ")
            # Digests have one length whatever was sent, and the comparison always runs
            # (against an empty credential when the header is missing): constant time.
            matches = hmac.compare_digest(
                hashlib.sha256(credentials.strip(b" \t")).digest(), self._token_digest
            )
            if matches and given is not None and scheme.lower() == b"bearer":
                return None
            return _error(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        client = scope.get("client")
        if not client or not _is_loopback(str(client[0])):
            return _not_found()
        if any(name in _PROXY_HEADERS for name, _ in headers):
            return _not_found()
        return None

    def _locate(self, scope: Scope) -> tuple[str, str] | None:
        """(base URL path of the endpoint, the path below it), or None when not under it."""
        path: str = scope["path"]
        root: str = scope.get("root_path") or ""
        candidates = [("", path)]
        if root and path.startswith(root):
            candidates.append((root, path[len(root) :]))
        for mount, rest in candidates:
            if rest == self.prefix or rest.startswith(self.prefix + "/"):
                return mount + self.prefix, rest[len(self.prefix) :]
        return None

    async def _handle(self, request: Request) -> Response:
        denied = self._denied(request.scope)
        if denied is not None:
            return denied
        located = self._locate(request.scope)
        if located is None:
            return _not_found()
        base, sub = located
        method = request.method
        if sub in ("", "/"):
            if method not in _READ_METHODS:
                return _error(405, "method not allowed", {"Allow": "GET, HEAD"})
            return await self._index(request, base)
        if sub == "/snapshots":
            if method in _READ_METHODS:
                return _json(await anyio.to_thread.run_sync(self.backend.store.list))
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
        if sub == "/status":
            if method not in _READ_METHODS:
                return _error(405, "method not allowed", {"Allow": "GET, HEAD"})
            status = dict(self.backend.status())
            status.setdefault("store", self.backend.store.stats())
            return _json(status)
        return _not_found()

    async def _capture(self, request: Request, base: str) -> Response:
        if _cross_site(request):
            return _error(403, "cross-site capture refused")
        reason = safe_text(request.query_params.get("reason") or "", 200)
        try:
            snapshot = await self.backend.capture(reason or "captured from the debug endpoint")
        except SnapshotInProgress:
            return _error(409, "a snapshot is being taken; try again in a moment")
        url = f"{base}/snapshots/{snapshot.id}"
        trigger = snapshot.trigger
        body = {
            "id": snapshot.id,
            "created_at": snapshot.created_at,
            "trigger": {"kind": trigger.get("kind"), "reason": trigger.get("reason")},
            "url": url,
        }
        return _json(body, 201, {"Location": url})

    async def _download(self, request: Request, ident: str) -> Response:
        fmt = request.query_params.get("format", "json")
        if fmt != "json" and fmt not in _EXPORTS:
            return _error(400, "format must be json, perfetto or html")
        store = self.backend.store
        if ident == "latest":
            latest = await anyio.to_thread.run_sync(store.latest_id)
            if latest is None:
                return _not_found()
            ident = latest
        if fmt == "json":
            gzip = _accepts_gzip(request.headers.get("accept-encoding", ""))
            data = await anyio.to_thread.run_sync(store.get_bytes, ident, gzip)
            if data is None:
                return _not_found()
            headers = {
                "Content-Disposition": f'attachment; filename="{ident}.json"',
                "Vary": "Accept-Encoding",
            }
            if gzip:
                headers["Content-Encoding"] = "gzip"
            return _response(data, 200, "application/json", headers)
        media_type, disposition, extension = _EXPORTS[fmt]
        exported = await anyio.to_thread.run_sync(self._export, ident, fmt)
        if exported is None:
            return _not_found()
        headers = {"Content-Disposition": f'{disposition}; filename="{ident}.{extension}"'}
        if fmt == "html":
            headers["Content-Security-Policy"] = _EXPORT_CSP
        return _response(exported, 200, media_type, headers)

    def _export(self, ident: str, fmt: str) -> bytes | None:
        snapshot = self.backend.store.get(ident)
        if snapshot is None:
            return None
        return snapshot.dumps("perfetto" if fmt == "perfetto" else "html")

    async def _index(self, request: Request, base: str) -> Response:
        listing = await anyio.to_thread.run_sync(self.backend.store.list)
        accept = request.headers.get("accept", "").lower()
        if "application/json" in accept and "text/html" not in accept:
            return _json(listing)
        nonce = secrets.token_urlsafe(16)
        csp = (
            f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}';"
            " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        headers = {"Content-Security-Policy": csp, "Referrer-Policy": "no-referrer"}
        return _response(_render_index(listing, base, nonce), 200, "text/html", headers)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1 << 20:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1 << 20):.1f} MiB"


def _render_row(item: dict[str, Any], base: str) -> str:
    e = html.escape
    url = f"{base}/snapshots/{item['id']}"
    request = item.get("request")
    described = ""
    if request:
        described = f"{request['method']} {request['path']}"
        if request.get("status") is not None:
            described += f" → {request['status']}"
        if request.get("duration") is not None:
            described += f" in {request['duration']:.3f} s"
    return (
        "<tr>"
        f"<td>{e(str(item['created_at']))}</td>"
        f"<td>{e(str(item['trigger']['kind']))}</td>"
        f"<td>{e(str(item['trigger']['reason']))}</td>"
        f"<td>{e(described)}</td>"
        f"<td>{e(str(item.get('pid') or ''))}</td>"
        f"<td>{e(_size(int(item.get('size') or 0)))}</td>"
        f'<td><a href="{e(url)}" download>json</a> · '
        f'<a href="{e(url)}?format=perfetto" download>perfetto</a> · '
        f'<a href="{e(url)}?format=html" target="_blank" rel="noopener noreferrer">view</a></td>'
        "</tr>"
    )


def _render_index(listing: list[dict[str, Any]], base: str, nonce: str) -> str:
    e = html.escape
    rows = "\n".join(_render_row(item, base) for item in listing) or (
        '<tr><td colspan="7">No snapshots yet.</td></tr>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flightdeck</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; }}
td:nth-child(3), td:nth-child(4) {{ word-break: break-all; }}
button {{ font: inherit; padding: .3em 1em; }}
#message {{ margin-left: 1em; color: #a00; }}
</style></head>
<body>
<h1>flightdeck</h1>
<p><button id="capture" data-url="{e(base)}/snapshots">Capture now</button>
<span id="message"></span> · <a href="{e(base)}/status">status</a></p>
<table>
<thead><tr><th>created</th><th>trigger</th><th>reason</th><th>request</th><th>pid</th>
<th>size</th><th>download</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<script nonce="{e(nonce)}">
const button = document.getElementById("capture");
const message = document.getElementById("message");
button.addEventListener("click", async () => {{
  button.disabled = true;
  message.textContent = "";
  try {{
    const answer = await fetch(button.dataset.url, {{
      method: "POST", headers: {{"Accept": "application/json"}}, credentials: "same-origin"
    }});
    if (answer.ok) {{ location.reload(); return; }}
    const body = await answer.json().catch(() => ({{}}));
    message.textContent = "Capture failed: " + (body.error || answer.status);
  }} catch (error) {{
    message.textContent = "Capture failed: " + error;
  }}
  button.disabled = false;
}});
</script>
</body></html>
"""
