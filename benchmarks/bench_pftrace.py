"""Size and speed of the protobuf Perfetto export, against the JSON export.

Builds a ~100k-event snapshot document (``tests/samples.py``'s ``make_big_doc``: 4,000
overlapping requests, two tasks each, ten steps a task, regions, logs, executor jobs, loop
blocks) and exports it as ``format=perfetto`` (JSON) and ``format=pftrace``, interleaved round
by round in this one process; reports the median of each, their ratio, and the protobuf
export's bytes per event (deflated as written, and before deflate). Targets: at most 40 bytes
an event, at least 5x faster than the JSON export.

The sample's times are regular (every step the same length), which deflate likes. ``--jitter``
adds a second document whose step lengths, gaps and ready times are drawn at random (fixed
seed), as a live window's are: the size to trust for real snapshots.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
import zlib
from typing import Any

from _common import ROOT, header, line, machine, median, write_json

sys.path.insert(0, str(ROOT / "tests"))
from samples import make_big_doc

from flightdeck.export.perfetto import to_perfetto
from flightdeck.export.pftrace import to_pftrace


def jittered(doc: dict[str, Any], seed: int = 13) -> dict[str, Any]:
    """The same document with each task's steps redrawn: lengths 5 µs to 2 ms, gaps 20 µs
    to 5 ms, ready 0 to 300 µs, at nanosecond resolution."""
    rng = random.Random(seed)
    out = copy.deepcopy(doc)
    for task in out["tasks"]:
        t = task["steps"][0][0]
        steps = []
        for _ in task["steps"]:
            dur = rng.uniform(5e-6, 2e-3)
            ready = rng.uniform(0.0, 3e-4)
            waited = rng.uniform(2e-5, 5e-3)
            steps.append([t + waited + ready, dur, waited, ready])
            t += waited + ready + dur
        task["steps"] = steps
        task["created"] = steps[0][0] - steps[0][2] - steps[0][3]
        task["done"] = t
    return out


def measure(doc: dict[str, Any], rounds: int) -> dict[str, Any]:
    events = int(doc["window"]["events"])
    pf_times: list[float] = []
    js_times: list[float] = []
    data = b""
    for r in range(rounds):
        # Alternate which goes first, so neither always runs on a warmer cache.
        order = ("json", "pftrace") if r % 2 == 0 else ("pftrace", "json")
        for which in order:
            t0 = time.perf_counter()
            if which == "json":
                to_perfetto(doc)
                js_times.append(time.perf_counter() - t0)
            else:
                data = to_pftrace(doc)
                pf_times.append(time.perf_counter() - t0)
    json_size = len(to_perfetto(doc))
    raw = _inflated(data)
    pf, js = median(pf_times), median(js_times)
    return {
        "events": events,
        "pftrace_bytes": len(data),
        "pftrace_raw_bytes": raw,
        "json_bytes": json_size,
        "bytes_per_event": len(data) / events,
        "raw_bytes_per_event": raw / events,
        "pftrace_ms": [round(t * 1e3, 1) for t in pf_times],
        "json_ms": [round(t * 1e3, 1) for t in js_times],
        "pftrace_median_ms": round(pf * 1e3, 1),
        "json_median_ms": round(js * 1e3, 1),
        "ratio": js / pf,
        "ratio_per_round_median": median([j / p for j, p in zip(js_times, pf_times, strict=True)]),
    }


def _inflated(data: bytes) -> int:
    """The packets' size before deflate (each bundle is one compressed_packets field)."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace

    trace = Trace.FromString(data)
    return sum(len(zlib.decompress(p.compressed_packets)) for p in trace.packet)


def report(name: str, res: dict[str, Any]) -> None:
    print(f"-- {name}: {res['events']:,} events")
    bpe = res["bytes_per_event"]
    print(line("pftrace bytes/event (as written)", f"{bpe:.1f}", "<= 40", bpe <= 40))
    raw = res["raw_bytes_per_event"]
    print(line("pftrace bytes/event before deflate", f"{raw:.1f}", "-", None))
    print(line("JSON bytes/event", f"{res['json_bytes'] / res['events']:.1f}", "-", None))
    times = f"{res['pftrace_median_ms']:.0f} / {res['json_median_ms']:.0f}"
    print(line("median ms, pftrace / JSON", times, "-", None))
    ratio = res["ratio"]
    print(line("JSON time / pftrace time (medians)", f"{ratio:.2f}x", ">= 5x", ratio >= 5))
    per_round = res["ratio_per_round_median"]
    print(line("  same, median of per-round ratios", f"{per_round:.2f}x", "-", None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--jitter", action="store_true", help="also a document of random times")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    header("pftrace export vs JSON export")
    doc = make_big_doc(args.events)
    results = {"regular": measure(doc, rounds)}
    report("make_big_doc (regular times)", results["regular"])
    if args.jitter:
        results["jittered"] = measure(jittered(doc), rounds)
        report("make_big_doc, times at random (--jitter)", results["jittered"])
    path = write_json(
        "bench_pftrace.json", {"machine": machine(), "rounds": rounds, "results": results}
    )
    print(f"   wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
