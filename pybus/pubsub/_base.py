"""Constants and the bound-subscriber registry shared by the pub/sub modules."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from ..transport import sockets as _sockets

if TYPE_CHECKING:
    import zmq

    from .._native import Batcher
    from .flow import FlowWindow


class _BoundSubscriber(Protocol):
    """What a Publisher needs of a bound Subscriber of its process (no import of the
    subscriber module: it imports this one)."""

    def _poke(self) -> None: ...


class PublisherParts:
    """The Publisher attributes its mixins (``_window``, ``_subscriptions``) share, declared
    once for the type checker; ``Publisher.__init__`` sets them."""

    if TYPE_CHECKING:
        _batcher: Batcher
        _send: Any
        _sock: zmq.Socket[Any]
        _send_lock: threading.Lock
        _flow: FlowWindow | None
        _closed: bool
        publisher_id: int


#: Prefix of the hello subscription every pybus Subscriber makes (then 16 lowercase hex
#: digits of its random id). 0xFF sorts after every topic byte, so a subscriber that attaches
#: to a new publisher sends its topic subscriptions before its hello (ZeroMQ replays a SUB's
#: subscriptions in byte order): when a publisher has seen the hello, it has the topics too.
HELLO_PREFIX = b"\xffpybus-hello:"
#: Default bound on one message (payload + msgpack headers), in bytes.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
#: Default bound on a batch frame's records, in bytes. Kept small so that the frame high-water
#: marks can be generous: ZeroMQ counts its queues in frames, not bytes, and a burst of many
#: small frames (one per topic, or one lone message per frame at moderate rates) must not hit a
#: high-water mark while the subscriber keeps up; the bytes bound is hwm * max_batch_bytes.
DEFAULT_MAX_BATCH_BYTES = 64 << 10
#: Default bound on the bytes of batch frames ZeroMQ queues per peer: publisher SNDHWM and
#: subscriber RCVHWM default to max(16, bound // max_batch_bytes) frames (1024 with the
#: defaults). A message larger than max_batch_bytes travels alone in its frame, so with such
#: messages the queue may hold up to hwm * (max_message_bytes + FRAME_OVERHEAD_BYTES).
DEFAULT_MAX_QUEUED_BYTES = 64 << 20
#: Default flow-control window of a reliable publisher, and the bound in bytes its send
#: high-water mark is derived from in both modes (docs/wire.md, "Flow control").
DEFAULT_WINDOW_BYTES = 32 << 20
#: A batch frame's bytes beyond its payloads: 32-byte frame header, 12 bytes per record, plus
#: at most 65535 header bytes per record (docs/wire.md).
FRAME_OVERHEAD_BYTES = 32 + 12 + 65535

# Bound Subscribers of this process. ZeroMQ attaches a bound socket's new peers only when that
# socket is called into; a Publisher waiting for subscribers pokes these so a bound Subscriber
# and a connecting Publisher work in one thread.
_BOUND_SUBSCRIBERS: weakref.WeakSet[_BoundSubscriber] = weakref.WeakSet()


def _poke_bound_subscribers() -> None:
    for sub in list(_BOUND_SUBSCRIBERS):
        sub._poke()


def hwm_for(max_queued_bytes: int, max_batch_bytes: int) -> int:
    """High-water mark in frames so that hwm * max_batch_bytes stays near the bound."""
    return max(16, max_queued_bytes // max(1, max_batch_bytes))


def security_rekick(owner: Any, lock: Any, binds: bool) -> None:
    """After a revocation: drop every connection of ``owner`` (a Publisher or Subscriber) so
    peers authenticate again; without a monitor, unbind/rebind (less reliable, see
    pybus.transport.sockets) under ``lock``, the lock that guards its socket."""
    if owner._watch is not None:
        owner._watch.drop_connections()
        return
    with lock:
        if owner._closed:
            return
        eps = list(owner.endpoints)
        _sockets.rebind(owner._sock, eps if binds else [], [] if binds else eps)


_HEX = frozenset(b"0123456789abcdef")


def is_hello(topic: bytes) -> bool:
    """A hello topic as docs/wire.md specifies it: the prefix, then 16 lowercase hex digits."""
    n = len(HELLO_PREFIX)
    return len(topic) == n + 16 and topic.startswith(HELLO_PREFIX) and _HEX.issuperset(topic[n:])
