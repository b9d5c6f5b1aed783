"""``FlightRecorder``: the always-on rolling window and the snapshots made from it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter_ns
from typing import IO, Any

from .._version import __version__
from ..core import events as ev
from ..core import registry
from ..core.config import (
    DEFAULT_LOOP_BLOCKED,
    DEFAULT_MAX_BYTES,
    DEFAULT_WINDOW,
    check_bool,
    check_optional_seconds,
    check_positive_int,
    check_seconds,
    env_bytes,
    env_seconds,
)
from ..core.cores import CORE, make_window
from ..core.sink import Sink
from ..core.window import Frozen
from ..instrument.gc import GcMonitor
from ..instrument.loop import LoopInstrumentation, describe_loop
from ..instrument.paths import app_module, library_paths, process_paths
from ..instrument.watchdog import Watchdog
from . import container
from .document import Snapshot, SnapshotInProgress, new_id
from .store import SnapshotStore, StoredInfo
from .switching import prompt_switching

#: How often the loop checks that the recorder thread still runs (``FlightRecorder._guard``).
GUARD_INTERVAL = 0.1


@functools.cache
def _host_facts() -> tuple[str, str]:
    """The host's name and Python's version, found once (see ``library_paths``)."""
    import platform
    import socket

    return socket.gethostname(), platform.python_version()


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class FlightRecorder:
    """Keeps the last ``window`` seconds of what the event loop did, within ``max_bytes``.

    ``start()`` instruments the running event loop (when ``instrument_loop``) and starts a
    background thread that compacts the window and watches for a blocked loop.
    ``snapshot()`` freezes the window and builds a :class:`Snapshot`.

    It is the public object users hold (lifecycle, snapshots, stats in one place); each
    method is a thin step into the layer doing the work (``core`` window, the instruments,
    ``snapshot.build``).
    """

    def __init__(
        self,
        window: float | None = None,
        max_bytes: int | None = None,
        *,
        instrument_loop: bool = True,
        loop_blocked: float | None = DEFAULT_LOOP_BLOCKED,
        wait_threshold: float = 0.05,
        slow_callback: float = 0.01,
    ) -> None:
        if window is None:
            window = env_seconds("FLIGHTDECK_WINDOW", DEFAULT_WINDOW, can_disable=False)
        if max_bytes is None:
            max_bytes = env_bytes("FLIGHTDECK_MAX_BYTES", DEFAULT_MAX_BYTES)
        self.window = check_seconds("window", window)
        self.max_bytes = check_positive_int("max_bytes", max_bytes)
        self.instrument_loop = check_bool("instrument_loop", instrument_loop)
        self.loop_blocked = check_optional_seconds("loop_blocked", loop_blocked)
        self.wait_threshold = check_seconds("wait_threshold", wait_threshold)
        self.slow_callback = check_seconds("slow_callback", slow_callback)

        self._window = make_window(
            int(self.window * 1e9), self.max_bytes, encode=container.encode_events
        )
        self._clock_offset_ns = time.time_ns() - perf_counter_ns()
        self.sink = Sink(
            self._window.append,
            self._window.live_tasks,
            self._window.live_requests,
            self._window.last_event_time,
            self.to_epoch,
            wait_threshold_ns=int(self.wait_threshold * 1e9),
            slow_callback_ns=int(self.slow_callback * 1e9),
            native=self._window if CORE == "native" else None,
        )
        #: The hot path: append one event tuple (see ``core.events``). Thread-safe.
        self.emit: Callable[[tuple[Any, ...]], None] = self.sink.emit
        self.live_tasks = self.sink.live_tasks
        self.live_requests = self.sink.live_requests
        self._started = False
        self._thread: threading.Thread | None = None
        #: When the recorder thread last ran its loop (``time.monotonic()``), and how often
        #: the loop found it starved and did its upkeep instead (see ``_guard``).
        self._last_tick = 0.0
        self._starved = 0
        self._guard_gen = 0  # a guard armed by an earlier start() stops at its next run
        self._stop = threading.Event()
        #: What the recorder thread sleeps on between ticks: held until stop() releases it.
        #: One C call per tick, where Event.wait(timeout) runs a Condition's Python code.
        self._wake = _held_lock()
        self._build_lock = threading.Lock()
        self._instrumentation: LoopInstrumentation | None = None
        self._watchdog: Watchdog | None = None
        self._gc = GcMonitor(self.sink)
        #: The application's top-level module (never folded in stacks), from who made us.
        self.app_module = app_module(sys._getframe(1))
        self.loop_kind = "none"
        self.coverage = self.sink.coverage
        self.block_listeners = self.sink.block_listeners
        self.freeze_hooks = self.sink.freeze_hooks
        self.snapshots_taken = 0
        self.snapshots_refused = 0
        self._errors = 0
        #: ``process.service`` of its snapshots (``FlightDeck`` sets it; None leaves it out).
        self.service: str | None = None
        #: The store whose directory keeps this recorder's window in a file while it records
        #: (``keep_window_in``), and the writer of that file (``windowfile.BlackBox``).
        self._window_store: SnapshotStore | None = None
        self._blackbox: Any = None

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
        try:
            if loop is not None:
                self.loop_kind = describe_loop(loop)
                if self.instrument_loop:
                    inst = LoopInstrumentation(self.sink, loop)
                    inst.install()
                    self._instrumentation = inst
                if self.loop_blocked is not None:
                    self._watchdog = Watchdog(self.sink, loop, self.loop_blocked)
            self._gc.install()
        except BaseException:
            # A failed start leaves nothing behind: not started, loop untouched.
            self._started = False
            if self._instrumentation is not None:
                self._instrumentation.uninstall()
                self._instrumentation = None
            self._watchdog = None
            self._gc.uninstall()
            for key in self.coverage:
                self.coverage[key] = False
            raise
        registry.active.append(self)
        # What a capture's header says of the process, found now rather than on the
        # capture's thread (see library_paths).
        library_paths()
        _host_facts()
        self._start_thread()
        if loop is not None:
            self._arm_guard(loop)
        self._start_blackbox()

    def keep_window_in(self, store: SnapshotStore) -> None:
        """While recording, keep the window in a file under ``store``'s directory, so that
        a death without ``stop()`` leaves a crash snapshot there (``windowfile.py``); the
        files of processes that died are made into crash snapshots in ``store``.

        Takes effect at the next ``start()``; a store without a directory does nothing.
        """
        self._window_store = store if store.directory is not None else None

    def _start_blackbox(self) -> None:
        if self._window_store is None:
            return
        from .windowfile import BlackBox

        try:
            box = BlackBox(
                self._window_store,
                self._file_head,
                self._window.freeze,
                self._file_state,
                self.max_bytes,
                block_threshold=self.loop_blocked,
            )
            box.start(block=self._block_now)
            self._blackbox = box
        except Exception:  # never into the app: the window stays in memory
            self._errors += 1

    def _file_head(self) -> dict[str, Any]:
        return {
            "process": self._process_info(),
            "clock_offset_ns": self._clock_offset_ns,
            "options": {"window": self.window, "max_bytes": self.max_bytes},
            "core": CORE,
        }

    def _file_state(self) -> dict[str, Any]:
        """What the window file's writer records beside the window at each write: with the
        requests in flight (how many, the three oldest), what a crash snapshot's reason says
        the process was doing."""
        live = list(self.live_requests.values())  # one C call: atomic under the GIL
        oldest = sorted((e[0] for e in live), key=lambda start: start[ev.REQ_START_T])[:3]
        return {
            "t_now": perf_counter_ns(),
            "time": time.time(),
            "dropped": self._window.dropped,
            "inflight": len(live),
            "oldest": [
                [
                    e[ev.REQ_START_RID],
                    e[ev.REQ_START_METHOD],
                    e[ev.REQ_START_PATH],
                    e[ev.REQ_START_T],
                ]
                for e in oldest
            ],
            "block": self._block_now(),
        }

    def _block_now(self) -> dict[str, Any] | None:
        wd = self._watchdog
        return wd.block_in_progress() if wd is not None else None

    def _arm_guard(self, loop: asyncio.AbstractEventLoop) -> None:
        self._guard_gen += 1
        gen = self._guard_gen
        try:
            loop.call_soon_threadsafe(loop.call_later, GUARD_INTERVAL, self._guard, loop, gen)
        except RuntimeError:  # a closed loop: nothing runs on it to starve the thread
            pass

    def _guard(self, loop: asyncio.AbstractEventLoop, gen: int) -> None:
        """On the loop, every ``GUARD_INTERVAL``: the recorder thread's upkeep if it starves.

        A saturated loop can keep the recorder thread from the GIL for seconds: every
        ``epoll`` drops the GIL and takes it straight back before the waiting thread wakes
        (``switching.py``). The pure core's append buffer then fills and drops events. The
        loop itself notices (the thread has not run for a whole interval) and does the
        upkeep: one ``maintain()`` (at most a few milliseconds) and the watchdog's heartbeat,
        on a loop that is running and so cannot be the blocked loop the watchdog looks for.
        """
        if not self._started or gen != self._guard_gen:
            return
        try:
            if time.monotonic() - self._last_tick > GUARD_INTERVAL:
                self._starved += 1
                self._window.maintain()
                if self._watchdog is not None:
                    self._watchdog.post_from_loop()
        except Exception:  # never into the loop
            self._errors += 1
        try:
            loop.call_later(GUARD_INTERVAL, self._guard, loop, gen)
        except RuntimeError:  # the loop is closing
            pass

    def _start_thread(self) -> None:
        self._last_tick = time.monotonic()
        self._wake = _held_lock()
        self._thread = threading.Thread(target=self._run, name="flightdeck-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop recording and restore the loop. Harmless if not started or already stopped."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        try:
            self._wake.release()
        except RuntimeError:  # released already
            pass
        if self in registry.active:
            registry.active.remove(self)
        self._gc.uninstall()
        if self._instrumentation is not None:
            self._instrumentation.uninstall()
            self._instrumentation = None
        self._guard_gen += 1  # its pending run (at most GUARD_INTERVAL away) ends the guard
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None
        box, self._blackbox = self._blackbox, None
        if box is not None:
            box.stop(clean=True)
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        # Nothing is instrumented any more; a later start() sets what it installs again.
        for key in self.coverage:
            self.coverage[key] = False

    #: The recorder thread's period (seconds): drain, seal, evict, watch the loop.
    TICK = 0.02

    def _run(self) -> None:
        tick = self.TICK
        if self.loop_blocked is not None:
            tick = min(tick, self.loop_blocked / 4)
        # Drain every tick: a busy loop can append ~250k events/s, and what waits in the
        # append buffer is the least compact form of the window. Under a burst (the pure
        # core's bounded buffer filling up) drain every millisecond until it calms down.
        # While it does, the switch interval is lowered as for a build: against a saturated
        # loop this thread otherwise gets the GIL only by winning races and falls behind
        # (benchmarks/README.md, "Capture starvation"; the pure core dropped most events).
        wait = tick
        next_watch = time.monotonic()
        wake = self._wake  # this thread's own: a later start() makes another
        prompt = contextlib.ExitStack()
        lowered = False
        try:
            while not wake.acquire(True, wait) and not self._stop.is_set():
                now = self._last_tick = time.monotonic()
                try:
                    wd = self._watchdog
                    if wd is not None and now >= next_watch:
                        next_watch = now + tick
                        wd.tick()
                    self._window.maintain()
                    pressed = bool(getattr(self._window, "pressure", False))
                    wait = 0.001 if pressed else tick
                    if pressed and not lowered:
                        prompt.enter_context(prompt_switching())
                    elif lowered and not pressed:
                        prompt.close()
                    lowered = pressed
                except Exception:  # the recorder thread must outlive its own bugs
                    self._errors += 1
        finally:
            prompt.close()

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
                self._errors += 1
        return frozen

    def _head(
        self,
        kind: str,
        reason: str,
        request: dict[str, Any] | None,
        trigger_time_ns: int | None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The header of a stored snapshot (``container.py``), before the window's part."""
        return {
            "id": new_id(),
            "trigger": {"kind": kind, "reason": reason, "request": request, **(extra or {})},
            "trigger_time_ns": trigger_time_ns,
            "process": self._process_info(),
            "clock_offset_ns": self._clock_offset_ns,
            "options": {"window": self.window, "max_bytes": self.max_bytes},
            "core": CORE,
        }

    def build(
        self,
        frozen: Frozen,
        *,
        kind: str = "manual",
        reason: str = "",
        request: dict[str, Any] | None = None,
        trigger_time_ns: int | None = None,
    ) -> Snapshot:
        """A :class:`Snapshot` of a frozen window (the expensive part; any thread).

        The window's records are written in their stored form (``container.py``); the
        document is built only when the snapshot is read (``Snapshot.to_dict()``, ``dumps``).
        Only one build runs at a time per recorder: a concurrent one raises
        :class:`SnapshotInProgress` rather than queueing.
        """
        with self._building(kind, reason, request, trigger_time_ns) as head:
            # The pieces as written, never joined here: a store keeps these very bytes.
            pieces = container.write(frozen, head)
        return Snapshot.from_stored(pieces, head)

    def build_into(
        self,
        store: SnapshotStore,
        frozen: Frozen,
        *,
        kind: str = "manual",
        reason: str = "",
        request: dict[str, Any] | None = None,
        trigger_time_ns: int | None = None,
        extra: dict[str, Any] | None = None,
        annotate: Callable[[dict[str, Any]], None] | None = None,
        scope: str = "process",
    ) -> StoredInfo:
        """Capture ``frozen`` straight into ``store`` in its stored form (the capture path).

        Nothing is decoded: the window's records are copied as they are
        (``container.write``), at about the window's bytes. ``extra`` is merged into the
        trigger record; ``annotate`` sees the header (with the window's trace ids as
        ``requests``, see ``container.write``) before it is written (the fleet adds its
        incident there) and may raise to drop the snapshot. ``frozen`` is consumed.
        ``scope="host"``: the windows of every other live process recording under
        ``store``'s directory too (``host.py``).
        """
        with self._building(kind, reason, request, trigger_time_ns, extra) as head:
            return self._store(store, frozen, head, annotate, scope)

    def _store(
        self,
        store: SnapshotStore,
        frozen: Frozen,
        head: dict[str, Any],
        annotate: Callable[[dict[str, Any]], None] | None = None,
        scope: str = "process",
    ) -> StoredInfo:
        """Inside ``_building()``."""
        others: Iterable[Iterable[bytes]] = ()
        peers: list[Any] = []
        if scope == "host":
            peers, others = self._host_part(store, head)
        try:
            # Made as the store writes them: to a directory, one generation at a time.
            pieces = container.stream(frozen, head, annotate=annotate, extra=others)
            return store.put_stored(pieces, head)
        finally:
            for peer in peers:  # those not read (the capture failed first)
                peer.close()

    def _host_part(
        self, store: SnapshotStore, head: dict[str, Any]
    ) -> tuple[list[Any], Iterable[Iterable[bytes]]]:
        """The other live processes of ``store``'s directory, named in ``head``, and their
        chunks, each read as the store writes it."""
        from . import host

        if store.directory is None:
            raise ValueError("a host capture needs a snapshot directory")
        box = self._blackbox
        own = box.file.path if box is not None and box.file is not None else None
        peers, skipped = host.find_peers(store.directory, own)
        head["scope"] = "host"
        head["processes"] = [head["process"], *(p.process for p in peers), *skipped]
        return peers, host.host_chunks(peers, skipped, budget=store.max_bytes)

    def capture_into(
        self,
        store: SnapshotStore,
        frozen: Frozen,
        *,
        kind: str = "manual",
        reason: str = "",
        scope: str = "process",
    ) -> Snapshot:
        """Like :meth:`build_into`, returning a :class:`Snapshot` that reads its stored form
        back from ``store`` only when asked for (a manual capture's answer needs the header)."""
        with self._building(kind, reason) as head:
            info = self._store(store, frozen, head, scope=scope)
        return Snapshot.from_header(head, lambda: store.get_stored(info.id))

    @contextlib.contextmanager
    def _building(
        self,
        kind: str,
        reason: str,
        request: dict[str, Any] | None = None,
        trigger_time_ns: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One build at a time per recorder (a concurrent one raises), with a shorter switch
        interval meanwhile, so that a saturated loop cannot starve it (``switching.py``);
        yields the build's header (``_head``), made inside, at that interval too. Counts
        builds that finish.

        The cyclic GC stays on: a build copies the window's records and allocates little,
        while the app goes on allocating; a collector switched off for the build would leave
        the app's garbage of those moments to one long collection after it, on whichever
        thread allocates next (the event loop's, most likely).
        """
        if not self._build_lock.acquire(blocking=False):
            self.snapshots_refused += 1
            raise SnapshotInProgress("a snapshot of this recorder is already being built")
        try:
            with prompt_switching():
                yield self._head(kind, reason, request, trigger_time_ns, extra)
            self.snapshots_taken += 1
        finally:
            self._build_lock.release()

    def snapshot(self, reason: str = "", *, kind: str = "manual") -> Snapshot:
        """Snapshot the current window (trigger kind ``manual`` by default).

        The window is frozen and its stored form written on the calling thread (a copy of
        the window's records, no decoding); the ``flightdeck/1`` document is built when the
        snapshot is read. From async code prefer ``await capture()``.
        """
        return self.build(self.freeze(), kind=kind, reason=reason)

    async def capture(self, reason: str = "", *, kind: str = "manual") -> Snapshot:
        """Like :meth:`snapshot`, but writes the stored form off the event loop."""
        import anyio.to_thread

        frozen = self.freeze()
        return await anyio.to_thread.run_sync(lambda: self.build(frozen, kind=kind, reason=reason))

    def write_to(self, fileobj: IO[bytes]) -> int:
        """Snapshot the window and write its stored form to ``fileobj``; returns bytes written.

        The stored form is the window's own records (``docs/snapshot-format.md``), as Go's
        ``FlightRecorder.WriteTo`` writes its binary trace: ``flightdeck export`` or
        :meth:`Snapshot.load` make JSON, Perfetto or HTML of it.
        """
        if isinstance(fileobj, io.TextIOBase):
            raise TypeError("write_to() writes the stored form: open the file in binary mode")
        frozen = self.freeze()
        written = 0
        with self._building("manual", "") as head:
            for piece in container.stream(frozen, head):
                fileobj.write(piece)
                written += len(piece)
        return written

    def to_epoch(self, t_ns: int) -> float:
        """Convert a recorder timestamp (``perf_counter_ns``) to Unix epoch seconds."""
        return (t_ns + self._clock_offset_ns) / 1e9

    def _process_info(self) -> dict[str, Any]:
        hostname, python = _host_facts()
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "hostname": hostname,
            "python": python,
            "loop": self.loop_kind,
            "core": CORE,
            "flightdeck": __version__,
            "coverage": dict(self.coverage),
            "paths": process_paths(self.app_module),
        }
        if self.service is not None:
            info["service"] = self.service
        return info

    def _after_fork(self) -> None:
        self._build_lock = threading.Lock()
        self._window.after_fork()
        self._stop = threading.Event()
        if self._watchdog is not None:
            self._watchdog.after_fork()
        self._start_thread()
        box, self._blackbox = self._blackbox, None
        if box is not None:
            box.after_fork()  # the parent's file is left alone; the child keeps none

    @property
    def internal_errors(self) -> int:
        """flightdeck's own failures (recorder thread, freeze hooks, instruments)."""
        return self._errors + self.sink.errors

    # -- introspection ----------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """Counters: events held, bytes, segments, recorded/evicted/dropped, snapshots, ..."""
        w = self._window
        out: dict[str, Any] = {
            "enabled": self._started,
            "core": CORE,
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
            "recorder_thread_starved": self._starved,
        }
        if self._instrumentation is not None:
            out["instrumentation"] = self._instrumentation.counters()
        if self._watchdog is not None:
            out["watchdog"] = self._watchdog.counters()
        out["gc"] = self._gc.counters()
        if self._blackbox is not None:
            out["window_file"] = self._blackbox.stats()
        return out

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<FlightRecorder {state} window={self.window}s max_bytes={self.max_bytes}>"


def active_recorders() -> list[FlightRecorder]:
    """The started recorders, in start order."""
    return [r for r in registry.active if isinstance(r, FlightRecorder)]


def _after_fork_in_child() -> None:
    # Threads do not survive fork(): give each started recorder fresh locks and a new
    # thread, and forget what the parent recorded so the child records on its own.
    for rec in active_recorders():
        try:
            rec._after_fork()
        except Exception:
            rec._errors += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
