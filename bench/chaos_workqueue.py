"""Work-queue chaos run: SIGKILL a worker process every KILL_S seconds while N messages flow.

Two worker processes (dedupe window on) handle N 64-byte messages; every ``--kill-every``
seconds one of them is killed with SIGKILL and a fresh one is started. Each worker appends
the id of every message it handled to a file of its own *before* its handler returns, so
the files are an independent record of what was processed. At the end:

* lost       = ids put but found in no record file (the bar: 0);
* duplicates = records beyond the first per id (messages handled by a worker that was killed
  before its ack left, then redelivered to another one);
* the queue's own counters (workers_lost, redelivered, duplicates reported by workers).

Usage::

    .venv/bin/python bench/chaos_workqueue.py [--n 1000000] [--kill-every 2.0] [--journal]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import struct
import tempfile
import time
from collections import Counter

SPAWN = mp.get_context("spawn")


def worker(endpoint: str, record: str) -> None:
    from pybus import Worker

    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    pack = struct.Struct("<Q").pack

    def handler(m):  # type: ignore[no-untyped-def]
        os.write(fd, pack(m.seq))

    Worker(endpoint, handler, prefetch=1024, dedupe_window=100_000,
           heartbeat_interval_s=0.1).run()


def read_ids(path: str) -> list[int]:
    with open(path, "rb") as f:
        data = f.read()
    n = len(data) // 8
    return list(struct.unpack(f"<{n}Q", data[: n * 8]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--kill-every", type=float, default=2.0)
    ap.add_argument("--journal", action="store_true")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()

    from pybus import WorkQueue

    tmp = tempfile.mkdtemp(prefix="pbwqc")
    records: list[str] = []
    procs: list[mp.process.BaseProcess] = []
    q = WorkQueue(f"ipc://{tmp}/q", journal=os.path.join(tmp, "j.db") if args.journal else None,
                  heartbeat_interval_s=0.1, heartbeat_liveness=3)

    def spawn() -> None:
        rec = os.path.join(tmp, f"w{len(records)}.ids")
        records.append(rec)
        p = SPAWN.Process(target=worker, args=(q.endpoint, rec))
        p.start()
        procs.append(p)

    try:
        spawn()
        spawn()
        t0 = time.monotonic()
        ids: list[int] = []
        chunk = [("chaos.t", b"x" * 64)] * 1000
        kills = 0
        next_kill = t0 + args.kill_every
        for _ in range(args.n // 1000):
            ids += q.put_many(chunk)
            if time.monotonic() >= next_kill:
                victim = [p for p in procs if p.is_alive()][0]
                os.kill(victim.pid, signal.SIGKILL)
                victim.join(5)
                kills += 1
                spawn()
                next_kill += args.kill_every
        while not q.join(0.1):
            if time.monotonic() - t0 > args.timeout:
                raise SystemExit(f"join timed out: {q.stats()}")
            if time.monotonic() >= next_kill:
                victim = [p for p in procs if p.is_alive()][0]
                os.kill(victim.pid, signal.SIGKILL)
                victim.join(5)
                kills += 1
                spawn()
                next_kill += args.kill_every
        elapsed = time.monotonic() - t0
        stats = q.stats()
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join(5)
        q.close()
    counts: Counter[int] = Counter()
    for r in records:
        if os.path.exists(r):
            counts.update(read_ids(r))
    shutil.rmtree(tmp, ignore_errors=True)
    lost = sum(1 for i in ids if i not in counts)
    dups = sum(c - 1 for c in counts.values() if c > 1)
    print(f"chaos: N={len(ids):,} journal={args.journal} kill every {args.kill_every}s, "
          f"{kills} SIGKILLs, {elapsed:.1f}s ({len(ids) / elapsed / 1e3:.0f}k msg/s acked)")
    print(f"lost={lost} duplicates_handled={dups} workers_lost={stats['workers_lost']} "
          f"redelivered={stats['redelivered']} duplicates_reported={stats['duplicates']} "
          f"decode_errors={stats['decode_errors']}")
    if lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
