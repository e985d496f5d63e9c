"""Call a Server's handler, or a Worker's, as a client or a queue would, in the test's own
thread: the real payload codec and the real error mapping, no socket and no timing."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._native import Message
from ..errors import RemoteError
from ..rpc._handlers import unknown_method_body
from ..rpc.server import Server
from ..wire import workqueue as W
from ..wire.payload import decode_payload, encode_payload
from ..wire.reqrep import error_payload, remote_error
from ..workqueue._records import pack_headers
from ..workqueue.worker import Worker, make_work_message
from ..workqueue.worker import _error_entry as error_entry

__all__ = ["call", "WorkOutcome", "run_handler"]


def _over_the_wire(value: Any) -> Any:
    """``value`` as the other side decodes it (bytes raw, anything else msgpack)."""
    flags, body = encode_payload(value)
    return decode_payload(flags, body)


def call(server: Server, method: str, payload: Any = b"") -> Any:
    """What ``Client.request(method, payload)`` returns against ``server``, computed in this
    thread: the payload encoded and decoded as on the wire, the handler called, its result
    encoded and decoded back; a handler exception or an unknown method raises the
    :class:`pybus.RemoteError` a client would get. The server need not be started."""
    fn = server.handler_for(method)
    if fn is None:
        raise remote_error(unknown_method_body(method, server.methods))
    arg = _over_the_wire(payload)
    try:
        result = fn(arg)
    except Exception as exc:  # noqa: BLE001 - what the server sends back, the client raises
        raise remote_error(error_payload(exc)) from exc
    return _over_the_wire(result)


@dataclass(frozen=True)
class WorkOutcome:
    """What the queue learns from one delivery: ``acked``, or the ``error`` it records
    (``error.retryable`` False: dead-lettered at once; True: retried per the policy)."""

    message: Message
    acked: bool
    error: RemoteError | None = None


def run_handler(handler: Worker | Callable[[Message], Any], topic: str, payload: Any = b"",
                headers: Mapping[str, Any] | None = None, *, message_id: int = 1,
                delivery: int = 1) -> WorkOutcome:
    """Hand one message to a Worker's handler (or a bare handler) as a worker would: the
    message goes through the real DISPATCH encoding, and an exception becomes the NACK entry
    the queue would read."""
    # a Worker's own call: its handler with the payload typed as it declares
    fn = handler._call if isinstance(handler, Worker) else handler
    flags, body = encode_payload(payload)
    entry = [message_id, delivery, topic, body, flags, pack_headers(headers), time.time_ns()]
    (wire_entry,) = W.parse_dispatch(W.dispatch([entry]))
    msg = make_work_message(tuple(wire_entry))
    try:
        fn(msg)
    except Exception as exc:  # noqa: BLE001 - the queue records it; so does the outcome
        ((_mid, etype, emsg, ecode, retryable),) = W.parse_nack(
            W.nack([error_entry(message_id, exc)]))
        return WorkOutcome(msg, False, RemoteError(emsg, remote_type=etype, remote_code=ecode,
                                                    retryable=retryable))
    return WorkOutcome(msg, True)
