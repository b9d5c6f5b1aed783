"""The token login in real headless Chromium: a browser, which cannot send
a bearer header, logs in with the form and then uses the list, its links and its button."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from browser import ARGS, CHROMIUM, browser_only
from support import uvicorn_thread

from flightdeck import FlightDeck

PREFIX = "/debug/flight"
TOKEN = "browser-token-0123456789"

pytestmark = [pytest.mark.browser, browser_only]


async def inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def test_browser_logs_in_and_uses_the_list(decks: list[Any], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    # No automatic trigger: on a loaded machine a late loop would add a loop_blocked snapshot.
    deck = FlightDeck(
        inner,
        endpoint=PREFIX,
        token=TOKEN,
        directory=tmp_path,
        slow_request=None,
        loop_blocked=None,
        server_errors=False,
    )
    decks.append(deck)
    with uvicorn_thread(deck) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + PREFIX)
            assert page.url == srv.url + PREFIX + "/login"  # sent to the form
            page.fill("input[name=token]", "wrong")
            page.click("button[type=submit]")
            assert "refused" in page.content()
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("#capture")
            assert page.url == srv.url + PREFIX + "/"
            cookies = page.context.cookies()
            (cookie,) = [c for c in cookies if c["name"] == "flightdeck_session"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert cookie["path"] == PREFIX and cookie["expires"] > 0
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
            # The "capture now" button works with the cookie alone.
            page.click("#capture")
            page.wait_for_selector("a[download]")
            assert len(deck.store.list()) == 1
            ident = deck.store.list()[0]["id"]
            answer = page.request.get(f"{srv.url}{PREFIX}/snapshots/{ident}")
            assert answer.status == 200 and answer.json()["id"] == ident
            # "Log out" clears the cookie: the list sends the browser to the form again.
            page.click("#logout")
            page.wait_for_selector("input[name=token]")
            assert page.url == srv.url + PREFIX + "/login"
            assert [c for c in page.context.cookies() if c["name"] == "flightdeck_session"] == []
            page.goto(srv.url + PREFIX)
            assert page.url == srv.url + PREFIX + "/login"
            assert errors == []
        finally:
            browser.close()
    assert os.environ.get("FLIGHTDECK_TOKEN") != TOKEN
