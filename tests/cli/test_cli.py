"""The ``flightdeck`` command, run as ``python -m flightdeck`` in a subprocess."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from samples import DOC_ID, make_doc

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "flightdeck", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 2, proc
    err = proc.stderr.decode()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("flightdeck: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def snap_file(tmp_path: Path) -> Path:
    path = tmp_path / "snap.json"
    path.write_bytes(orjson.dumps(make_doc()))
    return path


def test_help() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    out = proc.stdout.decode()
    for word in ("summary", "export", "pull"):
        assert word in out
    for sub in ("summary", "export", "pull"):
        assert run(sub, "--help").returncode == 0
    assert run().returncode == 2  # a command is required


def test_summary(snap_file: Path) -> None:
    proc = run("summary", str(snap_file))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "trigger:  slow_request" in out
    assert "loop blocked 1.20 s in block at app.py:30 (handler /block)" in out
    assert "app.py:30 in block" in out


def test_summary_explains_any_request_and_folds_unless_full(snap_file: Path) -> None:
    out = run("summary", str(snap_file)).stdout.decode()
    assert out.splitlines()[2].startswith("why:      GET /slow 200 took 1.20 s: 1.14 s suspended")
    proc = run("summary", str(snap_file), "--request", "4")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[2].startswith("why:      GET /block 200 took 1.25 s: 1.21 s running on the loop")
    assert "where the time of GET /block 200 (request 4) went:" in lines
    line = one_error_line(run("summary", str(snap_file), "--request", "99"))
    assert "no request 99 in this snapshot" in line
    full = run("summary", str(snap_file), "--full").stdout.decode()
    assert "uvicorn/protocols/http/httptools_impl.py:401 in run_asgi" in full


def test_summary_of_gzipped_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "snap.json.gz"
    path.write_bytes(gzip.compress(orjson.dumps(make_doc())))
    assert run("summary", str(path)).returncode == 0


def test_export_defaults(snap_file: Path) -> None:
    proc = run("export", str(snap_file), "--format", "perfetto")
    assert proc.returncode == 0, proc.stderr
    out = snap_file.with_name("snap.perfetto.json")
    trace = orjson.loads(out.read_bytes())
    assert trace["traceEvents"] and trace["displayTimeUnit"] == "ms"
    proc = run("export", str(snap_file), "--format", "html")
    assert proc.returncode == 0, proc.stderr
    page = snap_file.with_name("snap.html").read_bytes()
    assert page.startswith(b"<!DOCTYPE html>") and b'id="timeline"' in page


def test_export_to_path_and_stdout(snap_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.html"
    target.parent.mkdir()
    assert run("export", str(snap_file), "--format", "html", "-o", str(target)).returncode == 0
    assert target.read_bytes().startswith(b"<!DOCTYPE html>")
    proc = run("export", str(snap_file), "--format", "perfetto", "-o", "-")
    assert proc.returncode == 0
    assert orjson.loads(proc.stdout)["metadata"]["snapshot_id"] == DOC_ID
    bad = run("export", str(snap_file), "--format", "html", "-o", str(tmp_path / "no/such/x"))
    assert "cannot write" in one_error_line(bad)


def test_export_rejects_unknown_format(snap_file: Path) -> None:
    proc = run("export", str(snap_file), "--format", "svg")
    assert proc.returncode == 2 and b"invalid choice" in proc.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"[1, 2]", "not a flightdeck snapshot"),
        (b"{not json", "not JSON"),
        (orjson.dumps({"format": "other/1"}), "not a flightdeck snapshot"),
        (orjson.dumps({**make_doc(), "format": "flightdeck/2"}), "upgrade flightdeck"),
        (orjson.dumps({"format": "flightdeck/1", "id": DOC_ID}), "missing"),
    ],
)
@pytest.mark.parametrize("command", ["summary", "export"])
def test_bad_snapshots(tmp_path: Path, command: str, content: bytes | None, message: str) -> None:
    path = tmp_path / "snap.json"
    if content is not None:
        path.write_bytes(content)
    extra = ["--format", "html"] if command == "export" else []
    line = one_error_line(run(command, str(path), *extra))
    assert message in line


# -- pull ------------------------------------------------------------------------------


class Endpoint:
    """A stand-in for a service's /debug/flight endpoint, on a loopback port."""

    def __init__(self) -> None:
        self.doc = make_doc()
        self.body = orjson.dumps(self.doc)
        self.requests: list[dict[str, Any]] = []
        #: An endpoint of a version without ``format=raw``: refuses it with 400.
        self.old = False
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers)})
                path, _, query = self.path.partition("?")
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", "Bearer")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if query == "format=raw" and endpoint.old:
                    body = b'{"error": "format must be json, perfetto, pftrace, html or summary"}'
                    self.send_response(400)
                elif query == "format=raw" and path in (
                    f"/debug/flight/snapshots/{DOC_ID}",
                    "/debug/flight/snapshots/latest",
                ):
                    body = gzip.compress(endpoint.body)  # the stored form, as it is stored
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                elif path in (
                    f"/debug/flight/snapshots/{DOC_ID}",
                    "/debug/flight/snapshots/latest",
                ):
                    body = endpoint.body
                    gz = "gzip" in (self.headers.get("Accept-Encoding") or "")
                    if gz:
                        body = gzip.compress(body)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    if gz:
                        self.send_header("Content-Encoding", "gzip")
                elif path == "/debug/flight/snapshots/20261126T015000Z-1234-00000000":
                    body = b'{"not": "a snapshot"}'
                    self.send_response(200)
                else:
                    body = b"not found"
                    self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/debug/flight"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Endpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Endpoint() as ep:
        yield ep


def test_pull_latest(endpoint: Endpoint, tmp_path: Path) -> None:
    proc = run("pull", endpoint.url, "--token", TOKEN, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    saved = tmp_path / f"{DOC_ID}.json"
    assert orjson.loads(saved.read_bytes()) == endpoint.doc
    req = endpoint.requests[-1]
    assert req["path"] == "/debug/flight/snapshots/latest?format=raw"  # the stored bytes
    assert "gzip" in req["headers"]["Accept-Encoding"]
    assert req["headers"]["Authorization"] == f"Bearer {TOKEN}"
    # The saved file is usable by the other commands.
    assert run("summary", str(saved)).returncode == 0


def test_pull_by_id_to_path_and_stdout(endpoint: Endpoint, tmp_path: Path) -> None:
    out = tmp_path / "mine.json"
    proc = run("pull", endpoint.url + "/", "--token", TOKEN, "--id", DOC_ID, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert endpoint.requests[-1]["path"] == f"/debug/flight/snapshots/{DOC_ID}?format=raw"
    assert orjson.loads(out.read_bytes())["id"] == DOC_ID
    proc = run("pull", endpoint.url, "--token", TOKEN, "-o", "-")
    assert orjson.loads(proc.stdout)["id"] == DOC_ID


def test_pull_raw_keeps_the_stored_bytes_and_converts_locally(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    proc = run("pull", endpoint.url, "--token", TOKEN, "--format", "raw", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    saved = tmp_path / f"{DOC_ID}.json.gz"  # the stored form of this server, as it was sent
    assert gzip.decompress(saved.read_bytes()) == endpoint.body
    proc = run("pull", endpoint.url, "--token", TOKEN, "--format", "html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / f"{DOC_ID}.html").read_bytes()
    assert page.lstrip().lower().startswith(b"<!doctype html")
    assert all(r["path"].endswith("?format=raw") for r in endpoint.requests)  # made here


def test_pull_from_an_endpoint_without_raw_falls_back_to_json(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    endpoint.old = True
    proc = run("pull", endpoint.url, "--token", TOKEN, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads((tmp_path / f"{DOC_ID}.json").read_bytes()) == endpoint.doc
    paths = [r["path"] for r in endpoint.requests]
    assert paths == ["/debug/flight/snapshots/latest?format=raw", "/debug/flight/snapshots/latest"]


def test_pull_errors(endpoint: Endpoint, tmp_path: Path) -> None:
    assert "401" in one_error_line(run("pull", endpoint.url, cwd=tmp_path))
    assert "401" in one_error_line(run("pull", endpoint.url, "--token", "wrong", cwd=tmp_path))
    missing = "20261126T015000Z-1234-ffffffff"
    line = one_error_line(run("pull", endpoint.url, "--token", TOKEN, "--id", missing))
    assert "404" in line
    line = one_error_line(run("pull", endpoint.url, "--token", TOKEN, "--id", "../etc/passwd"))
    assert "malformed snapshot id" in line
    not_snap = "20261126T015000Z-1234-00000000"
    line = one_error_line(run("pull", endpoint.url, "--token", TOKEN, "--id", not_snap))
    assert "did not return a snapshot" in line
    assert "http(s) URL" in one_error_line(run("pull", "ftp://x/debug/flight"))
    assert list(tmp_path.iterdir()) == []


def test_pull_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = one_error_line(run("pull", f"http://127.0.0.1:{port}/debug/flight", cwd=tmp_path))
    assert "connection refused" in line


def test_main_in_process(snap_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flightdeck.cli import main

    assert main(["summary", str(snap_file)]) == 0
    assert "slowest requests" in capsys.readouterr().out
    assert main(["summary", str(snap_file.with_name("nope.json"))]) == 2
    assert capsys.readouterr().err.startswith("flightdeck: error: ")
