"""A task's steps while a snapshot is built: about 7 bytes a step, made floats when written.

Steps are most of a document (nine in ten events of the capture benchmark), and the
capture path holds every task's steps at once (a task's steps are spread over the whole
window, and the document lists them task by task) while it decodes the next segment of the
window: a native generation decodes to about 20 MiB of tuples (``benchmarks/README.md``,
"Capture memory"). Four doubles a step took 32 bytes. Here a step is three ints, in ns:
the gap since the previous step's end, its duration, and how long it was queued, appended
to an ``array`` of 32-bit ints (a task with a value out of range, such as a gap of more
than 2 s, moves to 64-bit ints). At the end of each segment the builder packs each task's
run of at least ``PACK_STEPS`` steps: the low two bytes of every int kept as they are
(noise, incompressible) and the high two, nearly constant, deflated, about 6.7 bytes a
step in all. :meth:`Steps.rows` recomputes the very floats the builder used to store, so
the document does not change (``tests/snapshot/test_steps.py``).
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Iterator
from itertools import chain
from typing import Any

NAN = float("nan")
Row = tuple[float, float, float, float]
#: A task's open run is packed, at the end of a segment, from this many steps on.
PACK_STEPS = 256
#: Head of a packed run: typecode, ints in the run, bytes of its deflated high planes.
_RUN = struct.Struct("<cII")


def packer() -> Any:
    """The compressor :meth:`Steps.pack` takes: one per build (its set-up costs 256 KiB and
    more time than packing a run); full flushes keep each run decodable on its own."""
    return zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)


class Steps:
    """``(gap, duration, queued)`` per step, in ns, oldest first (see the module doc).

    ``gap`` counts from the end of the previous step, or for the first from ``origin``:
    the task's creation when it was recorded (``known``: the first step's ``waited`` counts
    from it), else the first step's own start. ``queued`` is ``t0 - t_queued``; the steps
    recorded without a queue time are listed in ``unqueued`` (their ``waited`` and
    ``ready`` are unknown). ``packed`` holds the older steps, ``data`` the newest.

    The packed runs go into one ``bytearray`` a task, not an object each: small objects
    made while a segment is decoded land among its tuples, and CPython's small-object
    allocator returns an arena to the system only when all of it is free, so a few
    thousand of them scattered over the build kept most of 20 MiB of decoded arenas
    mapped until the end (``benchmarks/README.md``, "Capture memory").
    """

    __slots__ = ("count", "data", "known", "offset", "origin", "packed", "unqueued")

    def __init__(self, offset_ns: int, origin: int | None) -> None:
        #: Added to a step's start to make it epoch time (``TaskTable.offset``).
        self.offset = offset_ns
        self.origin = origin
        self.known = origin is not None
        self.data = array("i")
        #: Runs packed by :meth:`pack`, one after the other: ``_RUN``, low bytes, high.
        self.packed: bytearray | None = None
        #: Steps in ``packed``.
        self.count = 0
        self.unqueued: list[int] | None = None

    def __len__(self) -> int:
        return self.count + len(self.data) // 3

    def add_unqueued(self, gap: int, duration: int) -> None:
        """A step without a queue time (rare: the builder's hot path handles the others)."""
        if self.unqueued is None:
            self.unqueued = []
        self.unqueued.append(len(self))
        self.add((gap, duration, 0))

    def add(self, row: tuple[int, int, int]) -> None:
        """Append one step, widening to 64-bit ints when a value needs it.

        Also the builder's way out when its own ``data.extend`` overflowed: ``extend``
        appends item by item, so the part of the row that went in is dropped first.
        """
        data = self.data
        del data[len(data) - len(data) % 3 :]
        try:
            data.extend(row)
        except OverflowError:
            del data[len(data) - len(data) % 3 :]
            self.data = array("q", data)
            self.data.extend(row)

    def pack(self, compressor: Any) -> None:
        """Pack the open run (see the module doc); the next steps go to a new 32-bit run."""
        data = self.data
        if not data:
            return
        raw = data.tobytes()
        width = data.itemsize
        half = width // 2
        # Byte planes: plane k holds byte k of every int (native order, read back alike).
        low = b"".join([raw[k::width] for k in range(half)])
        high = b"".join([raw[k::width] for k in range(half, width)])
        high = compressor.compress(high) + compressor.flush(zlib.Z_FULL_FLUSH)
        if self.packed is None:
            self.packed = bytearray()
        self.packed += _RUN.pack(data.typecode.encode(), len(data), len(high))
        self.packed += low
        self.packed += high
        self.count += len(data) // 3
        self.data = array("i")

    def _ints(self) -> Iterator[int]:
        """Every int, packed runs first, in order."""
        if not self.packed:
            return iter(self.data)
        return chain(chain.from_iterable(_runs(self.packed)), self.data)

    def rows(self) -> list[Row]:
        """``[(start, duration, waited, ready), ...]`` in seconds, NaN where unknown.

        ``start`` is ``(t0 + offset) / 1e9``; the values are those the builder computed
        from the events themselves.
        """
        out: list[Row] = []
        if not len(self):
            return out
        append = out.append
        offset_ns = self.offset
        end = self.origin or 0  # set by the builder at the first step at the latest
        skip = set(self.unqueued) if self.unqueued else None
        it = self._ints()
        gap, dur, rq = next(it), next(it), next(it)
        # The first step: its ``waited`` needs the creation time.
        t0 = end + gap
        if skip is not None and 0 in skip:
            waited = ready = NAN
        else:
            tq = t0 - rq
            waited = ((tq - end) / 1e9 if tq > end else 0.0) if self.known else NAN
            ready = rq / 1e9 if rq > 0 else 0.0
        end = t0 + dur
        append(((t0 + offset_ns) / 1e9, dur / 1e9, waited, ready))
        if skip is None:
            for gap, dur, rq in zip(it, it, it, strict=False):
                t0 = end + gap
                tq = t0 - rq
                append(
                    (
                        (t0 + offset_ns) / 1e9,
                        dur / 1e9,
                        (tq - end) / 1e9 if tq > end else 0.0,
                        rq / 1e9 if rq > 0 else 0.0,
                    )
                )
                end = t0 + dur
            return out
        for i, (gap, dur, rq) in enumerate(zip(it, it, it, strict=False), 1):
            t0 = end + gap
            if i in skip:
                waited = ready = NAN
            else:
                tq = t0 - rq
                waited = (tq - end) / 1e9 if tq > end else 0.0
                ready = rq / 1e9 if rq > 0 else 0.0
            append(((t0 + offset_ns) / 1e9, dur / 1e9, waited, ready))
            end = t0 + dur
        return out


def _runs(packed: bytearray) -> Iterator[array[int]]:
    """The packed runs of a task, unpacked one at a time."""
    view = memoryview(packed)
    at = 0
    while at < len(view):
        code, n, n_high = _RUN.unpack_from(view, at)
        at += _RUN.size
        data = array(code.decode())
        width = data.itemsize
        half = width // 2
        low = view[at : at + n * half]
        at += n * half
        high = zlib.decompressobj(-zlib.MAX_WBITS).decompress(view[at : at + n_high])
        at += n_high
        raw = bytearray(n * width)
        for k in range(half):
            raw[k::width] = low[k * n : (k + 1) * n]
            raw[half + k :: width] = high[k * n : (k + 1) * n]
        data.frombytes(raw)
        yield data


def plain(steps: Any) -> Any:
    """``[[start, duration, waited, ready], ...]`` with None for unknown (the document's form)."""
    if not isinstance(steps, Steps):
        return steps
    return [(a, b, None if c != c else c, None if d != d else d) for a, b, c, d in steps.rows()]
