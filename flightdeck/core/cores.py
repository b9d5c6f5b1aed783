"""Which recording core runs: the native one when its extension is built, else pure Python.

``FLIGHTDECK_NO_EXTENSIONS`` set to a non-empty value other than ``0`` forces the pure
core (``setup.py`` honours it at build time too, as aio-libs packages do). Both cores take
the same event tuples and give the snapshot builder the same events; the snapshot format
never depends on the core.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Final

from .window import Encoder, Window, encode_events

#: The switch that forces pure Python everywhere (the core here, the request path in
#: ``asgi/accel.py``, the build in ``setup.py``).
NO_EXTENSIONS_ENV: Final = "FLIGHTDECK_NO_EXTENSIONS"


def extensions_disabled() -> bool:
    """``FLIGHTDECK_NO_EXTENSIONS`` is set to something other than empty or ``0``.

    Read from the environment at each call. ``setup.py`` keeps a copy of this rule, since
    the build must not import the package.
    """
    return os.environ.get(NO_EXTENSIONS_ENV, "") not in ("", "0")


NativeWindow: type[Window] | None = None
if not extensions_disabled():
    try:
        from .native import NativeWindow as _NativeWindow
    except ImportError:  # not built (no compiler, or a pure wheel)
        pass
    else:
        NativeWindow = _NativeWindow  # type: ignore[assignment]

#: ``"native"`` or ``"python"``: what ``rec.stats["core"]`` and ``process.core`` say.
CORE: Final = "native" if NativeWindow is not None else "python"


def native_module() -> ModuleType | None:
    """``core._native`` when the native core runs, else None."""
    if NativeWindow is None:
        return None
    from . import _native

    return _native


def make_window(window_ns: int, max_bytes: int, encode: Encoder = encode_events) -> Window:
    """A window of the selected core; ``encode`` makes the pure core's sealed segments."""
    if NativeWindow is not None:
        return NativeWindow(window_ns, max_bytes)
    return Window(window_ns, max_bytes, encode=encode)
