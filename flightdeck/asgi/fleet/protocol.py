"""What the fleet keeps in Redis and says on its channel: key names, Lua, validation.

Everything read back from Redis is untrusted input: messages and metadata must carry the
fleet's signature (``signing.py``), are read with size limits (the Lua scripts below refuse
oversized values inside Redis, before anything is sent) and checked field by field; a
snapshot's bytes are read only when their length is the one its signed metadata states, and
are served only when they match its digest and inflate to exactly its stated size, checked
while inflating (``inflate_checked``), so nothing larger is ever held.

Keys, under the namespace ``ns`` (README, "A fleet"):

- ``ns:events`` (channel): one signed JSON message per incident opened.
- ``ns:incidents`` (sorted set, score = creation ms): incident ids, trimmed by age and count.
- ``ns:incident:ID`` (string): the incident's JSON, expiring after ``fleet_ttl``.
- ``ns:incident:ID:snaps`` (hash): snapshot id -> its metadata JSON; ``ns:incident:ID:bytes``
  (integer): stored bytes, for the per-incident quota. Both expire with the incident.
- ``ns:snap:SID`` (hash): ``data`` (the stored form, ``snapshot/container.py``; gzip'd
  native JSON from earlier versions) and ``meta``; expires with it.
- ``ns:cool:H`` and ``ns:rate``: the fleet-wide cooldown per (kind, route) and rate limit.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Any

import orjson

from ...snapshot.container import ContainerError, is_container, iter_chunks, read_header
from ...snapshot.document import Snapshot, SnapshotError, is_valid_id

MESSAGE_VERSION = 2  # 2: signed, with "ts"
MAX_MESSAGE = 16 << 10
MAX_META = 64 << 10
#: A fleet snapshot inflates to at most this (its signed metadata states its exact size).
MAX_INFLATED = 512 << 20
_INFLATE_CHUNK = 1 << 20
#: An incident message older (or further in the future) than this is a replay: ignored.
MAX_MESSAGE_AGE = 300.0
MAX_TRACE_IDS = 1000
MAX_INCIDENTS = 1000  # kept in the incidents index
TRACE_ID = re.compile(r"\A[0-9a-f]{32}\Z")

# Open an incident if the fleet-wide cooldown of its (kind, route) and the rate allow it,
# and publish it, atomically. Returns 1 (opened), 0 (cooling down), -1 (rate limited).
ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return -1 end
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[1])
redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[6])
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]))
local n = redis.call('ZCARD', KEYS[3])
if n > tonumber(ARGV[7]) then
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, n - tonumber(ARGV[7]) - 1)
end
redis.call('PEXPIRE', KEYS[3], ARGV[6])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return 1
"""

# Store one snapshot of an incident within its quota; it expires with the incident.
# Returns 1 (stored), 0 (already there), -1 (too many), -2 (too many bytes), -3 (no incident).
UPLOAD = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return -3 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
local size = string.len(ARGV[3])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used + size > tonumber(ARGV[5]) then return -2 end
redis.call('HSET', KEYS[4], 'data', ARGV[3], 'meta', ARGV[2])
redis.call('PEXPIRE', KEYS[4], ttl)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('INCRBY', KEYS[3], size)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""


# A value of a hash read only when it is at most ARGV[2] bytes long (ARGV[1]: the field).
# Returns the value, nil when absent, or its length when it is too long.
READ_FIELD = """
local n = redis.call('HSTRLEN', KEYS[1], ARGV[1])
if n == 0 then return nil end
if n > tonumber(ARGV[2]) then return n end
return redis.call('HGET', KEYS[1], ARGV[1])
"""

# A snapshot's data only when it is exactly as long as its signed metadata says (ARGV[1]):
# returns the bytes, nil when absent, or the actual length otherwise.
READ_DATA = """
local n = redis.call('HSTRLEN', KEYS[1], 'data')
if n == 0 then return nil end
if n ~= tonumber(ARGV[1]) then return n end
return redis.call('HGET', KEYS[1], 'data')
"""

# The newest ARGV[2] incidents: for each, {id, record or false, {meta, ...} or false}, where
# oversized records, metadata and snapshot tables are left out inside Redis (ARGV[1]: the
# namespace; ARGV[3], ARGV[4]: the largest record and metadata; ARGV[5]: most snapshots).
LIST = """
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  if string.len(id) <= 64 then
    local key = ARGV[1] .. ':incident:' .. id
    local record = false
    local n = redis.call('STRLEN', key)
    if n > 0 and n <= tonumber(ARGV[3]) then record = redis.call('GET', key) end
    local snaps = false
    local skey = key .. ':snaps'
    if redis.call('HLEN', skey) <= tonumber(ARGV[5]) then
      snaps = {}
      for _, field in ipairs(redis.call('HKEYS', skey)) do
        if redis.call('HSTRLEN', skey, field) <= tonumber(ARGV[4]) then
          table.insert(snaps, redis.call('HGET', skey, field))
        end
      end
    end
    table.insert(out, {id, record, snaps})
  end
end
return out
"""


class Keys:
    """Key and channel names under one namespace."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self.channel = f"{namespace}:events"
        self.incidents = f"{namespace}:incidents"
        self.rate = f"{namespace}:rate"

    def incident(self, ident: str) -> str:
        return f"{self.ns}:incident:{ident}"

    def snaps(self, ident: str) -> str:
        return f"{self.ns}:incident:{ident}:snaps"

    def used(self, ident: str) -> str:
        return f"{self.ns}:incident:{ident}:bytes"

    def snapshot(self, ident: str) -> str:
        return f"{self.ns}:snap:{ident}"

    def cooldown(self, kind: str, route: str | None) -> str:
        digest = hashlib.sha256(f"{kind}\0{route or ''}".encode(errors="replace")).hexdigest()
        return f"{self.ns}:cool:{digest[:32]}"


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _pid(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32:
        return value
    return None


def clean_origin(raw: object) -> dict[str, Any] | None:
    """``{service, hostname, pid, kind, reason}`` from untrusted data, or None."""
    if not isinstance(raw, dict):
        return None
    origin = {
        "service": _text(raw.get("service"), 128),
        "hostname": _text(raw.get("hostname"), 256),
        "pid": _pid(raw.get("pid")),
        "kind": _text(raw.get("kind"), 64),
        "reason": _text(raw.get("reason"), 1024),
    }
    return origin if all(value is not None for value in origin.values()) else None


def clean_incident(raw: object) -> dict[str, Any] | None:
    """An incident (message or stored record) from untrusted data, or None when malformed."""
    if not isinstance(raw, dict) or raw.get("v") != MESSAGE_VERSION:
        return None
    ident, trace_id = raw.get("id"), raw.get("trace_id")
    origin = clean_origin(raw.get("origin"))
    created = _text(raw.get("created_at"), 64)
    sender = _text(raw.get("sender"), 64)
    ts = raw.get("ts")  # milliseconds since the epoch, for the replay check
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 1 << 53:
        ts = None
    if not is_valid_id(ident) or origin is None or created is None or sender is None:
        return None
    if ts is None:
        return None
    if trace_id is not None and not (isinstance(trace_id, str) and TRACE_ID.match(trace_id)):
        return None
    return {
        "v": MESSAGE_VERSION,
        "id": ident,
        "created_at": created,
        "origin": origin,
        "trace_id": trace_id,
        "sender": sender,
        "ts": ts,
    }


def decode_json(data: object, limit: int) -> object:
    """JSON from bytes of at most ``limit``, else None (never raises)."""
    if isinstance(data, str):
        data = data.encode(errors="replace")
    if not isinstance(data, bytes) or len(data) > limit:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def trace_ids(doc: dict[str, Any]) -> list[str]:
    """The distinct trace ids of the requests in a snapshot document (at most 1000)."""
    seen: dict[str, None] = {}
    for request in doc.get("requests") or ():
        tid = request.get("trace_id") if isinstance(request, dict) else None
        if isinstance(tid, str) and TRACE_ID.match(tid):
            seen[tid] = None
            if len(seen) >= MAX_TRACE_IDS:
                break
    return list(seen)


def meta_head(doc: dict[str, Any]) -> dict[str, Any]:
    """What a fleet snapshot's metadata says of its document (taken before it is written)."""
    process = doc.get("process") or {}
    trigger = doc.get("trigger") or {}
    return {
        "v": MESSAGE_VERSION,
        "id": doc.get("id"),
        "incident": trigger.get("incident"),
        "created_at": doc.get("created_at"),
        "service": process.get("service") or "",
        "hostname": process.get("hostname") or "",
        "pid": process.get("pid"),
        "trigger": {"kind": trigger.get("kind"), "reason": trigger.get("reason")},
        "trace_ids": trace_ids(doc),
    }


def snapshot_meta(head: dict[str, Any], data: bytes, size: int) -> dict[str, Any]:
    """The metadata stored beside a fleet snapshot (``data``: its gzip'd native JSON)."""
    return {**head, "size": size, "stored": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def clean_meta(raw: object) -> dict[str, Any] | None:
    """Stored snapshot metadata from untrusted data, or None when malformed."""
    if not isinstance(raw, dict) or raw.get("v") != MESSAGE_VERSION:
        return None
    raw_trigger = raw.get("trigger")
    trigger: dict[str, Any] = raw_trigger if isinstance(raw_trigger, dict) else {}
    tids = raw.get("trace_ids")
    meta = {
        "id": raw.get("id"),
        "incident": raw.get("incident"),
        "created_at": _text(raw.get("created_at"), 64),
        "service": _text(raw.get("service"), 128),
        "hostname": _text(raw.get("hostname"), 256),
        "pid": _pid(raw.get("pid")),
        "trigger": {
            "kind": _text(trigger.get("kind"), 64),
            "reason": _text(trigger.get("reason"), 1024),
        },
        "trace_ids": tids,
        "size": _pid(raw.get("size")),
        "stored": _pid(raw.get("stored")),
        "sha256": raw.get("sha256"),
    }
    if not (is_valid_id(meta["id"]) and is_valid_id(meta["incident"])):
        return None
    if not isinstance(tids, list) or len(tids) > MAX_TRACE_IDS:
        return None
    if not all(isinstance(t, str) and TRACE_ID.match(t) for t in tids):
        return None
    if not (isinstance(meta["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])):
        return None
    if any(meta[k] is None for k in ("created_at", "service", "hostname", "pid", "size")):
        return None
    return meta


def _stored_ok(meta: dict[str, Any], data: bytes) -> bool:
    """A stored form (``snapshot/container.py``), whole and intact (every chunk's checksum),
    whose header says what ``meta`` says; its size is the stored size."""
    try:
        for _ in iter_chunks(data):
            pass
        head = read_header(data)
    except ContainerError:
        return False
    raw_process, raw_trigger = head.get("process"), head.get("trigger")
    process: dict[str, Any] = raw_process if isinstance(raw_process, dict) else {}
    trigger: dict[str, Any] = raw_trigger if isinstance(raw_trigger, dict) else {}
    return bool(
        len(data) == meta["size"]
        and head.get("id") == meta["id"]
        and trigger.get("incident") == meta["incident"]
        and process.get("pid") == meta["pid"]
        and (process.get("service") or "") == meta["service"]
    )


def inflate_checked(data: bytes, meta: dict[str, Any], keep: bool) -> bytes | None:
    """``data`` inflated, when it is exactly what ``meta`` (signed, cleaned) says; a stored
    form (``snapshot/container.py``) is checked whole and returned as it is.

    The digest is checked first; then the gzip is inflated a chunk at a time and refused as
    soon as it grows past the stated size (a gzip bomb is never inflated in full). With
    ``keep`` false only the check is made and ``b""`` returned: nothing is held.
    """
    size = meta["size"]
    if size > MAX_INFLATED or len(data) != meta["stored"]:
        return None
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        return None
    if is_container(data):
        return (data if keep else b"") if _stored_ok(meta, data) else None
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    chunks: list[bytes] = []
    total = 0
    pending = data
    try:
        while not decompressor.eof:
            chunk = decompressor.decompress(pending, _INFLATE_CHUNK)
            total += len(chunk)
            if total > size:
                return None
            if keep:
                chunks.append(chunk)
            pending = decompressor.unconsumed_tail
            if not chunk and not pending:
                break  # truncated
    except zlib.error:
        return None
    if not decompressor.eof or decompressor.unused_data or total != size:
        return None
    return b"".join(chunks) if keep else b""


def check_snapshot(meta: dict[str, Any], data: bytes) -> Snapshot | None:
    """The snapshot in ``data`` when it is exactly what ``meta`` (signed, cleaned) says."""
    raw = inflate_checked(data, meta, keep=True)
    if raw is None:
        return None
    try:
        snap = Snapshot.load(raw)
    except (SnapshotError, ValueError, TypeError):
        return None
    doc = snap.to_dict()
    raw_process, raw_trigger = doc.get("process"), doc.get("trigger")
    process: dict[str, Any] = raw_process if isinstance(raw_process, dict) else {}
    trigger: dict[str, Any] = raw_trigger if isinstance(raw_trigger, dict) else {}
    if snap.id != meta["id"] or trigger.get("incident") != meta["incident"]:
        return None
    if process.get("pid") != meta["pid"] or (process.get("service") or "") != meta["service"]:
        return None
    return snap
