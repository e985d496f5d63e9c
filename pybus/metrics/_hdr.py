"""Reading pybus.Histogram (the compiled HDR core) for export: quantiles, buckets, merges."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from .samples import HdrValue


def total_count(h: Any) -> int:
    return int(h.total_count)


def max_value(h: Any) -> float:
    return float(h.max)


def total_sum(h: Any) -> float:
    # The HDR mean is computed from bucket midpoints, so mean * count is the sum the same
    # histogram implies; exact to the histogram's precision.
    n = int(h.total_count)
    return float(h.mean) * n if n else 0.0


def value_at_quantile(h: Any, q: float) -> float:
    return float(h.percentile(q * 100.0))


def cumulative(h: Any, bounds: Sequence[float]) -> list[int]:
    """Cumulative counts of recorded values <= each bound (bounds ascending, histogram units)."""
    counts = [0] * (len(bounds) + 1)
    for value, count in h.iter_buckets():
        counts[bisect.bisect_left(bounds, value)] += count
    out, run = [], 0
    for c in counts[:-1]:
        run += c
        out.append(run)
    return out


def merged(values: list[HdrValue]) -> tuple[Any, float, float | None]:
    """One histogram for a series fed by several objects (names or topics past the cap)."""
    first = values[0]
    # A copy (one memcpy, under the GIL) is a consistent snapshot: the owner keeps recording
    # from its own thread while the quantiles, buckets and count are read from the copy, so
    # the +Inf bucket always equals _count and buckets never decrease.
    out = first.histogram.copy()
    if len(values) == 1:
        return out, first.scale, first.total
    exact: float | None = first.total
    for v in values[1:]:
        if v.scale != first.scale:
            # Different units cannot be merged bucket for bucket; keep the first unit's data.
            continue
        out.merge(v.histogram)
        exact = None if exact is None or v.total is None else exact + v.total
    return out, first.scale, exact
