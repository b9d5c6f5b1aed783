"""Fleet pieces without Redis: options, the service name, message and metadata checks,
the per-incident quota, and a fleet whose Redis is unreachable."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from typing import Any

import orjson
import pytest
from endpoint_samples import make_document
from support import drive, http_get, http_scope, make_deck, uvicorn_thread, wait_until

from flightdeck import FlightDeck
from flightdeck.asgi.fleet import fleet_options, resolve_service
from flightdeck.asgi.fleet.protocol import (
    check_snapshot,
    clean_incident,
    clean_meta,
    decode_json,
    meta_head,
    snapshot_meta,
)
from flightdeck.snapshot.document import Snapshot, new_id

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_options_validated_and_named() -> None:
    assert fleet_options(None, "trace", "flightdeck", 60.0) is None
    opts = fleet_options("redis://:pw@cache.internal:6380/2", "all", "prod", 60)
    assert opts is not None and opts.where == "cache.internal:6380" and opts.capture == "all"
    for bad, match in [
        (("http://x", "trace", "n", 60), "fleet must be"),
        (("redis://x", "some", "n", 60), "fleet_capture"),
        (("redis://x", "trace", "a b", 60), "fleet_namespace"),
        (("redis://x", "trace", "n", 0), "fleet_ttl"),
    ]:
        with pytest.raises(ValueError, match=match):
            fleet_options(*bad)
    with pytest.raises(TypeError, match="fleet"):
        fleet_options(6379, "trace", "n", 60)


def test_password_in_url_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTDECK_FLEET_PASSWORD", "from-env")
    with_url = fleet_options("redis://:inurl@h:1/0", "trace", "n", 60)
    without = fleet_options("redis://h:1/0", "trace", "n", 60)
    assert with_url is not None and with_url.password is None  # redis-py uses the URL's
    assert without is not None and without.password == "from-env"


def test_service_name_precedence(monkeypatch: pytest.MonkeyPatch, decks: list[Any]) -> None:
    monkeypatch.delenv("FLIGHTDECK_SERVICE", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    assert resolve_service(None, ok_app) == __name__  # the constructing module
    decks.append(FlightDeck(ok_app, endpoint=None))
    assert decks[-1].service == __name__
    assert make_deck(ok_app, decks).service == "support"  # that module constructed it
    monkeypatch.setenv("OTEL_SERVICE_NAME", "otel-name")
    assert make_deck(ok_app, decks).service == "otel-name"
    monkeypatch.setenv("FLIGHTDECK_SERVICE", "fd-name")
    assert make_deck(ok_app, decks).service == "fd-name"
    assert make_deck(ok_app, decks, service="explicit").service == "explicit"
    with pytest.raises(ValueError, match="service"):
        make_deck(ok_app, decks, service="  ")


def test_service_of_add_middleware_is_the_apps_module(decks: list[Any]) -> None:
    # Starlette builds its middleware stack on the first call, from framework frames only.
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> Any:
        return PlainTextResponse("hi")

    global _app
    _app = Starlette(routes=[Route("/", hello)])
    _app.add_middleware(FlightDeck, endpoint=None)

    with uvicorn_thread(_app) as srv:  # the server's frames only, as in production
        assert http_get(srv.url + "/")[0] == 200
    stack: Any = _app.middleware_stack
    while not isinstance(stack, FlightDeck):
        stack = stack.app
    decks.append(stack)
    assert stack.service == __name__


_app: Any = None


def test_process_service_in_snapshots(decks: list[Any]) -> None:
    deck = make_deck(ok_app, decks, service="checkout")

    async def main() -> Snapshot:
        await drive(deck, http_scope("/x"))
        snap: Snapshot = await deck.capture("now")
        return snap

    assert asyncio.run(main()).to_dict()["process"]["service"] == "checkout"


def _incident(**changes: Any) -> dict[str, Any]:
    message = {
        "v": 1,
        "id": new_id(),
        "created_at": "2026-11-30T12:00:00.000Z",
        "origin": {"service": "a", "hostname": "h", "pid": 1, "kind": "slow_request", "reason": ""},
        "trace_id": TRACE,
        "sender": "h:1:x",
    }
    message.update(changes)
    return message


def test_incident_messages_are_checked() -> None:
    good = _incident()
    assert clean_incident(decode_json(orjson.dumps(good), 16384)) == good
    assert clean_incident(_incident(trace_id=None)) is not None
    for bad in [
        _incident(v=2),
        _incident(id="../../x"),
        _incident(trace_id="ABC"),
        _incident(origin={"service": "a"}),
        _incident(origin={**good["origin"], "pid": -1}),
        _incident(sender=None),
        [],
        "x",
    ]:
        assert clean_incident(bad) is None, bad
    assert decode_json(b"x" * 20000, 16384) is None
    assert decode_json(b"\xff\xfe", 16384) is None


def test_fleet_snapshot_checked_against_its_metadata() -> None:
    doc = make_document()
    doc["trigger"]["incident"] = new_id()
    doc["process"]["service"] = "svc"
    doc["requests"][0]["trace_id"] = TRACE
    snap = Snapshot(doc)
    native = snap.dumps("json")
    data = gzip.compress(native)
    head = meta_head(snap.to_dict())
    meta = clean_meta(orjson.loads(orjson.dumps(snapshot_meta(head, data, len(native)))))
    assert meta is not None and meta["trace_ids"] == [TRACE]
    checked = check_snapshot(meta, data, 1 << 30)
    assert checked is not None and checked.id == snap.id
    tampered = gzip.compress(native.replace(b'"svc"', b'"evil"'))
    assert check_snapshot(meta, tampered, 1 << 30) is None  # digest differs
    assert check_snapshot({**meta, "pid": meta["pid"] + 1}, data, 1 << 30) is None
    assert check_snapshot(meta, data, 100) is None  # over the read limit
    assert clean_meta({**meta, "v": 1, "trace_ids": ["nothex"]}) is None


def test_unreachable_redis_never_harms_the_app(
    decks: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Port 9 (discard) on loopback: nothing listens, connections are refused at once.
    deck = make_deck(ok_app, decks, fleet="redis://127.0.0.1:9/0", slow_request=None)
    caplog.set_level(logging.WARNING, logger="flightdeck")

    async def main() -> list[Any]:
        sent = await drive(deck, http_scope("/a"))
        await asyncio.sleep(0)
        wait_until(lambda: deck.fleet.stats().get("connection_errors", 0) >= 2, timeout=10)
        sent += await drive(deck, http_scope("/b"))
        snap = await deck.capture("manual")
        deck.fleet.originate(snap)  # returns at once while down
        return sent

    sent = asyncio.run(main())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] * 2
    stats = deck.status()["fleet"]
    assert stats["connected"] is False and stats["redis"] == "127.0.0.1:9"
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # once, however many retries


def test_oversized_snapshot_refused_and_counted(decks: list[Any]) -> None:
    deck = make_deck(ok_app, decks, fleet="redis://127.0.0.1:9/0")
    doc = make_document(padding=500)
    doc["trigger"]["incident"] = new_id()
    deck.fleet.remember(doc)
    stored = deck.store.put(Snapshot(doc))
    deck.fleet.max_bytes = stored.stored - 1
    deck.fleet.share(stored)
    assert deck.status()["fleet"]["refused_too_big"] == 1


def test_client_rebuilt_in_a_forked_child(redis_server: Any) -> None:
    import os

    from flightdeck.asgi.fleet.client import Counters, FleetClient

    opts = fleet_options(redis_server.url, "trace", "forktest", 60)
    assert opts is not None
    client = FleetClient(opts, lambda data: None, Counters())
    client.start()
    try:
        wait_until(lambda: client.connected, timeout=10)
        parent_thread = client._thread
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a new thread, a new connection
            ok = False
            try:
                deadline = time.monotonic() + 10
                while not client.connected and time.monotonic() < deadline:
                    time.sleep(0.02)
                ok = client.connected and client._thread is not parent_thread
                ok = ok and client._thread is not None and client._thread.is_alive()
            finally:
                os.write(write, b"1" if ok else b"0")
                os._exit(0)
        os.close(write)
        answer = os.read(read, 1)
        os.waitpid(pid, 0)
        assert answer == b"1"
        assert client.connected and client._thread is parent_thread  # the parent's untouched
    finally:
        client.close()


def test_auth_password_from_the_url_or_the_variable(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch, decks: list[Any]
) -> None:
    # A Redis with AUTH: the password in the URL wins; FLIGHTDECK_FLEET_PASSWORD keeps it
    # out of the URL; a wrong one is a connection failure, counted, never raised.
    redis_server.kill()
    redis_server.args = ["--requirepass", "s3cret"]
    redis_server.start()
    url = redis_server.url
    with_url = url.replace("redis://", "redis://:s3cret@")
    monkeypatch.setenv("FLIGHTDECK_FLEET_PASSWORD", "wrong")
    in_url = make_deck(ok_app, decks, fleet=with_url)
    monkeypatch.setenv("FLIGHTDECK_FLEET_PASSWORD", "s3cret")
    from_env = make_deck(ok_app, decks, fleet=url)
    monkeypatch.setenv("FLIGHTDECK_FLEET_PASSWORD", "wrong")
    refused = make_deck(ok_app, decks, fleet=url)

    for deck in (in_url, from_env, refused):  # one loop each: one recorder per loop
        asyncio.run(drive(deck, http_scope("/")))  # starts the deck and its fleet client
    wait_until(lambda: in_url.fleet.client.connected and from_env.fleet.client.connected)
    wait_until(lambda: refused.fleet.stats().get("connection_errors", 0) >= 1)
    assert not refused.fleet.client.connected
    assert "s3cret" not in str(refused.status())  # never in status or errors
