"""The batch frame codec of ``docs/wire.md`` and the ring's building blocks.

For tools that read or write pybus frames without a :class:`pybus.Subscriber` (a bridge, a
recorder, a test written from the spec), and for benchmarks of the ring itself. Applications
publish and subscribe through :class:`pybus.Publisher` and :class:`pybus.Subscriber` and never
need this module.

Codec
    :func:`encode_frame`, :func:`decode_batch`, :func:`decode_payloads`, :func:`iter_frame`,
    :func:`frame_info`; constants :data:`FRAME_VERSION`, :data:`FRAME_HEADER_SIZE`,
    :data:`RECORD_HEADER_SIZE`, :data:`FLAG_MSGPACK`.
Ring
    :class:`Batcher` (the C ring buffer that packs messages into frames), :func:`decode_into`,
    :func:`ring_record_size`, the record states :data:`READY`, :data:`PENDING` and the status
    :data:`FULL`, and :data:`RING_RECORD_OVERHEAD`.
"""

from __future__ import annotations

from .._native import _batch, _frame

# Named for readers and type checkers; what is exported is __all__, derived below.
from .._native._batch import (  # noqa: F401
    FULL,
    PENDING,
    READY,
    RING_RECORD_OVERHEAD,
    Batcher,
    ring_record_size,
)
from .._native._frame import (  # noqa: F401
    FLAG_MSGPACK,
    FRAME_HEADER_SIZE,
    FRAME_VERSION,
    RECORD_HEADER_SIZE,
    decode_batch,
    decode_into,
    decode_payloads,
    encode_frame,
    frame_info,
    iter_frame,
)

# Everything the native modules export but the message type, which only the Subscriber hands out.
__all__ = [name for name in (*_frame.__all__, *_batch.__all__) if name != "Message"]
