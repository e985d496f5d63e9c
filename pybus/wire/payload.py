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
from .typed import encode_typed

__all__ = ["FLAG_MSGPACK", "decode_payload", "encode_payload", "pack_value"]

FLAG_MSGPACK = 0x01

_BYTES_TYPES = (bytes, bytearray, memoryview)


# the common payload types go straight to msgpack-python; others are checked for a typed
# class (msgspec Struct, dataclass, pydantic model) once per class (wire.typed)
_PLAIN = frozenset((dict, list, tuple, str, int, float, bool, type(None)))


def pack_value(payload: Any) -> bytes:
    """The msgpack bytes of a non-bytes payload: typed values through msgspec, the rest
    through msgpack-python. Raises :class:`pybus.ValidationError` naming the type when the
    value has no msgpack form."""
    if type(payload) not in _PLAIN:
        typed = encode_typed(payload)
        if typed is not None:
            return typed
    try:
        return msgpack.packb(payload, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(
            f"payload of type {type(payload).__name__} cannot be sent: {exc}; send bytes "
            "(passed through raw), a msgpack-serialisable value (None, bool, int, float, "
            "str, bytes, list, tuple, dict), a msgspec.Struct, a dataclass or a pydantic model"
        ) from None


def encode_payload(payload: Any) -> tuple[int, bytes]:
    """``(flags, body)``: bytes-like go raw (flags 0), anything else msgpack (FLAG_MSGPACK).

    Raises :class:`pybus.ValidationError` naming the type when the value has no msgpack form.
    """
    if type(payload) is bytes:
        return 0, payload
    if isinstance(payload, _BYTES_TYPES):
        return 0, bytes(payload)
    return FLAG_MSGPACK, pack_value(payload)


def decode_payload(flags: int, body: bytes | memoryview) -> Any:
    """Inverse of :func:`encode_payload`; raises :class:`pybus.FrameError` on corrupt msgpack."""
    if flags & FLAG_MSGPACK:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise FrameError(f"payload flagged msgpack does not decode: {exc}") from exc
    return bytes(body)
