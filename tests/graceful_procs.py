"""Child processes for the graceful-shutdown tests: they run until a real SIGTERM."""

from __future__ import annotations

import logging
import os
import struct
import sys
import time


def worker_until_sigterm(endpoint: str, record_path: str, work_s: float,
                         drain_timeout_s: float) -> None:
    """A Worker (4 handler threads) that appends each handled message id (u64) to
    ``record_path`` after its work and before returning; ``run()`` handles SIGTERM itself."""
    from pybus import Worker

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    fd = os.open(record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def handler(m):  # type: ignore[no-untyped-def]
        time.sleep(work_s)  # the work itself
        os.write(fd, struct.pack("<Q", m.seq))

    Worker(endpoint, handler, concurrency=4, prefetch=64, heartbeat_interval_s=0.1,
           drain_timeout_s=drain_timeout_s, registry=False).run()


if __name__ == "__main__":  # python graceful_procs.py ENDPOINT RECORD WORK_S DRAIN_S
    worker_until_sigterm(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
