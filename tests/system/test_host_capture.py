"""One capture across all workers: ``uvicorn --workers 4`` on one snapshot directory, and a
capture of scope ``host`` holds the four processes' windows, each drawn as its own group.

Each test runs on both cores (``FLIGHTDECK_NO_EXTENSIONS=1`` in the server's environment for
the pure one: the workers record and the converter child reads on that core).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from browser import ARGS, CHROMIUM, browser_only
from support import ROOT, ServerProcess, get_json, http_get, wait_until

from flightdeck.snapshot import recovery

PREFIX = "/debug/flight"
CORES = ["native", "python"]
WORKERS = 4
SCHEMA = json.loads((ROOT / "flightdeck/snapshot/schema/flightdeck-1.schema.json").read_text())


def _env(directory: Path | None, core: str) -> dict[str, str]:
    env = {"FLIGHTDECK_DIR": str(directory)} if directory is not None else {}
    if core == "python":
        env["FLIGHTDECK_NO_EXTENSIONS"] = "1"
        env["FLIGHTDECK_EXPECT_NATIVE"] = "0"
    return env


def _post(url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _window_pids(directory: Path) -> set[int]:
    wdir = directory / "windows"
    if not wdir.exists():
        return set()
    return {int(p.name.split("-")[-2]) for p in wdir.iterdir() if p.name.endswith(".fdk")}


def _four_workers(
    server: Callable[..., ServerProcess], directory: Path, core: str, **kw: Any
) -> tuple[ServerProcess, set[int]]:
    """The server with four workers recording, each having answered requests."""
    srv = server(env=_env(directory, core), workers=WORKERS, ready_path="/pid", **kw)
    pids = wait_until(lambda: len(_window_pids(directory)) == WORKERS and _window_pids(directory))
    answered: dict[int, int] = {}

    def every_worker_answered() -> bool:
        # A fresh connection each time: the kernel hands it to any of the workers.
        pid = json.loads(http_get(srv.url + "/pid")[2])["pid"]
        answered[pid] = answered.get(pid, 0) + 1
        return set(answered) == pids and min(answered.values()) >= 2

    wait_until(every_worker_answered, timeout=60, interval=0.005)
    _written_since(directory, time.perf_counter_ns())
    return srv, pids


def _state_time(path: Path) -> int | None:
    """The writer's clock (perf_counter_ns, one clock for every process) at the last state a
    window file holds, or None."""
    try:
        t = recovery.parse(path.read_bytes()).state.get("t_now")
    except (OSError, ValueError):
        return None
    return t if isinstance(t, int) else None


def _written_since(directory: Path, t0: int) -> None:
    """Wait until every window file under ``directory`` has what its process recorded before
    ``t0``: a write that began after t0 (a state written at or after t0, then a later one:
    the second write's events were frozen after the first had ended)."""
    first: dict[Path, int] = {}

    def written() -> bool:
        done = True
        for path in (directory / "windows").glob("*.fdk"):
            t = _state_time(path)
            if t is None or t < t0:
                done = False
            elif path not in first:
                first[path] = t
                done = False
            elif t == first[path]:
                done = False
        return done

    wait_until(written, timeout=60, interval=0.02)


def _document(srv: ServerProcess, ident: str) -> dict[str, Any]:
    status, _, body = http_get(f"{srv.url}{PREFIX}/snapshots/{ident}?format=json", timeout=120)
    assert status == 200, body[:300]
    doc: dict[str, Any] = json.loads(body)
    # A triggered capture's trigger.request is the trigger's record of the request (it has
    # no ``tasks``, whatever the scope): the schema is checked on the rest of the document.
    jsonschema.validate({**doc, "trigger": {**doc["trigger"], "request": None}}, SCHEMA)
    return doc


def _check_document(doc: dict[str, Any], pids: set[int]) -> None:
    processes = [p for p in doc["processes"] if not p.get("error")]
    assert {p["pid"] for p in processes} == pids
    assert len(processes) == WORKERS
    assert processes[0]["pid"] == doc["process"]["pid"]  # the capturing one first
    assert {r["pid"] for r in doc["requests"]} == pids
    assert {t["pid"] for t in doc["tasks"]} == pids
    assert all("pid" in e for e in doc["loop"])
    request_ids = [r["id"] for r in doc["requests"]]
    task_ids = [t["id"] for t in doc["tasks"]]
    assert len(request_ids) == len(set(request_ids))
    assert len(task_ids) == len(set(task_ids))
    # Every reference names a task or request of the same process.
    tasks = {t["id"]: t for t in doc["tasks"]}
    requests = {r["id"]: r for r in doc["requests"]}
    for r in doc["requests"]:
        for tid in r["tasks"]:
            assert tasks[tid]["pid"] == r["pid"]
    for t in doc["tasks"]:
        if t["request"] is not None and t["request"] in requests:
            assert requests[t["request"]]["pid"] == t["pid"]
        if t["parent"] is not None and t["parent"] in tasks:
            assert tasks[t["parent"]]["pid"] == t["pid"]
    # Each worker's own /pid requests are in its own lanes.
    for pid in pids:
        paths = [r["path"] for r in doc["requests"] if r["pid"] == pid]
        assert paths.count("/pid") >= 2, (pid, paths)


@pytest.mark.parametrize("core", CORES)
def test_a_host_capture_of_four_workers_holds_four_processes_lanes(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    directory = tmp_path / "snaps"
    srv, pids = _four_workers(server, directory, core)
    status, body = _post(f"{srv.url}{PREFIX}/snapshots?scope=host&reason=all-workers")
    assert status == 201, body
    assert body["scope"] == "host"
    assert {p["pid"] for p in body["processes"]} == pids
    listing = get_json(srv.url + PREFIX + "/snapshots")
    entry = next(s for s in listing if s["id"] == body["id"])
    assert set(entry["processes"]) == pids
    stored = (directory / f"{body['id']}.fdk").stat().st_size
    assert entry["size"] == stored
    # The list page offers the capture of all workers, and says what each capture holds.
    status, _, page = http_get(srv.url + PREFIX + "/", Accept="text/html")
    assert status == 200
    assert f'data-url="{PREFIX}/snapshots?scope=host"' in page.decode()
    assert "(+3 processes)" in page.decode()

    doc = _document(srv, body["id"])
    _check_document(doc, pids)
    assert doc["trigger"]["reason"] == "all-workers"

    # Perfetto JSON: one process (pid) group of tracks per worker, the capturing one first.
    status, _, raw = http_get(f"{srv.url}{PREFIX}/snapshots/{body['id']}?format=perfetto")
    assert status == 200
    events = json.loads(raw)["traceEvents"]
    named = {e["pid"] for e in events if e["name"] == "process_name"}
    assert named == pids
    for pid in pids:
        tracks = {
            e["args"]["name"] for e in events if e["name"] == "thread_name" and e["pid"] == pid
        }
        assert "event loop" in tracks and "requests" in tracks, (pid, tracks)
    flows = [e["id"] for e in events if e["ph"] == "s"]
    assert len(flows) == len(set(flows))

    # The summary names the process of each finding, and lists the four.
    status, _, text = http_get(f"{srv.url}{PREFIX}/snapshots/{body['id']}?format=summary")
    assert status == 200
    summary = text.decode()
    line = next(x for x in summary.splitlines() if x.startswith("processes:"))
    assert all(f"pid {pid}" in line for pid in pids), line
    block = summary.split("what stands out:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert all(x == "  nothing" or x.startswith("  - pid ") for x in block), block


@pytest.mark.parametrize("core", CORES)
def test_the_protobuf_trace_has_a_process_per_worker(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace

    def packets(data: bytes) -> list[Any]:
        out = []
        for packet in Trace.FromString(data).packet:
            if packet.HasField("compressed_packets"):
                out += Trace.FromString(zlib.decompress(packet.compressed_packets)).packet
            else:
                out.append(packet)
        return out

    directory = tmp_path / "snaps"
    srv, pids = _four_workers(server, directory, core)
    status, body = _post(f"{srv.url}{PREFIX}/snapshots?scope=host")
    assert status == 201, body
    status, _, raw = http_get(f"{srv.url}{PREFIX}/snapshots/{body['id']}?format=pftrace")
    assert status == 200
    all_packets = packets(raw)
    descriptors = [p.track_descriptor for p in all_packets if p.HasField("track_descriptor")]
    processes = {d.uuid: d.process.pid for d in descriptors if d.HasField("process")}
    assert sorted(processes.values()) == sorted(pids)
    uuids = [d.uuid for d in descriptors]
    assert len(uuids) == len(set(uuids))
    loops = [d for d in descriptors if d.name == "event loop"]
    assert sorted(processes[d.parent_uuid] for d in loops) == sorted(pids)
    # Each flow id begins once and ends once: the workers' flows never share an id.
    begun = [f for p in all_packets if p.HasField("track_event") for f in p.track_event.flow_ids]
    ended = [
        f
        for p in all_packets
        if p.HasField("track_event")
        for f in p.track_event.terminating_flow_ids
    ]
    assert len(begun) == len(set(begun)) and sorted(begun) == sorted(ended)


@browser_only
@pytest.mark.browser
@pytest.mark.parametrize("core", CORES)
def test_the_html_timeline_draws_a_group_of_rows_per_worker(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    from playwright.sync_api import sync_playwright

    directory = tmp_path / "snaps"
    srv, pids = _four_workers(server, directory, core)
    status, body = _post(f"{srv.url}{PREFIX}/snapshots?scope=host")
    assert status == 201, body
    # The document first: a worker missing from the page is then the page's fault, not the
    # capture's.
    _check_document(_document(srv, body["id"]), pids)
    status, _, page = http_get(f"{srv.url}{PREFIX}/snapshots/{body['id']}?format=html")
    assert status == 200
    path = tmp_path / "host.html"
    path.write_bytes(page)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            # A tall page to start with; made taller below when the rows need it.
            tab = browser.new_page(viewport={"width": 1400, "height": 2400})
            errors: list[str] = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(path.resolve().as_uri())
            tab.wait_for_function("window.flightdeck && window.flightdeck.ready", timeout=30_000)
            fd = "window.flightdeck"
            assert set(tab.evaluate(f"{fd}.processes")) == pids
            rows = tab.evaluate(f"{fd}.rows")
            owners = tab.evaluate(f"{fd}.rowProcesses")
            # Each worker's rows are together (one group), in the order of doc.processes.
            order = [p for i, p in enumerate(owners) if i == 0 or owners[i - 1] != p]
            assert order == tab.evaluate(f"{fd}.processes"), order
            for pid in pids:
                mine = [r for r, p in zip(rows, owners, strict=True) if p == pid]
                assert f"pid {pid} · event loop" in mine, mine
                assert f"pid {pid} · requests" in mine, mine
            # Only rows on screen are painted: make the page tall enough for all the rows of
            # the whole window (a worker that answered many requests has many task rows, and
            # rows without anything in view fold away: counted after fit()), then draw again.
            # The page's resize listener runs inside dispatchEvent, before fit() draws. The
            # last worker's rows are the bottom ones: a canvas short of them leaves it out.
            # drawnRows() counts what each row painted (drawn() keeps the first 20,000 items).
            # The canvas is the page less its header and panels: grown until it holds the axis
            # (22 px) and every row (20 px each).
            tab.evaluate(f"{fd}.fit()")
            visible = len(tab.evaluate(f"{fd}.visibleRows()"))
            need = 22 + 20 * (visible + 2)
            height, canvas = 2400, 0
            for _ in range(3):
                tab.set_viewport_size({"width": 1400, "height": height})
                tab.evaluate(f"window.dispatchEvent(new Event('resize')); {fd}.fit()")
                canvas = tab.evaluate(
                    "document.getElementById('timeline').getBoundingClientRect().height"
                )
                if canvas >= need:
                    break
                height += int(need - canvas) + 20
            painted: dict[str, int] = tab.evaluate(f"{fd}.drawnRows()")
            drawn_pids = {int(row.split(" ")[1]) for row in painted if row.startswith("pid ")}
            assert drawn_pids == pids, (
                tab.evaluate(f"{fd}.doc.processes.map(p => [p.pid, p.error || null])"),
                {"rows": visible, "canvas": canvas, "need": need, "items": sum(painted.values())},
            )
            assert "processes" in tab.inner_text("#process")
            assert errors == []
        finally:
            browser.close()


@pytest.mark.parametrize("core", CORES)
def test_a_triggered_capture_with_capture_scope_host(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    directory = tmp_path / "snaps"
    srv, pids = _four_workers(
        server, directory, core, options={"capture_scope": "host", "slow_request": 0.3}
    )
    status, _, _ = http_get(srv.url + "/slow?ms=400")
    assert status == 200

    def triggered() -> list[dict[str, Any]]:
        listing = get_json(srv.url + PREFIX + "/snapshots")
        return [s for s in listing if s["trigger"]["kind"] == "slow_request"]

    found = wait_until(triggered, timeout=20, interval=0.2)
    assert set(found[0]["processes"]) == pids
    doc = _document(srv, found[0]["id"])
    _check_document(doc, pids)
    assert doc["trigger"]["request"]["path"] == "/slow"
    # The trigger's request is the capturing process's: its id is the one it recorded.
    mine = [r for r in doc["requests"] if r["pid"] == doc["process"]["pid"]]
    assert doc["trigger"]["request"]["id"] in {r["id"] for r in mine}


@pytest.mark.parametrize("core", CORES)
def test_without_a_directory_scope_host_is_refused(
    server: Callable[..., ServerProcess], core: str
) -> None:
    srv = server(env=_env(None, core))
    status, body = _post(f"{srv.url}{PREFIX}/snapshots?scope=host")
    assert status == 400
    assert "snapshot directory" in body["error"], body
    status, body = _post(f"{srv.url}{PREFIX}/snapshots?scope=everything")
    assert status == 400
    assert "process, host" in body["error"], body
    status, _ = _post(f"{srv.url}{PREFIX}/snapshots")  # the process scope still works
    assert status == 201
    status, _, page = http_get(srv.url + PREFIX + "/", Accept="text/html")
    assert status == 200 and b"capture-host" not in page


@pytest.mark.parametrize("core", CORES)
def test_a_worker_killed_at_the_capture_and_an_unreadable_file_do_not_fail_it(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    """A worker SIGKILLed just before the capture (its file is read, skipped as ended, or
    already recovered: whichever the race gives) and a window file a live process holds but
    that is not a window file: the capture is made, and names the unreadable one."""
    directory = tmp_path / "snaps"
    srv, pids = _four_workers(server, directory, core)
    bogus = directory / "windows" / "otherhost-4000000-0badf11e.fdk"
    fd = os.open(bogus, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live process's, to a reader
        os.write(fd, b"not a window file" * 10)
        victim = max(pids)
        os.kill(victim, signal.SIGKILL)
        status, body = _post(f"{srv.url}{PREFIX}/snapshots?scope=host")
        assert status == 201, body
        listed = {p["pid"]: p for p in body["processes"]}
        assert "error" in listed[4000000]
        assert "error" not in listed[int(body["id"].split("-")[-2])]
        doc = _document(srv, body["id"])
        errors = {p["pid"]: p["error"] for p in doc["processes"] if p.get("error")}
        assert 4000000 in errors, doc["processes"]
        # The victim's window, if it was read, and never a replacement's only: uvicorn may
        # have started one meanwhile, with no request yet.
        read = {p["pid"] for p in doc["processes"] if not p.get("error")}
        assert pids - {victim} <= read
        assert pids - {victim} <= {r["pid"] for r in doc["requests"]} <= pids
    finally:
        os.close(fd)
        bogus.unlink()


@pytest.mark.parametrize("core", CORES)
def test_gunicorn_preload_workers_are_captured_together(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    """gunicorn with uvicorn's worker and ``--preload``: the app (and its FlightDeck) is
    made in the arbiter, each worker records after the fork in a window file of its own,
    and a host capture holds both workers (never the arbiter, which does not record)."""
    directory = tmp_path / "snaps"
    srv = server(
        kind="gunicorn", workers=2, env=_env(directory, core), args=["--preload"], ready_path="/pid"
    )
    pids = wait_until(lambda: len(_window_pids(directory)) == 2 and _window_pids(directory))
    assert srv.pid not in pids
    seen: set[int] = set()
    wait_until(
        lambda: seen.add(json.loads(http_get(srv.url + "/pid")[2])["pid"]) or seen == pids,
        timeout=60,
        interval=0.005,
    )
    _written_since(directory, time.perf_counter_ns())
    status, body = _post(f"{srv.url}{PREFIX}/snapshots?scope=host")
    assert status == 201, body
    doc = _document(srv, body["id"])
    assert {p["pid"] for p in doc["processes"]} == pids
    assert {r["pid"] for r in doc["requests"] if r["path"] == "/pid"} == pids
