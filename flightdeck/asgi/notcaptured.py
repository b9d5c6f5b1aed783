"""Triggers the gate refused, told where a user looks: the list page, the log, the status.

The gate (``triggers.Gate``) keeps the time, kind and reason of its recent refusals; this
module turns them into sentences such as "3 slow requests not captured in the last minute:
rate limit 6 per 60 s, next capture possible in 23 s".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: How a count of each built-in trigger kind reads; other kinds read "N <kind> triggers".
_NOUNS = {
    "slow_request": ("slow request", "slow requests"),
    "server_error": ("server error", "server errors"),
    "loop_blocked": ("loop block", "loop blocks"),
}


def things(counts: dict[str, int]) -> str:
    """``{"slow_request": 3, "loop_blocked": 1}`` as "3 slow requests, 1 loop block"."""
    parts = []
    for kind, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        one, many = _NOUNS.get(kind, (f"{kind} trigger", f"{kind} triggers"))
        parts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(parts)


def _span(seconds: float) -> str:
    return "minute" if seconds == 60 else f"{seconds:g} s"


def why(gate: Any, reason: str) -> str:
    """What refused them, and when the next capture may be taken."""
    rate = gate.rate
    if reason == "rate_limit":
        wait = rate.wait()
        when = f"next capture possible in {wait:.0f} s" if wait > 0 else "captures possible now"
        return f"rate limit {rate.count} per {rate.period:g} s, {when}"
    if reason == "cooldown":
        return f"cooldown {gate.cooldown:g} s between two snapshots of one kind and route"
    if reason == "capture_full":
        return "joined to a capture that already lists as many triggers as it keeps"
    return reason


def describe(gate: Any, counts: dict[str, int], reason: str, horizon: float) -> str:
    return f"{things(counts)} not captured in the last {_span(horizon)}: {why(gate, reason)}"


def not_captured(gate: Any) -> list[str]:
    """One sentence per reason for the refusals of the last rate-limit period (at least a
    minute), most frequent first; empty when nothing was refused."""
    horizon = max(60.0, float(gate.rate.period))
    now = gate.clock()
    by_reason: dict[str, dict[str, int]] = {}
    recent: Iterable[tuple[float, str, str]] = list(gate.recent)
    for t, kind, reason in recent:
        if now - t <= horizon:
            counts = by_reason.setdefault(reason, {})
            counts[kind] = counts.get(kind, 0) + 1
    ordered = sorted(by_reason.items(), key=lambda item: -sum(item[1].values()))
    return [describe(gate, counts, reason, horizon) for reason, counts in ordered]
