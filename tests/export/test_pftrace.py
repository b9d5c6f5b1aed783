"""The protobuf Perfetto export reads back with Perfetto's own protos, track for track.

``_decode`` plays the part of Perfetto's trace processor for what the export uses:
compressed bundles, per-sequence interning and defaults, and incremental clocks reset by a
ClockSnapshot before each track. Timestamps decoded from the deltas must equal the JSON
export's to the nanosecond.
"""

from __future__ import annotations

import collections
import copy
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TracePacket, TrackEvent
from samples import T0, make_big_doc, make_doc

from flightdeck import Snapshot
from flightdeck.export import pftrace
from flightdeck.export.perfetto import to_perfetto
from flightdeck.export.pftrace import to_pftrace

LOOP = "event loop"


def _packets(data: bytes) -> Iterator[TracePacket]:
    for packet in Trace.FromString(data).packet:
        if packet.HasField("compressed_packets"):
            yield from Trace.FromString(zlib.decompress(packet.compressed_packets)).packet
        else:
            yield packet


def _decode(data: bytes) -> tuple[dict[int, str], list[dict[str, Any]]]:
    """Track names by uuid, and every track event with its absolute time, track, name and
    category, and its annotations by name."""
    tracks: dict[int, str] = {}
    interned: dict[int, dict[str, dict[int, str]]] = {}
    clock: dict[int, int] = {}
    offset: dict[int, int] = {}
    default_track: dict[int, int] = {}
    events: list[dict[str, Any]] = []
    for p in _packets(data):
        seq = p.trusted_packet_sequence_id
        if p.sequence_flags & TracePacket.SEQ_INCREMENTAL_STATE_CLEARED:
            interned[seq] = {"names": {}, "cats": {}, "keys": {}, "strings": {}}
        tables = interned.get(seq)
        if p.HasField("interned_data"):
            assert tables is not None, "interned data before the sequence was cleared"
            d = p.interned_data
            tables["names"].update((x.iid, x.name) for x in d.event_names)
            tables["cats"].update((x.iid, x.name) for x in d.event_categories)
            tables["keys"].update((x.iid, x.name) for x in d.debug_annotation_names)
            strings = d.debug_annotation_string_values
            tables["strings"].update((x.iid, x.str.decode()) for x in strings)
        if p.HasField("trace_packet_defaults"):
            defaults = p.trace_packet_defaults
            assert defaults.timestamp_clock_id == 64
            default_track[seq] = defaults.track_event_defaults.track_uuid
        if p.HasField("track_descriptor"):
            tracks[p.track_descriptor.uuid] = p.track_descriptor.name
        if p.HasField("clock_snapshot"):
            clocks = {c.clock_id: c for c in p.clock_snapshot.clocks}
            assert clocks[64].is_incremental and not clocks[6].is_incremental
            clock[seq] = clocks[64].timestamp
            offset[seq] = clocks[6].timestamp - clocks[64].timestamp
            continue
        if not p.HasField("track_event"):
            continue
        assert tables is not None and p.HasField("timestamp")
        clock[seq] += p.timestamp
        te = p.track_event
        notes = {}
        for a in te.debug_annotations:
            key = tables["keys"][a.name_iid]
            if a.HasField("string_value_iid"):
                notes[key] = tables["strings"][a.string_value_iid]
            else:
                notes[key] = getattr(a, a.WhichOneof("value"))
        events.append(
            {
                "ts": clock[seq] + offset[seq],
                "track": te.track_uuid if te.HasField("track_uuid") else default_track[seq],
                "type": te.type,
                "name": tables["names"][te.name_iid] if te.name_iid else None,
                "cat": tables["cats"][te.category_iids[0]] if te.category_iids else None,
                "notes": notes,
                "flows": list(te.flow_ids),
                "ends_flows": list(te.terminating_flow_ids),
            }
        )
    return tracks, events


def _read(data: bytes) -> dict[str, Any]:
    names, events = _decode(data)
    begins: dict[str, list[int]] = collections.defaultdict(list)
    ends: dict[str, list[int]] = collections.defaultdict(list)
    depth: collections.Counter[int] = collections.Counter()
    instants: list[tuple[int, str]] = []
    counters: list[int] = []
    flows_out: list[int] = []
    flows_in: list[int] = []
    last: dict[int, int] = {}
    for ev in events:
        track = names[ev["track"]]
        if ev["type"] == TrackEvent.TYPE_SLICE_BEGIN:
            begins[track].append(ev["ts"])
            depth[ev["track"]] += 1
        elif ev["type"] == TrackEvent.TYPE_SLICE_END:
            ends[track].append(ev["ts"])
            depth[ev["track"]] -= 1
            assert depth[ev["track"]] >= 0, f"END without BEGIN on {track}"
        elif ev["type"] == TrackEvent.TYPE_INSTANT:
            instants.append((ev["ts"], ev["name"]))
        elif ev["type"] == TrackEvent.TYPE_COUNTER:
            counters.append(ev["ts"])
        if ev["type"] in (TrackEvent.TYPE_SLICE_BEGIN, TrackEvent.TYPE_SLICE_END):
            # Along a track, slices are written in time order.
            assert ev["ts"] >= last.get(ev["track"], ev["ts"])
            last[ev["track"]] = ev["ts"]
        flows_out += ev["flows"]
        flows_in += ev["ends_flows"]
    assert not +depth, "slices left open"
    return {
        "tracks": set(names.values()),
        "begins": {k: sorted(v) for k, v in begins.items()},
        "ends": {k: sorted(v) for k, v in ends.items()},
        "instants": sorted(instants),
        "flows": (sorted(flows_out), sorted(flows_in)),
        "counters": sorted(counters),
        "events": events,
        "names": names,
    }


def _ns(us: float) -> int:
    return round(us * 1000)


def _json(doc: dict[str, Any]) -> dict[str, Any]:
    """The JSON export, read the same way; times in ns after the earliest event, as the
    protobuf export counts them."""
    events = orjson.loads(to_perfetto(doc))["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    shift = min([0] + [_ns(e["ts"]) for e in events if e["ph"] in ("X", "i", "C")])
    begins: dict[str, list[int]] = collections.defaultdict(list)
    ends: dict[str, list[int]] = collections.defaultdict(list)
    for e in events:
        if e["ph"] != "X":
            continue
        track = threads[e["tid"]]
        begins[track].append(_ns(e["ts"]) - shift)
        ends[track].append(_ns(e["ts"]) + _ns(e["dur"]) - shift)
    return {
        "tracks": set(threads.values()),
        "begins": {k: sorted(v) for k, v in begins.items()},
        "ends": {k: sorted(v) for k, v in ends.items()},
        "instants": sorted((_ns(e["ts"]) - shift, e["name"]) for e in events if e["ph"] == "i"),
        "flows": sorted(e["id"] for e in events if e["ph"] == "s"),
        "counters": sorted(_ns(e["ts"]) - shift for e in events if e["ph"] == "C"),
        "loop_steps": sum(
            1 for e in events if e["ph"] == "X" and e["cat"] == "step" and threads[e["tid"]] == LOOP
        ),
    }


def _same_as_json(doc: dict[str, Any]) -> dict[str, Any]:
    pb, js = _read(to_pftrace(doc)), _json(doc)
    assert js["tracks"] <= pb["tracks"]  # plus the process and the lag counter
    assert pb["begins"].keys() == js["begins"].keys()
    for track in js["begins"]:
        assert len(pb["begins"][track]) == len(js["begins"][track]), track
        assert pb["begins"][track] == js["begins"][track], track
        assert pb["ends"][track] == js["ends"][track], track
    assert pb["instants"] == js["instants"]
    assert pb["flows"] == (js["flows"], js["flows"])
    assert pb["counters"] == js["counters"]
    return pb


def test_same_tracks_slices_times_instants_and_flows_as_the_json_export() -> None:
    for doc in (make_doc(), make_big_doc(2_000)):
        pb = _same_as_json(doc)
        assert _json(doc)["flows"] and _json(doc)["loop_steps"]
        begins = [e for e in pb["events"] if e["type"] == TrackEvent.TYPE_SLICE_BEGIN]
        assert all(e["name"] is not None and e["cat"] is not None for e in begins)
    pb = _read(to_pftrace(make_doc()))
    instants = {name for _, name in pb["instants"]}
    assert "TRIGGER slow_request" in instants
    begins = {e["name"] for e in pb["events"] if e["type"] == TrackEvent.TYPE_SLICE_BEGIN}
    assert "GET /slow 200" in begins


def test_annotations_where_the_json_export_says_more_than_the_slice() -> None:
    pb = _read(to_pftrace(make_doc()))
    begins = [e for e in pb["events"] if e["type"] == TrackEvent.TYPE_SLICE_BEGIN]
    request = next(e for e in begins if e["name"] == "GET /slow 200")
    assert request["notes"]["status"] == 200 and request["notes"]["route"] == "/slow"
    assert "duration_ms" not in request["notes"]
    # Steps on a task's own track carry nothing the track does not say; their copies on the
    # event-loop lane say which task and request they are of, as the JSON export's do.
    loop = next(uuid for uuid, name in pb["names"].items() if name == LOOP)
    steps = [e for e in begins if e["cat"] == "step" and e["track"] != loop]
    assert steps and all(not e["notes"] for e in steps)
    copies = [e for e in begins if e["cat"] == "step" and e["track"] == loop]
    js = orjson.loads(to_perfetto(make_doc()))["traceEvents"]
    loop_tid = next(
        e["tid"] for e in js if e["name"] == "thread_name" and e["args"]["name"] == LOOP
    )
    js_copies = [e for e in js if e.get("tid") == loop_tid and e.get("cat") == "step"]
    assert len(copies) == len(js_copies) > 0
    key = lambda notes: (notes.get("task"), notes.get("request"))  # noqa: E731
    assert sorted(map(key, (e["notes"] for e in copies))) == sorted(
        map(key, (e["args"] for e in js_copies))
    )
    # The await stack of a suspension, and where a pending task waits.
    stacks = [e["notes"]["await_stack"] for e in begins if "await_stack" in e["notes"]]
    assert any("app.py:41 in slow" in s for s in stacks)
    assert any("starlette/requests.py:230" in e["notes"].get("awaiting", "") for e in begins)
    block = next(e for e in begins if e["cat"] == "block")
    assert "app.py:30 in block" in block["notes"]["stack"]


def test_tasks_whose_slices_overlap_or_are_empty_are_nested_like_the_json_export() -> None:
    doc = make_doc()
    t3 = next(t for t in doc["tasks"] if t["id"] == "t3")
    # A step starting before the previous one ended, and a step of no length.
    t3["steps"] = [
        [T0 + 6.0002, 0.01, 0.0, 0.0001],
        [T0 + 6.005, 0.02, 0.0, 0.0],
        [T0 + 6.03, 0.0, 0.001, 0.0005],
        [T0 + 6.04, None, None, None],
        [T0 + 7.121, 0.05, 1.0, 0.0005],
    ]
    t4 = next(t for t in doc["tasks"] if t["id"] == "t4")
    t4["steps"] = [[T0 + 6.0015, 0.0005, 0.0, 0.0004], "junk", [], [T0 + 6.5, 0.01]]
    _same_as_json(doc)


def test_times_before_the_window_shift_the_whole_trace() -> None:
    doc = make_doc()
    doc["requests"][0]["start"] = T0 - 2.0
    t2 = next(t for t in doc["tasks"] if t["id"] == "t2")
    t2["steps"].insert(0, [T0 - 1.5, 0.001, None, None])
    pb = _same_as_json(doc)
    assert min(e["ts"] for e in pb["events"]) == 0


def test_at_most_40_bytes_an_event() -> None:
    doc = make_big_doc(20_000)
    data = to_pftrace(doc)
    assert len(data) <= 40 * doc["window"]["events"]
    assert len(data) < len(to_perfetto(doc)) / 20
    # Without deflate too, the encoding is compact: well under half of the JSON export.
    raw = sum(len(zlib.decompress(p.compressed_packets)) for p in Trace.FromString(data).packet)
    assert raw < len(to_perfetto(doc)) / 5


def test_an_empty_document() -> None:
    doc = copy.deepcopy(make_doc(requests=[], tasks=[], loop=[], events=[]))
    pb = _read(to_pftrace(doc))
    assert LOOP in pb["tracks"] and not pb["begins"]


def _deflate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pftrace deflate"]


@pytest.fixture
def small_bundles(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Bundles of 16 KiB, so a small document fills many (and the worker's queue), and the
    number of workers started."""
    monkeypatch.setattr(pftrace, "_BUNDLE", 1 << 14)
    started = {"workers": 0}
    start = pftrace._Bundles._start

    def counted(self: pftrace._Bundles) -> None:
        started["workers"] += 1
        start(self)

    monkeypatch.setattr(pftrace._Bundles, "_start", counted)
    return started


def test_deflate_on_a_thread_writes_the_same_bytes_as_in_turn(
    monkeypatch: pytest.MonkeyPatch, small_bundles: dict[str, Any]
) -> None:
    doc = make_big_doc(2_000)
    monkeypatch.setattr(pftrace, "_DEFLATE_THREAD", False)
    in_turn = to_pftrace(doc)
    assert small_bundles["workers"] == 0
    monkeypatch.setattr(pftrace, "_DEFLATE_THREAD", True)
    threaded = to_pftrace(doc)
    assert small_bundles["workers"] == 1 and not _deflate_threads()
    assert threaded == in_turn
    bundles = [p for p in Trace.FromString(threaded).packet if p.HasField("compressed_packets")]
    assert len(bundles) > 2 * pftrace._WAITING
    assert _read(threaded) == _read(in_turn)


def test_a_small_trace_starts_no_thread(small_bundles: dict[str, Any]) -> None:
    pftrace._BUNDLE = 1 << 20  # the fixture's monkeypatch restores it
    assert _read(to_pftrace(make_doc()))["begins"]
    assert small_bundles["workers"] == 0


def test_a_deflate_error_reaches_the_caller_and_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch, small_bundles: dict[str, Any]
) -> None:
    deflated = pftrace._deflated

    def failing(raw: bytes | bytearray) -> bytes:
        if threading.current_thread() is not threading.main_thread():
            raise MemoryError("deflate")
        return deflated(raw)

    monkeypatch.setattr(pftrace, "_deflated", failing)
    with pytest.raises(MemoryError, match="deflate"):
        to_pftrace(make_big_doc(2_000))
    assert small_bundles["workers"] == 1 and not _deflate_threads()


def test_an_encoder_error_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch, small_bundles: dict[str, Any]
) -> None:
    write = pftrace._TaskTracks.write
    calls = {"n": 0}

    def failing(self: pftrace._TaskTracks, raw: bytearray, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 100:  # bundles handed off by then (16 KiB each)
            raise ValueError("encoder")
        write(self, raw, *args)

    monkeypatch.setattr(pftrace._TaskTracks, "write", failing)
    with pytest.raises(ValueError, match="encoder"):
        to_pftrace(make_big_doc(2_000))
    assert small_bundles["workers"] == 1 and not _deflate_threads()


def test_served_by_dumps_and_the_cli(tmp_path: Path) -> None:
    snap = Snapshot(make_doc())
    data = snap.dumps("pftrace")
    assert _read(data)["begins"]
    path = tmp_path / "snap.json"
    path.write_bytes(snap.dumps("json"))
    out = tmp_path / "snap.pftrace"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flightdeck",
            "export",
            str(path),
            "--format",
            "pftrace",
            "-o",
            str(out),
        ],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data
