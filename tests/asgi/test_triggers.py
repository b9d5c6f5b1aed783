"""Trigger rules and the gate (cooldown, rate limit), with fake clocks."""

from __future__ import annotations

import pytest

from flightdeck import LoopBlocked, RequestInfo, ServerError, SlowRequest
from flightdeck.asgi.triggers import Gate, RateLimiter


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
