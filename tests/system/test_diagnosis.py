"""Real incidents under uvicorn, read back as `?format=summary`: the first lines name the cause.

Each test builds one incident (a loop hog under the block threshold, a cancellation burst, a
GC pause, a lock held across an await, a saturated thread pool), lets the slow-request
trigger fire on the victim request, and asserts on the summary's first 40 lines and on the
breakdown adding up to the victim's duration.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from support import ThreadServer, http_get, uvicorn_thread, wait_until

from flightdeck import FlightDeck
from flightdeck.export.breakdown import breakdown

PREFIX = "/debug/flight"
LOCK = asyncio.Lock()
POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="small-pool")


def crunch(seconds: float) -> int:
    """CPU work on the loop, shorter than loop_blocked."""
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n


#: The hog is waiting for the victim (the test sends the victim only then), and the victim
#: has arrived (the hog holds the loop only then): the victim is always behind the hog
#: however the client threads are scheduled.
HOG_WAITING = threading.Event()
VICTIM_IN = asyncio.Event()
#: Set once the holder has the lock and once the pool hog's jobs fill the pool: the test
#: sends the victim only then, so it waits behind them however the client threads run.
LOCK_HELD = threading.Event()
POOL_FULL = threading.Event()


async def victim(request: Request) -> Response:
    VICTIM_IN.set()
    await asyncio.sleep(0.02)
    return PlainTextResponse("victim")


async def hog(request: Request) -> Response:
    HOG_WAITING.set()
    await asyncio.wait_for(VICTIM_IN.wait(), 10)
    VICTIM_IN.clear()
    await asyncio.sleep(0.005)
    crunch(0.12)
    await asyncio.sleep(0)
    return PlainTextResponse("hog")


async def burst_child() -> None:
    async with asyncio.timeout(0.02):
        await asyncio.sleep(5)


async def burst(request: Request) -> Response:
    tasks = [asyncio.create_task(burst_child()) for _ in range(200)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    await asyncio.sleep(0.05)
    return PlainTextResponse("burst")


async def collect(request: Request) -> Response:
    items: list[list[Any]] = [[] for _ in range(400_000)]
    for item in items:
        item.append(item)
    del items
    await asyncio.sleep(0.01)
    gc.collect()
    await asyncio.sleep(0.01)
    return PlainTextResponse("collected")


async def holder(request: Request) -> Response:
    async with LOCK:
        LOCK_HELD.set()
        await asyncio.sleep(0.2)
    return PlainTextResponse("held")


async def waiter(request: Request) -> Response:
    async with LOCK:
        pass
    return PlainTextResponse("got it")


def blocking_io() -> None:
    time.sleep(0.03)


def slow_io() -> None:
    time.sleep(0.1)


async def pool_hog(request: Request) -> Response:
    loop = asyncio.get_running_loop()
    jobs = [loop.run_in_executor(POOL, slow_io) for _ in range(4)]  # submitted here
    POOL_FULL.set()
    await asyncio.gather(*jobs)
    return PlainTextResponse("pool hogged")


async def pool(request: Request) -> Response:
    await asyncio.get_running_loop().run_in_executor(POOL, blocking_io)
    return PlainTextResponse("pooled")


async def block(request: Request) -> Response:
    time.sleep(0.6)  # past loop_blocked
    return PlainTextResponse("blocked")


APP = Starlette(
    routes=[
        Route("/victim", victim),
        Route("/hog", hog),
        Route("/burst", burst),
        Route("/gc", collect),
        Route("/holder", holder),
        Route("/waiter", waiter),
        Route("/pool", pool),
        Route("/pool-hog", pool_hog),
        Route("/block", block),
    ]
)


@pytest.fixture(scope="module")
def srv() -> Iterator[ThreadServer]:
    deck = FlightDeck(
        APP,
        endpoint=PREFIX,
        slow_request=0.06,
        slow_routes={"/hog": None, "/holder": None, "/pool-hog": None, "/block": None},
        loop_blocked=0.5,
        capture_delay=0.4,
        rate_limit=(100, 60.0),
        cooldown=0.001,  # one route, one kind, many incidents: never hold a trigger back
    )
    with uvicorn_thread(deck) as server:
        yield server
    deck.close()


def _listing(srv: ThreadServer) -> list[dict[str, Any]]:
    status, _, body = http_get(f"{srv.url}{PREFIX}/snapshots")
    assert status == 200
    listing: list[dict[str, Any]] = orjson.loads(body)
    return listing


def _snapshot_of(srv: ThreadServer, path: str) -> tuple[str, dict[str, Any]]:
    """(summary text, document) of the snapshot the slow request to ``path`` fired."""

    def found() -> str | None:
        for item in _listing(srv):
            if (item.get("request") or {}).get("path") == path:
                return str(item["id"])
        return None

    # Generous: on a loaded machine the trigger's capture_delay and build run late.
    ident = wait_until(found, timeout=45)
    status, headers, text = http_get(f"{srv.url}{PREFIX}/snapshots/{ident}?format=summary")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    _, _, raw = http_get(f"{srv.url}{PREFIX}/snapshots/{ident}")
    return text.decode(), orjson.loads(raw)


def _idle(srv: ThreadServer) -> None:
    """No capture pending or queued: a trigger now gets a snapshot of its own (one arriving
    while another is pending would be listed in that one's ``trigger.also``)."""

    def idle() -> bool:
        status, _, body = http_get(f"{srv.url}{PREFIX}/status")
        triggers = orjson.loads(body)["triggers"]
        return status == 200 and not triggers["pending"] and not triggers["queued"]

    wait_until(idle, timeout=15)


def _behind(first: str, ready: threading.Event, victim: str) -> None:
    """Send ``first``, wait until it set ``ready`` on the server, then send ``victim``."""
    ready.clear()
    client = threading.Thread(target=http_get, args=(first,))
    client.start()
    wait_until(ready.is_set, timeout=15)
    http_get(victim)
    client.join(15)


def _adds_up(doc: dict[str, Any]) -> None:
    req = next(r for r in doc["requests"] if r["id"] == doc["trigger"]["request"]["id"])
    b = breakdown(doc, req)
    assert b is not None and b.task is not None
    assert b.accounted == pytest.approx(b.total, rel=0.05), (b.accounted, b.total)


def _head(text: str) -> str:
    return "\n".join(text.splitlines()[:40])


def test_a_loop_hog_under_the_threshold_is_named_as_what_held_the_loop(
    srv: ThreadServer,
) -> None:
    _idle(srv)
    HOG_WAITING.clear()
    hog_client = threading.Thread(target=http_get, args=(f"{srv.url}/hog",))
    hog_client.start()
    wait_until(HOG_WAITING.is_set, timeout=10)
    http_get(f"{srv.url}/victim")
    hog_client.join(15)
    text, doc = _snapshot_of(srv, "/victim")
    head = _head(text)
    why = next(line for line in text.splitlines() if line.startswith("why:"))
    assert "GET /victim 200 took" in why and "waiting for the loop while" in why, why
    assert "GET /hog" in why and ("crunch (test_diagnosis.py" in why or "hog (" in why), why
    hogs = head.split("what held the loop")[1]
    assert "step" in hogs and "GET /hog" in hogs, head
    assert "loop blocked" not in head
    _adds_up(doc)


def test_a_cancellation_burst_is_counted_with_its_site_and_cause(srv: ThreadServer) -> None:
    _idle(srv)
    http_get(f"{srv.url}/burst")
    text, doc = _snapshot_of(srv, "/burst")
    head = _head(text)
    assert "cancellation burst: 200 within" in head, head
    assert "200 × burst_child at burst_child (test_diagnosis.py:" in head, head
    assert "(timeout)" in head
    assert "cancellations: 200 delivered to waiting tasks" in text
    _adds_up(doc)


def test_a_gc_pause_is_a_finding_and_counted_in_the_request(srv: ThreadServer) -> None:
    _idle(srv)
    http_get(f"{srv.url}/gc")
    text, doc = _snapshot_of(srv, "/gc")
    head = _head(text)
    pauses = [e for e in doc["loop"] if e["kind"] == "gc" and e["collected"] >= 390_000]
    assert pauses and pauses[0]["generation"] == 2, doc["loop"]
    line = next(ln for ln in head.splitlines() if "garbage collection paused the loop" in ln)
    assert "(generation 2, " in line and "of it during GET /gc" in line, head
    assert "garbage collection:" in text
    _adds_up(doc)


def test_a_lock_held_across_an_await_shows_where_the_victim_waited(srv: ThreadServer) -> None:
    _idle(srv)
    _behind(f"{srv.url}/holder", LOCK_HELD, f"{srv.url}/waiter")
    text, doc = _snapshot_of(srv, "/waiter")
    why = next(line for line in text.splitlines() if line.startswith("why:"))
    assert "suspended (awaiting Lock.acquire at waiter (test_diagnosis.py:" in why, why
    _adds_up(doc)


def test_a_saturated_thread_pool_shows_queued_time(srv: ThreadServer) -> None:
    _idle(srv)
    _behind(f"{srv.url}/pool-hog", POOL_FULL, f"{srv.url}/pool")
    text, doc = _snapshot_of(srv, "/pool")
    head = _head(text)
    why = next(line for line in text.splitlines() if line.startswith("why:"))
    assert "queued for the thread pool" in why and "running in the thread pool" in why, why
    assert "thread pool saturated: " in head and "blocking_io queued" in head, head
    table = head.split("went:")[1]
    assert "thread pool queued" in table and "blocking_io queued" in table
    _adds_up(doc)


def test_the_loop_blocked_row_of_the_list_names_the_request_it_blocked(
    srv: ThreadServer,
) -> None:
    _idle(srv)
    http_get(f"{srv.url}/block")

    def blocked() -> dict[str, Any] | None:
        # A slow GC in an earlier test may have blocked the loop too: find this block's.
        return next(
            (
                i
                for i in _listing(srv)
                if i["trigger"]["kind"] == "loop_blocked"
                and (i["request"] or {}).get("path") == "/block"
            ),
            None,
        )

    item = wait_until(blocked, timeout=15)
    assert item["request"]["method"] == "GET", item
    status, _, page = http_get(f"{srv.url}{PREFIX}", Accept="text/html")
    assert status == 200
    row = next(r for r in page.decode().split("<tr") if item["id"] in r)
    assert "GET /block" in row, row
