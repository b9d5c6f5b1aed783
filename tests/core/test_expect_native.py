"""FLIGHTDECK_EXPECT_NATIVE (tests/conftest.py): a run that expects the native core refuses
to go on without it, instead of skipping the native tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import ROOT


def test_a_native_run_without_the_native_core_fails() -> None:
    env = dict(os.environ, FLIGHTDECK_EXPECT_NATIVE="1", FLIGHTDECK_NO_EXTENSIONS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/native"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "FLIGHTDECK_EXPECT_NATIVE is set" in done.stdout + done.stderr
