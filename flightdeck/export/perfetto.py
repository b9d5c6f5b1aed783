"""Export a snapshot as Chrome Trace Event JSON, for ui.perfetto.dev and chrome://tracing.

The tracks are built one function each (``tracks.py``) through a ``TraceWriter``
(``trace.py``), which makes every track properly nested; only complete ("X") events are used
for slices.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import tracks
from .common import dicts, split_processes
from .trace import TraceWriter

__all__ = ["to_perfetto"]

#: What this export draws of a document, and leaves out: the tracks' (``tracks.py``).
DRAWN = tracks.DRAWN
NOT_DRAWN = tracks.NOT_DRAWN


def build_trace(doc: dict[str, Any], flow_base: int = 0) -> TraceWriter:
    """Every track of the document, written and flushed (``flow_base``: flow ids start past
    it). A document whose ``trigger`` is None (a host capture's other processes,
    ``common.split_processes``) draws no trigger marks: the capturing process's do."""
    w = TraceWriter(doc)
    w.flow_base = flow_base
    requests = dicts(doc.get("requests"))
    events = dicts(doc.get("events"))
    loop_tid = w.track("event loop", 0)
    req_ok, req_tid = tracks.request_tracks(w, requests)
    thread_tids = tracks.thread_tracks(w, events)
    regions = tracks.region_tracks(w, events)
    task_tid, task_steps = tracks.task_tracks(
        w, dicts(doc.get("tasks")), requests, req_ok, loop_tid
    )
    tracks.spawn_flows(w, req_ok, req_tid, task_tid, task_steps)
    tracks.loop_track(w, loop_tid)
    tracks.event_marks(w, events, thread_tids, task_tid, task_steps, loop_tid)
    tracks.region_slices(w, regions)
    if doc.get("trigger") is not None:
        tracks.trigger_marks(w, loop_tid)
    w.flush_slices()
    w.flush_flows()
    w.metadata()
    return w


def _not_json(obj: object) -> Any:
    return repr(obj)


def to_perfetto(doc: dict[str, Any]) -> bytes:
    """Chrome Trace Event JSON for a ``flightdeck/1`` document (timestamps in µs after
    ``window.start``); opens in ui.perfetto.dev and chrome://tracing."""
    parts = split_processes(doc)
    w = build_trace(parts[0])
    out = w.out
    metadata = w.doc_metadata()
    if len(parts) > 1:
        # A host capture: one process (its pid) and its tracks per process, in order.
        metadata["processes"] = doc.get("processes")
        flows = len(w.flows)
        for n, part in enumerate(parts):
            if n:
                other = build_trace(part, flows)
                flows += len(other.flows)
                out += other.out
            pid = part["process"]["pid"]
            out.append(
                {"ph": "M", "pid": pid, "ts": 0, "tid": 0, "name": "process_sort_index"}
                | {"args": {"sort_index": n}}
            )
    trace = {"traceEvents": out, "displayTimeUnit": "ms", "metadata": metadata}
    return orjson.dumps(trace, default=_not_json, option=orjson.OPT_NON_STR_KEYS)
