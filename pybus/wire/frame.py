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

from .._native._batch import (
    FULL,
    PENDING,
    READY,
    RING_RECORD_OVERHEAD,
    Batcher,
    ring_record_size,
)
from .._native._frame import (
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

__all__ = [
    "FLAG_MSGPACK", "FRAME_HEADER_SIZE", "FRAME_VERSION", "RECORD_HEADER_SIZE", "decode_batch",
    "decode_into", "decode_payloads", "encode_frame", "frame_info", "iter_frame",
    "FULL", "PENDING", "READY", "RING_RECORD_OVERHEAD", "Batcher", "ring_record_size",
]
