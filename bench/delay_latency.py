"""How late delayed work-queue messages are handed to an idle worker (issue 15's bar: never
early, and on time within 50 ms at idle).

One WorkQueue (SQLite journal in a temp dir) and one Worker on tcp loopback; each repetition
puts N messages with delays spread over 0.05-0.5 s, one at a time, and the handler records the
wall clock when it gets each one. Lateness = handled at - due; reported as median, p99 and max
per repetition (ms), and the count handed out early (must be 0).

Usage: ``python bench/delay_latency.py [--n 200] [--reps 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import pybus


def one_run(n: int) -> tuple[float, float, float, int]:
    due: dict[int, int] = {}
    got: dict[int, int] = {}
    lock = threading.Lock()
    done = threading.Event()

    def handle(msg: pybus.Message) -> None:
        with lock:
            got[msg.seq] = time.time_ns()
            if len(got) == n:
                done.set()

    with tempfile.TemporaryDirectory() as d, \
            pybus.WorkQueue("tcp://127.0.0.1:*", journal=os.path.join(d, "j.db"),
                            registry=False) as q, \
            pybus.Worker(q.endpoint, handle, registry=False):
        for i in range(n):
            delay = 0.05 + (i % 10) * 0.05
            at = time.time_ns() + int(delay * 1e9)
            due[q.put("late.t", i, not_before=at / 1e9)] = at
        if not done.wait(30):
            raise SystemExit(f"only {len(got)} of {n} delivered")
    late_ms = sorted((got[m] - due[m]) / 1e6 for m in due)
    early = sum(1 for x in late_ms if x < 0)
    return (statistics.median(late_ms), late_ms[int(len(late_ms) * 0.99) - 1], late_ms[-1],
            early)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    runs = [one_run(a.n) for _ in range(a.reps)]
    for name, k in (("median", 0), ("p99", 1), ("max", 2)):
        xs = [r[k] for r in runs]
        print(f"lateness {name:>6}: {statistics.median(xs):7.2f} ms  "
              f"[{min(xs):.2f} - {max(xs):.2f}] over {a.reps} runs of {a.n}")
    print(f"handed out early: {sum(r[3] for r in runs)}")


if __name__ == "__main__":
    main()
