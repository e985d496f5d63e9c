"""The request/reply wire codec: implements ``docs/wire-reqrep.md`` ("Request/reply").

Owns the frame header (:data:`HEADER`, ``<BBBBQ``), the kinds and flags, payload
encoding (:func:`encode_payload` / :func:`decode_payload`), method names
(:func:`method_bytes`) and ERROR payloads (:func:`error_payload`, :func:`error_body`,
:func:`remote_error`). No sockets: :mod:`pybus.rpc` (the Server, Client and AsyncClient) and
tools written from the spec use it. Every request and reply is ONE ZeroMQ frame::

    version:u8 | kind:u8 | flags:u8 | method_len:u8 | correlation_id:u64le | method | payload

A REQUEST with :data:`FLAG_HEADERS` carries a header map (the trace context) between the
method and the payload: ``header_len:u16le | msgpack map | payload``.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from ..errors import BusError, ErrorCode, FrameError, RemoteError, ValidationError
from .payload import FLAG_MSGPACK, decode_payload, encode_payload

__all__ = [
    "CID_MASK",
    "FLAG_HEADERS",
    "FLAG_MSGPACK",
    "FLAGS_REQUEST",
    "HEADER",
    "HEADER_SIZE",
    "KIND_CONTROL",
    "KIND_ERROR",
    "KIND_REPLY",
    "KIND_REQUEST",
    "MAX_MESSAGE_BYTES",
    "MAX_METHOD_BYTES",
    "WIRE_VERSION",
    "decode_payload",
    "encode_payload",
    "error_body",
    "error_payload",
    "method_bytes",
    "read_reply",
    "remote_error",
    "request_frame",
    "split_headers",
    "with_headers",
]

WIRE_VERSION = 1
KIND_REQUEST = 0x01
KIND_REPLY = 0x02
KIND_ERROR = 0x03
KIND_CONTROL = 0x7F  # in-process only (inproc), never valid from the network
#: REQUEST only: a header block (u16le length, msgpack map) precedes the payload
FLAG_HEADERS = 0x02
#: every flag bit a REQUEST may set; the others are reserved and make the frame malformed
FLAGS_REQUEST = FLAG_MSGPACK | FLAG_HEADERS
_HEADER_LEN = struct.Struct("<H")
MAX_HEADER_BYTES = 0xFFFF
HEADER = struct.Struct("<BBBBQ")
HEADER_SIZE = HEADER.size  # 12
MAX_METHOD_BYTES = 255
# Largest frame an RPC socket accepts by default (ZeroMQ MAXMSGSIZE): bounded memory per peer.
MAX_MESSAGE_BYTES = 64 << 20
#: correlation ids are u64 and wrap
CID_MASK = (1 << 64) - 1


def method_bytes(name: str) -> bytes:
    """Validate and encode a method name (1-255 UTF-8 bytes)."""
    if not isinstance(name, str):
        raise ValidationError(f"method name must be a str, got {type(name).__name__}")
    b = name.encode("utf-8")
    if not 1 <= len(b) <= MAX_METHOD_BYTES:
        raise ValidationError(
            f"method name {name!r} is {len(b)} bytes; allowed: 1-{MAX_METHOD_BYTES} UTF-8 bytes"
        )
    return b


def request_frame(cid: int, flags: int, method: bytes, body: bytes) -> bytes:
    """One REQUEST frame: the header, the method name (``method_bytes``) and the body (the
    payload, after the header block when ``flags`` has FLAG_HEADERS)."""
    return HEADER.pack(WIRE_VERSION, KIND_REQUEST, flags, len(method), cid) + method + body


def read_reply(frame: bytes) -> tuple[int, int, int] | None:
    """``(correlation id, kind, flags)`` of a REPLY or ERROR frame, its body being
    ``frame[HEADER_SIZE:]``; None for a frame a client must count and drop as malformed: too
    short, another version, another kind, or a flag bit other than FLAG_MSGPACK."""
    if len(frame) < HEADER_SIZE:
        return None
    version, kind, flags, _mlen, cid = HEADER.unpack_from(frame)
    if version != WIRE_VERSION or kind not in (KIND_REPLY, KIND_ERROR) or flags & ~FLAG_MSGPACK:
        return None
    return cid, kind, flags


def error_body(type_name: str, message: str, code: int, retryable: bool) -> bytes:
    """The msgpack map an ERROR reply carries, from its four fields."""
    body: bytes = msgpack.packb(
        {"type": type_name, "message": message, "code": int(code), "retryable": retryable},
        use_bin_type=True,
    )
    return body


def error_payload(exc: BaseException) -> bytes:
    """The ERROR payload describing ``exc`` (type, message, code, retryable)."""
    if isinstance(exc, RemoteError):
        return error_body(exc.remote_type, exc.remote_message, exc.remote_code, exc.retryable)
    if isinstance(exc, BusError):
        return error_body(type(exc).__name__, exc.message, exc.code, bool(exc.retryable))
    return error_body(type(exc).__name__, str(exc), ErrorCode.UNKNOWN, False)


def remote_error(body: bytes | memoryview) -> RemoteError:
    """Build the RemoteError an ERROR reply describes."""
    try:
        d = msgpack.unpackb(body, raw=False)
        return RemoteError(
            str(d.get("message", "")),
            remote_type=str(d.get("type", "Exception")),
            remote_code=int(d.get("code", int(ErrorCode.UNKNOWN))),
            retryable=bool(d.get("retryable", False)),
        )
    except Exception as exc:  # a corrupt error body still must not pass silently
        return RemoteError(
            f"the server sent an error reply that does not decode ({exc})",
            remote_type="FrameError",
            remote_code=int(ErrorCode.FRAME),
        )


def with_headers(flags: int, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """A request's ``(flags, rest of frame after the method)`` carrying ``headers``; unchanged
    when ``headers`` is empty."""
    if not headers:
        return flags, body
    block: bytes = msgpack.packb(headers, use_bin_type=True)
    if len(block) > MAX_HEADER_BYTES:
        raise ValidationError(f"request headers take {len(block)} bytes packed; allowed: "
                              f"{MAX_HEADER_BYTES}")
    return flags | FLAG_HEADERS, _HEADER_LEN.pack(len(block)) + block + body


def split_headers(flags: int, data: bytes) -> tuple[int, dict[str, Any], bytes]:
    """Inverse of :func:`with_headers`: ``(flags without FLAG_HEADERS, headers, payload)``.

    Raises
    ------
    FrameError
        The block runs past the frame, or is not a msgpack map with str keys.
    """
    if not flags & FLAG_HEADERS:
        return flags, {}, data
    if len(data) < 2 or len(data) < 2 + (n := _HEADER_LEN.unpack_from(data)[0]):
        raise FrameError(f"request header block runs past the frame ({len(data)} bytes left)")
    try:
        headers = msgpack.unpackb(data[2:2 + n], raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(f"request headers do not decode: {exc}") from exc
    if not isinstance(headers, dict) or not all(isinstance(k, str) for k in headers):
        raise FrameError("request headers must be a msgpack map with str keys")
    return flags & ~FLAG_HEADERS, headers, data[2 + n:]
