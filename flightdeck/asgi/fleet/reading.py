"""Reading the fleet's incidents and snapshots back from Redis, checking all of it."""

from __future__ import annotations

from typing import Any

from ...snapshot.document import Snapshot, is_valid_id
from .client import Counters, FleetClient, FleetUnavailable
from .protocol import MAX_MESSAGE, MAX_META, check_snapshot, clean_incident, clean_meta, decode_json

_READ_LIMIT = 1 << 30
_LISTED = 50  # incidents listed by GET /incidents


class FleetReader:
    """Blocking reads for the endpoint's worker threads (each waits a short timeout)."""

    def __init__(self, client: FleetClient, counters: Counters) -> None:
        self.client = client
        self.counters = counters

    def fetch(self, ident: str) -> tuple[bytes, Snapshot] | None:
        """A fleet snapshot's stored bytes and the snapshot, both checked; None if absent."""
        if not is_valid_id(ident):
            return None
        key = self.client.keys.snapshot(ident)

        async def get(redis: Any) -> Any:
            return await redis.hmget(key, "meta", "data")

        try:
            meta_raw, data = self.client.call(get)
        except FleetUnavailable:
            return None
        if meta_raw is None or not isinstance(data, bytes):
            return None
        meta = clean_meta(decode_json(meta_raw, MAX_META))
        snap = None if meta is None else check_snapshot(meta, data, _READ_LIMIT)
        if snap is None or snap.id != ident:
            self.counters.add("rejected")
            return None
        return data, snap

    def incidents(self, limit: int = _LISTED) -> list[dict[str, Any]] | None:
        """The fleet's incidents, newest first; None while Redis is unreachable."""
        keys = self.client.keys

        async def read(redis: Any) -> Any:
            ids = await redis.zrevrange(keys.incidents, 0, limit - 1)
            valid = [i.decode() for i in ids if isinstance(i, bytes) and is_valid_id(i.decode())]
            pipe = redis.pipeline(transaction=False)
            for ident in valid:
                pipe.get(keys.incident(ident))
                pipe.hgetall(keys.snaps(ident))
            results = await pipe.execute() if valid else []
            return valid, results

        try:
            valid, results = self.client.call(read)
        except FleetUnavailable:
            return None
        out = []
        for n, ident in enumerate(valid):
            record = clean_incident(decode_json(results[2 * n], MAX_MESSAGE))
            if record is None or record["id"] != ident:
                continue  # expired between the two reads, or not ours to trust
            snaps = []
            for raw in (results[2 * n + 1] or {}).values():
                meta = clean_meta(decode_json(raw, MAX_META))
                if meta is None or meta["incident"] != ident:
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
