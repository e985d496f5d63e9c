"""pybus's compiled core. Import from ``pybus`` (the codec and the ring: ``pybus.wire``), never
from these modules directly.

The compiled modules declare no ``__all__``: their ``.pyi`` stubs are their interface (CI's
stubtest holds the two together), and the names the rest of pybus uses are imported here."""

try:
    from ._batch import Batcher
    from ._frame import Message, decode_batch, frame_info
    from ._hist import Histogram
except ImportError as exc:  # pragma: no cover - only on a source tree without a build
    raise ImportError(
        "pybus's compiled core is not built. Install the package (pip install .) or make "
        "an editable install (pip install -e .); do not import pybus from an uninstalled "
        "source tree (run `pytest`, not `python -m pytest`, from the repository root)."
    ) from exc

__all__ = ["Batcher", "Histogram", "Message", "decode_batch", "frame_info"]
