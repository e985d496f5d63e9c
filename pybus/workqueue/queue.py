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
  ``heartbeat_interval * heartbeat_liveness`` is presumed dead and its unacknowledged messages
  go to other workers; a message not acknowledged within ``ack_timeout`` counts as a failed
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

import heapq
import itertools
import logging
import math
import operator
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgpack
import zmq

from .. import metrics as _metrics
from .._native import _zmqfast
from ..errors import (
    BackpressureError,
    BusError,
    ClosedError,
    ErrorCode,
    RemoteError,
    TopicError,
    ValidationError,
    from_zmq,
)
from ..metrics.samples import RawSample, transport_samples
from ..store.journal import Journal
from ..transport import sockets as _sockets
from ..wire import workqueue as P

__all__ = ["WorkQueue"]

log = logging.getLogger("pybus.workqueue")

_TOPIC_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}(\.[A-Za-z0-9_\-]{1,64}){0,31}\Z")
_TOPIC_RULE = "topics are 1-32 dot-separated segments of 1-64 chars of [A-Za-z0-9_-]"
_topic_cache: dict[str, bool] = {}
_TOPIC_CACHE_MAX = 4096

#: how many frames the dispatcher reads per loop turn before it dispatches again
_RECV_BURST = 256
#: most messages in one DISPATCH frame
_MAX_BATCH = 1024
#: journal deletes are batched: flushed at this many ids, or after this many seconds
_JOURNAL_FLUSH_IDS = 4096
_JOURNAL_FLUSH_S = 0.005
#: when the DLQ refuses a message, it is kept and offered again after this delay
_DLQ_RETRY_S = 1.0


def _check_topic(topic: object) -> str:
    if type(topic) is str and topic in _topic_cache:
        return topic
    if not isinstance(topic, str):
        raise TopicError(f"topic must be a str, got {type(topic).__name__}; {_TOPIC_RULE}")
    if not _TOPIC_RE.match(topic):
        raise TopicError(f"topic {topic!r} is not allowed; {_TOPIC_RULE}")
    if len(_topic_cache) < _TOPIC_CACHE_MAX:
        _topic_cache[topic] = True
    return topic


def _encode_payload(payload: object) -> tuple[bytes, int]:
    if type(payload) is bytes:
        return payload, 0  # type: ignore[return-value]
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), 0
    try:
        return msgpack.packb(payload), P.FLAG_MSGPACK
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(
            f"payload of type {type(payload).__name__} cannot be sent ({exc}); send bytes "
            "(passed through raw) or a msgpack-serialisable value (None, bool, int, float, "
            "str, bytes, list, tuple, dict)"
        ) from None


def _pack_headers(headers: object) -> bytes | None:
    """Validate headers and return them msgpack-packed (they travel and rest packed)."""
    if headers is None:
        return None
    if not isinstance(headers, Mapping) or not all(isinstance(k, str) for k in headers):
        raise ValidationError(
            f"headers must be a dict with str keys, got {type(headers).__name__}"
        )
    if not headers:
        return None
    try:
        return msgpack.packb(dict(headers))  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(
            f"headers cannot be encoded ({exc}); values must be msgpack-serialisable"
        ) from None


def _positive(name: str, value: float, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError(f"{name} must be a number > 0, got {value!r}")


def _positive_int(name: str, value: int, lo: int = 1, hi: int = 1 << 31) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationError(f"{name} must be an int in {lo}..{hi}, got {value!r}")


# A message record is a list (cheaper to make and index than an object, and its first seven
# items are exactly the wire entry of docs/wire-workqueue.md, so dispatch sends rec[:7]):
(R_ID, R_DELIVERY, R_TOPIC, R_PAYLOAD, R_FLAGS, R_HEADERS, R_TS,
 R_WORKER, R_SENT, R_BORN, R_BATCH) = range(11)
# R_DELIVERY: deliveries so far; R_TS: put time (ns since the epoch); R_WORKER: the
# _WorkerState holding it, or None; R_SENT: monotonic time of the last dispatch; R_BORN: of the
# first one; R_BATCH: its _JBatch when there is a journal.
_Rec = list  # [id, delivery, topic, payload, flags, headers, ts, worker, sent_at, born, batch]
_jentry = operator.itemgetter(R_TOPIC, R_PAYLOAD, R_FLAGS, R_HEADERS, R_TS)
_rid = operator.itemgetter(R_ID)


class _JBatch:
    """A journal batch (one put()/put_many() call): how many of its messages are unfinished,
    and which finished since the last journal flush."""

    __slots__ = ("first", "remaining", "done", "touched")

    def __init__(self, first: int, remaining: int) -> None:
        self.first = first
        self.remaining = remaining
        self.done: list[int] = []
        self.touched = False


class _Failure:
    """Failure history of a message that was nacked or timed out (kept only for those)."""

    __slots__ = ("failures", "first", "last", "error", "run")

    def __init__(self) -> None:
        self.failures = 0
        self.first = 0.0
        self.last = 0.0
        self.error: tuple[str, str, int] = ("", "", int(ErrorCode.UNKNOWN))
        self.run: Any = None  # the RetryRun deciding its delays


class _WorkerState:
    __slots__ = ("ident", "capacity", "held", "inflight", "last_recv", "last_send")

    def __init__(self, ident: bytes, capacity: int, now: float) -> None:
        self.ident = ident
        self.capacity = capacity
        self.held = 0  # messages sent to it and not yet acked/nacked by it
        self.inflight: dict[int, _Rec] = {}  # insertion order == dispatch order
        self.last_recv = now
        self.last_send = now


from ._policy import RetryPlan, Throttle  # noqa: E402  (after the record types)

#: Largest frame a worker may send (ACK of MAX_IDS_PER_FRAME ids, plus NACK error texts).
_MAX_WORKER_FRAME_BYTES = 64 << 20


class WorkQueue:
    """At-least-once work queue: binds a ROUTER and hands messages to :class:`pybus.Worker`.

    Parameters
    ----------
    endpoint : str
        ZeroMQ endpoint to bind (``tcp://127.0.0.1:5555``, ``ipc:///tmp/q``, ``inproc://q``;
        ``tcp://127.0.0.1:*`` picks a free port, see :attr:`endpoint`).
    retry : pybus.RetryPolicy, optional
        Redelivery schedule and attempt limit for nacked messages; default
        ``RetryPolicy.exponential(0.1, max_delay=5.0, max_attempts=5)``. A handler exception
        that is a :class:`pybus.BusError` is retried only when it is ``retryable`` (or the
        policy's ``retry_on`` says so); any other exception is presumed transient.
    dlq : pybus.DeadLetterQueue, optional
        Where a message goes after the last attempt. Without one, such messages are dropped
        and counted (``stats()["dead_lettered"]``) and a warning is logged.
    journal : str or os.PathLike, optional
        SQLite file (WAL mode) holding every message not yet acked or dead-lettered; opening
        a queue on an existing journal redelivers its messages.
    ack_timeout : float
        Seconds a worker may hold a message without acking it; past that the delivery counts
        as a failed attempt (error type ``AckTimeout``) and the message is redelivered.
    heartbeat_interval : float
        Seconds between heartbeats in both directions (told to workers on HELLO).
    heartbeat_liveness : int
        Heartbeat intervals of silence after which a worker is presumed dead.
    max_in_flight : int
        Upper bound on messages held by all workers together.
    max_queued : int
        Upper bound on messages put and not yet finished; ``put()`` blocks (up to
        ``put_timeout``) when it is reached.
    put_timeout : float, optional
        Seconds ``put()`` waits for room when ``max_queued`` is reached before raising
        :class:`pybus.BackpressureError`; ``None`` waits forever.
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
        ack_timeout: float = 30.0,
        heartbeat_interval: float = 1.0,
        heartbeat_liveness: int = 3,
        max_in_flight: int = 100_000,
        max_queued: int = 1_000_000,
        put_timeout: float | None = None,
        breaker: Any = None,
        rate_limit: Any = None,
        journal_sync: str = "normal",
        registry: Any = None,
        security: Any = None,
        liveness: Any = None,
    ) -> None:
        if not isinstance(endpoint, str):
            raise ValidationError(
                f"endpoint must be a str like tcp://127.0.0.1:5555, got {type(endpoint).__name__}"
            )
        _positive("ack_timeout", ack_timeout)
        _positive("heartbeat_interval", heartbeat_interval)
        _positive_int("heartbeat_liveness", heartbeat_liveness, 1, 1000)
        _positive_int("max_in_flight", max_in_flight)
        _positive_int("max_queued", max_queued)
        _positive("put_timeout", put_timeout, allow_none=True)  # type: ignore[arg-type]
        self._plan = RetryPlan(retry)
        self._throttle = Throttle(breaker, rate_limit)
        self._dlq = dlq
        if dlq is not None and not callable(getattr(dlq, "add", None)):
            raise ValidationError("dlq must be a pybus.DeadLetterQueue (an object with add())")
        self.ack_timeout = float(ack_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_liveness = int(heartbeat_liveness)
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.put_timeout = put_timeout

        self._journal: Journal | None = Journal(journal, journal_sync) if journal else None
        epoch = self._journal.epoch if self._journal else int.from_bytes(os.urandom(4)) >> 1
        self._epoch = epoch
        self._next_id = (epoch << 32) + 1

        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.linger = 0
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Credit bounds what each worker is sent, so the send side needs no HWM of its own.
        self._router.sndhwm = 0
        # pyzmq sends frames above copy_threshold (64 KiB) zero-copy, which hands every
        # frame's release to its GC thread: more GIL traffic than a memcpy of ~100 KB costs.
        self._router.copy_threshold = 1 << 30
        self._rekick = False
        try:
            # MAXMSGSIZE: worker frames are small (an ACK holds at most 2**20 ids, 16 MiB); a
            # larger one is refused by ZeroMQ before it allocates it
            self._watch = _sockets.configure(self._router, security=security, liveness=liveness,
                                             max_msg_bytes=_MAX_WORKER_FRAME_BYTES,
                                             receives_stream=True)
            self._router.bind(endpoint)
            # the ROUTER's address for _zmqfast (0: pyzmq's calls); the ROUTER lives as long
            # as the dispatcher (closed only as its thread ends)
            self._router_addr = _sockets.fast_address(self._router)
            self._io_path = "libzmq" if self._router_addr else "pyzmq"  # io_path
        except zmq.ZMQError as exc:
            self._router.close()
            self._ctx.term()
            if self._journal:
                self._journal.close()
            raise from_zmq(exc, f"WorkQueue cannot bind {endpoint!r}") from None
        self.endpoint: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._security = security  # its CURVE rejections are reported with the metrics
        if security is not None and security.is_server:
            security._register_owner(self)
        wake_addr = f"inproc://pybus-wq-wake-{id(self):x}"
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.linger = 0
        self._wake_pull.bind(wake_addr)
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.linger = 0
        self._wake_push.connect(wake_addr)

        # handover from user threads: a deque plus a one-shot wakeup
        self._inbox: deque[list[_Rec]] = deque()  # batches of records
        self._wake_armed = False
        self._put_lock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._waiters = 0
        self._closed = False
        self._stopping = False

        # dispatcher-owned state
        self._live: dict[int, _Rec] = {}
        self._pending: deque[_Rec] = deque()
        # (due, seq, rec, to_dlq): redeliver rec, or (to_dlq) offer it to the DLQ again
        self._timers: list[tuple[float, int, _Rec, bool]] = []
        self._timer_seq = itertools.count()
        self._workers: dict[bytes, _WorkerState] = {}
        self._in_flight = 0
        self._throttled = False  # the last dispatch stopped on the breaker or rate limiter
        self._jtouched: list[_JBatch] = []  # batches with finished messages not yet flushed
        self._jdel_since = 0.0
        self._jdone = 0
        self._failures: dict[int, _Failure] = {}  # only for messages that failed

        # counters (written by one thread each; read anywhere)
        self._n_put = 0
        self._n_recovered = 0
        self._n_done = 0
        self._c: dict[str, int] = dict.fromkeys(
            (
                "dispatched",
                "acked",
                "nacked",
                "redelivered",
                "dead_lettered",
                "duplicates",
                "decode_errors",
                "late_acks",
                "stale_nacks",
                "ack_timeouts",
                "workers_lost",
                "unknown_peers",
                "dlq_errors",
            ),
            0,
        )

        if self._journal is not None:
            recovered: list[_Rec] = []
            for first, _n, rows in self._journal.recover():
                b = _JBatch(first, len(rows))
                if not rows:  # nothing left to do: let the next flush delete it
                    b.touched = True
                    self._jtouched.append(b)
                recovered += [[mid, 0, t, p, f, h, ts, None, 0.0, 0.0, b]
                              for mid, t, p, f, h, ts in rows]
            self._live.update(zip(map(_rid, recovered), recovered, strict=True))
            self._pending.extend(recovered)
            self._n_recovered = len(recovered)

        self._thread = threading.Thread(target=self._run, name="pybus-wq-dispatch", daemon=True)
        self._thread.start()
        _metrics.attach(self, registry)

    # ------------------------------------------------------------------ user side

    def _make(self, topic: object, payload: object, headers: object) -> _Rec:
        t = _check_topic(topic)
        data, flags = _encode_payload(payload)
        h = _pack_headers(headers) if headers is not None else None
        return [0, 0, t, data, flags, h, time.time_ns(), None, 0.0, 0.0, None]

    def _submit(self, recs: list[_Rec]) -> list[int]:
        if self._closed:
            raise ClosedError("the WorkQueue is closed; create a new one")
        n = len(recs)
        self._wait_room(n)
        with self._put_lock:
            if self._closed:
                raise ClosedError("the WorkQueue is closed; create a new one")
            first = self._next_id
            self._next_id = first + n
            ids = range(first, first + n)
            for r, mid in zip(recs, ids, strict=True):
                r[0] = mid
            if self._journal is not None:
                b = _JBatch(first, n)
                for r in recs:
                    r[R_BATCH] = b
                self._journal.add(first, map(_jentry, recs))
            self._inbox.append(recs)
            self._n_put += n
            if not self._wake_armed:
                self._wake_armed = True
                self._wake_push.send(b"", zmq.NOBLOCK)
        return list(ids)

    def _outstanding(self) -> int:
        return self._n_put + self._n_recovered - self._n_done

    def _wait_room(self, n: int) -> None:
        if self._outstanding() + n <= self.max_queued or self._outstanding() == 0:
            return
        deadline = None if self.put_timeout is None else time.monotonic() + self.put_timeout
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
                            f"put_timeout={self.put_timeout}s; raise max_queued, add workers "
                            "or pass a longer put_timeout"
                        )
                    self._cv.wait(remaining if remaining is not None else 1.0)
            finally:
                self._waiters -= 1

    def put(self, topic: str, payload: Any, headers: Mapping[str, Any] | None = None) -> int:
        """Queue one message; return its id (a 64-bit int, unique per queue and journal).

        ``payload`` bytes go as they are; anything else is msgpack-encoded. With a journal
        the message is committed before this returns.

        Raises
        ------
        TopicError, ValidationError
            Bad topic, payload or headers.
        BackpressureError
            ``max_queued`` unfinished messages and no room within ``put_timeout``.
        ClosedError
            After :meth:`close`.
        """
        return self._submit([self._make(topic, payload, headers)])[0]

    def put_many(self, items: Iterable[Any]) -> list[int]:
        """Queue many ``(topic, payload)`` or ``(topic, payload, headers)`` items at once.

        Validated first (nothing is queued when one item is bad), journaled in ONE
        transaction, handed to the dispatcher in one step. Returns the ids in order.
        """
        recs: list[_Rec] = []
        append = recs.append
        cache = _topic_cache
        ts = time.time_ns()  # one put time for the whole call
        for item in items:
            # fast path: a (str topic seen before, bytes payload) pair
            if type(item) is tuple and len(item) == 2:
                topic, payload = item
                if type(payload) is bytes and type(topic) is str and topic in cache:
                    append([0, 0, topic, payload, 0, None, ts, None, 0.0, 0.0, None])
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
        for ev in ("put", "recovered", "dispatched", "acked", "nacked", "redelivered",
                   "dead_lettered", "ack_timeouts"):
            yield "pybus_tasks_total", {"event": ev}, s[ev]
        yield "pybus_dead_lettered_total", {}, s["dead_lettered"]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_in_flight", {}, s["in_flight"]
        yield "pybus_queue_depth", {}, s["queue_depth"]
        yield "pybus_workers", {}, s["workers"]
        yield from transport_samples(s, self._security)

    def metrics_readiness(self) -> tuple[bool, str]:
        return (False, "work queue is closed") if self._closed else (True, "")

    def stats(self) -> dict[str, Any]:
        """Counters: put, recovered, dispatched, acked, nacked, redelivered, dead_lettered,
        in_flight, queue_depth, workers, duplicates (reported by workers), decode_errors
        (malformed frames dropped), late_acks (acks for finished messages), stale_nacks,
        ack_timeouts, workers_lost, unknown_peers, and the ROUTER monitor's ``peer_events``
        (event name -> count)."""
        s: dict[str, Any] = dict(self._c)
        w = self._watch
        s["peer_events"] = dict(w.events) if w is not None else {}
        s["put"] = self._n_put
        s["recovered"] = self._n_recovered
        s["in_flight"] = self._in_flight
        s["queue_depth"] = self._outstanding() - self._in_flight
        s["workers"] = len(self._workers)
        return s

    @property
    def io_path(self) -> str:
        """``"libzmq"`` when this object's hot-path socket I/O calls libzmq directly (the fast
        path), ``"pyzmq"`` when it goes through pyzmq; see "The libzmq fast path" in
        docs/operations.md for when each is taken."""
        return self._io_path

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
            self._ctx.term()
            if self._journal is not None:
                self._journal.close()

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WorkQueue {self.endpoint} outstanding={self._outstanding()}>"

    # ------------------------------------------------------------------ dispatcher

    def _run(self) -> None:
        router = self._router
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        tick = min(self.heartbeat_interval / 2, self.ack_timeout / 4, 0.25)
        next_house = time.monotonic() + tick
        try:
            while not self._stopping:
                if self._rekick:  # a key was revoked: peers must authenticate again
                    self._rekick = False
                    _sockets.rebind(router, [self.endpoint], [])
                now = time.monotonic()
                wait = next_house - now
                if self._timers:
                    wait = min(wait, self._timers[0][0] - now)
                if self._jtouched:
                    wait = min(wait, self._jdel_since + _JOURNAL_FLUSH_S - now)
                if self._pending and self._throttled:
                    wait = min(wait, self._throttle.wait_s(now))
                events = poller.poll(max(0, math.ceil(wait * 1000)))
                if self._stopping:
                    break
                if events:
                    self._take_inbox()
                    self._read_router()
                now = time.monotonic()
                if self._timers and self._timers[0][0] <= now:
                    self._fire_timers(now)
                if now >= next_house:
                    self._housekeeping(now)
                    next_house = now + tick
                if self._pending:
                    self._dispatch(time.monotonic())
                if self._jtouched and (
                    self._jdone >= _JOURNAL_FLUSH_IDS
                    or now - self._jdel_since >= _JOURNAL_FLUSH_S
                    or self._outstanding() - self._jdone <= 0
                ):
                    self._flush_journal()
                if self._waiters:
                    with self._cv:
                        self._cv.notify_all()
        except Exception:  # pragma: no cover - a bug; make it loud, never silent
            log.exception("pybus WorkQueue dispatcher crashed")
            raise
        finally:
            try:
                self._flush_journal()
            except BusError:
                pass
            poller.unregister(router)
            self._router_addr = 0
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
            live = self._live
            pending = self._pending
            pop = inbox.popleft
            while inbox:
                batch = pop()
                live.update(zip(map(_rid, batch), batch, strict=True))
                pending.extend(batch)

    def _read_router(self) -> None:
        router = self._router
        addr = self._router_addr
        recv_message = _zmqfast.recv_message
        for _ in range(_RECV_BURST):
            if addr:
                frames = recv_message(addr)
                if frames is None:
                    return
            else:
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
            if len(frames) != 2:
                self._c["decode_errors"] += 1
                continue
            try:
                self._handle(frames[0], frames[1])
            except BusError:  # FrameError (malformed) or ValidationError
                self._c["decode_errors"] += 1

    def _send(self, w: _WorkerState, frame: bytes, now: float) -> bool:
        addr = self._router_addr
        if addr:
            if _zmqfast.send_message(addr, (w.ident, frame)):  # an errno: EHOSTUNREACH, ...
                self._lose_worker(w)
                return False
        else:
            try:
                self._router.send_multipart((w.ident, frame), zmq.NOBLOCK)
            except zmq.ZMQError:  # EHOSTUNREACH: the peer is gone
                self._lose_worker(w)
                return False
        w.last_send = now
        return True

    def _handle(self, ident: bytes, body: bytes) -> None:
        cmd = P.command(body)
        now = time.monotonic()
        w = self._workers.get(ident)
        if w is not None:
            w.last_recv = now
        if cmd == P.ACK:
            acks, dups = P.parse_ack(body)
            self._on_acks(w, acks, dups)
        elif cmd == P.NACK:
            self._on_nacks(w, P.parse_nack(body), now)
        elif cmd == P.HEARTBEAT:
            if w is None:
                self._c["unknown_peers"] += 1
                self._send_raw(ident, P.RECONNECT_FRAME)
        elif cmd == P.HELLO:
            credit = P.parse_hello(body)
            if w is not None:  # a second HELLO: the worker restarted its session
                self._lose_worker(w, count=False)
            w = _WorkerState(ident, credit, now)
            self._workers[ident] = w
            hb_ms = max(1, round(self.heartbeat_interval * 1000))
            self._send(w, P.welcome(hb_ms, self.heartbeat_liveness, credit), now)
        elif cmd == P.BYE:
            if w is not None:
                self._lose_worker(w, count=False)
        else:
            raise P.FrameError(f"unknown work-queue command {cmd:#x} from a worker")

    def _send_raw(self, ident: bytes, frame: bytes) -> None:
        if self._router_addr:
            _zmqfast.send_message(self._router_addr, (ident, frame))  # errors: nothing to do
            return
        try:
            self._router.send_multipart((ident, frame), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _on_acks(self, w: _WorkerState | None, acks: list[int], dups: list[int]) -> None:
        live = self._live
        failures = self._failures
        done = 0
        late = 0
        in_flight = self._in_flight
        journaled = self._journal is not None
        for ids in (acks, dups):
            for mid in ids:
                rec = live.pop(mid, None)
                if rec is None:
                    late += 1
                    continue
                owner = rec[R_WORKER]
                if owner is not None:
                    del owner.inflight[mid]
                    in_flight -= 1
                    rec[R_WORKER] = None
                if failures:
                    failures.pop(mid, None)
                if journaled:
                    self._jfinish(rec)
                done += 1
        self._in_flight = in_flight
        if w is not None:
            w.held = max(0, w.held - len(acks) - len(dups))
        c = self._c
        c["acked"] += done
        c["duplicates"] += len(dups)
        c["late_acks"] += late
        if done and self._throttle.breaker is not None:
            self._throttle.record_success(done)
        self._finish(done)

    def _on_nacks(
        self, w: _WorkerState | None, entries: list[tuple[int, str, str, int, bool]], now: float
    ) -> None:
        if w is not None:
            w.held = max(0, w.held - len(entries))
        for mid, etype, emsg, ecode, retryable in entries:
            rec = self._live.get(mid)
            if rec is None or w is None or rec[R_WORKER] is not w:
                # finished meanwhile, or already handed to someone else
                self._c["stale_nacks"] += 1
                continue
            w.inflight.pop(mid, None)
            self._in_flight -= 1
            rec[R_WORKER] = None
            self._c["nacked"] += 1
            self._throttle.record_failure()
            self._fail(rec, etype, emsg, ecode, retryable, now)

    def _fail(
        self, rec: _Rec, etype: str, emsg: str, ecode: int, retryable: bool, now: float
    ) -> None:
        wall = time.time()
        f = self._failures.get(rec[R_ID])
        if f is None:
            f = self._failures[rec[R_ID]] = _Failure()
            f.first = wall
        f.failures += 1
        f.last = wall
        f.error = (etype, emsg, ecode)
        err = RemoteError(emsg, remote_type=etype, remote_code=ecode, retryable=retryable)
        delay = self._plan.next_delay(f, now - rec[R_BORN], err)
        if delay is None:
            self._dead_letter(rec, err)
        else:
            heapq.heappush(self._timers, (now + delay, next(self._timer_seq), rec, False))

    def _dead_letter(self, rec: _Rec, err: RemoteError | None) -> None:
        if self._dlq is not None:
            f = self._failures.get(rec[R_ID]) or _Failure()
            etype, emsg, ecode = f.error
            try:
                self._dlq.add(
                    rec[R_TOPIC],
                    rec[R_PAYLOAD],
                    id=rec[R_ID],
                    headers=msgpack.unpackb(rec[R_HEADERS]) if rec[R_HEADERS] else None,
                    error_type=etype,
                    error_message=emsg,
                    error_code=ecode,
                    attempts=f.failures,
                    first_failure=f.first,
                    last_failure=f.last,
                    origin=f"WorkQueue {self.endpoint}",
                    payload_format="msgpack" if rec[R_FLAGS] & P.FLAG_MSGPACK else "raw",
                )
            except Exception as exc:  # DLQ full (on_full="reject") or its file failed
                # Never drop it: keep the message and try the dead-lettering again later.
                self._c["dlq_errors"] += 1
                log.warning("cannot dead-letter message %d (%s); retrying in %.1f s",
                            rec[R_ID], exc, _DLQ_RETRY_S)
                heapq.heappush(
                    self._timers,
                    (time.monotonic() + _DLQ_RETRY_S, next(self._timer_seq), rec, True),
                )
                return
        else:
            log.warning(
                "message %d on %r dead-lettered after %d attempts (%s) and dropped: the "
                "WorkQueue has no dlq", rec[R_ID], rec[R_TOPIC],
                self._failures[rec[R_ID]].failures, err,
            )
        self._live.pop(rec[R_ID], None)
        self._failures.pop(rec[R_ID], None)
        self._c["dead_lettered"] += 1
        if self._journal is not None:
            self._jfinish(rec)
        self._finish(1)

    def _jfinish(self, rec: _Rec) -> None:
        b: _JBatch = rec[R_BATCH]
        b.remaining -= 1
        b.done.append(rec[R_ID])
        if not b.touched:
            if not self._jtouched:
                self._jdel_since = time.monotonic()
            b.touched = True
            self._jtouched.append(b)

    def _finish(self, n: int) -> None:
        # with a journal a message counts as finished once its delete is committed
        if self._journal is None:
            self._n_done += n
        else:
            self._jdone += n

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        live = self._live
        due = []
        while timers and timers[0][0] <= now:
            _, _, rec, to_dlq = heapq.heappop(timers)
            if live.get(rec[R_ID]) is rec and rec[R_WORKER] is None:
                if to_dlq:
                    self._dead_letter(rec, None)
                else:
                    due.append(rec)
        self._pending.extend(due)

    def _lose_worker(self, w: _WorkerState, count: bool = True) -> None:
        if self._workers.get(w.ident) is not w:
            return
        del self._workers[w.ident]
        back = list(w.inflight.values())
        w.inflight.clear()
        for rec in back:
            rec[R_WORKER] = None
        self._in_flight -= len(back)
        # oldest first, ahead of new work: they have waited longest
        self._pending.extendleft(reversed(back))
        if count:
            self._c["workers_lost"] += 1

    def _housekeeping(self, now: float) -> None:
        dead_after = self.heartbeat_interval * self.heartbeat_liveness
        for w in list(self._workers.values()):
            if now - w.last_recv > dead_after:
                self._lose_worker(w)
                continue
            if now - w.last_send >= self.heartbeat_interval:
                if not self._send(w, P.HEARTBEAT_FRAME, now):
                    continue
            if w.inflight:
                limit = now - self.ack_timeout
                expired = []
                for rec in w.inflight.values():
                    if rec[R_SENT] > limit:
                        break  # dispatch order: the rest are younger
                    expired.append(rec)
                for rec in expired:
                    del w.inflight[rec[R_ID]]
                    self._in_flight -= 1
                    rec[R_WORKER] = None
                    self._c["ack_timeouts"] += 1
                    self._fail(
                        rec,
                        "AckTimeout",
                        f"no ack within ack_timeout={self.ack_timeout}s",
                        int(ErrorCode.TIMEOUT),
                        True,
                        now,
                    )

    def _dispatch(self, now: float) -> None:
        self._throttled = False
        pending = self._pending
        live = self._live
        throttle = self._throttle
        c = self._c
        while pending:
            room = self.max_in_flight - self._in_flight
            if room <= 0:
                return
            best = None
            best_free = 0
            n_free = 0
            for w in self._workers.values():
                free = w.capacity - w.held
                if free > 0:
                    n_free += 1
                    if free > best_free:
                        best, best_free = w, free
            if best is None:
                return
            if throttle.active:
                room = min(room, throttle.allowance(now))
                if room <= 0:
                    self._throttled = True
                    return
            # share the backlog between the workers that have room
            n = min(best_free, room, _MAX_BATCH, -(-len(pending) // n_free))
            entries: list[list[Any]] = []
            popleft = pending.popleft
            live_get = live.get
            add = entries.append
            inflight = best.inflight
            redelivered = 0
            k = 0
            # the hot loop: indices are the R_* constants, spelled out for speed
            while k < n and pending:
                rec = popleft()
                mid = rec[0]
                if live_get(mid) is not rec or rec[7] is not None:
                    continue  # finished or re-dispatched meanwhile
                d = rec[1] + 1
                rec[1] = d
                if d == 1:
                    rec[9] = now  # R_BORN
                else:
                    redelivered += 1
                rec[7] = best  # R_WORKER
                rec[8] = now  # R_SENT
                inflight[mid] = rec
                add(rec[:7])
                k += 1
            if throttle.active:
                throttle.consume(k)
            if not k:
                return
            best.held += k
            self._in_flight += k
            c["dispatched"] += k
            c["redelivered"] += redelivered
            self._send(best, P.dispatch(entries), now)

    def _flush_journal(self) -> None:
        if self._journal is None or not self._jtouched:
            return
        touched, self._jtouched = self._jtouched, []
        acked: list[tuple[int, list[int]]] = []
        completed: list[int] = []
        for b in touched:
            b.touched = False
            if b.remaining <= 0:
                completed.append(b.first)
            elif b.done:
                acked.append((b.first, b.done))
            b.done = []
        self._journal.progress(acked, completed)
        self._n_done += self._jdone
        self._jdone = 0
