"""Where each stream of a Subscriber stands: sequence accounting, join snapshots, history.

A stream is one publisher's messages on one topic, numbered from 1. The subscriber expects
each stream's next sequence number; this module moves those expectations and counts what they
reveal: messages received and lost per topic, gaps (and the ``on_gap`` callback), out-of-order
messages, position frames, the join snapshot that tells a new subscriber where every stream
stood, and the floors a history snapshot sets (live duplicates of it are dropped). It runs once
per frame, never per message.
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
from ._frames import _MAX_TRACKED_TOPICS
from .flow import unpack_join

log = logging.getLogger("pybus.subscriber")

# Publishers whose join snapshot arrived, at most (beyond: new ones are not tracked).
_MAX_JOINED = 4096


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
        _streams: dict[tuple[int, bytes], int]
        _max_streams: int
        _joined: set[int]
        _join_off: bool
        _received: dict[str, int]
        _lost: dict[str, int]
        _gaps: int
        _out_of_order: int
        _positions: int
        _on_gap: Callable[[str, int, int, int, int], None] | None
        _slow_events: dict[str, int]
        _snail_close: bool
        _snail: tuple[str, str] | None
        _floors: dict[tuple[int, bytes], int]
        _history_duplicates: int
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
        messages of it that never arrived count as lost (see _account)."""
        snap = unpack_join(frame)
        if snap is None:
            self._decode_error("malformed join snapshot", self._hello)
            return
        pid, last, entries = snap
        streams = self._streams
        for topic_b, next_seq in entries:
            topic = self._topics.get(topic_b)
            if topic is None:
                topic = self._classify(topic_b)
            if topic.__class__ is str and (pid, topic_b) not in streams:
                if len(streams) >= self._max_streams:
                    self._forget_oldest_stream()
                streams[(pid, topic_b)] = next_seq
        if last and not self._join_off and (pid in self._joined or len(self._joined) < _MAX_JOINED):
            self._joined.add(pid)

    def _forget_oldest_stream(self) -> None:
        """At the streams bound: forget the least recently started stream. Its publisher's
        later streams may then be one we forgot, so they no longer count from sequence 1."""
        pid, _topic = next(iter(self._streams))
        del self._streams[(pid, _topic)]
        self._joined.discard(pid)


    def _position(self, topic: str, topic_b: bytes, pid: int, next_seq: int) -> None:
        """A position frame (docs/wire.md): every message of the stream before next_seq was
        sent, so those that never arrived are lost, even when no later message comes. An
        older position (a repeat, or one overtaken by messages) changes nothing."""
        self._positions += 1
        expected = self._streams.get((pid, topic_b))
        if expected is None or next_seq > expected:
            self._account(topic, topic_b, pid, next_seq, 0)

    def _account(self, topic: str, topic_b: bytes, pid: int, first: int, count: int) -> None:
        received = self._received
        if not count:  # a position: nothing received
            pass
        elif topic in received:
            received[topic] += count
        elif len(received) < _MAX_TRACKED_TOPICS:
            received[topic] = count
        else:
            received["<other>"] = received.get("<other>", 0) + count
        key = (pid, topic_b)
        streams = self._streams
        expected = streams.get(key)
        if expected is None:
            if len(streams) >= self._max_streams:
                self._forget_oldest_stream()
            if pid in self._joined:
                # a stream that started after this subscriber arrived (not in the snapshot)
                expected = 1
        if expected is not None and first != expected:
            if first > expected:
                lost = first - expected
                self._gaps += 1
                lt = self._lost
                name = topic if (topic in lt or len(lt) < _MAX_TRACKED_TOPICS) else "<other>"
                lt[name] = lt.get(name, 0) + lost
                if self._on_gap is not None:
                    try:
                        self._on_gap(topic, pid, expected, first, lost)
                    except Exception:
                        log.exception("pybus Subscriber on_gap callback raised")
                self._slow("gap", f"{lost} messages of {topic!r} lost "
                           f"(seq {expected}..{first - 1})")
            else:
                self._out_of_order += min(count, expected - first)
        streams[key] = first + count

    def _slow(self, kind: str, detail: str) -> None:
        self._slow_events[kind] += 1
        if self._snail_close and self._snail is None:
            self._snail = (kind, detail)


    def _after_floor(
        self, pid: int, topic_b: bytes, first: int, count: int, msgs: list[Message]
    ) -> tuple[int, int, list[Message]] | None:
        """After a history snapshot: drop the frame's messages the snapshot already held.
        Returns the frame's remaining (first, count, messages), or None if none remain."""
        floor = self._floors.get((pid, topic_b))
        if floor is None:
            return first, count, msgs
        if first + count - 1 <= floor:
            self._history_duplicates += count
            return None
        del self._floors[(pid, topic_b)]
        if first <= floor:
            skip = floor + 1 - first
            self._history_duplicates += skip
            msgs = msgs[skip:]
            first, count = floor + 1, count - skip
        return first, count, msgs

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
            for key, msgs in streams.items():
                msgs = msgs[-depth:] if depth else msgs
                last = msgs[-1].seq
                floor = max(self._floors.get(key, 0), last)
                self._floors[key] = floor
                if self._streams.get(key, 0) <= floor:
                    self._streams[key] = floor + 1
                snap += msgs
            keep = [m for m in self._buf[self._pos :] if not self._dup(m)]
            self._buf, self._pos = snap + keep, 0
            self._history_received += len(snap)
        return len(snap)

    def _dup(self, m: Message) -> bool:
        floor = self._floors.get((m.publisher_id, m.topic.encode("ascii")))
        if floor is not None and m.seq <= floor:
            self._history_duplicates += 1
            return True
        return False

