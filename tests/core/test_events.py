"""The event table: the table is consistent, and every event recorded follows its layout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from support import ROOT, make_deck, wait_until

import flightdeck
from flightdeck.core import events as ev

Runner = Callable[[Coroutine[Any, Any, Any]], Any]

KIND_CONSTANTS = {
    name: getattr(ev, name)
    for name in (
        "TASK_CREATE",
        "TASK_STEP",
        "TASK_DONE",
        "TASK_WAIT",
        "LOOP_BLOCK",
        "LOOP_CALLBACK",
        "LOOP_LAG",
        "REQ_START",
        "REQ_END",
        "REGION",
        "LOG",
        "EXECUTOR",
        "MARK",
        "GC",
        "TASK_CANCEL",
        "TASK_SLOW_STEP",
        "REQ_ERROR",
        "LOOP_BLOCK_ONGOING",
    )
}


def test_kinds_and_names_are_unique() -> None:
    assert all(kind == spec.kind for kind, spec in ev.SPECS.items())
    names = [spec.name for spec in ev.SPECS.values()]
    assert len(set(names)) == len(names)
    assert {k: s.name for k, s in ev.SPECS.items()} == ev.NAMES
    assert sorted(KIND_CONSTANTS.values()) == sorted(ev.SPECS)


def test_fields_are_unique_and_typed() -> None:
    known = {"time", "time0", "int", "int?", "str", "str?", "bool", "stack", "frame?"}
    known |= {"client", "pairs?"}
    for spec in ev.SPECS.values():
        fields = [f.name for f in spec.fields]
        assert len(set(fields)) == len(fields), spec.name
        for f in spec.fields:
            assert f.type in known, (spec.name, f.name, f.type)


def test_every_field_position_constant_matches_the_table() -> None:
    # ``<KIND>_<FIELD>`` with the ``t_`` of time fields dropped: REQ_END_STATUS, TASK_STEP_END.
    for kind_name, kind in KIND_CONSTANTS.items():
        for f in ev.SPECS[kind].fields:
            const = f"{kind_name}_{f.name.removeprefix('t_').upper()}"
            assert getattr(ev, const) == ev.SPECS[kind].index(f.name), const


def test_the_c_header_is_generated_from_the_table() -> None:
    # _native.c and _casgi.c take their kinds and layouts from it; a kind added to the table
    # without regenerating it (or to the header by hand) fails here.
    header = (ROOT / ev.HEADER_PATH).read_text()
    assert header == ev.c_header(), "run python tools/gen_kinds.py, then rebuild"
    for kind, spec in ev.SPECS.items():
        assert f"#define K_{spec.const} {kind}\n" in header
        assert ev.native_layout(spec) in header
        assert len(ev.native_layout(spec)) == len(spec.fields)


def test_native_layouts_follow_the_field_types() -> None:
    assert ev.native_layout(ev.SPECS[ev.TASK_CREATE]) == "TIVVInV"
    assert ev.native_layout(ev.SPECS[ev.REQ_END]) == "TNnRVVVRn"
    assert ev.native_layout(ev.SPECS[ev.EXECUTOR]) == "TRRVVInV"


def test_check_event_names_the_bad_field() -> None:
    good = (ev.TASK_STEP, 10, 20, 1, 5)
    ev.check_event(good)
    with pytest.raises(ValueError, match=r"task_step\.t_end"):
        ev.check_event((ev.TASK_STEP, 10, "20", 1, 5))
    with pytest.raises(ValueError, match="4 fields"):
        ev.check_event((ev.TASK_STEP, 10, 20, 1))
    with pytest.raises(ValueError, match="unknown event kind"):
        ev.check_event((99, 1))
    assert ev.end_time(good) == 20
    assert ev.end_time((ev.LOG, 7, "c", "m", None)) == 7


async def _child() -> None:
    await asyncio.sleep(0)


async def _fanout(request: Request) -> JSONResponse:
    flightdeck.log("bench", "fan out")
    with flightdeck.region("children"):
        await asyncio.gather(*(asyncio.create_task(_child()) for _ in range(3)))
    return JSONResponse({"ok": True})


async def _wait(request: Request) -> PlainTextResponse:
    await asyncio.sleep(0.08)  # longer than the wait threshold: a TASK_WAIT
    return PlainTextResponse("waited")


def _sync(request: Request) -> PlainTextResponse:  # run in the thread pool: EXECUTOR
    return PlainTextResponse("sync")


async def _block(request: Request) -> PlainTextResponse:
    time.sleep(0.2)  # holds the loop: LOOP_BLOCK, and a loop_blocked trigger (MARK)
    return PlainTextResponse("blocked")


async def _cancel(request: Request) -> PlainTextResponse:
    task = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return PlainTextResponse("cancelled")


async def _error(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


APP = Starlette(
    routes=[
        Route("/fanout", _fanout),
        Route("/wait", _wait),
        Route("/sync", _sync),
        Route("/block", _block),
        Route("/cancel", _cancel),
        Route("/error", _error),
    ]
)


def test_every_recorded_event_follows_its_layout(run: Runner, decks: list[Any]) -> None:
    deck = make_deck(APP, decks, capture_headers=["user-agent"], loop_blocked=0.1)

    async def main() -> list[tuple[Any, ...]]:
        transport = httpx.ASGITransport(
            app=deck, client=("127.0.0.1", 5555), raise_app_exceptions=False
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in ("/fanout?token=x&page=2", "/wait", "/sync", "/cancel", "/block"):
                assert (await client.get(path)).status_code == 200
            assert (await client.get("/error")).status_code == 500
            # The block is recorded when the heartbeat runs, its trigger's MARK right after.
            await asyncio.sleep(0)
            await asyncio.to_thread(
                wait_until, lambda: deck.recorder.stats["watchdog"]["blocks"] >= 1
            )
        frozen = deck.recorder.freeze()
        events = [e for seg in frozen.iter_segments() for e in seg]
        events += list(frozen.tasks.values()) + list(frozen.requests.values())
        return events

    events = run(main())
    for e in events:
        ev.check_event(e)
    seen = {e[0] for e in events}
    expected = {
        ev.TASK_CREATE,
        ev.TASK_STEP,
        ev.TASK_DONE,
        ev.TASK_WAIT,
        ev.LOOP_BLOCK,
        ev.REQ_START,
        ev.REQ_END,
        ev.REGION,
        ev.LOG,
        ev.EXECUTOR,
        ev.MARK,
    }
    assert expected <= seen, {ev.NAMES[k] for k in expected - seen}
    sites = [e[ev.TASK_CREATE_SITE] for e in events if e[0] == ev.TASK_CREATE]
    assert any(s is not None and s[1] == __file__ for s in sites), sites
