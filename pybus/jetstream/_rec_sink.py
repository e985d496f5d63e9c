"""The recorder's writer: publishes items into a JetStream stream, in order, with a bounded
number of unacknowledged publishes, and retries what was not acknowledged with the same
``Nats-Msg-Id`` (the stream drops what it already holds). Runs on the recorder's private loop.

Order. Every publish goes out on one connection, which the server reads in order, so the
stream stores items in the order they were sent. When an acknowledgement fails (timeout, lost
connection), nothing new is sent: the items still in flight settle (acknowledged, or their
time runs out), and all that were not acknowledged are sent again, first, in their original
order. The connection does not reconnect on its own (nats-py would then flush its buffer of
unsent publishes before this writer can resend the earlier ones that were lost on the dead
socket); after a failure the writer opens a new connection itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from ..errors import BusError
from ._log_codec import Item, reduce_subjects
from ._servers import connect

log = logging.getLogger("pybus.jetstream.recorder")

_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 1.0
_CONNECT_TIMEOUT_S = 10.0


class _Pending:
    __slots__ = ("item", "fut", "sent", "acked")

    def __init__(self, item: Item, fut: asyncio.Future[Any], sent: float) -> None:
        self.item = item
        self.fut = fut
        self.sent = sent
        self.acked = False  # set (and counted) by the future's callback as the ack arrives


class Sink:
    """See the module docstring. Only ever used from the loop's thread."""

    def __init__(self, servers: list[str], stream: str, subjects: list[str], *, replicas: int,
                 duplicate_window_s: float, max_age_s: float | None, max_in_flight: int,
                 ack_timeout_s: float, name: str) -> None:
        self.servers = servers
        self.stream = stream
        self.subjects = reduce_subjects(subjects)
        self.replicas = replicas
        self.duplicate_window_s = duplicate_window_s
        self.max_age_s = max_age_s
        self.max_in_flight = max_in_flight
        self.ack_timeout_s = ack_timeout_s
        self.name = name
        self.nc: Any = None
        self.js: Any = None
        self.queue: deque[Item] = deque()  # to send, in order (resends first)
        self.inflight: deque[_Pending] = deque()
        self.deadline: float | None = None  # stop(): give up after this (monotonic)
        self.stream_ready = False
        self.counts = {"stored": 0, "duplicates": 0, "gap_markers": 0, "retries": 0,
                       "unstored": 0, "rejected": 0, "reordered": 0, "reconnects": 0,
                       "failures": 0}
        self.last_error = ""
        self.failed = False  # an acknowledgement failed: stop sending, recover
        self.probing = True  # one publish at a time until one is acknowledged
        self.progress = False  # something was acknowledged since the last failure
        self.backoff_s = 0.0
        self.late: dict[str, bool] = {}  # msg ids that may be stored after later ones

    # -- connection --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def _expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    async def _ensure(self) -> bool:
        """Connected, with the stream in place; False once the stop deadline has passed."""
        delay = _BACKOFF_MIN_S
        while not (self.connected and self.stream_ready):
            if self._expired():
                return False
            try:
                if not self.connected:
                    await self._drop_connection()
                    # each server tried twice at most per attempt (nats-py would otherwise
                    # wait for one forever), bounded by the stop deadline
                    limit = _CONNECT_TIMEOUT_S
                    if self.deadline is not None:
                        limit = max(0.01, min(limit, self.deadline - time.monotonic()))
                    self.nc = await asyncio.wait_for(connect(
                        self.servers, self.name, allow_reconnect=False, ping_interval=5,
                        max_outstanding_pings=2, max_reconnect_attempts=1,
                        error_cb=self._on_error, closed_cb=self._on_closed), limit)
                    self.js = self.nc.jetstream(timeout=self.ack_timeout_s,
                                                publish_async_max_pending=self.max_in_flight + 1)
                    self.counts["reconnects"] += 1
                if not self.stream_ready:
                    await self._ensure_stream()
                    self.stream_ready = True
            except BusError:
                raise
            except Exception as exc:  # nats-py raises OSError, its own errors, timeouts
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("recorder %s: NATS not reachable (%s); retrying", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
        return True

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def _on_closed(self) -> None:
        return None

    async def _ensure_stream(self) -> None:
        """Create the stream, or add subjects it lacks to it (replicas, limits: as found)."""
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            await self.js.add_stream(StreamConfig(
                name=self.stream, subjects=self.subjects, storage=StorageType.FILE,
                num_replicas=self.replicas, duplicate_window=self.duplicate_window_s,
                max_age=self.max_age_s))
            return
        have = list(info.config.subjects or [])
        merged = reduce_subjects(have + self.subjects)
        if merged != have:
            info.config.subjects = merged
            await self.js.update_stream(info.config)

    async def _drop_connection(self) -> None:
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception as exc:  # already broken: nothing more to do with it
                log.debug("recorder %s: closing a broken connection: %s", self.name, exc)

    async def close(self) -> None:
        await self._drop_connection()

    # -- writing -----------------------------------------------------------------------------

    async def write(self, items: list[Item]) -> None:
        """Send ``items`` after everything before them; returns once all are sent and the
        window has room (or the stop deadline passed: what is left is counted unstored)."""
        self.queue.extend(items)
        await self._pump(drain=False)

    async def drain(self) -> None:
        """Wait until everything sent is acknowledged (or the stop deadline passed)."""
        await self._pump(drain=True)

    async def _pump(self, drain: bool) -> None:
        while self.queue or (drain and self.inflight):
            if self._expired():
                self._abandon()
                return
            # stop sending at the first failure, or when the connection is gone with
            # publishes in flight (they may be lost): see _recover
            if self.failed or (self.inflight and not self.connected):
                await self._recover()
                continue
            # after (re)connecting, one publish must be acknowledged before the window opens
            # (a stream still recovering refuses some publishes and takes later ones)
            window = 1 if self.probing else self.max_in_flight
            if not self.queue or len(self.inflight) >= window:
                await self._settle_oldest()
                continue
            if not await self._ensure():
                self._abandon()
                return
            item = self.queue[0]
            try:
                fut = await self.js.publish_async(item[0], item[1], headers=dict(item[2]))
            except Exception as exc:  # the connection broke under us
                self.last_error = f"{type(exc).__name__}: {exc}"
                await self._recover()
                continue
            self.queue.popleft()
            p = _Pending(item, fut, time.monotonic())
            fut.add_done_callback(lambda _f, p=p: self._done(p))
            self.inflight.append(p)

    def _done(self, p: _Pending) -> None:
        if p.fut.cancelled():
            return
        if p.fut.exception() is not None:
            self.failed = True
            return
        self._count(p)

    def reap(self) -> None:
        """Forget the acknowledged publishes at the head of the window."""
        inflight = self.inflight
        while inflight and inflight[0].acked:
            inflight.popleft()

    async def _settle_oldest(self) -> None:
        p = self.inflight[0]
        limit = p.sent + self.ack_timeout_s
        if self.deadline is not None:
            limit = min(limit, self.deadline)
        await asyncio.wait([p.fut], timeout=max(0.0, limit - time.monotonic()))
        if p.fut.done():
            self._count(p)
        if p.acked:
            self.reap()
            return
        await self._recover()

    def _count(self, p: _Pending) -> None:
        if p.acked or p.fut.cancelled() or p.fut.exception() is not None:
            return
        p.acked = True
        self.probing = False
        self.progress = True
        ack = p.fut.result()
        late = self.late.pop(p.item[2]["Nats-Msg-Id"], None) if self.late else None
        if late is not None and not ack.duplicate:
            self.counts["reordered"] += 1
            log.warning("recorder %s: a message on %r was stored after later ones of its "
                        "window (it failed, they did not): its topic is out of order there",
                        self.name, p.item[0])
        if ack.duplicate:
            self.counts["duplicates"] += 1
        elif p.item[3]:
            self.counts["gap_markers"] += 1
        else:
            self.counts["stored"] += 1

    async def _recover(self) -> None:
        """An acknowledgement failed: let the others in flight settle, then put every
        unacknowledged item back at the head of the queue, in order."""
        self.counts["failures"] += 1
        self.failed = False
        if not self.progress:  # nothing acknowledged since the last failure: back off
            self.backoff_s = min(max(self.backoff_s * 2, _BACKOFF_MIN_S), _BACKOFF_MAX_S)
            await asyncio.sleep(self.backoff_s)
        else:
            self.backoff_s = 0.0
        self.progress = False
        self.probing = True
        pending = list(self.inflight)
        self.inflight.clear()
        unacked: list[Item] = []
        for p in pending:
            if not p.fut.done() and self.connected:
                limit = p.sent + self.ack_timeout_s
                if self.deadline is not None:
                    limit = min(limit, self.deadline)
                await asyncio.wait([p.fut], timeout=max(0.0, limit - time.monotonic()))
            if p.fut.done():
                self._count(p)  # (the callback may not have run yet)
            if p.acked:
                continue
            if not self._refused(p):
                p.fut.cancel()
                unacked.append(p.item)
        # an unacknowledged item sent before an acknowledged one: if the stream did not
        # have it, storing it now puts it after them (counted "reordered" when it happens)
        acked_after = False
        for p in reversed(pending):
            if p.acked:
                acked_after = True
            elif acked_after and len(self.late) < 65536:
                self.late[p.item[2]["Nats-Msg-Id"]] = True
        self.counts["retries"] += len(unacked)
        self.queue.extendleft(reversed(unacked))
        if not self.connected:
            await self._drop_connection()
        if unacked:
            log.info("recorder %s: %d publishes not acknowledged (%s); sending them again",
                     self.name, len(unacked), self.last_error or "timeout")

    def _refused(self, p: _Pending) -> bool:
        """True when the server refused the item for good (an API error other than a missing
        stream: too large, a limit): counted ``rejected``, logged, not sent again."""
        from nats.js.errors import APIError, NoStreamResponseError

        if not p.fut.done() or p.fut.cancelled():
            return False
        exc = p.fut.exception()
        if isinstance(exc, NoStreamResponseError):
            self.stream_ready = False  # deleted under us: created again before the resend
            return False
        if isinstance(exc, APIError):
            self.counts["rejected"] += 1
            log.error("recorder %s: the server refused a message on %r: %s", self.name,
                      p.item[0], exc)
            return True
        return False

    def _abandon(self) -> None:
        """Past the stop deadline: what was not acknowledged is counted, and forgotten."""
        lost = len(self.queue)
        for p in self.inflight:
            if p.fut.done():
                self._count(p)
            if not p.acked:
                lost += 1
                p.fut.cancel()
        self.inflight.clear()
        self.queue.clear()
        if lost:
            self.counts["unstored"] += lost
            log.error("recorder %s stopped with %d messages not stored in %r (%s)",
                      self.name, lost, self.stream, self.last_error or "no acknowledgement")
