"""pybus's compiled core. Import from ``pybus``, never from these modules directly."""

try:
    from ._batch import (
        FLAG_MSGPACK,
        FRAME_HEADER_SIZE,
        FRAME_VERSION,
        FULL,
        PENDING,
        READY,
        RECORD_HEADER_SIZE,
        RING_RECORD_OVERHEAD,
        Batcher,
        Message,
        decode_batch,
        decode_into,
        decode_payloads,
        encode_frame,
        frame_info,
        iter_frame,
        ring_record_size,
    )
    from ._hist import Histogram
except ImportError as exc:  # pragma: no cover - only on a source tree without a build
    raise ImportError(
        "pybus's compiled core is not built. Install the package (pip install .) or make "
        "an editable install (pip install -e .); do not import pybus from an uninstalled "
        "source tree (run `pytest`, not `python -m pytest`, from the repository root)."
    ) from exc

__all__ = [
    "Batcher",
    "Message",
    "decode_batch",
    "decode_into",
    "decode_payloads",
    "encode_frame",
    "frame_info",
    "iter_frame",
    "READY",
    "PENDING",
    "FULL",
    "FRAME_VERSION",
    "FRAME_HEADER_SIZE",
    "RECORD_HEADER_SIZE",
    "RING_RECORD_OVERHEAD",
    "FLAG_MSGPACK",
    "ring_record_size",
    "Histogram",
]
