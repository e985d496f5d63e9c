"""pybus's pytest plugin (entry point ``pytest11``): the ``bus`` and ``fake_clock`` fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .bus import Bus
from .clock import FakeClock


@pytest.fixture
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    """A :class:`pybus.testing.Bus` for this test: its own context and fresh ``inproc://``
    endpoints; everything made through it is closed when the test ends."""
    with Bus(request.node.name.replace("[", "-").replace("]", "")[:40]) as b:
        yield b


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`pybus.testing.FakeClock` starting at 1000 s."""
    return FakeClock()
