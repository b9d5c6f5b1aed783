"""The shipped JSON Schema validates snapshots of real programs (recorder and ASGI app)."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import jsonschema
import pytest
import uvicorn
import uvloop

import flightdeck
from flightdeck import FlightDeck, FlightRecorder, Snapshot
from flightdeck.instrument.context import current_request
from flightdeck.snapshot.document import schema

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s, format_checker=jsonschema.FormatChecker())


def check_integrity(doc: dict[str, Any]) -> None:
    """Nothing refers to something that is not in the document."""
    tasks = {t["id"] for t in doc["tasks"]}
    requests = {r["id"] for r in doc["requests"]}
    assert len(tasks) == len(doc["tasks"]) and len(requests) == len(doc["requests"])
    for t in doc["tasks"]:
        assert t["parent"] is None or t["parent"] in tasks
        assert t["request"] is None or t["request"] in requests
    for r in doc["requests"]:
        assert set(r["tasks"]) <= tasks
    for e in doc["events"]:
        if e.get("task") is not None:
            assert e["task"] in tasks


def test_schema_is_shipped_in_the_package() -> None:
    path = ROOT / "flightdeck" / "snapshot" / "schema" / "flightdeck-1.schema.json"
    assert path.is_file()
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_rejects_wrong_documents(validator: jsonschema.Draft202012Validator) -> None:
    assert not validator.is_valid({"format": "flightdeck/1"})
    assert not validator.is_valid([])


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    return uvloop.run if request.param == "uvloop" else asyncio.run


def _sync_job(ms: int) -> int:
    time.sleep(ms / 1000)
    return ms


def test_recorder_program_snapshot_is_valid(
    run: Runner, validator: jsonschema.Draft202012Validator
) -> None:
    async def leaf(i: int) -> int:
        await asyncio.sleep(0.002 * i)
        return i

    async def boom() -> None:
        raise ValueError("x")

    async def stuck(ev: asyncio.Event) -> None:
        await ev.wait()

    async def handler() -> None:
        current_request.set(None)
        with flightdeck.region("fanout"):
            await asyncio.gather(*(leaf(i) for i in range(5)))
        flightdeck.log("cat", "message")
        time.sleep(0.06)  # blocks the loop
        await asyncio.get_running_loop().run_in_executor(None, _sync_job, 20)
        await anyio.to_thread.run_sync(_sync_job, 5)
        await asyncio.sleep(0.03)  # a wait over the threshold

    async def main() -> dict[str, Any]:
        rec = FlightRecorder(loop_blocked=0.03, wait_threshold=0.02)
        rec.start()
        try:
            ev = asyncio.Event()
            pending = asyncio.create_task(stuck(ev), name="stuck")
            await asyncio.create_task(handler(), name="handler")
            with pytest.raises(ValueError):
                await asyncio.create_task(boom())
            wd = rec._watchdog
            deadline = time.monotonic() + 10
            while wd is not None and wd.blocks < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            rec.maintain(force_seal=True)  # some events in a sealed segment, some not
            flightdeck.log("after", "seal")
            snap = await rec.capture("schema")
            ev.set()
            await pending
            return Snapshot.load(snap.dumps()).to_dict()
        finally:
            rec.stop()

    doc = run(main())
    validator.validate(doc)
    check_integrity(doc)
    kinds = {e["kind"] for e in doc["events"]}
    assert {"region", "log", "executor"} <= kinds
    assert any(e["kind"] == "block" for e in doc["loop"])
    states = {t["state"] for t in doc["tasks"]}
    assert {"pending", "done", "error"} <= states
    assert any(t["waits"] for t in doc["tasks"])
    assert any(t["awaiting"] for t in doc["tasks"])


# -- a real ASGI server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    spec = importlib.util.spec_from_file_location(
        "flightdeck_example_app", ROOT / "examples" / "fastapi_app" / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = FlightDeck(module.api, loop_blocked=0.05, slow_request=None, cooldown=60.0)
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, loop=request.param, log_level="warning", lifespan="on"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(20)
        assert not thread.is_alive()


def test_asgi_app_snapshot_is_valid(
    server: str, validator: jsonschema.Draft202012Validator
) -> None:
    # No keep-alive: a request whose handler raised may leave its connection closed.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server, timeout=20, limits=limits) as client:
        assert client.get("/fanout", params={"n": 6}).status_code == 200
        assert client.get("/block", params={"ms": 120}).status_code == 200
        assert client.get("/sync", params={"ms": 60}).status_code == 200
        assert client.get("/error").status_code == 500
        assert client.get("/stream", params={"chunks": 3}).status_code == 200
        doc: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        # The block is in the window once its automatic snapshot is listed; manual captures
        # are rate-limited, so they are not spent polling for it.
        while not any(
            item["trigger"]["kind"] == "loop_blocked"
            for item in client.get("/debug/flight/snapshots").json()
        ):
            assert time.monotonic() < deadline, "the block was never recorded"
            time.sleep(0.02)
        while time.monotonic() < deadline:
            made = client.post("/debug/flight/snapshots")
            if made.status_code == 409:  # a triggered snapshot is being built: try again
                time.sleep(0.02)
                continue
            assert made.status_code == 201, made.text
            got = client.get(f"/debug/flight/snapshots/{made.json()['id']}")
            assert got.status_code == 200
            doc = got.json()
            if any(e["kind"] == "block" for e in doc["loop"]):
                break
            time.sleep(0.02)
        # Triggered snapshots too: their trigger names a request (the 500 may have joined the
        # block's pending capture, in its trigger.also), with the request's tasks.
        triggered = [
            client.get(f"/debug/flight/snapshots/{item['id']}").json()
            for item in client.get("/debug/flight/snapshots").json()
            if item["trigger"]["kind"] != "manual"
        ]
    # The schema sees the frames of the request that raised, not only nulls.
    assert any(r["error_stack"] for r in doc["requests"] if r["path"] == "/error"), doc
    validator.validate(doc)
    check_integrity(doc)
    for snap in triggered:
        validator.validate(snap)
        check_integrity(snap)
    named = [
        entry["request"]
        for snap in triggered
        for entry in (snap["trigger"], *snap["trigger"].get("also", ()))
        if entry["kind"] in ("server_error", "exception")
    ]
    assert named, [s["trigger"] for s in triggered]
    assert all(r["path"] == "/error" and isinstance(r["tasks"], list) for r in named)
    # The blocking call, the fan-out and the executor job, all three named.
    by_path = {r["path"]: r for r in doc["requests"]}
    assert {"/fanout", "/block", "/sync", "/error", "/stream"} <= set(by_path)
    block = next(e for e in doc["loop"] if e["kind"] == "block")
    assert block["duration"] >= 0.1
    assert any(f["function"] == "block" and f["file"].endswith("app.py") for f in block["stack"])
    fan_tasks = [t for t in doc["tasks"] if t["coro"] and t["coro"].endswith("_work")]
    assert len(fan_tasks) == 6
    assert len({t["parent"] for t in fan_tasks}) == 1 and fan_tasks[0]["parent"] is not None
    assert all(t["request"] == by_path["/fanout"]["id"] for t in fan_tasks)
    execs = [e for e in doc["events"] if e["kind"] == "executor" and "sync_route" in e["func"]]
    assert len(execs) == 1 and execs[0]["duration"] >= 0.055
    assert execs[0]["request"] == by_path["/sync"]["id"]
    assert by_path["/error"]["status"] == 500
