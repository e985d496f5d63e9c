"""The two kinds of timeout a sync replay meets, kept apart: nats-py's fetch answering "nothing
came" with a bare ``asyncio.TimeoutError`` (it does when the server's no-messages status and the
end of the wait coincide), and the bound on the private loop, which means the server is gone.
On Python 3.11+ both are the builtin ``TimeoutError``; a replay mistook the first for the second
and ended with "no answer from the NATS server" on a healthy server."""

from __future__ import annotations

import asyncio
import threading

import pytest

import pybus
from pybus.jetstream._log_reader import ReaderCore
from pybus.jetstream._runner import LoopThread

pytestmark = pytest.mark.timeout(60)


async def _raise_bare_timeout() -> None:
    raise TimeoutError


def test_a_timeout_raised_by_the_coroutine_is_not_the_loops_bound() -> None:
    loop = LoopThread("test-runner")
    try:
        with pytest.raises(TimeoutError) as got:
            loop.run(_raise_bare_timeout(), 30.0)
        assert not isinstance(got.value, pybus.TimeoutError)  # the coroutine's own, unchanged
        with pytest.raises(pybus.TimeoutError, match="no answer from the NATS server"):
            loop.run(asyncio.sleep(30), 0.05)
        assert loop.run(asyncio.sleep(0, "done"), 5.0) == "done"  # the loop still works
    finally:
        loop.close()


class _Sub:
    """A pull subscription whose fetch finds nothing, ending the way nats-py sometimes does."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.fetches = 0

    async def fetch(self, batch: int, timeout: float) -> list[object]:
        self.fetches += 1
        raise self.exc


@pytest.mark.parametrize("exc", [TimeoutError(), "nats"])
def test_a_fetch_that_found_nothing_is_an_empty_fill(exc: object) -> None:
    import nats.errors

    core = ReaderCore(["nats://127.0.0.1:4222"], "s", "#", from_seq=None, since=None,
                      follow=True, durable=None, subject_prefix="", batch_messages=8)
    core.sub = _Sub(nats.errors.TimeoutError() if exc == "nats" else exc)  # type: ignore[arg-type]
    loop = LoopThread("test-fill")
    try:
        loop.run(core.fill(0.05), 10.0)  # no exception: nothing came
        assert core.sub.fetches == 1 and not core.buffer and not core.ended
    finally:
        loop.close()
    assert not any(t.name == "test-fill" and t.is_alive() for t in threading.enumerate())
