"""Structural validation of the Perfetto / Chrome Trace Event export."""

from __future__ import annotations

import bisect
import copy
from collections import defaultdict
from typing import Any

import orjson
import pytest
from samples import T0, make_big_doc, make_doc, make_empty_doc

from flightdeck.export.perfetto import to_perfetto

Trace = dict[str, Any]


def export(doc: dict[str, Any]) -> Trace:
    data = to_perfetto(doc)
    assert isinstance(data, bytes)
    trace: Trace = orjson.loads(data)
    return trace


def validate(trace: Trace, pid: int) -> dict[int, list[tuple[float, float]]]:
    """Check every event against the Trace Event format; return slices per tid."""
    assert set(trace) >= {"traceEvents", "displayTimeUnit", "metadata"}
    assert trace["displayTimeUnit"] in ("ms", "ns")
    events = trace["traceEvents"]
    assert isinstance(events, list)
    slices: dict[int, list[tuple[float, float]]] = defaultdict(list)
    named: set[int] = set()
    used: set[int] = set()
    flows: dict[Any, dict[str, Any]] = {}
    begins: dict[int, list[str]] = defaultdict(list)
    for ev in events:
        ph = ev.get("ph")
        assert isinstance(ev.get("name"), str) and ev["name"], ev
        assert ev.get("pid") == pid, ev
        assert isinstance(ev.get("tid"), int), ev
        if ph != "M":
            assert isinstance(ev.get("ts"), (int, float)), ev
            used.add(ev["tid"])
        if "args" in ev:
            assert isinstance(ev["args"], dict), ev
        if ph == "X":
            assert isinstance(ev.get("dur"), (int, float)) and ev["dur"] >= 0, ev
            slices[ev["tid"]].append((ev["ts"], ev["ts"] + ev["dur"]))
        elif ph == "i" or ph == "I":
            assert ev.get("s") in ("g", "p", "t"), ev
        elif ph == "M":
            assert ev["name"] in (
                "process_name",
                "process_labels",
                "process_sort_index",
                "thread_name",
                "thread_sort_index",
            ), ev
            assert isinstance(ev.get("args"), dict), ev
            if ev["name"] == "thread_name":
                assert isinstance(ev["args"].get("name"), str) and ev["args"]["name"]
                named.add(ev["tid"])
        elif ph in ("s", "f"):
            assert "id" in ev, ev
            key = (ev.get("cat"), ev["id"])
            assert ph not in flows.setdefault(key, {}), f"duplicate flow {ph} {key}"
            flows[key][ph] = ev
        elif ph == "C":
            assert ev.get("args") and all(isinstance(v, (int, float)) for v in ev["args"].values())
        elif ph == "B":
            begins[ev["tid"]].append(ev["name"])
        elif ph == "E":
            assert begins[ev["tid"]], f"E without B on tid {ev['tid']}"
            begins[ev["tid"]].pop()
        else:
            pytest.fail(f"unexpected phase {ph!r}: {ev}")
    assert not any(begins.values()), "unbalanced B/E"
    assert used <= named, f"tracks without thread_name: {sorted(used - named)}"
    # Slices on one track must nest (partial overlaps are misdrawn by both viewers).
    for tid, spans in slices.items():
        spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
        stack: list[float] = []
        for start, end in spans:
            while stack and stack[-1] <= start + 1e-6:
                stack.pop()
            assert not stack or end <= stack[-1] + 1e-6, f"overlap on tid {tid} at {start}"
            stack.append(end)
    # Flows pair up, and each endpoint lies inside a slice on its own track.
    for key, pair in flows.items():
        assert set(pair) == {"s", "f"}, f"unpaired flow {key}"
        for ev in pair.values():
            spans = sorted(slices[ev["tid"]])
            i = bisect.bisect_right(spans, (ev["ts"], float("inf")))
            assert any(s <= ev["ts"] <= e for s, e in spans[:i]), f"flow end outside slice {ev}"
        assert pair["s"]["ts"] <= pair["f"]["ts"] + 1e-6
    return slices


def by_name(trace: Trace, ph: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in trace["traceEvents"] if e["ph"] == ph and (name is None or e["name"] == name)
    ]


def thread_names(trace: Trace) -> dict[int, str]:
    return {e["tid"]: e["args"]["name"] for e in by_name(trace, "M", "thread_name")}


def test_sample_is_valid_and_complete() -> None:
    doc = make_doc()
    trace = export(doc)
    validate(trace, pid=1234)
    names = thread_names(trace)
    assert "event loop" in names.values()
    assert "requests" in names.values()
    assert "ThreadPoolExecutor-0_0" in names.values()
    assert any(n.startswith("task t4 slow.<locals>.fetch_user") for n in names.values())
    assert by_name(trace, "M", "process_name")[0]["args"]["name"].startswith("flightdeck pid 1234")

    # Request spans with their args.
    slow = by_name(trace, "X", "GET /slow 200")
    assert len(slow) == 1
    args = slow[0]["args"]
    assert args["route"] == "/slow" and args["status"] == 200 and args["ttfb_ms"] == 1190.0
    assert args["client"] == "127.0.0.1:5555"
    assert slow[0]["ts"] == pytest.approx(6.0e6, abs=1) and slow[0]["dur"] == pytest.approx(1.2e6)
    err = by_name(trace, "X", "GET /error 500")[0]
    assert err["args"]["error"] == "ValueError" and err["cname"] == "bad"
    inflight = [e for e in by_name(trace, "X") if e["name"].startswith("POST /upload")]
    assert inflight and inflight[0]["args"]["in_flight"] is True

    # Loop block on the loop track, with its stack.
    loop_tid = next(t for t, n in names.items() if n == "event loop")
    blocks = [e for e in by_name(trace, "X") if e.get("cat") == "block"]
    assert len(blocks) == 1 and blocks[0]["tid"] == loop_tid
    assert blocks[0]["args"]["stack"][-1] == "app.py:30 in block"
    assert blocks[0]["dur"] == pytest.approx(1.2e6)
    loop_steps = [e for e in by_name(trace, "X") if e["tid"] == loop_tid and e["cat"] == "step"]
    assert len(loop_steps) == sum(len(t["steps"]) for t in doc["tasks"])

    # Task tracks: steps, suspended and ready periods are distinct.
    t4 = next(t for t, n in names.items() if n.startswith("task t4 "))
    t4_events = [e for e in by_name(trace, "X") if e["tid"] == t4]
    kinds = {e["name"]: e.get("cname") for e in t4_events}
    assert {"suspended", "ready", "slow.<locals>.fetch_user"} <= set(kinds)
    assert len({kinds["suspended"], kinds["ready"], kinds["slow.<locals>.fetch_user"]}) == 3
    ready = [e for e in t4_events if e["name"] == "ready"]
    assert max(e["dur"] for e in ready) == pytest.approx(40_000, abs=1)
    waits = [e for e in t4_events if e["name"] == "suspended" and "await_stack" in e["args"]]
    assert waits and waits[0]["args"]["await_stack"][-1] == "asyncio/locks.py:114 in acquire"
    t8 = next(t for t, n in names.items() if n.startswith("task t8 "))
    tail = [e for e in by_name(trace, "X") if e["tid"] == t8 and e["name"] == "suspended"]
    assert tail[-1]["args"]["awaiting"][-1] == "starlette/requests.py:230 in receive"

    # Flows: one from each request to the first step of each of its tasks, plus executor.
    starts = by_name(trace, "s")
    spawn = [e for e in starts if e["name"] == "spawn"]
    assert len(spawn) == sum(len(r["tasks"]) for r in doc["requests"])
    assert {e["args"]["task"] for e in spawn} == {f"t{i}" for i in range(2, 9)}
    assert any(e["name"] == "executor" for e in starts)

    # Executor work, regions, logs, lag counter, trigger.
    ex = by_name(trace, "X", "read_report")[0]
    assert names[ex["tid"]] == "ThreadPoolExecutor-0_0"
    assert ex["args"]["queued_ms"] == pytest.approx(0.8, abs=0.01)
    assert by_name(trace, "X", "resize")[0]["args"]["error"] == "OSError"
    assert by_name(trace, "X", "db.query")[0]["args"]["task"] == "t5"
    logs = [e for e in by_name(trace, "i") if e.get("cat") == "log"]
    assert {e["name"] for e in logs} == {"cache: miss user=42", "startup: warm"}
    cache_log = next(e for e in logs if e["name"].startswith("cache"))
    assert names[cache_log["tid"]].startswith("task t5")
    assert by_name(trace, "C", "loop lag (ms)")
    trig = [e for e in by_name(trace, "i") if e.get("cat") == "trigger"]
    assert len(trig) == 1 and trig[0]["s"] == "g" and trig[0]["name"] == "TRIGGER slow_request"
    assert trig[0]["ts"] == pytest.approx(7.2e6, abs=1)
    assert trig[0]["args"]["reason"].startswith("GET /slow took")

    # Timestamps: microseconds after window.start.
    xs = by_name(trace, "X")
    assert min(e["ts"] for e in xs) >= 0
    assert max(e["ts"] + e["dur"] for e in xs) <= 10.2e6 + 1
    assert trace["metadata"]["snapshot_id"] == doc["id"]


def test_empty_document() -> None:
    trace = export(make_empty_doc())
    validate(trace, pid=1234)
    assert len(by_name(trace, "i")) == 1  # just the trigger
    assert by_name(trace, "i")[0]["ts"] == pytest.approx(10e6)  # no time: end of window


def test_nulls_and_junk_are_tolerated() -> None:
    doc = make_doc()
    doc["process"]["pid"] = None
    doc["trigger"] = {"kind": "custom", "reason": None, "request": None}
    doc["requests"].append({"id": 99, "start": None, "method": None})
    doc["requests"].append({"id": 98, "start": T0 + 1, "end": T0 + 0.5, "status": None})
    doc["tasks"].append(
        {"id": "t99", "steps": [[T0 + 2, None, None, None], "junk", [], [None, 1]], "extra": 1}
    )
    doc["tasks"].append({"id": "t98"})
    for task in doc["tasks"][:3]:
        task["steps"] = [[s[0], s[1], None, None] for s in task["steps"]]
    doc["loop"].append({"kind": "block", "start": T0 + 5, "duration": None, "stack": None})
    doc["loop"].append({"kind": "mystery", "start": None})
    doc["events"].append({"kind": "executor", "start": T0 + 9, "started": None, "end": None})
    doc["events"].append({"kind": "executor", "start": T0 + 9, "started": T0 + 9.5, "end": None})
    doc["events"].append({"kind": "region", "start": T0 + 1, "duration": None})
    doc["events"].append({"kind": "unknown-kind", "start": T0})
    doc["unexpected"] = {"x": 1}
    trace = export(doc)
    validate(trace, pid=1)


def test_overlapping_loop_entries_are_nested() -> None:
    doc = make_doc()
    # A block reported a hair before and past its step: must still nest on the loop track.
    doc["loop"][1]["start"] -= 1e-7
    doc["loop"][1]["duration"] += 5e-7
    doc["loop"].append({"kind": "callback", "start": T0 + 3.5, "duration": 1.0, "callback": "x"})
    validate(export(doc), pid=1234)


def test_window_start_missing_uses_earliest_time() -> None:
    doc = make_doc(window={"start": None, "end": None, "dropped": 0})
    trace = export(doc)
    validate(trace, pid=1234)
    assert min(e["ts"] for e in by_name(trace, "X")) >= 0


def test_big_document() -> None:
    doc = make_big_doc(20_000)
    trace = export(doc)
    slices = validate(trace, pid=1234)
    assert sum(len(s) for s in slices.values()) > 20_000
    assert len(by_name(trace, "s", "spawn")) == sum(len(r["tasks"]) for r in doc["requests"])


def test_input_not_mutated() -> None:
    doc = make_doc()
    before = copy.deepcopy(doc)
    to_perfetto(doc)
    assert doc == before


def test_gc_pauses_cancellations_and_long_steps() -> None:
    doc = make_doc()
    t0 = doc["window"]["start"]
    doc["loop"] += [
        {
            "kind": "gc",
            "start": t0 + 2.5,
            "duration": 0.02,
            "callback": None,
            "stack": None,
            "generation": 2,
            "collected": 777,
        },
        {
            "kind": "step",
            "start": t0 + 6.0002,
            "duration": 0.001,
            "callback": "x",
            "stack": None,
            "task": "t3",
        },
    ]
    doc["events"].append(
        {
            "kind": "cancel",
            "start": t0 + 6.6,
            "task": "t4",
            "cause": "timeout",
            "stack": [{"function": "fetch_user", "file": "app.py", "line": 52}],
        }
    )
    trace = export(doc)
    validate(trace, pid=1234)
    gc_slices = by_name(trace, "X", "GC gen 2")
    assert len(gc_slices) == 1 and gc_slices[0]["args"]["collected"] == 777
    assert gc_slices[0]["dur"] == pytest.approx(20_000)
    cancels = by_name(trace, "i", "cancelled (timeout)")
    assert len(cancels) == 1 and cancels[0]["args"]["at"] == ["app.py:52 in fetch_user"]
    assert thread_names(trace)[cancels[0]["tid"]].startswith("task t4")
    # A long-step entry repeats a task step: it is not drawn a second time.
    assert not [e for e in by_name(trace, "X") if e.get("cat") == "callback" and e["name"] == "x"]
