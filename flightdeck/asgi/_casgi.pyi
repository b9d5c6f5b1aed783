"""FlightDeck's native request path (flightdeck/asgi/_casgi.c)."""

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

class Middleware:
    """The base class of ``FlightDeck`` when the extension is built."""

    _native_fast: bool
    _native_rid: int
    native_errors: int
    native_requests: int
    def __call__(self, scope: Any, receive: Any, send: Any) -> Any: ...
    def _native_setup(
        self,
        *,
        app: Any,
        recorder: Any,
        report: Callable[[str, BaseException], None],
        inflight: dict[int, tuple[Any, ...]],
        done: Callable[..., None],
        py_call: Callable[[Any, Any, Any], Any],
        start_event: Callable[[Any, str, int, int], tuple[Any, ...]],
        query: Callable[[bytes], str],
        trace_id: Callable[[object], str | None],
        current_task: Callable[[], Any],
        contextvar: ContextVar[int | None] | None,
        prefix: str | None,
        slow_floor_ns: int,
        status_floor: int,
        triggers: bool,
        precheck: bool,
        error_fires: bool,
        headers: bool,
        current_tasks: dict[Any, Any] | None = None,
        running_loop: Callable[[], Any] | None = None,
        error_stack: Callable[[BaseException], tuple[Any, ...]] | None = None,
        query_cache: dict[bytes, str] | None = None,
        cache_entries: int = 0,
        cache_bytes: int = 0,
    ) -> None: ...

class RequestState:
    status: Any
    ttfb: int
    body_end: int
    disconnected: bool
    fired: bool
    close_code: Any

def trace_id_of(value: bytes) -> str | None: ...
def clock() -> int: ...

class AsyncCall:
    """``FlightDeck.__call__``: a method descriptor that inspection sees as async."""

    def __get__(self, obj: object, owner: type | None = None) -> Any: ...
    def __call__(self, deck: Middleware, scope: Any, receive: Any, send: Any) -> Any: ...
