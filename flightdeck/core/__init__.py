"""The recording core: the event table, the window, configuration helpers, the registry.

Imports nothing from the rest of flightdeck (enforced by ``make lint``).
"""
