"""``Config``: a bad environment value is reported and ignored, a bad argument raises."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from support import ServerProcess, free_port, get_json, http_get, wait_until

from flightdeck import FlightDeck
from flightdeck.asgi.config import DEFAULTS, ENV, Config
from flightdeck.core import config as core_config

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


@pytest.fixture(autouse=True)
def _fresh_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each bad value is logged once per process; every test starts with none reported.
    monkeypatch.setattr(core_config, "_reported", set())
    for variable, _ in ENV.values():
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize(
    ("variable", "value", "option", "accepts"),
    [
        ("FLIGHTDECK_LOOP_BLOCKED", "banana", "loop_blocked", "100ms, 1s, 2m"),
        ("FLIGHTDECK_SLOW_REQUEST", "x", "slow_request", "or off to disable"),
        ("FLIGHTDECK_WINDOW", "ten", "window", "100ms, 1s, 2m"),
        ("FLIGHTDECK_MAX_BYTES", "lots", "max_bytes", "16M"),
        ("FLIGHTDECK_ENABLED", "flase", "enabled", "0, false, no, off"),
        ("FLIGHTDECK_ENDPOINT", "debug", "endpoint", "/debug/flight"),
        ("FLIGHTDECK_ALLOWED_HOSTS", "*", "allowed_hosts", "token"),
        ("FLIGHTDECK_FLEET", "http://redis", "fleet", "redis://"),
    ],
)
def test_a_bad_environment_value_keeps_the_default_and_is_reported(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    value: str,
    option: str,
    accepts: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.ERROR, logger="flightdeck"):
        config = Config.from_env()
    (error,) = config.env_errors
    assert error.startswith(f"{variable}={value!r} ignored: ") and accepts in error
    assert f"using the default ({DEFAULTS[option]!r})" in error
    assert [r.getMessage() for r in caplog.records] == [f"flightdeck: {error}"]
    reference = Config()
    attribute = {"allowed_hosts": "allowed_hosts"}.get(option, option)
    assert getattr(config, attribute) == getattr(reference, attribute)


def test_a_bad_argument_still_raises_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"^loop_blocked: 'banana' is not a duration"):
        FlightDeck(Starlette(), loop_blocked="banana")
    monkeypatch.setenv("FLIGHTDECK_LOOP_BLOCKED", "banana")  # the argument wins anyway
    with pytest.raises(ValueError, match=r"^slow_request must be a positive"):
        Config.from_env(slow_request=-1)


def test_units_from_the_environment_and_in_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTDECK_LOOP_BLOCKED", "100ms")
    monkeypatch.setenv("FLIGHTDECK_SLOW_REQUEST", "2s")
    monkeypatch.setenv("FLIGHTDECK_WINDOW", "1m")
    config = Config.from_env(capture_delay="50ms", cooldown="2m")
    assert config.loop_blocked == pytest.approx(0.1)
    assert (config.slow_request, config.window, config.cooldown) == (2.0, 60.0, 120.0)
    assert config.capture_delay == pytest.approx(0.05)
    assert config.env_errors == []


def test_milliseconds_written_as_seconds_are_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flightdeck"):
        Config(loop_blocked=100)
        monkeypatch.setenv("FLIGHTDECK_SLOW_REQUEST", "500")
        Config.from_env()
    messages = [r.getMessage() for r in caplog.records]
    assert any("loop_blocked=100 means 100 seconds" in m and "'100ms'" in m for m in messages)
    assert any("slow_request=500 means 500 seconds" in m for m in messages)


def test_a_bad_token_in_the_environment_turns_the_endpoint_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The token was meant to guard the endpoint: without it the endpoint stays shut, rather
    # than open to every loopback client (a same-host proxy's too).
    monkeypatch.setenv("FLIGHTDECK_TOKEN", "has space")
    config = Config.from_env(endpoint="/debug/flight")
    assert config.token is None and config.endpoint is None
    (error,) = config.env_errors
    assert "FLIGHTDECK_TOKEN" in error and "the endpoint is off" in error
    assert "has space" not in error  # a secret is never logged, even a bad one
    assert error.startswith("FLIGHTDECK_TOKEN='<9 characters, not shown>' ignored")


def test_a_shared_directory_is_refused_with_a_private_subdirectory_suggested(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    with pytest.raises(ValueError, match="private subdirectory such as") as raised:
        FlightDeck(Starlette(), directory=str(shared))
    assert "chmod" not in str(raised.value)
    monkeypatch.setenv("FLIGHTDECK_DIR", str(shared))
    deck = FlightDeck(Starlette())
    try:
        assert deck.store.directory is None  # in memory, as without a directory
        (error,) = deck.status()["config_errors"]
        assert error.startswith(f"FLIGHTDECK_DIR={str(shared)!r} ignored") and "private" in error
    finally:
        deck.close()


def test_a_bad_slow_routes_value_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"^slow_routes\['/report'\] must be a positive"):
        Config(slow_routes={"/report": -1})
    with pytest.raises(ValueError, match=r"^slow_routes\['/report'\]: 'soon'"):
        Config(slow_routes={"/report": "soon"})
    with pytest.raises(TypeError, match=r"^slow_routes must be a dict"):
        Config(slow_routes=["/report"])  # type: ignore[arg-type]
    assert Config(slow_routes={"/export": "30s", "/healthz": None}).triggers[0].routes == {
        "/export": 30.0,
        "/healthz": None,
    }


def test_each_default_is_written_once() -> None:
    # The recorder, the triggers and the middleware take theirs from the same constants.
    from flightdeck.asgi.triggers import LoopBlocked, SlowRequest
    from flightdeck.snapshot.recorder import FlightRecorder

    assert LoopBlocked().threshold == DEFAULTS["loop_blocked"] == Config().loop_blocked
    assert SlowRequest().threshold == DEFAULTS["slow_request"] == Config().slow_request
    rec = FlightRecorder()
    assert (rec.loop_blocked, rec.window) == (DEFAULTS["loop_blocked"], DEFAULTS["window"])


@pytest.mark.parametrize(("value", "errors"), [("100ms", 0), ("banana", 1)])
def test_a_real_server_with_the_variable_serves(
    server: Callable[..., ServerProcess], value: str, errors: int
) -> None:
    # The README's ``app.add_middleware(FlightDeck)``: Starlette builds the middleware at the
    # first request, where an exception would answer 500 to every request.
    srv = server("added", env={"FLIGHTDECK_LOOP_BLOCKED": value})
    assert http_get(srv.url + "/fast")[0] == 200
    status = get_json(srv.url + "/debug/flight/status")
    assert len(status["config_errors"]) == errors
    assert status["service"] == "serverapps"  # the module holding the app, not the server's
    page = http_get(srv.url + "/debug/flight")[2].decode()
    assert ("FLIGHTDECK_LOOP_BLOCKED=&#x27;banana&#x27; ignored" in page) == bool(errors)
    if errors:
        (error,) = status["config_errors"]
        assert error.startswith("FLIGHTDECK_LOOP_BLOCKED='banana' ignored")
        assert "100ms, 1s, 2m" in error

        def logged() -> Any:
            log = srv.log()
            return "FLIGHTDECK_LOOP_BLOCKED='banana' ignored" in log and log

        assert wait_until(logged).count("FLIGHTDECK_LOOP_BLOCKED='banana'") == 1
    # Recording is on with a 100 ms loop_blocked either way: a 300 ms block is captured.
    assert http_get(srv.url + "/block?ms=300")[0] == 200

    def captured() -> Any:
        return get_json(srv.url + "/debug/flight/status")["triggers"]["fired"]

    assert wait_until(captured).get("loop_blocked") == 1


def test_the_rate_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTDECK_RATE_LIMIT", "30/1m")
    config = Config.from_env()
    assert (config.rate_count, config.rate_period) == (30, 60.0)
    monkeypatch.setenv("FLIGHTDECK_RATE_LIMIT", "lots")
    config = Config.from_env()
    assert (config.rate_count, config.rate_period) == (6, 60.0)
    (error,) = config.env_errors
    assert "FLIGHTDECK_RATE_LIMIT='lots' ignored" in error and "6/60s" in error


def test_the_service_name_under_the_uvicorn_command(tmp_path: Path) -> None:
    # ``uvicorn module:app`` runs uvicorn's own script as __main__ (and multiprocessing's
    # __mp_main__), which holds uvicorn's objects: the name is the module holding the app.
    script = Path(sys.executable).parent / "uvicorn"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    for variable, _ in ENV.values():
        env.pop(variable, None)
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [str(script), "serverapps:added", "--port", str(port), "--log-level", "warning"],
            cwd=TESTS,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return http_get(url + "/fast", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(up, timeout=30, interval=0.1)
        assert get_json(url + "/debug/flight/status")["service"] == "serverapps"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_a_fleet_from_the_environment_without_a_usable_secret_is_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FLIGHTDECK_FLEET", "redis://:hunter2hunter2@127.0.0.1:1/0")
    with caplog.at_level(logging.ERROR, logger="flightdeck"):
        config = Config.from_env()
    assert config.fleet is None
    (error,) = config.env_errors
    assert error.startswith("FLIGHTDECK_FLEET='redis://***@127.0.0.1:1/0' ignored")
    assert "fleet_secret" in error and "the fleet is off" in error
    monkeypatch.setenv("FLIGHTDECK_FLEET_SECRET", "short,secret-value")
    config = Config.from_env()
    assert config.fleet is None
    secret_error, fleet_error = config.env_errors
    assert secret_error.startswith("FLIGHTDECK_FLEET_SECRET='<18 characters, not shown>'")
    assert fleet_error.startswith("FLIGHTDECK_FLEET=")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "hunter2" not in logged and "secret-value" not in logged
    monkeypatch.setenv("FLIGHTDECK_FLEET_SECRET", "a-fleet-secret-of-32-characters!")
    config = Config.from_env()
    assert config.env_errors == [] and config.fleet is not None
    with pytest.raises(ValueError, match="fleet_secret"):  # an argument still raises
        Config.from_env(fleet="redis://127.0.0.1:1/0", fleet_secret=None)
