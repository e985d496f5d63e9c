"""The subscriber: a ZeroMQ XSUB socket, batch decoding in C, per-stream gap detection.

XSUB rather than SUB so that it can acknowledge reliable publishers' marks upstream
(``pybus.pubsub.flow``, docs/wire.md "Flow control"); subscriptions are then messages it sends.

All per-message work is in ``decode_batch`` (C); this module runs once per received frame:
topic filter (cached), ``frame_info`` for the sequence check, decode, and counters.

This module owns the socket and the receive path (``recv``, ``recv_batch``, ``_fill``); the
frames that are not plain data are handled by ``_frames`` (control frames, malformed and
forbidden ones), join snapshots and history by ``_streams`` (mixins of the class), whose
stream books (``_book.StreamBook``: sequences, losses, floors) are a plain object; the
constructor's arguments are checked by ``_options``.
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import zmq

from .. import metrics as _metrics
from .. import tracing
from .._lifecycle import Closeable
from .._native import Histogram, Message, decode_batch, frame_info
from ..errors import ClosedError, FrameError, TimeoutError, ValidationError, from_zmq
from ..metrics.samples import NS, HdrValue, RawSample, ReadyUntilClosed, transport_samples
from ..policy.topics import TopicMatcher, pattern_prefix
from ..transport import sockets as _sockets
from ..transport.channel import SubscriberChannel
from ..transport.iopath import IOPath
from ..wire.typed import SchemaError
from . import _base as base
from ._book import StreamBook
from ._frames import FramesMixin
from ._options import subscriber_options
from ._streams import StreamsMixin
from ._types import PayloadTypes
from .flow import FLOW_TOPIC

__all__ = ["Subscriber", "GapCallback"]

log = logging.getLogger("pybus.subscriber")

#: ``on_gap(topic, publisher_id, expected_seq, got_seq, lost)``
GapCallback = Callable[[str, int, int, int, int], None]

#: Latencies above this (1 hour, in ns) are recorded as this.
_LATENCY_MAX_NS = 3_600_000_000_000
# a data frame read: (topic, topic bytes, publisher id, first seq, publish time ns, messages,
# frame bytes), as SubscriberChannel.recv_batches makes it
Batch = tuple[str, bytes, int, int, int, list[Message], int]
_time_ns = time.time_ns
_SUBSCRIBE = b"\x01"
_UNSUBSCRIBE = b"\x00"
# Longest slice a blocking wait polls the socket before checking whether it was closed.
_POLL_SLICE_MS = 100


class Subscriber(FramesMixin, StreamsMixin, Closeable, IOPath, ReadyUntilClosed):
    """Receive messages published on topics matching some patterns.

    Parameters
    ----------
    endpoints : str or list of str
        Publishers to connect to (or endpoints to bind when ``bind=True``).
    topics : iterable of str
        Topic patterns (``orders.*``, ``audit.#``, ``#`` for everything; see
        :mod:`pybus.policy.topics`). Default: every topic.
    bind : bool
        Bind the endpoints (publishers connect) instead of connecting.
    rcvhwm : int, optional
        ZeroMQ receive high-water mark in frames (default:
        ``max(16, window_bytes // max_batch_bytes)``, 512 with the defaults, so the queue
        stays near that bound in bytes).
    max_message_bytes : int
        The largest message this subscriber accepts; frames larger than one such message
        or one batch (``max_batch_bytes``) are refused by ZeroMQ (``MAXMSGSIZE``, which
        disconnects the peer that sent them).
    max_batch_bytes : int
        The publishers' batch bound (for ``MAXMSGSIZE`` and the default ``rcvhwm``; default
        64 KiB, the publishers' default).
    window_bytes : int
        Bound on the bytes ZeroMQ queues for this subscriber (default 32 MiB, a reliable
        publisher's default window).
    max_queued_bytes : int, optional
        Deprecated alias of ``window_bytes``.
    on_gap : callable, optional
        ``on_gap(topic, publisher_id, expected_seq, got_seq, lost)`` called when a stream
        skips sequence numbers (messages lost, typically at a high-water mark).
    max_streams : int
        Bound on the (publisher, topic) streams tracked for gap detection; the least recently
        started stream is forgotten first.
    log_interval_s : float
        Decode errors are logged at most once per this many seconds.
    context : zmq.Context, optional
        Defaults to ``zmq.Context.instance()``.
    security : pybus.Curve, optional
        CURVE for this socket (usually ``Curve.client``; see :mod:`pybus.transport.security`). A
        ``Curve.server`` with ``permissions`` (typically on a subscriber that binds and that
        publishers connect to) also enforces publish permissions: each received frame's
        sender key (ZeroMQ's ``User-Id``) must be allowed to publish its topic, else the frame
        is dropped and its messages counted (``stats()["dropped"]["forbidden"]``).
    liveness : pybus.Liveness, optional
        Heartbeats, reconnection backoff and peer-event callbacks (default ``Liveness()``).
    slow_consumer : {"drop", "close"}
        What to do when this subscriber falls behind (a sequence gap: messages were dropped
        for it at a high-water mark, or ``max_lag_s`` exceeded): ``"drop"`` counts and goes
        on (``stats()["slow_consumer_events"]``); ``"close"`` closes the subscriber and raises
        :class:`pybus.SlowConsumerError` from ``recv`` ("Suicidal Snail").
    max_lag_s : float, optional
        Lag bound: a batch stamped more than this many seconds before it is received counts
        as falling behind (publisher and subscriber clocks must agree to that precision).
    late_join : bool
        Fetch the publishers' recent history (``history_endpoint``) before live messages; see
        :meth:`fetch_history`.
    history_endpoint : str or list of str, optional
        The publishers' history endpoints (their ``history_endpoint``).
    types : dict of pattern to type, optional
        Decode the payloads of matching topics into a type (a msgspec Struct, dataclass,
        TypedDict or pydantic model; the first matching pattern wins): ``recv`` and
        ``recv_batch`` then return :class:`~pybus.pubsub.TypedMessage` objects for them. A
        payload that does not fit is counted in ``decode_errors`` (reason ``schema``),
        logged at most once per ``log_interval_s``, and skipped.
    type : type, optional
        The type of every topic ``types`` does not name.
    registry : pybus.metrics.Registry or False, optional
        Where this subscriber reports its counters (default: ``pybus.metrics.default_registry``);
        ``False`` reports nowhere and skips the per-frame latency recording.

    Notes
    -----
    Receive from one thread at a time (like a ZeroMQ socket); ``close()`` may come from
    another thread and ends a blocked ``recv`` within 0.1 s. A subscriber that binds attaches
    new publishers only when it is called into (ZeroMQ's rule): a Publisher of the same process
    that waits in ``wait_for_subscribers`` does that for it.

    Examples
    --------
    >>> with pybus.Subscriber("ipc:///tmp/orders", topics=["orders.*"]) as sub:  # doctest: +SKIP
    ...     for msg in sub:
    ...         print(msg.topic, msg.seq, msg.payload)
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        topics: Sequence[str] | None = None,
        bind: bool = False,
        *,
        rcvhwm: int | None = None,
        max_message_bytes: int = base.DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_bytes: int = base.DEFAULT_MAX_BATCH_BYTES,
        window_bytes: int = base.DEFAULT_WINDOW_BYTES,
        max_queued_bytes: int | None = None,
        on_gap: GapCallback | None = None,
        max_streams: int = 65536,
        log_interval_s: float = 10.0,
        context: zmq.Context[Any] | None = None,
        registry: Any = None,
        security: Any = None,
        liveness: Any = None,
        slow_consumer: str = "drop",
        max_lag_s: float | None = None,
        late_join: bool = False,
        history_endpoint: str | Sequence[str] | None = None,
        types: Mapping[str, Any] | None = None,
        type: Any = None,  # noqa: A002 - the documented name; rebound to the builtin below
    ) -> None:
        self._closed = True
        payload_types, type = PayloadTypes(types, type), builtins.type  # noqa: A001
        opts = subscriber_options(
            endpoints, topics, rcvhwm=rcvhwm, max_message_bytes=max_message_bytes,
            max_batch_bytes=max_batch_bytes, window_bytes=window_bytes,
            max_queued_bytes=max_queued_bytes, on_gap=on_gap, max_streams=max_streams,
            slow_consumer=slow_consumer, max_lag_s=max_lag_s, late_join=late_join,
            history_endpoint=history_endpoint,
        )
        self._matcher = TopicMatcher(opts.topics)  # validates every pattern before any socket
        self._choose_receive(payload_types)
        self.max_frame_bytes: int = opts.max_frame_bytes
        self.rcvhwm: int = opts.rcvhwm
        self.id: bytes = os.urandom(8).hex().encode("ascii")
        self._hello = base.HELLO_PREFIX + self.id
        self._on_gap = on_gap
        self._log_interval_s = log_interval_s

        self._ctx = context if context is not None else zmq.Context.instance()
        self._open_socket(opts.endpoints, bind, security, liveness, endpoints)
        sock = self._sock
        self._bind = bind
        self._security = security
        # publish permissions: checked per received frame (see _forbidden)
        self._pub_acl = (security if security is not None and security.is_server
                         and security.has_permissions else None)
        # (user id, topic bytes) -> may publish; bounded (cleared when full)
        self._pub_ok: dict[tuple[str, bytes], bool] = {}
        self._forbidden = 0
        self._forbidden_by_key: dict[str, int] = {}
        self._liveness = liveness
        if security is not None and security.is_server:
            security._register_owner(self)
        self._snail_close = opts.snail_close
        self._max_lag_ns = opts.max_lag_ns
        self._snail: tuple[str, str] | None = None
        self._slow_events: dict[str, int] = {"gap": 0, "lag": 0}
        self._history_received = 0
        # [topic][frame] read straight from libzmq when it can (the batch frame then stays in
        # its buffer), else through pyzmq: publish permissions need each frame's ZAP User-Id,
        # which only pyzmq's Frame reads
        self._chan = SubscriberChannel.open(sock, compiled=self._pub_acl is None)
        self._rcvtimeo_ms = -1
        self._lock = threading.Lock()
        # messages decoded but not yet handed out (recv() takes them one by one)
        self._buf: list[Message] = []
        self._pos = 0
        # topic bytes -> topic str (wanted) or _FILTERED / _INVALID
        self._topics: dict[bytes, Any] = {}
        # every stream's next expected sequence number, and what frames revealed against it
        self._book = StreamBook(max_streams)
        self._decode_errors = 0
        self._decode_errors_by_reason: dict[str, int] = {}
        self._bytes = 0
        self._batches = 0
        self._marks = 0
        # publish-to-receive latency in ns, one record_n per frame (2 significant figures: 1 %
        # precision in ~30 KiB); exported by pybus.metrics as quantiles and buckets
        # (registry=False: no latency recording)
        self._latency: Histogram | None = (
            None if registry is False else Histogram(1, _LATENCY_MAX_NS, 2)
        )
        self._last_log = float("-inf")
        self._unlogged_errors = 0
        self._closed = False
        if bind:
            base._BOUND_SUBSCRIBERS.add(self)
        _metrics.attach(self, registry)
        try:
            for ep in opts.history_endpoints:  # late_join
                self.fetch_history(ep)
        except BaseException:
            self.close()
            raise

    def _open_socket(self, eps: list[str], bind: bool, security: Any, liveness: Any,
                     endpoints: Any) -> None:
        """Create the XSUB socket, subscribe, and bind (or connect); closed again on error."""
        sock = self._sock = self._new_socket(zmq.XSUB)
        self.endpoints: list[str] = []
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
            self._watch = _sockets.configure(sock, security=security, liveness=liveness,
                                             context=self._ctx, receives_stream=True)
            for p in self._matcher.patterns:
                sock.send(_SUBSCRIBE + self._matcher._compiled[p].prefix)
            # after the topics, the flow topic then the hello (byte order): see docs/wire.md
            sock.send(_SUBSCRIBE + FLOW_TOPIC)
            sock.send(_SUBSCRIBE + self._hello)
            for ep in eps:
                if bind:
                    sock.bind(ep)
                    self.endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
                else:
                    sock.connect(ep)
                    self.endpoints.append(ep)
        except zmq.ZMQError as exc:
            self._close_socket()
            raise from_zmq(
                exc, f"Subscriber({'bind' if bind else 'connect'} {endpoints!r})"
            ) from exc
        except BaseException:  # e.g. a bad security= or liveness= argument
            self._close_socket()
            raise

    def subscribe(self, pattern: str) -> None:
        """Also receive topics matching ``pattern`` (takes effect at the publishers shortly)."""
        self._check_open()
        with self._lock:
            prefix = self._matcher.add(pattern)
            self._sock.send(_SUBSCRIBE + prefix)
            self._topics.clear()
            self._book.stop_joining()  # streams of the new pattern that moved are not losses

    def unsubscribe(self, pattern: str) -> None:
        """Stop receiving topics matching ``pattern`` (one :meth:`subscribe` is undone).

        Messages already buffered are still delivered when they match a remaining pattern;
        those that do not are dropped from the local buffer too.
        """
        self._check_open()
        with self._lock:
            prefix = self._matcher.remove(pattern)
            self._sock.send(_UNSUBSCRIBE + prefix)
            self._topics.clear()
            if self._pos < len(self._buf):
                keep = [m for m in self._buf[self._pos :] if self._matcher.matches(m.topic)]
                self._buf, self._pos = keep, 0

    @property
    def patterns(self) -> list[str]:
        """The subscribed topic patterns."""
        return self._matcher.patterns

    def connect(self, endpoint: str) -> None:
        """Connect to one more publisher."""
        self._check_open()
        with self._lock:
            try:
                self._sock.connect(endpoint)
            except zmq.ZMQError as exc:
                raise from_zmq(exc, f"Subscriber.connect({endpoint!r})") from exc
            self.endpoints.append(endpoint)

    # -- receiving ----------------------------------------------------------------------------

    def _choose_receive(self, payload_types: PayloadTypes) -> None:
        """Chosen once: untyped, untraced subscribers keep the plain receive path."""
        if payload_types:
            self._types = payload_types
            self.recv = self._recv_typed  # type: ignore[method-assign]
            self.recv_batch = self._recv_batch_typed  # type: ignore[method-assign]
        if tracing.active():  # a receive span per message handed out
            self.recv, self.recv_batch = tracing.traced_receive(  # type: ignore[method-assign]
                self.recv, self.recv_batch)

    def recv(self, timeout: float | None = None) -> Message:
        """The next message; waits up to ``timeout`` seconds (None: forever).

        Raises
        ------
        TimeoutError
            Nothing arrived in time.
        ClosedError
            The subscriber is closed.
        """
        pos = self._pos
        buf = self._buf
        if pos < len(buf):
            self._pos = pos + 1
            return buf[pos]
        # one frame at most: at low rates this spares a failed non-blocking receive (an
        # exception in pyzmq, ~5 us) per message; at high rates a frame holds many messages
        batch = self._recv_into([], 8192, timeout, 1)
        if not batch:
            raise TimeoutError(f"no message within {timeout}s on {self.endpoints}")
        return self._install(batch)

    def recv_batch(self, max_messages: int = 10_000, timeout: float | None = None) -> list[Message]:
        """Up to ``max_messages`` messages: what is buffered plus what arrived, without
        waiting once one is there; waits up to ``timeout`` seconds (None: forever) for the
        first. Returns an empty list on timeout."""
        if max_messages < 1:
            raise ValidationError(f"max_messages must be >= 1, got {max_messages}")
        self._check_open()
        out = self._take_buffered(max_messages)
        if len(out) == max_messages:
            return out
        return self._recv_into(out, max_messages, timeout, 1 << 30)

    # -- typed payloads (types= / type=) ------------------------------------------------
    def _typed(self, msgs: list[Message]) -> list[Any]:
        """``msgs`` with payloads decoded into their topics' types; one that does not fit is
        counted (decode_errors, reason ``schema``), logged at most once per interval, and
        skipped."""
        decode = self._types.decode
        out = []
        for m in msgs:
            try:
                out.append(decode(m))
            except SchemaError as exc:
                self._decode_error(f"schema: {exc}", m.topic.encode())
        return out

    def _recv_batch_typed(self, max_messages: int = 10_000,
                          timeout: float | None = None) -> list[Any]:
        return self._typed(Subscriber.recv_batch(self, max_messages, timeout))

    def _recv_typed(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            got = self._typed([Subscriber.recv(self, left)])
            if got:
                return got[0]

    def _recv_into(
        self, out: list[Message], max_messages: int, timeout: float | None, max_frames: int
    ) -> list[Message]:
        self._check_open()
        with self._lock:
            if out:  # buffered messages are there: add what arrived, never wait
                self._fill(out, max_messages, max_frames)
                if self._snail is not None:
                    self._suicide()
                return out
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                first = self._recv_first(deadline)
                if first is None:
                    return out
                self._fill(out, max_messages, max_frames, first)
                if self._snail is not None:
                    self._suicide()  # slow_consumer="close": raises SlowConsumerError
                if out:
                    return out

    def _recv_first(self, deadline: float | None) -> Any:
        """The first frame of the next message, waiting in ZeroMQ's own blocking receive
        (RCVTIMEO) rather than a poll: a poll then a receive costs ~15 us more per wake-up
        (measured), which is the whole one-way latency budget over raw pyzmq. Waits in
        slices of at most _POLL_SLICE_MS so a close() from another thread is noticed.
        Returns None at the deadline. The caller holds the lock."""
        recv_pubsub = self._chan.recv_pubsub
        while True:
            if self._closed:
                raise ClosedError("the Subscriber was closed")
            if deadline is None:
                ms = _POLL_SLICE_MS
            else:
                remaining = deadline - time.monotonic()
                ms = 0 if remaining <= 0 else min(_POLL_SLICE_MS, int(remaining * 1000 + 0.999))
            try:
                if ms != self._rcvtimeo_ms:
                    self._sock.setsockopt(zmq.RCVTIMEO, ms)
                    self._rcvtimeo_ms = ms
                got = recv_pubsub(False)  # the whole [topic][frame]; None: timed out
            except zmq.ZMQError as exc:
                if self._closed:
                    raise ClosedError("the Subscriber was closed") from exc
                raise from_zmq(exc, "Subscriber.recv") from exc
            except ClosedError:
                raise ClosedError("the Subscriber was closed") from None
            if got is not None:
                return got
            if ms == 0:
                return None

    def _take_buffered(self, max_messages: int) -> list[Message]:
        pos = self._pos
        buf = self._buf
        if pos < len(buf):
            out = buf[pos : pos + max_messages]
            self._pos = pos + len(out)
            return out
        return []

    def _install(self, batch: list[Message]) -> Message:
        """recv()'s slow path: keep batch (and leftovers of an oversized frame) buffered."""
        if self._pos < len(self._buf):
            batch += self._buf[self._pos :]
        self._buf = batch
        self._pos = 1
        return batch[0]

    def _fill(
        self,
        out: list[Message],
        max_messages: int,
        max_frames: int = 1 << 30,
        first_frame: Any = None,
    ) -> None:
        """Receive frames already queued, without blocking, until out has max_messages
        (or max_frames frames were read)."""
        topics = self._topics
        pub_acl = self._pub_acl
        recv_pubsub = self._chan.recv_pubsub
        # the common case in one call (the channel's recv_batches: receives and decoding), this
        # loop for the rest, frame by frame; without publish permissions, history floors or a
        # lag bound to check per frame
        fill = pub_acl is None and not self._book.floors and not self._max_lag_ns
        while len(out) < max_messages and max_frames > 0:
            if fill and first_frame is None:
                frames, first_frame = self._fill_batches(out, max_messages, max_frames)
                max_frames -= frames
                if first_frame is None:
                    return
            max_frames -= 1
            if first_frame is not None:
                got, first_frame = first_frame, None
            else:
                got = recv_pubsub(True)
                if got is None:
                    return
            topic_b, frame, parts = got
            if frame is None:
                self._bad_parts(parts, topic_b)
                continue
            topic = topics.get(topic_b)
            if topic is None:
                topic = self._classify(topic_b)
            if topic.__class__ is not str:
                self._control(topic, topic_b, frame)
                continue
            if pub_acl is not None and self._forbidden_frame(topic_b, frame):
                continue  # publish permissions: the sender's key may not publish the topic
            try:
                pid, first, count, _ts = frame_info(frame)
                if not count:  # a position frame: no messages, the stream's next seq
                    self._position(topic, topic_b, pid, first)
                    continue
                msgs = decode_batch(topic, frame)
            except FrameError as exc:
                self._decode_error(str(exc), topic_b)
                continue
            if self._book.floors:  # after a history snapshot: drop live duplicates
                kept = self._book.after_floor(pid, topic_b, first, count, msgs)
                if kept is None:
                    continue
                first, count, msgs = kept
            if self._max_lag_ns and _ts and time.time_ns() - _ts > self._max_lag_ns:
                self._slow("lag", f"batch of {topic!r} arrived "
                           f"{(time.time_ns() - _ts) / 1e9:.3f}s after it was sent")
            one = [(topic, topic_b, pid, first, _ts, msgs, len(frame))]
            room = max_messages - len(out)
            if len(msgs) <= room:
                self._take(one, out)
            else:
                self._take(one, [])
                out += msgs[:room]
                self._keep_rest(msgs[room:])
                return

    def _fill_batches(self, out: list[Message], max_messages: int,
                      max_frames: int) -> tuple[int, Any]:
        """_fill's common case: frames received and decoded by one channel call (compiled on
        the fast path), accounted here; returns (frames read, the recv_pubsub tuple it left to
        _fill or None)."""
        batches: list[Batch] = []
        rest = self._chan.recv_batches(self._topics, batches, max_messages - len(out),
                                       max_frames, decode_batch)
        if batches:
            self._take(batches, out)
        return len(batches), rest

    def _take(self, batches: list[Batch], out: list[Message]) -> None:
        """Data frames were read: account their streams in the book, count them, record their
        latency, and append their messages to ``out``. Once per frame, so kept lean: frames
        of one message each (many topics) pay it per message."""
        for topic, pid, first, lost in self._book.account_frames(batches):
            self._gap(topic, pid, first - lost, first, lost)
        latency = self._latency
        now_ns = _time_ns()  # one read for all: every frame here was already queued
        nbytes = 0
        for _topic, _topic_b, _pid, _first, ts_ns, msgs, frame_bytes in batches:
            if latency is not None:
                # from the frame's first publish time (CLOCK_REALTIME, comparable across
                # processes); clamped: another host's clock may be ahead, a frame very late
                lat = now_ns - ts_ns
                latency.record_n(
                    0 if lat < 0 else (lat if lat < _LATENCY_MAX_NS else _LATENCY_MAX_NS),
                    len(msgs),
                )
            nbytes += frame_bytes
            out += msgs
        self._batches += len(batches)
        self._bytes += nbytes

    def _keep_rest(self, rest: list[Message]) -> None:
        """What did not fit in out waits in the buffer (reached only when the buffer was
        empty: see recv_batch)."""
        if self._pos < len(self._buf):
            rest = self._buf[self._pos :] + rest
        self._buf = rest
        self._pos = 0

    def _suicide(self) -> None:
        """slow_consumer="close": close and raise (caller holds the lock)."""
        assert self._snail is not None
        kind, detail = self._snail
        st = self._stats_locked()
        self._closed = True
        base._BOUND_SUBSCRIBERS.discard(self)
        self._close_socket()
        self._buf, self._pos = [], 0
        log.error("pybus Subscriber closed itself as a slow consumer: %s", detail)
        raise _sockets.SlowConsumerError(
            f"subscriber fell behind and closed itself (slow_consumer='close'): {detail}; "
            f"read faster, raise max_queued_bytes/rcvhwm, or use slow_consumer='drop'",
            kind, st,
        )


    def _security_rekick(self) -> None:
        """After a revocation: drop every connection so peers authenticate again."""
        base.security_rekick(self, self._lock, binds=self._bind)

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until the subscriber is closed."""
        # one by one through recv()'s buffer: breaking out of the loop loses nothing
        recv = self.recv
        while not self._closed:
            try:
                yield recv(None)
            except ClosedError:
                return

    # -- accounting ---------------------------------------------------------------------------

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "subscriber"

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        for t, n in s["received_by_topic"].items():
            # untracked topics are folded into "<other>" here; report them with the registry's
            yield "pybus_messages_received_total", {"topic": "other" if t == "<other>" else t}, n
        yield "pybus_messages_lost_total", {}, s["lost"]
        for reason, n in s.get("dropped", {}).items():
            yield "pybus_messages_dropped_total", {"reason": reason}, n
        yield "pybus_messages_out_of_order_total", {}, s["out_of_order"]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_queue_depth", {}, s["buffered"]
        yield "pybus_sequence_gaps_total", {}, s["gaps"]
        yield "pybus_received_bytes_total", {}, s["bytes"]
        yield "pybus_batches_received_total", {}, s["batches"]
        if self._latency is not None:
            yield "pybus_end_to_end_latency_seconds", {}, HdrValue(self._latency, NS)
        yield from transport_samples(s, self._security)

    def stats(self) -> dict[str, Any]:
        """Counters: ``received`` and ``lost`` (total and ``*_by_topic``), ``decode_errors``
        (and ``decode_errors_by_reason``), ``out_of_order`` (messages whose sequence number was
        already passed: duplicates or reordering), ``gaps`` (discontinuities detected), ``bytes``
        and ``batches`` (frames received), ``positions`` (position frames received, which
        reveal lost last messages; docs/wire.md), ``streams`` tracked, ``buffered``, ``dropped``
        (messages dropped by reason: ``forbidden`` = their publisher's key may not publish
        that topic, see ``security``) and ``forbidden_by_key`` (Z85 key -> such messages)."""
        with self._lock:
            return self._stats_locked()

    def _stats_locked(self) -> dict[str, Any]:
        return {
            **self._book.stats(),
            "decode_errors": self._decode_errors,
            "decode_errors_by_reason": dict(self._decode_errors_by_reason),
            "bytes": self._bytes,
            "batches": self._batches,
            "marks": self._marks,
            "buffered": len(self._buf) - self._pos,
            "slow_consumer_events": dict(self._slow_events),
            "history_received": self._history_received,
            "peer_events": dict(self._watch.events) if self._watch is not None else {},
            "dropped": {"forbidden": self._forbidden},
            "forbidden_by_key": dict(self._forbidden_by_key),
            }

    # -- lifecycle ----------------------------------------------------------------------------

    def _poke(self) -> None:
        """Let ZeroMQ attach new peers of a bound socket (called by Publishers that wait)."""
        if self._lock.acquire(False):
            try:
                if not self._closed:
                    self._sock.getsockopt(zmq.EVENTS)
            finally:
                self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the Subscriber is closed")

    def drain(self, max_messages: int = 1_000_000) -> list[Any]:
        """The graceful end of a subscriber: stop taking messages (its subscriptions are
        withdrawn upstream, so publishers stop sending), return every message that had
        arrived and was not read yet (at most ``max_messages``; typed when ``types`` says
        so), and close. Nothing that arrived is discarded unseen; what a publisher sends
        after it has seen the unsubscription is not received."""
        if self._closed:
            return []
        with self._lock:
            for pattern in self._matcher.patterns:  # the buffer keeps what it holds
                try:
                    self._sock.send(_UNSUBSCRIBE + pattern_prefix(pattern), zmq.NOBLOCK)
                except zmq.ZMQError:
                    break  # upstream gone: closing withdraws them anyway
        out: list[Any] = []
        while len(out) < max_messages:
            batch = self.recv_batch(min(10_000, max_messages - len(out)), timeout=0)
            if not batch:
                break
            out += batch
        self.close()
        return out

    def close(self) -> None:
        """Close the socket (buffered messages are discarded). Idempotent."""
        if self._closed:
            return
        self._closed = True
        base._BOUND_SUBSCRIBERS.discard(self)
        with self._lock:  # a blocked recv notices _closed within one poll slice
            self._close_socket()
            self._buf = []
            self._pos = 0

    def _new_socket(self, socket_type: int) -> zmq.Socket[Any]:
        return cast("zmq.Socket[Any]", self._ctx.socket(socket_type))

    def _close_socket(self) -> None:
        self._sock.close(linger=0)

    @property
    def closed(self) -> bool:
        return self._closed

    def _current_io_path(self) -> str:
        # (IOPath.io_path) A subscriber enforcing publish permissions reads through pyzmq.
        return self._chan.io_path

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None and not sock.closed:
            self._close_socket()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pybus.Subscriber {state} {self.endpoints} topics={self.patterns}>"
