"""The CLI's limits: the token never crosses origins, a total deadline, validated arguments,
a cap on decompressed size. Each runs the real command."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from samples import make_doc
from test_cli import TOKEN, one_error_line, run

Handler = Callable[[BaseHTTPRequestHandler], None]


class Server:
    """A loopback HTTP server answering GETs with ``handle``; records what it was sent."""

    def __init__(self, handle: Handler) -> None:
        self.seen: list[dict[str, str]] = []
        seen = self.seen

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[[Handler], Server]]:
    made: list[Server] = []

    def make(handle: Handler) -> Server:
        made.append(Server(handle))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _snapshot(handler: BaseHTTPRequestHandler, body: bytes | None = None, gz: bool = False) -> None:
    data = body if body is not None else orjson.dumps(make_doc())
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    if gz:
        handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _redirect(location: str) -> Handler:
    def handle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return handle


def test_token_never_follows_a_redirect_to_another_origin(
    servers: Callable[[Handler], Server], tmp_path: Path
) -> None:
    elsewhere = servers(_snapshot)
    for target in (
        f"{elsewhere.url}/debug/flight/snapshots/latest",  # another port
        f"http://localhost:{elsewhere.port}/debug/flight/snapshots/latest",  # another host
    ):
        first = servers(_redirect(target))
        line = one_error_line(
            run("pull", first.url + "/debug/flight", "--token", TOKEN, cwd=tmp_path)
        )
        assert "another origin" in line and target in line
        assert first.url + "/debug/flight/snapshots/latest" in line  # the URL that redirected
        assert first.seen[0]["authorization"] == f"Bearer {TOKEN}"
    assert elsewhere.seen == []  # never contacted, so never sent the token
    assert list(tmp_path.iterdir()) == []


def test_same_origin_redirect_is_followed_with_the_token(
    servers: Callable[[Handler], Server], tmp_path: Path
) -> None:
    def handle(handler: BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/old/"):
            _redirect(handler.path.replace("/old/", "/new/", 1))(handler)
        else:
            _snapshot(handler)

    server = servers(handle)
    proc = run("pull", server.url + "/old", "--token", TOKEN, "-o", "out.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [s["path"] for s in server.seen] == [
        "/old/snapshots/latest?format=raw",
        "/new/snapshots/latest?format=raw",
    ]
    assert all(s["authorization"] == f"Bearer {TOKEN}" for s in server.seen)


def test_token_from_environment_and_argument_wins(
    servers: Callable[[Handler], Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = servers(_snapshot)
    monkeypatch.setenv("FLIGHTDECK_TOKEN", "from-env")
    assert run("pull", server.url, "-o", "a.json", cwd=tmp_path).returncode == 0
    assert run("pull", server.url, "-t", "from-arg", "-o", "b.json", cwd=tmp_path).returncode == 0
    assert [s["authorization"] for s in server.seen] == ["Bearer from-env", "Bearer from-arg"]


def test_total_deadline_against_a_trickling_server(
    servers: Callable[[Handler], Server], tmp_path: Path
) -> None:
    stop = threading.Event()

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000000")
        handler.end_headers()
        while not stop.is_set():  # one byte every 50 ms: each read is quick, the whole slow
            try:
                handler.wfile.write(b" ")
                handler.wfile.flush()
            except OSError:
                return
            stop.wait(0.05)

    server = servers(trickle)
    try:
        started = time.monotonic()
        proc = run("pull", server.url + "/debug/flight", "--timeout", "1.5", cwd=tmp_path)
        took = time.monotonic() - started
    finally:
        stop.set()
    line = one_error_line(proc)
    assert "timed out after 1.5 s" in line and server.url in line
    assert took < 15  # the per-read timeout of old kept it for as long as the server trickled


def test_truncated_answer_is_one_line(servers: Callable[[Handler], Server]) -> None:
    def short(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"format"')
        handler.wfile.flush()
        handler.close_connection = True

    server = servers(short)
    line = one_error_line(run("pull", server.url + "/debug/flight"))
    assert server.url in line


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf", "soon"])
def test_bad_timeouts_are_refused(value: str) -> None:
    proc = run("pull", "http://127.0.0.1:9/debug/flight", f"--timeout={value}")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    assert b"--timeout" in proc.stderr and value.encode() in proc.stderr


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1.5G"])
def test_bad_max_sizes_are_refused(value: str, tmp_path: Path) -> None:
    proc = run("summary", str(tmp_path / "x.json"), f"--max-size={value}")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr and b"--max-size" in proc.stderr


def _bomb(size: int, layers: int = 1) -> bytes:
    """gzip of ``size`` zero bytes (made in pieces, so the test itself stays small)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    parts = [compressor.compress(zeros) for _ in range(size >> 20)]
    data = b"".join(parts) + compressor.flush()
    for _ in range(layers - 1):
        data = gzip.compress(data)
    return data


@pytest.mark.parametrize("layers", [1, 2])
def test_gzip_bomb_is_refused_by_summary_and_export(tmp_path: Path, layers: int) -> None:
    bomb = tmp_path / "bomb.json.gz"
    bomb.write_bytes(_bomb(64 << 20, layers))  # 64 MiB of zeros in ~64 KiB
    for command in (["summary"], ["export", "--format", "html"]):
        line = one_error_line(run(*command, str(bomb), "--max-size", "8M"))
        assert "more than 8388608 bytes" in line and str(bomb) in line
    # The default cap (1 GiB) still reads real snapshots, gzipped or not.
    good = tmp_path / "good.json.gz"
    good.write_bytes(gzip.compress(orjson.dumps(make_doc())))
    assert run("summary", str(good)).returncode == 0


def test_large_plain_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (2 << 20))
    line = one_error_line(run("summary", str(big), "--max-size", "1M"))
    assert "more than --max-size" in line


def test_gzip_bomb_is_refused_by_pull(servers: Callable[[Handler], Server], tmp_path: Path) -> None:
    bomb = _bomb(64 << 20)
    server = servers(lambda handler: _snapshot(handler, bomb, gz=True))
    line = one_error_line(run("pull", server.url, "--max-size", "8M", cwd=tmp_path))
    assert "more than 8388608 bytes" in line and server.url in line
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_names_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = one_error_line(run("pull", f"http://127.0.0.1:{port}/debug/flight"))
    assert "connection refused" in line and str(port) in line
