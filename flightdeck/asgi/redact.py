"""Redaction and capping of what is recorded from a request: query strings, headers, paths.

Runs on every request, on the event loop, so the common cases (no query string, or one
without any sensitive-looking key) take a fast path that allocates almost nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

from ..core.text import TRUNCATED, decode_capped

REDACTED = "REDACTED"
MAX_QUERY = 4096
MAX_HEADER_VALUE = 1024
MAX_HEADERS = 64
#: Request paths (and methods, at MAX_METHOD) are cut to this many characters.
MAX_PATH = 2048
MAX_METHOD = 32

#: Substrings that mark a query key or header name as sensitive (case-insensitive, ``-`` = ``_``).
#: OpenTelemetry's URL redaction keys, Sentry's default denylists and a few common names.
DEFAULT_SENSITIVE: tuple[str, ...] = (
    # OpenTelemetry semantic conventions, url.query redaction
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "X-Goog-Credential",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    # Sentry DEFAULT_DENYLIST and DEFAULT_PII_DENYLIST
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "auth",
    "credentials",
    "mysql_pwd",
    "privatekey",
    "private_key",
    "token",
    "session",
    "csrftoken",
    "sessionid",
    "x_csrftoken",
    "x_forwarded_for",
    "x_real_ip",
    "set_cookie",
    "cookie",
    "authorization",
    "x_api_key",
    "aiohttp_session",
    "connect.sid",
    "csrf",
    "_xsrf",
    "xsrf",
    "phpsessid",
    "symfony",
    "remote_addr",
    "ip_address",
    # other common spellings
    "key",
    "credential",
    "pwd",
    "jwt",
    "bearer",
)

#: Header names redacted even when they do not contain a sensitive substring.
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"}
)


def _normalize(text: str) -> str:
    # casefold() works per character, so normalize(part) is a substring of normalize(whole):
    # the fast path over the whole query can never miss what the per-key check would find.
    return text.casefold().replace("-", "_")


def _trie_pattern(words: set[str]) -> str:
    """One regex for a set of literals, factored by common prefix.

    ``re`` tries the branches of a flat alternation one by one at every position; a trie
    rejects most positions after one character, which keeps the per-request fast path cheap.
    """
    groups: dict[str, set[str]] = {}
    for word in words:
        groups.setdefault(word[0], set()).add(word[1:])
    branches = []
    for first, rests in sorted(groups.items()):
        # Substring search: once a shorter word matched, longer ones add nothing.
        tail = "" if "" in rests else _trie_pattern(rests)
        branches.append(re.escape(first) + tail)
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


_NEEDLES = {_normalize(s) for s in DEFAULT_SENSITIVE}
# A word containing another (``api_key`` contains ``key``) can never change a substring match.
_SENSITIVE_RE = re.compile(
    _trie_pattern({w for w in _NEEDLES if not any(o != w and o in w for o in _NEEDLES)})
)
# Bounds the work done on absurd inputs; the output is capped at MAX_QUERY anyway.
_MAX_QUERY_INPUT = 16 * MAX_QUERY


def is_sensitive(name: str) -> bool:
    """True when a query key or header name looks like it carries a secret."""
    return _SENSITIVE_RE.search(_normalize(name)) is not None


def _key_is_sensitive(key: str) -> bool:
    if "%" in key or "+" in key:
        key = unquote_plus(key, errors="replace")
        # Double-encoded keys reach some frameworks decoded twice; redacting more is harmless.
        if "%" in key:
            key = unquote_plus(key, errors="replace")
    return is_sensitive(key)


def redact_query(raw: bytes | str) -> str:
    """The query string with the values of sensitive keys replaced by ``REDACTED``.

    Key order, empty pairs and keys without ``=`` are kept as sent; invalid percent-encoding
    and non-UTF-8 bytes are tolerated. The result is at most :data:`MAX_QUERY` characters,
    ending in ``&…[truncated]`` when it was cut. Idempotent.
    """
    if not raw:
        return ""
    text, cut = decode_capped(raw, _MAX_QUERY_INPUT)
    if "%" in text or _SENSITIVE_RE.search(_normalize(text)) is not None:
        pairs = text.split("&")
        for i, pair in enumerate(pairs):
            key, eq, value = pair.partition("=")
            if eq and value != REDACTED and _key_is_sensitive(key):
                pairs[i] = key + "=" + REDACTED
        text = "&".join(pairs)
    if not cut and len(text) <= MAX_QUERY:
        return text
    # Cut at a pair boundary so that no pair is left half-redacted: running the function
    # again must give the same answer.
    budget = MAX_QUERY - len(TRUNCATED) - 1
    head = text[: budget + 1]
    boundary = head.rfind("&")
    head = head[:boundary] if boundary > 0 else head[:budget]
    return head + "&" + TRUNCATED


def capture_headers(
    headers: Iterable[tuple[bytes, bytes]] | None, names: frozenset[str]
) -> dict[str, str]:
    """The headers named in ``names`` (lower-case), with sensitive values redacted.

    Repeated headers are joined with ``", "``; each value is capped at
    :data:`MAX_HEADER_VALUE` characters and at most :data:`MAX_HEADERS` names are kept.
    """
    if not headers or not names:
        return {}
    found: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name not in names or (name not in found and len(found) >= MAX_HEADERS):
            continue
        if name in SENSITIVE_HEADERS or is_sensitive(name):
            found[name] = REDACTED
            continue
        value, _ = decode_capped(raw_value, MAX_HEADER_VALUE + 1)
        previous = found.get(name)
        if previous is not None:
            if len(previous) > MAX_HEADER_VALUE:
                continue
            value = previous + ", " + value
        found[name] = value[: MAX_HEADER_VALUE + 1]
    for name, value in found.items():
        if len(value) > MAX_HEADER_VALUE:
            found[name] = value[: MAX_HEADER_VALUE - len(TRUNCATED)] + TRUNCATED
    return found
