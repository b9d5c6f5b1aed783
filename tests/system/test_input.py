"""Odd input: odd scopes, bad bytes, huge inputs, misbehaving apps.

Each test names its row. The middleware is driven in-process with hand-made scopes (what a
server could send, including what uvicorn itself never would), and against a real uvicorn
where the server's own behaviour is the reference.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import traceback
from typing import Any

import pytest
from support import Message, drive, find_request, http_scope, make_deck, uvicorn_thread

from flightdeck import FlightDeck
from flightdeck.asgi.redact import MAX_HEADER_VALUE, MAX_HEADERS, MAX_PATH, MAX_QUERY
from flightdeck.core.text import TRUNCATED

pytestmark = pytest.mark.anyio


def echo_app(seen: list[dict[str, Any]]) -> Any:
    """A raw ASGI app that notes the scope it got and answers 200 ``hello``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"hello"})

    return app


def body_of(sent: list[Message]) -> tuple[int, bytes]:
    start = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start[0]["status"], body


@pytest.mark.parametrize("missing", ["client", "server", "headers", "query_string", "path"])
async def test_scope_missing_keys_passes_through(decks: list[Any], missing: str) -> None:
    seen: list[dict[str, Any]] = []
    deck = make_deck(
        echo_app(seen), decks, endpoint="/debug/flight", capture_headers=["user-agent"]
    )
    scope = http_scope("/thing", query_string=b"a=1", headers=[(b"user-agent", b"ua")])
    del scope[missing]
    sent = await drive(deck, scope)  # nothing raised
    assert body_of(sent) == (200, b"hello")
    assert seen[0] is scope and missing not in scope
    req = (await deck.capture()).to_dict()["requests"]
    assert len(req) == 1
    rec = req[0]
    # Recorded with what is there.
    assert rec["status"] == 200 and rec["method"] == "GET" and rec["end"] is not None
    assert rec["path"] == ("" if missing == "path" else "/thing")
    assert rec["client"] == (None if missing == "client" else "127.0.0.1:50000")
    assert rec["query"] == ("" if missing == "query_string" else "a=1")
    assert rec["headers"] == ({} if missing == "headers" else {"user-agent": "ua"})
    assert deck.status()["errors"] == {}


async def test_lifespan_and_unknown_scopes_forwarded_unchanged(decks: list[Any]) -> None:
    got: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append((scope, receive, send))
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})

    deck = make_deck(app, decks)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    for scope in ({"type": "lifespan", "asgi": {"version": "3.0"}}, {"type": "webtransport"}):
        before = dict(scope)
        await deck(scope, receive, send)
        if scope["type"] == "lifespan":
            # send is watched for the end of the shutdown (recording stops then); what the
            # app sends still reaches the server as it is (``sent`` below)
            assert got[-1][:2] == (scope, receive)
        else:
            assert got[-1] == (scope, receive, send)  # the very callables: nothing wrapped
        assert got[-1][0] is scope
        # Every key the server set is as it was; lifespan scopes carry the one marker key that
        # tells a nested FlightDeck an outer one already runs.
        assert {k: v for k, v in scope.items() if k != "flightdeck"} == before
        if scope["type"] != "lifespan":
            assert scope == before
    assert sent == [{"type": "lifespan.startup.complete"}]
    assert (await deck.capture()).to_dict()["requests"] == []


async def test_websocket_forwarded_no_http_span_no_latency_trigger(
    decks: list[Any],
) -> None:
    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hi"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        await send({"type": "websocket.accept"})
        received.append(await receive())
        await asyncio.sleep(0.3)  # far beyond slow_request: a connection's length is no latency
        await send({"type": "websocket.send", "text": "bye"})
        received.append(await receive())

    deck = make_deck(app, decks, slow_request=0.05)
    scope = http_scope("/ws", type="websocket", scheme="ws")
    del scope["method"]
    before = dict(scope)
    sent = await drive(deck, scope, incoming=list(incoming))
    assert received == incoming
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send"]
    assert all(scope[k] == v for k, v in before.items())  # nothing the app sees was changed
    requests = (await deck.capture()).to_dict()["requests"]
    assert [r["kind"] for r in requests] == ["websocket"]  # no HTTP span
    assert requests[0]["disconnected"] is True
    fired = deck.status()["triggers"]["fired"]
    assert "slow_request" not in fired, fired


async def test_non_utf8_bytes_recorded_with_replacement(decks: list[Any]) -> None:
    seen: list[dict[str, Any]] = []
    deck = make_deck(echo_app(seen), decks, capture_headers=["x-bin", "x-\xff"])
    headers = [(b"x-bin", b"caf\xe9 \xff\xfe"), (b"x-\xff", b"v\x80")]
    # What a server decoding the path with surrogateescape would hand over.
    scope = http_scope(
        "/caf\udce9/\udcff",
        raw_path=b"/caf\xe9/\xff",
        query_string=b"q=%zz%&r=%e9%&s=\xff\xfe",
        headers=headers,
    )
    original = dict(scope)
    sent = await drive(deck, scope)
    assert body_of(sent) == (200, b"hello")  # the request is unaffected
    assert seen[0] is scope
    assert {k: v for k, v in scope.items() if k != "flightdeck"} == original
    snap = await deck.capture()
    doc = json.loads(snap.dumps("json"))  # serializes: no lone surrogate left
    rec = doc["requests"][0]
    # Each undecodable byte becomes replacement characters (how many is safe_text's choice).
    assert rec["path"].startswith("/caf\ufffd") and rec["path"].endswith("\ufffd")
    assert set(rec["path"]) <= set("/caf\ufffd")
    assert rec["query"] == "q=%zz%&r=%e9%&s=\ufffd\ufffd"
    assert rec["headers"] == {"x-bin": "caf\ufffd \ufffd\ufffd", "x-\xff": "v\ufffd"}
    for fmt in ("perfetto", "html"):
        assert snap.dumps(fmt)  # every export copes too
    assert deck.status()["errors"] == {}


async def test_huge_inputs_capped_and_marked(decks: list[Any]) -> None:
    names = [f"x-h{i}" for i in range(10_000)]
    deck = make_deck(echo_app([]), decks, capture_headers=["x-big", "x-rep", *names])
    headers = [(b"x-big", b"a" * (64 << 10))]
    headers += [(b"x-rep", b"r" * 10)] * 10_000  # one header repeated 10k times
    headers += [(name.encode(), b"v") for name in names]  # 10k distinct headers
    query = b"&".join(b"k%d=%s" % (i, b"v" * 100) for i in range(10_000))
    assert len(query) > 1 << 20
    long_path = "/p" + "x" * (1 << 20)
    await drive(deck, http_scope(long_path, query_string=query, headers=headers))
    rec = (await deck.capture()).to_dict()["requests"][0]
    # The documented limits of flightdeck.asgi.redact: MAX_QUERY, MAX_HEADER_VALUE, MAX_HEADERS.
    assert len(rec["query"]) <= MAX_QUERY and rec["query"].endswith(TRUNCATED)
    assert rec["query"].startswith("k0=vvv")
    assert len(rec["headers"]) <= MAX_HEADERS
    big, rep = rec["headers"]["x-big"], rec["headers"]["x-rep"]
    assert len(big) <= MAX_HEADER_VALUE and big.endswith(TRUNCATED)
    assert len(rep) <= MAX_HEADER_VALUE and rep.endswith(TRUNCATED)
    assert len(rec["path"]) <= MAX_PATH and rec["path"].endswith(TRUNCATED)


async def test_exception_before_start_reraised_same_object(decks: list[Any]) -> None:
    cause = KeyError("root cause")
    error = ValueError("app failure")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            raise cause
        except KeyError as exc:
            raise error from exc

    deck = make_deck(app, decks, slow_request=None)
    with pytest.raises(ValueError) as info:
        await drive(deck, http_scope("/boom"))
    assert info.value is error
    assert error.__cause__ is cause and error.__context__ is cause
    assert "raise error from exc" in "".join(traceback.format_tb(error.__traceback__))
    await asyncio.sleep(0.05)
    status = deck.status()
    assert status["triggers"]["fired"] == {"exception": 1}
    assert status["errors"] == {}
    from support import await_until

    await await_until(lambda: deck.store.list())
    listed = deck.store.list()
    assert [s["trigger"]["kind"] for s in listed] == ["exception"]
    rec = find_request(deck.store.get(listed[0]["id"]).to_dict(), "/boom")
    assert rec["status"] == 500 and rec["error"] == "ValueError"


async def test_exception_mid_stream_reraised_span_closed_as_error(decks: list[Any]) -> None:
    error = RuntimeError("stream broke")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise error

    # No error trigger: its own capture would race the one below.
    deck = make_deck(app, decks, slow_request=None, server_errors=False)
    sent: list[Message] = []
    with pytest.raises(RuntimeError) as info:
        await drive(deck, http_scope("/stream"), send=sent.append)
    assert info.value is error
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    rec = find_request((await deck.capture()).to_dict(), "/stream")
    assert rec["error"] == "RuntimeError" and rec["status"] == 200
    assert rec["end"] is not None and rec["duration"] is not None
    assert deck.status()["inflight"] == 0


async def test_app_misbehaves_flightdeck_does_not_crash(decks: list[Any]) -> None:
    async def nosend(scope: Any, receive: Any, send: Any) -> None:
        return

    server_error = RuntimeError("Expected ASGI message 'http.response.body'")

    async def double(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.start", "status": 201, "headers": []})

    async def strict_send(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 201:
            raise server_error  # what a strict server does with a second start

    async def both(scope: Any, receive: Any, send: Any) -> None:
        await (nosend if scope["path"] == "/nosend" else double)(scope, receive, send)

    deck = make_deck(both, decks, slow_request=None)
    assert await drive(deck, http_scope("/nosend")) == []
    deck2 = deck
    with pytest.raises(RuntimeError) as info:
        await drive(deck2, http_scope("/double"), send=strict_send)
    assert info.value is server_error  # the server's own error, untouched
    for d in (deck, deck2):
        assert d.status()["errors"] == {} and d.status()["inflight"] == 0


def _outcome(port: int, path: str) -> tuple[Any, ...]:
    """What a client sees: (status, body) or the kind of failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        try:
            body = answer.read()
        except http.client.IncompleteRead as exc:
            return answer.status, "incomplete", exc.partial
        return answer.status, body
    except (http.client.HTTPException, ConnectionError) as exc:
        return ("failed", type(exc).__name__)
    finally:
        conn.close()


def test_real_uvicorn_behaviour_unchanged(decks: list[Any]) -> None:
    import serverapps

    deck = FlightDeck(serverapps.inner, slow_request=None, endpoint=None)
    decks.append(deck)
    outcomes = {}
    for name, app in (("bare", serverapps.bare), ("wrapped", deck)):
        with uvicorn_thread(app, log_level="critical") as srv:
            outcomes[name] = [_outcome(srv.port, p) for p in ("/nosend", "/double", "/fast")]
    assert outcomes["wrapped"] == outcomes["bare"]
    assert outcomes["bare"][0][0] == 500 and outcomes["bare"][2] == (200, b"ok")
    assert deck.status()["errors"] == {}


async def test_pathsend_trailers_unknown_messages_forwarded_unchanged(
    decks: list[Any],
) -> None:
    to_send: list[Message] = [
        {"type": "http.response.start", "status": 200, "headers": [], "trailers": True},
        {"type": "http.response.body", "body": b"x", "more_body": False},
        {"type": "http.response.trailers", "headers": [(b"x-t", b"1")], "more_trailers": False},
        {"type": "http.response.pathsend", "path": "/tmp/file"},
        {"type": "x.unknown", "payload": object()},
    ]
    incoming: list[Message] = [{"type": "x.incoming-unknown"}, {"type": "http.request"}]
    got: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await receive())
        got.append(await receive())
        for message in to_send:
            await send(message)

    deck = make_deck(app, decks, slow_request=None)
    expected_in = list(incoming)
    sent = await drive(deck, http_scope("/t"), incoming=incoming)
    assert len(sent) == len(to_send)
    assert all(a is b for a, b in zip(sent, to_send, strict=True))  # the same objects, in order
    assert all(a is b for a, b in zip(got, expected_in, strict=True))
    assert deck.status()["errors"] == {}
