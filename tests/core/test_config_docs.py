"""The README agrees with the code: package name, options table, sample output's lines."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from flightdeck.asgi.config import DEFAULTS, ENV

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
EXAMPLE = ROOT / "examples" / "fastapi_app" / "app.py"


def test_the_install_lines_name_the_distribution() -> None:
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    # ``flightdeck`` on PyPI is another project: installing it would install that one.
    assert name == "flightdeck-asgi"
    installs = re.findall(r"pip install '([^']+)'", README)
    assert installs, "the README gives no install line"
    for spec in installs:
        assert spec.startswith((f"{name}[", f"{name} ", "/")), spec
    assert any(spec.startswith(f"{name}[redis] @ git+") for spec in installs)
    assert any(spec.startswith("/") for spec in installs)  # from a checkout


def _options_table() -> dict[str, str]:
    rows = re.findall(r"^\| `(\w+)` \|([^|]*)\|([^|]*)\|", README, re.MULTILINE)
    return {option: env.strip() for option, _default, env in rows}


def test_the_options_table_lists_every_option_and_its_variable() -> None:
    table = _options_table()
    assert set(table) == set(DEFAULTS)
    for option, (variable, _) in ENV.items():
        assert table[option].startswith(f"`{variable}`"), option
    for option, env in table.items():
        if option == "service":  # read when the app is known (``fleet.resolve_service``)
            assert env.startswith("`FLIGHTDECK_SERVICE`")
        elif option not in ENV:
            assert env == "", f"{option} has no environment variable, the table says {env}"


def _functions() -> dict[str, tuple[int, int]]:
    tree = ast.parse(EXAMPLE.read_text())
    return {
        node.name: (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def test_the_sample_output_points_at_the_example_lines() -> None:
    # ``awaiting X at F (app.py:N)``: line N awaits X in F; ``at F (app.py:N)`` otherwise: a
    # line of F's loop (where a CPU hog spends its time).
    lines = EXAMPLE.read_text().splitlines()
    functions = _functions()
    found = re.findall(r"(awaiting (\w+) )?at (\w+) \(app\.py:(\d+)\)", README)
    assert found, "the README's sample output cites no line of the example"
    loops = {
        node.lineno
        for node in ast.walk(ast.parse(EXAMPLE.read_text()))
        if isinstance(node, (ast.While, ast.For))
        for node in ast.walk(node)
        if hasattr(node, "lineno")
    }
    for _, awaited, function, number in found:
        line = int(number)
        first, last = functions[function]
        assert first < line <= last, f"app.py:{line} is not in {function}"
        text = lines[line - 1]
        if awaited:
            assert "await" in text and awaited in text, f"app.py:{line} is {text.strip()!r}"
        else:
            assert line in loops, f"app.py:{line} is {text.strip()!r}, not {function}'s loop"


def test_the_tour_fits_the_example_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The README's tour: /block, /error, the /slow it measures under the hog, and every
    # /incident/... route, each one snapshot, all within a minute or so.
    monkeypatch.delenv("FLIGHTDECK_RATE_LIMIT", raising=False)
    spec = importlib.util.spec_from_file_location("example_tour_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        incidents = [r.path for r in module.api.routes if r.path.startswith("/incident/")]
        for path in incidents:  # the tour names each
            assert path in README or f"`{path.removeprefix('/incident/')}`" in README, path
        tour = len(incidents) + 3
        config = module.app.config
        assert config.env_errors == []
        assert config.rate_count * 60 / config.rate_period >= tour + 5  # room to try again
        assert "FLIGHTDECK_RATE_LIMIT" not in os.environ  # importing it changes nothing
        monkeypatch.setenv("FLIGHTDECK_RATE_LIMIT", "6/60s")  # the environment still wins
        assert "rate_limit" not in _example_options(spec)
    finally:
        module.app.close()


def _example_options(spec: Any) -> dict[str, Any]:
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.app.close()
    return dict(module.demo)


def test_every_environment_variable_read_is_documented() -> None:
    read = {  # the names flightdeck passes as strings (not a C include guard it writes)
        name
        for source in (ROOT / "flightdeck").rglob("*.py")
        for name in re.findall(r"[\"'](FLIGHTDECK_[A-Z_]+)[\"']", source.read_text())
    }
    assert "FLIGHTDECK_LOOP_BLOCKED" in read
    # The converter's fault hook is for its own tests (flightdeck/convert.py), not an option.
    read.discard("FLIGHTDECK_CONVERT_FAULT")
    assert sorted(name for name in read if name not in README) == []


def test_the_options_table_gives_each_default_as_written_in_config() -> None:
    rows = re.findall(r"^\| `(\w+)` \| `([^`|]+)`( s)? \|", README, re.MULTILINE)
    assert len(rows) >= 15
    for option, literal, _ in rows:
        written = ast.literal_eval(literal)
        default = DEFAULTS[option]
        assert written == default or (written == () and default is None), option
