"""``SnapshotDirectory``: snapshots as files in a directory that several workers share.

Each snapshot is one file, ``<id>.fdk`` (its stored form, ``container.py``) or, written
by earlier versions, ``<id>.json.gz`` (``codec.py``), written atomically (temporary file,
fsync, ``os.replace``). Every worker lists, serves and rotates what is in
the directory, so the directory is the truth: what one worker lists, any worker serves.

The directory is checked when it is configured, not at the first write: it must be a real
directory (not a symlink), owned by this user and writable by nobody else, since whoever
can write there can plant or delete snapshots. A file that fails verification (corrupt
body, a summary that disagrees with its id) is moved aside as ``.corrupt-<name>`` and never
listed, served or counted again; the newest few of those are kept for inspection.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from ..core.text import ErrorLog
from . import codec, container
from .codec import SUFFIX, Summary
from .document import is_valid_id

#: The file suffix of a snapshot's stored form.
STORED_SUFFIX = ".fdk"
_SUFFIXES = (STORED_SUFFIX, SUFFIX)

_TMP_PREFIX = ".flightdeck-tmp-"
_CORRUPT_PREFIX = ".corrupt-"
_STALE_TMP = 600.0  # seconds: a temporary file this old was left by a crashed writer
_OPEN_READ = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_OPEN_WRITE = (
    os.O_RDWR
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_UNREADABLE: Summary = {"trigger": {"kind": ""}, "created_at": ""}


def check_directory(path: str) -> None:
    """Create ``path`` (mode 0700) if missing; refuse one others could write to.

    Raises ``ValueError`` naming the directory and what is wrong with it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.makedirs(path, mode=0o700)
            os.chmod(path, 0o700)  # the umask may have left it narrower; never wider
        except FileExistsError:
            pass  # another worker created it meanwhile: checked below like any other
        except OSError as exc:
            raise ValueError(f"directory {path!r} cannot be created: {exc.strerror}") from None
        st = os.lstat(path)
    except OSError as exc:
        raise ValueError(f"directory {path!r} cannot be checked: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(
            f"directory {path!r} is a symlink; give the real path"
            f" ({os.path.realpath(path)!r}) so that it cannot be swapped"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"directory {path!r} is not a directory")
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    # Root may write anywhere anyway, so a root-owned directory adds no writer.
    if euid is not None and st.st_uid not in (euid, 0):
        raise ValueError(
            f"directory {path!r} is owned by uid {st.st_uid}, not this process's uid {euid};"
            " snapshots must live in a directory private to the service user"
        )
    if st.st_mode & 0o022:
        # A shared directory (sticky like /tmp, or not ours) must stay shared: advise a
        # private directory inside it rather than a chmod that would break the machine.
        shared = bool(st.st_mode & stat.S_ISVTX) or st.st_uid != euid
        fix = (
            f"use a private subdirectory such as {os.path.join(path, f'flightdeck-{euid}')!r}"
            " (flightdeck creates it with mode 0700)"
            if shared
            else f"chmod 700 {path}, or use a private subdirectory"
        )
        raise ValueError(
            f"directory {path!r} is writable by group or others (mode"
            f" {stat.S_IMODE(st.st_mode):04o}), so anyone could plant or delete snapshots:"
            f" {fix}"
        )


class SnapshotDirectory:
    """The files of one snapshot directory: write, rotate, list (verified) and read."""

    def __init__(
        self,
        path: str,
        max_snapshots: int,
        read_limit: int,
        failed: Callable[[str, OSError], None],
        max_bytes: int | None = None,
    ) -> None:
        check_directory(path)
        self.path = path
        self.max_snapshots = max_snapshots
        self.max_bytes = max_bytes
        self.read_limit = read_limit
        self.failed = failed
        self.written = 0
        self.removed = 0
        self.quarantined = 0
        self._lock = threading.Lock()
        self._log = ErrorLog()
        # Files are immutable once in place (replaced, never rewritten), so a file verified
        # once need not be read again while its identity is unchanged.
        self._verified: OrderedDict[tuple[int, ...], Summary] = OrderedDict()

    # -- writing -------------------------------------------------------------------------
    def write(
        self,
        ident: str,
        data: bytes | Iterable[bytes],
        stored: bool = False,
        unwritten: list[bytes] | None = None,
    ) -> str | None:
        """Write one snapshot file, rotating out the oldest beyond the quota; None on failure.

        ``stored``: ``data`` is a stored form (``<id>.fdk``), else gzip'd JSON. ``data`` may
        be an iterator, consumed as written (a capture's pieces, made as they go). On
        failure ``unwritten``, if given, receives all of ``data`` (what was written read back,
        then the rest), so that the caller can keep it elsewhere.
        """
        final = os.path.join(self.path, ident + (STORED_SUFFIX if stored else SUFFIX))
        tmp = os.path.join(self.path, f"{_TMP_PREFIX}{ident}.{secrets.token_hex(4)}")
        created = False
        pieces = iter([data] if isinstance(data, bytes) else data)
        size = 0
        chunk = b""
        try:
            if not os.path.isdir(self.path):
                # Recreated when removed while running (tmp cleaners, an operator).
                os.makedirs(self.path, mode=0o700, exist_ok=True)
                os.chmod(self.path, 0o700)
            fd = os.open(tmp, _OPEN_WRITE, 0o600)
            created = True
            try:
                for chunk in pieces:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    size += len(chunk)
                    chunk = b""
                os.fsync(fd)
            except OSError:
                if unwritten is not None:
                    if size:
                        with contextlib.suppress(OSError):
                            unwritten.append(os.pread(fd, size, 0))
                    unwritten.append(chunk)  # the one being written
                raise
            finally:
                os.close(fd)
            # Make room first, so that the directory never holds more than the limit (in one
            # process; concurrent writers can each be one ahead until the last one rotates).
            self.enforce_quota(incoming=ident, incoming_bytes=size)
            os.replace(tmp, final)
            created = False
        except OSError as exc:
            self.failed("write", exc)
            if unwritten is not None:
                unwritten.extend(pieces)  # the rest, not made yet
            return None
        finally:
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        with self._lock:
            self.written += 1
        self.enforce_quota()
        return final

    def enforce_quota(self, incoming: str | None = None, incoming_bytes: int = 0) -> None:
        """Remove files beyond ``max_snapshots`` or ``max_bytes``, in ``codec.eviction_key``'s
        order: manual captures, then fleet follower captures, then the rest, oldest first.

        Every writer enforces after its own write, on a fresh listing that includes it, so
        whichever process writes last leaves the directory within its bounds. Unlinking a
        file another process already removed is harmless. With ``incoming`` (a file about
        to be renamed into place, of ``incoming_bytes``) room is kept for it. The newest
        file is never removed for bytes alone.
        """
        files = self.scan(include_unreadable=True)
        limit = self.max_snapshots
        budget = self.max_bytes
        if incoming is not None:
            files = [item for item in files if item[1].get("id") != incoming]
            limit -= 1
            if budget is not None:
                budget -= incoming_bytes
        sizes: dict[str, int] = {}
        if budget is not None:
            for path, _ in files:
                try:
                    sizes[path] = os.stat(path, follow_symlinks=False).st_size
                except OSError:
                    sizes[path] = 0
        total = sum(sizes.values())
        excess = len(files) - limit
        if excess <= 0 and (budget is None or total <= budget):
            return
        # Unreadable files (another format version) go by their id's time, as automatic.
        files.sort(key=lambda item: codec.eviction_key(item[1]))
        keep_newest = incoming is None and files
        newest = max(files, key=lambda item: codec.sort_key(item[1]))[0] if keep_newest else None
        for path, _ in files:
            over_bytes = budget is not None and total > budget
            if excess <= 0 and not over_bytes:
                break
            if excess <= 0 and path == newest:
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.failed("remove", exc)
                continue
            else:
                with self._lock:
                    self.removed += 1
            excess -= 1
            total -= sizes.get(path, 0)

    # -- listing -------------------------------------------------------------------------
    def scan(self, include_unreadable: bool = False) -> list[tuple[str, Summary]]:
        """(path, summary) of the verified snapshot files (symlinks never followed)."""
        found: list[tuple[str, Summary]] = []
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return found
        except OSError as exc:
            self.failed("list", exc)
            return found
        now = time.time()
        corrupt = []
        for entry in entries:
            name = entry.name
            if name.startswith((_TMP_PREFIX, _CORRUPT_PREFIX)):
                if name.startswith(_TMP_PREFIX):
                    self._remove_stale(entry, now)
                else:
                    corrupt.append(entry)
                continue
            suffix = next((x for x in _SUFFIXES if name.endswith(x)), None)
            ident = name[: -len(suffix)] if suffix else ""
            if not is_valid_id(ident):
                continue
            try:
                # d_type from scandir: FIFOs, devices and symlinks are never even opened.
                if not entry.is_file(follow_symlinks=False):
                    continue
            except OSError:
                continue
            summary = self._summary(entry.path, ident)
            if summary is not None:
                found.append((entry.path, summary))
            elif include_unreadable:
                # Counted against the quota (and rotated out by their id's time), never served.
                found.append((entry.path, {**_UNREADABLE, "id": ident}))
        if len(corrupt) > self.max_snapshots:
            self._trim_corrupt(corrupt)
        return found

    def _remove_stale(self, entry: os.DirEntry[str], now: float) -> None:
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > _STALE_TMP:
                os.unlink(entry.path)
        except OSError:
            pass

    def _trim_corrupt(self, corrupt: list[os.DirEntry[str]]) -> None:
        def mtime(entry: os.DirEntry[str]) -> float:
            try:
                return entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                return 0.0

        corrupt.sort(key=mtime)
        for entry in corrupt[: len(corrupt) - self.max_snapshots]:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

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
        if not stat.S_ISREG(st.st_mode) or st.st_size > self.read_limit:
            os.close(fd)
            return None
        return fd, st

    def _summary(self, path: str, ident: str) -> Summary | None:
        """The verified summary of one file; a file of ours that fails is quarantined."""
        opened = self._open(path)
        if opened is None:
            return None
        fd, st = opened
        try:
            return self._check(fd, st, path, ident)
        finally:
            os.close(fd)

    def _check(self, fd: int, st: os.stat_result, path: str, ident: str) -> Summary | None:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._verified.get(key)
        if cached is not None:
            return cached
        if path.endswith(STORED_SUFFIX):
            return self._check_stored(fd, st, key, path, ident)
        try:
            head = codec.read_exact(fd, 12)
            if len(head) < 12 or head[:4] != codec.GZIP_MAGIC:
                return None  # not ours (or another version's): left alone
            head += codec.read_exact(fd, int.from_bytes(head[10:12], "little"))
            parsed = codec.parse_header(head)
            if parsed is None:
                return None
            summary, length = parsed
            good = (
                summary["id"] == ident
                and codec.consistent(summary)
                and codec.verify(fd, length, ident, self.read_limit)
            )
        except OSError:
            return None
        if not good:
            self._quarantine(path, ident)
            return None
        return self._remember(key, summary)

    def _remember(self, key: tuple[int, ...], summary: Summary) -> Summary:
        with self._lock:
            self._verified[key] = summary
            while len(self._verified) > 4 * self.max_snapshots + 16:
                self._verified.popitem(last=False)
        return summary

    def _check_stored(
        self, fd: int, st: os.stat_result, key: tuple[int, ...], path: str, ident: str
    ) -> Summary | None:
        """A stored form's summary, from its header, once every chunk's checksum holds
        (read in blocks: the file is never held whole)."""
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            if not container.is_container(codec.read_exact(fd, len(container.MAGIC))):
                return None  # not ours: left alone
            os.lseek(fd, 0, os.SEEK_SET)
            head: dict[str, object] | None = container.verify(lambda n: os.read(fd, n))
        except OSError:
            return None
        except container.ContainerError:
            head = None
        summary = codec.clean(head, st.st_size) if head is not None else None
        if summary is None or summary["id"] != ident or not codec.consistent(summary):
            self._quarantine(path, ident)
            return None
        return self._remember(key, summary)

    def _quarantine(self, path: str, ident: str) -> None:
        target = os.path.join(self.path, f"{_CORRUPT_PREFIX}{os.path.basename(path)}")
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return  # another worker moved it first
        except OSError as exc:
            self.failed("quarantine", exc)
            return
        with self._lock:
            self.quarantined += 1
            self._log.once(
                "quarantine",
                "flightdeck: snapshot file %s failed verification (corrupt or tampered);"
                " moved aside to %s, never listed or served (logged once)",
                path,
                target,
            )

    # -- reading -------------------------------------------------------------------------
    def path_of(self, ident: str) -> str | None:
        """The file of snapshot ``ident`` (its stored form's, else an earlier version's
        gzip'd JSON, whichever exists); None for a malformed id (never a path outside)."""
        if not is_valid_id(ident):
            return None
        for suffix in _SUFFIXES:
            path = os.path.join(self.path, ident + suffix)
            if os.path.lexists(path):
                return path
        return os.path.join(self.path, ident + STORED_SUFFIX)

    def read(self, ident: str) -> bytes | None:
        """The bytes of a verified snapshot file, or None when absent or refused."""
        path = self.path_of(ident)
        if path is None:
            return None
        opened = self._open(path)
        if opened is None:
            return None
        fd, st = opened
        try:
            if self._check(fd, st, path, ident) is None:
                return None
            os.lseek(fd, 0, os.SEEK_SET)
            return codec.read_exact(fd, st.st_size)
        except OSError:
            return None
        finally:
            os.close(fd)
