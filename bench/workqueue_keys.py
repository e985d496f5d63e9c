"""Keyed against unkeyed work-queue throughput in the same run (issue 15's bar: with 1,000 keys
and 8 workers, keyed >= 0.7x unkeyed).

One WorkQueue on ipc and 8 Worker processes (no-op handlers). Each repetition puts N messages
one ``put`` at a time, either with ``key=`` cycling over K keys or with no key, and times from
the first put to ``join()`` (every message acked). The two cases alternate within each
repetition, so machine noise falls on both; reported: median msgs/s [min - max] of each, and
the median of the per-repetition ratios.

Usage: ``python bench/workqueue_keys.py [--n 100000] [--keys 1000] [--workers 8] [--reps 5]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import pybus


def _worker(endpoint: str) -> None:
    pybus.Worker(endpoint, lambda m: None, registry=False).run()


def one_run(q: pybus.WorkQueue, n: int, keys: list[str] | None) -> float:
    t0 = time.perf_counter()
    put = q.put
    if keys is None:
        for _ in range(n):
            put("bench.k", b"x")
    else:
        k = len(keys)
        for i in range(n):
            put("bench.k", b"x", key=keys[i % k])
    if not q.join(timeout=300):
        raise SystemExit(f"not all acked: {q.stats()}")
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    keys = [f"customer-{i}" for i in range(a.keys)]
    spawn = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="pbkb") as d, \
            pybus.WorkQueue(f"ipc://{d}/q", registry=False) as q:
        procs = [spawn.Process(target=_worker, args=(q.endpoint,), daemon=True)
                 for _ in range(a.workers)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 60
        while q.stats()["workers"] < a.workers:
            if time.monotonic() > deadline:
                raise SystemExit("the workers did not connect within 60 s")
            time.sleep(0.05)
        one_run(q, min(a.n, 10_000), keys)  # warm-up, not reported
        plain, keyed = [], []
        for r in range(a.reps):
            first, second = (keys, None) if r % 2 else (None, keys)
            x = one_run(q, a.n, first)
            y = one_run(q, a.n, second)
            (keyed if first else plain).append(x)
            (keyed if second else plain).append(y)
        for p in procs:
            p.kill()
    ratios = [k / p for k, p in zip(keyed, plain, strict=True)]
    print(f"{a.n:,} messages per repetition, {a.workers} workers, {a.reps} repetitions, "
          f"pid {os.getpid()}")
    for name, xs in (("unkeyed", plain), (f"{a.keys:,} keys", keyed)):
        print(f"  {name:>11}: {statistics.median(xs):10,.0f} msg/s  "
              f"[{min(xs):,.0f} - {max(xs):,.0f}]")
    print(f"  keyed / unkeyed: {statistics.median(ratios):.2f}x  "
          f"[{min(ratios):.2f} - {max(ratios):.2f}]  (bar >= 0.7x)")


if __name__ == "__main__":
    main()
