"""End to end: the example FastAPI app under a real uvicorn, on asyncio and uvloop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flightdeck import Snapshot

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(fn: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval)
    raise AssertionError(f"condition not met before the deadline (last: {last!r})")


@pytest.fixture(params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    env = dict(os.environ, FLIGHTDECK_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("FLIGHTDECK_TOKEN", None)
    # Above start-up stalls of a loaded machine, below the 300 ms block the tests make: a
    # stray loop_blocked capture would take in (trigger.also) the trigger a test waits for.
    env["FLIGHTDECK_LOOP_BLOCKED"] = "0.2"
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples" / "fastapi_app")]
    cmd += ["app:app", "--host", "127.0.0.1", "--port", str(port), "--loop", request.param]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: httpx.get(base + "/fast", timeout=1).status_code == 200)
        yield base, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def snapshot_of(base: str, kind: str) -> Snapshot:
    def find() -> str | None:
        for item in httpx.get(base + "/debug/flight/snapshots", timeout=5).json():
            if item["trigger"]["kind"] == kind:
                return str(item["id"])
        return None

    ident = poll(find)
    r = httpx.get(f"{base}/debug/flight/snapshots/{ident}", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-disposition"].startswith("attachment")
    return Snapshot.load(r.content)


def test_block_fanout_and_executor_all_named(server: tuple[str, Path]) -> None:
    base, directory = server
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/fanout", params={"n": 8}).json() == {"tasks": 8}
        assert c.get("/sync", params={"ms": 60}).status_code == 200
        assert c.get("/block", params={"ms": 300}).status_code == 200
    snap = snapshot_of(base, "loop_blocked")
    doc = snap.to_dict()
    assert doc["process"]["loop"] in ("asyncio", "uvloop")
    assert all(doc["process"]["coverage"].values())

    # The blocking call, named with its stack (taken while the loop was blocked).
    block = max(doc["loop"], key=lambda e: e["duration"] if e["kind"] == "block" else 0)
    assert block["kind"] == "block" and block["duration"] >= 0.25
    functions = [f["function"] for f in block["stack"]]
    assert "block" in functions
    assert "/block" in (block["callback"] or "")
    assert "app.py" in doc["trigger"]["reason"]

    # The fan-out: 8 tasks of the /fanout request, each with steps and suspended gaps.
    fan = next(r for r in doc["requests"] if r["path"] == "/fanout")
    assert fan["route"] == "/fanout" and fan["status"] == 200
    workers = [t for t in doc["tasks"] if (t["coro"] or "").endswith("_work")]
    assert len(workers) == 8
    for t in workers:
        assert t["request"] == fan["id"] and t["state"] == "done", t
    gaps = [s[2] for t in workers for s in t["steps"][1:]]
    assert gaps and all(g is not None and g >= 0 for g in gaps)
    assert max(gaps) >= 0.03  # _work(4) sleeps 40 ms

    # The sync route ran in the thread pool, attributed to its request.
    sync = next(r for r in doc["requests"] if r["path"] == "/sync")
    jobs = [
        e for e in doc["events"] if e["kind"] == "executor" and e["func"].endswith("sync_route")
    ]
    assert len(jobs) == 1 and jobs[0]["request"] == sync["id"]
    assert jobs[0]["duration"] >= 0.05

    # Kept on disk too, in the shared directory.
    assert (directory / f"{snap.id}.fdk").exists()


def test_error_and_hung_request_snapshots_and_exports(server: tuple[str, Path]) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/error").status_code == 500
        err = snapshot_of(base, "exception")
        assert err.trigger["request"]["path"] == "/error"
        assert "RuntimeError" in err.trigger["reason"]
        req = next(r for r in err.to_dict()["requests"] if r["path"] == "/error")
        assert req["error"] == "RuntimeError" and req["status"] == 500

        assert c.get("/slow", params={"ms": 1300}).status_code == 200
        slow = snapshot_of(base, "slow_request")
        assert slow.trigger["request"]["path"] == "/slow"

        perfetto = c.get(f"/debug/flight/snapshots/{slow.id}", params={"format": "perfetto"})
        assert perfetto.status_code == 200 and "traceEvents" in perfetto.json()
        page = c.get("/debug/flight/snapshots/latest", params={"format": "html"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<canvas" in page.text
        status = c.get("/debug/flight/status").json()
        assert status["triggers"]["fired"]["exception"] == 1
        assert status["dropped"] == 0


def test_example_takes_its_thresholds_from_the_environment(tmp_path: Path) -> None:
    """The README's environment table works on the example as served."""
    port = free_port()
    env = dict(os.environ, FLIGHTDECK_DIR=str(tmp_path), FLIGHTDECK_SLOW_REQUEST="0.05")
    env["FLIGHTDECK_LOOP_BLOCKED"] = "off"
    env.pop("FLIGHTDECK_TOKEN", None)
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples" / "fastapi_app")]
    cmd += ["app:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: httpx.get(base + "/fast", timeout=1).status_code == 200)
        # 150 ms is slow under FLIGHTDECK_SLOW_REQUEST=0.05 (the default, 1 s, would not fire)
        assert httpx.get(base + "/slow", params={"ms": 150}, timeout=10).status_code == 200
        kinds = poll(
            lambda: [
                item["trigger"]["kind"]
                for item in httpx.get(base + "/debug/flight/snapshots", timeout=2).json()
            ]
        )
        assert kinds == ["slow_request"]
        status = httpx.get(base + "/debug/flight/status", timeout=2).json()
        assert "loop_blocked" not in status["triggers"]["fired"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_make_run_installs_only_what_running_needs() -> None:
    """`make run` installs the `example` extra, which holds no dev tool."""
    import tomllib

    dry = subprocess.run(
        ["make", "-n", "run", "VENV=/nonexistent-venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in dry.splitlines() if "pip install" in line and "-e" in line]
    assert installs == ["/nonexistent-venv/bin/python -m pip install -q -e '.[example]'"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {req.split("[")[0].split(">")[0].split(";")[0].strip() for req in extras["example"]}
    assert names == {"uvicorn", "uvloop", "fastapi"}
    example_imports = (ROOT / "examples" / "fastapi_app" / "app.py").read_text()
    assert "import fastapi" in example_imports or "from fastapi" in example_imports


def _summary_for(base: str, path: str) -> str:
    def find() -> str | None:
        for item in httpx.get(base + "/debug/flight/snapshots", timeout=5).json():
            if (item.get("request") or {}).get("path") == path:
                return str(item["id"])
        return None

    ident = poll(find)
    r = httpx.get(f"{base}/debug/flight/snapshots/{ident}?format=summary", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def test_incident_routes_are_named_by_the_summary(server: tuple[str, Path]) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/incident/timeouts", params={"n": 100}).json() == {"timed_out": 100}
        head = "\n".join(_summary_for(base, "/incident/timeouts").splitlines()[:40])
        assert "cancellation burst: 100 within" in head, head
        assert "100 × _fetch_with_timeout at _fetch_with_timeout (app.py:" in head, head
        assert c.get("/incident/pool").status_code == 200
        head = "\n".join(_summary_for(base, "/incident/pool").splitlines()[:40])
        why = next(line for line in head.splitlines() if line.startswith("why:"))
        assert "queued for the thread pool" in why, head
        assert "thread pool saturated: " in head and "_blocking_io queued" in head, head
