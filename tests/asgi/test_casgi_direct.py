"""The native request path writes its events into the native window with no Python call.

While the recorder's ``emit`` is the native window's own ``append``, ``_casgi.c`` writes
REQ_START from its tuple with its ints as C values, and REQ_END from C values with no tuple
(``capi.h``). These check that what lands in the window is what the tuple path writes, that
the request is in the window's status table while it runs and leaves it after, that a field
of an unusual type still gets recorded (the tuple's generic form), that an ``emit`` put in the
window's place still sees every event, and that the route template kept for a route object
is that route's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import drive, http_scope

from flightdeck import FlightDeck
from flightdeck.asgi import accel
from flightdeck.core import cores
from flightdeck.core import events as ev

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        accel.casgi is None or cores.NativeWindow is None, reason="the extensions are not built"
    ),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Route:
    """What a router leaves in ``scope["route"]`` (Starlette's routes have ``path_format``)."""

    def __init__(self, path_format: Any) -> None:
        self.path_format = path_format


class Text(str):
    """A str subclass: not a type the native layout takes as it is."""


def deck_for(app: Any) -> FlightDeck:
    deck = FlightDeck(app, endpoint=None, slow_request=None, server_errors=False)
    deck._start()
    assert deck.asgi_path == "native"
    return deck


def window_events(deck: FlightDeck, kind: int) -> list[tuple[Any, ...]]:
    frozen = deck.recorder._window.freeze()
    return [e for evs in frozen.iter_segments() for e in evs if e[0] == kind]


class Held:
    """An app whose requests each say they started, then wait for ``release`` to answer."""

    def __init__(self) -> None:
        self.started = asyncio.Semaphore(0)
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.started.release()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def app_with(route: Any, status: int = 201, fail: bool = False) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = Route(route)
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        if fail:
            raise KeyError("after the body")

    return app


async def test_req_end_written_from_c_values_reads_back_as_the_tuple() -> None:
    deck = deck_for(app_with("/items/{item_id}"))
    try:
        await drive(deck, http_scope("/items/7"))
        [start] = window_events(deck, ev.REQ_START)
        [end] = window_events(deck, ev.REQ_END)
        rid = start[ev.REQ_START_RID]
        t, ttfb, body_end = end[1], end[4], end[8]
        assert end == (
            ev.REQ_END,
            t,
            rid,
            201,
            ttfb,
            "/items/{item_id}",
            False,
            None,
            body_end,
            None,
        )
        assert start[1] <= ttfb <= body_end <= t
        # the request left the status table that heads each new generation
        assert deck.recorder._window.freeze().requests == {}
        assert deck.native_errors == 0
    finally:
        deck.close()


async def test_req_start_written_from_c_values_is_the_tuple_and_the_live_status() -> None:
    # REQ_START goes to the window with its ints as C values and its other fields read from
    # the tuple: what reads back is the tuple the middleware keeps for the request, and while
    # the request runs it is the request's entry in the window's status table (which heads
    # the next generation: sealed after the first start, the second start opens one).
    app = Held()
    deck = deck_for(app)
    window = deck.recorder._window
    try:
        scope = http_scope("/live/1", query_string=b"a=1", client=("10.0.0.9", 4321))
        first = asyncio.ensure_future(drive(deck, scope))
        await app.started.acquire()
        [(rid, (kept, _, _))] = deck.recorder.live_requests.items()
        assert kept[ev.REQ_START_CLIENT] == ("10.0.0.9", 4321)
        assert kept[ev.REQ_START_TID] is not None  # the request's task: the I field's value
        [start] = window_events(deck, ev.REQ_START)
        assert start == kept
        window.maintain(force_seal=True)
        second = asyncio.ensure_future(drive(deck, http_scope("/live/2")))
        await app.started.acquire()
        heads = [seg.status()[1] for seg in window.freeze().segments]
        assert heads == [{}, {rid: kept}]
        app.release.set()
        await asyncio.gather(first, second)
        assert window.freeze().requests == {}
        assert deck.native_errors == 0
    finally:
        deck.close()


async def test_requests_alternating_between_routes_each_record_their_own() -> None:
    # The route's template is kept for the next request of the same route object: another
    # object (or none, or one with no template) records its own.
    class Bare:
        """A route with neither path_format nor path."""

    current: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = current[0]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    a, b, empty = Route("/a/{x}"), Route("/b/{y}"), Route("")
    empty.path = "/plain"  # type: ignore[attr-defined]  (path_format empty: the path)
    order = [a, b, a, a, Bare(), a, empty, b]
    deck = deck_for(app)
    try:
        for route in order:
            current[:] = [route]
            await drive(deck, http_scope("/r"))
        ends = window_events(deck, ev.REQ_END)
        assert [e[ev.REQ_END_ROUTE] for e in ends] == [
            "/a/{x}",
            "/b/{y}",
            "/a/{x}",
            "/a/{x}",
            None,
            "/a/{x}",
            "/plain",
            "/b/{y}",
        ]
        assert deck.native_errors == 0
    finally:
        deck.close()


async def test_a_route_template_whose_truth_raises_records_the_routes_path() -> None:
    # The Python path reads ``path_format or path``: a template whose truth cannot be told is
    # passed over for the path, and its error goes no further (the app sees nothing).
    class Unsure:
        def __bool__(self) -> bool:
            raise ValueError("no truth")

    route = Route(Unsure())
    route.path = "/fallback"  # type: ignore[attr-defined]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = route
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    deck = deck_for(app)
    try:
        sent = await drive(deck, http_scope("/r"))
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        [end] = window_events(deck, ev.REQ_END)
        assert end[ev.REQ_END_ROUTE] == "/fallback"
        assert deck.native_errors == 0
    finally:
        deck.close()


async def test_an_app_error_is_in_the_req_end_written_from_c() -> None:
    deck = deck_for(app_with("/boom", status=200, fail=True))
    try:
        with pytest.raises(KeyError):
            await drive(deck, http_scope("/boom"))
        [end] = window_events(deck, ev.REQ_END)
        assert end[3] == 200 and end[5] == "/boom" and end[7] == "KeyError"
        assert deck.native_errors == 0
    finally:
        deck.close()


async def test_a_field_outside_the_layout_goes_the_tuple_way() -> None:
    # A route given as a str subclass: the C writer declines it, the tuple is recorded in
    # the generic form and reads back with the same values.
    deck = deck_for(app_with(Text("/odd/{x}")))
    try:
        await drive(deck, http_scope("/odd/1"))
        [end] = window_events(deck, ev.REQ_END)
        assert end[3] == 201 and end[5] == "/odd/{x}"
        assert deck.recorder._window.freeze().requests == {}
        assert deck.native_errors == 0
    finally:
        deck.close()


async def test_an_emit_put_in_the_windows_place_sees_both_request_events() -> None:
    deck = deck_for(app_with("/seen"))
    seen: list[tuple[Any, ...]] = []
    deck.recorder.emit = seen.append  # type: ignore[method-assign]
    try:
        await drive(deck, http_scope("/seen"))
        assert [e[0] for e in seen] == [ev.REQ_START, ev.REQ_END]
        assert seen[1][3] == 201 and seen[1][5] == "/seen"
        assert window_events(deck, ev.REQ_END) == []
    finally:
        deck.close()


async def test_an_emit_replaced_while_a_request_runs_sees_its_end_and_then_gives_way() -> None:
    # The request path keeps what it found as the recorder's emit while the recorder's
    # attributes stay as they were: replacing emit mid-request sends that request's end to
    # the replacement, and putting the window's append back sends the next request there.
    app = Held()
    deck = deck_for(app)
    original = deck.recorder.emit
    seen: list[tuple[Any, ...]] = []
    try:
        app.release.set()
        await drive(deck, http_scope("/before"))
        app.release.clear()
        request = asyncio.ensure_future(drive(deck, http_scope("/during")))
        await app.started.acquire()  # the one of /before
        await app.started.acquire()
        deck.recorder.emit = seen.append  # type: ignore[method-assign]
        app.release.set()
        await request
        assert [e[0] for e in seen] == [ev.REQ_END]
        deck.recorder.emit = original  # type: ignore[method-assign]
        await drive(deck, http_scope("/after"))
        assert len(seen) == 1
        assert len(window_events(deck, ev.REQ_START)) == 3  # before, during, after
        assert len(window_events(deck, ev.REQ_END)) == 2  # before, after
    finally:
        deck.close()


async def test_many_requests_through_the_c_writer_keep_the_window_consistent() -> None:
    deck = deck_for(app_with("/many"))
    try:
        await asyncio.gather(*(drive(deck, http_scope(f"/many/{i}")) for i in range(200)))
        ends = window_events(deck, ev.REQ_END)
        starts = window_events(deck, ev.REQ_START)
        assert len(ends) == len(starts) == 200
        assert {e[2] for e in ends} == {s[ev.REQ_START_RID] for s in starts}
        assert deck.recorder._window.freeze().requests == {}
        assert deck.native_errors == 0
    finally:
        deck.close()


@pytest.mark.parametrize("instrument_loop", [True, False])
async def test_the_request_id_is_in_context_only_for_the_loops_instrumentation(
    instrument_loop: bool,
) -> None:
    # The request id in the context is read by the loop's instrumentation alone (task and
    # executor records name their request): without it, the set and reset are skipped.
    from flightdeck.instrument.context import current_request

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_request.get())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    deck = FlightDeck(app, endpoint=None, slow_request=None, instrument_loop=instrument_loop)
    deck._start()
    try:
        for i in range(3):
            await drive(deck, http_scope(f"/ctx/{i}"))
        starts = window_events(deck, ev.REQ_START)
        rids = [s[ev.REQ_START_RID] for s in starts]
        assert seen == (rids if instrument_loop else [None, None, None])
        assert len(window_events(deck, ev.REQ_END)) == 3
        assert current_request.get() is None
        assert deck.native_errors == 0 and deck.status()["errors"] == {}
    finally:
        deck.close()
