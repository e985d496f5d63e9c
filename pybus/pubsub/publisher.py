"""The publisher: a compiled batcher in front of a ZeroMQ XPUB socket.

``Publisher.publish`` is the batcher's own C method: one call into compiled code per message
(topic lookup, payload packing, size check, append). The batcher decides when a batch is due
("smart batching", see ``pybus._native.Batcher``) and calls back into this module only once per
batch: to send at once when the bus was idle or a size bound is reached, to arm the flusher
thread when the first record of a batch is pending (so the tail of a burst goes out within
``max_delay_us`` even if nothing else is published), and when the ring is full.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import msgpack
import zmq

from .. import metrics as _metrics
from .._native import Batcher, Histogram, frame_info
from .._native._batch import set_thread_timer_slack
from ..errors import BackpressureError, ClosedError, TimeoutError, ValidationError, from_zmq
from ..metrics.samples import HdrValue, RawSample, transport_samples
from ..policy.topics import validate_topic
from ..transport import sockets as _sockets
from . import _base as base
from .flow import FLOW_TOPIC, FlowWindow, pack_join, pack_mark, unpack_ack

__all__ = ["Publisher"]

log = logging.getLogger("pybus.publisher")

OnFull = Literal["block", "drop", "raise"]
_ON_FULL = ("block", "drop", "raise")
Delivery = Literal["reliable", "best_effort"]
_DELIVERY = ("reliable", "best_effort")
# Reliable mode: at most this many frames of the send high-water mark kept free of the window,
# for the marks that go out beside the data (position frames go in the window, see
# _send_positions).
_WINDOW_SPARE_FRAMES = 16
# Reliable mode: the smallest default send high-water mark, in frames. ZeroMQ may see a
# queue as up to half its high-water mark fuller than it is (a reader reports what it read
# every hwm/2 messages), so the window in frames is half of it.
_MIN_RELIABLE_HWM = 256
# While the window is full, a publish looks for acks at most this often (each look reads the
# socket, a few microseconds); meanwhile messages accumulate in the ring, so that many topics
# get many messages per frame (batches grow with back-pressure, like under load).
_WINDOW_RETRY_NS = 50_000
# How often the flusher thread looks for acks while the window holds the tail of a burst.
_WINDOW_RETRY_S = 0.0005
# Longest slice a publisher blocked by the window waits for acks before it looks again (for
# stalled subscribers to evict, a closing publisher, a deadline).
_WINDOW_POLL_S = 0.005
# Frames at least this big go to ZeroMQ without a copy. Below, copying is cheaper: pyzmq's
# zero-copy send tracks the buffer and releases it from a background thread (measured).
_ZERO_COPY_MIN_BYTES = 1 << 20
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# How often a busy publisher reads the XPUB subscription messages (they queue meanwhile).
_SUB_CHECK_INTERVAL_S = 0.01
_monotonic = time.monotonic
_time_ns = time.time_ns  # the batcher's clock (CLOCK_REALTIME)
# With per-key permissions (XPUB manual mode) the publisher applies each subscription itself
# and refuses more than this many, or a prefix longer than any topic: ZeroMQ keeps every
# distinct prefix in its subscription trie, with no bound of its own.
_MAX_SUBSCRIPTIONS = 100_000
_MAX_SUBSCRIPTION_BYTES = 1024
# Longest period of the flusher thread while the publishing thread sends by itself.
_MAX_TICK_S = 0.001
# Timer slack of the flusher thread (see _flusher_loop), ns.
_FLUSHER_TIMER_SLACK_NS = 1000
# Position frames (docs/wire.md): a topic that published announces its next sequence number
# at most once per interval while it moves, and each announcement is repeated 1, 2, 4 ... 64
# intervals apart (the last ~12.7 s after the first), in case ZeroMQ dropped one at the
# high-water mark of a subscriber that is behind: 8 small frames per stream and pause. A
# subscriber then counts the loss of a stream's last messages too, which no later message
# would reveal.
_POSITION_INTERVAL_NS = 100_000_000
_POSITION_REPEATS = 8
# At most this many position frames per scan (the rest follow 10 ms later, round robin): with
# thousands of topics, positions must not crowd the data out of the high-water marks, nor
# take much of a subscriber's time (a frame costs it ~4 us: 6,400 positions/s at most).
_POSITION_LIMIT = 64
_monotonic_ns = time.monotonic_ns


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


_HEX = frozenset(b"0123456789abcdef")


def _is_hello(body: bytes) -> bool:
    """A hello as docs/wire.md specifies it: the prefix, then 16 lowercase hex digits."""
    n = len(base.HELLO_PREFIX)
    return len(body) == n + 16 and _HEX.issuperset(body[n:])


def _as_endpoints(endpoint: str | Sequence[str]) -> list[str]:
    eps = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    if not eps or not all(isinstance(e, str) and e for e in eps):
        raise ValidationError(
            f"endpoint must be a non-empty str or a list of them (tcp://HOST:PORT, ipc://PATH, "
            f"inproc://NAME), got {endpoint!r}"
        )
    return eps


def _flusher_loop(
    ref: weakref.ref[Publisher], wake: threading.Event, stop: threading.Event
) -> None:
    """Body of a publisher's flusher thread; holds the publisher only while flushing.

    Idle, it sleeps on ``wake``. Armed by the first pending record of a batch, it wakes after
    the flush delay; if the last publish is at least that long ago (the burst ended) it sends
    what is pending, so the tail of a burst leaves about ``idle_us`` (``linger_us``) after the
    last publish. ("Nothing was published since the arming" was the wrong test: a paced
    publisher, a burst every ~100 us, never looked quiet, and each burst's tail waited for the
    next burst's max_delay_us: 155 us instead of ~30 us at 20k msg/s, measured.)

    While publishing goes on, the publishing thread sends by itself (the batcher reports READY
    once the oldest record is ``max_delay_us`` old), and this thread backs off (doubling its
    period up to ``_MAX_TICK_S``) and stays armed across frames: each of its wake-ups costs a
    GIL hand-off (up to the 5 ms switch interval; a 40 % throughput loss when it flushed under
    load, 10-40 ns of CPU per message when it was re-armed at every frame, both measured), so
    it stays out of the way of a busy publisher. The price: the tail left when a long burst
    stops waits up to ``_MAX_TICK_S``.

    Its waits are a few tens of microseconds: with Linux's default timer slack (50 us) each
    one ends ~80 us late (measured: a 20-us wait took ~105 us), which made the tail of every
    burst wait ~5x idle_us; a 1-us slack for this thread alone brings that to ~45 us.
    """
    set_thread_timer_slack(_FLUSHER_TIMER_SLACK_NS)
    while True:
        pub = ref()
        if pub is None:
            return
        timeout = pub._position_wait()
        del pub
        woke = wake.wait(timeout)
        if stop.is_set():
            return
        if not woke:  # position frames are due (and nothing woke us)
            pub = ref()
            if pub is None:
                return
            try:
                pub._position_tick()
            except ClosedError:
                return
            except Exception:  # never let the thread die silently
                log.exception("pybus publisher flusher failed")
            finally:
                del pub
            continue
        wake.clear()
        period: float | None = None
        while True:
            pub = ref()
            if pub is None:
                return
            urgent = pub._urgent
            try:
                if period is None:
                    # First look of an arming: due first_tick after the record that armed us,
                    # not after this thread woke up (waking took ~50 us, measured).
                    period = pub._first_tick_s
                    wait = period - (_time_ns() - pub._batcher.oldest_pending_ns) / 1e9
                else:
                    wait = period
            except Exception:  # closed underneath us
                return
            del pub
            if not urgent and wait > 0:
                stop.wait(wait)
            if stop.is_set():
                return
            pub = ref()
            if pub is None:
                return
            try:
                period = pub._tick(period)
            except ClosedError:
                return
            except Exception:  # never let the thread die silently with data pending
                log.exception("pybus publisher flusher failed")
                period = None
            finally:
                del pub
            if period is None:
                break


class Publisher:
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
    slow_consumer_timeout : float
        Reliable mode: a subscriber that holds the publisher back this many seconds without
        reading anything is evicted (counted in ``stats()["evictions"]``, logged once): the
        publisher stops waiting for it and the others keep receiving everything. It counts
        its own loss when it wakes up, and is paced again once it has caught up.
    on_full : {"block", "drop", "raise"}
        What a publish does when it cannot be queued: the ring is full, in reliable mode
        because the slowest live subscriber's window is full. ``"block"`` waits (for acks,
        evicting stalled subscribers) up to ``block_timeout`` seconds, then raises
        :class:`~pybus.BackpressureError`; ``"drop"`` counts the message in
        ``stats()["dropped"]`` (``backpressure`` when the window held it back, else
        ``ring_full``) and drops it; ``"raise"`` raises at once.
    block_timeout : float
        Seconds a ``block`` publish may wait (default 10, longer than the default
        ``slow_consumer_timeout``: a stalled subscriber is evicted before a publish fails).
    linger_us : float
        Hold a batch open for this many microseconds to let it grow (default 0: an idle
        publisher sends each message at once; under load batches form by themselves).
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
        Default linger of :meth:`close`, in milliseconds.
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
    ``close()`` first waits (up to ``block_timeout``) for the window to take what is pending,
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
        slow_consumer_timeout: float = 5.0,
        on_full: OnFull = "block",
        block_timeout: float = 10.0,
        linger_us: float = 0.0,
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
        context: zmq.Context | None = None,
        registry: Any = None,
        security: Any = None,
        liveness: Any = None,
        history: int = 0,
        history_endpoint: str | None = None,
    ) -> None:
        self._closed = True  # until fully constructed (so __del__/close are safe)
        if history and not history_endpoint:
            raise ValidationError("history needs history_endpoint (e.g. 'tcp://*:5557')")
        if on_full not in _ON_FULL:
            raise ValidationError(f"on_full must be one of {_ON_FULL}, got {on_full!r}")
        if delivery not in _DELIVERY:
            raise ValidationError(f"delivery must be one of {_DELIVERY}, got {delivery!r}")
        if max_queued_bytes is not None:
            warnings.warn("Publisher(max_queued_bytes=) is deprecated: use window_bytes=",
                          DeprecationWarning, stacklevel=2)
            window_bytes = max_queued_bytes
        if isinstance(window_bytes, bool) or not isinstance(window_bytes, int) or window_bytes < 1:
            raise ValidationError(f"window_bytes must be an int >= 1, got {window_bytes!r}")
        if not slow_consumer_timeout > 0:
            raise ValidationError(
                f"slow_consumer_timeout must be > 0 seconds, got {slow_consumer_timeout!r}"
            )
        if not block_timeout >= 0:
            raise ValidationError(f"block_timeout must be >= 0 seconds, got {block_timeout!r}")
        if not linger_us >= 0:
            raise ValidationError(f"linger_us must be >= 0, got {linger_us!r}")
        if not idle_us >= 0:
            raise ValidationError(f"idle_us must be >= 0, got {idle_us!r}")
        if not max_delay_us >= 0:
            raise ValidationError(f"max_delay_us must be >= 0, got {max_delay_us!r}")
        if close_linger_ms < 0:
            raise ValidationError(f"close_linger_ms must be >= 0, got {close_linger_ms!r}")
        endpoints = _as_endpoints(endpoint)
        if publisher_id is None:
            publisher_id = random.getrandbits(64)
        if linger_us > 0:
            # Holding batches open: never send a lone message at once; flush after linger_us.
            # (the batcher still sends the very first message at once: it has never drained)
            idle_us, delay_us = 1e9, float(linger_us)
        else:
            idle_us, delay_us = float(idle_us), float(max_delay_us)
        self._batcher = Batcher(
            capacity_bytes=capacity_bytes,
            max_batch_records=max_batch_records,
            max_batch_bytes=max_batch_bytes,
            max_message_bytes=max_message_bytes,
            max_topics=max_topics,
            publisher_id=publisher_id,
            idle_us=idle_us,
            max_delay_us=delay_us,
        )
        self.publisher_id: int = publisher_id
        self.max_message_bytes: int = max_message_bytes
        self._on_full_policy: OnFull = on_full
        self._block_timeout = float(block_timeout)
        self._flush_delay_s = delay_us / 1e6
        self._lingering = linger_us > 0
        # The flusher's first look after a batch starts: with linger_us, when the batch is due;
        # else after idle_us, so a lone message (or the end of a burst) that came too soon
        # after the previous send to go out at once waits about idle_us, not max_delay_us.
        self._first_tick_s = delay_us / 1e6 if linger_us > 0 else min(idle_us, delay_us) / 1e6
        # A pause this long after the last publish means the burst ended (see _tick).
        self._quiet_ns = int(self._first_tick_s * 1e9)
        self._max_tick_s = max(_MAX_TICK_S, self._first_tick_s)
        self._close_linger_ms = int(close_linger_ms)
        reliable = delivery == "reliable"
        if sndhwm is not None:
            self.sndhwm: int = int(sndhwm)
        else:
            self.sndhwm = base.hwm_for(window_bytes, max_batch_bytes)
            if reliable:
                self.sndhwm = max(_MIN_RELIABLE_HWM, self.sndhwm)
        least = 4 if reliable else 1
        if self.sndhwm < least:
            raise ValidationError(
                f"sndhwm must be >= {least} frames with delivery={delivery!r}, got {sndhwm!r}"
            )
        self.delivery: Delivery = delivery
        self.window_bytes: int = window_bytes
        # reliable: the window in frames is half the high-water mark, which ZeroMQ may see
        # that much fuller than it is, less a few spare frames for the marks
        spare = max(1, min(_WINDOW_SPARE_FRAMES, self.sndhwm // 8))
        self._flow: FlowWindow | None = (
            FlowWindow(self.sndhwm // 2 - spare, window_bytes, int(slow_consumer_timeout * 1e9))
            if reliable else None
        )
        self._window_blocked = False  # the last flush left records the window held back
        self._window_retry_ns = 0  # while blocked, publishes look for acks from then on

        self._ctx = context if context is not None else zmq.Context.instance()
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
        self._connect = connect
        self._security = security
        if security is not None and security.is_server:
            security._register_owner(self)
        # pyzmq's Cython send, without the sugar layer's routing_id/group handling (2x faster);
        # a socket class that overrides send (zmq.green, a user's socket_class) keeps it
        self._send = (zmq.backend.Socket.send.__get__(sock) if type(sock).send is zmq.Socket.send
                      else sock.send)
        # libzmq's own socket when frames may be drained straight into ZeroMQ messages
        # (Batcher.drain_to: one copy and one bytes object fewer per frame), else 0
        self._fast_addr = _sockets.fast_address(sock)
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
        self._subscribers: set[bytes] = set()
        # hellos that have not had their join snapshot yet (see _send_joins)
        self._joins: list[bytes] = []
        self._subscriptions = 0
        # with permissions: subscriptions granted, per prefix as asked (bounds the trie)
        self._granted: dict[bytes, int] = {}
        # Metrics, updated once per frame (not per message): messages per topic frame (bounded
        # by the batcher's max_topics) and messages per frame (2 significant figures, ~10 KiB).
        # registry=False turns this accounting off.
        self._published_by_topic: dict[bytes, int] | None = None if registry is False else {}
        self._batch_sizes = Histogram(1, max(2, max_batch_records), 2)
        self._denied_subscriptions = 0
        self._history: Any = None
        self._history_server: Any = None
        if history:
            from .history import HistoryServer, HistoryStore

            self._history = HistoryStore(history, max_topics)
            try:
                self._history_server = HistoryServer(
                    self._ctx, history_endpoint, self._history_snapshot,  # type: ignore[arg-type]
                    {"publisher_id": publisher_id, "history": history},
                    lambda s: _sockets.configure(s, security=security, liveness=liveness),
                )
            except BaseException:
                sock.close(linger=0)
                raise
            self.history_endpoint: str | None = self._history_server.endpoint
        else:
            self.history_endpoint = None

        self._batcher.set_hooks(
            self._resolve_topic, _pack, self._on_ready, self._on_pending, self._on_full
        )
        # publish(topic, payload, headers=None) is the batcher's C method itself, so a publish
        # is one call into compiled code (documented by the class-level publish below).
        self.publish = self._batcher.publish  # type: ignore[method-assign]

        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, Publisher._finalize, self._stop, self._wake, sock)
        self._start_flusher()
        _metrics.attach(self, registry)

    def _start_flusher(self) -> None:
        """Start the thread that sends the tail of a burst (asyncio twin: a loop timer)."""
        self._thread = threading.Thread(
            target=_flusher_loop,
            args=(weakref.ref(self), self._wake, self._stop),
            name=f"pybus-flusher-{self.publisher_id:016x}",
            daemon=True,
        )
        self._thread.start()

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

    def _on_full(self, topic: str, payload: Any, headers: Any) -> Any:
        guard = self._full_guard
        if getattr(guard, "active", False):
            return _RETRY  # nested call from our own retry below: let the retry loop decide
        policy = self._on_full_policy
        window = self._window_blocked
        if policy == "drop":
            with self._count_lock:  # not the send lock: a drop must never wait for a send
                self._dropped["backpressure" if window else "ring_full"] += 1
            return None
        if policy == "raise":
            why = ("the slowest subscriber's window is full" if window else
                   f"the publisher's ring is full ({self._batcher.pending_bytes} of "
                   f"{self._batcher.capacity_bytes} bytes pending)")
            raise BackpressureError(
                f"{why}; use on_full='block' or 'drop', a larger capacity_bytes, or publish "
                f"more slowly"
            )
        deadline = time.monotonic() + self._block_timeout
        guard.active = True
        try:
            while True:
                remaining = deadline - time.monotonic()
                if self._send_lock.acquire(timeout=max(0.0, remaining)):
                    try:
                        self._wait_window_locked(deadline)
                    finally:
                        self._send_lock.release()
                    result = self._batcher.publish(topic, payload, headers)
                    if result is not _RETRY:
                        return result
                if time.monotonic() >= deadline:
                    why = ("the slowest subscriber's window stayed full" if self._window_blocked
                           else "the publisher's ring stayed full")
                    raise BackpressureError(
                        f"{why} for block_timeout={self._block_timeout}s; raise block_timeout "
                        f"or capacity_bytes, or use on_full='drop'"
                    )
        finally:
            guard.active = False

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

    def _flush_window(self, flow: FlowWindow) -> None:
        """Reliable mode: drain what the slowest live subscriber's window takes (see _flow)."""
        b = self._batcher
        frames, nbytes = flow.room()
        if frames >= 0 and (b.pending_records > frames or b.pending_bytes > nbytes):
            self._read_subscriptions()  # may not all fit: take the acks that arrived
            frames, nbytes = flow.room()
        if frames == 0 or nbytes == 0:
            self._evict_stalled(flow)
            frames, nbytes = flow.room()
        if frames != 0 and nbytes != 0:
            sent_frames, sent_bytes = self._drain(max(frames, 0), max(nbytes, 0))
            flow.sent(sent_frames, sent_bytes)
        blocked = b.pending_records > 0
        self._window_blocked = blocked
        if flow.peers and flow.mark_due(blocked, _monotonic_ns()):
            self._send_mark(flow)

    def _send_mark(self, flow: FlowWindow) -> None:
        """A mark at the current position, on the flow topic every Subscriber takes."""
        body = pack_mark(self.publisher_id, flow.frames, flow.bytes)
        try:
            self._send(FLOW_TOPIC, _SNDMORE_NOBLOCK)
            self._send(body, _NOBLOCK)
        except zmq.ZMQError as exc:
            raise from_zmq(exc, "Publisher send") from exc
        flow.mark_sent(len(body), _monotonic_ns())

    def _evict_stalled(self, flow: FlowWindow) -> None:
        for sub_id in flow.evict_stalled(_monotonic_ns()):
            peer = flow.peers[sub_id]
            log.warning(
                "pybus publisher %016x evicted subscriber %s: it read nothing for %.1fs with "
                "its window full (%d frames, %d bytes in flight); it counts what it loses and "
                "is paced again once it catches up", self.publisher_id,
                sub_id.decode(errors="replace"), flow.timeout_ns / 1e9,
                flow.frames - peer.acked_frames, flow.bytes - peer.acked_bytes,
            )

    def _wait_window_locked(self, deadline: float) -> None:
        """Flush, and while the window holds records back, wait for acks (evicting stalled
        subscribers) until it takes them all or ``deadline`` (monotonic s). Caller holds the
        send lock."""
        while True:
            self._flush_locked()
            if not self._window_blocked:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # acks arrive as input on the XPUB socket
            self._sock.poll(max(1, int(min(remaining, _WINDOW_POLL_S) * 1000)), zmq.POLLIN)
            self._read_subscriptions()

    def _drain(self, max_frames: int, max_bytes: int) -> tuple[int, int]:
        """Send pending frames (all, or up to the bounds); returns the frames and bytes sent."""
        if self._fast_addr and self._history is None:
            return self._flush_fast(max_frames, max_bytes)
        return self._flush_frames(max_frames, max_bytes)

    def _flush_fast(self, max_frames: int, max_bytes: int) -> tuple[int, int]:
        """Drain straight into ZeroMQ messages (the libzmq fast path)."""
        sent, err = self._batcher.drain_to(self._fast_addr, max_frames, max_bytes)
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

    def _flush_frames(self, max_frames: int, max_bytes: int) -> tuple[int, int]:
        """Drain into bytes frames and send them with pyzmq (also when history keeps them)."""
        frames = self._batcher.drain(max_frames, max_bytes)
        nbytes = 0
        if frames:
            send = self._send
            by_topic = self._published_by_topic
            try:
                for topic, frame in frames:
                    send(topic, _SNDMORE_NOBLOCK)
                    n = len(frame)
                    if n < _ZERO_COPY_MIN_BYTES:
                        send(frame, _NOBLOCK)
                    else:
                        send(frame, _NOBLOCK, copy=False)
                    nbytes += n
                    if by_topic is not None or self._history is not None:
                        count = frame_info(frame)[2]
                        if by_topic is not None:
                            by_topic[topic] = by_topic.get(topic, 0) + count
                            self._batch_sizes.record(count)
                        if self._history is not None:
                            self._history.add(topic, frame, count)
            except zmq.ZMQError as exc:
                # XPUB never blocks (it drops at a subscriber's HWM), so this is a dead socket
                raise from_zmq(exc, "Publisher send") from exc
            self._batches += len(frames)
            self._bytes += nbytes
        return len(frames), nbytes

    def _send_positions(self, now_ns: int, force: bool = False) -> None:
        """Send the position frames due (caller holds the send lock; see docs/wire.md)."""
        # at most half the high-water mark at a time: a burst of positions must fit the queue
        # of a subscriber that is reading again (ZeroMQ drops the rest)
        limit = 0 if force else max(1, min(_POSITION_LIMIT, self.sndhwm // 2))
        flow = self._flow
        if flow is not None and not force:
            room = flow.room()[0]
            if room == 0:
                self._read_subscriptions()  # acks that came meanwhile
                room = flow.room()[0]
            if room == 0:  # they go in the window too: later, and ask for the acks
                if flow.peers and flow.mark_due(True, now_ns):
                    self._send_mark(flow)
                self._position_due = now_ns + _POSITION_INTERVAL_NS // 10
                if not self._closed:
                    self._schedule_positions()
                return
            if room > 0:
                limit = min(limit, room)
        frames, self._position_due = self._batcher.position_frames(
            now_ns, _POSITION_INTERVAL_NS, _POSITION_REPEATS, force, limit
        )
        if frames:
            send = self._send
            nbytes = 0
            try:
                for topic, frame in frames:
                    send(topic, _SNDMORE_NOBLOCK)
                    send(frame, _NOBLOCK)
                    nbytes += len(frame)
            except zmq.ZMQError as exc:
                raise from_zmq(exc, "Publisher send") from exc
            self._positions_sent += len(frames)
            if flow is not None:
                flow.sent(len(frames), nbytes)
        if self._position_due is not None and not self._closed:
            self._schedule_positions()

    def _schedule_positions(self) -> None:
        """Position frames fall due at ``_position_due``: make sure someone sends them (the
        flusher thread, which may be asleep without a timeout, reads it when woken)."""
        self._wake.set()

    def _position_wait(self) -> float | None:
        """Flusher thread: seconds until position frames are due (None: none scheduled)."""
        due = self._position_due
        return None if due is None else max(0.0, (due - _monotonic_ns()) / 1e9)

    def _position_tick(self) -> None:
        """Flusher thread: send the position frames due (after what is pending)."""
        with self._send_lock:
            self._position_tick_locked()

    def _position_tick_locked(self) -> None:
        if self._closed:
            raise ClosedError("closed")
        if self._batcher.pending_records:
            self._flush_locked()  # sends the due positions too
        else:
            self._send_positions(_monotonic_ns())

    def _read_subscriptions(self) -> None:
        """Consume XPUB (un)subscription messages without blocking (caller holds the lock)."""
        sock = self._sock
        if self._acl is not None:
            self._read_subscriptions_acl()
        else:
            while sock.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
                try:
                    msg = sock.recv(_NOBLOCK)
                except zmq.Again:
                    break
                if not msg:
                    continue
                if msg[0] > 1:
                    self._on_ack(msg)
                    continue
                body = msg[1:]
                if body.startswith(base.HELLO_PREFIX):
                    if _is_hello(body):  # (a malformed one is nobody: not counted, not paced)
                        self._on_hello(body, msg[0] == 1)
                elif body != FLOW_TOPIC:
                    self._subscriptions += 1 if msg[0] == 1 else -1
        if self._flow is not None:
            self._flow.note_read()
        if self._joins and not self._batcher.pending_records:
            self._send_joins()

    def _send_joins(self) -> None:
        """Tell each newly arrived subscriber, on its own hello topic, the next sequence number
        of every stream that has published (docs/wire.md, "Join snapshot"): it then counts
        the loss of a stream it never saw a message of. Sent only with nothing pending, so
        every number is what the subscriber's first message of that stream should carry.
        Caller holds the send lock."""
        b = self._batcher
        streams = []
        for tid in range(b.topic_count):
            seq = b.next_seq(tid)
            if seq > 1:
                streams.append((b.topic_name(tid), seq))
        chunks = pack_join(self.publisher_id, streams)
        nframes = nbytes = 0
        try:
            for hello in self._joins:
                for chunk in chunks:
                    self._send(hello, _SNDMORE_NOBLOCK)
                    self._send(chunk, _NOBLOCK)
                    nframes += 1
                    nbytes += len(chunk)
        except zmq.ZMQError as exc:
            raise from_zmq(exc, "Publisher send") from exc
        finally:
            self._joins.clear()
        if self._flow is not None:
            self._flow.sent(nframes, nbytes)

    def _on_hello(self, hello: bytes, subscribe: bool) -> None:
        """A pybus Subscriber arrived (or left): it counts, and is paced in reliable mode."""
        sub_id = hello[len(base.HELLO_PREFIX):]
        if subscribe:
            self._subscribers.add(hello)
            if len(self._joins) < 1024 and hello not in self._joins:
                self._joins.append(hello)
            if self._flow is not None:
                self._flow.add(sub_id, _monotonic_ns())
        else:
            self._subscribers.discard(hello)
            if self._flow is not None:
                self._flow.remove(sub_id)

    def _on_ack(self, msg: bytes) -> None:
        """An upstream message that is not a subscription: a subscriber's ack, or ignored."""
        if self._flow is None:
            return
        ack = unpack_ack(msg)  # None for anything else
        if ack is not None and ack[1] == self.publisher_id:
            self._flow.ack(ack[0], ack[2], ack[3], _monotonic_ns())

    def _read_subscriptions_acl(self) -> None:
        """XPUB manual mode: apply each (un)subscription the sender's key permits.

        ZeroMQ applies ``SUBSCRIBE``/``UNSUBSCRIBE`` set right after a subscription message to
        the connection that sent it, and the message carries that connection's ZAP user id
        (the client's Z85 public key), so permissions hold per subscriber.
        """
        sock = self._sock
        acl = self._acl
        assert acl is not None  # only installed with a Curve that has permissions
        while sock.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
            try:
                frame = sock.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            msg = frame.bytes
            if not msg:
                continue
            if msg[0] > 1:
                self._on_ack(msg)
                continue
            body = msg[1:]
            subscribe = msg[0] == 1
            if body.startswith(base.HELLO_PREFIX) or body == FLOW_TOPIC:
                # not data topics: every pybus Subscriber takes them, whatever its key; but
                # only a well-formed hello, and a bounded number of them (each is a trie entry
                # and a subscriber to pace)
                if subscribe and body != FLOW_TOPIC and (
                        not _is_hello(body) or len(self._subscribers) >= _MAX_SUBSCRIPTIONS):
                    self._denied_subscriptions += 1
                    acl._count_denied_subscription(self._user_of(frame), body)
                    continue
                sock.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, body)
                if body != FLOW_TOPIC:
                    self._on_hello(body, subscribe)
                continue
            user = self._user_of(frame)
            # A subscription wider than the key's permissions is applied narrowed to them.
            # Without a user id this is XPUB reporting a departed connection's subscriptions
            # (as asked): ZeroMQ drops that connection's prefixes itself.
            applied = acl.granted_prefixes(user, body) if user else []
            granted = self._granted
            if subscribe:
                # bounded: ZeroMQ keeps every distinct prefix in its subscription trie (and
                # a request applies at most one prefix per permission of its key)
                if (not applied or len(body) > _MAX_SUBSCRIPTION_BYTES
                        or self._subscriptions >= _MAX_SUBSCRIPTIONS):
                    self._denied_subscriptions += 1
                    acl._count_denied_subscription(user, body)
                    continue
                granted[body] = granted.get(body, 0) + 1
                self._subscriptions += 1
            elif (applied or not user) and granted.get(body, 0) > 0:
                # (a departed connection's denied request with a granted one's prefix only
                # releases the bound early by one)
                granted[body] -= 1
                if not granted[body]:
                    del granted[body]
                self._subscriptions -= 1
            for prefix in applied:
                sock.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, prefix)

    @staticmethod
    def _user_of(frame: Any) -> str:
        """The ZAP user id (the sender's Z85 key) of a received frame, or ""."""
        try:
            return str(frame.get("User-Id"))
        except zmq.ZMQError:
            return ""

    def _security_rekick(self) -> None:
        """After a revocation: drop every connection so peers authenticate again."""
        if self._watch is not None:
            self._watch.drop_connections()
            return
        with self._send_lock:  # not monitored: unbind/rebind (less reliable, see _sockets)
            if self._closed:
                return
            bound = [] if self._connect else list(self.endpoints)
            conn = list(self.endpoints) if self._connect else []
            # no reset of the subscriber set: ZeroMQ reports each lost peer's unsubscription
            # (and a peer back before its old connection is gone is never reported twice)
            _sockets.rebind(self._sock, bound, conn)

    def _history_snapshot(
        self, sub_id: bytes, prefixes: list[bytes], wait_s: float
    ) -> list[tuple[bytes, bytes]] | str:
        """History thread: wait for the subscriber's hello, then copy the store (Clone)."""
        hello = base.HELLO_PREFIX + sub_id
        deadline = time.monotonic() + wait_s
        while True:
            base._poke_bound_subscribers()
            with self._send_lock:
                if self._closed:
                    return "publisher closed"
                self._read_subscriptions()
                if not sub_id or hello in self._subscribers:
                    return self._history.snapshot(prefixes)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return f"subscriber {sub_id.decode(errors='replace')} not subscribed here"
                self._sock.poll(max(1, int(min(remaining, 0.005) * 1000)), zmq.POLLIN)

    def _tick(self, period: float) -> float | None:
        """Flusher thread: send what is pending if publishing has paused for first_tick.

        Returns the next period, or None once nothing is pending (the thread then sleeps).
        """
        urgent = self._urgent
        self._urgent = False
        if not self._send_lock.acquire(False):
            # another thread is sending, and takes what is pending: back off rather than
            # queue for the lock (waiting here, then flushing little, while the publishing
            # thread queued behind us cost a many-topic burst a third of its rate, measured)
            self._backing_off = True
            return min(period * 2, self._max_tick_s)
        with _Held(self._send_lock):
            if self._closed:
                raise ClosedError("closed")
            b = self._batcher
            if b.pending_records:
                if urgent or self._lingering or self._paused(b):
                    self._flush_locked()
                    if self._window_blocked:
                        # the tail waits for the window: look again soon (not waiting for
                        # acks here, holding the lock a publishing thread needs: that cost a
                        # many-topic burst a third of its rate, measured)
                        return _WINDOW_RETRY_S
                    if not urgent:
                        # publishing had stopped for first_tick: the next message, if it
                        # comes idle_us after the last one, finds the publisher idle and goes
                        # out at once (else it would wait for this thread, ~50-80 us)
                        b.mark_quiet()
                    period = self._first_tick_s
                    self._backing_off = False
                else:  # still publishing: that thread sends by itself, back off
                    self._backing_off = True
                    return min(period * 2, self._max_tick_s)
            elif self._backing_off and not self._paused(b):
                # The publishing thread drained by itself and is busy: stay armed on the
                # backed-off period. Disarming here re-armed (and woke) this thread at the
                # next frame's first record, a GIL hand-off per frame that cost 10-40 ns of
                # CPU per message under sustained load (measured).
                return min(period * 2, self._max_tick_s)
            self._backing_off = False
            # disarm, then look again: a record that arrived meanwhile re-arms (no lost wake-up)
            self._armed = False
            if b.pending_records:
                self._armed = True
                return period
            return None

    def _paused(self, b: Batcher) -> bool:
        """Whether the last publish is first_tick old: a burst ended (else one goes on)."""
        return _time_ns() - b.last_append_ns >= self._quiet_ns

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
        if self._closed:
            raise ClosedError("wait_for_subscribers() on a closed Publisher")
        if n < 0:
            raise ValidationError(f"n must be >= 0, got {n}")
        deadline = time.monotonic() + timeout
        while True:
            base._poke_bound_subscribers()
            remaining = deadline - time.monotonic()
            if not self._send_lock.acquire(timeout=max(0.0, remaining)):
                break
            try:
                self._read_subscriptions()
                count = len(self._subscribers)
                if count >= n:
                    return count
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # wait for a subscription message; in short slices while bound subscribers of
                # this process may need another poke to attach their new peers
                slice_s = 0.002 if base._BOUND_SUBSCRIBERS else 0.01
                self._sock.poll(max(1, int(min(remaining, slice_s) * 1000)), zmq.POLLIN)
            finally:
                self._send_lock.release()
        raise TimeoutError(
            f"{len(self._subscribers)} of {n} subscribers after {timeout}s on {self.endpoints}"
        )

    @property
    def subscriber_count(self) -> int:
        """Distinct pybus Subscribers currently subscribed (as of the last flush or wait)."""
        return len(self._subscribers)

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

    def metrics_readiness(self) -> tuple[bool, str]:
        return (False, "publisher is closed") if self._closed else (True, "")

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

    def close(self, linger: float | None = None) -> None:
        """Send what is pending, stop the flusher, close the socket. Idempotent, bounded.

        Parameters
        ----------
        linger : float, optional
            Seconds ZeroMQ may keep trying to deliver queued frames after close (default
            ``close_linger_ms``). Never blocks longer than about ``linger`` + ``block_timeout``
            (in reliable mode, what the window has not taken by then is counted in
            ``stats()["dropped"]["closed"]``).
        """
        if self._closed:
            return
        linger_ms = self._close_linger_ms if linger is None else max(0, int(linger * 1000))
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

    def _new_socket(self, socket_type: int) -> zmq.Socket:
        return self._ctx.socket(socket_type)

    def _close_socket(self, linger_ms: int) -> None:
        self._sock.close(linger=linger_ms)

    def _publish_closed(self, topic: str, payload: Any, headers: Any = None) -> Any:
        raise ClosedError("publish() on a closed Publisher")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def io_path(self) -> str:
        """``"libzmq"`` when this object's hot-path socket I/O calls libzmq directly (the fast
        path), ``"pyzmq"`` when it goes through pyzmq; see "The libzmq fast path" in
        docs/operations.md for when each is taken. A publisher keeping a late-joiner history
        sends through pyzmq."""
        return "libzmq" if self._fast_addr and self._history is None else "pyzmq"

    @staticmethod
    def _finalize(stop: threading.Event, wake: threading.Event, sock: zmq.Socket) -> None:
        stop.set()
        wake.set()
        if not sock.closed:
            sock.close(linger=0)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pybus.Publisher {state} {self.endpoints} id={self.publisher_id:016x}>"


class _Held:
    """Releases a lock acquired beforehand when the block ends."""

    __slots__ = ("_lock",)

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class _Retry:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<retry>"


_RETRY = _Retry()
