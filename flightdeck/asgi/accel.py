"""Which request path ``FlightDeck`` takes: the native one (``_casgi``) or pure Python.

As for the native core: ``FLIGHTDECK_NO_EXTENSIONS`` set to a non-empty value other than
``0`` forces pure Python (read at import and again when a ``FlightDeck`` is made, so tests
can run both paths in one process); a missing or broken extension means pure Python.
"""

from __future__ import annotations

from types import ModuleType

from ..core.cores import extensions_disabled

casgi: ModuleType | None
try:
    from . import _casgi as casgi
except ImportError:  # not built (no compiler, a pure wheel): the pure path
    casgi = None


if extensions_disabled():
    casgi = None


def native_asgi() -> bool:
    """Whether a ``FlightDeck`` made now takes the native request path."""
    return casgi is not None and not extensions_disabled()
