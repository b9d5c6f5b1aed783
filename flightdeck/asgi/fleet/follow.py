"""Following incidents that other processes opened: capture this window when it matters."""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Any

import orjson

from ..triggers import RateLimiter
from .ports import FleetPort
from .protocol import MAX_MESSAGE, MAX_MESSAGE_AGE, clean_incident, decode_json, trace_ids

_BUSY_RETRIES = 50  # a follower capture waits up to 5 s for the local one to finish
_TS = re.compile(rb'"ts":(\d{1,16})[,}]')
_SEEN = 4096  # signatures of recent messages remembered, to refuse replays


class _NotInvolved(Exception):
    """This process's window holds no request of the incident's trace."""


class Follower:
    """Hears incidents (fleet thread), freezes the window (app loop), builds (a thread)."""

    def __init__(self, fleet: FleetPort) -> None:
        self.fleet = fleet
        rate = fleet.engine.gate.rate
        # The fleet-wide limit bounds incidents already; this bounds what one process does
        # whatever is published on the channel.
        self._rate = RateLimiter(rate.count, rate.period)
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def message(self, data: bytes) -> None:
        """An incident heard on the channel (on the fleet thread).

        Everything that can refuse a message runs here, cheapest first, so that a flood
        costs the app's loop nothing: the signature, replays (a signature seen already, or
        a message older than :data:`MAX_MESSAGE_AGE`), this process's own incidents, the
        follow rate, and only then parsing. At most ``rate_limit`` incidents per period
        reach the app's loop.
        """
        fleet = self.fleet
        counters = fleet.counters
        checked = fleet.signer.verify("incident", data)
        if isinstance(checked, str):
            counters.add(checked)
            return
        payload, tag = checked
        if tag in self._seen:
            counters.add("replayed")
            return
        self._seen[tag] = None
        while len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        if b'"sender":' + orjson.dumps(fleet.sender) in payload:
            counters.add("received")
            return  # our own incident (a signed message names its sender so)
        # Signed, so written by orjson: "ts" can be read without parsing the rest.
        stamp = _TS.search(payload)
        if stamp is not None and abs(time.time() * 1000 - int(stamp[1])) > MAX_MESSAGE_AGE * 1000:
            counters.add("replayed")
            return
        if not self._rate.allow():
            counters.add("follow_suppressed")
            return
        incident = clean_incident(decode_json(payload, MAX_MESSAGE))
        if incident is None or stamp is None or incident["ts"] != int(stamp[1]):
            counters.add("malformed")
            return
        counters.add("received")
        if incident["sender"] == fleet.sender:
            return
        loop = fleet.app_loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._follow, incident, 0)
        except RuntimeError:
            pass  # the app's loop closed

    def _follow(self, incident: dict[str, Any], attempt: int) -> None:
        # On the app's loop: freeze now, build in a thread.
        engine = self.fleet.engine
        try:
            if not engine.recorder.enabled:
                return
            if engine.capturing:
                if attempt < _BUSY_RETRIES and self.fleet.app_loop is not None:
                    self.fleet.app_loop.call_later(0.1, self._follow, incident, attempt + 1)
                else:
                    self.fleet.counters.add("follow_busy")
                return
            engine.building = True  # local triggers meanwhile are queued, not lost
            try:
                frozen = engine.recorder.freeze()
                threading.Thread(
                    target=self._build_follower,
                    args=(frozen, incident),
                    name="flightdeck-fleet-snapshot",
                    daemon=True,
                ).start()
            except Exception:
                engine._built()
                raise
        except Exception as exc:
            self.fleet.counters.add("internal_errors")
            engine.errors("fleet_follow", exc)

    def _build_follower(self, frozen: Any, incident: dict[str, Any]) -> None:
        engine = self.fleet.engine
        origin = incident["origin"]

        def involved(doc: dict[str, Any]) -> None:
            trace_id = incident["trace_id"]
            everywhere = self.fleet.options.capture == "all" or trace_id is None
            if not everywhere and trace_id not in trace_ids(doc):
                raise _NotInvolved
            self.fleet.remember(doc)

        try:
            reason = (
                f"incident {incident['id']} opened by {origin['service']}"
                f" ({origin['kind']}: {origin['reason']})"
            )
            stored = engine.recorder.build_into(
                engine.store,
                frozen,
                kind="fleet",
                reason=reason[:1024],
                extra={"incident": incident["id"], "origin": dict(origin)},
                annotate=involved,
            )
            engine.captures += 1
            self.fleet.counters.add("followed")
            self.fleet.share(stored)
        except _NotInvolved:
            self.fleet.counters.add("not_involved")
        except Exception as exc:
            self.fleet.counters.add("internal_errors")
            engine.errors("fleet_capture", exc)
        finally:
            engine._built()
