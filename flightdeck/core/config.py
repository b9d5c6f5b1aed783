"""Option validation and environment parsing, shared by every layer.

One parser per kind of value (durations, sizes, flags, lists, rates), so a value means the
same in code, in the environment and on the command line: a duration is seconds or carries a
unit (``100ms``, ``2m``); a threshold that can be disabled (a trigger) takes ``0``, ``off``
or ``none``. A bad argument raises naming the option; a bad environment value is logged once
and its option keeps its default (:func:`env_value`), so a typo cannot stop the app.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger("flightdeck")

T = TypeVar("T")

#: Defaults of the options more than one layer reads (``asgi.config.Config`` writes the rest).
DEFAULT_WINDOW = 10.0
DEFAULT_MAX_BYTES = 16 << 20
DEFAULT_LOOP_BLOCKED = 0.1
DEFAULT_SLOW_REQUEST = 1.0

_DISABLED = ("0", "off", "none")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

#: What a duration may be written as, for error messages.
SECONDS_ACCEPTED = "seconds (0.1) or a number with a unit (500us, 100ms, 1s, 2m, 1h)"
BYTES_ACCEPTED = "bytes (16777216) or a number with a unit (512k, 16M, 16MiB, 1G)"
_SECOND_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-zµ]*)", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def env(name: str) -> str | None:
    """The stripped value of an environment variable, or None when unset or blank."""
    value = os.environ.get(name)
    return None if value is None or value.strip() == "" else value.strip()


# -- one parser per kind of value ------------------------------------------------------------
# Each takes the text (from the environment or a string argument) and returns the value, or
# raises ValueError saying what it accepts; the caller names the option or variable.


def parse_seconds(text: str) -> float:
    """A positive, finite duration: ``0.1``, ``100ms``, ``1s``, ``2m``, ``1h``, ``500us``."""
    match = _DURATION.fullmatch(text.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in _SECOND_UNITS):
        raise ValueError(f"{text!r} is not a duration: give {SECONDS_ACCEPTED}")
    value = float(match.group(1)) * _SECOND_UNITS.get(unit, 1.0)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} must be a positive duration: give {SECONDS_ACCEPTED}")
    return value


def parse_optional_seconds(text: str) -> float | None:
    """Like :func:`parse_seconds`; ``0``, ``off`` and ``none`` give None (disabled)."""
    if text.strip().lower() in _DISABLED:
        return None
    try:
        return parse_seconds(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration: give {SECONDS_ACCEPTED}, or off to disable"
        ) from None


def parse_bytes(text: str) -> int:
    """A positive size: ``16777216``, ``16M``, ``16MiB``, ``512k``, ``1G``."""
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = _BYTE_UNITS.get(raw[-1:], 1) if raw[-1:].isalpha() else 1
    if raw[-1:].isalpha():
        if raw[-1:] not in _BYTE_UNITS:
            raise ValueError(f"{text!r} is not a size: give {BYTES_ACCEPTED}")
        raw = raw[:-1]
    try:
        value = int(raw) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a size: give {BYTES_ACCEPTED}") from None
    if value <= 0:
        raise ValueError(f"{text!r} must be a positive size: give {BYTES_ACCEPTED}")
    return value


def parse_flag(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a flag: give 1, true, yes, on or 0, false, no, off")


def parse_rate(text: str) -> tuple[int, float]:
    """A rate limit, ``COUNT/PERIOD``: ``6/60s``, ``30/1m``, ``10/30`` (period in seconds)."""
    count, slash, period = text.partition("/")
    try:
        if not slash:
            raise ValueError
        value = int(count.strip())
        seconds = parse_seconds(period)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a rate: give COUNT/PERIOD, e.g. 6/60s or 30/1m"
        ) from None
    if value <= 0:
        raise ValueError(f"{text!r} must allow at least one: give COUNT/PERIOD, e.g. 6/60s")
    return value, seconds


#: What ``capture_scope`` may be: this process's window, or every process's sharing the
#: snapshot directory.
CAPTURE_SCOPES = ("process", "host")


def parse_scope(text: str) -> str:
    """A capture scope (``process`` or ``host``), any case."""
    value = text.strip().lower()
    if value not in CAPTURE_SCOPES:
        raise ValueError(f"not one of {', '.join(CAPTURE_SCOPES)}")
    return value


def parse_list(text: str) -> list[str]:
    """A comma-separated list (blank items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


# -- the environment ---------------------------------------------------------------------------

_reported: set[tuple[str, str]] = set()


def report_env_error(name: str, raw: str, error: Exception | str, default: object) -> str:
    """Log a bad environment value once per process (an error: it names the variable, the
    value and what it accepts) and return that message for ``/debug/flight/status``.

    A bad value in the environment never takes the app down: its option keeps ``default``.
    """
    why = str(error)
    message = f"{name}={raw!r} ignored: {why}; using the default ({default!r})"
    if (name, raw) not in _reported:
        _reported.add((name, raw))
        logger.error("flightdeck: %s", message)
    return message


def env_value(name: str, parse: Callable[[str], T], default: T) -> T:
    """``name`` parsed by ``parse``; ``default`` when unset, blank or invalid (logged once)."""
    raw = env(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        report_env_error(name, raw, exc, default)
        return default


def env_seconds(name: str, default: float | None, *, can_disable: bool) -> float | None:
    """Seconds from the environment (see :func:`env_value`)."""
    return env_value(name, parse_optional_seconds if can_disable else parse_seconds, default)


def env_bytes(name: str, default: int) -> int:
    """Bytes from the environment (see :func:`env_value`)."""
    return env_value(name, parse_bytes, default)


def env_flag(name: str, default: bool) -> bool:
    """A boolean from the environment (see :func:`env_value`)."""
    return env_value(name, parse_flag, default)


def env_list(name: str) -> list[str] | None:
    """A comma-separated list from the environment, or None when unset."""
    raw = env(name)
    return None if raw is None else parse_list(raw)


# -- arguments in code -------------------------------------------------------------------------


def check_seconds(
    name: str, value: object, *, zero: bool = False, ms_hint: float | None = None
) -> float:
    """A positive, finite duration option (``zero``: 0 allowed too); the message names it.

    A number is seconds; a string may carry a unit (``"100ms"``). ``ms_hint``: a bare number
    at least this large is logged as a warning, as it looks like milliseconds meant as seconds.
    """
    if isinstance(value, str):
        if zero and value.strip() in ("0", "0s"):
            return 0.0
        try:
            seconds = parse_seconds(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if value.strip()[-1:].isalpha():
            return seconds  # a unit was written: nothing to guess
        value = seconds
    if value is None:
        raise TypeError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds or a string like '100ms',"
            f" not {type(value).__name__}"
        )
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        least = "zero or a positive" if zero else "a positive"
        raise ValueError(f"{name} must be {least} number of seconds, not {value!r}")
    if ms_hint is not None and value >= ms_hint:
        logger.warning(
            "flightdeck: %s=%g means %g seconds; if milliseconds were meant, write '%gms'",
            name,
            value,
            value,
            value,
        )
    return float(value)


def check_optional_seconds(
    name: str, value: object, *, ms_hint: float | None = None
) -> float | None:
    """Like :func:`check_seconds`, where None means "disabled"."""
    return None if value is None else check_seconds(name, value, ms_hint=ms_hint)


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return value


def check_bytes(name: str, value: object) -> int:
    """A positive size option: an int of bytes or a string like ``"16M"``."""
    if isinstance(value, str):
        try:
            return parse_bytes(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return check_positive_int(name, value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def check_scope(name: str, value: object) -> str:
    """A capture scope: ``"process"`` or ``"host"``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be 'process' or 'host', not {type(value).__name__}")
    try:
        return parse_scope(value)
    except ValueError:
        raise ValueError(f"{name} must be 'process' or 'host', not {value!r}") from None


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
