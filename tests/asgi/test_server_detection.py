"""Every ASGI server's own check must see ``FlightDeck`` as an ASGI 3 (async) app.

Servers tell ASGI 3 from ASGI 2 or WSGI by asking whether the app, or its ``__call__``, is a
coroutine function: hypercorn with ``inspect.iscoroutinefunction`` (which on 3.11 knows no
marker), uvicorn and granian with ``asyncio.iscoroutinefunction``. A wrapper that fails the
check is served as WSGI and answers 500 to every request, so each predicate is tested here on
whichever core this run has (the pure-core CI run covers the other).
"""

from __future__ import annotations

import asyncio
import inspect
import warnings
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from flightdeck import FlightDeck


async def raw_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _asyncio_iscoroutinefunction(obj: Any) -> bool:
    with warnings.catch_warnings():  # deprecated on 3.14, still what servers call today
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.iscoroutinefunction(obj)


def _hypercorn_is_asgi(app: Any) -> bool:
    # hypercorn.utils.is_asgi, as written in hypercorn 0.17
    if inspect.iscoroutinefunction(app):
        return True
    if hasattr(app, "__call__"):  # noqa: B004 (hypercorn's own test, kept as written)
        return inspect.iscoroutinefunction(app.__call__)
    return False


def test_wrapped_app_passes_inspect_on_its_call() -> None:
    deck = FlightDeck(raw_app)
    try:
        assert inspect.iscoroutinefunction(deck.__call__)
        assert _hypercorn_is_asgi(deck)
    finally:
        deck.close()


def test_wrapped_app_passes_asyncio_on_its_call() -> None:
    deck = FlightDeck(raw_app)
    try:
        assert _asyncio_iscoroutinefunction(deck.__call__)
    finally:
        deck.close()


def test_wrapped_app_signature_is_asgi3() -> None:
    deck = FlightDeck(raw_app)
    try:
        assert list(inspect.signature(deck).parameters) == ["scope", "receive", "send"]
    finally:
        deck.close()


def test_starlette_with_flightdeck_added_passes_every_check() -> None:
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    app.add_middleware(FlightDeck)
    assert _hypercorn_is_asgi(app)
    assert _asyncio_iscoroutinefunction(app.__call__)
