"""A ``prometheus_client`` Collector over a pybus registry (prometheus_client is optional)."""

from __future__ import annotations

from typing import Any

from ..errors import ValidationError
from .families import FAMILIES
from .registry import Registry


def _metric_cls() -> Any:
    try:
        from prometheus_client.metrics_core import Metric
    except ImportError as exc:  # pragma: no cover - exercised only without the package
        raise ValidationError(
            "pybus.metrics.collector() needs prometheus_client: pip install prometheus_client"
        ) from exc
    return Metric


class PybusCollector:
    """Exposes a pybus :class:`Registry` through ``prometheus_client``.

    Parameters
    ----------
    registry : Registry, optional
        Default :data:`pybus.metrics.default_registry`.

    Examples
    --------
    >>> from prometheus_client import REGISTRY
    >>> REGISTRY.register(pybus.metrics.PybusCollector())   # doctest: +SKIP
    """

    def __init__(self, registry: Registry | None = None) -> None:
        from . import default_registry

        self.registry = registry if registry is not None else default_registry
        self._metric = _metric_cls()

    def _family(self, d: Any) -> Any:
        # prometheus_client names counter families without "_total" and appends the unit itself
        # when the name lacks it; our names already end with the unit.
        return self._metric(d.family_name, d.help, d.type, d.unit)

    def describe(self) -> list[Any]:
        """Every family pybus can export (no samples), so duplicate names are caught at
        ``REGISTRY.register`` time rather than at the first scrape."""
        fams = list(FAMILIES)
        if not self.registry.process:
            fams = [d for d in fams if d.group != "process"]
        return [self._family(d) for d in fams]

    def collect(self) -> list[Any]:
        out = []
        for snap in self.registry.collect():
            if not snap.samples:
                continue
            m = self._family(snap.definition)
            for name, labels, value in snap.samples:
                m.add_sample(name, dict(labels), float(value))
            out.append(m)
        return out


def collector(registry: Registry | None = None) -> PybusCollector:
    """A :class:`PybusCollector` for ``registry`` (default: the default registry)."""
    return PybusCollector(registry)
