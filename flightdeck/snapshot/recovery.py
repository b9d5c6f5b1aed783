"""Recovery: the window file of a process that died becomes a crash snapshot, exactly once.

A window file (``windowfile.py``) whose ``flock`` can be taken belongs to a process that is
gone (the kernel dropped its lock at death, whatever killed it); unless it was closed
cleanly (``CLOS``) it is converted to a stored snapshot of trigger kind ``"crash"``: its
record chunks copied as they are (no event is decoded to write it), a header saying what is
known of the end ("process 4711 ended without shutdown while the loop was blocked for 9.8 s
in ``fetch_legacy`` (app.py:41) during GET /report"), then the file is removed. Exactly
once: the recoverer holds the lock while it converts, and checks that the path still names
the inode it locked (the writer replaces its file when it rewrites it; another recoverer
unlinks it when done) before it does anything.

Who: every live process sharing the directory (its black box's thread, every
``windowfile.SCAN_INTERVAL``), a process at start-up, and ``flightdeck recover DIR``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from typing import Any

import orjson

from . import container
from .document import new_id, rfc3339
from .windowfile import (
    CLOS,
    NAME_PATTERN,
    OPEN_EXISTING,
    SSTA,
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
        data = _read_all(fd, st.st_size)
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


def _read_all(fd: int, size: int) -> bytes:
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
        if not isinstance(t_now, int):
            t_now = _last_time(self.records) or 0
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
        return container.assemble(head, status, self.records), head


def parse(data: bytes) -> Parsed:
    """Read a window file's chunks up to the last complete one. Raises ``ContainerError``."""
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
    return out


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
