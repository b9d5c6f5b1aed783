"""``FlightRecorder``: the always-on rolling window and the snapshots made from it."""

from __future__ import annotations

import asyncio
import gc
import io
import math
import os
import threading
import time
from collections.abc import Callable
from time import perf_counter_ns
from typing import IO, Any

from ._snapshot import Snapshot, SnapshotInProgress, new_id
from ._window import Frozen, Window

DEFAULT_WINDOW = 10.0
DEFAULT_MAX_BYTES = 16 << 20

#: Recorders that are started; ``region()``/``log()`` record into these.
_active: list[FlightRecorder] = []


def _env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() in ("none", "off"):
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _env_bytes(name: str, default: int) -> int:
    """Bytes from the environment: ``16777216``, ``16M``, ``16MiB``, ``512k``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    text = raw.lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    if scale != 1:
        text = text[:-1]
    try:
        return int(text) * scale
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not a number of bytes (e.g. 16777216 or 16M)"
        ) from None


def check_seconds(name: str, value: object, *, allow_none: bool = False) -> float | None:
    """Validate a positive, finite duration option; the message names the option."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return value


class FlightRecorder:
    """Keeps the last ``window`` seconds of what the event loop did, within ``max_bytes``.

    ``start()`` instruments the running event loop (when ``instrument_loop``) and starts a
    background thread that compacts the window and watches for a blocked loop.
    ``snapshot()`` freezes the window and builds a :class:`Snapshot`.
    """

    def __init__(
        self,
        window: float | None = None,
        max_bytes: int | None = None,
        *,
        instrument_loop: bool = True,
        loop_blocked: float | None = 0.1,
        wait_threshold: float = 0.05,
        slow_callback: float = 0.01,
    ) -> None:
        if window is None:
            window = _env_float("FLIGHTDECK_WINDOW", DEFAULT_WINDOW)
        if max_bytes is None:
            max_bytes = _env_bytes("FLIGHTDECK_MAX_BYTES", DEFAULT_MAX_BYTES)
        w = check_seconds("window", window)
        assert w is not None
        self.window = w
        self.max_bytes = check_positive_int("max_bytes", max_bytes)
        if not isinstance(instrument_loop, bool):
            raise TypeError("instrument_loop must be a bool")
        self.instrument_loop = instrument_loop
        self.loop_blocked = check_seconds("loop_blocked", loop_blocked, allow_none=True)
        ws = check_seconds("wait_threshold", wait_threshold)
        assert ws is not None
        self.wait_threshold = ws
        sc = check_seconds("slow_callback", slow_callback)
        assert sc is not None
        self.slow_callback = sc

        self._window = Window(int(self.window * 1e9), self.max_bytes)
        #: The hot path: append one event tuple (see ``_events``). Thread-safe.
        self.emit: Callable[[tuple[Any, ...]], None] = self._window.append
        self.live_tasks = self._window.live_tasks
        self.live_requests = self._window.live_requests
        self._started = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._build_lock = threading.Lock()
        self._instrumentation: Any = None
        self._watchdog: Any = None
        self.loop_kind = "none"
        self.coverage: dict[str, bool] = {
            "task_lifecycle": False,
            "task_steps": False,
            "scheduling_delay": False,
            "loop_blocks": False,
            "executor": False,
        }
        #: Called on the loop's thread with a LOOP_BLOCK event tuple when a block ends.
        self.block_listeners: list[Callable[[tuple[Any, ...]], None]] = []
        #: Called at freeze time on the calling thread; may add to ``Frozen.extra``.
        self.freeze_hooks: list[Callable[[Frozen], None]] = []
        self.snapshots_taken = 0
        self.snapshots_refused = 0
        self.internal_errors = 0
        self._clock_offset_ns = time.time_ns() - perf_counter_ns()
        self._pid = os.getpid()

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._started

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start recording; instruments ``loop`` (default: the running loop, if any).

        Raises :class:`RuntimeError` if this recorder is already started.
        """
        if self._started:
            raise RuntimeError("FlightRecorder is already started")
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._started = True
        self._stop.clear()
        self._clock_offset_ns = time.time_ns() - perf_counter_ns()
        self._pid = os.getpid()
        try:
            if loop is not None:
                from ._loop import describe_loop

                self.loop_kind = describe_loop(loop)
                if self.instrument_loop:
                    from ._loop import LoopInstrumentation

                    inst = LoopInstrumentation(self, loop)
                    inst.install()
                    self._instrumentation = inst
                if self.loop_blocked is not None:
                    from ._watchdog import Watchdog

                    self._watchdog = Watchdog(self, loop)
        except BaseException:
            # A failed start leaves nothing behind: not started, loop untouched.
            self._started = False
            if self._instrumentation is not None:
                self._instrumentation.uninstall()
                self._instrumentation = None
            self._watchdog = None
            for key in self.coverage:
                self.coverage[key] = False
            raise
        _active.append(self)
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flightdeck-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop recording and restore the loop. Harmless if not started or already stopped."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        if self in _active:
            _active.remove(self)
        if self._instrumentation is not None:
            self._instrumentation.uninstall()
            self._instrumentation = None
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        # Nothing is instrumented any more; a later start() sets what it installs again.
        for key in self.coverage:
            self.coverage[key] = False

    def _run(self) -> None:
        tick = 0.02
        if self.loop_blocked is not None:
            tick = min(tick, self.loop_blocked / 4)
        # Drain every tick: a busy loop can append ~250k events/s, and what waits in the
        # append buffer is the least compact form of the window.
        maintain_every = 1
        n = 0
        while not self._stop.wait(tick):
            try:
                wd = self._watchdog
                if wd is not None:
                    wd.tick()
                n += 1
                if n % maintain_every == 0:
                    self._window.maintain()
            except Exception:  # the recorder thread must outlive its own bugs
                self.internal_errors += 1

    def maintain(self, force_seal: bool = False) -> None:
        """Compact and evict now (normally done by the recorder's thread)."""
        self._window.maintain(force_seal)

    # -- snapshots --------------------------------------------------------------------------
    def freeze(self) -> Frozen:
        """Take the cheap, immutable part of a snapshot on the calling thread."""
        if not self._started:
            raise RuntimeError("FlightRecorder is not started; call start() first")
        frozen = self._window.freeze()
        for hook in self.freeze_hooks:
            try:
                hook(frozen)
            except Exception:
                self.internal_errors += 1
        return frozen

    def build(
        self,
        frozen: Frozen,
        *,
        kind: str = "manual",
        reason: str = "",
        request: dict[str, Any] | None = None,
        trigger_time_ns: int | None = None,
    ) -> Snapshot:
        """Build a :class:`Snapshot` from a frozen window (the expensive part; any thread).

        Only one build runs at a time per recorder: a concurrent one raises
        :class:`SnapshotInProgress` rather than queueing.
        """
        if not self._build_lock.acquire(blocking=False):
            self.snapshots_refused += 1
            raise SnapshotInProgress("a snapshot of this recorder is already being built")
        try:
            from ._build import build_document

            # The build allocates hundreds of thousands of containers that all survive it:
            # left on, the cyclic GC would run full collections over the whole heap, with
            # the GIL, stalling the event loop (and halving the build's throughput).
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                doc = build_document(
                    frozen,
                    snapshot_id=new_id(),
                    offset_ns=self._clock_offset_ns,
                    trigger={"kind": kind, "reason": reason, "request": request},
                    trigger_time_ns=trigger_time_ns,
                    process=self._process_info(),
                )
            finally:
                if gc_was_enabled:
                    gc.enable()
            self.snapshots_taken += 1
            return Snapshot(doc)
        finally:
            self._build_lock.release()

    def snapshot(self, reason: str = "", *, kind: str = "manual") -> Snapshot:
        """Snapshot the current window (trigger kind ``manual`` by default).

        The window is frozen on the calling thread and the document built right away; from
        async code prefer ``await capture()``, which builds it in a worker thread.
        """
        return self.build(self.freeze(), kind=kind, reason=reason)

    async def capture(self, reason: str = "", *, kind: str = "manual") -> Snapshot:
        """Like :meth:`snapshot`, but builds the document off the event loop."""
        import anyio.to_thread

        frozen = self.freeze()
        return await anyio.to_thread.run_sync(lambda: self.build(frozen, kind=kind, reason=reason))

    def write_to(self, fileobj: IO[bytes] | IO[str]) -> int:
        """Snapshot the window and write it to ``fileobj`` as native JSON; returns bytes written."""
        data = self.snapshot().dumps("json")
        if isinstance(fileobj, io.TextIOBase):
            fileobj.write(data.decode())
        else:
            fileobj.write(data)  # type: ignore[arg-type]
        return len(data)

    def to_epoch(self, t_ns: int) -> float:
        """Convert a recorder timestamp (``perf_counter_ns``) to Unix epoch seconds."""
        return (t_ns + self._clock_offset_ns) / 1e9

    def _process_info(self) -> dict[str, Any]:
        import platform
        import socket

        from ._version import __version__

        return {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "python": platform.python_version(),
            "loop": self.loop_kind,
            "flightdeck": __version__,
            "coverage": dict(self.coverage),
        }

    # -- introspection ----------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """Counters: events held, bytes, segments, recorded/evicted/dropped, snapshots, ..."""
        w = self._window
        out: dict[str, Any] = {
            "enabled": self._started,
            "window": self.window,
            "max_bytes": self.max_bytes,
            "events": w.events,
            "bytes": w.nbytes,
            "segments": w.segments,
            "recorded": w.recorded,
            "evicted": w.evicted,
            "dropped": w.dropped,
            "overflows": w.overflows,
            "seal_errors": w.seal_errors,
            "snapshots": self.snapshots_taken,
            "snapshots_refused": self.snapshots_refused,
            "internal_errors": self.internal_errors,
            "loop": self.loop_kind,
            "coverage": dict(self.coverage),
            "live_tasks": len(w.live_tasks),
            "live_requests": len(w.live_requests),
        }
        if self._instrumentation is not None:
            out["instrumentation"] = self._instrumentation.counters()
        if self._watchdog is not None:
            out["watchdog"] = self._watchdog.counters()
        return out

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<FlightRecorder {state} window={self.window}s max_bytes={self.max_bytes}>"


def active_recorders() -> list[FlightRecorder]:
    return _active


def _after_fork_in_child() -> None:
    # Threads do not survive fork(): give each started recorder fresh locks and a new
    # thread, and forget what the parent recorded so the child records on its own.
    for rec in list(_active):
        try:
            rec._build_lock = threading.Lock()
            rec._window._lock = threading.Lock()
            rec._window._maintain_lock = threading.Lock()
            rec._window.clear()
            rec._stop = threading.Event()
            rec._pid = os.getpid()
            if rec._watchdog is not None:
                rec._watchdog.after_fork()
            rec._start_thread()
        except Exception:
            rec.internal_errors += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
