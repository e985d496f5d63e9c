"""The Subscriber's side of its stream books (``_book.StreamBook``, which decides): join
snapshots and position frames handed to the book, what it reveals reported (the ``on_gap``
callback, slow-consumer events), and the history snapshot (``fetch_history``) whose floors the
book keeps. It runs once per frame, never per message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._native import Message, decode_batch, frame_info
from ..errors import FrameError
from ..policy.topics import TopicMatcher
from ..transport import sockets as _sockets
from ._book import StreamBook
from .flow import unpack_join

log = logging.getLogger("pybus.subscriber")


class StreamsMixin:
    """Subscriber methods of stream accounting (see the module docstring)."""

    if TYPE_CHECKING:
        id: bytes
        _ctx: Any
        _security: Any
        _lock: threading.Lock
        _hello: bytes
        _matcher: TopicMatcher
        _topics: dict[bytes, Any]
        _book: StreamBook
        _on_gap: Callable[[str, int, int, int, int], None] | None
        _slow_events: dict[str, int]
        _snail_close: bool
        _snail: tuple[str, str] | None
        _history_received: int
        _buf: list[Message]
        _pos: int

        def _classify(self, topic_b: bytes) -> Any: ...
        def _decode_error(self, reason: str, topic_b: bytes) -> None: ...
        def _check_open(self) -> None: ...

    def _on_join(self, frame: Any) -> None:
        """A publisher's join snapshot (docs/wire.md): where each of its streams stood when
        this subscriber arrived. A stream not seen yet starts there; and once the last chunk
        is in, a stream that appears later started after the arrival, at sequence 1, so
        messages of it that never arrived count as lost (``StreamBook.join``)."""
        snap = unpack_join(frame)
        if snap is None:
            self._decode_error("malformed join snapshot", self._hello)
            return
        pid, last, entries = snap
        wanted = []
        for topic_b, next_seq in entries:
            topic = self._topics.get(topic_b)
            if topic is None:
                topic = self._classify(topic_b)
            if topic.__class__ is str:
                wanted.append((topic_b, next_seq))
        self._book.join(pid, last, wanted)

    def _position(self, topic: str, topic_b: bytes, pid: int, next_seq: int) -> None:
        """A position frame (docs/wire.md): the book counts what it reveals lost."""
        lost = self._book.position(topic, topic_b, pid, next_seq)
        if lost:
            self._gap(topic, pid, next_seq - lost, next_seq, lost)

    def _gap(self, topic: str, pid: int, expected: int, first: int, lost: int) -> None:
        """The book found ``lost`` messages of a stream missing (seq expected..first-1)."""
        if self._on_gap is not None:
            try:
                self._on_gap(topic, pid, expected, first, lost)
            except Exception:
                log.exception("pybus Subscriber on_gap callback raised")
        self._slow("gap", f"{lost} messages of {topic!r} lost (seq {expected}..{first - 1})")

    def _slow(self, kind: str, detail: str) -> None:
        self._slow_events[kind] += 1
        if self._snail_close and self._snail is None:
            self._snail = (kind, detail)

    def fetch_history(self, endpoint: str, timeout: float = 5.0) -> int:
        """Fetch a publisher's recent messages (Clone pattern); returns how many were queued.

        The snapshot (the last ``history`` messages per matching topic) is delivered by
        ``recv`` before anything received live after it; live messages the snapshot already
        holds are dropped (``stats()["history_duplicates"]``), so the hand-over has neither
        gaps nor duplicates. The publisher answers only once this subscriber's subscription
        has reached it, so nothing published after the snapshot can be missed.
        """
        from .history import request_snapshot

        self._check_open()
        prefixes = sorted({self._matcher._compiled[p].prefix for p in self._matcher.patterns})
        if b"" in prefixes:
            prefixes = [b""]
        head, pairs = request_snapshot(
            self._ctx, endpoint, self.id, prefixes, timeout,
            lambda s: _sockets.configure(s, security=self._security,
                                         liveness=_sockets.Liveness(monitor=False)),
        )
        depth = head.get("history", 0)
        streams: dict[tuple[int, bytes], list[Message]] = {}
        for topic_b, frame in pairs:
            topic = self._classify(topic_b)
            if topic.__class__ is not str:
                continue
            try:
                pid, _first, _count, _ts = frame_info(frame)
                msgs = decode_batch(topic, frame)
            except FrameError as exc:
                self._decode_error(str(exc), topic_b)
                continue
            streams.setdefault((pid, topic_b), []).extend(msgs)
        snap: list[Message] = []
        with self._lock:
            book = self._book
            for key, msgs in streams.items():
                msgs = msgs[-depth:] if depth else msgs
                book.set_floor(key, msgs[-1].seq)
                snap += msgs
            keep = [m for m in self._buf[self._pos :]
                    if not book.is_duplicate(m.publisher_id, m.topic.encode("ascii"), m.seq)]
            self._buf, self._pos = snap + keep, 0
            self._history_received += len(snap)
        return len(snap)
