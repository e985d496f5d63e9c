"""Graceful shutdown on SIGTERM and SIGINT, as Kubernetes and systemd send them.

The first signal asks the running object to stop taking work and finish what it holds (its
``on_stop``); a second one ends the process at once (exit code 128 + signal, the shell's
code for a signal death), without waiting for any cleanup. Handlers are only installed from
the main thread (Python delivers signals there) and the previous handlers come back when the
block ends.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["graceful_signals", "join_within", "STOP_SIGNALS"]

log = logging.getLogger("pybus")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


#: longest uninterrupted wait of a draining main thread (see join_within)
_SLICE_S = 0.1


def join_within(threads: list[threading.Thread], timeout_s: float) -> None:
    """Join ``threads`` within ``timeout_s`` in short slices. A signal the kernel hands to
    another thread does not interrupt the main thread's wait; Python runs its handler (a
    second SIGTERM: exit at once) only when that wait returns, so a drain must never wait
    long in one go."""
    deadline = time.monotonic() + timeout_s
    for t in threads:
        while t.is_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            t.join(min(left, _SLICE_S))


@contextmanager
def graceful_signals(on_stop: Callable[[], None], enabled: bool = True, what: str = "pybus",
                     drain_timeout_s: float | None = None) -> Iterator[list[int]]:
    """Within the block, the first SIGTERM/SIGINT calls ``on_stop()`` (it must only set
    flags and wake threads: it runs in the signal handler) and logs a warning naming
    ``what``; a second ends the process at once. Yields the list of signals received. Outside the
    main thread, or with ``enabled`` False, it installs nothing (the caller stops the object
    itself)."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            on_stop()
            bound = "" if drain_timeout_s is None else f" (up to {drain_timeout_s:g} s)"
            log.warning("%s: %s: stopping gracefully, finishing what is in flight%s; a "
                        "second signal stops at once", what, name, bound)
        else:
            log.warning("%s: second signal (%s): stopping at once", what, name)
            # at once: no cleanup that could wait (a handler thread still holding a ZeroMQ
            # socket would make the context's termination at interpreter exit block)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(128 + signum)

    previous: dict[signal.Signals, Any] = {}
    try:
        for s in STOP_SIGNALS:
            previous[s] = signal.signal(s, handler)
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
