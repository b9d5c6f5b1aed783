"""The middleware against a real uvicorn: root_path, the server's own errors, WebSocket closes,
and triggers that arrive while a capture is pending."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from support import find_request, http_get, make_deck, uvicorn_thread, wait_until

from flightdeck import FlightDeck


def _ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_endpoint_honours_root_path(decks: list[Any]) -> None:
    # uvicorn --root-path /api: a proxy strips /api, uvicorn puts it back in scope["path"].
    app = Starlette(routes=[Route("/fast", _ok)])
    deck = FlightDeck(app, endpoint="/debug/flight", slow_request=None, loop_blocked=None)
    decks.append(deck)
    with uvicorn_thread(deck, root_path="/api") as srv:
        status, _, body = http_get(srv.url + "/fast")
        assert (status, body) == (200, b"ok")  # the app's own routes, as without flightdeck
        status, _, body = http_get(srv.url + "/debug/flight/status")
        assert status == 200, body[:200]
        assert json.loads(body)["enabled"] is True
        status, _, body = http_get(srv.url + "/debug/flight/snapshots")
        assert status == 200 and json.loads(body) == []


def _non_dict_app(seen: list[str], message: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await send(message)
        except Exception as exc:  # what the server raises for a message it cannot read
            seen.append(f"{type(exc).__name__}: {exc}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return app


@pytest.mark.parametrize("message", [["http.response.start"], "http.response.start", None, 7])
def test_a_non_dict_message_gets_the_servers_own_error(decks: list[Any], message: Any) -> None:
    errors: dict[str, list[str]] = {}
    for variant in ("bare", "flightdeck"):
        seen: list[str] = []
        app = _non_dict_app(seen, message)
        if variant == "flightdeck":
            app = make_deck(app, decks, slow_request=None, server_errors=False)
        with uvicorn_thread(app) as srv:
            status, _, body = http_get(srv.url + "/x")
        assert (status, body) == (200, b"done")
        errors[variant] = seen
    assert errors["bare"], "uvicorn accepted a non-dict message"
    assert errors["flightdeck"] == errors["bare"]


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    if text == "close-4003":
        await websocket.close(code=4003)
        return
    await websocket.send_text(text)
    try:
        await websocket.receive_text()
    except WebSocketDisconnect:
        pass  # the client closed it


def _ws_client(url: str, text: str, close_code: int | None) -> None:
    from websockets.sync.client import connect

    with connect(url) as ws:
        ws.send(text)
        if close_code is not None:
            assert ws.recv(timeout=10) == text
            ws.close(code=close_code)
        else:
            try:
                ws.recv(timeout=10)
            except Exception:
                pass  # the server closed it


def test_websocket_close_codes_recorded_not_as_status(decks: list[Any]) -> None:
    pytest.importorskip("websockets.sync.client")
    app = Starlette(routes=[WebSocketRoute("/ws", _ws), WebSocketRoute("/ws2", _ws)])
    deck = make_deck(app, decks, slow_request=None)
    with uvicorn_thread(deck) as srv:
        base = srv.url.replace("http://", "ws://")
        _ws_client(base + "/ws", "hello", 4001)  # the client closes with 4001
        _ws_client(base + "/ws2", "close-4003", None)  # the app closes with 4003

        def both_ended() -> Any:
            doc = deck.recorder.snapshot().to_dict()
            reqs = [r for r in doc["requests"] if r["path"] in ("/ws", "/ws2")]
            return doc if len(reqs) == 2 and all(r["end"] for r in reqs) else None

        doc = wait_until(both_ended)
    by_client = find_request(doc, "/ws")
    by_app = find_request(doc, "/ws2")
    assert by_client["close_code"] == 4001 and by_client["status"] is None
    assert by_client["disconnected"] is True  # the client ended it
    assert by_app["close_code"] == 4003 and by_app["status"] is None
    assert by_app["disconnected"] is False  # the app closed it; the disconnect completes it
    assert by_app["error"] is None and by_client["error"] is None


def test_a_trigger_during_a_pending_capture_is_kept(decks: list[Any]) -> None:
    # The README's demo: block the loop, then a 500, within the capture delay. Both show.
    release = threading.Event()

    async def block(request: Any) -> PlainTextResponse:
        import time

        time.sleep(0.3)
        return PlainTextResponse("blocked")

    async def error(request: Any) -> PlainTextResponse:
        raise RuntimeError("boom")

    async def slow(request: Any) -> JSONResponse:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        return JSONResponse({"slow": True})

    app = Starlette(routes=[Route("/block", block), Route("/error", error), Route("/slow", slow)])
    deck = FlightDeck(
        app, endpoint="/debug/flight", capture_delay=1.5, loop_blocked=0.2, slow_request=None
    )
    decks.append(deck)
    with uvicorn_thread(deck) as srv:
        assert http_get(srv.url + "/block")[0] == 200
        wait_until(lambda: deck.engine.pending is not None)  # loop_blocked fired: pending
        assert http_get(srv.url + "/error")[0] == 500
        listing = wait_until(lambda: deck.store.list())
        assert len(listing) == 1
        snap = deck.store.get(listing[0]["id"])
        assert snap is not None
        trigger = snap.to_dict()["trigger"]
        assert trigger["kind"] == "loop_blocked"
        assert [(a["kind"], a["request"]["path"]) for a in trigger["also"]] == [
            ("exception", "/error")
        ]
        assert "RuntimeError" in trigger["also"][0]["reason"]
        status = json.loads(http_get(srv.url + "/debug/flight/status")[2])
        assert status["triggers"]["joined"] == {"exception": 1}
        release.set()


def test_a_trigger_while_building_is_captured_next(decks: list[Any]) -> None:
    async def error(request: Any) -> PlainTextResponse:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/error", error), Route("/other", error)])
    deck = make_deck(app, decks, endpoint="/debug/flight", slow_request=None, loop_blocked=None)
    building = threading.Event()
    go_on = threading.Event()
    build = deck.recorder.build_into

    def slow_build(*args: Any, **kwargs: Any) -> Any:
        building.set()
        go_on.wait(10)
        return build(*args, **kwargs)

    deck.recorder.build_into = slow_build  # type: ignore[method-assign]
    with uvicorn_thread(deck) as srv:
        assert http_get(srv.url + "/error")[0] == 500
        assert building.wait(10)
        assert http_get(srv.url + "/other")[0] == 500  # while the first is being built
        assert http_get(srv.url + "/other")[0] == 500  # same kind and route: cooldown
        status = json.loads(http_get(srv.url + "/debug/flight/status")[2])
        assert status["triggers"]["queued"] is True
        assert status["triggers"]["suppressed_why"] == {"cooldown": {"exception": 1}}
        go_on.set()
        listing = wait_until(lambda: len(deck.store.list()) == 2 and deck.store.list())
        wait_until(lambda: not deck.engine.capturing)
    paths = sorted(
        deck.store.get(item["id"]).to_dict()["trigger"]["request"]["path"] for item in listing
    )
    assert paths == ["/error", "/other"]
