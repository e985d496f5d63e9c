"""The publisher: a compiled batcher in front of a ZeroMQ XPUB socket.

``Publisher.publish`` is the batcher's own C method: one call into compiled code per message
(topic lookup, payload packing, size check, append). The batcher decides when a batch is due
("smart batching", see ``pybus._native.Batcher``) and calls back into this module only once per
batch: to send at once when the bus was idle or a size bound is reached, to arm the flusher
thread when the first record of a batch is pending (so the tail of a burst goes out within
``max_delay_us`` even if nothing else is published), and when the ring is full.

This module owns the socket and the send path (the hooks, the drain into ZeroMQ, flush, close,
stats). The rest of the class comes from mixins of their own modules: ``_flusher`` (the
flusher thread and position timing), ``_window`` (the reliable window, positions, ``on_full``),
``_subscriptions`` (what arrives upstream: subscriptions, hellos, acks, permissions); the
constructor's arguments are checked by ``_options``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast

import zmq

from .. import metrics as _metrics
from .. import tracing
from .._lifecycle import Closeable
from .._native import Batcher, Histogram
from ..errors import BackpressureError, ClosedError, TimeoutError, from_zmq
from ..metrics.samples import HdrValue, RawSample, ReadyUntilClosed, transport_samples
from ..policy.topics import validate_topic
from ..transport import sockets as _sockets
from ..transport.channel import PublisherChannel, pyzmq_method
from ..transport.iopath import IOPath
from ..wire.payload import pack_value
from . import _base as base
from ._flusher import _MAX_TICK_S, FlusherMixin
from ._options import close_linger_ms, publisher_options
from ._subscriptions import SubscriptionsMixin
from ._window import _POSITION_INTERVAL_NS, OnFull, WindowMixin
from .flow import FlowWindow

__all__ = ["Publisher"]

log = logging.getLogger("pybus.publisher")

Delivery = Literal["reliable", "best_effort"]
# While the window is full, a publish looks for acks at most this often (each look reads the
# socket, a few microseconds); meanwhile messages accumulate in the ring, so that many topics
# get many messages per frame (batches grow with back-pressure, like under load).
_WINDOW_RETRY_NS = 50_000
# How often a busy publisher reads the XPUB subscription messages (they queue meanwhile).
_SUB_CHECK_INTERVAL_S = 0.01
# How often wait_for_subscribers looks again while no bound subscriber needs a poke.
_WAIT_SLICE_S = 0.01
_monotonic = time.monotonic
_monotonic_ns = time.monotonic_ns


# the batcher's pack hook for non-bytes payloads: the one payload codec (typed values too)
_pack = pack_value


class Publisher(FlusherMixin, WindowMixin, SubscriptionsMixin, Closeable, IOPath, ReadyUntilClosed):
    """Publish messages on topics to any number of :class:`~pybus.Subscriber`.

    Parameters
    ----------
    endpoint : str or list of str
        ``tcp://HOST:PORT`` (``tcp://127.0.0.1:*`` for a free port), ``ipc://PATH`` or
        ``inproc://NAME`` (same process, same ZeroMQ context). Bound by default.
    connect : bool
        Connect to ``endpoint`` instead of binding (the subscriber binds).
    delivery : {"reliable", "best_effort"}
        ``"reliable"`` (the default): nothing is lost to a pybus Subscriber that is connected
        and reading. The publisher keeps at most ``window_bytes`` (and half its send
        high-water mark in frames) in flight to each subscriber, counted from the
        subscribers' acknowledgements (docs/wire.md, "Flow control"), and waits for the
        slowest live one. ``"best_effort"``: never waits; ZeroMQ drops what exceeds a
        subscriber's high-water mark, and the subscriber counts it as lost.
    window_bytes : int
        Reliable mode: bytes in flight per subscriber at most (default 32 MiB). Both modes:
        the send high-water mark defaults to ``window_bytes // max_batch_bytes`` frames (at
        least 256 in reliable mode, 16 in best effort), so ZeroMQ's queue stays near it.
    slow_consumer_timeout_s : float
        Reliable mode: a subscriber that holds the publisher back this many seconds without
        reading anything is evicted (counted in ``stats()["evictions"]``, logged once): the
        publisher stops waiting for it and the others keep receiving everything. It counts
        its own loss when it wakes up, and is paced again once it has caught up.
    on_full : {"block", "drop", "raise"}
        What a publish does when it cannot be queued: the ring is full, in reliable mode
        because the slowest live subscriber's window is full. ``"block"`` waits (for acks,
        evicting stalled subscribers) up to ``block_timeout_s`` seconds, then raises
        :class:`~pybus.BackpressureError`; ``"drop"`` counts the message in
        ``stats()["dropped"]`` (``backpressure`` when the window held it back, else
        ``ring_full``) and drops it; ``"raise"`` raises at once.
    block_timeout_s : float
        Seconds a ``block`` publish may wait (default 10, longer than the default
        ``slow_consumer_timeout_s``: a stalled subscriber is evicted before a publish fails).
    batch_hold_us : float
        Hold a batch open for this many microseconds to let it grow, as Kafka's ``linger.ms``
        does (default 0: an idle publisher sends each message at once; under load batches
        form by themselves).
    max_delay_us : float
        Under load, the oldest pending message is sent at the latest this late.
    idle_us : float
        A message published at least this long after the last send finds the publisher idle
        and goes out at once (in the publishing thread); sooner, it joins the next batch.
    max_message_bytes : int
        Largest payload + headers of one message; larger ones raise
        :class:`~pybus.ValidationError` at publish.
    max_batch_bytes, max_batch_records : int
        Bounds of one batch frame (defaults 64 KiB and 8192 records; a single larger message
        travels alone in its frame).
    capacity_bytes : int
        Size of the ring of pending messages (allocated once).
    max_queued_bytes : int, optional
        Deprecated alias of ``window_bytes``.
    sndhwm : int, optional
        ZeroMQ send high-water mark, in frames (overrides the derived value; at least 4 in
        reliable mode).
    close_linger_ms : int
        Default ZeroMQ linger of :meth:`close`, in milliseconds: how long ZeroMQ may still
        deliver what is queued. ("Linger" means only this in pybus.)
    slow_consumer_timeout, block_timeout, linger_us : optional
        Deprecated names of ``slow_consumer_timeout_s``, ``block_timeout_s`` and
        ``batch_hold_us`` (a warning; removed in the next release).
    publisher_id : int, optional
        64-bit id written in every frame (default: random).
    context : zmq.Context, optional
        Defaults to ``zmq.Context.instance()`` (inproc peers must share the context).
    security : pybus.Curve, optional
        CURVE for this socket (usually ``Curve.server``; see :mod:`pybus.transport.security`). With
        ``permissions``, each subscription is checked against the subscriber's key.
    liveness : pybus.Liveness, optional
        Heartbeats, reconnection backoff and peer-event callbacks (default ``Liveness()``).
    history : int
        Keep the last ``history`` messages per topic for late joiners (0: none).
    history_endpoint : str, optional
        Where to serve that history (a ROUTER; required with ``history``); see
        :mod:`pybus.pubsub.history`.
    registry : pybus.metrics.Registry or False, optional
        Where this publisher reports its counters (default: ``pybus.metrics.default_registry``);
        ``False`` reports nowhere and skips the per-frame topic and batch-size accounting.

    Notes
    -----
    ``publish`` may be called from several threads (per-topic order is the order of the
    calls). In reliable mode a publish waits for the slowest live pybus Subscriber (peers
    without pybus's hello, such as a raw ZeroMQ SUB, get best effort). In best effort a
    publish never waits on a subscriber: ZeroMQ drops that subscriber's frames at its
    high-water mark, and the subscriber counts them as lost from the sequence gaps.
    ``close()`` first waits (up to ``block_timeout_s``) for the window to take what is pending,
    then gives ZeroMQ ``close_linger_ms`` to deliver what is queued.

    Examples
    --------
    >>> with pybus.Publisher("ipc:///tmp/orders") as pub:          # doctest: +SKIP
    ...     pub.wait_for_subscribers(1, timeout=5.0)
    ...     pub.publish("orders.created", {"id": 7})
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        connect: bool = False,
        *,
        delivery: Delivery = "reliable",
        window_bytes: int = base.DEFAULT_WINDOW_BYTES,
        slow_consumer_timeout_s: float = 5.0,
        on_full: OnFull = "block",
        block_timeout_s: float = 10.0,
        batch_hold_us: float = 0.0,
        max_delay_us: float = 100.0,
        idle_us: float = 20.0,
        max_message_bytes: int = base.DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_bytes: int = base.DEFAULT_MAX_BATCH_BYTES,
        max_batch_records: int = 8192,
        capacity_bytes: int = 8 << 20,
        max_topics: int = 65536,
        max_queued_bytes: int | None = None,
        sndhwm: int | None = None,
        close_linger_ms: int = 1000,
        publisher_id: int | None = None,
        context: zmq.Context[Any] | None = None,
        registry: Any = None,
        security: Any = None,
        liveness: Any = None,
        history: int = 0,
        history_endpoint: str | None = None,
        slow_consumer_timeout: float | None = None,
        block_timeout: float | None = None,
        linger_us: float | None = None,
    ) -> None:
        self._closed = True  # until fully constructed (so __del__/close are safe)
        opts = publisher_options(
            endpoint, delivery=delivery, window_bytes=window_bytes,
            slow_consumer_timeout_s=slow_consumer_timeout_s, on_full=on_full,
            block_timeout_s=block_timeout_s, batch_hold_us=batch_hold_us,
            old_names=(slow_consumer_timeout, block_timeout, linger_us),
            max_delay_us=max_delay_us,
            idle_us=idle_us, max_batch_bytes=max_batch_bytes, max_queued_bytes=max_queued_bytes,
            sndhwm=sndhwm, close_linger_ms=close_linger_ms, publisher_id=publisher_id,
            history=history, history_endpoint=history_endpoint,
        )
        publisher_id = opts.publisher_id
        self._batcher = Batcher(
            capacity_bytes=capacity_bytes,
            max_batch_records=max_batch_records,
            max_batch_bytes=max_batch_bytes,
            max_message_bytes=max_message_bytes,
            max_topics=max_topics,
            publisher_id=publisher_id,
            idle_us=opts.idle_us,
            max_delay_us=opts.delay_us,
        )
        self.publisher_id: int = publisher_id
        self.max_message_bytes: int = max_message_bytes
        self._on_full_policy: OnFull = on_full
        self._block_timeout = opts.block_timeout_s
        self._flush_delay_s = opts.delay_us / 1e6
        self._holding = opts.holding
        self._first_tick_s = opts.first_tick_s
        # A pause this long after the last publish means the burst ended (see _tick).
        self._quiet_ns = int(self._first_tick_s * 1e9)
        self._max_tick_s = max(_MAX_TICK_S, self._first_tick_s)
        self._close_linger_ms = opts.close_linger_ms
        self.sndhwm: int = opts.sndhwm
        self.delivery: Delivery = delivery
        self.window_bytes: int = opts.window_bytes
        self._flow: FlowWindow | None = (
            FlowWindow(opts.window_frames, opts.window_bytes, opts.slow_consumer_timeout_ns)
            if opts.reliable else None
        )
        self._window_blocked = False  # the last flush left records the window held back
        self._window_retry_ns = 0  # while blocked, publishes look for acks from then on

        self._ctx = context if context is not None else zmq.Context.instance()
        self._open_socket(opts.endpoints, connect, security, liveness, endpoint)
        sock = self._sock
        self._connect = connect
        self._security = security
        if security is not None and security.is_server:
            security._register_owner(self)
        self._next_sub_check = 0.0
        self._send_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._full_guard = threading.local()
        self._urgent = False
        self._armed = False
        self._backing_off = False  # the flusher saw publishing go on (see _tick)

        # counters (updated under the send lock)
        self._batches = 0
        self._bytes = 0
        self._positions_sent = 0
        self._position_due: int | None = None  # monotonic ns of the next position scan
        self._dropped: dict[str, int] = {"ring_full": 0, "backpressure": 0, "closed": 0}
        self._init_subscriptions()
        # Metrics, updated once per frame (not per message): messages per topic frame (bounded
        # by the batcher's max_topics) and messages per frame (2 significant figures, ~10 KiB).
        # registry=False turns this accounting off.
        self._published_by_topic: dict[bytes, int] | None = None if registry is False else {}
        self._batch_sizes = Histogram(1, max(2, max_batch_records), 2)
        self._serve_history(history, max_topics, history_endpoint, security, liveness)

        self._batcher.set_hooks(
            self._resolve_topic, _pack, self._on_ready, self._on_pending, self._on_full
        )
        # publish(topic, payload, headers=None) is the batcher's C method itself, so a publish
        # is one call into compiled code (documented by the class-level publish below).
        self.publish = self._batcher.publish  # type: ignore[method-assign]
        if tracing.active():  # decided once: the untraced path stays one C call
            self.publish = self._publish_traced  # type: ignore[method-assign]

        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, Publisher._finalize, self._stop, self._wake, sock)
        self._start_flusher()
        _metrics.attach(self, registry)

    def _open_socket(self, endpoints: list[str], connect: bool, security: Any, liveness: Any,
                     endpoint: Any) -> None:
        """Create, configure and bind (or connect) the XPUB socket (closed again on error),
        and pick its send functions."""
        sock = self._sock = self._new_socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.LINGER, self._close_linger_ms)
            sock.setsockopt(zmq.SNDHWM, self.sndhwm)
            # subscriptions arrive as messages on the XPUB socket; bound their queue as well
            sock.setsockopt(zmq.RCVHWM, 10_000)
            self._watch = _sockets.configure(sock, security=security, liveness=liveness,
                                             context=self._ctx)
            # per-key subscribe permissions: apply each subscription ourselves (XPUB manual)
            self._acl = security if security is not None and security.has_permissions else None
            if self._acl is not None:
                sock.setsockopt(zmq.XPUB_MANUAL, 1)
            self.endpoints: list[str] = []
            for ep in endpoints:
                if connect:
                    sock.connect(ep)
                    self.endpoints.append(ep)
                else:
                    sock.bind(ep)
                    self.endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except zmq.ZMQError as exc:
            self._close_socket(0)
            raise from_zmq(
                exc, f"Publisher({'connect' if connect else 'bind'} {endpoint!r})"
            ) from exc
        except BaseException:  # e.g. a bad security= or liveness= argument
            self._close_socket(0)
            raise
        # pyzmq's Cython send, for the marks, positions and joins sent besides the frames
        self._send = pyzmq_method(sock, "send")

    def _serve_history(self, history: int, max_topics: int, history_endpoint: str | None,
                       security: Any, liveness: Any) -> None:
        """Keep the last ``history`` messages per topic and serve them (see .history); open
        the channel frames leave by: straight into ZeroMQ messages (the libzmq fast path), or
        pyzmq's calls when the history keeps each frame."""
        self._history: Any = None
        self._history_server: Any = None
        self.history_endpoint: str | None = None
        if not history:
            self._chan = PublisherChannel.open(self._sock, self._batcher)
            return
        from .history import HistoryServer, HistoryStore

        self._history = HistoryStore(history, max_topics)
        try:
            self._history_server = HistoryServer(
                self._ctx, history_endpoint, self._history_snapshot,  # type: ignore[arg-type]
                {"publisher_id": self.publisher_id, "history": history},
                lambda s: _sockets.configure(s, security=security, liveness=liveness),
            )
        except BaseException:
            self._sock.close(linger=0)
            raise
        self.history_endpoint = self._history_server.endpoint
        self._chan = PublisherChannel.open(self._sock, self._batcher, self._history.add)

    # -- the hot path (documentation only: instances bind the batcher's C method) ------------

    def publish(self, topic: str, payload: Any, headers: dict[str, Any] | None = None) -> Any:
        """Publish ``payload`` on ``topic``.

        A bytes-like payload goes as is; anything else is packed with msgpack (and the
        subscriber gets it back decoded). ``headers`` is a dict packed with msgpack.

        Raises
        ------
        TopicError
            ``topic`` breaks the topic rules.
        ValidationError
            Payload + headers exceed ``max_message_bytes``.
        BackpressureError
            The ring is full and ``on_full`` is ``"raise"``, or ``"block"`` timed out.
        ClosedError
            After :meth:`close`.
        """
        raise ClosedError("publish() on a closed Publisher")  # replaced per instance

    # -- hooks called by the batcher (once per batch, not per message) -----------------------

    def _resolve_topic(self, topic: str) -> int:
        validate_topic(topic)
        return self._batcher.topic_id(topic.encode("ascii"))

    def _on_ready(self) -> None:
        if self._window_blocked and _monotonic_ns() < self._window_retry_ns:
            # the window is full: keep filling the ring (so that the next frames carry many
            # messages per topic) and look for acks again shortly; a full ring waits (_on_full)
            return
        lock = self._send_lock
        # Another thread (the flusher, or another publishing thread) may hold the lock while
        # pyzmq's send has released the GIL; it gets the GIL back only when we block or after
        # the interpreter's switch interval (5 ms), and meanwhile every publish here would be
        # READY again. Blocking on the lock hands it the GIL at once; then we send what
        # accumulated meanwhile in one batch.
        if lock.acquire(False) or lock.acquire(timeout=self._block_timeout or 0.001):
            try:
                self._flush_locked()
                if self._window_blocked:
                    self._window_retry_ns = _monotonic_ns() + _WINDOW_RETRY_NS
            finally:
                lock.release()
        elif not self._urgent:
            self._urgent = True
            self._wake.set()

    def _on_pending(self) -> None:
        if not self._armed:
            self._armed = True
            self._wake.set()

    # -- sending ------------------------------------------------------------------------------

    def _flush_locked(self) -> None:
        """Drain the ring into ZeroMQ. The caller holds the send lock."""
        if self._closed:
            n = self._batcher.pending_records
            if n:
                self._batcher.drain()
                self._dropped["closed"] += n
            raise ClosedError("publish() on a closed Publisher")
        batches = self._batches
        flow = self._flow
        if flow is None:
            self._drain(0, 0)
        else:
            self._flush_window(flow)
        due = self._position_due
        if due is None:
            if self._batches != batches:  # streams moved: announce them within an interval
                self._position_due = _monotonic_ns() + _POSITION_INTERVAL_NS
                self._schedule_positions()
        else:
            now_ns = _monotonic_ns()
            if now_ns >= due:
                self._send_positions(now_ns)
        # Reading subscriptions costs a few microseconds (ZeroMQ processes its commands), so
        # at most once per interval here; wait_for_subscribers and stats read them at once.
        now = _monotonic()
        if now >= self._next_sub_check:
            self._next_sub_check = now + _SUB_CHECK_INTERVAL_S
            self._read_subscriptions()
        elif self._joins and not self._batcher.pending_records:
            self._send_joins()
    def _drain(self, max_frames: int, max_bytes: int) -> tuple[int, int]:
        """Send pending frames (all, or up to the bounds); returns the frames and bytes sent."""
        sent, err = self._chan.send_batches(max_frames, max_bytes)
        by_topic = self._published_by_topic
        nbytes = 0
        for topic, count, n in sent:
            nbytes += n
            if by_topic is not None:
                by_topic[topic] = by_topic.get(topic, 0) + count
                self._batch_sizes.record(count)
        self._batches += len(sent)
        self._bytes += nbytes
        if err:
            # XPUB never blocks (it drops at a subscriber's HWM), so this is a dead socket
            raise from_zmq(zmq.ZMQError(err), "Publisher send")
        return len(sent), nbytes

    def _security_rekick(self) -> None:
        """After a revocation: drop every connection so peers authenticate again. (No reset
        of the subscriber set: ZeroMQ reports each lost peer's unsubscription, and a peer back
        before its old connection is gone is never reported twice.)"""
        base.security_rekick(self, self._send_lock, binds=not self._connect)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Stop taking publishes, deliver what is pending, then close; the graceful end of a
        publisher (SIGTERM, a rolling restart).

        In reliable mode it waits until every live subscriber has acknowledged everything
        sent (a mark at the end), at most ``timeout_s``; then the last positions go out so a
        subscriber counts anything it still misses. Returns True when everything was
        acknowledged (best effort: handed to ZeroMQ), False when the time ran out first (what
        the window never took is counted in ``stats()["dropped"]["closed"]``, as by close).
        A ``publish`` from now on raises :class:`~pybus.ClosedError`.
        """
        if self._closed:
            return True
        deadline = time.monotonic() + max(0.0, timeout_s)
        self.publish = self._publish_closed  # type: ignore[method-assign]
        done = False
        if self._send_lock.acquire(timeout=max(0.0, timeout_s)):
            try:
                self._wait_window_locked(deadline)
                if not self._window_blocked:
                    done = self._wait_acked_locked(deadline)
            except Exception:
                log.exception("pybus publisher: drain failed; closing")
            finally:
                self._send_lock.release()
        # close() waits for the window at most block_timeout_s: here only what drain has left
        self._block_timeout = max(0.0, deadline - time.monotonic())
        self.close()
        return done

    def flush(self, timeout: float | None = 1.0) -> None:
        """Hand everything pending to ZeroMQ now.

        ZeroMQ then delivers in the background. In reliable mode this waits (up to
        ``timeout``) for the slowest live subscriber's window to take it all; in best effort a
        subscriber that is behind by more than the high-water mark loses messages (it counts
        them as sequence gaps).

        Raises
        ------
        TimeoutError
            Another thread kept the send lock for ``timeout`` seconds.
        BackpressureError
            Reliable mode: the window still held messages back after ``timeout`` seconds.
        ClosedError
            After :meth:`close`.
        """
        if self._closed:
            raise ClosedError("flush() on a closed Publisher")
        deadline = time.monotonic() + (1e9 if timeout is None else max(0.0, timeout))
        if not self._send_lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise TimeoutError(f"flush() could not get the send lock within {timeout}s")
        try:
            self._wait_window_locked(deadline)
            if self._window_blocked:
                raise BackpressureError(
                    f"flush(): the slowest subscriber's window still held "
                    f"{self._batcher.pending_records} messages back after {timeout}s"
                )
        finally:
            self._send_lock.release()

    # -- subscribers --------------------------------------------------------------------------

    def wait_for_subscribers(self, n: int = 1, timeout: float = 5.0) -> int:
        """Block until at least ``n`` pybus Subscribers are subscribed; return how many are.

        Counts distinct subscribers from their hello subscriptions (see ``docs/wire.md``), so
        the first message published afterwards is not lost to ZeroMQ's join delay. Bound
        Subscribers in this process are called into while waiting, so a bound Subscriber and a
        connecting Publisher work in one thread.

        Raises
        ------
        TimeoutError
            Fewer than ``n`` subscribers after ``timeout`` seconds.
        """
        waits = self._subscriber_waits(n, timeout, _WAIT_SLICE_S)
        try:
            while True:
                wait_ms = next(waits)
                # wait for a subscription message, holding the send lock: a ZeroMQ socket is
                # not thread-safe (the flusher thread sends on it)
                if self._send_lock.acquire(timeout=wait_ms / 1000):
                    try:
                        self._sock.poll(wait_ms, zmq.POLLIN)
                    finally:
                        self._send_lock.release()
        except StopIteration as done:
            return int(done.value)

    # -- accounting ---------------------------------------------------------------------------

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "publisher"

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        by_topic = self._published_by_topic
        if by_topic:
            for t, n in dict(by_topic).items():  # keys are the topic frames (ASCII bytes)
                yield "pybus_messages_published_total", {"topic": t.decode("ascii")}, n
        yield "pybus_published_bytes_total", {}, s["bytes"]
        yield "pybus_batches_total", {}, s["batches"]
        for reason, n in s["dropped"].items():
            yield "pybus_messages_dropped_total", {"reason": reason}, n
        yield "pybus_subscribers", {}, s["subscribers"]
        yield "pybus_publisher_evictions_total", {}, s["evictions"]
        yield "pybus_publisher_in_flight_bytes", {}, s["in_flight_bytes"]
        yield "pybus_queue_depth", {}, s["pending"]
        yield "pybus_batch_size_messages", {}, HdrValue(self._batch_sizes, 1.0, s["published"])
        yield from transport_samples(s, self._security)

    def stats(self) -> dict[str, Any]:
        """Counters: ``published`` (messages handed to ZeroMQ), ``pending``, ``batches``,
        ``bytes``, ``positions_sent`` (position frames, docs/wire.md), ``dropped`` by reason
        (``ring_full``, ``backpressure``, ``closed``), ``subscribers``."""
        with self._send_lock:
            if not self._closed:
                self._read_subscriptions()
            b = self._batcher
            flow = self._flow
            in_flight = flow.in_flight() if flow is not None else (0, 0)
            in_flight = (max(0, in_flight[0]), max(0, in_flight[1]))
            return {
                "published": b.records_appended - b.pending_records - self._dropped["closed"],
                "pending": self._batcher.pending_records,
                "batches": self._batches,
                "bytes": self._bytes,
                "positions_sent": self._positions_sent,
                "dropped": dict(self._dropped),
                "subscribers": len(self._subscribers),
                "sndhwm": self.sndhwm,
                "denied_subscriptions": self._denied_subscriptions,
                "peer_events": dict(self._watch.events) if self._watch is not None else {},
                "delivery": self.delivery,
                "window_frames": flow.window_frames if flow is not None else 0,
                "window_bytes": self.window_bytes,
                "in_flight_frames": in_flight[0],
                "in_flight_bytes": in_flight[1],
                "evictions": flow.evictions if flow is not None else 0,
                "evicted": flow.evicted if flow is not None else 0,
                "readmissions": flow.readmissions if flow is not None else 0,
                "marks_sent": flow.marks_sent if flow is not None else 0,
                "acks": flow.acks if flow is not None else 0,
            }

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self, linger: float | None = None, *, linger_ms: int | None = None) -> None:
        """Send what is pending, stop the flusher, close the socket. Idempotent, bounded.

        Parameters
        ----------
        linger_ms : int, optional
            Milliseconds ZeroMQ may keep trying to deliver queued frames after close (its
            LINGER; default ``close_linger_ms``). Never blocks longer than about ``linger_ms``
            + ``block_timeout_s`` (in reliable mode, what the window has not taken by then is
            counted in ``stats()["dropped"]["closed"]``).
        linger : float, optional
            Deprecated: the same in seconds (a warning; removed in the next release).
        """
        linger_ms = close_linger_ms(linger, linger_ms, self._close_linger_ms)
        if self._closed:
            return
        if self._history_server is not None:  # before taking the lock its thread may wait for
            self._history_server.close()
        got = self._send_lock.acquire(timeout=max(self._block_timeout, 0.1))
        try:
            if got:
                try:
                    # reliable: what is pending waits for the window (a stalled subscriber is
                    # evicted within slow_consumer_timeout, shorter than block_timeout)
                    self._wait_window_locked(time.monotonic() + self._block_timeout)
                    n = self._batcher.pending_records
                    if n:  # the window never took them
                        self._batcher.drain()
                        self._dropped["closed"] += n
                    # the last position of every stream that moved, so subscribers can count
                    # the loss of its last messages
                    self._send_positions(_monotonic_ns(), force=True)
                except Exception:
                    log.exception("pybus publisher: final flush failed")
            self._closed = True
            self.publish = self._publish_closed  # type: ignore[method-assign]
            self._stop.set()
            self._wake.set()
            try:
                self._close_socket(linger_ms)
            except zmq.ZMQError:  # pragma: no cover - close does not fail on a live context
                pass
        finally:
            if got:
                self._send_lock.release()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._finalizer.detach()

    def _new_socket(self, socket_type: int) -> zmq.Socket[Any]:
        return cast("zmq.Socket[Any]", self._ctx.socket(socket_type))

    def _close_socket(self, linger_ms: int) -> None:
        self._sock.close(linger=linger_ms)

    def _publish_traced(self, topic: str, payload: Any, headers: Any = None) -> Any:
        """publish() with a PRODUCER span and the trace context in the headers
        (pybus.tracing; chosen at construction when a tracer provider is set)."""
        with tracing.produce(topic, headers, "publish") as (_span, traced):
            return self._batcher.publish(topic, payload, traced)

    def _publish_closed(self, topic: str, payload: Any, headers: Any = None) -> Any:
        raise ClosedError("publish() on a closed Publisher")

    @property
    def closed(self) -> bool:
        return self._closed

    def _current_io_path(self) -> str:
        # (IOPath.io_path) A publisher keeping a late-joiner history sends through pyzmq.
        return self._chan.io_path

    @staticmethod
    def _finalize(stop: threading.Event, wake: threading.Event, sock: zmq.Socket[Any]) -> None:
        stop.set()
        wake.set()
        if not sock.closed:
            sock.close(linger=0)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pybus.Publisher {state} {self.endpoints} id={self.publisher_id:016x}>"

