"""The exports of a host capture (several processes in one document): one Perfetto process
per pid in both trace formats, drawn as each process's own document would be, on one clock;
findings and the summary named after their process."""

from __future__ import annotations

import collections
import copy
from typing import Any

import orjson
from samples import T0, make_doc
from test_pftrace import _decode

from flightdeck.export.common import split_processes
from flightdeck.export.findings import findings
from flightdeck.export.perfetto import to_perfetto
from flightdeck.export.pftrace import to_pftrace
from flightdeck.export.summary import summarize
from flightdeck.snapshot import host

PIDS = (1111, 2222)


def _host_doc(before_window: bool = False) -> dict[str, Any]:
    """Two processes' documents of the sample, merged as a host capture's reader merges."""
    docs = []
    for pid in PIDS:
        doc = make_doc()
        doc["process"] = {**doc["process"], "pid": pid}
        docs.append(doc)
    if before_window:
        # The second process's oldest request began before the window: its clock, and so
        # every process's, counts from there.
        docs[1]["requests"][0]["start"] = T0 - 2.0
    return host.merge(docs[0], docs[1:], [{"pid": 3333, "file": "f", "error": "gone"}])


def _slices_by_process(events: list[dict[str, Any]]) -> dict[int, list[tuple[str, str, int]]]:
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    out: dict[int, list[tuple[str, str, int]]] = collections.defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            out[e["pid"]].append((names[(e["pid"], e["tid"])], e["name"], round(e["ts"] * 1000)))
    return {pid: sorted(v) for pid, v in out.items()}


def test_the_json_trace_has_a_process_per_pid_each_drawn_as_its_own_document() -> None:
    doc = _host_doc()
    events = orjson.loads(to_perfetto(doc))["traceEvents"]
    named = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert set(named) == set(PIDS)
    order = {e["pid"]: e["args"]["sort_index"] for e in events if e["name"] == "process_sort_index"}
    assert order == {PIDS[0]: 0, PIDS[1]: 1}
    drawn = _slices_by_process(events)
    for part in split_processes(doc):
        alone = _slices_by_process(orjson.loads(to_perfetto(part))["traceEvents"])
        pid = part["process"]["pid"]
        assert drawn[pid] == alone[pid] and drawn[pid]
    # Flow ids are one space across the processes; the trigger is drawn once.
    flows = [e["id"] for e in events if e["ph"] == "s"]
    assert len(flows) == len(set(flows)) and flows
    triggers = [e for e in events if e["ph"] == "i" and e["name"].startswith("TRIGGER")]
    assert len(triggers) == 1 and triggers[0]["pid"] == PIDS[0]


def test_the_protobuf_trace_matches_the_json_one_process_by_process() -> None:
    for before in (False, True):
        doc = _host_doc(before)
        tracks, events = _decode(to_pftrace(doc))
        js = orjson.loads(to_perfetto(doc))["traceEvents"]
        shift = min(round(e["ts"] * 1000) for e in js if e["ph"] in ("X", "i", "C"))
        shift = min(shift, 0)
        names = {(e["pid"], e["tid"]): e["args"]["name"] for e in js if e["name"] == "thread_name"}
        want: dict[tuple[int, str], list[int]] = collections.defaultdict(list)
        for e in js:
            if e["ph"] == "X":
                want[(e["pid"], names[(e["pid"], e["tid"])])].append(round(e["ts"] * 1000) - shift)
        # Each process's tracks hang under its own process track (uuid n << 32).
        base = {0: PIDS[0], 1 << 32: PIDS[1]}
        got: dict[tuple[int, str], list[int]] = collections.defaultdict(list)
        for ev in events:
            if ev["type"] == 1:  # TYPE_SLICE_BEGIN
                pid = base[ev["track"] >> 32 << 32]
                got[(pid, tracks[ev["track"]])].append(ev["ts"])
        assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}
        assert min(ev["ts"] for ev in events) == 0
        flow_ids = [f for ev in events for f in ev["flows"]]
        assert len(flow_ids) == len(set(flow_ids)) and flow_ids


def test_findings_and_the_summary_name_each_process() -> None:
    doc = _host_doc()
    found = findings(doc)
    assert found and all(f.removeprefix("earlier: ").startswith("pid ") for f in found)
    assert {f.removeprefix("earlier: ").split(":")[0] for f in found} == {f"pid {p}" for p in PIDS}
    text = summarize(doc)
    assert "processes: 3 in this capture: pid 1111, pid 2222, pid 3333 (not read: gone)" in text
    assert "the other processes (1):" in text and "  pid 2222 on " in text
    # One process's document reads as before: nothing named after a process.
    alone = copy.deepcopy(make_doc())
    assert not any(f.startswith("pid ") for f in findings(alone))
    # A request of the second process is explained from its own process's window.
    theirs = next(r for r in doc["requests"] if r["pid"] == PIDS[1] and r["path"] == "/slow")
    explained = summarize(doc, request=theirs["id"])
    assert f"(request {theirs['id']})" in explained
