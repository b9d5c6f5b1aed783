"""``requests[].error_stack``: where a request's exception was raised, alike on both paths.

Each test makes its ``FlightDeck`` on the native request path (``_casgi.c``) and on the pure
one (``FLIGHTDECK_NO_EXTENSIONS=1`` when the deck is made), as tests/asgi/test_casgi.py
does, and reads the request back from a snapshot of the recorder.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import http_scope

from flightdeck import FlightDeck
from flightdeck.asgi import middleware as middleware_module
from flightdeck.instrument.frames import MAX_STACK

pytestmark = pytest.mark.anyio

HERE = __file__


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def make(app: Any, decks: list[Any], path: str) -> FlightDeck:
    # No triggers: a capture of their own would race the test's snapshot.
    deck = FlightDeck(app, endpoint=None, slow_request=None, server_errors=False)
    decks.append(deck)
    deck._start()  # recording started, as the first request or the lifespan would
    assert deck.asgi_path == path
    return deck


async def _receive() -> Any:
    return {"type": "http.request", "body": b""}


async def _ignore(message: Any) -> None:
    return None


def request_at(deck: FlightDeck, where: str) -> dict[str, Any]:
    doc = deck.recorder.snapshot().to_dict()
    return next(r for r in doc["requests"] if r["path"] == where)


class Declined(Exception):
    pass


def charge(amount: int) -> None:
    if amount > 0:
        raise Declined("card 4242 4242 4242 4242 declined")  # a secret, in the message


async def checkout(scope: Any, receive: Any, send: Any) -> None:
    secret_local = "hunter2"  # a local of the raising frames: never recorded
    await asyncio.sleep(0)
    charge(len(secret_local))


def _line_of(text: str) -> int:
    with open(HERE) as f:
        return next(i for i, line in enumerate(f, 1) if text in line and "_line_of" not in line)


LINES = {
    "checkout": _line_of("charge(len(secret_local))"),
    "charge": _line_of('raise Declined("card'),
}


async def test_the_frames_of_the_raise_innermost_last(path: str, decks: list[Any]) -> None:
    deck = await make(checkout, decks, path)
    with pytest.raises(Declined):
        await deck(http_scope("/checkout"), _receive, _ignore)
    req = request_at(deck, "/checkout")
    assert req["error"] == "Declined"
    assert req["error_stack"] == [
        {"function": "checkout", "file": HERE, "line": LINES["checkout"]},
        {"function": "charge", "file": HERE, "line": LINES["charge"]},
    ]  # flightdeck's own frame (the middleware the exception passed through) left out
    text = repr(deck.recorder.snapshot().to_dict())
    assert "hunter2" not in text and "4242 4242" not in text


async def test_a_request_that_did_not_raise_has_none(path: str, decks: list[Any]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    deck = await make(app, decks, path)
    await deck(http_scope("/fail"), _receive, _ignore)
    req = request_at(deck, "/fail")
    assert (req["status"], req["error"], req["error_stack"]) == (500, None, None)


def deep(n: int) -> None:
    if n == 0:
        raise RecursionError("deep enough")
    deep(n - 1)


async def test_a_deep_traceback_keeps_its_innermost_frames(path: str, decks: list[Any]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        deep(200)

    deck = await make(app, decks, path)
    with pytest.raises(RecursionError):
        await deck(http_scope("/deep"), _receive, _ignore)
    stack = request_at(deck, "/deep")["error_stack"]
    assert len(stack) == MAX_STACK
    assert all(f["function"] == "deep" for f in stack)
    assert stack[-1]["line"] == _line_of('raise RecursionError("deep enough")')


async def test_a_failure_taking_the_frames_is_counted_and_the_app_unharmed(
    path: str, decks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(exc: BaseException) -> tuple[Any, ...]:
        raise MemoryError("no frames today")

    monkeypatch.setattr(middleware_module, "error_stack", broken)
    deck = await make(checkout, decks, path)
    with pytest.raises(Declined) as info:
        await deck(http_scope("/checkout"), _receive, _ignore)
    assert info.value.__traceback__ is not None  # the app's exception, as it was raised
    req = request_at(deck, "/checkout")
    assert (req["status"], req["error"], req["error_stack"]) == (500, "Declined", None)
    assert deck.status()["errors"].get("request_error") == 1
