"""The pure window's drain cost: recorder-thread CPU per event, and bytes per event held.

What recording costs off the loop with the pure core: ``Window.maintain`` (drain the append
buffer, seal a segment, compress under pressure, evict) over the synthetic request workload
(``_workload.py``: a request start, a task, four steps, their ends), with the window kept
full, so that every segment is sealed and compressed, as in a busy service. Thread CPU
time (``time.thread_time``) of the maintaining thread, per event appended; then the
window's bytes per event held (``nbytes / events``).

``--baseline PATH`` loads ``PATH/flightdeck/core/window.py`` (another checkout, e.g. the
commit this work started from) beside this one and runs both, interleaved, ``--rounds``
times; medians. ``--traces`` gives every request a W3C trace id.

Command: .venv/bin/python benchmarks/bench_drain.py [--baseline /work/main] [--traces]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import header, write_json
from _workload import EventSource

from flightdeck.core import window as this_window
from flightdeck.snapshot.container import encode_events

MAX_BYTES = 16 << 20


def load_window(checkout: str) -> ModuleType:
    """``checkout``'s window module, as ``flightdeck.core`` would import it."""
    path = Path(checkout) / "flightdeck" / "core" / "window.py"
    spec = importlib.util.spec_from_file_location("flightdeck.core._baseline_window", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def events(n: int, traces: bool) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    source = EventSource(out.append, {}, {})
    while len(out) < n:
        source.request()
    if traces:
        out = [
            (*e[:10], f"{e[2]:016x}{e[1]:016x}"[-32:]) if e[0] == 8 and len(e) == 11 else e
            for e in out
        ]
    return out


def run(module: ModuleType, evs: list[tuple[Any, ...]], batch: int) -> dict[str, float]:
    kwargs: dict[str, Any] = {}
    if "encode" in inspect.signature(module.Window).parameters:
        kwargs["encode"] = encode_events  # what the recorder passes
    w = module.Window(10**15, MAX_BYTES, **kwargs)
    append = w.append
    maintain = w.maintain
    t0 = time.thread_time()
    for i in range(0, len(evs), batch):
        for e in evs[i : i + batch]:
            append(e)
        maintain()
    maintain(force_seal=True)
    cpu = time.thread_time() - t0
    held = w.events
    return {
        "cpu_ns_per_event": cpu * 1e9 / len(evs),
        "bytes_per_event_held": w.nbytes / held,
        "events_held": held,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="another checkout to compare with")
    parser.add_argument("--events", type=int, default=1_500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2000, help="events between two drains")
    parser.add_argument("--traces", action="store_true", help="a trace id on every request")
    args = parser.parse_args()
    header("bench_drain: the pure window's recorder-thread CPU per event, bytes per event")
    evs = events(args.events, args.traces)
    modules = {"this": this_window}
    if args.baseline:
        modules["baseline"] = load_window(args.baseline)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in modules}
    for _ in range(args.rounds):
        for name, module in modules.items():
            results[name].append(run(module, evs, args.batch))
    summary: dict[str, Any] = {"events": len(evs), "traces": args.traces}
    for name, rounds in results.items():
        cpu = statistics.median(r["cpu_ns_per_event"] for r in rounds)
        density = statistics.median(r["bytes_per_event_held"] for r in rounds)
        held = statistics.median(r["events_held"] for r in rounds)
        summary[name] = {"cpu_ns_per_event": cpu, "bytes_per_event_held": density, "rounds": rounds}
        spread = ", ".join(f"{r['cpu_ns_per_event']:.0f}" for r in rounds)
        print(
            f"  {name:<8} {cpu:6.0f} ns CPU per event (rounds: {spread}),"
            f" {density:.1f} bytes per event held ({held / 1e3:.0f}k events in 16 MiB)"
        )
    path = write_json("bench_drain.json", summary)
    print(f"   results: {path}")


if __name__ == "__main__":
    main()
