"""A shorter GIL switch interval while a snapshot builds, so a busy loop cannot starve it.

A thread waiting for the GIL asks its holder to drop it only after waiting one switch
interval (5 ms by default) without a switch. The event loop's thread drops the GIL around
every ``epoll`` and takes it straight back: each drop wakes the waiting thread, which
usually loses the race and starts a fresh wait. When the loop is saturated (its
iterations shorter than the interval) the builder waits out almost every wait and gets
the GIL about 1 % of the time (benchmarks/README.md, "Capture starvation"). With an interval
shorter than one loop iteration its waits time out, and it gets its turns.

The interval is process-wide: it is lowered only while at least one build runs (builds of
several recorders share one lowering), and set back exactly when the last one ends, unless
someone else changed it in between (theirs then stands).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

#: The switch interval while a build runs. 0.5 ms: shorter than one iteration of a saturated
#: loop (200 tasks looping on ``sleep(0.001)``); 0.2 and 1 ms measured no better
#: (benchmarks/README.md, "Capture starvation").
BUILD_SWITCH_INTERVAL = 0.0005

_lock = threading.Lock()
_active = 0
_saved: float | None = None  # the interval before the first build, when we lowered it
_ours: float | None = None  # what getswitchinterval() said right after we lowered it


def _set_exactly(interval: float) -> None:
    # The interval is kept in whole microseconds and truncated: n / 1e6 can come back as
    # n - 1 microseconds; half a microsecond more truncates to n.
    sys.setswitchinterval(interval)
    if sys.getswitchinterval() != interval:
        sys.setswitchinterval(interval + 5e-7)


def _enter(interval: float) -> None:
    global _active, _saved, _ours
    with _lock:
        if _active == 0:
            current = sys.getswitchinterval()
            if current > interval:
                sys.setswitchinterval(interval)
                _saved, _ours = current, sys.getswitchinterval()
        _active += 1


def _exit() -> None:
    global _active, _saved, _ours
    with _lock:
        _active -= 1
        if _active == 0 and _saved is not None:
            if sys.getswitchinterval() == _ours:
                _set_exactly(_saved)
            _saved = _ours = None


@contextlib.contextmanager
def prompt_switching(interval: float = BUILD_SWITCH_INTERVAL) -> Iterator[None]:
    """Run the block with the switch interval at most ``interval`` (restored after)."""
    _enter(interval)
    try:
        yield
    finally:
        _exit()


def active() -> int:
    """How many blocks are inside :func:`prompt_switching` now."""
    return _active


def _after_fork_in_child() -> None:
    # Only the forking thread survives: no build runs in the child, whatever the count said.
    global _lock, _active, _saved, _ours
    _lock = threading.Lock()
    if _saved is not None and sys.getswitchinterval() == _ours:
        _set_exactly(_saved)
    _active = 0
    _saved = _ours = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
