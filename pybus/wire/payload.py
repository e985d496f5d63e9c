"""The payload rule every pybus wire shares: bytes travel as they are, anything else as one
msgpack object, and a flag bit says which.

The batch frame's records (``docs/wire.md``, written by the compiled batcher), the request and
reply frames (``docs/wire-reqrep.md``) and the work-queue messages (``docs/wire-workqueue.md``)
all mark a msgpack payload with bit 0 (:data:`FLAG_MSGPACK`). This module is the one Python
encoder and decoder of that rule; the protocols import it rather than each keep a copy.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..errors import FrameError, ValidationError

__all__ = ["FLAG_MSGPACK", "decode_payload", "encode_payload"]

FLAG_MSGPACK = 0x01

_BYTES_TYPES = (bytes, bytearray, memoryview)


def encode_payload(payload: Any) -> tuple[int, bytes]:
    """``(flags, body)``: bytes-like go raw (flags 0), anything else msgpack (FLAG_MSGPACK).

    Raises :class:`pybus.ValidationError` naming the type when the value has no msgpack form.
    """
    if type(payload) is bytes:
        return 0, payload
    if isinstance(payload, _BYTES_TYPES):
        return 0, bytes(payload)
    try:
        return FLAG_MSGPACK, msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(
            f"payload of type {type(payload).__name__} cannot be sent: {exc}; send bytes "
            "(passed through raw) or a msgpack-serialisable value (None, bool, int, float, "
            "str, bytes, list, tuple, dict)"
        ) from None


def decode_payload(flags: int, body: bytes | memoryview) -> Any:
    """Inverse of :func:`encode_payload`; raises :class:`pybus.FrameError` on corrupt msgpack."""
    if flags & FLAG_MSGPACK:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise FrameError(f"payload flagged msgpack does not decode: {exc}") from exc
    return bytes(body)
