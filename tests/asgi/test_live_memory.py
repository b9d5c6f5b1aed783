"""What requests in flight hold outside the window's events is counted, or bounded per request.

Each request in flight has an entry in the live table (labels, in-flight triggers) and, while
the window's status tables can describe it, in those. A long path and query must show in
``stats.bytes`` or be cut from the live entry: many such requests in flight must not grow
the process by much more than ``stats.bytes`` says. Memory is traced with ``tracemalloc``
(the native objects come from Python's allocators too) against the same requests to the
bare app, so what the test harness holds cancels out. The window is filled first, so that
its byte bound is reached and what it holds stays level while the requests arrive.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest
from support import await_until, http_scope, make_deck

from flightdeck.core import events as ev
from flightdeck.core.window import LIVE_TEXT_MAX

pytestmark = pytest.mark.anyio

IN_FLIGHT = 3000
MAX_BYTES = 4 << 20
#: What each request in flight may hold outside ``stats.bytes``: the request path's own
#: objects (wrappers of send and receive, its state, its live entry with the path cut to
#: LIVE_TEXT_MAX characters), whatever the length of its path and query.
OUTSIDE_PER_REQUEST = 2048


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def long_scope(i: int) -> dict[str, Any]:
    # 2 KB of path and 4 KB of query (about the most the window records of each), each
    # request its own.
    return http_scope(
        f"/items/{i:05d}/" + "x-y/" * 500,
        query_string=b"page=%05d&" % i + b"sort=name&" * 390,
    )


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def _send(message: dict[str, Any]) -> None:
    return None


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def hold_in_flight(
    target: Any, scopes: list[dict[str, Any]], inflight: Any
) -> list[asyncio.Future[Any]]:
    """Start every request; return once all of them are inside the app."""
    tasks = [asyncio.ensure_future(target(s, _receive, _send)) for s in scopes]
    await await_until(lambda: inflight() >= len(scopes), timeout=30)
    return tasks


async def test_long_paths_and_queries_in_flight_stay_within_stats_bytes(
    path: str, decks: list[Any]
) -> None:
    gate = asyncio.Event()
    waiting = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal waiting
        waiting += 1
        await gate.wait()
        waiting -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    deck = make_deck(app, decks, max_bytes=MAX_BYTES, triggers=[], slow_request=None)
    deck._start()
    assert deck.asgi_path == path
    window = deck.recorder._window
    # Fill the window to its bound with small events.
    for i in range(400_000):
        window.append((ev.MARK, i, "fill", "x"))
        if i % 4096 == 0:
            window.maintain()
    window.maintain(force_seal=True)

    tracemalloc.start()
    try:
        # The bare app: what the harness itself holds for as many requests.
        scopes = [long_scope(i) for i in range(IN_FLIGHT)]
        before = traced()
        tasks = await hold_in_flight(app, scopes, lambda: waiting)
        bare = traced() - before
        gate.set()
        await asyncio.gather(*tasks)
        gate.clear()
        del tasks

        scopes = [long_scope(i) for i in range(IN_FLIGHT)]
        window.maintain(force_seal=True)
        before = traced()
        bytes_before = deck.recorder.stats["bytes"]
        tasks = await hold_in_flight(deck, scopes, lambda: len(window.live_requests))
        window.maintain(force_seal=True)
        grown = traced() - before - bare
        bytes_after = deck.recorder.stats["bytes"]
        live = list(window.live_requests.values())
        gate.set()
        await asyncio.gather(*tasks)
    finally:
        tracemalloc.stop()

    assert bytes_after <= MAX_BYTES
    outside = grown - (bytes_after - bytes_before)
    assert outside <= IN_FLIGHT * OUTSIDE_PER_REQUEST, (grown, bytes_before, bytes_after)
    # The live entries keep the path cut and no query.
    assert all(len(e[0][ev.REQ_START_PATH]) <= LIVE_TEXT_MAX for e in live)
    assert all(e[0][ev.REQ_START_QUERY] == "" for e in live)
