"""Views of stored snapshots for the endpoint: converted in a child process, kept beside them.

The app's process never decodes a snapshot's events: a view (JSON, HTML, Perfetto, the
summary) is made by ``python -m flightdeck convert`` on the same interpreter, fed the stored
bytes on its stdin, writing the view to a temporary file that is streamed to the client as
it grows (in worker threads) and becomes the cached view when the child succeeds. At
most one such child runs per process (:data:`_SLOT`); its address space is capped and it is
killed past a deadline. A finished view is kept (:class:`ViewCache`): a file beside the
snapshot in a snapshot directory, or a bounded cache in memory, so a second view of it
starts no child.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

import anyio.to_thread

CHUNK = 1 << 16
#: How often a view being made is checked for more output once the reader has caught up.
_POLL = 0.02
#: The in-memory view cache (a store without a directory) holds at most this many bytes.
MEMORY_CACHE_BYTES = 64 << 20
DEFAULT_DEADLINE = 120.0
DEFAULT_MEMORY = 4 << 30
#: One converter child per process at a time, whatever the number of endpoints.
_SLOT = threading.Lock()
_VIEW_SUFFIX = ".view"
_TMP_PREFIX = ".flightdeck-tmp-view-"  # removed by the directory's stale-file sweep if left
_OPEN_READ = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_OPEN_WRITE = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class ViewFailed(Exception):
    """The converter child failed or overran its deadline; ``timed_out`` tells which."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass
class ViewStats:
    """Counters shown under ``views`` in ``/debug/flight/status``."""

    children: int = 0  #: converter children started
    cached: int = 0  #: views served from the cache, no child
    busy: int = 0  #: requests refused with 429 while a child ran
    failed: int = 0  #: children that exited with an error (before or during the stream)
    killed: int = 0  #: children killed at the deadline
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {
                "children": self.children,
                "cached": self.cached,
                "busy": self.busy,
                "failed": self.failed,
                "killed": self.killed,
            }


# -- the cache ------------------------------------------------------------------------------
class _Sink(Protocol):
    """A temporary file the converter child writes its output to (``path``), read back
    as it grows; kept as the view when committed."""

    path: str

    def commit(self) -> None: ...
    def discard(self) -> None: ...


class ViewCache:
    """Finished views by (snapshot id, view key): files ``<id>.<key>.view`` in the snapshot
    directory when there is one (every worker sharing it reuses them; a view whose snapshot
    has left the store is removed when the next one is written), else in memory, at most
    :data:`MEMORY_CACHE_BYTES` in all.
    """

    def __init__(
        self,
        directory: str | None,
        live_ids: Callable[[], set[str]],
        max_bytes: int = MEMORY_CACHE_BYTES,
    ) -> None:
        self.directory = directory
        self.live_ids = live_ids
        self.max_bytes = max_bytes
        self._memory: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _path(self, ident: str, key: str) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, f"{ident}.{key}{_VIEW_SUFFIX}")

    def get(self, ident: str, key: str) -> bytes | IO[bytes] | None:
        """The cached view: bytes (memory), an open file (directory) or None. Blocking."""
        with self._lock:
            data = self._memory.get((ident, key))
            if data is not None:
                self._memory.move_to_end((ident, key))
                return data
        if self.directory is None:
            return None
        try:
            fd = os.open(self._path(ident, key), _OPEN_READ)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return None
            return os.fdopen(fd, "rb", buffering=0)
        except OSError:
            os.close(fd)
            return None

    def sink(self, ident: str, key: str) -> _Sink:
        """Where a view being made is written; kept only when committed. Blocking."""
        if self.directory is not None:
            try:
                return _FileSink(self, ident, key)
            except OSError:
                pass  # a full or read-only disk: keep it in memory instead
        return _MemorySink(self, ident, key)

    def keep(self, ident: str, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes // 2:
            return  # one huge view would push out every other
        with self._lock:
            old = self._memory.pop((ident, key), None)
            self._bytes -= len(old) if old is not None else 0
            self._memory[(ident, key)] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._memory.popitem(last=False)
                self._bytes -= len(dropped)

    def prune(self, written: str) -> None:
        """Remove the directory's views of snapshots the store no longer holds."""
        if self.directory is None:
            return
        live = self.live_ids()
        live.add(written)
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name.endswith(_VIEW_SUFFIX) and name.split(".", 1)[0] not in live:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))


class _FileSink:
    """A temporary file beside the snapshot, renamed to the view's name when committed."""

    def __init__(self, cache: ViewCache, ident: str, key: str) -> None:
        assert cache.directory is not None
        self.cache, self.ident, self.key = cache, ident, key
        self.path = os.path.join(cache.directory, f"{_TMP_PREFIX}{ident}.{secrets.token_hex(4)}")
        os.close(os.open(self.path, _OPEN_WRITE, 0o600))

    def commit(self) -> None:
        try:
            os.replace(self.path, self.cache._path(self.ident, self.key))
        except OSError:
            self.discard()
            return
        self.cache.prune(self.ident)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class _MemorySink:
    """A private temporary file, read into the memory cache when committed (if small)."""

    def __init__(self, cache: ViewCache, ident: str, key: str) -> None:
        self.cache, self.ident, self.key = cache, ident, key
        fd, self.path = tempfile.mkstemp(prefix="flightdeck-view-")  # mode 0600
        os.close(fd)

    def commit(self) -> None:
        try:
            if os.path.getsize(self.path) <= self.cache.max_bytes // 2:
                with open(self.path, "rb") as handle:
                    self.cache.keep(self.ident, self.key, handle.read())
        except OSError:
            pass
        self.discard()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


# -- sources of a response's body -----------------------------------------------------------
class Source(Protocol):
    """A body read chunk by chunk (``b""`` at the end), off the event loop."""

    length: int | None

    async def read(self) -> bytes: ...
    async def close(self) -> None: ...


class BytesSource:
    """Bytes already in memory (stored bytes, a view cached in memory)."""

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.length: int | None = len(data)
        self.offset = 0

    async def read(self) -> bytes:
        chunk = bytes(self.view[self.offset : self.offset + (1 << 20)])
        self.offset += len(chunk)
        return chunk

    async def close(self) -> None:
        self.view.release()


class FileSource:
    """A cached view's file."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.length: int | None = os.fstat(handle.fileno()).st_size

    async def read(self) -> bytes:
        return await anyio.to_thread.run_sync(self.handle.read, 1 << 20)

    async def close(self) -> None:
        self.handle.close()


class GunzipSource:
    """Another source's gzip member, decompressed as it is read (clients without gzip)."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.length: int | None = None
        self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.pending = b""

    def _step(self, chunk: bytes) -> bytes:
        out = self.decompressor.decompress(self.pending + chunk, 1 << 20)
        self.pending = self.decompressor.unconsumed_tail
        return out

    async def read(self) -> bytes:
        while True:
            if self.pending:
                out = await anyio.to_thread.run_sync(self._step, b"")
            else:
                chunk = await self.inner.read()
                if not chunk:
                    if not self.decompressor.eof:
                        raise ViewFailed("the stored JSON is a truncated gzip member")
                    return b""
                out = await anyio.to_thread.run_sync(self._step, chunk)
            if out:
                return out

    async def close(self) -> None:
        await self.inner.close()


class ChildSource:
    """The output of a converter child, read as it grows in the file the child writes (the
    view's cache file-to-be): the child's pace does not depend on the client's, so the
    deadline bounds the conversion, never a slow download. Holds :data:`_SLOT` (acquired
    by the caller) until the child is gone.
    """

    def __init__(
        self,
        child: subprocess.Popen[bytes],
        errors: IO[bytes],
        output: IO[bytes],
        sink: _Sink,
        stats: ViewStats,
        deadline: float,
    ) -> None:
        self.child = child
        self.errors = errors
        self.output = output
        self.sink = sink
        self.stats = stats
        self.length: int | None = None
        self.status: int | None = None
        self.done = False
        self.timed_out = False
        self.closed = False
        self.released = False
        self._release_lock = threading.Lock()
        stats.count("children")
        self.timer = threading.Timer(deadline, self._kill_at_deadline)
        self.timer.daemon = True
        self.timer.start()

    @classmethod
    def start(
        cls,
        data: bytes,
        format: str,
        gzip: bool,
        sink: _Sink,
        stats: ViewStats,
        deadline: float,
        memory: int,
    ) -> ChildSource:
        """Start the converter on ``data`` (blocking: run in a worker thread)."""
        command = [sys.executable, "-m", "flightdeck", "convert", "--format", format]
        command += ["--memory", str(memory), "--background", *(["--gzip"] if gzip else [])]
        command += ["--output", sink.path, "-"]
        errors = tempfile.TemporaryFile()  # noqa: SIM115  (closed in _reap)
        try:
            output = open(sink.path, "rb", buffering=0)  # noqa: SIM115  (closed in _reap)
        except BaseException:
            errors.close()
            raise
        try:
            child = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env=_child_env(),
                close_fds=True,
            )
        except BaseException:
            errors.close()
            output.close()
            raise
        self = cls(child, errors, output, sink, stats, deadline)
        stdin = child.stdin
        assert stdin is not None
        try:
            stdin.write(data)
        except (BrokenPipeError, OSError):
            pass  # the child ended early: its status says why
        finally:
            with contextlib.suppress(OSError):
                stdin.close()
        return self

    def _said(self) -> str:
        """The child's last line on stderr (its one-line error), if any."""
        try:
            self.errors.seek(0)
            lines = self.errors.read(4096).decode("utf-8", "replace").strip().splitlines()
        except (OSError, ValueError):
            return "no message"
        return lines[-1][:300] if lines else "no message"

    def _kill_at_deadline(self) -> None:
        if self.child.poll() is None:
            self.timed_out = True
            with contextlib.suppress(OSError):
                self.child.kill()

    def _read(self) -> bytes:
        while True:
            chunk = self.output.read(CHUNK)
            if chunk:
                return chunk
            if self.status is not None:
                return self._finish()  # at the end of what the child wrote before exiting
            try:
                self.status = self.child.wait(timeout=_POLL)
            except subprocess.TimeoutExpired:
                pass  # still converting: read what it has written meanwhile

    def _finish(self) -> bytes:
        self.timer.cancel()
        self.done = True
        self._release()
        if self.timed_out:
            self.sink.discard()
            self.stats.count("killed")
            raise ViewFailed("the conversion took longer than its deadline", timed_out=True)
        if self.status != 0:
            self.sink.discard()
            self.stats.count("failed")
            raise ViewFailed(f"the converter exited with status {self.status}: {self._said()}")
        self.sink.commit()
        return b""

    async def read(self) -> bytes:
        # Abandoned on cancellation (a client gone): close() kills the child, which ends
        # the read in the worker thread.
        return await anyio.to_thread.run_sync(self._read, abandon_on_cancel=True)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if not self.done:
                with contextlib.suppress(OSError):
                    self.child.kill()
            await anyio.to_thread.run_sync(self._reap)
        finally:
            self._release()

    def _release(self) -> None:
        """Free the process's converter slot, once, as soon as the child is gone."""
        with self._release_lock:
            if self.released:
                return
            self.released = True
        _SLOT.release()

    def _reap(self) -> None:
        self.timer.cancel()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.child.wait(timeout=30)
        if not self.done:
            self.sink.discard()
        for stream in (self.child.stdin, self.errors, self.output):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _child_env() -> dict[str, str]:
    """The app's environment, with this flightdeck's directory first on the child's path (so
    the child runs the same code as the app, however the app found it)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root if not path else root + os.pathsep + path
    return env


def acquire_slot() -> bool:
    """Take the process's converter slot without waiting; False when a child runs."""
    return _SLOT.acquire(blocking=False)


def release_slot() -> None:
    _SLOT.release()


def any_source(cached: bytes | IO[bytes]) -> Source:
    return BytesSource(cached) if isinstance(cached, bytes) else FileSource(cached)


__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_MEMORY",
    "BytesSource",
    "ChildSource",
    "FileSource",
    "GunzipSource",
    "Source",
    "ViewCache",
    "ViewFailed",
    "ViewStats",
    "acquire_slot",
    "any_source",
    "release_slot",
]
