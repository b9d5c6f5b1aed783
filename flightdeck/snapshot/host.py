"""One capture across every process sharing a snapshot directory (``scope="host"``).

Capturing: every live recording process keeps its window in a file under ``DIR/windows/``
(``windowfile.py``). A host capture writes the capturing process's own stored form as any
capture does, and after its records one ``PROC`` chunk per other live process: that
process's window file as it stands (its ring's frames up to the last whole one, as the
earlier layout's chunks: ``_read_ring``), copied without decoding an event. A file that
cannot be read is named in a ``PSKP`` chunk instead (JSON ``{pid, file, error}``) and never
fails the capture. A process is live while it holds its file's ``flock``: the capture only
probes it with a shared lock that it lets go of at once (a dead process's file is left to
the recovery, which makes it a crash snapshot of its own), and never deletes anything.

Reading (``container.read_document``, outside the app): each ``PROC`` chunk is built into
that process's document as a crash recovery would build it (``recovery.parse``), then the
documents are merged (:func:`merge`): ``processes`` lists each process's ``process`` object
(the capturing one first), every task, request and loop entry (and event) carries ``pid``,
and task and request ids are made unique by a per-process offset (:func:`id_stride`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from . import container
from .windowfile import (
    GONE,
    LAYOUT,
    NAME_PATTERN,
    SSTA,
    STOP_TAG,
    TMP_PREFIX,
    WSTA,
    windows_dir,
)

#: Chunk tags of a host snapshot, after the capturing process's own records: another
#: process's window file up to its last complete chunk, and a process whose window file
#: could not be read (JSON ``{pid, file, error}``).
PROC, PSKP = container.PROC, container.PSKP
#: At most this many bytes are read of one process's window file (each is bounded by its
#: own ``max_bytes`` already, and ``windowfile.OVERHEAD``).
MAX_PEER_BYTES = 512 << 20
#: Reads of a window file torn by its writer's write at that moment, before giving up on
#: the torn part (the writer writes every 50 ms or 0.25 s, each write takes milliseconds).
TORN_RETRIES = 3
_HEADER = container._CHUNK
_OPEN_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
#: Task and request ids of the n-th process (the capturing one is the 0th, unchanged) are
#: offset by n times the stride: a power of ten above every id of every process.
MIN_STRIDE = 1_000_000


class Peer:
    """Another process's window file, found live when the capture began."""

    __slots__ = ("fd", "name", "path", "pid", "process")

    def __init__(self, path: str, fd: int, process: dict[str, Any]) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.fd = fd
        self.process = process
        pid = process.get("pid")
        self.pid = pid if isinstance(pid, int) else _pid_of(self.name)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _pid_of(name: str) -> int:
    try:
        return int(name[: -len(".fdk")].rsplit("-", 2)[1])
    except (IndexError, ValueError):
        return 0


def find_peers(directory: str, own: str | None) -> tuple[list[Peer], list[dict[str, Any]]]:
    """The live processes recording under ``directory`` but this one (``own``: its window
    file), and the files that could not be read (``{pid, file, error}``)."""
    wdir = windows_dir(directory)
    try:
        names = sorted(os.listdir(wdir))
    except OSError:
        return [], []
    peers: list[Peer] = []
    skipped: list[dict[str, Any]] = []
    for name in names:
        path = os.path.join(wdir, name)
        if path == own or name.startswith(TMP_PREFIX) or not NAME_PATTERN.match(name):
            continue
        try:
            peer = _open_live(path)
        except (OSError, container.ContainerError, ValueError) as exc:
            skipped.append(skip_note(_pid_of(name), name, exc))
            continue
        if peer is not None:
            peers.append(peer)
    return peers, skipped


def skip_note(pid: int, name: str, exc: BaseException | str) -> dict[str, Any]:
    error = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    return {"pid": pid, "file": name, "error": error[:300]}


def _open_live(path: str) -> Peer | None:
    """The file at ``path`` opened, if a live process holds it (None: it ended)."""
    for _ in range(3):
        try:
            fd = os.open(path, _OPEN_READ)
        except FileNotFoundError:
            return None  # removed meanwhile: its process ended cleanly, or was recovered
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if not _held(fd):
                # Nobody holds it: its process ended (the recovery makes it a crash
                # snapshot), or its writer replaced it with a rewrite just now.
                try:
                    now = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    os.close(fd)
                    return None
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    os.close(fd)
                    continue  # rewritten: the new file is the live one
                os.close(fd)
                return None
            process = _process_of(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return Peer(path, fd, process)
    return None


def _held(fd: int) -> bool:
    """Whether a process holds the file's lock (probed with a shared lock, let go at once)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _head_of(fd: int) -> dict[str, Any]:
    """A window file's ``HEAD``."""
    first = os.pread(fd, len(container.PREAMBLE) + _HEADER.size, 0)
    if len(first) < len(container.PREAMBLE) + _HEADER.size:
        raise container.ContainerError("window file too short for its header")
    tag, _flags, length, _crc = _HEADER.unpack_from(first, len(container.PREAMBLE))
    if tag != container.HEAD or length > 1 << 20:
        raise container.ContainerError("window file does not start with its header")
    data = os.pread(fd, len(first) + length, 0)
    return container.read_header(data)


def _process_of(fd: int) -> dict[str, Any]:
    """The ``process`` object in a window file's ``HEAD``."""
    head = _head_of(fd)
    process = head.get("process")
    if not isinstance(process, dict):
        raise container.ContainerError("window file's header names no process")
    return process


def read_window(fd: int, limit: int = MAX_PEER_BYTES) -> tuple[list[memoryview], int, int]:
    """A window file as the pieces of a stored form ``iter_chunks(strict=False)`` reads,
    their length and their crc32. The ring layout: ``_read_ring``. The earlier layout: its
    chunks up to the last complete one, ``GONE`` chunks left out (views of one read of the
    file); a chunk the writer was writing at that moment fails its checksum: read again, up
    to ``TORN_RETRIES`` times.

    There, only the last ``CHECKED`` chunks are checked here: the writer appends at the end and
    rewrites only what it wrote last (the open generation, its state), so nothing before
    them can be half written (an evicted chunk's tag becomes ``GONE`` in place; its payload
    and checksum stay). The reader checks every chunk again when it converts. Few calls
    that let go of the GIL (a read per MiB, a checksum per run of chunks): a capture
    thread waits for the GIL after each, against a busy loop.
    """
    head = _head_of(fd)
    if head.get("window_file") == LAYOUT and "ring" in head:
        return _read_ring(fd, head, limit)
    best: tuple[list[memoryview], int, int] = ([], 0, 0)
    for _ in range(TORN_RETRIES):
        pieces, length, crc, torn = _read_once(fd, limit)
        if not torn:
            best = (pieces, length, crc)  # whole: whatever an earlier, torn read held
            break
        if length > best[1]:
            best = (pieces, length, crc)
    if best[1] <= len(container.PREAMBLE):
        raise container.ContainerError("window file holds no readable chunk")
    return best


#: The last chunks of a window file checked when it is read (see ``read_window``).
CHECKED = 8
_BLOCK = 1 << 20


def _read_once(fd: int, limit: int) -> tuple[list[memoryview], int, int, bool]:
    size = min(os.fstat(fd).st_size, limit)
    pre = len(container.PREAMBLE)
    buf = bytearray()

    def have(n: int) -> bool:
        while len(buf) < n:
            block = os.pread(fd, min(max(_BLOCK, n - len(buf)), size - len(buf)), len(buf))
            if not block:
                return False
            buf.extend(block)
        return True

    if not have(pre) or bytes(buf[: len(container.MAGIC)]) != container.MAGIC:
        raise container.ContainerError("not a window file (bad magic)")
    chunks: list[tuple[int, int, bytes, int]] = []  # (start, end, tag, crc)
    pos = pre
    while have(pos + _HEADER.size):  # the chunks, by their headers, up to the end marker
        tag, _flags, length, crc = _HEADER.unpack_from(buf, pos)
        end = pos + _HEADER.size + length
        if tag == STOP_TAG or end > size or not have(end):
            break
        chunks.append((pos, end, tag, crc))
        pos = end
    data = memoryview(buf)
    torn = False
    for i in range(max(0, len(chunks) - CHECKED), len(chunks)):
        start, end, _tag, crc = chunks[i]
        if zlib.crc32(data[start + _HEADER.size : end]) != crc:
            del chunks[i:]  # torn by a write in progress
            torn = True
            break
    # Runs of adjacent chunks that are kept: the preamble and HEAD, then (the evicted,
    # oldest generations skipped) the rest.
    runs: list[list[int]] = [[0, pre]]
    for start, end, tag, _crc in chunks:
        if tag == GONE:
            continue
        if runs[-1][1] == start:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    pieces = []
    crc = 0
    total = 0
    for start, end in runs:
        run = data[start:end]
        crc = zlib.crc32(run, crc)
        total += end - start
        pieces += [run[i : i + _BLOCK] for i in range(0, end - start, _BLOCK)]
    return pieces, total, crc, torn


def _read_ring(fd: int, head: dict[str, Any], limit: int) -> tuple[list[memoryview], int, int]:
    """A ring-layout window file (``windowfile.py``) as the chunks of the earlier layout
    (what ``recovery.parse`` reads in a ``PROC`` chunk): its ``HEAD``, the status, each
    generation's records (its deltas joined) and the writer's state, copied, never decoded.
    The file is read whole with ``pread``; a read that missed frames the writer wrote
    meanwhile (its run ends before the state it read says) is taken again, up to
    ``TORN_RETRIES`` times."""
    from . import recovery

    size = os.fstat(fd).st_size
    if size > limit:
        raise container.ContainerError(f"window file of {size} bytes is past the limit")
    best: recovery.Parsed | None = None
    for _ in range(TORN_RETRIES):
        data = recovery.read_all(fd, size)
        parsed = recovery.parse_ring(data, head)
        del data
        if best is None or len(parsed.records) >= len(best.records):
            best = parsed
        seq = parsed.state.get("seq")
        if not isinstance(seq, int) or parsed.last_seq >= seq:
            break
    assert best is not None
    plain = {k: v for k, v in head.items() if k not in ("ring", "state")}
    plain["window_file"] = 1
    chunks = [container.PREAMBLE, container.chunk(container.HEAD, container.json_bytes(plain))]
    if best.status is not None:
        chunks.append(container.chunk(SSTA, container.json_bytes(best.status)))
    chunks += [container.chunk(tag, payload) for tag, payload in best.records]
    chunks.append(container.chunk(WSTA, container.json_bytes(best.state)))
    crc = 0
    total = 0
    for piece in chunks:
        crc = zlib.crc32(piece, crc)
        total += len(piece)
    return [memoryview(piece) for piece in chunks], total, crc


def host_chunks(
    peers: list[Peer], skipped: list[dict[str, Any]], budget: int | None = None
) -> Iterator[Iterable[bytes]]:
    """The ``PROC`` and ``PSKP`` chunks of a host capture, each as its pieces, one process
    at a time: each file is read when its turn comes (its descriptor closed once read), and
    each of its chunks copied out of that one read as it is written. ``budget``: at most
    this many bytes of other processes' windows in all (the store's bound); a process past
    it is named, not copied."""
    for note in skipped:
        yield [container.chunk(PSKP, container.json_bytes(note))]
    total = 0
    for peer in peers:
        try:
            pieces, length, crc = read_window(peer.fd)
        except (OSError, container.ContainerError, ValueError) as exc:
            note = skip_note(peer.pid, peer.name, exc)
            yield [container.chunk(PSKP, container.json_bytes(note))]
            continue
        finally:
            peer.close()
        if budget is not None and total + length > budget:
            why = f"left out: the capture would pass the store's bound ({budget} bytes)"
            yield [container.chunk(PSKP, container.json_bytes(skip_note(peer.pid, peer.name, why)))]
            continue
        total += length
        yield _pieces(container.chunk_header(PROC, False, length, crc), pieces)


def _pieces(header: bytes, views: list[memoryview]) -> Iterator[bytes]:
    yield header
    views.reverse()
    while views:
        view = views.pop()
        yield bytes(view)
        view.release()


# -- reading: one document across the processes ---------------------------------------------
def process_document(
    payload: bytes, snapshot_id: str, build: Any
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The document of one ``PROC`` chunk (``build``: ``build.build_document``), and its
    process's ``process`` object. Raises ``ContainerError``."""
    from ..core.window import Frozen
    from . import recovery

    parsed = recovery.parse(payload)
    process = parsed.head.get("process")
    if not isinstance(process, dict):
        raise container.ContainerError("a process's window names no process")
    offset = parsed.head.get("clock_offset_ns")
    offset = offset if isinstance(offset, int) else 0
    _, _, status = recovery._scan_records(parsed.records, parsed.status)
    t_now = recovery.end_time(parsed.state.get("t_now"), parsed.records)
    dropped = parsed.state.get("dropped")
    tasks: dict[Any, Any] = {}
    requests: dict[Any, Any] = {}
    for e in container._checked_events(status.get("tasks")):
        if len(e) == 8:
            tasks[e[2]] = e
    for e in container._checked_events(status.get("requests")):
        if len(e) == 11:
            requests[e[2]] = e
    segments = [container._Stored(tag, raw) for tag, raw in parsed.records]
    frozen = Frozen(
        segments, [], tasks, requests, dropped if isinstance(dropped, int) else 0, t_now, {}
    )
    doc: dict[str, Any] = build(
        frozen,
        snapshot_id=snapshot_id,
        offset_ns=offset,
        trigger={"kind": "manual", "reason": "", "request": None},
        trigger_time_ns=t_now,
        process=process,
    )
    return doc, process


def id_stride(docs: list[dict[str, Any]]) -> int:
    """A power of ten above every task and request id of ``docs`` (at least ``MIN_STRIDE``)."""
    top = 0
    for doc in docs:
        for r in doc.get("requests") or ():
            if isinstance(r.get("id"), int):
                top = max(top, r["id"])
        for t in doc.get("tasks") or ():
            top = max(top, _task_number(t.get("id")))
    stride = MIN_STRIDE
    while stride <= top:
        stride *= 10
    return stride


def _task_number(ref: object) -> int:
    if isinstance(ref, str) and ref.startswith("t") and ref[1:].isdigit():
        return int(ref[1:])
    return 0


def _renumber(doc: dict[str, Any], pid: object, offset: int) -> None:
    """Give every entry of ``doc`` its process's ``pid``, its ids moved by ``offset``."""

    def task(ref: object) -> object:
        if offset and isinstance(ref, str) and ref.startswith("t") and ref[1:].isdigit():
            return f"t{int(ref[1:]) + offset}"
        return ref

    def request(rid: object) -> object:
        if offset and isinstance(rid, int) and not isinstance(rid, bool):
            return rid + offset
        return rid

    for r in doc.get("requests") or ():
        r["pid"] = pid
        r["id"] = request(r.get("id"))
        if "task" in r:
            r["task"] = task(r["task"])
        if isinstance(r.get("tasks"), list):
            r["tasks"] = [task(t) for t in r["tasks"]]
    for t in doc.get("tasks") or ():
        t["pid"] = pid
        t["id"] = task(t.get("id"))
        t["parent"] = task(t.get("parent"))
        t["request"] = request(t.get("request"))
    for entry in doc.get("loop") or ():
        entry["pid"] = pid
        if "task" in entry:
            entry["task"] = task(entry["task"])
    for e in doc.get("events") or ():
        e["pid"] = pid
        if "task" in e:
            e["task"] = task(e["task"])
        if "request" in e:
            e["request"] = request(e["request"])


def _start(entry: dict[str, Any]) -> float:
    start = entry.get("start")
    return float(start) if isinstance(start, (int, float)) else 0.0


def merge(
    doc: dict[str, Any],
    others: list[dict[str, Any]],
    notes: list[dict[str, Any]],
) -> dict[str, Any]:
    """The host document: ``doc`` (the capturing process's, its ids unchanged) and the
    documents of the other processes, in one; ``notes`` names the processes skipped."""
    docs = [doc, *others]
    stride = id_stride(docs)
    processes: list[dict[str, Any]] = []
    for n, one in enumerate(docs):
        process = one.get("process")
        process = dict(process) if isinstance(process, dict) else {}
        pid = process.get("pid")
        _renumber(one, pid, n * stride)
        process["id_offset"] = n * stride
        processes.append(process)
    for note in notes:
        pid, error, name = note.get("pid"), note.get("error"), note.get("file")
        processes.append({"pid": pid, "error": error, "file": name})
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out[key] = value
        if key == "process":
            out["processes"] = processes
    for key in ("requests", "loop", "events"):
        merged = [e for one in docs for e in (one.get(key) or ())]
        merged.sort(key=_start)
        out[key] = merged
    out["tasks"] = [t for one in docs for t in (one.get("tasks") or ())]
    windows = [one.get("window") or {} for one in docs]
    starts = [w["start"] for w in windows if isinstance(w.get("start"), (int, float))]
    ends = [w["end"] for w in windows if isinstance(w.get("end"), (int, float))]
    window = dict(doc.get("window") or {})
    if starts:
        window["start"] = min(starts)
    if ends:
        window["end"] = max(ends)
    window["dropped"] = sum(_int(w.get("dropped")) for w in windows)
    window["events"] = sum(_int(w.get("events")) for w in windows)
    out["window"] = window
    return out


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def read_host(doc: dict[str, Any], chunks: list[tuple[bytes, bytes]], build: Any) -> dict[str, Any]:
    """``doc`` merged with the processes of a host snapshot's ``PROC``/``PSKP`` chunks."""
    others: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    for tag, raw in chunks:
        if tag == PSKP:
            try:
                note = orjson.loads(raw)
            except orjson.JSONDecodeError:
                note = None
            if isinstance(note, dict):
                notes.append(note)
            continue
        try:
            one, _ = process_document(raw, str(doc.get("id")), build)
        except (container.ContainerError, ValueError, TypeError, KeyError, struct.error) as exc:
            notes.append({"pid": None, "error": f"its window could not be read: {exc}"[:300]})
            continue
        others.append(one)
    return merge(doc, others, notes)
