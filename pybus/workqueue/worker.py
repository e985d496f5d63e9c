"""The consuming side of the work queue: a DEALER that runs a handler on every message.

A :class:`Worker` connects to a :class:`pybus.WorkQueue`, announces its credit (``prefetch``:
how many messages it may hold), runs ``handler(message)`` in ``concurrency`` threads and
acknowledges each message when the handler returns, or rejects it with the error when the
handler raises. Acks travel in batches (one frame per handled batch, or every
``ack_flush_interval_s`` seconds for slow handlers).

A socket thread owns the DEALER: it forwards results, exchanges heartbeats with the queue and,
when the queue stays silent for ``heartbeat_interval_s * heartbeat_liveness`` seconds, starts a
new session (new socket, HELLO); messages of the old session that have not started are then
dropped, since the queue redelivers them.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, cast

import zmq

from .. import metrics as _metrics
from .._deprecated import deprecated_attribute, renamed
from .._native import Histogram
from .._native._frame import Message, _message_from_wire
from .._signals import graceful_signals, join_within
from ..errors import (
    AlreadyHandledError,
    BusError,
    ClosedError,
    ErrorCode,
    FrameError,
    ValidationError,
    from_zmq,
)
from ..metrics.samples import NS, HdrValue, RawSample, transport_samples
from ..transport import sockets as _sockets
from ..transport.channel import MessageChannel
from ..wire import workqueue as P
from ._handler import wrap_handler
from ._options import check_worker_options
from .idempotency import idempotent

#: Handler times above this (1 hour, in ns) are recorded as this.
_LATENCY_MAX_NS = 3_600_000_000_000

__all__ = ["Worker"]

log = logging.getLogger("pybus.worker")

_worker_seq = itertools.count()


def make_work_message(e: tuple[Any, ...]) -> Message:
    """The one place a DISPATCH entry becomes the handler's :class:`pybus.Message`.

    ``seq`` is the message id, ``publisher_id`` the delivery number (1 on the first
    delivery), ``timestamp_ns`` the put time; payload and headers decode lazily.
    """
    mid, delivery, topic, payload, flags, headers, ts = e
    return _message_from_wire(topic, payload, headers, flags & P.FLAG_MSGPACK, mid, delivery, ts)


def _error_entry(mid: int, exc: BaseException) -> list[Any]:
    if isinstance(exc, BusError):
        d = exc.to_dict()
        return [mid, d["type"], d["message"], int(d["code"]), bool(d["retryable"])]
    # Not a pybus error: presumed transient, the retry policy decides how often.
    return [mid, type(exc).__name__, str(exc), int(ErrorCode.UNKNOWN), True]


class Worker:
    """Run ``handler`` on messages from a :class:`pybus.WorkQueue`.

    Parameters
    ----------
    endpoint : str
        The queue's endpoint (connected, so the queue may start later).
    handler : callable
        ``handler(message: pybus.Message) -> Any``. Returning acks the message; raising nacks
        it with the error (type, message and code; a :class:`pybus.BusError` supplies its own
        code and ``retryable`` flag, any other exception is reported as retryable).
        ``message.seq`` is the message id, ``message.publisher_id`` the delivery number
        (1 on the first delivery, more when redelivered), ``message.timestamp_ns`` the put
        time; ``payload`` and ``headers`` are what the producer put.
    concurrency : int
        Handler threads (1..1024).
    dedupe_window : int
        When > 0, the ids of the last ``dedupe_window`` successfully handled messages are
        remembered and a redelivered duplicate is acked without running the handler
        (counted and reported to the queue).
    prefetch : int, optional
        Credit announced to the queue: the most messages this worker holds at once
        (default ``max(1024, 256 * concurrency)``).
    heartbeat_interval_s, heartbeat_liveness
        Used until the queue's WELCOME tells the queue's own values.
    ack_flush_interval_s : float
        Longest time, in seconds, a finished message's ack waits to be batched with others.
    type : type, optional
        Decode every payload into this type (a msgspec Struct, dataclass, TypedDict or
        pydantic model): the handler gets a :class:`~pybus.pubsub.TypedMessage`. A handler
        whose argument is annotated with such a type (``def handle(order: Order)``) gets the
        decoded payload itself. A payload that does not fit is nacked as not retryable: the
        queue dead-letters it at once with the validation message.
    drain_timeout_s : float
        On :meth:`stop` (or SIGTERM/SIGINT during :meth:`run`), how long the handlers may
        take to finish the message each is on; their acks are sent, messages not started are
        left to the queue (redelivered elsewhere, no attempt used). Default 10 s.
    context : zmq.Context, optional
        Use this ZeroMQ context instead of a private one (an ``inproc://`` queue is reached
        only from its own context). pybus closes its sockets in it when the worker stops,
        and leaves terminating it to the caller; a private one is terminated then.
    security : pybus.Curve, optional
        CURVE for the connection to the queue (usually ``Curve.client``).
    liveness : pybus.Liveness, optional
        ZMTP heartbeats, reconnection backoff and peer events (default ``Liveness()``).
    registry : pybus.metrics.Registry or False, optional
        Where this object reports its counters (default: ``pybus.metrics.default_registry``;
        ``False``: nowhere).
    idempotency : pybus.workqueue.idempotency.IdempotencyStore, optional
        A store of handled message ids (``SQLiteIdempotency``, or any object with
        ``seen(key)`` and ``record(key)``): a message it has seen is acked as a duplicate
        without running the handler; a handled one is recorded before its ack. For no
        duplicate side effects at all, commit the effect in the store's ``transaction()``
        (``docs/workqueue.md``).

    ``heartbeat_interval=`` and ``ack_flush_interval=`` are the deprecated old names of
    ``heartbeat_interval_s=`` and ``ack_flush_interval_s=`` (a DeprecationWarning; removed in
    the next release).
    """

    def __init__(
        self,
        endpoint: str,
        handler: Callable[[Any], Any],
        concurrency: int = 1,
        dedupe_window: int = 0,
        prefetch: int | None = None,
        heartbeat_interval_s: float = 1.0,
        heartbeat_liveness: int = 3,
        ack_flush_interval_s: float = 0.002,
        registry: Any = None,
        security: Any = None,
        liveness: Any = None,
        context: zmq.Context[Any] | None = None,
        *,
        type: Any = None,  # noqa: A002 - the documented name (payloads decoded into it)
        drain_timeout_s: float = 10.0,
        idempotency: Any = None,
        heartbeat_interval: float | None = None,
        ack_flush_interval: float | None = None,
    ) -> None:
        heartbeat_interval_s = renamed("Worker", "heartbeat_interval", heartbeat_interval,
                                       "heartbeat_interval_s", heartbeat_interval_s, 1.0)
        ack_flush_interval_s = renamed("Worker", "ack_flush_interval", ack_flush_interval,
                                       "ack_flush_interval_s", ack_flush_interval_s, 0.002)
        prefetch = check_worker_options(endpoint, handler, concurrency, dedupe_window, prefetch,
                                        heartbeat_interval_s, heartbeat_liveness,
                                        ack_flush_interval_s, context)
        self.endpoint = endpoint
        self.handler = handler
        # what each message is handed to: the handler, typed and traced when asked for
        self._call = wrap_handler(handler, type)
        self.idempotency = idempotency
        if idempotency is not None:
            self._call = idempotent(self._call, idempotency)
        _sockets.check_options(security, liveness)
        self._security = security
        self._zmtp_liveness = liveness
        self._watch: Any = None
        self.concurrency = concurrency
        self.dedupe_window = dedupe_window
        self.prefetch = prefetch
        self.ack_flush_interval_s = float(ack_flush_interval_s)
        if isinstance(drain_timeout_s, bool) or not isinstance(drain_timeout_s, (int, float)) \
                or not 0 <= drain_timeout_s < float("inf"):
            raise ValidationError(
                f"drain_timeout_s must be a finite number of seconds >= 0, got {drain_timeout_s!r}")
        self.drain_timeout_s = float(drain_timeout_s)
        self._hb_s = float(heartbeat_interval_s)
        self._liveness = int(heartbeat_liveness)

        # a given context is the caller's: never terminated here
        self._own_ctx = context is None
        self._ctx: zmq.Context[Any] = zmq.Context() if context is None else context
        self._results_addr = f"inproc://pybus-worker-{next(_worker_seq)}-{id(self):x}"
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._gen = 0  # session number; work from an older session is dropped unstarted
        # the socket thread's session and results sockets, as channels (pyzmq's calls or
        # the compiled twin); set and used by the socket thread only
        self._chan: MessageChannel | None = None
        self._results_chan: MessageChannel | None = None
        self._io_path: str | None = None  # io_path, set with the first session
        self._stopping = False
        self._running = False
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler_threads: list[threading.Thread] = []
        self._seen_lock = threading.Lock()
        self._c_lock = threading.Lock()
        self._seen_ids: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._c: dict[str, int] = dict.fromkeys(
            (
                "received",
                "handled",
                "acked",
                "nacked",
                "duplicates",
                "stale_dropped",
                "decode_errors",
                "sessions",
            ),
            0,
        )
        # time in handler(message), ns (2 significant figures); exported by pybus.metrics
        self._handler_latency = Histogram(1, _LATENCY_MAX_NS, 2)
        _metrics.attach(self, registry)

    # ------------------------------------------------------------------ public

    def run(self, handle_signals: bool = True) -> None:
        """Serve until :meth:`stop` (blocking; call it in a process or thread of its own).

        Called in the main thread with ``handle_signals``, the first SIGTERM or SIGINT stops
        it gracefully, as :meth:`stop` does (at most ``drain_timeout_s`` for the handlers),
        and ``run`` returns; a second one ends the process at once (exit code 128 +
        signal)."""
        if self._running:
            raise ValidationError("this Worker is already running; call run() or start() once")
        if self._stopping:
            raise ClosedError("this Worker was stopped; create a new one")
        self._running = True
        try:
            with graceful_signals(self._request_stop, handle_signals,
                                  f"pybus worker of {self.endpoint}", self.drain_timeout_s):
                self._serve()
        finally:
            self._running = False

    def start(self) -> Worker:
        """Serve in a background thread; returns self."""
        if self._thread is not None:
            raise ValidationError("this Worker was already started")
        self._thread = threading.Thread(target=self.run, name="pybus-worker", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the queue has welcomed this worker's session; False on timeout."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop: finish the message each handler is on, send its ack, say BYE, close.

        Messages received but not started are left to the queue, which redelivers them.
        Waits up to ``timeout`` seconds (default ``drain_timeout_s`` + 1) for a started
        worker's thread to end.
        """
        self._request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.drain_timeout_s + 1.0 if timeout is None else timeout)
        elif self._thread is None and not self._running and self._own_ctx \
                and not self._ctx.closed:
            self._ctx.term()  # never served: its sessions' thread, which would, never ran

    def _request_stop(self) -> None:
        """Ask the socket thread to stop (no waiting: also called from a signal handler)."""
        self._stopping = True
        self._gen += 1
        # wake the socket thread; the wake-up socket is closed whatever happens to the send
        # (an inproc peer already gone, a full queue: the thread sees _stopping on its own)
        try:
            s = self._ctx.socket(zmq.PUSH)
        except zmq.ZMQError:  # the context is already terminated: nothing to wake
            s = None
        if s is not None:
            try:
                s.linger = 1000
                s.connect(self._results_addr)
                s.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            finally:
                s.close()

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "worker"

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        for ev in ("handled", "acked", "nacked", "duplicates"):
            yield "pybus_tasks_total", {"event": ev}, s[ev]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_handler_latency_seconds", {}, HdrValue(self._handler_latency, NS)
        yield from transport_samples(s, self._security)

    def metrics_readiness(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "worker is stopped"
        if not self._ready.is_set():
            return False, "worker has no session with its queue yet"
        return True, ""

    def stats(self) -> dict[str, Any]:
        """Counters: received, handled, acked, nacked, duplicates, stale_dropped (not started
        because their session ended), decode_errors, sessions, and the socket monitor's
        ``peer_events`` (event name -> count, over every session's socket)."""
        out: dict[str, Any] = dict(self._c)
        w = self._watch
        out["peer_events"] = dict(w.events) if w is not None else {}
        return out

    @property
    def io_path(self) -> str | None:
        """``"libzmq"`` when this object's hot-path socket I/O calls libzmq directly (the fast
        path), ``"pyzmq"`` when it goes through pyzmq; see "The libzmq fast path" in
        docs/operations.md for when each is taken. None until the worker's socket thread has
        opened its first session."""
        return self._io_path

    @property
    def ack_flush_interval(self) -> float:
        """Deprecated: :attr:`ack_flush_interval_s`."""
        value = deprecated_attribute(self, "ack_flush_interval", "ack_flush_interval_s")
        return cast("float", value)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ socket thread

    def _new_session(self, old: zmq.Socket[Any] | None) -> zmq.Socket[Any]:
        if old is not None:
            self._chan = MessageChannel(old)  # pyzmq's calls: safe on a closed socket
            old.close(0)
            self._gen += 1
        self._ready.clear()
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvhwm = 0  # the queue's credit bounds what it sends us
        try:
            # one SocketWatch over every session's socket: counters and on_peer carry on
            self._watch = _sockets.configure(sock, security=self._security,
                                             liveness=self._zmtp_liveness, into=self._watch)
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise from_zmq(exc, f"Worker cannot connect to {self.endpoint!r}") from None
        self._chan = chan = MessageChannel.open(sock)
        assert self._results_chan is not None  # opened first, by _serve
        both = {chan.io_path, self._results_chan.io_path}
        self._io_path = "libzmq" if both == {"libzmq"} else "pyzmq"
        sock.send(P.hello(self.prefetch))
        self._c["sessions"] += 1
        return cast("zmq.Socket[Any]", sock)

    def _serve(self) -> None:
        results = self._ctx.socket(zmq.PULL)
        results.linger = 0
        results.bind(self._results_addr)
        self._results_chan = MessageChannel.open(results)
        sock = self._new_session(None)
        self._handler_threads = [
            threading.Thread(target=self._handle_loop, name=f"pybus-worker-h{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for t in self._handler_threads:
            t.start()
        poller = zmq.Poller()
        poller.register(results, zmq.POLLIN)
        poller.register(sock, zmq.POLLIN)
        now = time.monotonic()
        last_recv = last_send = now
        try:
            while not self._stopping:
                now = time.monotonic()
                dead_at = last_recv + self._hb_s * self._liveness
                wait = min(last_send + self._hb_s, dead_at) - now
                events = dict(poller.poll(max(0, math.ceil(wait * 1000))))
                if self._stopping:
                    break
                if results in events:
                    if self._forward():
                        last_send = time.monotonic()
                if sock in events:
                    got, reconnect = self._read()
                    if got:
                        last_recv = time.monotonic()
                    if reconnect:
                        poller.unregister(sock)
                        sock = self._new_session(sock)
                        poller.register(sock, zmq.POLLIN)
                        last_recv = last_send = time.monotonic()
                        continue
                now = time.monotonic()
                if now - last_recv > self._hb_s * self._liveness:
                    # Paranoid Pirate: the queue is gone or restarted; new session
                    poller.unregister(sock)
                    sock = self._new_session(sock)
                    poller.register(sock, zmq.POLLIN)
                    last_recv = last_send = now
                elif now - last_send >= self._hb_s:
                    try:
                        sock.send(P.HEARTBEAT_FRAME, zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # nobody to talk to; the liveness check starts a new session
                    last_send = now
            # graceful end: let handlers finish their current message, ship their acks
            for _ in self._handler_threads:
                self._work.put(None)
            join_within(self._handler_threads, self.drain_timeout_s)
            self._forward()
            try:
                sock.send(P.BYE_FRAME, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        finally:
            self._stopping = True
            for _ in self._handler_threads:
                self._work.put(None)
            sock.close(linger=200)  # give the last acks and BYE a moment to leave
            results.close(0)
            # A handler still stuck in user code keeps its socket open; terminating the
            # context would then hang, so leave it to the (daemon) thread's exit.
            if self._own_ctx and not any(t.is_alive() for t in self._handler_threads):
                self._ctx.term()

    def _forward(self) -> bool:
        """Hand the handler threads' acks (one-part messages on the results socket) to the
        queue; True when one was sent."""
        results, chan = self._results_chan, self._chan
        assert results is not None and chan is not None
        sent = False
        while (parts := results.recv_parts()) is not None:
            for frame in parts:
                # empty frames only wake us (stop); a send error (errno) is left to the
                # queue, which redelivers what we could not ack
                if frame and not chan.send_parts((frame,)):
                    sent = True
        return sent

    def _read(self) -> tuple[bool, bool]:
        got = False
        chan = self._chan
        assert chan is not None
        for _ in range(64):
            parts = chan.recv_parts()
            if parts is None:
                break
            got = True
            # one part per message from the queue; each part of a (malformed) multipart
            # message is judged alone, as when read part by part
            for frame in parts:
                try:
                    cmd = P.command(frame)
                    if cmd == P.DISPATCH:
                        self._enqueue(P.parse_dispatch(frame))
                    elif cmd == P.WELCOME:
                        hb_ms, liveness, _credit = P.parse_welcome(frame)
                        self._hb_s = hb_ms / 1000.0
                        self._liveness = liveness
                        self._ready.set()
                    elif cmd == P.RECONNECT:
                        return got, True
                    elif cmd != P.HEARTBEAT:
                        raise FrameError(f"unknown work-queue command {cmd:#x} from the queue")
                except FrameError:
                    self._c["decode_errors"] += 1
        return got, False

    def _enqueue(self, entries: tuple[Any, ...]) -> None:
        n = len(entries)
        self._c["received"] += n
        gen = self._gen
        k = self.concurrency
        if k == 1 or n == 1:
            self._work.put((gen, entries))
            return
        step = -(-n // k)
        for i in range(0, n, step):
            self._work.put((gen, entries[i : i + step]))

    # ------------------------------------------------------------------ handler threads

    def _handle_loop(self) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.linger = 1000
        push.connect(self._results_addr)
        handler = self._call
        get = self._work.get
        make = make_work_message
        mono = time.monotonic
        flush_s = self.ack_flush_interval_s
        window = self.dedupe_window
        seen = self._seen_ids
        c = self._c
        try:
            while True:
                item = get()
                if item is None:
                    return
                gen, entries = item
                if gen != self._gen:
                    with self._c_lock:
                        c["stale_dropped"] += len(entries)
                    continue
                acks: list[int] = []
                dups: list[int] = []
                nacks: list[list[Any]] = []
                flush_at = mono() + flush_s
                handled = 0
                perf_ns = time.perf_counter_ns
                record_latency = self._handler_latency.record
                for i, e in enumerate(entries):
                    if self._stopping or gen != self._gen:
                        with self._c_lock:
                            c["stale_dropped"] += len(entries) - i
                        break
                    mid = e[0]
                    if window and mid in seen:
                        dups.append(mid)
                        continue
                    handled += 1
                    t0 = perf_ns()
                    try:
                        handler(make(e))
                    except AlreadyHandledError:  # its effect is committed: ack, not again
                        dups.append(mid)
                    except Exception as exc:
                        nacks.append(_error_entry(mid, exc))
                    else:
                        acks.append(mid)
                        if window:
                            self._remember(mid)
                    finally:
                        took = perf_ns() - t0
                        record_latency(took if took < _LATENCY_MAX_NS else _LATENCY_MAX_NS)
                    if mono() >= flush_at:
                        self._flush(push, acks, dups, nacks)
                        acks, dups, nacks = [], [], []
                        flush_at = mono() + flush_s
                with self._c_lock:
                    c["handled"] += handled
                self._flush(push, acks, dups, nacks)
        finally:
            push.close()

    def _remember(self, mid: int) -> None:
        with self._seen_lock:
            order = self._seen_order
            if len(order) >= self.dedupe_window:
                self._seen_ids.discard(order.popleft())
            order.append(mid)
            self._seen_ids.add(mid)

    def _flush(
        self, push: zmq.Socket[Any], acks: list[int], dups: list[int], nacks: list[list[Any]]
    ) -> None:
        c = self._c
        with self._c_lock:  # before sending, so stats() never lags what the queue saw
            c["acked"] += len(acks)
            c["duplicates"] += len(dups)
            c["nacked"] += len(nacks)
        if acks or dups:
            push.send(P.ack(acks, dups))
        if nacks:
            push.send(P.nack(nacks))
