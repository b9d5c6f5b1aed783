"""The fleet: incidents opened by local triggers, followed by every other process.

Where each step runs (nothing here is on the request path):

- ``originate``: in the snapshot thread, on the assembled document before it is written.
  The fleet-wide limit is asked in Redis (one atomic script that also publishes the
  incident); the wait is bounded and skipped entirely while Redis is down.
- ``share``: in the snapshot thread after the store kept it; the upload runs on the fleet
  thread without being waited for.
- incidents of other processes: ``follow.Follower``; reads for the endpoint: ``reading``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

import orjson

from ...core.text import ErrorLog
from ...snapshot.document import Snapshot, is_valid_id, new_id, rfc3339
from ...snapshot.store import StoredInfo
from .client import Counters, FleetClient, FleetUnavailable
from .follow import Follower
from .options import FleetOptions
from .ports import Engine
from .protocol import (
    ADMIT,
    MAX_INCIDENTS,
    MESSAGE_VERSION,
    UPLOAD,
    meta_head,
    snapshot_meta,
)
from .reading import FleetReader
from .signing import Signer

logger = logging.getLogger("flightdeck")

MAX_PER_INCIDENT = 20
MAX_BYTES_PER_INCIDENT = 64 << 20
_NOT_OPENING = ("manual", "fleet")


class Fleet:
    """One process's part in the fleet (see README, "A fleet")."""

    def __init__(self, engine: Engine, options: FleetOptions, service: str) -> None:
        self.engine = engine
        self.options = options
        self.service = service
        self.counters = Counters()
        self.signer = Signer(options.secrets, options.namespace)
        self.follower = Follower(self)
        self.client = FleetClient(options, self.follower.message, self.counters)
        self.keys = self.client.keys
        self.reader = FleetReader(self.client, self.counters, self.signer)
        self.max_snapshots = MAX_PER_INCIDENT
        self.max_bytes = MAX_BYTES_PER_INCIDENT
        self._nonce = secrets.token_hex(8)
        self.app_loop: asyncio.AbstractEventLoop | None = None
        self._log = ErrorLog()
        self._lock = threading.Lock()
        self._heads: dict[str, dict[str, Any]] = {}
        engine.store.remote = self.fetch_bytes

    @property
    def sender(self) -> str:
        """This process among the fleet (the pid changes in a forked child)."""
        return f"{socket.gethostname()[:100]}:{os.getpid()}:{self._nonce}"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the app's loop when recording starts."""
        self.app_loop = loop
        self.client.start()

    def close(self) -> None:
        self.client.close()

    # -- the originator ------------------------------------------------------------------
    def originate(self, doc: dict[str, Any]) -> None:
        """Open an incident for a local capture if the fleet-wide limits allow it.

        Called with the assembled document before it is written (``build_into``'s
        ``annotate``): sets ``trigger.incident`` (and the trigger request's ``trace_id``) on
        success. Never raises, and returns at once while Redis is down.
        """
        try:
            self._originate(doc)
        except Exception as exc:
            self.counters.add("internal_errors")
            self.engine.errors("fleet_open", exc)

    def _originate(self, doc: dict[str, Any]) -> None:
        trigger = doc["trigger"]
        kind = str(trigger.get("kind"))
        if kind in _NOT_OPENING:
            return
        if not self.client.connected:
            self.counters.add("open_skipped")
            return
        request = trigger.get("request")
        route = trace_id = None
        if isinstance(request, dict):
            route = request.get("route") or request.get("path")
            trace_id = _trace_of(doc, request.get("id"))
            request["trace_id"] = trace_id
        process = doc.get("process") or {}
        ident = new_id()
        now = time.time()
        incident = {
            "v": MESSAGE_VERSION,
            "id": ident,
            "created_at": rfc3339(now),
            "ts": int(now * 1000),
            "origin": {
                "service": self.service,
                "hostname": str(process.get("hostname") or socket.gethostname()),
                "pid": os.getpid(),
                "kind": kind[:64],
                "reason": str(trigger.get("reason") or "")[:1024],
            },
            "trace_id": trace_id,
            "sender": self.sender,
        }
        message = self.signer.sign("incident", orjson.dumps(incident))
        gate = self.engine.gate
        keys = self.keys
        args = [
            max(1, round(gate.cooldown * 1000)),  # Redis refuses PX 0
            gate.rate.count,
            max(1, round(gate.rate.period * 1000)),
            ident,
            message,
            int(self.options.ttl * 1000),
            MAX_INCIDENTS,
            keys.channel,
            message,
        ]

        async def admit(redis: Any) -> Any:
            return await redis.eval(
                ADMIT,
                4,
                keys.cooldown(kind, route),
                keys.rate,
                keys.incidents,
                keys.incident(ident),
                *args,
            )

        try:
            result = self.client.call(admit)
        except FleetUnavailable:
            self.counters.add("open_failed")
            return
        if result == 1:
            trigger["incident"] = ident
            self.counters.add("opened")
            self.remember(doc)
        else:
            self.counters.add("suppressed_cooldown" if result == 0 else "suppressed_rate")

    def remember(self, doc: dict[str, Any]) -> None:
        # What share() will say of this snapshot; one build runs at a time, so few wait.
        with self._lock:
            self._heads[str(doc["id"])] = meta_head(doc)
            while len(self._heads) > 8:
                self._heads.pop(next(iter(self._heads)))

    def share(self, stored: StoredInfo) -> None:
        """Upload a stored snapshot of an incident (in the background; never raises)."""
        try:
            self._share(stored)
        except Exception as exc:
            self.counters.add("internal_errors")
            self.engine.errors("fleet_upload", exc)

    def _share(self, stored: StoredInfo) -> None:
        with self._lock:
            head = self._heads.pop(stored.id, None)
        if head is None or not is_valid_id(head["incident"]):
            return  # not part of an incident
        if stored.stored > self.max_bytes:
            self.counters.add("refused_too_big")
            self._log.once(
                "too_big",
                "flightdeck: snapshot %s (%d bytes gzip'd) exceeds the fleet quota of %d bytes"
                " per incident; kept locally only (logged once)",
                stored.id,
                stored.stored,
                self.max_bytes,
            )
            return
        data = self.engine.store.get_stored(stored.id)  # the stored form, as kept here
        if data is None:
            self.counters.add("upload_failed")
            return
        meta = self.signer.sign("meta", orjson.dumps(snapshot_meta(head, data, stored.size)))
        keys = self.keys
        ident = str(head["incident"])
        args = [stored.id, meta, data, self.max_snapshots, self.max_bytes]

        async def upload(redis: Any) -> Any:
            return await redis.eval(
                UPLOAD,
                4,
                keys.incident(ident),
                keys.snaps(ident),
                keys.used(ident),
                keys.snapshot(stored.id),
                *args,
            )

        outcomes = {1: "uploaded", 0: "duplicates", -1: "refused_count", -2: "refused_bytes"}

        def done(result: Any) -> None:
            self.counters.add(outcomes.get(result, "refused_expired"))

        if not self.client.submit(upload, done):
            self.counters.add("upload_failed")

    # -- reading (the endpoint's worker threads) ----------------------------------------
    def fetch(self, ident: str) -> tuple[bytes, Snapshot] | None:
        """A fleet snapshot's gzip'd JSON and the snapshot, both checked; None if absent."""
        return self.reader.fetch(ident)

    def fetch_bytes(self, ident: str) -> bytes | None:
        """The store's ``remote``: a checked fleet snapshot's gzip'd JSON, or None."""
        return self.reader.fetch_bytes(ident)

    def incidents(self, limit: int = 50) -> list[dict[str, Any]] | None:
        """The fleet's incidents, newest first; None while Redis is unreachable."""
        return self.reader.incidents(limit)

    def stats(self) -> dict[str, Any]:
        """For ``/debug/flight/status``: where, whether connected, and every counter."""
        return {
            "redis": self.options.where,
            "namespace": self.options.namespace,
            "capture": self.options.capture,
            "service": self.service,
            "sender": self.sender,
            "connected": self.client.connected,
            "last_error": self.client.last_error,
            **self.counters.snapshot(),
        }


def _trace_of(doc: dict[str, Any], request_id: object) -> str | None:
    for request in doc.get("requests") or ():
        if isinstance(request, dict) and request.get("id") == request_id:
            tid = request.get("trace_id")
            return tid if isinstance(tid, str) else None
    return None
