"""``Config``: every ``FlightDeck`` option, its environment variable and its validation.

One place for the options (uvicorn's ``Config`` is the model): ``Config.from_env(**options)``
fills each option the caller did not give from its environment variable (``ENV`` below),
then ``Config(...)`` validates everything with the shared checks of ``core.config``, so an
option means the same to the recorder, the triggers, the store and the endpoint. An explicit
argument always wins over the environment.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..core.config import (
    DEFAULT_MAX_BYTES,
    DEFAULT_WINDOW,
    check_bool,
    check_endpoint,
    check_hosts,
    check_optional_seconds,
    check_positive_int,
    check_seconds,
    check_token,
    env,
    env_bytes,
    env_flag,
    env_list,
    env_seconds,
)
from .fleet.options import fleet_options
from .redact import DEFAULT as DEFAULT_REDACTOR
from .redact import Redactor, query_values_from_env
from .triggers import LoopBlocked, ServerError, SlowRequest, Trigger
from .views import DEFAULT_DEADLINE, DEFAULT_MEMORY

#: Global rate limit across all triggers: at most this many snapshots per period.
RATE_COUNT = 6
RATE_PERIOD = 60.0


def _endpoint_from_env(name: str) -> str | None:
    raw = env(name)
    if raw is None:
        return "/debug/flight"
    return None if raw.lower() in ("off", "none", "0") else raw


#: option -> (environment variable, parser of that variable). Options absent here have no
#: environment variable.
ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "window": (
        "FLIGHTDECK_WINDOW",
        lambda n: env_seconds(n, DEFAULT_WINDOW, can_disable=False),
    ),
    "max_bytes": ("FLIGHTDECK_MAX_BYTES", lambda n: env_bytes(n, DEFAULT_MAX_BYTES)),
    "slow_request": ("FLIGHTDECK_SLOW_REQUEST", lambda n: env_seconds(n, 1.0, can_disable=True)),
    "loop_blocked": ("FLIGHTDECK_LOOP_BLOCKED", lambda n: env_seconds(n, 0.1, can_disable=True)),
    "directory": ("FLIGHTDECK_DIR", env),
    "endpoint": ("FLIGHTDECK_ENDPOINT", _endpoint_from_env),
    "token": ("FLIGHTDECK_TOKEN", env),
    "enabled": ("FLIGHTDECK_ENABLED", lambda n: env_flag(n, True)),
    "allowed_hosts": ("FLIGHTDECK_ALLOWED_HOSTS", env_list),
    "fleet": ("FLIGHTDECK_FLEET", env),
    "fleet_secret": ("FLIGHTDECK_FLEET_SECRET", env),
    "query_values": ("FLIGHTDECK_QUERY_VALUES", query_values_from_env),
    "convert_deadline": (
        "FLIGHTDECK_CONVERT_DEADLINE",
        lambda n: env_seconds(n, DEFAULT_DEADLINE, can_disable=False),
    ),
    "convert_memory": ("FLIGHTDECK_CONVERT_MEMORY", lambda n: env_bytes(n, DEFAULT_MEMORY)),
}


#: Options for which an explicit ``None`` means "from the environment", not "disabled".
_NONE_IS_ENV = ("window", "max_bytes", "enabled")


class Config:
    """The validated options of one ``FlightDeck``; see the README's table for each."""

    def __init__(
        self,
        *,
        window: float = DEFAULT_WINDOW,
        max_bytes: int = DEFAULT_MAX_BYTES,
        slow_request: float | None = 1.0,
        server_errors: bool = True,
        loop_blocked: float | None = 0.1,
        triggers: Iterable[Trigger] | None = None,
        cooldown: float = 60.0,
        directory: str | os.PathLike[str] | None = None,
        max_snapshots: int = 20,
        endpoint: str | None = "/debug/flight",
        token: str | None = None,
        instrument_loop: bool = True,
        capture_headers: Iterable[str] = (),
        capture_delay: float = 0.25,
        slow_routes: Mapping[str, float | None] | None = None,
        rate_limit: tuple[int, float] = (RATE_COUNT, RATE_PERIOD),
        enabled: bool = True,
        allowed_hosts: Iterable[str] | None = None,
        redact_keys: Iterable[str] = (),
        query_values: str | Iterable[str] = "all",
        service: str | None = None,
        fleet: str | None = None,
        fleet_capture: str = "trace",
        fleet_namespace: str = "flightdeck",
        fleet_ttl: float = 24 * 3600.0,
        fleet_secret: str | list[str] | None = None,
        convert_deadline: float = DEFAULT_DEADLINE,
        convert_memory: int = DEFAULT_MEMORY,
    ) -> None:
        self.window = check_seconds("window", window)
        self.max_bytes = check_positive_int("max_bytes", max_bytes)
        self.slow_request = check_optional_seconds("slow_request", slow_request)
        self.server_errors = check_bool("server_errors", server_errors)
        self.loop_blocked = check_optional_seconds("loop_blocked", loop_blocked)
        self.cooldown = check_seconds("cooldown", cooldown)
        if self.cooldown < 0.001:  # the fleet's cooldown is kept in whole milliseconds
            raise ValueError(f"cooldown must be at least 0.001 seconds, not {cooldown!r}")
        self.directory = directory
        self.max_snapshots = check_positive_int("max_snapshots", max_snapshots)
        self.endpoint = check_endpoint(endpoint)
        self.token = check_token(token)
        self.allowed_hosts = check_hosts(allowed_hosts)
        custom = redact_keys or query_values != "all"
        self.redactor = Redactor(redact_keys, query_values) if custom else DEFAULT_REDACTOR
        self.instrument_loop = check_bool("instrument_loop", bool(instrument_loop))
        self.capture_headers = _check_header_names(capture_headers)
        if isinstance(capture_delay, bool) or not isinstance(capture_delay, (int, float)):
            raise TypeError("capture_delay must be a number of seconds")
        if not math.isfinite(capture_delay) or capture_delay < 0:
            raise ValueError("capture_delay must be zero or a positive number of seconds")
        self.capture_delay = float(capture_delay)
        if not (isinstance(rate_limit, tuple) and len(rate_limit) == 2):
            raise TypeError("rate_limit must be a (count, period_seconds) tuple")
        self.rate_count = check_positive_int("rate_limit count", rate_limit[0])
        self.rate_period = check_seconds("rate_limit period", rate_limit[1])
        self.enabled = bool(enabled)
        self.triggers = self._triggers(triggers, slow_routes)
        if service is not None and (not isinstance(service, str) or not service.strip()):
            raise ValueError("service must be a non-empty string or None")
        #: None: from FLIGHTDECK_SERVICE, OTEL_SERVICE_NAME or the app (``resolve_service``).
        self.service = service
        self.fleet = fleet_options(fleet, fleet_capture, fleet_namespace, fleet_ttl, fleet_secret)
        #: The endpoint's converter child: killed past this many seconds, its address
        #: space capped at this many bytes.
        self.convert_deadline = check_seconds("convert_deadline", convert_deadline)
        self.convert_memory = check_positive_int("convert_memory", convert_memory)

    @classmethod
    def from_env(cls, **options: Any) -> Config:
        """The options given, the rest from their environment variables, else the defaults.

        For ``window`` and ``max_bytes`` an explicit ``None`` also means "from the
        environment" (the recorder's convention); for the triggers ``None`` disables them.
        """
        for option, (variable, parse) in ENV.items():
            if option not in options or (options[option] is None and option in _NONE_IS_ENV):
                options[option] = parse(variable)
        return cls(**options)

    def _triggers(
        self, triggers: Iterable[Trigger] | None, slow_routes: Mapping[str, float | None] | None
    ) -> list[Trigger]:
        if triggers is None:
            built: list[Trigger] = []
            if self.slow_request is not None:
                built.append(SlowRequest(self.slow_request, slow_routes))
            if self.server_errors:
                built.append(ServerError())
            if self.loop_blocked is not None:
                built.append(LoopBlocked(self.loop_blocked))
            return built
        if isinstance(triggers, Trigger):
            raise TypeError("triggers must be a list of Trigger objects")
        built = list(triggers)
        for trig in built:
            if not isinstance(trig, Trigger):
                raise TypeError(f"triggers must be Trigger objects, not {type(trig).__name__}")
        return built


def _check_header_names(names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, (str, bytes)):
        raise TypeError("capture_headers must be a list of header names, not a string")
    lowered = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError("capture_headers must contain header names (str)")
        lowered.append(name.lower())
    return frozenset(lowered)
