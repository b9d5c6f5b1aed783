"""Who may use the debug endpoint: the token, its session cookie, loopback and Host checks.

Without a token only loopback clients that came through no proxy are answered (``404`` to
anyone else, as if nothing were there), and only when the ``Host`` they asked for is a
loopback name or address or one of ``allowed_hosts`` (``403`` otherwise): a page on a
DNS-rebinding domain reaches 127.0.0.1 through the user's browser, but still names its own
domain in ``Host``.

With a token, a request carries ``Authorization: Bearer <token>`` or the session cookie
that ``POST {prefix}/login`` exchanges the token for. The cookie is stateless: an expiry and
an HMAC of it keyed by the token, so it is valid on every worker that has the token, and
changing the token revokes every cookie. Logging out clears the cookie in the browser; a
copy taken before stays valid until it expires (changing the token revokes it).

Failed attempts (a wrong token at the login form, a wrong bearer token or session cookie)
are limited per client address (:class:`FailureLimit`): past the limit every attempt from
that address gets ``429`` with ``Retry-After`` until the oldest failure is old enough. The
address is the one the server reports: behind a proxy all clients share the proxy's, and
each worker process counts its own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from math import ceil

from starlette.types import Scope

#: Headers that mark a request as relayed by a proxy (lower-case). A same-host proxy that
#: adds none of them makes its clients look local: use a token behind one.
PROXY_HEADERS = frozenset(
    {
        b"forwarded",
        b"via",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-forwarded-prefix",
        b"x-original-forwarded-for",
        b"x-real-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"fly-client-ip",
        b"x-appengine-user-ip",
        b"x-azure-clientip",
    }
)
COOKIE = "flightdeck_session"
SESSION_TTL = 8 * 3600  # seconds a login lasts
_COOKIE_VERSION = "v1"

#: The shortest token accepted: a short one could be guessed despite the failure limit.
MIN_TOKEN = 16
_MAX_EXPIRY_DIGITS = 12  # an expiry in seconds since 1970 has 10 digits until 2286
#: Failed logins or bearer/cookie attempts: at most this many per period, per client address.
FAILURE_RATE = (10, 60.0)

#: Manual captures (``POST {prefix}/snapshots``): at most this many per period, per process.
MANUAL_RATE = (5, 60.0)


def is_loopback(host: str) -> bool:
    """True for a loopback IP address (IPv4-mapped IPv6 included)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def host_name(value: str) -> str:
    """The name or address in a ``Host`` header, without port or brackets, lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".")


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers") or ():
        if name == wanted:
            return bytes(value)
    return None


class Access:
    """The endpoint's access rules; :meth:`check` says who is refused and how."""

    def __init__(
        self,
        token: str | None,
        allowed_hosts: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if token is not None and len(token) < MIN_TOKEN:
            raise ValueError(
                f"token (FLIGHTDECK_TOKEN) must be at least {MIN_TOKEN} characters, not"
                f" {len(token)}; generate one with: python -c 'import secrets;"
                " print(secrets.token_urlsafe(32))'"
            )
        self.token = token
        self.failures = FailureLimit(*FAILURE_RATE)
        self.allowed_hosts = frozenset(allowed_hosts)
        self.clock = clock
        self._digest = None if token is None else hashlib.sha256(token.encode()).digest()
        # The cookie's key is derived from the token, never the token itself.
        secret = b"" if token is None else token.encode()
        self._key = hashlib.sha256(b"flightdeck-session\0" + secret).digest()

    def tokenless_refusal(self, scope: Scope) -> tuple[int, str] | None:
        """Without a token: (status, reason) for a refused request, None when it may pass."""
        client = scope.get("client")
        if not client or not is_loopback(str(client[0])):
            return 404, ""
        headers = scope.get("headers") or ()
        if any(name in PROXY_HEADERS for name, _ in headers):
            return 404, ""
        raw = _header(scope, b"host")
        if raw is None:
            return None  # HTTP/1.0 without Host: not a browser, so not a rebinding page
        host = host_name(raw.decode("latin-1"))
        if host == "localhost" or is_loopback(host) or host in self.allowed_hosts:
            return None
        shown = host[:100] or "(empty)"
        return 403, (
            f"Host {shown!r} is not a loopback name; add it to allowed_hosts"
            " (FLIGHTDECK_ALLOWED_HOSTS) or set a token"
        )

    def token_matches(self, credentials: bytes) -> bool:
        """Constant-time comparison of ``credentials`` with the token."""
        assert self._digest is not None
        return hmac.compare_digest(hashlib.sha256(credentials).digest(), self._digest)

    @staticmethod
    def address(scope: Scope) -> str:
        """The client address the server reports ("" when it reports none)."""
        client = scope.get("client")
        try:
            return str(client[0])[:256] if client else ""
        except (TypeError, IndexError, KeyError):
            return ""

    @staticmethod
    def has_credentials(scope: Scope) -> bool:
        """The request carries an ``Authorization`` header or a session cookie."""
        if _header(scope, b"authorization") is not None:
            return True
        cookie = _header(scope, b"cookie")
        return cookie is not None and COOKIE.encode() in cookie

    def authorized(self, scope: Scope) -> bool:
        """With a token: the request carries the bearer token or a valid session cookie."""
        given = _header(scope, b"authorization")
        scheme, _, credentials = (given or b"").partition(b" ")
        # Digests have one length whatever was sent, and the comparison always runs
        # (against an empty credential when the header is missing): constant time.
        matches = self.token_matches(credentials.strip(b" \t"))
        if matches and given is not None and scheme.lower() == b"bearer":
            return True
        return self._cookie_valid(_header(scope, b"cookie"))

    # -- the session cookie -----------------------------------------------------------------
    def _sign(self, expires: int) -> str:
        message = f"{_COOKIE_VERSION}.{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def session_cookie(self, path: str, secure: bool) -> str:
        """A ``Set-Cookie`` value for a fresh session scoped to ``path``."""
        expires = int(self.clock()) + SESSION_TTL
        value = f"{_COOKIE_VERSION}.{expires}.{self._sign(expires)}"
        flags = f"; Path={path}; Max-Age={SESSION_TTL}; HttpOnly; SameSite=Strict"
        return f"{COOKIE}={value}{flags}{'; Secure' if secure else ''}"

    @staticmethod
    def clear_cookie(path: str) -> str:
        return f"{COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict"

    def _cookie_valid(self, header: bytes | None) -> bool:
        if header is None or self.token is None:
            return False
        for part in header.decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name != COOKIE:
                continue
            version, _, rest = value.partition(".")
            expires_text, _, signature = rest.partition(".")
            # ASCII digits only ("²".isdigit() is true, int() refuses it) and few of them
            # (int() refuses more than 4300 digits): anything else is just not this cookie.
            if (
                version != _COOKIE_VERSION
                or not 0 < len(expires_text) <= _MAX_EXPIRY_DIGITS
                or not (expires_text.isascii() and expires_text.isdigit())
            ):
                continue
            expires = int(expires_text)
            if expires < self.clock():
                continue
            if hmac.compare_digest(self._sign(expires), signature):
                return True
        return False


class ManualLimit:
    """A sliding-window limit on manual captures; says when the next one is allowed."""

    def __init__(self, count: int, period: float, clock: Callable[[], float] = time.monotonic):
        self.count = count
        self.period = period
        self.clock = clock
        self.refused = 0
        self._times: deque[float] = deque()

    def retry_after(self) -> int:
        """0 when a capture may go ahead now (and counts it), else whole seconds to wait."""
        now = self.clock()
        times = self._times
        while times and now - times[0] >= self.period:
            times.popleft()
        if len(times) < self.count:
            times.append(now)
            return 0
        self.refused += 1
        return max(1, ceil(self.period - (now - times[0])))


class FailureLimit:
    """Failed authentication attempts per client address, in a sliding window.

    At most ``addresses`` are remembered (the least recently failing forgotten first), so
    the table stays bounded whatever the number of clients.
    """

    def __init__(
        self,
        count: int,
        period: float,
        clock: Callable[[], float] = time.monotonic,
        addresses: int = 4096,
    ) -> None:
        self.count = count
        self.period = period
        self.clock = clock
        self.addresses = addresses
        self.refused = 0
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int:
        """0 when ``address`` may try now, else whole seconds until it may (counted)."""
        times = self._failures.get(address)
        if times is None:
            return 0
        now = self.clock()
        while times and now - times[0] >= self.period:
            times.popleft()
        if len(times) < self.count:
            if not times:
                del self._failures[address]
            return 0
        self.refused += 1
        return max(1, ceil(self.period - (now - times[0])))

    def failed(self, address: str) -> None:
        """Count one failed attempt from ``address``."""
        times = self._failures.pop(address, None)
        if times is None:
            times = deque(maxlen=self.count)
            while len(self._failures) >= self.addresses:
                self._failures.popitem(last=False)
        times.append(self.clock())
        self._failures[address] = times
