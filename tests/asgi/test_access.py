"""Who reaches the endpoint, over real HTTP: Host checks (DNS rebinding), proxy headers,
the manual-capture limit and the token's login cookie."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import pytest
from support import uvicorn_thread

from flightdeck import FlightDeck
from flightdeck.asgi import access as _access

PREFIX = "/debug/flight"
TOKEN = "tok-0123456789abcdef"


async def inner(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request over a real socket with exactly these headers (Host included)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def deck(decks: list[Any], **options: Any) -> FlightDeck:
    # Snapshots here are the manual ones the tests take: no trigger may add one (a loaded
    # machine can lag the loop past loop_blocked).
    options.setdefault("slow_request", None)
    options.setdefault("loop_blocked", None)
    options.setdefault("capture_delay", 0.0)
    made = FlightDeck(inner, endpoint=PREFIX, **options)
    decks.append(made)
    return made


def test_foreign_host_refused_without_token(decks: list[Any]) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 but names its own domain."""
    d = deck(decks)
    with uvicorn_thread(d) as srv:
        latest = f"{PREFIX}/snapshots/latest"
        created = request(
            srv.port, "POST", f"{PREFIX}/snapshots", {"Host": f"localhost:{srv.port}"}
        )
        assert created[0] == 201
        for host in ("evil.com", f"evil.com:{srv.port}", "127.0.0.1.evil.com", "0.0.0.0", ""):
            for method, path, extra in (
                ("GET", latest, {}),
                ("GET", PREFIX, {"Accept": "text/html"}),
                ("POST", f"{PREFIX}/snapshots", {"Origin": f"http://{host}"}),
            ):
                status, _, body = request(srv.port, method, path, {"Host": host, **extra})
                assert status == 403, (host, method, path)
                assert b"allowed_hosts" in body and b"flightdeck/1" not in body
        assert len(d.store.list()) == 1  # the refused POSTs captured nothing
        for host in (
            f"127.0.0.1:{srv.port}",
            "127.0.0.1",
            "127.9.9.9",
            f"localhost:{srv.port}",
            "LOCALHOST.",
            f"[::1]:{srv.port}",
            "[::ffff:127.0.0.1]",
        ):
            status, _, body = request(srv.port, "GET", latest, {"Host": host})
            assert status == 200 and body.startswith(b'{"format":"flightdeck/1"'), host
        # Not a loopback client or proxied: still 404, as if nothing were there.
        status, _, _ = request(srv.port, "GET", latest, {"Host": "localhost", "Via": "1.1 p"})
        assert status == 404
        # The app itself answers any Host.
        assert request(srv.port, "GET", "/x", {"Host": "evil.com"})[0] == 200


def test_allowed_hosts_option_and_environment(
    decks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    by_option = deck(decks, allowed_hosts=["devbox.internal", "10.1.2.3"])
    monkeypatch.setenv("FLIGHTDECK_ALLOWED_HOSTS", " devbox.internal , ,other.lan")
    by_env = deck(decks)
    assert by_env.config.allowed_hosts == ("devbox.internal", "other.lan")
    for d in (by_option, by_env):
        with uvicorn_thread(d) as srv:
            status = request(srv.port, "GET", f"{PREFIX}/status", {"Host": "DevBox.Internal:80"})
            assert status[0] == 200
            assert request(srv.port, "GET", f"{PREFIX}/status", {"Host": "evil.com"})[0] == 403
    for bad, error in (("*", ValueError), ("http://x", ValueError), ("a:80", ValueError)):
        with pytest.raises(error, match="allowed_hosts"):
            FlightDeck(inner, allowed_hosts=[bad])
    with pytest.raises(TypeError, match="allowed_hosts"):
        FlightDeck(inner, allowed_hosts="devbox")


WIDENED = [
    "Via",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "Fastly-Client-IP",
]


def test_more_proxy_headers_mark_a_request_as_proxied(decks: list[Any]) -> None:
    """Each of these headers alone makes a loopback request look proxied."""
    d = deck(decks)
    with uvicorn_thread(d) as srv:
        url = f"{PREFIX}/status"
        assert request(srv.port, "GET", url, {"Host": "127.0.0.1"})[0] == 200
        for name in WIDENED:
            status, _, _ = request(srv.port, "GET", url, {"Host": "127.0.0.1", name: "1.2.3.4"})
            assert status == 404, name


def test_manual_captures_are_rate_limited(decks: list[Any]) -> None:
    """Thirty POSTs in a burst; beyond the limit, 429 with Retry-After."""
    d = deck(decks)
    host = {"Host": "127.0.0.1"}
    with uvicorn_thread(d) as srv:
        answers = [request(srv.port, "POST", f"{PREFIX}/snapshots", host) for _ in range(30)]
        statuses = [status for status, _, _ in answers]
        limit = _access.MANUAL_RATE[0]
        assert statuses[:limit] == [201] * limit
        assert statuses[limit:] == [429] * (30 - limit)
        retry = int(answers[-1][1]["retry-after"])
        assert 1 <= retry <= _access.MANUAL_RATE[1]
        assert b"too many manual captures" in answers[-1][2]
        status = json.loads(request(srv.port, "GET", f"{PREFIX}/status", host)[2])
        assert status["manual_refused"] == 30 - limit
    assert len(d.store.list()) == limit


def test_manual_limit_frees_up_after_its_period() -> None:
    now = [100.0]
    limit = _access.ManualLimit(2, 60.0, clock=lambda: now[0])
    assert limit.retry_after() == 0 and limit.retry_after() == 0
    assert limit.retry_after() == 60
    now[0] += 59.5
    assert limit.retry_after() == 1
    now[0] += 0.5
    assert limit.retry_after() == 0
    assert limit.refused == 2


def _cookie_of(headers: dict[str, str]) -> str:
    return headers["set-cookie"].split(";", 1)[0]


def _login(port: int, token: str, **extra: str) -> tuple[int, dict[str, str], bytes]:
    body = f"token={token}".encode()
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/x-www-form-urlencoded"}
    return request(port, "POST", f"{PREFIX}/login", {**headers, **extra}, body)


def test_login_form_exchanges_the_token_for_a_cookie(decks: list[Any]) -> None:
    """A browser cannot send a bearer header; it logs in once."""
    d = deck(decks, token=TOKEN)
    with uvicorn_thread(d) as srv:
        host = {"Host": f"127.0.0.1:{srv.port}"}
        status, headers, _ = request(srv.port, "GET", PREFIX, {**host, "Accept": "text/html"})
        assert status == 303 and headers["location"] == f"{PREFIX}/login"
        status, headers, page = request(srv.port, "GET", f"{PREFIX}/login", host)
        assert status == 200 and b'type="password" name="token"' in page
        assert "form-action 'self'" in headers["content-security-policy"]
        assert _login(srv.port, "wrong")[0] == 401
        assert "set-cookie" not in _login(srv.port, "wrong")[1]
        cross = _login(srv.port, TOKEN, Origin="http://evil.com")
        assert cross[0] == 403 and "set-cookie" not in cross[1]
        status, headers, _ = _login(srv.port, TOKEN)
        assert status == 303 and headers["location"] == f"{PREFIX}/"
        attributes = [a.strip().lower() for a in headers["set-cookie"].split(";")]
        assert "httponly" in attributes and "samesite=strict" in attributes
        assert f"path={PREFIX}" in attributes and f"max-age={_access.SESSION_TTL}" in attributes
        assert TOKEN not in headers["set-cookie"]
        cookie = _cookie_of(headers)
        with_cookie = {**host, "Cookie": f"theme=dark; {cookie}"}
        status, _, page = request(srv.port, "GET", PREFIX, {**with_cookie, "Accept": "text/html"})
        assert status == 200 and b"Capture now" in page
        assert request(srv.port, "POST", f"{PREFIX}/snapshots", with_cookie)[0] == 201
        listing = json.loads(request(srv.port, "GET", f"{PREFIX}/snapshots", with_cookie)[2])
        assert len(listing) == 1
        assert request(srv.port, "GET", "/x", with_cookie)[0] == 200
        # A tampered cookie, and the cookie on a request without it: 401.
        name, _, value = cookie.partition("=")
        forged = value[:-1] + ("0" if value[-1] != "0" else "1")
        for jar in (f"{name}={forged}", f"{name}=v1.9999999999.{value.rsplit('.', 1)[1]}", ""):
            status, _, _ = request(srv.port, "GET", f"{PREFIX}/snapshots", {**host, "Cookie": jar})
            assert status == 401, jar


def test_cookie_works_on_every_worker_and_expires(
    decks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stateless: a cookie from one process is valid on another with the same token; not on
    one with another token, and not after it expires."""
    first, second, other = (
        deck(decks, token=TOKEN),
        deck(decks, token=TOKEN),
        deck(decks, token="x" * 20),
    )
    with uvicorn_thread(first) as a, uvicorn_thread(second) as b, uvicorn_thread(other) as c:
        cookie = _cookie_of(_login(a.port, TOKEN)[1])
        for srv, expected in ((a, 200), (b, 200), (c, 401)):
            headers = {"Host": "127.0.0.1", "Cookie": cookie}
            assert request(srv.port, "GET", f"{PREFIX}/status", headers)[0] == expected
        later = time.time() + _access.SESSION_TTL + 1
        monkeypatch.setattr(second._endpoint_app.access, "clock", lambda: later)  # type: ignore[union-attr]
        headers = {"Host": "127.0.0.1", "Cookie": cookie}
        assert request(b.port, "GET", f"{PREFIX}/status", headers)[0] == 401


def test_no_login_without_a_token(decks: list[Any]) -> None:
    d = deck(decks)
    with uvicorn_thread(d) as srv:
        assert request(srv.port, "GET", f"{PREFIX}/login", {"Host": "127.0.0.1"})[0] == 404


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/debug/flight", "", ("/debug/flight", "")),
        ("/debug/flight/snapshots", "", ("/debug/flight", "/snapshots")),
        ("/debug/flightx", "", None),
        ("/api/debug/flight/status", "/api", ("/api/debug/flight", "/status")),
        ("/apix/debug/flight", "/api", None),  # root_path matched on a path boundary only
        ("/debug/flight", "/api", ("/debug/flight", "")),  # a server leaving root out of path
    ],
)
def test_one_rule_locates_the_endpoint(
    path: str, root: str, expected: tuple[str, str] | None
) -> None:
    """The middleware forwards exactly what the endpoint then serves (one function)."""
    from flightdeck.asgi.locate import locate

    scope = {"type": "http", "path": path, "root_path": root}
    assert locate(scope, PREFIX, PREFIX + "/") == expected
    d = FlightDeck(inner, endpoint=PREFIX)
    try:
        assert d._for_endpoint(scope) is (expected is not None)
    finally:
        d.close()


def _valid_cookie(d: FlightDeck) -> str:
    access = d._endpoint_app.access  # type: ignore[union-attr]
    return access.session_cookie(PREFIX, False).split(";", 1)[0]


def test_malformed_session_cookies_get_401_and_never_hide_a_valid_one(decks: list[Any]) -> None:
    """A non-ASCII digit ("²".isdigit() is true, int() refuses it) or an expiry of more digits
    than int() converts must be "not this cookie", not a 500, and not stop the search."""
    d = deck(decks, token=TOKEN)
    good = _valid_cookie(d)
    bad = [
        f"{_access.COOKIE}=v1.\u00b2.x",
        f"{_access.COOKIE}=v1.1\u00b9\u00b3.x",
        f"{_access.COOKIE}=v1.{'9' * 5000}.x",
        f"{_access.COOKIE}=v1.{'9' * 13}.x",
        f"{_access.COOKIE}=v1..x",
    ]
    with uvicorn_thread(d) as srv:
        for jar in bad:
            headers = {"Host": "127.0.0.1", "Cookie": jar}
            status, _, _ = request(srv.port, "GET", f"{PREFIX}/status", headers)
            assert status == 401, jar[:40]
            headers["Cookie"] = f"{jar}; {good}"
            status, _, _ = request(srv.port, "GET", f"{PREFIX}/status", headers)
            assert status == 200, jar[:40]


def test_short_token_refused_at_construction(
    decks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for token in ("x", "s3cret-token", "x" * 15):
        with pytest.raises(ValueError, match=r"token \(FLIGHTDECK_TOKEN\).*at least 16"):
            FlightDeck(inner, endpoint=PREFIX, token=token)
    monkeypatch.setenv("FLIGHTDECK_TOKEN", "short")
    with pytest.raises(ValueError, match="FLIGHTDECK_TOKEN"):
        FlightDeck(inner, endpoint=PREFIX)
    monkeypatch.setenv("FLIGHTDECK_TOKEN", "x" * 16)
    deck(decks)  # 16 is enough


def test_logout_clears_the_session_cookie(decks: list[Any]) -> None:
    d = deck(decks, token=TOKEN)
    with uvicorn_thread(d) as srv:
        host = {"Host": f"127.0.0.1:{srv.port}"}
        cookie = _cookie_of(_login(srv.port, TOKEN)[1])
        with_cookie = {**host, "Cookie": cookie}
        assert request(srv.port, "GET", f"{PREFIX}/logout", with_cookie)[0] == 405
        cross = {**with_cookie, "Origin": "http://evil.com"}
        status, headers, _ = request(srv.port, "POST", f"{PREFIX}/logout", cross)
        assert status == 403 and "set-cookie" not in headers
        status, headers, _ = request(srv.port, "POST", f"{PREFIX}/logout", with_cookie)
        assert status == 303 and headers["location"] == f"{PREFIX}/login"
        attributes = [a.strip().lower() for a in headers["set-cookie"].split(";")]
        assert attributes[0] == f"{_access.COOKIE}=" and "max-age=0" in attributes
        assert f"path={PREFIX}" in attributes and "httponly" in attributes
        # The index offers the button only where there is a session to end.
        page = request(srv.port, "GET", PREFIX, {**with_cookie, "Accept": "text/html"})[2]
        assert b'action="/debug/flight/logout"' in page
    tokenless = deck(decks)
    with uvicorn_thread(tokenless) as srv:
        host = {"Host": "127.0.0.1"}
        assert request(srv.port, "POST", f"{PREFIX}/logout", host)[0] == 404
        page = request(srv.port, "GET", PREFIX, {**host, "Accept": "text/html"})[2]
        assert b"/logout" not in page


def test_failed_attempts_limited_per_client_address(decks: list[Any]) -> None:
    """Wrong bearer tokens, cookies and login tokens count; past the limit even the right
    token gets 429 with Retry-After (no oracle), until the oldest failure ages out."""
    d = deck(decks, token=TOKEN)
    access = d._endpoint_app.access  # type: ignore[union-attr]
    now = [1000.0]
    access.failures.clock = lambda: now[0]
    count, period = _access.FAILURE_RATE
    with uvicorn_thread(d) as srv:
        host = {"Host": f"127.0.0.1:{srv.port}"}
        status_url = f"{PREFIX}/status"
        # Requests without credentials are not guesses: never counted.
        for _ in range(count + 2):
            assert request(srv.port, "GET", status_url, host)[0] == 401
        for n in range(count):
            if n % 3 == 0:
                assert _login(srv.port, "wrong-token-0000000")[0] == 401
            elif n % 3 == 1:
                jar = {**host, "Cookie": f"{_access.COOKIE}=v1.1.x"}
                assert request(srv.port, "GET", status_url, jar)[0] == 401
            else:
                bearer = {**host, "Authorization": "Bearer wrong"}
                assert request(srv.port, "GET", status_url, bearer)[0] == 401
        right = {**host, "Authorization": f"Bearer {TOKEN}"}
        status, headers, body = request(srv.port, "GET", status_url, right)
        assert status == 429 and int(headers["retry-after"]) == period
        assert b"too many failed attempts" in body
        status, headers, _ = _login(srv.port, TOKEN)
        assert status == 429 and "set-cookie" not in headers
        now[0] += period / 2
        assert int(request(srv.port, "GET", status_url, right)[1]["retry-after"]) == period / 2
        now[0] += period / 2
        status, _, body = request(srv.port, "GET", status_url, right)
        assert status == 200 and json.loads(body)["auth_limited"] == 3
    # Another address is not affected; the table stays bounded.
    limit = _access.FailureLimit(2, 60.0, clock=lambda: 0.0, addresses=3)
    for address in ("a", "a", "b", "c", "d", "e"):
        limit.failed(address)
    assert limit.retry_after("a") == 0  # forgotten: the least recently failing went first
    limit.failed("e")
    assert limit.retry_after("e") == 60 and limit.retry_after("d") == 0
    assert len(limit._failures) == 3
