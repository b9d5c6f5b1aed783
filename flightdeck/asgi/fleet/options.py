"""Fleet options and the service name: parsed once, at construction, with clear errors."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ...core.config import env
from .signing import check_secrets

CAPTURE_MODES = ("trace", "all")
_NAMESPACE = re.compile(r"\A[A-Za-z0-9_.:-]{1,64}\Z")
# Frames of these packages (and the standard library's) are never "the module that
# constructed the FlightDeck".
_FRAMEWORK = frozenset(
    {"flightdeck", "starlette", "fastapi", "uvicorn", "gunicorn", "anyio", "uvloop", "httptools"}
    | {"h11", "websockets", "uvicorn_worker", "click", "hypercorn", "granian", "_pytest"}
)
_SERVICE_MAX = 128


@dataclass(frozen=True)
class FleetOptions:
    """A validated fleet configuration (see README, "A fleet")."""

    url: str
    password: str | None
    capture: str
    namespace: str
    ttl: float
    #: ``fleet_secret``: the first signs, every one verifies (never shown in a repr).
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def where(self) -> str:
        """host:port of the Redis URL, never its credentials (for logs and status)."""
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        return f"{host}:{parts.port or 6379}" if parts.scheme != "unix" else parts.path


def fleet_options(
    url: Any, capture: Any, namespace: Any, ttl: Any, secret: Any = None
) -> FleetOptions | None:
    """The fleet options, or None when no Redis URL is configured; raises naming the option.

    ``secret`` (``fleet_secret``) is required with a URL: what the fleet writes is signed.
    """
    if url is None:
        return None
    if not isinstance(url, str):
        raise TypeError(f"fleet must be a Redis URL (str) or None, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        raise ValueError("fleet must be a redis://, rediss:// or unix:// URL")
    if capture not in CAPTURE_MODES:
        raise ValueError(f"fleet_capture must be 'trace' or 'all', not {capture!r}")
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ValueError(
            "fleet_namespace must be 1-64 characters of letters, digits, '_', '.', ':', '-'"
        )
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"fleet_ttl must be a number of seconds, not {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl < 1:
        raise ValueError(f"fleet_ttl must be at least 1 second, not {ttl!r}")
    if secret is None or secret == "":
        raise ValueError(
            "fleet_secret (FLIGHTDECK_FLEET_SECRET) is required with fleet: the same secret on"
            " every process of the fleet, e.g. python -c 'import secrets;"
            " print(secrets.token_urlsafe(32))'"
        )
    secrets = check_secrets(secret)
    if importlib.util.find_spec("redis") is None:
        raise ImportError("fleet needs redis-py: pip install 'flightdeck-asgi[redis]'")
    # A password in the URL wins; the variable keeps it out of the URL (and of process lists).
    password = None if parts.password else env("FLIGHTDECK_FLEET_PASSWORD")
    return FleetOptions(url, password, capture, namespace, float(ttl), secrets)


def resolve_service(service: Any, app: Any) -> str:
    """``service``, else ``FLIGHTDECK_SERVICE``, else ``OTEL_SERVICE_NAME``, else derived.

    Derived: the module that constructed the ``FlightDeck`` (the first caller outside
    flightdeck and the frameworks), else the app's module, else the program's name.
    """
    if service is not None:
        if not isinstance(service, str) or not service.strip():
            raise ValueError("service must be a non-empty string or None")
        return _clip(service)
    for name in ("FLIGHTDECK_SERVICE", "OTEL_SERVICE_NAME"):
        value = env(name)
        if value:
            return _clip(value)
    frame = sys._getframe(1)
    owners: list[int] = []  # framework objects on the way, e.g. the app of add_middleware()
    while frame is not None:
        module = frame.f_globals.get("__name__")
        if isinstance(module, str):
            # A server's own __main__ (``uvicorn app:app``, ``python -m uvicorn``) is not it.
            module = _main_name(module, frame.f_globals.get("__file__"))
        if isinstance(module, str) and not _is_framework(module):
            return _clip(module)
        owner = frame.f_locals.get("self")
        if owner is not None:
            owners.append(id(owner))
        frame = frame.f_back  # type: ignore[assignment]
    found = _module_holding(owners)
    if found is not None:
        return _clip(found)
    module = getattr(app, "__module__", None) or type(app).__module__
    if isinstance(module, str) and not _is_framework(module) and module != "builtins":
        return _clip(module)
    return _clip(os.path.basename(sys.argv[0] or "") or "python")


def _module_holding(owners: list[int]) -> str | None:
    # Starlette's add_middleware() constructs the middleware from the server's first call,
    # with no user frame on the stack: name the module whose global is that app instead.
    if not owners:
        return None
    wanted = set(owners)
    for name, module in list(sys.modules.items()):
        if module is not None:  # a server's script holds its own objects (click's command)
            name = _main_name(name, getattr(module, "__file__", None))
        if module is None or _is_framework(name):
            continue
        try:
            values = list(vars(module).values())
        except TypeError:
            continue
        if any(id(value) in wanted for value in values):
            return name
    return None


def _is_framework(module: str) -> bool:
    top = module.split(".", 1)[0]
    return top in _FRAMEWORK or top in sys.stdlib_module_names


def _main_name(module: str, file: object) -> str:
    if module in ("__main__", "__mp_main__") and isinstance(file, str):
        name = os.path.splitext(os.path.basename(file))[0]
        if name == "__main__":  # python -m package: the package's name
            name = os.path.basename(os.path.dirname(file))
        return name or module
    return module


def _clip(value: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in value.strip())[:_SERVICE_MAX]
