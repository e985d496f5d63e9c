"""One NATS connection on its own loop thread, for the sync JetStream work-queue classes: the
loop, the connection (reconnecting by itself), the JetStream context, streams made when
missing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from ..errors import ClosedError, ValidationError
from ..errors import TimeoutError as BusTimeoutError
from ._runner import LoopThread
from ._servers import connect, parse_servers

__all__ = ["InlineConn", "JsConn", "NatsLink", "check_stream_name"]

T = TypeVar("T")


def check_stream_name(stream: str) -> None:
    if not isinstance(stream, str) or not stream or any(c in stream for c in " .*>\t\r\n"):
        raise ValidationError(f"stream name {stream!r} must be a non-empty str without spaces, "
                              f"'.', '*' or '>'")


class NatsLink:
    """A connection made lazily in the running loop (the first :meth:`js` call), which keeps
    reconnecting by itself; every call must come from that one loop."""

    def __init__(self, servers: str | Sequence[str], name: str) -> None:
        self.servers = parse_servers(servers)
        self.name = name
        self.last_error = ""
        self._nc: Any = None
        self._js: Any = None

    @property
    def connected(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def _on_disconnected(self) -> None:
        self.last_error = self.last_error or "disconnected"

    async def js(self) -> Any:
        """The JetStream context (connecting first when needed)."""
        if self._js is None:
            self._nc = await connect(self.servers, self.name, error_cb=self._on_error,
                                     disconnected_cb=self._on_disconnected, ping_interval=2,
                                     max_outstanding_pings=2)
            self._js = self._nc.jetstream(timeout=5)
        return self._js

    async def ensure_stream(self, stream: str, subjects: list[str], replicas: int,
                            retention: Any, duplicate_window_s: float) -> None:
        """Create ``stream`` (file storage) when missing; an existing one is used as found."""
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        js = await self.js()
        try:
            await js.stream_info(stream)
        except NotFoundError:
            await js.add_stream(StreamConfig(
                name=stream, subjects=subjects, storage=StorageType.FILE, retention=retention,
                num_replicas=replicas, duplicate_window=duplicate_window_s))

    async def flush(self, timeout_s: float) -> None:
        """A round trip to the server (raises when it does not answer in time, or while the
        client is reconnecting: nats-py's flush then returns at once)."""
        await self._nc.flush(timeout=timeout_s)
        if not self._nc.is_connected:
            raise ConnectionError(self.last_error or "reconnecting to NATS")

    async def aclose(self) -> None:
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.close(), 2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass


class JsConn(NatsLink):
    """A :class:`NatsLink` on a loop thread of its own, for the sync classes."""

    def __init__(self, servers: str | Sequence[str], name: str) -> None:
        super().__init__(servers, name)
        self._loop = LoopThread(f"{name}-loop")

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return self._loop.run(coro, timeout_s)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return self._loop.submit(coro)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop.loop

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self._loop.run(self.aclose(), timeout_s)
        except Exception:  # noqa: BLE001 - the loop goes regardless
            pass
        self._loop.close(timeout_s)


class InlineConn(NatsLink):
    """A :class:`NatsLink` whose event loop runs in the calling thread, only during a call (one
    call at a time, under a lock). A sync ``put`` then costs no handoff to another thread
    (two thread wake-ups, about 90 us on this machine kind, half of a publish's round trip).

    Between calls nothing runs: the connection answers the server's pings at the next call
    (the server drops a client after two unanswered pings, two minutes apart by default, and
    nats-py reconnects at the next call, which retries meanwhile)."""

    def __init__(self, servers: str | Sequence[str], name: str) -> None:
        super().__init__(servers, name)
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise ValidationError("a sync JetStream call inside a running event loop would "
                                  "block it: use pybus.jetstream.AsyncWorkQueue there")
        with self._lock:
            if self._loop.is_closed():
                coro.close()
                raise ClosedError("the JetStream connection is closed")
            if timeout_s is None:  # the coroutine bounds itself (a put: its own deadline)
                return self._loop.run_until_complete(coro)
            try:
                return self._loop.run_until_complete(asyncio.wait_for(coro, timeout_s))
            except TimeoutError:
                raise BusTimeoutError(
                    f"no answer from the NATS server within {timeout_s} s") from None

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._loop.is_closed():
                return
            loop = self._loop
            try:
                loop.run_until_complete(asyncio.wait_for(self.aclose(), timeout_s))
            except Exception:  # noqa: BLE001 - closing regardless
                pass
            pending = asyncio.all_tasks(loop)  # nats-py's reader and pinger, if left
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
