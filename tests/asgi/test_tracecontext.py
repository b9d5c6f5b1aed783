"""Trace ids: a valid W3C ``traceparent`` is recorded as ``requests[].trace_id``."""

from __future__ import annotations

from typing import Any

import pytest
from support import drive, find_request, http_scope, make_deck

from flightdeck.asgi.tracecontext import trace_id_from_headers, trace_id_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID = f"00-{TRACE}-00f067aa0ba902b7-01".encode()


@pytest.mark.parametrize(
    "value, expected",
    [
        (VALID, TRACE),
        (b" " + VALID + b"\t", TRACE),
        (f"01-{TRACE}-00f067aa0ba902b7-01-future".encode(), TRACE),  # later versions extend
        (VALID + b"-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE}-00f067aa0ba902b7-01".encode(), None),  # ff is forbidden
        (b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01", None),  # all-zero trace id
        (f"00-{TRACE}-0000000000000000-01".encode(), None),  # all-zero parent id
        (VALID.upper(), None),  # must be lowercase
        (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01".encode(), None),
        (b"", None),
        (b"garbage", None),
    ],
)
def test_trace_id_of(value: bytes, expected: str | None) -> None:
    assert trace_id_of(value) == expected


def test_first_traceparent_wins_and_odd_headers_are_ignored() -> None:
    headers: Any = [(b"x", b"y"), ("bad",), (b"traceparent", VALID), (b"traceparent", b"x")]
    assert trace_id_from_headers(headers) == TRACE
    assert trace_id_from_headers(None) is None
    assert trace_id_from_headers([(b"traceparent", "not-bytes")]) is None


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.anyio
async def test_requests_record_their_trace_id(decks: list[Any]) -> None:
    deck = make_deck(_ok, decks)
    await drive(deck, http_scope("/traced", headers=[(b"traceparent", VALID)]))
    await drive(deck, http_scope("/untraced"))
    await drive(deck, http_scope("/invalid", headers=[(b"traceparent", b"00-zz")]))
    doc = (await deck.capture("t")).to_dict()
    assert find_request(doc, "/traced")["trace_id"] == TRACE
    assert find_request(doc, "/untraced")["trace_id"] is None
    assert find_request(doc, "/invalid")["trace_id"] is None
