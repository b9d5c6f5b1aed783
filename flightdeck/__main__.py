"""``python -m flightdeck``: the same as the ``flightdeck`` command."""

from .cli import main

raise SystemExit(main(exit_when_done=True))
