"""The core of :func:`pybus.jetstream.replay` and :func:`~pybus.jetstream.areplay`: a pull
consumer on the stream, its messages as pybus ``Message``s in stream order, the end of a
replay, and a durable consumer's acknowledged progress. asyncio only; the sync replay runs it
on a private loop, the async one on the caller's.

Progress of a durable consumer (acknowledge-all): a message handed out is acknowledged when
the next one is asked for, or when the replay is closed normally; a replay that ends with an
error leaves the last message handed out unacknowledged, so it comes again. On resume, a
durable consumer that delivered more than it had acknowledged is re-created at the first
unacknowledged message (rather than waiting ``ack_wait`` for the server to redeliver them,
out of order with newer ones): one reader per durable name.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._native import Message
from ..errors import BusError, ValidationError
from ..errors import TimeoutError as BusTimeoutError
from ..policy.topics import TopicMatcher
from ._log_codec import covering_filter, from_nats
from ._servers import connect
from .subjects import filters_for_pattern

log = logging.getLogger("pybus.jetstream.replay")

# how long an abandoned ephemeral consumer outlives its reader on the server
_EPHEMERAL_INACTIVE_S = 60.0
_API_TIMEOUT_S = 5.0


def check_args(from_seq: int | None, since: datetime.datetime | None,
               durable: str | None, batch_messages: int) -> None:
    if from_seq is not None and since is not None:
        raise ValidationError("give from_seq or since, not both")
    if from_seq is not None and from_seq < 1:
        raise ValidationError(f"from_seq counts from 1, got {from_seq}")
    if since is not None and (not isinstance(since, datetime.datetime) or since.tzinfo is None):
        raise ValidationError("since must be a timezone-aware datetime "
                              "(datetime.now(timezone.utc) - timedelta(...))")
    if durable is not None and (not durable or any(c in durable for c in " .*>\t")):
        raise ValidationError(f"durable name {durable!r} must be non-empty, without spaces, "
                              f"'.', '*' or '>'")
    if batch_messages < 1:
        raise ValidationError("batch_messages must be >= 1")


class ReaderCore:
    """One replay's consumer (see the module docstring). ``take()`` hands out one message."""

    def __init__(self, servers: list[str], stream: str, pattern: str, *,
                 from_seq: int | None, since: datetime.datetime | None, follow: bool,
                 durable: str | None, subject_prefix: str, batch_messages: int) -> None:
        check_args(from_seq, since, durable, batch_messages)
        self.servers = servers
        self.stream = stream
        self.pattern = pattern
        self.prefix = subject_prefix
        filters = filters_for_pattern(pattern, subject_prefix)  # TopicError before any I/O
        self.filter = covering_filter(filters)
        self.exact = len(filters) == 1
        self.matcher = TopicMatcher([pattern])
        self.from_seq = from_seq
        self.since = since
        self.follow = follow
        self.durable = durable
        self.batch = batch_messages
        self.nc: Any = None
        self.sub: Any = None
        self.consumer = ""
        self.end_seq = 0  # non-follow: the stream's last sequence when the replay began
        self.seen_seq = 0  # the stream sequence of the last message received
        self.ended = False
        self.buffer: deque[tuple[Message | None, int, Any]] = deque()
        self.last: Any = None  # the NATS message handed out last, and the one before
        self.prev: Any = None
        self.last_publisher_seq = 0
        self.topics: dict[str, str] = {}  # subject -> topic

    # -- opening -----------------------------------------------------------------------------

    @contextmanager
    def _answered(self, what: str) -> Iterator[None]:
        """nats-py's timeout on a JetStream API request (its own class, or asyncio's) becomes
        :class:`pybus.TimeoutError`, which says which request went unanswered."""
        try:
            yield
        except BusTimeoutError:
            raise
        except TimeoutError:
            raise BusTimeoutError(
                f"the NATS server at {self.servers} did not answer {what} (stream "
                f"{self.stream!r}) within {_API_TIMEOUT_S} s") from None

    async def open(self) -> None:
        with self._answered("while the replay opened its consumer"):
            await self._open()

    async def _open(self) -> None:
        from nats.js.errors import NotFoundError

        self.nc = await connect(self.servers, "pybus-replay", error_cb=self._on_error)
        js = self.nc.jetstream(timeout=_API_TIMEOUT_S)
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            raise BusError(f"no JetStream stream named {self.stream!r} on {self.servers}") \
                from None
        self.end_seq = info.state.last_seq
        if self.durable is not None:
            self.consumer = await self._durable_consumer(js)
        else:
            ci = await js.add_consumer(self.stream, self._config(None))
            self.consumer = ci.name
        self.sub = await js.pull_subscribe_bind(consumer=self.consumer, stream=self.stream)
        if not self.follow:
            # where the consumer starts: its delivered position (a new one: its start - 1)
            ci = await js.consumer_info(self.stream, self.consumer)
            self.seen_seq = ci.delivered.stream_seq if ci.delivered else 0
            if self.end_seq == 0 or not await self._more_before_end():
                self.ended = True

    async def _on_error(self, exc: Exception) -> None:
        log.debug("replay of %r: %s", self.stream, exc)

    def _config(self, start_seq: int | None) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        cfg = ConsumerConfig(filter_subject=self.filter)
        if start_seq is not None or self.from_seq is not None:
            cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = start_seq if start_seq is not None else self.from_seq
        elif self.since is not None:
            cfg.deliver_policy = DeliverPolicy.BY_START_TIME
            cfg.opt_start_time = self.since.astimezone(datetime.UTC)
        else:
            cfg.deliver_policy = DeliverPolicy.ALL
        if self.durable is None:
            cfg.ack_policy = AckPolicy.NONE
            cfg.inactive_threshold = _EPHEMERAL_INACTIVE_S
        else:
            cfg.durable_name = self.durable
            cfg.ack_policy = AckPolicy.ALL
            cfg.max_ack_pending = -1  # progress is acknowledged per fetch, not per message
        return cfg

    async def _durable_consumer(self, js: Any) -> str:
        """The durable consumer, created on first use; on resume, positioned at the first
        message it did not acknowledge."""
        from nats.js.errors import NotFoundError

        assert self.durable is not None
        try:
            ci = await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            await js.add_consumer(self.stream, self._config(None))
            return self.durable
        if ci.config.filter_subject != self.filter:
            raise ValidationError(
                f"durable consumer {self.durable!r} of stream {self.stream!r} replays "
                f"{ci.config.filter_subject!r}, not {self.filter!r} (pattern {self.pattern!r}); "
                f"use another name, or the same pattern")
        acked = ci.ack_floor.stream_seq if ci.ack_floor else 0
        delivered = ci.delivered.stream_seq if ci.delivered else 0
        if delivered > acked:  # handed out, not acknowledged: start again at the first one
            await js.delete_consumer(self.stream, self.durable)
            start = acked + 1 if acked else None
            if start is None:  # nothing acknowledged: from the original start
                await js.add_consumer(self.stream, ci.config)
            else:
                await js.add_consumer(self.stream, self._config(start))
        return self.durable

    # -- reading -----------------------------------------------------------------------------

    async def fill(self, timeout: float) -> None:
        """Fetch the next messages into the buffer, waiting up to ``timeout`` seconds (follow
        mode) for the first; sets ``ended`` at the end of a non-follow replay."""
        if self.ended or self.buffer:
            return
        await self._ack(self.last)  # the reader asked for the next: the last one is done
        try:
            msgs = await self.sub.fetch(self.batch, timeout=max(timeout, 0.05))
        except TimeoutError:
            # nats-py raises its own TimeoutError or, when the server's "no messages" answer
            # comes as the wait ends, the bare builtin one: both mean nothing came
            msgs = []
        if not msgs and not self.follow:
            if not await self._more_before_end():
                self.ended = True
            return
        for m in msgs:
            seq = m.metadata.sequence.stream
            if not self.follow and seq > self.end_seq:
                self.ended = True
                break
            self._add(m, seq)
            self.seen_seq = seq
            if not self.follow and seq >= self.end_seq:
                self.ended = True
                break

    async def _more_before_end(self) -> bool:
        """Whether the stream holds a message for this replay after the last one received and
        up to the end: asked of the stream itself (the first message at or after a sequence
        on the filter), not of the consumer's pending count, which a clustered stream that
        just changed leader can report as 0 too early."""
        from nats.js.errors import NotFoundError

        js = self.nc.jetstream(timeout=_API_TIMEOUT_S)
        try:
            with self._answered("a lookup of the replay's next message"):
                m = await js.get_msg(self.stream, seq=self.seen_seq + 1, subject=self.filter,
                                     next=True)
        except NotFoundError:
            return False
        return bool(m.seq <= self.end_seq)

    def _add(self, m: Any, seq: int) -> None:
        subject = m.subject
        topic = self.topics.get(subject) or self._topic_of(subject)
        if not self.exact and not self.matcher.matches(topic):
            self.buffer.append((None, 0, m))  # outside the pattern: acknowledged, not shown
            return
        msg, pseq = from_nats(subject, m.data, m.headers, seq, self.prefix, topic)
        self.buffer.append((msg, pseq, m))

    def _topic_of(self, subject: str) -> str:
        from .subjects import topic_for_subject

        topic = topic_for_subject(subject, self.prefix)
        if len(self.topics) < 65536:
            self.topics[subject] = topic
        return topic

    def take(self) -> Message | None:
        """The next buffered message (None when the buffer is empty)."""
        while self.buffer:
            msg, pseq, m = self.buffer.popleft()
            self.prev, self.last = self.last, m
            if msg is not None:
                self.last_publisher_seq = pseq
                return msg
        return None

    def step(self, deadline: float | None, slice_s: float, timeout: float | None
             ) -> tuple[Message | None, float]:
        """What a ``recv`` does next, for both twins: ``(message, 0)`` when one is ready,
        ``(None, 0)`` at the end of the replay, ``(None, wait_s)`` to fill for that long.
        Raises :class:`pybus.TimeoutError` past ``deadline`` (monotonic s)."""
        msg = self.take()
        if msg is not None or self.ended:
            return msg, 0.0
        wait = slice_s
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise BusTimeoutError(f"no message within {timeout} s")
        return None, wait

    async def _ack(self, m: Any) -> None:
        if m is None or self.durable is None or m.is_acked:
            return
        await m.ack()

    async def close(self, clean: bool) -> None:
        """Acknowledge the progress (``clean``: the last message handed out too), remove an
        ephemeral consumer, close the connection."""
        nc, self.nc = self.nc, None
        if nc is None:
            return
        try:
            if nc.is_connected:
                await self._ack(self.last if clean else self.prev)
                if self.durable is None and self.consumer:
                    js = nc.jetstream(timeout=_API_TIMEOUT_S)
                    await js.delete_consumer(self.stream, self.consumer)
                await nc.flush(timeout=_API_TIMEOUT_S)
        except Exception as exc:  # best effort: an ephemeral consumer expires on its own
            log.debug("replay of %r: closing: %s", self.stream, exc)
        finally:
            await asyncio.wait_for(nc.close(), _API_TIMEOUT_S)
