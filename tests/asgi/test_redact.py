from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightdeck.asgi.redact import (
    DEFAULT_SENSITIVE,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_QUERY,
    REDACTED,
    SHORT,
    Redactor,
    capture_headers,
    is_sensitive,
    looks_like_credential,
    redact_path,
    redact_query,
)
from flightdeck.core.text import TRUNCATED, safe_text

SECRET = "S3CR3T"

REQUIRED_KEYS = [
    # OpenTelemetry url.query redaction
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    # Sentry's default denylist
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
    "sessionid",
    "csrftoken",
    "x_csrftoken",
    "x_forwarded_for",
    "set_cookie",
    "cookie",
    "authorization",
    "x_api_key",
]


def _flip_case(key: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if f else c.lower() for c, f in zip(key, flips + [False] * len(key), strict=False)
    )


safe_chars = st.characters(codec="utf-8", exclude_characters="&=%+")
plain_key = st.text(
    alphabet=st.sampled_from("bcfhmqvwxyz0123456789_."), min_size=1, max_size=8
).filter(lambda k: not is_sensitive(k))


@st.composite
def sensitive_key(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(REQUIRED_KEYS))
    base = _flip_case(base, draw(st.lists(st.booleans(), max_size=len(base))))
    if draw(st.booleans()):
        base = base.replace("_", "-")
    before, after = draw(st.text(safe_chars, max_size=4)), draw(st.text(safe_chars, max_size=4))
    if len(base) <= SHORT:
        # Short keys match as a whole word: whatever surrounds them is set apart.
        before, after = (before + "_" if before else ""), ("." + after if after else "")
    return before + base + after


@st.composite
def query_pairs(draw: st.DrawFn) -> list[tuple[str, str, bool]]:
    pairs = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            value = SECRET + draw(st.text(st.characters(exclude_characters="&"), max_size=20))
            pairs.append((draw(sensitive_key()), value, True))
        else:
            pairs.append((draw(plain_key), draw(st.text(safe_chars, max_size=20)), False))
    return pairs


@pytest.mark.parametrize("key", [*REQUIRED_KEYS, "access_token", "X-AMZ-SIGNATURE", "Api-Key"])
def test_required_keys_are_sensitive(key: str) -> None:
    assert is_sensitive(key)
    assert redact_query(f"a=1&{key}=v&b=2") == f"a=1&{key}={REDACTED}&b=2"


def test_default_list_covers_otel_and_sentry() -> None:
    lowered = {k.lower() for k in DEFAULT_SENSITIVE}
    for key in REQUIRED_KEYS:
        assert key.lower() in lowered


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", ""),
        ("", ""),
        (b"a=1&b=2", "a=1&b=2"),
        (b"q=hello%20world&page=2", "q=hello%20world&page=2"),
        (b"flag&token&&a=", "flag&token&&a="),
        (b"token=", f"token={REDACTED}"),
        (b"token=a=b=c", f"token={REDACTED}"),
        (b"b=%zz&%=1&password=%", f"b=%zz&%=1&password={REDACTED}"),
        (b"pass%77ord=x", f"pass%77ord={REDACTED}"),
        (b"pass%2577ord=x", f"pass%2577ord={REDACTED}"),
        (b"api+key=x&user%5Btoken%5D=y", f"api+key={REDACTED}&user%5Btoken%5D={REDACTED}"),
        (b"z=1&y=2&x=3&Secret=4", f"z=1&y=2&x=3&Secret={REDACTED}"),
        (b"\xff\xfe=1&sig=\xff&v=\xc3", f"\ufffd\ufffd=1&sig={REDACTED}&v=\ufffd"),
    ],
)
def test_examples(raw: bytes | str, expected: str) -> None:
    assert redact_query(raw) == expected


def test_truncation_marks_and_bounds() -> None:
    out = redact_query(b"a=1&" * 5000)
    assert len(out) <= MAX_QUERY
    assert out.endswith("&" + TRUNCATED)
    assert out.startswith("a=1&a=1")
    # A single giant pair is cut inside it.
    out = redact_query(b"q=" + b"x" * 100_000)
    assert len(out) <= MAX_QUERY and out.endswith(TRUNCATED)
    # A giant secret still ends up redacted, and what was lost is marked.
    out = redact_query(b"token=" + b"x" * 100_000 + b"&a=1")
    assert out == f"token={REDACTED}&{TRUNCATED}"


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(query_pairs())
def test_no_sensitive_value_survives(pairs: list[tuple[str, str, bool]]) -> None:
    raw = "&".join(f"{k}={v}" for k, v, _ in pairs)
    for source in (raw, raw.encode("utf-8", "surrogatepass")):
        out = redact_query(source)
        assert SECRET not in out
        if len(raw) < MAX_QUERY // 2:
            kept = out.split("&") if out else []
            assert len(kept) == len(pairs)
            for (key, value, sensitive), got in zip(pairs, kept, strict=True):
                assert got == f"{key}={REDACTED if sensitive else value}"


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(st.binary(max_size=3000), st.text(max_size=3000)))
def test_never_raises_bounded_idempotent(raw: bytes | str) -> None:
    out = redact_query(raw)
    assert isinstance(out, str)
    assert len(out) <= MAX_QUERY
    out.encode("utf-8")  # serializable: no lone surrogates
    assert redact_query(out) == out


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.binary(min_size=MAX_QUERY - 50, max_size=MAX_QUERY * 20))
def test_large_inputs_bounded_idempotent(raw: bytes) -> None:
    out = redact_query(raw)
    assert len(out) <= MAX_QUERY
    assert redact_query(out) == out


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.sampled_from(["a=1", "token=xyz", "&", "=", "sig", "%", "é"]), max_size=2000))
def test_structured_large_idempotent(parts: list[str]) -> None:
    out = redact_query("&".join(parts))
    assert len(out) <= MAX_QUERY
    assert "xyz" not in out
    assert redact_query(out) == out


def test_capture_headers_opt_in_and_redaction() -> None:
    headers = [
        (b"User-Agent", b"curl/8"),
        (b"Authorization", b"Bearer abc"),
        (b"Cookie", b"session=abc"),
        (b"X-Api-Key", b"k"),
        (b"X-My-Token", b"t"),
        (b"Accept", b"text/html"),
        (b"accept", b"application/json"),
        (b"X-Bin", b"\xff\xfe ok"),
        (b"Host", b"example"),
    ]
    names = frozenset(
        {"user-agent", "authorization", "cookie", "x-api-key", "x-my-token", "accept", "x-bin"}
    )
    got = capture_headers(headers, names)
    assert got == {
        "user-agent": "curl/8",
        "authorization": REDACTED,
        "cookie": REDACTED,
        "x-api-key": REDACTED,
        "x-my-token": REDACTED,
        "accept": "text/html, application/json",
        "x-bin": "\ufffd\ufffd ok",
    }
    assert capture_headers(None, names) == {}
    assert capture_headers(headers, frozenset()) == {}


def test_capture_headers_bounds() -> None:
    long = [(b"x-long", b"v" * 5000)]
    value = capture_headers(long, frozenset({"x-long"}))["x-long"]
    assert len(value) == MAX_HEADER_VALUE and value.endswith(TRUNCATED)
    repeated = [(b"x-rep", b"abc")] * 2000
    value = capture_headers(repeated, frozenset({"x-rep"}))["x-rep"]
    assert len(value) == MAX_HEADER_VALUE and value.endswith(TRUNCATED)
    many_names = frozenset(f"x-h{i}" for i in range(200))
    many = [(name.encode(), b"1") for name in sorted(many_names)]
    assert len(capture_headers(many, many_names)) == MAX_HEADERS


header_name = st.one_of(sensitive_key(), plain_key).map(lambda s: s.lower())


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(header_name, st.binary(max_size=2000)), max_size=80))
def test_capture_headers_property(items: list[tuple[str, bytes]]) -> None:
    names = frozenset(n for n, _ in items)
    headers = [(n.encode("utf-8"), SECRET.encode() + v) for n, v in items]
    got = capture_headers(headers, names)
    assert len(got) <= MAX_HEADERS
    for name, value in got.items():
        assert len(value) <= MAX_HEADER_VALUE
        value.encode("utf-8")
        if is_sensitive(name):
            assert value == REDACTED
        else:
            assert value.startswith(SECRET[:MAX_HEADER_VALUE])
    orjson.dumps(got)


@pytest.mark.parametrize(
    ("raw", "limit", "expected"),
    [
        (None, 10, ""),
        ("/a/b", 10, "/a/b"),
        (b"/caf\xc3\xa9", 10, "/café"),
        (b"/\xff", 10, "/\ufffd"),
        ("/x\udcff", 10, "/x\ufffd\ufffd\ufffd"),
        ("/" + "a" * 50, 20, "/" + "a" * 7 + TRUNCATED),
        ("abcdef", 3, "…[t"),
    ],
)
def test_safe_text(raw: bytes | str | None, limit: int, expected: str) -> None:
    assert safe_text(raw, limit) == expected


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(st.none(), st.binary(max_size=500), st.text(max_size=500)), st.integers(0, 300))
def test_safe_text_property(raw: bytes | str | None, limit: int) -> None:
    out = safe_text(raw, limit)
    assert len(out) <= limit
    out.encode("utf-8")


# -- secrets that hide: short keys, ";" pairs, nested URLs ------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Short keys match whole words only: OAuth's code, one-time codes, pins, pw.
        ("code=abc&state=s", f"code={REDACTED}&state=s"),
        (
            "pw=1&user_pw=2&otp=3&PIN=4&pass=5",
            f"pw={REDACTED}&user_pw={REDACTED}&otp={REDACTED}&PIN={REDACTED}&pass={REDACTED}",
        ),
        (
            "postcode=SW1A&barcode=1&codec=h264&spin=2&compass=n",
            "postcode=SW1A&barcode=1&codec=h264&spin=2&compass=n",
        ),
        ("passphrase=x&passcode=y", f"passphrase={REDACTED}&passcode={REDACTED}"),
        # ";"-separated pairs.
        ("a=1;token=abc;b=2", f"a=1;token={REDACTED};b=2"),
        ("a=1&x=2;sig=abc", f"a=1&x=2;sig={REDACTED}"),
        ("token=abc;def&b=2", f"token={REDACTED}&b=2"),
        # A value that is itself a URL, plain or percent-encoded, with a token in it.
        (
            "next=https://a.example/cb?access_token=abc&x=1",
            f"next=https://a.example/cb?access_token={REDACTED}&x=1",
        ),
        (
            "next=https%3A%2F%2Fa.example%2Fcb%3Faccess_token%3Dabc%26v%3D1&x=1",
            f"next=https%3A%2F%2Fa.example%2Fcb%3Faccess_token%3D{REDACTED}%26v%3D1&x=1",
        ),
        (
            "r=https%3A%2F%2Fa%2F%3Fn%3Dhttps%253A%252F%252Fb%252F%253Fsig%253Dabc",
            "r=https%3A%2F%2Fa%2F%3Fn%3Dhttps%253A%252F%252Fb%252F%253Fsig%253DREDACTED",
        ),
        (
            "next=https%3A%2F%2Fa.example%2Fplain%3Fpage%3D2",
            "next=https%3A%2F%2Fa.example%2Fplain%3Fpage%3D2",
        ),
    ],
)
def test_hidden_secrets_in_query_examples(raw: str, expected: str) -> None:
    out = redact_query(raw)
    assert out == expected
    assert "abc" not in out
    assert redact_query(out) == out


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "referer",
            "https://a.example/cb?access_token=abc&x=1",
            f"https://a.example/cb?access_token={REDACTED}&x=1",
        ),
        (
            "x-original-url",
            "/login?next=%2Fhome&password=abc",
            f"/login?next=%2Fhome&password={REDACTED}",
        ),
        ("x-forwarded-uri", "/cb#id_token=abc&state=1", f"/cb#id_token={REDACTED}&state=1"),
        ("x-upstream", "Bearer abc.def", f"Bearer {REDACTED}"),
        ("x-upstream", "basic YWxhZGRpbjpvcGVuc2VzYW1l", f"basic {REDACTED}"),
        ("x-id", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc", REDACTED),
        (
            "user-agent",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)",
        ),
        ("accept", "text/html;q=0.9, */*;q=0.8", "text/html;q=0.9, */*;q=0.8"),
    ],
)
def test_hidden_secrets_in_header_values(name: str, value: str, expected: str) -> None:
    got = capture_headers([(name.encode(), value.encode())], frozenset({name}))
    assert got == {name: expected}


def test_redact_keys_extend_the_list() -> None:
    from flightdeck.asgi.redact import Redactor

    custom = Redactor(["tenant_ref", "cc"])
    assert custom.query("tenant_ref=1&cc=2&acc=3&x_cc=4") == (
        f"tenant_ref={REDACTED}&cc={REDACTED}&acc=3&x_cc={REDACTED}"
    )
    assert custom.query("my_tenant_ref_id=1") == f"my_tenant_ref_id={REDACTED}"
    assert custom.query("token=1") == f"token={REDACTED}"  # the defaults stay
    assert custom.headers([(b"x-tenant-ref", b"v")], frozenset({"x-tenant-ref"})) == {
        "x-tenant-ref": REDACTED
    }
    assert redact_query("tenant_ref=1") == "tenant_ref=1"  # the default list is unchanged
    for bad in ("", " ", "a b"):
        with pytest.raises(ValueError, match="redact_keys"):
            Redactor([bad])
    with pytest.raises(TypeError, match="redact_keys"):
        Redactor("token")  # type: ignore[arg-type]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([*REQUIRED_KEYS, "pw", "otp", "code", "access_token"]),
    st.lists(st.booleans(), min_size=30, max_size=30),
    st.sampled_from(["", "x_", "a=1&", "q=%20&"]),
)
def test_percent_encoded_keys_are_found(key: str, encode: list[bool], before: str) -> None:
    """Any character of a sensitive key may be percent-encoded (once or twice): still found."""
    chars = []
    for i, c in enumerate(key):
        if encode[i % 30]:
            c = f"%{ord(c):02X}"
            if encode[(i + 7) % 30]:
                c = c.replace("%", "%25")
        chars.append(c)
    raw = f"{before}{''.join(chars)}={SECRET}&z=1"
    assert SECRET not in redact_query(raw)


# -- credential-shaped values, whatever their key ---------------------------------------
SHAPED = {
    "base64url": "KBI2m1CVfGk1v_cu4IgAzBFH0Lwi151U",
    "base64": "56TAO2iKMeYF4+2VOHB4zXwXhLg6aGBE==",
    "hex40": "8b5ded7c801c43d6348a08cfe5c6729688fb1554",
    "hex64": "befc42e2e078b155eabfd75df593623d968a7a61614ed7491362557616ed0a1b",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "pem": "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-----END PRIVATE KEY-----",
    "github": "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "slack": "xoxb-2048-1024-T3sTt0k3nV4lu3",
    "stripe": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "saml": "PHNhbWxwOlJlc3BvbnNlIHhtbG5zOnNhbWxwPSJ1cm46b2FzaXM6bmFtZXM6dGM6U0FNTDoy",
}
#: Identifiers, words and names a credential rule must leave alone.
ORDINARY = [
    "550e8400-e29b-41d4-a716-446655440000",  # UUID
    "4bf92f3577b34da6a3ce929d0e0e4736",  # 32-hex trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # traceparent
    "order-550e8400-e29b-41d4-a716-446655440000",
    "the-quick-brown-fox-jumps-over-the-lazy-dog",
    "how-to-install-python-3-on-ubuntu-22-04-lts",
    "sk-learn-is-a-great-library-for-ml",
    "getUserProfile2024Version",
    "AbstractSingletonProxyFactoryBean",
    "MyVeryLongClassNameForTheFactoryBean",
    "report_2024_Q3_final_v2_Revised",
    "2026-12-03T20:51:04.123456Z",
    "main.4f3a2b1c.chunk.js",
    "12345678901234567890123",
    "a" * 100,  # a repeated character is no digest
    "0" * 64,
    "hello",
]


@pytest.mark.parametrize("name", sorted(SHAPED))
def test_credential_shaped_values_redacted_whatever_the_key(name: str) -> None:
    value = SHAPED[name]
    encoded = quote(value, safe="")
    assert redact_query(f"page=2&state={encoded}&q=shoes") == f"page=2&state={REDACTED}&q=shoes"
    assert redact_path(f"/reset/{encoded}/confirm") == f"/reset/{REDACTED}/confirm"
    headers = [(b"x-relay", f"v1 {value} end".encode())]
    assert capture_headers(headers, frozenset({"x-relay"})) == {"x-relay": f"v1 {REDACTED} end"}


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_values_are_kept(value: str) -> None:
    query = f"id={quote(value, safe='')}&page=2"
    assert redact_query(query) == query
    assert redact_path(f"/items/{value}/view") == f"/items/{value}/view"
    headers = [(b"x-request-id", value.encode())]
    assert capture_headers(headers, frozenset({"x-request-id"})) == {"x-request-id": value}


def test_random_tokens_are_caught_and_random_words_are_not() -> None:
    """The shape rule's rates: random base64url tokens of 32+ characters are caught all but
    rarely; dictionary-like slugs never."""
    import base64
    import random

    rng = random.Random(7)  # fixed: the same tokens every run
    tokens = [base64.urlsafe_b64encode(rng.randbytes(24)).decode() for _ in range(2000)]
    missed = sum(not looks_like_credential(token) for token in tokens)
    assert missed <= 20  # 32 characters: measured about 0.4 %
    words = ["alpha", "Bravo", "charlie", "Delta", "echo", "foxtrot", "golf", "2024", "v2"]
    slugs = ["-".join(rng.choice(words) for _ in range(8)) for _ in range(2000)]
    assert [s for s in slugs if looks_like_credential(s)] == []


def test_query_values_option() -> None:
    none = Redactor(query_values="none")
    assert none.query("a=1&b=&c&d=x") == f"a={REDACTED}&b=&c&d={REDACTED}"
    kept = Redactor(query_values=["page", "Q", "token"])
    assert kept.query("page=2&q=shoes&user=bob") == f"page=2&q=shoes&user={REDACTED}"
    # Kept keys are still redacted by key and by shape.
    assert kept.query(f"token=abc&page={SHAPED['github']}") == f"token={REDACTED}&page={REDACTED}"
    assert kept.query("page=2&next=%2Fx%3Fuser%3D1") == f"page=2&next={REDACTED}"
    assert none.query(none.query("a=1")) == none.query("a=1")  # idempotent
    for bad in ("some", None, b"all"):
        with pytest.raises(ValueError, match="query_values"):
            Redactor(query_values=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="query_values"):
        Redactor(query_values=[1])  # type: ignore[list-item]


def test_query_values_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, decks: list[Any]
) -> None:
    from support import make_deck

    monkeypatch.setenv("FLIGHTDECK_QUERY_VALUES", "page, q")
    deck = make_deck(lambda *a: None, decks)
    assert deck.redactor.query("page=1&q=x&r=y") == f"page=1&q=x&r={REDACTED}"
    monkeypatch.setenv("FLIGHTDECK_QUERY_VALUES", "none")
    assert make_deck(lambda *a: None, decks).redactor.query("a=1") == f"a={REDACTED}"
    explicit = make_deck(lambda *a: None, decks, query_values="all")  # the argument wins
    assert explicit.redactor.query("a=1") == "a=1"
    with pytest.raises(ValueError, match="query_values"):
        make_deck(lambda *a: None, decks, query_values="some")


@pytest.mark.parametrize("asgi_path", ["native", "python"])
def test_shaped_secrets_absent_from_snapshots_on_both_request_paths(
    asgi_path: str, decks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import serverapps
    from support import get_json, http_get, uvicorn_thread, wait_until

    from flightdeck import FlightDeck
    from flightdeck.asgi.accel import casgi

    if asgi_path == "native" and casgi is None:
        pytest.skip("the native request path is not built here")
    monkeypatch.setenv("FLIGHTDECK_NO_EXTENSIONS", "1" if asgi_path == "python" else "")
    deck = FlightDeck(
        serverapps.inner,
        endpoint="/debug/flight",
        slow_request=None,
        loop_blocked=None,
        capture_delay=0.0,
        capture_headers=["x-relay", "x-request-id"],
    )
    decks.append(deck)
    assert deck.asgi_path == asgi_path
    uuid = ORDINARY[0]
    secrets = [SHAPED["github"], SHAPED["saml"], SHAPED["hex64"], SHAPED["stripe"]]
    with uvicorn_thread(deck) as srv:
        assert http_get(f"{srv.url}/fast")[0] == 200  # the first request takes the pure path
        path = f"/hooks/{secrets[0]}/items/{uuid}"
        headers = {"X-Relay": f"sig={secrets[3]}", "X-Request-Id": uuid}
        http_get(f"{srv.url}{path}?SAMLResponse={secrets[1]}&mac={secrets[2]}&page=2", **headers)
        http_get(f"{srv.url}/items/{uuid}?page=3")  # nothing to redact: native where built
        assert http_get(f"{srv.url}/error")[0] == 500
        wait_until(lambda: get_json(srv.url + "/debug/flight/snapshots"), timeout=10)
        ident = get_json(srv.url + "/debug/flight/snapshots")[0]["id"]
        blob = http_get(f"{srv.url}/debug/flight/snapshots/{ident}")[2]
    for secret in secrets:
        assert secret.encode() not in blob, secret
    assert f"/hooks/REDACTED/items/{uuid}".encode() in blob
    assert b"SAMLResponse=REDACTED&mac=REDACTED&page=2" in blob
    assert b"sig=REDACTED" in blob and f"/items/{uuid}".encode() in blob
