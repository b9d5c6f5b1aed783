"""A FastAPI app with flightdeck on: fast, slow, loop-blocking, fan-out, failing, streaming.

Serve it with ``make run`` (uvicorn on 127.0.0.1:8000), then open
http://127.0.0.1:8000/debug/flight after hitting /block or /error. Try other thresholds
with ``FLIGHTDECK_SLOW_REQUEST=0.2 make run``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Query
from fastapi.responses import StreamingResponse

import flightdeck
from flightdeck import FlightDeck

api = FastAPI(title="flightdeck example")


@api.get("/fast")
async def fast() -> dict[str, str]:
    return {"ok": "fast"}


@api.get("/slow")
async def slow(ms: int = Query(300, ge=0, le=60_000)) -> dict[str, int]:
    with flightdeck.region("slow.sleep"):
        await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


@api.get("/block")
async def block(ms: int = Query(200, ge=0, le=60_000)) -> dict[str, int]:
    time.sleep(ms / 1000)  # deliberately blocks the event loop
    return {"blocked_ms": ms}


async def _work(i: int) -> int:
    await asyncio.sleep(0.01 * (i % 5))
    return i


@api.get("/fanout")
async def fanout(n: int = Query(10, ge=1, le=1000)) -> dict[str, int]:
    results = await asyncio.gather(*(_work(i) for i in range(n)))
    flightdeck.log("fanout", f"gathered {len(results)} tasks")
    return {"tasks": len(results)}


@api.get("/sync")
def sync_route(ms: int = Query(50, ge=0, le=10_000)) -> dict[str, int]:
    time.sleep(ms / 1000)  # runs in the thread pool: recorded as executor work
    return {"slept_ms": ms}


@api.get("/error")
async def error() -> None:
    raise RuntimeError("boom: this route always fails")


@api.get("/stream")
async def stream(chunks: int = Query(5, ge=1, le=10_000)) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(body(), media_type="text/plain")


# One line: every request is recorded; slow, failing and loop-blocking ones leave a snapshot.
# The thresholds come from the environment (FLIGHTDECK_SLOW_REQUEST, default 1 s, and
# FLIGHTDECK_LOOP_BLOCKED, default 0.1 s): an argument given here would win over them.
app = FlightDeck(api, cooldown=10.0)
