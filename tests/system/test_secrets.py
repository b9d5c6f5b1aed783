"""Secrets in requests over real HTTP: secrets that hide in captured headers, short keys,
";" pairs, nested URLs, and keys added with ``redact_keys``."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

from support import get_json, http_get, uvicorn_thread, wait_until

from flightdeck import FlightDeck
from flightdeck.snapshot.store import SUFFIX

PREFIX = "/debug/flight"
S = [f"Z3CR3T{i}qx" for i in range(10)]


def test_hidden_secrets_absent_from_snapshots(decks: list[Any], tmp_path: Path) -> None:
    import serverapps

    deck = FlightDeck(
        serverapps.inner,
        endpoint=PREFIX,
        directory=tmp_path,
        slow_request=None,
        capture_delay=0.0,
        capture_headers=["referer", "x-original-url", "x-upstream", "x-trace", "accept"],
        redact_keys=["tenant_ref"],
    )
    decks.append(deck)
    nested = f"https%3A%2F%2Fidp.example%2Fcb%3Faccess_token%3D{S[0]}%26v%3D1"
    query = f"pw={S[1]}&code={S[2]}&a=1;token={S[3]};b=2&next={nested}&tenant_ref={S[4]}"
    query += "&postcode=SW1A"
    headers = {
        "Referer": f"https://app.example/page?access_token={S[5]}&tab=2",
        "X-Original-URL": f"/login?password={S[6]}",
        "X-Upstream": f"Bearer {S[7]}",
        "X-Trace": f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.{S[8]}",
        "Accept": "text/plain;q=0.9",
    }
    with uvicorn_thread(deck) as srv:
        assert http_get(f"{srv.url}/error?{query}", **headers)[0] == 500
        wait_until(lambda: get_json(srv.url + PREFIX + "/snapshots"), timeout=10)
        ident = get_json(srv.url + PREFIX + "/snapshots")[0]["id"]
        blob = http_get(f"{srv.url}{PREFIX}/snapshots/{ident}")[2]
    blobs = [blob] + [gzip.decompress(p.read_bytes()) for p in tmp_path.glob("*" + SUFFIX)]
    for data in blobs:
        for secret in S:
            assert secret.encode() not in data, secret
    # What is not secret is still there, so the request was recorded and not blanked.
    assert b"postcode=SW1A" in blob and b"a=1;token=REDACTED;b=2" in blob
    assert b"tenant_ref=REDACTED" in blob and b"access_token%3DREDACTED%26v%3D1" in blob
    assert b"Bearer REDACTED" in blob and b"text/plain;q=0.9" in blob
    assert b"https://app.example/page?access_token=REDACTED&tab=2" in blob
