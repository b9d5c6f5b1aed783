"""The window in a file: what a process recorded survives its death as a crash snapshot.

With a snapshot directory, each recording process keeps a copy of its window in
``<directory>/windows/<host>-<pid>-<nonce>.fdk``, written by a thread of its own (never the
event loop). The file is a stored snapshot's container (``container.py``) laid out as::

    MAGIC | version | HEAD (the process) | sealed record chunks ... | tail | WSTA | zero header

Each sealed generation (native: ``GENR``, ``Segment.dump()``; pure: ``SSTA`` + ``EVTS``, its
status and the ``EVTS`` payload the window holds) is appended once, when sealed; a
generation the window evicts has its chunks' tags overwritten with ``GONE`` (readers skip
unknown tags). Every ``INTERVAL`` the open generation follows them (the tail: the native
core's copy of it, overwritten in place at each write; the pure core's events appended as
they come, ``_extend``), and its sealed form takes the tail's place once sealed; then
``WSTA`` (the writer's clock, the drop count, the requests in flight, the block in
progress) and a zero chunk header that ends the file for readers. A reader takes chunks
up to the last complete one (``iter_chunks(strict=False)``): what a process killed
mid-write leaves is ignored, never misread.

The file's space is reserved when it is created (``posix_fallocate``: a full disk fails
the creation, which falls back to memory only, never a write later; no mapping, so no
SIGBUS). It holds at most ``capacity`` bytes (twice ``max_bytes`` and a margin): when the
next write would not fit, the live chunks are copied to a fresh file that replaces it
(``rename``), the evicted ones left behind.

Liveness is an exclusive ``flock`` on the open file, held for the process's life: the
kernel drops it when the process dies, whatever kills it, so "the lock can be taken and the
file was not closed" means the process died without stopping its recorder, and no pid reuse
or pid namespace can fool it. A clean end (``stop()``, lifespan shutdown, ``close()``, or an
interpreter exit that was not in the middle of a loop block) appends ``CLOS`` and removes
the file. ``recovery.recover`` turns each dead process's file into a snapshot of trigger
kind ``"crash"``. A child forked from a recording process keeps no file (``after_fork``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import re
import secrets
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..core.text import ErrorLog
from ..core.window import Frozen
from . import container
from .directory import check_directory

#: The subdirectory of the snapshot directory holding the processes' window files.
WINDOWS = "windows"
SUFFIX = ".fdk"
#: How often the open generation is copied to the file (seconds): at most this much of the
#: last events is lost when the process dies (plus what its core had not yet sealed).
INTERVAL = 0.25
#: How often a live process looks for the files of dead ones (seconds).
SCAN_INTERVAL = 1.0
#: Temporary files (a file being created or rewritten) older than this are a dead writer's.
STALE_TMP = 600.0

#: Chunk tags of a window file, beside ``container``'s.
SSTA = b"SSTA"  #: the status at the start of the ``EVTS`` chunk that follows (pure core)
WSTA = b"WSTA"  #: the writer's state at its last write (JSON)
CLOS = b"CLOS"  #: the file was closed cleanly
GONE = b"GONE"  #: a chunk the window evicted (its space is reclaimed at the next rewrite)
_ZERO = b"\0" * container._CHUNK.size
STOP_TAG = b"\0\0\0\0"
TMP_PREFIX = ".tmp-"

_OPEN_NEW = (
    os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)
OPEN_EXISTING = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}-[0-9]{1,10}-[0-9a-f]{8}\.fdk$")

_log = ErrorLog()


def windows_dir(directory: str) -> str:
    return os.path.join(directory, WINDOWS)


def _host() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64]
    return name or "host"


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _key(seg: Any) -> tuple[int, int, int]:
    return (int(seg.t_start), int(seg.t_end), int(seg.count))


class WindowFile:
    """One process's window file: created locked, written by one thread, closed clean or not.

    ``head`` names the process (``process``, ``clock_offset_ns``, ``options``, ``core``).
    Raises ``OSError`` (or ``ValueError`` for a bad directory) from :meth:`create` only;
    later failures are counted in ``errors`` and give the file up (memory only).
    """

    def __init__(self, directory: str, head: dict[str, Any], capacity: int) -> None:
        self.directory = directory
        self.capacity = capacity
        self.head_bytes = container.PREAMBLE + container.chunk(
            container.HEAD, container.json_bytes({**head, "window_file": 1})
        )
        self.path = ""
        self.fd = -1
        #: key -> (offset, length, chunk offsets) of each sealed generation in the file.
        self.written: dict[tuple[int, int, int], tuple[int, int, list[int]]] = {}
        self.end = 0  # where the sealed chunks end (the tail goes here)
        #: The pure core's open events written so far: the first one (identity), how many,
        #: and where their chunks end (see ``_extend``).
        self._delta_first: Any = None
        self._delta_count = 0
        self._delta_end = 0
        self.writes = 0
        self.rewrites = 0
        self.dropped = 0  # generations the file had no room for
        self.errors = 0
        self.closed = False

    # -- creation -----------------------------------------------------------------------
    def create(self) -> None:
        wdir = windows_dir(self.directory)
        name = f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self.path = os.path.join(wdir, name)
        for attempt in (1, 2):
            check_directory(wdir)
            try:
                self.fd, self.end = self._new_file(self.head_bytes)
                break
            except FileNotFoundError:
                if attempt == 2:  # removed again: another process's clean end raced us
                    raise
        try:
            os.rename(self._tmp_path, self.path)
        except OSError:
            self._discard(self.fd, self._tmp_path)
            self.fd = -1
            raise

    def _new_file(self, first: bytes) -> tuple[int, int]:
        """A locked, reserved temporary file holding ``first``: (fd, bytes written)."""
        self._tmp_path = os.path.join(
            os.path.dirname(self.path),
            f"{TMP_PREFIX}{os.path.basename(self.path)}.{secrets.token_hex(4)}",
        )
        fd = os.open(self._tmp_path, _OPEN_NEW, 0o600)
        try:
            if not try_lock(fd):  # a fresh file nobody else knows of
                raise OSError(errno.EWOULDBLOCK, "cannot lock a new window file")
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, self.capacity)
            _pwrite_all(fd, first, 0)
            _pwrite_all(fd, _ZERO, len(first))
        except BaseException:
            self._discard(fd, self._tmp_path)
            raise
        return fd, len(first)

    @staticmethod
    def _discard(fd: int, path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.close(fd)

    # -- writing (one thread) -------------------------------------------------------------
    def update(self, frozen: Frozen, state: dict[str, Any]) -> None:
        """Bring the file up to ``frozen``: new sealed generations, the tail, the state."""
        if self.fd < 0 or self.closed:
            return
        sealed, tail = _split(frozen)
        keys = set()
        new: list[tuple[tuple[int, int, int], list[bytes]]] = []
        for seg in sealed:
            key = _key(seg)
            keys.add(key)
            if key not in self.written:
                new.append((key, _sealed_chunks(seg)))
        for key in [k for k in self.written if k not in keys]:
            _, _, chunks = self.written.pop(key)
            for off in chunks:  # evicted from the window: no longer a record of it
                os.pwrite(self.fd, GONE, off)
        wsta = container.chunk(WSTA, container.json_bytes(state))
        if not new and self._extend(tail, wsta):
            self.writes += 1
            return
        last = tail if tail is not None else []
        status = None if sealed else {"tasks": frozen.tasks, "requests": frozen.requests}
        tail_only = b"".join(_tail_chunks(last, status))
        tail_bytes = tail_only + wsta
        need = sum(len(c) for _, pieces in new for c in pieces) + len(tail_bytes) + len(_ZERO)
        tail_written = True
        if self.end + need > self.capacity:
            tail_written = self._rewrite(new, tail_bytes)
        else:
            for key, pieces in new:
                self._append(key, pieces, self.fd)
            _pwrite_all(self.fd, tail_bytes + _ZERO, self.end)
        # The pure core's open events: later writes append only what was added to them.
        self._delta_end = self.end + len(tail_only)
        if isinstance(tail, list) and tail and tail_written:
            self._delta_first, self._delta_count = tail[0], len(tail)
        else:
            self._delta_first, self._delta_count = None, 0
        self.writes += 1

    def _extend(self, tail: Any, wsta: bytes) -> bool:
        """The pure core's open events when only more were added since the last write: just
        those, as one more ``EVTS`` chunk after the ones written (JSON-encoding the whole
        open segment every interval cost about 19 ms of CPU a write at 7k tasks/s). False
        when the tail must be written whole (a seal, a native tail, no room)."""
        if not (isinstance(tail, list) and tail and self._delta_first is not None):
            return False
        if tail[0] is not self._delta_first or len(tail) < self._delta_count:
            return False  # sealed meanwhile: that generation's chunks replace these
        added = tail[self._delta_count :]
        piece = (
            container.chunk(container.EVTS, container.json_bytes(added), container.CAPTURE_LEVEL)
            if added
            else b""
        )
        if self._delta_end + len(piece) + len(wsta) + len(_ZERO) > self.capacity:
            return False
        _pwrite_all(self.fd, piece + wsta + _ZERO, self._delta_end)
        self._delta_end += len(piece)
        self._delta_count = len(tail)
        return True

    def _append(self, key: tuple[int, int, int], pieces: list[bytes], fd: int) -> None:
        offsets = []
        at = self.end
        for piece in pieces:
            offsets.append(at)
            at += len(piece)
        _pwrite_all(fd, b"".join(pieces), self.end)
        self.written[key] = (self.end, at - self.end, offsets)
        self.end = at

    def _rewrite(
        self, new: list[tuple[tuple[int, int, int], list[bytes]]], tail_bytes: bytes
    ) -> bool:
        """Copy the live generations to a fresh file that replaces this one (the disk bound);
        True when the tail fitted too."""
        old_fd, old = self.fd, list(self.written.items())
        room = self.capacity - len(self.head_bytes) - len(tail_bytes) - len(_ZERO)
        sizes = [length for _, (_, length, _) in old] + [sum(map(len, p)) for _, p in new]
        skip = 0
        while skip < len(sizes) and sum(sizes[skip:]) > room:
            skip += 1  # oldest first: the file holds less than the window rather than nothing
        self.dropped += skip
        fd, end = self._new_file(self.head_bytes)
        try:
            self.end = end
            self.written = {}
            for i, (key, (off, length, chunks)) in enumerate(old):
                if i < skip:
                    continue
                data = os.pread(old_fd, length, off)
                if len(data) != length:
                    raise OSError(errno.EIO, "short read of the window file")
                self.written[key] = (self.end, length, [c - off + self.end for c in chunks])
                _pwrite_all(fd, data, self.end)
                self.end += length
            for i, (key, pieces) in enumerate(new):
                if len(old) + i >= skip:
                    self._append(key, pieces, fd)
            fits = self.end + len(tail_bytes) + len(_ZERO) <= self.capacity
            if fits:
                _pwrite_all(fd, tail_bytes + _ZERO, self.end)
            os.rename(self._tmp_path, self.path)
        except BaseException:
            self._discard(fd, self._tmp_path)
            self.written = {}
            raise
        self.fd = fd
        os.close(old_fd)  # its inode is unlinked now; its lock goes with it
        self.rewrites += 1
        return fits

    def close(self, clean: bool) -> None:
        """Clean: mark the file closed and remove it. Not clean: leave it to be recovered."""
        if self.closed:
            return
        self.closed = True
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            if clean:
                with contextlib.suppress(OSError):
                    _pwrite_all(fd, container.chunk(CLOS, b"{}") + _ZERO, self.end)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                # The last process to end cleanly leaves the directory as it found it.
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(self.path))
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def forget(self) -> None:
        """In a forked child: let go of the parent's file without touching it."""
        self.closed = True
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)  # the parent's open description keeps its lock


def _split(frozen: Frozen) -> tuple[Sequence[Any], list[Any] | Any | None]:
    """(sealed generations, the open one): native freezes append a copy of the open one."""
    segments = list(frozen.segments)
    if segments and hasattr(segments[-1], "dump"):
        # The last one may be the open generation's copy, or sealed: written as the tail
        # until a younger one follows it, then as sealed (the tail is overwritten).
        return segments[:-1], segments[-1]
    return segments, frozen.tail


def status_of(tasks: Any, requests: Any) -> dict[str, Any]:
    return {"tasks": list(tasks.values()), "requests": list(requests.values())}


def _sealed_chunks(seg: Any) -> list[bytes]:
    if hasattr(seg, "dump"):
        return [container.chunk(container.GENR, seg.dump(), container.RECORDS_LEVEL)]
    status = container.chunk(
        SSTA, container.json_bytes(status_of(seg.tasks, seg.requests)), container.CAPTURE_LEVEL
    )
    if hasattr(seg, "stored"):
        # The pure segment holds its EVTS payload already (JSON, zlib'd by the window under
        # pressure): written as held, nothing encoded. One the window has not compressed is
        # compressed here (GIL released): the window compresses its older segments later,
        # in memory only, and the file must hold the whole window within twice max_bytes.
        compressed, crc, payload = seg.stored()
        if not compressed:
            return [status, container.chunk(container.EVTS, payload, container.CAPTURE_LEVEL)]
        header = container.chunk_header(container.EVTS, True, len(payload), crc)
        return [status, header + payload]  # one piece per chunk: GONE marks chunk starts
    events = container.json_bytes(seg.events())
    return [status, container.chunk(container.EVTS, events, container.CAPTURE_LEVEL)]


def _tail_chunks(tail: Any, status: dict[str, Any] | None) -> list[bytes]:
    if hasattr(tail, "dump"):
        return [container.chunk(container.GENR, tail.dump(), container.RECORDS_LEVEL)]
    out = []
    if status is not None:
        status = status_of(status["tasks"], status["requests"])
        out.append(container.chunk(SSTA, container.json_bytes(status), container.CAPTURE_LEVEL))
    if tail:
        out.append(
            container.chunk(container.EVTS, container.json_bytes(tail), container.CAPTURE_LEVEL)
        )
    return out


# -- the process's black box: the file and the thread that writes it -----------------------
_open_boxes: weakref.WeakSet[BlackBox] = weakref.WeakSet()


class BlackBox:
    """Keeps a recorder's window in a file and recovers the files of dead processes.

    ``freeze`` takes the window (``Window.freeze``); ``state`` says what the writer knows
    beyond it (the block in progress); ``head`` names the process; ``store`` receives the
    crash snapshots (a ``SnapshotStore`` with a directory). Never raises into its caller
    after construction: failures are counted and logged once.
    """

    def __init__(
        self,
        store: Any,
        head: Callable[[], dict[str, Any]],
        freeze: Callable[[], Frozen],
        state: Callable[[], dict[str, Any]],
        max_bytes: int,
        interval: float = INTERVAL,
    ) -> None:
        self.store = store
        self.directory: str = store.directory
        self.head = head
        self.freeze = freeze
        self.state = state
        self.capacity = 2 * max_bytes + (1 << 20)
        self.interval = interval
        self.file: WindowFile | None = None
        self.errors = 0
        self.recovered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._block: Callable[[], dict[str, Any] | None] = lambda: None
        #: The block the loop was in when ``sys.exit`` was called (``_noting_exit``).
        self.exit_block: dict[str, Any] | None = None

    def start(self, block: Callable[[], dict[str, Any] | None] | None = None) -> None:
        """Create the file and start the writer (which first recovers dead processes').

        ``block`` says which block the loop is in now (``Watchdog.block_in_progress``).
        """
        if block is not None:
            self._block = block
        self._stop = threading.Event()
        self.file = None
        try:
            wf = WindowFile(self.directory, self.head(), self.capacity)
            wf.create()
            self.file = wf
        except (OSError, ValueError) as exc:
            self._failed("create", exc)
        _open_boxes.add(self)
        _install_exit_hook()
        self._thread = threading.Thread(target=self._run, name="flightdeck-blackbox", daemon=True)
        self._thread.start()

    def _failed(self, action: str, exc: BaseException) -> None:
        self.errors += 1
        code = errno.errorcode.get(getattr(exc, "errno", 0) or 0, type(exc).__name__)
        _log.once(
            f"windowfile:{action}:{code}",
            "flightdeck: cannot %s the window file in %s (%s); the window stays in memory only"
            " (a crash of this process leaves no snapshot; logged once)",
            action,
            self.directory,
            exc,
        )

    def _run(self) -> None:
        from . import recovery

        stop = self._stop
        next_scan = 0.0
        while True:
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + SCAN_INTERVAL
                try:
                    self.recovered += len(recovery.recover(self.store, skip=self._own_path()))
                except Exception as exc:
                    self._failed("recover", exc)
            self.sync()
            if stop.wait(self.interval):
                return

    def _own_path(self) -> str | None:
        return self.file.path if self.file is not None else None

    def sync(self) -> None:
        """One write of the window to the file (the writer's thread; atexit)."""
        with self._lock:
            wf = self.file
            if wf is None or wf.closed:
                return
            try:
                state = self.state()
                if state.get("block") is None and self.exit_block is not None:
                    state["block"] = self.exit_block
                wf.update(self.freeze(), state)
            except Exception as exc:
                # A file that cannot be written is given up (removed: it would otherwise be
                # recovered as a crash): the window stays in memory.
                self._failed("write", exc)
                wf.close(clean=True)
                self.file = None

    def stop(self, clean: bool = True) -> None:
        """Stop the writer; ``clean`` removes the file (a crash leaves it)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._thread = None
        _open_boxes.discard(self)
        with self._lock:
            wf, self.file = self.file, None
        if wf is not None:
            wf.close(clean)

    def at_exit(self) -> None:
        """The interpreter exits: a clean end unless the loop was in the middle of a block
        (gunicorn's timeout: its SIGABRT handler calls ``sys.exit`` inside the blocked
        request), which is recorded one last time and left for recovery."""
        blocked = self.exit_block is not None
        with contextlib.suppress(Exception):
            blocked = blocked or self._block() is not None
        if blocked:
            self._stop.set()
            self.sync()
            with self._lock:
                wf, self.file = self.file, None
            if wf is not None:
                wf.close(clean=False)
        else:
            self.stop(clean=True)

    def after_fork(self) -> None:
        """In a forked child of a recording process: the parent's file stays the parent's,
        and the child keeps none. Such children (multiprocessing's, ``ProcessPoolExecutor``'s
        with the fork start method) end with ``os._exit`` by design: a file of theirs would
        make a crash snapshot of every one. Servers start recording in each worker, after
        the fork (gunicorn ``--preload`` included), and get their files then."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        _open_boxes.discard(self)
        if self.file is not None:
            self.file.forget()
            self.file = None

    def stats(self) -> dict[str, Any]:
        wf = self.file
        return {
            "path": wf.path if wf is not None else None,
            "writes": wf.writes if wf is not None else 0,
            "rewrites": wf.rewrites if wf is not None else 0,
            "bytes": wf.end if wf is not None else 0,
            "capacity": self.capacity,
            "dropped": wf.dropped if wf is not None else 0,
            "errors": self.errors,
            "recovered": self.recovered,
        }


@atexit.register
def _at_exit() -> None:
    for box in list(_open_boxes):
        with contextlib.suppress(Exception):
            box.at_exit()


_original_exit = sys.exit


def _noting_exit(status: str | int | None = None, /) -> NoReturn:
    """``sys.exit`` that first notes, for each black box, whether the loop is in the middle
    of a block: a server's signal handler calling it inside the blocked request (gunicorn's
    SIGABRT on timeout) ends the process because of that block, and the cleanup that follows
    may run the loop again (ending the block as far as the watchdog sees) before atexit."""
    for box in list(_open_boxes):
        with contextlib.suppress(Exception):
            box.exit_block = box._block() or box.exit_block
    _original_exit(status)


def _install_exit_hook() -> None:
    if sys.exit is _original_exit:
        sys.exit = _noting_exit
