"""A clock for tests: time that moves only when a test moves it, or when code sleeps on it."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Monotonic seconds that advance only through :meth:`advance`, :meth:`sleep` or
    :meth:`asleep` (every sleep is recorded in :attr:`sleeps`).

    Pass it where pybus takes a clock: ``RetryPolicy(clock=c, sleep=c.sleep, asleep=c.asleep)``,
    ``CircuitBreaker(clock=c)``; a retried call then runs at once and the test reads the delays
    it would have waited from ``c.sleeps``.
    """

    def __init__(self, start_s: float = 1000.0) -> None:
        # not 0: code under test must not treat time 0 as "never" (a freshly booted machine's
        # monotonic clock is near 0, and a test starting at 0 would hide that bug)
        self.now = float(start_s)
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"negative sleep: {seconds}")
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
