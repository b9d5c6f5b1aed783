"""flightdeck: a flight recorder for asyncio web services."""

from ._version import __version__
