"""The extensions switch: one rule, read by the core, the request path and the build."""

from __future__ import annotations

import ast
from collections.abc import Callable

import pytest
from support import ROOT

from flightdeck.asgi import accel
from flightdeck.core import cores

VALUES = ["", "0", "1", "yes", "true", "00", " ", "false"]


def _setup_rule() -> Callable[[], bool]:
    """``setup.py``'s copy of the rule, taken from its source (importing it would build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_no_extensions"]
    namespace: dict[str, object] = {}
    exec(compile("import os\n" + ast.unparse(fn), "setup.py", "exec"), namespace)
    rule = namespace["_no_extensions"]
    assert callable(rule)
    return rule  # type: ignore[return-value]


@pytest.mark.parametrize("value", [*VALUES, None])
def test_setup_py_and_the_package_make_the_same_decision(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(cores.NO_EXTENSIONS_ENV, raising=False)
    else:
        monkeypatch.setenv(cores.NO_EXTENSIONS_ENV, value)
    expected = value not in (None, "", "0")
    assert cores.extensions_disabled() is expected
    assert _setup_rule()() is expected


def test_the_request_path_reads_the_cores_rule() -> None:
    assert accel.extensions_disabled is cores.extensions_disabled
