"""One small app per ASGI framework, wrapped by ``FlightDeck``, for the server matrix.

``FD_FRAMEWORK`` picks the framework (``raw``, ``starlette``, ``fastapi``, ``litestar``,
``quart``, ``django``); ``app`` is it, wrapped (see :func:`wrapped`). Every app answers
the same routes:
``/ok`` (200), ``/stream`` (five chunks, each sent on its own), ``/fail`` (a 500 answer,
nothing raised: the server's log stays clean) and ``/slow`` (``FD_SLOW_MS``, default 300,
of sleep). Its lifespan (where the framework has one) appends ``startup`` and ``shutdown``
lines to the file ``FD_MARKERS`` names. FlightDeck's options come from ``FLIGHTDECK_*``.

No ``from __future__ import annotations`` here: Litestar reads its handlers' annotations,
which name classes imported inside the function that builds the app.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from flightdeck import FlightDeck

CHUNKS = [b"chunk %d\n" % i for i in range(5)]


def mark(event: str) -> None:
    path = os.environ.get("FD_MARKERS")
    if path:
        with open(path, "a") as f:
            f.write(event + "\n")


def slow_seconds() -> float:
    return int(os.environ.get("FD_SLOW_MS", "300")) / 1000


async def chunks() -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        yield chunk
        await asyncio.sleep(0.005)


def raw() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    mark("startup")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    mark("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        headers = [(b"content-type", b"text/plain")]
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        status, body = {"/ok": (200, b"ok"), "/fail": (500, b"failed")}.get(path, (0, b""))
        if path == "/slow":
            await asyncio.sleep(slow_seconds())
            status, body = 200, b"slow"
        await send({"type": "http.response.start", "status": status or 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    mark("startup")
    yield
    mark("shutdown")


def starlette(factory: Callable[..., Any] | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def ok(request: Any) -> Response:
        return PlainTextResponse("ok")

    async def stream(request: Any) -> Response:
        return StreamingResponse(chunks(), media_type="text/plain")

    async def fail(request: Any) -> Response:
        return PlainTextResponse("failed", status_code=500)

    async def slow(request: Any) -> Response:
        await asyncio.sleep(slow_seconds())
        return PlainTextResponse("slow")

    routes = [Route(p, f) for p, f in (("/ok", ok), ("/stream", stream), ("/fail", fail))]
    return Starlette(routes=[*routes, Route("/slow", slow)], lifespan=lifespan)


def fastapi() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse, StreamingResponse

    app = FastAPI(lifespan=lifespan)

    @app.get("/ok", response_class=PlainTextResponse)
    async def ok() -> str:
        return "ok"

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/fail")
    async def fail() -> PlainTextResponse:
        return PlainTextResponse("failed", status_code=500)

    @app.get("/slow", response_class=PlainTextResponse)
    async def slow() -> str:
        await asyncio.sleep(slow_seconds())
        return "slow"

    return app


def litestar() -> Any:
    from litestar import Litestar, MediaType, Response, get
    from litestar.response import Stream

    @get("/ok", media_type=MediaType.TEXT)
    async def ok() -> str:
        return "ok"

    @get("/stream", media_type=MediaType.TEXT)
    async def stream() -> Stream:
        return Stream(chunks())

    @get("/fail", media_type=MediaType.TEXT)
    async def fail() -> Response[str]:
        return Response("failed", status_code=500)

    @get("/slow", media_type=MediaType.TEXT)
    async def slow() -> str:
        await asyncio.sleep(slow_seconds())
        return "slow"

    return Litestar(
        route_handlers=[ok, stream, fail, slow],
        on_startup=[lambda: mark("startup")],
        on_shutdown=[lambda: mark("shutdown")],
    )


def quart() -> Any:
    from quart import Quart, Response

    app = Quart(__name__)

    @app.before_serving
    async def startup() -> None:
        mark("startup")

    @app.after_serving
    async def shutdown() -> None:
        mark("shutdown")

    @app.get("/ok")
    async def ok() -> Any:
        return "ok"

    @app.get("/stream")
    async def stream() -> Any:
        return Response(chunks(), mimetype="text/plain")

    @app.get("/fail")
    async def fail() -> Any:
        return "failed", 500

    @app.get("/slow")
    async def slow() -> Any:
        await asyncio.sleep(slow_seconds())
        return "slow"

    return app


def django() -> Any:
    """Django's ASGI handler (which has no lifespan: it refuses non-HTTP scopes)."""
    import django as dj
    from django.conf import settings
    from django.core.asgi import get_asgi_application
    from django.http import HttpResponse, StreamingHttpResponse
    from django.urls import path

    async def ok(request: Any) -> HttpResponse:
        return HttpResponse("ok", content_type="text/plain")

    async def stream(request: Any) -> StreamingHttpResponse:
        return StreamingHttpResponse(chunks(), content_type="text/plain")

    async def fail(request: Any) -> HttpResponse:
        return HttpResponse("failed", status=500, content_type="text/plain")

    async def slow(request: Any) -> HttpResponse:
        await asyncio.sleep(slow_seconds())
        return HttpResponse("slow", content_type="text/plain")

    global urlpatterns
    urlpatterns = [path("ok", ok), path("stream", stream), path("fail", fail), path("slow", slow)]
    settings.configure(
        DEBUG=False,
        SECRET_KEY="server-matrix-test-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        LOGGING_CONFIG=None,
    )
    dj.setup()
    return get_asgi_application()


urlpatterns: list[Any] = []

FRAMEWORKS: dict[str, Callable[[], Any]] = {
    "raw": raw,
    "starlette": starlette,
    "fastapi": fastapi,
    "litestar": litestar,
    "quart": quart,
    "django": django,
}


def wrapped() -> Any:
    """The app: ``FlightDeck(inner)``, or with ``FD_ADD_MIDDLEWARE=1`` Starlette's (or
    FastAPI's) own ``add_middleware(FlightDeck)``."""
    inner = FRAMEWORKS[os.environ.get("FD_FRAMEWORK", "raw")]()
    if os.environ.get("FD_ADD_MIDDLEWARE") == "1":
        inner.add_middleware(FlightDeck)
        return inner
    return FlightDeck(inner)


app = wrapped()
