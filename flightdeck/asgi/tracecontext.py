"""W3C Trace Context: the trace id of a ``traceparent`` request header.

A trace id is not a secret (it is sent to every service a request touches), so it is
recorded without ``capture_headers``; only a well-formed header counts.
"""

from __future__ import annotations

import re

# version "00".."fe", then trace-id, parent-id, flags; versions after 00 may append fields.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16


def trace_id_of(value: bytes) -> str | None:
    """The trace id (32 lowercase hex) of a valid ``traceparent`` value, else None."""
    m = _TRACEPARENT.fullmatch(value.strip(b" \t"))
    if m is None:
        return None
    version, trace, parent, _flags, rest = m.groups()
    if version == b"ff" or trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        return None
    if version == b"00" and rest is not None:
        return None  # version 00 is exactly four fields
    return trace.decode()


def trace_id_from_headers(headers: object) -> str | None:
    """The trace id of the first ``traceparent`` header in ASGI ``headers``, else None."""
    if type(headers) is not list and type(headers) is not tuple:
        return None
    for item in headers:
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if name == b"traceparent" and type(value) is bytes:
            return trace_id_of(value)
    return None
