"""A request that ended in an exception says where it was raised, on both request paths.

A real uvicorn serves ``serverapps.app`` (its ``/error`` route raises); the snapshot the
exception triggers is downloaded from the endpoint: its request carries ``error_stack``,
the traceback's code locations innermost last (the route's own frame last, no flightdeck
frame, nothing of the exception's message or the frames' locals), and the summary names
the raising frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support import TESTS, ServerProcess, wait_until

from flightdeck.asgi import accel
from flightdeck.instrument.frames import MAX_STACK

APP = TESTS / "serverapps.py"
MESSAGE = "this route always fails"
#: A new connection per request: uvicorn closes the connection of a request whose app
#: raised, and a kept-alive one may be reused just as it does.
FRESH = httpx.Limits(max_keepalive_connections=0)


def _raise_line() -> int:
    """The line of ``/error``'s raise in ``serverapps.py``."""
    lines = APP.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if f'raise RuntimeError("{MESSAGE}")' in line)


@pytest.fixture(params=["native", "python"])
def asgi_path(request: pytest.FixtureRequest) -> str:
    if request.param == "native" and accel.casgi is None:
        # The pure-core run has no extension; `make pytest` fails a missing build instead.
        pytest.skip("the extension is not built (the pure-core run)")
    return str(request.param)


def _exception_snapshot(client: httpx.Client) -> str:
    def find() -> str | None:
        for item in client.get("/debug/flight/snapshots").json():
            req = item.get("request") or {}
            if item["trigger"]["kind"] == "exception" and req.get("path") == "/error":
                return str(item["id"])
        return None

    ident: str = wait_until(find, timeout=20, interval=0.05)
    return ident


def test_the_snapshot_of_a_request_that_raised_names_where(
    server: Callable[..., ServerProcess], asgi_path: str
) -> None:
    env = {"FLIGHTDECK_NO_EXTENSIONS": "1" if asgi_path == "python" else ""}
    srv = server(env=env, options={"capture_delay": 0.05, "slow_request": None})
    with httpx.Client(base_url=srv.url, timeout=20, limits=FRESH) as client:
        assert client.get("/debug/flight/status").json()["asgi"] == asgi_path
        assert client.get("/error").status_code == 500
        ident = _exception_snapshot(client)
        raw = client.get(f"/debug/flight/snapshots/{ident}?format=json")
        assert raw.status_code == 200
        doc: dict[str, Any] = raw.json()
        summary = client.get(f"/debug/flight/snapshots/{ident}?format=summary").text

    req = next(r for r in doc["requests"] if r["path"] == "/error")
    assert req["error"] == "RuntimeError"
    stack = req["error_stack"]
    assert stack, req
    assert stack[-1] == {"function": "error", "file": str(APP), "line": _raise_line()}
    assert len(stack) <= MAX_STACK
    assert all("/flightdeck/" not in f["file"] for f in stack), stack
    assert all(set(f) == {"function", "file", "line"} for f in stack)
    # Starlette's frames lead to the route's (the innermost last), as a traceback reads.
    assert any("starlette" in f["file"] for f in stack[:-1]), stack
    # Code locations only: the exception's message is nowhere in the snapshot.
    assert MESSAGE not in raw.text
    # The request that did not raise carries none.
    others = [r for r in doc["requests"] if r["path"] != "/error"]
    assert others and all(r["error_stack"] is None for r in others)
    assert f"raised RuntimeError at error (serverapps.py:{_raise_line()})" in summary, summary
