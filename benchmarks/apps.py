"""The apps and variants of the HTTP benchmark.

Apps: ``hello`` (Starlette, plain text), ``steps`` (Starlette, awaits three times, small
JSON), ``fastapi`` (path + query parameters, a pydantic model validated and returned,
about 0.3 ms of CPU work). Variants: ``bare``, ``fd_mw`` (flightdeck middleware only),
``fd_full`` (flightdeck defaults), ``otel`` (OpenTelemetry ASGI middleware, SDK tracer
provider, a span processor that discards), ``sentry`` (Sentry ASGI middleware,
``traces_sample_rate=1.0``, a transport that discards).

For uvicorn: ``BENCH_APP=steps BENCH_VARIANT=fd_full uvicorn --factory apps:create_app``.
``BENCH_GC=1`` puts :class:`GcCount` outside the variant (``bench_gc.py``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

APPS = ("hello", "steps", "gather", "stream", "fastapi", "fastapi_body")
VARIANTS = ("bare", "fd_mw", "fd_full", "otel", "sentry")
PATHS = {
    "hello": "/",
    "steps": "/steps",
    "gather": "/gather",
    "stream": "/stream",
    "fastapi": "/items/42?q=widget&limit=5",
    "fastapi_body": "/orders?token=abc",
}
#: Requests that carry a body: (method, content type, body).
BODIES = {
    "fastapi_body": (
        "POST",
        b"application/json",
        b'{"sku": "widget-42", "quantity": 3, "price": 12.5, "tags": ["a", "b"], '
        b'"note": "leave at the door"}',
    )
}
#: Chunks of the streamed response.
STREAM_CHUNKS = 20
#: Iterations of the CPU work of the FastAPI route (about 0.3 ms on the reference machine).
WORK = int(os.environ.get("BENCH_WORK", "6000"))


async def hello(request: Request) -> Response:
    return PlainTextResponse("Hello, world!")


async def steps(request: Request) -> Response:
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return JSONResponse({"ok": True, "steps": 3})


async def _child() -> int:
    await asyncio.sleep(0)
    return 1


async def gather(request: Request) -> Response:
    """Three child tasks, each awaiting once, gathered."""
    n = sum(await asyncio.gather(_child(), _child(), _child()))
    return JSONResponse({"ok": True, "children": n})


async def _chunks() -> Any:
    for i in range(STREAM_CHUNKS):
        yield b"chunk %02d\n" % i


async def stream(request: Request) -> Response:
    return StreamingResponse(_chunks(), media_type="text/plain")


def make_gather() -> Any:
    return Starlette(routes=[Route("/gather", gather)])


def make_stream() -> Any:
    return Starlette(routes=[Route("/stream", stream)])


def make_hello() -> Any:
    return Starlette(routes=[Route("/", hello)])


def make_steps() -> Any:
    return Starlette(routes=[Route("/steps", steps)])


def cpu_work(n: int) -> int:
    """Deterministic pure-Python work standing in for a handler's own logic."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def make_fastapi() -> Any:
    from fastapi import FastAPI, Query
    from pydantic import BaseModel, Field

    class Item(BaseModel):
        id: int = Field(ge=0)
        name: str
        tags: list[str]
        price: float
        score: int
        limit: int

    api = FastAPI()

    @api.get("/items/{item_id}", response_model=Item)
    async def get_item(item_id: int, q: str = Query("", max_length=50), limit: int = 10) -> Item:
        score = cpu_work(WORK)
        raw: dict[str, Any] = {
            "id": item_id,
            "name": f"item-{item_id}-{q}",
            "tags": [q, "bench", str(limit)],
            "price": item_id * 1.25,
            "score": score,
            "limit": limit,
        }
        return Item.model_validate(raw)

    return api


def make_fastapi_body() -> Any:
    """A POST route: a pydantic body validated, a dependency resolved, a model returned."""
    from fastapi import Depends, FastAPI
    from pydantic import BaseModel, Field

    class Order(BaseModel):
        sku: str = Field(min_length=1, max_length=40)
        quantity: int = Field(gt=0)
        price: float
        tags: list[str] = []
        note: str | None = None

    class Receipt(BaseModel):
        sku: str
        total: float
        user: str

    async def current_user(token: str = "") -> str:
        return "anonymous" if not token else f"user-{len(token)}"

    # The annotations are strings (``from __future__ import annotations``): FastAPI resolves
    # them in this module's globals.
    globals().update(Order=Order, Receipt=Receipt, current_user=current_user)
    api = FastAPI()

    @api.post("/orders", response_model=Receipt)
    async def create_order(order: Order, user: str = Depends(current_user)) -> Receipt:
        return Receipt(sku=order.sku, total=order.quantity * order.price, user=user)

    return api


class _DiscardProcessor:
    """An OpenTelemetry span processor that drops every span."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: Any) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_sentry_ready = False


def _init_sentry() -> None:
    global _sentry_ready
    if _sentry_ready:
        return
    import sentry_sdk
    from sentry_sdk.transport import Transport

    class DiscardTransport(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            pass

    # No auto-enabled integrations: they would patch Starlette/FastAPI for every variant
    # in the same process; the ASGI middleware below is what is measured.
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=DiscardTransport,
        traces_sample_rate=1.0,
        auto_enabling_integrations=False,
    )
    _sentry_ready = True


def wrap(app: Any, variant: str) -> Any:
    """``app`` wrapped for ``variant``."""
    if variant == "bare":
        return app
    if variant == "fd_mw":
        from flightdeck import FlightDeck

        return FlightDeck(app, instrument_loop=False, loop_blocked=None)
    if variant == "fd_full":
        from flightdeck import FlightDeck

        return FlightDeck(app)
    if variant == "otel":
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider()
        provider.add_span_processor(_DiscardProcessor())  # type: ignore[arg-type]
        return OpenTelemetryMiddleware(app, tracer_provider=provider)
    if variant == "sentry":
        from sentry_sdk.integrations.asgi import SentryAsgiMiddleware

        _init_sentry()
        return SentryAsgiMiddleware(app)
    raise ValueError(f"unknown variant {variant!r}")


def make_app(name: str) -> Any:
    return {
        "hello": make_hello,
        "steps": make_steps,
        "gather": make_gather,
        "stream": make_stream,
        "fastapi": make_fastapi,
        "fastapi_body": make_fastapi_body,
    }[name]()


class GcCount:
    """Counts HTTP requests and answers ``GET /__gc`` with the requests so far and the
    cyclic GC's collections of each generation (``gc.get_stats()``), as JSON."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] != "/__gc":
            self.requests += 1
            await self.app(scope, receive, send)
            return
        import gc
        import json

        body = json.dumps(
            {"requests": self.requests, "collections": [g["collections"] for g in gc.get_stats()]}
        ).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app() -> Any:
    """uvicorn ``--factory`` entry point: the app and variant named by the environment."""
    app = wrap(make_app(os.environ["BENCH_APP"]), os.environ["BENCH_VARIANT"])
    return GcCount(app) if os.environ.get("BENCH_GC") == "1" else app
