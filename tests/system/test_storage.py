"""Storage: disk faults, a vanished directory, bad files, shared quota."""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from endpoint_samples import make_snapshot
from support import (
    ROOT,
    TESTS,
    await_until,
    drive,
    get_json,
    http_get,
    http_scope,
    make_deck,
    uvicorn_thread,
    wait_until,
)

from flightdeck import FlightDeck
from flightdeck.snapshot import directory as _directory
from flightdeck.snapshot.directory import STORED_SUFFIX
from flightdeck.snapshot.document import new_id
from flightdeck.snapshot.store import SUFFIX, SnapshotStore, encode

pytestmark = pytest.mark.anyio


async def inner(scope: Any, receive: Any, send: Any) -> None:
    status = 500 if scope["path"] == "/fail" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"answer"})


def snapshot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((SUFFIX, STORED_SUFFIX)))


class FailingOS:
    """``os`` as seen by the store, with writes failing like a full or read-only disk."""

    def __init__(self, error: int, where: str) -> None:
        self.error = error
        self.where = where

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.where == "write":
            os.write(fd, bytes(data[: len(data) // 2]))  # a partial write, then the disk is full
            raise OSError(self.error, os.strerror(self.error))
        return os.write(fd, data)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        if self.where == "open" and flags & os.O_CREAT:
            raise OSError(self.error, os.strerror(self.error))
        return os.open(path, flags, mode)


@pytest.mark.parametrize(
    ("error", "where"), [(errno.ENOSPC, "write"), (errno.EROFS, "open"), (errno.EACCES, "open")]
)
async def test_disk_full_or_read_only_keeps_snapshot_in_memory(
    decks: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: int,
    where: str,
) -> None:
    deck = make_deck(inner, decks, directory=tmp_path, cooldown=0.001, slow_request=None)
    monkeypatch.setattr(_directory, "os", FailingOS(error, where))
    caplog.set_level(logging.WARNING, logger="flightdeck")
    for _ in range(2):
        sent = await drive(deck, http_scope("/fail"))
        assert sent[0]["status"] == 500 and sent[1]["body"] == b"answer"  # app unaffected
        await await_until(lambda: not deck._capturing, timeout=10)
    listed = deck.store.list()
    assert len(listed) == 2
    for item in listed:
        assert deck.store.get(item["id"]) is not None  # kept in memory
    # The temporary files were removed (windows/ holds the recording process's window file).
    assert [p for p in tmp_path.iterdir() if p.name != "windows"] == []
    stats = deck.store.stats()
    assert stats["errors"] == 2 and stats["written"] == 0
    assert deck.status()["capture_failures"] == 0  # the capture itself succeeded
    warnings = [r for r in caplog.records if "cannot write snapshots" in r.getMessage()]
    assert len(warnings) == 1  # logged once


async def test_directory_deleted_while_running_is_recreated(
    decks: list[Any], tmp_path: Path
) -> None:
    directory = tmp_path / "snaps"
    deck = make_deck(inner, decks, directory=directory, cooldown=0.001, slow_request=None)
    await drive(deck, http_scope("/fail"))
    await await_until(lambda: not deck._capturing and snapshot_files(directory), timeout=10)
    shutil.rmtree(directory)
    assert deck.store.list() == []  # listing copes with the missing directory (its truth)
    await drive(deck, http_scope("/fail"))
    await await_until(lambda: not deck._capturing, timeout=10)
    assert directory.is_dir()
    assert len(snapshot_files(directory)) == 1  # written again, into the recreated directory
    assert oct(directory.stat().st_mode & 0o777) == oct(0o700)
    assert deck.store.stats()["errors"] == 0


def _bad_files(directory: Path) -> dict[str, bytes]:
    """Files with well-formed snapshot names that must never be listed nor served."""
    good, _ = encode(make_snapshot())
    newer = good.replace(b'"format":"flightdeck/1"', b'"format":"flightdeck/9"', 1)
    assert newer != good
    body_start = len(good) - 200
    corrupt = good[:body_start] + bytes(b ^ 0x55 for b in good[body_start:-8]) + good[-8:]
    foreign_doc = json.dumps({"format": "other/1", "id": "x"}).encode()
    return {
        "truncated": good[: len(good) // 2],
        "corrupt": corrupt,  # header and trailer intact, body damaged
        "newer": newer,
        "foreign-gzip": gzip.compress(foreign_doc),
        "foreign-json": foreign_doc,
        "empty": b"",
        "other-id": good,  # a valid file under another snapshot's name
    }


def test_bad_files_skipped_and_never_served(tmp_path: Path) -> None:
    real = make_snapshot()
    store = SnapshotStore(directory=tmp_path)
    store.put(real)
    planted = {}
    for name, data in _bad_files(tmp_path).items():
        ident = new_id()
        (tmp_path / (ident + SUFFIX)).write_bytes(data)
        planted[name] = ident
    (tmp_path / "notes.txt").write_text("not a snapshot")
    (tmp_path / (new_id() + SUFFIX)).mkdir()  # a directory with a snapshot's name
    # A fresh store (another worker) sees only the directory.
    other = SnapshotStore(directory=tmp_path)
    listed = [item["id"] for item in other.list()]
    bad_listed = {name for name, ident in planted.items() if ident in listed}
    assert listed == [real.id], bad_listed
    for name, ident in planted.items():
        assert other.get(ident) is None, name
        assert other.get_bytes(ident, gzip=True) is None, name
        assert other.get_bytes(ident, gzip=False) is None, name
    assert other.get(real.id) is not None


_WORKER = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from endpoint_samples import make_snapshot
from flightdeck.snapshot.store import SnapshotStore
store = SnapshotStore(max_snapshots={limit}, directory={directory!r})
time.sleep(max(0.0, {start} - time.time()))
for _ in range({count}):
    snap = make_snapshot()
    store.put(snap)
    print(snap.id, flush=True)
assert store.stats()["errors"] == 0, store.stats()
"""


def test_several_workers_one_directory(tmp_path: Path) -> None:
    workers, count, limit = 4, 15, 5
    start = time.time() + 1.0  # all workers write at once
    script = _WORKER.format(
        root=str(ROOT),
        tests=str(TESTS),
        limit=limit,
        directory=str(tmp_path),
        start=start,
        count=count,
    )
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(len(snapshot_files(tmp_path)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    ids: list[str] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        ids += out.split()
    done.set()
    watcher.join()
    assert len(ids) == workers * count and len(set(ids)) == len(ids)  # no collisions
    files = snapshot_files(tmp_path)
    assert len(files) == limit  # the quota holds across workers
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(SUFFIX)]  # no temp files
    # Concurrent writers may each be one file ahead of the others' rotation, never more.
    assert max(seen) <= limit + workers - 1, max(seen)
    reader = SnapshotStore(directory=tmp_path)
    assert len(reader.list()) == limit
    assert all(reader.get(f[: -len(SUFFIX)]) is not None for f in files)


class CountingOS:
    """``os`` as seen by the store, counting the snapshot files after every rename/unlink."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.counts: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)
        self.counts.append(len(snapshot_files(self.directory)))

    def unlink(self, path: str) -> None:
        os.unlink(path)
        self.counts.append(len(snapshot_files(self.directory)))


def test_quota_oldest_first_never_above(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 5
    store = SnapshotStore(max_snapshots=limit, directory=tmp_path)
    spy = CountingOS(tmp_path)
    monkeypatch.setattr(_directory, "os", spy)
    base = time.time() - 1000
    written = []
    for i in range(30):
        snap = make_snapshot(created=base + i)
        written.append(snap.id)
        store.put(snap)
        on_disk = {f[: -len(SUFFIX)] for f in snapshot_files(tmp_path)}
        assert on_disk == set(written[-limit:])  # the oldest went first
        assert [s["id"] for s in store.list()] == written[-limit:][::-1]
    # Checked at every change the store makes to the directory: never above the limit.
    assert len(spy.counts) >= 30 and max(spy.counts) <= limit, spy.counts


def test_two_workers_list_only_what_either_can_serve(decks: list[Any], tmp_path: Path) -> None:
    """With a directory, the directory is the truth. Worker A's capture is
    rotated out by worker B's; A must no longer list it, since B (answering a download
    that lands there) cannot serve it."""
    import serverapps

    def worker() -> Any:
        made = FlightDeck(
            serverapps.inner,
            directory=tmp_path,
            max_snapshots=2,
            slow_request=None,
            capture_delay=0.0,
        )
        decks.append(made)
        return made

    prefix = "/debug/flight"
    with uvicorn_thread(worker()) as a, uvicorn_thread(worker()) as b:
        created = http_post(a.url + prefix + "/snapshots")
        assert created == 201
        for _ in range(2):
            assert http_post(b.url + prefix + "/snapshots") == 201
        for srv in (a, b):
            listing = get_json(srv.url + prefix + "/snapshots")
            assert len(listing) == 2
            for item in listing:
                for other in (a, b):
                    url = f"{other.url}{prefix}/snapshots/{item['id']}"
                    assert http_get(url)[0] == 200, (srv.url, other.url)


def test_manual_captures_leave_automatic_snapshots_alone(decks: list[Any], tmp_path: Path) -> None:
    """End to end: a burst of captures from the endpoint does not push the
    automatic snapshots out of the store."""
    import serverapps

    deck = FlightDeck(
        serverapps.inner,
        directory=tmp_path,
        max_snapshots=3,
        slow_request=None,
        capture_delay=0.0,
        cooldown=0.001,
    )
    decks.append(deck)
    prefix = "/debug/flight"
    with uvicorn_thread(deck) as srv:
        for path in ("/error", "/fail"):
            assert http_get(srv.url + path)[0] == 500
            wait_until(lambda: not deck._capturing and len(deck.store.list()) >= 1)
        wait_until(lambda: len(get_json(srv.url + prefix + "/snapshots")) == 2)
        statuses = [http_post(srv.url + prefix + "/snapshots") for _ in range(30)]
        assert statuses.count(201) >= 1 and set(statuses) <= {201, 429}
        kinds = [item["trigger"]["kind"] for item in get_json(srv.url + prefix + "/snapshots")]
    assert sorted(kinds) == ["exception", "manual", "server_error"]


def http_post(url: str) -> int:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, method="POST"), timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
