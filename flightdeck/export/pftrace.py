"""Export a snapshot as Perfetto's own protobuf trace (``.pftrace``), encoded directly.

The tracks, slices, instants, counters and flows of the JSON export (``perfetto.py``) as
TrackEvent packets, with the field numbers of Perfetto's ``perfetto_trace.proto`` (the tests
read the output back with the ``perfetto`` package's protos and compare it with the JSON
export, times to the nanosecond). The targets are at most 40 bytes an event and 5x the
speed of the JSON export (``benchmarks/bench_pftrace.py``); how:

- Task tracks hold nearly all of a window's slices: a suspension, a ready period and a step
  per task step. ``_TaskTracks`` writes their packets while it reads the steps, following
  ``tracks.task_track`` with plain floats and ints. Everything else (requests, executor
  jobs, regions, loop entries, instants, counters, flows) comes from the same ``tracks.py``
  functions as the JSON export, drawn through ``_Writer``, so both exports keep one
  definition of what is drawn.
- The event-loop lane has the JSON export's slices: a copy of every task step (annotated
  with its task and request, the JSON export's args there), then blocks, GC pauses and
  callbacks. ``_TaskTracks`` adds each copy's start and end while it reads the steps;
  ``_LoopLane`` sorts the lane (the clock only counts forward along a track, and the
  steps of different tasks come task by task), nests it as ``TraceWriter.flush_slices``
  does (an entry overlapping its parent's end is cut there) and writes it as one more
  track, in one pass. The copies are about a fifth of the export's time
  (``benchmarks/README.md``).
- Sequence 1 carries the slices, one track after another. Before each track one packet sets
  the sequence's defaults (the track's uuid, the incremental clock) and resets that clock
  with a ClockSnapshot; each timestamp after it is the delta from the previous event on the
  track, usually 1 to 3 bytes, and no event carries its track.
- Sequence 2 carries the instants and counters in time order, each with its track.
- Event names, categories, debug-annotation names and string values are interned, per
  sequence. Steps, ready periods and suspensions on a task's track carry no annotations
  (the track and the span say it), but a suspension's await stack; requests, executor
  jobs, blocks, regions and instants carry the JSON export's args but ``duration_ms``.
- The packets are deflated in bundles (``compressed_packets``), as Perfetto's tracing service
  writes them with compression on; the trace processor inflates them as it reads. Deflate
  does most of the shrinking: the packets alone take about 120 bytes an event
  (``benchmarks/README.md`` has the figures). Each full bundle is deflated on one worker
  thread while the packets after it are encoded (``_Bundles``); the bytes are the same.

Times are nanoseconds after ``window.start``: the JSON export's microseconds (three
decimals) times 1000. If anything lies before the window, the whole trace is shifted so that
the earliest event is at 0 (a trace's clock has no negative times).
"""

from __future__ import annotations

import bisect
import copy
import itertools
import operator
import queue
import struct
import threading
import zlib
from typing import Any

import orjson

from . import tracks
from .common import dicts, num, request_label, section, split_processes, text
from .trace import P_NORMAL, TraceWriter, frames_text

__all__ = ["to_pftrace"]

#: What this export draws of a document, and leaves out: the JSON export's (``tracks.py``),
#: task tracks included (``_TaskTracks`` follows ``tracks.task_track``).
DRAWN = tracks.DRAWN
NOT_DRAWN = tracks.NOT_DRAWN


def _varint_slow(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative ints as two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint_slow(i) for i in range(1 << 14)]
# The low 14 bits of a varint of 3 bytes or more, both continuation bits set: with _SMALL for
# the high part, the timestamps of most events (16 µs to 2 ms apart) cost two lookups.
_LOW14 = [bytes(((i & 0x7F) | 0x80, (i >> 7) | 0x80)) for i in range(1 << 14)]


def _varint(value: int) -> bytes:
    if 0 <= value < 16384:
        return _SMALL[value]
    if 0 <= value < 1 << 28:
        return _LOW14[value & 0x3FFF] + _SMALL[value >> 14]
    return _varint_slow(value)


def _ld(field_tag: bytes, data: bytes) -> bytes:
    """A length-delimited field (its tag already encoded)."""
    return field_tag + _varint(len(data)) + data


# -- field tags (``tag = field << 3 | wire type``), from perfetto_trace.proto -----------------

_PACKET = b"\x0a"  # Trace.packet = 1
# TracePacket
_SEQ1 = b"\x50\x01"  # trusted_packet_sequence_id = 10: 1 (the slices)
_SEQ2 = b"\x50\x02"  # ... 2 (instants and counters)
_TS = b"\x40"  # timestamp = 8
_TE = b"\x5a"  # track_event = 11
_INTERNED = b"\x62"  # interned_data = 12
_FLAGS_CLEARED = b"\x68\x01"  # sequence_flags = 13: SEQ_INCREMENTAL_STATE_CLEARED
_CLOCK_SNAPSHOT = b"\x32"  # clock_snapshot = 6
_DEFAULTS = b"\xda\x03"  # trace_packet_defaults = 59
_TRACK_DESC = b"\xe2\x03"  # track_descriptor = 60
_COMPRESSED = b"\x92\x03"  # compressed_packets = 50
# TracePacketDefaults, TrackEventDefaults
_D_CLOCK = b"\xd0\x03"  # timestamp_clock_id = 58
_D_TE = b"\x5a"  # track_event_defaults = 11
_D_TRACK = b"\x58"  # TrackEventDefaults.track_uuid = 11
# ClockSnapshot, ClockSnapshot.Clock
_CLOCK_ID, _CLOCK_TS, _CLOCK_INCREMENTAL = b"\x08", b"\x10", b"\x18"
_BOOTTIME = 6  # the trace's clock (BUILTIN_CLOCK_BOOTTIME)
_DELTA_CLOCK = 64  # sequence-scoped clocks are 64..127
# TrackEvent
_BEGIN, _END, _INSTANT, _COUNTER = b"\x48\x01", b"\x48\x02", b"\x48\x03", b"\x48\x04"  # type
_NAME_IID = b"\x50"  # name_iid = 10
_CATEGORY_IID = b"\x18"  # category_iids = 3
_TRACK = b"\x58"  # track_uuid = 11
_DEBUG = b"\x22"  # debug_annotations = 4
_FLOW = b"\xf9\x02"  # flow_ids = 47 (fixed64)
_TERMINATING_FLOW = b"\x81\x03"  # terminating_flow_ids = 48 (fixed64)
_COUNTER_DOUBLE = b"\xe1\x02"  # double_counter_value = 44
# DebugAnnotation
_A_NAME_IID, _A_BOOL, _A_INT, _A_DOUBLE = b"\x08", b"\x10", b"\x20", b"\x29"
_A_STRING_IID = b"\x88\x01"  # string_value_iid = 17
# InternedData: event_categories = 1, event_names = 2, debug_annotation_names = 3,
# debug_annotation_string_values = 29
_I_CATEGORIES, _I_NAMES, _I_ARG_NAMES, _I_STRINGS = b"\x0a", b"\x12", b"\x1a", b"\xea\x01"
# TrackDescriptor, ProcessDescriptor, CounterDescriptor
_T_UUID, _T_NAME, _T_PROCESS, _T_PARENT, _T_COUNTER = b"\x08", b"\x12", b"\x1a", b"\x28", b"\x42"
_T_CHILD_ORDER_EXPLICIT = b"\x58\x03"  # child_ordering = 11: EXPLICIT
_T_RANK = b"\x60"  # sibling_order_rank = 12
_P_PID, _P_NAME, _P_LABELS = b"\x08", b"\x32", b"\x42"  # pid = 1, process_name = 6, labels = 8

_PROCESS_UUID = 1
_BUNDLE = 1 << 20  # raw bytes per compressed bundle: a bounded buffer for the reader
_LEVEL = 1  # deflate level: 6 is 25 % smaller and 5x slower

# An END packet on sequence 1 after ``d`` ns: packet, length, sequence, timestamp tag, then
# the varint, then the track event. Whole packets for small deltas; for 14 to 21 bit
# deltas the packet's head with the low 14 bits, and the rest from the high 7 bits.
_END_TAIL = _TE + b"\x02" + _END
_END_SMALL = [
    _PACKET + _varint(7 + len(_SMALL[d])) + _SEQ1 + _TS + _SMALL[d] + _END_TAIL
    for d in range(1 << 14)
]
_END3_HEAD = [_PACKET + b"\x0a" + _SEQ1 + _TS + low for low in _LOW14]
_END3_TAIL = [bytes((h,)) + _END_TAIL for h in range(128)]
# 4 bytes (2 to 268 ms: long suspensions): the head with the low 14 bits, then the high 14.
_END4_HEAD = [_PACKET + b"\x0b" + _SEQ1 + _TS + low for low in _LOW14]
_END4_TAIL = [bytes(((h & 0x7F) | 0x80, h >> 7)) + _END_TAIL for h in range(1 << 14)]


def _end(out: bytearray, d: int) -> None:
    """An END packet on sequence 1, ``d`` ns after the previous event of the track."""
    if d < 16384:
        out += _END_SMALL[d]
    elif d < 1 << 21:
        out += _END3_HEAD[d & 0x3FFF]
        out += _END3_TAIL[d >> 14]
    elif d < 1 << 28:
        out += _END4_HEAD[d & 0x3FFF]
        out += _END4_TAIL[d >> 14]
    else:
        v = _varint(d)
        out += _PACKET + _SMALL[7 + len(v)] + _SEQ1 + _TS + v + _END_TAIL


# The head of a packet of ``n`` bytes on sequence 1 holding a timestamp, up to the
# timestamp's varint: for BEGIN packets whose track event is encoded already.
_BEGIN_HEADS = [_PACKET + _varint(n) + _SEQ1 + _TS for n in range(2048)]
_BEGIN_HEADS_MAX = len(_BEGIN_HEADS) - 8  # the longest track event they can take


def _event(out: bytearray, seq: bytes, d: int, event: bytes) -> None:
    """Any packet holding a track event ``d`` ns after the previous one of its sequence."""
    body = seq + _TS + _varint(d) + _TE + _varint(len(event)) + event
    out += _PACKET
    out += _varint(len(body))
    out += body


class _Interner:
    """One interning table of a sequence: value -> iid, from 1 in order of first use."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        iid = self.ids.get(value)
        if iid is None:
            iid = self.ids[value] = len(self.ids) + 1
        return iid

    def entries(self, field_tag: bytes) -> bytes:
        # EventName, EventCategory, DebugAnnotationName and InternedString alike: iid = 1,
        # the text = 2.
        parts = []
        small = _SMALL  # _varint inlined: most iids and lengths take a byte or two
        for value, iid in self.ids.items():
            data = value.encode("utf-8", "replace")
            n = len(data)
            if iid < 16384 and n < 16384:
                entry = b"\x08" + small[iid] + b"\x12" + small[n] + data
            else:
                entry = b"\x08" + _varint(iid) + b"\x12" + _varint(n) + data
            n = len(entry)
            parts.append(field_tag + (small[n] if n < 16384 else _varint(n)) + entry)
        return b"".join(parts)


class _Sequence:
    """The interning state of one packet sequence, and the encoding of what refers to it."""

    def __init__(self) -> None:
        self.names, self.cats = _Interner(), _Interner()
        self.keys, self.strings = _Interner(), _Interner()
        self._heads: dict[tuple[bytes, str, str], bytes] = {}
        # Encoded annotations of plain values, by type, name and value: nested dicts rather
        # than one keyed by tuples, which would cost the collector a tuple per look-up.
        self._notes: dict[type, dict[str, dict[Any, bytes]]] = {
            str: {},
            int: {},
            float: {},
            bool: {},
        }
        self._prefix: dict[str, bytes] = {}  # annotation name -> its encoded name_iid

    def interned_data(self) -> bytes:
        return (
            self.cats.entries(_I_CATEGORIES)
            + self.names.entries(_I_NAMES)
            + self.keys.entries(_I_ARG_NAMES)
            + self.strings.entries(_I_STRINGS)
        )

    def head(self, kind: bytes, name: str, cat: str) -> bytes:
        """The type, name and category of a track event."""
        key = (kind, name, cat)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = (
                kind
                + _NAME_IID
                + _varint(self.names(name))
                + _CATEGORY_IID
                + _varint(self.cats(cat))
            )
        return head

    def note(self, key: str, value: Any) -> bytes:
        """One debug annotation; one of a plain value is encoded once."""
        by_key = self._notes.get(type(value))
        if by_key is None:
            return self._annotation(key, value)
        by_value = by_key.get(key)
        if by_value is None:
            by_value = by_key[key] = {}
        cached = by_value.get(value)
        if cached is None:
            cached = by_value[value] = self._annotation(key, value)
        return cached

    def notes(self, args: dict[str, Any] | None) -> bytes:
        """The annotations of a JSON export's args, but ``duration_ms`` (the slice's own
        length: the viewer shows it)."""
        if not args:
            return b""
        cache, annotation = self._notes, self._annotation
        out = b""
        for key, value in args.items():
            if value is None:
                continue  # as TraceWriter drops them
            by_key = cache.get(type(value))
            if by_key is None:
                out += annotation(key, value)
                continue
            by_value = by_key.get(key)
            if by_value is None:
                if key == "duration_ms":
                    continue
                by_value = by_key[key] = {}
            cached = by_value.get(value)
            if cached is None:
                cached = by_value[value] = annotation(key, value)
            out += cached
        return out

    def _annotation(self, key: str, value: Any) -> bytes:
        prefix = self._prefix.get(key)
        if prefix is None:
            prefix = self._prefix[key] = _A_NAME_IID + _varint(self.keys(str(key)))
        kind = type(value)
        if kind is str:
            iid = self.strings.ids.get(value) or self.strings(value)
            body = prefix + _A_STRING_IID + _varint(iid)
        elif kind is int:
            body = prefix + _A_INT + _varint(value)
        elif kind is float:
            body = prefix + _A_DOUBLE + _pack_double(value)
        elif isinstance(value, bool):  # bool and its subclasses
            body = prefix + (_A_TRUE if value else _A_FALSE)
        elif isinstance(value, int):
            body = prefix + _A_INT + _varint(int(value))
        elif isinstance(value, float):
            body = prefix + _A_DOUBLE + _pack_double(float(value))
        else:
            text_value = value if isinstance(value, str) else orjson.dumps(value, default=repr)
            if not isinstance(text_value, str):
                text_value = text_value.decode()
            body = prefix + _A_STRING_IID + _varint(self.strings(text_value))
        return _DEBUG + _varint(len(body)) + body


_pack_double = struct.Struct("<d").pack
_A_TRUE, _A_FALSE = _A_BOOL + b"\x01", _A_BOOL + b"\x00"


def _inside(starts: list[int], ends: list[int], ts: int) -> int | None:
    """The index of the slice containing ``ts`` (the innermost-starting one), as
    ``TraceWriter._inside`` finds it on the JSON export's spans."""
    i = bisect.bisect_right(starts, ts) - 1
    for j in range(i, max(-1, i - 64), -1):
        if starts[j] <= ts <= ends[j]:
            return j
    return None


class _Track:
    """The slices of one track once nested: sorted starts, clamped ends, and what to write
    in each BEGIN after its type (name, category, annotations)."""

    __slots__ = ("bodies", "ends", "flows", "starts", "uuid")

    def __init__(self, uuid: int) -> None:
        self.uuid = uuid
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.bodies: list[bytes] = []
        self.flows: dict[int, bytes] = {}  # slice index -> flow ids to add to its BEGIN

    def nest(self, items: list[tuple[int, int, int, int, bytes]]) -> None:
        """``(start, start - end, priority, order, body)`` sorted and clamped as
        ``TraceWriter.flush_slices`` does: a child overlapping its parent's end is cut there."""
        items.sort()
        starts, ends, bodies = self.starts, self.ends, self.bodies
        open_ends: list[int] = []
        for start, neg, _prio, _order, body in items:
            end = start - neg
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            if open_ends and end > open_ends[-1]:
                end = open_ends[-1]
            open_ends.append(end)
            starts.append(start)
            ends.append(end)
            bodies.append(body)

    def write(self, out: bytearray, lo: int) -> None:
        """BEGIN and END packets on sequence 1, after the packet that resets the clock.

        ``_event`` and ``_end`` inlined, the packet's head from ``_BEGIN_HEADS``."""
        _reset(out, self.uuid)
        cur = lo
        ends: list[int] = []
        flows = self.flows
        all_ends, bodies = self.ends, self.bodies
        small, low14, heads = _SMALL, _LOW14, _BEGIN_HEADS
        end_small, end3_head, end3_tail = _END_SMALL, _END3_HEAD, _END3_TAIL
        end4_head, end4_tail = _END4_HEAD, _END4_TAIL
        for i, start in enumerate(self.starts):
            while ends and ends[-1] <= start:
                t = ends.pop()
                d = t - cur
                if d < 16384:
                    out += end_small[d]
                elif d < 2097152:
                    out += end3_head[d & 0x3FFF]
                    out += end3_tail[d >> 14]
                elif d < 268435456:
                    out += end4_head[d & 0x3FFF]
                    out += end4_tail[d >> 14]
                else:
                    _end(out, d)
                cur = t
            body = bodies[i]
            if flows and i in flows:
                body += flows[i]
            d = start - cur
            n = len(body)
            if n > 127 or d >= 268435456:
                _event(out, _SEQ1, d, body)
            elif d < 16384:
                v = small[d]
                out += heads[5 + len(v) + n]  # seq, ts tag, v, event tag, event length
                out += v
                out += _TE
                out += small[n]
                out += body
            else:  # 3 or 4 bytes: the low 14 bits, then the rest as a varint
                out += heads[8 + n if d < 2097152 else 9 + n]
                out += low14[d & 0x3FFF]
                out += small[d >> 14]
                out += _TE
                out += small[n]
                out += body
            cur = start
            ends.append(all_ends[i])
        while ends:
            t = ends.pop()
            _end(out, t - cur)
            cur = t


_SNAPSHOT = _ld(
    _CLOCK_SNAPSHOT,
    _ld(b"\x0a", _CLOCK_ID + _SMALL[_BOOTTIME] + _CLOCK_TS + b"\x00")
    + _ld(
        b"\x0a",
        _CLOCK_ID + _SMALL[_DELTA_CLOCK] + _CLOCK_TS + b"\x00" + _CLOCK_INCREMENTAL + b"\x01",
    ),
)


def _reset(out: bytearray, uuid: int) -> None:
    """Sequence 1's defaults for the next track (its uuid, the incremental clock) and a
    ClockSnapshot that restarts that clock at 0: each track's timestamps are deltas along
    the track. Every snapshot pairs the same two values, so each maps the clock the same."""
    v = _varint(uuid)
    out += _RESET_HEAD[len(v)]
    out += v
    out += _SNAPSHOT


def _reset_head(n: int) -> bytes:
    """A reset packet up to its track uuid, for a uuid of ``n`` bytes."""
    defaults_len = len(_D_CLOCK) + 1 + len(_D_TE) + 1 + len(_D_TRACK) + n
    body_len = len(_SEQ1) + len(_DEFAULTS) + 1 + defaults_len + len(_SNAPSHOT)
    head = _PACKET + _varint(body_len) + _SEQ1 + _DEFAULTS + _varint(defaults_len)
    return head + _D_CLOCK + _SMALL[_DELTA_CLOCK] + _D_TE + _SMALL[1 + n] + _D_TRACK


_RESET_HEAD = [b""] + [_reset_head(n) for n in range(1, 11)]


_SCRATCH_LOOP = -1  # the event-loop lane of the scratch writer of ``_TaskTracks._nest``

_NONE = -(1 << 62)  # "no event yet on this track", below any time


class _Writer(TraceWriter):
    """The writer ``tracks.py``'s functions draw through for this export: what they write
    is kept as tuples with times in ns (rounded as ``TraceWriter.us`` rounds µs), not as the
    JSON export's event dicts."""

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__(doc)
        assert self.w_start is not None
        self.ws = self.w_start
        #: Per track: (start, end, priority, name, category, args).
        self.slices: dict[int, list[tuple[int, int, int, str, str, dict[str, Any]]]] = {}
        #: Instants and counters in order: (is_counter, track, time, name, category, args).
        self.marks: list[tuple[bool, int, int, str, str, dict[str, Any]]] = []

    def slice(
        self,
        tid: int,
        start: float,
        end: float,
        name: str,
        cat: str,
        args: dict[str, Any],
        cname: str | None = None,
        prio: int = P_NORMAL,
    ) -> None:
        s, e = _ns(start, self.ws), _ns(end, self.ws)
        self.slices.setdefault(tid, []).append((s, e if e > s else s, prio, name, cat, args))

    def instant(
        self, tid: int, t: float, name: str, cat: str, args: dict[str, Any], scope: str = "t"
    ) -> None:
        self.marks.append((False, tid, _ns(t, self.ws), name, cat, args))

    def counter(self, tid: int, t: float, name: str, args: dict[str, Any]) -> None:
        self.marks.append((True, tid, _ns(t, self.ws), name, "", args))

    def flow(
        self, src: int, src_t: float, dst: int, dst_t: float, name: str, args: dict[str, Any]
    ) -> None:
        self.flows.append((src, _ns(src_t, self.ws), dst, _ns(dst_t, self.ws), name, args))


class _Written:
    """A task track encoded while its steps were read (``_TaskTracks._encode``), but for two
    packets only known later: the track's first BEGIN (its delta counts from the earliest
    time of the whole trace) and the BEGIN of the first step (where the flow from the
    request ends): unless it is the first BEGIN itself, ``before`` holds what comes before
    it and ``out`` what comes after."""

    __slots__ = (
        "before",
        "fe",
        "first_body",
        "first_is_step",
        "first_ts",
        "fs",
        "out",
        "step_delta",
        "step_head",
    )

    def __init__(self, step_head: bytes) -> None:
        self.step_head = step_head
        self.out = bytearray()
        self.first_ts = 0
        self.first_body = b""
        self.first_is_step = False
        self.before: bytearray | None = None
        self.step_delta = 0
        self.fs = self.fe = 0  # the first step, ns


class _LoopLane:
    """The event-loop lane: a copy of every task step (as ``tracks.task_track`` draws it
    there), then ``tracks.loop_track``'s blocks, GC pauses and callbacks, nested and written
    as ``_Track`` does, in one pass.

    Each entry is a start, an end (ns) and a whole track event. Steps of different tasks
    overlap in a window (``tests/samples.py``'s big documents) and the clock only counts
    forward along a track, so the lane is sorted: by start alone (ints, stably, so entries
    that start together stay in the order drawn), and where starts tie, as
    ``TraceWriter.flush_slices`` sorts them (the longer first, then by priority).
    """

    __slots__ = ("ends", "events", "order", "prios", "starts", "uuid")

    def __init__(self, uuid: int) -> None:
        self.uuid = uuid
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.events: list[bytes] = []  # TrackEvent field and all
        self.prios: dict[int, int] = {}  # entry -> priority, but P_NORMAL's
        self.order: list[int] = []

    def add(self, start: int, end: int, prio: int, event: bytes) -> None:
        if prio != P_NORMAL:
            self.prios[len(self.starts)] = prio
        self.starts.append(start)
        self.ends.append(end)
        self.events.append(event)

    def truncate(self, n: int) -> None:
        del self.starts[n:], self.ends[n:], self.events[n:]

    def sort(self) -> int | None:
        """Sorts the lane; returns its earliest start."""
        starts, ends, prios = self.starts, self.ends, self.prios
        order = self.order = sorted(range(len(starts)), key=starts.__getitem__)
        if not order:
            return None
        # Entries that start together: the longer first (it is the parent), then the
        # lower priority, then the order drawn, as ``TraceWriter.flush_slices``. Rare (a
        # few dozen of the 80,000 entries of ``benchmarks/bench_pftrace.py``'s documents),
        # so found with C loops (``tied[k]``: the k-th and the next start together) rather
        # than a Python loop over the whole lane.
        by_start = list(map(starts.__getitem__, order))
        tied = list(map(operator.eq, by_start, itertools.islice(by_start, 1, None)))
        n = len(tied)
        i = 0
        while True:
            try:
                i = tied.index(True, i)
            except ValueError:
                break
            j = i + 1  # the group: order[i], up to order[j] included
            while j < n and tied[j]:
                j += 1
            order[i : j + 1] = sorted(
                order[i : j + 1], key=lambda k: (ends[k] * -1, prios.get(k, P_NORMAL), k)
            )
            i = j + 1
        return starts[order[0]]

    def write(self, bundles: _Bundles, lo: int) -> None:
        """As ``_Track.nest`` then ``_Track.write``: an entry overlapping its parent's end
        is cut there. Marks packet boundaries along the way (the lane is a few MB), where
        ``bundles`` may hand its buffer off and start a new one."""
        if not self.order:
            return
        out = bundles.raw
        _reset(out, self.uuid)
        cur = lo
        cut = len(out) + _BUNDLE
        # The open entries' (clamped) ends: the innermost in ``top``, the others on ``ends``
        # above a sentinel that nothing reaches, so the loop tests one int, not the list.
        top = _OPEN
        ends: list[int] = []
        starts, all_ends, events = self.starts, self.ends, self.events
        small, low14, heads = _SMALL, _LOW14, _BEGIN_HEADS
        end_small, end3_head, end3_tail = _END_SMALL, _END3_HEAD, _END3_TAIL
        end4_head, end4_tail = _END4_HEAD, _END4_TAIL
        for i in self.order:
            start = starts[i]
            while top <= start:
                t, top = top, ends.pop()
                d = t - cur
                if d < 16384:
                    out += end_small[d]
                elif d < 2097152:
                    out += end3_head[d & 0x3FFF]
                    out += end3_tail[d >> 14]
                elif d < 268435456:
                    out += end4_head[d & 0x3FFF]
                    out += end4_tail[d >> 14]
                else:
                    _end(out, d)
                cur = t
            end = all_ends[i]
            ends.append(top)
            top = end if end < top else top
            event = events[i]
            d = start - cur
            n = len(event)
            if n > _BEGIN_HEADS_MAX or d >= 268435456:
                body = _SEQ1 + _TS + _varint(d) + event
                out += _PACKET
                out += _varint(len(body))
                out += body
            elif d < 16384:
                v = small[d]
                out += heads[3 + len(v) + n]
                out += v
                out += event
            else:  # 3 or 4 bytes: the low 14 bits, then the rest as a varint
                out += heads[6 + n if d < 2097152 else 7 + n]
                out += low14[d & 0x3FFF]
                out += small[d >> 14]
                out += event
            cur = start
            if len(out) > cut:
                # ``cut`` counts in the buffer: a handed-off one's bytes come off it.
                cut += _BUNDLE - bundles.cut()
                out = bundles.raw
        while top != _OPEN:
            _end(out, top - cur)
            cur, top = top, ends.pop()


_OPEN = 1 << 126  # later than any end: no open entry


class _TaskTracks:
    """Every task's track, as ``tracks.task_tracks`` and ``tracks.task_track`` draw it.

    ``_encode`` follows ``tracks.task_track`` step by step and writes the packets as it goes.
    That holds while the slices come one after another, each of positive length (then the
    order written is the order ``TraceWriter.flush_slices`` sorts them into, and nothing is
    clamped): nearly always. A task whose slices do not, or whose steps an executor job's
    flow starts from, is drawn by ``tracks.task_track`` itself and nested like other tracks.
    Either way each step's copy goes to the event-loop lane (``_LoopLane``).
    """

    def __init__(self, w: _Writer, seq: _Sequence) -> None:
        self.w, self.seq = w, seq
        self.tid: dict[Any, int] = {}  # task id -> track
        self.docs: dict[int, dict[str, Any]] = {}  # track -> task
        self.first: dict[Any, tuple[float, float]] = {}  # task id -> first step, seconds
        self.written: dict[int, _Written] = {}
        self.nested: dict[int, _Track] = {}
        self._suspended = seq.head(_BEGIN, "suspended", "suspended")
        self._ready = seq.head(_BEGIN, "ready", "ready")
        self._at0: dict[bytes, bytes] = {}
        self._zero_suspended = self._zero(self._suspended)
        self._zero_ready = self._zero(self._ready)
        self._task_key = b""  # a task id's annotation up to its string's iid (_loop_event)

    def assign(
        self,
        tasks: list[dict[str, Any]],
        requests: list[dict[str, Any]],
        req_ok: list[dict[str, Any]],
    ) -> None:
        """Tracks in the JSON export's order (grouped by request, in request order), the
        end-of-task instants, and each task's first step."""
        w = self.w
        req_order = {r.get("id"): i for i, r in enumerate(sorted(req_ok, key=lambda r: r["start"]))}

        def task_key(t: dict[str, Any]) -> tuple[int, float]:
            created = num(t.get("created"))
            return (req_order.get(t.get("request"), -1), created if created is not None else 0.0)

        req_by_id = {r.get("id"): r for r in requests}
        req_labels: dict[int, str] = {}  # by id(request): a request has a few tasks
        for n, task in enumerate(sorted(tasks, key=task_key)):
            t_id = task.get("id")
            label = f"task {text(t_id)} {text(task.get('coro')) or text(task.get('name'))}"
            req = req_by_id.get(task.get("request"))
            if req is not None:
                req_label = req_labels.get(id(req))
                if req_label is None:
                    req_label = req_labels[id(req)] = request_label(req)
                label += f" [{req_label}]"
            tid = w.track(label.strip(), 30_000 + n)
            self.tid[t_id] = tid
            self.docs[tid] = task
            first = self._first_step(task)
            if first is not None:
                self.first[t_id] = first
            done, state = num(task.get("done")), text(task.get("state"))
            if done is not None and state in ("error", "cancelled"):
                error = f": {text(task.get('error'))}" if task.get("error") else ""
                args = {"task": t_id, "request": task.get("request"), "state": state}
                w.instant(tid, done, f"task {state}{error}", "task", args)

    @staticmethod
    def _first_step(task: dict[str, Any]) -> tuple[float, float] | None:
        """``steps(task)[0]`` for the usual step (four floats), without the list."""
        steps = task.get("steps")
        if type(steps) is list and steps:
            step = steps[0]
            if type(step) is list and len(step) == 4:
                start, dur = step[0], step[1]
                if type(start) is float and type(dur) is float and (t := start + dur) - t == 0.0:
                    return (start, start + dur if dur > 0.0 else start)
        steps_ = _TaskTracks.steps(task, first_only=True)
        return steps_[0] if steps_ else None

    @staticmethod
    def steps(task: dict[str, Any], first_only: bool = False) -> list[tuple[float, float]]:
        """A task's steps as ``tracks.task_track`` returns them, (start, end) in seconds."""
        out: list[tuple[float, float]] = []
        steps = task.get("steps")
        for step in steps if isinstance(steps, list) else ():
            if not isinstance(step, (list, tuple)) or not step:
                continue
            start = num(step[0])
            if start is None:
                continue
            dur = num(step[1]) if len(step) > 1 else None
            out.append((start, start + max(0.0, dur or 0.0)))
            if first_only:
                break
        return out

    def encode(self, keep: set[int], loop: _LoopLane) -> None:
        """Every task's track, and the copies of the steps on the event-loop lane, in the
        order ``tracks.task_tracks`` draws them."""
        starts, events = loop.starts, loop.events
        for tid, task in self.docs.items():
            n = len(starts)
            written = None if tid in keep else self._encode(task, loop)
            if written is None:
                loop.truncate(n)  # what _encode added before it gave up
                for s, e, prio, name, cat, args in self._nest(tid):
                    head = self.seq.head(_BEGIN, name, cat)
                    loop.add(s, e, prio, self._loop_event(head, args.get("task"), task))
                continue
            if len(starts) > n:  # _encode added the starts and ends of its steps' copies
                events += [self._loop_event(written.step_head, task.get("id"), task)] * (
                    len(starts) - n
                )
            if written.first_body:
                self.written[tid] = written

    def _nest(self, tid: int) -> list[tuple[int, int, int, str, str, dict[str, Any]]]:
        """The task drawn by ``tracks.task_track`` on a scratch writer, then nested. Only the
        annotations the fast path writes are kept: the rest is the track's or the slice's.
        Returns what the scratch writer drew on the event-loop lane: the steps' copies."""
        self.written.pop(tid, None)
        w = copy.copy(self.w)
        w.slices, w.marks = {}, []
        tracks.task_track(w, self.docs[tid], tid, _SCRATCH_LOOP)
        seq = self.seq
        items = []
        for k, (s, e, prio, name, cat, args) in enumerate(w.slices.get(tid, ())):
            notes = {a: v for a, v in args.items() if a in ("awaiting", "await_stack")}
            items.append((s, s - e, prio, k, seq.head(_BEGIN, name, cat) + seq.notes(notes)))
        track = self.nested[tid] = _Track(tid + 1)
        track.nest(items)
        return w.slices.get(_SCRATCH_LOOP, [])

    def slice_at(self, tid: int, ts: int) -> int | None:
        """The slice a flow ends on, as ``_inside``; -1 for the first step of a track written
        by ``_encode`` (its BEGIN is written last)."""
        written = self.written.get(tid)
        if written is not None:
            if written.fs <= ts < written.fe:
                return -1  # slices follow one another: the first step is the innermost
            self._nest(tid)
        track = self.nested.get(tid)
        return None if track is None else _inside(track.starts, track.ends, ts)

    def earliest(self) -> int:
        lo = 0
        for written in self.written.values():
            lo = min(lo, written.first_ts)
        for track in self.nested.values():
            if track.starts:
                lo = min(lo, track.starts[0])
        return lo

    def write(self, raw: bytearray, tid: int, lo: int, flows: dict[int, bytes]) -> None:
        track = self.nested.get(tid)
        if track is not None:
            track.flows = flows
            track.write(raw, lo)
            return
        written = self.written.get(tid)
        if written is None:
            return
        _reset(raw, tid + 1)
        to_first = flows.get(-1, b"")
        body = written.first_body + (to_first if written.first_is_step else b"")
        _event(raw, _SEQ1, written.first_ts - lo, body)
        if written.before is None:
            raw += written.out
        else:
            raw += written.before
            _event(raw, _SEQ1, written.step_delta, written.step_head + to_first)
            raw += written.out

    def _loop_event(self, head: bytes, t_id: Any, task: dict[str, Any]) -> bytes:
        """The track event of a step's copy on the event-loop lane (the same for all of a
        task's steps): the step's name and category, and the task and request it is of,
        the JSON export's args there (``tracks.task_track``)."""
        seq = self.seq
        req = task.get("request")
        body = head
        if type(t_id) is str:  # the usual id: its annotation, without note()'s cache
            if not self._task_key:
                self._task_key = _A_NAME_IID + _varint(seq.keys("task")) + _A_STRING_IID
            ids = seq.strings.ids  # _Interner.__call__, inlined
            iid = ids.get(t_id)
            if iid is None:
                iid = ids[t_id] = len(ids) + 1
            note = self._task_key + (_SMALL[iid] if iid < 16384 else _varint(iid))
            body += _DEBUG + _SMALL[len(note)] + note
        elif t_id is not None:
            body += seq.note("task", t_id)
        if req is not None:
            body += seq.note("request", req)
        n = len(body)
        return _TE + (_SMALL[n] if n < 16384 else _varint(n)) + body

    def _zero(self, head: bytes) -> bytes:
        """A whole BEGIN packet 0 ns after the previous event (the usual case: a task's
        slices abut)."""
        packet = self._at0.get(head)
        if packet is None:
            event = _TE + _varint(len(head)) + head
            body = _SEQ1 + _TS + b"\x00" + event
            packet = self._at0[head] = _PACKET + _varint(len(body)) + body
        return packet

    def _encode(self, task: dict[str, Any], loop: _LoopLane) -> _Written | None:
        """``tracks.task_track`` for one task, written as packets, and the copies of its steps
        added to ``loop``; None when its slices do not follow one another (the caller nests
        them instead, and nothing is added)."""
        w, seq = self.w, self.seq
        assert w.w_start is not None and w.w_end is not None
        ws, we = w.w_start, w.w_end
        t_id = task.get("id")
        what = text(task.get("coro")) or text(task.get("name")) or f"task {text(t_id)}"
        created = num(task.get("created"))
        done = num(task.get("done"))
        prev_end = max(created, ws) if created is not None else None
        waits = (
            sorted(
                (
                    (s, s + (num(x.get("duration")) or 0.0), x)
                    for x in dicts(task.get("waits"))
                    if (s := num(x.get("start"))) is not None
                ),
                key=lambda x: x[0],
            )
            if task.get("waits")
            else _NO_WAITS
        )
        wait_starts = [x[0] for x in waits] if waits else _NO_STARTS
        suspended_head, ready_head = self._suspended, self._ready
        step_head = seq.head(_BEGIN, what, "step")
        # The event-loop lane's copy of each step, added as the step is read.
        # (``encode`` adds their track events, all alike.)
        loop_s, loop_e = loop.starts.append, loop.ends.append
        zero_suspended, zero_ready = self._zero_suspended, self._zero_ready
        zero_step = self._zero(step_head)
        end_small, end3_head, end3_tail = _END_SMALL, _END3_HEAD, _END3_TAIL
        end4_head, end4_tail = _END4_HEAD, _END4_TAIL
        res = _Written(step_head)
        out = res.out
        cur = _NONE  # the time of the previous event on the track, ns
        no_step = True

        # tracks.task_track's loop, inlined: ``prev_ns`` is ns(prev_end); each slice is a
        # BEGIN (whole and precomputed when it starts where the previous slice ended) and
        # an END.
        prev_ns = _ns(prev_end, ws) if prev_end is not None else 0
        steps = task.get("steps")
        for step in steps if isinstance(steps, list) else ():
            # The usual step: four finite floats (a sum of finite floats minus itself is 0).
            if type(step) is list and len(step) == 4:
                start, dur, waited, ready = step
                if not (
                    type(start) is float
                    and type(dur) is float
                    and type(waited) is float
                    and type(ready) is float
                    and (t := start + dur + waited + ready) - t == 0.0
                ):
                    parsed = _step(step)
                    if parsed is None:
                        continue
                    start, dur, waited, ready = parsed
            else:
                parsed = _step(step)
                if parsed is None:
                    continue
                start, dur, waited, ready = parsed
            end = start + dur if dur is not None and dur > 0.0 else start
            v = (start - ws) * 1e6 * 1000.0
            s = int(v + 0.5) if v >= 0 else int(v - 0.5)
            if prev_end is None and waited is not None:
                prev_end = max(ws, start - (ready or 0.0) - waited)
                prev_ns = _ns(prev_end, ws)
            if prev_end is not None and prev_end < start:
                woke = start - ready if ready is not None else start
                # min(start, max(prev_end, woke)), without the calls
                woke = woke if woke > prev_end else prev_end
                woke = woke if woke < start else start
                if woke > prev_end:
                    # suspended: prev_end -> woke
                    v = (woke - ws) * 1e6 * 1000.0
                    wn = int(v + 0.5) if v >= 0 else int(v - 0.5)
                    if prev_ns < cur or wn <= prev_ns:
                        return None
                    notes = _await_stack(seq, waits, wait_starts, prev_end, woke) if waits else b""
                    if prev_ns == cur and not notes:
                        out += zero_suspended
                    elif cur == _NONE:
                        res.first_ts, res.first_body = prev_ns, suspended_head + notes
                    else:
                        _event(out, _SEQ1, prev_ns - cur, suspended_head + notes)
                    d = wn - prev_ns
                    if d < 16384:
                        out += end_small[d]
                    elif d < 2097152:
                        out += end3_head[d & 0x3FFF]
                        out += end3_tail[d >> 14]
                    elif d < 268435456:
                        out += end4_head[d & 0x3FFF]
                        out += end4_tail[d >> 14]
                    else:
                        _end(out, d)
                    cur = wn
                else:
                    wn = prev_ns
                if start > woke:
                    # ready: woke -> start
                    if wn < cur or s <= wn:
                        return None
                    if wn == cur:
                        out += zero_ready
                    elif cur == _NONE:
                        res.first_ts, res.first_body = wn, ready_head
                    else:
                        _event(out, _SEQ1, wn - cur, ready_head)
                    d = s - wn
                    if d < 16384:
                        out += end_small[d]
                    elif d < 2097152:
                        out += end3_head[d & 0x3FFF]
                        out += end3_tail[d >> 14]
                    elif d < 268435456:
                        out += end4_head[d & 0x3FFF]
                        out += end4_tail[d >> 14]
                    else:
                        _end(out, d)
                    cur = s
            # the step: start -> end
            v = (end - ws) * 1e6 * 1000.0
            e = int(v + 0.5) if v >= 0 else int(v - 0.5)
            if s < cur or e <= s:
                return None
            loop_s(s)
            loop_e(e)
            if no_step:
                no_step = False
                res.fs, res.fe = s, e
                if cur == _NONE:
                    res.first_ts, res.first_body, res.first_is_step = s, step_head, True
                else:
                    res.before, res.step_delta = out, s - cur
                    out = res.out = bytearray()
            elif s == cur:
                out += zero_step
            else:
                _event(out, _SEQ1, s - cur, step_head)
            d = e - s
            if d < 16384:
                out += end_small[d]
            elif d < 2097152:
                out += end3_head[d & 0x3FFF]
                out += end3_tail[d >> 14]
            elif d < 268435456:
                out += end4_head[d & 0x3FFF]
                out += end4_tail[d >> 14]
            else:
                _end(out, d)
            cur = e
            if prev_end is None or end > prev_end:
                prev_end, prev_ns = end, e
        # Still suspended when the snapshot was taken, or until the task ended.
        state = text(task.get("state"))
        tail: tuple[float, float, list[str] | None] | None = None
        if prev_end is not None:
            if done is None and state in ("pending", ""):
                if we > prev_end:
                    tail = (prev_end, we, frames_text(task.get("awaiting")))
            elif done is not None and done > prev_end:
                tail = (prev_end, min(done, we), None)
        if tail is not None:
            a, b, awaiting = tail
            sa, sb = _ns(a, ws), _ns(b, ws)
            if sa < cur or sb <= sa:
                return None
            notes = seq.note("awaiting", awaiting) if awaiting else b""
            if waits:
                notes += _await_stack(seq, waits, wait_starts, a, b)
            if cur == _NONE:
                res.first_ts, res.first_body = sa, suspended_head + notes
            else:
                _event(out, _SEQ1, sa - cur, suspended_head + notes)
            _end(out, sb - sa)
        return res


_Wait = tuple[float, float, dict[str, Any]]
_NO_WAITS: list[_Wait] = []  # shared, never added to: a task without waits allocates nothing
_NO_STARTS: list[float] = []


def _await_stack(
    seq: _Sequence, waits: list[_Wait], wait_starts: list[float], a: float, b: float
) -> bytes:
    """The recorded await stack of the wait that overlaps ``a``-``b`` most, as
    ``tracks.task_track`` attaches it to a suspension (a function, not a closure in
    ``_TaskTracks._encode``: a closure costs each task five objects for the collector)."""
    i = bisect.bisect_right(wait_starts, b) - 1
    if 0 <= i < len(waits) and waits[i][1] > a:
        return seq.note("await_stack", frames_text(waits[i][2].get("stack")))
    return b""


def _ns(t: float, ws: float) -> int:
    """``t`` in ns after the window's start, rounded as ``TraceWriter.us`` rounds µs."""
    v = (t - ws) * 1e6 * 1000.0
    return int(v + 0.5) if v >= 0 else int(v - 0.5)


def _step(step: object) -> tuple[float, float | None, float | None, float | None] | None:
    """``(start, duration, waited, ready)`` of a step as ``tracks.task_track`` reads it."""
    if not isinstance(step, (list, tuple)) or not step:
        return None
    start = num(step[0])
    if start is None:
        return None
    n = len(step)
    return (
        start,
        num(step[1]) if n > 1 else None,
        num(step[2]) if n > 2 else None,
        num(step[3]) if n > 3 else None,
    )


def to_pftrace(doc: dict[str, Any]) -> bytes:
    """Perfetto's protobuf trace format for a ``flightdeck/1`` document (open it in
    ui.perfetto.dev); times in ns after ``window.start``.

    A host capture's document is one trace per process (``common.split_processes``),
    concatenated: each with a process descriptor of its own pid, track uuids and flow ids
    of a range of its own, and the clock counting from the same origin (the window's start,
    or the earliest time before it of the first process that has one).
    """
    parts = split_processes(doc)
    if len(parts) == 1:
        return _one_trace(doc)[0]
    floor = 0
    while True:
        out = []
        flows = 0
        earliest = floor
        for n, part in enumerate(parts):
            # Process n's uuids: n << 32 for the process, its tracks' just above.
            data, used, lo = _one_trace(part, uuid_base=n << 32, flow_base=flows, floor=floor)
            flows += used
            earliest = min(earliest, lo)
            out.append(data)
        if earliest == floor:
            return b"".join(out)
        # Something of one process lies before the window: every clock counts from there.
        floor = earliest


def _one_trace(
    doc: dict[str, Any], uuid_base: int = 0, flow_base: int = 0, floor: int | None = None
) -> tuple[bytes, int, int]:
    """The trace of one process's document, the flow ids it used and the time its clock
    counts from (ns after the window's start); ``floor``: no later than this, so that the
    traces of several processes align."""
    w = _Writer(doc)
    if uuid_base:
        w.next_tid = uuid_base + 1
    seq1, seq2 = _Sequence(), _Sequence()
    requests = dicts(doc.get("requests"))
    events = dicts(doc.get("events"))
    # The tracks in perfetto.build_trace's order, task tracks through _TaskTracks.
    loop_tid = w.track("event loop", 0)
    req_ok, req_tid = tracks.request_tracks(w, requests)
    thread_tids = tracks.thread_tracks(w, events)
    regions = tracks.region_tracks(w, events)
    tasks = _TaskTracks(w, seq1)
    tasks.assign(dicts(doc.get("tasks")), requests, req_ok)
    _spawn_flows(w, req_ok, req_tid, tasks)
    tracks.loop_track(w, loop_tid)
    by_task = {tasks.tid[t]: t for t in tasks.tid}
    executor = {
        tasks.tid[t]
        for ev in events
        if ev.get("kind") == "executor" and (t := ev.get("task")) in tasks.tid
    }
    task_steps = {by_task[tid]: tasks.steps(tasks.docs[tid]) for tid in executor}
    tracks.event_marks(w, events, thread_tids, tasks.tid, task_steps, loop_tid)
    tracks.region_slices(w, regions)
    if doc.get("trigger") is not None:
        tracks.trigger_marks(w, loop_tid)
    loop = _LoopLane(loop_tid + 1)
    tasks.encode(executor, loop)
    head = seq1.head
    notes = seq1.notes
    for s, e, prio, name, cat, args in w.slices.pop(loop_tid, ()):
        body = head(_BEGIN, name, cat) + notes(args)
        loop.add(s, e, prio, _TE + _varint(len(body)) + body)
    loop_first = loop.sort()

    # Every other track's slices, nested.
    others: dict[int, _Track] = {}
    for tid, slices in w.slices.items():
        items = [
            (s, s - e, prio, k, head(_BEGIN, name, cat) + notes(args))
            for k, (s, e, prio, name, cat, args) in enumerate(slices)
        ]
        others[tid] = _Track(tid + 1)
        others[tid].nest(items)

    # Flows, numbered and placed as TraceWriter.flush_flows does: a flow id on the BEGIN
    # of the slice each end is in.
    def slice_at(tid: int, ts: int) -> int | None:
        track = others.get(tid)
        if track is not None:
            return _inside(track.starts, track.ends, ts)
        return tasks.slice_at(tid, ts) if tid in tasks.docs else None

    flows: dict[int, dict[int, bytes]] = {}  # track -> slice -> flow ids for its BEGIN
    for n, (src, src_ns, dst, dst_ns, _name, _args) in enumerate(w.flows, start=1 + flow_base):
        i = slice_at(src, int(src_ns))
        j = slice_at(dst, int(dst_ns))
        if i is None or j is None:
            continue
        at = flows.setdefault(src, {})
        at[i] = at.get(i, b"") + _FLOW + struct.pack("<Q", n)
        at = flows.setdefault(dst, {})
        at[j] = at.get(j, b"") + _TERMINATING_FLOW + struct.pack("<Q", n)

    # Instants and counters: sequence 2, in time order.
    marks: list[tuple[int, int, bytes]] = []
    counters: dict[tuple[int, str], int] = {}
    next_uuid = w.next_tid + 1
    for k, (is_counter, tid, ts, name, cat, args) in enumerate(w.marks):
        if not is_counter:
            track = _TRACK + _varint(tid + 1)
            marks.append((ts, k, seq2.head(_INSTANT, name, cat) + track + seq2.notes(args)))
            continue
        uuid = counters.get((tid, name))
        if uuid is None:
            uuid = counters[(tid, name)] = next_uuid + len(counters)
        for value in args.values():
            body = _COUNTER + _TRACK + _varint(uuid) + _COUNTER_DOUBLE
            marks.append((ts, k, body + _pack_double(float(value))))
    marks.sort(key=lambda m: (m[0], m[1]))

    # The earliest time, which the clocks count from.
    lo = tasks.earliest()
    for other in others.values():
        if other.starts:
            lo = min(lo, other.starts[0])
    if marks:
        lo = min(lo, marks[0][0])
    if loop_first is not None:
        lo = min(lo, loop_first)
    if floor is not None:
        lo = min(lo, floor)

    # The slices, track by track in the JSON export's track order, then the instants and
    # counters; ``bundles`` deflates them as they come (it may end a bundle at each
    # packet boundary it is told of, and then starts a new buffer).
    process_uuid = uuid_base or _PROCESS_UUID
    bundles = _Bundles(bytearray(_head(w, doc, seq1, seq2, counters, process_uuid)))
    try:
        bundles.cut()
        raw = bundles.raw
        no_flows: dict[int, bytes] = {}
        for tid in w.names:
            f = flows.get(tid, no_flows)
            if tid == loop_tid:
                loop.write(bundles, lo)
                raw = bundles.raw
            elif tid in others:
                others[tid].flows = f
                others[tid].write(raw, lo)
            else:
                tasks.write(raw, tid, lo, f)
            if len(raw) >= _BUNDLE:
                bundles.cut()
                raw = bundles.raw
        cur = lo
        for k, (ts, _k, event) in enumerate(marks):
            _event(raw, _SEQ2, ts - cur, event)
            cur = ts
            if k % 1024 == 1023 and len(raw) >= _BUNDLE:
                bundles.cut()
                raw = bundles.raw
        return bundles.finish(), len(w.flows), lo
    finally:
        bundles.close()


def _spawn_flows(
    w: TraceWriter,
    req_ok: list[dict[str, Any]],
    req_tid: dict[Any, tuple[int, float, float]],
    tasks: _TaskTracks,
) -> None:
    """``tracks.spawn_flows``, from the first steps ``_TaskTracks.assign`` kept."""
    tracks.spawn_flows(w, req_ok, req_tid, tasks.tid, {t: [s] for t, s in tasks.first.items()})


def _head(
    w: TraceWriter,
    doc: dict[str, Any],
    seq1: _Sequence,
    seq2: _Sequence,
    counters: dict[tuple[int, str], int],
    process_uuid: int = _PROCESS_UUID,
) -> bytes:
    """The descriptors of the process, its tracks and the counter tracks, then both
    sequences' first packets: cleared state, interned data, sequence 2's clock."""
    proc = section(doc, "process")
    host = text(proc.get("hostname"))
    pname = f"flightdeck pid {w.pid}" + (f" on {host}" if host else "")
    labels = [f"{k} {text(proc.get(k))}" for k in ("python", "loop", "flightdeck") if proc.get(k)]
    process = _P_PID + _varint(w.pid) + _ld(_P_NAME, pname.encode("utf-8", "replace"))
    process += b"".join(_ld(_P_LABELS, label.encode("utf-8", "replace")) for label in labels)
    desc = _T_UUID + _varint(process_uuid) + _ld(_T_PROCESS, process) + _T_CHILD_ORDER_EXPLICIT
    out = [_packet(_ld(_TRACK_DESC, desc))]
    parent = _T_PARENT + _varint(process_uuid)
    small = _SMALL  # a descriptor a task track: most varints here are under 2 bytes
    for tid, (name, sort) in w.names.items():
        data = name.encode("utf-8", "replace")
        uuid, n = tid + 1, len(data)
        desc = (
            _T_UUID
            + (small[uuid] if uuid < 16384 else _varint(uuid))
            + parent
            + _T_NAME
            + (small[n] if n < 16384 else _varint(n))
            + data
            + _T_RANK
            + (small[sort] if 0 <= sort < 16384 else _varint(sort))
        )
        n = len(desc)
        body = _TRACK_DESC + (small[n] if n < 16384 else _varint(n)) + desc
        n = len(body)
        out.append(_PACKET + (small[n] if n < 16384 else _varint(n)) + body)
    for (tid, name), uuid in counters.items():
        desc = _T_UUID + _varint(uuid) + _T_PARENT + _varint(tid + 1)
        desc += _ld(_T_NAME, name.encode("utf-8", "replace")) + _ld(_T_COUNTER, b"")
        out.append(_packet(_ld(_TRACK_DESC, desc)))
    for seq_tag, seq in ((_SEQ1, seq1), (_SEQ2, seq2)):
        out.append(_packet(seq_tag + _FLAGS_CLEARED + _ld(_INTERNED, seq.interned_data())))
    clock = _ld(_DEFAULTS, _D_CLOCK + _SMALL[_DELTA_CLOCK])
    out.append(_packet(_SEQ2 + clock + _SNAPSHOT))
    return b"".join(out)


def _packet(body: bytes) -> bytes:
    return _PACKET + _varint(len(body)) + body


def _deflated(raw: bytes | bytearray) -> bytes:
    """One bundle: a TracePacket of ``compressed_packets``."""
    return _packet(_ld(_COMPRESSED, zlib.compress(raw, _LEVEL)))


#: Deflate full bundles on a worker thread while the packets after them are encoded
#: (``zlib.compress`` lets go of the GIL while it deflates); False deflates each in turn on
#: the caller's thread. Both write the same bytes (``tests/export/test_pftrace.py``).
_DEFLATE_THREAD = True
_WAITING = 2  # full bundles queued for the worker at most: the encoder waits beyond that


class _Bundles:
    """The packets, deflated in bundles of at least ``_BUNDLE`` bytes (but the last), each
    ending at a packet boundary the encoder marks with ``cut``.

    The encoder appends to ``raw``; once it holds a bundle's worth at a boundary, ``cut``
    hands the buffer off whole (no copy) and ``raw`` is a new one, so the encoder re-reads
    ``raw`` after each ``cut``. A handed-off buffer is deflated on one worker thread, started
    with the first full bundle (a small snapshot never starts it), through a queue of at most
    ``_WAITING`` buffers; one worker keeps the bundles in order. ``finish`` deflates the last
    bundle on the caller's thread while the worker ends its queue; ``close`` (always, after
    ``finish`` or on an error) stops the worker and waits for it: no thread outlives the
    export, and a worker's error is raised by ``finish``.
    """

    __slots__ = ("_error", "_queue", "_thread", "parts", "raw", "threaded")

    def __init__(self, raw: bytearray) -> None:
        self.raw = raw
        self.parts: list[bytes] = []  # the deflated bundles, in order
        self.threaded = _DEFLATE_THREAD
        self._queue: queue.Queue[bytearray | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def cut(self) -> int:
        """A packet boundary: ends a bundle here if ``raw`` holds ``_BUNDLE`` bytes; returns
        how many bytes were handed off (0 or all of ``raw``)."""
        raw = self.raw
        n = len(raw)
        if n < _BUNDLE:
            return 0
        self.raw = bytearray()
        if self.threaded and self._thread is None:
            self._start()
        if self._queue is None:
            self.parts.append(_deflated(raw))
        else:
            if self._error is not None:
                raise self._error
            self._queue.put(raw)  # waits while _WAITING bundles are queued
        return n

    def finish(self) -> bytes:
        """The trace: every bundle, the last one deflated here."""
        last = _deflated(self.raw) if self.raw else b""
        self.close()
        if self._error is not None:
            raise self._error
        return b"".join(self.parts) + last

    def close(self) -> None:
        """Stops the worker once it has taken what is queued, and waits for it."""
        thread, q = self._thread, self._queue
        if thread is None or q is None:
            return
        self._thread = None
        q.put(None)
        thread.join()

    def _start(self) -> None:
        q: queue.Queue[bytearray | None] = queue.Queue(_WAITING)
        thread = threading.Thread(target=self._work, args=(q,), name="pftrace deflate")
        thread.daemon = True  # close() joins it; this only spares a hung exit if it is not
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: deflate here
            self.threaded = False
            return
        self._thread, self._queue = thread, q

    def _work(self, q: queue.Queue[bytearray | None]) -> None:
        parts = self.parts
        while True:
            raw = q.get()
            if raw is None:
                return
            if self._error is None:  # after an error, only empty the queue until told to stop
                try:
                    parts.append(_deflated(raw))
                except BaseException as exc:  # raised by finish() on the encoder's thread
                    self._error = exc
