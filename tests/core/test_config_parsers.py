"""The shared parsers: one per kind of value, for the environment and for arguments alike."""

from __future__ import annotations

import logging

import pytest

from flightdeck.core import config
from flightdeck.core.config import (
    check_bytes,
    check_optional_seconds,
    check_seconds,
    env_seconds,
    env_value,
    parse_bytes,
    parse_flag,
    parse_optional_seconds,
    parse_seconds,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0.1", 0.1),
        ("2", 2.0),
        ("100ms", 0.1),
        ("100 ms", 0.1),
        ("1s", 1.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("500us", 0.0005),
        ("1.5S", 1.5),
        ("1e-3", 0.001),
    ],
)
def test_durations_take_a_unit_or_mean_seconds(text: str, seconds: float) -> None:
    assert parse_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["banana", "10 parsecs", "ms", "-1s", "0", "inf", "nan", ""])
def test_a_bad_duration_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"100ms, 1s, 2m"):
        parse_seconds(text)


def test_a_duration_that_can_be_disabled() -> None:
    assert parse_optional_seconds("off") is None
    assert parse_optional_seconds("0") is None
    assert parse_optional_seconds("NONE") is None
    assert parse_optional_seconds("250ms") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="off to disable"):
        parse_optional_seconds("never")


def test_sizes_and_flags() -> None:
    assert parse_bytes("16M") == parse_bytes("16MiB") == 16 << 20
    assert parse_bytes("512k") == 512 << 10
    assert parse_bytes("1000") == 1000
    for bad in ("lots", "12q", "0", "-5"):
        with pytest.raises(ValueError, match="16M"):
            parse_bytes(bad)
    assert parse_flag("yes") is True and parse_flag("OFF") is False
    with pytest.raises(ValueError, match="true"):
        parse_flag("flase")


def test_arguments_accept_units_and_name_the_option() -> None:
    assert check_seconds("window", "2m") == 120.0
    assert check_seconds("capture_delay", 0, zero=True) == 0.0
    assert check_optional_seconds("loop_blocked", "100ms") == pytest.approx(0.1)
    assert check_bytes("max_bytes", "8MiB") == 8 << 20
    with pytest.raises(ValueError, match=r"^loop_blocked: 'banana' is not a duration"):
        check_seconds("loop_blocked", "banana")
    with pytest.raises(TypeError, match="loop_blocked must be a number of seconds"):
        check_seconds("loop_blocked", [1])
    with pytest.raises(ValueError, match="max_bytes: 'lots'"):
        check_bytes("max_bytes", "lots")


def test_a_bare_number_that_looks_like_milliseconds_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="flightdeck"):
        assert check_seconds("loop_blocked", 100, ms_hint=10.0) == 100.0
        assert check_seconds("loop_blocked", "100", ms_hint=10.0) == 100.0
    warnings = [r.getMessage() for r in caplog.records]
    assert (
        warnings
        == [
            "flightdeck: loop_blocked=100 means 100 seconds; if milliseconds were meant,"
            " write '100ms'"
        ]
        * 2
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flightdeck"):
        check_seconds("loop_blocked", "100s", ms_hint=10.0)  # a unit was written: meant
        check_seconds("loop_blocked", 0.1, ms_hint=10.0)
    assert caplog.records == []


def test_a_bad_environment_value_is_logged_once_and_keeps_the_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(config, "_reported", set())
    monkeypatch.setenv("FLIGHTDECK_TEST_SECONDS", "soonish")
    with caplog.at_level(logging.ERROR, logger="flightdeck"):
        assert env_seconds("FLIGHTDECK_TEST_SECONDS", 0.5, can_disable=True) == 0.5
        assert env_seconds("FLIGHTDECK_TEST_SECONDS", 0.5, can_disable=True) == 0.5
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert "FLIGHTDECK_TEST_SECONDS='soonish' ignored" in message
    assert "100ms, 1s, 2m" in message and "using the default (0.5)" in message
    monkeypatch.setenv("FLIGHTDECK_TEST_SECONDS", "250ms")
    assert env_value("FLIGHTDECK_TEST_SECONDS", parse_seconds, 1.0) == pytest.approx(0.25)
    monkeypatch.delenv("FLIGHTDECK_TEST_SECONDS")
    assert env_value("FLIGHTDECK_TEST_SECONDS", parse_seconds, 1.0) == 1.0
