"""Every event kind reaches every renderer: the document builder and each exporter.

Two checks. The tables: ``snapshot/build.py`` maps every kind of ``core/events.py`` (SPECS)
to the part of the document it lands in (``KIND_PARTS``), and each exporter says how it
draws every part the builder can produce, or why it leaves one out (``tracks.py``'s
``DRAWN``/``NOT_DRAWN`` for the two Perfetto exports, ``PARTS``/``NOT_DRAWN`` in
``timeline.js`` for the page). The outputs: one event of every kind, made from its layout
in SPECS, goes through a real recorder (its window, the stored form, the builder), and
each part is looked for in the document, in both Perfetto exports and in the page in
Chromium. A kind added to SPECS without a row, or a part some exporter does not draw,
fails here (the monkeypatched cases below show it).
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Callable, Iterator
from time import perf_counter_ns
from typing import Any

import orjson
import pytest
from browser import ARGS, CHROMIUM, browser_only
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TracePacket, TrackEvent
from support import ROOT

from flightdeck import FlightRecorder
from flightdeck.core import events as ev
from flightdeck.export import perfetto, pftrace
from flightdeck.export.html import to_html
from flightdeck.snapshot import build

TIMELINE = ROOT / "flightdeck" / "export" / "timeline.js"
Doc = dict[str, Any]


def _js_table(name: str) -> dict[str, str]:
    """``var NAME = {...};`` of timeline.js, which is written as JSON."""
    m = re.search(rf"^var {name} = (\{{.*?\}});$", TIMELINE.read_text(), re.M | re.S)
    assert m is not None, f"timeline.js has no `var {name} = {{...}};`"
    table: dict[str, str] = orjson.loads(m.group(1))
    return table


def renderers() -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Each exporter's ``(drawn, not drawn)`` parts."""
    return {
        "perfetto": (perfetto.DRAWN, perfetto.NOT_DRAWN),
        "pftrace": (pftrace.DRAWN, pftrace.NOT_DRAWN),
        "timeline.js": (_js_table("PARTS"), _js_table("NOT_DRAWN")),
    }


def unrendered(
    specs: dict[int, ev.Spec],
    kind_parts: dict[int, tuple[str, ...]],
    parts: frozenset[str],
    exporters: dict[str, tuple[dict[str, str], dict[str, str]]],
) -> list[str]:
    """What is missing for every kind to reach every renderer (empty when nothing is)."""
    problems = []
    for kind, spec in sorted(specs.items()):
        if not kind_parts.get(kind):
            problems.append(f"build.py KIND_PARTS: kind {spec.name} lands in no document part")
    for kind in sorted(kind_parts.keys() - specs.keys()):
        problems.append(f"build.py KIND_PARTS: kind {kind} is not in SPECS")
    for name, (drawn, skipped) in exporters.items():
        for part in sorted(parts - drawn.keys() - skipped.keys()):
            problems.append(f"{name}: part {part} is neither drawn nor said not to be")
        for part in sorted((drawn.keys() | skipped.keys()) - parts):
            problems.append(f"{name}: part {part} is not one build.py produces")
        for part in sorted(drawn.keys() & skipped.keys()):
            problems.append(f"{name}: part {part} is both drawn and not drawn")
        for part, why in skipped.items():
            if not why.strip():
                problems.append(f"{name}: part {part} is left out without a reason")
    return problems


# -- the tables ---------------------------------------------------------------------------


def test_every_kind_has_a_document_part_and_every_part_a_drawing() -> None:
    assert unrendered(ev.SPECS, build.KIND_PARTS, build.PARTS, renderers()) == []


def test_a_kind_added_to_the_table_alone_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if a kind were added to SPECS (and _kinds.h) and nothing else: the builder has no
    # part for it.
    probe = ev.Spec(99, "probe", (ev.Field("t", "time"),), "a kind nothing renders", "PROBE")
    monkeypatch.setitem(ev.SPECS, 99, probe)
    problems = unrendered(ev.SPECS, build.KIND_PARTS, build.PARTS, renderers())
    assert problems == ["build.py KIND_PARTS: kind probe lands in no document part"]


def test_a_part_the_builder_adds_is_required_of_every_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The builder given a part for the new kind, the exporters not yet: each is named.
    probe = ev.Spec(99, "probe", (ev.Field("t", "time"),), "a kind nothing renders", "PROBE")
    monkeypatch.setitem(ev.SPECS, 99, probe)
    kind_parts = {**build.KIND_PARTS, 99: ("events[probe]",)}
    problems = unrendered(ev.SPECS, kind_parts, build.PARTS | {"events[probe]"}, renderers())
    assert problems == [
        f"{name}: part events[probe] is neither drawn nor said not to be"
        for name in ("perfetto", "pftrace", "timeline.js")
    ]


def test_a_part_left_out_needs_a_reason() -> None:
    exporters = renderers()
    drawn, skipped = exporters["perfetto"]
    exporters["perfetto"] = (drawn, {**skipped, "loop[step]": " "})
    assert unrendered(ev.SPECS, build.KIND_PARTS, build.PARTS, exporters) == [
        "perfetto: part loop[step] is left out without a reason"
    ]


# -- one event of every kind, through a recorder ------------------------------------------

#: The sample task, its parent and the sample request (raw ids as the recorder keeps them).
TID, PARENT, RID = 0x7F00_0000_1000, 0x7F00_0000_2000, 4242
#: Field values where the layout's type alone would not say enough.
OVERRIDES: dict[tuple[str, str], Any] = {
    ("task_done", "state"): "error",
    ("request_start", "scope_type"): "http",
    ("request_start", "method"): "GET",
    ("request_start", "path"): "/request_start.path",
    ("request_end", "status"): 503,
    ("gc", "generation"): 2,
    ("loop_lag", "lag"): 5_000_000,
}


def marker(spec: ev.Spec, field: str) -> str:
    """The text a sample event carries in ``field``, to be found in the outputs."""
    return f"{spec.name}.{field}"


def sample_event(spec: ev.Spec, t: int) -> tuple[Any, ...]:
    """One event of ``spec``'s kind, each field a value of its declared type: times from
    ``t`` a millisecond apart, ids naming the sample task and request, text its marker."""
    values: list[Any] = [spec.kind]
    step = 0
    for f in spec.fields:
        base = f.type.rstrip("?")
        if (spec.name, f.name) in OVERRIDES:
            value = OVERRIDES[(spec.name, f.name)]
        elif base in ("time", "time0"):
            value = t + step * 1_000_000
            step += 1
        elif f.name == "parent":
            value = PARENT
        elif f.name in ev.TASK_ID_FIELDS:
            value = TID
        elif f.name in ("rid", "request"):
            value = RID
        elif base == "int":
            value = 7
        elif base == "str":
            value = marker(spec, f.name)
        elif base == "bool":
            value = True
        elif base == "stack":
            value = ((marker(spec, f.name), "/srv/app/views.py", 12),)
        elif base == "frame":
            value = (marker(spec, f.name), "/srv/app/views.py", 11)
        elif base == "client":
            value = ("127.0.0.1", 5555)
        elif base == "pairs":
            value = (("user-agent", marker(spec, f.name)),)
        else:
            raise AssertionError(f"no sample value for a field of type {f.type}")
        values.append(value)
    event = tuple(values)
    ev.check_event(event)
    return event


def sample_events(t0: int) -> list[tuple[Any, ...]]:
    """One event of every kind, 10 ms apart in kind order (a task is created before its
    steps, a request starts before it ends), the task done last (what happens to it, its
    waits too, happens while it lives); the slow step is the sample step itself."""
    kinds = sorted(ev.SPECS)
    kinds.append(kinds.pop(kinds.index(ev.TASK_DONE)))
    events = {k: sample_event(ev.SPECS[k], t0 + i * 10_000_000) for i, k in enumerate(kinds)}
    step = events[ev.TASK_STEP]
    slow = list(events[ev.TASK_SLOW_STEP])
    slow[ev.TASK_SLOW_STEP_START] = step[ev.TASK_STEP_START]
    slow[ev.TASK_SLOW_STEP_END] = step[ev.TASK_STEP_END]
    events[ev.TASK_SLOW_STEP] = tuple(slow)
    return list(events.values())


async def pending_forever() -> None:
    await asyncio.Event().wait()


@pytest.fixture(scope="module")
def doc() -> Doc:
    """A snapshot of a real recorder's window holding one event of every kind (and what
    the recorder itself recorded meanwhile), with a task still pending at the freeze."""

    async def main() -> Doc:
        rec = FlightRecorder(window=60.0)
        rec.start()
        try:
            task = asyncio.create_task(pending_forever())
            await asyncio.sleep(0.01)  # it runs a step and suspends
            for e in sample_events(perf_counter_ns() - 1_000_000_000):
                rec.emit(e)
            snap = rec.snapshot("every kind")
            task.cancel()
            return snap.to_dict()
        finally:
            rec.stop()

    return asyncio.run(main())


def _sample_task(doc: Doc) -> Doc:
    found = [t for t in doc["tasks"] if t["coro"] == marker(ev.SPECS[ev.TASK_CREATE], "coro")]
    assert len(found) == 1, doc["tasks"]
    return found[0]


def _stack_has(stack: Any, name: str) -> bool:
    return any(f["function"] == name for f in stack or ())


def _entries(doc: Doc, section: str, kind: str) -> list[Doc]:
    return [e for e in doc[section] if e["kind"] == kind]


def _m(kind: int, field: str) -> str:
    return marker(ev.SPECS[kind], field)


#: Where each part of the document shows the sample event it came from.
IN_DOCUMENT: dict[str, Callable[[Doc], bool]] = {
    "requests": lambda d: any(r["path"] == "/request_start.path" for r in d["requests"]),
    "requests[].end": lambda d: any(
        r["id"] == RID and r["status"] == 503 and r["error"] == _m(ev.REQ_END, "error")
        for r in d["requests"]
    ),
    "requests[].error_stack": lambda d: any(
        r["id"] == RID and _stack_has(r["error_stack"], _m(ev.REQ_ERROR, "stack"))
        for r in d["requests"]
    ),
    "tasks": lambda d: _sample_task(d)["request"] == RID,
    "tasks[].steps": lambda d: len(_sample_task(d)["steps"]) == 1,
    "tasks[].state": lambda d: _sample_task(d)["error"] == _m(ev.TASK_DONE, "error"),
    "tasks[].waits": lambda d: _stack_has(
        _sample_task(d)["waits"][0]["stack"], _m(ev.TASK_WAIT, "stack")
    ),
    "tasks[].awaiting": lambda d: any(
        t["coro"] == pending_forever.__qualname__ and _stack_has(t["awaiting"], "pending_forever")
        for t in d["tasks"]
    ),
    "loop[block]": lambda d: any(
        _stack_has(e["stack"], _m(ev.LOOP_BLOCK, "stack")) for e in _entries(d, "loop", "block")
    ),
    "loop[callback]": lambda d: any(
        e["callback"] == _m(ev.LOOP_CALLBACK, "name") for e in _entries(d, "loop", "callback")
    ),
    "loop[lag]": lambda d: any(e["duration"] == 0.005 for e in _entries(d, "loop", "lag")),
    "loop[gc]": lambda d: any(
        e["generation"] == 2 and e["collected"] == 7 for e in _entries(d, "loop", "gc")
    ),
    "loop[step]": lambda d: any(
        _stack_has(e["stack"], _m(ev.TASK_SLOW_STEP, "stack")) for e in _entries(d, "loop", "step")
    ),
    "events[region]": lambda d: any(
        e["name"] == _m(ev.REGION, "name") for e in _entries(d, "events", "region")
    ),
    "events[log]": lambda d: any(
        e["message"] == _m(ev.LOG, "message") for e in _entries(d, "events", "log")
    ),
    "events[executor]": lambda d: any(
        e["func"] == _m(ev.EXECUTOR, "func") for e in _entries(d, "events", "executor")
    ),
    "events[cancel]": lambda d: any(
        _stack_has(e["stack"], _m(ev.TASK_CANCEL, "stack")) for e in _entries(d, "events", "cancel")
    ),
    "events[trigger]": lambda d: any(
        e["trigger_kind"] == _m(ev.MARK, "kind") for e in _entries(d, "events", "trigger")
    ),
    "trigger": lambda d: (
        d["trigger"]["kind"] == "manual" and d["trigger"]["reason"] == "every kind"
    ),
}


def test_the_samples_cover_every_kind() -> None:
    assert sorted(e[0] for e in sample_events(10**9)) == sorted(ev.SPECS)
    assert IN_DOCUMENT.keys() == build.PARTS, "say where a new part shows in the document"


@pytest.mark.parametrize("part", sorted(build.PARTS))
def test_each_part_is_in_the_document(doc: Doc, part: str) -> None:
    assert IN_DOCUMENT[part](doc), part


# -- the Perfetto exports, read into one shape ------------------------------------------------

Record = dict[str, Any]


def _from_json(data: bytes) -> list[Record]:
    events = orjson.loads(data)["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    kinds = {"X": "slice", "i": "instant", "C": "counter"}
    return [
        {
            "track": names.get(e.get("tid"), ""),
            "type": kinds[e["ph"]],
            "name": e["name"],
            "cat": e.get("cat"),
            "args": e.get("args") or {},
            "value": next(iter(e["args"].values()), None) if e["ph"] == "C" else None,
        }
        for e in events
        if e["ph"] in kinds
    ]


def _packets(data: bytes) -> Iterator[TracePacket]:
    for packet in Trace.FromString(data).packet:
        if packet.HasField("compressed_packets"):
            yield from Trace.FromString(zlib.decompress(packet.compressed_packets)).packet
        else:
            yield packet


def _from_pftrace(data: bytes) -> list[Record]:
    """Track events with their names, categories and annotations (interned per sequence);
    times are left out (tests/export/test_pftrace.py compares those with the JSON)."""
    tracks: dict[int, str] = {}
    tables: dict[int, dict[str, dict[int, str]]] = {}
    default_track: dict[int, int] = {}
    out: list[Record] = []
    kinds = {
        TrackEvent.TYPE_SLICE_BEGIN: "slice",
        TrackEvent.TYPE_INSTANT: "instant",
        TrackEvent.TYPE_COUNTER: "counter",
    }
    for p in _packets(data):
        seq = p.trusted_packet_sequence_id
        if p.sequence_flags & TracePacket.SEQ_INCREMENTAL_STATE_CLEARED:
            tables[seq] = {"names": {}, "cats": {}, "keys": {}, "strings": {}}
        if p.HasField("interned_data"):
            d, t = p.interned_data, tables[seq]
            t["names"].update((x.iid, x.name) for x in d.event_names)
            t["cats"].update((x.iid, x.name) for x in d.event_categories)
            t["keys"].update((x.iid, x.name) for x in d.debug_annotation_names)
            t["strings"].update((x.iid, x.str.decode()) for x in d.debug_annotation_string_values)
        if p.HasField("trace_packet_defaults"):
            default_track[seq] = p.trace_packet_defaults.track_event_defaults.track_uuid
        if p.HasField("track_descriptor"):
            tracks[p.track_descriptor.uuid] = p.track_descriptor.name
        if not p.HasField("track_event") or p.track_event.type not in kinds:
            continue
        te, t = p.track_event, tables[seq]
        args = {}
        for a in te.debug_annotations:
            if a.HasField("string_value_iid"):
                args[t["keys"][a.name_iid]] = t["strings"][a.string_value_iid]
            else:
                args[t["keys"][a.name_iid]] = getattr(a, a.WhichOneof("value"))
        track = te.track_uuid if te.HasField("track_uuid") else default_track[seq]
        value = None
        if te.type == TrackEvent.TYPE_COUNTER:
            value = te.double_counter_value if te.HasField("double_counter_value") else None
            value = te.counter_value if value is None else value
        out.append(
            {
                "track": tracks.get(track, ""),
                "type": kinds[te.type],
                # A counter is named by its own track here, by its event in the JSON.
                "name": t["names"].get(te.name_iid)
                or (tracks.get(track) if value is not None else None),
                "cat": t["cats"].get(te.category_iids[0]) if te.category_iids else None,
                "args": args,
                "value": value,
            }
        )
    return out


def _has(records: list[Record], test: Callable[[Record], bool] | None = None, **want: Any) -> bool:
    """Whether a record has these values (``type``, ``cat``, ``name``) and passes ``test``."""
    return any(
        all(r.get(k) == v for k, v in want.items()) and (test is None or test(r)) for r in records
    )


def _arg_has(r: Record, key: str, text: str) -> bool:
    return text in str(r["args"].get(key) or "")


def _in_trace(records: list[Record], part: str) -> bool:
    coro = _m(ev.TASK_CREATE, "coro")
    checks: dict[str, Callable[[], bool]] = {
        "requests": lambda: _has(
            records, lambda r: "/request_start.path" in r["name"], type="slice", cat="request"
        ),
        "requests[].end": lambda: _has(
            records,
            lambda r: r["name"].endswith(" 503") and _arg_has(r, "error", _m(ev.REQ_END, "error")),
            type="slice",
            cat="request",
        ),
        "requests[].error_stack": lambda: _has(
            records,
            lambda r: _arg_has(r, "raised_at", _m(ev.REQ_ERROR, "stack")),
            type="slice",
            cat="request",
        ),
        "tasks": lambda: any(coro in r["track"] for r in records),
        "tasks[].steps": lambda: _has(
            records, lambda r: coro in r["track"], type="slice", cat="step"
        ),
        "tasks[].state": lambda: _has(
            records,
            lambda r: r["name"] == f"task error: {_m(ev.TASK_DONE, 'error')}",
            type="instant",
            cat="task",
        ),
        "tasks[].waits": lambda: _has(
            records,
            lambda r: _arg_has(r, "await_stack", _m(ev.TASK_WAIT, "stack")),
            type="slice",
            cat="suspended",
        ),
        "tasks[].awaiting": lambda: _has(
            records,
            lambda r: _arg_has(r, "awaiting", "pending_forever"),
            type="slice",
            cat="suspended",
        ),
        "loop[block]": lambda: _has(
            records,
            lambda r: _arg_has(r, "stack", _m(ev.LOOP_BLOCK, "stack")),
            type="slice",
            cat="block",
        ),
        "loop[callback]": lambda: _has(
            records, type="slice", cat="callback", name=_m(ev.LOOP_CALLBACK, "name")
        ),
        "loop[lag]": lambda: _has(records, type="counter", name="loop lag (ms)", value=5.0),
        "loop[gc]": lambda: _has(records, type="slice", cat="gc", name="GC gen 2"),
        "events[region]": lambda: _has(
            records, type="slice", cat="region", name=_m(ev.REGION, "name")
        ),
        "events[log]": lambda: _has(
            records,
            lambda r: r["name"] == f"{_m(ev.LOG, 'category')}: {_m(ev.LOG, 'message')}",
            type="instant",
            cat="log",
        ),
        "events[executor]": lambda: _has(
            records, type="slice", cat="executor", name=_m(ev.EXECUTOR, "func")
        ),
        "events[cancel]": lambda: _has(
            records,
            lambda r: _arg_has(r, "at", _m(ev.TASK_CANCEL, "stack")),
            type="instant",
            cat="cancel",
        ),
        "events[trigger]": lambda: _has(
            records, type="instant", cat="trigger", name=f"trigger {_m(ev.MARK, 'kind')}"
        ),
        "trigger": lambda: _has(records, type="instant", name="TRIGGER manual"),
    }
    assert checks.keys() == set(perfetto.DRAWN) == set(pftrace.DRAWN), "say where it shows"
    return checks[part]()


TRACES: dict[str, Callable[[Doc], list[Record]]] = {
    "perfetto": lambda d: _from_json(perfetto.to_perfetto(d)),
    "pftrace": lambda d: _from_pftrace(pftrace.to_pftrace(d)),
}


@pytest.fixture(scope="module")
def traces(doc: Doc) -> dict[str, list[Record]]:
    return {name: read(doc) for name, read in TRACES.items()}


@pytest.mark.parametrize("name", sorted(TRACES))
@pytest.mark.parametrize("part", sorted(build.PARTS))
def test_each_part_is_drawn_by_each_trace_export(
    traces: dict[str, list[Record]], name: str, part: str
) -> None:
    drawn, skipped = renderers()[name]
    if part in skipped:
        pytest.skip(f"{name} leaves {part} out: {skipped[part]}")
    assert _in_trace(traces[name], part), f"{name} does not draw {part} ({drawn.get(part)})"


# -- the page, in Chromium ----------------------------------------------------------------

#: Every item of the page with its details, the rows and whether the trigger is marked.
PAGE_ITEMS = """(() => {
  const fd = window.flightdeck, out = [], kinds = fd.kinds();
  for (const kind of Object.keys(kinds)) {
    for (let i = 0; i < kinds[kind]; i++) {
      const text = fd.select(kind, i), it = fd.selected();
      out.push({kind: kind, label: it.label, details: text});
    }
  }
  fd.select(null);
  return {items: out, rows: fd.rows, trigger: fd.axisBoxes().trigger !== null,
          parts: fd.parts, notDrawn: fd.notDrawn};
})()"""


@pytest.fixture(scope="module")
def page(doc: Doc, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    path = tmp_path_factory.mktemp("page") / "every-kind.html"
    path.write_bytes(to_html(doc))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(path.resolve().as_uri())
            tab.wait_for_function("window.flightdeck && window.flightdeck.ready", timeout=30_000)
            found: dict[str, Any] = tab.evaluate(PAGE_ITEMS)
            assert errors == []
            return found
        finally:
            browser.close()


def _in_page(page: dict[str, Any], part: str) -> bool:
    items: list[dict[str, str]] = page["items"]

    def item(kind: str, test: Callable[[dict[str, str]], bool] = lambda i: True) -> bool:
        return any(i["kind"] == kind and test(i) for i in items)

    coro = _m(ev.TASK_CREATE, "coro")
    checks: dict[str, Callable[[], bool]] = {
        "requests": lambda: item("request", lambda i: "/request_start.path" in i["label"]),
        "requests[].end": lambda: item(
            "request",
            lambda i: i["label"].endswith(" 503") and _m(ev.REQ_END, "error") in i["details"],
        ),
        "requests[].error_stack": lambda: item(
            "request",
            lambda i: "raised at" in i["details"] and _m(ev.REQ_ERROR, "stack") in i["details"],
        ),
        "tasks": lambda: any(coro in row for row in page["rows"]),
        "tasks[].steps": lambda: item("step", lambda i: coro in i["label"]),
        "tasks[].state": lambda: item("step", lambda i: _m(ev.TASK_DONE, "error") in i["details"]),
        "tasks[].waits": lambda: item(
            "suspended", lambda i: _m(ev.TASK_WAIT, "stack") in i["details"]
        ),
        "tasks[].awaiting": lambda: item(
            "suspended",
            lambda i: (
                "awaiting at snapshot time" in i["details"] and "pending_forever" in i["details"]
            ),
        ),
        "loop[block]": lambda: item("block", lambda i: _m(ev.LOOP_BLOCK, "stack") in i["details"]),
        "loop[callback]": lambda: item(
            "callback", lambda i: i["label"] == _m(ev.LOOP_CALLBACK, "name")
        ),
        "loop[lag]": lambda: item("lag", lambda i: i["label"] == "lag 5.0 ms"),
        "loop[gc]": lambda: item("gc", lambda i: i["label"].startswith("GC gen 2")),
        "loop[step]": lambda: item(
            "step", lambda i: _m(ev.TASK_SLOW_STEP, "stack") in i["details"]
        ),
        "events[region]": lambda: item("region", lambda i: i["label"] == _m(ev.REGION, "name")),
        "events[log]": lambda: item(
            "log", lambda i: i["label"] == f"{_m(ev.LOG, 'category')}: {_m(ev.LOG, 'message')}"
        ),
        "events[executor]": lambda: item(
            "executor", lambda i: i["label"] == _m(ev.EXECUTOR, "func")
        ),
        "events[cancel]": lambda: item(
            "cancel", lambda i: _m(ev.TASK_CANCEL, "stack") in i["details"]
        ),
        "events[trigger]": lambda: item(
            "mark", lambda i: i["label"] == f"trigger {_m(ev.MARK, 'kind')}"
        ),
        "trigger": lambda: bool(page["trigger"]),
    }
    assert checks.keys() == build.PARTS, "say where a new part shows in the page"
    return checks[part]()


@browser_only
@pytest.mark.browser
def test_the_page_declares_what_it_draws(page: dict[str, Any]) -> None:
    # The tables the static check reads are the ones the page runs with.
    assert page["parts"] == _js_table("PARTS")
    assert page["notDrawn"] == _js_table("NOT_DRAWN")


@browser_only
@pytest.mark.browser
@pytest.mark.parametrize("part", sorted(build.PARTS))
def test_each_part_is_drawn_by_the_page(page: dict[str, Any], part: str) -> None:
    drawn, skipped = renderers()["timeline.js"]
    if part in skipped:
        pytest.skip(f"the page leaves {part} out: {skipped[part]}")
    assert _in_page(page, part), f"the page does not draw {part} ({drawn.get(part)})"
