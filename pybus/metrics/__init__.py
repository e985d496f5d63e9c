"""pybus metrics: a pull-model registry, Prometheus/OpenMetrics export, health endpoints.

Every pybus object registers itself weakly in :data:`default_registry` when it is built (or in the
``registry=`` it is given). Objects keep plain counters, updated per batch; the registry reads them
only when something asks: a ``/metrics`` scrape (:func:`serve`), a ``prometheus_client`` registry
(:func:`collector`), or :func:`snapshot`.

Examples
--------
>>> import pybus
>>> srv = pybus.metrics.serve(9464)                 # /metrics, /healthz, /readyz  # doctest: +SKIP
>>> from prometheus_client import REGISTRY
>>> REGISTRY.register(pybus.metrics.collector())    # or into your own registry   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from typing import Any

from .collector import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    PybusCollector,
    collector,
    render,
)
from .families import FAMILIES, QUANTILES, MetricDef, exported_sample_names, markdown
from .registry import (
    DEFAULT_MAX_OBJECTS_PER_KIND,
    DEFAULT_MAX_TOPICS,
    Registry,
    register_adapter,
)
from .samples import FamilySnapshot, HdrValue, MetricsSource
from .server import MetricsServer, serve

#: The registry every pybus object reports into unless given ``registry=``.
default_registry = Registry()


def register(obj: Any, registry: Registry | None = None, *, name: str | None = None) -> str:
    """Register ``obj`` (weakly) in ``registry`` or the default registry; returns its name."""
    return (registry if registry is not None else default_registry).register(obj, name=name)


def attach(obj: Any, registry: Registry | None | bool = None) -> None:
    """Called by pybus constructors with their ``registry=`` argument.

    ``None`` (the default) registers ``obj`` in :data:`default_registry`, a :class:`Registry`
    registers it there, ``False`` does not register it (objects owned by another object that
    reports for them, such as the per-key buckets of a KeyedRateLimiter).
    """
    if registry is False:
        return
    if registry is None or registry is True:
        default_registry.register(obj)
    elif isinstance(registry, Registry):
        registry.register(obj)
    else:
        from ..errors import ValidationError

        raise ValidationError(
            f"registry must be a pybus.metrics.Registry, None (the default registry) or False "
            f"(do not report), got {registry!r}"
        )


def snapshot(registry: Registry | None = None) -> dict[str, Any]:
    """Every metric family as plain data (see :meth:`Registry.snapshot`)."""
    return (registry if registry is not None else default_registry).snapshot()


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


def snapshot_json(registry: Registry | None = None, *, indent: int | None = None) -> str:
    """:func:`snapshot` as strict JSON (non-finite floats become the strings "NaN", "+Inf")."""
    return json.dumps(_jsonable(snapshot(registry)), indent=indent, allow_nan=False)


__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "DEFAULT_MAX_OBJECTS_PER_KIND",
    "DEFAULT_MAX_TOPICS",
    "FAMILIES",
    "QUANTILES",
    "FamilySnapshot",
    "HdrValue",
    "MetricsSource",
    "MetricDef",
    "MetricsServer",
    "PybusCollector",
    "attach",
    "Registry",
    "collector",
    "default_registry",
    "exported_sample_names",
    "markdown",
    "register",
    "register_adapter",
    "render",
    "serve",
    "snapshot",
    "snapshot_json",
]
