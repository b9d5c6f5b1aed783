"""A FastAPI app with flightdeck on: fast, slow, loop-blocking, fan-out, failing, streaming.

Serve it with ``make run`` (uvicorn on 127.0.0.1:8000), then open
http://127.0.0.1:8000/debug/flight after hitting /block or /error. Try other thresholds
with ``FLIGHTDECK_SLOW_REQUEST=0.2 make run``. The ``/incident/...``
routes each stage one of the problems a snapshot's summary names (see the README).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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


# -- incidents: each leaves a snapshot whose summary names the cause ----------------------
_lock = asyncio.Lock()
_small_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="small-pool")


def render_report(ms: int) -> int:
    """CPU work on the loop, shorter than loop_blocked: a hog, not a block."""
    n, end = 0, time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        n += 1
    return n


@api.get("/incident/hog")
async def hog(
    ms: int = Query(80, ge=0, le=5_000), times: int = Query(15, ge=1, le=1000)
) -> dict[str, int]:
    """Holds the loop ``ms`` at a time (under loop_blocked), ``times`` times: every other
    request meanwhile waits for the loop (try ``/slow?ms=100`` alongside)."""
    n = 0
    for _ in range(times):
        n += render_report(ms)
        await asyncio.sleep(0.005)
    return {"iterations": n}


async def _fetch_with_timeout() -> None:
    async with asyncio.timeout(0.02):
        await asyncio.sleep(1)


@api.get("/incident/timeouts")
async def timeouts(n: int = Query(200, ge=1, le=10_000)) -> dict[str, int]:
    """``n`` tasks time out together: a cancellation burst."""
    results = await asyncio.gather(
        *(_fetch_with_timeout() for _ in range(n)), return_exceptions=True
    )
    await asyncio.sleep(1.0)  # slow enough to leave a snapshot
    return {"timed_out": sum(isinstance(r, TimeoutError) for r in results)}


@api.get("/incident/gc")
async def gc_pause(objects: int = Query(500_000, ge=1, le=5_000_000)) -> dict[str, int]:
    """Makes cyclic garbage and collects it: a GC pause on the loop."""
    items: list[list[Any]] = [[] for _ in range(objects)]
    for item in items:
        item.append(item)
    del items
    collected = gc.collect()
    await asyncio.sleep(1.0)
    return {"collected": collected}


@api.get("/incident/lock")
async def lock_holder(ms: int = Query(1500, ge=0, le=60_000)) -> dict[str, int]:
    """Holds a lock across an await; /incident/lock-waiter then waits for it."""
    async with _lock:
        await asyncio.sleep(ms / 1000)
    return {"held_ms": ms}


@api.get("/incident/lock-waiter")
async def lock_waiter() -> dict[str, bool]:
    async with _lock:
        return {"acquired": True}


def _blocking_io() -> None:
    time.sleep(0.6)


@api.get("/incident/pool")
async def pool(jobs: int = Query(4, ge=1, le=100)) -> dict[str, int]:
    """``jobs`` blocking calls on a 2-thread pool: the later ones queue."""
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(_small_pool, _blocking_io) for _ in range(jobs)))
    return {"jobs": jobs}


# The README's tour takes about ten snapshots in a minute, more than the default rate limit
# (6 per 60 s, which suits a service in production) keeps: relaxed to 30 per 60 s for the
# demo, unless FLIGHTDECK_RATE_LIMIT says otherwise.
demo = {} if os.environ.get("FLIGHTDECK_RATE_LIMIT") else {"rate_limit": (30, 60.0)}

# One line: every request is recorded; slow, failing and loop-blocking ones leave a snapshot.
# The thresholds come from the environment (FLIGHTDECK_SLOW_REQUEST, default 1 s, and
# FLIGHTDECK_LOOP_BLOCKED, default 100ms): an argument given here would win over them.
app = FlightDeck(api, cooldown=10.0, **demo)
