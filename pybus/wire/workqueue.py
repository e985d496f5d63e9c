"""Work-queue wire protocol: frame builders and parsers (see docs/wire-workqueue.md).

Every work-queue frame is ONE ZeroMQ frame (the ROUTER adds/strips the routing-id frame):
byte 0 is the protocol version, byte 1 the command, the rest is command specific. Integers
are little-endian. Parsers raise :class:`pybus.FrameError` on anything that does not follow
the spec; callers count and drop such frames.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Any, cast

import msgpack

from ..errors import FrameError

VERSION = 1

# Worker -> queue
HELLO = ord("H")  # u32 credit
ACK = ord("A")  # u32 n_acks, u32 n_dups, u64 acks[n_acks], u64 dups[n_dups]
NACK = ord("N")  # msgpack array of [id, type, message, code, retryable]
BYE = ord("D")  # empty: the worker is leaving
# Queue -> worker
WELCOME = ord("W")  # u32 heartbeat_ms, u32 liveness, u32 credit granted
DISPATCH = ord("M")  # msgpack array of [id, delivery, topic, payload, flags, headers, ts_ns]
RECONNECT = ord("X")  # empty: unknown peer, say HELLO again
# Both directions
HEARTBEAT = ord("B")  # empty

#: flag bit in a DISPATCH entry: the payload is msgpack-encoded (else raw bytes)
FLAG_MSGPACK = 0x01

#: Largest credit a worker may announce; bounds what the queue keeps in flight per worker.
MAX_CREDIT = 1 << 20
#: Largest number of ids one ACK frame may carry (bounds parser work per frame).
MAX_IDS_PER_FRAME = 1 << 20

_HDR = struct.Struct("<BB")
_HELLO = struct.Struct("<BBI")
_WELCOME = struct.Struct("<BBIII")
_ACK_HDR = struct.Struct("<BBII")
_BIG_ENDIAN = sys.byteorder == "big"

HEARTBEAT_FRAME = _HDR.pack(VERSION, HEARTBEAT)
BYE_FRAME = _HDR.pack(VERSION, BYE)
RECONNECT_FRAME = _HDR.pack(VERSION, RECONNECT)

_packb = msgpack.packb
_unpackb = msgpack.unpackb


def hello(credit: int) -> bytes:
    return _HELLO.pack(VERSION, HELLO, credit)


def welcome(heartbeat_ms: int, liveness: int, credit: int) -> bytes:
    return _WELCOME.pack(VERSION, WELCOME, heartbeat_ms, liveness, credit)


def ack(acks: list[int], dups: list[int]) -> bytes:
    a = array("Q", acks)
    d = array("Q", dups)
    if _BIG_ENDIAN:  # pragma: no cover - no big-endian CI
        a.byteswap()
        d.byteswap()
    return _ACK_HDR.pack(VERSION, ACK, len(a), len(d)) + a.tobytes() + d.tobytes()


def nack(entries: list[list[Any]]) -> bytes:
    """``entries``: ``[id, error_type, error_message, error_code, retryable]`` lists."""
    return cast("bytes", _HDR.pack(VERSION, NACK) + _packb(entries))


def dispatch(entries: list[Any]) -> bytes:
    """``entries``: ``[id, delivery, topic, payload, flags, headers, ts_ns]`` sequences."""
    return cast("bytes", _HDR.pack(VERSION, DISPATCH) + _packb(entries))


def command(frame: bytes) -> int:
    """Return the command byte of ``frame`` after checking length and version."""
    if len(frame) < 2:
        raise FrameError(f"work-queue frame of {len(frame)} bytes; at least 2 are required")
    if frame[0] != VERSION:
        raise FrameError(
            f"work-queue frame version {frame[0]}; this side speaks version {VERSION}"
        )
    return frame[1]


def parse_hello(frame: bytes) -> int:
    if len(frame) != _HELLO.size:
        raise FrameError(f"HELLO frame of {len(frame)} bytes; exactly {_HELLO.size} expected")
    credit = _HELLO.unpack(frame)[2]
    if not 1 <= credit <= MAX_CREDIT:
        raise FrameError(f"HELLO credit {credit}; allowed 1..{MAX_CREDIT}")
    return int(credit)


def parse_welcome(frame: bytes) -> tuple[int, int, int]:
    if len(frame) != _WELCOME.size:
        raise FrameError(
            f"WELCOME frame of {len(frame)} bytes; exactly {_WELCOME.size} expected"
        )
    _, _, hb_ms, liveness, credit = _WELCOME.unpack(frame)
    if hb_ms == 0 or liveness == 0:
        raise FrameError("WELCOME with a zero heartbeat or liveness; both must be >= 1")
    # bounded like the queue's own options (a fuzzed 2**32 ms crashed the worker's poll)
    if hb_ms > 3_600_000 or liveness > 1000:
        raise FrameError(
            f"WELCOME heartbeat {hb_ms} ms / liveness {liveness}; allowed 1..3600000 / 1..1000"
        )
    return hb_ms, liveness, credit


def parse_ack(frame: bytes) -> tuple[list[int], list[int]]:
    if len(frame) < _ACK_HDR.size:
        raise FrameError(f"ACK frame of {len(frame)} bytes; at least {_ACK_HDR.size} expected")
    _, _, n_acks, n_dups = _ACK_HDR.unpack_from(frame)
    if n_acks + n_dups > MAX_IDS_PER_FRAME:
        raise FrameError(f"ACK frame with {n_acks + n_dups} ids; at most {MAX_IDS_PER_FRAME}")
    if len(frame) != _ACK_HDR.size + 8 * (n_acks + n_dups):
        raise FrameError(
            f"ACK frame of {len(frame)} bytes announces {n_acks}+{n_dups} ids, which need "
            f"{_ACK_HDR.size + 8 * (n_acks + n_dups)} bytes"
        )
    ids = array("Q")
    ids.frombytes(memoryview(frame)[_ACK_HDR.size :])
    if _BIG_ENDIAN:  # pragma: no cover
        ids.byteswap()
    lst = ids.tolist()
    return lst[:n_acks], lst[n_acks:]


def parse_nack(frame: bytes) -> list[tuple[int, str, str, int, bool]]:
    try:
        entries = _unpackb(memoryview(frame)[2:], use_list=False, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(f"NACK body is not valid msgpack: {exc}") from None
    if not isinstance(entries, tuple):
        raise FrameError(
            "NACK body must be a msgpack array of [id, type, message, code, retryable]"
        )
    out = []
    for e in entries:
        if (
            not isinstance(e, tuple)
            or len(e) != 5
            or not isinstance(e[0], int)
            or not isinstance(e[1], str)
            or not isinstance(e[2], str)
            or not isinstance(e[3], int)
            or not isinstance(e[4], bool)
        ):
            raise FrameError(
                "NACK entry must be [id: uint, type: str, message: str, code: int, "
                "retryable: bool]"
            )
        out.append(e)
    return out


def parse_dispatch(frame: bytes) -> tuple[Any, ...]:
    """Return the entries of a DISPATCH frame as tuples (validated)."""
    try:
        entries = _unpackb(memoryview(frame)[2:], use_list=False, raw=False)
    except Exception as exc:
        raise FrameError(f"DISPATCH body is not valid msgpack: {exc}") from None
    if not isinstance(entries, tuple):
        raise FrameError("DISPATCH body must be a msgpack array of message entries")
    for e in entries:
        if (
            type(e) is not tuple
            or len(e) != 7
            or type(e[0]) is not int
            or type(e[1]) is not int
            or type(e[2]) is not str
            or type(e[3]) is not bytes
            or type(e[4]) is not int
            or (e[5] is not None and type(e[5]) is not bytes)
            or type(e[6]) is not int
        ):
            raise FrameError(
                "DISPATCH entry must be [id: uint, delivery: uint, topic: str, payload: bin, "
                "flags: uint, headers: bin (a packed msgpack map) | nil, ts_ns: int]"
            )
    return entries
