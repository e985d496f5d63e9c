"""A JetStream worker process for the fault tests: logs ``start <i>`` before and ``done <i>``
after handling task ``i`` (the payload's ``i``), flushed per line, so a SIGKILL leaves an exact
record of what it had started and finished."""

from __future__ import annotations

import sys
import threading
import time

import pybus.jetstream as js


def main() -> None:
    servers, stream, log_path, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def handle(msg) -> None:  # type: ignore[no-untyped-def]
        i = msg.payload["i"]
        with lock:
            log.write(f"start {i}\n")
        time.sleep(0.002)  # a task takes a moment, so some are in flight at any time
        with lock:
            log.write(f"done {i}\n")

    w = js.Worker(servers, handle, stream=stream, concurrency=concurrency, registry=False)
    w.start()
    assert w.wait_ready(30)
    print("ready", flush=True)
    w.run()  # until SIGTERM (or SIGKILL, which is the point)


if __name__ == "__main__":
    main()
