"""One socket interface with two implementations, chosen once per socket: the compiled libzmq
path (``pybus._native._zmqfast``) or plain pyzmq calls with the same methods. Protocol code
above it is written once and never asks which path it runs on; the compiled layer does I/O
and codecs, never policy (no counting, no decisions).

Two kinds so far. :class:`MessageChannel`, whole messages without blocking (the work queue's
ROUTER):

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
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar, TypeVar

import zmq

from .._native import _zmqfast
from ..errors import ClosedError
from ..wire.reqrep import FLAGS_REQUEST, HEADER, HEADER_SIZE, KIND_REQUEST, WIRE_VERSION
from .sockets import fast_address

__all__ = ["MessageChannel", "ServerChannel", "message_channel", "server_channel"]

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_CLOSED = (zmq.ETERM, zmq.ENOTSOCK)


class _Channel:
    """A socket on pyzmq's calls, which :func:`_choose` turns into the compiled twin: each
    method named in ``COMPILED`` replaced with its ``_zmqfast`` function bound to the socket's
    address (``functools.partial``, a C call: a Python method around them cost the RPC server
    about 4,000 instructions per request, callgrind, a third of its whole share)."""

    io_path = "pyzmq"
    #: method -> the _zmqfast function doing the same on the socket's address
    COMPILED: ClassVar[dict[str, str]] = {}

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self._sock = sock


_C = TypeVar("_C", bound=_Channel)


def _choose(kind: type[_C], sock: zmq.Socket[Any]) -> _C:
    chan = kind(sock)
    addr = fast_address(sock)
    if addr:
        for name, fn in kind.COMPILED.items():
            setattr(chan, name, partial(getattr(_zmqfast, fn), addr))
        chan.io_path = "libzmq"
    return chan


class MessageChannel(_Channel):
    """Whole messages on pyzmq's calls; :func:`message_channel` gives the compiled one when
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
            return exc.errno or -1
        return 0


def message_channel(sock: zmq.Socket[Any]) -> MessageChannel:
    """The whole-message channel for ``sock``: compiled when the fast path is available."""
    return _choose(MessageChannel, sock)


class ServerChannel(_Channel):
    """The RPC server's socket on pyzmq's calls; :func:`server_channel` gives the compiled
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
            return (_zmqfast.REASON_MULTIPART, ident, 0, 0, None, frame)
        if len(frame) < HEADER_SIZE:
            return (_zmqfast.REASON_SHORT, ident, 0, 0, None, frame)
        version, kind, flags, mlen, cid = HEADER.unpack_from(frame)
        reason = None
        end = HEADER_SIZE + mlen
        if version != WIRE_VERSION:
            reason = _zmqfast.REASON_VERSION
        elif flags & ~FLAGS_REQUEST:
            reason = _zmqfast.REASON_FLAGS  # reserved bits must be zero
        elif kind != KIND_REQUEST:
            reason = _zmqfast.REASON_KIND
        elif mlen == 0 or len(frame) < end:
            reason = _zmqfast.REASON_METHOD
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
            return exc.errno or -1
        return 0


def server_channel(sock: zmq.Socket[Any]) -> ServerChannel:
    """The channel for an RPC server's ROUTER: compiled when the fast path is available."""
    return _choose(ServerChannel, sock)
