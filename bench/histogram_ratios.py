"""pybus.Histogram vs hdrhistogram (hdrh) in one process: medians of repetitions + ratios.

Run: .venv/bin/python bench/histogram_ratios.py [--reps 5]

Each case is timed `reps` times (time.perf_counter_ns, one untimed warm-up); the table shows
median [min - max] per side and the ratio hdrh / pybus of the medians (> 1: pybus faster).
Data: 1e6 lognormal values with a median of ~50 us in ns, histogram 1 ns .. 1 h, 3 figures
(the setting of ANCHOR-NUMBERS section 5).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from hdrh.histogram import HdrHistogram

from pybus import Histogram

HOUR_NS = 3_600_000_000_000


def timed(fn: Callable[[], object], per: int, reps: int) -> list[float]:
    """Run fn `reps` times after one warm-up; return the time per unit (ns) of each run."""
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / per)
    return out


def fmt(samples: list[float], scale: float) -> str:
    med = statistics.median(samples) / scale
    return f"{med:10.2f} [{min(samples) / scale:.2f} - {max(samples) / scale:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000, help="values recorded")
    args = ap.parse_args()
    reps, n = args.reps, args.n

    values = np.random.default_rng(42).lognormal(np.log(50_000), 1.0, n).astype(np.int64)
    as_list = values.tolist()
    loop_n = min(n, 200_000)  # per-call loops: enough for stable ns figures, short for hdrh
    loop_vals = as_list[:loop_n]

    ours = Histogram(1, HOUR_NS, 3)
    theirs = HdrHistogram(1, HOUR_NS, 3)
    rec, rec_h = ours.record, theirs.record_value

    def loop_ours() -> None:
        for v in loop_vals:
            rec(v)

    def loop_theirs() -> None:
        for v in loop_vals:
            rec_h(v)

    def many_ours() -> None:
        ours.record_many(values)

    rows: list[tuple[str, str, list[float], list[float], float]] = []
    rows.append(
        (
            "record (Python call, per value)",
            "ns",
            timed(loop_ours, loop_n, reps),
            timed(loop_theirs, loop_n, reps),
            1.0,
        )
    )
    # hdrh has no bulk API: its users loop over record_value.
    rows.append(
        (
            "record_many 1e6 int64 (per value)",
            "ns",
            timed(many_ours, n, reps),
            timed(loop_theirs, loop_n, reps),
            1.0,
        )
    )

    ours.reset()
    ours.record_many(values)
    theirs = HdrHistogram(1, HOUR_NS, 3)
    for v in as_list:
        theirs.record_value(v)
    assert ours.percentile(99) == theirs.get_value_at_percentile(99)
    assert ours.total_count == theirs.get_total_count() == n

    def reps_of(fn: Callable[[], object], k: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(k):
                fn()

        return run

    rows.append(
        (
            "percentile(99) on 1e6 values",
            "us",
            timed(reps_of(lambda: ours.percentile(99.0), 200), 200, reps),
            timed(reps_of(lambda: theirs.get_value_at_percentile(99.0), 20), 20, reps),
            1e3,
        )
    )
    four = [50.0, 90.0, 99.0, 99.9]
    rows.append(
        (
            "percentiles([50,90,99,99.9])",
            "us",
            timed(reps_of(lambda: ours.percentiles(four), 200), 200, reps),
            timed(reps_of(lambda: theirs.get_percentile_to_value_dict(four), 20), 20, reps),
            1e3,
        )
    )
    rows.append(
        (
            "encode() with 1e6 values",
            "us",
            timed(reps_of(ours.encode, 50), 50, reps),
            timed(reps_of(theirs.encode, 50), 50, reps),
            1e3,
        )
    )
    blob_o, blob_t = ours.encode(), theirs.encode()
    rows.append(
        (
            "decode() with 1e6 values",
            "us",
            timed(reps_of(lambda: Histogram.decode(blob_o), 50), 50, reps),
            timed(reps_of(lambda: HdrHistogram.decode(blob_t), 50), 50, reps),
            1e3,
        )
    )
    rows.append(
        (
            "mean + stddev",
            "us",
            timed(reps_of(lambda: (ours.mean, ours.stddev), 50), 50, reps),
            timed(reps_of(lambda: (theirs.get_mean_value(), theirs.get_stddev()), 2), 2, reps),
            1e3,
        )
    )

    print(f"pybus.Histogram vs hdrh.HdrHistogram, {reps} repetitions, median [min - max]")
    print(f"{'case':36} {'unit':4} {'pybus':>28} {'hdrh':>28} {'hdrh/pybus':>11}")
    for name, unit, a, b, scale in rows:
        ratio = statistics.median(b) / statistics.median(a)
        print(f"{name:36} {unit:4} {fmt(a, scale):>28} {fmt(b, scale):>28} {ratio:10.1f}x")
    print(f"encoded size: pybus {len(blob_o)} chars, hdrh {len(blob_t)} chars")


if __name__ == "__main__":
    main()
