"""An at-least-once work queue over ZeroMQ ROUTER/DEALER.

:class:`WorkQueue` binds a ROUTER; :class:`pybus.Worker` processes connect DEALERs. A background
dispatcher thread owns the socket and all delivery state:

* credit-based dispatch: a worker announces how many messages it may hold (its credit); the
  dispatcher sends batches (many messages in one ZeroMQ frame) to the worker with the most free
  credit, splitting the backlog evenly between the workers that have room;
* a worker acknowledges (ACK, batched) or rejects (NACK with the error) each message; an ack or
  nack gives the credit back;
* a nacked message is redelivered after the retry policy's delay from a timer heap, so a
  delayed message never blocks the ones behind it; after the policy's last attempt it goes to
  the dead-letter queue with its error;
* heartbeats both ways (the ZeroMQ guide's Paranoid Pirate): a worker silent for
  ``heartbeat_interval_s * heartbeat_liveness`` is presumed dead and its unacknowledged messages
  go to other workers; a message not acknowledged within ``ack_timeout_s`` counts as a failed
  attempt (``AckTimeout``) and is redelivered like a nacked one;
* with ``journal="path.db"`` every message is committed to SQLite before ``put()`` returns and
  deleted once acknowledged or dead-lettered; a queue opened on the same journal redelivers
  whatever is left.

Delivery is at least once: a message may be handled twice (a worker killed after its handler
ran but before its ack left). Workers can suppress such duplicates over a window of ids.

Attempts: only a nack or a missed ack deadline consumes one of the retry policy's attempts. A
redelivery because the worker vanished (missed heartbeats, BYE, socket gone) does not, so
killing workers never sends a healthy message to the DLQ; the flip side is that a message
that crashes every worker process it reaches is redelivered until one acks or nacks it.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, cast

import zmq

from .. import metrics as _metrics
from .. import tracing
from .._deprecated import DeprecatedAlias, renamed
from .._lifecycle import Closeable
from ..errors import (
    BackpressureError,
    BusError,
    ClosedError,
    ValidationError,
    from_zmq,
)
from ..metrics.samples import RawSample, ReadyUntilClosed, transport_samples
from ..store.journal import Journal
from ..transport import sockets as _sockets
from ..transport.channel import MessageChannel
from ..transport.iopath import IOPath
from ..wire.payload import encode_payload
from ._core import DispatchCore
from ._dedupe import PutDedupe, check_dedupe_key, check_window
from ._keys import ON_KEY_FAILURE
from ._options import check_queue_options
from ._policy import RetryPlan, Throttle
from ._records import (
    R_BATCH,
    R_TS,
    JBatch,
    Rec,
    check_key,
    check_priority,
    check_topic,
    due_ns,
    jentry,
    pack_headers,
    rid,
    topic_cache,
)

__all__ = ["WorkQueue"]

_queue_seq = itertools.count()

log = logging.getLogger("pybus.workqueue")

#: how many frames the dispatcher reads per loop turn before it dispatches again
_RECV_BURST = 256
#: journal deletes are batched: flushed at this many ids, or after this many seconds
_JOURNAL_FLUSH_IDS = 4096
_JOURNAL_FLUSH_S = 0.005
#: a producer yields the GIL to the dispatcher thread once per this many puts (_submit)
_YIELD_EVERY_PUTS = 256


class _RouterOut:
    """Non-blocking sends on the ROUTER for the dispatcher core: ``send(ident, frame)`` is
    False when the peer is gone (EHOSTUNREACH...). It holds no reference to the queue (no
    cycle through the core)."""

    __slots__ = ("chan",)

    def __init__(self, router: zmq.Socket[Any]) -> None:
        # the ROUTER's channel; the pyzmq one (safe on a closed socket) once it closes
        self.chan = MessageChannel.open(router)

    def send(self, ident: bytes, frame: bytes) -> bool:
        return not self.chan.send_parts((ident, frame))


class _CoreSetting:
    """A WorkQueue attribute kept on its dispatcher core, which reads it at every decision."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj._core, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj._core, self.name, value)


#: Largest frame a worker may send (ACK of MAX_IDS_PER_FRAME ids, plus NACK error texts).
_MAX_WORKER_FRAME_BYTES = 64 << 20


class WorkQueue(Closeable, IOPath, ReadyUntilClosed):
    """At-least-once work queue: binds a ROUTER and hands messages to :class:`pybus.Worker`.

    Parameters
    ----------
    endpoint : str
        ZeroMQ endpoint to bind (``tcp://127.0.0.1:5555``, ``ipc:///tmp/q``, ``inproc://q``;
        ``tcp://127.0.0.1:*`` picks a free port, see :attr:`endpoint`).
    retry : pybus.RetryPolicy, optional
        Redelivery schedule and attempt limit for nacked messages; default
        ``RetryPolicy.exponential(0.1, max_delay_s=5.0, max_attempts=5)``. A handler exception
        that is a :class:`pybus.BusError` is retried only when it is ``retryable`` (or the
        policy's ``retry_on`` says so); any other exception is presumed transient.
    dlq : pybus.DeadLetterQueue, optional
        Where a message goes after the last attempt. Without one, such messages are dropped
        and counted (``stats()["dead_lettered"]``) and a warning is logged.
    journal : str or os.PathLike, optional
        SQLite file (WAL mode) holding every message not yet acked or dead-lettered; opening
        a queue on an existing journal redelivers its messages.
    ack_timeout_s : float
        Seconds a worker may hold a message without acking it; past that the delivery counts
        as a failed attempt (error type ``AckTimeout``) and the message is redelivered.
        ``ack_timeout=`` is its deprecated old name.
    heartbeat_interval_s : float
        Seconds between heartbeats in both directions (told to workers on HELLO).
        ``heartbeat_interval=`` is its deprecated old name (a DeprecationWarning; removed in
        the next release).
    heartbeat_liveness : int
        Heartbeat intervals of silence after which a worker is presumed dead.
    max_in_flight : int
        Upper bound on messages held by all workers together.
    max_queued : int
        Upper bound on messages put and not yet finished; ``put()`` blocks (up to
        ``put_timeout_s``) when it is reached.
    put_timeout_s : float, optional
        Seconds ``put()`` waits for room when ``max_queued`` is reached before raising
        :class:`pybus.BackpressureError`; ``None`` waits forever. ``put_timeout=`` is its
        deprecated old name.
    breaker : pybus.CircuitBreaker, optional
        Fed with every ack (success) and nack (failure); while it is open nothing is
        dispatched.
    rate_limit : pybus.RateLimiter, optional
        Caps the dispatch rate (messages per second); the dispatcher never blocks on it.
    journal_sync : {"normal", "full"}
        See :class:`pybus.store.journal.Journal`.
    security : pybus.Curve, optional
        CURVE for the ROUTER (usually ``Curve.server`` with the workers' keys allowed).
    liveness : pybus.Liveness, optional
        ZMTP heartbeats, reconnection backoff and peer events (default ``Liveness()``).
    registry : pybus.metrics.Registry or False, optional
        Where this object reports its counters (default: ``pybus.metrics.default_registry``;
        ``False``: nowhere).
    context : zmq.Context, optional
        The ZeroMQ context for the queue's sockets (needed for ``inproc://`` workers in the
        same context). It stays the caller's: :meth:`close` closes the sockets but never
        terminates it. Default: a private context, terminated by :meth:`close`.
    priority_aging_n : int
        The aging rule of priorities: a waiting message's priority rises by one for every
        ``priority_aging_n`` messages handed out while it waits, so a steady stream of urgent
        work cannot starve the rest (a message of priority ``p`` goes after at most
        ``(9 - p) * priority_aging_n`` later arrivals).
    on_key_failure : {"block", "continue"}
        What a failed message with a ``key`` does to the later messages of its key:
        ``"block"`` (the default) holds them until it is acked or dead-lettered, so order
        holds strictly; ``"continue"`` lets them go on, and its retry queues behind them.
    dedupe_window_s : float
        How long a ``put(..., dedupe_key=)`` key refuses a second copy (default 120 s).
    max_dedupe_keys : int
        The most dedupe keys remembered; past it the oldest are forgotten early (counted in
        ``stats()["dedupe_evicted"]``).

    Examples
    --------
    >>> with WorkQueue("tcp://127.0.0.1:*", journal="jobs.db") as q:  # doctest: +SKIP
    ...     q.put("jobs.resize", {"image": "a.png"})
    ...     q.join(timeout=10)
    """

    def __init__(
        self,
        endpoint: str,
        retry: Any = None,
        dlq: Any = None,
        journal: str | os.PathLike[str] | None = None,
        ack_timeout_s: float = 30.0,
        heartbeat_interval_s: float = 1.0,
        heartbeat_liveness: int = 3,
        max_in_flight: int = 100_000,
        max_queued: int = 1_000_000,
        put_timeout_s: float | None = None,
        breaker: Any = None,
        rate_limit: Any = None,
        journal_sync: str = "normal",
        registry: Any = None,
        security: Any = None,
        liveness: Any = None,
        context: zmq.Context[Any] | None = None,
        *,
        priority_aging_n: int = 1000,
        on_key_failure: str = "block",
        dedupe_window_s: float = 120.0,
        max_dedupe_keys: int = 1_000_000,
        heartbeat_interval: float | None = None,
        ack_timeout: float | None = None,
        put_timeout: float | None = None,
    ) -> None:
        heartbeat_interval_s = renamed("WorkQueue", "heartbeat_interval", heartbeat_interval,
                                       "heartbeat_interval_s", heartbeat_interval_s, 1.0)
        ack_timeout_s = renamed("WorkQueue", "ack_timeout", ack_timeout, "ack_timeout_s",
                                ack_timeout_s, 30.0)
        put_timeout_s = renamed("WorkQueue", "put_timeout", put_timeout, "put_timeout_s",
                                put_timeout_s, None)
        check_queue_options(endpoint, dlq, ack_timeout_s, heartbeat_interval_s,
                            heartbeat_liveness, max_in_flight, max_queued, put_timeout_s, context)
        if isinstance(priority_aging_n, bool) or not isinstance(priority_aging_n, int) \
                or priority_aging_n < 1:
            raise ValidationError(f"priority_aging_n must be an int >= 1 (messages), got "
                                  f"{priority_aging_n!r}")
        if on_key_failure not in ON_KEY_FAILURE:
            raise ValidationError(f"on_key_failure must be one of {ON_KEY_FAILURE}, got "
                                  f"{on_key_failure!r}")
        check_window(dedupe_window_s, max_dedupe_keys)
        plan = RetryPlan(retry)
        throttle = Throttle(breaker, rate_limit)
        self.max_queued = max_queued
        self.put_timeout_s = put_timeout_s

        self._journal: Journal | None = Journal(journal, journal_sync) if journal else None
        epoch = self._journal.epoch if self._journal else int.from_bytes(os.urandom(4)) >> 1
        self._epoch = epoch
        self._next_id = (epoch << 32) + 1
        self._dedupe = PutDedupe(dedupe_window_s, max_dedupe_keys, self._journal,
                                 time.time_ns())

        # a given context is the caller's: never terminated here
        self._own_ctx = context is None
        self._ctx: zmq.Context[Any] = zmq.Context() if context is None else context
        self._rekick = False
        self._router = self._open_router(endpoint, security, liveness)
        self.endpoint: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._security = security  # its CURVE rejections are reported with the metrics
        if security is not None and security.is_server:
            security._register_owner(self)
        wake_addr = f"inproc://pybus-wq-wake-{next(_queue_seq)}-{id(self):x}"
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.linger = 0
        self._wake_pull.bind(wake_addr)
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.linger = 0
        self._wake_push.connect(wake_addr)

        # handover from user threads: a deque plus a one-shot wakeup
        # batches of records, each with "has a delay, a priority or a key" (the core sorts
        # those)
        self._inbox: deque[tuple[list[Rec], bool]] = deque()
        self._wake_armed = False
        self._put_lock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._waiters = 0
        self._closed = False
        self._stopping = False

        # dispatcher-owned state and decisions
        self._core = DispatchCore(
            self._out.send, plan, throttle, dlq, self._journal, f"WorkQueue {self.endpoint}",
            float(ack_timeout_s), float(heartbeat_interval_s), int(heartbeat_liveness),
            max_in_flight, priority_aging_n, on_key_failure,
        )
        # counters of the user side (written under _put_lock; read anywhere)
        self._n_put = 0
        self._puts_since_yield = 0
        self._n_recovered = (self._core.recover(self._journal, time.time_ns())
                             if self._journal else 0)

        if tracing.active():  # decided once: the untraced put stays as it is
            self.put = self._put_traced  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, name="pybus-wq-dispatch", daemon=True)
        self._thread.start()
        _metrics.attach(self, registry)

    ack_timeout_s = _CoreSetting()
    heartbeat_interval_s = _CoreSetting()
    heartbeat_liveness = _CoreSetting()
    max_in_flight = _CoreSetting()
    heartbeat_interval = DeprecatedAlias("heartbeat_interval_s")
    ack_timeout = DeprecatedAlias("ack_timeout_s")
    put_timeout = DeprecatedAlias("put_timeout_s")

    def _open_router(self, endpoint: str, security: Any, liveness: Any) -> zmq.Socket[Any]:
        """Bind the ROUTER (and set up self._watch, self._out, self._io_path); on failure
        release the context and journal and raise a pybus error."""
        router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Credit bounds what each worker is sent, so the send side needs no HWM of its own.
        router.sndhwm = 0
        # pyzmq sends frames above copy_threshold (64 KiB) zero-copy, which hands every
        # frame's release to its GC thread: more GIL traffic than a memcpy of ~100 KB costs.
        router.copy_threshold = 1 << 30
        try:
            # MAXMSGSIZE: worker frames are small (an ACK holds at most 2**20 ids, 16 MiB); a
            # larger one is refused by ZeroMQ before it allocates it
            self._watch = _sockets.configure(router, security=security, liveness=liveness,
                                             max_msg_bytes=_MAX_WORKER_FRAME_BYTES,
                                             receives_stream=True)
            router.bind(endpoint)
            # the ROUTER lives as long as the dispatcher (closed only as its thread ends)
            self._out = _RouterOut(router)
            self._io_path = self._out.chan.io_path
        except zmq.ZMQError as exc:
            router.close()
            if self._own_ctx:
                self._ctx.term()
            if self._journal:
                self._journal.close()
            raise from_zmq(exc, f"WorkQueue cannot bind {endpoint!r}") from None
        return cast("zmq.Socket[Any]", router)

    # ------------------------------------------------------------------ user side

    def _make(self, topic: object, payload: object, headers: object, due: int = 0,
              priority: int = 0, key: str | None = None) -> Rec:
        t = check_topic(topic)
        flags, data = encode_payload(payload)
        h = pack_headers(headers) if headers is not None else None
        return [0, 0, t, data, flags, h, time.time_ns(), None, 0.0, 0.0, None, due, priority,
                key]

    def _submit(self, recs: list[Rec], ordered: bool = False,
                dedupe_key: str | None = None) -> list[int]:
        if self._closed:
            raise ClosedError("the WorkQueue is closed; create a new one")
        if dedupe_key is not None:
            check_dedupe_key(dedupe_key)
        n = len(recs)
        self._wait_room(n)
        with self._put_lock:
            if self._closed:
                raise ClosedError("the WorkQueue is closed; create a new one")
            first = self._next_id
            drow = None
            if dedupe_key is not None:
                now_ns = time.time_ns()
                prior = self._dedupe.first_id(dedupe_key, now_ns)
                if prior is not None:
                    return [prior]  # put within the window already: nothing queued
                drow = self._dedupe.row(dedupe_key, first, now_ns)
            self._next_id = first + n
            ids = range(first, first + n)
            for r, mid in zip(recs, ids, strict=True):
                r[0] = mid
            if self._journal is not None:
                b = JBatch(first, n)
                for r in recs:
                    r[R_BATCH] = b
                if drow is None:
                    self._journal.add(first, map(jentry, recs))
                else:
                    self._journal.add(first, map(jentry, recs), drow, now_ns)
            if drow is not None:
                self._dedupe.remember(drow)
            self._inbox.append((recs, ordered))
            self._n_put += n
            if not self._wake_armed:
                self._wake_armed = True
                self._wake_push.send(b"", zmq.NOBLOCK)
        self._puts_since_yield += n
        if self._puts_since_yield >= _YIELD_EVERY_PUTS:
            self._puts_since_yield = 0
            if self._core.keys.waiting:
                # A producer in a tight loop keeps the GIL for the switch interval (5 ms) at
                # a time, and the dispatcher thread waits that long for each turn. A key's
                # next message goes out only on the turn after its predecessor's ack, so
                # keyed lines paid that wait on every message: let the dispatcher in. (Not
                # without waiting keys: then more turns only make smaller frames.)
                time.sleep(0)
        return list(ids)

    def _outstanding(self) -> int:
        return self._n_put + self._n_recovered - self._core.n_done

    def _wait_room(self, n: int) -> None:
        if self._outstanding() + n <= self.max_queued or self._outstanding() == 0:
            return
        deadline = None if self.put_timeout_s is None else time.monotonic() + self.put_timeout_s
        with self._cv:
            self._waiters += 1
            try:
                while self._outstanding() + n > self.max_queued and self._outstanding() > 0:
                    if self._closed:
                        raise ClosedError("the WorkQueue was closed while put() waited for room")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise BackpressureError(
                            f"the queue holds {self._outstanding()} unfinished messages "
                            f"(max_queued={self.max_queued}) and none finished within "
                            f"put_timeout_s={self.put_timeout_s}s; raise max_queued, add workers "
                            "or pass a longer put_timeout_s"
                        )
                    self._cv.wait(remaining if remaining is not None else 1.0)
            finally:
                self._waiters -= 1

    def put(self, topic: str, payload: Any, headers: Mapping[str, Any] | None = None, *,
            delay_s: float | None = None, not_before: datetime | float | None = None,
            priority: int = 0, key: str | None = None, dedupe_key: str | None = None) -> int:
        """Queue one message; return its id (a 64-bit int, unique per queue and journal).

        ``payload`` bytes go as they are; anything else is msgpack-encoded. With a journal
        the message is committed before this returns.

        ``delay_s`` (seconds from now) or ``not_before`` (an aware datetime, or seconds since
        the epoch): the queue holds the message and hands it out no earlier than that time,
        by the wall clock (the time is in the journal: it survives a restart). Workers never
        hold delayed messages.

        ``priority`` (0, the default and lowest, to 9): waiting messages are handed out
        highest priority first, first in first out within one, with the aging rule of
        ``priority_aging_n``.

        ``key``: messages with the same key are handled one at a time, in put order, across
        all workers and through redeliveries (a failure blocks the key as
        ``on_key_failure`` says); different keys run concurrently.

        ``dedupe_key``: a second put with the same key within ``dedupe_window_s`` seconds of
        the first queues nothing and returns the first one's id (counted in
        ``stats()["put_duplicates"]``); with a journal the keys survive a restart.

        Raises
        ------
        TopicError, ValidationError
            Bad topic, payload or headers.
        BackpressureError
            ``max_queued`` unfinished messages and no room within ``put_timeout_s``.
        ClosedError
            After :meth:`close`.
        """
        due = due_ns(delay_s, not_before) if delay_s is not None or not_before is not None else 0
        if priority:
            check_priority(priority)
        if key is not None:
            check_key(key)
        rec = self._make(topic, payload, headers, due, priority, key)
        return self._submit([rec], bool(due or priority or key), dedupe_key)[0]

    def _put_traced(self, topic: str, payload: Any,
                    headers: Mapping[str, Any] | None = None, *, delay_s: float | None = None,
                    not_before: datetime | float | None = None, priority: int = 0,
                    key: str | None = None, dedupe_key: str | None = None) -> int:
        """put() with a PRODUCER span and the trace context in the headers (pybus.tracing;
        chosen at construction when a tracer provider is set)."""
        due = due_ns(delay_s, not_before)
        check_priority(priority)
        if key is not None:
            check_key(key)
        with tracing.produce(topic, headers) as (span, traced):
            rec = self._make(topic, payload, traced, due, priority, key)
            mid = self._submit([rec], bool(due or priority or key), dedupe_key)[0]
            span.set_attribute("messaging.message.id", str(mid))
            return mid

    def put_many(self, items: Iterable[Any]) -> list[int]:
        """Queue many ``(topic, payload)`` or ``(topic, payload, headers)`` items at once.

        Validated first (nothing is queued when one item is bad), journaled in ONE
        transaction, handed to the dispatcher in one step. Returns the ids in order.
        """
        recs: list[Rec] = []
        append = recs.append
        cache = topic_cache
        ts = time.time_ns()  # one put time for the whole call
        for item in items:
            # fast path: a (str topic seen before, bytes payload) pair
            if type(item) is tuple and len(item) == 2:
                topic, payload = item
                if type(payload) is bytes and type(topic) is str and topic in cache:
                    append([0, 0, topic, payload, 0, None, ts, None, 0.0, 0.0, None, 0, 0,
                            None])
                    continue
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ValidationError(
                    f"put_many item {len(recs)} is {type(item).__name__}; each item must be "
                    "a (topic, payload) or (topic, payload, headers) tuple"
                )
            rec = self._make(item[0], item[1], item[2] if len(item) == 3 else None)
            rec[R_TS] = ts
            append(rec)
        if not recs:
            return []
        return self._submit(recs)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every message put (and recovered from the journal) is finished.

        Finished means acknowledged or dead-lettered (and, with a journal, deleted from it).

        Returns
        -------
        bool
            True when everything finished; False when ``timeout`` seconds passed first
            (``None`` waits forever). It does not raise on timeout.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0
        ):
            raise ValidationError(
                f"timeout must be a number >= 0 or None (wait forever), got {timeout!r}"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._waiters += 1
            try:
                while self._outstanding() > 0:
                    if self._closed:
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cv.wait(min(remaining, 1.0) if remaining is not None else 1.0)
                return True
            finally:
                self._waiters -= 1

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "work_queue"

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        for ev in ("put", "put_duplicates", "recovered", "dispatched", "acked", "nacked",
                   "redelivered", "dead_lettered", "ack_timeouts"):
            yield "pybus_tasks_total", {"event": ev}, s[ev]
        yield "pybus_dead_lettered_total", {}, s["dead_lettered"]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_in_flight", {}, s["in_flight"]
        yield "pybus_queue_depth", {}, s["queue_depth"]
        yield "pybus_queue_delayed", {}, s["delayed"]
        for prio, n in enumerate(s["pending_by_priority"]):
            yield "pybus_queue_pending", {"priority": str(prio)}, n
        yield "pybus_queue_keys_waiting", {}, s["keys_waiting"]
        yield "pybus_queue_blocked_keys", {}, s["blocked_keys"]
        yield "pybus_workers", {}, s["workers"]
        yield from transport_samples(s, self._security)

    def stats(self) -> dict[str, Any]:
        """Counters: put, recovered, dispatched, acked, nacked, redelivered, dead_lettered,
        in_flight, queue_depth (delayed ones included), delayed (held until their time),
        next_due_s (seconds until the next delayed one is due, or None),
        pending_by_priority (waiting for a worker, per priority 0-9), keys_held (keys with
        a message queued), keys_waiting (messages waiting behind the one holding their key),
        blocked_keys (keys whose holder failed and waits for its retry), put_duplicates
        (puts refused by their dedupe_key), dedupe_keys, dedupe_evicted, workers, duplicates
        (reported by workers), decode_errors
        (malformed frames dropped), late_acks (acks for finished messages), stale_nacks,
        ack_timeouts, workers_lost, unknown_peers, and the ROUTER monitor's ``peer_events``
        (event name -> count)."""
        core = self._core
        s: dict[str, Any] = dict(core.c)
        w = self._watch
        s["peer_events"] = dict(w.events) if w is not None else {}
        s["put"] = self._n_put
        s["recovered"] = self._n_recovered
        s["in_flight"] = core.in_flight
        s["queue_depth"] = self._outstanding() - core.in_flight
        delayed = list(core.delayed[:1])  # the dispatcher thread owns the heap: a snapshot
        s["delayed"] = len(core.delayed)
        by_priority = getattr(core.pending, "depth_by_priority", None)  # once prioritized
        s["pending_by_priority"] = (by_priority() if by_priority is not None
                                    else [len(core.pending)] + [0] * 9)
        s["next_due_s"] = (max(0.0, (delayed[0][0] - time.time_ns()) / 1e9) if delayed
                           else None)
        s["workers"] = len(core.workers)
        keys = core.keys
        s["keys_held"] = len(keys.holder)
        s["keys_waiting"] = keys.n_waiting
        s["blocked_keys"] = keys.n_blocked(core.failures)
        s.update(self._dedupe.stats())
        return s

    def _security_rekick(self) -> None:
        """After :meth:`pybus.Curve.revoke`: drop every connection (peers authenticate again)."""
        if self._watch is not None:
            self._watch.drop_connections()
            return
        self._rekick = True  # not monitored: the dispatcher unbinds and rebinds
        try:
            with self._put_lock:
                if not self._closed:
                    self._wake_push.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def close(self, timeout: float = 5.0) -> None:
        """Stop the dispatcher and release the socket (idempotent).

        Messages not yet acknowledged stay in the journal when there is one; without a
        journal they are abandoned (``join()`` first to avoid that).
        """
        with self._put_lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            try:
                self._wake_push.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self._thread.join(timeout)
        with self._cv:
            self._cv.notify_all()
        self._wake_push.close()
        if not self._thread.is_alive():
            if self._own_ctx:
                self._ctx.term()
            if self._journal is not None:
                self._journal.close()

    def __repr__(self) -> str:
        return f"<WorkQueue {self.endpoint} outstanding={self._outstanding()}>"

    # ------------------------------------------------------------------ dispatcher

    def _run(self) -> None:
        router = self._router
        core = self._core
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        tick = min(core.heartbeat_interval_s / 2, core.ack_timeout_s / 4, 0.25)
        next_house = time.monotonic() + tick
        try:
            while not self._stopping:
                if self._rekick:  # a key was revoked: peers must authenticate again
                    self._rekick = False
                    _sockets.rebind(router, [self.endpoint], [])
                now = time.monotonic()
                wait = next_house - now
                if core.timers:
                    wait = min(wait, core.timers[0][0] - now)
                if core.delayed:  # the next delayed message's time, by the wall clock
                    wait = min(wait, (core.delayed[0][0] - time.time_ns()) / 1e9)
                if core.jtouched:
                    wait = min(wait, core.jdel_since + _JOURNAL_FLUSH_S - now)
                if core.pending and core.throttled:
                    wait = min(wait, core.throttle.wait_s(now))
                events = poller.poll(max(0, math.ceil(wait * 1000)))
                if self._stopping:
                    break
                if events:
                    self._take_inbox()
                    self._read_router()
                now = time.monotonic()
                if core.timers and core.timers[0][0] <= now:
                    core.fire_timers(now)
                if core.delayed and core.delayed[0][0] <= time.time_ns():
                    core.release_due(time.time_ns())
                if now >= next_house:
                    core.housekeeping(now)
                    next_house = now + tick
                if core.pending:
                    core.dispatch(time.monotonic())
                if core.jtouched and (
                    core.jdone >= _JOURNAL_FLUSH_IDS
                    or now - core.jdel_since >= _JOURNAL_FLUSH_S
                    or self._outstanding() - core.jdone <= 0
                ):
                    core.flush_journal()
                if self._waiters:
                    with self._cv:
                        self._cv.notify_all()
        except Exception:  # pragma: no cover - a bug; make it loud, never silent
            log.exception("pybus WorkQueue dispatcher crashed")
            raise
        finally:
            try:
                core.flush_journal()
            except BusError:
                pass
            poller.unregister(router)
            self._out.chan = MessageChannel(router)
            router.close()
            self._wake_pull.close()

    def _take_inbox(self) -> None:
        pull = self._wake_pull
        while True:
            try:
                pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        # disarm BEFORE draining: a put() that lands after the drain re-arms and wakes us
        self._wake_armed = False
        inbox = self._inbox
        if inbox:
            core = self._core
            live, pending = core.live, core.pending
            pop = inbox.popleft
            placed: list[Rec] = []  # a run of puts with a delay, a priority or a key
            while inbox:
                batch, ordered = pop()
                live.update(zip(map(rid, batch), batch, strict=True))
                if ordered:  # the core places them, a run at a time (one call per drain)
                    placed += batch
                    continue
                if placed:
                    core.enqueue(placed, time.time_ns())
                    pending = core.pending  # (it may have become a PriorityPending)
                    placed = []
                pending.extend(batch)
            if placed:
                core.enqueue(placed, time.time_ns())

    def _read_router(self) -> None:
        recv_parts = self._out.chan.recv_parts
        handle = self._core.handle
        c = self._core.c
        for _ in range(_RECV_BURST):
            frames = recv_parts()
            if frames is None:
                return
            if len(frames) != 2:
                c["decode_errors"] += 1
                continue
            try:
                handle(frames[0], frames[1], time.monotonic())
            except BusError:  # FrameError (malformed) or ValidationError
                c["decode_errors"] += 1
