"""The FlightDeck middleware in-process: spans, triggers, the ASGI contract, options."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import flightdeck
from flightdeck import FlightDeck

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Opened = list[FlightDeck]


@pytest.fixture
def decks() -> Any:
    opened: Opened = []
    yield opened
    for deck in opened:
        deck.close()


def make(app: Any, decks: Opened, **options: Any) -> FlightDeck:
    options.setdefault("endpoint", None)
    options.setdefault("capture_delay", 0.0)
    deck = FlightDeck(app, **options)
    decks.append(deck)
    return deck


def client(app: Any, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met before the deadline")


async def fast(request: Any) -> JSONResponse:
    return JSONResponse({"ok": True})


def starlette_app(extra: list[Route] | None = None) -> Starlette:
    return Starlette(routes=[Route("/fast", fast), *(extra or [])])


def find_request(doc: dict[str, Any], path: str) -> dict[str, Any]:
    for req in doc["requests"]:
        if req["path"] == path:
            return req
    raise AssertionError(f"no request {path} in {[r['path'] for r in doc['requests']]}")


async def test_records_request_span_with_route_status_ttfb(decks: Opened) -> None:
    async def item(request: Any) -> JSONResponse:
        await asyncio.sleep(0)
        return JSONResponse({"id": request.path_params["id"]})

    deck = make(starlette_app([Route("/items/{id}", item)]), decks)
    async with client(deck) as c:
        r = await c.get("/items/7?q=1&api_key=supersecret")
    assert r.status_code == 200 and r.json() == {"id": "7"}
    doc = (await deck.capture("test")).to_dict()
    req = find_request(doc, "/items/7")
    assert req["method"] == "GET"
    assert req["route"] == "/items/{id}"
    assert req["status"] == 200
    assert req["client"] == "127.0.0.1:5555"
    assert 0 <= req["ttfb"] <= req["duration"]
    assert req["end"] == pytest.approx(req["start"] + req["duration"])
    assert req["query"] == "q=1&api_key=REDACTED"
    assert "supersecret" not in (await deck.capture("again")).dumps().decode()


async def test_tasks_spawned_by_a_request_belong_to_it(decks: Opened) -> None:
    async def child(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def fan(request: Any) -> JSONResponse:
        results = await asyncio.gather(*(child(i) for i in range(3)))
        return JSONResponse(results)

    deck = make(starlette_app([Route("/fan", fan)]), decks)
    async with client(deck) as c:
        assert (await c.get("/fan")).json() == [0, 1, 2]
    doc = (await deck.capture()).to_dict()
    req = find_request(doc, "/fan")
    children = [t for t in doc["tasks"] if t["coro"] and t["coro"].endswith("child")]
    assert len(children) == 3
    assert all(t["request"] == req["id"] for t in children)
    assert {t["id"] for t in children} <= set(req["tasks"])
    assert all(t["state"] == "done" and len(t["steps"]) == 2 for t in children)


async def test_slow_request_triggers_a_snapshot_at_completion(decks: Opened) -> None:
    async def slow(request: Any) -> PlainTextResponse:
        await asyncio.sleep(0.08)
        return PlainTextResponse("done")

    deck = make(starlette_app([Route("/slow", slow)]), decks, slow_request=0.05)
    async with client(deck) as c:
        assert (await c.get("/fast")).status_code == 200
        assert (await c.get("/slow")).text == "done"
    listing = await wait_for(lambda: deck.store.list())
    assert len(listing) == 1
    snap = deck.store.get(listing[0]["id"])
    assert snap is not None
    trigger = snap.trigger
    assert trigger["kind"] == "slow_request"
    assert trigger["request"]["path"] == "/slow"
    assert "GET /slow" in trigger["reason"]
    assert deck.status()["triggers"]["fired"] == {"slow_request": 1}


async def test_hung_request_is_captured_while_it_hangs(decks: Opened) -> None:
    release = asyncio.Event()

    async def hang(request: Any) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("late")

    deck = make(starlette_app([Route("/hang", hang)]), decks, slow_request=0.05)
    async with client(deck) as c:
        pending = asyncio.ensure_future(c.get("/hang"))
        listing = await wait_for(lambda: deck.store.list())
        assert not pending.done()  # captured while still hanging
        snap = deck.store.get(listing[0]["id"])
        assert snap is not None
        assert "still running" in snap.trigger["reason"]
        req = find_request(snap.to_dict(), "/hang")
        assert req["end"] is None and req["duration"] is None
        release.set()
        assert (await pending).text == "late"
    # The completion does not fire a second time for the same request.
    assert deck.status()["triggers"]["fired"] == {"slow_request": 1}


async def test_server_error_and_exception_triggers(decks: Opened) -> None:
    async def five03(request: Any) -> PlainTextResponse:
        return PlainTextResponse("down", status_code=503)

    async def boom(request: Any) -> PlainTextResponse:
        raise KeyError("boom")

    app = starlette_app([Route("/503", five03), Route("/boom", boom)])
    deck = make(app, decks, slow_request=None)
    transport = httpx.ASGITransport(app=deck, raise_app_exceptions=False, client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/503")).status_code == 503
        await wait_for(lambda: len(deck.store.list()) == 1)
        assert (await c.get("/boom")).status_code == 500
        await wait_for(lambda: len(deck.store.list()) == 2)
    kinds = sorted(item["trigger"]["kind"] for item in deck.store.list())
    assert kinds == ["exception", "server_error"]


async def test_app_exception_is_reraised_unchanged(decks: Opened) -> None:
    cause = OSError("disk")
    error = ValueError("app failure")
    error.__cause__ = cause

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise error

    deck = make(app, decks, slow_request=None)
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    with pytest.raises(ValueError) as info:
        await deck(scope, receive, send)
    assert info.value is error and info.value.__cause__ is cause
    await wait_for(lambda: deck.store.list())
    assert deck.store.list()[0]["trigger"]["kind"] == "exception"


async def test_storm_gives_one_snapshot_per_cooldown(decks: Opened) -> None:
    async def fail(request: Any) -> PlainTextResponse:
        return PlainTextResponse("x", status_code=500)

    # Only the 5xx trigger: on a loaded machine the loop may stall past loop_blocked.
    deck = make(starlette_app([Route("/fail", fail)]), decks, slow_request=None, loop_blocked=None)
    async with client(deck) as c:
        for _ in range(50):
            assert (await c.get("/fail")).status_code == 500
    await wait_for(lambda: deck.store.list())
    status = deck.status()
    assert status["triggers"]["fired"] == {"server_error": 1}
    assert status["triggers"]["suppressed"] == {"server_error": 49}
    assert len(deck.store.list()) == 1


async def test_messages_forwarded_unbuffered_in_order(decks: Opened) -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"%d" % i, "more_body": True})
            assert len(sent) == 2 + i  # each message reached the server before the next
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    deck = make(app, decks)
    await deck({"type": "http", "method": "GET", "path": "/s"}, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 4
    assert sent[1]["body"] == b"0"


async def test_lifespan_and_unknown_scopes_pass_through_and_start_recorder(decks: Opened) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    deck = make(app, decks)
    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await deck(lifespan, None, None)  # type: ignore[arg-type]
    other = {"type": "custom-thing"}
    await deck(other, None, None)  # type: ignore[arg-type]
    assert seen[0] is lifespan and seen[1] is other
    assert "flightdeck" not in other
    assert deck.recorder.enabled  # started at lifespan startup


async def test_applied_twice_records_once(decks: Opened) -> None:
    inner = make(starlette_app(), decks)
    outer = make(inner, decks)
    async with client(outer) as c:
        assert (await c.get("/fast")).status_code == 200
    doc = (await outer.capture()).to_dict()
    assert [r["path"] for r in doc["requests"]] == ["/fast"]
    assert not inner.recorder.enabled  # the inner one never started: no second recorder
    assert outer.status()["errors"] == {} and inner.status()["errors"] == {}


async def test_fastapi_add_middleware_and_route_template(decks: Opened) -> None:
    api = FastAPI()

    @api.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"user": user_id}

    api.add_middleware(FlightDeck, endpoint=None, slow_request=None)
    async with client(api) as c:
        assert (await c.get("/users/9")).json() == {"user": 9}
    stack = api.middleware_stack
    deck = stack
    while not isinstance(deck, FlightDeck):
        deck = deck.app  # type: ignore[union-attr]
    decks.append(deck)
    doc = (await deck.capture()).to_dict()
    assert find_request(doc, "/users/9")["route"] == "/users/{user_id}"


async def test_disabled_by_environment_is_a_pass_through(
    decks: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTDECK_ENABLED", "0")
    deck = make(starlette_app(), decks)
    async with client(deck) as c:
        assert (await c.get("/fast")).status_code == 200
    assert not deck.recorder.enabled
    assert deck.recorder.stats["recorded"] == 0


async def test_environment_sets_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTDECK_SLOW_REQUEST", "0.25")
    monkeypatch.setenv("FLIGHTDECK_LOOP_BLOCKED", "off")
    monkeypatch.setenv("FLIGHTDECK_WINDOW", "3")
    monkeypatch.setenv("FLIGHTDECK_ENDPOINT", "off")
    monkeypatch.setenv("FLIGHTDECK_MAX_BYTES", "8MiB")
    deck = FlightDeck(starlette_app())
    assert deck.recorder.max_bytes == 8 << 20
    assert deck.slow_request == 0.25
    assert deck.loop_blocked is None
    assert deck.recorder.window == 3.0
    assert deck.endpoint is None


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"window": 0}, "window"),
        ({"window": -1.0}, "window"),
        ({"window": "ten"}, "window"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_bytes": 1.5}, "max_bytes"),
        ({"slow_request": -0.1}, "slow_request"),
        ({"slow_request": True}, "slow_request"),
        ({"loop_blocked": 0}, "loop_blocked"),
        ({"cooldown": float("inf")}, "cooldown"),
        ({"max_snapshots": 0}, "max_snapshots"),
        ({"endpoint": "debug"}, "endpoint"),
        ({"token": ""}, "token"),
        ({"capture_headers": "authorization"}, "capture_headers"),
        ({"triggers": ["slow"]}, "triggers"),
        ({"server_errors": "yes"}, "server_errors"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        FlightDeck(starlette_app(), **options)


async def test_custom_trigger_polls_a_metric(decks: Opened) -> None:
    class QueueDepth(flightdeck.Trigger):
        kind = "queue_depth"

        def __init__(self) -> None:
            self.depth = 0

        def poll(self) -> str | None:
            return f"queue depth {self.depth}" if self.depth > 10 else None

    trig = QueueDepth()
    deck = make(starlette_app(), decks, triggers=[trig])
    async with client(deck) as c:
        await c.get("/fast")  # starts the recorder and its periodic checks
    trig.depth = 11
    listing = await wait_for(lambda: deck.store.list())
    assert listing[0]["trigger"] == {"kind": "queue_depth", "reason": "queue depth 11"}


async def test_internal_failure_never_reaches_the_app(
    decks: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    deck = make(starlette_app(), decks, slow_request=None)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("flightdeck bug")

    monkeypatch.setattr(deck.engine, "info", broken)
    monkeypatch.setattr(deck.redactor, "query", broken)
    async with client(deck) as c:
        r = await c.get("/fast?a=1")
    assert r.status_code == 200 and r.json() == {"ok": True}
    errors = deck.status()["errors"]
    assert errors.get("request_start") == 1


async def test_endpoint_requests_are_not_recorded(decks: Opened) -> None:
    deck = make(starlette_app(), decks, endpoint="/debug/flight", slow_request=None)
    async with client(deck) as c:
        assert (await c.get("/debug/flight/status")).status_code == 200
        created = await c.post("/debug/flight/snapshots")
        assert created.status_code == 201
    snap = deck.store.get(created.json()["id"])
    assert snap is not None
    assert all(not r["path"].startswith("/debug/flight") for r in snap.to_dict()["requests"])


async def test_streaming_response_passes_through(decks: Opened) -> None:
    from starlette.responses import StreamingResponse

    async def stream(request: Any) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(5):
                yield b"chunk%d\n" % i

        return StreamingResponse(body())

    deck = make(starlette_app([Route("/stream", stream)]), decks)
    async with client(deck) as c:
        r = await c.get("/stream")
    assert r.text == "".join(f"chunk{i}\n" for i in range(5))
    req = find_request((await deck.capture()).to_dict(), "/stream")
    assert req["status"] == 200 and req["duration"] is not None


Handler = Callable[[Any], Awaitable[Any]]


async def _lifespan(deck: FlightDeck) -> tuple[Any, Any, Any]:
    """Start the app's lifespan as a server does: (task, inbox, outbox) after ``startup``."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(deck(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    return task, inbox, outbox


async def _shutdown(task: Any, inbox: Any, outbox: Any) -> None:
    await inbox.put({"type": "lifespan.shutdown"})
    assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
    await task


async def test_recording_stops_at_lifespan_shutdown_and_starts_again(decks: Opened) -> None:
    # The server closes its loop after the shutdown: nothing of flightdeck may outlive it
    # (hooks, recorder thread, timers), and a new startup records again.
    loop = asyncio.get_running_loop()
    plain = type(loop)
    deck = make(starlette_app(), decks, slow_request=None)
    for _ in range(2):
        running = await _lifespan(deck)
        assert deck.recorder.enabled and type(loop) is not plain  # the loop is hooked
        thread = deck.recorder._thread
        assert thread is not None and thread.is_alive()
        async with client(deck) as c:
            assert (await c.get("/fast")).status_code == 200
        doc = (await deck.capture()).to_dict()
        assert find_request(doc, "/fast")["status"] == 200
        await _shutdown(*running)
        assert not deck.recorder.enabled
        assert type(loop) is plain  # the loop as it was
        assert not thread.is_alive()
        assert deck.recorder.block_listeners.count(deck.engine.on_block) == 0
    assert deck.status()["errors"] == {}


async def test_a_capture_waiting_at_shutdown_is_taken_then(decks: Opened) -> None:
    async def boom(request: Any) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=503)

    deck = make(starlette_app([Route("/boom", boom)]), decks, capture_delay=600.0)
    running = await _lifespan(deck)
    async with client(deck) as c:
        assert (await c.get("/boom")).status_code == 503
    assert deck.engine.pending is not None  # waiting its 600 s
    await _shutdown(*running)
    listing = await wait_for(lambda: deck.store.list())
    assert listing[0]["trigger"]["kind"] == "server_error"
