"""Record pybus topics into a JetStream stream: every message a :class:`pybus.Subscriber`
receives is stored, on the subject of its topic, with its headers, publisher and sequence
number; what the subscriber counted lost is stored as a gap marker (docs/scale-out.md).

The subscriber is read on the recorder's own thread; the publishes run on a private asyncio
loop (nats-py is asyncio only), at most ``max_in_flight`` unacknowledged at a time.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from .. import metrics as _metrics
from .._lifecycle import Closeable
from .._native import Message
from ..errors import ClosedError, ValidationError
from ..errors import TimeoutError as BusTimeoutError
from ..metrics.samples import RawSample
from ..pubsub.subscriber import Subscriber
from ._log_codec import GAP_TOPIC, Item, gap_item, message_item, reduce_subjects
from ._rec_sink import Sink
from ._runner import LoopThread
from ._servers import parse_servers
from .subjects import filters_for_pattern, subject_for_topic

__all__ = ["Recorder", "GAP_TOPIC"]

log = logging.getLogger("pybus.jetstream.recorder")

_names = itertools.count(1)
# a (publisher, topic, first missing, last missing) gap the subscriber reported
_Gap = tuple[str, int, int, int]


class Recorder(Closeable):
    """Store every message ``subscriber`` receives in the JetStream stream ``stream``.

    Parameters
    ----------
    servers : str or list of str
        NATS server URLs (a list, or a comma-separated string).
    stream : str
        The stream; created when missing (file storage), with the subjects of the
        subscriber's patterns (``orders.#`` -> ``orders`` and ``orders.>``). An existing
        stream gets the subjects it lacks added; its other settings are left as found.
    subscriber : pybus.Subscriber
        Read by the recorder from :meth:`start` on (by no one else); closed by :meth:`stop`
        unless ``close_subscriber=False``. Its ``on_gap`` callback, if any, is still called.
    replicas : int
        Copies of a stream the recorder creates (1 to 5; 3 survives the loss of one node).
    subject_prefix : str
        Store topic ``t`` on subject ``<prefix>.t`` (default: on ``t``).
    duplicate_window_s : float
        The de-duplication window of a stream the recorder creates: a message stored again
        within it (by a second recorder, a restarted one, a retry) is stored once; later, twice.
    max_age_s : float, optional
        Age limit of the messages of a stream the recorder creates (default: kept forever).
    max_in_flight : int
        Publishes sent and not yet acknowledged by the stream, at most.
    ack_timeout_s : float
        An acknowledgement that takes longer is retried (same ``Nats-Msg-Id``).
    batch_messages : int
        Messages read from the subscriber at a time.
    name : str, optional
        The recorder's name (connection name, ``Pybus-Recorder`` of its gap markers, metrics).
    close_subscriber : bool
        Close the subscriber on :meth:`stop`.
    registry : pybus.metrics.Registry or False, optional
        Where the recorder reports (default registry; ``False``: nowhere).

    Examples
    --------
    >>> rec = js.Recorder("nats://127.0.0.1:4222", stream="history",       # doctest: +SKIP
    ...                   subscriber=pybus.Subscriber(ep, topics=["orders.#"]))
    >>> rec.start(); ...; rec.stop()                                        # doctest: +SKIP
    """

    metrics_kind: ClassVar[str] = "recorder"

    def __init__(self, servers: str | Sequence[str], stream: str, subscriber: Subscriber, *,
                 replicas: int = 1, subject_prefix: str = "", duplicate_window_s: float = 120.0,
                 max_age_s: float | None = None, max_in_flight: int = 1024,
                 ack_timeout_s: float = 5.0, batch_messages: int = 1000,
                 name: str | None = None, close_subscriber: bool = True,
                 registry: Any = None) -> None:
        self._closed = True
        if not isinstance(subscriber, Subscriber):
            raise ValidationError(
                f"subscriber must be a pybus.Subscriber, not {type(subscriber).__name__}")
        if not 1 <= replicas <= 5:
            raise ValidationError(f"replicas must be 1 to 5, got {replicas}")
        if max_in_flight < 1 or batch_messages < 1:
            raise ValidationError("max_in_flight and batch_messages must be >= 1")
        if ack_timeout_s <= 0 or duplicate_window_s <= 0:
            raise ValidationError("ack_timeout_s and duplicate_window_s must be > 0")
        if not stream or any(c in stream for c in " .*>\t\r\n"):
            raise ValidationError(f"stream name {stream!r} must be non-empty, without spaces, "
                                  f"'.', '*' or '>'")
        self.servers = parse_servers(servers)
        self.stream = stream
        self.subscriber = subscriber
        self.subject_prefix = subject_prefix
        self.name = name or f"pybus-recorder-{next(_names)}"
        self._patterns = list(subscriber.patterns)
        subjects: list[str] = []
        for p in self._patterns:  # TopicError here, before anything is sent
            subjects += filters_for_pattern(p, subject_prefix)
        self._sink = Sink(self.servers, stream, subjects, replicas=replicas,
                          duplicate_window_s=duplicate_window_s, max_age_s=max_age_s,
                          max_in_flight=max_in_flight, ack_timeout_s=ack_timeout_s,
                          name=self.name)
        self.subjects = list(self._sink.subjects)
        self._batch = batch_messages
        self._close_subscriber = close_subscriber
        self._gaps: list[_Gap] = []
        self._prev_on_gap: Callable[..., None] | None = None
        self._subjects: dict[str, str] = {}  # topic -> subject (cache)
        self._received = 0
        self._gaps_seen = 0
        self._lost_seen = 0
        self._error = ""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: LoopThread | None = None
        self._started = False
        self._closed = False
        _metrics.attach(self, registry)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Recorder:
        """Start recording (returns self). The stream is created, or connected to, in the
        background: a server that is down is waited for, and readiness says so."""
        if self._closed:
            raise ClosedError("the Recorder is stopped")
        if self._started:
            raise ValidationError("the Recorder is already started")
        self._started = True
        sub = self.subscriber
        self._prev_on_gap = sub._on_gap
        sub._on_gap = self._on_gap
        self._loop = LoopThread(f"pybus-recorder-loop-{self.name}")
        self._thread = threading.Thread(target=self._main, name=f"pybus-recorder-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, wait up to ``timeout`` seconds for what was read to be stored (what
        is still not acknowledged then is counted ``unstored`` and logged), close the
        connection and, unless ``close_subscriber=False``, the subscriber. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        loop = self._loop
        try:
            if loop is not None:
                deadline = time.monotonic() + timeout
                loop.loop.call_soon_threadsafe(setattr, self._sink, "deadline", deadline)
                if self._thread is not None:
                    self._thread.join(timeout + 5.0)
                try:
                    loop.run(self._sink.drain(), timeout + 5.0)
                except BusTimeoutError:  # a bug if it happens: never hang stop() on it
                    log.error("recorder %s: stop() could not finish storing in time",
                              self.name)
                finally:
                    try:
                        loop.run(self._sink.close(), 5.0)
                    finally:
                        loop.close()
        finally:
            sub = self.subscriber
            if self._started and not sub.closed:
                sub._on_gap = self._prev_on_gap
            if self._close_subscriber:
                sub.close()

    def close(self) -> None:
        """:meth:`stop` with its default timeout."""
        self.stop()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the recording thread ----------------------------------------------------------------

    def _on_gap(self, topic: str, publisher_id: int, expected: int, got: int, lost: int) -> None:
        # on the recorder's thread, inside recv_batch (the subscriber's lock is held)
        self._gaps.append((topic, publisher_id, expected, got - 1))
        if self._prev_on_gap is not None:
            self._prev_on_gap(topic, publisher_id, expected, got, lost)

    def _main(self) -> None:
        assert self._loop is not None
        sub = self.subscriber
        loop = self._loop
        try:
            while not self._stopping.is_set():
                try:
                    batch = sub.recv_batch(self._batch, timeout=0.1)
                except ClosedError:
                    break
                gaps, self._gaps = self._gaps, []
                if not batch and not gaps:
                    if self._sink.inflight:
                        loop.run(self._reap())
                    continue
                self._received += len(batch)
                if sub.patterns != self._patterns:  # subscribe() since: widen the stream
                    self._follow_patterns()
                loop.run(self._sink.write(self._items(batch, gaps)))
        except Exception as exc:  # a bug, or the loop closed under us: never silent
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("recorder %s stopped recording", self.name)

    def _follow_patterns(self) -> None:
        # the sink only runs when this thread calls into it: safe to change it here
        self._patterns = list(self.subscriber.patterns)
        subjects: list[str] = []
        for p in self._patterns:
            subjects += filters_for_pattern(p, self.subject_prefix)
        self._sink.subjects = reduce_subjects(self._sink.subjects + subjects)
        self._sink.stream_ready = False
        self.subjects = list(self._sink.subjects)

    async def _reap(self) -> None:
        self._sink.reap()

    def _items(self, batch: list[Message], gaps: list[_Gap]) -> list[Item]:
        """The batch's messages in order, each gap's marker just before the message that
        revealed it (or at the end, for a gap a position frame revealed)."""
        prefix = self.subject_prefix
        subjects = self._subjects
        by_next: dict[tuple[int, str, int], list[Item]] = {}
        for topic, pid, first, last in gaps:
            self._gaps_seen += 1
            self._lost_seen += last - first + 1
            by_next.setdefault((pid, topic, last + 1), []).append(
                gap_item(topic, pid, first, last, self.name, prefix))
        items: list[Item] = []
        for m in batch:
            if by_next:
                markers = by_next.pop((m.publisher_id, m.topic, m.seq), None)
                if markers:
                    items += markers
            subject = subjects.get(m.topic)
            if subject is None:
                subject = subject_for_topic(m.topic, prefix)
                if len(subjects) < 65536:
                    subjects[m.topic] = subject
            items.append(message_item(m, prefix, subject))
        for markers in by_next.values():
            items += markers
        return items

    # -- counters ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``received`` (from the subscriber), ``stored`` (new in the stream), ``duplicates``
        (the stream already held them: another recorder, a restart, a retry), ``gaps`` and
        ``lost`` (as the subscriber reported them), ``gap_markers`` (stored), ``retries``
        (publishes sent again), ``unstored`` (given up at stop), ``rejected`` (refused by the
        server), ``in_flight``, ``queued``, ``reconnects``, ``connected``, ``error``."""
        c = dict(self._sink.counts)
        return {
            "received": self._received, "gaps": self._gaps_seen, "lost": self._lost_seen,
            **c, "in_flight": sum(1 for p in list(self._sink.inflight) if not p.acked),
            "queued": len(self._sink.queue),
            "connected": self._sink.connected, "error": self._error,
            "last_server_error": self._sink.last_error,
        }

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        for event in ("stored", "duplicates", "gap_markers", "unstored", "rejected"):
            yield "pybus_recorder_messages_total", {"event": event}, s[event]
        yield "pybus_retries_total", {}, s["retries"]
        yield "pybus_in_flight", {}, s["in_flight"]
        yield "pybus_queue_depth", {}, s["queued"]

    def metrics_readiness(self) -> tuple[bool, str]:
        if self._closed:
            return False, "recorder is closed"
        if self._error:
            return False, f"recorder stopped recording: {self._error}"
        if self._started and not self._sink.connected:
            return False, (f"recorder cannot reach NATS ({self._sink.last_error or 'connecting'})")
        return True, ""

    def __repr__(self) -> str:
        state = "stopped" if self._closed else ("recording" if self._started else "new")
        return f"<pybus.jetstream.Recorder {self.name} {state} stream={self.stream!r}>"
