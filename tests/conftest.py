"""Shared fixtures: real servers on free loopback ports, an in-process ASGI driver, polling.

Real servers come two ways: ``uvicorn_thread`` runs ``uvicorn.Server`` in a thread of the
test process (cheap, and the test can look at the middleware object), ``server`` starts
uvicorn or gunicorn as a subprocess serving an app from ``tests/serverapps.py`` (for RSS,
several workers, and anything that must not share the test's interpreter).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
Message = dict[str, Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- polling ----------------------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """Run a coroutine to completion on a fresh loop of the parametrised kind."""
    import uvloop

    if request.param == "uvloop":
        return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


async def await_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01
) -> Any:
    """``wait_until`` for async tests: sleeps on the loop between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- in-process ASGI ----------------------------------------------------------------------------


def http_scope(path: str = "/", **overrides: Any) -> dict[str, Any]:
    """A complete HTTP scope as uvicorn would build it; ``overrides`` replace keys."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("ascii", "replace"),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(overrides)
    return scope


async def drive(
    app: Any,
    scope: dict[str, Any],
    incoming: list[Message] | None = None,
    send: Callable[[Message], Any] | None = None,
    keep: bool = True,
) -> list[Message]:
    """Call ``app`` once; ``receive`` hands out ``incoming`` then ``http.disconnect``.

    Returns every message the app sent, the very objects (so identity can be checked);
    with ``keep=False`` none is kept (for memory tests), and ``send`` sees each one.
    """
    queue = list(incoming if incoming is not None else [{"type": "http.request", "body": b""}])
    sent: list[Message] = []

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def _send(message: Message) -> None:
        if keep:
            sent.append(message)
        if send is not None:
            result = send(message)
            if asyncio.iscoroutine(result):
                await result

    await app(scope, receive, _send)
    return sent


@pytest.fixture
def decks() -> Iterator[list[Any]]:
    """FlightDeck objects made by a test; their recorders are stopped afterwards."""
    opened: list[Any] = []
    yield opened
    for deck in opened:
        deck.close()


# -- uvicorn in a thread --------------------------------------------------------------------------


@dataclass
class ThreadServer:
    url: str
    port: int
    server: Any
    thread: threading.Thread


@contextmanager
def uvicorn_thread(app: Any, **config: Any) -> Iterator[ThreadServer]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread of this process."""
    import uvicorn

    port = free_port()
    config.setdefault("log_level", "warning")
    config.setdefault("lifespan", "on")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=15)
        assert server.started, "uvicorn did not start"
        yield ThreadServer(f"http://127.0.0.1:{port}", port, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not stop"


# -- uvicorn / gunicorn as a subprocess ---------------------------------------------------------


def http_get(url: str, timeout: float = 10.0, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """A blocking GET with no proxy: (status, headers with lower-case names, body)."""
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as answer:
            return answer.status, _lower(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers), error.read()


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def get_json(url: str, timeout: float = 10.0) -> Any:
    status, _, body = http_get(url, timeout)
    assert status == 200, (status, body[:200])
    return json.loads(body)


@dataclass
class ServerProcess:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    children: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def rss_kib(pid: int) -> int:
    """Resident set size of a process from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``serverapps`` under uvicorn (default) or gunicorn in a subprocess.

    ``server(app="app", workers=1, kind="uvicorn", env={...}, options={...}, args=[...])``;
    ``options`` is passed to ``FlightDeck`` as JSON. Every server is stopped at teardown.
    """
    started: list[ServerProcess] = []

    def start(
        app: str = "app",
        *,
        kind: str = "uvicorn",
        workers: int = 1,
        env: dict[str, str] | None = None,
        options: dict[str, Any] | None = None,
        args: list[str] | None = None,
        ready_path: str = "/fast",
    ) -> ServerProcess:
        port = free_port()
        bindir = Path(sys.executable).parent
        if kind == "uvicorn":
            cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(TESTS)]
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            if workers > 1:
                cmd += ["--workers", str(workers)]
            cmd += [f"serverapps:{app}"]
        elif kind == "gunicorn":
            cmd = [str(bindir / "gunicorn"), "--chdir", str(TESTS), "-b", f"127.0.0.1:{port}"]
            cmd += ["-w", str(workers), "-k", "uvicorn_worker.UvicornWorker"]
            cmd += ["--log-level", "warning", "--graceful-timeout", "5"]
            cmd += [f"serverapps:{app}"]
        else:
            raise ValueError(kind)
        cmd += args or []
        full_env = dict(os.environ)
        full_env.pop("FLIGHTDECK_DIR", None)
        full_env.pop("FLIGHTDECK_TOKEN", None)
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
        full_env["FD_TEST_OPTIONS"] = json.dumps(options or {})
        full_env.update(env or {})
        log_path = tmp_path / f"server-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        srv = ServerProcess(f"http://127.0.0.1:{port}", port, proc, log_path)
        started.append(srv)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{srv.log()}")
            try:
                return http_get(srv.url + ready_path, timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=30, interval=0.1)
        return srv

    yield start
    for srv in started:
        srv.stop()


def make_deck(app: Any, decks: list[Any], **options: Any) -> Any:
    """A FlightDeck for in-process tests: no endpoint, no capture delay unless asked."""
    from flightdeck import FlightDeck

    options.setdefault("endpoint", None)
    options.setdefault("capture_delay", 0.0)
    deck = FlightDeck(app, **options)
    decks.append(deck)
    return deck


def find_request(doc: dict[str, Any], path: str) -> dict[str, Any]:
    for req in doc["requests"]:
        if req["path"] == path:
            return req
    raise AssertionError(f"no request {path!r} in {[r['path'] for r in doc['requests']]}")
