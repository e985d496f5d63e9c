"""A worker of the JetStream work queue: pulls tasks from the queue's shared consumer, runs the
handler on ``concurrency`` threads, acknowledges what succeeded, naks a failure with the retry
policy's delay, and dead-letters a task after its last attempt. docs/scale-out.md."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from .. import metrics as _metrics
from .._lifecycle import Closeable
from .._native import Histogram, Message
from .._signals import graceful_signals
from ..errors import (
    AlreadyHandledError,
    ClosedError,
    ErrorCode,
    RemoteError,
    ValidationError,
    check_optional,
)
from ..metrics.samples import NS, HdrValue, RawSample
from ..policy.retry import RetryPolicy
from ..workqueue._handler import wrap_handler
from ..workqueue._policy import DEFAULT_RETRY
from ..workqueue.idempotency import idempotent
from . import _wq_codec as codec
from ._jsconn import JsConn, check_stream_name
from .workqueue import WORKERS

__all__ = ["Worker"]

log = logging.getLogger("pybus.jetstream")
_names = itertools.count(1)
_LATENCY_MAX_NS = 3_600 * 10**9


class Worker(Closeable):
    """Handle the tasks of the JetStream work queue ``stream`` (any number of workers on any
    hosts share them: the server hands each task to one).

    Parameters
    ----------
    servers : str or list of str
        NATS server URLs (a list, or a comma-separated string).
    handler : callable
        ``handler(msg)`` with a :class:`pybus.Message` (``seq``: the task's sequence number in
        the stream, ``publisher_id``: its delivery number, 1 the first time). Returning acks
        the task; raising fails this attempt (a pybus error with ``retryable`` False, or a
        payload that does not fit the declared type, dead-letters it at once).
    stream : str
        The queue's stream.
    concurrency : int
        Handler threads.
    prefetch : int
        Tasks fetched ahead of the handlers (held, their ack timeout running, until a handler
        thread is free); the worker fetches and holds ``concurrency + prefetch`` at once (64 by
        default: fewer, larger fetches; a worker that dies may have held that many).
    retry : RetryPolicy, optional
        Default: the queue's policy, read from the server (or the SQLite queue's default when
        no queue configured one).
    type : type, optional
        Decode payloads into it (the handler gets a TypedMessage), as ``pybus.Worker``.
    drain_timeout_s : float
        On :meth:`stop` or SIGTERM, how long the handlers may finish what they hold (then
        acked); what is not finished is delivered again after the queue's ack timeout.
    name : str, optional
        Connection name, and the object's name in metrics.
    registry : pybus.metrics.Registry or False, optional
        Where the worker reports (default registry; ``False``: nowhere).
    idempotency : IdempotencyStore, optional
        As ``pybus.Worker``: a task whose effect the store holds is acked without running the
        handler (``pybus.workqueue.idempotency``; the id is the stream sequence and put time).
    """

    metrics_kind: ClassVar[str] = "jetstream_worker"

    def __init__(self, servers: str | Sequence[str], handler: Callable[[Any], Any], stream: str,
                 concurrency: int = 1, *, prefetch: int = 63, retry: RetryPolicy | None = None,
                 type: Any = None, drain_timeout_s: float = 10.0,  # noqa: A002 - the documented name
                 name: str | None = None, registry: Any = None,
                 idempotency: Any = None) -> None:
        self._closed = True
        if not callable(handler):
            raise ValidationError(f"handler must be callable, got {handler!r}")
        check_stream_name(stream)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError(f"concurrency must be an int >= 1, got {concurrency!r}")
        check_optional("retry", retry, RetryPolicy, "a pybus.RetryPolicy")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValidationError(f"prefetch must be an int >= 0, got {prefetch!r}")
        if not drain_timeout_s >= 0:
            raise ValidationError(f"drain_timeout_s must be >= 0, got {drain_timeout_s!r}")
        self.handler = handler
        self.stream = stream
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.retry = retry
        self.drain_timeout_s = float(drain_timeout_s)
        self.name = name or f"pybus-js-worker-{next(_names)}"
        self._call = wrap_handler(handler, type)
        if idempotency is not None:  # the store knows the stream sequence + put time
            self._call = idempotent(self._call, idempotency)
        self._conn = JsConn(servers, self.name)
        self.servers = self._conn.servers
        self._pool = concurrent.futures.ThreadPoolExecutor(concurrency, self.name)
        self._ready = threading.Event()
        self._stopping = False
        self._main: concurrent.futures.Future[None] | None = None
        self._held = 0  # tasks fetched and not settled yet
        self._topics: dict[str, str] = {}  # subject -> topic, checked once
        self._c = dict.fromkeys(("received", "handled", "acked", "nacked", "dead_lettered",
                                 "decode_errors", "duplicates"), 0)
        self._latency = Histogram(1, _LATENCY_MAX_NS, 2)
        self._closed = False
        _metrics.attach(self, registry)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Worker:
        """Start taking tasks in the background; returns self."""
        if self._closed or self._stopping:
            raise ClosedError("this Worker was stopped; create a new one")
        if self._main is not None:
            raise ValidationError("this Worker was already started")
        self._main = self._conn.submit(self._serve())
        return self

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the worker is attached to the queue's consumer; False on timeout."""
        return self._ready.wait(timeout)

    def run(self, handle_signals: bool = True) -> None:
        """Take tasks until :meth:`stop`, or (in the main thread) SIGTERM/SIGINT: then finish
        what the handlers hold within ``drain_timeout_s``, ack it, and return. Starts the
        worker unless :meth:`start` already did."""
        stop = threading.Event()
        with graceful_signals(stop.set, handle_signals, f"pybus jetstream worker {self.name}",
                              self.drain_timeout_s):
            if self._main is None:
                self.start()
            assert self._main is not None
            while not stop.is_set() and not self._main.done():
                stop.wait(0.2)  # wakes for the signal; checks the loop still runs
        self.stop()
        if self._main.done() and self._main.exception() is not None:
            raise self._main.exception()  # type: ignore[misc]

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking tasks; let the handlers finish (``drain_timeout_s``) and ack; close."""
        if self._closed:
            return
        self._stopping = True
        if self._main is not None:
            try:
                self._main.result(self.drain_timeout_s + 1.0 if timeout is None else timeout)
            except Exception:  # noqa: BLE001 - reported by run(); stopping regardless
                pass
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._conn.close()

    close = stop

    # -- the loop (on the connection's event loop) ---------------------------------------------

    async def _attach(self) -> Any:
        """The queue's consumer; waits (retrying every 0.5 s) while the server is unreachable
        or the queue's stream does not exist yet: a worker may start first. None on stop."""
        while not self._stopping:
            try:
                js = await self._conn.js()
                return await js.pull_subscribe(f"{self.stream}.>", durable=WORKERS,
                                               stream=self.stream)
            except Exception as exc:  # noqa: BLE001 - not there yet: wait and ask again
                self._conn.last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.5)
        return None

    async def _serve(self) -> None:
        psub = await self._attach()
        if psub is None:
            return
        if self.retry is None:
            info = await psub.consumer_info()
            self.retry = (codec.retry_from_description(info.config.description)
                          or DEFAULT_RETRY())
        self._ready.set()
        loop = asyncio.get_running_loop()
        batch = self.concurrency + self.prefetch
        # the next batch is fetched while this one is handled (a fetch is a round trip)
        ahead = loop.create_task(self._fetch(psub, batch))
        while not self._stopping:
            msgs = await ahead
            ahead = loop.create_task(self._fetch(psub, batch))
            self._held = len(msgs)
            work = []
            for m in msgs:
                task, refused = self._admit(m)
                if task is not None:
                    work.append(task)
                else:
                    await self._dead_letter(*refused)
            # one executor job per handler thread for the whole batch: a thread hop per
            # message would cost more than the handling of a small task
            chunks = [work[k::self.concurrency] for k in range(self.concurrency)]
            chunks = [c for c in chunks if c]
            outcomes = await asyncio.gather(
                *(loop.run_in_executor(self._pool, self._run_chunk, c) for c in chunks))
            acked = 0
            for chunk, outs in zip(chunks, outcomes, strict=True):
                for task, exc in zip(chunk, outs, strict=True):
                    if exc is None:  # the common case inline: an ack
                        await task[0].ack()
                        acked += 1
                    else:
                        await self._settle(task, exc)
            self._c["handled"] += acked
            self._c["acked"] += acked
            self._held = 0
        # a stop: the batch in hand was finished and settled above (stop() bounds the wait);
        # the one fetched ahead goes back to the queue at once
        for m in await ahead:
            await m.nak()

    @staticmethod
    async def _fetch(psub: Any, batch: int) -> list[Any]:
        try:
            return list(await psub.fetch(batch, timeout=0.5))
        except Exception:  # nothing to do (timeout), or reconnecting: ask again
            return []

    def _admit(self, m: Any) -> tuple[Any, Any]:
        """``(task, None)`` for a fetched task ready for its handler, or ``(None, the
        arguments of _dead_letter)`` for one to dead-letter instead (unreadable, or delivered
        more often than the policy's attempts)."""
        delivered, seq, ts_ns = codec.delivery_of(m)
        self._c["received"] += 1
        assert self.retry is not None
        try:
            msg = codec.task_message(m.subject, self.stream, m.data, m.headers, seq, delivered,
                                     ts_ns, self._topics)
        except Exception as exc:  # noqa: BLE001 - a task no handler can read
            self._c["decode_errors"] += 1
            return None, (m, m.subject, RemoteError(
                f"task does not decode: {exc}", remote_type="FrameError",
                remote_code=int(ErrorCode.FRAME)), delivered, seq)
        attempts = self.retry.max_attempts
        if attempts is not None and delivered > attempts:
            # earlier deliveries ended without an answer (their workers died or hung)
            return None, (m, msg.topic, RemoteError(
                f"delivered {delivered} times without an acknowledgement",
                remote_type="AckTimeout", remote_code=int(ErrorCode.TIMEOUT)), delivered, seq)
        return (m, msg, delivered, seq), None

    def _run_chunk(self, chunk: list[tuple[Any, Message, int, int]]) -> list[Exception | None]:
        """On a handler thread: the handler for each task in turn; what each raised."""
        out: list[Exception | None] = []
        call, record, clock = self._call, self._latency.record, time.perf_counter_ns
        for _m, msg, _d, _s in chunk:
            t0 = clock()
            try:
                call(msg)
                out.append(None)
            except Exception as exc:  # noqa: BLE001 - the failure decides the retry
                out.append(exc)
            record(min(max(clock() - t0, 1), _LATENCY_MAX_NS))
        return out

    async def _settle(self, task: tuple[Any, Message, int, int], exc: Exception) -> None:
        """A failure: nak it with the policy's delay, or dead-letter it."""
        m, msg, delivered, seq = task
        assert self.retry is not None
        if isinstance(exc, AlreadyHandledError):  # its effect is committed: ack, not again
            await m.ack()
            self._c["duplicates"] += 1
            return
        err = codec.error_of(exc)
        delay = self.retry.next_delay(err, delivered)
        if delay is None:
            await self._dead_letter(m, msg.topic, err, delivered, seq)
        else:
            await m.nak(delay=delay)
            self._c["nacked"] += 1

    async def _dead_letter(self, m: Any, topic: str, err: RemoteError, delivered: int,
                           seq: int) -> None:
        """Into ``<stream>_dead`` (stored once: the id is the task's), then terminated. If the
        server does not take it, the task stays and comes back after the ack timeout."""
        dead = codec.dead_stream(self.stream)
        subject = f"{dead}.{topic}" if not topic.startswith(self.stream + ".") \
            else f"{dead}.{topic[len(self.stream) + 1:]}"
        js = await self._conn.js()
        try:
            await js.publish(subject, m.data, timeout=5,
                             headers=codec.dead_letter_headers(m.headers, err, delivered, seq))
        except Exception as exc:  # noqa: BLE001 - left for redelivery
            log.warning("worker %s: could not dead-letter task %d (%s); it will be delivered "
                        "again", self.name, seq, exc)
            return
        await m.term()
        self._c["dead_lettered"] += 1

    # -- state -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``received``, ``handled``, ``acked``, ``nacked``, ``dead_lettered``,
        ``decode_errors``, ``in_flight`` (tasks held now), ``connected``."""
        return {**self._c, "in_flight": self._held, "connected": self._conn.connected}

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        for ev in ("handled", "acked", "nacked", "duplicates"):
            yield "pybus_tasks_total", {"event": ev}, s[ev]
        yield "pybus_dead_lettered_total", {}, s["dead_lettered"]
        yield "pybus_decode_errors_total", {}, s["decode_errors"]
        yield "pybus_in_flight", {}, s["in_flight"]
        yield "pybus_handler_latency_seconds", {}, HdrValue(self._latency, NS)

    def metrics_readiness(self) -> tuple[bool, str]:
        if self._closed:
            return False, "jetstream worker is stopped"
        if self._main is not None and not self._conn.connected:
            return False, f"jetstream worker cannot reach NATS ({self._conn.last_error})"
        return True, ""

    def __repr__(self) -> str:
        return f"<pybus.jetstream.Worker {self.name} stream={self.stream!r}>"
