"""Every ASGI server serves a FlightDeck-wrapped app, on the core this run uses.

Each case starts one real server (uvicorn with h11 and httptools on asyncio and uvloop,
gunicorn with uvicorn's worker, hypercorn's asyncio and uvloop workers, granian, daphne)
as a subprocess on a free loopback port, serving one framework's app from
``tests/frameworkapps.py`` (raw ASGI, Starlette, FastAPI, Litestar, Quart, Django: each
under at least one server; FastAPI's also through ``app.add_middleware``), and checks
against that one process: the request path taken
(native or pure, as the run asks), a 200, a streamed response, a 5xx snapshot, a
slow-request snapshot, the requests in a snapshot's window, the app's lifespan startup and
shutdown where the server has a lifespan, and no traceback in the server's log.

The matrix runs once per core: on Python 3.11 only, where CI runs the suite on the native
core and again with ``FLIGHTDECK_NO_EXTENSIONS=1`` (the servers inherit that variable).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from frameworkapps import CHUNKS
from support import TESTS, free_port, http_get, wait_until

from flightdeck.asgi import accel

pytestmark = pytest.mark.skipif(
    sys.version_info[:2] != (3, 11),
    reason="the server matrix runs once per core, on 3.11 (CI runs both cores there)",
)

BIN = Path(sys.executable).parent
SLOW_MS = 300


@dataclass(frozen=True)
class Case:
    server: str
    framework: str
    argv: tuple[str, ...]  # {port} is replaced
    lifespan: bool = True  # the server runs the ASGI lifespan protocol
    add_middleware: bool = False  # app.add_middleware(FlightDeck) instead of FlightDeck(app)

    def command(self, port: int) -> list[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]


def _argv(program: str, args: str) -> tuple[str, ...]:
    return (program, *args.split())


def _uvicorn(http: str, loop: str) -> tuple[str, ...]:
    return _argv(
        sys.executable,
        f"-m uvicorn --host 127.0.0.1 --port {{port}} --http {http} --loop {loop}"
        " --lifespan on frameworkapps:app",
    )


def _hypercorn(worker: str) -> tuple[str, ...]:
    return _argv(str(BIN / "hypercorn"), f"-b 127.0.0.1:{{port}} -k {worker} frameworkapps:app")


CASES = [
    Case("uvicorn-h11-asyncio", "raw", _uvicorn("h11", "asyncio")),
    Case("uvicorn-httptools-uvloop", "starlette", _uvicorn("httptools", "uvloop")),
    Case("uvicorn-httptools-asyncio", "fastapi", _uvicorn("httptools", "asyncio")),
    Case("uvicorn-h11-uvloop", "quart", _uvicorn("h11", "uvloop")),
    Case(
        "gunicorn-uvicorn-worker",
        "fastapi",
        _argv(
            str(BIN / "gunicorn"),
            "-b 127.0.0.1:{port} -w 1 -k uvicorn_worker.UvicornWorker --graceful-timeout 5"
            " frameworkapps:app",
        ),
        add_middleware=True,
    ),
    Case("hypercorn-asyncio", "litestar", _hypercorn("asyncio")),
    Case("hypercorn-uvloop", "quart", _hypercorn("uvloop")),
    Case(
        "granian",
        "starlette",
        _argv(
            str(BIN / "granian"),
            "--interface asgi --host 127.0.0.1 --port {port} --workers 1 --loop asyncio"
            " frameworkapps:app",
        ),
    ),
    # daphne speaks no ASGI lifespan (and Django's handler refuses it anyway): the
    # startup/shutdown check is left out for it, the rest is checked.
    Case(
        "daphne",
        "django",
        _argv(str(BIN / "daphne"), "-b 127.0.0.1 -p {port} frameworkapps:app"),
        lifespan=False,
    ),
]


def expected_path() -> str:
    """The request path FlightDeck takes in a server started by this run."""
    return "python" if accel.casgi is None or accel.extensions_disabled() else "native"


class Served:
    """One server process, stopped by the test (or at teardown if a check failed)."""

    def __init__(self, case: Case, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.markers = tmp_path / "lifespan.txt"
        self.log_path = tmp_path / "server.log"
        env = dict(os.environ)
        for name in ("FLIGHTDECK_DIR", "FLIGHTDECK_TOKEN", "FLIGHTDECK_ENDPOINT"):
            env.pop(name, None)
        root = str(TESTS.parent)
        env.update(
            PYTHONPATH=os.pathsep.join([root, str(TESTS)]),
            FD_FRAMEWORK=case.framework,
            FD_MARKERS=str(self.markers),
            FD_SLOW_MS=str(SLOW_MS),
            FD_ADD_MIDDLEWARE="1" if case.add_middleware else "0",
            FLIGHTDECK_SLOW_REQUEST="0.15",  # /slow sleeps 0.3 s
            PYTHONUNBUFFERED="1",
        )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                case.command(self.port),
                cwd=TESTS,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers are stopped with it
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        return http_get(self.url + path, timeout=timeout)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited early:\n{self.log()}")
            try:
                status = self.get("/ok", timeout=2)[0]
            except OSError:
                return False
            if status != 200:  # a server that answers, wrongly (500: not seen as ASGI 3)
                raise AssertionError(f"GET /ok answered {status}:\n{self.log()}")
            return True

        wait_until(ready, timeout=60, interval=0.1)

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; the exit code (-9: had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
                return -9
        return self.proc.returncode

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


Fired = dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]


def fired(served: Served, wanted: set[tuple[str, str]]) -> Fired:
    """Every trigger the snapshots hold, once ``wanted`` are all in.

    Keyed by (trigger kind, request path), each with its record and the snapshot document.
    A trigger counts whether it has a snapshot of its own or joined another one that was
    pending (``trigger.also``): on a loaded machine any request may turn slow first.
    """
    docs: dict[str, dict[str, Any]] = {}
    found: Fired = {}

    def listed() -> bool:
        status, _, body = served.get("/debug/flight/snapshots")
        assert status == 200, (status, body[:300])
        for item in json.loads(body):
            if item["id"] in docs:
                continue
            status, _, body = served.get(f"/debug/flight/snapshots/{item['id']}?format=json")
            assert status == 200, (status, body[:300])
            doc = docs[item["id"]] = json.loads(body)
            for record in [doc["trigger"], *doc["trigger"].get("also", [])]:
                path = (record.get("request") or {}).get("path")
                found.setdefault((record["kind"], path), (record, doc))
        return wanted <= found.keys()

    try:
        wait_until(listed, timeout=30, interval=0.1)
    except AssertionError:
        status = served.get("/debug/flight/status")[2].decode(errors="replace")
        raise AssertionError(f"{wanted} not all fired: {list(found)}\nstatus: {status}") from None
    return found


IDS = [f"{c.server}-{c.framework}" + ("-add_middleware" * c.add_middleware) for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_server_serves_and_records(case: Case, tmp_path: Path) -> None:
    served = Served(case, tmp_path)
    try:
        served.wait_ready()
        _check_requests(served)
        code = served.stop()
    finally:
        served.kill_group()
    log = served.log()
    assert code != -9, f"{case.server} did not stop on SIGTERM:\n{log}"
    assert "Traceback" not in log, log
    if case.lifespan:
        assert served.markers.read_text().split() == ["startup", "shutdown"], log


def _check_requests(served: Served) -> None:
    status, _, body = served.get("/debug/flight/status")
    assert status == 200, body[:300]
    assert json.loads(body)["asgi"] == expected_path()

    assert served.get("/ok")[0::2] == (200, b"ok")

    status, headers, body = served.get("/stream")
    assert (status, body) == (200, b"".join(CHUNKS))
    # Sent in chunks as the app sent them, not buffered into one sized body.
    assert "content-length" not in headers, headers

    assert served.get("/fail")[0::2] == (500, b"failed")
    record, _ = fired(served, {("server_error", "/fail")})[("server_error", "/fail")]
    assert record["request"]["status"] == 500

    t0 = time.monotonic()
    assert served.get("/slow")[0::2] == (200, b"slow")
    assert time.monotonic() - t0 >= SLOW_MS / 1000
    _, doc = fired(served, {("slow_request", "/slow")})[("slow_request", "/slow")]

    # The window behind that snapshot holds every request so far, as the app answered it.
    requests = {r["path"]: r for r in doc["requests"]}
    assert requests["/ok"]["status"] == 200 and requests["/ok"]["end"] is not None
    assert requests["/stream"]["status"] == 200 and requests["/stream"]["body_end"] is not None
    assert requests["/fail"]["status"] == 500
    # /slow fired while in flight: its capture may freeze the window before the app has
    # returned (Django closes the response in a thread after the last byte went out).
    slow_request = requests["/slow"]
    assert slow_request["end"] is None or slow_request["duration"] >= 0.9 * SLOW_MS / 1000
