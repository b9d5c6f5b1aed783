"""The event table: every event kind and its layout, declared once.

An event is a flat tuple ``(kind, field, field, ...)`` whose fields follow ``SPECS[kind]``.
Emitters build plain tuples on the hot path (the encoders take them fastest, and a
tuple is the cheapest thing to build); readers take field positions from this table
(``TASK_STEP_END`` and friends, derived below) instead of bare integers. Times are
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
    const: str = ""  # the constant naming the kind here and in C (``K_`` + it)

    def index(self, field: str) -> int:
        """Position of ``field`` in the event tuple (the kind is at 0)."""
        for i, f in enumerate(self.fields):
            if f.name == field:
                return i + 1
        raise KeyError(f"{self.name} has no field {field!r}")


def _spec(const: str, name: str, doc: str, *fields: tuple[str, str] | tuple[str, str, str]) -> Spec:
    kind: int = globals()[const]
    return Spec(kind, name, tuple(Field(*f) for f in fields), doc, const)


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
REQ_ERROR: Final = 19
LOOP_BLOCK_ONGOING: Final = 20

SPECS: Final[dict[int, Spec]] = {
    s.kind: s
    for s in (
        _spec(
            "TASK_CREATE",
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
            "TASK_STEP",
            "task_step",
            "one step of a task ran on the loop",
            ("t_start", "time"),
            ("t_end", "time"),
            ("tid", "int"),
            ("t_queued", "time0", "when the step (or its wakeup) was scheduled"),
        ),
        _spec(
            "TASK_DONE",
            "task_done",
            "a task finished",
            ("t", "time"),
            ("tid", "int"),
            ("state", "str", '"done", "cancelled" or "error"'),
            ("error", "str?", "the exception's type"),
            ("name", "str", "the task's name when it finished"),
        ),
        _spec(
            "TASK_WAIT",
            "task_wait",
            "a suspension longer than the wait threshold",
            ("t_start", "time"),
            ("t_end", "time"),
            ("tid", "int"),
            ("stack", "stack", "the await chain it was suspended at"),
        ),
        _spec(
            "LOOP_BLOCK",
            "loop_block",
            "the loop was blocked; the stack was taken while it was",
            ("t_start", "time"),
            ("t_end", "time"),
            ("callback", "str?"),
            ("stack", "stack"),
        ),
        _spec(
            "LOOP_CALLBACK",
            "loop_callback",
            "a slow callback that is not a task step",
            ("t_start", "time"),
            ("t_end", "time"),
            ("name", "str"),
        ),
        _spec("LOOP_LAG", "loop_lag", "scheduling lag", ("t", "time"), ("lag", "int")),
        _spec(
            "REQ_START",
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
            "REQ_END",
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
            "REGION",
            "region",
            "a user region",
            ("t_start", "time"),
            ("t_end", "time"),
            ("name", "str"),
            ("tid", "int?"),
        ),
        _spec(
            "LOG",
            "log",
            "a user log line",
            ("t", "time"),
            ("category", "str"),
            ("message", "str"),
            ("tid", "int?"),
        ),
        _spec(
            "EXECUTOR",
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
            "MARK",
            "mark",
            "a trigger fired",
            ("t", "time"),
            ("kind", "str"),
            ("reason", "str"),
        ),
        _spec(
            "GC",
            "gc",
            "a garbage collection that took at least the GC threshold (1 ms)",
            ("t_start", "time"),
            ("t_end", "time"),
            ("generation", "int"),
            ("collected", "int", "unreachable objects found"),
        ),
        _spec(
            "TASK_CANCEL",
            "task_cancel",
            "a task was woken because what it awaited was cancelled",
            ("t", "time", "when it was woken"),
            ("tid", "int"),
            ("stack", "stack", "the await chain the cancellation was delivered at"),
            ("cause", "str?", '"timeout" when the woken step turned it into a timeout'),
        ),
        _spec(
            "TASK_SLOW_STEP",
            "task_slow_step",
            "a task step longer than slow_callback, and where the task stood when it ended",
            ("t_start", "time"),
            ("t_end", "time"),
            ("tid", "int"),
            ("stack", "stack", "the await chain after the step (empty if it finished)"),
        ),
        _spec(
            "REQ_ERROR",
            "request_error",
            "an exception left the app: where it was raised (recorded before its REQ_END)",
            ("t", "time"),
            ("rid", "int"),
            ("stack", "stack", "its traceback's code locations, innermost last, bounded"),
        ),
        _spec(
            "LOOP_BLOCK_ONGOING",
            "loop_block_ongoing",
            "the loop is blocked now (recorded when the watchdog sees it, refreshed while it"
            " lasts; the block's LOOP_BLOCK, same t_start, replaces it when it ends)",
            ("t_start", "time"),
            ("t_seen", "time", "when the watchdog last saw the loop still held"),
            ("callback", "str?"),
            ("stack", "stack", "taken while the loop was held"),
            ("request", "int?", "the request whose task holds the loop"),
        ),
    )
}

NAMES: Final = {k: s.name for k, s in SPECS.items()}


def _positions(kind: int) -> tuple[int, ...]:
    return tuple(range(1, 1 + len(SPECS[kind].fields)))


# Field positions, named ``<KIND>_<FIELD>`` (e.g. ``REQ_END_STATUS``), for readers: the
# table's fields in order (the kind is at 0). tests/core/test_events.py checks each name.
(
    TASK_CREATE_T,
    TASK_CREATE_TID,
    TASK_CREATE_NAME,
    TASK_CREATE_CORO,
    TASK_CREATE_PARENT,
    TASK_CREATE_REQUEST,
    TASK_CREATE_SITE,
) = _positions(TASK_CREATE)
TASK_STEP_START, TASK_STEP_END, TASK_STEP_TID, TASK_STEP_QUEUED = _positions(TASK_STEP)
TASK_DONE_T, TASK_DONE_TID, TASK_DONE_STATE, TASK_DONE_ERROR, TASK_DONE_NAME = _positions(TASK_DONE)
TASK_WAIT_START, TASK_WAIT_END, TASK_WAIT_TID, TASK_WAIT_STACK = _positions(TASK_WAIT)
LOOP_BLOCK_START, LOOP_BLOCK_END, LOOP_BLOCK_CALLBACK, LOOP_BLOCK_STACK = _positions(LOOP_BLOCK)
LOOP_CALLBACK_START, LOOP_CALLBACK_END, LOOP_CALLBACK_NAME = _positions(LOOP_CALLBACK)
LOOP_LAG_T, LOOP_LAG_LAG = _positions(LOOP_LAG)
(
    REQ_START_T,
    REQ_START_RID,
    REQ_START_SCOPE_TYPE,
    REQ_START_METHOD,
    REQ_START_PATH,
    REQ_START_QUERY,
    REQ_START_CLIENT,
    REQ_START_HEADERS,
    REQ_START_TID,
    REQ_START_TRACE_ID,
) = _positions(REQ_START)
(
    REQ_END_T,
    REQ_END_RID,
    REQ_END_STATUS,
    REQ_END_TTFB,
    REQ_END_ROUTE,
    REQ_END_DISCONNECTED,
    REQ_END_ERROR,
    REQ_END_BODY_END,
    REQ_END_CLOSE_CODE,
) = _positions(REQ_END)
REGION_START, REGION_END, REGION_NAME, REGION_TID = _positions(REGION)
LOG_T, LOG_CATEGORY, LOG_MESSAGE, LOG_TID = _positions(LOG)
(
    EXECUTOR_QUEUED,
    EXECUTOR_START,
    EXECUTOR_END,
    EXECUTOR_FUNC,
    EXECUTOR_THREAD,
    EXECUTOR_TID,
    EXECUTOR_REQUEST,
    EXECUTOR_ERROR,
) = _positions(EXECUTOR)
MARK_T, MARK_KIND, MARK_REASON = _positions(MARK)
GC_START, GC_END, GC_GENERATION, GC_COLLECTED = _positions(GC)
TASK_CANCEL_T, TASK_CANCEL_TID, TASK_CANCEL_STACK, TASK_CANCEL_CAUSE = _positions(TASK_CANCEL)
TASK_SLOW_STEP_START, TASK_SLOW_STEP_END, TASK_SLOW_STEP_TID, TASK_SLOW_STEP_STACK = _positions(
    TASK_SLOW_STEP
)
REQ_ERROR_T, REQ_ERROR_RID, REQ_ERROR_STACK = _positions(REQ_ERROR)
(
    LOOP_BLOCK_ONGOING_START,
    LOOP_BLOCK_ONGOING_SEEN,
    LOOP_BLOCK_ONGOING_CALLBACK,
    LOOP_BLOCK_ONGOING_STACK,
    LOOP_BLOCK_ONGOING_REQUEST,
) = _positions(LOOP_BLOCK_ONGOING)


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


# -- the C sources' copy ------------------------------------------------------------------
#: Fields holding a task's id: the native encoder stores them as deltas between task ids.
TASK_ID_FIELDS: Final = frozenset({"tid", "parent"})
#: Where ``c_header()`` is checked in, relative to the repository's root.
HEADER_PATH: Final = "flightdeck/core/_kinds.h"


def native_layout(spec: Spec) -> str:
    """The native encoder's layout of ``spec``'s fields, one letter each (``_native.c``).

    ``T`` the first field (a time), ``R`` any later time, ``I`` a task id (``int?`` too),
    ``N`` an int, ``n`` an int or None, ``V`` any other value.
    """
    codes = []
    for i, f in enumerate(spec.fields):
        base = f.type.rstrip("?")
        if i == 0:
            if f.type != "time":
                raise ValueError(f"{spec.name}: the first field must be a time")
            codes.append("T")
        elif base in ("time", "time0"):
            codes.append("R")
        elif base == "int" and f.name in TASK_ID_FIELDS:
            codes.append("I")
        elif base == "int":
            codes.append("n" if f.type.endswith("?") else "N")
        else:
            codes.append("V")
    return "".join(codes)


def c_header() -> str:
    """``_kinds.h``: the kinds and the native layouts, for ``_native.c`` and ``_casgi.c``."""
    nkinds = max(SPECS) + 1
    consts = [f"#define K_{s.const} {k}" for k, s in sorted(SPECS.items())]
    layouts = [NATIVE_LAYOUTS.get(k, "") for k in range(nkinds)]
    rows = ["    NULL, \\"]
    for k in range(1, nkinds):
        spec = SPECS.get(k)
        if spec is None:
            note = f"{k} (no kind)"
        else:
            note = " ".join([str(k), spec.const, *(f.name for f in spec.fields)])
        rows.append(f"    {_c_str(layouts[k]) + ',':<14}/* {note} */ \\")
    return "\n".join(
        [
            "/* The event kinds of flightdeck/core/events.py (SPECS), for the C sources.",
            " * Generated by `python tools/gen_kinds.py`: do not edit.",
            " * tests/core/test_events.py fails when it differs from the table. */",
            "#ifndef FLIGHTDECK_KINDS_H",
            "#define FLIGHTDECK_KINDS_H",
            "",
            *consts,
            "",
            "/* One more than the largest kind. */",
            f"#define FD_NKINDS {nkinds}",
            "",
            "/* The native encoder's field layout of each kind (events.native_layout), by kind:",
            " * NULL for 0 (the generic form), empty for a number no kind has. */",
            "#define FD_SCHEMA_INIT { \\",
            *rows,
            "}",
            "",
            "/* The same layouts joined by commas, as the native module shows them (SCHEMA). */",
            f"#define FD_SCHEMA_STRING {_c_str(','.join(layouts))}",
            "",
            "#endif",
            "",
        ]
    )


def _c_str(text: str) -> str:
    return '"' + text + '"'


NATIVE_LAYOUTS: Final = {k: native_layout(s) for k, s in SPECS.items()}
