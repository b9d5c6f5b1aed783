"""The native request path (``flightdeck/asgi/_casgi.c``) against the pure-Python one.

Each test drives the same app through a ``FlightDeck`` on the native path and on the pure
path (``FLIGHTDECK_NO_EXTENSIONS=1`` when the deck is made) and checks that the app, the
server and the recording see the same thing: results, exceptions, cancellation, close.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys
import warnings
from typing import Any

import pytest
from support import drive, http_scope

from flightdeck import FlightDeck
from flightdeck.asgi import accel, middleware
from flightdeck.asgi.redact import Redactor
from flightdeck.asgi.tracecontext import trace_id_of

pytestmark = pytest.mark.anyio

native_only = pytest.mark.skipif(accel.casgi is None, reason="the extension is not built")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(app: Any, decks: list[Any], **options: Any) -> FlightDeck:
    options.setdefault("endpoint", None)
    options.setdefault("capture_delay", 0.0)
    options.setdefault("slow_request", None)
    deck = FlightDeck(app, **options)
    decks.append(deck)
    return deck


async def started(deck: FlightDeck) -> FlightDeck:
    """Recording started, as the first request or lifespan would: later requests are native."""
    deck._start()
    return deck


async def _ignore(message: Any) -> None:
    return None


def requests_of(deck: FlightDeck) -> list[dict[str, Any]]:
    return list(deck.recorder.snapshot().to_dict()["requests"])


async def test_the_path_taken_is_the_one_asked_for(path: str, decks: list[Any]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    deck = await started(make(app, decks))
    assert deck.asgi_path == path
    assert deck.status()["asgi"] == path
    await drive(deck, http_scope("/a"))
    [req] = requests_of(deck)
    assert (req["path"], req["status"], req["error"]) == ("/a", 204, None)
    assert req["ttfb"] is not None and req["body_end"] is not None
    if path == "native":
        assert deck.native_requests == 1 and deck.native_errors == 0


def test_servers_see_an_asgi3_callable() -> None:
    # uvicorn: asyncio.iscoroutinefunction(app.__call__) decides ASGI 3 over ASGI 2.
    deck = FlightDeck(lambda *a: None, endpoint=None)
    try:
        assert asyncio.iscoroutinefunction(deck.__call__)
        if sys.version_info >= (3, 12):
            assert inspect.iscoroutinefunction(deck.__call__)
    finally:
        deck.close()


class Boom(Exception):
    pass


async def test_result_and_exception_pass_through(path: str, decks: list[Any]) -> None:
    error = Boom("app failure")

    async def app(scope: Any, receive: Any, send: Any) -> Any:
        if scope["path"] == "/raise":
            await asyncio.sleep(0)
            raise error
        await asyncio.sleep(0)

    deck = await started(make(app, decks, server_errors=True))
    assert await deck(http_scope("/ok"), _receive_nothing, _ignore) is None
    with pytest.raises(Boom) as info:
        await deck(http_scope("/raise"), _receive_nothing, _ignore)
    assert info.value is error
    by_path = {r["path"]: r for r in requests_of(deck)}
    assert by_path["/raise"]["error"] == "Boom" and by_path["/raise"]["status"] == 500
    assert by_path["/ok"]["error"] is None


async def _receive_nothing() -> Any:
    return {"type": "http.request", "body": b""}


async def test_an_app_raising_before_awaiting_raises_the_same(path: str, decks: list[Any]) -> None:
    def app(scope: Any, receive: Any, send: Any) -> Any:
        raise KeyError("sync")

    deck = await started(make(app, decks))
    with pytest.raises(KeyError, match="sync"):
        await deck(http_scope("/sync"), _receive_nothing, _ignore)
    [req] = requests_of(deck)
    assert req["error"] == "KeyError" and req["end"] is not None
    assert not deck.recorder.live_requests


async def test_a_non_awaitable_result_raises_what_await_raises(path: str, decks: list[Any]) -> None:
    def app(scope: Any, receive: Any, send: Any) -> Any:
        return 42

    deck = await started(make(app, decks))
    with pytest.raises(TypeError, match="can't be used in 'await' expression"):
        await deck(http_scope("/x"), _receive_nothing, _ignore)
    assert requests_of(deck)[0]["error"] == "TypeError"


async def test_cancellation_reaches_the_app_and_is_recorded(path: str, decks: list[Any]) -> None:
    entered = asyncio.Event()
    cancelled = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        try:
            await receive()  # never answered
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def receive_forever() -> Any:
        await asyncio.Event().wait()

    deck = await started(make(app, decks))
    task = asyncio.ensure_future(deck(http_scope("/hang"), receive_forever, _ignore))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [True]
    [req] = requests_of(deck)
    assert req["error"] == "CancelledError"
    assert not deck.recorder.live_requests


async def test_receive_results_and_disconnects(path: str, decks: list[Any]) -> None:
    got = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await receive())
        got.append(await receive())

    deck = await started(make(app, decks))
    body = {"type": "http.request", "body": b"x"}
    await drive(deck, http_scope("/r"), incoming=[body])
    assert got[0] is body and got[1] == {"type": "http.disconnect"}
    [req] = requests_of(deck)
    assert req["disconnected"] is True


async def test_messages_reach_the_server_as_the_same_objects(path: str, decks: list[Any]) -> None:
    class Mapping(dict):  # not exactly a dict: forwarded without being looked at
        pass

    start = Mapping(type="http.response.start", status=201, headers=[])
    body = {"type": "http.response.body", "body": b"ok"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(body)

    deck = await started(make(app, decks))
    sent = await drive(deck, http_scope("/m"))
    assert sent[0] is start and sent[1] is body
    [req] = requests_of(deck)
    assert req["status"] is None  # the subclass was not inspected
    assert req["body_end"] is not None


async def test_trigger_fires_from_the_native_path(path: str, decks: list[Any]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    deck = await started(make(app, decks, server_errors=True))
    await drive(deck, http_scope("/unavailable"))
    for _ in range(500):
        if deck.store.list():
            break
        await asyncio.sleep(0.01)
    [item] = deck.store.list()
    assert item["trigger"]["kind"] == "server_error"


async def test_own_failures_are_counted_never_raised(
    path: str, decks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fine"})

    def broken(*args: Any) -> str:
        raise RuntimeError("flightdeck bug")

    monkeypatch.setattr(Redactor, "query", broken)
    deck = await started(make(app, decks))
    sent = await drive(deck, http_scope("/ok", query_string=b"a=1"))
    assert sent[-1]["body"] == b"fine"
    errors = deck.status()["errors"]
    assert errors.get("request_start") == 1  # counted under the same name on both paths
    if path == "native":
        assert deck.native_errors == 1
    assert not deck.recorder.live_requests


async def test_a_call_never_awaited_ends_its_request(path: str, decks: list[Any]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    deck = await started(make(app, decks))
    awaitable = deck(http_scope("/dropped"), _receive_nothing, _ignore)
    if path == "python":
        awaitable.close()  # a coroutine never started records nothing
        assert requests_of(deck) == []
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the app's coroutine, never awaited
        del awaitable
        gc.collect()
    [req] = requests_of(deck)
    assert req["error"] == "GeneratorExit" and req["end"] is not None
    assert not deck.recorder.live_requests


TRACEPARENTS = [
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t",
    b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ex\ntra",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
    b"0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"",
    b"\xff" * 60,
]


@native_only
@pytest.mark.parametrize("value", TRACEPARENTS)
def test_native_trace_id_agrees_with_python(value: bytes) -> None:
    assert accel.casgi is not None
    assert accel.casgi.trace_id_of(value) == trace_id_of(value)


@native_only
def test_native_clock_is_perf_counter_ns() -> None:
    import time

    assert accel.casgi is not None
    a = time.perf_counter_ns()
    b = accel.casgi.clock()
    c = time.perf_counter_ns()
    assert a <= b <= c


async def test_no_memory_kept_per_request(path: str, decks: list[Any]) -> None:
    # Every object the request path makes (state, wrappers, awaitables, events) must go
    # when the request is over; the window is replaced by a sink that keeps nothing.
    import tracemalloc

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"x"})

    # Only the request path: the loop's own events go straight to the window.
    deck = await started(make(app, decks, instrument_loop=False))
    deck.recorder.emit = lambda event: None  # type: ignore[method-assign]
    scope = http_scope("/leak", query_string=b"a=1")
    scope["headers"] = [
        (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    ]

    async def batch(n: int) -> None:
        for _ in range(n):
            await drive(deck, dict(scope), keep=False)

    await batch(200)  # warm caches
    gc.collect()
    growth = []
    tracemalloc.start()
    try:
        await batch(100)
        # tracemalloc sees every thread (other tests' servers may still be winding down):
        # a leak grows each of three rounds, noise from elsewhere does not.
        for _ in range(3):
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            await batch(2000)
            gc.collect()
            growth.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    assert min(growth) < 32 * 1024, growth  # a leak of one object would be ~100 KiB a round
    assert not deck.recorder.live_requests


async def test_await_chains_run_through_the_request(path: str, decks: list[Any]) -> None:
    # Snapshots show where a pending task waits (tasks[].awaiting): the chain must reach
    # the app's frame through FlightDeck, native or not.
    from flightdeck.instrument.frames import await_chain

    gate = asyncio.Event()
    entered = asyncio.Event()

    async def waiting_app(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await gate.wait()

    deck = await started(make(waiting_app, decks))

    async def server() -> None:
        await deck(http_scope("/wait"), _receive_nothing, _ignore)

    task = asyncio.ensure_future(server())
    await entered.wait()
    names = [name for name, _file, _line in await_chain(task.get_coro())]
    gate.set()
    await task
    assert names[0].endswith("server") and "waiting_app" in [n.split(".")[-1] for n in names]


async def _answer(send: Any, status: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("wrap", ["gather", "shield", "ensure_future", "wait_for"])
async def test_the_request_id_lives_in_the_context_that_runs_the_request(
    path: str, decks: list[Any], wrap: str
) -> None:
    # Servers and apps await a request inside gather/shield/ensure_future/wait_for, which
    # (on 3.11 at least) run it in a task of its own: the id must be set in that task's
    # context, never in the caller's, and be reset there without an error.
    from flightdeck.instrument.context import current_request

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_request.get())
        await _answer(send, 200)

    deck = await started(make(app, decks))
    wrappers: dict[str, Any] = {
        "gather": asyncio.gather,
        "shield": asyncio.shield,
        "ensure_future": asyncio.ensure_future,
        "wait_for": lambda aw: asyncio.wait_for(aw, 30),
    }
    for _ in range(3):
        await wrappers[wrap](deck(http_scope("/wrapped"), _receive_nothing, _ignore))
        assert current_request.get() is None  # the caller's context is left as it was
    assert len(seen) == 3 and None not in seen and len(set(seen)) == 3
    assert [r["id"] for r in requests_of(deck)] == seen
    assert deck.status()["errors"] == {}
    if path == "native":
        assert deck.native_errors == 0


class Pending:
    """What the app returns: awaits forever, and holds what awaits it."""

    held: Any = None

    def __await__(self) -> Any:
        while True:
            yield


def pending_app() -> tuple[Any, list[Pending]]:
    """An app whose every request waits forever, and the list of what it returned."""
    made: list[Pending] = []

    def app(scope: Any, receive: Any, send: Any) -> Pending:
        made.append(Pending())
        return made[-1]

    return app, made


def drop_requests(deck: FlightDeck, made: list[Pending], n: int, cycle: bool) -> None:
    """``n`` requests, each stepped once in a context of its own (as a task would run it),
    leaving the app waiting, then dropped: inside a reference cycle (the app's awaitable
    holds the request's, as an abandoned task's futures hold the task) or not."""
    import contextvars

    for _ in range(n):
        awaitable = deck(http_scope("/dropped"), _receive_nothing, _ignore)
        assert contextvars.copy_context().run(awaitable.send, None) is None
        if cycle:
            made[-1].held = awaitable
        made.pop()
        del awaitable


async def test_requests_dropped_inside_reference_cycles_end(path: str, decks: list[Any]) -> None:
    # A request that started, then was dropped while its awaitable is part of a reference
    # cycle is ended by the cycle collector, as it closes a coroutine: nothing stays "in
    # flight". No coroutine finalizer breaks this cycle first.
    app, made = pending_app()
    deck = await started(make(app, decks))
    gc.collect()
    gc.disable()  # the collection below is the one that finds the cycles
    try:
        drop_requests(deck, made, 200, cycle=True)
        assert len(deck.recorder.live_requests) == 200
        gc.collect()
    finally:
        gc.enable()
    assert not deck.recorder.live_requests
    ended = requests_of(deck)
    assert len(ended) == 200
    assert all(r["end"] is not None and r["error"] == "GeneratorExit" for r in ended)
    assert deck.status()["errors"] == {}
    if path == "native":
        assert deck.native_errors == 0


async def test_requests_dropped_after_others_were_collected_in_cycles_end(
    path: str, decks: list[Any]
) -> None:
    # The native path reuses the objects of finished requests. One the cycle collector
    # finalized carries a mark that it was; reused, a later request dropped the same way
    # would never be finalized, so never ended: each of these must end all the same.
    app, made = pending_app()
    deck = await started(make(app, decks))
    gc.collect()
    gc.disable()
    try:
        drop_requests(deck, made, 50, cycle=True)
        gc.collect()  # finalized by the collector
        assert not deck.recorder.live_requests
        drop_requests(deck, made, 50, cycle=False)  # finalized as each is freed
    finally:
        gc.enable()
    assert not deck.recorder.live_requests
    ended = requests_of(deck)
    assert len(ended) == 100
    assert all(r["end"] is not None and r["error"] == "GeneratorExit" for r in ended)


@pytest.mark.parametrize("huge", [2**64, -(2**63), -(2**70), 10**400])
async def test_a_status_beyond_64_bits_is_clamped_and_captures_keep_working(
    path: str, decks: list[Any], huge: int
) -> None:
    # JSON writers (orjson) refuse integers past 64 bits: one such status must not make
    # this or any later capture of the window fail. It is recorded clamped and counted
    # (here twice: the status and the close code).
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/huge":
            await _answer(send, huge)
            await send({"type": "websocket.close", "code": huge})  # not HTTP: noted all the same
        else:
            await _answer(send, 503)

    async def snapshots(n: int) -> list[dict[str, Any]]:
        for _ in range(500):
            if len(deck.store.list()) >= n or deck.engine.capture_failures:
                break
            await asyncio.sleep(0.01)
        assert deck.engine.capture_failures == 0
        return deck.store.list()

    deck = await started(make(app, decks, server_errors=True, cooldown=0.001))
    clamped = 2**63 - 1 if huge > 0 else -(2**63 - 1)
    await drive(deck, http_scope("/huge"))
    [req] = requests_of(deck)
    assert req["status"] == req["close_code"] == clamped
    huge_5xx = huge > 0  # a clamped huge status is a 5xx all the same
    assert [s["request"]["status"] for s in await snapshots(int(huge_5xx))] == (
        [clamped] if huge_5xx else []
    )
    await drive(deck, http_scope("/later"))  # a later capture of the same window
    statuses = [s["request"]["status"] for s in await snapshots(1 + huge_5xx)]
    assert sorted(statuses) == sorted([503] + ([clamped] if huge_5xx else []))
    assert deck.status()["errors"].get("status_clamped") == 2
    if path == "native":
        assert deck.native_errors == 0


async def test_a_repeated_query_is_redacted_once_and_recorded_each_time(
    path: str, decks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redaction is a pure function of the raw bytes: a query seen again takes the kept form.
    redacted: list[Any] = []
    query = Redactor.query

    def counted(self: Redactor, raw: Any) -> str:
        redacted.append(raw)
        return query(self, raw)

    monkeypatch.setattr(Redactor, "query", counted)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    deck = await started(make(app, decks))
    if path == "native":  # the native path keeps them itself: the Python one is not asked

        def python_path(qs: Any) -> str:
            raise AssertionError("REQ_START left the native path")

        monkeypatch.setattr(deck, "_redacted_query", python_path)
    for raw in (b"token=abc&page=2", b"token=abc&page=2", b"page=3", b"token=abc&page=2"):
        await drive(deck, http_scope("/q", query_string=raw))
    assert redacted == [b"token=abc&page=2", b"page=3"]
    assert deck.status()["errors"] == {}
    queries = [r["query"] for r in requests_of(deck)]
    secret = "token=REDACTED&page=2"
    assert queries == [secret, secret, "page=3", secret]


async def test_the_query_cache_keeps_to_its_bounds(
    path: str, decks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "QUERY_CACHE_ENTRIES", 3)
    monkeypatch.setattr(middleware, "QUERY_CACHE_BYTES", 16)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    deck = await started(make(app, decks))
    cache = deck._query_cache
    sizes = []
    for i in range(8):
        await drive(deck, http_scope("/q", query_string=f"page={i}".encode()))
        sizes.append(len(cache))
    assert sizes == [1, 2, 3, 1, 2, 3, 1, 2]  # emptied when full, never past the bound
    long = b"secret=" + b"x" * 20  # past QUERY_CACHE_BYTES: redacted, not kept
    await drive(deck, http_scope("/q", query_string=long))
    assert long not in cache and len(cache) == 2
    assert requests_of(deck)[-1]["query"] == "secret=REDACTED"
