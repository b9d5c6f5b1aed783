"""Test helpers: real servers on free loopback ports, an in-process ASGI driver, polling.

Real servers come two ways: ``uvicorn_thread`` runs ``uvicorn.Server`` in a thread of the
test process (cheap, and the test can look at the middleware object), ``server`` starts
uvicorn or gunicorn as a subprocess serving an app from ``tests/serverapps.py`` (for RSS,
several workers, and anything that must not share the test's interpreter).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
Message = dict[str, Any]


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
        "headers": [(b"host", b"127.0.0.1:8000")],
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


class RedisServer:
    """A real ``redis-server`` on a free loopback port, persistence off; restartable."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.args: list[str] = []  # more redis-server options, e.g. --requirepass

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir), *self.args]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self.ping, timeout=10, interval=0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                answer = sock.recv(64)
                return answer.startswith(b"+PONG") or answer.startswith(b"-NOAUTH")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)
