"""ASGI apps served by the hardening tests' subprocess servers (``tests/conftest.py``).

``app`` is ``inner`` wrapped by ``FlightDeck`` with the options in the ``FD_TEST_OPTIONS``
environment variable (JSON), plus the usual ``FLIGHTDECK_*`` variables; ``bare`` is the
same app without flightdeck, to compare the server's own behaviour against.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from flightdeck import FlightDeck


def _ms(request: Request, default: int) -> float:
    return int(request.query_params.get("ms", default)) / 1000


async def fast(request: Request) -> Response:
    return PlainTextResponse("ok")


async def pid(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid()})


async def slow(request: Request) -> Response:
    await asyncio.sleep(_ms(request, 200))
    return PlainTextResponse("slow")


async def block(request: Request) -> Response:
    time.sleep(_ms(request, 200))  # blocks the event loop on purpose
    return PlainTextResponse("blocked")


async def error(request: Request) -> Response:
    raise RuntimeError("this route always fails")


async def fail(request: Request) -> Response:
    return PlainTextResponse("failed", status_code=500)


async def stream(request: Request) -> Response:
    chunks = int(request.query_params.get("chunks", 10))
    delay = _ms(request, 0)

    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            yield b"chunk %d\n" % i
            if delay:
                await asyncio.sleep(delay)

    return StreamingResponse(body(), media_type="text/plain")


async def chain(request: Request) -> Response:
    """Call ``next`` with this request's ``traceparent`` (as a traced client would), then
    sleep ``ms``: a slow request in one service whose trace another service handled."""
    import httpx

    headers = {}
    if "traceparent" in request.headers:
        headers["traceparent"] = request.headers["traceparent"]
    target = request.query_params.get("next")
    if target:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            await client.get(target, headers=headers)
    await asyncio.sleep(_ms(request, 0))
    return PlainTextResponse("chained")


async def fanout(request: Request) -> Response:
    """``n`` short tasks (one step or two each): a window made of many tasks."""

    async def short(i: int) -> int:
        if i % 2:
            await asyncio.sleep(0)
        return i

    n = int(request.query_params.get("n", "20"))
    await asyncio.gather(*(asyncio.create_task(short(i)) for i in range(n)))
    return PlainTextResponse("fanned")


async def own_capture(request: Request) -> Response:
    """The recorder's own capture paths, in this process: ``how`` = ``write_to``,
    ``snapshot``, ``capture`` (the document is never built: only its stored form)."""
    how = request.query_params.get("how")
    rec = app.recorder
    if how == "write_to":
        with open(os.devnull, "wb") as sink:
            n = await asyncio.to_thread(rec.write_to, sink)
    elif how == "snapshot":
        n = (await asyncio.to_thread(rec.snapshot)).stored_size
    else:
        n = (await rec.capture()).stored_size
    return JSONResponse({"bytes": n})


def fetch_legacy(seconds: float) -> str:
    """A synchronous call inside ``async def``: what holds a loop until the arbiter kills it."""
    time.sleep(seconds)
    return "report"


async def report(request: Request) -> Response:
    return PlainTextResponse(fetch_legacy(_ms(request, 10_000)))


async def die(request: Request) -> Response:
    """Wait ``ms`` (so the writer has copied this request to the window file), then end the
    process without any shutdown: ``how`` = ``exit`` (``os._exit``) or ``segfault``."""
    await asyncio.sleep(_ms(request, 1000))
    if request.query_params.get("how") == "segfault":
        import ctypes

        ctypes.string_at(0)  # SIGSEGV
    os._exit(3)


_starlette = Starlette(
    routes=[
        Route("/report", report),
        Route("/die", die),
        Route("/fanout", fanout),
        Route("/own_capture", own_capture),
        Route("/fast", fast),
        Route("/pid", pid),
        Route("/slow", slow),
        Route("/block", block),
        Route("/error", error),
        Route("/fail", fail),
        Route("/stream", stream),
        Route("/chain", chain),
    ]
)


async def _sse(scope: Any, receive: Any, send: Any) -> None:
    """An endless event stream that stops when the client goes away (as SSE apps do)."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    gone = asyncio.Event()

    async def listen() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    listener = asyncio.ensure_future(listen())
    i = 0
    try:
        while not gone.is_set():
            await send(
                {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
            )
            i += 1
            await asyncio.sleep(0.005)
    finally:
        listener.cancel()


async def inner(scope: Any, receive: Any, send: Any) -> None:
    """The app under test: a few raw-ASGI misbehaviours, then the Starlette routes."""
    path = scope.get("path") if scope["type"] == "http" else None
    if path == "/nosend":
        return  # returns without sending anything
    if path == "/double":
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start)
        await send(start)  # a second start: the server decides what happens
        await send({"type": "http.response.body", "body": b"twice"})
        return
    if path == "/sse":
        await _sse(scope, receive, send)
        return
    await _starlette(scope, receive, send)


bare = inner
_options: dict[str, Any] = json.loads(os.environ.get("FD_TEST_OPTIONS") or "{}")
if "rate_limit" in _options:
    _options["rate_limit"] = tuple(_options["rate_limit"])
app = FlightDeck(inner, **_options)

#: The README's Starlette form: Starlette builds the middleware at the first request.
added = Starlette(routes=[Route("/fast", fast), Route("/block", block)])
added.add_middleware(FlightDeck)
