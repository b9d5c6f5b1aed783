"""The on-disk and in-memory form of a stored snapshot: a gzip member carrying its summary.

Each snapshot is kept as gzip'd native JSON. Its summary (what ``SnapshotStore.list``
returns) travels in the gzip header's FEXTRA field, a standard part of the format that
gunzip, zlib and browsers skip: listing reads a few hundred bytes per file, and since
metadata and data are one file there is nothing to keep consistent.
"""

from __future__ import annotations

import calendar
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ..core.text import safe_text
from .document import FORMAT, Snapshot, is_valid_id

SUFFIX = ".json.gz"
_META_TAG = b"FD"  # FEXTRA subfield id carrying the summary
GZIP_MAGIC = b"\x1f\x8b\x08\x04"  # gzip, deflate, FLG.FEXTRA only
# A low level: every put compresses, and repetitive JSON compresses well even at low levels.
_GZIP_LEVEL = 4
#: A trigger's capture (``FlightRecorder.build_into``). Level 1 would write 25 MiB of JSON in
#: 0.63 s of CPU instead of 0.95 s, but 10 % larger (8.83 MiB instead of 8.04), and the
#: stored member is most of what a capture of a full window adds at its end: at 1M events
#: that took it past the 2 x max_bytes bound (``benchmarks/README.md``, "Capture memory").
CAPTURE_LEVEL = _GZIP_LEVEL
#: ``encode_stream`` compresses its pieces in batches of at least this many bytes.
_BATCH = 1 << 20
#: Files and decompressed documents larger than this (or the store's max_bytes) are refused.
MIN_READ_LIMIT = 64 << 20

_TRACE_ID = re.compile(r"\A[0-9a-f]{32}\Z")
_MAX_TRACE_IDS = 1000  # per snapshot, in its summary (the gzip header holds 64 KiB)

Summary = dict[str, Any]
Listing = list[Summary]
#: A gzip member in pieces, in order (see :func:`encode_chunks`).
Chunks = list[bytes]


@dataclass(frozen=True)
class StoredInfo:
    """What :meth:`SnapshotStore.put` did with a snapshot."""

    id: str
    size: int  #: native JSON bytes
    stored: int  #: gzip'd bytes held in memory (and written to disk)
    path: str | None  #: the file written, or None when kept in memory only


def _str(value: object, limit: int) -> str:
    return safe_text(value if isinstance(value, str) else "", limit)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def clean(raw: object, size: object) -> Summary | None:
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
    process = raw.get("process")
    if isinstance(process, dict):
        pid = process.get("pid") if pid is None else pid
        service = process.get("service")
    else:
        service = raw.get("service")
    incident = trigger.get("incident", raw.get("incident"))
    summary: Summary = {
        "id": raw["id"],
        "created_at": _str(raw.get("created_at"), 64),
        "trigger": {
            "kind": _str(trigger.get("kind"), 64),
            "reason": _str(trigger.get("reason"), 1024),
        },
        "request": request,
        "pid": _int(pid),
        "size": _int(size) or 0,
        "service": _str(service, 128) if isinstance(service, str) else None,
        "incident": incident if is_valid_id(incident) else None,
        "trace_ids": _trace_ids(raw),
    }
    processes = raw.get("processes")
    if isinstance(processes, list):
        # A host capture: the pids of the processes it holds (``host.py``).
        summary["processes"] = [
            pid for p in processes[:4096] if isinstance(p, dict) and (pid := _int(p.get("pid")))
        ]
    return summary


def _trace_ids(raw: dict[str, Any]) -> list[str]:
    """The trace ids of a document's requests, or of a stored summary's list, checked."""
    requests = raw.get("requests")
    found: Iterable[object]
    if isinstance(requests, list):
        found = (r.get("trace_id") for r in requests if isinstance(r, dict))
    else:
        listed = raw.get("trace_ids")
        found = listed if isinstance(listed, list) else ()
    seen: dict[str, None] = {}
    for tid in found:
        if isinstance(tid, str) and _TRACE_ID.match(tid):
            seen[tid] = None
            if len(seen) >= _MAX_TRACE_IDS:
                break
    return list(seen)


def sort_key(summary: Summary) -> tuple[float, str]:
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
    chunks, summary = encode_chunks(head, pieces, level)
    return b"".join(chunks), summary


def encode_chunks(
    head: dict[str, Any], pieces: Iterable[bytes], level: int = _GZIP_LEVEL
) -> tuple[Chunks, Summary]:
    """Like :func:`encode_stream`, the member left in the pieces zlib gave, never joined.

    The capture path hands these to ``SnapshotStore.put_encoded``: joining them would hold
    the compressed snapshot twice at the end of a build.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks: Chunks = [b""]  # the header, once the summary is known
    crc = 0
    size = 0
    # The pieces are small (one task's JSON) and ``crc32``/``compress`` release the GIL on
    # every call: under a busy event loop each reacquire can wait a long time (see
    # benchmarks/README.md, "Capture starvation"). Batched, they release it a few times per
    # MiB, and compress that MiB in parallel with the loop. Costs one batch of memory.
    batch = bytearray()
    for piece in pieces:
        batch += piece
        if len(batch) >= _BATCH:
            crc = zlib.crc32(batch, crc)
            size += len(batch)
            out = compressor.compress(batch)
            if out:
                chunks.append(out)
            batch.clear()
    crc = zlib.crc32(batch, crc)
    size += len(batch)
    chunks.append(compressor.compress(batch))
    del batch
    chunks.append(compressor.flush())
    summary = clean(head, size)
    if summary is None:
        raise ValueError(f"not a storable snapshot: malformed id {head.get('id')!r}")
    meta = orjson.dumps({"format": head.get("format"), "summary": summary})
    sub = _META_TAG + struct.pack("<H", len(meta)) + meta
    chunks[0] = GZIP_MAGIC + b"\0\0\0\0\0\xff" + struct.pack("<H", len(sub)) + sub
    chunks.append(struct.pack("<II", crc, size & 0xFFFFFFFF))
    return chunks, summary


def encoded_size(data: bytes | Chunks) -> int:
    """Bytes of an encoded snapshot, whole or in chunks."""
    return len(data) if isinstance(data, bytes) else sum(map(len, data))


def parse_header(head: bytes) -> tuple[Summary, int] | None:
    """(summary, header length) from the first bytes of a member written by :func:`encode`.

    None for anything else: not gzip, no summary, another format version (skipped, so that
    an older flightdeck sharing a directory with a newer one never serves what it cannot read).
    """
    if len(head) < 12 or head[:4] != GZIP_MAGIC:
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
    summary = clean(raw, raw.get("size") if isinstance(raw, dict) else None)
    return (summary, 12 + xlen) if summary is not None else None


def gunzip(data: bytes, limit: int) -> bytes | None:
    """Decompress one gzip member, checking CRC and length; None if corrupt or over ``limit``."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or not decompressor.eof or decompressor.unused_data:
        return None
    return out


def read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def is_manual(summary: Summary) -> bool:
    """True for a snapshot captured by hand (``trigger.kind == "manual"``)."""
    return bool(summary["trigger"]["kind"] == "manual")


#: Which snapshots give way first: manual captures, then fleet follower captures, then the
#: rest (automatic and crash snapshots).
_EVICTION_RANK = {"manual": 0, "fleet": 1}


def eviction_key(summary: Summary) -> tuple[int, float, str]:
    """Order in which snapshots give way to new ones: manual captures, then fleet follower
    captures, then automatic and crash snapshots; oldest first within each.

    An operator's captures and the copies other services asked for never push out the
    snapshots this process's own triggers took.
    """
    return (_EVICTION_RANK.get(summary["trigger"]["kind"], 2), *sort_key(summary))


def id_time(ident: str) -> float | None:
    """The creation second encoded in a snapshot id, or None for an impossible date."""
    try:
        return float(calendar.timegm(time.strptime(ident[:16], "%Y%m%dT%H%M%SZ")))
    except (ValueError, OverflowError):
        return None


#: ``created_at`` is taken when the build ends, the id when it starts: this much apart at most.
MAX_BUILD_SECONDS = 3600.0


def consistent(summary: Summary) -> bool:
    """The summary's ``created_at`` agrees with its id (a forged date cannot sort first)."""
    stamp = id_time(summary["id"])
    try:
        created = datetime.fromisoformat(summary["created_at"].replace("Z", "+00:00"))
    except (ValueError, AttributeError, OverflowError):
        return False
    return stamp is not None and -2.0 <= created.timestamp() - stamp <= MAX_BUILD_SECONDS


def verify(fd: int, header_length: int, ident: str, limit: int) -> bool:
    """The gzip member open at ``fd`` decompresses whole (CRC and length checked by zlib)
    to at most ``limit`` bytes of a ``flightdeck/1`` document with id ``ident``.

    Streams in chunks: memory stays small whatever the size.
    """
    os.lseek(fd, 0, os.SEEK_SET)
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    expected = b'{"format":"' + FORMAT.encode() + b'","id":"' + ident.encode() + b'"'
    head = b""
    total = 0
    try:
        while not decompressor.eof:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return False
            while chunk:
                out = decompressor.decompress(chunk, 1 << 20)
                total += len(out)
                if total > limit:
                    return False
                if len(head) < len(expected):
                    head += out[: len(expected) - len(head)]
                chunk = decompressor.unconsumed_tail
                if decompressor.eof:
                    break
    except zlib.error:
        return False
    return head == expected and not decompressor.unused_data and not os.read(fd, 1)
