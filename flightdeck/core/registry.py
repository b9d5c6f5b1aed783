"""The recorders that are started: where ``region()``, ``log()`` and anyio's hook record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Emitter(Protocol):
    emit: Callable[[tuple[Any, ...]], None]


#: Started recorders, in start order. Mutated only by ``start()``/``stop()``.
active: list[Emitter] = []
