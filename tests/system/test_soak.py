"""Soak: a minute of mixed traffic (fast, slow, failing, loop-blocking, streaming) against a
real uvicorn subprocess. ``make soak`` runs it; the default suite skips it (``-m 'not soak'``).

Checks: every request answered as the route says; the server's RSS flat after warm-up; the
window's accounting adds up (see ``_accounting_gap``).
"""

from __future__ import annotations

import http.client
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import get_json, rss_kib, wait_until

pytestmark = pytest.mark.soak

WARMUP = 15.0
MEASURED = 45.0
CLIENTS = 6
# route -> (weight, expected status)
MIX = {
    "/fast": (60, 200),
    "/slow?ms={ms}": (14, 200),
    "/fail": (8, 500),
    "/error": (4, 500),
    "/block?ms={block}": (4, 200),
    "/stream?chunks=20&ms=2": (10, 200),
}


def _accounting_gap(stats: dict[str, Any]) -> int:
    """How far ``recorded`` is from what became of the events.

    The window's counters (``flightdeck.core.window``): ``recorded`` counts events drained from
    the append buffer; each one is then held in a segment or the open run, ``evicted`` by
    age, or ``dropped`` (segments evicted for ``max_bytes``, or a failed seal). ``dropped``
    also counts one per buffer overflow (``overflows``), for events never drained. ``events``
    includes those still in the append buffer, so the gap is the buffer's length: >= 0, and
    small on an idle server (the recorder drains every 50 ms).
    """
    accounted = stats["events"] + stats["evicted"] + stats["dropped"] - stats["overflows"]
    return int(accounted - stats["recorded"])


def test_soak_mixed_traffic(server: Any, tmp_path: Path) -> None:
    srv = server(
        env={"FLIGHTDECK_DIR": str(tmp_path)},
        options={
            "slow_request": 0.5,
            "loop_blocked": 0.1,
            "cooldown": 2.0,
            "window": 5.0,
            "max_bytes": 4 << 20,
            "max_snapshots": 10,
        },
    )
    routes = list(MIX)
    weights = [MIX[r][0] for r in routes]
    stop = threading.Event()
    lock = threading.Lock()
    sent = answered = 0
    wrong: list[tuple[str, int]] = []
    failures: list[str] = []

    def client(seed: int) -> None:
        nonlocal sent, answered
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        while not stop.is_set():
            route = rng.choices(routes, weights)[0]
            path = route.format(ms=rng.randint(50, 700), block=rng.randint(20, 150))
            with lock:
                sent += 1
            try:
                conn.request("GET", path)
                answer = conn.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{path}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
                continue
            with lock:
                answered += 1
                if answer.status != MIX[route][1]:
                    wrong.append((path, answer.status))
            if route == "/error":
                # uvicorn closes the connection after an app exception (with or without
                # flightdeck): start a new one rather than reuse a dead one.
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    rss: list[int] = []
    start = time.monotonic()
    try:
        while time.monotonic() - start < WARMUP + MEASURED:
            time.sleep(1.0)
            if time.monotonic() - start > WARMUP:
                rss.append(rss_kib(srv.pid))
            assert srv.proc.poll() is None, srv.log()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:5]
    assert answered == sent and sent > 1000, (answered, sent)  # every request answered
    assert not wrong, wrong[:5]

    # Memory flat after warm-up: medians of the first and last thirds, within a tolerance
    # that a leak of a few hundred bytes a request would exceed over ~10k requests.
    third = len(rss) // 3
    first, last = statistics.median(rss[:third]), statistics.median(rss[-third:])
    assert last - first < max(8 << 10, first * 0.10), (first, last, rss)

    def settled() -> Any:
        # A capture fired near the end may still be in its delay or being built.
        status = get_json(srv.url + "/debug/flight/status")
        trig = status["triggers"]
        fired = sum(trig["fired"].values())
        # A trigger that fired while a capture was pending is listed in that snapshot's
        # trigger.also (joined) instead of getting its own.
        done = status["snapshots"] + status["capture_failures"] + sum(trig["joined"].values())
        idle = not trig["pending"] and not trig["queued"]
        return status if idle and done == fired else None

    status = wait_until(settled, timeout=15, interval=0.2)
    assert status["errors"] == {} and status["capture_failures"] == 0, status
    assert status["inflight"] == 0
    fired = sum(status["triggers"]["fired"].values())
    joined = sum(status["triggers"]["joined"].values())
    assert fired >= 1 and status["snapshots"] >= 1 and status["snapshots"] + joined == fired
    assert sum(status["triggers"]["suppressed"].values()) > 0
    # recorded == held + evicted + dropped, allowing for events still in the append buffer.
    # Counters are read without a lock while the recorder thread works, so take a few reads.
    gaps = []
    for _ in range(20):
        gap = _accounting_gap(get_json(srv.url + "/debug/flight/status")["recorder"])
        gaps.append(gap)
        if 0 <= gap <= 2000:
            break
        time.sleep(0.1)
    assert 0 <= gaps[-1] <= 2000, gaps
    assert status["recorder"]["evicted"] > 0  # the window did roll over during the soak
    assert len(list(tmp_path.glob("*.json.gz"))) <= 10
    print(
        f"soak: {answered} requests, RSS {first / 1024:.1f} -> {last / 1024:.1f} MiB,"
        f" recorded {status['recorder']['recorded']}, snapshots {status['snapshots']},"
        f" suppressed {status['triggers']['suppressed']}, accounting gap {gaps[-1]}"
    )
