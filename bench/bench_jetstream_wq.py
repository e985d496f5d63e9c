"""The work queue on JetStream, side by side in one run (issue 14 item 6): pybus's
``js.WorkQueue`` + ``js.Worker`` against bare nats-py JetStream (publish, pull, ack) on the same
server, and against pybus's SQLite work queue.

Each case puts N tasks of 64 bytes (one producer, each put waiting for its stored ack, as a
producer that must not lose a task does) and then drains them with one worker whose handler
does nothing; it reports put/s and handled/s. A fresh one-node nats-server (file storage, in a
temp dir) serves the JetStream cases; cases are interleaved over the repetitions.

handled/s is timed from a ready consumer (bare: its pull subscription made on the open
connection; pybus: the Worker attached, on the connection it opened) to the last ack (pybus:
the queue's ``join``, which polls the server every 5 ms, returning).

Usage: ``python bench/bench_jetstream_wq.py [--n 20000] [--reps 5]`` (needs ``nats-server``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import pybus
import pybus.jetstream as js

PAYLOAD = b"x" * 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(store: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                             store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)  # the server's port opening is the only sign it is up
    proc.kill()
    raise SystemExit("nats-server did not start")


def bare_nats(url: str, n: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        import nats
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig

        nc = await nats.connect(url)
        j = nc.jetstream()
        stream = f"bare{uuid.uuid4().hex[:8]}"
        await j.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"],
                                        retention=RetentionPolicy.WORK_QUEUE,
                                        storage=StorageType.FILE))
        t0 = time.perf_counter()
        for _ in range(n):
            await j.publish(f"{stream}.t", PAYLOAD, headers={"Nats-Msg-Id": uuid.uuid4().hex})
        t1 = time.perf_counter()
        psub = await j.pull_subscribe(f"{stream}.>", durable="w", stream=stream)
        t_ready = time.perf_counter()  # the consumer is ready: its connection was already open
        got = 0
        while got < n:
            for m in await psub.fetch(min(64, n - got), timeout=10):
                await m.ack()
                got += 1
        t2 = time.perf_counter()
        await nc.close()
        return n / (t1 - t0), n / (t2 - t_ready)

    return asyncio.run(main())


def pybus_js(url: str, n: int) -> tuple[float, float]:
    stream = f"pyb{uuid.uuid4().hex[:8]}"
    with js.WorkQueue(url, stream=stream, registry=False) as q:
        t0 = time.perf_counter()
        for _ in range(n):
            q.put("t.x", PAYLOAD)
        t1 = time.perf_counter()
        w = js.Worker(url, lambda m: None, stream=stream, registry=False).start()
        try:
            assert w.wait_ready(30)  # its own connection is open: the clock starts (as bare)
            t_ready = time.perf_counter()
            assert q.join(timeout=300)
            t2 = time.perf_counter()
        finally:
            w.stop()
    return n / (t1 - t0), n / (t2 - t_ready)


def pybus_js_async(url: str, n: int) -> tuple[float, float]:
    """The asyncio twin puts in the caller's loop (as bare nats-py does); the same Worker."""
    stream = f"pya{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[float, float]:
        async with js.AsyncWorkQueue(url, stream=stream, registry=False) as q:
            t0 = time.perf_counter()
            for _ in range(n):
                await q.put("t.x", PAYLOAD)
            t1 = time.perf_counter()
            w = js.Worker(url, lambda m: None, stream=stream, registry=False).start()
            try:
                assert w.wait_ready(30)  # its own connection is open: the clock starts
                t_ready = time.perf_counter()
                assert await q.join(timeout=300)
                t2 = time.perf_counter()
            finally:
                w.stop()
        return n / (t1 - t0), n / (t2 - t_ready)

    return asyncio.run(main())


def pybus_sqlite(n: int) -> tuple[float, float]:
    d = tempfile.mkdtemp()
    try:
        with pybus.WorkQueue("tcp://127.0.0.1:*", journal=os.path.join(d, "j.db"),
                             registry=False) as q:
            t0 = time.perf_counter()
            for _ in range(n):
                q.put("t.x", PAYLOAD)
            t1 = time.perf_counter()
            with pybus.Worker(q.endpoint, lambda m: None, registry=False):
                assert q.join(timeout=300)
                t2 = time.perf_counter()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return n / (t1 - t0), n / (t2 - t1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    store = tempfile.mkdtemp()
    proc, url = _server(store)
    cases = {"bare nats-py JetStream": lambda: bare_nats(url, a.n),
             "pybus js.WorkQueue/Worker": lambda: pybus_js(url, a.n),
             "pybus js.AsyncWorkQueue/Worker": lambda: pybus_js_async(url, a.n),
             "pybus WorkQueue (SQLite journal)": lambda: pybus_sqlite(a.n)}
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    try:
        for _ in range(a.reps):
            for name, fn in cases.items():
                res[name].append(fn())
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(store, ignore_errors=True)
    base = res["bare nats-py JetStream"]
    bp, bc = statistics.median(x[0] for x in base), statistics.median(x[1] for x in base)
    print(f"N = {a.n} tasks of 64 B, {a.reps} repetitions, medians [min - max]\n")
    print("| case | put/s | vs bare | handled/s | vs bare |")
    print("| --- | --- | --- | --- | --- |")
    for name, xs in res.items():
        p = [x[0] for x in xs]
        c = [x[1] for x in xs]
        print(f"| {name} | {statistics.median(p):,.0f} [{min(p):,.0f} - {max(p):,.0f}] | "
              f"{statistics.median(p) / bp:.2f}x | {statistics.median(c):,.0f} "
              f"[{min(c):,.0f} - {max(c):,.0f}] | {statistics.median(c) / bc:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
