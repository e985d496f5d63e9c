"""The asyncio twin of :class:`pybus.Client`: many requests in flight on one socket.

Same wire format (``docs/wire-reqrep.md``), same policies. Requests are
multiplexed on one DEALER: a single reader task routes each reply to the
awaiting request by correlation id; a reply nobody awaits any more (its attempt
timed out or was cancelled) is dropped and counted in ``stats()["late_replies"]``.

Lazy Pirate resets the socket after a timed-out attempt only when no other
request is in flight on it (resetting would abandon their replies); otherwise
the retry goes out on the same socket with a fresh correlation id, which is
safe because stale replies can never match it.

Example
-------
>>> async with AsyncClient("ipc:///tmp/calc", timeout_s=1.0) as client:   # doctest: +SKIP
...     results = await asyncio.gather(*(client.request("add", [i, i]) for i in range(10)))
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any

import zmq
import zmq.asyncio

from .. import metrics as _metrics
from .. import tracing
from .._deprecated import renamed
from ..errors import (
    BackpressureError,
    ClosedError,
    TimeoutError,
    check_positive_int,
    from_zmq,
)
from ..policy.breaker import CircuitBreaker
from ..policy.ratelimit import RateLimiter
from ..policy.retry import RetryPolicy
from ..transport.sockets import Liveness
from ..wire.reqrep import encode_payload, read_reply, request_frame, with_headers
from ._common import LATENCY_MAX_NS, InFlightLimit, check_timeout
from .client import _ClientBase, _open_dealer

__all__ = ["AsyncClient"]


class AsyncClient(_ClientBase, InFlightLimit):
    """Asyncio request/reply client (connects a DEALER); see :class:`pybus.Client`.

    Parameters
    ----------
    endpoint, timeout, retry, breaker, rate_limit, security, liveness
        As for :class:`pybus.Client` (the retry policy's ``asleep`` is used). The DEALER is
        opened on first use and monitored like the Client's (``liveness.on_peer``,
        ``stats()["peer_events"]``), across resets.
    max_in_flight : int
        Requests awaiting a reply at once; one more raises BackpressureError.
        ``max_inflight=`` is its deprecated old name (a DeprecationWarning).
    context : zmq.Context or None
        A plain context to shadow (default: the process-wide instance).
    """

    def __init__(
        self,
        endpoint: str,
        timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        rate_limit: RateLimiter | None = None,
        *,
        security: Callable[[zmq.Socket[Any]], Any] | None = None,
        max_in_flight: int = 10_000,
        context: zmq.Context[Any] | None = None,
        registry: Any = None,
        liveness: Liveness | None = None,
        max_inflight: int | None = None,
        timeout: float | None = None,
    ) -> None:
        max_in_flight = self._in_flight_option("AsyncClient", max_in_flight, max_inflight, 10_000,
                                               liveness)
        timeout_s = renamed("AsyncClient", "timeout", timeout, "timeout_s", timeout_s, 5.0)
        super().__init__(endpoint, timeout_s, retry, breaker, rate_limit)
        self.max_in_flight = check_positive_int("max_in_flight", max_in_flight)
        self._security = security
        self._liveness = liveness
        base_ctx = context or zmq.Context.instance()
        self._ctx = zmq.asyncio.Context.shadow(base_ctx)
        # monitors are plain sockets of the real context, read by its hub thread
        self._monitor_ctx = base_ctx
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        _metrics.attach(self, registry)

    # -- socket and reader ----------------------------------------------------------------
    def _ensure_socket(self) -> zmq.asyncio.Socket:
        if self._closed:
            raise ClosedError(f"async RPC client for {self.endpoint} is closed")
        reader = self._reader
        if reader is not None and (
            reader.done() or reader.get_loop() is not asyncio.get_running_loop()
        ):
            # The reader died or belongs to another (finished) event loop: start over.
            if self._sock is not None:
                self._sock.close(0)
            self._sock = None
            self._reader = None
            self._pending.clear()
        if self._sock is None:
            self._sock = _open_dealer(  # type: ignore[assignment]
                self._ctx, self.endpoint, self._secure_and_watch, zmq.asyncio.Socket,
                self._liveness,
            )
            assert self._sock is not None
            self._reader = asyncio.get_running_loop().create_task(self._read(self._sock))
        return self._sock

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        pending = self._pending
        stats = self._stats
        while True:
            try:
                frames = await sock.recv_multipart()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            # judged as the attempt's _parse_reply judges it: a frame handed over is ours
            head = read_reply(frames[0]) if len(frames) == 1 else None
            if head is None:
                stats["decode_errors"] += 1
                continue
            reply = frames[0]
            fut = pending.pop(head[0], None)
            if fut is None or fut.done():
                stats["late_replies"] += 1  # its attempt timed out or was cancelled
                continue
            fut.set_result(reply)

    async def _reset(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._stats["reconnects"] += 1

    # -- requests -------------------------------------------------------------------------
    async def request(self, name: str, payload: Any = b"", timeout: float | None = None) -> Any:
        """Await ``name``'s reply; same contract as :meth:`pybus.Client.request`."""
        t0 = time.perf_counter_ns()
        result = await self._request(name, payload, timeout)
        took = time.perf_counter_ns() - t0
        self._record_latency(took if took < LATENCY_MAX_NS else LATENCY_MAX_NS)
        return result

    async def _request(self, name: str, payload: Any, timeout: float | None) -> Any:
        if self._closed:
            raise ClosedError(f"async RPC client for {self.endpoint} is closed")
        mb = self._method(name)
        flags, body = encode_payload(payload)
        t = self.timeout if timeout is None else check_timeout("timeout", timeout)
        self._stats["requests"] += 1
        if self._traced:
            with tracing.rpc_client(name) as (_span, headers):
                flags, body = with_headers(flags, body, headers)
                return await self._request_frame(name, mb, flags, body, t)
        return await self._request_frame(name, mb, flags, body, t)

    async def _request_frame(self, name: str, mb: bytes, flags: int, body: bytes,
                             t: float) -> Any:
        if self._plain:
            return await self._attempt(name, mb, flags, body, t)
        # the decisions are the guard's (pybus.rpc._guard, shared with Client); the waits and
        # resets are here
        guard, breaker, rate_limit = self._guard, self.breaker, self.rate_limit
        run = guard.start(self.retry)
        while True:
            t_attempt = guard.begin(run, t)
            try:
                if rate_limit is not None:
                    await rate_limit.aacquire(timeout=t_attempt)
                t0 = guard.admit(breaker)
                try:
                    result = await self._attempt(name, mb, flags, body, t_attempt)
                except BaseException as exc:
                    guard.attempt_failed(breaker, exc, t0)
                    raise
                guard.succeeded(breaker, t0)
                return result
            except Exception as exc:
                delay_s, timed_out = guard.failed(run, exc, name, t)
            # resetting would abandon the replies other requests in flight await
            if timed_out and not self._pending:
                await self._reset()
            if delay_s > 0:
                assert self.retry is not None  # failed() returns a delay only under a policy
                await self.retry.asleep(delay_s)

    async def _attempt(self, name: str, mb: bytes, flags: int, body: bytes, t: float) -> Any:
        sock = self._ensure_socket()
        if len(self._pending) >= self.max_in_flight:
            raise BackpressureError(
                f"{len(self._pending)} requests already await replies from {self.endpoint} "
                f"(max_in_flight={self.max_in_flight}); wait for some to finish"
            )
        cid = self._next_cid()
        frame = request_frame(cid, flags, mb, body)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        sent = False
        try:
            async with asyncio.timeout(t):
                try:
                    # With IMMEDIATE this waits for a live connection (bounded by t).
                    await sock.send(frame)
                except zmq.ZMQError as exc:
                    raise from_zmq(exc, f"request {name!r} to {self.endpoint}") from exc
                sent = True
                reply = await fut
        except builtins.TimeoutError:
            self._stats["timeouts"] += 1
            if not sent:
                raise TimeoutError(
                    f"cannot reach an RPC server at {self.endpoint} within {t:g} s "
                    "(no connection); is it running?"
                ) from None
            raise TimeoutError(
                f"no reply to {name!r} from {self.endpoint} within {t:g} s"
            ) from None
        finally:
            self._pending.pop(cid, None)
        ok, value = self._parse_reply(reply, cid)
        assert ok  # the reader only hands over frames carrying this cid
        return value

    # -- lifetime -------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the socket, failing requests still in flight with ClosedError (awaited, like
        the close of every asyncio twin in pybus)."""
        if self._closed:
            return
        self._closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ClosedError(f"async RPC client for {self.endpoint} closed"))
        self._pending.clear()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._sock is not None:
            self._sock.close(0)

    async def aclose(self) -> None:
        """Deprecated: :meth:`close` (the old name; removed in the next release)."""
        warnings.warn("AsyncClient.aclose() is deprecated: use await close(); the old name "
                      "will be removed in the next release", DeprecationWarning, stacklevel=2)
        await self.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
