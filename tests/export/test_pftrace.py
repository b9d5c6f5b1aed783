"""The protobuf Perfetto export reads back with Perfetto's own protos, track for track."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

sys.path.insert(0, str(Path(__file__).parents[1]))
from samples import make_big_doc, make_doc

from flightdeck import Snapshot
from flightdeck.export.perfetto import to_perfetto
from flightdeck.export.pftrace import to_pftrace


def _read(data: bytes) -> dict[str, Any]:
    trace = Trace.FromString(data)
    names: dict[int, str] = {}
    interned: dict[int, str] = {}
    begins: collections.Counter[str] = collections.Counter()
    ends: collections.Counter[str] = collections.Counter()
    instants: collections.Counter[str] = collections.Counter()
    flows_out, flows_in, counters = [], [], 0
    for packet in trace.packet:
        for n in packet.interned_data.event_names:
            interned[n.iid] = n.name
        if packet.HasField("track_descriptor"):
            names[packet.track_descriptor.uuid] = packet.track_descriptor.name
    for packet in trace.packet:
        if not packet.HasField("track_event"):
            continue
        te = packet.track_event
        track = names.get(te.track_uuid, "?")
        if te.type == TrackEvent.TYPE_SLICE_BEGIN:
            begins[track] += 1
            assert te.name_iid in interned
        elif te.type == TrackEvent.TYPE_SLICE_END:
            ends[track] += 1
        elif te.type == TrackEvent.TYPE_INSTANT:
            instants[interned[te.name_iid]] += 1
        elif te.type == TrackEvent.TYPE_COUNTER:
            counters += 1
        flows_out += list(te.flow_ids)
        flows_in += list(te.terminating_flow_ids)
    return {
        "tracks": set(names.values()),
        "begins": begins,
        "ends": ends,
        "instants": instants,
        "flows": (sorted(flows_out), sorted(flows_in)),
        "counters": counters,
        "interned": set(interned.values()),
    }


def _json(doc: dict[str, Any]) -> dict[str, Any]:
    events = orjson.loads(to_perfetto(doc))["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    slices = collections.Counter(threads[e["tid"]] for e in events if e["ph"] == "X")
    instants = collections.Counter(e["name"] for e in events if e["ph"] == "i")
    flows = sorted(e["id"] for e in events if e["ph"] == "s")
    counters = sum(1 for e in events if e["ph"] == "C")
    return {
        "tracks": set(threads.values()),
        "slices": slices,
        "instants": instants,
        "flows": flows,
        "counters": counters,
    }


def test_same_tracks_slices_instants_and_flows_as_the_json_export() -> None:
    for doc in (make_doc(), make_big_doc(2_000)):
        pb, js = _read(to_pftrace(doc)), _json(doc)
        assert js["tracks"] <= pb["tracks"]  # plus the process and the lag counter
        assert pb["begins"] == js["slices"] and pb["ends"] == js["slices"]
        assert pb["instants"] == js["instants"]
        assert pb["flows"] == (js["flows"], js["flows"]) and js["flows"]
        assert pb["counters"] == js["counters"]
    pb = _read(to_pftrace(make_doc()))
    assert "GET /slow 200" in pb["interned"] and "TRIGGER slow_request" in pb["interned"]


def test_smaller_than_the_json_export() -> None:
    doc = make_big_doc(20_000)
    assert len(to_pftrace(doc)) < len(to_perfetto(doc)) / 2


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
