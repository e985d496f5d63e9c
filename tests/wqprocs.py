"""Child-process entry points for the work-queue fault tests (importable under spawn)."""

from __future__ import annotations

import os
import signal
import struct
import time


def worker_proc(endpoint: str, record_path: str, prefetch: int, work_s: float) -> None:
    """A Worker that appends each handled message id (u64) to ``record_path``.

    Payloads starting with b"poison" raise. The write happens before the handler returns,
    so a message recorded here was processed even if its ack never left.
    """
    from pybus import Worker

    fd = os.open(record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def handler(m):  # type: ignore[no-untyped-def]
        if m.payload.startswith(b"poison"):
            raise ValueError("poison payload")
        if work_s:
            time.sleep(work_s)  # the work itself
        os.write(fd, struct.pack("<Q", m.seq))

    w = Worker(endpoint, handler, prefetch=prefetch, heartbeat_interval_s=0.1)
    signal.signal(signal.SIGTERM, lambda *a: w.stop())
    w.run()


def producer_proc(endpoint: str, journal: str, n: int, conn) -> None:  # type: ignore[no-untyped-def]
    """Put ``n`` messages on a journaled queue, reporting each id once put() returned;
    then wait to be killed."""
    from pybus import WorkQueue

    q = WorkQueue(endpoint, journal=journal, heartbeat_interval_s=0.1)
    conn.send(("ready", q.endpoint))
    for i in range(n):
        mid = q.put("prod.t", b"m%d" % i)
        conn.send(mid)
    conn.send("all put")
    time.sleep(60)  # killed long before this


def read_ids(path: str) -> list[int]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    n = len(data) // 8
    return list(struct.unpack(f"<{n}Q", data[: n * 8]))


def keyed_worker_proc(endpoint: str, log_path: str, work_s: float) -> None:
    """A Worker (4 handler threads) whose handler logs ``S key seq t`` on starting and
    ``E key seq t`` on finishing a ``key:seq`` payload, ``t`` on CLOCK_MONOTONIC (one clock
    for every process), each line in one append write (a SIGKILL loses no line)."""
    from pybus import Worker

    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def handler(m):  # type: ignore[no-untyped-def]
        key, seq = m.payload.split(b":")
        os.write(fd, b"S %s %s %d\n" % (key, seq, time.monotonic_ns()))
        time.sleep(work_s)
        os.write(fd, b"E %s %s %d\n" % (key, seq, time.monotonic_ns()))

    w = Worker(endpoint, handler, concurrency=4, prefetch=64, heartbeat_interval_s=0.1)
    w.run()


def idempotent_worker_proc(endpoint: str, store_path: str, log_path: str) -> None:
    """A Worker whose handler commits its effect (a row per handling) in the idempotency
    store's transaction. A payload starting with b"die" SIGKILLs the process right after the
    commit, before the ack can leave. Each handler start is logged as ``msgkey t``."""
    from pybus import Worker
    from pybus.workqueue.idempotency import SQLiteIdempotency, message_key

    store = SQLiteIdempotency(store_path)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def handler(m):  # type: ignore[no-untyped-def]
        os.write(fd, b"%s %d\n" % (message_key(m).encode(), time.time_ns()))
        with store.transaction() as db:
            db.execute("INSERT INTO effects (msg, at_ns) VALUES (?, ?)",
                       (message_key(m), time.time_ns()))
        if m.payload.startswith(b"die"):
            os.kill(os.getpid(), signal.SIGKILL)

    w = Worker(endpoint, handler, concurrency=2, prefetch=32, heartbeat_interval_s=0.1,
               idempotency=store)
    w.run()


def priority_producer_proc(endpoint: str, journal: str, prios: list[int], conn) -> None:  # type: ignore[no-untyped-def]
    """Put one message per entry of ``prios`` (payload ``prio:index``) on a journaled queue,
    no worker connected, then report and wait to be killed."""
    from pybus import WorkQueue

    q = WorkQueue(endpoint, journal=journal, heartbeat_interval_s=0.1)
    for i, p in enumerate(prios):
        q.put("prio.t", b"%d:%d" % (p, i), priority=p)
    conn.send("all put")
    time.sleep(60)  # killed long before this


def logging_worker_proc(endpoint: str, log_path: str, prefetch: int, work_s: float) -> None:
    """One handler thread; logs ``payload delivery`` for each message as it starts it."""
    from pybus import Worker

    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def handler(m):  # type: ignore[no-untyped-def]
        os.write(fd, b"%s %d\n" % (m.payload, m.publisher_id))
        time.sleep(work_s)

    Worker(endpoint, handler, prefetch=prefetch, heartbeat_interval_s=0.1).run()
