"""The window file (``windowfile.py``): created private and locked, bounded on disk, readable
up to its last complete chunk, given up (memory only) when it cannot be written, and turned
into exactly one crash snapshot when its process died without stopping its recorder.

Scripts that must die run in a fresh interpreter (a subprocess), on the core of this run.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import stat
import struct
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
from flightdeck.snapshot import container, recovery, windowfile
from flightdeck.snapshot.store import SnapshotStore

_DIE = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys, threading, time
    from flightdeck import FlightRecorder
    from flightdeck.snapshot.store import SnapshotStore

    directory, how = sys.argv[1], sys.argv[2]

    async def main():
        rec = FlightRecorder(window=5, max_bytes=int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 20,
                             loop_blocked=0.05)
        rec.keep_window_in(SnapshotStore(directory=directory))
        rec.start()

        async def work(i):
            await asyncio.sleep(0)

        t0 = time.monotonic()
        path = rec.stats["window_file"]["path"]
        largest = 0
        run = float(os.environ.get("FD_RUN", "0.8"))
        # FD_LAPS: go on past FD_RUN (up to 40 s) until the ring has wrapped that many times,
        # however slowly a loaded machine lets the writer go.
        laps = int(os.environ.get("FD_LAPS", "0"))
        checked = 0.0
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= run and elapsed - checked >= 0.1:
                checked = elapsed
                if elapsed >= 40 or rec.stats["window_file"]["laps"] >= laps:
                    break
            await asyncio.gather(*(work(i) for i in range(20)))
            await asyncio.sleep(0.001)
            largest = max(largest, os.stat(path).st_size)
        stats = dict(rec.stats["window_file"], largest=largest)
        print(path, flush=True)
        print(json.dumps(stats), flush=True)
        if how == "exit":
            os._exit(3)
        if how == "abort_in_block":
            # gunicorn's handle_abort: sys.exit(1) from a signal handler inside the blocked step
            signal.signal(signal.SIGABRT, lambda *a: sys.exit(1))
            threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGABRT)).start()
            time.sleep(5)
        if how == "stop":
            rec.stop()
        # "return": main returns without stop(); the process ends normally

    asyncio.run(main())
    """
)


def _run(
    directory: Path, how: str, *extra: str, run: float = 0.8, laps: int = 0
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FD_RUN=str(run), FD_LAPS=str(laps))
    return subprocess.run(
        [sys.executable, "-c", _DIE, str(directory), how, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _files(directory: Path) -> list[Path]:
    wdir = directory / "windows"
    return sorted(wdir.iterdir()) if wdir.exists() else []


def _store(directory: Path) -> SnapshotStore:
    return SnapshotStore(directory=directory)


def test_the_file_is_private_locked_named_after_the_process_and_removed_at_stop(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        rec = FlightRecorder(window=5, max_bytes=1 << 20)
        rec.keep_window_in(_store(tmp_path))
        rec.start()
        try:
            for _ in range(50):
                await asyncio.sleep(0.001)
            path = Path(rec.stats["window_file"]["path"])
            st = path.stat()
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert stat.S_IMODE((tmp_path / "windows").stat().st_mode) == 0o700
            assert f"-{os.getpid()}-" in path.name and path.suffix == ".fdk"
            assert st.st_size == rec.stats["window_file"]["capacity"]  # reserved up front
            fd = os.open(path, os.O_RDONLY)
            try:  # held for the recorder's life: another open description cannot take it
                with pytest.raises(OSError) as exc:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                assert exc.value.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
            finally:
                os.close(fd)
            assert recovery.recover(_store(tmp_path)) == []  # alive: left alone
            assert path.exists()
        finally:
            rec.stop()
        assert _files(tmp_path) == []

    asyncio.run(main())
    assert _store(tmp_path).list() == []


@pytest.mark.parametrize("how", ["stop", "return"])
def test_a_clean_end_or_a_script_returning_without_stop_leaves_no_crash(
    tmp_path: Path, how: str
) -> None:
    proc = _run(tmp_path, how)
    assert proc.returncode == 0, proc.stderr
    assert _files(tmp_path) == []
    assert recovery.recover(_store(tmp_path)) == []


def test_a_dead_process_file_becomes_one_crash_snapshot_and_is_removed(tmp_path: Path) -> None:
    proc = _run(tmp_path, "exit")
    assert proc.returncode == 3, proc.stderr
    path = Path(proc.stdout.splitlines()[0].strip())
    assert path.exists()
    store = _store(tmp_path)
    made = recovery.recover(store)
    assert len(made) == 1 and not path.exists()
    (item,) = store.list()
    assert item["trigger"]["kind"] == "crash" and item["id"] == made[0]
    pid = int(path.name.split("-")[-2])
    assert item["pid"] == pid
    assert item["trigger"]["reason"].startswith(f"process {pid} ended without shutdown")
    doc = store.get(made[0])
    assert doc is not None
    body = doc.to_dict()
    assert body["trigger"]["kind"] == "crash" and body["process"]["pid"] == pid
    assert body["tasks"], "the window's tasks are in it"
    assert recovery.recover(store) == []  # exactly once


def test_sys_exit_inside_a_blocked_step_is_a_crash_with_the_block_in_its_reason(
    tmp_path: Path,
) -> None:
    proc = _run(tmp_path, "abort_in_block")
    assert proc.returncode == 1, proc.stderr
    store = _store(tmp_path)
    made = recovery.recover(store)
    assert len(made) == 1, (proc.stdout, proc.stderr)
    reason = store.list()[0]["trigger"]["reason"]
    assert "while the loop was blocked for" in reason, reason
    assert "main (<string>:" in reason, reason
    snap = store.get(made[0])
    assert snap is not None
    blocks = [
        e
        for e in snap.to_dict()["loop"]
        if e["kind"] == "block" and "main (<string>:" in (e["callback"] or "")
    ]
    # Ended by the exception unwinding it (asyncio.run's cleanup ran the loop once more).
    assert len(blocks) == 1, blocks
    assert blocks[0]["duration"] >= 0.5 and blocks[0]["stack"][-1]["function"] == "main"


def test_the_watchdogs_block_is_the_running_step_when_written_after_the_step_began() -> None:
    # The watchdog's start is a guess: when its heartbeat was queued behind the step that
    # blocks, it is the previous heartbeat, before the step began. A state written after the
    # step began, while blocked, still describes that step (its stack was taken then), so the
    # native watch's record only moves the end; a block of the state written before the step
    # began is an earlier one, and the watch's record makes the block.
    site = "fetch_legacy (app.py:12)"
    t0, seen = 2_000, 9_000
    block = {"start": 1_500, "site": site, "request": None}
    later = {"t_now": 2_500, "block": block}
    state, end, extra = recovery._watched((t0, seen, 7), later, 2_500, [], {})
    assert state["block"]["site"] == site and end == seen and extra is None
    earlier = {"t_now": 1_900, "block": block}
    state, end, extra = recovery._watched((t0, seen, 7), earlier, 1_900, [], {})
    assert state["block"]["start"] == t0 and "no stack could be taken" in state["block"]["site"]
    assert end == seen and extra is not None


def test_two_processes_racing_to_recover_make_one_snapshot_per_file(tmp_path: Path) -> None:
    # One process dies leaving four window files (each new process would recover the last).
    many = (
        "import asyncio, os, sys, time; from flightdeck import FlightRecorder;"
        "from flightdeck.snapshot.windowfile import WindowFile\n"
        "async def main():\n"
        "    rec = FlightRecorder(window=5, max_bytes=1 << 20); rec.start()\n"
        "    for _ in range(200): await asyncio.sleep(0)\n"
        "    for _ in range(4):\n"
        "        wf = WindowFile(sys.argv[1], rec._file_head(), 4 << 20); wf.create()\n"
        "        wf.update(rec._window.freeze(), rec._file_state())\n"
        "    os._exit(3)\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", many, str(tmp_path)], env=env, timeout=60)
    assert proc.returncode == 3
    assert len(_files(tmp_path)) == 4
    code = (
        "import sys; from flightdeck.snapshot.store import SnapshotStore;"
        "from flightdeck.snapshot.recovery import recover;"
        "print(' '.join(recover(SnapshotStore(directory=sys.argv[1]))))"
    )
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = [r.communicate(timeout=60)[0].split() for r in racers]
    made = outs[0] + outs[1]
    assert len(made) == 4 and len(set(made)) == 4, outs
    assert sorted(s["id"] for s in _store(tmp_path).list()) == sorted(made)
    assert _files(tmp_path) == []


def test_an_unlocked_file_is_dead_whatever_process_now_has_its_pid(tmp_path: Path) -> None:
    """Liveness is the lock, not the pid: a file named after a live process that is not
    recording (this test's own pid, pid 1) is recovered, and one whose lock is held is not,
    whatever pid its name says."""
    proc = _run(tmp_path, "exit", run=0.2)
    dead = Path(proc.stdout.splitlines()[0].strip())
    reused = dead.with_name(dead.name.replace(dead.name.split("-")[-2], str(os.getpid())))
    dead.rename(reused)
    held = reused.with_name(f"host-1-{'ab' * 4}.fdk")
    held.write_bytes(reused.read_bytes())
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        made = recovery.recover(_store(tmp_path))
        assert len(made) == 1 and not reused.exists() and held.exists()
    finally:
        os.close(fd)
    assert len(recovery.recover(_store(tmp_path))) == 1


def _frame_spans(data: bytes) -> list[tuple[int, int, int]]:
    """(sequence number, start, end) of each whole frame in a window file's ring."""
    head = container.read_header(data)
    start, size = head["ring"]
    spans = []
    pos = data.find(windowfile.FRAM, start, start + size)
    while pos >= 0:
        _tag, _flags, length, crc = container._CHUNK.unpack_from(data, pos)
        body = data[pos + 16 : pos + 16 + length]
        if len(body) == length and zlib.crc32(body) == crc:
            spans.append((windowfile.FRAME.unpack_from(body, 0)[0], pos, pos + 16 + length))
        pos = data.find(windowfile.FRAM, pos + 1, start + size)
    return sorted(spans)


def _event_count(parsed: recovery.Parsed) -> int:
    return recovery._scan_records(parsed.records, parsed.status)[0]


def _native_built() -> bool:
    from flightdeck.core.cores import native_module

    return native_module() is not None


def test_a_torn_frame_at_the_head_is_ignored_and_the_whole_ones_recovered(tmp_path: Path) -> None:
    proc = _run(tmp_path, "exit")
    path = Path(proc.stdout.splitlines()[0].strip())
    data = path.read_bytes()
    whole = recovery.parse(data)
    assert whole.records
    # The newest frame torn (as a kill in the middle of its write leaves it): the frames
    # before it are read, it is not, and what is read decodes.
    seq, start, end = _frame_spans(data)[-1]
    assert seq == whole.last_seq
    cut = start + (end - start) // 2
    torn = data[:cut] + bytes(len(data) - cut)
    path.write_bytes(torn)
    parsed = recovery.parse(torn)
    assert parsed.last_seq == seq - 1
    assert 0 < _event_count(parsed) <= _event_count(whole)
    made = recovery.recover(_store(tmp_path))
    assert len(made) == 1
    snap = _store(tmp_path).get(made[0])
    assert snap is not None and snap.to_dict()["trigger"]["kind"] == "crash"


@pytest.mark.parametrize("core", ["native", "python"])
def test_the_file_never_takes_more_than_max_bytes_and_its_overhead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, core: str
) -> None:
    """A small window recording flat out for seconds evicts many generations: the file's
    ring wraps many times over, the file never grows (its size is sampled at every turn of
    the loop), and what a crash leaves is one readable snapshot of the newest events."""
    if core == "python":
        monkeypatch.setenv("FLIGHTDECK_NO_EXTENSIONS", "1")
    elif not _native_built():
        # Only a pure install (FLIGHTDECK_NO_EXTENSIONS) lacks the extension; the native runs set
        # FLIGHTDECK_EXPECT_NATIVE=1, under which tests/conftest.py fails this skip instead.
        pytest.skip("the native core is not built")
    max_bytes = 64 << 10
    proc = _run(tmp_path, "exit", str(max_bytes), run=1.0, laps=3)
    assert proc.returncode == 3, proc.stderr
    path = Path(proc.stdout.splitlines()[0].strip())
    stats = orjson.loads(proc.stdout.splitlines()[1])
    assert stats["laps"] >= 3, stats  # the ring was overwritten many times over
    assert stats["bytes"] > 2 * max_bytes, stats
    bound = max_bytes + windowfile.OVERHEAD
    assert stats["largest"] <= bound and path.stat().st_size <= bound, stats
    parsed = recovery.parse(path.read_bytes())
    assert _event_count(parsed) > 0
    made = recovery.recover(_store(tmp_path))
    assert len(made) == 1
    snap = _store(tmp_path).get(made[0])
    assert snap is not None
    body = snap.to_dict()
    assert body["tasks"] and body["window"]["end"] > 0


@pytest.mark.parametrize("failure", ["enospc", "unwritable"])
def test_a_file_that_cannot_be_created_falls_back_to_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    if failure == "enospc":

        def full(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", full)
    else:
        real_open = os.open

        def refuse(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            if "windows" in os.fspath(path) and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_open(path, flags, mode, **kw)

        monkeypatch.setattr(os, "open", refuse)

    async def main() -> dict[str, Any]:
        rec = FlightRecorder(window=5, max_bytes=1 << 20)
        rec.keep_window_in(_store(tmp_path))
        rec.start()
        try:
            for _ in range(20):
                await asyncio.sleep(0.001)
            snap = rec.snapshot("still records")
            assert snap.to_dict()["tasks"] is not None
            return dict(rec.stats["window_file"])
        finally:
            rec.stop()

    stats = asyncio.run(main())
    assert stats["path"] is None and stats["errors"] >= 1
    assert [p for p in _files(tmp_path) if not p.name.startswith(".")] == []


def test_flightdeck_recover_makes_the_crash_snapshots_from_a_shell(tmp_path: Path) -> None:
    proc = _run(tmp_path, "exit", run=0.2)
    pid = Path(proc.stdout.splitlines()[0].strip()).name.split("-")[-2]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "flightdeck", "recover", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    ident = line.split()[0]
    assert f"crash  process {pid} ended without shutdown" in line
    assert [s["id"] for s in _store(tmp_path).list()] == [ident]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and again.stdout == ""  # nothing left to recover
    missing = subprocess.run(
        [*cmd[:-1], str(tmp_path / "nope")], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode == 2 and "not a directory" in missing.stderr
    assert not (tmp_path / "nope").exists()


def test_the_pure_cores_events_are_each_written_once_across_seals(tmp_path: Path) -> None:
    """Each write adds only the events recorded since the last one; those of the tail the
    window then seals are not written again (only the status at the segment's start is):
    every event is in the file once, in order."""
    from flightdeck.core.window import Frozen

    class Sealed:
        def __init__(self, events: list[Any]) -> None:
            self.t_start, self.t_end, self.count = events[0][1], events[-1][1], len(events)
            self.tasks: dict[int, Any] = {}
            self.requests: dict[int, Any] = {}
            self._events = events

        def events(self) -> list[Any]:
            return self._events

    def mark(t: int) -> tuple[Any, ...]:
        return (15, t, "mark", f"m{t}")

    def records(path: str) -> list[Any]:
        parsed = recovery.parse(Path(path).read_bytes())
        return [list(e) for _t, p in parsed.records for e in orjson.loads(p)]

    wf = windowfile.WindowFile(str(tmp_path), {"process": {"pid": 1}}, capacity=1 << 20)
    wf.create()
    try:
        tail = [mark(1), mark(2)]
        wf.update(Frozen([], tail, {}, {}, 0, 2), {"t_now": 2})
        tail += [mark(3)]
        wf.update(Frozen([], list(tail), {}, {}, 0, 3), {"t_now": 3})
        tail += [mark(4), mark(5)]
        wf.update(Frozen([], list(tail), {}, {}, 0, 5), {"t_now": 5})
        parsed = recovery.parse(Path(wf.path).read_bytes())
        assert len(parsed.records) == 3 and parsed.state["t_now"] == 5  # three appends
        assert records(wf.path) == [list(mark(t)) for t in range(1, 6)]
        frames = wf.frames
        # Sealed with one more event than was written: only that one is added.
        sealed = Sealed([*tail, mark(6)])
        wf.update(Frozen([sealed], [mark(7)], {}, {}, 0, 7), {"t_now": 7})
        assert records(wf.path) == [list(mark(t)) for t in range(1, 8)]
        assert wf.frames == frames + 3  # mark 6, the segment's status, mark 7
    finally:
        wf.close(clean=True)


def test_the_ring_keeps_the_newest_segments_whole_as_it_wraps(tmp_path: Path) -> None:
    """Segments written far past the ring's size: what is read is the newest of them, whole
    and in order, from the status at the oldest one kept, never a part of an overwritten
    one; the window's oldest (``live``) bounds it too."""
    from flightdeck.core.window import Frozen

    class Gen:
        def __init__(self, n: int) -> None:
            self.t_start, self.t_end, self.count = n, n + 1, 2
            self.tasks = {n: (1, n, n, None, "t", "coro", None, None)}
            self.requests: dict[int, Any] = {}
            self.text = os.urandom(1500).hex()  # incompressible: the frames take room

        def events(self) -> list[Any]:
            return [(15, self.t_start, "mark", self.text), (15, self.t_end, "mark", "end")]

    wf = windowfile.WindowFile(str(tmp_path), {"process": {"pid": 1}}, capacity=64 << 10)
    wf.create()
    try:
        gens = [Gen(i * 10) for i in range(1, 120)]
        for i in range(1, len(gens) + 1):
            live = gens[max(0, i - 30) : i]  # the window holds the last thirty
            wf.update(Frozen(live, [], {}, {}, 0, live[-1].t_end), {"t_now": live[-1].t_end})
        assert wf.laps >= 2
        parsed = recovery.parse(Path(wf.path).read_bytes())
        events = [e for _t, p in parsed.records for e in orjson.loads(p)]
        assert len(events) % 2 == 0 and len(events) >= 2 * 10
        starts = [e[1] for e in events[::2]]
        kept = gens[-len(starts) :]
        assert starts == [g.t_start for g in kept]  # the newest, in order, none torn
        assert events == [list(e) for g in kept for e in g.events()]
        assert parsed.status == {"tasks": [list(kept[0].tasks[kept[0].t_start])], "requests": []}
        # A window holding fewer: only those are read.
        wf.update(Frozen(gens[-3:], [], {}, {}, 0, gens[-1].t_end), {"t_now": gens[-1].t_end})
        parsed = recovery.parse(Path(wf.path).read_bytes())
        events = [e for _t, p in parsed.records for e in orjson.loads(p)]
        assert [e[1] for e in events[::2]] == [g.t_start for g in gens[-3:]]
    finally:
        wf.close(clean=True)
    assert not Path(wf.path).exists()


def test_frames_overwritten_or_torn_are_skipped_and_the_longest_run_kept(tmp_path: Path) -> None:
    """The reader's rules on made-up frames: every frame read is one that was written whole,
    and the run kept is consecutive, whatever the head overwrote in part."""
    wf = windowfile.WindowFile(str(tmp_path), {"process": {"pid": 1}}, capacity=64 << 10)
    wf.create()
    try:
        bodies = {}
        for _ in range(400):
            body = os.urandom(int.from_bytes(os.urandom(2), "little") % 900 + 50)
            bodies[wf.seq] = body
            wf.put(b"TEST", [body])
        assert wf.laps >= 2
        data = Path(wf.path).read_bytes()
        run = recovery.frames(data, wf.ring_at, wf.ring)
        seqs = [seq for seq, _kind, _body in run]
        assert seqs == list(range(seqs[0], wf.seq)) and len(seqs) > 40
        assert all(body == bodies[seq] for seq, _kind, body in run)
        # The head overwrote the start of the oldest frame with the start of a new one,
        # which was cut short: both are left out, the rest stays.
        nxt = windowfile.frame(wf.seq, b"TEST", [os.urandom(3000)])
        at = wf.at if wf.at + len(nxt) <= wf.ring_at + wf.ring else wf.ring_at
        torn = bytearray(data)
        torn[at : at + len(nxt) // 2] = nxt[: len(nxt) // 2]
        again = recovery.frames(bytes(torn), wf.ring_at, wf.ring)
        assert [s for s, _k, _b in again][-1] == wf.seq - 1
        assert all(body == bodies[seq] for seq, _kind, body in again)
        assert set(s for s, _k, _b in again) <= set(seqs)
    finally:
        wf.close(clean=True)


def test_a_child_forked_from_a_recording_process_leaves_no_crash_at_os_exit(
    tmp_path: Path,
) -> None:
    """multiprocessing's fork children end with os._exit by design: they keep no window file
    (the parent's stays the parent's, still locked and live)."""
    code = textwrap.dedent(
        """
        import asyncio, os, sys, time
        from flightdeck import FlightRecorder
        from flightdeck.snapshot.store import SnapshotStore

        async def main():
            rec = FlightRecorder(window=5, max_bytes=1 << 20)
            rec.keep_window_in(SnapshotStore(directory=sys.argv[1]))
            rec.start()
            await asyncio.sleep(0.1)
            pid = os.fork()
            if pid == 0:
                time.sleep(0.3)
                os._exit(0 if rec.stats.get("window_file") is None else 5)
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status), rec.stats["window_file"]["path"], flush=True)
            rec.stop()

        asyncio.run(main())
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    child_status, parent_file = proc.stdout.split()
    assert child_status == "0"  # the child had no window file
    assert parent_file  # the parent kept its own until stop()
    assert _files(tmp_path) == []
    assert recovery.recover(_store(tmp_path)) == []


def test_the_space_is_reserved_once_and_a_disk_that_fills_up_later_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is reserved whole when it is made and never grows nor is replaced: a disk
    that is full later fails no write, and the window keeps going to the file."""
    from flightdeck.core.window import Frozen

    class Gen:
        def __init__(self, n: int) -> None:
            self.t_start, self.t_end, self.count = n, n + 1, 1
            self.tasks: dict[int, Any] = {}
            self.requests: dict[int, Any] = {}
            self.text = os.urandom(3000).hex()

        def events(self) -> list[Any]:
            return [(15, self.t_start, "mark", self.text)]

    gens = [Gen(i * 10 + 1) for i in range(80)]
    at = {"i": 1}

    def freeze() -> Frozen:
        live = gens[max(0, at["i"] - 3) : at["i"]]
        return Frozen(live, [], {}, {}, 0, live[-1].t_end)

    store = _store(tmp_path)
    box = windowfile.BlackBox(store, lambda: {"process": {"pid": 1}}, freeze, dict, 64 << 10)
    box.start()
    box._stop.set()  # no writer thread: this test writes
    assert box._thread is not None
    box._thread.join(5)
    assert box.file is not None
    path = box.file.path
    size = Path(path).stat().st_size
    calls = {"n": 0}

    def full(fd: int, offset: int, length: int) -> None:
        calls["n"] += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    for i in range(2, len(gens)):
        at["i"] = i
        box.sync()
    assert calls["n"] == 0 and box.file is not None and box.errors == 0
    assert box.file.laps >= 2 and Path(path).stat().st_size == size
    parsed = recovery.parse(Path(path).read_bytes())
    assert [orjson.loads(p)[0][1] for _t, p in parsed.records] == [g.t_start for g in gens[-4:-1]]
    box.stop()
    assert not Path(path).exists()
    assert recovery.recover(store) == []


def test_two_recorders_in_one_process_each_see_the_other_alive(tmp_path: Path) -> None:
    """The lock is held per open file, not per process (flock, not POSIX record locks): a
    recorder's scan never takes a sibling's file in the same process for a dead one."""

    async def main() -> None:
        # One loop is instrumented by one recorder: the second only keeps its window.
        recs = [
            FlightRecorder(window=5, max_bytes=1 << 20, instrument_loop=i == 0) for i in range(2)
        ]
        for rec in recs:
            rec.keep_window_in(_store(tmp_path))
            rec.start()
        try:
            for _ in range(20):
                await asyncio.sleep(0.001)
            paths = {rec.stats["window_file"]["path"] for rec in recs}
            assert len(paths) == 2 and all(paths)
            assert recovery.recover(_store(tmp_path)) == []
            # Each one's own scan (it runs every second) leaves the other's file alone.
            await asyncio.sleep(1.2)
            assert all(Path(p).exists() for p in paths)
            assert all(rec.stats["window_file"]["recovered"] == 0 for rec in recs)
        finally:
            for rec in recs:
                rec.stop()

    asyncio.run(main())
    assert _files(tmp_path) == [] and _store(tmp_path).list() == []


_RECORDING = textwrap.dedent(
    """
    import asyncio, os, struct, sys, time
    from flightdeck import FlightRecorder
    from flightdeck.snapshot.store import SnapshotStore

    async def main():
        rec = FlightRecorder(window=5, max_bytes=4 << 20)
        rec.keep_window_in(SnapshotStore(directory=sys.argv[1]))
        rec.start()
        fd = os.open(sys.argv[2], os.O_RDWR)
        window = rec._window

        async def work(i):
            await asyncio.sleep(0)

        print(rec.stats["window_file"]["path"], flush=True)
        while True:  # recording flat out until killed
            await asyncio.gather(*(work(i) for i in range(10)))
            last = window.last_event_time()
            if last is not None:  # what was recorded so far, where the killer can read it
                os.pwrite(fd, struct.pack("<q", last), 0)
            await asyncio.sleep(0.0005)

    asyncio.run(main())
    """
)

#: At most this much of what was recorded is lost at a SIGKILL (seconds): the native
#: writer's period (50 ms) and the pure one's (250 ms), with room for a loaded machine.
LOSS_BOUND = {"native": 0.25, "python": 1.0}


@pytest.mark.parametrize("core", ["native", "python"])
def test_a_kill9_loses_only_what_was_recorded_in_the_writers_last_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, core: str
) -> None:
    """A process recording flat out is killed with SIGKILL at an arbitrary moment: the crash
    snapshot holds what it recorded up to within the writer's period of its last event
    (its recorder clock, published by the process as it went)."""
    if core == "python":
        monkeypatch.setenv("FLIGHTDECK_NO_EXTENSIONS", "1")
    elif not _native_built():
        # Only a pure install (FLIGHTDECK_NO_EXTENSIONS) lacks the extension; the native runs set
        # FLIGHTDECK_EXPECT_NATIVE=1, under which tests/conftest.py fails this skip instead.
        pytest.skip("the native core is not built")
    marker = tmp_path / "last"
    marker.write_bytes(bytes(8))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", _RECORDING, str(tmp_path), str(marker)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        path = Path(proc.stdout.readline().strip())
        assert path.exists()
        time.sleep(1.0 + (os.getpid() % 7) / 20)  # recording a while, killed mid-period
    finally:
        proc.kill()
        proc.wait(timeout=30)
    (recorded,) = struct.unpack("<q", marker.read_bytes())
    assert recorded > 0
    parsed = recovery.parse(path.read_bytes())
    written = recovery._last_time(parsed.records)
    assert written is not None
    loss = (recorded - written) / 1e9
    assert -0.01 <= loss <= LOSS_BOUND[core], loss
    made = recovery.recover(_store(tmp_path))
    assert len(made) == 1


def test_a_file_of_the_earlier_layout_is_still_recovered(tmp_path: Path) -> None:
    """Chunks appended after HEAD (``window_file: 1``), an evicted one tagged GONE: what a
    process of the earlier version left is made a crash snapshot of its live records."""
    wdir = tmp_path / windowfile.WINDOWS
    wdir.mkdir(mode=0o700)
    head = {"process": {"pid": 4242}, "clock_offset_ns": 0, "core": "python", "window_file": 1}
    gone = windowfile.GONE + container.chunk(container.EVTS, b'[[15, 1, "mark", "old"]]')[4:]
    data = b"".join(
        [
            container.PREAMBLE,
            container.chunk(container.HEAD, orjson.dumps(head)),
            gone,
            container.chunk(windowfile.SSTA, b'{"tasks": [], "requests": []}'),
            container.chunk(container.EVTS, orjson.dumps([[15, 5, "mark", "kept"]])),
            container.chunk(windowfile.WSTA, orjson.dumps({"t_now": 9, "dropped": 0})),
            bytes(256),
        ]
    )
    (wdir / "otherhost-4242-0123abcd.fdk").write_bytes(data)
    parsed = recovery.parse(data)
    assert [orjson.loads(p) for _t, p in parsed.records] == [[[15, 5, "mark", "kept"]]]
    made = recovery.recover(_store(tmp_path))
    assert len(made) == 1
    (item,) = _store(tmp_path).list()
    assert item["trigger"]["kind"] == "crash" and item["pid"] == 4242
