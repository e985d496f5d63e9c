"""How long this machine stops running a ready thread: a jHiccup-style meter.

One process per CPU reads the monotonic clock in a tight loop for ``--seconds`` and records
every gap between two readings longer than ``--min-us`` (nothing else of ours runs, so a
gap is time the thread was ready but not running: the hypervisor, the kernel, other
tenants). It prints, per process, the stalls of at least 0.5 / 1 / 2 ms, the longest, and the
share of time lost. A one-way latency p99 cannot be below the stalls that hit 1 % of the
messages, whatever the bus: this is the floor under ``bench_pubsub.py``'s half-max figure.

Run ``python bench/hiccups.py`` (``--seconds 10`` for a longer look).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _spin(seconds: float, min_ns: int) -> list[int]:
    now = time.perf_counter_ns
    end = now() + int(seconds * 1e9)
    gaps: list[int] = []
    last = now()
    while last < end:
        t = now()
        if t - last >= min_ns:
            gaps.append(t - last)
        last = t
    return gaps


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--min-us", type=float, default=100.0, help="shortest gap recorded")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    with mp.get_context("fork").Pool(args.procs) as pool:
        runs = pool.starmap(_spin, [(args.seconds, int(args.min_us * 1000))] * args.procs)
    out = []
    print(f"hiccups over {args.seconds:g} s, {args.procs} spinning processes, "
          f"load average {os.getloadavg()[0]:.2f}:")
    for i, gaps in enumerate(runs):
        row = {
            "stalls_0.5ms": sum(g >= 500_000 for g in gaps),
            "stalls_1ms": sum(g >= 1_000_000 for g in gaps),
            "stalls_2ms": sum(g >= 2_000_000 for g in gaps),
            "max_ms": max(gaps, default=0) / 1e6,
            "lost_pct": 100 * sum(gaps) / (args.seconds * 1e9),
        }
        out.append(row)
        print(f"  process {i}: stalls >= 0.5 ms: {row['stalls_0.5ms']}, >= 1 ms: "
              f"{row['stalls_1ms']}, >= 2 ms: {row['stalls_2ms']}; longest "
              f"{row['max_ms']:.2f} ms; {row['lost_pct']:.2f} % of the time in gaps "
              f">= {args.min_us:g} us")
    return out


if __name__ == "__main__":
    main()
