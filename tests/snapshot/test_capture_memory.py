"""The capture path's peak memory (tracemalloc on a big synthetic window; RSS on a server).

A capture writes the window's own records (``container.py``): its peak is the stored form
plus one segment in flight, never a record per task, step or request.
"""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import get_json, http_get, rss_kib, wait_until

from flightdeck import FlightRecorder
from flightdeck.core import events as ev
from flightdeck.core.window import Frozen
from flightdeck.snapshot.container import is_container, read_document
from flightdeck.snapshot.store import SnapshotStore

TASKS = 100
SEGMENTS = 12
PER_SEGMENT = 10_000
BASE = 10**13
RAW = 0x7F3A_0000_0000


class _Segment:
    """A sealed segment that decodes to fresh tuples each time, holding nothing itself."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = PER_SEGMENT + (TASKS if index == 0 else 0)

    def events(self) -> list[tuple[Any, ...]]:
        rng = random.Random(self.index)
        out: list[tuple[Any, ...]] = []
        t = BASE + self.index * PER_SEGMENT * 12_000
        if self.index == 0:
            out += [
                (ev.TASK_CREATE, t, RAW + 16 * k, f"worker-{k}", "work", None, None, None)
                for k in range(TASKS)
            ]
        for i in range(PER_SEGMENT):
            t0 = t + rng.randrange(1_000, 20_000)
            t1 = t0 + rng.randrange(2_000, 60_000)
            out.append((ev.TASK_STEP, t0, t1, RAW + 16 * (i % TASKS), t0 - rng.randrange(9_000)))
            t = t1
        return out


def test_capture_peak_stays_near_the_stored_size() -> None:
    frozen = Frozen([_Segment(i) for i in range(SEGMENTS)], [], {}, {}, 0, BASE + 10**12)
    store = SnapshotStore()
    rec = FlightRecorder(loop_blocked=None)
    tracemalloc.start()
    try:
        one_segment = _Segment(1).events()
        decoded = tracemalloc.get_traced_memory()[0]
        del one_segment
        decoded -= tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        info = rec.build_into(store, frozen, kind="test")
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data = store.get_stored(info.id)
    assert data is not None and len(data) == info.stored and is_container(data)
    doc = read_document(data)
    steps = sum(len(t["steps"]) for t in doc["tasks"])
    assert steps == SEGMENTS * PER_SEGMENT
    assert frozen.segments == []  # build_into let go of each segment once written
    # Held at the end: the stored form. On the way: one decoded segment, its JSON and the
    # JSON compressed. Nothing is built per task or per step on the capture path.
    extra = peak - before
    assert after - before <= info.stored + (1 << 20)  # the stored form, free lists
    bound = info.stored + 2 * decoded + (2 << 20)
    assert extra <= bound, (extra, bound, info.stored, decoded)


# -- on a real server ----------------------------------------------------------------------

WINDOW_BYTES = 8 << 20


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _reset_peak(pid: int) -> None:
    # "5" resets the peak RSS (VmHWM) to the current RSS (Linux 4.0+, same user).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _load(url: str, stop: threading.Event, path: str) -> None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    while not stop.is_set():
        conn.request("GET", path)
        conn.getresponse().read()
    conn.close()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc needed")
def test_every_capture_path_stays_within_one_window_of_steady_rss(
    server: Any, tmp_path: Path
) -> None:
    """Triggered, manual (endpoint), ``write_to``, ``snapshot`` and ``capture`` on a server
    whose full window is tens of thousands of short tasks: each peaks within one
    ``max_bytes`` of the RSS before it (a document built in the app took several times
    that: a record per task and per request). The store is a directory, so what a capture
    keeps (about one window's bytes) is not counted: this measures its way there."""
    srv = server(
        options={
            "max_bytes": WINDOW_BYTES,
            "window": 300,
            "slow_request": None,
            "loop_blocked": None,
            "capture_delay": 0,
            "max_snapshots": 20,
            "directory": str(tmp_path / "snaps"),
        }
    )
    stop = threading.Event()
    clients = [
        threading.Thread(target=_load, args=(srv.url, stop, "/fanout?n=40")) for _ in range(3)
    ]
    for t in clients:
        t.start()
    try:
        # Full: the byte bound has pushed events out (the window is 300 s long).
        wait_until(
            lambda: get_json(srv.url + "/debug/flight/status")["dropped"] > 0,
            timeout=180,
            interval=0.5,
        )
    finally:
        stop.set()
        for t in clients:
            t.join(30)
    status = get_json(srv.url + "/debug/flight/status")
    assert status["recorder"]["live_tasks"] < 100
    # A warm-up capture of each kind: first-use allocations are not the capture's.
    assert http_get(srv.url + "/own_capture?how=write_to")[0] == 200

    def measured(action: Callable[[], None]) -> int:
        time.sleep(0.2)
        _reset_peak(srv.pid)
        before = rss_kib(srv.pid)
        action()
        return (_peak_kib(srv.pid) - before) * 1024

    def triggered() -> None:
        done = get_json(srv.url + "/debug/flight/status")["snapshots"]
        assert http_get(srv.url + "/error")[0] == 500
        wait_until(
            lambda: get_json(srv.url + "/debug/flight/status")["snapshots"] > done, timeout=60
        )

    def manual() -> None:
        req = urllib.request.Request(srv.url + "/debug/flight/snapshots", method="POST")
        with urllib.request.urlopen(req, timeout=60) as answer:
            assert answer.status == 201

    def own(how: str) -> Callable[[], None]:
        def run() -> None:
            status, _, body = http_get(srv.url + f"/own_capture?how={how}", timeout=60)
            assert status == 200 and orjson.loads(body)["bytes"] > 0

        return run

    peaks = {
        "triggered": measured(triggered),
        "manual": measured(manual),
        "write_to": measured(own("write_to")),
        "snapshot": measured(own("snapshot")),
        "capture": measured(own("capture")),
    }
    listing = get_json(srv.url + "/debug/flight/snapshots")
    assert len(listing["snapshots"] if isinstance(listing, dict) else listing) >= 2
    over = {k: v for k, v in peaks.items() if v > WINDOW_BYTES}
    assert not over, (peaks, status["bytes"], status["events"])
