"""The Proxy's checked loop: XSUB -> XPUB forwarding in Python that enforces per-key rights.

ZeroMQ's C proxy loop never shows a message to Python, so with per-key topic permissions (a
``Curve.server(..., permissions=...)`` on either side) :class:`pybus.Proxy` runs this loop over
the same sockets and control commands instead: the backend XPUB is in manual mode and applies
each subscription only when the subscriber's key (ZeroMQ's ``User-Id``) may have it, narrowed
to the key's rights when it asks for more; each frame from the frontend is forwarded only when
its publisher's key may publish its topic (cached per key and topic), else dropped and counted.
It is several times slower than ZeroMQ's loop per frame (see ``bench/bench_permissions.py``).
"""

from __future__ import annotations

import sys
from typing import Any

import zmq

from .._native import frame_info
from ..errors import FrameError
from . import _base as base
from .flow import ACK_PREFIX, FLOW_TOPIC

# ZeroMQ's STATISTICS order: message parts and bytes, in and out, per side.
STAT_KEYS = (
    ("frontend", "messages_in"), ("frontend", "bytes_in"),
    ("frontend", "messages_out"), ("frontend", "bytes_out"),
    ("backend", "messages_in"), ("backend", "bytes_in"),
    ("backend", "messages_out"), ("backend", "bytes_out"),
)
# libzmq 4.3.5's rewritten steerable proxy swapped the meaning of PAUSE and RESUME (fixed
# after the release: zeromq/libzmq#4600); pybus sends whichever word does what it says.
if zmq.zmq_version_info()[:3] == (4, 3, 5):
    PAUSE, RESUME = b"RESUME", b"PAUSE"
else:
    PAUSE, RESUME = b"PAUSE", b"RESUME"

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
# At most this many messages are read from one side per wake-up.
_BURST = 1024
# As a Publisher with permissions has them: ZeroMQ keeps every distinct prefix in its
# subscription tries with no bound of its own.
_MAX_SUBSCRIPTIONS = 100_000
_MAX_SUBSCRIPTION_BYTES = 1024
# Forbidden messages counted per key; beyond this many keys they count as "<other>".
_MAX_TRACKED_KEYS = 1024


class CheckedLoop:
    """The checked forwarding loop of one Proxy and its counters (read by ``Proxy.stats``).

    ``pub_acl`` / ``sub_acl``: the frontend's / backend's ``Curve`` when it has permissions
    (None: that side is not checked). ``frontend`` / ``backend``: the bound endpoints, for
    log lines.
    """

    def __init__(self, pub_acl: Any, sub_acl: Any, frontend: list[str],
                 backend: list[str]) -> None:
        self.pub_acl = pub_acl
        self.sub_acl = sub_acl
        self.frontend = frontend
        self.backend = backend
        # the message parts it counts like ZeroMQ's STATISTICS (see STAT_KEYS)
        self.ck = dict.fromkeys(STAT_KEYS, 0)
        self.forbidden = 0
        self.forbidden_by_key: dict[str, int] = {}
        self.denied_subscriptions = 0
        # granted subscriptions per prefix as asked (forwarded upstream once, withdrawn at
        # zero), and denied ones still held by live connections: see _on_subscription
        self.granted: dict[bytes, int] = {}
        self.denied_live: dict[bytes, int] = {}

    def run(self, front: zmq.Socket[Any], back: zmq.Socket[Any], cap: zmq.Socket[Any] | None,
            ctl: zmq.Socket[Any]) -> None:
        """Forward like ``zmq_proxy_steerable``, checking permissions; returns on TERMINATE.

        Runs in the proxy thread, which owns the sockets. Frontend frames are read in bursts
        (up to ``_BURST`` messages per wake-up) so the poll is amortised under load. The
        counters start at zero on every run, as ZeroMQ's do.
        """
        self.ck = dict.fromkeys(STAT_KEYS, 0)
        poller = zmq.Poller()
        poller.register(ctl, zmq.POLLIN)
        running = zmq.Poller()
        for sk in (front, back, ctl):
            running.register(sk, zmq.POLLIN)
        paused = False
        while True:
            events = dict((poller if paused else running).poll())
            if ctl in events:
                cmd = ctl.recv()
                if cmd == b"TERMINATE":
                    ctl.send(b"")
                    return
                if cmd == b"STATISTICS":
                    ctl.send_multipart([v.to_bytes(8, sys.byteorder) for v in self.ck.values()])
                    continue
                if cmd == PAUSE:
                    paused = True
                elif cmd == RESUME:
                    paused = False
                ctl.send(b"")  # acknowledge, as libzmq >= 4.3.5 does
                continue
            if back in events:
                self._subscriptions(back, front, cap)
            if front in events:
                self._publications(front, back, cap)

    def _publications(self, front: zmq.Socket[Any], back: zmq.Socket[Any],
                      cap: zmq.Socket[Any] | None) -> None:
        ck = self.ck
        acl = self.pub_acl
        cache: dict[tuple[str, bytes], bool] = {}
        for _ in range(_BURST):
            try:
                first = front.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            parts = [first]
            while parts[-1].more:
                parts.append(front.recv(0, copy=False))  # the rest of a message is there
            ck[("frontend", "messages_in")] += len(parts)
            ck[("frontend", "bytes_in")] += sum(len(p) for p in parts)
            topic = first.bytes
            # marks and join snapshots (on a subscriber's hello topic) carry no data
            if acl is not None and topic != FLOW_TOPIC and not topic.startswith(base.HELLO_PREFIX):
                try:
                    user = str(first.get("User-Id"))
                except zmq.ZMQError:
                    user = ""
                ok = cache.get((user, topic))
                if ok is None:
                    ok = cache[(user, topic)] = acl.may_publish(user, topic)
                if not ok:
                    self._drop_forbidden(user, topic, parts)
                    continue
            self._send_parts(back, parts, "backend", cap)

    def _drop_forbidden(self, user: str, topic: bytes, parts: list[zmq.Frame]) -> None:
        count = 1
        if len(parts) == 2:
            try:
                count = frame_info(parts[1].buffer)[2]
            except FrameError:
                pass
        self.forbidden += count
        fk = self.forbidden_by_key
        k = user if (user in fk or len(fk) < _MAX_TRACKED_KEYS) else "<other>"
        fk[k] = fk.get(k, 0) + count
        assert self.pub_acl is not None
        self.pub_acl._count_denied_publication(user, topic, count, f"proxy {self.frontend}")

    def _send_parts(self, sock: zmq.Socket[Any], parts: list[Any], side: str,
                    cap: zmq.Socket[Any] | None) -> None:
        ck = self.ck
        last = len(parts) - 1
        for i, p in enumerate(parts):
            try:
                sock.send(p, _SNDMORE_NOBLOCK if i < last else _NOBLOCK, copy=False)
            except zmq.Again:  # XSUB upstream full (XPUB never blocks): dropped, like C
                return
            ck[(side, "messages_out")] += 1
            ck[(side, "bytes_out")] += len(p)
            if cap is not None:
                try:
                    cap.send(p, _SNDMORE_NOBLOCK if i < last else _NOBLOCK, copy=False)
                except zmq.Again:
                    pass

    def _subscriptions(self, back: zmq.Socket[Any], front: zmq.Socket[Any],
                       cap: zmq.Socket[Any] | None) -> None:
        ck = self.ck
        for _ in range(_BURST):
            try:
                frame = back.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            ck[("backend", "messages_in")] += 1
            ck[("backend", "bytes_in")] += len(frame)
            if self.sub_acl is None:
                self._send_parts(front, [frame], "frontend", cap)
                continue
            msg = frame.bytes
            if not msg:
                continue
            if msg[0] not in (0, 1):
                if msg.startswith(ACK_PREFIX):  # a subscriber's flow-control ack: upstream
                    self._send_parts(front, [frame], "frontend", cap)
                continue  # not a subscription message
            try:
                user = str(frame.get("User-Id"))
            except zmq.ZMQError:
                user = ""  # XPUB's own unsubscriptions for a connection that went away
            for out in self._on_subscription(back, msg[0] == 1, msg[1:], user):
                self._send_parts(front, [out], "frontend", cap)

    def _on_subscription(self, back: zmq.Socket[Any], subscribe: bool, prefix: bytes,
                         user: str) -> list[bytes]:
        """Backend in XPUB manual mode: apply a permitted (un)subscription to the connection
        that sent it; return the messages to forward upstream.

        A subscription wider than the key's permissions is applied narrowed to them (see
        :meth:`pybus.Curve.granted_prefixes`). Upstream (to the publishers) gets the union of
        granted requests as asked, each subscribed once and withdrawn when its last holder
        leaves: XPUB reports a departed connection's subscriptions as asked and without a
        user id, so only requests can be booked (upstream may send a little more than the
        narrowed prefixes pass; the backend filters per connection). Such a departure is
        booked against a denied holder of the prefix while there is one, else against a
        granted one. That can only keep a prefix subscribed upstream longer than needed,
        never withdraw one a granted subscriber still holds.
        """
        acl = self.sub_acl
        assert acl is not None
        # hellos and the flow topic are not data topics: every pybus Subscriber takes them
        hello = prefix.startswith(base.HELLO_PREFIX) or prefix == FLOW_TOPIC
        granted, denied = self.granted, self.denied_live
        applied = [prefix] if hello or not user else acl.granted_prefixes(user, prefix)
        if subscribe:
            # bounded: ZeroMQ keeps every distinct prefix in its tries (hellos count too)
            if (not applied or len(prefix) > _MAX_SUBSCRIPTION_BYTES
                    or (prefix not in granted and len(granted) >= _MAX_SUBSCRIPTIONS)):
                self.denied_subscriptions += 1
                if len(denied) < _MAX_SUBSCRIPTIONS or prefix in denied:
                    denied[prefix] = denied.get(prefix, 0) + 1
                acl._count_denied_subscription(user, prefix, f"proxy {self.backend}")
                return []
            for p in applied:
                back.setsockopt(zmq.SUBSCRIBE, p)
            n = granted.get(prefix, 0)
            granted[prefix] = n + 1
            return [b"\x01" + prefix] if n == 0 else []
        for p in applied:
            back.setsockopt(zmq.UNSUBSCRIBE, p)  # ignored by XPUB without a sender pipe
        if user and not hello:
            from_denied = not applied
        elif user or hello:
            from_denied = False
        else:  # a departed connection: which kind of holder it was is unknown
            from_denied = denied.get(prefix, 0) > 0
        if from_denied:
            if denied.get(prefix, 0) > 0:
                self._release(denied, prefix)
            return []
        if granted.get(prefix, 0) > 0 and self._release(granted, prefix):
            return [b"\x00" + prefix]
        return []

    @staticmethod
    def _release(counts: dict[bytes, int], prefix: bytes) -> bool:
        """One holder of ``prefix`` fewer; True when it was the last."""
        if counts[prefix] == 1:
            del counts[prefix]
            return True
        counts[prefix] -= 1
        return False
