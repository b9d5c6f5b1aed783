"""Headless Chromium for the browser tests (``tests/export/test_html.py``, the login page).

Developers without Debian's chromium may skip the browser tests; CI (CI=true, where
.ci/run installs chromium) never does, so a missing browser there is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NO_BROWSER = not Path(CHROMIUM).exists() and not os.environ.get("CI")
browser_only = pytest.mark.skipif(
    NO_BROWSER, reason=f"{CHROMIUM} is not installed (apt install chromium)"
)
