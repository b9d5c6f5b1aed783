"""Shared fixtures: real servers on free loopback ports, recorders stopped after each test.

The helpers they use (and that tests import) live in ``support.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, TESTS, ServerProcess, free_port, http_get, wait_until

# -- FLIGHTDECK_EXPECT_NATIVE -------------------------------------------------------------
# The native runs (Makefile: pytest) set it: a native test skipped there because the
# extension did not build would otherwise pass the run silently, on the pure core only.
#: What the native-only skips say (tests/native, tests/asgi/test_casgi.py).
_NATIVE_SKIPS = ("not built", "native core is disabled")


def _expect_native() -> bool:
    return os.environ.get("FLIGHTDECK_EXPECT_NATIVE", "") not in ("", "0")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _expect_native():
        return
    from flightdeck.asgi import accel
    from flightdeck.core.cores import CORE

    if CORE != "native" or accel.casgi is None:
        pytest.exit(
            f"FLIGHTDECK_EXPECT_NATIVE is set but the core is {CORE!r} and the native request"
            f" path is {'missing' if accel.casgi is None else 'built'} (extension not built,"
            " or FLIGHTDECK_NO_EXTENSIONS set)",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def _fail_native_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (_expect_native() and report.skipped):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
    if any(marker in reason for marker in _NATIVE_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"FLIGHTDECK_EXPECT_NATIVE is set, but skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_native_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_native_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """Run a coroutine to completion on a fresh loop of the parametrised kind."""
    import uvloop

    if request.param == "uvloop":
        return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run


@pytest.fixture
def decks() -> Iterator[list[Any]]:
    """FlightDeck objects made by a test; their recorders are stopped afterwards."""
    opened: list[Any] = []
    yield opened
    for deck in opened:
        deck.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``serverapps`` under uvicorn (default) or gunicorn in a subprocess.

    ``server(app="app", workers=1, kind="uvicorn", env={...}, options={...}, args=[...])``;
    ``options`` is passed to ``FlightDeck`` as JSON. Every server is stopped at teardown.
    """
    started: list[ServerProcess] = []

    def start(
        app: str = "app",
        *,
        kind: str = "uvicorn",
        workers: int = 1,
        env: dict[str, str] | None = None,
        options: dict[str, Any] | None = None,
        args: list[str] | None = None,
        ready_path: str = "/fast",
    ) -> ServerProcess:
        port = free_port()
        bindir = Path(sys.executable).parent
        if kind == "uvicorn":
            cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(TESTS)]
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            if workers > 1:
                cmd += ["--workers", str(workers)]
            cmd += [f"serverapps:{app}"]
        elif kind == "gunicorn":
            cmd = [str(bindir / "gunicorn"), "--chdir", str(TESTS), "-b", f"127.0.0.1:{port}"]
            cmd += ["-w", str(workers), "-k", "uvicorn_worker.UvicornWorker"]
            cmd += ["--log-level", "warning", "--graceful-timeout", "5"]
            cmd += [f"serverapps:{app}"]
        else:
            raise ValueError(kind)
        cmd += args or []
        full_env = dict(os.environ)
        full_env.pop("FLIGHTDECK_DIR", None)
        full_env.pop("FLIGHTDECK_TOKEN", None)
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
        full_env["FD_TEST_OPTIONS"] = json.dumps(options or {})
        full_env.update(env or {})
        log_path = tmp_path / f"server-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        srv = ServerProcess(f"http://127.0.0.1:{port}", port, proc, log_path)
        started.append(srv)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{srv.log()}")
            try:
                return http_get(srv.url + ready_path, timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=30, interval=0.1)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A real redis-server on a free loopback port (persistence off), stopped afterwards."""
    import shutil

    from support import RedisServer

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
