"""Redaction and capping of what is recorded from a request: query strings, headers, paths.

Runs on every request, on the event loop, so the common cases (no query string, or one
without any sensitive-looking key) take a fast path: one regex search over the whole query.

A key is sensitive when, case-insensitively and with ``-`` read as ``_``, it contains one
of the long keys below (``access_token`` contains ``token``) or has one of the short keys
(at most :data:`SHORT` characters) as a whole word (``user_pw``, but not ``postcode``).

Values are also judged by their shape, whatever their key (:func:`looks_like_credential`):
query values, captured header values and path segments holding a JWT, a PEM block, a token
with a known prefix (``ghp_``, ``xoxb-``, ``sk_live_``, ``AKIA``...), a hex run of at least
:data:`MIN_HEX` digits, or a base64/base64url run of at least :data:`MIN_RUN` characters
that changes between lower case, upper case and digits as often as random text does. UUIDs,
32-hex trace ids, words, slugs and camelCase names are spared.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, unquote_plus

from ..core.text import TRUNCATED, decode_capped

REDACTED = "REDACTED"
MAX_QUERY = 4096
MAX_HEADER_VALUE = 1024
MAX_HEADERS = 64
#: Request paths (and methods, at MAX_METHOD) are cut to this many characters.
MAX_PATH = 2048
MAX_METHOD = 32
#: Keys of at most this many characters match only as a whole word of a key.
SHORT = 4

#: Keys that mark a query key or header name as sensitive (see the module docstring).
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
    # OWASP Logging Cheat Sheet: passwords, one-time codes, session ids, access tokens,
    # keys, connection strings, payment card data; OAuth 2.0 (RFC 6749) authorization codes
    "key",
    "credential",
    "pwd",
    "jwt",
    "bearer",
    "pass",
    "pw",
    "passphrase",
    "passcode",
    "pin",
    "otp",
    "totp",
    "mfa",
    "code",
    "authcode",
    "auth_code",
    "accesskey",
    "access_key",
    "authkey",
    "signingkey",
    "assertion",
    "saml",
    "ticket",
    "dsn",
    "connection_string",
    "connectionstring",
    "cvv",
    "cvc",
    "card_number",
    "cardnumber",
    "ssn",
)

#: Header names redacted even when they do not contain a sensitive key.
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"}
)

# An HTTP authentication scheme followed by credentials (RFC 9110 section 11, the IANA
# registry's schemes and common bespoke ones): the rest of the value is redacted.
_SCHEME_RE = re.compile(
    r"(?i)\b(bearer|basic|digest|negotiate|ntlm|token|apikey|api-key|aws4-hmac-sha256|hoba"
    r"|mutual|scram-sha-1|scram-sha-256|vapid|dpop|privatetoken|hawk)[ \t]+\S"
)
# A JSON Web Token (header.payload.signature, base64url, the header starting '{"').
_JWT_RE = re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
#: A base64/base64url run this long (or longer) is judged by its shape.
MIN_RUN = 24
#: A run of hex digits this long is a secret (a 32-hex trace id or UUID is not).
MIN_HEX = 40
# Where a credential-shaped part may be (the rules below only find less): a run of what
# encoded secrets are made of ("%": escaped ones), a PEM block; JWTs are found by "eyJ".
_CANDIDATE = re.compile(r"[A-Za-z0-9+/_%-]{20,}|-----BEGIN")
# The same for one path segment ("/" separates segments there).
_SEGMENT_CANDIDATE = re.compile(r"[A-Za-z0-9+_%=-]{20,}|-----BEGIN")
_RUN = re.compile(r"[A-Za-z0-9+/_=-]{%d,}" % MIN_RUN)  # noqa: UP031
_SEPARATORS = re.compile(r"[-_+/=]")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{%d,}" % MIN_HEX)  # noqa: UP031
_PEM = re.compile(r"-----BEGIN[ A-Z0-9]*-----.*?(?:-----END[ A-Z0-9]*-----|\Z)", re.DOTALL)
# Tokens of well-known services, each by its documented prefix and shape.
_PREFIXED = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abposre]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{10,}"
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9+/=]{16,}"
    r"|sk-(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{20,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|ya29\.[0-9A-Za-z_-]{20,}"
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}|shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}"
    r"|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,}|hf_[A-Za-z0-9]{30,}"
    r")"
)


def _class(c: str) -> int:
    return 1 if c.islower() else 2 if c.isupper() else 3 if c.isdigit() else 0


def _random_looking(run: str) -> bool:
    """A base64/base64url run whose letters and digits look random rather than written.

    In random base64 about 3 in 5 neighbouring letters and digits differ in class (lower,
    upper, digit), digits are common and capitals meet; words, slugs and camelCase names
    change class less often, have few digits and no capitals side by side.
    """
    if max(map(len, _SEPARATORS.split(run))) < 8:
        return False  # short pieces between separators: a slug of words (random has few)
    chars = [c for c in run if c.isalnum()]  # separators ("-", "_", "/", "+") aside
    if len(chars) < MIN_RUN - 4:
        return False
    classes = [_class(c) for c in chars]
    changes = sum(1 for a, b in itertools.pairwise(classes) if a != b)
    if changes * 3 < len(chars):
        return False
    digits, upper, lower = classes.count(3), classes.count(2), classes.count(1)
    if upper and lower:
        capitals_meet = sum(1 for a, b in itertools.pairwise(classes) if a == b == 2)
        return digits >= 2 or capitals_meet >= 2
    # One case of letters, and digits (base32, base36): digits must be common.
    return (upper or lower) > 0 and digits * 6 >= len(chars)


def _shape_sub(text: str) -> str:
    """``text`` with every credential-shaped part replaced by ``REDACTED``."""
    if _CANDIDATE.search(text) is None and "eyJ" not in text:
        return text
    if "-----BEGIN" in text:
        text = _PEM.sub(REDACTED, text)
    if "eyJ" in text:
        text = _JWT_RE.sub(REDACTED, text)
    text = _PREFIXED.sub(REDACTED, text)
    if _RUN.search(text) is None:
        return text
    # UUIDs are identifiers, never secrets: set apart so they do not join a run.
    spared = _UUID.sub(lambda m: " " * len(m[0]), text)

    def judge(match: re.Match[str]) -> bool:
        run = match[0].rstrip("=")
        hex_run = _HEX.search(run)
        # A digest mixes digits and letters; "aaaa..." or "0000..." is not one.
        if hex_run is not None and not (hex_run[0].isdigit() or hex_run[0].isalpha()):
            return True
        if all(c in "0123456789abcdefABCDEF-" for c in run):
            return False
        return _random_looking(run)

    spans = [m.span() for m in _RUN.finditer(spared) if judge(m)]
    for start, end in reversed(spans):
        text = text[:start] + REDACTED + text[end:]
    return text


def looks_like_credential(value: str) -> bool:
    """True when ``value`` (percent-decoded too) holds a credential-shaped part."""
    if _shape_sub(value) != value:
        return True
    if "%" in value:
        decoded = unquote(value, errors="replace")
        return _shape_sub(decoded) != decoded
    return False


# Bounds the work done on absurd inputs; the output is capped at MAX_QUERY anyway.
_MAX_QUERY_INPUT = 16 * MAX_QUERY
_NESTING = 2  # URLs inside values inside URLs are redacted this deep
# Escapes of what keys are made of: digits, letters, "%", "-", ".", "_".
_REVEALING_ESCAPE = re.compile(r"%(?:3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|25|2[dDeE]|5[fF])")


def _normalize(text: str) -> str:
    # casefold() works per character, so normalize(part) is a substring of normalize(whole):
    # the fast path over the whole query can never miss what the per-key check would find.
    return text.casefold().replace("-", "_")


def _trie_branches(words: set[str], guard: str = "") -> list[str]:
    """Regex branches matching a set of literals, one per first character, factored by prefix.

    ``re`` tries the branches of a flat alternation one by one at every position; a trie
    rejects most positions after one character, and a top-level alternation whose branches
    all start with a literal lets ``re`` skip positions by their first character: both keep
    the per-request fast path cheap.
    """
    groups: dict[str, set[str]] = {}
    for word in words:
        groups.setdefault(word[0], set()).add(word[1:])
    branches = []
    for first, rests in sorted(groups.items()):
        tail = ""
        if rests - {""}:
            inner = _trie_branches(rests - {""})
            if len(inner) == 1 and "" not in rests:
                tail = inner[0]  # a plain sequence: a group per character would cost time
            else:
                tail = "(?:" + "|".join(inner) + ")"
            if "" in rests:
                tail += "?"  # whole-word matching needs the shorter word and the longer ones
        branches.append(re.escape(first) + guard + tail)
    return branches


def _decoded(text: str) -> str:
    """``text`` percent-decoded twice: what any key or nested URL in it can reveal.

    Decoding never consumes a ``&``, ``;`` or ``=`` that was there already (an escape is
    ``%`` and two hex digits), so no key decoded on its own shows more than this does.
    """
    text = unquote_plus(text, errors="replace")
    return unquote_plus(text, errors="replace") if "%" in text else text


def _check_keys(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, (str, bytes)):
        raise TypeError("redact_keys must be a list of key names, not a string")
    checked = []
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"redact_keys must contain str key names, not {type(key).__name__}")
        if not key.strip() or any(c.isspace() for c in key):
            raise ValueError(f"redact_keys: {key!r} is not a key name (empty or has whitespace)")
        checked.append(key)
    return checked


def _check_query_values(value: object) -> str | frozenset[str]:
    if value in ("all", "none"):
        return str(value)
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(
            f"query_values must be 'all', 'none' or a list of query keys, not {value!r}"
        )
    try:
        keys = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError("query_values must be 'all', 'none' or a list of query keys") from None
    for key in keys:
        if not isinstance(key, str) or not key:
            raise TypeError(f"query_values must contain query keys (str), not {key!r}")
    return frozenset(k.casefold() for k in keys)


class Redactor:
    """The redaction rules: :data:`DEFAULT_SENSITIVE` plus ``extra`` keys (``redact_keys=``),
    credential-shaped values, and which query values are kept at all (``query_values=``:
    ``"all"``, ``"none"`` or a list of keys whose values are kept)."""

    def __init__(
        self, extra: Iterable[str] = (), query_values: str | Iterable[str] = "all"
    ) -> None:
        self.query_values = _check_query_values(query_values)
        self.keys = (*DEFAULT_SENSITIVE, *_check_keys(extra))
        needles = {_normalize(k) for k in self.keys}
        long = {w for w in needles if len(w) > SHORT}
        short = needles - long
        # A long word containing another can never change a substring match.
        long = {w for w in long if not any(o != w and o in w for o in long)}
        branches = _trie_branches(long)
        # A short word checks the character before it once its first character matched, so
        # that every branch still starts with a literal.
        for branch in _trie_branches(short, guard=r"(?<![^\W_].)"):
            branches.append(branch + r"(?![^\W_])")
        self._sensitive = re.compile("|".join(branches)).search
        # Every word as a plain substring: cheaper to scan a whole query for, and a query it
        # finds nothing in holds no sensitive key (the strict pattern only matches less).
        plain = {w for w in needles if not any(o != w and o in w for o in needles)}
        self._candidate = re.compile("|".join(_trie_branches(plain))).search
        # Keys made of other characters can be hidden by other escapes: always decode then.
        self._revealing = _REVEALING_ESCAPE.search
        if any(re.fullmatch(r"[A-Za-z0-9._-]+", key) is None for key in self.keys):
            self._revealing = re.compile("%").search

    def is_sensitive(self, name: str) -> bool:
        """True when a query key or header name looks like it carries a secret."""
        return self._suspect(name)

    def _suspect(self, text: str) -> bool:
        normalized = _normalize(text)
        return self._candidate(normalized) is not None and self._sensitive(normalized) is not None

    def _key_is_sensitive(self, key: str) -> bool:
        key = self._plain_key(key)
        return self.is_sensitive(key)

    @staticmethod
    def _plain_key(key: str) -> str:
        if "%" in key or "+" in key:
            key = unquote_plus(key, errors="replace")
            # Double-encoded keys reach some frameworks decoded twice; redacting more is harmless.
            if "%" in key:
                key = unquote_plus(key, errors="replace")
        return key

    def _value_dropped(self, key: str) -> bool:
        """``query_values`` says this key's value is not recorded."""
        allowed = self.query_values
        if allowed == "all":
            return False
        return allowed == "none" or self._plain_key(key).casefold() not in allowed

    def query(self, raw: bytes | str) -> str:
        """The query string with the values of sensitive keys replaced by ``REDACTED``.

        Pairs are separated by ``&`` or ``;``; a value that is itself a URL or a query
        (percent-encoded or not) is redacted the same way. Key order, empty pairs and keys
        without ``=`` are kept as sent; invalid percent-encoding and non-UTF-8 bytes are
        tolerated. The result is at most :data:`MAX_QUERY` characters, ending in
        ``&…[truncated]`` when it was cut. Idempotent.
        """
        if not raw:
            return ""
        text, cut = decode_capped(raw, _MAX_QUERY_INPUT)
        normalized = _normalize(text)
        candidate = self._candidate(normalized) is not None
        if self.query_values != "all" or _CANDIDATE.search(text) or "eyJ" in text:
            text = self._pairs(text, 0)  # values to drop, or one that may be a credential
        elif (candidate and self._sensitive(normalized) is not None) or (
            "%" in text
            # Decoding can reveal a key only through an escape of a character keys are made
            # of, or by setting apart a candidate found already ("x%20pw"); "%20" alone not.
            and (candidate or self._revealing(text) is not None)
            and self._suspect(_decoded(text))
        ):
            text = self._pairs(text, 0)
        if not cut and len(text) <= MAX_QUERY:
            return text
        # Cut at a pair boundary so that no pair is left half-redacted: running the function
        # again must give the same answer.
        budget = MAX_QUERY - len(TRUNCATED) - 1
        head = text[: budget + 1]
        boundary = head.rfind("&")
        head = head[:boundary] if boundary > 0 else head[:budget]
        return head + "&" + TRUNCATED

    def _pairs(self, text: str, depth: int) -> str:
        pairs = text.split("&")
        for i, pair in enumerate(pairs):
            if ";" in pair and not self._key_is_sensitive(pair.partition("=")[0]):
                # A sensitive key's value runs to the next "&" (a secret may hold a ";");
                # only a pair that is not sensitive as a whole is read as ";"-separated pairs.
                pairs[i] = ";".join([self._pair(sub, depth) for sub in pair.split(";")])
            else:
                pairs[i] = self._pair(pair, depth)
        return "&".join(pairs)

    def _pair(self, pair: str, depth: int) -> str:
        key, eq, value = pair.partition("=")
        if not eq or value == REDACTED:
            return pair
        if self._key_is_sensitive(key) or (depth == 0 and value and self._value_dropped(key)):
            return key + "=" + REDACTED
        # A query nested in a value has an "=", plain or percent-encoded (%3D, %253D, ...).
        if depth < _NESTING and ("=" in value or "3D" in value or "3d" in value):
            nested = self._value(value, depth + 1)
            if nested is not value:
                return key + "=" + nested
        if looks_like_credential(value):
            return key + "=" + REDACTED
        return pair

    def _value(self, value: str, depth: int) -> str:
        """A value holding a URL or a query, redacted; ``value`` itself when nothing changed."""
        # Percent-encoded as a whole (a URL passed as one query value) when the structure
        # itself is encoded; otherwise the URL's own parts may hold escapes.
        encoded = "%" in value and "=" not in value and "?" not in value
        text = unquote_plus(value, errors="replace") if encoded else value
        if "=" not in text or (not self._suspect(text) and "%" not in text):
            return value
        base, qmark, rest = text.partition("?")
        if not qmark:
            base, rest = "", text
        query, hash_, fragment = rest.partition("#")
        redacted = base + qmark + self._pairs(query, depth)
        if hash_:
            # OAuth's implicit flow returns tokens in the fragment: read it as a query too.
            redacted += hash_ + self._pairs(fragment, depth)
        if redacted == text:
            return value
        return quote(redacted, safe="") if encoded else redacted

    def header_value(self, value: str) -> str:
        """A captured header value with credentials and secrets in URLs redacted."""
        match = _SCHEME_RE.search(value)
        if match is not None:
            value = value[: match.end(1)] + " " + REDACTED
        if "=" in value or "%" in value:
            value = self._value(value, 1)
        return _shape_sub(value)

    def path(self, path: str) -> str:
        """``path`` with each credential-shaped segment replaced by ``REDACTED``."""
        if _SEGMENT_CANDIDATE.search(path) is None and "eyJ" not in path:
            return path
        segments = path.split("/")
        changed = False
        for i, segment in enumerate(segments):
            if segment and segment != REDACTED and looks_like_credential(segment):
                segments[i] = REDACTED
                changed = True
        return "/".join(segments) if changed else path

    def headers(
        self, headers: Iterable[tuple[bytes, bytes]] | None, names: frozenset[str]
    ) -> dict[str, str]:
        """The headers named in ``names`` (lower-case), with sensitive values redacted.

        A header whose name is sensitive is kept only as ``REDACTED``; in others, credentials
        after an authentication scheme, JWTs and sensitive query values of URLs are redacted.
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
            if name in SENSITIVE_HEADERS or self.is_sensitive(name):
                found[name] = REDACTED
                continue
            value, _ = decode_capped(raw_value, MAX_HEADER_VALUE + 1)
            value = self.header_value(value)
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


DEFAULT = Redactor()
redact_path = DEFAULT.path
is_sensitive = DEFAULT.is_sensitive
redact_query = DEFAULT.query
capture_headers = DEFAULT.headers
