"""The fleet's Redis connection: its own thread and event loop, never the app's.

The app's loop and the snapshot threads hand work over with :meth:`FleetClient.submit`
(fire and forget) or :meth:`FleetClient.call` (wait at most a short timeout). While Redis
is unreachable every call fails at once with :class:`FleetUnavailable`; the connection is
retried with exponential backoff, the subscription renewed, and each failure counted.
A warning is logged once when Redis goes away and once when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from .options import FleetOptions
from .protocol import MAX_MESSAGE, Keys

logger = logging.getLogger("flightdeck")

CONNECT_TIMEOUT = 1.0
OP_TIMEOUT = 2.0
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0

Op = Callable[[Any], Coroutine[Any, Any, Any]]


class FleetUnavailable(Exception):
    """Redis is not connected (or the fleet client is closed)."""


class Counters:
    """Thread-safe counters shown under ``fleet`` in ``/debug/flight/status``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[name] = self.values.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.values)


_clients: weakref.WeakSet[FleetClient] = weakref.WeakSet()


class FleetClient:
    """One Redis client (and one subscription) per process, on a daemon thread."""

    def __init__(
        self,
        options: FleetOptions,
        on_message: Callable[[bytes], None],
        counters: Counters,
    ) -> None:
        self.options = options
        self.keys = Keys(options.namespace)
        self.counters = counters
        self._on_message = on_message
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._redis: Any = None
        self._closed = False
        self._down_logged = False
        self.connected = False
        self.last_error: str | None = None
        _clients.add(self)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (idempotent; again in a forked child)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(
                target=self._run, args=(loop,), name="flightdeck-fleet", daemon=True
            )
            self._thread.start()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:
            self.counters.add("internal_errors")
            logger.warning("flightdeck: the fleet client stopped: %r", exc)
        finally:
            self.connected = False
            try:
                loop.close()
            except Exception:
                pass

    def close(self) -> None:
        """Stop the thread; the fleet becomes unavailable for good."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(lambda: None)
            except RuntimeError:
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=3)

    def after_fork(self) -> None:
        # The parent's thread, loop and sockets are not ours: start afresh if it ran.
        was_started = self._thread is not None
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        self._redis = None
        self.connected = False
        if was_started and not self._closed:
            self.start()

    # -- the connection ------------------------------------------------------------------
    async def _main(self) -> None:
        import redis.asyncio as aioredis

        backoff = BACKOFF_MIN
        while not self._closed:
            client = None
            pubsub = None
            try:
                kwargs: dict[str, Any] = {
                    "socket_timeout": OP_TIMEOUT,
                    "socket_connect_timeout": CONNECT_TIMEOUT,
                    "health_check_interval": 0,
                }
                if self.options.password is not None:
                    kwargs["password"] = self.options.password
                client = aioredis.from_url(self.options.url, **kwargs)
                await asyncio.wait_for(client.ping(), CONNECT_TIMEOUT + OP_TIMEOUT)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await asyncio.wait_for(pubsub.subscribe(self.keys.channel), OP_TIMEOUT)
                self._redis = client
                self._up()
                backoff = BACKOFF_MIN
                while not self._closed:
                    message = await pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
            finally:
                self._redis = None
                self.connected = False
                for closing in (pubsub, client):
                    if closing is not None:
                        try:
                            await asyncio.wait_for(closing.aclose(), 1.0)
                        except Exception:
                            pass
            if not self._closed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _up(self) -> None:
        self.connected = True
        self.counters.add("connects")
        if self._down_logged:
            self._down_logged = False
            logger.warning("flightdeck: fleet Redis at %s is back", self.options.where)

    def _down(self, exc: BaseException) -> None:
        self.counters.add("connection_errors")
        self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if not self._down_logged:
            self._down_logged = True
            logger.warning(
                "flightdeck: fleet Redis at %s is unreachable (%s); capturing locally only,"
                " retrying in the background",
                self.options.where,
                self.last_error,
            )

    def _deliver(self, data: Any) -> None:
        if not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
            self.counters.add("malformed")
            return
        try:
            self._on_message(data)
        except Exception:
            self.counters.add("internal_errors")

    # -- work from other threads ---------------------------------------------------------
    async def _with_redis(self, op: Op) -> Any:
        client = self._redis
        if client is None:
            raise FleetUnavailable("not connected")
        return await asyncio.wait_for(op(client), OP_TIMEOUT)

    def call(self, op: Op, timeout: float = OP_TIMEOUT + 0.5) -> Any:
        """Run ``op(redis)`` on the fleet loop and wait for it (from a non-fleet thread).

        Raises :class:`FleetUnavailable` at once when disconnected, and on any failure.
        """
        loop = self._loop
        if loop is None or self._closed or not self.connected:
            raise FleetUnavailable("not connected")
        try:
            future = asyncio.run_coroutine_threadsafe(self._with_redis(op), loop)
        except RuntimeError as exc:
            raise FleetUnavailable("fleet loop closed") from exc
        try:
            return future.result(timeout)
        except FleetUnavailable:
            raise
        except Exception as exc:
            future.cancel()
            self.counters.add("errors")
            self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise FleetUnavailable(self.last_error) from exc

    def submit(self, op: Op, done: Callable[[Any], None] | None = None) -> bool:
        """Run ``op(redis)`` on the fleet loop without waiting; False when disconnected."""
        loop = self._loop
        if loop is None or self._closed or not self.connected:
            return False

        async def run() -> None:
            try:
                result = await self._with_redis(op)
            except FleetUnavailable:
                self.counters.add("errors")
                return
            except Exception as exc:
                self.counters.add("errors")
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                return
            if done is not None:
                try:
                    done(result)
                except Exception:
                    self.counters.add("internal_errors")

        try:
            asyncio.run_coroutine_threadsafe(run(), loop)
        except RuntimeError:
            return False
        return True


def _after_fork_in_child() -> None:
    for client in list(_clients):
        try:
            client.after_fork()
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
