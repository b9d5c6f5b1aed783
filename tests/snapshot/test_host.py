"""A host capture (``snapshot/host.py``): the other live processes' window files copied into
the capture up to their last complete chunk, and read back as one document whose processes'
ids never collide.

The other process runs in a fresh interpreter on the core of this run (see
``test_windowfile.py``); the merge and the file reading are checked on made-up inputs too.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import ROOT

from flightdeck import FlightRecorder
from flightdeck.asgi.config import Config
from flightdeck.snapshot import build, container, host, windowfile
from flightdeck.snapshot.store import SnapshotStore

_PEER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from flightdeck import FlightRecorder
    from flightdeck.snapshot.store import SnapshotStore

    async def main():
        rec = FlightRecorder(window=5, max_bytes=int(os.environ.get("FD_MAX", 1 << 20)))
        rec.keep_window_in(SnapshotStore(directory=sys.argv[1]))
        rec.start()

        async def work(i):
            await asyncio.sleep(0)

        for _ in range(50):
            await asyncio.gather(*(work(i) for i in range(5)))
        await asyncio.sleep(0.6)  # past the writer's interval: the tasks are in the file
        print(rec.stats["window_file"]["path"], flush=True)
        busy = time.monotonic() + float(os.environ.get("FD_BUSY", "0"))
        while time.monotonic() < busy:  # recording on, while the test reads the file
            await asyncio.gather(*(work(i) for i in range(50)))
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        rec.stop()

    asyncio.run(main())
    """
)


def _peer(directory: Path, **env_extra: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_extra)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PEER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    path = proc.stdout.readline().strip()
    assert path, "the peer did not start recording"
    return proc, path


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=30)


def _capture(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """This process's host capture into a store on ``directory``: (header, document)."""
    store = SnapshotStore(directory=directory)

    async def main() -> Any:
        rec = FlightRecorder(window=5, max_bytes=1 << 20)
        rec.keep_window_in(store)
        rec.start()
        try:
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(10)))
            return rec.build_into(store, rec.freeze(), kind="manual", reason="r", scope="host")
        finally:
            rec.stop()

    info = asyncio.run(main())
    data = store.get_stored(info.id)
    assert data is not None
    return container.read_header(data), container.read_document(data)


def test_a_host_capture_holds_the_other_live_process_and_its_ids_do_not_collide(
    tmp_path: Path,
) -> None:
    proc, path = _peer(tmp_path)
    try:
        head, doc = _capture(tmp_path)
        assert head["scope"] == "host"
        assert [p["pid"] for p in head["processes"]] == [os.getpid(), proc.pid]
        pids = [p["pid"] for p in doc["processes"]]
        assert pids == [os.getpid(), proc.pid]
        assert doc["processes"][1]["id_offset"] > 0 == doc["processes"][0]["id_offset"]
        assert {t["pid"] for t in doc["tasks"]} == set(pids)
        ids = [t["id"] for t in doc["tasks"]]
        assert len(ids) == len(set(ids))
        theirs = [t for t in doc["tasks"] if t["pid"] == proc.pid]
        assert sum(t["coro"] == "main.<locals>.work" for t in theirs) >= 250
        offset = doc["processes"][1]["id_offset"]
        assert all(int(t["id"][1:]) > offset for t in theirs)
        assert Path(path).exists()  # read, never taken nor removed
        listed = subprocess.run(
            [sys.executable, "-m", "flightdeck", "list", str(tmp_path)],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=60,
            check=True,
        ).stdout
        assert f"processes={os.getpid()},{proc.pid}" in listed, listed
    finally:
        _end(proc)
    assert proc.returncode == 0
    assert not Path(path).exists()  # its own clean end


def test_a_process_that_ended_is_left_to_the_recovery(tmp_path: Path) -> None:
    """A file nobody holds is a dead process's: not read (the recovery makes it a crash
    snapshot of its own), nor named as unreadable."""
    wdir = tmp_path / windowfile.WINDOWS
    wdir.mkdir(mode=0o700)
    dead = wdir / "otherhost-1234-0123abcd.fdk"
    dead.write_bytes(container.PREAMBLE)
    (wdir / f"{windowfile.TMP_PREFIX}otherhost-99-0123abcd.fdk.x").write_bytes(b"")
    peers, skipped = host.find_peers(str(tmp_path), None)
    assert peers == [] and skipped == []
    assert dead.exists()


def test_a_live_file_that_is_not_a_window_is_named_with_an_error(tmp_path: Path) -> None:
    wdir = tmp_path / windowfile.WINDOWS
    wdir.mkdir(mode=0o700)
    path = wdir / "otherhost-4321-0123abcd.fdk"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: a reader sees it held
        os.write(fd, b"garbage" * 100)
        peers, skipped = host.find_peers(str(tmp_path), None)
        assert peers == []
        assert [(s["pid"], s["file"]) for s in skipped] == [(4321, path.name)]
        assert "magic" in skipped[0]["error"] or "header" in skipped[0]["error"]
        # Its own file is never a peer of a process.
        assert host.find_peers(str(tmp_path), str(path)) == ([], [])
    finally:
        os.close(fd)


def _chunk(tag: bytes, payload: bytes) -> bytes:
    return container.chunk(tag, payload)


def test_reading_a_window_file_stops_at_a_torn_chunk_and_leaves_evicted_ones_out(
    tmp_path: Path,
) -> None:
    head = _chunk(container.HEAD, orjson.dumps({"process": {"pid": 7}}))
    first = _chunk(container.EVTS, orjson.dumps([[15, 1, "mark", "first"]]))
    gone = windowfile.GONE + _chunk(container.EVTS, b"[]")[4:]
    torn = bytearray(_chunk(container.EVTS, orjson.dumps([[15, 2, "mark", "torn"]])))
    torn[-2] ^= 0xFF  # the writer was writing it: its checksum fails
    path = tmp_path / "w.fdk"
    path.write_bytes(container.PREAMBLE + head + first + gone + bytes(torn) + b"\0" * 64)
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces, length, crc = host.read_window(fd)
    finally:
        os.close(fd)
    data = b"".join(pieces)
    assert data == container.PREAMBLE + head + first
    assert (length, crc) == (len(data), zlib.crc32(data))
    assert [tag for tag, _ in container.iter_chunks(data, strict=False)] == [
        container.HEAD,
        container.EVTS,
    ]


def _doc(pid: int, requests: list[int], tasks: list[int]) -> dict[str, Any]:
    return {
        "format": "flightdeck/1",
        "id": "x",
        "created_at": "",
        "trigger": {"kind": "manual", "reason": "", "request": None},
        "process": {"pid": pid, "hostname": "h"},
        "window": {"start": float(pid), "end": float(pid) + 10, "dropped": pid, "events": 1},
        "requests": [
            {
                "id": r,
                "start": float(pid) + r / 1e7,
                "task": f"t{tasks[0]}",
                "tasks": [f"t{tasks[0]}"],
            }
            for r in requests
        ],
        "tasks": [
            {
                "id": f"t{t}",
                "parent": f"t{tasks[0]}" if t != tasks[0] else None,
                "request": requests[0],
            }
            for t in tasks
        ],
        "loop": [{"kind": "step", "start": float(pid), "task": f"t{tasks[-1]}"}],
        "events": [
            {
                "kind": "executor",
                "start": float(pid),
                "task": f"t{tasks[0]}",
                "request": requests[0],
            }
        ],
    }


def test_the_merge_moves_each_process_ids_past_every_other_and_keeps_references() -> None:
    mine = _doc(10, [1, 2], [1, 2])
    theirs = _doc(20, [1_500_000], [1, 3])  # ids past the smallest stride: it grows
    note = {"pid": 30, "file": "h-30-00000000.fdk", "error": "short read"}
    doc = host.merge(mine, [theirs], [note])
    assert [p["pid"] for p in doc["processes"]] == [10, 20, 30]
    assert [p.get("id_offset") for p in doc["processes"]] == [0, 10_000_000, None]
    assert doc["processes"][2]["error"] == "short read"
    assert [r["id"] for r in doc["requests"]] == [1, 2, 11_500_000]  # by start
    ours = [r for r in doc["requests"] if r["pid"] == 10]
    assert [r["task"] for r in ours] == ["t1", "t1"]  # the capturing process's: unchanged
    other = next(r for r in doc["requests"] if r["pid"] == 20)
    assert other["task"] == "t10000001" and other["tasks"] == ["t10000001"]
    tasks = {t["id"]: t for t in doc["tasks"]}
    assert set(tasks) == {"t1", "t2", "t10000001", "t10000003"}
    assert tasks["t10000003"]["parent"] == "t10000001"
    assert tasks["t10000003"]["request"] == 11_500_000
    assert {e["task"] for e in doc["loop"]} == {"t2", "t10000003"}
    executor = next(e for e in doc["events"] if e["pid"] == 20)
    assert (executor["task"], executor["request"]) == ("t10000001", 11_500_000)
    assert doc["window"] == {"start": 10.0, "end": 30.0, "dropped": 30, "events": 2}
    assert list(doc)[:6] == ["format", "id", "created_at", "trigger", "process", "processes"]


def test_a_process_whose_window_cannot_be_built_is_named_and_the_rest_read() -> None:
    mine = _doc(10, [1], [1])
    note = orjson.dumps({"pid": 30, "file": "f", "error": "gone"})
    doc = host.read_host(
        mine, [(host.PROC, b"not a window"), (host.PSKP, note)], build.build_document
    )
    errors = [p for p in doc["processes"] if p.get("error")]
    assert len(errors) == 2
    assert "could not be read" in errors[0]["error"] and errors[1]["pid"] == 30
    assert [r["id"] for r in doc["requests"]] == [1]


def test_capture_scope_host_needs_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="capture_scope='host' needs a snapshot directory"):
        Config(capture_scope="host")
    with pytest.raises(ValueError, match="capture_scope must be 'process' or 'host'"):
        Config(capture_scope="everything")
    assert Config(capture_scope="host", directory=str(tmp_path)).capture_scope == "host"
    assert Config().capture_scope == "process"
    # From the environment: refused without a directory (logged, the default kept).
    monkeypatch.setenv("FLIGHTDECK_CAPTURE_SCOPE", "host")
    config = Config.from_env()
    assert config.capture_scope == "process"
    assert any("FLIGHTDECK_CAPTURE_SCOPE" in e for e in config.env_errors)
    monkeypatch.setenv("FLIGHTDECK_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("FLIGHTDECK_CAPTURE_SCOPE", "HOST")
    assert Config.from_env().capture_scope == "host"
    monkeypatch.setenv("FLIGHTDECK_CAPTURE_SCOPE", "cluster")
    config = Config.from_env()
    assert config.capture_scope == "process"
    assert any("not one of process, host" in e for e in config.env_errors)


def test_the_windows_copied_stay_within_the_budget_and_the_rest_are_named(
    tmp_path: Path,
) -> None:
    head = _chunk(container.HEAD, orjson.dumps({"process": {"pid": 7}}))
    body = _chunk(container.EVTS, orjson.dumps([[15, 1, "mark", "x" * 1000]]))
    peers = []
    for pid in (7, 8):
        path = tmp_path / f"h-{pid}-0123abcd.fdk"
        path.write_bytes(container.PREAMBLE + head + body)
        peers.append(host.Peer(str(path), os.open(path, os.O_RDONLY), {"pid": pid}))
    size = len(container.PREAMBLE + head + body)
    chunks = [b"".join(c) for c in host.host_chunks(peers, [], budget=size + 10)]
    assert [c[:4] for c in chunks] == [host.PROC, host.PSKP]
    note = orjson.loads(chunks[1][16:])  # past the chunk header
    assert note["pid"] == 8 and "store's bound" in note["error"]
    assert all(p.fd == -1 for p in peers)  # every descriptor closed


def test_reads_of_a_window_file_being_written_hold_only_whole_chunks(tmp_path: Path) -> None:
    """A peer recording flat out into a small window (its file rewritten when full): every
    read, whenever it falls, is whole chunks, each passing its checksum (what the writer
    was writing at that moment is read again or left out, never copied torn)."""
    proc, _ = _peer(tmp_path, FD_MAX=str(256 << 10), FD_BUSY="4")
    reads = 0
    try:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            peers, skipped = host.find_peers(str(tmp_path), None)
            assert skipped == []
            for peer in peers:
                try:
                    pieces, length, crc = host.read_window(peer.fd)
                finally:
                    peer.close()
                data = b"".join(pieces)
                assert (len(data), zlib.crc32(data)) == (length, crc)
                # Every chunk read is whole: parsing stops at the end, not before.
                assert _chunks_end(data) == length
                reads += 1
    finally:
        _end(proc)
    assert reads >= 10


def _chunks_end(data: bytes) -> int:
    """Where the last chunk that passes its checksum ends (``iter_chunks`` decompresses
    payloads, so their stored lengths are counted from the headers here)."""
    pos = len(container.PREAMBLE)
    while pos + 16 <= len(data):
        _tag, _flags, length, crc = container._CHUNK.unpack_from(data, pos)
        end = pos + 16 + length
        if end > len(data) or zlib.crc32(data[pos + 16 : end]) != crc:
            break
        pos = end
    return pos
