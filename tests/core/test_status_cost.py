"""Requests in flight are costed by what their status entries hold, on both cores.

The window's status tables (what is alive, carried from one segment or generation to the
next) keep each request's REQ_START. Its path, query and headers count against the tables'
share of ``max_bytes`` (an eighth), not a fixed slot size: past that share, a request is
not described, and the window stays within its bound.
"""

from __future__ import annotations

from typing import Any

import pytest

from flightdeck.core import events as ev
from flightdeck.core.window import EST_REQUEST_BYTES, Window, request_status_bytes

S = 1_000_000_000
T0 = 1_000_000 * S
MAX_BYTES = 1 << 20
PATH = 2000
QUERY = 4000


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def make(core: str, clock: FakeClock) -> Any:
    if core == "pure":
        return Window(S, MAX_BYTES, clock=clock)
    native = pytest.importorskip("flightdeck.core.native", reason="native core not built")
    return native.NativeWindow(S, MAX_BYTES, clock=clock)


def start(i: int) -> tuple[Any, ...]:
    path = f"/r{i:04d}/" + "p" * (PATH - 7)
    query = "q=" + "v" * (QUERY - 2)
    return (ev.REQ_START, T0 + i, i, "http", "GET", path, query, ("127.0.0.1", 1), None, None, None)


def test_a_request_s_cost_includes_its_strings() -> None:
    short = request_status_bytes(
        (ev.REQ_START, T0, 1, "http", "GET", "/", "", None, None, None, None)
    )
    long = request_status_bytes(start(1))
    assert short >= EST_REQUEST_BYTES
    assert long - short >= PATH + QUERY


@pytest.mark.parametrize("core", ["pure", "native"])
def test_long_requests_in_flight_fill_the_status_share_by_their_size(core: str) -> None:
    clock = FakeClock()
    w = make(core, clock)
    for i in range(1000):
        w.append(start(i))
        if i % 64 == 0:
            w.maintain()
    # Seal, then let every segment age out: what remains is the status of what is alive.
    for _ in range(3):
        clock.now += 10 * S
        w.maintain(force_seal=True)
    requests = w.freeze().requests
    assert requests, "no request described at all"
    # A fixed slot per entry let all 1000 in (1 MiB / 8 / 120 bytes = 1092 slots).
    assert len(requests) * (PATH + QUERY) <= MAX_BYTES // 8
    assert w.nbytes >= len(requests) * (PATH + QUERY)
    assert w.nbytes <= MAX_BYTES
