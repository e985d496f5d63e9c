"""The values a registry passes between its parts: raw samples, HDR samples, family snapshots.

A module of its own so that the registry, the exposition writers and the HDR reader all import
it and none of them imports another (no cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
