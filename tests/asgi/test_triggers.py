"""Trigger rules and the gate (cooldown, rate limit), with fake clocks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support import drive, http_scope

from flightdeck import FlightDeck, LoopBlocked, RequestInfo, ServerError, SlowRequest
from flightdeck.asgi.triggers import Gate, RateLimiter, RequestChecks, Trigger


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def info(**kw: object) -> RequestInfo:
    base: dict[str, object] = dict(
        id=1,
        kind="http",
        method="GET",
        path="/items/3",
        route="/items/{id}",
        status=200,
        start=0.0,
        duration=0.1,
        elapsed=0.1,
        ttfb=0.05,
        client="127.0.0.1:1",
        disconnected=False,
        error=None,
    )
    base.update(kw)
    return RequestInfo(**base)  # type: ignore[arg-type]


def test_slow_request_fires_past_threshold_only() -> None:
    trig = SlowRequest(0.5)
    assert trig.on_request(info(duration=0.4)) is None
    reason = trig.on_request(info(duration=0.6))
    assert reason is not None and "GET /items/{id}" in reason and "0.600" in reason


def test_slow_request_per_route_thresholds_and_opt_out() -> None:
    trig = SlowRequest(0.5, routes={"/items/{id}": 2.0, "/export": None})
    assert trig.on_request(info(duration=1.0)) is None
    assert trig.on_request(info(duration=2.5)) is not None
    assert trig.on_request(info(route=None, path="/export", duration=100.0)) is None
    assert trig.on_request(info(route="/other", duration=0.6)) is not None


def test_slow_request_in_flight_and_never_for_websockets() -> None:
    trig = SlowRequest(0.5)
    assert trig.on_inflight(info(duration=None, elapsed=0.7)) is not None
    assert trig.on_inflight(info(duration=None, elapsed=0.3)) is None
    assert trig.on_request(info(kind="websocket", duration=60.0)) is None
    assert trig.on_inflight(info(kind="websocket", duration=None, elapsed=60.0)) is None


def test_server_error_on_5xx_and_exceptions() -> None:
    trig = ServerError()
    assert trig.on_request(info(status=404)) is None
    assert "503" in (trig.on_request(info(status=503)) or "")
    assert "ValueError" in (trig.on_request(info(status=None, error="ValueError")) or "")


def test_loop_blocked_threshold() -> None:
    trig = LoopBlocked(0.2)
    assert trig.on_block(0.1, "x") is None
    reason = trig.on_block(0.3, "handler (app.py:3)")
    assert reason is not None and "app.py:3" in reason


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: SlowRequest(0), "slow_request"),
        (lambda: SlowRequest(-1.0), "slow_request"),
        (lambda: SlowRequest("one"), "slow_request"),
        (lambda: LoopBlocked(float("nan")), "loop_blocked"),
        (lambda: SlowRequest(1.0, routes={"/a": 0}), "routes"),
    ],
)
def test_bad_thresholds_name_the_option(factory: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        factory()  # type: ignore[operator]


def test_gate_cooldown_per_kind_and_route() -> None:
    clock = FakeClock()
    gate = Gate(60.0, RateLimiter(100, 60.0, clock=clock), clock=clock)
    assert gate.admit("slow_request", "/a")
    assert not gate.admit("slow_request", "/a")
    assert gate.admit("slow_request", "/b")  # another route has its own cooldown
    assert gate.admit("server_error", "/a")  # another kind too
    clock.now += 59.9
    assert not gate.admit("slow_request", "/a")
    clock.now += 0.2
    assert gate.admit("slow_request", "/a")
    assert gate.fired == {"slow_request": 3, "server_error": 1}
    assert gate.suppressed == {"slow_request": 2}


def test_rate_limit_caps_a_storm() -> None:
    clock = FakeClock()
    gate = Gate(0.001, RateLimiter(6, 60.0, clock=clock), clock=clock)
    admitted = 0
    for i in range(10_000):  # 1,000 errors a second for 10 s, each on its own route
        clock.now += 0.001
        admitted += gate.admit("server_error", f"/r{i}")
    assert admitted == 6
    assert gate.suppressed["server_error"] == 10_000 - 6
    clock.now += 60.0
    assert gate.admit("server_error", "/again")


# -- what the triggers need, stated by themselves ------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class EarlyBlock(Trigger):
    """A user's own block trigger that needs to hear of 30 ms blocks."""

    kind = "early_block"

    def block_threshold(self) -> float:
        return 0.03

    def on_block(self, duration: float, where: str | None) -> str | None:
        return "blocked" if duration >= 0.03 else None


def test_the_watchdog_threshold_comes_from_the_triggers(decks: list[Any]) -> None:
    def make(**options: Any) -> FlightDeck:
        deck = FlightDeck(lambda *a: None, endpoint=None, **options)
        decks.append(deck)
        return deck

    assert make(triggers=[LoopBlocked(0.05)]).recorder.loop_blocked == 0.05
    assert make(triggers=[LoopBlocked(0.5), EarlyBlock()]).recorder.loop_blocked == 0.03
    assert make(loop_blocked=0.3).recorder.loop_blocked == 0.3  # the built-in trigger's
    # No trigger listens for blocks: the option's threshold (blocks are still recorded).
    assert make(triggers=[ServerError()], loop_blocked=0.2).recorder.loop_blocked == 0.2
    assert make(triggers=[ServerError()], loop_blocked=None).recorder.loop_blocked == 0.1


@pytest.mark.anyio
async def test_a_block_past_a_short_trigger_threshold_reaches_it(
    path: str, decks: list[Any]
) -> None:
    # A 70 ms block is past LoopBlocked(0.05) but short of the 0.1 s default: it is only
    # heard of when the watchdog's threshold is the trigger's.
    deck = FlightDeck(
        lambda *a: None, endpoint=None, capture_delay=0.0, triggers=[LoopBlocked(0.05)]
    )
    decks.append(deck)
    deck._start()
    await asyncio.sleep(0.05)  # the watchdog's first heartbeat
    time.sleep(0.07)  # blocks the loop
    deadline = time.monotonic() + 10
    while not deck.store.list() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    [snap] = deck.store.list()
    assert snap["trigger"]["kind"] == "loop_blocked"


class ClientErrors(Trigger):
    """A user's own request trigger, for 4xx, that states which requests it needs."""

    kind = "client_error"

    def __init__(self, checks: RequestChecks | None) -> None:
        self.checks = checks
        self.seen: list[int | None] = []

    def request_checks(self) -> RequestChecks | None:
        return self.checks

    def on_request(self, request: RequestInfo) -> str | None:
        self.seen.append(request.status)
        return None


@pytest.mark.anyio
@pytest.mark.parametrize("stated", [True, False])
async def test_a_trigger_sees_the_finished_requests_it_states(
    path: str, decks: list[Any], stated: bool
) -> None:
    # With every trigger stating what it needs, the request path's pre-check shows each
    # only what it asked for (here: statuses from 400) on both paths; a trigger that states
    # nothing sees every request.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = int(scope["path"].strip("/"))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mine = ClientErrors(RequestChecks(status_at_least=400) if stated else None)
    deck = FlightDeck(
        app, endpoint=None, capture_delay=0.0, triggers=[SlowRequest(10), ServerError(), mine]
    )
    decks.append(deck)
    deck._start()
    for status in (200, 302, 404, 200, 503):
        await drive(deck, http_scope(f"/{status}"))
    assert mine.seen == ([404, 503] if stated else [200, 302, 404, 200, 503])


def test_requests_in_flight_are_checked_as_often_as_the_triggers_need(
    decks: list[Any],
) -> None:
    # A quarter of the shortest in-flight threshold the triggers state, within 10-250 ms.
    def tick(**options: Any) -> float:
        deck = FlightDeck(lambda *a: None, endpoint=None, **options)
        decks.append(deck)
        return deck.engine.tick_interval

    assert tick(triggers=[SlowRequest(0.2)]) == 0.05
    assert tick(triggers=[SlowRequest(2.0, routes={"/fast": 0.08})]) == 0.02
    assert tick(triggers=[SlowRequest(0.001)]) == 0.01
    assert tick(slow_request=0.1) == 0.025
    assert tick(triggers=[ServerError()]) == 0.25


def test_the_built_in_triggers_state_their_checks() -> None:
    assert SlowRequest(2.0, routes={"/a": 0.5, "/b": None}).request_checks() == RequestChecks(
        slower_than=0.5
    )
    assert ServerError().request_checks() == RequestChecks(errors=True, status_at_least=500)
    assert LoopBlocked(0.02).block_threshold() == 0.02
    assert Trigger().request_checks() is None
    assert Trigger().block_threshold() == 0.1
