"""The subscriber's cost per frame when every frame holds one message (a burst over many topics).

One process, inproc: a Publisher sends ``--per`` rounds over ``--topics`` topics (one message
per topic per round, so each frame carries one message), flushes, and only then a Subscriber
reads everything with ``recv_batch``; the reading alone is timed and divided by the frames the
subscriber counted. Reported: median microseconds per frame [min - max] over the repetitions.
Run it with two installs' Pythons, alternating, to compare versions (a 2-core VM is noisy).

Usage: ``python bench/read_many_topics.py [--topics 2000] [--per 10] [--reps 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import pybus


def once(topics: int, per: int) -> float:
    """Microseconds per frame for one burst of ``topics`` x ``per`` one-message frames."""
    ep = f"inproc://many-topics-{uuid.uuid4().hex[:8]}"
    n = topics * per
    with pybus.Publisher(ep, registry=False, sndhwm=4 * n) as pub, \
            pybus.Subscriber(ep, ["mt.#"], registry=False, rcvhwm=4 * n) as sub:
        if pub.wait_for_subscribers(1, timeout=10) < 1:
            raise SystemExit("the subscriber did not arrive within 10 s")
        names = [f"mt.t{i}" for i in range(topics)]
        for _ in range(per):
            for t in names:
                pub.publish(t, b"x" * 64)
        pub.flush(timeout=60)
        # inproc: a frame sent is queued at the subscriber's socket at once (no I/O thread),
        # so after the flush every frame waits there and only the reading is timed
        deadline = time.monotonic() + 30
        got = 0
        t0 = time.perf_counter()
        while got < n:
            got += len(sub.recv_batch(65_536, timeout=5))
            if time.monotonic() > deadline:
                raise SystemExit(f"only {got} of {n} messages arrived within 30 s")
        dt = time.perf_counter() - t0
        frames = sub.stats()["batches"]
    return dt / frames * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--per", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    res = [once(args.topics, args.per) for _ in range(args.reps)]
    print(f"us per frame: median {statistics.median(res):.2f} "
          f"[{min(res):.2f} - {max(res):.2f}] ({args.topics} topics x {args.per}, "
          f"{args.reps} reps, pybus {pybus.__version__})")


if __name__ == "__main__":
    main()
