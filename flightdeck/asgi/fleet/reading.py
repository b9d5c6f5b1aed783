"""Reading the fleet's incidents and snapshots back from Redis, checking all of it.

Runs in the endpoint's worker threads (never on the app's loop); Redis answers on the
fleet's own thread. What Redis sends is bounded before it is sent: the scripts of
``protocol`` refuse oversized records and read a snapshot only at the length its signed
metadata states. Unsigned and wrongly signed records are counted (``unsigned``,
``bad_signature``) and ignored; the rest that does not check out is counted ``rejected``.
"""

from __future__ import annotations

from typing import Any

from ...snapshot.document import Snapshot, is_valid_id
from .client import Counters, FleetClient, FleetUnavailable
from .protocol import (
    LIST,
    MAX_MESSAGE,
    MAX_META,
    READ_DATA,
    READ_FIELD,
    check_snapshot,
    clean_incident,
    clean_meta,
    decode_json,
    inflate_checked,
)
from .signing import Purpose, Signer

_LISTED = 50  # incidents listed by GET /incidents
_MAX_SNAPS = 64  # an incident's snapshot table is read only up to this many entries


class FleetReader:
    """Blocking reads for the endpoint's worker threads (each waits a short timeout)."""

    def __init__(self, client: FleetClient, counters: Counters, signer: Signer) -> None:
        self.client = client
        self.counters = counters
        self.signer = signer

    def verified(self, purpose: Purpose, raw: object) -> bytes | None:
        """The payload of a signed record, or None (counted) when it is not signed by us."""
        checked = self.signer.verify(purpose, raw)
        if isinstance(checked, str):
            self.counters.add(checked)
            return None
        return checked[0]

    def _meta(self, raw: object) -> dict[str, Any] | None:
        payload = self.verified("meta", raw)
        if payload is None:
            return None
        meta = clean_meta(decode_json(payload, MAX_META))
        if meta is None:
            self.counters.add("rejected")
        return meta

    def _read(self, ident: str) -> tuple[dict[str, Any], bytes] | None:
        """A snapshot's signed metadata and its bytes, read only at the stated length."""
        if not is_valid_id(ident):
            return None
        key = self.client.keys.snapshot(ident)

        async def get_meta(redis: Any) -> Any:
            return await redis.eval(READ_FIELD, 1, key, "meta", MAX_META)

        try:
            raw = self.client.call(get_meta)
        except FleetUnavailable:
            return None
        if raw is None:
            return None
        if isinstance(raw, int):
            self.counters.add("rejected")  # metadata too long to be ours
            return None
        meta = self._meta(raw)
        if meta is None:
            return None
        if meta["id"] != ident:
            self.counters.add("rejected")
            return None
        stored = meta["stored"]

        async def get_data(redis: Any) -> Any:
            return await redis.eval(READ_DATA, 1, key, stored)

        try:
            data = self.client.call(get_data)
        except FleetUnavailable:
            return None
        if not isinstance(data, bytes):
            if data is not None:
                self.counters.add("rejected")  # not the length the signed metadata says
            return None
        return meta, data

    def fetch(self, ident: str) -> tuple[bytes, Snapshot] | None:
        """A fleet snapshot's gzip'd JSON and the snapshot, both checked; None if absent."""
        found = self._read(ident)
        if found is None:
            return None
        meta, data = found
        snap = check_snapshot(meta, data)
        if snap is None:
            self.counters.add("rejected")
            return None
        return data, snap

    def fetch_bytes(self, ident: str) -> bytes | None:
        """A fleet snapshot's gzip'd JSON, checked against its signed metadata (digest and
        inflated size, checked while inflating and without keeping the output)."""
        found = self._read(ident)
        if found is None:
            return None
        meta, data = found
        if inflate_checked(data, meta, keep=False) is None:
            self.counters.add("rejected")
            return None
        return data

    def incidents(self, limit: int = _LISTED) -> list[dict[str, Any]] | None:
        """The fleet's incidents, newest first; None while Redis is unreachable."""
        keys = self.client.keys

        async def read(redis: Any) -> Any:
            return await redis.eval(
                LIST, 1, keys.incidents, keys.ns, limit, MAX_MESSAGE, MAX_META, _MAX_SNAPS
            )

        try:
            rows = self.client.call(read)
        except FleetUnavailable:
            return None
        out = []
        for row in rows if isinstance(rows, list) else ():
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], bytes)):
                continue
            ident = row[0].decode(errors="replace")
            if not is_valid_id(ident) or not isinstance(row[1], bytes):
                continue  # expired between the two reads, or oversized
            payload = self.verified("incident", row[1])
            record = None if payload is None else clean_incident(decode_json(payload, MAX_MESSAGE))
            if record is None or record["id"] != ident:
                continue
            snaps = []
            for raw in row[2] if isinstance(row[2], list) else ():
                meta = self._meta(raw)
                if meta is None:
                    continue
                if meta["incident"] != ident:
                    self.counters.add("rejected")
                    continue
                snaps.append(meta)
            snaps.sort(key=lambda m: (m["created_at"], m["id"]))
            out.append(
                {
                    "id": ident,
                    "created_at": record["created_at"],
                    "origin": record["origin"],
                    "trace_id": record["trace_id"],
                    "snapshots": [
                        {k: m[k] for k in ("id", "service", "hostname", "pid", "size")}
                        | {k: m[k] for k in ("trace_ids", "trigger", "created_at")}
                        for m in snaps
                    ],
                }
            )
        return out
