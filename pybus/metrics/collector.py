"""pybus metrics through ``prometheus_client``: the collector, and the scrape body built with
its exposition (Prometheus text and OpenMetrics).

pybus keeps its own registry (weak references, topic caps, HDR quantiles read at scrape time);
``prometheus_client`` formats what it collects, so the text on the wire is what every other
Python service writes.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from prometheus_client.exposition import generate_latest as _generate_text
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as CONTENT_TYPE_OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as _generate_om
from prometheus_client.registry import CollectorRegistry

from .families import FAMILIES
from .samples import FamilySnapshot


class Collects(Protocol):
    """What the collector reads: a :class:`pybus.metrics.Registry` (a protocol, so this module
    does not import the registry, which renders through it)."""

    process: bool

    def collect(self) -> list[FamilySnapshot]: ...


FORMATS = ("text", "openmetrics")
#: What prometheus_client answers a scraper that does not ask for OpenMetrics.
CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class PybusCollector:
    """Exposes a pybus :class:`Registry` through ``prometheus_client``.

    Every family pybus can export is collected at each scrape, with no samples when nothing of
    that kind exists (as the documented table says: a family is declared even when empty).

    Parameters
    ----------
    registry : Registry, optional
        Default :data:`pybus.metrics.default_registry`.

    Examples
    --------
    >>> from prometheus_client import REGISTRY
    >>> REGISTRY.register(pybus.metrics.PybusCollector())   # doctest: +SKIP
    """

    def __init__(self, registry: Collects | None = None) -> None:
        if registry is None:
            from . import default_registry

            registry = default_registry
        self.registry = registry

    @staticmethod
    def _family(d: Any) -> Metric:
        # prometheus_client names counter families without "_total" (it adds it back when
        # writing) and appends the unit only when the name lacks it; ours already end with it.
        return Metric(d.family_name, d.help, d.type, d.unit)

    def describe(self) -> list[Metric]:
        """Every family pybus can export (no samples), so duplicate names are caught at
        ``REGISTRY.register`` time rather than at the first scrape."""
        fams = [d for d in FAMILIES if self.registry.process or d.group != "process"]
        return [self._family(d) for d in fams]

    def collect(self) -> list[Metric]:
        out = []
        for snap in self.registry.collect():
            m = self._family(snap.definition)
            for name, labels, value in snap.samples:
                m.add_sample(name, dict(labels), float(value))
            out.append(m)
        return out


def collector(registry: Collects | None = None) -> PybusCollector:
    """A :class:`PybusCollector` for ``registry`` (default: the default registry)."""
    return PybusCollector(registry)


def exposition_registry(registry: Collects) -> CollectorRegistry:
    """A ``prometheus_client`` registry holding only ``registry``'s collector (what
    ``/metrics`` serves)."""
    preg = CollectorRegistry(auto_describe=False)
    preg.register(PybusCollector(registry))
    return preg


def render(registry: Collects, fmt: str = "text") -> bytes:
    """The scrape body of ``registry``: ``fmt`` is ``"text"`` (Prometheus 0.0.4) or
    ``"openmetrics"`` (OpenMetrics 1.0.0, ends with ``# EOF``); written by prometheus_client."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be 'text' or 'openmetrics', got {fmt!r}")
    preg = exposition_registry(registry)
    if fmt == "openmetrics":
        # prometheus_client leaves the OpenMetrics writer unannotated
        return cast(bytes, _generate_om(preg))  # type: ignore[no-untyped-call]
    return _generate_text(preg)


__all__ = ["CONTENT_TYPE_OPENMETRICS", "CONTENT_TYPE_TEXT", "PybusCollector", "collector",
           "exposition_registry", "render"]
