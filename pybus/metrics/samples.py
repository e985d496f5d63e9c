"""The values a registry passes between its parts: raw samples, HDR samples, family snapshots.

A module of its own so that the registry, the collector and the HDR reader all import
it and none of them imports another (no cycle). It is also what every reporting class imports:
:class:`MetricsSource` is the protocol each one implements next to its counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from .families import MetricDef

Labels = tuple[tuple[str, str], ...]


class HdrValue:
    """A raw HDR histogram sample: the histogram and the factor from its unit to the base unit.

    Parameters
    ----------
    histogram : pybus.Histogram
        The live histogram (read, never modified, at scrape time).
    scale : float
        Multiply a recorded value by this to get base units (``1e-9`` for nanoseconds).
    total : float, optional
        The exact sum of the recorded values in base units when the object knows it (messages
        over batches); otherwise ``_sum`` is ``mean * count`` from the HDR data.
    """

    __slots__ = ("histogram", "scale", "total")

    def __init__(self, histogram: Any, scale: float = 1.0, total: float | None = None) -> None:
        self.histogram = histogram
        self.scale = float(scale)
        self.total = total


RawSample = tuple[str, dict[str, str], "float | int | HdrValue"]


@dataclass
class FamilySnapshot:
    """One family at one scrape: its definition and its samples.

    ``samples`` holds ``(sample_name, labels, value)`` with labels as a tuple of pairs in the
    family's declared order (``le``/``quantile`` last).
    """

    definition: MetricDef
    samples: list[tuple[str, Labels, float]]


#: Nanoseconds to seconds, the ``scale`` of every latency histogram pybus records in ns.
NS = 1e-9


@runtime_checkable
class MetricsSource(Protocol):
    """An object that reports into a :class:`pybus.metrics.Registry`.

    Every pybus class that keeps counters implements it next to them, so a class that is
    renamed or moved keeps its metrics (nothing looks it up by name), and an object that does
    not implement it is refused by ``Registry.register`` with an error, never ignored.

    ``metrics_kind``
        A short noun (``"publisher"``), the ``kind`` of ``pybus_objects`` and of names.
    ``metrics_samples()``
        ``(logical_name, labels, value)`` for the families in
        :mod:`pybus.metrics.families` (the registry adds ``name`` and caps topics); a value is
        a number or an :class:`HdrValue`.
    ``metrics_readiness()``
        ``(ready, reason)`` for ``/readyz``: not ready when closed, an open breaker...
    """

    metrics_kind: ClassVar[str]

    def metrics_samples(self) -> Iterable[RawSample]: ...

    def metrics_readiness(self) -> tuple[bool, str]: ...


class AlwaysReady:
    """``metrics_readiness`` for a source that nothing closes or opens (a policy, a store that
    reports nothing once closed): always ready for ``/readyz``."""

    def metrics_readiness(self) -> tuple[bool, str]:
        return True, ""


class ReadyUntilClosed:
    """``metrics_readiness`` for a source that is ready until closed; then not ready, with the
    reason "<metrics_kind, spaced> is closed" (``"rpc client is closed"``)."""

    metrics_kind: ClassVar[str]
    _closed: bool

    def metrics_readiness(self) -> tuple[bool, str]:
        if self._closed:
            return False, f"{self.metrics_kind.replace('_', ' ')} is closed"
        return True, ""


def transport_samples(stats: dict[str, Any], security: Any) -> Iterator[RawSample]:
    """Peer events of a socket's monitor (``stats["peer_events"]``) and, for a CURVE server,
    its rejections by reason: the samples every socket-owning class reports alike."""
    for event, n in stats.get("peer_events", {}).items():
        yield "pybus_peer_events_total", {"side": "socket", "event": event}, n
    if security is not None and getattr(security, "is_server", False):
        for reason, n in security.stats()["rejected_by_reason"].items():
            yield "pybus_auth_rejected_total", {"reason": reason}, n
