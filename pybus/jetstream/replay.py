"""Replay a JetStream stream (written by :class:`pybus.jetstream.Recorder`) as pybus
``Message``s, in stream order, from a sequence number or a time, to the end or live
(docs/scale-out.md, "Replaying a stream").

Each ``Message`` has the topic, the payload and headers exactly as published, the publisher's
``publisher_id`` and ``timestamp_ns``, and as ``seq`` the *stream's* sequence number (the
publisher's is ``Replay.last_publisher_seq`` after the message is handed out). A gap marker
comes as a ``Message`` on :data:`GAP_TOPIC` whose payload is a dict: ``topic``,
``publisher_id``, ``first_seq``, ``last_seq``, ``lost``, ``recorder``.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Sequence
from typing import Any

from .._native import Message
from ._log_codec import GAP_TOPIC
from ._log_reader import ReaderCore
from ._runner import LoopThread
from ._servers import parse_servers

__all__ = ["replay", "areplay", "Replay", "AsyncReplay", "GAP_TOPIC"]

# a blocked sync read wakes up this often to notice close() from another thread
_SLICE_S = 0.25
_OPEN_TIMEOUT_S = 15.0
#: longest a fill may take beyond its own wait before the server counts as unreachable
_FILL_BOUND_S = 10.0


def _core(servers: str | Sequence[str], stream: str, pattern: str, from_seq: int | None,
          since: datetime.datetime | None, follow: bool, durable: str | None,
          subject_prefix: str, batch_messages: int) -> ReaderCore:
    return ReaderCore(parse_servers(servers), stream, pattern, from_seq=from_seq, since=since,
                      follow=follow, durable=durable, subject_prefix=subject_prefix,
                      batch_messages=batch_messages)


class Replay:
    """The iterator :func:`replay` returns: ``for msg in replay``, :meth:`recv` with a
    timeout, :meth:`close` (also from another thread; a ``with`` block closes it)."""

    def __init__(self, core: ReaderCore) -> None:
        self._core = core
        self._closed = False
        self._lock = threading.Lock()  # one reader at a time; close() waits for it
        self._loop = LoopThread("pybus-replay")
        try:
            self._loop.run(core.open(), _OPEN_TIMEOUT_S)
        except BaseException:
            self._shutdown(clean=False)
            raise

    @property
    def last_publisher_seq(self) -> int:
        """The publisher's sequence number of the message handed out last (0 for a gap
        marker or a message no recorder wrote)."""
        return self._core.last_publisher_seq

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to ``timeout`` seconds (None: as long as it takes);
        None at the end of a replay without ``follow`` (or once closed).

        Raises :class:`pybus.TimeoutError` when nothing came in time (follow mode)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        with self._lock:
            while not self._closed:
                msg, wait = core.step(deadline, _SLICE_S, timeout)
                if msg is not None:
                    return msg
                if not wait:  # the end of the replay
                    self._shutdown(clean=True)
                    return None
                # a fill is one fetch (<= wait) and at most one stream lookup (<= 5 s); the
                # bound only catches a server that is gone
                try:
                    self._loop.run(core.fill(wait), wait + _FILL_BOUND_S)
                except BaseException:
                    self._shutdown(clean=False)  # the replay is over: release its connection
                    raise
            return None

    def __iter__(self) -> Replay:
        return self

    def __next__(self) -> Message:
        msg = self.recv()
        if msg is None:
            raise StopIteration
        return msg

    def close(self) -> None:
        """End the replay: a durable consumer's progress is acknowledged up to the last
        message handed out. Idempotent; from another thread, it waits for a blocked read to
        wake (at most a quarter second)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._shutdown(clean=True)

    def _shutdown(self, clean: bool) -> None:
        self._closed = True
        if self._loop._closed:
            return
        try:
            self._loop.run(self._core.close(clean), 10.0)
        finally:
            self._loop.close()

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        # left with an error: the message being handled is not acknowledged (comes again)
        self._closed = True
        with self._lock:
            self._shutdown(clean=False)

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop._closed:
            # dropped without close(): release the connection; no progress is acknowledged
            # past the message before the last one
            self._closed = True
            try:
                self._shutdown(clean=False)
            except Exception:  # interpreter shutdown: nothing left to do
                pass


def replay(servers: str | Sequence[str], stream: str, pattern: str = "#", *,
           from_seq: int | None = None, since: datetime.datetime | None = None,
           follow: bool = False, durable: str | None = None, subject_prefix: str = "",
           batch_messages: int = 256) -> Replay:
    """The messages of ``stream`` whose topic matches ``pattern``, in stream order (so each
    topic's in the order they were stored), as pybus ``Message``s.

    Parameters
    ----------
    servers : str or list of str
        NATS server URLs.
    stream : str
        The stream (see :class:`pybus.jetstream.Recorder`).
    pattern : str
        A pybus pattern (``orders.*``, ``orders.#``, ``#``).
    from_seq : int, optional
        Start at this stream sequence number (1: the beginning).
    since : datetime, optional
        Start at the first message stored at or after this (timezone-aware) time.
    follow : bool
        Keep waiting for new messages (until :meth:`Replay.close`); without it the replay
        ends at the stream's last message as of its start.
    durable : str, optional
        A durable consumer name: the server keeps its progress, and a later replay with the
        same name resumes after the last message acknowledged (see :class:`Replay`). Without
        one, ``from_seq``/``since``/the beginning is where a replay starts.
    subject_prefix : str
        The recorder's ``subject_prefix``.
    batch_messages : int
        Messages fetched from the server at a time.

    A durable consumer acknowledges a message when the next one is asked for, or when the
    replay is closed (``close()``, the end of the stream, a ``with`` block left normally); a
    ``with`` block left by an exception, or a replay dropped without ``close()``, leaves the
    last message handed out unacknowledged: it comes again on resume.
    """
    return Replay(_core(servers, stream, pattern, from_seq, since, follow, durable,
                        subject_prefix, batch_messages))


class AsyncReplay:
    """The async iterator :func:`areplay` returns (``async for``, ``await recv(timeout)``,
    ``await aclose()``, ``async with``). Same rules as :class:`Replay`."""

    def __init__(self, core: ReaderCore) -> None:
        self._core = core
        self._opened = False
        self._closed = False

    @property
    def last_publisher_seq(self) -> int:
        return self._core.last_publisher_seq

    async def _open(self) -> None:
        if not self._opened:
            self._opened = True
            try:
                await self._core.open()
            except BaseException:
                self._closed = True
                await self._core.close(False)
                raise

    async def recv(self, timeout: float | None = None) -> Message | None:
        """As :meth:`Replay.recv`."""
        if self._closed:
            return None
        await self._open()
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        while not self._closed:
            msg, wait = core.step(deadline, 1.0, timeout)
            if msg is not None:
                return msg
            if not wait:  # the end of the replay
                await self.aclose()
                return None
            await core.fill(wait)
        return None

    def __aiter__(self) -> AsyncReplay:
        return self

    async def __anext__(self) -> Message:
        msg = await self.recv()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def aclose(self, clean: bool = True) -> None:
        if self._closed and not self._opened:
            return
        self._closed = True
        self._opened = False
        await self._core.close(clean)

    async def __aenter__(self) -> AsyncReplay:
        await self._open()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.aclose(clean=exc_type is None)


def areplay(servers: str | Sequence[str], stream: str, pattern: str = "#", *,
            from_seq: int | None = None, since: datetime.datetime | None = None,
            follow: bool = False, durable: str | None = None, subject_prefix: str = "",
            batch_messages: int = 256) -> AsyncReplay:
    """The asyncio twin of :func:`replay` (same arguments, same core); the connection opens
    on first use: ``async for msg in areplay(...)``."""
    return AsyncReplay(_core(servers, stream, pattern, from_seq, since, follow, durable,
                             subject_prefix, batch_messages))

