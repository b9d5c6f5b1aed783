"""Coordinated capture across a fleet of services through Redis (extra ``flightdeck-asgi[redis]``).

``FlightDeck(app, fleet="redis://...")`` builds a :class:`Fleet`; the endpoint lists its
incidents with :func:`list_incidents`. redis-py is imported only on the fleet's own thread,
so an app without the extra never imports it.
"""

from __future__ import annotations

from typing import Any

from .engine import Fleet
from .options import FleetOptions, fleet_options, resolve_service
from .protocol import TRACE_ID

__all__ = [
    "TRACE_ID",
    "Fleet",
    "FleetOptions",
    "fleet_options",
    "list_incidents",
    "resolve_service",
    "snapshots_of_trace",
    "with_fleet_snapshots",
]

_LISTED_KEYS = ("id", "service", "hostname", "pid", "size")


def list_incidents(deck: Any) -> list[dict[str, Any]]:
    """``GET /incidents``: the fleet's incidents, else those of this process's snapshots.

    ``[{id, created_at, origin, trace_id, snapshots: [{id, service, hostname, pid, size}]}]``,
    newest first. Blocking: call from a worker thread.
    """
    fleet: Fleet | None = getattr(deck, "fleet", None)
    found = fleet.incidents() if fleet is not None else None
    if found is not None:
        for incident in found:
            incident["snapshots"] = [{k: s[k] for k in _LISTED_KEYS} for s in incident["snapshots"]]
        return found
    return _local_incidents(deck)


def _local_incidents(deck: Any) -> list[dict[str, Any]]:
    # Redis unreachable or no fleet: what this process (or its directory) holds, grouped.
    import socket

    grouped: dict[str, dict[str, Any]] = {}
    for item in deck.store.list():
        ident = item.get("incident")
        if ident is None:
            continue
        incident = grouped.setdefault(
            ident,
            {"id": ident, "created_at": item["created_at"], "origin": None, "trace_id": None},
        )
        incident.setdefault("snapshots", []).append(
            {
                "id": item["id"],
                "service": item.get("service"),
                "hostname": socket.gethostname(),
                "pid": item.get("pid"),
                "size": item.get("size"),
            }
        )
        incident["created_at"] = min(incident["created_at"], item["created_at"])
    return sorted(grouped.values(), key=lambda i: (i["created_at"], i["id"]), reverse=True)


def _summary(incident: dict[str, Any], snap: dict[str, Any]) -> dict[str, Any]:
    # A fleet snapshot in the shape of a local listing entry (its request is not known).
    return {
        "id": snap["id"],
        "created_at": snap["created_at"],
        "trigger": snap["trigger"],
        "request": None,
        "pid": snap["pid"],
        "size": snap["size"],
        "service": snap["service"],
        "incident": incident["id"],
        "hostname": snap["hostname"],
    }


def with_fleet_snapshots(deck: Any, listing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``listing`` plus the fleet's other snapshots of the incidents it has (for the page).

    Blocking: call from a worker thread. Unchanged without a fleet or while Redis is down.
    """
    fleet: Fleet | None = getattr(deck, "fleet", None)
    mine = {item.get("incident") for item in listing} - {None}
    found = fleet.incidents() if fleet is not None and mine else None
    if not found:
        return listing
    seen = {item["id"] for item in listing}
    extra = [
        _summary(incident, snap)
        for incident in found
        if incident["id"] in mine
        for snap in incident["snapshots"]
        if snap["id"] not in seen
    ]
    return sorted([*listing, *extra], key=lambda item: (item["created_at"], item["id"]))[::-1]


def snapshots_of_trace(deck: Any, trace_id: str) -> list[dict[str, Any]]:
    """``GET /snapshots?trace_id=``: local snapshots holding the trace, then the fleet's."""
    listing: list[dict[str, Any]] = deck.store.list(trace_id=trace_id)
    fleet: Fleet | None = getattr(deck, "fleet", None)
    found = fleet.incidents() if fleet is not None else None
    seen = {item["id"] for item in listing}
    for incident in found or ():
        for snap in incident["snapshots"]:
            if trace_id in snap["trace_ids"] and snap["id"] not in seen:
                seen.add(snap["id"])
                listing.append(_summary(incident, snap))
    return listing
