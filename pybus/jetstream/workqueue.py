"""The work queue on NATS JetStream: producers on any host put tasks into a replicated stream
with work-queue retention; :class:`pybus.jetstream.Worker` processes on any host take them.

The same API as the SQLite :class:`pybus.WorkQueue` (``put``, ``put_many``, ``join``,
``close``, ``stats``); the storage and the dispatch are the server's. docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from .. import metrics as _metrics
from .._lifecycle import Closeable
from ..errors import BusError, ClosedError, TimeoutError, ValidationError
from ..metrics.samples import RawSample
from ..policy.retry import RetryPolicy
from ..store.dlq import DeadLetterQueue
from ..workqueue._policy import DEFAULT_RETRY
from . import _wq_codec as codec
from ._jsconn import JsConn, check_stream_name

__all__ = ["WorkQueue", "WORKERS"]

log = logging.getLogger("pybus.jetstream")
_names = itertools.count(1)
#: the durable consumer every Worker of a queue pulls from (shared: the server dispatches)
WORKERS = "pybus-workers"
_DLQ_SINK = "pybus-dlq-sink"


class WorkQueue(Closeable):
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

    metrics_kind: ClassVar[str] = "jetstream_work_queue"

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
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValidationError(f"retry must be a pybus.RetryPolicy, got {retry!r}")
        if dlq is not None and not isinstance(dlq, DeadLetterQueue):
            raise ValidationError(f"dlq must be a pybus.DeadLetterQueue, got {dlq!r}")
        self.stream = stream
        self.replicas = replicas
        self.retry = retry if retry is not None else DEFAULT_RETRY()
        self.dlq = dlq
        self.ack_timeout_s = float(ack_timeout_s)
        self.put_timeout_s = float(put_timeout_s)
        self.name = name or f"pybus-js-queue-{next(_names)}"
        self._conn = JsConn(servers, self.name)
        self.servers = self._conn.servers
        self._c = dict.fromkeys(("put", "duplicates", "put_retries", "dead_lettered"), 0)
        self._closed = False
        try:
            self._conn.run(self._setup(float(dedupe_window_s)), timeout_s=self.put_timeout_s)
        except BaseException:
            self.close()
            raise
        self._sink: asyncio.Future[Any] | None = None
        if dlq is not None:
            self._sink = self._conn.submit(self._sink_dead_letters())  # type: ignore[assignment]
        _metrics.attach(self, registry)

    async def _setup(self, dedupe_window_s: float) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy

        js = await self._conn.js()
        await self._conn.ensure_stream(self.stream, [f"{self.stream}.>"], self.replicas,
                                       RetentionPolicy.WORK_QUEUE, dedupe_window_s)
        dead = codec.dead_stream(self.stream)
        await self._conn.ensure_stream(dead, [f"{dead}.>"], self.replicas,
                                       RetentionPolicy.LIMITS, dedupe_window_s)
        # the workers' consumer: the server's dispatch. Unlimited deliveries: a worker counts
        # attempts (a task that keeps killing its workers is dead-lettered, not stuck)
        await js.add_consumer(self.stream, ConsumerConfig(
            durable_name=WORKERS, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_timeout_s,
            max_deliver=-1, filter_subject=f"{self.stream}.>", max_ack_pending=-1,
            description=codec.describe_retry(self.retry)))

    # -- putting -----------------------------------------------------------------------------

    def put(self, topic: str, payload: Any, headers: Mapping[str, Any] | None = None, *,
            dedupe_key: str | None = None) -> int:
        """Store one task; return its sequence number in the stream (a duplicate within the
        dedupe window returns the first one's).

        Raises
        ------
        TopicError, ValidationError
            A topic NATS or pybus would refuse, a payload with no msgpack form.
        TimeoutError
            The server did not store it within ``put_timeout_s`` (retried meanwhile with the
            same message id, so it is stored at most once).
        """
        if self._closed:
            raise ClosedError("put() on a closed WorkQueue")
        if dedupe_key is not None and (not isinstance(dedupe_key, str) or not dedupe_key):
            raise ValidationError(f"dedupe_key must be a non-empty str, got {dedupe_key!r}")
        subject, body, h = codec.encode_task(self.stream, topic, payload, headers,
                                             dedupe_key or uuid.uuid4().hex)
        return self._conn.run(self._put(subject, body, h), timeout_s=self.put_timeout_s + 5)

    def put_many(self, items: Iterable[Any]) -> list[int]:
        """``put`` each ``(topic, payload)`` or ``(topic, payload, headers)``; the sequence
        numbers in order."""
        return [self.put(*item) for item in items]

    async def _put(self, subject: str, body: bytes, headers: dict[str, str]) -> int:
        deadline = time.monotonic() + self.put_timeout_s
        js = await self._conn.js()
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
            time.sleep(0.02)  # the server's state is polled: it has no "empty" event

    async def _empty(self) -> bool:
        js = await self._conn.js()
        if (await js.stream_info(self.stream)).state.messages:
            return False
        if self.dlq is None:
            return True
        info = await js.consumer_info(codec.dead_stream(self.stream), _DLQ_SINK)
        return not info.num_pending and not info.num_ack_pending

    # -- dead letters into SQLite ------------------------------------------------------------

    async def _sink_dead_letters(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        dead = codec.dead_stream(self.stream)
        js = await self._conn.js()
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

    # -- state -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``put``, ``duplicates`` (puts the dedupe window absorbed), ``put_retries``,
        ``dead_lettered`` (moved into ``dlq``), and from the server: ``queue_depth`` (tasks
        stored), ``in_flight`` (delivered, not acknowledged), ``dead_letters`` (in the
        dead-letter stream); ``connected``."""
        out: dict[str, Any] = dict(self._c)
        out["connected"] = self._conn.connected
        try:
            out.update(self._conn.run(self._server_state(), timeout_s=5))
        except (BusError, OSError) as exc:
            out["server_error"] = str(exc)
        return out

    async def _server_state(self) -> dict[str, int]:
        js = await self._conn.js()
        info = await js.consumer_info(self.stream, WORKERS)
        dead = await js.stream_info(codec.dead_stream(self.stream))
        return {"queue_depth": int(info.num_pending) + int(info.num_ack_pending),
                "in_flight": int(info.num_ack_pending), "dead_letters": int(dead.state.messages)}

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        yield "pybus_tasks_total", {"event": "put"}, s["put"]
        yield "pybus_tasks_total", {"event": "duplicates"}, s["duplicates"]
        yield "pybus_retries_total", {}, s["put_retries"]
        yield "pybus_dead_lettered_total", {}, s["dead_lettered"]
        if "queue_depth" in s:
            yield "pybus_queue_depth", {}, s["queue_depth"]
            yield "pybus_in_flight", {}, s["in_flight"]

    def metrics_readiness(self) -> tuple[bool, str]:
        if self._closed:
            return False, "jetstream work queue is closed"
        if not self._conn.connected:
            return False, f"jetstream work queue cannot reach NATS ({self._conn.last_error})"
        return True, ""

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect (tasks stay in the stream). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._conn.close(timeout)

    def __repr__(self) -> str:
        return f"<pybus.jetstream.WorkQueue {self.name} stream={self.stream!r}>"
