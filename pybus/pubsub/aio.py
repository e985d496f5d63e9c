"""asyncio twins of :class:`pybus.Publisher` and :class:`pybus.Subscriber` on ``zmq.asyncio``.

Same wire, same batching, same accounting; waiting is ``await`` instead of blocking, and the
publisher's "send the tail of a burst" timer is an event-loop timer instead of a thread. Use
each object from the thread that runs its event loop.

>>> async def main():                                             # doctest: +SKIP
...     async with pybus.aio.Subscriber("ipc:///tmp/o", topics=["orders.*"]) as sub:
...         async for msg in sub:
...             print(msg.topic, msg.payload)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import zmq
import zmq.asyncio

from .._native import Message
from ..errors import BackpressureError, ClosedError, TimeoutError, ValidationError
from . import publisher as _pub
from . import subscriber as _sub
from ._flusher import _WINDOW_RETRY_S
from ._options import close_linger_ms

__all__ = ["Publisher", "Subscriber"]

# How often wait_for_subscribers looks again while no bound subscriber needs a poke (the loop
# wakes up at once for a subscription message anyway).
_WAIT_SLICE_S = 0.05


def _core_attr(name: str, doc: str | None = None) -> Any:
    """A read-only attribute of the wrapper that reads the core's (sync twin's) attribute."""
    return property(lambda self: getattr(self._core, name), doc=doc)


class _AsyncPublisherCore(_pub.Publisher):
    """The sync publisher's batching, window and accounting over a socket owned by a
    zmq.asyncio socket, with event-loop timers instead of the flusher thread. Internal:
    :class:`Publisher` wraps it (a sync Publisher's blocking methods must not be reachable on
    the asyncio object, nor its ``close()`` be a coroutine on a ``pybus.Publisher``)."""

    def _new_socket(self, socket_type: int) -> zmq.Socket[Any]:
        # The asyncio socket owns the ZeroMQ socket and closes it; the sync one used on the
        # hot path is a shadow (a shadow never closes the handle when garbage collected, so
        # a handle ZeroMQ reuses for a new socket is never closed by mistake).
        self._asock = zmq.asyncio.Socket(self._ctx, socket_type)
        return zmq.Socket.shadow(self._asock.underlying)

    def _start_flusher(self) -> None:
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._position_timer: asyncio.TimerHandle | None = None

    def _schedule_positions(self) -> None:
        # no flusher thread: a loop timer sends the position frames when due
        due = self._position_due
        if due is None or self._position_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # flushed from outside the loop: close() sends the last ones
            return
        delay = max(0.0, (due - time.monotonic_ns()) / 1e9)
        self._position_timer = loop.call_later(delay, self._position_fire)

    def _position_fire(self) -> None:
        self._position_timer = None
        if self._closed:
            return
        self._unless_busy(self._position_tick_locked)
        self._schedule_positions()  # busy lock, or the next ones

    def _unless_busy(self, locked: Callable[[], object]) -> None:
        """A timer's work: ``locked()`` under the send lock, skipped when another holds it."""
        if self._send_lock.acquire(False):
            try:
                locked()
            finally:
                self._send_lock.release()

    def _on_pending(self) -> None:
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # published from outside the loop: send now
                self._on_ready()
                return
            self._timer = loop.call_later(self._flush_delay_s, self._timer_fire)

    def _on_ready(self) -> None:
        if self._send_lock.acquire(False):
            try:
                self._flush_locked()
            finally:
                self._send_lock.release()
            if self._window_blocked:
                self._retry_later()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_soon(self._timer_fire)

    def _retry_later(self) -> None:
        """The window held records back: look again when acks may have come."""
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # outside the loop: flush()/close() will send them
                return
            self._timer = loop.call_later(_WINDOW_RETRY_S, self._timer_fire)

    def _timer_fire(self) -> None:
        self._timer = None
        if self._closed or not self._batcher.pending_records:
            return
        self._unless_busy(self._flush_locked)
        if self._batcher.pending_records:  # busy lock, or the window is full
            self._retry_later()

    def _close_socket(self, linger_ms: int) -> None:
        self._asock.close(linger=linger_ms)  # also unregisters it from the event loop

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._position_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._position_timer = None

    async def _await_window(self, deadline: float) -> None:
        """Flush; while the window holds records back, await acks (without blocking the loop)
        until it takes them all or the deadline (monotonic s)."""
        waits = self._window_waits(deadline)
        while True:
            with self._send_lock:  # not across the await: publishes send meanwhile
                wait_ms = next(waits, None)
            if wait_ms is None:
                return
            await self._asock.poll(wait_ms)  # POLLIN (poll's default): an ack to read


class Publisher:
    """:class:`pybus.Publisher` for asyncio: ``publish`` is the same one C call;
    ``await flush()``, ``await wait_for_subscribers()``, ``await close()``, ``async with``.
    Takes the same arguments.

    In reliable mode what the window holds back stays in the ring and a loop timer sends it
    as acks arrive, so ``publish`` does not wait while the ring has room; ``await flush()``
    waits for the window without blocking the loop. A publish that finds the ring full
    applies ``on_full`` in the calling thread (``"block"`` blocks the loop up to
    ``block_timeout_s``; ``"drop"`` or ``"raise"`` suit an event loop better).

    Not a subclass of :class:`pybus.Publisher` (its waiting methods are coroutines here): it
    wraps the same core, and reports its counters through it.
    """

    def __init__(self, endpoint: str | Sequence[str], connect: bool = False,
                 **kwargs: Any) -> None:
        self._core = _AsyncPublisherCore(endpoint, connect, **kwargs)
        # the batcher's C method itself, as on the sync publisher: one call per message
        self.publish = self._core.publish

    endpoints = _core_attr("endpoints")
    history_endpoint = _core_attr("history_endpoint")
    publisher_id = _core_attr("publisher_id")
    delivery = _core_attr("delivery")
    window_bytes = _core_attr("window_bytes")
    sndhwm = _core_attr("sndhwm")
    max_message_bytes = _core_attr("max_message_bytes")
    subscriber_count = _core_attr("subscriber_count", "See pybus.Publisher.subscriber_count.")
    closed = _core_attr("closed")
    io_path = _core_attr("io_path", "See pybus.Publisher.io_path.")

    def stats(self) -> dict[str, Any]:
        """See :meth:`pybus.Publisher.stats`."""
        return self._core.stats()

    async def flush(self, timeout: float | None = 1.0) -> None:
        """Hand everything pending to ZeroMQ; in reliable mode, await the window for up to
        ``timeout`` seconds (then :class:`~pybus.BackpressureError`)."""
        core = self._core
        if core.closed:
            raise ClosedError("flush() on a closed Publisher")
        await core._await_window(time.monotonic() + (1e9 if timeout is None else timeout))
        if core._window_blocked:
            raise BackpressureError(
                f"flush(): the slowest subscriber's window still held "
                f"{core._batcher.pending_records} messages back after {timeout}s"
            )

    async def wait_for_subscribers(self, n: int = 1, timeout: float = 5.0) -> int:
        """Wait (without blocking the loop) until ``n`` pybus Subscribers are subscribed.

        Raises
        ------
        TimeoutError
            Fewer than ``n`` after ``timeout`` seconds.
        """
        waits = self._core._subscriber_waits(n, timeout, _WAIT_SLICE_S)
        try:
            while True:
                await self._core._asock.poll(timeout=next(waits))  # a subscription message
        except StopIteration as done:
            return int(done.value)

    async def close(self, linger: float | None = None, *, linger_ms: int | None = None) -> None:
        """Send what is pending and close (bounded by ``linger_ms``, as the sync close;
        ``linger`` in seconds is its deprecated name)."""
        core = self._core
        linger_ms = close_linger_ms(linger, linger_ms, core._close_linger_ms)
        if not core.closed and core._flow is not None:
            # what the window holds back, without blocking the loop (as sync close does)
            await core._await_window(time.monotonic() + core._block_timeout)
        core._cancel_timers()
        core.close(linger_ms=linger_ms)
        self.publish = core.publish  # now the one that raises ClosedError

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __enter__(self) -> Publisher:
        raise TypeError("use 'async with' with pybus.aio.Publisher")

    def __exit__(self, *exc: object) -> None:  # pragma: no cover
        pass

    def __repr__(self) -> str:
        return repr(self._core).replace("<pybus.Publisher", "<pybus.aio.Publisher", 1)


class _AsyncCore(_sub.Subscriber):
    """The sync subscriber's bookkeeping over a socket owned by a zmq.asyncio socket."""

    def _new_socket(self, socket_type: int) -> zmq.Socket[Any]:
        self._asock = zmq.asyncio.Socket(self._ctx, socket_type)
        return zmq.Socket.shadow(self._asock.underlying)

    def _close_socket(self) -> None:
        self._asock.close(linger=0)  # also unregisters it from the event loop


class Subscriber:
    """:class:`pybus.Subscriber` for asyncio: ``await recv()``, ``await recv_batch()``,
    ``async for msg in sub``, ``async with``. Takes the same arguments."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        topics: Sequence[str] | None = None,
        bind: bool = False,
        **kwargs: Any,
    ) -> None:
        self._core = _AsyncCore(endpoints, topics, bind, **kwargs)
        self._asock = self._core._asock

    endpoints = _core_attr("endpoints")
    patterns = _core_attr("patterns", "The subscribed topic patterns.")
    closed = _core_attr("closed")

    def subscribe(self, pattern: str) -> None:
        """See :meth:`pybus.Subscriber.subscribe`."""
        self._core.subscribe(pattern)

    def unsubscribe(self, pattern: str) -> None:
        """See :meth:`pybus.Subscriber.unsubscribe`."""
        self._core.unsubscribe(pattern)

    def stats(self) -> dict[str, Any]:
        """See :meth:`pybus.Subscriber.stats`."""
        return self._core.stats()

    async def fetch_history(self, endpoint: str, timeout: float = 5.0) -> int:
        """See :meth:`pybus.Subscriber.fetch_history` (runs in a worker thread)."""
        return await asyncio.to_thread(self._core.fetch_history, endpoint, timeout)

    async def recv_batch(
        self, max_messages: int = 10_000, timeout: float | None = None
    ) -> list[Message]:
        """Up to ``max_messages`` messages; waits up to ``timeout`` s (None: forever) for the
        first one. Returns an empty list on timeout."""
        if max_messages < 1:
            raise ValidationError(f"max_messages must be >= 1, got {max_messages}")
        return await self._recv_into(max_messages, timeout, 1 << 30)

    async def _recv_into(
        self, max_messages: int, timeout: float | None, max_frames: int
    ) -> list[Message]:
        core = self._core
        core._check_open()
        out = core._take_buffered(max_messages)
        if len(out) == max_messages:
            return out
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with core._lock:
                core._fill(out, max_messages, max_frames)
                if core._snail is not None:
                    core._suicide()  # slow_consumer="close": raises SlowConsumerError
            if out:
                return out
            if deadline is None:
                ms = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                ms = max(1, int(remaining * 1000 + 0.999))
            try:
                await self._asock.poll(timeout=ms)
            except asyncio.CancelledError:
                if core.closed:  # close() from another task cancels the pending poll
                    raise ClosedError("the Subscriber was closed") from None
                raise
            core._check_open()

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message.

        Raises
        ------
        TimeoutError
            Nothing arrived within ``timeout`` seconds.
        """
        core = self._core
        pos = core._pos
        if pos < len(core._buf):
            core._pos = pos + 1
            return core._buf[pos]
        batch = await self._recv_into(8192, timeout, 1)
        if not batch:
            raise TimeoutError(f"no message within {timeout}s on {core.endpoints}")
        return core._install(batch)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        # one by one through recv()'s buffer: breaking out of the loop loses nothing
        while not self._core.closed:
            try:
                yield await self.recv(None)
            except ClosedError:
                return

    async def close(self) -> None:
        """Close the socket (buffered messages are discarded)."""
        self._core.close()

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
