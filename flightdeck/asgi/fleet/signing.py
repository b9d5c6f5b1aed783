"""Signing what the fleet writes to Redis with the shared ``fleet_secret``.

Whoever can write to the fleet's Redis could otherwise publish incidents (making every
process capture and upload its window) or plant snapshots. Every incident message and every
snapshot's metadata is therefore wrapped as ``fd1.<HMAC-SHA256 hex>.<JSON>``; the metadata
carries the snapshot's size, stored size and SHA-256, so the snapshot's bytes are covered
too. The HMAC key is derived from the secret, the namespace and the purpose (``incident`` or
``meta``), so a message cannot pass for metadata, nor one namespace's for another's.

Several secrets may be configured for rotation (``"new,old"``): the first signs, any
verifies. Roll out ``new,old`` everywhere, then ``new``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

PREFIX = b"fd1."
_TAG = 64  # hex digits of an HMAC-SHA256
MIN_SECRET = 16

Purpose = Literal["incident", "meta"]
#: Why a signed value was refused: no envelope at all, or no configured secret signed it.
Refusal = Literal["unsigned", "bad_signature"]


def check_secrets(value: object) -> tuple[str, ...]:
    """``fleet_secret``: one secret, several comma-separated, or a list; first signs."""
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise TypeError(
            "fleet_secret must be a str (comma-separated for rotation) or a list of str,"
            f" not {type(value).__name__}"
        )
    secrets = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"fleet_secret must contain str, not {type(item).__name__}")
        if len(item) < MIN_SECRET or not item.isprintable() or any(c.isspace() for c in item):
            raise ValueError(
                f"fleet_secret (FLIGHTDECK_FLEET_SECRET): each secret must be at least"
                f" {MIN_SECRET} printable characters without whitespace or commas"
            )
        secrets.append(item)
    if not secrets:
        raise ValueError("fleet_secret (FLIGHTDECK_FLEET_SECRET) must hold a secret")
    return tuple(secrets)


class Signer:
    """Signs with the first secret, verifies with any of them."""

    def __init__(self, secrets: tuple[str, ...], namespace: str) -> None:
        self._keys = {
            purpose: [
                hashlib.sha256(
                    b"flightdeck-fleet\0"
                    + namespace.encode()
                    + b"\0"
                    + purpose.encode()
                    + b"\0"
                    + secret.encode()
                ).digest()
                for secret in secrets
            ]
            for purpose in ("incident", "meta")
        }

    def sign(self, purpose: Purpose, payload: bytes) -> bytes:
        """``payload`` in its signed envelope."""
        tag = hmac.new(self._keys[purpose][0], payload, hashlib.sha256).hexdigest()
        return PREFIX + tag.encode() + b"." + payload

    def verify(self, purpose: Purpose, blob: object) -> tuple[bytes, bytes] | Refusal:
        """``(payload, tag)`` when a configured secret signed ``blob``, else why not."""
        if isinstance(blob, str):
            blob = blob.encode(errors="replace")
        if not isinstance(blob, bytes) or not blob.startswith(PREFIX):
            return "unsigned"
        start = len(PREFIX)
        tag, dot = blob[start : start + _TAG], blob[start + _TAG : start + _TAG + 1]
        if dot != b"." or len(tag) != _TAG:
            return "unsigned"
        payload = blob[start + _TAG + 1 :]
        for key in self._keys[purpose]:
            expected = hmac.new(key, payload, hashlib.sha256).hexdigest().encode()
            if hmac.compare_digest(expected, tag):
                return payload, tag
        return "bad_signature"
