"""Work-queue throughput, acked end to end, side by side with a plain pyzmq pipeline.

Each configuration moves N 64-byte messages from a producer (this process) to 2 worker
processes and back:

* ``wq``          pybus WorkQueue -> 2 pybus Worker processes (no-op handler), batched acks;
                  timed from the first put() to join() returning (every message acked);
* ``wq+journal``  the same with ``journal=`` (SQLite WAL, put_many in chunks: one
                  transaction per chunk; acked messages deleted in batches);
* ``push/pull``   plain pyzmq: PUSH -> 2 PULL worker processes, each PUSHes the 8-byte
                  message id back to a PULL sink in this process (one zmq message each way
                  per message); timed from the first send to the last result received.

Every figure is the median of REPS repetitions with min and max, after one discarded warm-up
repetition. The repetitions of the configurations are interleaved so drift hits all alike.

Usage::

    .venv/bin/python bench/bench_workqueue.py [--n 300000] [--reps 5] [--transport ipc]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time

import zmq

SPAWN = mp.get_context("spawn")
PAYLOAD = b"x" * 64
CHUNK = 1000


# ---------------------------------------------------------------- pybus workers


def wq_worker(endpoint: str, prefetch: int) -> None:
    from pybus import Worker

    w = Worker(endpoint, lambda m: None, prefetch=prefetch)
    w.run()


# ---------------------------------------------------------------- pyzmq pipeline


def zmq_worker(src: str, sink: str) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(src)
    push = ctx.socket(zmq.PUSH)
    push.connect(sink)
    recv = pull.recv
    send = push.send
    while True:
        m = recv()
        if m == b"STOP":
            break
        send(m[:8])  # the "ack": the message id
    pull.close(0)
    push.close(1000)
    ctx.term()


class PushPull:
    def __init__(self, base: str) -> None:
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.src = f"{base}-src"
        self.push.bind(self.src)
        self.sink = self.ctx.socket(zmq.PULL)
        self.sink.linger = 0
        self.sink_ep = f"{base}-sink"
        self.sink.bind(self.sink_ep)
        self.procs = [SPAWN.Process(target=zmq_worker, args=(self.src, self.sink_ep))
                      for _ in range(2)]
        for p in self.procs:
            p.start()

    def run(self, n: int) -> float:
        got = [0]

        def drain() -> None:
            recv = self.sink.recv
            for _ in range(n):
                recv()
            got[0] = n

        t = threading.Thread(target=drain)
        t0 = time.perf_counter()
        t.start()
        send = self.push.send
        pack = struct.Struct("<Q").pack
        body = PAYLOAD[8:]
        for i in range(n):
            send(pack(i) + body)
        t.join(120)
        dt = time.perf_counter() - t0
        assert got[0] == n, "push/pull lost messages"
        return n / dt

    def close(self) -> None:
        for _ in self.procs:
            self.push.send(b"STOP")
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        self.push.close()
        self.sink.close()
        self.ctx.term()


class WQ:
    def __init__(self, endpoint: str, journal: str | None, prefetch: int) -> None:
        from pybus import WorkQueue

        self.q = WorkQueue(endpoint, journal=journal)
        self.procs = [SPAWN.Process(target=wq_worker, args=(self.q.endpoint, prefetch))
                      for _ in range(2)]
        for p in self.procs:
            p.start()
        deadline = time.monotonic() + 60
        while self.q.stats()["workers"] < 2:  # both HELLOs processed
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not register")
            time.sleep(0.01)

    def run(self, n: int) -> float:
        q = self.q
        items = [("bench.t", PAYLOAD)] * CHUNK
        acked0 = q.stats()["acked"]
        t0 = time.perf_counter()
        for _ in range(n // CHUNK):
            q.put_many(items)
        if not q.join(120):
            raise RuntimeError(f"join timed out: {q.stats()}")
        dt = time.perf_counter() - t0
        assert q.stats()["acked"] - acked0 == n
        return n / dt

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        self.q.close()


def fmt(x: float) -> str:
    return f"{x / 1e3:,.0f}k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300_000, help="messages per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    ap.add_argument("--prefetch", type=int, default=2048)
    ap.add_argument("--only", default="wq,wq+journal,push/pull")
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    n = args.n // CHUNK * CHUNK
    tmp = tempfile.mkdtemp(prefix="pbwqb")
    try:
        def ep(name: str) -> str:
            if args.transport == "ipc":
                return f"ipc://{tmp}/{name}"
            return "tcp://127.0.0.1:*"

        setups = {}
        names = args.only.split(",")
        if "wq" in names:
            setups["wq"] = WQ(ep("wq"), None, args.prefetch)
        if "wq+journal" in names:
            setups["wq+journal"] = WQ(ep("wqj"), os.path.join(tmp, "j.db"), args.prefetch)
        if "push/pull" in names:
            base = f"ipc://{tmp}/pp" if args.transport == "ipc" else None
            if base is None:
                raise SystemExit("push/pull baseline: use --transport ipc")
            setups["push/pull"] = PushPull(base)
        results: dict[str, list[float]] = {k: [] for k in setups}
        for s in setups.values():  # warm-up, discarded
            s.run(min(n, 50_000))
        for _ in range(args.reps):
            for k, s in setups.items():
                results[k].append(s.run(n))
        for s in setups.values():
            s.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nwork queue, {len(PAYLOAD)}-B messages, 2 worker processes, {args.transport}, "
          f"N={n:,} per rep, {args.reps} reps (median [min..max]), acked end to end")
    print(f"{'config':<12} {'median':>9} {'min':>9} {'max':>9}  vs push/pull")
    base = statistics.median(results["push/pull"]) if "push/pull" in results else None
    for k, v in results.items():
        med = statistics.median(v)
        ratio = f"{med / base:.2f}x" if base else "-"
        print(f"{k:<12} {fmt(med):>9} {fmt(min(v)):>9} {fmt(max(v)):>9}  {ratio}")
    bars = {"wq": 300_000, "wq+journal": 100_000}
    for k, bar in bars.items():
        if k in results:
            med = statistics.median(results[k])
            print(f"bar {k}: >= {fmt(bar)} msg/s -> {'met' if med >= bar else 'NOT met'}")
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]} pyzmq={zmq.__version__} "
          f"libzmq={zmq.zmq_version()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": n, "reps": args.reps, "transport": args.transport,
                       "msg_per_s": results}, f, indent=1)


if __name__ == "__main__":
    main()
