"""The snapshot store: a bounded in-memory store, optionally mirrored to a shared directory.

Every method does blocking work (compression, file I/O) and is meant to be called from a
worker thread, never from the event loop; a lock makes it safe to call from several.

Snapshots are kept as gzip'd native JSON, in memory as on disk: a frozen document is large
as Python objects (several times its JSON size) and rarely read again, so holding the
compressed bytes bounds memory tightly and lets a download be served without recompressing.

On disk each snapshot is one file, ``<id>.json.gz``, written atomically (temporary file,
fsync, ``os.replace``). Its summary (what :meth:`SnapshotStore.list` returns) travels in the
gzip header's FEXTRA field, a standard part of the format that gunzip, zlib and browsers
skip. Listing therefore reads a few hundred bytes per file, and since metadata and data are
one file there is nothing to keep consistent: no sidecar can be orphaned or stale.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import logging
import os
import secrets
import stat
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ..core.text import ErrorLog, safe_text
from .document import FORMAT, Snapshot, SnapshotError, is_valid_id

logger = logging.getLogger("flightdeck")

SUFFIX = ".json.gz"
_TMP_PREFIX = ".flightdeck-tmp-"
_STALE_TMP = 600.0  # seconds: a temporary file this old was left by a crashed writer
_META_TAG = b"FD"  # FEXTRA subfield id carrying the summary
_GZIP_MAGIC = b"\x1f\x8b\x08\x04"  # gzip, deflate, FLG.FEXTRA only
# A low level: every put compresses, and repetitive JSON compresses well even at low levels.
_GZIP_LEVEL = 4
_MIN_READ_LIMIT = 64 << 20
_OPEN_READ = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_OPEN_WRITE = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)

Summary = dict[str, Any]
Listing = list[Summary]


@dataclass(frozen=True)
class StoredInfo:
    """What :meth:`SnapshotStore.put` did with a snapshot."""

    id: str
    size: int  #: native JSON bytes
    stored: int  #: gzip'd bytes held in memory (and written to disk)
    path: str | None  #: the file written, or None when kept in memory only


class _Entry:
    __slots__ = ("data", "summary")

    def __init__(self, data: bytes, summary: Summary) -> None:
        self.data = data
        self.summary = summary


def _str(value: object, limit: int) -> str:
    return safe_text(value if isinstance(value, str) else "", limit)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _clean(raw: object, size: object) -> Summary | None:
    """A summary of the documented shape from untrusted data, or None when it is not one."""
    if not isinstance(raw, dict) or not is_valid_id(raw.get("id")):
        return None
    trigger = raw.get("trigger")
    trigger = trigger if isinstance(trigger, dict) else {}
    req = trigger.get("request", raw.get("request"))
    request = None
    if isinstance(req, dict):
        request = {
            "method": _str(req.get("method"), 16),
            "path": _str(req.get("path"), 2048),
            "status": _int(req.get("status")),
            "duration": _float(req.get("duration")),
        }
    pid = raw.get("pid")
    if pid is None and isinstance(raw.get("process"), dict):
        pid = raw["process"].get("pid")
    return {
        "id": raw["id"],
        "created_at": _str(raw.get("created_at"), 64),
        "trigger": {
            "kind": _str(trigger.get("kind"), 64),
            "reason": _str(trigger.get("reason"), 1024),
        },
        "request": request,
        "pid": _int(pid),
        "size": _int(size) or 0,
    }


def _sort_key(summary: Summary) -> tuple[float, str]:
    """Oldest first: created time, then id (ids of one second sort by pid and randomness)."""
    ident: str = summary["id"]
    try:
        created = datetime.fromisoformat(summary["created_at"].replace("Z", "+00:00"))
        return created.timestamp(), ident
    except (ValueError, AttributeError, OverflowError):
        pass
    try:
        return float(calendar.timegm(time.strptime(ident[:16], "%Y%m%dT%H%M%SZ"))), ident
    except (ValueError, OverflowError):
        return 0.0, ident  # the pattern admits impossible dates such as month 99


def encode(snapshot: Snapshot, level: int = _GZIP_LEVEL) -> tuple[bytes, Summary]:
    """The snapshot as a gzip member whose header carries its summary, and that summary."""
    return encode_stream(snapshot.to_dict(), [snapshot.dumps("json")], level)


def encode_stream(
    head: dict[str, Any], pieces: Iterable[bytes], level: int = _GZIP_LEVEL
) -> tuple[bytes, Summary]:
    """Like :func:`encode`, from a document's JSON in ``pieces`` (compressed as they come).

    ``head`` is the document or any dict with its ``id``, ``format``, ``created_at``,
    ``trigger`` and ``process``: what the summary is made of.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body: list[bytes] = []
    crc = 0
    size = 0
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
        size += len(piece)
        body.append(compressor.compress(piece))
    body.append(compressor.flush())
    summary = _clean(head, size)
    if summary is None:
        raise ValueError(f"not a storable snapshot: malformed id {head.get('id')!r}")
    meta = orjson.dumps({"format": head.get("format"), "summary": summary})
    sub = _META_TAG + struct.pack("<H", len(meta)) + meta
    header = _GZIP_MAGIC + b"\0\0\0\0\0\xff" + struct.pack("<H", len(sub)) + sub
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return b"".join([header, *body, trailer]), summary


def _parse_header(head: bytes) -> tuple[Summary, int] | None:
    """(summary, header length) from the first bytes of a member written by :func:`encode`.

    None for anything else: not gzip, no summary, another format version (skipped, so that
    an older flightdeck sharing a directory with a newer one never serves what it cannot read).
    """
    if len(head) < 12 or head[:4] != _GZIP_MAGIC:
        return None
    (xlen,) = struct.unpack_from("<H", head, 10)
    if len(head) < 12 + xlen or xlen < 4 or head[12:14] != _META_TAG:
        return None
    (length,) = struct.unpack_from("<H", head, 14)
    if 4 + length > xlen:
        return None
    try:
        meta = orjson.loads(head[16 : 16 + length])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    raw = meta.get("summary")
    summary = _clean(raw, raw.get("size") if isinstance(raw, dict) else None)
    return (summary, 12 + xlen) if summary is not None else None


def _gunzip(data: bytes, limit: int) -> bytes | None:
    """Decompress one gzip member, checking CRC and length; None if corrupt or over ``limit``."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or not decompressor.eof or decompressor.unused_data:
        return None
    return out


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class SnapshotStore:
    """Keeps the most recent snapshots, in memory and, when ``directory`` is set, on disk.

    Memory holds at most ``max_snapshots`` snapshots and ``max_bytes`` of compressed JSON
    (oldest evicted first; the newest is kept even when alone it is larger). The directory
    holds at most ``max_snapshots`` files in total, whichever process wrote them. Disk
    errors are counted in :attr:`errors` and logged once per kind, never raised.
    """

    def __init__(
        self,
        max_snapshots: int = 20,
        max_bytes: int = 256 << 20,
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
        self.directory: str | None = None
        if directory is not None:
            path = os.fspath(directory)
            if not path:
                raise ValueError("directory must not be empty")
            self.directory = os.path.abspath(path)
        self.errors = 0
        self.written = 0
        self.evicted = 0
        self.removed = 0
        self._read_limit = max(max_bytes, _MIN_READ_LIMIT)
        self._memory: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._log = ErrorLog()
        # Files are immutable once in place (replaced, never rewritten), so a file that was
        # validated once need not be parsed again while its identity is unchanged.
        self._validated: OrderedDict[tuple[int, ...], None] = OrderedDict()

    # -- writing -------------------------------------------------------------------------

    def put(self, snapshot: Snapshot) -> StoredInfo:
        """Keep ``snapshot`` (evicting the oldest beyond the bounds) and write it to disk."""
        return self.put_encoded(*encode(snapshot))

    def put_encoded(self, data: bytes, summary: Summary) -> StoredInfo:
        """Keep a snapshot already encoded by :func:`encode` or :func:`encode_stream`."""
        ident = summary["id"]
        with self._lock:
            old = self._memory.pop(ident, None)
            if old is not None:
                self._bytes -= len(old.data)
            self._memory[ident] = _Entry(data, summary)
            self._bytes += len(data)
            while len(self._memory) > 1 and (
                len(self._memory) > self.max_snapshots or self._bytes > self.max_bytes
            ):
                _, evicted = self._memory.popitem(last=False)
                self._bytes -= len(evicted.data)
                self.evicted += 1
        path = None
        if self.directory is not None:
            path = self._write(self.directory, ident, data)
            if path is not None:
                self._enforce_quota(self.directory)
        return StoredInfo(ident, summary["size"], len(data), path)

    def _write(self, directory: str, ident: str, data: bytes) -> str | None:
        final = os.path.join(directory, ident + SUFFIX)
        tmp = os.path.join(directory, f"{_TMP_PREFIX}{ident}.{secrets.token_hex(4)}")
        created = False
        try:
            # Recreates a directory removed while running (tmp cleaners, an operator).
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(tmp, _OPEN_WRITE, 0o600)
            created = True
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # Make room first, so that the directory never holds more than the limit (in one
            # process; concurrent writers can each be one ahead until the last one rotates).
            self._enforce_quota(directory, incoming=ident)
            os.replace(tmp, final)
            created = False
        except OSError as exc:
            self._failed("write", exc)
            return None
        finally:
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        with self._lock:
            self.written += 1
        return final

    def _enforce_quota(self, directory: str, incoming: str | None = None) -> None:
        # Every writer enforces after its own write, on a fresh listing that includes it, so
        # whichever process writes last leaves at most max_snapshots files behind. Unlinking
        # a file another process already removed is harmless. With ``incoming`` (a file about
        # to be renamed into place) one slot is kept free for it.
        files = self._scan(directory, include_unreadable=True)
        limit = self.max_snapshots
        if incoming is not None:
            files = [item for item in files if item[1]["id"] != incoming]
            limit -= 1
        excess = len(files) - limit
        if excess <= 0:
            return
        files.sort(key=lambda item: _sort_key(item[1]))
        for path, _ in files[:excess]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._failed("remove", exc)
                continue
            with self._lock:
                self.removed += 1

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

    def _scan(self, directory: str, include_unreadable: bool = False) -> list[tuple[str, Summary]]:
        """(path, summary) of the snapshot files in ``directory`` (symlinks never followed)."""
        found: list[tuple[str, Summary]] = []
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return found
        except OSError as exc:
            self._failed("list", exc)
            return found
        now = time.time()
        for entry in entries:
            name = entry.name
            if name.startswith(_TMP_PREFIX):
                self._remove_stale(entry, now)
                continue
            ident = name[: -len(SUFFIX)]
            if not name.endswith(SUFFIX) or not is_valid_id(ident):
                continue
            try:
                # d_type from scandir: FIFOs, devices and symlinks are never even opened.
                if not entry.is_file(follow_symlinks=False):
                    continue
            except OSError:
                continue
            summary = self._read_summary(entry.path, ident)
            if summary is not None:
                found.append((entry.path, summary))
            elif include_unreadable:
                # Counted against the quota (and rotated out by their id's time), never served.
                found.append((entry.path, {"id": ident, "created_at": ""}))
        return found

    def _remove_stale(self, entry: os.DirEntry[str], now: float) -> None:
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > _STALE_TMP:
                os.unlink(entry.path)
        except OSError:
            pass

    def _open(self, path: str) -> tuple[int, os.stat_result] | None:
        """Open a regular file for reading without following a symlink at ``path``."""
        try:
            fd = os.open(path, _OPEN_READ)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > self._read_limit:
            os.close(fd)
            return None
        return fd, st

    def _read_summary(self, path: str, ident: str) -> Summary | None:
        opened = self._open(path)
        if opened is None:
            return None
        fd, st = opened
        try:
            head = _read_exact(fd, 12)
            if len(head) < 12 or head[:4] != _GZIP_MAGIC:
                return None
            head += _read_exact(fd, struct.unpack_from("<H", head, 10)[0])
            parsed = _parse_header(head)
            if parsed is None or parsed[0]["id"] != ident or st.st_size < parsed[1] + 10:
                return None
            # The trailer's ISIZE must be the summary's size: a cheap check that catches a
            # truncated file without decompressing it.
            os.lseek(fd, -4, os.SEEK_END)
            (isize,) = struct.unpack("<I", _read_exact(fd, 4))
        except (OSError, struct.error):
            return None
        finally:
            os.close(fd)
        return parsed[0] if isize == parsed[0]["size"] & 0xFFFFFFFF else None

    def _path(self, ident: str) -> str | None:
        if self.directory is None or not is_valid_id(ident):
            return None
        return os.path.join(self.directory, ident + SUFFIX)

    def _load(self, ident: object) -> tuple[bytes, Snapshot | None] | None:
        """(gzip data, snapshot if it had to be parsed to be trusted) or None when absent."""
        if not isinstance(ident, str) or not is_valid_id(ident):
            return None
        with self._lock:
            entry = self._memory.get(ident)
        if entry is not None:
            return entry.data, None
        path = self._path(ident)
        if path is None:
            return None
        opened = self._open(path)
        if opened is None:
            return None
        fd, st = opened
        try:
            data = _read_exact(fd, st.st_size)
        except OSError:
            return None
        finally:
            os.close(fd)
        parsed = _parse_header(data[: 12 + 65535])
        if parsed is None or parsed[0]["id"] != ident:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._validated:
                return data, None
        snapshot = self._decode(data, ident)
        if snapshot is None:
            return None
        with self._lock:
            self._validated[key] = None
            while len(self._validated) > 256:
                self._validated.popitem(last=False)
        return data, snapshot

    def _decode(self, data: bytes, ident: str) -> Snapshot | None:
        raw = _gunzip(data, self._read_limit)
        if raw is None:
            return None
        try:
            snapshot = Snapshot.load(raw)
        except (SnapshotError, ValueError, TypeError):
            return None
        return snapshot if snapshot.id == ident else None

    def get(self, id: str) -> Snapshot | None:
        """The snapshot ``id`` from memory or the directory, or None."""
        loaded = self._load(id)
        if loaded is None:
            return None
        data, snapshot = loaded
        return snapshot if snapshot is not None else self._decode(data, id)

    def get_bytes(self, id: str, gzip: bool) -> bytes | None:
        """Native JSON of snapshot ``id``, gzip-compressed when ``gzip``; None when absent."""
        loaded = self._load(id)
        if loaded is None:
            return None
        data, snapshot = loaded
        if gzip:
            return data
        if snapshot is not None:
            return snapshot.dumps("json")
        return _gunzip(data, self._read_limit)

    def list(self) -> Listing:
        """Summaries of the stored snapshots, newest first, from memory and the directory.

        ``[{id, created_at, trigger: {kind, reason}, request, pid, size}]`` where ``request``
        is ``{method, path, status, duration}`` or None and ``size`` is the native JSON size.
        """
        with self._lock:
            found = {ident: entry.summary for ident, entry in self._memory.items()}
        if self.directory is not None:
            for _, summary in self._scan(self.directory):
                found.setdefault(summary["id"], summary)
        ordered = sorted(found.values(), key=_sort_key, reverse=True)
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
                "errors": self.errors,
            }

    def __repr__(self) -> str:
        return f"<SnapshotStore {len(self._memory)} in memory, directory={self.directory!r}>"


def _copy(summary: Summary) -> Summary:
    copied = dict(summary)
    copied["trigger"] = dict(summary["trigger"])
    if summary["request"] is not None:
        copied["request"] = dict(summary["request"])
    return copied
