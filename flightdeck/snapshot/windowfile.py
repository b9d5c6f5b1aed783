"""The window in a file: what a process recorded survives its death as a crash snapshot.

With a snapshot directory, each recording process keeps its window in
``<directory>/windows/<host>-<pid>-<nonce>.fdk``, written by a thread of its own (never the
event loop). The file has a fixed size, reserved when it is created, laid out as::

    MAGIC | version | HEAD (the process, the layout) | zeros to HEAD_AREA
    | state slot A | state slot B          (STATE_SLOT bytes each)
    | ring                                 (max_bytes: frames written at a head that wraps)
    | block watch slot                     (the last SLOT bytes)

so it never takes more than ``max_bytes`` and ``OVERHEAD`` bytes on disk. What was recorded
goes into the ring as frames, each written once, in order, at the ring's head, which wraps
to the ring's start when the next frame does not fit before its end (the window evicts
oldest first, so the ring overwrites what it evicted, or would soon)::

    frame = "FRAM" | flags (u8) | 3 zero bytes | length (u32 LE) | crc32 (u32 LE)
            | sequence number (u64 LE) | kind (4 bytes) | body (length - 12 bytes)

The checksum covers the sequence number, the kind and the body. A reader (``recovery.py``)
takes the frames whose checksum holds and keeps the longest run of consecutive sequence
numbers: a frame being written, or one the head has partly overwritten, fails its checksum
and is skipped, never misread; frames left of an earlier lap stay consistent with the run.

* Native core: ``GDLT`` frames, the growth of a generation since the last write (the
  records it appended and the strings its table added: ``Window._file_delta``, only the
  bytes added are copied); a generation's deltas, joined, are its stored form (``GENR``).
  Written every ``INTERVAL / 5`` (50 ms): the open generation as it is recorded, give or
  take that period.
* Pure core: ``EVTS`` frames (the events from an ordinal on, JSON) and ``SSTA`` frames (the
  status at an ordinal: at each sealed segment's first event), every ``INTERVAL``.

The state slots hold the writer's state (``WSTA``, JSON: its clock, the drop count, the
requests in flight, the block in progress, and ``live``: the oldest generation, or event
ordinal, still in the window), written in turn, every ``INTERVAL``: the slot with the higher
sequence number whose checksum holds is the one to read. ``closed`` in it marks a clean end.

The file's space is reserved when it is created (``posix_fallocate``: a full disk fails
the creation, which falls back to memory only, never a write later; no mapping, so no
SIGBUS), and it never grows: nothing is rewritten or renamed while the process records.

Liveness is an exclusive ``flock`` on the open file, held for the process's life: the
kernel drops it when the process dies, whatever kills it, so "the lock can be taken and the
file was not closed" means the process died without stopping its recorder, and no pid reuse
or pid namespace can fool it. A clean end (``stop()``, lifespan shutdown, ``close()``, or an
interpreter exit that was not in the middle of a loop block) writes a state that says
``closed`` and removes the file. ``recovery.recover`` turns each dead process's file into a
snapshot of trigger kind ``"crash"``. A child forked from a recording process keeps no file
(``after_fork``). Files of the earlier layout (``window_file: 1`` in ``HEAD``: chunks appended,
``GONE``, rewritten when full) are still recovered and read.
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
import struct
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..core.text import ErrorLog
from ..core.window import Frozen
from . import container
from .directory import check_directory

#: The subdirectory of the snapshot directory holding the processes' window files.
WINDOWS = "windows"
SUFFIX = ".fdk"
#: How often the writer's state is written, and the pure core's window (seconds); the
#: native core's records are written five times as often (``BlackBox.flush``).
INTERVAL = 0.25
#: How often a live process looks for the files of dead ones (seconds).
SCAN_INTERVAL = 1.0
#: Temporary files (a file being created) older than this are a dead writer's.
STALE_TMP = 600.0
#: The layout a file's ``HEAD`` names (``window_file``): 2, the ring; 1, chunks appended.
LAYOUT = 2

#: Chunk tags of a window file, beside ``container``'s.
SSTA = b"SSTA"  #: the status at an event ordinal (pure core)
WSTA = b"WSTA"  #: the writer's state (JSON)
CLOS = b"CLOS"  #: the file was closed cleanly (the earlier layout)
GONE = b"GONE"  #: a chunk the window evicted (the earlier layout)
FRAM = b"FRAM"  #: a frame of the ring
GDLT = b"GDLT"  #: the growth of a native generation (``Window._file_delta``)
LIVE = b"LIVE"  #: the oldest generation the native window holds (i64 LE), when it changes
LIVE_BODY = struct.Struct("<q")
_ZERO = b"\0" * container._CHUNK.size
#: The last bytes of the file: the native block watch's record (``core/native/blockwatch.h``)
#: of a task step holding the loop and the GIL, read by the recovery.
SLOT = 64
STOP_TAG = b"\0\0\0\0"
TMP_PREFIX = ".tmp-"
#: A frame's fixed part after its chunk header: sequence number and kind.
FRAME = struct.Struct("<Q4s")
FRAME_HEADER = container._CHUNK.size + FRAME.size
#: Body prefixes: an ``EVTS`` frame's first event ordinal and count, an ``SSTA``'s ordinal.
EVTS_PREFIX = struct.Struct("<QI")
SSTA_PREFIX = struct.Struct("<Q")
#: The bytes before the state slots hold the preamble and ``HEAD`` (rounded up to this).
HEAD_ROUND = 4096
#: Each state slot's size: a state that does not fit loses its request list first.
STATE_SLOT = 8192
#: The smallest ring (a ``max_bytes`` below it gets this much).
MIN_RING = 64 << 10
#: Bytes on disk beside the ring, at most: the header's area (its usual size), the two
#: state slots and the block watch's slot.
OVERHEAD = HEAD_ROUND + 2 * STATE_SLOT + SLOT

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


def frame(seq: int, kind: bytes, pieces: Sequence[bytes], compressed: bool = False) -> bytes:
    """One frame of ``pieces`` (its body, joined); ``compressed``: the last piece is zlib'd
    (the body's prefix never is)."""
    fixed = FRAME.pack(seq, kind)
    crc = zlib.crc32(fixed)
    length = len(fixed)
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
        length += len(piece)
    if length > container.MAX_CHUNK:
        raise ValueError(f"frame {kind!r} of {length} bytes is too large")
    header = container.chunk_header(FRAM, compressed, length, crc)
    return b"".join((header, fixed, *pieces))


def _packed(data: bytes) -> tuple[bytes, bool]:
    return container.packed(data, container.CAPTURE_LEVEL)


def layout(head_len: int, ring: int) -> tuple[int, int, int]:
    """(state slots' offset, ring's offset, file size) for a header of ``head_len`` bytes."""
    state = -(-head_len // HEAD_ROUND) * HEAD_ROUND
    start = state + 2 * STATE_SLOT
    return state, start, start + ring + SLOT


def fit_state(state: dict[str, Any]) -> bytes:
    """The state as JSON within a slot: the request list, then the block's text, shortened
    when it would not fit (paths and sites come from the app)."""
    body = container.json_bytes(state)
    limit = STATE_SLOT - FRAME_HEADER
    if len(body) <= limit:
        return body
    state = dict(state, oldest=[])
    body = container.json_bytes(state)
    if len(body) > limit and isinstance(state.get("block"), dict):
        block = dict(state["block"])
        block["site"] = str(block.get("site"))[:200]
        request = block.get("request")
        if isinstance(request, dict):
            block["request"] = {k: str(v)[:200] for k, v in request.items()}
        state["block"] = block
        body = container.json_bytes(state)
    if len(body) > limit:
        keep = ("t_now", "time", "dropped", "inflight", "live", "closed", "seq")
        body = container.json_bytes({k: state[k] for k in keep if k in state})
    return body


class WindowFile:
    """One process's window file: created locked, written by one thread, closed clean or not.

    ``head`` names the process (``process``, ``clock_offset_ns``, ``options``, ``core``);
    ``capacity`` is the ring's size (``max_bytes``). Raises ``OSError`` (or ``ValueError``
    for a bad directory) from :meth:`create` only; later failures are counted in ``errors``
    and give the file up (memory only).
    """

    def __init__(
        self,
        directory: str,
        head: dict[str, Any],
        capacity: int,
        on_fd: Callable[[int, int], None] | None = None,
    ) -> None:
        self.directory = directory
        self.ring = max(MIN_RING, capacity)
        #: Told ``(fd, slot offset)`` when the file is created (-1: closed)
        #: (``_native.BlockWatch.set_fd``).
        self.on_fd = on_fd
        self.head_bytes = b""
        self.state_at, self.ring_at, self.size = 0, 0, 0
        for _ in range(3):  # the layout's offsets are in the header: until they agree
            fields = {
                **head,
                "window_file": LAYOUT,
                "ring": [self.ring_at, self.ring],
                "state": [self.state_at, STATE_SLOT],
            }
            self.head_bytes = container.PREAMBLE + container.chunk(
                container.HEAD, container.json_bytes(fields)
            )
            at = layout(len(self.head_bytes), self.ring)
            if at == (self.state_at, self.ring_at, self.size):
                break
            self.state_at, self.ring_at, self.size = at
        self.path = ""
        self.fd = -1
        #: Where the next frame goes, and its sequence number.
        self.at = self.ring_at
        self.seq = 1
        self.state_seq = 0
        self.laps = 0
        self.frames = 0
        self.bytes = 0  # written to the ring in all
        self.writes = 0
        self.dropped = 0  # frames larger than the ring
        self.errors = 0
        self.closed = False
        #: The native core's progress: (generation serial, record bytes, strings) written.
        self.native = (0, 0, 0)
        self.live = 0
        self._pure = _PureFeed()

    # -- creation -----------------------------------------------------------------------
    def create(self) -> None:
        wdir = windows_dir(self.directory)
        name = f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        self.path = os.path.join(wdir, name)
        for attempt in (1, 2):
            check_directory(wdir)
            try:
                self.fd = self._new_file()
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
        if self.on_fd is not None:
            self.on_fd(self.fd, self.size - SLOT)

    def _new_file(self) -> int:
        """A locked, reserved temporary file holding the header."""
        self._tmp_path = os.path.join(
            os.path.dirname(self.path),
            f"{TMP_PREFIX}{os.path.basename(self.path)}.{secrets.token_hex(4)}",
        )
        fd = os.open(self._tmp_path, _OPEN_NEW, 0o600)
        try:
            if not try_lock(fd):  # a fresh file nobody else knows of
                raise OSError(errno.EWOULDBLOCK, "cannot lock a new window file")
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, self.size)
            else:  # pragma: no cover - every supported platform has it
                os.ftruncate(fd, self.size)
            _pwrite_all(fd, self.head_bytes, 0)
        except BaseException:
            self._discard(fd, self._tmp_path)
            raise
        return fd

    @staticmethod
    def _discard(fd: int, path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.close(fd)

    # -- writing (one thread) -------------------------------------------------------------
    def put(self, kind: bytes, pieces: Sequence[bytes], compressed: bool = False) -> None:
        """One frame at the ring's head (wrapping to its start when it does not fit)."""
        data = frame(self.seq, kind, pieces, compressed)
        if len(data) > self.ring:
            self.dropped += 1  # larger than the whole ring: never written, counted
            return
        end = self.ring_at + self.ring
        if self.at + len(data) > end:
            self.at = self.ring_at
            self.laps += 1
        _pwrite_all(self.fd, data, self.at)
        self.at += len(data)
        self.seq += 1
        self.frames += 1
        self.bytes += len(data)

    def write_native(self, window: Any) -> bool:
        """The native window's growth since the last write; False when it could not be
        taken now (the window was being written to: the next call catches up)."""
        if self.fd < 0 or self.closed:
            return True
        got = window._file_delta(*self.native)
        if got is None:
            return False
        live, deltas, self.native = got
        for delta in deltas:
            self.put(GDLT, [delta])
        if live != self.live:  # the window evicted: a reader leaves the older ones out
            self.live = live
            self.put(LIVE, [LIVE_BODY.pack(live)])
        self.writes += 1
        return True

    def write_state(self, state: dict[str, Any], closed: bool = False) -> None:
        """The writer's state into the slot not written last."""
        if self.fd < 0:
            return
        self.state_seq += 1
        state = {**state, "live": self.live, "seq": self.seq - 1}
        if closed:
            state["closed"] = True
        data = frame(self.state_seq, WSTA, [fit_state(state)])
        _pwrite_all(self.fd, data, self.state_at + (self.state_seq % 2) * STATE_SLOT)

    def update(self, frozen: Frozen, state: dict[str, Any]) -> None:
        """Bring the file up to ``frozen`` (a pure window's, or a native one's without its
        window at hand: whole generations, ``GENR``), then the state."""
        if self.fd < 0 or self.closed:
            return
        segments = list(frozen.segments)
        if segments and hasattr(segments[-1], "dump"):
            self._update_generations(segments)
        else:
            for kind, pieces, compressed in self._pure.frames(frozen):
                self.put(kind, pieces, compressed)
            self.live = self._pure.live
        self.write_state(state)
        self.writes += 1

    def _update_generations(self, segments: list[Any]) -> None:
        """Native generations from a freeze: each one whole (``GENR``) when it is new or
        grew; a reader keeps the last frame of each (by its base time)."""
        seen = getattr(self, "_generations", {})
        now = {}
        for seg in segments:
            base = int(seg.t_start)
            key = _key(seg)
            if seen.get(base) != key:
                self.put(container.GENR, [seg.dump()])
            now[base] = key
        self._generations = now
        self.live = int(segments[0].t_start)

    def close(self, clean: bool) -> None:
        """Clean: mark the file closed and remove it. Not clean: leave it to be recovered."""
        if self.closed:
            return
        self.closed = True
        fd = self.fd
        if fd < 0:
            return
        with contextlib.suppress(Exception):
            if self.on_fd is not None:
                self.on_fd(-1, 0)
        try:
            if clean:
                with contextlib.suppress(OSError):
                    self.write_state({}, closed=True)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                # The last process to end cleanly leaves the directory as it found it.
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(self.path))
        finally:
            self.fd = -1
            with contextlib.suppress(OSError):
                os.close(fd)

    def forget(self) -> None:
        """In a forked child: let go of the parent's file without touching it."""
        self.closed = True
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)  # the parent's open description keeps its lock


class _PureFeed:
    """The pure window's frames: every event once, by ordinal (its place in what the
    window recorded since the file was made), and the status at each sealed segment's
    first event.

    The window seals its open events (the freeze's tail) into segments, the oldest first,
    the whole tail at once: the sealed segments that are new since the last write are the
    start of the tail that was written then. What of them was not written yet is written
    from the segment (its stored bytes, or the events past those written).
    """

    def __init__(self) -> None:
        #: The first ordinal of each sealed segment still in the window.
        self.known: dict[tuple[int, int, int], int] = {}
        self.tail_at = 0  # the ordinal of the tail's first event
        self.tail0: Any = None  # that event (identity)
        self.written = 0  # events of the tail written (from tail_at)
        self.status_at = -1  # the ordinal of the last SSTA written
        self.live = 0

    def frames(self, frozen: Frozen) -> list[tuple[bytes, list[bytes], bool]]:
        out: list[tuple[bytes, list[bytes], bool]] = []
        segments: list[Any] = list(frozen.segments)
        tail = list(frozen.tail)
        new = [seg for seg in segments if _key(seg) not in self.known]
        if not new and self.tail0 is not None and (not tail or tail[0] is not self.tail0):
            # The tail written last was sealed and is gone already (evicted unseen, or its
            # seal failed): a gap in the ordinals, after which a reader starts again.
            self.tail_at += self.written + 1
            self.written = 0
        at = self.tail_at
        for seg in new:
            count = int(seg.count)
            have = min(self.written, count)
            if have == 0:
                out.append(_stored_events(at, seg))
            elif have < count:
                out.append(_events_frame(at + have, seg.events()[have:]))
            status = container.json_bytes(status_of(seg.tasks, seg.requests))
            packed, compressed = _packed(status)
            out.append((SSTA, [SSTA_PREFIX.pack(at), packed], compressed))
            self.status_at = at
            self.known[_key(seg)] = at
            self.written = max(0, self.written - count)
            at += count
        self.tail_at = at
        if tail:
            if self.status_at < at and not segments:
                status = container.json_bytes(status_of(frozen.tasks, frozen.requests))
                packed, compressed = _packed(status)
                out.append((SSTA, [SSTA_PREFIX.pack(at), packed], compressed))
                self.status_at = at
            if self.written < len(tail):
                out.append(_events_frame(at + self.written, tail[self.written :]))
                self.written = len(tail)
            self.tail0 = tail[0]
        else:
            self.tail0 = None
            self.written = 0
        keys = {_key(seg) for seg in segments}
        self.known = {k: v for k, v in self.known.items() if k in keys}
        self.live = self.known[_key(segments[0])] if segments else at
        return out


def _events_frame(at: int, events: list[Any]) -> tuple[bytes, list[bytes], bool]:
    packed, compressed = _packed(container.json_bytes(events))
    return (EVTS_FRAME, [EVTS_PREFIX.pack(at, len(events)), packed], compressed)


def _stored_events(at: int, seg: Any) -> tuple[bytes, list[bytes], bool]:
    """A whole sealed segment's events: its ``EVTS`` payload as the window holds it
    (compressed here when the window has not: the ring holds more of the window so)."""
    count = int(seg.count)
    if hasattr(seg, "stored"):
        compressed, _crc, payload = seg.stored()
        if not compressed:
            payload, compressed = _packed(payload)
        return (EVTS_FRAME, [EVTS_PREFIX.pack(at, count), payload], compressed)
    return _events_frame(at, seg.events())


#: The kind of a pure core's events frame.
EVTS_FRAME = container.EVTS


def status_of(tasks: Any, requests: Any) -> dict[str, Any]:
    return {"tasks": list(tasks.values()), "requests": list(requests.values())}


def _block_watch(threshold: float | None) -> Any:
    """The native block watch (``core/native/blockwatch.h``), or None on the pure core."""
    if threshold is None:
        return None
    from ..core.cores import native_module

    native = native_module()
    if native is None:
        return None
    interval = max(0.05, min(threshold / 2, 0.25))
    return native.BlockWatch(int(threshold * 1e9), int(interval * 1e9))


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
        block_threshold: float | None = None,
    ) -> None:
        self.store = store
        #: A task step running past this (seconds) is recorded by the native block watch,
        #: without the GIL (None, or the pure core: not watched).
        self.block_threshold = block_threshold
        self.watch: Any = None
        self.directory: str = store.directory
        self.head = head
        self.freeze = freeze
        self.state = state
        #: The ring's size: the file takes this and at most ``OVERHEAD`` bytes on disk.
        self.capacity = max_bytes
        self.interval = interval
        #: The native window, whose records are written every ``flush`` seconds as they
        #: grow (None: the pure core's, written from freezes every ``interval``).
        window = getattr(freeze, "__self__", None)
        self.window = window if hasattr(window, "_file_delta") else None
        self.flush = interval / 5 if self.window is not None else interval
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
            self.watch = _block_watch(self.block_threshold)
        except (OSError, RuntimeError, ValueError) as exc:
            self._failed("watch", exc)
        try:
            on_fd = self.watch.set_fd if self.watch is not None else None
            wf = WindowFile(self.directory, self.head(), self.capacity, on_fd)
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
        next_state = 0.0
        while True:
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + SCAN_INTERVAL
                try:
                    self.recovered += len(recovery.recover(self.store, skip=self._own_path()))
                except Exception as exc:
                    self._failed("recover", exc)
            if now >= next_state:
                next_state = now + self.interval
                self.sync()
            else:
                self.sync_records()
            if stop.wait(self.flush):
                return

    def _own_path(self) -> str | None:
        return self.file.path if self.file is not None else None

    def sync_records(self) -> None:
        """The native window's records added since the last write (the writer's thread)."""
        if self.window is None:
            return
        with self._lock:
            wf = self.file
            if wf is None or wf.closed:
                return
            try:
                wf.write_native(self.window)
            except Exception as exc:
                self._failed("write", exc)
                wf.close(clean=True)
                self.file = None

    def sync(self) -> None:
        """One write of the window and the state to the file (the writer's thread; atexit)."""
        with self._lock:
            wf = self.file
            if wf is None or wf.closed:
                return
            try:
                state = self.state()
                if state.get("block") is None and self.exit_block is not None:
                    state["block"] = self.exit_block
                if self.window is not None:
                    wf.write_native(self.window)
                    wf.write_state(state)
                else:
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
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.close()

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
        if self.watch is not None:
            self.watch.after_fork()
            self.watch = None
        if self.file is not None:
            self.file.on_fd = None
            self.file.forget()
            self.file = None

    def stats(self) -> dict[str, Any]:
        wf = self.file
        return {
            "path": wf.path if wf is not None else None,
            "writes": wf.writes if wf is not None else 0,
            "frames": wf.frames if wf is not None else 0,
            "laps": wf.laps if wf is not None else 0,
            "bytes": wf.bytes if wf is not None else 0,
            "capacity": wf.size if wf is not None else 0,
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
