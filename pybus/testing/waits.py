"""Waiting for what a test expects, with a deadline and no fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable

from .._native import Message
from ..pubsub.subscriber import Subscriber

__all__ = ["expect_messages", "wait_until"]


def wait_until(cond: Callable[[], object], timeout_s: float = 5.0, what: str = "") -> None:
    """Return as soon as ``cond()`` is true; fail (AssertionError) after ``timeout_s``.

    Polls with a short, growing interval (1 ms up to 20 ms), so it ends within a few ms of the
    event it waits for instead of after a fixed guess."""
    deadline = time.monotonic() + timeout_s
    interval = 0.001
    while not cond():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"not true within {timeout_s} s: {what or cond!r}")
        time.sleep(min(interval, left))
        interval = min(interval * 2, 0.02)


def expect_messages(sub: Subscriber, n: int, timeout_s: float = 5.0) -> list[Message]:
    """Exactly the next ``n`` messages ``sub`` receives; fails (AssertionError, saying how many
    came) if they have not all arrived within ``timeout_s``. Blocks in the subscriber's own
    receive, so it returns the moment the last one is there."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            topics = sorted({m.topic for m in out})
            raise AssertionError(
                f"expected {n} messages within {timeout_s} s, got {len(out)} (topics: {topics})")
        out += sub.recv_batch(n - len(out), timeout=left)
    return out
