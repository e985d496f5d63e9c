"""Publish/subscribe over ZeroMQ: shared constants, and the public classes.

A pub/sub message on the wire is two ZeroMQ frames: the topic (ASCII) and a batch frame
(``docs/wire.md``). :class:`~pybus.pubsub.publisher.Publisher` sends on an XPUB socket, so it
sees subscriptions; :class:`~pybus.pubsub.subscriber.Subscriber` receives on an XSUB socket
(which acknowledges a reliable publisher's marks upstream, see ``pybus.pubsub.flow``) and also
subscribes a unique *hello* prefix (``HELLO_PREFIX + 16 hex digits``) that no topic can match
(topics are ASCII and never start with ``0xFF``): publishers count distinct subscribers from
those subscriptions (``Publisher.wait_for_subscribers``), and ZeroMQ sends the matching
unsubscription when a subscriber leaves.
"""

from __future__ import annotations

from ._base import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_QUEUED_BYTES,
    FRAME_OVERHEAD_BYTES,
    HELLO_PREFIX,
)
from ._types import TypedMessage
from .publisher import Publisher
from .subscriber import Subscriber

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_QUEUED_BYTES",
    "FRAME_OVERHEAD_BYTES",
    "HELLO_PREFIX",
    "Publisher",
    "Subscriber",
    "TypedMessage",
]
