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
