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

    __slots__ = ("_doc", "_json")

    def __init__(self, document: dict[str, Any]) -> None:
        self._doc = document
        self._json: bytes | None = None

    @property
    def id(self) -> str:
        """The snapshot's id (see :data:`ID_PATTERN`)."""
        return str(self._doc["id"])

    @property
    def created_at(self) -> str:
        """When the snapshot was taken, as an RFC 3339 UTC string."""
        return str(self._doc["created_at"])

    @property
    def trigger(self) -> dict[str, Any]:
        """``{kind, reason, request}``: what caused the snapshot."""
        trig: dict[str, Any] = self._doc["trigger"]
        return trig

    def to_dict(self) -> dict[str, Any]:
        """The native ``flightdeck/1`` document (shared, do not mutate)."""
        return self._doc

    def dumps(self, format: str = "json") -> bytes:
        """The snapshot in one of the registered formats (:data:`FORMATS`), made here, in
        this process, from the whole document in memory (the endpoint converts in a child
        process instead)."""
        if format == "json":
            if self._json is None:
                try:
                    self._json = orjson.dumps(self._doc, option=orjson.OPT_NON_STR_KEYS)
                except TypeError:
                    # Lone surrogates (undecodable bytes) somewhere: make the text valid.
                    self._doc = sanitize(self._doc)
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
        try:
            return convert(self._doc)
        except (TypeError, UnicodeError):
            # Lone surrogates (undecodable bytes) somewhere: make the text valid, once.
            self._doc = sanitize(self._doc)
            self._json = None
            return convert(self._doc)

    def write(self, path: str | os.PathLike[str], format: str = "json") -> int:
        """Write the snapshot to ``path`` in ``format``; returns the number of bytes written."""
        data = self.dumps(format)
        Path(path).write_bytes(data)
        return len(data)

    @classmethod
    def load(cls, source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> Snapshot:
        """Read a native snapshot from a path or from bytes (gzip accepted).

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
