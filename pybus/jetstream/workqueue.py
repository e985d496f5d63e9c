"""The work queue on NATS JetStream: producers on any host put tasks into a replicated stream
with work-queue retention; :class:`pybus.jetstream.Worker` processes on any host take them.

The same API as the SQLite :class:`pybus.WorkQueue` (``put``, ``put_many``, ``join``,
``close``, ``stats``); the storage and the dispatch are the server's. docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from .. import metrics as _metrics
from .._lifecycle import Closeable
from ..errors import ClosedError, TimeoutError, ValidationError, check_optional
from ..metrics.samples import RawSample
from ..policy.retry import RetryPolicy
from ..store.dlq import DeadLetterQueue
from ..workqueue._policy import DEFAULT_RETRY
from . import _wq_codec as codec
from ._jsconn import InlineConn, JsConn, NatsLink, check_stream_name

__all__ = ["AsyncWorkQueue", "WorkQueue", "WORKERS"]

log = logging.getLogger("pybus.jetstream")
_names = itertools.count(1)
#: the durable consumer every Worker of a queue pulls from (shared: the server dispatches)
WORKERS = "pybus-workers"
_DLQ_SINK = "pybus-dlq-sink"


class _QueueBase:
    """What the sync and asyncio queues share: options, counters, and the protocol itself as
    coroutines on a :class:`NatsLink` (the sync queue runs them on its loop thread)."""

    metrics_kind: ClassVar[str] = "jetstream_work_queue"
    _link: NatsLink
    _closed: bool

    def __init__(self, servers: str | Sequence[str], stream: str, *, replicas: int = 1,
                 retry: RetryPolicy | None = None, dlq: DeadLetterQueue | None = None,
                 ack_timeout_s: float = 30.0, dedupe_window_s: float = 120.0,
                 put_timeout_s: float = 10.0, name: str | None = None,
                 registry: Any = None) -> None:
        self._closed = True
        check_stream_name(stream)
        if not 1 <= replicas <= 5:
            raise ValidationError(f"replicas must be 1 to 5, got {replicas}")
        for what, v in (("ack_timeout_s", ack_timeout_s), ("dedupe_window_s", dedupe_window_s),
                        ("put_timeout_s", put_timeout_s)):
            if not v > 0:
                raise ValidationError(f"{what} must be > 0 seconds, got {v!r}")
        check_optional("retry", retry, RetryPolicy, "a pybus.RetryPolicy")
        check_optional("dlq", dlq, DeadLetterQueue, "a pybus.DeadLetterQueue")
        self.stream = stream
        self.replicas = replicas
        self.retry = retry if retry is not None else DEFAULT_RETRY()
        self.dlq = dlq
        self.ack_timeout_s = float(ack_timeout_s)
        self.dedupe_window_s = float(dedupe_window_s)
        self.put_timeout_s = float(put_timeout_s)
        self.name = name or f"pybus-js-queue-{next(_names)}"
        self._c = dict.fromkeys(("put", "duplicates", "put_retries", "dead_lettered"), 0)
        self._subjects: dict[str, str] = {}  # topic -> subject, checked once
        self._open(servers)
        _metrics.attach(self, registry)

    def _open(self, servers: str | Sequence[str]) -> None:
        """Make the link (and, for the sync queue, connect and set the streams up)."""
        raise NotImplementedError

    def _encode(self, topic: str, payload: Any, headers: Mapping[str, Any] | None,
                dedupe_key: str | None, delay_s: Any = None, not_before: Any = None,
                priority: Any = 0, key: Any = None) -> tuple[str, bytes, dict[str, str]]:
        if self._closed:
            raise ClosedError("put() on a closed WorkQueue")
        if key is not None:
            raise ValidationError(
                "key: the JetStream queue has no per-key ordering (its workers share one "
                "consumer, and nats-server 2.9 cannot hold a subject's later tasks while one "
                "is in flight); use the SQLite pybus.WorkQueue for it (docs/workqueue.md)")
        if priority:
            raise ValidationError(
                "priority: a JetStream stream delivers in stream order (nats-server 2.9 has no "
                "priorities), so the JetStream queue has none; use the SQLite pybus.WorkQueue, "
                "or one stream per priority with workers of their own (docs/scale-out.md)")
        if delay_s is not None or not_before is not None:
            raise ValidationError(
                "delay_s/not_before: JetStream (nats-server 2.9) cannot hold a new message "
                "until a time, so the JetStream queue has no delayed delivery; use the SQLite "
                "pybus.WorkQueue for it (docs/scale-out.md)")
        if dedupe_key is not None and (not isinstance(dedupe_key, str) or not dedupe_key):
            raise ValidationError(f"dedupe_key must be a non-empty str, got {dedupe_key!r}")
        return codec.encode_task(self.stream, topic, payload, headers,
                                 dedupe_key or uuid.uuid4().hex, self._subjects)

    def metrics_readiness(self) -> tuple[bool, str]:
        if self._closed:
            return False, "jetstream work queue is closed"
        if not self._link.connected:
            return False, f"jetstream work queue cannot reach NATS ({self._link.last_error})"
        return True, ""

    # -- the protocol, as coroutines on the link -----------------------------------------

    async def _setup(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy

        js = await self._link.js()
        await self._link.ensure_stream(self.stream, [f"{self.stream}.>"], self.replicas,
                                       RetentionPolicy.WORK_QUEUE, self.dedupe_window_s)
        dead = codec.dead_stream(self.stream)
        await self._link.ensure_stream(dead, [f"{dead}.>"], self.replicas,
                                       RetentionPolicy.LIMITS, self.dedupe_window_s)
        # the workers' consumer: the server's dispatch. Unlimited deliveries: a worker counts
        # attempts (a task that keeps killing its workers is dead-lettered, not stuck)
        await js.add_consumer(self.stream, ConsumerConfig(
            durable_name=WORKERS, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_timeout_s,
            max_deliver=-1, filter_subject=f"{self.stream}.>", max_ack_pending=-1,
            description=codec.describe_retry(self.retry)))

    async def _put(self, subject: str, body: bytes, headers: dict[str, str]) -> int:
        deadline = time.monotonic() + self.put_timeout_s
        js = await self._link.js()
        while True:
            left = deadline - time.monotonic()
            try:
                ack = await js.publish(subject, body, headers=headers,
                                       timeout=max(0.05, min(2.0, left)))
            except Exception as exc:  # nats-py: timeouts, no responders, reconnecting
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the stream {self.stream!r} did not store the task "
                                       f"within {self.put_timeout_s} s: {exc}") from None
                self._c["put_retries"] += 1
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            self._c["duplicates" if ack.duplicate else "put"] += 1
            return int(ack.seq)

    async def _empty(self) -> bool:
        js = await self._link.js()
        if (await js.stream_info(self.stream)).state.messages:
            return False
        if self.dlq is None:
            return True
        info = await js.consumer_info(codec.dead_stream(self.stream), _DLQ_SINK)
        return not info.num_pending and not info.num_ack_pending

    async def _sink_dead_letters(self, link: NatsLink) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        dead = codec.dead_stream(self.stream)
        js = await link.js()
        psub = await js.pull_subscribe(f"{dead}.>", durable=_DLQ_SINK, stream=dead,
                                       config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        while not self._closed:
            try:
                msgs = await psub.fetch(100, timeout=0.5)
            except Exception:  # timeout (nothing dead) or reconnecting: ask again
                continue
            for m in msgs:
                self._store_dead(m)
                await m.ack()

    def _store_dead(self, m: Any) -> None:
        h = m.headers or {}
        meta = m.metadata
        msg = codec.task_message(m.subject, codec.dead_stream(self.stream), m.data, h,
                                 int(h.get(codec.H_TASK_SEQ, meta.sequence.stream)), 0)
        assert self.dlq is not None
        self.dlq.add(
            msg.topic, msg.raw_payload, id=f"{self.stream}:{h.get(codec.H_TASK_SEQ, '')}",
            headers=msg.headers or None, error_type=h.get(codec.H_ERR_TYPE, "Exception"),
            error_message=h.get(codec.H_ERR_MESSAGE, ""),
            error_code=int(h.get(codec.H_ERR_CODE, "1")),
            attempts=int(h.get(codec.H_ATTEMPTS, "1")), origin=f"jetstream:{self.stream}",
            payload_format="msgpack" if msg.is_msgpack else "raw")
        self._c["dead_lettered"] += 1

    async def _probe(self) -> None:
        await self._link.js()
        await self._link.flush(0.5)

    async def _server_state(self) -> dict[str, int]:
        js = await self._link.js()
        info = await js.consumer_info(self.stream, WORKERS)
        dead = await js.stream_info(codec.dead_stream(self.stream))
        return {"queue_depth": int(info.num_pending) + int(info.num_ack_pending),
                "in_flight": int(info.num_ack_pending), "dead_letters": int(dead.state.messages)}


class WorkQueue(_QueueBase, Closeable):
    """Put tasks into the JetStream stream ``stream`` (created with work-queue retention when
    missing, with its workers' consumer and its dead-letter stream ``<stream>_dead``).

    Parameters
    ----------
    servers : str or list of str
        NATS server URLs (a list, or a comma-separated string).
    stream : str
        The stream's name (no spaces, ``.``, ``*`` or ``>``); tasks go on ``<stream>.<topic>``.
    replicas : int
        Copies of the streams (1 to 5; 3 survives the loss of one node).
    retry : RetryPolicy, optional
        Attempts and delays for a task whose handler fails (default: 5 attempts, 0.1 s
        doubling up to 5 s). Workers read it from the server: a failed attempt is naked with
        the policy's delay; after the last one the task is dead-lettered. Its ``retry_on``
        predicate and callbacks stay in this process (pass ``retry=`` to a Worker for those).
    dlq : DeadLetterQueue, optional
        Where dead letters end up: moved from ``<stream>_dead`` into this SQLite file by this
        queue (so ``pybus dlq`` lists, shows, replays and purges them). Without it they stay
        in the dead-letter stream.
    ack_timeout_s : float
        A task a worker holds longer without acknowledging it (the worker hangs or died) is
        delivered again, to any worker.
    dedupe_window_s : float
        A ``put`` with the same ``dedupe_key`` within this window is stored once.
    put_timeout_s : float
        How long a ``put`` keeps retrying (same message id: never stored twice) while the
        server does not acknowledge it.
    name : str, optional
        Connection name, and the object's name in metrics.
    registry : pybus.metrics.Registry or False, optional
        Where the queue reports (default registry; ``False``: nowhere).
    """

    def _open(self, servers: str | Sequence[str]) -> None:
        # puts run the connection's loop in the caller's thread (no handoff); the dead
        # letters, which arrive at any time, are moved by a connection on a thread of its own
        self._link = self._conn = InlineConn(servers, self.name)
        self.servers = self._conn.servers
        self._sink_conn: JsConn | None = None
        self._closed = False
        try:
            self._conn.run(self._setup(), timeout_s=self.put_timeout_s)
        except BaseException:
            self.close()
            raise
        if self.dlq is not None:
            self._sink_conn = JsConn(servers, f"{self.name}-dlq")
            self._sink_conn.submit(self._sink_dead_letters(self._sink_conn))

    # -- putting -----------------------------------------------------------------------------

    def put(self, topic: str, payload: Any, headers: Mapping[str, Any] | None = None, *,
            dedupe_key: str | None = None, delay_s: float | None = None,
            not_before: Any = None, priority: int = 0, key: str | None = None) -> int:
        """Store one task; return its sequence number in the stream (a duplicate within the
        dedupe window returns the first one's).

        Raises
        ------
        TopicError, ValidationError
            A topic NATS or pybus would refuse, a payload with no msgpack form, a
            ``delay_s``/``not_before``, a ``priority`` or a ``key`` (JetStream cannot
            express them).
        TimeoutError
            The server did not store it within ``put_timeout_s`` (retried meanwhile with the
            same message id, so it is stored at most once).
        """
        subject, body, h = self._encode(topic, payload, headers, dedupe_key, delay_s,
                                        not_before, priority, key)
        # _put bounds itself by put_timeout_s (each publish has its timeout)
        return self._conn.run(self._put(subject, body, h))

    def put_many(self, items: Iterable[Any]) -> list[int]:
        """``put`` each ``(topic, payload)`` or ``(topic, payload, headers)``; the sequence
        numbers in order."""
        return [self.put(*item) for item in items]

    # -- waiting -----------------------------------------------------------------------------

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every task was acknowledged or dead-lettered (and, with ``dlq``,
        moved into it); False on timeout."""
        if self._closed:
            raise ClosedError("join() on a closed WorkQueue")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._conn.run(self._empty(), timeout_s=10):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)  # the server's state is polled: it has no "empty" event

    # -- dead letters into SQLite ------------------------------------------------------------

    # -- state -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``put``, ``duplicates`` (puts the dedupe window absorbed), ``put_retries``,
        ``dead_lettered`` (moved into ``dlq``), and from the server: ``queue_depth`` (tasks
        stored), ``in_flight`` (delivered, not acknowledged), ``dead_letters`` (in the
        dead-letter stream); ``connected``."""
        out: dict[str, Any] = dict(self._c)
        try:
            out.update(self._conn.run(self._server_state(), timeout_s=5))
        except Exception as exc:  # noqa: BLE001 - nats-py's own errors too: reported
            out["server_error"] = f"{type(exc).__name__}: {exc}"
        out["connected"] = self._conn.connected
        return out

    def metrics_readiness(self) -> tuple[bool, str]:
        # the connection's loop runs only during calls: ask the server, briefly
        if self._closed:
            return False, "jetstream work queue is closed"
        try:
            self._conn.run(self._probe(), timeout_s=1.0)
        except Exception as exc:  # noqa: BLE001 - any failure means not reachable
            return False, (f"jetstream work queue cannot reach NATS "
                           f"({self._link.last_error or type(exc).__name__})")
        return True, ""

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        yield "pybus_tasks_total", {"event": "put"}, s["put"]
        yield "pybus_tasks_total", {"event": "duplicates"}, s["duplicates"]
        yield "pybus_retries_total", {}, s["put_retries"]
        yield "pybus_dead_lettered_total", {}, s["dead_lettered"]
        if "queue_depth" in s:
            yield "pybus_queue_depth", {}, s["queue_depth"]
            yield "pybus_in_flight", {}, s["in_flight"]

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect (tasks stay in the stream). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._sink_conn is not None:
            self._sink_conn.close(timeout)
        self._conn.close(timeout)

    def __repr__(self) -> str:
        return f"<pybus.jetstream.WorkQueue {self.name} stream={self.stream!r}>"


class AsyncWorkQueue(_QueueBase):
    """The asyncio twin of :class:`WorkQueue`: the same options and behaviour; its methods are
    coroutines that run in the caller's event loop (no thread in between). ``async with`` it,
    or ``await q.start()`` first (``put`` starts it too).

    Examples
    --------
    >>> async with js.AsyncWorkQueue("nats://127.0.0.1:4222", stream="jobs") as q:  # doctest: +SKIP
    ...     await q.put("images.resize", {"path": "a.png"}, dedupe_key="resize-a.png")
    ...     await q.join(timeout=60)
    """

    def _open(self, servers: str | Sequence[str]) -> None:
        self._link = NatsLink(servers, self.name)  # connects in the caller's loop, at start()
        self.servers = self._link.servers
        self._started = False
        self._sink_task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> AsyncWorkQueue:
        """Connect, and create the streams and the workers' consumer when missing."""
        if self._closed:
            raise ClosedError("start() on a closed AsyncWorkQueue")
        if not self._started:
            await asyncio.wait_for(self._setup(), self.put_timeout_s)
            self._started = True
            if self.dlq is not None:
                self._sink_task = asyncio.get_running_loop().create_task(
                    self._sink_dead_letters(self._link))
        return self

    async def __aenter__(self) -> AsyncWorkQueue:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def put(self, topic: str, payload: Any, headers: Mapping[str, Any] | None = None, *,
                  dedupe_key: str | None = None, delay_s: float | None = None,
                  not_before: Any = None, priority: int = 0, key: str | None = None) -> int:
        """As :meth:`WorkQueue.put`."""
        subject, body, h = self._encode(topic, payload, headers, dedupe_key, delay_s,
                                        not_before, priority, key)
        if not self._started:
            await self.start()
        return await self._put(subject, body, h)

    async def put_many(self, items: Iterable[Any]) -> list[int]:
        """As :meth:`WorkQueue.put_many`."""
        return [await self.put(*item) for item in items]

    async def join(self, timeout: float | None = None) -> bool:
        """As :meth:`WorkQueue.join`."""
        if self._closed:
            raise ClosedError("join() on a closed AsyncWorkQueue")
        if not self._started:
            await self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not await self._empty():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)  # the server's state is polled: it has no "empty" event
        return True

    async def stats(self) -> dict[str, Any]:
        """As :meth:`WorkQueue.stats`."""
        out: dict[str, Any] = {**self._c, "connected": self._link.connected}
        out.update(await self._server_state())
        return out

    def metrics_samples(self) -> Iterator[RawSample]:
        # read from the scraping thread: the counters only (the server's state is asked for
        # in the queue's own loop, by stats())
        yield "pybus_tasks_total", {"event": "put"}, self._c["put"]
        yield "pybus_tasks_total", {"event": "duplicates"}, self._c["duplicates"]
        yield "pybus_retries_total", {}, self._c["put_retries"]
        yield "pybus_dead_lettered_total", {}, self._c["dead_lettered"]

    async def close(self) -> None:
        """Disconnect (tasks stay in the stream). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._sink_task is not None:
            self._sink_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sink_task
        await self._link.aclose()

    def __repr__(self) -> str:
        return f"<pybus.jetstream.AsyncWorkQueue {self.name} stream={self.stream!r}>"
