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


def drain_until(
    sub: pybus.Subscriber, last: Callable[[pybus.Message], bool], timeout: float = 30.0
) -> list[pybus.Message]:
    """Messages from ``sub`` up to and including the first one for which ``last(m)`` is true.

    For a marker published after everything the test expects: the wait ends on an event, not
    after a fixed time. Fails the test if the marker has not arrived after ``timeout`` seconds.
    Reads in batches, so a message after the marker (if one is already queued) may be read
    too: it is returned as well.
    """
    out: list[pybus.Message] = []
    deadline = time.monotonic() + timeout
    while True:
        batch = sub.recv_batch(10_000, timeout=0.05)
        out += batch
        if any(last(m) for m in batch):
            return out
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"the end marker did not arrive within {timeout}s ({len(out)} messages read)"
            )


def read_through_marker(
    pub: pybus.Publisher,
    sub: pybus.Subscriber,
    topic: str,
    timeout: float = 30.0,
    quiet: float = 0.2,
) -> tuple[list[pybus.Message], int]:
    """Read ``sub`` until the last marker ``pub`` published on ``topic`` has arrived.

    For a subscriber whose queues overflowed: a marker can itself be dropped at a high-water
    mark, so another one (payload ``b"marker-<k>"``) is published each time ``sub`` has been
    quiet for ``quiet`` seconds. It returns ``(messages read, markers published)`` once the
    latest marker was read: ordering on the connection then says that every message
    published before it was either received or dropped (and counted lost by ``sub``), and
    nothing was published after it. ``quiet`` only paces the markers; the result does not
    depend on it. Fails the test after ``timeout`` seconds; a ``SlowConsumerError`` from
    ``sub`` propagates.
    """
    out: list[pybus.Message] = []
    deadline = time.monotonic() + timeout
    k = 0
    while time.monotonic() < deadline:
        marker = b"marker-%d" % k
        pub.publish(topic, marker)
        pub.flush()
        k += 1
        while time.monotonic() < deadline:
            batch = sub.recv_batch(10_000, timeout=quiet)
            out += batch
            if any(m.raw_payload == marker for m in batch):
                assert out[-1].raw_payload == marker, "a message after the last marker"
                return out, k
            if not batch:
                break  # quiet: that marker was dropped (or is late); publish another
    raise AssertionError(f"no marker arrived within {timeout}s ({len(out)} messages read)")


class TimeStub:
    """A stand-in for the ``time`` module inside one module under test.

    ``monkeypatch.setattr(pybus.subscriber, "time", TimeStub(time_ns=fake))`` changes the clock
    that module reads through ``time.<name>`` and nothing else: every other attribute, and the
    ``time`` module itself everywhere else, stay the real ones.
    """

    def __init__(self, **overrides: Callable[..., object]) -> None:
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)
