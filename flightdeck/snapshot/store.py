"""The snapshot store: bounded, in memory, or in a directory that several workers share.

Every method does blocking work (compression, file I/O) and is meant to be called from a
worker thread, never from the event loop; a lock makes it safe to call from several.

Snapshots are kept in their stored form (``container.py``: the window's own records, about
the window's bytes or less); the gzip'd native JSON that earlier versions stored
(``codec.py``) is still read, listed and served. Views (JSON, HTML, ...) are conversions of
the stored bytes; :meth:`SnapshotStore.get_bytes` converts here, for in-process callers.

Without a directory the snapshots live in memory. With one, the directory is the truth
(``directory.py``): a snapshot is listed and served only while its file is there, whichever
worker wrote it, so a listed snapshot never 404s on another worker. Memory then holds only
the snapshots whose write failed (disk full, read-only), so that none is lost.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from ..core.text import ErrorLog
from .codec import (
    MIN_READ_LIMIT,
    SUFFIX,
    Chunks,
    Listing,
    StoredInfo,
    Summary,
    clean,
    encode,
    encode_chunks,
    encode_stream,
    encoded_size,
    eviction_key,
    gunzip,
    sort_key,
)
from .container import ContainerError, is_container, read_document
from .directory import SnapshotDirectory
from .document import Snapshot, SnapshotError, is_valid_id

#: Default bound of a store in bytes (``max_store_bytes``); a kept snapshot holds at most
#: about one window's bytes (``max_bytes``, 16 MiB by default).
DEFAULT_MAX_STORE_BYTES = 256 << 20

__all__ = ["SUFFIX", "SnapshotStore", "StoredInfo", "encode", "encode_chunks", "encode_stream"]


class SnapshotStore:
    """Keeps the most recent snapshots, in memory or, when ``directory`` is set, on disk.

    At most ``max_snapshots`` snapshots and ``max_bytes`` of stored bytes (in the
    directory: in total, whichever process wrote them). Beyond the bounds manual captures go
    first, then fleet follower captures, then automatic and crash snapshots, oldest first
    within each (``codec.eviction_key``); the snapshot just stored is always kept. Disk
    errors are counted in :attr:`errors` and logged once per kind, never raised; a bad
    ``directory`` (others may write to it, a symlink) raises ``ValueError`` here.
    """

    def __init__(
        self,
        max_snapshots: int = 20,
        max_bytes: int = DEFAULT_MAX_STORE_BYTES,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        for name, value in (("max_snapshots", max_snapshots), ("max_bytes", max_bytes)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a path or None, not {type(directory).__name__}")
        self.max_snapshots = max_snapshots
        self.max_bytes = max_bytes
        self.errors = 0
        self.evicted = 0
        self._read_limit = max(max_bytes, MIN_READ_LIMIT)
        #: id -> (gzip member, summary); a capture's member stays in its chunks until read.
        self._memory: OrderedDict[str, tuple[bytes | Chunks, Summary]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._log = ErrorLog()
        #: Asked for a snapshot this store does not hold (the fleet's, in Redis): returns
        #: its gzip'd native JSON, already checked, or None.
        self.remote: Callable[[str], bytes | None] | None = None
        self.directory: str | None = None
        self._dir: SnapshotDirectory | None = None
        if directory is not None:
            path = os.fspath(directory)
            if not path:
                raise ValueError("directory must not be empty")
            self.directory = os.path.abspath(path)
            self._dir = SnapshotDirectory(
                self.directory, max_snapshots, self._read_limit, self._failed, max_bytes
            )

    @property
    def written(self) -> int:
        return self._dir.written if self._dir is not None else 0

    @property
    def removed(self) -> int:
        return self._dir.removed if self._dir is not None else 0

    # -- writing -------------------------------------------------------------------------
    def put(self, snapshot: Snapshot) -> StoredInfo:
        """Keep ``snapshot`` (evicting beyond the bounds) and write it to the directory.

        Its stored form when it has one (a capture's), else gzip'd native JSON.
        """
        pieces = snapshot.stored_pieces()
        if pieces is not None:
            return self.put_stored(pieces, snapshot._head)
        return self.put_encoded(*encode(snapshot))

    def put_stored(self, pieces: Iterable[bytes], head: dict[str, Any]) -> StoredInfo:
        """Keep a stored form from ``container.write`` or ``container.stream``: its pieces,
        never joined here; an iterator is written to the directory as it is made.

        ``head`` is its header (complete once the pieces are); the listing is made of it.
        """
        if not is_valid_id(head.get("id")):
            raise ValueError(f"not a storable snapshot: malformed id {head.get('id')!r}")
        ident: str = head["id"]
        if self._dir is not None:
            unwritten: Chunks = []
            path = self._dir.write(ident, pieces, stored=True, unwritten=unwritten)
            if path is not None:
                size = _size(path)
                return StoredInfo(ident, size, size, path)
            pieces = unwritten
        kept = pieces if isinstance(pieces, list) else list(pieces)
        size = encoded_size(kept)
        summary = clean(head, size)
        if summary is None:
            raise ValueError(f"not a storable snapshot: malformed id {ident!r}")
        self._keep(ident, kept, summary, size)
        return StoredInfo(ident, size, size, None)

    def put_encoded(self, data: bytes | Chunks, summary: Summary) -> StoredInfo:
        """Keep a snapshot encoded by :func:`encode`, :func:`encode_stream` (``bytes``) or
        :func:`encode_chunks` (its chunks, written or kept as they are: never joined here).
        """
        ident = summary["id"]
        stored = encoded_size(data)
        if self._dir is not None:
            path = self._dir.write(ident, data)
            if path is not None:
                return StoredInfo(ident, summary["size"], stored, path)
        self._keep(ident, data, summary, stored)
        return StoredInfo(ident, summary["size"], stored, None)

    def _keep(self, ident: str, data: bytes | Chunks, summary: Summary, size: int) -> None:
        with self._lock:
            old = self._memory.pop(ident, None)
            if old is not None:
                self._bytes -= encoded_size(old[0])
            self._memory[ident] = (data, summary)
            self._bytes += size
            while len(self._memory) > 1 and (
                len(self._memory) > self.max_snapshots or self._bytes > self.max_bytes
            ):
                victim = min(
                    (key for key in self._memory if key != ident),
                    key=lambda key: eviction_key(self._memory[key][1]),
                )
                self._bytes -= encoded_size(self._memory.pop(victim)[0])
                self.evicted += 1

    def _failed(self, action: str, exc: OSError) -> None:
        kind = f"{action}:{errno.errorcode.get(exc.errno or 0, type(exc).__name__)}"
        with self._lock:
            self.errors += 1
            self._log.once(
                kind,
                "flightdeck: cannot %s snapshots in %s (%s); keeping them in memory only"
                " (logged once)",
                action,
                self.directory,
                exc,
            )

    # -- reading -------------------------------------------------------------------------
    def get_stored(self, id: str) -> bytes | None:
        """Snapshot ``id`` as stored: its stored form (``container.is_container``), or the
        gzip'd native JSON an earlier version stored; None when absent."""
        return self._data(id)

    def _data(self, ident: object) -> bytes | None:
        """The stored bytes of snapshot ``ident``, or None when absent."""
        if not isinstance(ident, str) or not is_valid_id(ident):
            return None
        with self._lock:
            entry = self._memory.get(ident)
        if entry is not None:
            return self._joined(ident, entry)
        data = self._dir.read(ident) if self._dir is not None else None
        return data if data is not None else self._remote(ident)

    def _joined(self, ident: str, entry: tuple[bytes | Chunks, Summary]) -> bytes:
        """The member as one ``bytes``, joined at its first read (downloads are rare; a
        capture's peak memory is not) and kept joined."""
        data = entry[0]
        if isinstance(data, bytes):
            return data
        joined = b"".join(data)
        with self._lock:
            if self._memory.get(ident) is entry:
                self._memory[ident] = (joined, entry[1])
        return joined

    def _remote(self, ident: str) -> bytes | None:
        if self.remote is None:
            return None
        try:
            return self.remote(ident)
        except Exception:
            with self._lock:
                self.errors += 1
            return None

    def get(self, id: str) -> Snapshot | None:
        """The snapshot ``id``, or None (a stored form's document is built when read)."""
        data = self._data(id)
        if data is not None and is_container(data):
            try:
                snap = Snapshot.from_stored(data)
            except SnapshotError:
                return None
            return snap if snap.id == id else None
        raw = None if data is None else gunzip(data, self._read_limit)
        if raw is None:
            return None
        try:
            snapshot = Snapshot.load(raw)
        except (SnapshotError, ValueError, TypeError):
            return None
        return snapshot if snapshot.id == id else None

    def get_bytes(self, id: str, gzip: bool) -> bytes | None:
        """Native JSON of snapshot ``id``, gzip-compressed when ``gzip``; None when absent.

        A stored form is converted here, in this process (the whole document is built):
        for in-process callers; the server converts in a child process instead.
        """
        data = self._data(id)
        if data is not None and is_container(data):
            try:
                doc = read_document(data)
                body = Snapshot(doc).dumps("json")
            except (ContainerError, SnapshotError):
                return None
            return encode_stream(doc, [body])[0] if gzip else body
        if data is None or gzip:
            return data
        return gunzip(data, self._read_limit)

    def list(self, trace_id: str | None = None) -> Listing:
        """Summaries of the stored snapshots, newest first.

        ``[{id, created_at, trigger: {kind, reason}, request, pid, size, service, incident}]``
        where ``request`` is ``{method, path, status, duration}`` or None and ``size`` is the
        stored size (the native JSON size for the gzip'd JSON of earlier versions). With
        ``trace_id``, only the snapshots whose window holds a request
        of that trace (the trace ids are in each snapshot's verified summary).
        """
        with self._lock:
            found = {ident: summary for ident, (_, summary) in self._memory.items()}
        if self._dir is not None:
            for _, summary in self._dir.scan():
                found.setdefault(summary["id"], summary)
        ordered = sorted(found.values(), key=sort_key, reverse=True)
        if trace_id is not None:
            ordered = [item for item in ordered if trace_id in item.get("trace_ids", ())]
        return [_copy(summary) for summary in ordered]

    def latest_id(self) -> str | None:
        """The id of the newest stored snapshot, or None."""
        listing = self.list()
        return listing[0]["id"] if listing else None

    def stats(self) -> dict[str, Any]:
        """Counters: snapshots and bytes in memory, written, evicted, removed, errors."""
        with self._lock:
            return {
                "snapshots": len(self._memory),
                "bytes": self._bytes,
                "max_snapshots": self.max_snapshots,
                "max_bytes": self.max_bytes,
                "directory": self.directory,
                "written": self.written,
                "evicted": self.evicted,
                "removed": self.removed,
                "quarantined": self._dir.quarantined if self._dir is not None else 0,
                "errors": self.errors,
            }

    def __repr__(self) -> str:
        return f"<SnapshotStore {len(self._memory)} in memory, directory={self.directory!r}>"


def _size(path: str) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except OSError:
        return 0


def _copy(summary: Summary) -> Summary:
    copied = dict(summary)
    copied.pop("trace_ids", None)  # internal: up to 1000 per snapshot; see list(trace_id=)
    copied["trigger"] = dict(summary["trigger"])
    if summary["request"] is not None:
        copied["request"] = dict(summary["request"])
    return copied
