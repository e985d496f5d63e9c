"""A stopping Server's last duty (``Server._drain_replies``): forward the replies its pool
still owes, answer late requests with a retryable ClosedError, and close only once quiet."""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from ..errors import ErrorCode
from ..wire.reqrep import (
    FLAG_MSGPACK,
    HEADER,
    HEADER_SIZE,
    KIND_ERROR,
    KIND_REQUEST,
    WIRE_VERSION,
    error_body,
)
from ._common import NOBLOCK, SNDMORE_NOBLOCK

__all__ = ["drain_replies"]

_log = logging.getLogger("pybus.rpc")
#: after a drain, the socket stays up until nothing arrived for this long
_DRAIN_QUIET_S = 0.2
_IDLE_CHECK_MS = 100


def drain_replies(server: Any, deadline: float, forward_marker: bytes) -> None:
    """After a stop: forward the replies of pooled requests still running as they come,
    until none is left or ``deadline``; a new request meanwhile is answered with a
    retryable ClosedError, so its client retries elsewhere at once. Then stay until the
    socket was quiet for ``_DRAIN_QUIET_S`` (bounded by ``deadline``): a request sent just
    before the stop still gets its ClosedError, and the last replies leave before the
    socket closes (closing drops what libzmq has not sent yet)."""
    sock = server._sock
    stopping = error_body("ClosedError", f"server {server.endpoint} is stopping; retry",
                          ErrorCode.CLOSED, True)
    quiet_until = time.monotonic() + _DRAIN_QUIET_S
    while server._inflight > 0 or time.monotonic() < quiet_until:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            if server._inflight:
                _log.warning("pybus rpc server %s: %d pooled requests unanswered after "
                             "the drain", server.endpoint, server._inflight)
            return
        if not sock.poll(min(left_ms, _IDLE_CHECK_MS), zmq.POLLIN):
            continue
        quiet_until = time.monotonic() + _DRAIN_QUIET_S
        try:
            ident = sock.recv(zmq.NOBLOCK)
            frame = sock.recv(zmq.NOBLOCK) if sock.getsockopt(zmq.RCVMORE) else b""
            if frame == forward_marker:
                server._forward_worker_reply()
                continue
            while sock.getsockopt(zmq.RCVMORE):
                sock.recv()
            if len(frame) >= HEADER_SIZE and frame[1] == KIND_REQUEST:
                cid = HEADER.unpack_from(frame)[4]
                sock.send(ident, SNDMORE_NOBLOCK)
                sock.send(HEADER.pack(WIRE_VERSION, KIND_ERROR, FLAG_MSGPACK, 0, cid)
                          + stopping, NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                return
            server._send_failed(exc)
