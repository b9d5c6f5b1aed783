"""Refused captures are told where a user looks: the list page, one log line, the status."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from browser import ARGS, CHROMIUM, browser_only
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from support import get_json, http_get, uvicorn_thread, wait_until

from flightdeck import FlightDeck
from flightdeck.asgi.notcaptured import not_captured
from flightdeck.asgi.pages import render_index
from flightdeck.asgi.triggers import Gate, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_sentence_counts_the_last_minute_and_says_when_the_next_capture_can_be(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    gate = Gate(60.0, RateLimiter(6, 60.0, clock=clock), clock=clock)
    for i in range(6):
        assert gate.admit("server_error", f"/r{i}")
        clock.now += 1
    clock.now = 1037.0  # the first of the six was at 1000: the next is possible at 1060
    with caplog.at_level(logging.WARNING, logger="flightdeck"):
        for i in range(3):
            assert not gate.admit("slow_request", f"/s{i}")
        assert not gate.admit("loop_blocked", None)
    assert not_captured(gate) == [
        "3 slow requests, 1 loop block not captured in the last minute:"
        " rate limit 6 per 60 s, next capture possible in 23 s"
    ]
    # One log line for the burst, not one per refusal.
    assert [r.getMessage() for r in caplog.records] == [
        "flightdeck: 1 slow request not captured: rate limit 6 per 60 s, next capture"
        " possible in 23 s (more are counted in the status, not logged)"
    ]
    clock.now += 23
    assert gate.admit("slow_request", "/s0")  # the burst is over
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flightdeck"):
        assert not gate.admit("slow_request", "/s0")  # a cooldown: expected, not logged
        for i in range(5):
            gate.admit("server_error", f"/later{i}")
        assert not gate.admit("server_error", "/more")
    assert len(caplog.records) == 1  # the next burst has its own line
    assert "cooldown 60 s" in not_captured(gate)[1]
    clock.now += 61
    assert not_captured(gate) == []  # older than a minute: no longer shown


def test_the_list_page_leads_with_them_escaped() -> None:
    page = render_index([], "/debug/flight", "n", not_captured=["1 <b> trigger not captured"])
    assert '<ul id="not-captured" role="status"><li>1 &lt;b&gt; trigger' in page
    assert "not-captured" not in render_index([], "/debug/flight", "n").split("<body>")[1]


async def _slow(request: Request) -> Response:
    await asyncio.sleep(0.08)
    return PlainTextResponse("slow")


@pytest.mark.browser
@browser_only
def test_the_list_page_in_chromium_shows_the_refused_captures(
    decks: list[Any], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    app = Starlette(routes=[Route("/slow/{n}", _slow)])
    deck = FlightDeck(
        app,
        slow_request=0.05,
        loop_blocked=None,
        rate_limit=(1, 60.0),
        cooldown="1ms",  # one route template: only the rate limit may refuse
        capture_delay=0,
    )
    decks.append(deck)
    with uvicorn_thread(deck) as srv:
        assert http_get(srv.url + "/slow/0")[0] == 200
        wait_until(lambda: deck.store.list() and not deck.engine.capturing)
        for n in range(1, 4):
            assert http_get(srv.url + f"/slow/{n}")[0] == 200
        status = wait_until(
            lambda: (s := get_json(srv.url + "/debug/flight/status"))["not_captured"] and s
        )
        assert status["triggers"]["suppressed_why"] == {"rate_limit": {"slow_request": 3}}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_page()
                page.goto(srv.url + "/debug/flight")
                banner = page.locator("#not-captured")
                assert banner.is_visible()
                text = banner.inner_text()
                assert re.fullmatch(
                    r"3 slow requests not captured in the last minute: rate limit 1 per 60 s,"
                    r" next capture possible in \d+ s",
                    text.strip(),
                ), text
                # Above the table, where the eye starts.
                assert banner.bounding_box()["y"] < page.locator("table").bounding_box()["y"]
                page.screenshot(path=str(tmp_path / "list-not-captured.png"), full_page=True)
            finally:
                browser.close()


def test_the_cli_list_prints_them(decks: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    from flightdeck.cli import main

    app = Starlette(routes=[Route("/slow/{n}", _slow)])
    deck = FlightDeck(app, slow_request=0.05, loop_blocked=None, rate_limit=(1, 60.0))
    decks.append(deck)
    deck.config.env_errors.append("FLIGHTDECK_WINDOW='ten' ignored: ...")  # as from_env does
    with uvicorn_thread(deck) as srv:
        assert http_get(srv.url + "/slow/0")[0] == 200
        wait_until(lambda: deck.store.list() and not deck.engine.capturing)
        deck.engine.gate.cooldown = 0.001  # one route template: only the rate limit refuses
        for n in range(1, 3):
            assert http_get(srv.url + f"/slow/{n}")[0] == 200
        wait_until(lambda: not_captured(deck.engine.gate))
        assert main(["list", srv.url + "/debug/flight"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (ident,) = [item["id"] for item in deck.store.list()]
    assert lines[0].startswith(f"{ident}  ") and "slow_request: GET /slow/{n}" in lines[0]
    assert re.fullmatch(
        r"not captured: 2 slow requests not captured in the last minute: rate limit 1 per"
        r" 60 s, next capture possible in \d+ s",
        lines[1],
    ), lines
    assert lines[2] == "configuration: FLIGHTDECK_WINDOW='ten' ignored: ..."
