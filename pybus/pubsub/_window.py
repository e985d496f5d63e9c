"""Back-pressure of a Publisher: the reliable window's driving and the ``on_full`` policy.

``pybus.pubsub.flow.FlowWindow`` keeps the books (frames and bytes in flight per subscriber);
this module drives it from the publisher's send path: how much of the ring a flush may drain,
the marks that ask subscribers for acks, evicting stalled subscribers, waiting for acks, the
position frames (which go in the window too), and what a publish does when the ring or the
window is full. Everything here runs once per flush or per batch, never per message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import zmq

from ..errors import BackpressureError, from_zmq
from ._base import PublisherParts
from .flow import FLOW_TOPIC, FlowWindow, pack_mark

log = logging.getLogger("pybus.publisher")

OnFull = Literal["block", "drop", "raise"]
# Longest slice a publisher blocked by the window waits for acks before it looks again (for
# stalled subscribers to evict, a closing publisher, a deadline).
_WINDOW_POLL_S = 0.005
# Position frames (docs/wire.md): a topic that published announces its next sequence number
# at most once per interval while it moves, and each announcement is repeated 1, 2, 4 ... 64
# intervals apart (the last ~12.7 s after the first), in case ZeroMQ dropped one at the
# high-water mark of a subscriber that is behind: 8 small frames per stream and pause. A
# subscriber then counts the loss of a stream's last messages too, which no later message
# would reveal.
_POSITION_INTERVAL_NS = 100_000_000
_POSITION_REPEATS = 8
# At most this many position frames per scan (the rest follow 10 ms later, round robin): with
# thousands of topics, positions must not crowd the data out of the high-water marks, nor
# take much of a subscriber's time (a frame costs it ~4 us: 6,400 positions/s at most).
_POSITION_LIMIT = 64
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_monotonic_ns = time.monotonic_ns


class _Retry:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<retry>"


_RETRY = _Retry()


class WindowMixin(PublisherParts):
    """Publisher methods of back-pressure (see the module docstring)."""

    if TYPE_CHECKING:
        _count_lock: threading.Lock
        _full_guard: threading.local
        _on_full_policy: OnFull
        _block_timeout: float
        _window_blocked: bool
        _dropped: dict[str, int]
        _positions_sent: int
        _position_due: int | None
        sndhwm: int

        def _flush_locked(self) -> None: ...
        def _drain(self, max_frames: int, max_bytes: int) -> tuple[int, int]: ...
        def _read_subscriptions(self) -> None: ...
        def _schedule_positions(self) -> None: ...

    def _on_full(self, topic: str, payload: Any, headers: Any) -> Any:
        guard = self._full_guard
        if getattr(guard, "active", False):
            return _RETRY  # nested call from our own retry below: let the retry loop decide
        policy = self._on_full_policy
        window = self._window_blocked
        if policy == "drop":
            with self._count_lock:  # not the send lock: a drop must never wait for a send
                self._dropped["backpressure" if window else "ring_full"] += 1
            return None
        if policy == "raise":
            why = ("the slowest subscriber's window is full" if window else
                   f"the publisher's ring is full ({self._batcher.pending_bytes} of "
                   f"{self._batcher.capacity_bytes} bytes pending)")
            raise BackpressureError(
                f"{why}; use on_full='block' or 'drop', a larger capacity_bytes, or publish "
                f"more slowly"
            )
        deadline = time.monotonic() + self._block_timeout
        guard.active = True
        try:
            while True:
                remaining = deadline - time.monotonic()
                if self._send_lock.acquire(timeout=max(0.0, remaining)):
                    try:
                        self._wait_window_locked(deadline)
                    finally:
                        self._send_lock.release()
                    result = self._batcher.publish(topic, payload, headers)
                    if result is not _RETRY:
                        return result
                if time.monotonic() >= deadline:
                    why = ("the slowest subscriber's window stayed full" if self._window_blocked
                           else "the publisher's ring stayed full")
                    raise BackpressureError(
                        f"{why} for block_timeout_s={self._block_timeout}; raise block_timeout_s "
                        f"or capacity_bytes, or use on_full='drop'"
                    )
        finally:
            guard.active = False

    def _flush_window(self, flow: FlowWindow) -> None:
        """Reliable mode: drain what the slowest live subscriber's window takes (see _flow)."""
        b = self._batcher
        frames, nbytes = flow.room()
        if frames >= 0 and (b.pending_records > frames or b.pending_bytes > nbytes):
            self._read_subscriptions()  # may not all fit: take the acks that arrived
            frames, nbytes = flow.room()
        if frames == 0 or nbytes == 0:
            self._evict_stalled(flow)
            frames, nbytes = flow.room()
        if frames != 0 and nbytes != 0:
            sent_frames, sent_bytes = self._drain(max(frames, 0), max(nbytes, 0))
            flow.sent(sent_frames, sent_bytes)
        blocked = b.pending_records > 0
        self._window_blocked = blocked
        if flow.peers and flow.mark_due(blocked, _monotonic_ns()):
            self._send_mark(flow)

    def _send_mark(self, flow: FlowWindow) -> None:
        """A mark at the current position, on the flow topic every Subscriber takes."""
        body = pack_mark(self.publisher_id, flow.frames, flow.bytes)
        try:
            self._send(FLOW_TOPIC, _SNDMORE_NOBLOCK)
            self._send(body, _NOBLOCK)
        except zmq.ZMQError as exc:
            raise from_zmq(exc, "Publisher send") from exc
        flow.mark_sent(len(body), _monotonic_ns())

    def _evict_stalled(self, flow: FlowWindow) -> None:
        for sub_id in flow.evict_stalled(_monotonic_ns()):
            peer = flow.peers[sub_id]
            log.warning(
                "pybus publisher %016x evicted subscriber %s: it read nothing for %.1fs with "
                "its window full (%d frames, %d bytes in flight); it counts what it loses and "
                "is paced again once it catches up", self.publisher_id,
                sub_id.decode(errors="replace"), flow.timeout_ns / 1e9,
                flow.frames - peer.acked_frames, flow.bytes - peer.acked_bytes,
            )

    def _wait_window_locked(self, deadline: float) -> None:
        """Flush, and while the window holds records back, wait for acks (evicting stalled
        subscribers) until it takes them all or ``deadline`` (monotonic s). Caller holds the
        send lock."""
        for wait_ms in self._window_waits(deadline):
            # acks arrive as input on the XPUB socket
            self._sock.poll(wait_ms, zmq.POLLIN)

    def _wait_acked_locked(self, deadline: float) -> bool:
        """Reliable mode, after everything was sent: a mark at the end, then wait until every
        live subscriber has acknowledged up to it (True), or ``deadline`` (False; a stalled
        one is not evicted for it, it only runs out the time). Caller holds the send lock."""
        flow = self._flow
        if flow is None:
            return True
        end_frames = flow.frames
        self._send_mark(flow)
        while True:
            self._read_subscriptions()
            waiting = [p for p in flow.peers.values()
                       if not p.evicted and p.acked_frames < end_frames]
            if not waiting:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if flow.mark_due(True, _monotonic_ns()):  # repeated, in case one was lost
                self._send_mark(flow)
            self._sock.poll(max(1, int(min(remaining, _WINDOW_POLL_S) * 1000)), zmq.POLLIN)

    def _window_waits(self, deadline: float) -> Iterator[int]:
        """The decision of waiting for the window, shared by the sync and asyncio publishers:
        flush; while the window holds records back and ``deadline`` (monotonic s) is ahead,
        yield how long (ms) to wait for acks, then read them and flush again. The caller
        waits its own way and holds the send lock while this runs (each ``next``)."""
        while True:
            self._flush_locked()
            if not self._window_blocked:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            yield max(1, int(min(remaining, _WINDOW_POLL_S) * 1000))
            self._read_subscriptions()

    def _send_positions(self, now_ns: int, force: bool = False) -> None:
        """Send the position frames due (caller holds the send lock; see docs/wire.md)."""
        # at most half the high-water mark at a time: a burst of positions must fit the queue
        # of a subscriber that is reading again (ZeroMQ drops the rest)
        limit = 0 if force else max(1, min(_POSITION_LIMIT, self.sndhwm // 2))
        flow = self._flow
        if flow is not None and not force:
            room = flow.room()[0]
            if room == 0:
                self._read_subscriptions()  # acks that came meanwhile
                room = flow.room()[0]
            if room == 0:  # they go in the window too: later, and ask for the acks
                if flow.peers and flow.mark_due(True, now_ns):
                    self._send_mark(flow)
                self._position_due = now_ns + _POSITION_INTERVAL_NS // 10
                if not self._closed:
                    self._schedule_positions()
                return
            if room > 0:
                limit = min(limit, room)
        frames, self._position_due = self._batcher.position_frames(
            now_ns, _POSITION_INTERVAL_NS, _POSITION_REPEATS, force, limit
        )
        if frames:
            send = self._send
            nbytes = 0
            try:
                for topic, frame in frames:
                    send(topic, _SNDMORE_NOBLOCK)
                    send(frame, _NOBLOCK)
                    nbytes += len(frame)
            except zmq.ZMQError as exc:
                raise from_zmq(exc, "Publisher send") from exc
            self._positions_sent += len(frames)
            if flow is not None:
                flow.sent(len(frames), nbytes)
        if self._position_due is not None and not self._closed:
            self._schedule_positions()

