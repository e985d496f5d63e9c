"""One socket interface with two implementations, chosen once per socket: the compiled libzmq
path (``pybus._native._zmqfast``) or plain pyzmq calls with the same methods. Protocol code
above it is written once and never asks which path it runs on; the compiled layer does I/O
and codecs, never policy (no counting, no decisions).

One kind per socket role. :class:`MessageChannel`, whole messages without blocking (the work
queue's ROUTER, the worker's DEALER and its acks' PULL):

* ``recv_parts()``: the next message's parts, or None when none is ready;
* ``send_parts(parts)``: one message (a tuple of bytes); the errno, 0 when queued
  (EHOSTUNREACH: a ROUTER_MANDATORY peer is gone).

:class:`ServerChannel`, the RPC server's side of ``docs/wire-reqrep.md``:

* ``recv_request()``: the next request on a ROUTER, waiting up to the socket's RCVTIMEO.
  ``None`` when nothing came; else ``(reason, identity, cid, flags, method, data)``, with
  ``reason`` None for a well-formed REQUEST, or one of the ``REASON_*`` strings (the header
  judged in the order of the wire document), ``data`` then being the whole frame after the
  identity. With ``REASON_MULTIPART`` the message's further parts are unread: call
  ``discard_rest()``. Raises :class:`pybus.ClosedError` once the socket or its context is
  closed.
* ``send_reply(identity, cid, kind, flags, body)``: one reply (header written here), without
  blocking; the errno, 0 when sent.

:class:`SubscriberChannel`, a subscriber's ``[topic][batch frame]`` messages (docs/wire.md):

* ``recv_pubsub(dontwait)``: the next message as ``(topic, frame, parts)``, ``frame`` None when
  the message did not have 2 parts (all of them read); None when nothing is ready, or after
  the socket's RCVTIMEO with ``dontwait`` False;
* ``recv_batches(topics, batches, max_messages, max_frames, decode)``: receive and decode
  every queued message whose topic is wanted (``topics[topic]`` a str) and whose frame decodes
  to messages that fit; one ``(topic, topic bytes, publisher id, first seq, publish time ns,
  messages, frame bytes)`` per frame in ``batches``; returns the ``recv_pubsub`` tuple of a
  message it read and left to the caller, or None.

:class:`ClientChannel`, the RPC client's DEALER (``call``, ``send_request``, ``recv_reply``),
and :class:`PublisherChannel`, a publisher's batch frames out of its ring
(``send_batches``), are described in their classes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, Self, cast

import zmq

from .._native import _zmqfast, frame_info
from ..errors import ClosedError, from_zmq
from ..wire.reqrep import (
    CID_MASK,
    FLAGS_REQUEST,
    HEADER,
    HEADER_SIZE,
    KIND_REPLY,
    KIND_REQUEST,
    WIRE_VERSION,
    request_frame,
)
from .sockets import fast_address

__all__ = [
    "REASON_FLAGS", "REASON_KIND", "REASON_METHOD", "REASON_MULTIPART", "REASON_SHORT",
    "REASON_VERSION",
    "ClientChannel", "MessageChannel", "PublisherChannel", "ServerChannel", "SubscriberChannel",
    "pyzmq_method",
]
# why ServerChannel.recv_request found a frame malformed (the same strings on both twins)
REASON_FLAGS = _zmqfast.REASON_FLAGS
REASON_KIND = _zmqfast.REASON_KIND
REASON_METHOD = _zmqfast.REASON_METHOD
REASON_MULTIPART = _zmqfast.REASON_MULTIPART
REASON_SHORT = _zmqfast.REASON_SHORT
REASON_VERSION = _zmqfast.REASON_VERSION

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_CLOSED = (zmq.ETERM, zmq.ENOTSOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)  # once, not an IntEnum attribute read per frame
_UNPACK_FROM = HEADER.unpack_from
# Frames at least this big go to ZeroMQ without a copy. Below, copying is cheaper: pyzmq's
# zero-copy send tracks the buffer and releases it from a background thread (measured).
_ZERO_COPY_MIN_BYTES = 1 << 20


def pyzmq_method(sock: zmq.Socket[Any], name: str) -> Any:
    """``sock``'s pyzmq Cython method ``name`` (send or recv), without the sugar layer's
    routing_id/group handling (about twice as fast per frame); a socket class that overrides
    it (zmq.green, a user's socket_class) keeps its own."""
    if getattr(type(sock), name) is getattr(zmq.Socket, name):
        return getattr(zmq.backend.Socket, name).__get__(sock)
    return getattr(sock, name)


class _Channel:
    """A socket on pyzmq's calls, which :meth:`open` turns into the compiled twin: each
    method named in ``COMPILED`` replaced with its ``_zmqfast`` function bound to the socket's
    address (``functools.partial``, a C call: a Python method around them cost the RPC server
    about 4,000 instructions per request, callgrind, a third of its whole share)."""

    io_path = "pyzmq"
    #: method -> the _zmqfast function doing the same on the socket's address
    COMPILED: ClassVar[dict[str, str]] = {}

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self._sock = sock

    @classmethod
    def open(cls, sock: zmq.Socket[Any], compiled: bool = True) -> Self:
        """The channel for ``sock``: the compiled twin when the fast path is available and
        ``compiled`` (a subscriber checking publish permissions needs pyzmq's frames)."""
        chan = cls(sock)
        addr = fast_address(sock) if compiled else 0
        if addr:
            for name, fn in cls.COMPILED.items():
                setattr(chan, name, partial(getattr(_zmqfast, fn), addr))
            chan.io_path = "libzmq"
        return chan


class MessageChannel(_Channel):
    """Whole messages on pyzmq's calls; :meth:`open` gives the compiled one when
    it can (module docstring). Safe on a closed socket (its calls raise or fail), which the
    compiled one is not: switch to this one before closing."""

    COMPILED = {"recv_parts": "recv_message", "send_parts": "send_message"}

    def recv_parts(self) -> list[bytes] | None:
        try:
            return self._sock.recv_multipart(_NOBLOCK)
        except zmq.Again:
            return None

    def send_parts(self, parts: tuple[bytes, ...]) -> int:
        try:
            self._sock.send_multipart(parts, _NOBLOCK)
        except zmq.ZMQError as exc:
            return int(exc.errno or -1)
        return 0


class ServerChannel(_Channel):
    """The RPC server's socket on pyzmq's calls; :meth:`open` gives the compiled
    one when it can (module docstring): the request read and its header judged in C, the
    reply's header written in C."""

    COMPILED = {"recv_request": "recv_request", "send_reply": "send_reply"}

    def recv_request(self) -> tuple[Any, ...] | None:
        sock = self._sock
        try:
            try:
                ident = sock.recv()
            except zmq.Again:
                return None
            # the body as a zmq.Frame only to read its "more" flag: pyzmq's
            # getsockopt(RCVMORE) costs about twice a Frame
            zframe = sock.recv(0, False)
        except zmq.ZMQError as exc:
            if exc.errno in _CLOSED:
                raise ClosedError("the RPC server's socket is closed") from None
            raise
        frame = zframe.bytes
        if zframe.more:
            return (REASON_MULTIPART, ident, 0, 0, None, frame)
        if len(frame) < HEADER_SIZE:
            return (REASON_SHORT, ident, 0, 0, None, frame)
        version, kind, flags, mlen, cid = HEADER.unpack_from(frame)
        reason = None
        end = HEADER_SIZE + mlen
        if version != WIRE_VERSION:
            reason = REASON_VERSION
        elif flags & ~FLAGS_REQUEST:
            reason = REASON_FLAGS  # reserved bits must be zero
        elif kind != KIND_REQUEST:
            reason = REASON_KIND
        elif mlen == 0 or len(frame) < end:
            reason = REASON_METHOD
        if reason is not None:
            return (reason, ident, 0, 0, None, frame)
        return (None, ident, cid, flags, frame[HEADER_SIZE:end], frame[end:])

    def discard_rest(self) -> None:
        sock = self._sock
        while sock.getsockopt(zmq.RCVMORE):
            sock.recv()

    def send_reply(self, ident: bytes, cid: int, kind: int, flags: int, body: bytes) -> int:
        sock = self._sock
        try:
            sock.send(ident, _SNDMORE_NOBLOCK)
            sock.send(HEADER.pack(WIRE_VERSION, kind, flags, 0, cid) + body, _NOBLOCK)
        except zmq.ZMQError as exc:
            return int(exc.errno or -1)
        return 0


class SubscriberChannel(_Channel):
    """A subscriber's socket on pyzmq's calls; :meth:`open` gives the compiled
    one when it can (module docstring). The batch frame comes as a ``zmq.Frame`` here (its
    ``User-Id`` property names the sender's key, which publish permissions need), as a
    ``_zmqfast.ZFrame`` there; both are read through the buffer protocol."""

    COMPILED = {"recv_pubsub": "recv_pubsub", "recv_batches": "recv_batches"}

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        super().__init__(sock)
        # pyzmq's Cython methods, without the sugar layer (per frame, not per message); a
        # socket class that overrides recv (zmq.green, a user's socket_class) keeps it
        self._recv = pyzmq_method(sock, "recv")
        self._get = zmq.backend.Socket.get.__get__(sock)

    def recv_pubsub(self, dontwait: bool = True) -> tuple[bytes, Any, int] | None:
        recv = self._recv
        try:
            # asking first costs ~0.5 us; a receive that finds nothing, ~10 us (a zmq.Again
            # raised), which would land on the latency of every lone message
            if dontwait and not self._get(_EVENTS) & _POLLIN:
                return None
            try:
                topic = recv(_NOBLOCK if dontwait else 0, True)
            except zmq.Again:
                return None
            # the topic as bytes (a zmq.Frame costs ~3 us more to create than it saves), the
            # batch frame as a zmq.Frame (not copied; its .more is free)
            if not self._get(_RCVMORE):
                return (topic, None, 1)
            frame = recv(_NOBLOCK, False)
            if not frame.more:
                return (topic, frame, 2)
            parts = 2
            while frame.more:
                frame = recv(_NOBLOCK, False)
                parts += 1
            return (topic, None, parts)
        except zmq.ZMQError as exc:
            if exc.errno in _CLOSED:
                raise ClosedError("the Subscriber's socket is closed") from None
            raise from_zmq(exc, "Subscriber receive") from exc

    def recv_batches(self, topics: dict[bytes, Any], batches: list[Any], max_messages: int,
                     max_frames: int, decode: Any) -> tuple[bytes, Any, int] | None:
        frames = total = 0
        while frames < max_frames and total < max_messages:
            got = self.recv_pubsub(True)
            if got is None:
                return None
            # the per-frame decision is written once, compiled, for both twins
            count = _zmqfast.take_batch(batches, topics, decode, got[0], got[1],
                                        max_messages - total)
            if not count:
                return got
            total += count
            frames += 1
        return None


class ClientChannel(_Channel):
    """The RPC client's DEALER on pyzmq's calls; :meth:`open` gives the compiled one when it
    can (``_zmqfast.call``: send, then wait with the GIL released). Same returns as the
    compiled functions:

    * ``send_request(cid, flags, method, payload)``: one REQUEST frame without blocking; 0
      once queued, else the errno (EAGAIN: IMMEDIATE and no connection yet);
    * ``recv_reply(cid)``: wait up to RCVTIMEO for the next frame. ``bytes``: the payload of
      our raw-bytes REPLY (the common case, judged here); ``bytearray``: any other frame,
      whole, for the caller to judge; None: nothing came;
    * ``call(cid_base, seq, flags, method, payload)``: both, with the id ``cid_base + seq``
      (mod 2**64); the errno (an int) when nothing was sent.

    A closed socket raises :class:`pybus.ClosedError`; another ZeroMQ error the
    :func:`pybus.errors.from_zmq` error, with the ``zmq.ZMQError`` as its cause.
    """

    COMPILED = {"call": "call", "send_request": "send_request", "recv_reply": "recv_reply"}

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        super().__init__(sock)
        self._send = pyzmq_method(sock, "send")
        self._recv = pyzmq_method(sock, "recv")

    def call(self, cid_base: int, seq: int, flags: int, method: bytes,
             payload: bytes) -> bytes | bytearray | int | None:
        cid = (cid_base + seq) & CID_MASK
        err = self.send_request(cid, flags, method, payload)
        return err if err else self.recv_reply(cid)

    def send_request(self, cid: int, flags: int, method: bytes, payload: bytes) -> int:
        if not 1 <= len(method) <= 255:
            raise ValueError(f"method is {len(method)} bytes; allowed: 1-255")
        try:
            self._send(request_frame(cid, flags, method, payload), _NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno in _CLOSED:
                raise ClosedError("the RPC client's socket is closed") from exc
            return int(exc.errno or -1)
        return 0

    def recv_reply(self, cid: int) -> bytes | bytearray | None:
        try:
            reply = self._recv()
        except zmq.Again:
            return None
        except zmq.ZMQError as exc:
            if exc.errno in _CLOSED:
                raise ClosedError("the RPC client's socket is closed") from exc
            raise from_zmq(exc, "RPC client receive") from exc
        if len(reply) >= HEADER_SIZE:
            version, kind, flags, _mlen, rcid = _UNPACK_FROM(reply)
            if rcid == cid and kind == KIND_REPLY and flags == 0 and version == WIRE_VERSION:
                return cast(bytes, reply[HEADER_SIZE:])
        return bytearray(reply)


class PublisherChannel:
    """A publisher's XPUB fed from its batcher's ring: ``send_batches(max_frames, max_bytes)``
    drains pending records as batch frames and sends each as ``[topic][frame]`` without
    blocking (an XPUB drops at a subscriber's HWM, it never blocks). Returns ``(sent, err)``:
    one ``(topic bytes, records, frame bytes)`` per frame sent, in order, and 0 or the errno
    of the send that failed (a dead socket: that frame is lost).

    The compiled twin (:meth:`open`) is ``Batcher.drain_to``: frames written straight into
    ZeroMQ messages, one copy and one bytes object fewer per frame. With ``keep`` (a
    late-joiner history's ``add(topic, frame, records)``, which needs the frames) it is pyzmq's
    calls."""

    io_path = "pyzmq"

    def __init__(self, sock: zmq.Socket[Any], batcher: Any,
                 keep: Callable[[bytes, bytes, int], Any] | None = None) -> None:
        self._send = pyzmq_method(sock, "send")
        self._drain = batcher.drain
        self._keep = keep

    @classmethod
    def open(cls, sock: zmq.Socket[Any], batcher: Any,
             keep: Callable[[bytes, bytes, int], Any] | None = None) -> PublisherChannel:
        chan = cls(sock, batcher, keep)
        addr = fast_address(sock) if keep is None else 0
        if addr:
            chan.send_batches = partial(batcher.drain_to, addr)  # type: ignore[method-assign]
            chan.io_path = "libzmq"
        return chan

    def send_batches(self, max_frames: int, max_bytes: int) -> tuple[list[Any], int]:
        send, keep = self._send, self._keep
        sent: list[tuple[bytes, int, int]] = []
        for topic, frame in self._drain(max_frames, max_bytes):
            n = len(frame)
            try:
                send(topic, _SNDMORE_NOBLOCK)
                send(frame, _NOBLOCK, copy=n < _ZERO_COPY_MIN_BYTES)
            except zmq.ZMQError as exc:
                return sent, int(exc.errno or -1)
            records = frame_info(frame)[2]
            sent.append((topic, records, n))
            if keep is not None:
                keep(topic, frame, records)
        return sent, 0
