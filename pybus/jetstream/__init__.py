"""pybus on NATS JetStream: the work queue across machines, topics recorded into a replicated
log and replayed (``pip install 'pybus[nats]'``; docs/scale-out.md).

Importing :mod:`pybus` never needs nats-py; the names here raise a clear error naming the
extra when it is missing."""

from __future__ import annotations

from typing import Any

from ..errors import BusError

__all__: list[str] = []


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
    if name in __all__ and not _nats_available():
        raise _missing_extra()
    raise AttributeError(f"module 'pybus.jetstream' has no attribute {name!r}")
