"""The books of one subscriber's streams: a plain object, no socket, no clock, no lock.

A stream is one publisher's messages on one topic, numbered from 1 (docs/wire.md). The book
holds each stream's next expected sequence number and counts what the frames reveal against
it: messages received and lost per topic, gaps, out-of-order messages, position frames. A
publisher's join snapshot says where its streams stood when the subscriber arrived; a history
snapshot sets floors under which live messages are duplicates. The subscriber
(``pybus.pubsub.subscriber`` with ``_streams``) reads frames and hands the book each receive's
frames at once, under its lock; what the book decides, the subscriber reports (``on_gap``, slow
consumer events). Tests drive it with plain numbers (tests/pubsub/test_stream_book.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Topics counted one by one in stats(), per counter; beyond, counts go to "<other>".
MAX_TRACKED_TOPICS = 4096
# Publishers whose join snapshot arrived, at most (beyond: new ones are not tracked).
MAX_JOINED = 4096

_Key = tuple[int, bytes]  # (publisher id, topic bytes)


class StreamBook:
    """Where every stream stands and what that revealed (see the module docstring)."""

    def __init__(self, max_streams: int = 65536) -> None:
        self.max_streams = max_streams
        self.next_seq: dict[_Key, int] = {}  # insertion order: the oldest stream first
        self.received: dict[str, int] = {}
        self.lost: dict[str, int] = {}
        self.gaps = 0
        self.out_of_order = 0
        self.positions = 0
        # publishers whose whole join snapshot arrived: their later streams start at 1
        self.joined: set[int] = set()
        self.join_off = False
        # (publisher id, topic bytes) -> last sequence a history snapshot delivered
        self.floors: dict[_Key, int] = {}
        self.history_duplicates = 0

    def account(self, topic: str, topic_b: bytes, pid: int, first: int, count: int) -> int:
        """A frame of ``count`` messages numbered from ``first`` (``count`` 0: a position,
        nothing received). Returns how many messages it reveals lost (0: none)."""
        received = self.received
        if not count:
            pass
        elif topic in received:
            received[topic] += count
        elif len(received) < MAX_TRACKED_TOPICS:
            received[topic] = count
        else:
            received["<other>"] = received.get("<other>", 0) + count
        key = (pid, topic_b)
        streams = self.next_seq
        expected = streams.get(key)
        lost = 0
        if expected is None:
            if len(streams) >= self.max_streams:
                self._forget_oldest()
            if pid in self.joined:
                # a stream that started after the subscriber arrived (not in the snapshot)
                expected = 1
        if expected is not None and first != expected:
            if first > expected:
                lost = first - expected
                self.gaps += 1
                lt = self.lost
                name = topic if (topic in lt or len(lt) < MAX_TRACKED_TOPICS) else "<other>"
                lt[name] = lt.get(name, 0) + lost
            else:
                self.out_of_order += min(count, expected - first)
                if first + count < expected:  # wholly behind: the expectation stays
                    return 0
        streams[key] = first + count
        return lost

    def account_frames(self, frames: Iterable[tuple[Any, ...]]) -> list[tuple[str, int, int, int]]:
        """:meth:`account` for each frame of one receive, given as the channel's
        ``recv_batches`` tuples ``(topic, topic bytes, publisher id, first seq, _, messages,
        _)``. Returns the gaps found, ``(topic, publisher id, first seq, lost)`` each.

        One call per receive, not per frame: with many topics a frame often holds one
        message, and a call per frame cost about a fifth of reading it. The common case, the
        next frame of a stream already counted, is decided here; every other goes through
        :meth:`account`."""
        streams = self.next_seq
        received = self.received
        gaps: list[tuple[str, int, int, int]] = []
        for topic, topic_b, pid, first, _ts, msgs, _nbytes in frames:
            count = len(msgs)
            key = (pid, topic_b)
            if streams.get(key) == first and topic in received:
                streams[key] = first + count
                received[topic] += count
                continue
            lost = self.account(topic, topic_b, pid, first, count)
            if lost:
                gaps.append((topic, pid, first, lost))
        return gaps

    def position(self, topic: str, topic_b: bytes, pid: int, next_seq: int) -> int:
        """A position frame: every message of the stream before ``next_seq`` was sent, so those
        that never arrived are lost, even when no later message comes. An older position (a
        repeat, or one overtaken by messages) changes nothing. Returns the messages lost."""
        self.positions += 1
        expected = self.next_seq.get((pid, topic_b))
        if expected is None or next_seq > expected:
            return self.account(topic, topic_b, pid, next_seq, 0)
        return 0

    def join(self, pid: int, last: bool, entries: Iterable[tuple[bytes, int]]) -> None:
        """A chunk of publisher ``pid``'s join snapshot: ``(topic bytes, next sequence)`` of
        each of its streams the subscriber wants. A stream not seen yet starts there; once the
        ``last`` chunk is in, a stream that appears later started after the arrival, at 1."""
        streams = self.next_seq
        for topic_b, next_seq in entries:
            if (pid, topic_b) not in streams:
                if len(streams) >= self.max_streams:
                    self._forget_oldest()
                streams[(pid, topic_b)] = next_seq
        if last and not self.join_off and (pid in self.joined or len(self.joined) < MAX_JOINED):
            self.joined.add(pid)

    def stop_joining(self) -> None:
        """After a new pattern: streams that moved before it are not losses, so from now on the
        first frame of a stream sets its expectation (join snapshots, even one still queued,
        predate the pattern)."""
        self.joined.clear()
        self.join_off = True

    def _forget_oldest(self) -> None:
        """At the streams bound: forget the least recently started stream. Its publisher's
        later streams may then be one we forgot, so they no longer count from sequence 1."""
        pid, topic_b = next(iter(self.next_seq))
        del self.next_seq[(pid, topic_b)]
        self.joined.discard(pid)

    # -- history (late join) ------------------------------------------------------------------

    def set_floor(self, key: _Key, last_seq: int) -> None:
        """A history snapshot delivered the stream ``key`` up to ``last_seq``: live messages at
        or below it are duplicates, and the stream continues after it."""
        floor = max(self.floors.get(key, 0), last_seq)
        self.floors[key] = floor
        if self.next_seq.get(key, 0) <= floor:
            self.next_seq[key] = floor + 1

    def after_floor(self, pid: int, topic_b: bytes, first: int, count: int, msgs: list[Any]
                    ) -> tuple[int, int, list[Any]] | None:
        """A live frame after a history snapshot: drop the messages the snapshot held.
        Returns the frame's remaining (first, count, messages), or None if none remain."""
        key = (pid, topic_b)
        floor = self.floors.get(key)
        if floor is None:
            return first, count, msgs
        if first + count - 1 <= floor:
            self.history_duplicates += count
            return None
        del self.floors[key]
        if first <= floor:
            skip = floor + 1 - first
            self.history_duplicates += skip
            msgs = msgs[skip:]
            first, count = floor + 1, count - skip
        return first, count, msgs

    def is_duplicate(self, pid: int, topic_b: bytes, seq: int) -> bool:
        """Whether a message already buffered is at or below its stream's floor (counted)."""
        floor = self.floors.get((pid, topic_b))
        if floor is not None and seq <= floor:
            self.history_duplicates += 1
            return True
        return False

    def stats(self) -> dict[str, Any]:
        return {
            "received": sum(self.received.values()),
            "received_by_topic": dict(self.received),
            "lost": sum(self.lost.values()),
            "lost_by_topic": dict(self.lost),
            "out_of_order": self.out_of_order,
            "gaps": self.gaps,
            "positions": self.positions,
            "streams": len(self.next_seq),
            "history_duplicates": self.history_duplicates,
        }
