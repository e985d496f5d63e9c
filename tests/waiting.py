"""Bounded waits shared by the socket tests: poll a condition, drain a subscriber."""

from __future__ import annotations

import time
from collections.abc import Callable

import pybus


def until(cond: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """True as soon as ``cond()`` is; False if it is still false after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def drain(sub: pybus.Subscriber, n: int, timeout: float = 10.0) -> list[pybus.Message]:
    """Up to ``n`` messages from ``sub``, waiting at most ``timeout`` seconds in all."""
    out: list[pybus.Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += sub.recv_batch(n - len(out), timeout=max(0.01, deadline - time.monotonic()))
    return out
