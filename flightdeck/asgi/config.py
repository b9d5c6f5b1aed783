"""``Config``: every ``FlightDeck`` option, its environment variable and its validation.

One place for the options (uvicorn's ``Config`` is the model): ``Config.from_env(**options)``
fills each option the caller did not give from its environment variable (``ENV`` below),
then ``Config(...)`` validates everything with the shared checks of ``core.config``, so an
option means the same to the recorder, the triggers, the store and the endpoint. An explicit
argument always wins over the environment. Each default is written once, in ``Config``'s
signature (``DEFAULTS``); those other layers also use come from ``core.config``.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..core.config import (
    DEFAULT_LOOP_BLOCKED,
    DEFAULT_MAX_BYTES,
    DEFAULT_SLOW_REQUEST,
    DEFAULT_WINDOW,
    check_bool,
    check_bytes,
    check_endpoint,
    check_hosts,
    check_optional_seconds,
    check_positive_int,
    check_scope,
    check_seconds,
    check_token,
    env,
    parse_bytes,
    parse_flag,
    parse_list,
    parse_optional_seconds,
    parse_rate,
    parse_scope,
    parse_seconds,
    report_env_error,
)
from ..snapshot.directory import check_directory
from ..snapshot.store import DEFAULT_MAX_STORE_BYTES
from .fleet.options import fleet_options
from .fleet.signing import check_secrets
from .redact import DEFAULT as DEFAULT_REDACTOR
from .redact import Redactor
from .triggers import LoopBlocked, ServerError, SlowRequest, Trigger
from .views import DEFAULT_DEADLINE, DEFAULT_MEMORY

#: A bare number at least this large is warned about as milliseconds written as seconds.
_MS_HINT = {"loop_blocked": 10.0, "slow_request": 100.0, "capture_delay": 10.0}


def _duration(can_disable: bool) -> Callable[[str], str | None]:
    # The text itself goes on to Config (None when disabled): its unit, or the lack of one,
    # decides the milliseconds warning there, in one place for code and environment.
    def parse(raw: str) -> str | None:
        value = parse_optional_seconds(raw) if can_disable else parse_seconds(raw)
        return None if value is None else raw

    return parse


def _endpoint(raw: str) -> str | None:
    return check_endpoint(None if raw.lower() in ("off", "none", "0") else raw)


def _directory(raw: str) -> str:
    check_directory(os.path.abspath(raw))
    return raw


def _hosts(raw: str) -> list[str]:
    return list(check_hosts(parse_list(raw)))


def _fleet(raw: str) -> str:
    # The URL's form here; with its secret and the other options in from_env.
    if urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("not a redis://, rediss:// or unix:// URL")
    return raw


def _fleet_secret(raw: str) -> str:
    check_secrets(raw)
    return raw


def _shown(variable: str, raw: str) -> str:
    """What a log may show of a variable's value: never a secret, nor a URL's password."""
    if variable in _SECRET_ENV:
        return f"<{len(raw)} characters, not shown>"
    return re.sub(r"://[^@/]*@", "://***@", raw)


def _query_values(raw: str) -> str | list[str]:
    return raw.lower() if raw.lower() in ("all", "none") else parse_list(raw)


#: option -> (environment variable, parser of that variable's text: the option's value, or
#: ``ValueError``/``TypeError`` saying what it accepts). Options absent here have none.
ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "window": ("FLIGHTDECK_WINDOW", _duration(False)),
    "max_bytes": ("FLIGHTDECK_MAX_BYTES", parse_bytes),
    "slow_request": ("FLIGHTDECK_SLOW_REQUEST", _duration(True)),
    "loop_blocked": ("FLIGHTDECK_LOOP_BLOCKED", _duration(True)),
    "directory": ("FLIGHTDECK_DIR", _directory),
    "capture_scope": ("FLIGHTDECK_CAPTURE_SCOPE", parse_scope),
    "max_store_bytes": ("FLIGHTDECK_MAX_STORE_BYTES", parse_bytes),
    "endpoint": ("FLIGHTDECK_ENDPOINT", _endpoint),
    "token": ("FLIGHTDECK_TOKEN", check_token),
    "enabled": ("FLIGHTDECK_ENABLED", parse_flag),
    "allowed_hosts": ("FLIGHTDECK_ALLOWED_HOSTS", _hosts),
    "fleet": ("FLIGHTDECK_FLEET", _fleet),
    "fleet_secret": ("FLIGHTDECK_FLEET_SECRET", _fleet_secret),
    "rate_limit": ("FLIGHTDECK_RATE_LIMIT", parse_rate),
    "query_values": ("FLIGHTDECK_QUERY_VALUES", _query_values),
    "convert_deadline": ("FLIGHTDECK_CONVERT_DEADLINE", parse_seconds),
    "convert_memory": ("FLIGHTDECK_CONVERT_MEMORY", parse_bytes),
}

_FLEET = ("fleet", "fleet_capture", "fleet_namespace", "fleet_ttl", "fleet_secret")

#: Variables whose values are never logged or shown.
_SECRET_ENV = frozenset({"FLIGHTDECK_TOKEN", "FLIGHTDECK_FLEET_SECRET"})

#: Options for which an explicit ``None`` means "from the environment", not "disabled".
_NONE_IS_ENV = ("window", "max_bytes", "max_store_bytes", "enabled")

#: A bad value of these variables changes other options too, to fail closed: a token that
#: was meant to guard the endpoint and cannot turns the endpoint off.
_ON_ENV_ERROR: dict[str, tuple[dict[str, Any], str]] = {
    "token": ({"endpoint": None}, "the endpoint is off until it is fixed"),
}


class Config:
    """The validated options of one ``FlightDeck``; see the README's table for each."""

    def __init__(
        self,
        *,
        window: float | str = DEFAULT_WINDOW,
        max_bytes: int | str = DEFAULT_MAX_BYTES,
        slow_request: float | str | None = DEFAULT_SLOW_REQUEST,
        server_errors: bool = True,
        loop_blocked: float | str | None = DEFAULT_LOOP_BLOCKED,
        triggers: Iterable[Trigger] | None = None,
        cooldown: float | str = 60.0,
        directory: str | os.PathLike[str] | None = None,
        max_snapshots: int = 20,
        max_store_bytes: int | str = DEFAULT_MAX_STORE_BYTES,
        endpoint: str | None = "/debug/flight",
        token: str | None = None,
        instrument_loop: bool = True,
        capture_headers: Iterable[str] = (),
        capture_delay: float | str = 0.25,
        capture_scope: str = "process",
        slow_routes: Mapping[str, float | str | None] | None = None,
        rate_limit: tuple[int, float | str] = (6, 60.0),
        enabled: bool = True,
        allowed_hosts: Iterable[str] | None = None,
        redact_keys: Iterable[str] = (),
        query_values: str | Iterable[str] = "all",
        service: str | None = None,
        fleet: str | None = None,
        fleet_capture: str = "trace",
        fleet_namespace: str = "flightdeck",
        fleet_ttl: float | str = 24 * 3600.0,
        fleet_secret: str | list[str] | None = None,
        convert_deadline: float | str = DEFAULT_DEADLINE,
        convert_memory: int | str = DEFAULT_MEMORY,
    ) -> None:
        self.window = check_seconds("window", window)
        self.max_bytes = check_bytes("max_bytes", max_bytes)
        hint = _MS_HINT.get
        self.slow_request = check_optional_seconds(
            "slow_request", slow_request, ms_hint=hint("slow_request")
        )
        self.server_errors = check_bool("server_errors", server_errors)
        self.loop_blocked = check_optional_seconds(
            "loop_blocked", loop_blocked, ms_hint=hint("loop_blocked")
        )
        self.cooldown = check_seconds("cooldown", cooldown)
        if self.cooldown < 0.001:  # the fleet's cooldown is kept in whole milliseconds
            raise ValueError(f"cooldown must be at least 0.001 seconds, not {cooldown!r}")
        self.directory = directory
        self.max_snapshots = check_positive_int("max_snapshots", max_snapshots)
        #: The store's bound in stored bytes (in memory, or in ``directory``).
        self.max_store_bytes = check_bytes("max_store_bytes", max_store_bytes)
        self.endpoint = check_endpoint(endpoint)
        self.token = check_token(token)
        self.allowed_hosts = check_hosts(allowed_hosts)
        custom = redact_keys or query_values != "all"
        self.redactor = Redactor(redact_keys, query_values) if custom else DEFAULT_REDACTOR
        self.instrument_loop = check_bool("instrument_loop", bool(instrument_loop))
        self.capture_headers = _check_header_names(capture_headers)
        self.capture_delay = check_seconds(
            "capture_delay", capture_delay, zero=True, ms_hint=hint("capture_delay")
        )
        #: What a triggered capture takes: this process's window, or (``"host"``) every
        #: live process's sharing ``directory`` (``snapshot/host.py``).
        self.capture_scope = check_scope("capture_scope", capture_scope)
        if self.capture_scope == "host" and directory is None:
            raise ValueError(
                "capture_scope='host' needs a snapshot directory (directory= or"
                " FLIGHTDECK_DIR) shared by the processes to capture"
            )
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
        self.fleet = fleet_options(
            fleet,
            fleet_capture,
            fleet_namespace,
            check_seconds("fleet_ttl", fleet_ttl),
            fleet_secret,
        )
        #: Environment values that were refused (each logged once): the option kept its
        #: default. Shown as ``config_errors`` in ``/debug/flight/status``.
        self.env_errors: list[str] = []
        #: The endpoint's converter child: killed past this many seconds, its address
        #: space capped at this many bytes.
        self.convert_deadline = check_seconds("convert_deadline", convert_deadline)
        self.convert_memory = check_bytes("convert_memory", convert_memory)

    @classmethod
    def from_env(cls, **options: Any) -> Config:
        """The options given, the rest from their environment variables, else the defaults.

        For ``window``, ``max_bytes`` and ``enabled`` an explicit ``None`` also means "from
        the environment" (the recorder's convention); for the triggers ``None`` disables
        them. A bad argument raises; a bad environment value never does: it is logged once
        (naming the variable, the value and what it accepts), listed in ``env_errors``, and
        its option keeps its default, so a typo in a deployment cannot stop the app.
        """
        given = {o for o, v in options.items() if not (v is None and o in _NONE_IS_ENV)}
        errors: list[str] = []
        overrides: dict[str, Any] = {}
        for option, (variable, parse) in ENV.items():
            if option in given:
                continue
            options.pop(option, None)
            raw = env(variable)
            if raw is None:
                continue
            try:
                options[option] = parse(raw)
            except (ValueError, TypeError, ImportError) as exc:
                extra, consequence = _ON_ENV_ERROR.get(option, ({}, ""))
                why = f"{exc}; {consequence}" if consequence else str(exc)
                shown = _shown(variable, raw)
                errors.append(report_env_error(variable, shown, why, DEFAULTS[option]))
                overrides.update(extra)
        options.update(overrides)
        if (
            "capture_scope" not in given
            and options.get("capture_scope") == "host"
            and options.get("directory") is None
        ):
            variable = ENV["capture_scope"][0]
            why = "a host capture needs a snapshot directory (FLIGHTDECK_DIR or directory=)"
            errors.append(report_env_error(variable, "host", why, DEFAULTS["capture_scope"]))
            options.pop("capture_scope")
        from_env = [o for o in ("fleet", "fleet_secret") if o not in given and o in options]
        if from_env and options.get("fleet") is not None:
            # The fleet needs its URL and its secret together: without a usable pair from
            # the environment, the process runs without a fleet.
            fleet = {o: options.get(o, DEFAULTS[o]) for o in _FLEET}
            try:
                fleet["fleet_ttl"] = check_seconds("fleet_ttl", fleet["fleet_ttl"])
                fleet_options(*fleet.values())
            except (ValueError, TypeError, ImportError) as exc:
                variable = ENV[from_env[0]][0]
                shown = _shown(variable, env(variable) or "")
                why = f"{exc}; the fleet is off until it is fixed"
                errors.append(report_env_error(variable, shown, why, DEFAULTS[from_env[0]]))
                options["fleet"] = None
        config = cls(**options)
        config.env_errors = errors
        return config

    def _triggers(
        self,
        triggers: Iterable[Trigger] | None,
        slow_routes: Mapping[str, float | str | None] | None,
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


#: Every option's default, as written in ``Config``'s signature (the one place for it).
DEFAULTS: dict[str, Any] = {
    name: p.default
    for name, p in inspect.signature(Config.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def _check_header_names(names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, (str, bytes)):
        raise TypeError("capture_headers must be a list of header names, not a string")
    lowered = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError("capture_headers must contain header names (str)")
        lowered.append(name.lower())
    return frozenset(lowered)
