"""The endpoint's views on a real uvicorn: each one made by a converter child and streamed,
one child at a time, killed past its deadline, never a truncated 200, kept for the next."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from endpoint_samples import make_snapshot
from support import ThreadServer, uvicorn_thread, wait_until

from flightdeck.asgi.endpoint import ViewOptions, make_endpoint
from flightdeck.convert import FAULT_ENV
from flightdeck.snapshot.codec import encode
from flightdeck.snapshot.document import FORMATS, Snapshot
from flightdeck.snapshot.store import SnapshotStore

PREFIX = "/debug/flight"
BASE = 1_764_121_800.0
CONVERTED = [name for name, fmt in FORMATS.items() if fmt.convert is not None]


class Backend:
    def __init__(self, store: SnapshotStore) -> None:
        self.store = store

    async def capture(self, reason: str) -> Snapshot:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        return {}


class PlainJSONStore(SnapshotStore):
    """A store whose stored form is not gzip'd JSON (as the binary container is not): every
    view of it, JSON included, must come from the converter child."""

    def get_stored(self, id: str) -> bytes | None:
        return super().get_bytes(id, False)


@pytest.fixture(autouse=True)
def no_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)


def _serve(store: SnapshotStore, **options: Any) -> Any:
    app = make_endpoint(Backend(store), view_options=ViewOptions(**options))
    return uvicorn_thread(app)


def _views(server: ThreadServer) -> dict[str, int]:
    status = httpx.get(f"{server.url}{PREFIX}/status").json()
    views: dict[str, int] = status["views"]
    return views


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[SnapshotStore, Snapshot]]:
    store = SnapshotStore(directory=tmp_path / "snaps")
    snap = make_snapshot(created=BASE)
    store.put(snap)
    yield store, snap


def test_each_view_is_streamed_from_a_child_then_kept_beside_the_snapshot(
    stored: tuple[SnapshotStore, Snapshot],
) -> None:
    store, snap = stored
    with _serve(store) as server:
        url = f"{server.url}{PREFIX}/snapshots/{snap.id}"
        for count, name in enumerate(CONVERTED, 1):
            if name == "json":
                continue  # stored as gzip'd JSON already: served as it is, no child
            with httpx.stream("GET", f"{url}?format={name}") as answer:
                assert answer.status_code == 200
                # Streamed as the child writes it: no length known up front.
                assert answer.headers.get("transfer-encoding") == "chunked"
                assert "content-length" not in answer.headers
                body = answer.read()
            assert body == snap.dumps(name)
            assert _views(server)["children"] == len([n for n in CONVERTED[:count] if n != "json"])
        children = _views(server)["children"]
        assert children == len(CONVERTED) - 1
        # Kept beside the snapshot: a file next to it, served without a child.
        assert store.directory is not None
        assert (Path(store.directory) / f"{snap.id}.html.view").is_file()
        for name in CONVERTED:
            answer = httpx.get(f"{url}?format={name}")
            assert answer.status_code == 200 and answer.content == snap.dumps(name)
        views = _views(server)
        assert views["children"] == children  # no child for the second view
        assert views["cached"] == len(CONVERTED) - 1


def test_json_of_a_store_that_is_not_gzip_json_comes_from_a_child() -> None:
    store = PlainJSONStore()
    snap = make_snapshot(created=BASE)
    store.put(snap)
    with _serve(store) as server:
        url = f"{server.url}{PREFIX}/snapshots/{snap.id}"
        answer = httpx.get(url, headers={"Accept-Encoding": "gzip"})
        assert answer.status_code == 200
        assert answer.headers["content-encoding"] == "gzip"
        assert answer.content == snap.dumps("json")  # httpx decoded it
        assert _views(server)["children"] == 1
        # A client without gzip gets the kept (gzip'd) view decompressed as it streams.
        answer = httpx.get(url, headers={"Accept-Encoding": "identity"})
        assert answer.status_code == 200 and "content-encoding" not in answer.headers
        assert answer.content == snap.dumps("json")
        views = _views(server)
        assert views["children"] == 1 and views["cached"] == 1  # in memory: no directory


def test_raw_is_the_stored_bytes(stored: tuple[SnapshotStore, Snapshot]) -> None:
    store, snap = stored
    with _serve(store) as server:
        answer = httpx.get(
            f"{server.url}{PREFIX}/snapshots/{snap.id}?format=raw",
            headers={"Accept-Encoding": "identity"},
        )
        assert answer.status_code == 200
        assert answer.content == store.get_bytes(snap.id, True)
        assert answer.headers["content-type"] == "application/octet-stream"
        disposition = answer.headers["content-disposition"]
        assert disposition == f'attachment; filename="{snap.id}.json.gz"'
        assert _views(server)["children"] == 0
        # The list page offers every registered format.
        page = httpx.get(f"{server.url}{PREFIX}", headers={"Accept": "text/html"}).text
        for name in FORMATS:
            if name != "json":
                assert f"{snap.id}?format={name}" in page, name


def test_a_directory_of_gzip_json_snapshots_is_still_served(tmp_path: Path) -> None:
    """Files as earlier versions wrote them (gzip'd flightdeck/1 JSON, summary in the gzip
    header), planted by hand, then read by a new store."""
    directory = tmp_path / "snaps"
    directory.mkdir(mode=0o700)
    snap = make_snapshot(created=BASE)
    (directory / f"{snap.id}.json.gz").write_bytes(encode(snap)[0])
    with _serve(SnapshotStore(directory=directory)) as server:
        url = f"{server.url}{PREFIX}/snapshots/{snap.id}"
        answer = httpx.get(url)
        assert answer.status_code == 200 and orjson.loads(answer.content) == snap.to_dict()
        answer = httpx.get(f"{url}?format=summary")
        assert answer.status_code == 200 and answer.content == snap.dumps("summary")


def test_one_child_at_a_time_and_the_deadline_kills_it(
    stored: tuple[SnapshotStore, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, snap = stored
    monkeypatch.setenv(FAULT_ENV, "stall")  # the child writes one chunk, then hangs
    # Long enough for a child at nice 19 on a busy machine to write its first chunk.
    with _serve(store, deadline=6.0) as server:
        url = f"{server.url}{PREFIX}/snapshots/{snap.id}"
        outcome: dict[str, Any] = {}
        started = threading.Event()

        def first() -> None:
            try:
                with httpx.stream("GET", f"{url}?format=html", timeout=30) as answer:
                    outcome["status"] = answer.status_code
                    for chunk in answer.iter_raw():
                        outcome["got"] = outcome.get("got", 0) + len(chunk)
                        started.set()
            except httpx.HTTPError as exc:
                outcome["error"] = exc
            finally:
                started.set()

        thread = threading.Thread(target=first)
        began = time.monotonic()
        thread.start()
        assert started.wait(20) and "error" not in outcome
        busy = httpx.get(f"{url}?format=summary")
        assert busy.status_code == 429
        assert int(busy.headers["retry-after"]) > 0
        thread.join(30)
        elapsed = time.monotonic() - began
        # Killed at the deadline: the connection is dropped, not closed as a whole 200.
        assert outcome["status"] == 200 and outcome["got"] > 0
        assert isinstance(outcome["error"], httpx.RemoteProtocolError)
        assert 5.5 < elapsed < 30
        views = _views(server)
        assert views["killed"] == 1 and views["busy"] == 1 and views["children"] == 1
        assert not (Path(str(store.directory)) / f"{snap.id}.html.view").exists()
        # The slot is free again, and nothing half-made was kept.
        monkeypatch.delenv(FAULT_ENV)
        answer = httpx.get(f"{url}?format=html")
        assert answer.status_code == 200 and answer.content == snap.dumps("html")
        assert _views(server)["children"] == 2


def test_a_slow_client_is_not_cut_by_the_deadline(tmp_path: Path) -> None:
    # About 10 MB of Perfetto JSON, far more than the socket buffers hold: the client stops
    # reading for longer than the deadline. The deadline bounds the conversion (done in a
    # fraction of a second), never the download.
    store = SnapshotStore(directory=tmp_path / "snaps")
    snap = make_snapshot(created=BASE, padding=40000)
    store.put(snap)
    expected = snap.dumps("perfetto")
    # The converter runs at nice 19: on a busy machine it needs a few seconds.
    with _serve(store, deadline=8.0) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", server.port))
        path = f"{PREFIX}/snapshots/{snap.id}?format=perfetto"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 200
        body = answer.read(1024)
        wait_until(lambda: _views(server)["children"] == 1)
        time.sleep(9.0)  # the client is away past the deadline (what is tested, not a wait)
        body += answer.read()
        sock.close()
        assert body == expected
        assert _views(server)["killed"] == 0


def test_back_to_back_views_never_find_the_slot_taken(tmp_path: Path) -> None:
    # The slot is freed before the last byte goes out: a client that asks again as soon
    # as it has its answer is never refused.
    store = SnapshotStore(directory=tmp_path / "snaps")
    snaps = [make_snapshot(created=BASE + i) for i in range(6)]
    for snap in snaps:
        store.put(snap)
    with _serve(store) as server, httpx.Client() as client:
        for snap in snaps:
            answer = client.get(f"{server.url}{PREFIX}/snapshots/{snap.id}?format=summary")
            assert answer.status_code == 200, answer.text
        assert _views(server)["busy"] == 0 and _views(server)["children"] == len(snaps)


def test_a_child_that_dies_mid_stream_aborts_the_connection(
    stored: tuple[SnapshotStore, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, snap = stored
    monkeypatch.setenv(FAULT_ENV, "die")  # exits after its first chunk
    with _serve(store) as server:
        url = f"{server.url}{PREFIX}/snapshots/{snap.id}?format=html"
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as answer:
            assert answer.status_code == 200
            answer.read()
        wait_until(lambda: _views(server)["failed"] == 1)
        monkeypatch.delenv(FAULT_ENV)
        answer = httpx.get(url)  # not kept: made again, whole
        assert answer.status_code == 200 and answer.content == snap.dumps("html")
        assert _views(server)["children"] == 2


def test_a_child_that_fails_before_writing_gets_a_clean_error(
    stored: tuple[SnapshotStore, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, snap = stored
    monkeypatch.setenv(FAULT_ENV, "fail")
    with _serve(store) as server:
        answer = httpx.get(f"{server.url}{PREFIX}/snapshots/{snap.id}?format=perfetto")
        assert answer.status_code == 500 and answer.json() == {
            "error": "the snapshot could not be converted"
        }
        assert _views(server)["failed"] == 1


def test_the_childs_memory_is_capped(tmp_path: Path) -> None:
    # 40 MB of text once decompressed (a few KiB stored): more than the capped child may
    # map, well within the default cap. The app's process never holds it.
    snap = Snapshot({**make_snapshot(created=BASE).to_dict(), "padding": "x" * (40 << 20)})
    for memory, status in ((8 << 20, 500), (ViewOptions().memory, 200)):
        store = SnapshotStore(directory=tmp_path / str(memory))
        store.put(snap)
        with _serve(store, memory=memory) as server:
            answer = httpx.get(f"{server.url}{PREFIX}/snapshots/{snap.id}?format=summary")
            assert answer.status_code == status
            assert _views(server)["failed"] == (status == 500)


def test_views_of_snapshots_gone_from_the_store_are_removed(tmp_path: Path) -> None:
    store = SnapshotStore(max_snapshots=1, directory=tmp_path / "snaps")
    old = make_snapshot(created=BASE)
    store.put(old)
    with _serve(store) as server:
        base = f"{server.url}{PREFIX}/snapshots"
        assert httpx.get(f"{base}/{old.id}?format=summary").status_code == 200
        directory = Path(str(store.directory))
        assert (directory / f"{old.id}.summary.view").exists()
        new = make_snapshot(created=BASE + 10)
        store.put(new)  # rotates the old one out
        assert httpx.get(f"{base}/{new.id}?format=summary").status_code == 200
        assert (directory / f"{new.id}.summary.view").exists()
        assert not (directory / f"{old.id}.summary.view").exists()
        assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == [
            f"{new.id}.json.gz",
            f"{new.id}.summary.view",
        ]


def test_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from flightdeck.asgi.config import Config

    monkeypatch.setenv("FLIGHTDECK_CONVERT_DEADLINE", "7.5")
    monkeypatch.setenv("FLIGHTDECK_CONVERT_MEMORY", "512M")
    config = Config.from_env()
    assert (config.convert_deadline, config.convert_memory) == (7.5, 512 << 20)
    assert Config.from_env(convert_deadline=3.0).convert_deadline == 3.0
    with pytest.raises(ValueError, match="convert_deadline"):
        Config(convert_deadline=0)
    from flightdeck import FlightDeck

    deck = FlightDeck(_app, convert_deadline=5.0, enabled=True)
    try:
        assert deck._endpoint_app.view_options == ViewOptions(5.0, 512 << 20)  # type: ignore[union-attr]
    finally:
        deck.close()


async def _app(scope: Any, receive: Any, send: Any) -> None:
    pass


def test_gzip_helper_round_trip() -> None:
    # The gzip'd JSON view is one member a plain gunzip reads.
    from flightdeck.convert import chunks, gzipped

    data = os.urandom(1000) * 300
    assert gzip.decompress(b"".join(gzipped(chunks(data)))) == data


def _converter_children() -> list[int]:
    """Pids of this process's children running ``flightdeck convert`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if int(stat[1]) == os.getpid() and b"convert" in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the child's priority in /proc")
def test_the_converter_runs_at_the_lowest_cpu_priority(
    stored: tuple[SnapshotStore, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It shares the app's cores: under load it must take only what the app leaves.
    store, snap = stored
    monkeypatch.setenv(FAULT_ENV, "stall")  # the child writes one chunk, then waits
    with _serve(store, deadline=20.0) as server:
        url = f"{server.url}{PREFIX}/snapshots/{snap.id}?format=summary"
        with httpx.stream("GET", url, timeout=30) as answer:
            assert answer.status_code == 200
            pids = wait_until(_converter_children, timeout=20)
            with open(f"/proc/{pids[0]}/stat") as f:
                nice = int(f.read().rsplit(")", 1)[1].split()[16])
            assert nice == 19
            for pid in pids:
                os.kill(pid, 9)  # ends the stream now, not at the deadline
            with contextlib.suppress(httpx.HTTPError):
                for _ in answer.iter_raw():
                    pass
