"""Export a snapshot as Perfetto's own protobuf trace (``.pftrace``), written by hand.

The same tracks, slices, instants, counters and flows as the JSON export (``perfetto.py``),
from the same trace writer, as TrackEvent packets: one sequence, every name, category and
argument name interned once in the first packet, a TrackDescriptor per track (the
process, its tracks as threads, the lag counter), slices as begin/end pairs, flows as
``flow_ids`` on the slices they join. Field numbers are those of Perfetto's
``perfetto_trace.proto`` (checked by the tests against the ``perfetto`` package's protos).
"""

from __future__ import annotations

from typing import Any

import orjson

from .perfetto import build_trace

__all__ = ["to_pftrace"]

# TracePacket
_TIMESTAMP, _SEQ_ID, _TRACK_EVENT, _INTERNED, _SEQ_FLAGS, _TRACK_DESC = 8, 10, 11, 12, 13, 60
# TrackEvent
_CATEGORY_IIDS, _DEBUG, _TYPE, _NAME_IID, _TRACK_UUID = 3, 4, 9, 10, 11
_COUNTER_DOUBLE, _FLOW_IDS, _TERMINATING_FLOWS = 44, 47, 48
_SLICE_BEGIN, _SLICE_END, _INSTANT, _COUNTER = 1, 2, 3, 4
# TrackDescriptor, ProcessDescriptor, ThreadDescriptor
_UUID, _NAME, _PROCESS, _THREAD, _PARENT, _COUNTER_DESC, _CHILD_ORDER, _RANK = (
    1,
    2,
    3,
    4,
    5,
    8,
    11,
    12,
)
_EXPLICIT = 3
# InternedData, and DebugAnnotation
_I_CATEGORIES, _I_NAMES, _I_ARG_NAMES = 1, 2, 3
_A_NAME_IID, _A_BOOL, _A_INT, _A_DOUBLE, _A_STRING = 1, 2, 4, 5, 6
_CLEARED, _NEEDS_STATE = 1, 2
_SEQ = 1
_PROCESS_UUID = 1


def _varint_slow(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative ints as two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint_slow(i) for i in range(1 << 14)]


def _varint(value: int) -> bytes:
    if 0 <= value < 16384:
        return _SMALL[value]
    return _varint_slow(value)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode("utf-8", "replace"))


def _double(field: int, value: float) -> bytes:
    import struct

    return _varint(field << 3 | 1) + struct.pack("<d", value)


def _fixed64(field: int, value: int) -> bytes:
    return _varint(field << 3 | 1) + value.to_bytes(8, "little")


class _Interner:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        iid = self.ids.get(value)
        if iid is None:
            iid = self.ids[value] = len(self.ids) + 1
        return iid

    def entries(self, field: int) -> bytes:
        return b"".join(
            _bytes(field, _int(1, iid) + _str(2, name)) for name, iid in self.ids.items()
        )


def _annotation(names: _Interner, key: str, value: Any) -> bytes:
    body = _int(_A_NAME_IID, names(key))
    if isinstance(value, bool):
        body += _int(_A_BOOL, int(value))
    elif isinstance(value, int):
        body += _int(_A_INT, value)
    elif isinstance(value, float):
        body += _double(_A_DOUBLE, value)
    elif isinstance(value, str):
        body += _str(_A_STRING, value)
    else:
        body += _str(_A_STRING, orjson.dumps(value, default=repr).decode())
    return _bytes(_DEBUG, body)


def to_pftrace(doc: dict[str, Any]) -> bytes:
    """Perfetto's protobuf trace format for a ``flightdeck/1`` document (open it in
    ui.perfetto.dev); times in ns after ``window.start``."""
    w = build_trace(doc)
    names, cats, args = _Interner(), _Interner(), _Interner()
    flows_out: dict[int, list[int]] = {}
    flows_in: dict[int, list[int]] = {}
    for n, src, dst in w.links:
        flows_out.setdefault(id(w.slice_at[src]), []).append(n)
        flows_in.setdefault(id(w.slice_at[dst]), []).append(n)
    times = [float(e["ts"]) for e in w.out if "ts" in e]
    origin = min(0.0, *times) if times else 0.0

    def ns(ts: float) -> int:
        return round((ts - origin) * 1000)

    flags = _int(_SEQ_ID, _SEQ) + _int(_SEQ_FLAGS, _NEEDS_STATE)
    ts_tag = _varint(_TIMESTAMP << 3)

    def packet(ts: int | None, body: bytes) -> bytes:
        data = flags + ts_tag + _varint(ts) + body if ts is not None else flags + body
        return b"\n" + _varint(len(data)) + data  # field 1 (packet), length-delimited

    heads: dict[tuple[int, int, str, str], bytes] = {}
    notes: dict[tuple[str, Any], bytes] = {}
    plain = (str, int, float, bool)

    def event(kind: int, track: int, ev: dict[str, Any] | None, extra: bytes = b"") -> bytes:
        if ev is None:
            key = (kind, track, "", "")
        else:
            key = (kind, track, str(ev.get("name", "")), str(ev.get("cat", "")))
        body = heads.get(key)
        if body is None:
            body = _int(_TYPE, kind) + _int(_TRACK_UUID, track)
            if ev is not None:
                body += _int(_NAME_IID, names(key[2])) + _int(_CATEGORY_IIDS, cats(key[3]))
            heads[key] = body
        if ev is not None:
            parts = [body]
            for k, value in (ev.get("args") or {}).items():
                if k == "duration_ms":
                    continue  # the slice's own length
                if isinstance(value, plain):
                    note = notes.get((k, value))
                    if note is None:
                        note = notes[(k, value)] = _annotation(args, str(k), value)
                else:
                    note = _annotation(args, str(k), value)
                parts.append(note)
            parts.append(extra)
            body = b"".join(parts)
        return _bytes(_TRACK_EVENT, body)

    def track_uuid(tid: int) -> int:
        return 1000 + tid

    counters: dict[tuple[int, str], int] = {}
    # Slices: begin and end pairs, track by track, each track already properly nested.
    by_track: dict[int, list[dict[str, Any]]] = {}
    body: list[bytes] = []
    for ev in w.out:
        ph = ev.get("ph")
        if ph == "X":
            by_track.setdefault(ev["tid"], []).append(ev)
        elif ph == "i":
            body.append(packet(ns(ev["ts"]), event(_INSTANT, track_uuid(ev["tid"]), ev)))
        elif ph == "C":
            key = (ev["tid"], str(ev["name"]))
            uuid = counters.setdefault(key, 100_000 + len(counters))
            for value in (ev.get("args") or {}).values():
                extra = _double(_COUNTER_DOUBLE, float(value))
                body.append(
                    packet(
                        ns(ev["ts"]),
                        _bytes(
                            _TRACK_EVENT, _int(_TYPE, _COUNTER) + _int(_TRACK_UUID, uuid) + extra
                        ),
                    )
                )
    for tid, slices in by_track.items():
        uuid = track_uuid(tid)
        ends: list[float] = []
        for ev in slices:
            start, end = float(ev["ts"]), float(ev["ts"]) + float(ev["dur"])
            while ends and ends[-1] <= start:
                body.append(packet(ns(ends.pop()), event(_SLICE_END, uuid, None)))
            extra = b"".join(_fixed64(_FLOW_IDS, f) for f in flows_out.get(id(ev), ()))
            extra += b"".join(_fixed64(_TERMINATING_FLOWS, f) for f in flows_in.get(id(ev), ()))
            body.append(packet(ns(start), event(_SLICE_BEGIN, uuid, ev, extra)))
            ends.append(min(end, ends[-1]) if ends else end)
        while ends:
            body.append(packet(ns(ends.pop()), event(_SLICE_END, uuid, None)))
    # Descriptors and interned data first, on a cleared sequence.
    proc: dict[str, Any] = {}
    for ev in w.out:
        if ev.get("ph") == "M" and ev.get("name") == "process_name":
            proc = ev.get("args") or {}
    head = [
        _bytes(
            1,
            _int(_SEQ_ID, _SEQ)
            + _int(_SEQ_FLAGS, _CLEARED)
            + _bytes(
                _INTERNED,
                cats.entries(_I_CATEGORIES) + names.entries(_I_NAMES) + args.entries(_I_ARG_NAMES),
            )
            + _bytes(
                _TRACK_DESC,
                _int(_UUID, _PROCESS_UUID)
                + _bytes(_PROCESS, _int(1, w.pid) + _str(6, str(proc.get("name", "flightdeck"))))
                + _int(_CHILD_ORDER, _EXPLICIT),
            ),
        )
    ]
    for tid, (name, sort) in w.names.items():
        thread = _int(1, w.pid) + _int(2, tid) + _str(5, name)
        desc = _int(_UUID, track_uuid(tid)) + _int(_PARENT, _PROCESS_UUID) + _str(_NAME, name)
        desc += _bytes(_THREAD, thread) + _int(_RANK, sort)
        head.append(_bytes(1, _int(_SEQ_ID, _SEQ) + _bytes(_TRACK_DESC, desc)))
    for (tid, name), uuid in counters.items():
        desc = _int(_UUID, uuid) + _int(_PARENT, track_uuid(tid)) + _str(_NAME, name)
        desc += _bytes(_COUNTER_DESC, b"")
        head.append(_bytes(1, _int(_SEQ_ID, _SEQ) + _bytes(_TRACK_DESC, desc)))
    return b"".join(head) + b"".join(body)
