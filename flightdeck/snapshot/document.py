"""The ``Snapshot``: one frozen window in the ``flightdeck/1`` format.

The document shape is described in docs/snapshot-format.md.
"""

from __future__ import annotations

import gzip
import os
import re
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

FORMAT = "flightdeck/1"

#: Snapshot ids: ``<UTC timestamp>-<pid>-<random>``, URL- and filename-safe, never a path.
ID_PATTERN = re.compile(r"\A[0-9]{8}T[0-9]{6}Z-[0-9]{1,10}-[0-9a-f]{8}\Z")

REQUIRED_KEYS: tuple[str, ...] = (
    "format",
    "id",
    "created_at",
    "trigger",
    "process",
    "window",
    "requests",
    "tasks",
    "loop",
    "events",
)


class SnapshotError(Exception):
    """A snapshot could not be read: missing, not JSON, not a snapshot, or a newer version."""


class SnapshotInProgress(RuntimeError):
    """Another snapshot of this recorder is being built; try again when it is done."""


Converter = Callable[[dict[str, Any]], bytes]


@dataclass(frozen=True)
class ExportFormat:
    """One export format, as every reader of it sees it: ``Snapshot.dumps``, the endpoint's
    ``?format=``, the CLI's ``--format`` and default file names, the docs' tables.

    Adding a format is one :func:`register_format` call with its converter (the exporters
    register theirs in ``flightdeck.export``).
    """

    name: str
    #: The ``flightdeck/1`` document to this format's bytes; None for ``raw``, which is the
    #: stored bytes as they are (not made from a document).
    convert: Converter | None
    media_type: str
    disposition: str  #: ``attachment`` (a download) or ``inline`` (shown by the browser)
    suffix: str  #: file name suffix, with its dot
    title: str  #: one line for ``--help`` and the docs


#: Every export format by name, in registration order.
FORMATS: dict[str, ExportFormat] = {}


def register_format(format: ExportFormat) -> None:
    """Make ``format`` known to ``Snapshot.dumps``, the endpoint and the CLI."""
    FORMATS[format.name] = format


def export_format(name: str) -> ExportFormat:
    """The registered format ``name``; ``ValueError`` listing the known ones otherwise."""
    found = FORMATS.get(name)
    if found is None:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {name!r}")
    return found


def new_id(now: float | None = None) -> str:
    """A fresh snapshot id, unique across processes (timestamp, pid and 32 random bits)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}"


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a well-formed snapshot id (so it is safe as a file name)."""
    return isinstance(value, str) and ID_PATTERN.match(value) is not None


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Snapshot:
    """A frozen flight-recorder window.

    Build one with :meth:`FlightRecorder.snapshot` or read one with :meth:`Snapshot.load`.
    """

    __slots__ = ("_doc", "_head", "_json", "_load", "_stored")

    def __init__(self, document: dict[str, Any]) -> None:
        self._doc: dict[str, Any] | None = document
        self._json: bytes | None = None
        #: The stored form (``container.py``) this snapshot was captured as, if any: one
        #: ``bytes``, or the pieces a capture wrote (joined only when asked for).
        self._stored: bytes | list[bytes] | None = None
        self._head: dict[str, Any] = document
        self._load: Callable[[], bytes | None] | None = None

    @classmethod
    def from_header(cls, head: dict[str, Any], load: Callable[[], bytes | None]) -> Snapshot:
        """A snapshot kept elsewhere (a store): its header now, its stored form from
        ``load()`` when first asked for (``stored``, ``to_dict()``, ``dumps()``)."""
        snap = cls.from_stored([], head)
        snap._stored = None
        snap._load = load
        return snap

    @classmethod
    def from_stored(cls, data: bytes | list[bytes], head: dict[str, Any] | None = None) -> Snapshot:
        """A snapshot of a stored form (``container.py``), whole or in the pieces a capture
        wrote (never joined unless asked for); its document is built when asked.

        Raises :class:`SnapshotError` when ``data``'s header is not readable.
        """
        from .container import ContainerError, read_header

        if head is None and isinstance(data, list):
            data = b"".join(data)
        if head is None:
            assert isinstance(data, bytes)
            try:
                head = read_header(data)
            except ContainerError as exc:
                raise SnapshotError(f"data: {exc}") from None
        if not is_valid_id(head.get("id")) or not isinstance(head.get("trigger"), dict):
            raise SnapshotError("data: stored snapshot's header lacks a valid id or trigger")
        snap = cls.__new__(cls)
        snap._doc = None
        snap._json = None
        snap._stored = data
        snap._head = head
        snap._load = None
        return snap

    @property
    def id(self) -> str:
        """The snapshot's id (see :data:`ID_PATTERN`)."""
        return str(self._head["id"])

    @property
    def created_at(self) -> str:
        """When the snapshot was taken, as an RFC 3339 UTC string."""
        return str(self._head["created_at"])

    @property
    def trigger(self) -> dict[str, Any]:
        """``{kind, reason, request}``: what caused the snapshot."""
        trig: dict[str, Any] = self._head["trigger"]
        return trig

    @property
    def stored(self) -> bytes | None:
        """The stored form (``docs/snapshot-format.md``) when captured or read as one."""
        if self._stored is None and self._load is not None:
            self._stored = self._load()
        if isinstance(self._stored, list):
            self._stored = b"".join(self._stored)
        return self._stored

    def stored_pieces(self) -> list[bytes] | None:
        """The stored form in pieces, as captured (no copy), or None."""
        if self._stored is None:
            return None if self._load is None else [b for b in [self.stored] if b is not None]
        return self._stored if isinstance(self._stored, list) else [self._stored]

    @property
    def stored_size(self) -> int:
        """Bytes of the stored form (0 when there is none)."""
        pieces = self.stored_pieces()
        return sum(map(len, pieces)) if pieces is not None else 0

    def to_dict(self) -> dict[str, Any]:
        """The native ``flightdeck/1`` document (shared, do not mutate).

        Built whole in this process at the first call when the snapshot is a stored form
        (many times its size as Python objects): in-process callers only; the server's
        capture and download paths never call it.
        """
        if self._doc is None:
            from .container import ContainerError, read_document

            stored = self.stored
            if stored is None:
                raise SnapshotError(f"{self.id}: its stored form is gone (evicted)")
            try:
                self._doc = self._head = read_document(stored)
            except ContainerError as exc:
                raise SnapshotError(f"data: {exc}") from None
        return self._doc

    def dumps(self, format: str = "json") -> bytes:
        """The snapshot in one of the registered formats (:data:`FORMATS`), made here, in
        this process, from the whole document in memory (the endpoint converts in a child
        process instead)."""
        if format == "json":
            if self._json is None:
                doc = self.to_dict()
                try:
                    self._json = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
                except TypeError:
                    # Lone surrogates (undecodable bytes) somewhere: make the text valid.
                    self._doc = self._head = sanitize(doc)
                    self._json = orjson.dumps(self._doc, option=orjson.OPT_NON_STR_KEYS)
            return self._json
        convert = export_format(format).convert
        if convert is None:
            raise ValueError(
                f"format {format!r} is a snapshot's stored bytes, not a conversion of its"
                " document: read it from the store or the endpoint"
            )
        return self._export(convert)

    def _export(self, convert: Converter) -> bytes:
        doc = self.to_dict()
        try:
            return convert(doc)
        except (TypeError, UnicodeError):
            # Lone surrogates (undecodable bytes) somewhere: make the text valid, once.
            self._doc = self._head = sanitize(doc)
            self._json = None
            return convert(self._doc)

    def write(self, path: str | os.PathLike[str], format: str = "json") -> int:
        """Write the snapshot to ``path`` in ``format``; returns the number of bytes written.

        ``"raw"``: the stored form (``docs/snapshot-format.md``), for a snapshot captured
        or read as one.
        """
        if format == "raw":
            stored = self.stored
            if stored is None:
                raise ValueError("this snapshot has no stored form (it was built as a document)")
            data = stored
        else:
            data = self.dumps(format)
        Path(path).write_bytes(data)
        return len(data)

    @classmethod
    def load(cls, source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> Snapshot:
        """Read a snapshot from a path or from bytes: its stored form, or native JSON (gzip
        accepted).

        Raises :class:`SnapshotError` naming the reason when it is not a readable
        ``flightdeck/1`` snapshot.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            where = "data"
        else:
            where = os.fspath(source)
            try:
                data = Path(where).read_bytes()
            except FileNotFoundError:
                raise SnapshotError(f"{where}: no such file") from None
            except IsADirectoryError:
                raise SnapshotError(f"{where}: is a directory") from None
            except OSError as exc:
                raise SnapshotError(f"{where}: cannot read: {exc.strerror or exc}") from None
        from .container import is_container

        if is_container(data):
            snap = cls.from_stored(data)
            try:
                snap.to_dict()
            except SnapshotError as exc:
                raise SnapshotError(f"{where}: {str(exc).removeprefix('data: ')}") from None
            return snap
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise SnapshotError(f"{where}: corrupt or truncated gzip data: {exc}") from None
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SnapshotError(f"{where}: not JSON, or truncated ({exc})") from None
        validate_document(doc, where)
        return cls(doc)

    def __repr__(self) -> str:
        return f"<Snapshot {self.id} trigger={self.trigger.get('kind')!r}>"


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the ``flightdeck/1`` document, shipped in the package."""
    from importlib.resources import files

    text = files("flightdeck.snapshot").joinpath("schema", "flightdeck-1.schema.json").read_bytes()
    loaded: dict[str, Any] = orjson.loads(text)
    return loaded


def validate_document(doc: object, where: str = "data") -> None:
    """Check the envelope of a ``flightdeck/N`` document; raise :class:`SnapshotError`."""
    if not isinstance(doc, dict):
        raise SnapshotError(f"{where}: not a flightdeck snapshot (top level is not an object)")
    fmt = doc.get("format")
    if not isinstance(fmt, str) or not fmt.startswith("flightdeck/"):
        raise SnapshotError(f"{where}: not a flightdeck snapshot (format is {fmt!r})")
    if fmt != FORMAT:
        version = fmt.partition("/")[2]
        if version.isdigit() and int(version) > 1:
            raise SnapshotError(
                f"{where}: snapshot format {fmt} is newer than this flightdeck reads ({FORMAT});"
                " upgrade flightdeck"
            )
        raise SnapshotError(f"{where}: unsupported snapshot format {fmt!r}")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise SnapshotError(f"{where}: truncated snapshot, missing {', '.join(missing)}")
    if not is_valid_id(doc["id"]):
        raise SnapshotError(f"{where}: malformed snapshot id {doc['id']!r}")


def sanitize(value: Any) -> Any:
    if isinstance(value, str):
        # Lone surrogates stand for undecodable bytes: show them as U+FFFD.
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {sanitize(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return str(value)


def _native_json(doc: dict[str, Any]) -> bytes:
    return Snapshot(doc).dumps("json")


register_format(
    ExportFormat(
        "json",
        _native_json,
        "application/json",
        "attachment",
        ".json",
        "the native flightdeck/1 document (the interchange format)",
    )
)
register_format(
    ExportFormat(
        "raw",
        None,
        "application/octet-stream",
        "attachment",
        ".fdsnap",
        "the stored snapshot as it is kept (the smallest form; every reader reads it)",
    )
)
