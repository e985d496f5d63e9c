"""Late joiners: a publisher's per-topic history, served over a ROUTER side channel.

This is the ZeroMQ guide's *Clone* pattern with pybus's sequence numbers:

1. the new subscriber subscribes first (its SUB socket starts queueing live messages);
2. it asks the publisher's history endpoint for a snapshot, naming its subscriber id;
3. the publisher waits (bounded) until that subscriber's hello subscription has reached its XPUB
   -- from then on every frame it sends reaches the subscriber live -- and, under its send lock,
   replies with the last frames it sent on each matching topic;
4. the subscriber delivers the snapshot, then live messages whose sequence number is above the
   snapshot's last one for that (publisher, topic) stream; earlier live duplicates are dropped
   and counted (``history_duplicates``). Gap detection continues from the snapshot.

Wire (ZeroMQ frames; a DEALER talks to the publisher's ROUTER):

- request: ``b"PBH1"``, subscriber id (16 lowercase hex digits, or empty to skip the wait),
  then one frame per topic prefix wanted (empty prefix: every topic);
- reply: ``b"PBH1"``, ``b"OK"``, a msgpack map ``{"publisher_id": int, "history": N,
  "frames": k}``, then k pairs (topic, batch frame as in docs/wire.md), oldest first per topic;
  or ``b"PBH1"``, ``b"ERR"``, a UTF-8 reason.

The store keeps, per topic, the fewest most recent frames that hold at least N messages, so
its memory is bounded by N messages plus one frame per topic, times ``max_topics``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from ..errors import check_positive_int

log = logging.getLogger("pybus.history")

MAGIC = b"PBH1"
#: Longest a history request waits for the subscriber's hello to reach the publisher.
HELLO_WAIT_S = 5.0
# Requests answered per wake-up before the server looks at its stop flag again.
_MAX_REQUEST_FRAMES = 256


class HistoryStore:
    """Last frames per topic holding at least ``depth`` messages (caller serializes access)."""

    def __init__(self, depth: int, max_topics: int) -> None:
        self.depth = check_positive_int("history", depth, " (messages per topic)")
        self.max_topics = max_topics
        # topic bytes -> (deque of (frame, count), total count)
        self._topics: dict[bytes, list[Any]] = {}
        self.dropped_topics = 0

    def add(self, topic: bytes, frame: Any, count: int) -> None:
        entry = self._topics.get(topic)
        if entry is None:
            if len(self._topics) >= self.max_topics:
                self.dropped_topics += 1
                return
            entry = self._topics[topic] = [deque(), 0]
        q, total = entry
        q.append((bytes(frame), count))
        total += count
        while len(q) > 1 and total - q[0][1] >= self.depth:
            total -= q.popleft()[1]
        entry[1] = total

    def snapshot(self, prefixes: list[bytes]) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        for topic, (q, _total) in self._topics.items():
            if any(topic.startswith(p) for p in prefixes):
                out.extend((topic, f) for f, _n in q)
        return out


class HistoryServer:
    """Thread answering snapshot requests on a ROUTER socket."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: str,
        snapshot: Callable[[bytes, list[bytes], float], list[tuple[bytes, bytes]] | str],
        header: dict[str, Any],
        configure: Callable[[zmq.Socket[Any]], Any],
    ) -> None:
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, 64 << 10)  # requests are small: refuse anything big
        sock.setsockopt(zmq.SNDHWM, 64)
        configure(sock)
        from ..errors import from_zmq

        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise from_zmq(exc, f"history endpoint {endpoint!r}") from None
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._snapshot = snapshot
        self._header = header
        self._stop = threading.Event()
        self.requests = 0
        self.bad_requests = 0
        self._thread = threading.Thread(target=self._run, name="pybus-history", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._sock
        try:
            while not self._stop.is_set():
                if not sock.poll(100, zmq.POLLIN):
                    continue
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                self._handle(frames)
        except zmq.ContextTerminated:
            pass
        finally:
            sock.close(0)

    def _handle(self, frames: list[bytes]) -> None:
        ident = frames[0]
        body = frames[1:]
        if body and body[0] == b"":  # a REQ-style envelope
            body = body[1:]
        if len(body) < 2 or body[0] != MAGIC or len(body) > _MAX_REQUEST_FRAMES:
            self.bad_requests += 1
            self._reply(ident, [MAGIC, b"ERR", b"bad history request: expected PBH1, subscriber "
                                b"id, prefixes..."])
            return
        self.requests += 1
        sub_id = body[1]
        prefixes = body[2:] or [b""]
        result = self._snapshot(sub_id, prefixes, HELLO_WAIT_S)
        if isinstance(result, str):
            self._reply(ident, [MAGIC, b"ERR", result.encode()])
            return
        head = dict(self._header, frames=len(result))
        out = [MAGIC, b"OK", msgpack.packb(head)]
        for topic, frame in result:
            out += [topic, frame]
        self._reply(ident, out)

    def _reply(self, ident: bytes, frames: list[bytes]) -> None:
        try:
            self._sock.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:  # the requester is gone or not reading: drop the reply
            pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)


def request_snapshot(
    ctx: zmq.Context[Any],
    endpoint: str,
    sub_id: bytes,
    prefixes: list[bytes],
    timeout: float,
    configure: Callable[[zmq.Socket[Any]], Any],
) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
    """Ask one history endpoint; returns (header, [(topic, frame), ...])."""
    from ..errors import FrameError, TimeoutError, TransportError, from_zmq

    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    configure(sock)
    try:
        sock.connect(endpoint)
        sock.send_multipart([MAGIC, sub_id, *prefixes])
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
                raise TimeoutError(f"no history reply from {endpoint} within {timeout}s")
            reply = sock.recv_multipart()
            break
    except zmq.ZMQError as exc:
        raise from_zmq(exc, f"history request to {endpoint}") from None
    finally:
        sock.close(0)
    if len(reply) < 3 or reply[0] != MAGIC:
        raise FrameError(f"malformed history reply from {endpoint}")
    if reply[1] != b"OK":
        raise TransportError(
            f"history request to {endpoint} refused: {reply[2].decode('utf-8', 'replace')}"
        )
    try:
        head = msgpack.unpackb(reply[2])
    except Exception:
        raise FrameError(f"malformed history header from {endpoint}") from None
    pairs = reply[3:]
    if not isinstance(head, dict) or len(pairs) % 2 or head.get("frames") != len(pairs) // 2:
        raise FrameError(f"history reply from {endpoint} does not match its header")
    return head, [(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
