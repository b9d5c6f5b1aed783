from __future__ import annotations

import errno
import gzip
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from endpoint_samples import make_document, make_snapshot, write_many
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightdeck.snapshot.directory import STORED_SUFFIX
from flightdeck.snapshot.document import ID_PATTERN, Snapshot, new_id
from flightdeck.snapshot.store import SUFFIX, SnapshotStore, StoredInfo, encode

BASE = 1_764_121_800.0


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# A private directory for the property tests (a store checks, or creates, its directory).
_SCRATCH = tempfile.mkdtemp(prefix="flightdeck-store-test-")


def snapshot_files(directory: Path) -> list[str]:
    return [name for name in files(directory) if name.endswith(SUFFIX)]


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_snapshots"):
        SnapshotStore(max_snapshots=0)
    with pytest.raises(TypeError, match="max_snapshots"):
        SnapshotStore(max_snapshots=True)
    with pytest.raises(ValueError, match="max_bytes"):
        SnapshotStore(max_bytes=-1)
    with pytest.raises(TypeError, match="directory"):
        SnapshotStore(directory=3)  # type: ignore[arg-type]


def test_memory_bound_by_count() -> None:
    store = SnapshotStore(max_snapshots=3)
    snaps = [make_snapshot(created=BASE + i) for i in range(5)]
    for snap in snaps:
        info = store.put(snap)
        assert isinstance(info, StoredInfo) and info.id == snap.id and info.path is None
    assert [s["id"] for s in store.list()] == [s.id for s in reversed(snaps[2:])]
    assert store.evicted == 2
    assert store.get(snaps[0].id) is None
    got = store.get(snaps[4].id)
    assert got is not None and got.to_dict() == snaps[4].to_dict()
    assert store.latest_id() == snaps[4].id
    assert store.stats()["snapshots"] == 3


def test_memory_bound_by_bytes() -> None:
    one = len(encode(make_snapshot(padding=200))[0])
    store = SnapshotStore(max_snapshots=100, max_bytes=int(one * 2.5))
    snaps = [make_snapshot(created=BASE + i, padding=200) for i in range(6)]
    for snap in snaps:
        store.put(snap)
        assert store.stats()["bytes"] <= store.max_bytes
    assert [s["id"] for s in store.list()] == [snaps[5].id, snaps[4].id]
    # The newest is kept even when alone it exceeds the bound.
    big = make_snapshot(created=BASE + 10, padding=2000)
    store.put(big)
    assert [s["id"] for s in store.list()] == [big.id]


def test_list_summary_shape() -> None:
    store = SnapshotStore()
    snap = make_snapshot(created=BASE, reason="<b>x</b>", path="/a")
    info = store.put(snap)
    (item,) = store.list()
    assert item == {
        "id": snap.id,
        "created_at": snap.created_at,
        "trigger": {"kind": "slow_request", "reason": "<b>x</b>"},
        "request": {"method": "GET", "path": "/a", "status": 200, "duration": 1.2},
        "pid": os.getpid(),
        "size": len(snap.dumps("json")),
        "service": None,
        "incident": None,
    }
    assert info.size == item["size"]
    item["trigger"]["kind"] = "mutated"
    assert store.list()[0]["trigger"]["kind"] == "slow_request"
    assert store.get_bytes(snap.id, gzip=False) == snap.dumps("json")
    gz = store.get_bytes(snap.id, gzip=True)
    assert gz is not None and gzip.decompress(gz) == snap.dumps("json")


def test_disk_round_trip(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path)
    snap = make_snapshot(created=BASE)
    info = store.put(snap)
    path = tmp_path / f"{snap.id}.json.gz"
    assert info.path == str(path)
    assert files(tmp_path) == [path.name]
    assert store.written == 1 and store.errors == 0
    # The file is plain gzip: standard tools and Snapshot.load read it.
    assert gzip.decompress(path.read_bytes()) == snap.dumps("json")
    assert Snapshot.load(path).to_dict() == snap.to_dict()
    # A fresh store (another worker) serves it from disk.
    other = SnapshotStore(directory=tmp_path)
    got = other.get(snap.id)
    assert got is not None and got.to_dict() == snap.to_dict()
    assert other.get_bytes(snap.id, gzip=True) == path.read_bytes()
    assert other.get_bytes(snap.id, gzip=False) == snap.dumps("json")
    assert other.list() == store.list()
    assert other.latest_id() == snap.id
    # Served twice (the second time from the validation cache) with the same answer.
    assert other.get_bytes(snap.id, gzip=True) == path.read_bytes()


def test_two_workers_share_a_directory(tmp_path: Path) -> None:
    a = SnapshotStore(max_snapshots=4, directory=tmp_path)
    b = SnapshotStore(max_snapshots=4, directory=tmp_path)
    a_snaps = [make_snapshot(created=BASE + i) for i in (0, 2, 4)]
    b_snaps = [make_snapshot(created=BASE + i) for i in (1, 3, 5)]
    a.put(a_snaps[0])
    b.put(b_snaps[0])
    assert {s["id"] for s in a.list()} == {a_snaps[0].id, b_snaps[0].id}
    assert {s["id"] for s in b.list()} == {a_snaps[0].id, b_snaps[0].id}
    got = a.get(b_snaps[0].id)
    assert got is not None and got.id == b_snaps[0].id
    for x, y in zip(a_snaps[1:], b_snaps[1:], strict=True):
        a.put(x)
        b.put(y)
        assert len(snapshot_files(tmp_path)) <= 4
    newest = sorted([*a_snaps, *b_snaps], key=lambda s: s.created_at)[-4:]
    assert snapshot_files(tmp_path) == sorted(f"{s.id}.json.gz" for s in newest)
    assert a.removed + b.removed == 2


def test_quota_orders_by_created_time_not_arrival(tmp_path: Path) -> None:
    store = SnapshotStore(max_snapshots=2, directory=tmp_path)
    late, early, middle = (make_snapshot(created=BASE + t) for t in (30, 10, 20))
    for snap in (late, early, middle):
        store.put(snap)
    assert snapshot_files(tmp_path) == sorted(f"{s.id}.json.gz" for s in (late, middle))


def test_processes_share_quota(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=write_many, args=(str(tmp_path), 30, 7, start, results))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    start.set()
    reports = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert reports == [(30, 0), (30, 0)]
    assert len(snapshot_files(tmp_path)) <= 7
    assert files(tmp_path) == snapshot_files(tmp_path)  # no temporary file left behind
    listing = SnapshotStore(directory=tmp_path).list()
    assert len(listing) == len(snapshot_files(tmp_path))


def test_threads_share_a_store(tmp_path: Path) -> None:
    store = SnapshotStore(max_snapshots=5, directory=tmp_path)
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(10):
                store.put(make_snapshot())
                store.list()
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert store.written == 40 and store.errors == 0
    assert store.stats()["snapshots"] == 0  # with a directory, memory holds none
    assert len(store.list()) == 5
    assert len(snapshot_files(tmp_path)) <= 5


def _plant(directory: Path, ident: str, data: bytes) -> Path:
    path = directory / f"{ident}.json.gz"
    path.write_bytes(data)
    return path


def test_bad_files_are_skipped(tmp_path: Path) -> None:
    good = make_snapshot(created=BASE)
    SnapshotStore(directory=tmp_path).put(good)
    bad: list[str] = []

    garbage = new_id(BASE + 1)
    _plant(tmp_path, garbage, b"not gzip at all")
    bad.append(garbage)

    truncated = make_snapshot(created=BASE + 2, padding=300)
    data, _ = encode(truncated)
    _plant(tmp_path, truncated.id, data[: len(data) // 2])
    bad.append(truncated.id)

    corrupt = make_snapshot(created=BASE + 3, padding=300)
    data, _ = encode(corrupt)
    middle = len(data) // 2
    _plant(tmp_path, corrupt.id, data[:middle] + bytes(64) + data[middle + 64 :])
    bad.append(corrupt.id)

    newer_doc = make_document(created=BASE + 4, format="flightdeck/2")
    _plant(tmp_path, newer_doc["id"], encode(Snapshot(newer_doc))[0])
    bad.append(newer_doc["id"])

    mismatched = make_snapshot(created=BASE + 5)
    misnamed = new_id(BASE + 5)
    _plant(tmp_path, misnamed, encode(mismatched)[0])
    bad.append(misnamed)

    plain = make_snapshot(created=BASE + 6)  # gzip without our header: not ours
    _plant(tmp_path, plain.id, gzip.compress(plain.dumps("json")))
    bad.append(plain.id)

    empty = new_id(BASE + 7)
    _plant(tmp_path, empty, b"")
    bad.append(empty)

    foreign = make_snapshot(created=BASE + 8)
    (tmp_path / "notes.json.gz").write_bytes(encode(foreign)[0])
    (tmp_path / f"{foreign.id}.json").write_bytes(foreign.dumps("json"))
    (tmp_path / f"{new_id(BASE + 9)}.json.gz").mkdir()

    store = SnapshotStore(directory=tmp_path)
    listed = [s["id"] for s in store.list()]
    assert good.id in listed
    for ident in bad:
        if ident != corrupt.id:  # its header is intact; it is listed but never served
            assert ident not in listed
        assert store.get(ident) is None
        assert store.get_bytes(ident, gzip=True) is None
        assert store.get_bytes(ident, gzip=False) is None
    assert foreign.id not in listed and store.get(foreign.id) is None
    assert store.latest_id() in {good.id, corrupt.id}


def test_impossible_dates_do_not_break_listing_or_quota(tmp_path: Path) -> None:
    weird = "99999999T999999Z-1-0123abcd"
    _plant(tmp_path, weird, b"junk")
    doc = make_document(created=BASE)
    doc["id"], doc["created_at"] = "20269999T999999Z-1-0123abcd", "yesterday"
    _plant(tmp_path, doc["id"], encode(Snapshot(doc))[0])
    store = SnapshotStore(max_snapshots=2, directory=tmp_path)
    # A summary whose date disagrees with its id is not trusted: moved aside, never listed.
    assert store.list() == []
    assert (tmp_path / f".corrupt-{doc['id']}{SUFFIX}").is_file()
    newest = make_snapshot(created=BASE + 5)
    store.put(newest)
    assert [s["id"] for s in store.list()] == [newest.id]
    # Unreadable files count against the quota (the oldest, by their id) but are not ours
    # to judge: another version of flightdeck may be writing them.
    names = [n for n in snapshot_files(tmp_path) if not n.startswith(".")]
    assert names == sorted([f"{newest.id}{SUFFIX}", f"{weird}{SUFFIX}"])


def test_deleted_directory_is_recreated(tmp_path: Path) -> None:
    directory = tmp_path / "snaps"
    store = SnapshotStore(directory=directory)
    store.put(make_snapshot())
    shutil.rmtree(directory)
    assert store.list() == []  # the directory is the truth: its files are gone
    snap = make_snapshot()
    info = store.put(snap)
    assert info.path is not None and Path(info.path).is_file()
    assert store.errors == 0 and store.written == 2


@pytest.mark.parametrize("where", ["replace", "open"])
def test_unwritable_directory_keeps_memory_copy(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    if where == "replace":

        def fail_replace(src: Any, dst: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "replace", fail_replace)
    else:
        real_open = os.open

        def fail_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_CREAT:
                raise OSError(errno.EROFS, "Read-only file system")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", fail_open)
    store = SnapshotStore(directory=tmp_path)
    with caplog.at_level(logging.WARNING, logger="flightdeck"):
        first = store.put(make_snapshot())
        second = store.put(make_snapshot())
    assert first.path is None and second.path is None
    assert store.errors == 2 and store.written == 0
    assert len([r for r in caplog.records if r.name == "flightdeck"]) == 1
    assert files(tmp_path) == []  # temporary files removed
    assert {s["id"] for s in store.list()} == {first.id, second.id}
    assert store.get(first.id) is not None


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    inside = tmp_path / "store"
    outside.mkdir()
    inside.mkdir()
    snap = make_snapshot()
    target = outside / "secret.json.gz"
    target.write_bytes(encode(snap)[0])
    (inside / f"{snap.id}.json.gz").symlink_to(target)
    store = SnapshotStore(max_snapshots=1, directory=inside)
    assert store.list() == []
    assert store.get(snap.id) is None
    assert store.get_bytes(snap.id, gzip=True) is None
    assert store.latest_id() is None
    store.put(make_snapshot())
    store.put(make_snapshot())
    assert target.exists()  # the quota never touches what a symlink points to


def test_fifo_is_never_read(tmp_path: Path) -> None:
    ident = new_id()
    os.mkfifo(tmp_path / f"{ident}.json.gz")
    store = SnapshotStore(directory=tmp_path)
    assert store.list() == []
    assert store.get(ident) is None and store.get_bytes(ident, gzip=True) is None


def test_files_are_private(tmp_path: Path) -> None:
    info = SnapshotStore(directory=tmp_path).put(make_snapshot())
    assert info.path is not None
    assert os.stat(info.path).st_mode & 0o077 == 0


ids = st.one_of(
    st.text(max_size=60),
    st.from_regex(ID_PATTERN, fullmatch=True),
    st.sampled_from(["latest", "..", "../x", "/etc/passwd", "a/../../b", "x\0y", ""]),
    st.from_regex(ID_PATTERN, fullmatch=True).map(lambda s: "../" + s),
    st.from_regex(ID_PATTERN, fullmatch=True).map(lambda s: s + "/../../etc"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ids)
def test_ids_never_escape_the_directory(ident: str) -> None:
    directory = os.path.realpath(_SCRATCH)
    store = SnapshotStore(directory=directory)
    assert store._dir is not None
    path = store._dir.path_of(ident)
    if path is None:
        assert ID_PATTERN.match(ident) is None
    else:
        assert os.path.dirname(os.path.realpath(path)) == directory
        assert os.path.basename(path) in (ident + SUFFIX, ident + STORED_SUFFIX)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(st.text(max_size=60).filter(lambda s: ID_PATTERN.match(s) is None))
def test_invalid_ids_never_touch_the_filesystem(ident: str) -> None:
    store = SnapshotStore(directory=_SCRATCH)
    calls: list[Any] = []
    real_open, real_stat = os.open, os.stat

    def spy_open(*args: Any, **kwargs: Any) -> int:
        calls.append(args)
        return real_open(*args, **kwargs)

    def spy_stat(*args: Any, **kwargs: Any) -> os.stat_result:
        calls.append(args)
        return real_stat(*args, **kwargs)

    os.open, os.stat = spy_open, spy_stat
    try:
        assert store.get(ident) is None
        assert store.get_bytes(ident, gzip=True) is None
        assert store.get_bytes(ident, gzip=False) is None
    finally:
        os.open, os.stat = real_open, real_stat
    assert calls == []


def test_header_summary_is_sanitized(tmp_path: Path) -> None:
    doc = make_document(reason="r" * 10_000, path="/p" * 5_000)
    doc["trigger"]["kind"] = 42
    doc["trigger"]["request"]["status"] = "200"
    doc["process"]["pid"] = True
    store = SnapshotStore(directory=tmp_path)
    store.put(Snapshot(doc))
    (item,) = SnapshotStore(directory=tmp_path).list()
    assert len(item["trigger"]["reason"]) <= 1024
    assert len(item["request"]["path"]) <= 2048
    assert item["trigger"]["kind"] == ""
    assert item["request"]["status"] is None
    assert item["pid"] is None
    orjson.dumps(item)


def test_trace_ids_kept_in_the_verified_summary(tmp_path: Path) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    doc = make_document()
    doc["requests"][0]["trace_id"] = trace
    doc["requests"].append({**doc["requests"][0], "id": 2, "trace_id": "NOT-A-TRACE"})
    traced, plain = Snapshot(doc), make_snapshot()
    store = SnapshotStore(directory=tmp_path)
    store.put(traced)
    store.put(plain)
    assert [s["id"] for s in store.list(trace_id=trace)] == [traced.id]
    # Another process sharing the directory reads them from the files' summaries.
    other = SnapshotStore(directory=tmp_path)
    assert [s["id"] for s in other.list(trace_id=trace)] == [traced.id]
    assert other.list(trace_id="0" * 31 + "1") == []
    assert all("trace_ids" not in s for s in other.list())  # internal, not in the listing


def test_remote_snapshots_are_read_through_the_hook() -> None:
    store = SnapshotStore()
    elsewhere = make_snapshot()
    data = gzip.compress(elsewhere.dumps("json"))
    store.remote = lambda ident: data if ident == elsewhere.id else None
    assert store.get_bytes(elsewhere.id, gzip=True) == data
    assert store.get_bytes(elsewhere.id, gzip=False) == elsewhere.dumps("json")
    got = store.get(elsewhere.id)
    assert got is not None and got.id == elsewhere.id
    assert store.get(new_id()) is None
    assert store.list() == []  # listed by the fleet's incidents, never as local
    # A hook answering for another id is not believed.
    store.remote = lambda ident: data
    assert store.get(new_id()) is None
