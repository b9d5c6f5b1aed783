"""Context variables shared by the middleware and the loop instrumentation."""

from __future__ import annotations

from contextvars import ContextVar

#: The id of the request whose handling created the current context (inherited by tasks).
current_request: ContextVar[int | None] = ContextVar("flightdeck_request", default=None)
