"""pybus on NATS JetStream: the work queue across machines, topics recorded into a replicated
log and replayed (``pip install 'pybus[nats]'``; docs/scale-out.md).

Importing :mod:`pybus` never needs nats-py; the names here raise a clear error naming the
extra when it is missing."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import BusError

# name -> the module (of this package) that defines it; imported on first use, so that
# ``import pybus.jetstream`` works without nats-py and the error names the extra
_EXPORTS = {
    "WorkQueue": "workqueue",
    "Worker": "worker",
    "AsyncWorkQueue": "workqueue",
    "Recorder": "recorder",
    "replay": "replay",
    "areplay": "replay",
    "GAP_TOPIC": "recorder",
}
__all__ = sorted(_EXPORTS)


def _missing_extra() -> BusError:
    return BusError(
        "pybus.jetstream needs nats-py: pip install 'pybus[nats]' (the optional extra 'nats')")


def _nats_available() -> bool:
    try:
        import nats  # noqa: F401
    except ImportError:
        return False
    return True


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pybus.jetstream' has no attribute {name!r}")
    if not _nats_available():
        raise _missing_extra()
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
