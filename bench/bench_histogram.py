"""pybus.Histogram vs hdrhistogram (hdrh), side by side with pytest-benchmark.

Run: .venv/bin/pytest bench/bench_histogram.py --benchmark-only --benchmark-group-by=group
(`bench/` is outside testpaths, so a plain `pytest` never collects it.)
For one table of ratios with medians, see bench/histogram_ratios.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from pybus import Histogram

HOUR_NS = 3_600_000_000_000
N = 1_000_000


@pytest.fixture(scope="module")
def values() -> np.ndarray:
    # Latency-like: lognormal with a median of ~50 us, in ns (as ANCHOR-NUMBERS section 5).
    rng = np.random.default_rng(42)
    return rng.lognormal(np.log(50_000), 1.0, N).astype(np.int64)


@pytest.fixture(scope="module")
def filled(values):
    ours = Histogram(1, HOUR_NS, 3)
    ours.record_many(values)
    theirs = HdrHistogram(1, HOUR_NS, 3)
    for v, c in ours.iter_buckets():
        theirs.record_value(v, c)
    assert theirs.get_value_at_percentile(99) == ours.percentile(99)
    return ours, theirs


@pytest.mark.benchmark(group="record: one call")
def test_record_pybus(benchmark):
    benchmark(Histogram(1, HOUR_NS, 3).record, 51_234)


@pytest.mark.benchmark(group="record: one call")
def test_record_hdrh(benchmark):
    benchmark(HdrHistogram(1, HOUR_NS, 3).record_value, 51_234)


@pytest.mark.benchmark(group="record_many: 1e6 int64 values")
def test_record_many_pybus(benchmark, values):
    h = Histogram(1, HOUR_NS, 3)
    benchmark(h.record_many, values)


@pytest.mark.benchmark(group="record_many: 1e6 int64 values")
def test_record_many_hdrh_loop(benchmark, values):
    # hdrh has no bulk call: a Python loop over record_value is what its users write.
    h = HdrHistogram(1, HOUR_NS, 3)
    as_list = values.tolist()
    rec = h.record_value

    def loop():
        for v in as_list:
            rec(v)

    benchmark.pedantic(loop, rounds=3, iterations=1)


@pytest.mark.benchmark(group="percentile(99): 1e6 values")
def test_percentile_pybus(benchmark, filled):
    benchmark(filled[0].percentile, 99.0)


@pytest.mark.benchmark(group="percentile(99): 1e6 values")
def test_percentile_hdrh(benchmark, filled):
    benchmark(filled[1].get_value_at_percentile, 99.0)


@pytest.mark.benchmark(group="encode: 1e6 values")
def test_encode_pybus(benchmark, filled):
    benchmark(filled[0].encode)


@pytest.mark.benchmark(group="encode: 1e6 values")
def test_encode_hdrh(benchmark, filled):
    benchmark(filled[1].encode)


@pytest.mark.benchmark(group="decode: 1e6 values")
def test_decode_pybus(benchmark, filled):
    benchmark(Histogram.decode, filled[0].encode())


@pytest.mark.benchmark(group="decode: 1e6 values")
def test_decode_hdrh(benchmark, filled):
    benchmark(HdrHistogram.decode, filled[1].encode())
