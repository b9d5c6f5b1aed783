"""Recovery: the window file of a process that died becomes a crash snapshot, exactly once.

A window file (``windowfile.py``) whose ``flock`` can be taken belongs to a process that is
gone (the kernel dropped its lock at death, whatever killed it); unless it was closed
cleanly (its state says ``closed``; ``CLOS`` in the earlier layout) it is converted to a
stored snapshot of trigger kind ``"crash"``: its records copied as they are (no event is
decoded to write it; a native generation's deltas joined), a header saying what is
known of the end ("process 4711 ended without shutdown while the loop was blocked for 9.8 s
in ``fetch_legacy`` (app.py:41) during GET /report"), then the file is removed. Exactly
once: the recoverer holds the lock while it converts, and checks that the path still names
the inode it locked (another recoverer unlinks it when done; a writer of the earlier
layout replaced its file when it rewrote it) before it does anything.

Who: every live process sharing the directory (its black box's thread, every
``windowfile.SCAN_INTERVAL``), a process at start-up, and ``flightdeck recover DIR``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import time
import zlib
from typing import Any

import orjson

from ..core.events import (
    LOOP_BLOCK_ONGOING,
    REQ_START,
    REQ_START_METHOD,
    REQ_START_PATH,
    REQ_START_RID,
    REQ_START_TID,
    TASK_CREATE,
    TASK_CREATE_CORO,
    TASK_CREATE_REQUEST,
    TASK_CREATE_TID,
)
from . import container
from .document import new_id, rfc3339
from .records import read_varints, unzz
from .windowfile import (
    CLOS,
    EVTS_PREFIX,
    FRAM,
    FRAME,
    FRAME_HEADER,
    GDLT,
    LAYOUT,
    LIVE,
    LIVE_BODY,
    NAME_PATTERN,
    OPEN_EXISTING,
    SLOT,
    SSTA,
    SSTA_PREFIX,
    STALE_TMP,
    STOP_TAG,
    TMP_PREFIX,
    WSTA,
    status_of,
    try_lock,
    windows_dir,
)


def recover(store: Any, skip: str | None = None) -> list[str]:
    """Turn the window file of every dead process under ``store.directory`` into a crash
    snapshot in ``store``; returns their ids. ``skip``: this process's own file."""
    directory = store.directory
    if directory is None:
        return []
    wdir = windows_dir(directory)
    try:
        names = os.listdir(wdir)
    except FileNotFoundError:
        return []
    made: list[str] = []
    for name in names:
        path = os.path.join(wdir, name)
        if path == skip:
            continue
        if name.startswith(TMP_PREFIX):
            _remove_stale_tmp(path)
            continue
        if not NAME_PATTERN.match(name):
            continue
        ident = recover_file(store, path)
        if ident is not None:
            made.append(ident)
    return made


def _remove_stale_tmp(path: str) -> None:
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime > STALE_TMP:
            fd = os.open(path, OPEN_EXISTING)
            try:
                if try_lock(fd):
                    os.unlink(path)
            finally:
                os.close(fd)


def recover_file(store: Any, path: str) -> str | None:
    """The crash snapshot's id made of the window file at ``path``, or None (its process is
    alive, it was closed cleanly, or another recoverer got there first)."""
    try:
        fd = os.open(path, OPEN_EXISTING)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not try_lock(fd):
            return None
        try:
            now_st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed meanwhile (closed, or recovered by another process)
        if (now_st.st_dev, now_st.st_ino) != (st.st_dev, st.st_ino):
            return None  # replaced by its writer's rewrite meanwhile: the writer is alive
        data = read_all(fd, st.st_size)
        ident = None
        try:
            parsed = parse(data)
        except container.ContainerError:
            parsed = None
        if parsed is not None and not parsed.closed:
            pieces, head = parsed.snapshot()
            ident = head["id"]
            store.put_stored(pieces, head)
        os.unlink(path)
        return ident
    finally:
        os.close(fd)


def read_all(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of ``fd`` (fewer at its end), by ``pread``, a MiB at a time."""
    parts = []
    pos = 0
    while pos < size:
        block = os.pread(fd, min(size - pos, 1 << 20), pos)
        if not block:
            break
        parts.append(block)
        pos += len(block)
    return b"".join(parts)


class Parsed:
    """What a window file holds, as its reader found it."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.records: list[tuple[bytes, bytes]] = []
        self.status: dict[str, Any] | None = None
        self.state: dict[str, Any] = {}
        self.closed = False
        #: The native block watch's record: (step start, last seen running, task), or None.
        self.watch: tuple[int, int, int] | None = None
        #: The sequence number of the last frame read (ring layout; 0 otherwise).
        self.last_seq = 0

    def snapshot(self) -> tuple[list[bytes], dict[str, Any]]:
        """The crash snapshot's stored form (pieces) and header."""
        process = self.head.get("process")
        process = process if isinstance(process, dict) else {}
        pid = process.get("pid", "?")
        state = self.state
        t_now = state.get("t_now")
        offset = self.head.get("clock_offset_ns")
        offset = offset if isinstance(offset, int) else 0
        events, trace_ids, status = _scan_records(self.records, self.status)
        t_now = end_time(t_now, self.records)
        records = self.records
        if self.watch is not None:
            state, t_now, extra = _watched(self.watch, state, t_now, records, status)
            if extra is not None:
                records = [*records, extra]
                events += 1
        reason, request = _reason(pid, state, t_now, offset)
        head = {
            "id": new_id(),
            "trigger": {"kind": "crash", "reason": reason, "request": request},
            "trigger_time_ns": t_now,
            "process": process,
            "clock_offset_ns": offset,
            "options": self.head.get("options", {}),
            "core": self.head.get("core", "native"),
            "container": container.VERSION,
            "t_now": t_now,
            "dropped": state.get("dropped", 0) if isinstance(state.get("dropped"), int) else 0,
            "events": events,
            "trace_ids": trace_ids,
            "created_at": rfc3339(time.time()),
        }
        return container.assemble(head, status, records), head


def end_time(t_now: object, records: list[tuple[bytes, bytes]]) -> int:
    """The last time a window file knows of: its writer's clock at the last state written,
    or its newest record's end when later (records are written more often than the state)."""
    last = _last_time(records) or 0
    return max(t_now, last) if isinstance(t_now, int) else last


def parse(data: bytes) -> Parsed:
    """Read a window file: its ring's frames (the longest run of consecutive sequence
    numbers whose checksums hold), or, in the earlier layout (and in a host capture's
    ``PROC`` chunk), its chunks up to the last complete one. Raises ``ContainerError``."""
    head = _head(data)
    if head.get("window_file") == LAYOUT and "ring" in head:
        return parse_ring(data, head)
    return _parse_chunks(data)


def _head(data: bytes) -> dict[str, Any]:
    for tag, raw in container.iter_chunks(data, strict=False):
        return _obj(raw) if tag == container.HEAD else {}
    return {}


def _parse_chunks(data: bytes) -> Parsed:
    out = Parsed()
    pending_status: dict[str, Any] | None = None
    for tag, raw in container.iter_chunks(data, strict=False):
        if tag == STOP_TAG:
            break
        if tag == container.HEAD:
            out.head = _obj(raw)
        elif tag == SSTA:
            pending_status = _obj(raw)
        elif tag in (container.GENR, container.EVTS):
            if not out.records and tag == container.EVTS:
                out.status = pending_status
            out.records.append((tag, raw))
            pending_status = None
        elif tag == WSTA:
            out.state = _obj(raw)
        elif tag == CLOS:
            out.closed = True
    if not out.records and pending_status is not None:
        out.status = pending_status
    out.watch = _watch_record(data)
    return out


# -- the ring (windowfile.py's layout 2) ------------------------------------------------------
_CHUNK = container._CHUNK


def _frame_at(view: memoryview, pos: int, end: int) -> tuple[int, int, bytes, bytes] | None:
    """(end, sequence number, kind, body decompressed) of the frame at ``pos``, or None
    when there is no whole one with a checksum that holds."""
    if end - pos < FRAME_HEADER:
        return None
    tag, flags, length, crc = _CHUNK.unpack_from(view, pos)
    start = pos + _CHUNK.size
    if tag != FRAM or length < FRAME.size or length > end - start:
        return None
    if zlib.crc32(view[start : start + length]) != crc:
        return None
    seq, kind = FRAME.unpack_from(view, start)
    body = bytes(view[start + FRAME.size : start + length])
    if flags & container.ZLIB:
        prefix = {container.EVTS: EVTS_PREFIX.size, SSTA: SSTA_PREFIX.size}.get(kind, 0)
        try:
            inflater = zlib.decompressobj()
            rest = inflater.decompress(body[prefix:], container.MAX_CHUNK)
        except zlib.error:
            return None
        if inflater.unconsumed_tail or not inflater.eof:
            return None
        body = body[:prefix] + rest
    return start + length, seq, kind, body


def frames(data: bytes, start: int, size: int) -> list[tuple[int, bytes, bytes]]:
    """(sequence number, kind, body) of the ring's frames that are whole, oldest first: the
    longest run of consecutive sequence numbers (the newer one of two as long)."""
    view = memoryview(data)
    end = min(len(view), start + size)
    found: dict[int, tuple[bytes, bytes]] = {}
    pos = start
    while pos < end:
        got = _frame_at(view, pos, end)
        if got is not None:
            pos, seq, kind, body = got
            found[seq] = (kind, body)
            continue
        # Not a whole frame here (the head's partial overwrite, a frame being written, the
        # zeros not written yet): the next place that starts like one.
        nxt = data.find(FRAM, pos + 1, end)
        if nxt < 0:
            break
        pos = nxt
    if not found:
        return []
    best: tuple[int, int] = (0, 0)  # (length, last seq)
    run_start = prev = -2
    for seq in sorted(found):
        if seq != prev + 1:
            run_start = seq
        prev = seq
        length = seq - run_start + 1
        if length >= best[0]:
            best = (length, seq)
    length, last = best
    return [(seq, *found[seq]) for seq in range(last - length + 1, last + 1)]


def state_slots(data: bytes, at: int, slot: int) -> dict[str, Any]:
    """The newer of the two state slots whose checksum holds ({} when neither does)."""
    view = memoryview(data)
    best: tuple[int, dict[str, Any]] = (-1, {})
    for i in range(2):
        pos = at + i * slot
        got = _frame_at(view, pos, min(len(view), pos + slot))
        if got is not None and got[2] == WSTA and got[1] > best[0]:
            best = (got[1], _obj(got[3]))
    return best[1]


def parse_ring(data: bytes, head: dict[str, Any]) -> Parsed:
    """A window file of the ring layout. Raises ``ContainerError`` when its header's layout
    is malformed."""
    ring, slots = head.get("ring"), head.get("state")
    if not (
        isinstance(ring, list)
        and isinstance(slots, list)
        and len(ring) == 2
        and len(slots) == 2
        and all(isinstance(v, int) and v >= 0 for v in (*ring, *slots))
    ):
        raise container.ContainerError("window file's header has a malformed layout")
    out = Parsed()
    out.head = head
    out.state = state_slots(data, slots[0], slots[1])
    out.closed = out.state.get("closed") is True
    run = frames(data, ring[0], ring[1])
    out.last_seq = run[-1][0] if run else 0
    live = out.state.get("live")
    live = live if isinstance(live, int) else 0
    for _seq, kind, body in run:
        if kind == LIVE and len(body) == LIVE_BODY.size:
            live = max(live, LIVE_BODY.unpack(body)[0])
    if any(kind == container.EVTS for _, kind, _ in run):
        out.records, out.status = _pure_records(run, live)
    else:
        out.records = _native_records(run, live)
    out.watch = _watch_record(data)
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Gen:
    """A native generation put together from its deltas (``GDLT``)."""

    __slots__ = ("fields", "nstrs", "records", "strings", "whole")

    def __init__(self) -> None:
        self.fields: list[int] = []
        self.nstrs = 0
        self.strings: list[bytes] = []
        self.records: list[bytes] = []
        self.whole = True

    def length(self) -> int:
        return sum(map(len, self.records))

    def add(self, fields: list[int], strings: bytes, records: bytes) -> None:
        _serial, base, _ts, _te, _count, _status, str_from, str_n, _sb, rec_from, _rn = fields
        if str_from != self.nstrs or rec_from != self.length():
            self.whole = False  # its start was overwritten, or a delta is missing
        if self.fields and self.fields[1] != base:
            self.whole = False
        self.fields = fields
        self.nstrs += str_n
        if strings:
            self.strings.append(strings)
        if records:
            self.records.append(records)

    def dump(self) -> bytes:
        """What ``Segment.dump()`` writes for it (``GENR``)."""
        _serial, base, t_start, t_end, count, status_len = self.fields[:6]
        head = b"".join(_varint(v) for v in (base, t_start, t_end, count, status_len, self.nstrs))
        return b"".join([head, *self.strings, _varint(self.length()), *self.records])


def _native_records(run: list[tuple[int, bytes, bytes]], live: int) -> list[tuple[bytes, bytes]]:
    """The ``GENR`` payloads of the generations whose every delta is in the run, oldest
    first, from the window's oldest (``live``) on."""
    gens: dict[int, _Gen] = {}
    whole: dict[int, bytes] = {}  # GENR frames (a native freeze written whole), by base time
    for _seq, kind, body in run:
        if kind == container.GENR:
            try:
                (base,), _ = read_varints(body, 0, 1)
            except ValueError:
                continue
            whole.pop(base, None)
            whole[base] = body  # the later frame of a generation holds more of it
            continue
        if kind != GDLT:
            continue
        try:
            fields, pos = read_varints(body, 0, 11)
        except ValueError:
            continue
        str_bytes, rec_n = fields[8], fields[10]
        if pos + str_bytes + rec_n != len(body):
            continue
        gen = gens.setdefault(fields[0], _Gen())
        gen.add(fields, body[pos : pos + str_bytes], body[pos + str_bytes :])
    if whole:
        return [
            (container.GENR, payload)
            for base, payload in sorted(whole.items())
            if unzz(base) >= live
        ]
    return [
        (container.GENR, gen.dump())
        for serial, gen in sorted(gens.items())
        if gen.whole and serial >= live
    ]


def _pure_records(
    run: list[tuple[int, bytes, bytes]], live: int
) -> tuple[list[tuple[bytes, bytes]], dict[str, Any] | None]:
    """The ``EVTS`` payloads of the longest chain of consecutive event ordinals that ends
    the run, from the oldest status at or after the window's oldest event (``live``) on,
    and that status."""
    chain: list[tuple[int, int, bytes]] = []  # (first ordinal, count, JSON)
    statuses: dict[int, bytes] = {}
    for _seq, kind, body in run:
        if kind == container.EVTS and len(body) >= EVTS_PREFIX.size:
            at, count = EVTS_PREFIX.unpack_from(body, 0)
            if chain and at != chain[-1][0] + chain[-1][1]:
                chain, statuses = [], {s: v for s, v in statuses.items() if s >= at}
            chain.append((at, count, body[EVTS_PREFIX.size :]))
        elif kind == SSTA and len(body) >= SSTA_PREFIX.size:
            (at,) = SSTA_PREFIX.unpack_from(body, 0)
            statuses[at] = body[SSTA_PREFIX.size :]
    if not chain:
        return [], None
    first, end = chain[0][0], chain[-1][0] + chain[-1][1]
    held = sorted(s for s in statuses if first <= s <= end)
    later = [s for s in held if s >= live]
    start = later[0] if later else (held[-1] if held else first)
    status = _obj(statuses[start]) if start in statuses else None
    records: list[tuple[bytes, bytes]] = []
    for at, count, payload in chain:
        if at + count <= start:
            continue
        if at < start:
            try:
                events = orjson.loads(payload)[start - at :]
            except orjson.JSONDecodeError:
                continue
            payload = container.json_bytes(events)
        records.append((container.EVTS, payload))
    return records, status


def _watch_record(data: bytes) -> tuple[int, int, int] | None:
    """The block watch's record in the file's last ``SLOT`` bytes, if one is there whole."""
    if len(data) < SLOT:
        return None
    rec = data[-SLOT:]
    if rec[:5] != b"FDBW\x01":
        return None
    t0, seen, task, check = struct.unpack_from("<qqQI", rec, 8)
    digest = 2166136261
    for byte in rec[:32]:
        digest = ((digest ^ byte) * 16777619) & 0xFFFFFFFF
    if digest != check or t0 <= 0 or seen < t0:
        return None
    return t0, seen, task


def _watched(
    watch: tuple[int, int, int],
    state: dict[str, Any],
    t_now: int,
    records: list[tuple[bytes, bytes]],
    status: dict[str, Any],
) -> tuple[dict[str, Any], int, tuple[bytes, bytes] | None]:
    """The state, end time and extra record that the block watch's record adds.

    The watch saw a task step running past the threshold, last at ``seen``. Later than the
    writer's last write, it is the newest thing known. The watchdog's block in the state is
    the same block when the step began before it, or when the state was written after the
    step began (the loop runs one step at a time, and this one ran on past the write; the
    watchdog's start is a guess, earlier than the step's when its heartbeat was queued
    behind it): then only the end moves. Without one, the
    step held the GIL (the watchdog and the writer could not run): the block is made of the
    watch's record, named after its task and request from the window's records, and added
    to the window as a block in progress (``LOOP_BLOCK_ONGOING``, with no stack).
    """
    t0, seen, task = watch
    if seen <= t_now:
        return state, t_now, None
    block = state.get("block")
    written = state.get("t_now")
    start = block.get("start") if isinstance(block, dict) else None
    if isinstance(start, int) and (t0 <= start or (isinstance(written, int) and t0 <= written)):
        return state, seen, None
    coro, rid, method, path = _task_info(records, status, task)
    request = None
    if isinstance(method, str) and isinstance(path, str):
        request = {"id": rid, "method": method, "path": path}
    if coro == "?":
        site = "a task step that never released the GIL (begun after the file's last write:"
        site += " its task is not in it; no stack could be taken)"
    else:
        site = f"task {coro} (a step that never released the GIL: no stack could be taken)"
    state = {**state, "block": {"start": t0, "site": site, "request": request}}
    label = f"{method} {path} ({coro})" if request is not None else f"task {coro}"
    event = [LOOP_BLOCK_ONGOING, t0, seen, label, [], rid if isinstance(rid, int) else None]
    return state, seen, (container.EVTS, container.json_bytes([event]))


def _task_info(
    records: list[tuple[bytes, bytes]], status: dict[str, Any], task: int
) -> tuple[str, object, object, object]:
    """(coroutine, request id, method, path) of the task whose raw id is ``task``."""
    coro: str = "?"
    rid: object = None
    starts: dict[object, Any] = {}
    events: list[Any] = list(status.get("tasks") or []) + list(status.get("requests") or [])
    for tag, payload in records:
        try:
            if tag == container.GENR:
                events.extend(container._generation(payload).events())
            else:
                events.extend(orjson.loads(payload))
        except Exception:
            continue
    for e in events:
        if not isinstance(e, (list, tuple)) or not e:
            continue
        if e[0] == TASK_CREATE and len(e) == 8 and e[TASK_CREATE_TID] == task:
            coro = str(e[TASK_CREATE_CORO])
            rid = e[TASK_CREATE_REQUEST]
        elif e[0] == REQ_START and len(e) == 11:
            starts[e[REQ_START_RID]] = e
            if e[REQ_START_TID] == task and rid is None:
                rid = e[REQ_START_RID]
    start = starts.get(rid)
    if start is None:
        return coro, rid, None, None
    return coro, rid, start[REQ_START_METHOD], start[REQ_START_PATH]


def _obj(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _generation(payload: bytes) -> Any:
    return container._generation(payload)


def _scan_records(
    records: list[tuple[bytes, bytes]], status: dict[str, Any] | None
) -> tuple[int, list[str], dict[str, Any]]:
    """Events held, the trace ids of their requests, and the status at the oldest."""
    count = 0
    ids: dict[str, None] = {}
    first_status: dict[str, Any] | None = status
    for i, (tag, payload) in enumerate(records):
        try:
            if tag == container.GENR:
                gen = _generation(payload)
                count += gen.count
                for _rid, trace in gen.requests():
                    if isinstance(trace, str) and len(ids) < container.MAX_TRACE_IDS:
                        ids[trace] = None
                if i == 0 and first_status is None:
                    tasks, requests = gen.status()
                    first_status = status_of(tasks, requests)
            else:
                events = orjson.loads(payload)
                count += len(events)
                for e in events:
                    trace = e[10] if e[0] == 8 and len(e) == 11 else None
                    if isinstance(trace, str) and len(ids) < container.MAX_TRACE_IDS:
                        ids[trace] = None
        except Exception:
            continue  # read_document reports a record it cannot decode
    return count, list(ids), first_status or {"tasks": [], "requests": []}


def _last_time(records: list[tuple[bytes, bytes]]) -> int | None:
    if not records:
        return None
    tag, payload = records[-1]
    try:
        if tag == container.GENR:
            return int(_generation(payload).t_end)
        events = orjson.loads(payload)
        return max(int(e[1]) for e in events) if events else None
    except Exception:
        return None


def _reason(
    pid: object, state: dict[str, Any], t_now: int, offset: int
) -> tuple[str, dict[str, Any] | None]:
    """What is known of the end, and the request the loop was blocked in (if any)."""
    block = state.get("block")
    when = time.strftime("%H:%M:%S", time.gmtime((t_now + offset) / 1e9)) if t_now else "?"
    if isinstance(block, dict) and isinstance(block.get("start"), int):
        seconds = max(0, t_now - block["start"]) / 1e9
        reason = (
            f"process {pid} ended without shutdown while the loop was blocked for {seconds:.1f} s"
        )
        site, label = block.get("site"), block.get("request")
        if isinstance(site, str) and site:
            reason += f" in {site}"
        request = None
        if isinstance(label, dict):
            method, path = label.get("method"), label.get("path")
            if isinstance(method, str) and isinstance(path, str):
                reason += f" during {method} {path}"
                request = {"id": label.get("id"), "method": method, "path": path}
        return reason + f" (last recorded at {when} UTC)", request
    reason = f"process {pid} ended without shutdown"
    request = None
    oldest = state.get("oldest")
    count = state.get("inflight")
    if isinstance(count, int) and count > 0 and isinstance(oldest, list) and oldest:
        first = oldest[0]
        if isinstance(first, list) and len(first) == 4 and isinstance(first[3], int):
            rid, method, path, t0 = first
            plural = "s" if count != 1 else ""
            reason += f" with {count} request{plural} in flight"
            if isinstance(method, str) and isinstance(path, str):
                reason += f" (the oldest {method} {path}, for {max(0, t_now - t0) / 1e9:.1f} s)"
                request = {"id": rid, "method": method, "path": path}
    return reason + f" (last recorded at {when} UTC)", request
