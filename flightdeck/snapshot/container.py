"""The stored form of a snapshot: the window's own records in a versioned binary container.

A capture freezes the window and writes what the recorder holds, as it holds it: the native
core's generations (their encoded records and their string tables, ``Segment.dump()``), the
pure core's sealed segments (the JSON of their events, zlib'd or not, as the window keeps
them: ``Segment.stored()``) and its events not sealed yet (JSON), the status of the tasks
and requests alive at the oldest event, the await chains of the pending tasks and a small
JSON header (id, trigger, process, options, clock offset, the trace ids the window holds).
No event is decoded and no document is built to capture; :func:`read_document` builds the
unchanged ``flightdeck/1`` document from it later, wherever the conversion runs. The layout
(``docs/snapshot-format.md``)::

    MAGIC (8 bytes) | version (u32 LE) | chunk | chunk | ...
    chunk = tag (4 ASCII bytes) | flags (u8) | 3 zero bytes | length (u32 LE)
            | crc32 of the payload as stored (u32 LE) | payload (length bytes)

Chunks are self-delimiting and checksummed, strings live inside the bytes, and a reader
skips tags it does not know: a file appended chunk by chunk while another process reads it
is this same format, its torn tail (a short or failing last chunk) ignored
(``strict=False``). Parsing is safe on untrusted bytes: JSON and the checked decoders of
``_native.load_segment``/``records.py`` only, no ``marshal`` or ``pickle``; every length is
checked and anything malformed raises :class:`ContainerError`.
"""

from __future__ import annotations

import gc
import json
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from ..core.window import Event, Frozen
from ..core.window import encode_events as _strict_events
from . import build as builder
from .document import rfc3339

#: The first bytes of a stored snapshot (PNG-style: a non-ASCII byte, then the name, then
#: bytes a text-mode transfer would mangle).
MAGIC = b"\x89FDK\r\n\x1a\n"
VERSION = 1
_PREAMBLE = MAGIC + struct.pack("<I", VERSION)
_CHUNK = struct.Struct("<4sB3xII")

#: Chunk tags.
HEAD = b"HEAD"  #: the header (JSON); always the first chunk
STAT = b"STAT"  #: status at the oldest event: {"tasks": [event], "requests": [event]} (JSON)
GENR = b"GENR"  #: one native generation, ``Segment.dump()``
EVTS = b"EVTS"  #: pure-core events, a JSON array of events (arrays); see encode_events
LIVE = b"LIVE"  #: pending tasks: {"awaiting": [[tid, stack]], "names": [[tid, name, coro]]}
PROC = b"PROC"  #: host capture: another process's window file (``host.py``)
PSKP = b"PSKP"  #: host capture: a process whose window file could not be read (JSON)
END = b"END "  #: the container is complete: {"chunks": n} (JSON), n chunks in all, itself included

#: Flag: the payload is zlib-compressed (RFC 1950).
ZLIB = 1
#: The compression of a capture's JSON chunks (the status, the pure core's open tail and the
#: segments its window had not compressed yet): zlib releases the GIL while it compresses.
CAPTURE_LEVEL = 1
#: The compression of the native core's generations on the capture path: none. They are
#: already compact (stored, about 0.95 x the window's accounted bytes), and zlib at level 1
#: took 0.48 s for a full default window (12 MiB) on the 2-core benchmark machine, five
#: times the rest of the capture (``benchmarks/README.md``, "Capture cost").
RECORDS_LEVEL = 0
#: A payload (stored or decompressed) larger than this is refused.
MAX_CHUNK = 1 << 30
#: At most this many trace ids in a header (the window may hold more requests).
MAX_TRACE_IDS = 1000

Header = dict[str, Any]


class ContainerError(ValueError):
    """Bytes that are not a readable stored snapshot; the message says what is wrong."""


def is_container(data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` starts like a stored snapshot (any version)."""
    return bytes(data[: len(MAGIC)]) == MAGIC


# -- writing ----------------------------------------------------------------------------------
def packed(payload: bytes, level: int) -> tuple[bytes, bool]:
    """``payload`` zlib'd at ``level`` when that makes it smaller (level 0: never):
    (bytes, compressed)."""
    if level and len(payload) > 64:
        smaller = zlib.compress(payload, level)
        if len(smaller) < len(payload):
            return smaller, True
    return payload, False


def _chunk(tag: bytes, payload: bytes, level: int = 0) -> bytes:
    payload, compressed = packed(payload, level)
    flags = ZLIB if compressed else 0
    if len(payload) > MAX_CHUNK:
        raise ValueError(f"chunk {tag!r} of {len(payload)} bytes is too large to store")
    return _CHUNK.pack(tag, flags, len(payload), zlib.crc32(payload)) + payload


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # Lone surrogates or ints past 64 bits: the standard library writes both exactly.
        return json.dumps(value, separators=(",", ":"), default=repr).encode()


def encode_events(events: list[Event]) -> bytes:
    """An ``EVTS`` payload: the pure window seals each segment with this, and a capture
    writes those bytes as they are. Raises ``TypeError``/``ValueError`` for an event JSON
    cannot hold (the window then drops the segment and counts it).
    """
    try:
        return orjson.dumps(events)
    except TypeError:
        # Lone surrogates or ints past 64 bits: the standard library writes both exactly.
        return _strict_events(events)


class _TraceIndex:
    """The distinct trace ids of the window's requests, and the one of the trigger's."""

    def __init__(self, trigger_rid: object) -> None:
        self.ids: dict[str, int] = {}
        self.trigger_rid = trigger_rid
        self.trigger_trace: str | None = None

    def add(self, rid: object, trace_id: object) -> None:
        if not isinstance(trace_id, str):
            return
        if rid == self.trigger_rid and self.trigger_rid is not None:
            self.trigger_trace = trace_id
        if len(self.ids) < MAX_TRACE_IDS and trace_id not in self.ids:
            self.ids[trace_id] = rid if isinstance(rid, int) else 0

    def add_events(self, events: list[Event]) -> None:
        for e in events:
            if e[0] == 8 and len(e) == 11:
                self.add(e[2], e[10])

    def add_segment(self, seg: Any) -> None:
        """The trace ids of a sealed segment, read without decoding its events."""
        if hasattr(seg, "dump"):  # a native generation: decoded from its records, in C
            for rid, trace_id in seg.requests():
                self.add(rid, trace_id)
            return
        traces = seg.traces
        if len(self.ids) >= MAX_TRACE_IDS:  # full: only the trigger's is still wanted
            if self.trigger_rid is not None:
                found = traces.find(self.trigger_rid)
                if found is not None:
                    self.add(self.trigger_rid, found)
            return
        for rid, trace_id in traces.pairs():
            self.add(rid, trace_id)


def _as_stored(seg: object) -> bool:
    """A segment a capture writes without decoding: a native generation or a pure one."""
    return hasattr(seg, "dump") or hasattr(seg, "stored")


def _stored_pieces(seg: Any, level: int) -> list[bytes]:
    """A pure segment's ``EVTS`` chunk: its header, then the window's own bytes (not copied:
    a store keeps the pieces, so the window's bytes are shared until it evicts them).

    A segment the window has not compressed (it had room to spare) is compressed here at
    ``level``, with the GIL released: about five times smaller stored, at about 0.1 s of a
    thread's time for the largest such part of a window (half its budget).
    """
    if level and not seg.compressed:
        return [_chunk(EVTS, seg.data, level)]
    compressed, crc, payload = seg.stored()
    if len(payload) > MAX_CHUNK:
        raise ValueError(f"chunk {EVTS!r} of {len(payload)} bytes is too large to store")
    return [_CHUNK.pack(EVTS, ZLIB if compressed else 0, len(payload), crc), payload]


def _finish_head(
    head: Header,
    frozen: Frozen,
    index: _TraceIndex,
    count: int,
    core: str,
    annotate: Callable[[dict[str, Any]], None] | None,
) -> bytes:
    """The header chunk, once the window's part is known (``annotate`` may raise)."""
    head.update(
        container=VERSION,
        core=head.get("core", core),
        t_now=frozen.t_now,
        dropped=frozen.dropped,
        events=count,
        trace_ids=list(index.ids),
    )
    head.setdefault("created_at", rfc3339(time.time()))
    if annotate is not None:
        requests = [{"id": rid, "trace_id": tid} for tid, rid in index.ids.items()]
        if index.trigger_trace is not None:
            requests.insert(0, {"id": index.trigger_rid, "trace_id": index.trigger_trace})
        head["requests"] = requests
        try:
            annotate(head)
        finally:
            head.pop("requests", None)
    return _chunk(HEAD, _json(head))


def _status_chunk(frozen: Frozen, index: _TraceIndex, level: int) -> bytes:
    status = {"tasks": list(frozen.tasks.values()), "requests": list(frozen.requests.values())}
    index.add_events(status["requests"])
    return _chunk(STAT, _json(status), level)


def _live_chunk(frozen: Frozen, level: int) -> bytes | None:
    awaiting = frozen.extra.get("awaiting") or {}
    names = frozen.extra.get("names") or {}
    if not (awaiting or names):
        return None
    live = {
        "awaiting": [[tid, frames] for tid, frames in awaiting.items()],
        "names": [[tid, *pair] for tid, pair in names.items()],
    }
    return _chunk(LIVE, _json(live), level)


def _index(head: Header) -> _TraceIndex:
    trigger = head.get("trigger") or {}
    request = trigger.get("request")
    return _TraceIndex(request.get("id") if isinstance(request, dict) else None)


def stream(
    frozen: Frozen,
    head: Header,
    *,
    level: int = CAPTURE_LEVEL,
    records_level: int = RECORDS_LEVEL,
    annotate: Callable[[dict[str, Any]], None] | None = None,
    extra: Iterable[Iterable[bytes]] = (),
) -> Iterator[bytes]:
    """Like :func:`write`, one piece at a time as they are made: a native window's
    generations are dumped as the consumer takes them, a pure window's sealed segments are
    handed over as the window holds them (their trace ids are read first, undecoded), so
    writing to a file or a socket never holds the whole stored form. Segments of any other
    kind (only ``events()``) are encoded whole first, as :func:`write` does.
    """
    segments = list(frozen.segments)
    if not all(_as_stored(seg) for seg in segments):
        yield from write(
            frozen, head, level=level, records_level=records_level, annotate=annotate, extra=extra
        )
        return
    index = _index(head)
    status = _status_chunk(frozen, index, level)
    for seg in segments:
        index.add_segment(seg)
    index.add_events(frozen.tail)
    count = sum(seg.count for seg in segments) + len(frozen.tail)
    core = "python" if any(hasattr(seg, "stored") for seg in segments) else "native"
    del segments
    header = _finish_head(head, frozen, index, count, core, annotate)
    yield _PREAMBLE
    yield header
    del header
    yield status
    del status
    n = 2
    pending = list(frozen.segments)
    pending.reverse()
    frozen.segments = []
    while pending:
        seg = pending.pop()
        if hasattr(seg, "dump"):
            pieces = [_chunk(GENR, seg.dump(), records_level)]
        else:
            pieces = _stored_pieces(seg, level)
        del seg
        n += 1
        yield from pieces
        del pieces
    tail, frozen.tail = frozen.tail, []
    if tail:
        n += 1
        yield _chunk(EVTS, _json(tail), level)
    del tail
    live = _live_chunk(frozen, level)
    if live is not None:
        n += 1
        yield live
    for more in extra:  # more chunks, each in pieces (a host capture's other processes)
        n += 1
        yield from more
    yield _chunk(END, _json({"chunks": n + 1}))


def write(
    frozen: Frozen,
    head: Header,
    *,
    level: int = CAPTURE_LEVEL,
    records_level: int = RECORDS_LEVEL,
    annotate: Callable[[dict[str, Any]], None] | None = None,
    extra: Iterable[Iterable[bytes]] = (),
) -> list[bytes]:
    """The stored form of ``frozen``, in pieces to write in order (never joined here).

    ``level``: zlib level of the JSON chunks made at capture (the status, the events not
    sealed yet, and a pure window's sealed segments it had not compressed; those it had are
    written as it holds them);
    ``records_level``: of the native generations. ``head`` holds the header's own fields
    (``id``, ``trigger``, ``process``, ...); the window's (``t_now``, ``dropped``,
    ``events``, ``core``, ``trace_ids``, ``created_at``) are added to it. ``annotate`` sees
    the header before it is written, with ``requests`` listing ``{id, trace_id}`` for each
    distinct trace id and for the trigger's request (what the fleet reads of a document),
    and may change it or raise to drop the snapshot. ``frozen`` is consumed: each segment is
    let go once written (``Frozen.iter_segments``).
    """
    if frozen.segments and all(_as_stored(seg) for seg in frozen.segments):
        return list(
            stream(
                frozen,
                head,
                level=level,
                records_level=records_level,
                annotate=annotate,
                extra=extra,
            )
        )
    index = _index(head)
    body = [_status_chunk(frozen, index, level)]
    pending = list(frozen.segments)
    pending.reverse()
    frozen.segments = []
    count = 0
    while pending:
        seg = pending.pop()
        events = seg.events()
        index.add_events(events)
        body.append(_chunk(EVTS, _json(events), level))
        count += len(events)
        del events, seg
    tail, frozen.tail = frozen.tail, []
    if tail:
        index.add_events(tail)
        body.append(_chunk(EVTS, _json(tail), level))
        count += len(tail)
    del tail
    live = _live_chunk(frozen, level)
    if live is not None:
        body.append(live)
    chunks = len(body)
    for more in extra:  # more chunks, each in pieces (a host capture's other processes)
        body.extend(more)
        chunks += 1
    header = _finish_head(head, frozen, index, count, "python", annotate)
    body.append(_chunk(END, _json({"chunks": chunks + 2})))  # HEAD, body, END
    return [_PREAMBLE, header, *body]


def chunk(tag: bytes, payload: bytes, level: int = 0) -> bytes:
    """One chunk of ``payload`` (zlib at ``level`` when that makes it smaller): for writers
    that lay chunks out themselves, such as a process's window file (``windowfile.py``)."""
    return _chunk(tag, payload, level)


def chunk_header(tag: bytes, compressed: bool, length: int, crc: int) -> bytes:
    """The header of a chunk whose payload (``length`` bytes, checksum ``crc``) is already
    made, zlib'd or not: written before it, the payload never copied."""
    return _CHUNK.pack(tag, ZLIB if compressed else 0, length, crc)


def json_bytes(value: Any) -> bytes:
    """``value`` as the container's JSON chunks hold it."""
    return _json(value)


#: What a stored snapshot (or a window file) starts with: ``MAGIC`` and the version.
PREAMBLE = _PREAMBLE


def assemble(
    head: Header,
    status: dict[str, Any],
    records: list[tuple[bytes, bytes]],
    level: int = CAPTURE_LEVEL,
) -> list[bytes]:
    """A stored snapshot of records already in their stored form: ``(tag, payload)`` of
    ``GENR``/``EVTS`` chunks as a window file holds them, copied without decoding.

    ``head`` is complete (``t_now``, ``dropped``, ... included); ``status`` is the ``STAT``
    chunk's object (the tasks and requests alive at the oldest record).
    """
    body = [_chunk(STAT, _json(status), level)]
    for tag, payload in records:
        body.append(_chunk(tag, payload, level if tag == EVTS else RECORDS_LEVEL))
    body.append(_chunk(END, _json({"chunks": len(body) + 2})))
    return [_PREAMBLE, _chunk(HEAD, _json(head)), *body]


# -- reading ----------------------------------------------------------------------------------
def _preamble(data: bytes | memoryview) -> None:
    if len(data) < len(_PREAMBLE) or bytes(data[: len(MAGIC)]) != MAGIC:
        raise ContainerError("not a stored flightdeck snapshot (bad magic)")
    (version,) = struct.unpack_from("<I", data, len(MAGIC))
    if version != VERSION:
        raise ContainerError(
            f"stored snapshot version {version} is not the one this flightdeck reads"
            f" ({VERSION}){'; upgrade flightdeck' if version > VERSION else ''}"
        )


def iter_chunks(data: bytes | memoryview, *, strict: bool = True) -> Iterator[tuple[bytes, bytes]]:
    """``(tag, payload)`` of each chunk, decompressed and checked, in order.

    ``strict`` (a snapshot): a short, corrupt or missing last chunk raises
    :class:`ContainerError`. Otherwise (a file still being appended to) iteration stops
    quietly at the first chunk that is not whole and intact.
    """
    view = memoryview(data)
    _preamble(view)
    pos = len(_PREAMBLE)
    n = 0
    ended = False
    while pos < len(view):
        if ended:
            raise ContainerError("bytes after the end of the stored snapshot")
        if len(view) - pos < _CHUNK.size:
            if strict:
                raise ContainerError(f"truncated stored snapshot (chunk header at {pos})")
            return
        tag, flags, length, crc = _CHUNK.unpack_from(view, pos)
        start = pos + _CHUNK.size
        if length > len(view) - start or length > MAX_CHUNK:
            if strict:
                raise ContainerError(f"truncated stored snapshot (chunk {tag!r} at {pos})")
            return
        payload = view[start : start + length]
        if zlib.crc32(payload) != crc:
            if strict:
                raise ContainerError(f"corrupt stored snapshot (checksum of {tag!r} at {pos})")
            return
        raw = bytes(payload)
        if flags & ZLIB:
            try:
                inflater = zlib.decompressobj()
                raw = inflater.decompress(raw, MAX_CHUNK)
                if inflater.unconsumed_tail or not inflater.eof:
                    raise ContainerError(f"chunk {tag!r} at {pos} is too large or incomplete")
            except zlib.error as exc:
                raise ContainerError(f"corrupt stored snapshot ({tag!r} at {pos}: {exc})") from None
        if n == 0 and tag != HEAD:
            raise ContainerError("stored snapshot does not start with its header")
        pos = start + length
        n += 1
        if tag == END:
            ended = True
            if _loads(raw, tag).get("chunks") != n:
                raise ContainerError("stored snapshot's chunk count does not match its end")
        yield tag, raw
    if strict and not ended:
        raise ContainerError("truncated stored snapshot (no end chunk)")


def verify(read: Callable[[int], bytes]) -> Header:
    """The header of the stored snapshot ``read`` returns (``read(n)``: up to ``n`` more
    bytes, b"" at the end), once every chunk's checksum and the end chunk hold.

    Streams in blocks of at most 1 MiB: memory stays small whatever the size (a directory
    verifies each file it lists). Raises :class:`ContainerError`.
    """

    def exact(n: int) -> bytes:
        parts = []
        while n > 0:
            got = read(min(n, 1 << 20))
            if not got:
                raise ContainerError("truncated stored snapshot")
            parts.append(got)
            n -= len(got)
        return b"".join(parts)

    _preamble(exact(len(_PREAMBLE)))
    head: Header | None = None
    n = 0
    while True:
        first = read(_CHUNK.size)
        if not first:
            raise ContainerError("truncated stored snapshot (no end chunk)")
        if len(first) < _CHUNK.size:
            first += exact(_CHUNK.size - len(first))
        tag, flags, length, crc = _CHUNK.unpack(first)
        if length > MAX_CHUNK:
            raise ContainerError(f"chunk {tag!r} is too large")
        n += 1
        if tag in (HEAD, END):
            raw = exact(length)
            if zlib.crc32(raw) != crc or flags:
                raise ContainerError(f"corrupt stored snapshot (chunk {tag!r})")
            value = _loads(raw, tag)
            if tag == HEAD:
                head = value
            elif value.get("chunks") != n:
                raise ContainerError("stored snapshot's chunk count does not match its end")
            else:
                break
        else:
            left, running = length, 0
            while left:
                block = exact(min(left, 1 << 20))
                running = zlib.crc32(block, running)
                left -= len(block)
            if running != crc:
                raise ContainerError(f"corrupt stored snapshot (checksum of {tag!r})")
        if n == 1 and head is None:
            raise ContainerError("stored snapshot does not start with its header")
    if read(1):
        raise ContainerError("bytes after the end of the stored snapshot")
    assert head is not None
    return head


def _loads(raw: bytes, tag: bytes) -> Any:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # lone surrogates, written by the standard library's encoder
            value = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ContainerError(f"corrupt stored snapshot (chunk {tag!r}: {exc})") from None
    if tag in (HEAD, STAT, LIVE, END) and not isinstance(value, dict):
        raise ContainerError(f"corrupt stored snapshot (chunk {tag!r} is not an object)")
    return value


def read_header(data: bytes | memoryview) -> Header:
    """The header of a stored snapshot (reads only its first chunk: cheap, for listings).

    Raises :class:`ContainerError` when ``data`` is not a stored snapshot or its header is
    corrupt. The values are as stored: untrusted, check them before use
    (``codec.clean`` does for listings).
    """
    for tag, raw in iter_chunks(data, strict=False):
        if tag == HEAD:
            head: Header = _loads(raw, tag)
            return head
        break
    raise ContainerError("stored snapshot has no readable header")


def _tuple(value: Any) -> Any:
    """An event as the recorder held it: JSON arrays back to tuples, all the way down."""
    if type(value) is list:
        return tuple([_tuple(v) if type(v) is list else v for v in value])
    return value


def _events(value: Any, tag: bytes) -> list[Event]:
    if not isinstance(value, list):
        raise ContainerError(f"corrupt stored snapshot (chunk {tag!r} is not a list)")
    out = []
    for e in value:
        if type(e) is not list or len(e) < 2 or type(e[0]) is not int:
            raise ContainerError(f"corrupt stored snapshot (an event in {tag!r})")
        out.append(_tuple(e))
    return out


class _Stored:
    """One stored run of events, decoded when the builder asks (one at a time)."""

    __slots__ = ("count", "payload", "tag")

    def __init__(self, tag: bytes, payload: bytes) -> None:
        self.tag = tag
        self.payload = payload
        self.count = 0

    def events(self) -> list[Event]:
        try:
            if self.tag == EVTS:
                return _events(_loads(self.payload, EVTS), EVTS)
            events: list[Event] = _generation(self.payload).events()
            return events
        except ContainerError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise ContainerError(f"corrupt stored snapshot ({self.tag!r}: {exc})") from None

    def native_segment(self) -> Any:
        """This run as a native ``Segment`` (for the builder's ``TaskFeed``), or None: an
        ``EVTS`` run, or no native core. Raises ValueError when the generation is corrupt."""
        if self.tag != GENR:
            return None
        from ..core.cores import native_module

        native = native_module()
        return native.load_segment(self.payload) if native is not None else None


def _generation(payload: bytes) -> Any:
    try:
        from ..core import _native
    except ImportError:
        from .records import Generation

        return Generation(payload)
    return _native.load_segment(payload)


def _checked_events(raw: object) -> list[Event]:
    return _events(raw if isinstance(raw, list) else [], STAT)


def read_frozen(data: bytes | memoryview) -> tuple[Header, Frozen]:
    """The header and a :class:`Frozen` that feeds the stored records to the builder."""
    head: Header | None = None
    segments: list[_Stored] = []
    tasks: dict[Any, Event] = {}
    requests: dict[Any, Event] = {}
    extra: dict[str, Any] = {}
    for tag, raw in iter_chunks(data):
        if tag == HEAD:
            head = _loads(raw, tag)
        elif tag in (GENR, EVTS):
            segments.append(_Stored(tag, raw))
        elif tag in (PROC, PSKP):
            extra.setdefault("host", []).append((tag, raw))
        elif tag == STAT:
            status = _loads(raw, tag)
            for e in _checked_events(status.get("tasks")):
                if len(e) == 8:
                    tasks[e[2]] = e
            for e in _checked_events(status.get("requests")):
                if len(e) == 11:
                    requests[e[2]] = e
        elif tag == LIVE:
            live = _loads(raw, tag)
            awaiting = live.get("awaiting")
            names = live.get("names")
            extra["awaiting"] = {
                a[0]: _tuple(a[1])
                for a in (awaiting if isinstance(awaiting, list) else ())
                if isinstance(a, list) and len(a) == 2 and isinstance(a[1], list)
            }
            extra["names"] = {
                a[0]: (a[1], a[2])
                for a in (names if isinstance(names, list) else ())
                if isinstance(a, list) and len(a) == 3
            }
    if head is None:
        raise ContainerError("stored snapshot has no header")
    t_now = head.get("t_now")
    dropped = head.get("dropped")
    if not isinstance(t_now, int) or not isinstance(dropped, int):
        raise ContainerError("stored snapshot's header lacks t_now or dropped")
    return head, Frozen(segments, [], tasks, requests, dropped, t_now, extra)


def _trigger(stored: dict[str, Any]) -> dict[str, Any]:
    """The trigger record as the builder takes it: a blocked request known only by its
    label (``id`` None) is looked up in the window, as a build at capture time did."""
    trigger = {k: v for k, v in stored.items() if k != "time"}
    request = trigger.get("request")
    if (
        trigger.get("kind") == "loop_blocked"
        and isinstance(request, dict)
        and request.get("id") is None
    ):
        trigger["request"] = None
    return trigger


def read_document(data: bytes) -> dict[str, Any]:
    """The ``flightdeck/1`` document of a stored snapshot, as the capture's window gives it.

    Builds the whole document (many times the stored size as Python objects): for converters
    and in-process callers, never for the app's capture path. Raises :class:`ContainerError`.
    """
    head, frozen = read_frozen(data)
    trigger = head.get("trigger")
    process = head.get("process")
    ident = head.get("id")
    offset = head.get("clock_offset_ns")
    trigger_ns = head.get("trigger_time_ns")
    if not isinstance(trigger, dict) or not isinstance(process, dict) or not isinstance(ident, str):
        raise ContainerError("stored snapshot's header lacks its id, trigger or process")
    if not isinstance(offset, int) or not (trigger_ns is None or isinstance(trigger_ns, int)):
        raise ContainerError("stored snapshot's header has a malformed clock")
    # The build allocates millions of objects that all survive it: with the cyclic GC on,
    # its full collections over them would make it several times slower.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        doc = builder.build_document(
            frozen,
            snapshot_id=ident,
            offset_ns=offset,
            trigger=_trigger(trigger),
            trigger_time_ns=trigger_ns,
            process=process,
        )
    except ContainerError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise ContainerError(f"stored snapshot's records do not make a document: {exc!r}") from None
    finally:
        if gc_was_enabled:
            gc.enable()
    created = head.get("created_at")
    if isinstance(created, str):
        doc["created_at"] = created
    host_chunks = frozen.extra.get("host")
    if host_chunks:
        from . import host

        gc.disable()
        try:
            doc = host.read_host(doc, host_chunks, builder.build_document)
        finally:
            if gc_was_enabled:
                gc.enable()
    return doc
