from __future__ import annotations

import gzip
import hmac
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import orjson
import pytest
from endpoint_samples import make_document, make_snapshot
from starlette.types import ASGIApp, Message

from flightdeck.asgi import endpoint as _endpoint
from flightdeck.asgi.endpoint import make_endpoint
from flightdeck.snapshot.document import FORMATS, Snapshot, SnapshotInProgress, new_id
from flightdeck.snapshot.store import SnapshotStore

PREFIX = "/debug/flight"
TOKEN = "s3cret-token-0123"
BASE = 1_764_121_800.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeBackend:
    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.busy = False
        self.reasons: list[str] = []

    async def capture(self, reason: str) -> Snapshot:
        if self.busy:
            raise SnapshotInProgress("busy")
        self.reasons.append(reason)
        snapshot = make_snapshot(kind="manual", reason=reason)
        await anyio.to_thread.run_sync(self.store.put, snapshot)
        return snapshot

    def status(self) -> dict[str, Any]:
        return {"window": 10.0, "events": 12, "bytes": 3456, "dropped": 0, "loop": "asyncio"}


@pytest.fixture
def snapshots() -> list[Snapshot]:
    return [
        make_snapshot(created=BASE, reason="first"),
        make_snapshot(created=BASE + 1, reason="<script>alert('x')</script>", path="/<b>"),
        make_snapshot(created=BASE + 2, reason="third", padding=50),
    ]


@pytest.fixture
def backend(tmp_path: Path, snapshots: list[Snapshot]) -> FakeBackend:
    store = SnapshotStore(directory=tmp_path)
    for snapshot in snapshots:
        store.put(snapshot)
    return FakeBackend(store)


def connect(
    app: ASGIApp, host: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 123))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000", headers=headers)


@pytest.fixture
async def client(backend: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    async with connect(make_endpoint(backend)) as client:
        yield client


def common(response: httpx.Response) -> httpx.Response:
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    return response


async def raw_call(
    app: ASGIApp,
    path: str,
    *,
    method: str = "GET",
    client: tuple[str, int] | None = ("127.0.0.1", 123),
    headers: list[tuple[bytes, bytes]] | None = None,
    root_path: str = "",
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Call the app with a hand-made scope (paths httpx would normalize)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": root_path,
        "query_string": b"",
        "headers": headers or [],
        "server": ("127.0.0.1", 8000),
    }
    if client is not None:
        scope["client"] = client
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    response_headers = dict(start["headers"])
    assert response_headers[b"cache-control"] == b"no-store"
    assert response_headers[b"x-content-type-options"] == b"nosniff"
    return start["status"], response_headers, body


@pytest.mark.anyio
async def test_index_html(client: httpx.AsyncClient, snapshots: list[Snapshot]) -> None:
    response = common(await client.get(PREFIX))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    page = response.text
    for snapshot in snapshots:
        assert f'href="{PREFIX}/snapshots/{snapshot.id}"' in page
        assert f"{PREFIX}/snapshots/{snapshot.id}?format=perfetto" in page
        assert f"{PREFIX}/snapshots/{snapshot.id}?format=html" in page
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "GET /&lt;b&gt;" in page
    assert page.index(snapshots[2].id) < page.index(snapshots[0].id)  # newest first
    assert 'id="capture"' in page and f'data-url="{PREFIX}/snapshots"' in page
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page
    # The trailing slash is the same page.
    assert common(await client.get(PREFIX + "/")).status_code == 200


@pytest.mark.anyio
async def test_index_json_and_list(
    client: httpx.AsyncClient, backend: FakeBackend, snapshots: list[Snapshot]
) -> None:
    expected = backend.store.list()
    response = common(await client.get(PREFIX, headers={"Accept": "application/json"}))
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected
    response = common(await client.get(PREFIX + "/snapshots"))
    assert response.status_code == 200
    listing = response.json()
    assert listing == expected
    assert [item["id"] for item in listing] == [s.id for s in reversed(snapshots)]
    assert set(listing[0]) == {"id", "created_at", "trigger", "request", "pid", "size"} | {
        "service",
        "incident",
    }
    assert set(listing[0]["trigger"]) == {"kind", "reason"}


@pytest.mark.anyio
async def test_download_gzip_negotiation(
    client: httpx.AsyncClient, snapshots: list[Snapshot]
) -> None:
    snapshot = snapshots[2]
    url = f"{PREFIX}/snapshots/{snapshot.id}"
    response = common(await client.get(url, headers={"Accept-Encoding": "gzip"}))
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == f'attachment; filename="{snapshot.id}.json"'
    assert "accept-encoding" in response.headers["vary"].lower()
    assert response.content == snapshot.dumps("json")  # httpx decoded it
    for plain in ("identity", "", "gzip;q=0, identity", "br"):
        response = common(await client.get(url, headers={"Accept-Encoding": plain}))
        assert "content-encoding" not in response.headers
        assert response.content == snapshot.dumps("json")
    for zipped in ("br, gzip;q=0.5", "*", "GZIP", "deflate, x-gzip"):
        response = common(await client.get(url, headers={"Accept-Encoding": zipped}))
        assert response.headers["content-encoding"] == "gzip", zipped


@pytest.mark.anyio
async def test_download_is_raw_gzip_of_native_json(
    backend: FakeBackend, snapshots: list[Snapshot]
) -> None:
    status, headers, body = await raw_call(
        make_endpoint(backend),
        f"{PREFIX}/snapshots/{snapshots[0].id}",
        headers=[(b"accept-encoding", b"gzip")],
    )
    assert status == 200 and headers[b"content-encoding"] == b"gzip"
    assert gzip.decompress(body) == snapshots[0].dumps("json")
    assert Snapshot.load(body).id == snapshots[0].id


@pytest.mark.anyio
async def test_latest(client: httpx.AsyncClient, snapshots: list[Snapshot]) -> None:
    response = common(await client.get(f"{PREFIX}/snapshots/latest"))
    assert response.status_code == 200
    assert response.content == snapshots[2].dumps("json")
    assert snapshots[2].id in response.headers["content-disposition"]


@pytest.mark.anyio
async def test_latest_when_empty(tmp_path: Path) -> None:
    async with connect(make_endpoint(FakeBackend(SnapshotStore()))) as client:
        response = common(await client.get(f"{PREFIX}/snapshots/latest"))
        assert response.status_code == 404
        assert common(await client.get(f"{PREFIX}/snapshots")).json() == []


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every conversion made in this (the app's) process: there must be none."""
    calls: list[tuple[str, int]] = []
    real = Snapshot.dumps

    def dumps(self: Snapshot, format: str = "json") -> bytes:
        if format != "json":
            calls.append((format, threading.get_ident()))
        return real(self, format)

    monkeypatch.setattr(Snapshot, "dumps", dumps)
    return calls


@pytest.mark.anyio
async def test_perfetto_and_html_exports(
    client: httpx.AsyncClient, snapshots: list[Snapshot], exports: list[tuple[str, int]]
) -> None:
    ident = snapshots[1].id
    expected = {name: fmt.convert(snapshots[1].to_dict()) for name, fmt in _converted()}
    response = common(await client.get(f"{PREFIX}/snapshots/{ident}?format=perfetto"))
    assert response.status_code == 200
    assert response.content == expected["perfetto"]
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="{ident}.perfetto.json"'
    )
    response = common(await client.get(f"{PREFIX}/snapshots/latest?format=html"))
    assert response.status_code == 200
    assert response.content == FORMATS["html"].convert(snapshots[2].to_dict())  # type: ignore[misc]
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-disposition"].startswith("inline;")
    assert "sandbox" in response.headers["content-security-policy"]
    response = common(await client.get(f"{PREFIX}/snapshots/{ident}?format=pftrace"))
    assert response.status_code == 200 and response.content == expected["pftrace"]
    assert response.headers["content-disposition"] == f'attachment; filename="{ident}.pftrace"'
    response = common(await client.get(f"{PREFIX}/snapshots/{ident}?format=summary"))
    assert response.status_code == 200 and response.content == expected["summary"]
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert exports == []  # every view was made in a child process, none here
    response = common(await client.get(f"{PREFIX}/snapshots/{ident}?format=pdf"))
    assert response.status_code == 400
    missing = new_id(BASE - 100)
    response = common(await client.get(f"{PREFIX}/snapshots/{missing}?format=perfetto"))
    assert response.status_code == 404


def _converted() -> list[tuple[str, Any]]:
    return [(name, fmt) for name, fmt in FORMATS.items() if fmt.convert is not None]


@pytest.mark.anyio
async def test_store_is_used_off_the_loop(
    client: httpx.AsyncClient, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    store = backend.store
    for name in ("list", "latest_id", "get", "get_bytes"):
        method = getattr(store, name)

        def spy(*args: Any, _method: Any = method) -> Any:
            threads.append(threading.get_ident())
            return _method(*args)

        monkeypatch.setattr(store, name, spy)
    for path in ("", "/snapshots", "/snapshots/latest"):
        assert common(await client.get(PREFIX + path)).status_code == 200
    assert threads and threading.get_ident() not in threads


@pytest.mark.anyio
async def test_status(client: httpx.AsyncClient) -> None:
    response = common(await client.get(f"{PREFIX}/status"))
    assert response.status_code == 200
    body = response.json()
    assert body["events"] == 12 and body["loop"] == "asyncio"
    assert body["store"]["written"] == 3


@pytest.mark.anyio
async def test_capture(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    response = common(await client.post(f"{PREFIX}/snapshots?reason=checkout%20stalled"))
    assert response.status_code == 201
    body = response.json()
    assert body["url"] == f"{PREFIX}/snapshots/{body['id']}"
    assert response.headers["location"] == body["url"]
    assert body["trigger"] == {"kind": "manual", "reason": "checkout stalled"}
    assert set(body) >= {"id", "created_at", "trigger", "url"}
    assert common(await client.get(response.headers["location"])).status_code == 200
    assert common(await client.get(f"{PREFIX}/snapshots")).json()[0]["id"] == body["id"]
    # Same-origin browser requests (the page's button) are fine.
    same = {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
    assert common(await client.post(f"{PREFIX}/snapshots", headers=same)).status_code == 201
    assert backend.reasons[-1] == "captured from the debug endpoint"


@pytest.mark.anyio
async def test_capture_in_progress(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    backend.busy = True
    response = common(await client.post(f"{PREFIX}/snapshots"))
    assert response.status_code == 409
    assert "error" in response.json()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers", [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}]
)
async def test_cross_site_capture_refused(
    client: httpx.AsyncClient, backend: FakeBackend, headers: dict[str, str]
) -> None:
    response = common(await client.post(f"{PREFIX}/snapshots", headers=headers))
    assert response.status_code == 403
    assert backend.reasons == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "", "GET, HEAD"),
        ("DELETE", "/snapshots", "GET, HEAD, POST"),
        ("PUT", "/snapshots/latest", "GET, HEAD"),
        ("POST", "/status", "GET, HEAD"),
    ],
)
async def test_wrong_method(client: httpx.AsyncClient, method: str, path: str, allow: str) -> None:
    response = common(await client.request(method, PREFIX + path))
    assert response.status_code == 405
    assert response.headers["allow"] == allow


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path",
    ["/nope", "/snapshots/", "/status/x", "/snapshots/latest/x", "/Snapshots", "//snapshots"],
)
async def test_unknown_paths(client: httpx.AsyncClient, path: str) -> None:
    assert common(await client.get(PREFIX + path)).status_code == 404


BAD_IDS = [
    "../etc/passwd",
    "..",
    "%2e%2e%2f",
    "../../../../etc/passwd",
    "/etc/passwd",
    "x\0y",
    "20261126T015000Z-1234-a1b2c3d4\0",
    "20261126T015000Z-1234-a1b2c3d4/../x",
    "20261126T015000Z-1234-a1b2c3d4.json.gz",
    "20261126T015000Z-1234-A1B2C3D4",
    "a" * 5000,
    "latest2",
    "LATEST",
]


@pytest.mark.anyio
@pytest.mark.parametrize("ident", BAD_IDS)
async def test_malformed_ids(backend: FakeBackend, ident: str) -> None:
    app = make_endpoint(backend)
    status, _, _ = await raw_call(app, f"{PREFIX}/snapshots/{ident}")
    assert status == 404
    if "\0" in ident:
        return  # httpx refuses to send it; the hand-made scope above covered it
    async with connect(app) as client:
        response = common(await client.get(f"{PREFIX}/snapshots/{ident}"))
        assert "content-disposition" not in response.headers
        if response.request.url.path.startswith(f"{PREFIX}/snapshots/"):
            assert response.status_code == 404  # else httpx normalized the dots away


@pytest.mark.anyio
async def test_unknown_valid_id(client: httpx.AsyncClient) -> None:
    response = common(await client.get(f"{PREFIX}/snapshots/{new_id(BASE - 50)}"))
    assert response.status_code == 404


@pytest.mark.anyio
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Bearer " + TOKEN[:-1],
        "Bearer " + TOKEN + "x",
        "Bearer " + "x" * 1000,
        "Basic " + TOKEN,
        TOKEN,
        "Token " + TOKEN,
        "Bearer" + TOKEN,
    ],
)
async def test_token_refused(backend: FakeBackend, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with connect(make_endpoint(backend, token=TOKEN), headers=headers) as client:
        for method, path in [("GET", ""), ("GET", "/snapshots/latest"), ("POST", "/snapshots")]:
            response = common(await client.request(method, PREFIX + path))
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
    assert backend.reasons == []


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
@pytest.mark.parametrize("host", ["127.0.0.1", "203.0.113.9"])
async def test_token_accepted(backend: FakeBackend, scheme: str, host: str) -> None:
    headers = {"Authorization": f"{scheme} {TOKEN}", "X-Forwarded-For": "198.51.100.1"}
    async with connect(make_endpoint(backend, token=TOKEN), host, headers) as client:
        assert common(await client.get(PREFIX)).status_code == 200
        assert common(await client.get(f"{PREFIX}/snapshots/latest")).status_code == 200
        assert common(await client.post(f"{PREFIX}/snapshots")).status_code == 201


@pytest.mark.anyio
async def test_token_compared_in_constant_time(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app = make_endpoint(backend, token=TOKEN)
    for headers in ([], [(b"authorization", b"Basic x")], [(b"authorization", b"Bearer no")]):
        status, _, _ = await raw_call(app, PREFIX, headers=headers)
        assert status == 401
    assert len(compared) == 3
    assert all(len(a) == len(b) == 32 for a, b in compared)


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.5", "2001:db8::1", "0.0.0.0", "name"])
async def test_no_token_remote_client_sees_nothing(backend: FakeBackend, host: str) -> None:
    app = make_endpoint(backend)
    async with connect(app, host) as client:
        unknown = common(await client.get("/debug/flight/nope"))
        for method, path in [("GET", ""), ("GET", "/snapshots/latest"), ("POST", "/snapshots")]:
            response = common(await client.request(method, PREFIX + path))
            assert response.status_code == 404
            assert response.content == unknown.content
            assert response.headers == unknown.headers
    assert backend.reasons == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "header",
    [
        ("X-Forwarded-For", "127.0.0.1"),
        ("Forwarded", "for=127.0.0.1"),
        ("X-Real-IP", "127.0.0.1"),
        ("x-forwarded-for", ""),
    ],
)
async def test_no_token_proxied_loopback_sees_nothing(
    backend: FakeBackend, header: tuple[str, str]
) -> None:
    async with connect(make_endpoint(backend), headers=dict([header])) as client:
        assert common(await client.get(PREFIX)).status_code == 404
        assert common(await client.post(f"{PREFIX}/snapshots")).status_code == 404
    assert backend.reasons == []


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
async def test_no_token_loopback_answered(backend: FakeBackend, host: str) -> None:
    async with connect(make_endpoint(backend), host) as client:
        assert common(await client.get(PREFIX)).status_code == 200


@pytest.mark.anyio
async def test_no_client_in_scope(backend: FakeBackend) -> None:
    status, _, _ = await raw_call(make_endpoint(backend), PREFIX, client=None)
    assert status == 404


@pytest.mark.anyio
async def test_errors_carry_the_headers(
    client: httpx.AsyncClient, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(backend, "status", broken)
    response = common(await client.get(f"{PREFIX}/status"))
    assert response.status_code == 500
    assert "boom" not in response.text


@pytest.mark.anyio
async def test_root_path(backend: FakeBackend, snapshots: list[Snapshot]) -> None:
    app = make_endpoint(backend)
    status, _, body = await raw_call(app, f"/api{PREFIX}/snapshots", root_path="/api")
    assert status == 200 and orjson.loads(body)[0]["id"] == snapshots[2].id
    status, headers, _ = await raw_call(
        app, f"/api{PREFIX}/snapshots", method="POST", root_path="/api"
    )
    assert status == 201 and headers[b"location"].startswith(b"/api/debug/flight/snapshots/")
    status, _, _ = await raw_call(app, "/debug/flightdeck")
    assert status == 404


@pytest.mark.anyio
async def test_websocket_is_closed(backend: FakeBackend) -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": PREFIX, "headers": [], "client": ("127.0.0.1", 1)}
    await make_endpoint(backend)(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_factory_arguments(backend: FakeBackend) -> None:
    for prefix in ("debug", "/debug/", "", "/"):
        with pytest.raises(ValueError, match="endpoint"):
            make_endpoint(backend, prefix=prefix)
    for token in ("", " x", "a b"):
        with pytest.raises(ValueError, match="token"):
            make_endpoint(backend, token=token)
    with pytest.raises(TypeError, match="token"):
        make_endpoint(backend, token=b"x")  # type: ignore[arg-type]


def test_tokenless_warning_logged_once(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_endpoint, "_warned_tokenless", False)
    with caplog.at_level(logging.WARNING, logger="flightdeck"):
        make_endpoint(backend, token=TOKEN)
        make_endpoint(backend)
        make_endpoint(backend)
    records = [r for r in caplog.records if r.name == "flightdeck"]
    assert len(records) == 1 and "no token" in records[0].getMessage()


@pytest.mark.anyio
async def test_custom_prefix(backend: FakeBackend) -> None:
    async with connect(make_endpoint(backend, prefix="/_ops/fd")) as client:
        assert common(await client.get("/_ops/fd/snapshots")).status_code == 200
        assert common(await client.get(f"{PREFIX}/snapshots")).status_code == 404


@pytest.mark.anyio
async def test_real_exports(client: httpx.AsyncClient, snapshots: list[Snapshot]) -> None:
    url = f"{PREFIX}/snapshots/{snapshots[2].id}"
    perfetto = common(await client.get(url + "?format=perfetto"))
    assert perfetto.status_code == 200 and "traceEvents" in perfetto.json()
    page = common(await client.get(url + "?format=html"))
    assert page.status_code == 200 and page.text.lower().startswith("<!doctype html>")


@pytest.mark.anyio
async def test_list_by_trace_id_and_local_incidents(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    incident = new_id()
    docs = [make_document(reason=f"n{i}") for i in range(3)]
    docs[0]["requests"][0]["trace_id"] = trace
    docs[0]["trigger"]["incident"] = docs[1]["trigger"]["incident"] = incident
    for doc in docs:
        backend.store.put(Snapshot(doc))
    response = common(await client.get(PREFIX + f"/snapshots?trace_id={trace}"))
    assert [item["id"] for item in response.json()] == [docs[0]["id"]]
    assert common(await client.get(PREFIX + "/snapshots?trace_id=" + "0" * 31 + "1")).json() == []
    for bad in ["XYZ", trace.upper(), trace + "0", ""]:
        response = common(await client.get(PREFIX + f"/snapshots?trace_id={bad}"))
        assert response.status_code == 400, bad
    # Without a fleet, /incidents groups this process's snapshots by incident.
    incidents = common(await client.get(PREFIX + "/incidents")).json()
    assert [i["id"] for i in incidents] == [incident]
    assert {s["id"] for s in incidents[0]["snapshots"]} == {docs[0]["id"], docs[1]["id"]}
    page = (await client.get(PREFIX, headers={"Accept": "text/html"})).text
    assert page.count(f"incident {incident}") == 1
    assert common(await client.post(PREFIX + "/incidents")).status_code == 405
