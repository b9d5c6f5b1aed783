"""Option validation and environment parsing, shared by every layer.

One parser per kind of value, so an environment variable means the same everywhere: for a
threshold that can be disabled (a trigger), ``0``, ``off`` and ``none`` disable it; for a
bound that cannot (``window``, ``max_bytes``), zero or a negative value is an error naming
the variable.
"""

from __future__ import annotations

import math
import os

DEFAULT_WINDOW = 10.0
DEFAULT_MAX_BYTES = 16 << 20

_DISABLED = ("0", "off", "none")


def env(name: str) -> str | None:
    """The stripped value of an environment variable, or None when unset or blank."""
    value = os.environ.get(name)
    return None if value is None or value.strip() == "" else value.strip()


def env_seconds(name: str, default: float | None, *, can_disable: bool) -> float | None:
    """Seconds from the environment.

    ``can_disable``: ``0``/``off``/``none`` give None (a trigger turned off); otherwise the
    value must be a positive number and anything else raises ``ValueError`` naming ``name``.
    """
    raw = env(name)
    if raw is None:
        return default
    if can_disable and raw.lower() in _DISABLED:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def env_bytes(name: str, default: int) -> int:
    """Bytes from the environment: ``16777216``, ``16M``, ``16MiB``, ``512k``; must be > 0."""
    raw = env(name)
    if raw is None:
        return default
    text = raw.lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    if scale != 1:
        text = text[:-1]
    try:
        value = int(text) * scale
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not a number of bytes (e.g. 16777216 or 16M)"
        ) from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be a positive number of bytes")
    return value


def env_flag(name: str, default: bool) -> bool:
    """A boolean from the environment: ``0``, ``false``, ``no``, ``off`` are false."""
    raw = env(name)
    if raw is None:
        return default
    return raw.lower() not in ("0", "false", "no", "off")


def check_seconds(name: str, value: object) -> float:
    """A positive, finite duration option; the message names the option."""
    if value is None:
        raise TypeError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def check_optional_seconds(name: str, value: object) -> float | None:
    """Like :func:`check_seconds`, where None means "disabled"."""
    return None if value is None else check_seconds(name, value)


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def env_list(name: str) -> list[str] | None:
    """A comma-separated list from the environment (blank items dropped), or None when unset."""
    raw = env(name)
    if raw is None:
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]


def check_endpoint(value: object) -> str | None:
    """The endpoint prefix: None (disabled) or a path like ``/debug/flight``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"endpoint must be a path string or None, not {type(value).__name__}")
    if not value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError(f"endpoint must be a path like '/debug/flight', not {value!r}")
    if any(c.isspace() or c in "?#%" for c in value):
        raise ValueError(f"endpoint must be a plain path like '/debug/flight', not {value!r}")
    return value


def check_token(value: object) -> str | None:
    """The endpoint's bearer token: None or a non-empty string without whitespace."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"token must be a str or None, not {type(value).__name__}")
    if not value or any(c.isspace() for c in value) or not value.isprintable():
        raise ValueError("token must be a non-empty string without whitespace")
    return value


def check_hosts(value: object) -> tuple[str, ...]:
    """``allowed_hosts``: host names or addresses (no port, no scheme), lower-cased."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        raise TypeError("allowed_hosts must be a list of host names, not a string")
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError("allowed_hosts must be a list of host names") from None
    hosts = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"allowed_hosts must contain str, not {type(item).__name__}")
        host = item.strip().lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if host == "*":
            raise ValueError("allowed_hosts: '*' would allow any Host; set a token instead")
        if not host or any(c.isspace() or c in "/@?#*" for c in host) or host.count(":") == 1:
            raise ValueError(
                f"allowed_hosts: {item!r} is not a host name or address (no scheme, no port)"
            )
        hosts.append(host)
    return tuple(hosts)
