"""The example app's routes, served with flightdeck's captures unthrottled (for the tests
that read real snapshots of each ``/incident/...`` route).

The example itself keeps the defaults (a 10 s cooldown per route and the rate limit); here
every route's snapshot is wanted in one run, so neither applies.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "fastapi_app"))

from app import api

from flightdeck import FlightDeck

app = FlightDeck(api, cooldown=0.001, rate_limit=(1000, 60.0), max_snapshots=100)
