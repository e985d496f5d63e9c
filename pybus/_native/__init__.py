"""pybus's compiled core. Import from ``pybus`` (the codec and the ring: ``pybus.wire``), never
from these modules directly."""

try:
    from . import _batch, _frame, _hist
    from ._batch import *  # noqa: F403
    from ._frame import *  # noqa: F403
    from ._hist import *  # noqa: F403
except ImportError as exc:  # pragma: no cover - only on a source tree without a build
    raise ImportError(
        "pybus's compiled core is not built. Install the package (pip install .) or make "
        "an editable install (pip install -e .); do not import pybus from an uninstalled "
        "source tree (run `pytest`, not `python -m pytest`, from the repository root)."
    ) from exc

__all__ = [*_batch.__all__, *_frame.__all__, *_hist.__all__]
