"""Text that always serializes, and failures logged once: chores every layer shares."""

from __future__ import annotations

import logging

logger = logging.getLogger("flightdeck")

TRUNCATED = "…[truncated]"


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (bytes a server decoded with surrogateescape) as U+FFFD."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def decode_capped(raw: bytes | str, limit: int) -> tuple[str, bool]:
    """Decode to valid text cut at ``limit`` chars; also says whether it was cut."""
    if isinstance(raw, bytes):
        cut = len(raw) > limit * 4
        text = (raw[: limit * 4] if cut else raw).decode("utf-8", "replace")
    else:
        cut = False
        text = valid_text(raw)
    if len(text) > limit:
        return text[:limit], True
    return text, cut


def safe_text(raw: bytes | str | None, limit: int) -> str:
    """``raw`` as valid UTF-8 text (bytes decoded with replacement), at most ``limit`` chars."""
    if raw is None:
        return ""
    text, cut = decode_capped(raw, limit)
    if not cut:
        return text
    keep = max(limit - len(TRUNCATED), 0)
    return text[:keep] + TRUNCATED[: limit - keep]


class ErrorLog:
    """Counts flightdeck's own failures by kind and logs the first of each kind.

    The app is never told: recording is best-effort, and a failure in it must not become
    a failure of the request.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def once(self, key: str, message: str, *args: object, exc: BaseException | None = None) -> bool:
        """Count ``key``; log ``message % args`` the first time. True when it was logged."""
        first = key not in self.counts
        self.counts[key] = self.counts.get(key, 0) + 1
        if first:
            logger.warning(message, *args, exc_info=exc)
        return first

    def __call__(self, where: str, exc: BaseException) -> None:
        self.once(
            where,
            "flightdeck: internal error in %s (recording continues; the app is unaffected)",
            where,
            exc=exc,
        )

    @property
    def total(self) -> int:
        return sum(self.counts.values())
