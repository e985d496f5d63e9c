"""Reliable pub/sub flow control: a publisher's window per subscriber, without sockets.

The protocol (docs/wire.md, "Flow control"): a reliable publisher numbers everything it sends
with a running position (frames and bytes since it started). Every so often it sends a *mark*
carrying its position on the flow topic, which every pybus Subscriber subscribes to; ZeroMQ
keeps each pipe in order, so a subscriber that reads a mark has read (or filtered out)
everything sent before it, and says so upstream with an *ack* carrying that position. What a
subscriber has not acknowledged is in flight between the two ends, wherever it sits (either
side's ZeroMQ queue or the kernel's buffers), and the publisher never lets it exceed the
window: the slowest live subscriber paces the publisher.

``FlowWindow`` holds the state and makes the decisions (how much may be sent now, when a mark
is due, which subscriber has stalled for too long and is evicted, when an evicted one is
re-admitted); the publisher drives it with its socket and a clock (ns, any monotonic clock,
tests use a fake one).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "FlowWindow",
    "pack_join",
    "unpack_join",
    "FLOW_TOPIC",
    "pack_mark",
    "unpack_mark",
    "pack_ack",
    "unpack_ack",
    "ACK_PREFIX",
]

#: Topic of the publishers' marks. Every pybus Subscriber subscribes to it; it sorts before
#: the hello subscription (``\xffpybus-hello:``), so a publisher that has seen a subscriber's
#: hello has its flow subscription too (ZeroMQ replays subscriptions in byte order).
FLOW_TOPIC = b"\xffpybus-flow"
#: Upstream acks start with 0x02 (ZeroMQ reads 0x00/0x01 as (un)subscriptions), then this.
ACK_PREFIX = b"\x02pybus-ack:"
_MARK = struct.Struct("<BQQQ")  # version, publisher id, position in frames, in bytes
_ACK = struct.Struct("<QQQ")  # publisher id, position in frames, in bytes
_SUB_ID_LEN = 16  # a subscriber id: 16 lowercase hex digits
MARK_VERSION = 1
# A mark repeated while the window stays full: first after 20 ms, then doubling up to 1 s
# (about a dozen frames over a 5 s slow_consumer_timeout, within the spare frames).
MARK_REPEAT_MIN_NS = 20_000_000
MARK_REPEAT_MAX_NS = 1_000_000_000
ACK_LEN = len(ACK_PREFIX) + _SUB_ID_LEN + _ACK.size


def pack_mark(publisher_id: int, frames: int, nbytes: int) -> bytes:
    return _MARK.pack(MARK_VERSION, publisher_id, frames, nbytes)


def unpack_mark(body: object) -> tuple[int, int, int] | None:
    """(publisher id, frames, bytes) of a mark body, or None when it is not one."""
    try:
        version, pid, frames, nbytes = _MARK.unpack_from(body)  # type: ignore[arg-type]
    except (struct.error, TypeError):
        return None
    if version != MARK_VERSION or len(body) != _MARK.size:  # type: ignore[arg-type]
        return None
    return pid, frames, nbytes


def pack_ack(sub_id: bytes, publisher_id: int, frames: int, nbytes: int) -> bytes:
    return ACK_PREFIX + sub_id + _ACK.pack(publisher_id, frames, nbytes)


def unpack_ack(msg: bytes) -> tuple[bytes, int, int, int] | None:
    """(subscriber id, publisher id, frames, bytes) of an ack message, or None."""
    if len(msg) != ACK_LEN or not msg.startswith(ACK_PREFIX):
        return None
    at = len(ACK_PREFIX)
    sub_id = msg[at : at + _SUB_ID_LEN]
    pid, frames, nbytes = _ACK.unpack_from(msg, at + _SUB_ID_LEN)
    return sub_id, pid, frames, nbytes


# -- join snapshots: where every stream stood when a subscriber arrived ---------------------
#
# Sent on the subscriber's own hello topic (only it subscribes to that prefix), once the
# publisher has read its hello and has nothing pending: for each topic that has published,
# the sequence number its next message will get. With it, the subscriber knows the start of
# every stream from its arrival on, so a stream whose every message was dropped before it
# saw any is counted as lost too (docs/wire.md, "Join snapshot").

_JOIN_HEAD = struct.Struct("<BBQI")  # version, flags (0x01: last chunk), publisher id, count
_JOIN_SEQ = struct.Struct("<Q")
JOIN_LAST = 0x01
JOIN_CHUNK_BYTES = 60_000  # well below any subscriber's MAXMSGSIZE


def pack_join(publisher_id: int, streams: list[tuple[bytes, int]]) -> list[bytes]:
    """The join snapshot's frames: (topic, next sequence number) pairs, in chunks."""
    chunks: list[bytes] = []
    entries: list[bytes] = []
    size = 0
    for topic, next_seq in streams:
        e = bytes((len(topic),)) + topic + _JOIN_SEQ.pack(next_seq)
        if entries and size + len(e) > JOIN_CHUNK_BYTES:
            chunks.append(_JOIN_HEAD.pack(1, 0, publisher_id, len(entries)) + b"".join(entries))
            entries, size = [], 0
        entries.append(e)
        size += len(e)
    chunks.append(_JOIN_HEAD.pack(1, JOIN_LAST, publisher_id, len(entries)) + b"".join(entries))
    return chunks


def unpack_join(body: object) -> tuple[int, bool, list[tuple[bytes, int]]] | None:
    """(publisher id, last chunk, [(topic, next seq)]) of a join frame, or None if malformed."""
    try:
        data = bytes(body)  # type: ignore[call-overload]
        version, flags, pid, count = _JOIN_HEAD.unpack_from(data)
    except (struct.error, TypeError, ValueError):
        return None
    if version != 1 or flags & ~JOIN_LAST:
        return None
    out = []
    at = _JOIN_HEAD.size
    for _ in range(count):
        if at >= len(data):
            return None
        n = data[at]
        end = at + 1 + n + _JOIN_SEQ.size
        if n == 0 or end > len(data):
            return None
        out.append((data[at + 1 : at + 1 + n], _JOIN_SEQ.unpack_from(data, at + 1 + n)[0]))
        at = end
    if at != len(data):
        return None
    return pid, bool(flags & JOIN_LAST), out


@dataclass
class _Peer:
    acked_frames: int
    acked_bytes: int
    last_progress_ns: int
    blocked_since_ns: int | None = None
    evicted: bool = False


class FlowWindow:
    """One publisher's in-flight window to each of its subscribers.

    Parameters
    ----------
    window_frames, window_bytes : int
        In flight per subscriber at most (what it has not acknowledged). The frame bound keeps
        ZeroMQ's queues (counted in frames) from ever dropping: the publisher sets its
        high-water mark to twice it and more (see ``Publisher``).
    slow_consumer_timeout_ns : int
        A subscriber that holds the publisher back this long without acknowledging anything
        is evicted: the window stops waiting for it.
    """

    def __init__(self, window_frames: int, window_bytes: int, slow_consumer_timeout_ns: int):
        if window_frames < 1 or window_bytes < 1:
            raise ValueError("window_frames and window_bytes must be >= 1")
        self.window_frames = window_frames
        self.window_bytes = window_bytes
        self.timeout_ns = slow_consumer_timeout_ns
        # a mark every quarter window: an ack then frees at least three quarters of it
        self.mark_every_frames = max(1, window_frames // 4)
        self.mark_every_bytes = max(1, window_bytes // 4)
        self.frames = 0  # position: everything sent so far
        self.bytes = 0
        self._mark_frames = 0  # position right after the last mark
        self._mark_bytes = 0
        self._mark_ns = 0  # when it was sent, and when to repeat it (see mark_due)
        self._mark_repeat_ns = MARK_REPEAT_MIN_NS
        self.read_frames = 0  # position when subscriptions were last read (see add)
        self.read_bytes = 0
        self.peers: dict[bytes, _Peer] = {}
        self.evictions = 0
        self.readmissions = 0
        self.marks_sent = 0
        self.acks = 0

    # -- subscribers --------------------------------------------------------------------------

    def add(self, sub_id: bytes, now_ns: int) -> None:
        """A subscriber's hello arrived. What was sent since subscriptions were last read may
        already be in its queue (ZeroMQ applies its topics as it attaches), so it counts as in
        flight from that earlier position."""
        if sub_id not in self.peers:
            self.peers[sub_id] = _Peer(self.read_frames, self.read_bytes, now_ns)

    def remove(self, sub_id: bytes) -> None:
        """The subscriber is gone (ZeroMQ reported its hello unsubscribed)."""
        self.peers.pop(sub_id, None)

    def note_read(self) -> None:
        """Subscriptions were read: later hellos count from here."""
        self.read_frames, self.read_bytes = self.frames, self.bytes

    def ack(self, sub_id: bytes, frames: int, nbytes: int, now_ns: int) -> None:
        """A subscriber read everything up to the mark at (frames, nbytes)."""
        p = self.peers.get(sub_id)
        if p is None or frames > self.frames or nbytes > self.bytes:
            return  # unknown, or not a position of ours (a forged or stale ack)
        self.acks += 1
        if frames > p.acked_frames:
            p.acked_frames, p.acked_bytes = frames, nbytes
            p.last_progress_ns = now_ns
            p.blocked_since_ns = None
            if (p.evicted and self.frames - frames <= self.window_frames // 2
                    and self.bytes - nbytes <= self.window_bytes // 2):
                p.evicted = False  # caught up with what ZeroMQ kept for it: paced again
                self.readmissions += 1

    # -- sending ------------------------------------------------------------------------------

    def room(self) -> tuple[int, int]:
        """(frames, bytes) that may be sent now; -1 for no bound (no live subscriber)."""
        f, b = self.in_flight()
        if f < 0:
            return -1, -1
        return max(0, self.window_frames - f), max(0, self.window_bytes - b)

    def sent(self, frames: int, nbytes: int) -> None:
        self.frames += frames
        self.bytes += nbytes

    def mark_due(self, blocked: bool, now_ns: int | None = None) -> bool:
        """Whether to send a mark now: every quarter window, and at once when the window is
        full (so that the subscribers can acknowledge everything they have read). While the
        window stays full with nothing new sent, the mark is repeated (given ``now_ns``)
        after MARK_REPEAT_MIN_NS, then twice as long each time up to MARK_REPEAT_MAX_NS: a
        mark can be lost on the way (a proxy restarted, a subscriber reconnecting, a
        high-water mark), and without a later one the publisher would wait for acks that
        never come until it evicts everybody."""
        df = self.frames - self._mark_frames
        if not df:
            return (blocked and now_ns is not None
                    and now_ns - self._mark_ns >= self._mark_repeat_ns)
        return (blocked or df >= self.mark_every_frames
                or self.bytes - self._mark_bytes >= self.mark_every_bytes)

    def mark_sent(self, nbytes: int, now_ns: int = 0) -> tuple[int, int]:
        """Record a mark at the current position (its own frame follows it); returns that
        position, which the mark carries."""
        pos = (self.frames, self.bytes)
        repeat = pos == (self._mark_frames, self._mark_bytes)
        self._mark_repeat_ns = (min(2 * self._mark_repeat_ns, MARK_REPEAT_MAX_NS) if repeat
                                else MARK_REPEAT_MIN_NS)
        self._mark_ns = now_ns
        self.sent(1, nbytes)
        # the mark itself is not worth another mark: count from after it
        self._mark_frames, self._mark_bytes = self.frames, self.bytes
        self.marks_sent += 1
        return pos

    # -- stalls -------------------------------------------------------------------------------

    def evict_stalled(self, now_ns: int) -> list[bytes]:
        """Evict the subscribers that have held the publisher back (no room left for them)
        for the timeout without acknowledging anything; returns their ids."""
        out = []
        wf, wb = self.window_frames, self.window_bytes
        for sub_id, p in self.peers.items():
            if p.evicted:
                continue
            if self.frames - p.acked_frames < wf and self.bytes - p.acked_bytes < wb:
                p.blocked_since_ns = None
                continue
            if p.blocked_since_ns is None:
                p.blocked_since_ns = now_ns
            if now_ns - max(p.blocked_since_ns, p.last_progress_ns) >= self.timeout_ns:
                p.evicted = True
                p.blocked_since_ns = None
                self.evictions += 1
                out.append(sub_id)
        return out

    def in_flight(self) -> tuple[int, int]:
        """The largest (frames, bytes) in flight to a live, paced subscriber; (-1, -1) when
        there is none."""
        f = b = -1
        for p in self.peers.values():
            if not p.evicted:
                f = max(f, self.frames - p.acked_frames)
                b = max(b, self.bytes - p.acked_bytes)
        return f, b

    @property
    def evicted(self) -> int:
        return sum(1 for p in self.peers.values() if p.evicted)
