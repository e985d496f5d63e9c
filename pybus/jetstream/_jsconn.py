"""One NATS connection on its own loop thread, for the sync JetStream work-queue classes: the
loop, the connection (reconnecting by itself), the JetStream context, streams made when
missing."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from ..errors import ValidationError
from ._runner import LoopThread
from ._servers import connect, parse_servers

__all__ = ["JsConn", "check_stream_name"]

T = TypeVar("T")


def check_stream_name(stream: str) -> None:
    if not isinstance(stream, str) or not stream or any(c in stream for c in " .*>\t\r\n"):
        raise ValidationError(f"stream name {stream!r} must be a non-empty str without spaces, "
                              f"'.', '*' or '>'")


class JsConn:
    """Connects lazily on the loop (the first :meth:`js` call) and keeps reconnecting."""

    def __init__(self, servers: str | Sequence[str], name: str) -> None:
        self.servers = parse_servers(servers)
        self.name = name
        self.last_error = ""
        self._nc: Any = None
        self._js: Any = None
        self._loop = LoopThread(f"{name}-loop")

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

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return self._loop.run(coro, timeout_s)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return self._loop.submit(coro)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop.loop

    async def _close_nc(self) -> None:
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.close(), 2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self._loop.run(self._close_nc(), timeout_s)
        except Exception:  # noqa: BLE001 - the loop goes regardless
            pass
        self._loop.close(timeout_s)
