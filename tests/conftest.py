"""Shared test helpers: a fake monotonic clock whose sleep advances time."""

from __future__ import annotations

import pytest


class FakeClock:
    """Time that moves only when slept on; records every sleep."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"negative sleep {seconds}"
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def pytest_addoption(parser: pytest.Parser) -> None:
    # tests/test_multihost.py and tests/test_fuzz_sockets.py: run the full bars
    parser.addoption("--long", action="store_true", default=False,
                     help="run fault and fuzz tests at full size (slow); also PYBUS_LONG=1")
