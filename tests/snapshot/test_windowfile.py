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
import subprocess
import sys
import textwrap
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
    import asyncio, os, signal, sys, threading, time
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
        while time.monotonic() - t0 < float(os.environ.get("FD_RUN", "0.8")):
            await asyncio.gather(*(work(i) for i in range(20)))
            await asyncio.sleep(0.001)
        print(rec.stats["window_file"]["path"], flush=True)
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
    directory: Path, how: str, *extra: str, run: float = 0.8
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FD_RUN=str(run))
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
    path = Path(proc.stdout.strip())
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
    dead = Path(proc.stdout.strip())
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


def test_a_torn_tail_is_ignored_and_the_complete_chunks_recovered(tmp_path: Path) -> None:
    proc = _run(tmp_path, "exit")
    path = Path(proc.stdout.strip())
    data = path.read_bytes()
    whole = recovery.parse(data)
    assert whole.records
    # Cut inside the last record chunk: what precedes it is read, the torn chunk is not.
    ends = []
    view = memoryview(data)
    pos = len(container.PREAMBLE)
    size = container._CHUNK.size
    while pos + size <= len(data):
        tag, _flags, length, _crc = container._CHUNK.unpack_from(view, pos)
        if tag == b"\0\0\0\0":
            break
        ends.append((tag, pos, pos + size + length))
        pos += size + length
    last = [e for e in ends if e[0] in (container.GENR, container.EVTS)][-1]
    torn = data[: last[2] - 5]
    path.write_bytes(torn)
    parsed = recovery.parse(torn)
    assert len(parsed.records) == len(whole.records) - 1
    made = recovery.recover(_store(tmp_path))
    assert len(made) == 1
    snap = _store(tmp_path).get(made[0])
    assert snap is not None and snap.to_dict()["trigger"]["kind"] == "crash"


def test_the_file_stays_within_its_capacity_by_rewriting(tmp_path: Path) -> None:
    """A small window recording for long: the file is rewritten (only live generations
    copied) instead of growing; what a crash leaves is still one readable snapshot."""
    proc = _run(tmp_path, "exit", str(64 << 10), run=4.0)
    assert proc.returncode == 3, proc.stderr
    path = Path(proc.stdout.strip())
    capacity = 2 * (64 << 10) + (1 << 20)
    assert path.stat().st_size == capacity
    made = recovery.recover(_store(tmp_path))
    assert len(made) == 1
    snap = _store(tmp_path).get(made[0])
    assert snap is not None
    assert snap.to_dict()["window"]["end"] > 0


def test_rewrites_keep_the_live_generations_and_drop_the_evicted(tmp_path: Path) -> None:
    wf = windowfile.WindowFile(str(tmp_path), {"process": {"pid": 1}}, capacity=4096)
    wf.create()
    try:

        class Gen:
            def __init__(self, n: int) -> None:
                self.t_start, self.t_end, self.count = n, n + 1, 1
                self.tasks: dict[int, Any] = {}
                self.requests: dict[int, Any] = {}
                self.n = n
                self.text = os.urandom(200).hex()  # incompressible: the chunks take room

            def events(self) -> list[Any]:
                return [(15, self.n + 1, "mark", self.text)]

        from flightdeck.core.window import Frozen

        gens = [Gen(i * 10) for i in range(1, 30)]
        for i in range(1, len(gens)):
            live = gens[max(0, i - 4) : i]  # the window holds the last four
            wf.update(Frozen(live, [], {}, {}, 0, live[-1].t_end), {"t_now": live[-1].t_end})
        assert wf.rewrites > 0
        parsed = recovery.parse(Path(wf.path).read_bytes())
        kept = [container.json_bytes(g.events()) for g in gens[-5:-1]]
        assert [p for t, p in parsed.records] == kept
    finally:
        wf.close(clean=True)
    assert not Path(wf.path).exists()


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
    pid = Path(proc.stdout.strip()).name.split("-")[-2]
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


def test_the_pure_cores_open_events_are_appended_then_replaced_by_their_seal(
    tmp_path: Path,
) -> None:
    """Each write adds only the open events recorded since the last one; once they are
    sealed, the sealed generation takes their place: every event is in the file once."""
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
        assert len(parsed.records) == 3 and parsed.state == {"t_now": 5}  # three appends
        assert records(wf.path) == [list(mark(t)) for t in range(1, 6)]
        sealed = Sealed(list(tail))
        wf.update(Frozen([sealed], [mark(6)], {}, {}, 0, 6), {"t_now": 6})
        assert records(wf.path) == [list(mark(t)) for t in range(1, 7)]
        assert len(recovery.parse(Path(wf.path).read_bytes()).records) == 2
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


def test_a_disk_that_fills_up_later_gives_the_file_up_not_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rewrite that keeps the file within its size needs a fresh reserved file: when
    the disk is full by then, the file is removed (no false crash later) and the window
    stays in memory; nothing is raised."""
    from flightdeck.core.window import Frozen

    class Gen:
        def __init__(self, n: int) -> None:
            self.t_start, self.t_end, self.count = n, n + 1, 1
            self.tasks: dict[int, Any] = {}
            self.requests: dict[int, Any] = {}
            self.text = os.urandom(300).hex()

        def events(self) -> list[Any]:
            return [(15, self.t_start, "mark", self.text)]

    gens = [Gen(i * 10 + 1) for i in range(40)]
    at = {"i": 1}

    def freeze() -> Frozen:
        live = gens[max(0, at["i"] - 3) : at["i"]]
        return Frozen(live, [], {}, {}, 0, live[-1].t_end)

    store = _store(tmp_path)
    box = windowfile.BlackBox(store, lambda: {"process": {"pid": 1}}, freeze, dict, 1024)
    box.capacity = 8192
    box.start()
    box._stop.set()  # no writer thread: this test writes
    assert box._thread is not None
    box._thread.join(5)
    assert box.file is not None
    path = box.file.path
    calls = {"n": 0}
    real = os.posix_fallocate

    def fill_up(fd: int, offset: int, length: int) -> None:
        calls["n"] += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", fill_up)
    for i in range(2, len(gens)):
        at["i"] = i
        box.sync()
        if box.file is None:
            break
    monkeypatch.setattr(os, "posix_fallocate", real)
    assert calls["n"] == 1 and box.file is None and box.errors == 1
    assert not Path(path).exists()
    box.stop()
    assert recovery.recover(store) == []
