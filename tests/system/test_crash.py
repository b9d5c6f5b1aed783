"""The black box survives the crash: real servers die without shutdown, and the next process
on the same snapshot directory lists a crash snapshot of what the dead one was doing.

Each test runs on both cores (``FLIGHTDECK_NO_EXTENSIONS=1`` in the server's environment for
the pure one). What a crash loses is what the window file's writer had not written yet (at
most its period: ``windowfile.INTERVAL`` on the pure core, a fifth of it on the native one):
the dying routes wait past it first.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support import ROOT, ServerProcess, get_json, http_get, wait_until

from flightdeck.snapshot import windowfile
from flightdeck.snapshot.recovery import _watch_record
from flightdeck.snapshot.store import SnapshotStore

PREFIX = "/debug/flight"
CORES = ["native", "python"]


def _env(directory: Path, core: str) -> dict[str, str]:
    env = {"FLIGHTDECK_DIR": str(directory)}
    if core == "python":
        env["FLIGHTDECK_NO_EXTENSIONS"] = "1"
    return env


def _crashes(srv: ServerProcess) -> list[dict[str, Any]]:
    listing = get_json(srv.url + PREFIX + "/snapshots")
    return [s for s in listing if s["trigger"]["kind"] == "crash"]


def _wait_crash(srv: ServerProcess, timeout: float = 10.0) -> dict[str, Any]:
    crashes = wait_until(lambda: _crashes(srv), timeout=timeout, interval=0.2)
    assert len(crashes) == 1, crashes
    return crashes[0]


def _document(directory: Path, ident: str, core: str) -> dict[str, Any]:
    """The crash snapshot's document, converted on the core that recorded it (a child)."""
    code = (
        "import json, sys; from flightdeck.snapshot.store import SnapshotStore;"
        "s = SnapshotStore(directory=sys.argv[1]).get(sys.argv[2]);"
        "sys.stdout.write(s.dumps('json').decode())"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if core == "python":
        env["FLIGHTDECK_NO_EXTENSIONS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", code, str(directory), ident],
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    import json

    doc: dict[str, Any] = json.loads(out.stdout)
    schema = json.loads((ROOT / "flightdeck/snapshot/schema/flightdeck-1.schema.json").read_text())
    jsonschema.validate(doc, schema)
    return doc


def _summary(directory: Path, ident: str) -> str:
    path = directory / f"{ident}.fdk"
    out = subprocess.run(
        [sys.executable, "-m", "flightdeck", "summary", str(path)],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
        check=True,
    )
    return out.stdout.decode()


def _window_files(directory: Path) -> list[Path]:
    wdir = directory / "windows"
    return sorted(p for p in wdir.iterdir() if p.suffix == ".fdk") if wdir.exists() else []


def _dead(srv: ServerProcess, timeout: float = 30.0) -> int:
    return srv.proc.wait(timeout=timeout)


@pytest.mark.parametrize("core", CORES)
def test_kill9_under_load_leaves_a_crash_snapshot_holding_the_last_second(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    directory = tmp_path / "snaps"
    env = _env(directory, core)
    srv = server(env=env)
    wait_until(lambda: _window_files(directory), timeout=10)
    answered: list[tuple[int, float]] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if http_get(f"{srv.url}/fast?i={i}", timeout=2)[0] == 200:
                    answered.append((i, time.time()))
            except (OSError, http.client.HTTPException):  # the server is killed mid-answer
                return
            time.sleep(0.005)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_until(lambda: answered and answered[-1][1] - answered[0][1] > 2.0, timeout=20)
        t_kill = time.time()
        os.kill(srv.pid, signal.SIGKILL)
        assert _dead(srv) == -signal.SIGKILL
    finally:
        stop.set()
        loader.join(timeout=10)
    # The last request answered at least one writer interval and a margin before the kill.
    before = [i for i, t in answered if t < t_kill - 0.6]
    assert before, answered[-5:]
    marker = before[-1]

    again = server(env=env)
    crash = _wait_crash(again)
    assert crash["pid"] == srv.pid
    assert "ended without shutdown" in crash["trigger"]["reason"]
    doc = _document(directory, crash["id"], core)
    assert doc["trigger"]["kind"] == "crash"
    queries = {r["query"] for r in doc["requests"]}
    assert f"i={marker}" in queries
    # The window reaches into the last second before the kill.
    assert doc["window"]["end"] > t_kill - 1.0
    assert [r for r in doc["requests"] if r["end"] is not None and r["end"] > t_kill - 1.0]
    # The dead process's file is gone; the new one keeps its own.
    files = _window_files(directory)
    assert len(files) == 1 and f"-{again.pid}-" in files[0].name


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_os_exit_and_segfault_leave_a_crash_snapshot_holding_the_fatal_request(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str, how: str
) -> None:
    directory = tmp_path / "snaps"
    env = _env(directory, core)
    srv = server(env=env)
    with pytest.raises(OSError):
        http_get(f"{srv.url}/die?how={how}&ms=1000", timeout=20)
    status = _dead(srv)
    assert status == (3 if how == "exit" else -signal.SIGSEGV)

    again = server(env=env)
    crash = _wait_crash(again)
    assert crash["pid"] == srv.pid
    doc = _document(directory, crash["id"], core)
    fatal = [r for r in doc["requests"] if r["path"] == "/die"]
    assert len(fatal) == 1 and fatal[0]["end"] is None, fatal  # in flight when it died
    # What it was doing: the request in flight, named in the reason and as the trigger's.
    assert "with 1 request in flight (the oldest GET /die, for " in crash["trigger"]["reason"]
    assert crash["request"]["path"] == "/die"
    assert doc["trigger"]["request"]["id"] == fatal[0]["id"]


@pytest.mark.parametrize("core", CORES)
def test_gunicorn_timeout_kill_names_the_blocking_function_and_the_request(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    directory = tmp_path / "snaps"
    env = _env(directory, core)
    srv = server(kind="gunicorn", env=env, args=["--timeout", "2"], ready_path="/pid")
    first = get_json(srv.url + "/pid")["pid"]
    t0 = time.time()
    with pytest.raises(OSError):
        http_get(f"{srv.url}/report?ms=10000", timeout=30)  # the worker is killed meanwhile

    def new_worker() -> int | None:
        try:
            pid: int = get_json(srv.url + "/pid", timeout=2)["pid"]
        except OSError:
            return None
        return pid if pid != first else None

    wait_until(new_worker, timeout=30, interval=0.2)
    crash = _wait_crash(srv)
    # Killed 2-4 s after the request began (gunicorn checks its workers about every second),
    # the crash was listed within 10 s of that.
    assert time.time() - t0 < 14
    assert crash["pid"] == first
    reason = crash["trigger"]["reason"]
    assert "while the loop was blocked for" in reason, reason
    assert "fetch_legacy (serverapps.py:" in reason and "during GET /report" in reason, reason
    assert crash["request"]["path"] == "/report"
    summary = _summary(directory, crash["id"])
    assert "fetch_legacy" in summary and "GET /report" in summary, summary
    assert "ongoing" in summary, summary
    why = next(line for line in summary.splitlines() if line.startswith("why:"))
    assert "running on the loop" in why and "suspended" not in why, why  # held, not waiting
    # The block never ended: the window holds it as recorded while it lasted.
    doc = _document(directory, crash["id"], core)
    blocks = [e for e in doc["loop"] if e["kind"] == "block"]
    assert len(blocks) == 1 and blocks[0]["ongoing"] is True, blocks
    assert blocks[0]["duration"] >= 1.0
    assert blocks[0]["stack"][-1]["function"] == "fetch_legacy"
    assert "GET /report" in blocks[0]["callback"]
    assert doc["trigger"]["request"]["path"] == "/report"  # the window's record of it


@pytest.mark.parametrize("core", CORES)
def test_a_clean_stop_leaves_no_window_file_and_no_crash_snapshot(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    directory = tmp_path / "snaps"
    env = _env(directory, core)
    srv = server(env=env)
    for _ in range(20):
        http_get(srv.url + "/fast")
    assert len(_window_files(directory)) == 1
    srv.stop()  # SIGTERM: uvicorn runs the lifespan's shutdown
    assert _window_files(directory) == []
    assert SnapshotStore(directory=directory).list() == []


@pytest.mark.parametrize("core", CORES)
def test_a_live_sibling_worker_makes_the_crash_snapshot_of_a_killed_one(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    """uvicorn --workers 2 on one directory: one worker is SIGKILLed; a live worker (the
    other, which checks every second, or the replacement, at its start) turns its window
    file into a crash snapshot."""
    directory = tmp_path / "snaps"
    env = _env(directory, core)
    srv = server(env=env, workers=2, ready_path="/pid")
    wait_until(lambda: len(_window_files(directory)) == 2, timeout=20)
    pids = {int(p.name.split("-")[-2]) for p in _window_files(directory)}
    victim = min(pids)
    t_kill = time.time()
    os.kill(victim, signal.SIGKILL)
    crash = _wait_crash(srv, timeout=10)
    assert crash["pid"] == victim
    assert time.time() - t_kill < 10
    # Made by the surviving worker or by the one uvicorn started in the victim's place.
    maker = int(crash["id"].split("-")[-2])
    assert maker != victim and maker != srv.pid
    files = [p.name for p in _window_files(directory)]
    assert not [f for f in files if f"-{victim}-" in f]


@pytest.mark.parametrize("core", CORES)
def test_a_small_window_wrapping_its_ring_under_load_still_leaves_a_readable_crash_snapshot(
    server: Callable[..., ServerProcess], tmp_path: Path, core: str
) -> None:
    """max_bytes of 256 KiB under load: the file's ring wraps (the oldest frames overwritten
    by the newest); the crash snapshot after a SIGKILL is still whole, and the file never
    took more than max_bytes and its fixed overhead."""
    directory = tmp_path / "snaps"
    env = {**_env(directory, core), "FLIGHTDECK_MAX_BYTES": str(256 << 10)}
    srv = server(env=env)
    capacity = (256 << 10) + windowfile.OVERHEAD
    stop = threading.Event()
    sizes: list[int] = []

    def load() -> None:
        while not stop.is_set():
            try:
                http_get(f"{srv.url}/fanout?n=50", timeout=5)
            except (OSError, http.client.HTTPException):  # the server is killed mid-answer
                return

    loaders = [threading.Thread(target=load) for _ in range(2)]
    for t in loaders:
        t.start()
    try:
        # Until the ring has wrapped twice.
        deadline = time.monotonic() + 150
        laps = 0
        while time.monotonic() < deadline and laps < 2:
            status = get_json(srv.url + PREFIX + "/status")
            laps = status["recorder"]["window_file"]["laps"]
            sizes += [p.stat().st_size for p in _window_files(directory)]
            time.sleep(0.2)
        assert laps >= 2, status["recorder"]["window_file"]
        os.kill(srv.pid, signal.SIGKILL)
        _dead(srv)
    finally:
        stop.set()
        for t in loaders:
            t.join(timeout=10)
    assert sizes and max(sizes) <= capacity
    again = server(env=env)
    crash = _wait_crash(again)
    doc = _document(directory, crash["id"], core)
    assert [r for r in doc["requests"] if r["path"] == "/fanout"]
    assert doc["tasks"]


def test_a_step_holding_the_gil_is_named_by_the_native_block_watch(
    server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A step that never releases the GIL stops the watchdog and the window file's writer:
    the native block watch (no GIL) still records the step, and the crash snapshot of the
    process killed in it says the loop was blocked, in which task, during which request."""
    from flightdeck.core.cores import CORE

    if CORE != "native":
        # The watch is C that runs without the GIL; the pure core has no equivalent.
        pytest.skip("the block watch needs the native core: native core is disabled")
    directory = tmp_path / "snaps"
    env = _env(directory, "native")
    srv = server(env=env)
    http_get(srv.url + "/fast")
    hung = threading.Thread(target=lambda: _swallow(f"{srv.url}/backtrack"), daemon=True)
    hung.start()
    # The server cannot answer while the step holds the GIL; the watch's record in the
    # window file's last bytes, rewritten every 0.05 s while the step runs, says how long
    # it has held the loop.
    wait_until(lambda: _watched_for(directory) >= 1.5, timeout=30, interval=0.05)
    os.kill(srv.pid, signal.SIGKILL)
    _dead(srv)
    again = server(env=env)
    crash = _wait_crash(again)
    reason = crash["trigger"]["reason"]
    assert "while the loop was blocked for" in reason, reason
    assert "never released the GIL" in reason and "during GET /backtrack" in reason, reason
    seconds = float(reason.split("blocked for ")[1].split(" s")[0])
    assert seconds >= 1.5, reason  # the watch had seen the step hold the loop that long
    doc = _document(directory, crash["id"], "native")
    blocks = [e for e in doc["loop"] if e["kind"] == "block" and e.get("ongoing")]
    assert len(blocks) == 1 and "GET /backtrack" in blocks[0]["callback"], blocks
    assert doc["trigger"]["request"]["path"] == "/backtrack"


def _watched_for(directory: Path) -> float:
    """Seconds the native block watch has seen one step hold the loop (0 if none)."""
    files = _window_files(directory)
    if not files:
        return 0.0
    with open(files[0], "rb") as f:
        f.seek(-windowfile.SLOT, os.SEEK_END)
        record = _watch_record(f.read())
    return (record[1] - record[0]) / 1e9 if record is not None else 0.0


def _swallow(url: str) -> None:
    try:
        http_get(url, timeout=30)
    except OSError:
        pass
