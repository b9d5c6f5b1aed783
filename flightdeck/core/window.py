"""The rolling window: a lock-free append buffer drained into sealed, compacted segments.

The hot path is a bound ``deque.append`` of a tuple (thread-safe under the GIL, no lock). A
background thread drains that deque into the open segment; a segment is sealed when it is
old or large enough, encoded as the stored form's ``EVTS`` payload (a JSON array of events;
zlib'd once the window is past half its budget, about 15 bytes an event), and old segments
are evicted by age (``window``) and by bytes (``max_bytes``, which wins). A capture writes a
sealed segment's bytes as they are (``snapshot/container.py``): nothing sealed is decoded or
encoded again to capture. Like a Go trace generation, every segment carries the status of
every task and request alive when it opened, so a snapshot never refers to something it
lacks. The status tables are derived from the sealed events themselves (creations minus
completions), off the event loop; a copy of a dict that the loop mutates would race with the
events drained alongside it.
"""

from __future__ import annotations

import json
import sys
import threading
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any, Protocol

from . import events as ev

Event = tuple[Any, ...]

#: Rough in-memory cost of an event that is not compacted yet (a tuple and its ints).
EST_OPEN_EVENT_BYTES = 160
#: Rough cost of one entry of a status table (dict slot; the tuple is shared with its event).
EST_STATUS_BYTES = 120
#: Fixed cost of a request in flight on top of its status slot: its REQ_START tuple and ints,
#: and the middleware's live entry (a tuple, the request's state, a dict slot). Its strings
#: (path, query, headers, trace id) are costed by their size: see ``request_status_bytes``.
EST_REQUEST_BYTES = 480
#: The live entry's copy of a request's path is cut to this many characters (its query is
#: not kept) when the two together are longer: see ``live_start``.
LIVE_TEXT_MAX = 256
#: Hard cap on the append buffer, a safety net should the drain thread starve.
BUFFER_MAXLEN = 1 << 20
#: Bound of each status table, should completions go missing (dropped, or never recorded).
MAX_STATUS = 200_000

#: Encodes a sealed segment's events as the stored form's ``EVTS`` payload (JSON bytes);
#: raises ``TypeError`` or ``ValueError`` for an event JSON cannot hold (then dropped).
Encoder = Callable[[list["Event"]], bytes]

_strict_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def encode_events(events: list[Event]) -> bytes:
    """The standard library's encoder (the recorder passes a faster one, the same JSON)."""
    return _strict_json(events).encode()


def _tupled(value: Any) -> Any:
    if type(value) is list:
        return tuple([_tupled(v) if type(v) is list else v for v in value])
    return value


def decode_events(raw: bytes) -> list[Event]:
    """Events from an ``EVTS`` payload the window encoded: JSON arrays back to tuples."""
    value = json.loads(raw)
    if type(value) is not list:
        raise ValueError("not a list of events")
    return [_tupled(e) for e in value]


class Traces:
    """The ``(rid, trace_id)`` of a sealed segment's ``REQ_START`` events, in order, compact.

    A capture lists the window's trace ids in its header without decoding a segment. A W3C
    trace id (32 lowercase hex digits) takes 16 bytes and its request id 8; anything else
    (a custom emitter's) is kept as it is, beside.
    """

    __slots__ = ("ids", "nbytes", "odd", "rids")

    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        self.odd: dict[int, tuple[Any, Any]] = {}
        if not self._all_plain(pairs):
            self._mixed(pairs)
        # Its arrays' and their objects' overhead, 24 bytes a request, what the odd ones hold.
        self.nbytes = (
            200 + len(self.rids) * 24 + sum(_value_bytes(p) for p in self.odd.values())
            if pairs
            else 0
        )

    def _all_plain(self, pairs: list[tuple[Any, Any]]) -> bool:
        """Every pair an int request id and a W3C trace id: packed in one go (the usual)."""
        rids = [p[0] for p in pairs]
        tids = [p[1] for p in pairs]
        # The checks in C (map), not a Python loop: a busy window seals thousands a second.
        if set(map(type, rids)) != {int} or set(map(type, tids)) != {str}:
            return False
        if set(map(len, tids)) != {32}:
            return False
        joined = "".join(tids)
        try:
            ids = bytes.fromhex(joined)
            packed = array("q", rids)
        except (ValueError, OverflowError):
            return False
        if ids.hex() != joined:  # uppercase: it would not read back the same
            return False
        self.rids, self.ids = packed, ids
        return True

    def _mixed(self, pairs: list[tuple[Any, Any]]) -> None:
        self.rids = array("q")
        ids = bytearray()
        for rid, tid in pairs:
            packed = _hex16(tid)
            if packed is None or type(rid) is not int or not -(1 << 63) <= rid < 1 << 63:
                self.odd[len(self.rids)] = (rid, tid)
                self.rids.append(0)
                ids += bytes(16)
            else:
                self.rids.append(rid)
                ids += packed
        self.ids = bytes(ids)

    def __len__(self) -> int:
        return len(self.rids)

    def pairs(self) -> Iterator[tuple[Any, Any]]:
        ids, odd = self.ids, self.odd
        for i, rid in enumerate(self.rids):
            pair = odd.get(i) if odd else None
            yield pair if pair is not None else (rid, ids[16 * i : 16 * i + 16].hex())

    def find(self, rid: object) -> Any:
        """The trace id of request ``rid`` here (its last), or None."""
        if self.odd or type(rid) is not int:
            found = None
            for r, tid in self.pairs():
                if r == rid:
                    found = tid
            return found
        if rid not in self.rids:  # a scan in C
            return None
        i = len(self.rids) - 1 - self.rids[::-1].index(rid)
        return self.ids[16 * i : 16 * i + 16].hex()


def _hex16(tid: object) -> bytes | None:
    if type(tid) is not str or len(tid) != 32:
        return None
    try:
        packed = bytes.fromhex(tid)
    except ValueError:
        return None
    return packed if packed.hex() == tid else None  # lowercase only: it reads back the same


NO_TRACES = Traces([])


@dataclass(slots=True)
class Segment:
    """A sealed run of events, held as the stored form's ``EVTS`` chunk payload."""

    t_start: int
    t_end: int
    count: int
    #: The events as a JSON array (``Encoder``), zlib'd when ``compressed``.
    data: bytes
    tasks: dict[int, Event]
    requests: dict[int, Event]
    #: zlib over the JSON; done only under memory pressure (see Window._compress).
    compressed: bool = False
    #: What its status tables hold (``status_bytes``), computed once when sealed.
    status_nbytes: int = -1
    #: Its requests' trace ids, for a capture's header.
    traces: Traces = NO_TRACES
    #: crc32 of ``data``, computed once (when compressed, else at the first capture).
    crc: int = -1

    def __post_init__(self) -> None:
        if self.status_nbytes < 0:
            self.status_nbytes = status_bytes(self.tasks, self.requests)

    @property
    def nbytes(self) -> int:
        return len(self.data) + self.status_nbytes + self.traces.nbytes

    def events(self) -> list[Event]:
        raw = zlib.decompress(self.data) if self.compressed else self.data
        return decode_events(raw)

    def stored(self) -> tuple[bool, int, bytes]:
        """``(compressed, crc32, payload)``: the ``EVTS`` chunk a capture writes, as held."""
        if self.crc < 0:
            # Benign race: two captures at once compute the same value.
            self.crc = zlib.crc32(self.data)
        return self.compressed, self.crc, self.data


def _value_bytes(v: Any, depth: int = 0) -> int:
    if type(v) is str:
        return sys.getsizeof(v)
    if type(v) is tuple and depth < 2:
        return sys.getsizeof(v) + sum(_value_bytes(x, depth + 1) for x in v)
    return 0  # ints and None: in the fixed part


def request_status_bytes(e: Event) -> int:
    """What a request in flight really holds: a fixed part, plus the strings of its REQ_START.

    Counted against ``max_bytes`` while its entry is in the status tables (both cores; the
    native one estimates string sizes the same way in C). Computed once per request.
    """
    return EST_STATUS_BYTES + EST_REQUEST_BYTES + sum(_value_bytes(v) for v in e[3:])


def live_start(e: Event) -> Event:
    """The REQ_START to keep in a live entry: ``e`` itself unless its path and query are long.

    Then a copy, with the path cut to ``LIVE_TEXT_MAX`` characters and no query: the live
    table (labels, in-flight triggers) needs neither in full, and a request past the status
    tables' share of ``max_bytes`` must not hold kilobytes outside the bound.
    """
    path, query = e[ev.REQ_START_PATH], e[ev.REQ_START_QUERY]
    if type(path) is not str or type(query) is not str:
        return e
    if len(path) + len(query) <= LIVE_TEXT_MAX:
        return e
    q = ev.REQ_START_QUERY
    return (*e[: ev.REQ_START_PATH], path[:LIVE_TEXT_MAX], "", *e[q + 1 :])


def advance_status(
    tasks: dict[int, Event],
    requests: dict[int, Event],
    events: list[Event],
    limit: int = MAX_STATUS,
    limit_bytes: int = 1 << 62,
    req_bytes: int | None = None,
    traces: list[tuple[Any, Any]] | None = None,
) -> tuple[dict[int, Event], dict[int, Event], int]:
    """The status tables after ``events``: what was alive before, plus creations, minus ends.

    Each table holds at most ``limit`` entries, and the requests at most ``limit_bytes``
    (``request_status_bytes`` each): the window's byte bound must hold even with more tasks
    or requests alive than it can describe; what did not fit is not described. Returns the
    tables and what their requests hold; ``req_bytes`` is that of ``requests`` when known
    (only the events' requests are costed then, not every one alive). ``traces``, when
    given, gets the ``(rid, trace_id)`` of each of the events' ``REQ_START`` with a trace id.
    """
    tasks = dict(tasks)
    requests = dict(requests)
    if req_bytes is None:
        req_bytes = sum(request_status_bytes(e) for e in requests.values())
    for e in events:
        k = e[0]
        if k == ev.TASK_CREATE:
            if len(tasks) < limit:
                tasks[e[ev.TASK_CREATE_TID]] = e
        elif k == ev.TASK_DONE:
            tasks.pop(e[ev.TASK_DONE_TID], None)
        elif k == ev.REQ_START:
            if traces is not None and len(e) > ev.REQ_START_TRACE_ID:
                tid = e[ev.REQ_START_TRACE_ID]
                if tid is not None:
                    traces.append((e[ev.REQ_START_RID], tid))
            cost = request_status_bytes(e)
            if len(requests) < limit and req_bytes + cost <= limit_bytes:
                gone = requests.get(e[ev.REQ_START_RID])
                if gone is not None:
                    req_bytes -= request_status_bytes(gone)
                requests[e[ev.REQ_START_RID]] = e
                req_bytes += cost
        elif k == ev.REQ_END:
            gone = requests.pop(e[ev.REQ_END_RID], None)
            if gone is not None:
                req_bytes -= request_status_bytes(gone)
    return tasks, requests, req_bytes


def status_bytes(tasks: dict[int, Event], requests: dict[int, Event]) -> int:
    """What status tables hold: a slot per task, each request by ``request_status_bytes``."""
    return len(tasks) * EST_STATUS_BYTES + sum(request_status_bytes(e) for e in requests.values())


class Sealed(Protocol):
    """A sealed run of events: a pure ``Segment`` or a native generation."""

    @property
    def count(self) -> int: ...

    def events(self) -> list[Event]: ...


@dataclass(slots=True)
class Frozen:
    """What ``Window.freeze`` hands to the snapshot builder: immutable, cheap to take."""

    segments: Sequence[Sealed]
    tail: list[Event]
    tasks: dict[int, Event]
    requests: dict[int, Event]
    dropped: int
    t_now: int
    extra: dict[str, Any] = field(default_factory=dict)

    def iter_segments(self, release: bool = False) -> Iterator[list[Event]]:
        """Each segment's events, oldest first, decoded one at a time (then the tail).

        With ``release``, this view lets go of each segment once decoded (and of the tail),
        so it cannot be read again: while a capture builds, the window keeps recording and
        evicting, and an evicted segment is freed only once no view holds it.
        """
        if not release:
            for s in self.segments:
                yield s.events()
            yield self.tail
            return
        pending = list(self.segments)
        pending.reverse()
        self.segments = []
        while pending:
            events = pending.pop().events()
            yield events
            del events
        tail, self.tail = self.tail, []
        yield tail


class Window:
    """Bounded storage of recent events. ``append`` is the only hot-path member."""

    def __init__(
        self,
        window_ns: int,
        max_bytes: int,
        # Small segments: sealing (encoding, status tables) holds the GIL, and a long hold is a
        # latency spike in the app (p99 went from 6.9 ms to 2.7 ms going from 32k to 4k).
        segment_events: int = 4096,
        segment_ns: int = 1_000_000_000,
        clock: Callable[[], int] = perf_counter_ns,
        encode: Encoder = encode_events,
    ) -> None:
        self.window_ns = window_ns
        self.max_bytes = max_bytes
        self.segment_events = segment_events
        self.segment_ns = segment_ns
        self.clock = clock
        self._encode = encode
        # The append buffer's hard cap: a quarter of the byte budget (at least 64 events), kept
        # free by eviction (see ``_evict``), so that a burst between two drains cannot take
        # the window past ``max_bytes``; what a burst pushes out is counted as an overflow.
        self.buffer_maxlen = min(BUFFER_MAXLEN, max(64, max_bytes // (4 * EST_OPEN_EVENT_BYTES)))
        self._buffer: deque[Event] = deque(maxlen=self.buffer_maxlen)
        #: The hot path: append one event tuple. Thread-safe, never blocks.
        self.append: Callable[[Event], None] = self._buffer.append
        self._lock = threading.Lock()
        # Serializes maintain(): two concurrent seals would reorder segments and clobber
        # ``_sealing``. Never taken on the hot path nor by freeze().
        self._maintain_lock = threading.Lock()
        self._open: list[Event] = []
        self._open_t0 = 0
        self._sealing: list[Event] = []
        self._sealing_tables: tuple[dict[int, Event], dict[int, Event]] = ({}, {})
        self._segments: deque[Segment] = deque()
        self._segment_bytes = 0
        #: What the instrumentation knows is alive now (for labels; mutated by the loop).
        self.live_tasks: dict[int, Event] = {}
        #: Requests in flight: ``rid -> (REQ_START event, scope, state)`` (the middleware's;
        #: the event bounded by ``window.live_start``).
        self.live_requests: dict[int, tuple[Any, ...]] = {}
        #: Status after every sealed event: the tables of the next segment to seal.
        self._next_tables: tuple[dict[int, Event], dict[int, Event]] = ({}, {})
        self._next_status_bytes = 0
        self.recorded = 0
        self.evicted = 0
        self.dropped = 0
        self.overflows = 0
        self.seal_errors = 0
        self.sealed = 0
        #: The last drain found the buffer a quarter full or more: drain again soon.
        self.pressure = False

    # -- accounting ---------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Estimated bytes held: compacted segments plus events not compacted yet."""
        pending = len(self._open) + len(self._sealing) + len(self._buffer)
        status = self._next_status_bytes
        return self._segment_bytes + pending * EST_OPEN_EVENT_BYTES + status

    @property
    def events(self) -> int:
        """Events currently held in the window."""
        return (
            # list() copies atomically under the GIL; the drain thread mutates the deque.
            sum(s.count for s in list(self._segments))
            + len(self._open)
            + len(self._sealing)
            + len(self._buffer)
        )

    @property
    def segments(self) -> int:
        return len(self._segments)

    # -- background work ----------------------------------------------------------------
    def _drain_locked(self) -> None:
        buf = self._buffer
        n = len(buf)
        self.pressure = n * 4 >= self.buffer_maxlen
        if not n:
            return
        if n >= self.buffer_maxlen:
            # The buffer was full, so its oldest events were pushed out unseen.
            self.overflows += 1
            self.dropped += 1
        if not self._open:
            self._open_t0 = self.clock()
        pop = buf.popleft
        self._open.extend([pop() for _ in range(n)])
        self.recorded += n

    def maintain(self, force_seal: bool = False) -> None:
        """Drain the append buffer, seal and compact a segment when due, evict old ones.

        Called periodically from the recorder's thread (never from the event loop).
        """
        with self._maintain_lock:
            self._maintain(force_seal)
            self._compress()
            self._evict()

    def _compress(self) -> None:
        """Compress sealed segments, oldest first, while the window is past half its budget.

        The JSON takes ~85 bytes an event, zlib brings it to ~15 but costs about twice as
        much CPU as encoding it: a window with room to spare skips it.
        """
        while True:
            with self._lock:
                if self.nbytes <= self.max_bytes // 2:
                    return
                seg = next((s for s in self._segments if not s.compressed), None)
            if seg is None:
                return
            data = zlib.compress(seg.data, 1)
            packed = Segment(
                seg.t_start,
                seg.t_end,
                seg.count,
                data,
                seg.tasks,
                seg.requests,
                True,
                seg.status_nbytes,
                seg.traces,
                zlib.crc32(data),  # ~15 bytes an event: nothing next to the compression
            )
            with self._lock:
                # Segments are immutable (a freeze may hold this one): swap in a new one.
                for i, current in enumerate(self._segments):
                    if current is seg:
                        self._segments[i] = packed
                        self._segment_bytes += packed.nbytes - seg.nbytes
                        break

    def _maintain(self, force_seal: bool) -> None:
        with self._lock:
            self._drain_locked()
            now = self.clock()
            open_ = self._open
            due = bool(open_) and (
                force_seal
                or len(open_) >= self.segment_events
                or now - self._open_t0 >= self.segment_ns
                or len(open_) * EST_OPEN_EVENT_BYTES >= self.max_bytes // 8
            )
            if not due:
                return
            self._sealing = open_
            self._open = []
            tasks, requests = self._sealing_tables = self._next_tables
            tables_bytes = self._next_status_bytes
            req_bytes = tables_bytes - len(tasks) * EST_STATUS_BYTES
            t0 = self._open_t0
        # The expensive part, outside the lock: freeze() sees these events in ``_sealing``.
        data: bytes | None = None
        try:
            data = self._encode(open_)
        except (ValueError, TypeError, RecursionError):
            self.seal_errors += 1
        # Status tables get at most an eighth of the budget: they are copied per segment.
        limit = max(64, min(MAX_STATUS, self.max_bytes // (8 * EST_STATUS_BYTES)))
        pairs: list[tuple[Any, Any]] = []
        before = tasks, requests
        tasks, requests, req_bytes = advance_status(
            tasks, requests, open_, limit, self.max_bytes // 8, req_bytes, pairs
        )
        seg: Segment | None = None
        if data is not None:
            traces = Traces(pairs) if pairs else NO_TRACES
            seg = Segment(t0, now, len(open_), data, *before, False, tables_bytes, traces)
        after_bytes = len(tasks) * EST_STATUS_BYTES + req_bytes
        with self._lock:
            self._sealing = []
            self._next_tables = tasks, requests
            self._next_status_bytes = after_bytes
            if seg is None:
                self.dropped += len(open_)
            else:
                self._segments.append(seg)
                self._segment_bytes += seg.nbytes
                self.sealed += 1
                # Room for it at once, under the same lock: evicting only at the end of
                # maintain() let a reader see the new segment and the old ones together
                # (stats.bytes up to one segment past max_bytes while compress ran).
                self._evict_locked()

    def _evict(self) -> None:
        with self._lock:
            self._evict_locked()

    def _evict_locked(self) -> None:
        now = self.clock()
        horizon = now - self.window_ns
        segs = self._segments
        # Room for the append buffer to fill up before the next drain.
        headroom = (self.buffer_maxlen - len(self._buffer)) * EST_OPEN_EVENT_BYTES
        while segs:
            oldest = segs[0]
            nbytes = self.nbytes
            if oldest.t_end < horizon:
                self.evicted += oldest.count
            elif nbytes > self.max_bytes or (nbytes + headroom > self.max_bytes and len(segs) > 1):
                # Younger than the window but over budget: max_bytes wins; count it.
                self.dropped += oldest.count
            else:
                break
            segs.popleft()
            self._segment_bytes -= oldest.nbytes

    def freeze(self) -> Frozen:
        """Take an immutable view of the window. Cost: a drain and a few list copies."""
        with self._lock:
            self._drain_locked()
            segs = list(self._segments)
            tail = list(self._sealing) + list(self._open)
            # The status of the oldest event held; the tables are never mutated once made.
            if segs:
                tasks, requests = segs[0].tasks, segs[0].requests
            elif self._sealing:
                tasks, requests = self._sealing_tables
            else:
                tasks, requests = self._next_tables
            return Frozen(segs, tail, tasks, requests, self.dropped, self.clock())

    def after_fork(self) -> None:
        """In a forked child: fresh locks (the parent's may have been held), an empty window."""
        self._lock = threading.Lock()
        self._maintain_lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._buffer.clear()
            self._open = []
            self._sealing = []
            self._segments.clear()
            self._segment_bytes = 0
            self._next_tables = ({}, {})
            self._next_status_bytes = 0
            self.live_tasks.clear()
            self.live_requests.clear()

    def last_event_time(self) -> int | None:
        """When the most recent event ended (any thread may ask)."""
        try:
            e = self._buffer[-1]
        except IndexError:
            with self._lock:
                if not self._open:
                    return None
                e = self._open[-1]
        return ev.end_time(e)
