"""Fleet pieces without Redis: options, the service name, message and metadata checks,
the per-incident quota, and a fleet whose Redis is unreachable."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib
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
SECRET = "fleet-secret-0123456789"


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_options_validated_and_named() -> None:
    assert fleet_options(None, "trace", "flightdeck", 60.0) is None
    opts = fleet_options("redis://:pw@cache.internal:6380/2", "all", "prod", 60, SECRET)
    assert opts is not None and opts.where == "cache.internal:6380" and opts.capture == "all"
    assert SECRET not in repr(opts)
    for bad, match in [
        (("http://x", "trace", "n", 60, SECRET), "fleet must be"),
        (("redis://x", "some", "n", 60, SECRET), "fleet_capture"),
        (("redis://x", "trace", "a b", 60, SECRET), "fleet_namespace"),
        (("redis://x", "trace", "n", 0, SECRET), "fleet_ttl"),
        (("redis://x", "trace", "n", 60), r"fleet_secret \(FLIGHTDECK_FLEET_SECRET\) is required"),
        (("redis://x", "trace", "n", 60, "short"), "at least 16"),
        (("redis://x", "trace", "n", 60, f"{SECRET},"), "at least 16"),
    ]:
        with pytest.raises(ValueError, match=match):
            fleet_options(*bad)
    with pytest.raises(TypeError, match="fleet"):
        fleet_options(6379, "trace", "n", 60, SECRET)
    with pytest.raises(TypeError, match="fleet_secret"):
        fleet_options("redis://x", "trace", "n", 60, 12345678901234567)
    rotating = fleet_options("redis://x", "trace", "n", 60, f"{SECRET}-new, {SECRET}")
    assert rotating is not None and rotating.secrets == (f"{SECRET}-new", SECRET)
    listed = fleet_options("redis://x", "trace", "n", 60, [SECRET])
    assert listed is not None and listed.secrets == (SECRET,)


def test_password_in_url_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTDECK_FLEET_PASSWORD", "from-env")
    with_url = fleet_options("redis://:inurl@h:1/0", "trace", "n", 60, SECRET)
    without = fleet_options("redis://h:1/0", "trace", "n", 60, SECRET)
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
        "v": 2,
        "ts": int(time.time() * 1000),
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
        _incident(v=1),
        _incident(ts="1"),
        _incident(ts=True),
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
    checked = check_snapshot(meta, data)
    assert checked is not None and checked.id == snap.id
    tampered = gzip.compress(native.replace(b'"svc"', b'"evil"'))
    assert check_snapshot(meta, tampered) is None  # digest differs
    assert check_snapshot({**meta, "pid": meta["pid"] + 1}, data) is None
    assert check_snapshot({**meta, "size": meta["size"] - 1}, data) is None  # not its size
    assert clean_meta({**meta, "v": 1, "trace_ids": ["nothex"]}) is None


def test_unreachable_redis_never_harms_the_app(
    decks: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Port 9 (discard) on loopback: nothing listens, connections are refused at once.
    deck = make_deck(
        ok_app, decks, fleet="redis://127.0.0.1:9/0", fleet_secret=SECRET, slow_request=None
    )
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
    deck = make_deck(ok_app, decks, fleet="redis://127.0.0.1:9/0", fleet_secret=SECRET)
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

    opts = fleet_options(redis_server.url, "trace", "forktest", 60, SECRET)
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
    in_url = make_deck(ok_app, decks, fleet=with_url, fleet_secret=SECRET)
    monkeypatch.setenv("FLIGHTDECK_FLEET_PASSWORD", "s3cret")
    from_env = make_deck(ok_app, decks, fleet=url, fleet_secret=SECRET)
    monkeypatch.setenv("FLIGHTDECK_FLEET_PASSWORD", "wrong")
    refused = make_deck(ok_app, decks, fleet=url, fleet_secret=SECRET)

    for deck in (in_url, from_env, refused):  # one loop each: one recorder per loop
        asyncio.run(drive(deck, http_scope("/")))  # starts the deck and its fleet client
    wait_until(lambda: in_url.fleet.client.connected and from_env.fleet.client.connected)
    wait_until(lambda: refused.fleet.stats().get("connection_errors", 0) >= 1)
    assert not refused.fleet.client.connected
    assert "s3cret" not in str(refused.status())  # never in status or errors


def test_fleet_needs_a_secret_and_cooldown_a_millisecond(
    decks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLIGHTDECK_FLEET_SECRET", raising=False)
    url = "redis://127.0.0.1:9/0"
    with pytest.raises(ValueError, match=r"fleet_secret \(FLIGHTDECK_FLEET_SECRET\) is required"):
        make_deck(ok_app, decks, fleet=url)
    monkeypatch.setenv("FLIGHTDECK_FLEET_SECRET", f"{SECRET}-new,{SECRET}")
    deck = make_deck(ok_app, decks, fleet=url)
    assert deck.fleet.options.secrets == (f"{SECRET}-new", SECRET)
    assert SECRET not in str(deck.status())
    # Redis refuses "SET ... PX 0": a cooldown under 1 ms would open no incident ever.
    for cooldown in (0.0005, 1e-9):
        with pytest.raises(ValueError, match=r"cooldown must be at least 0\.001"):
            make_deck(ok_app, decks, cooldown=cooldown)
    make_deck(ok_app, decks, cooldown=0.001)


def test_signatures_verify_with_any_secret_and_only_for_their_purpose() -> None:
    from flightdeck.asgi.fleet.signing import Signer

    old = Signer((SECRET,), "ns")
    rotating = Signer((f"{SECRET}-new", SECRET), "ns")
    new = Signer((f"{SECRET}-new",), "ns")
    payload = orjson.dumps(_incident())
    signed_old, signed_new = old.sign("incident", payload), rotating.sign("incident", payload)
    assert rotating.verify("incident", signed_old)[0] == payload  # type: ignore[index]
    assert new.verify("incident", signed_new)[0] == payload  # type: ignore[index]
    assert old.verify("incident", signed_new) == "bad_signature"  # the first secret signs
    assert old.verify("meta", signed_old) == "bad_signature"  # a message is not metadata
    assert Signer((SECRET,), "other").verify("incident", signed_old) == "bad_signature"
    tampered = signed_old.replace(b'"kind":"slow_request"', b'"kind":"server_error"')
    assert old.verify("incident", tampered) == "bad_signature"
    for unsigned in (payload, b"fd1.short.x", b"", None, b"fd1." + b"0" * 64 + b"{}"):
        assert old.verify("incident", unsigned) == "unsigned"


class _CountingLoop:
    """Stands for the app's loop: counts what the fleet thread hands over."""

    def __init__(self) -> None:
        self.handed = 0

    def is_closed(self) -> bool:
        return False

    def call_soon_threadsafe(self, *args: Any) -> None:
        self.handed += 1


def _connected_deck(redis_server: Any, decks: list[Any], **options: Any) -> Any:
    deck = make_deck(
        ok_app, decks, fleet=redis_server.url, fleet_secret=SECRET, fleet_namespace="u", **options
    )
    asyncio.run(drive(deck, http_scope("/")))  # starts the deck and its fleet client
    wait_until(lambda: deck.fleet.client.connected, timeout=10)
    return deck


def test_forged_replayed_and_flooded_incidents_never_reach_the_app_loop(
    redis_server: Any, decks: list[Any]
) -> None:
    """Only signed, fresh, first-seen incidents within the follow rate are handed to the
    app's loop; the rest is refused on the fleet's own thread and counted."""
    from flightdeck.asgi.fleet.signing import Signer

    deck = _connected_deck(redis_server, decks, rate_limit=(6, 60.0))
    loop = _CountingLoop()
    deck.fleet.app_loop = loop
    ours, theirs = Signer((SECRET,), "u"), Signer(("not-the-fleet-secret-0",), "u")
    client = redis_server.client()

    def publish(message: bytes) -> None:
        client.publish("u:events", message)

    for _ in range(3):
        publish(orjson.dumps(_incident()))  # unsigned
        publish(theirs.sign("incident", orjson.dumps(_incident())))
    valid = ours.sign("incident", orjson.dumps(_incident()))
    publish(valid)
    publish(valid)  # the same message again: a replay
    stale = _incident(ts=int((time.time() - 600) * 1000))
    publish(ours.sign("incident", orjson.dumps(stale)))  # signed long ago: a replay
    flood = 2000
    for _ in range(flood):
        publish(ours.sign("incident", orjson.dumps(_incident())))

    def settled() -> dict[str, int] | None:
        stats: dict[str, int] = deck.fleet.counters.snapshot()
        done = stats.get("received", 0) + stats.get("follow_suppressed", 0)
        done += stats.get("replayed", 0) + stats.get("unsigned", 0)
        return stats if done + stats.get("bad_signature", 0) >= 9 + flood else None

    stats = wait_until(settled, timeout=30)
    assert stats["unsigned"] == 3 and stats["bad_signature"] == 3, stats
    assert stats["replayed"] == 2, stats
    assert stats["received"] == 6 and stats["follow_suppressed"] == flood - 5, stats
    assert loop.handed == 6  # the follow rate, however many were published


def _bomb(inflated: int) -> bytes:
    out = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [out.compress(zeros) for _ in range(inflated >> 20)]
    return b"".join(parts) + out.flush()


def _peak_of(call: Any) -> tuple[Any, int]:
    import tracemalloc

    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_poisoned_snapshot_is_never_inflated_or_read_past_its_signed_size(
    redis_server: Any, decks: list[Any]
) -> None:
    """A gzip bomb with self-consistent metadata is refused without inflating it: unsigned
    metadata is not even followed by a read of the data; signed metadata bounds the read and
    the inflation (checked while inflating)."""
    from flightdeck.asgi.fleet.signing import Signer

    deck = _connected_deck(redis_server, decks)
    signer = Signer((SECRET,), "u")
    client = redis_server.client()
    inflated = 128 << 20
    bomb = _bomb(inflated)
    doc = make_document()
    doc["trigger"]["incident"] = new_id()
    head = meta_head(doc)
    honest = snapshot_meta(head, bomb, inflated)  # what main checked: all consistent

    def plant(ident: str, meta: bytes, data: bytes) -> None:
        client.hset(f"u:snap:{ident}", mapping={"meta": meta, "data": data})

    cases = {
        "unsigned": (orjson.dumps(honest), bomb),
        "bad_signature": (Signer(("x" * 16,), "u").sign("meta", orjson.dumps(honest)), bomb),
        # Signed (a fleet member gone wrong): says 1 MiB, inflates to 128 MiB.
        "rejected": (signer.sign("meta", orjson.dumps({**honest, "size": 1 << 20})), bomb),
        # Signed, but the data in Redis is longer than stated: never sent by Redis.
        "long": (signer.sign("meta", orjson.dumps(honest)), bomb + bytes(64 << 20)),
    }
    for counter, (meta, data) in cases.items():
        ident = new_id()
        plant(ident, meta, data)
        found, peak = _peak_of(lambda ident=ident: deck.fleet.fetch_bytes(ident))
        assert found is None, counter
        assert peak < 8 << 20, (counter, peak)
        if counter != "long":
            assert deck.fleet.counters.snapshot()[counter] >= 1, counter
    # The same bytes under honest signed metadata are served (inflation checked, not kept).
    ident = new_id()
    plant(ident, signer.sign("meta", orjson.dumps({**honest, "id": ident})), bomb)
    found, peak = _peak_of(lambda: deck.fleet.fetch_bytes(ident))
    assert found == bomb and peak < 8 << 20
