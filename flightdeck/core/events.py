"""The event table: every event kind and its layout, declared once.

An event is a flat tuple ``(kind, field, field, ...)`` whose fields follow ``SPECS[kind]``.
Emitters build plain tuples on the hot path (``marshal`` refuses namedtuples, and a
tuple is the cheapest thing to build); readers take field positions from this table
(``TASK_STEP_END`` and friends, generated below) instead of bare integers. Times are
``perf_counter_ns`` values; the snapshot builder turns them into Unix epoch seconds. Task
ids are the raw ``id()`` of the task: CPython reuses addresses, so the builder tells them
apart by the order of ``TASK_CREATE`` events.

Field types (``Field.type``), which ``check_event`` verifies and a binary encoder follows:

``time``
    a ``perf_counter_ns`` value (int > 0)
``time0``
    a ``perf_counter_ns`` value, or 0 when unknown
``int`` / ``int?``
    an int (``?``: or None)
``str`` / ``str?``
    a str (``?``: or None)
``bool``
    a bool
``stack``
    a tuple of ``(function, file, line)`` tuples, innermost last
``frame?``
    one ``(function, file, line)`` tuple, or None
``client``
    ``(host, port)`` or None
``pairs?``
    a tuple of ``(name, value)`` str pairs, or None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Spec:
    """One event kind: its number, its name and the fields after the kind."""

    kind: int
    name: str
    fields: tuple[Field, ...]
    doc: str = ""

    def index(self, field: str) -> int:
        """Position of ``field`` in the event tuple (the kind is at 0)."""
        for i, f in enumerate(self.fields):
            if f.name == field:
                return i + 1
        raise KeyError(f"{self.name} has no field {field!r}")


def _spec(kind: int, name: str, doc: str, *fields: tuple[str, str] | tuple[str, str, str]) -> Spec:
    return Spec(kind, name, tuple(Field(*f) for f in fields), doc)


TASK_CREATE: Final = 1
TASK_STEP: Final = 2
TASK_DONE: Final = 3
TASK_WAIT: Final = 4
LOOP_BLOCK: Final = 5
LOOP_CALLBACK: Final = 6
LOOP_LAG: Final = 7
REQ_START: Final = 8
REQ_END: Final = 9
REGION: Final = 10
LOG: Final = 11
EXECUTOR: Final = 12
# 13 and 14 were REQ_ROUTE and REQ_TTFB, never emitted; their numbers stay unused.
MARK: Final = 15
GC: Final = 16
TASK_CANCEL: Final = 17
TASK_SLOW_STEP: Final = 18

SPECS: Final[dict[int, Spec]] = {
    s.kind: s
    for s in (
        _spec(
            TASK_CREATE,
            "task_create",
            "a task was created",
            ("t", "time"),
            ("tid", "int"),
            ("name", "str"),
            ("coro", "str", "the coroutine's qualified name"),
            ("parent", "int?", "the task that created it"),
            ("request", "int?", "the request it belongs to (its context's)"),
            ("site", "frame?", "where create_task was called"),
        ),
        _spec(
            TASK_STEP,
            "task_step",
            "one step of a task ran on the loop",
            ("t_start", "time"),
            ("t_end", "time"),
            ("tid", "int"),
            ("t_queued", "time0", "when the step (or its wakeup) was scheduled"),
        ),
        _spec(
            TASK_DONE,
            "task_done",
            "a task finished",
            ("t", "time"),
            ("tid", "int"),
            ("state", "str", '"done", "cancelled" or "error"'),
            ("error", "str?", "the exception's type"),
            ("name", "str", "the task's name when it finished"),
        ),
        _spec(
            TASK_WAIT,
            "task_wait",
            "a suspension longer than the wait threshold",
            ("t_start", "time"),
            ("t_end", "time"),
            ("tid", "int"),
            ("stack", "stack", "the await chain it was suspended at"),
        ),
        _spec(
            LOOP_BLOCK,
            "loop_block",
            "the loop was blocked; the stack was taken while it was",
            ("t_start", "time"),
            ("t_end", "time"),
            ("callback", "str?"),
            ("stack", "stack"),
        ),
        _spec(
            LOOP_CALLBACK,
            "loop_callback",
            "a slow callback that is not a task step",
            ("t_start", "time"),
            ("t_end", "time"),
            ("name", "str"),
        ),
        _spec(LOOP_LAG, "loop_lag", "scheduling lag", ("t", "time"), ("lag", "int")),
        _spec(
            REQ_START,
            "request_start",
            "a request (HTTP or WebSocket) started",
            ("t", "time"),
            ("rid", "int"),
            ("scope_type", "str", '"http" or "websocket"'),
            ("method", "str"),
            ("path", "str"),
            ("query", "str", "redacted"),
            ("client", "client"),
            ("headers", "pairs?", "the captured, redacted headers"),
            ("tid", "int?", "the task running the request"),
            ("trace_id", "str?", "from a valid W3C traceparent header"),
        ),
        _spec(
            REQ_END,
            "request_end",
            "a request ended",
            ("t", "time"),
            ("rid", "int"),
            ("status", "int?"),
            ("t_ttfb", "time0", "http.response.start was sent"),
            ("route", "str?", "the route template"),
            ("disconnected", "bool"),
            ("error", "str?", "the exception's type"),
            ("t_body_end", "time0", "the last body byte was sent"),
            ("close_code", "int?", "WebSocket close code (sent or received), else None"),
        ),
        _spec(
            REGION,
            "region",
            "a user region",
            ("t_start", "time"),
            ("t_end", "time"),
            ("name", "str"),
            ("tid", "int?"),
        ),
        _spec(
            LOG,
            "log",
            "a user log line",
            ("t", "time"),
            ("category", "str"),
            ("message", "str"),
            ("tid", "int?"),
        ),
        _spec(
            EXECUTOR,
            "executor",
            "a thread-pool job",
            ("t_queued", "time"),
            ("t_start", "time"),
            ("t_end", "time"),
            ("func", "str"),
            ("thread", "str"),
            ("tid", "int?"),
            ("request", "int?"),
            ("error", "str?"),
        ),
        _spec(
            MARK,
            "mark",
            "a trigger fired",
            ("t", "time"),
            ("kind", "str"),
            ("reason", "str"),
        ),
        _spec(
            GC,
            "gc",
            "a garbage collection that took at least the GC threshold (1 ms)",
            ("t_start", "time"),
            ("t_end", "time"),
            ("generation", "int"),
            ("collected", "int", "unreachable objects found"),
        ),
        _spec(
            TASK_CANCEL,
            "task_cancel",
            "a task was woken because what it awaited was cancelled",
            ("t", "time", "when it was woken"),
            ("tid", "int"),
            ("stack", "stack", "the await chain the cancellation was delivered at"),
            ("cause", "str?", '"timeout" when the woken step turned it into a timeout'),
        ),
        _spec(
            TASK_SLOW_STEP,
            "task_slow_step",
            "a task step longer than slow_callback, and where the task stood when it ended",
            ("t_start", "time"),
            ("t_end", "time"),
            ("tid", "int"),
            ("stack", "stack", "the await chain after the step (empty if it finished)"),
        ),
    )
}

NAMES: Final = {k: s.name for k, s in SPECS.items()}

# Field positions, named ``<KIND>_<FIELD>`` (e.g. ``REQ_END_STATUS``), for readers.
TASK_CREATE_T, TASK_CREATE_TID, TASK_CREATE_NAME, TASK_CREATE_CORO = 1, 2, 3, 4
TASK_CREATE_PARENT, TASK_CREATE_REQUEST, TASK_CREATE_SITE = 5, 6, 7
TASK_STEP_START, TASK_STEP_END, TASK_STEP_TID, TASK_STEP_QUEUED = 1, 2, 3, 4
TASK_DONE_T, TASK_DONE_TID, TASK_DONE_STATE, TASK_DONE_ERROR, TASK_DONE_NAME = 1, 2, 3, 4, 5
TASK_WAIT_START, TASK_WAIT_END, TASK_WAIT_TID, TASK_WAIT_STACK = 1, 2, 3, 4
LOOP_BLOCK_START, LOOP_BLOCK_END, LOOP_BLOCK_CALLBACK, LOOP_BLOCK_STACK = 1, 2, 3, 4
LOOP_CALLBACK_START, LOOP_CALLBACK_END, LOOP_CALLBACK_NAME = 1, 2, 3
LOOP_LAG_T, LOOP_LAG_LAG = 1, 2
REQ_START_T, REQ_START_RID, REQ_START_SCOPE_TYPE, REQ_START_METHOD = 1, 2, 3, 4
REQ_START_PATH, REQ_START_QUERY, REQ_START_CLIENT, REQ_START_HEADERS, REQ_START_TID = 5, 6, 7, 8, 9
REQ_START_TRACE_ID = 10
REQ_END_T, REQ_END_RID, REQ_END_STATUS, REQ_END_TTFB, REQ_END_ROUTE = 1, 2, 3, 4, 5
REQ_END_DISCONNECTED, REQ_END_ERROR, REQ_END_BODY_END, REQ_END_CLOSE_CODE = 6, 7, 8, 9
REGION_START, REGION_END, REGION_NAME, REGION_TID = 1, 2, 3, 4
LOG_T, LOG_CATEGORY, LOG_MESSAGE, LOG_TID = 1, 2, 3, 4
EXECUTOR_QUEUED, EXECUTOR_START, EXECUTOR_END, EXECUTOR_FUNC = 1, 2, 3, 4
EXECUTOR_THREAD, EXECUTOR_TID, EXECUTOR_REQUEST, EXECUTOR_ERROR = 5, 6, 7, 8
MARK_T, MARK_KIND, MARK_REASON = 1, 2, 3
GC_START, GC_END, GC_GENERATION, GC_COLLECTED = 1, 2, 3, 4
TASK_CANCEL_T, TASK_CANCEL_TID, TASK_CANCEL_STACK, TASK_CANCEL_CAUSE = 1, 2, 3, 4
TASK_SLOW_STEP_START, TASK_SLOW_STEP_END, TASK_SLOW_STEP_TID, TASK_SLOW_STEP_STACK = 1, 2, 3, 4


def end_time(event: tuple[Any, ...]) -> int:
    """When an event ended: its ``t_end`` where it has one, else its first time."""
    spec = SPECS[event[0]]
    if len(spec.fields) > 1 and spec.fields[1].name == "t_end":
        return int(event[2])
    return int(event[1])


def _frame_ok(f: Any) -> bool:
    return (
        type(f) is tuple
        and len(f) == 3
        and type(f[0]) is str
        and type(f[1]) is str
        and type(f[2]) is int
    )


def _ok(value: Any, type_: str) -> bool:
    if type_.endswith("?") and value is None:
        return True
    base = type_.rstrip("?")
    if base == "time":
        return type(value) is int and value > 0
    if base == "time0":
        return type(value) is int and value >= 0
    if base == "int":
        return type(value) is int
    if base == "str":
        return type(value) is str
    if base == "bool":
        return type(value) is bool
    if base == "frame":
        return _frame_ok(value)
    if base == "stack":
        return type(value) is tuple and all(_frame_ok(f) for f in value)
    if base == "client":
        return value is None or (
            type(value) is tuple
            and len(value) == 2
            and type(value[0]) is str
            and type(value[1]) is int
        )
    if base == "pairs":
        return type(value) is tuple and all(
            type(p) is tuple and len(p) == 2 and all(type(x) is str for x in p) for p in value
        )
    raise ValueError(f"unknown field type {type_!r}")


def check_event(event: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` naming the field if ``event`` does not follow its declared layout."""
    if type(event) is not tuple or not event:
        raise ValueError(f"an event is a non-empty tuple, not {event!r}")
    spec = SPECS.get(event[0])
    if spec is None:
        raise ValueError(f"unknown event kind {event[0]!r}")
    if len(event) != 1 + len(spec.fields):
        raise ValueError(f"{spec.name} has {len(spec.fields)} fields, got {len(event) - 1}")
    for f, value in zip(spec.fields, event[1:], strict=True):
        if not _ok(value, f.type):
            raise ValueError(f"{spec.name}.{f.name} must be {f.type}, got {value!r}")
