"""Fixtures of the request-path tests."""

from __future__ import annotations

import pytest

from flightdeck.asgi import accel


@pytest.fixture(params=["native", "python"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: on the native request path (``_casgi.c``) and on the pure one.

    ``FLIGHTDECK_NO_EXTENSIONS`` is read when a ``FlightDeck`` is made, so the test makes its
    deck after asking for this. The native case is skipped only where the extension is not
    built: the pure-core run (``make pytest-pure``), or a machine without a compiler; ``make
    pytest`` sets ``FLIGHTDECK_EXPECT_NATIVE=1`` there, and a missing build fails instead
    (``tests/conftest.py``).
    """
    if request.param == "native" and accel.casgi is None:
        pytest.skip("the extension is not built (the pure-core run)")
    monkeypatch.setenv("FLIGHTDECK_NO_EXTENSIONS", "" if request.param == "native" else "1")
    return str(request.param)
