"""``SnapshotDirectory``: snapshots as files in a directory that several workers share.

Each snapshot is one file, ``<id>.json.gz`` (see ``codec.py``), written atomically
(temporary file, fsync, ``os.replace``). Every worker lists, serves and rotates what is in
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
from collections.abc import Callable

from ..core.text import ErrorLog
from . import codec
from .codec import SUFFIX, Summary
from .document import is_valid_id

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
    os.O_WRONLY
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
        self, path: str, max_snapshots: int, read_limit: int, failed: Callable[[str, OSError], None]
    ) -> None:
        check_directory(path)
        self.path = path
        self.max_snapshots = max_snapshots
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
    def write(self, ident: str, data: bytes | codec.Chunks) -> str | None:
        """Write one snapshot file, rotating out the oldest beyond the quota; None on failure."""
        final = os.path.join(self.path, ident + SUFFIX)
        tmp = os.path.join(self.path, f"{_TMP_PREFIX}{ident}.{secrets.token_hex(4)}")
        created = False
        try:
            if not os.path.isdir(self.path):
                # Recreated when removed while running (tmp cleaners, an operator).
                os.makedirs(self.path, mode=0o700, exist_ok=True)
                os.chmod(self.path, 0o700)
            fd = os.open(tmp, _OPEN_WRITE, 0o600)
            created = True
            try:
                for chunk in [data] if isinstance(data, bytes) else data:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # Make room first, so that the directory never holds more than the limit (in one
            # process; concurrent writers can each be one ahead until the last one rotates).
            self.enforce_quota(incoming=ident)
            os.replace(tmp, final)
            created = False
        except OSError as exc:
            self.failed("write", exc)
            return None
        finally:
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        with self._lock:
            self.written += 1
        self.enforce_quota()
        return final

    def enforce_quota(self, incoming: str | None = None) -> None:
        """Remove files beyond ``max_snapshots``: manual captures first, then the oldest.

        Every writer enforces after its own write, on a fresh listing that includes it, so
        whichever process writes last leaves at most max_snapshots files behind. Unlinking
        a file another process already removed is harmless. With ``incoming`` (a file about
        to be renamed into place) one slot is kept free for it.
        """
        files = self.scan(include_unreadable=True)
        limit = self.max_snapshots
        if incoming is not None:
            files = [item for item in files if item[1].get("id") != incoming]
            limit -= 1
        excess = len(files) - limit
        if excess <= 0:
            return
        # Unreadable files (another format version) go by their id's time, as automatic.
        files.sort(key=lambda item: codec.eviction_key(item[1]))
        for path, _ in files[:excess]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.failed("remove", exc)
                continue
            with self._lock:
                self.removed += 1

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
            ident = name[: -len(SUFFIX)]
            if not name.endswith(SUFFIX) or not is_valid_id(ident):
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
        with self._lock:
            self._verified[key] = summary
            while len(self._verified) > 4 * self.max_snapshots + 16:
                self._verified.popitem(last=False)
        return summary

    def _quarantine(self, path: str, ident: str) -> None:
        target = os.path.join(self.path, f"{_CORRUPT_PREFIX}{ident}{SUFFIX}")
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
        """The file of snapshot ``ident``; None for a malformed id (never a path outside)."""
        return os.path.join(self.path, ident + SUFFIX) if is_valid_id(ident) else None

    def read(self, ident: str) -> bytes | None:
        """The gzip data of a verified snapshot file, or None when absent or refused."""
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
