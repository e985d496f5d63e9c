"""Subscription tracking of a Publisher: what arrives upstream on its XPUB socket.

An XPUB socket receives its subscribers' (un)subscriptions as messages, and pybus Subscribers
send their acks the same way. This module reads them: it counts subscriptions, tracks the
pybus Subscribers from their hellos (and paces them in reliable mode), sends the join snapshot
to each new one, applies per-key permissions (XPUB manual mode), answers the history thread's
"has this subscriber arrived" question, and makes the decision of ``wait_for_subscribers``
that the sync and asyncio publishers share (only their waiting differs).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, cast

import zmq

from ..errors import ClosedError, TimeoutError, ValidationError, from_zmq
from . import _base as base
from .flow import FLOW_TOPIC, pack_join, unpack_ack

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# With per-key permissions (XPUB manual mode) the publisher applies each subscription itself
# and refuses more than this many, or a prefix longer than any topic: ZeroMQ keeps every
# distinct prefix in its subscription trie, with no bound of its own.
_MAX_SUBSCRIPTIONS = 100_000
_MAX_SUBSCRIPTION_BYTES = 1024
# While a publisher waits for subscribers, how often it looks again (seconds): often while
# bound subscribers of this process may need another poke to attach their new peers.
_POKE_SLICE_S = 0.002
_monotonic_ns = time.monotonic_ns

_is_hello = base.is_hello


class SubscriptionsMixin(base.PublisherParts):
    """Publisher methods that read and act on upstream messages (see the module docstring)."""

    if TYPE_CHECKING:
        _acl: Any
        _subscribers: set[bytes]
        _joins: list[bytes]
        _subscriptions: int
        _granted: dict[bytes, int]
        _denied_subscriptions: int
        _history: Any
        endpoints: list[str]

    def _init_subscriptions(self) -> None:
        """The state this mixin keeps (called by Publisher.__init__)."""
        self._subscribers = set()  # hellos of the pybus Subscribers subscribed
        # hellos that have not had their join snapshot yet (see _send_joins)
        self._joins = []
        self._subscriptions = 0
        # with permissions: subscriptions granted, per prefix as asked (bounds the trie)
        self._granted = {}
        self._denied_subscriptions = 0

    def _read_subscriptions(self) -> None:
        """Consume XPUB (un)subscription messages without blocking (caller holds the lock)."""
        if self._acl is not None:
            self._read_subscriptions_acl()
        else:
            for msg, _frame in self._upstream(True):
                body = msg[1:]
                if body.startswith(base.HELLO_PREFIX):
                    if _is_hello(body):  # (a malformed one is nobody: not counted, not paced)
                        self._on_hello(body, msg[0] == 1)
                elif body != FLOW_TOPIC:
                    self._subscriptions += 1 if msg[0] == 1 else -1
        if self._flow is not None:
            self._flow.note_read()
        if self._joins and not self._batcher.pending_records:
            self._send_joins()

    def _upstream(self, copy: bool) -> Iterator[tuple[bytes, Any]]:
        """The (un)subscription messages queued on the XPUB socket, read without blocking, as
        (bytes, what recv returned: with copy=False the zmq.Frame, for its ZAP user id).
        Acks, which come the same way, are handled here; empty messages skipped."""
        sock = self._sock
        while sock.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
            try:
                got: Any = sock.recv(_NOBLOCK, copy=copy)
            except zmq.Again:
                return
            msg: bytes = got if copy else got.bytes
            if not msg:
                continue
            if msg[0] > 1:
                self._on_ack(msg)
                continue
            yield msg, got

    def _send_joins(self) -> None:
        """Tell each newly arrived subscriber, on its own hello topic, the next sequence number
        of every stream that has published (docs/wire.md, "Join snapshot"): it then counts
        the loss of a stream it never saw a message of. Sent only with nothing pending, so
        every number is what the subscriber's first message of that stream should carry.
        Caller holds the send lock."""
        b = self._batcher
        streams = []
        for tid in range(b.topic_count):
            seq = b.next_seq(tid)
            if seq > 1:
                streams.append((b.topic_name(tid), seq))
        chunks = pack_join(self.publisher_id, streams)
        nframes = nbytes = 0
        try:
            for hello in self._joins:
                for chunk in chunks:
                    self._send(hello, _SNDMORE_NOBLOCK)
                    self._send(chunk, _NOBLOCK)
                    nframes += 1
                    nbytes += len(chunk)
        except zmq.ZMQError as exc:
            raise from_zmq(exc, "Publisher send") from exc
        finally:
            self._joins.clear()
        if self._flow is not None:
            self._flow.sent(nframes, nbytes)

    def _on_hello(self, hello: bytes, subscribe: bool) -> None:
        """A pybus Subscriber arrived (or left): it counts, and is paced in reliable mode."""
        sub_id = hello[len(base.HELLO_PREFIX):]
        if subscribe:
            self._subscribers.add(hello)
            if len(self._joins) < 1024 and hello not in self._joins:
                self._joins.append(hello)
            if self._flow is not None:
                self._flow.add(sub_id, _monotonic_ns())
        else:
            self._subscribers.discard(hello)
            if self._flow is not None:
                self._flow.remove(sub_id)

    def _on_ack(self, msg: bytes) -> None:
        """An upstream message that is not a subscription: a subscriber's ack, or ignored."""
        if self._flow is None:
            return
        ack = unpack_ack(msg)  # None for anything else
        if ack is not None and ack[1] == self.publisher_id:
            self._flow.ack(ack[0], ack[2], ack[3], _monotonic_ns())

    def _read_subscriptions_acl(self) -> None:
        """XPUB manual mode: apply each (un)subscription the sender's key permits.

        ZeroMQ applies ``SUBSCRIBE``/``UNSUBSCRIBE`` set right after a subscription message to
        the connection that sent it, and the message carries that connection's ZAP user id
        (the client's Z85 public key), so permissions hold per subscriber.
        """
        sock = self._sock
        acl = self._acl
        assert acl is not None  # only installed with a Curve that has permissions
        for msg, frame in self._upstream(False):
            body = msg[1:]
            subscribe = msg[0] == 1
            if body.startswith(base.HELLO_PREFIX) or body == FLOW_TOPIC:
                # not data topics: every pybus Subscriber takes them, whatever its key; but
                # only a well-formed hello, and a bounded number of them (each is a trie entry
                # and a subscriber to pace)
                if subscribe and body != FLOW_TOPIC and (
                        not _is_hello(body) or len(self._subscribers) >= _MAX_SUBSCRIPTIONS):
                    self._denied_subscriptions += 1
                    acl._count_denied_subscription(self._user_of(frame), body)
                    continue
                sock.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, body)
                if body != FLOW_TOPIC:
                    self._on_hello(body, subscribe)
                continue
            user = self._user_of(frame)
            # A subscription wider than the key's permissions is applied narrowed to them.
            # Without a user id this is XPUB reporting a departed connection's subscriptions
            # (as asked): ZeroMQ drops that connection's prefixes itself.
            applied = acl.granted_prefixes(user, body) if user else []
            granted = self._granted
            if subscribe:
                # bounded: ZeroMQ keeps every distinct prefix in its subscription trie (and
                # a request applies at most one prefix per permission of its key)
                if (not applied or len(body) > _MAX_SUBSCRIPTION_BYTES
                        or self._subscriptions >= _MAX_SUBSCRIPTIONS):
                    self._denied_subscriptions += 1
                    acl._count_denied_subscription(user, body)
                    continue
                granted[body] = granted.get(body, 0) + 1
                self._subscriptions += 1
            elif (applied or not user) and granted.get(body, 0) > 0:
                # (a departed connection's denied request with a granted one's prefix only
                # releases the bound early by one)
                granted[body] -= 1
                if not granted[body]:
                    del granted[body]
                self._subscriptions -= 1
            for prefix in applied:
                sock.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, prefix)

    @staticmethod
    def _user_of(frame: Any) -> str:
        """The ZAP user id (the sender's Z85 key) of a received frame, or ""."""
        try:
            return str(frame.get("User-Id"))
        except zmq.ZMQError:
            return ""

    def _history_snapshot(
        self, sub_id: bytes, prefixes: list[bytes], wait_s: float
    ) -> list[tuple[bytes, bytes]] | str:
        """History thread: wait for the subscriber's hello, then copy the store (Clone)."""
        hello = base.HELLO_PREFIX + sub_id
        deadline = time.monotonic() + wait_s
        while True:
            base._poke_bound_subscribers()
            with self._send_lock:
                if self._closed:
                    return "publisher closed"
                self._read_subscriptions()
                if not sub_id or hello in self._subscribers:
                    return cast("list[tuple[bytes, bytes]] | str", self._history.snapshot(prefixes))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return f"subscriber {sub_id.decode(errors='replace')} not subscribed here"
                self._sock.poll(max(1, int(min(remaining, 0.005) * 1000)), zmq.POLLIN)


    def _subscriber_waits(
        self, n: int, timeout: float, slice_s: float
    ) -> Generator[int, None, int]:
        """The decision of ``wait_for_subscribers``, shared by the sync and asyncio publishers:
        yields how many milliseconds to wait for a subscription message (the caller waits its
        own way), returns the subscriber count once it is ``n``; raises TimeoutError."""
        if self._closed:
            raise ClosedError("wait_for_subscribers() on a closed Publisher")
        if n < 0:
            raise ValidationError(f"n must be >= 0, got {n}")
        deadline = time.monotonic() + timeout
        while True:
            base._poke_bound_subscribers()
            if not self._send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
            try:
                self._read_subscriptions()
            finally:
                self._send_lock.release()
            count = len(self._subscribers)
            if count >= n:
                return count
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wait_s = _POKE_SLICE_S if base._BOUND_SUBSCRIBERS else slice_s
            yield max(1, int(min(remaining, wait_s) * 1000))
        raise TimeoutError(
            f"{len(self._subscribers)} of {n} subscribers after {timeout}s on {self.endpoints}"
        )

    @property
    def subscriber_count(self) -> int:
        """Distinct pybus Subscribers currently subscribed (as of the last flush or wait)."""
        return len(self._subscribers)
