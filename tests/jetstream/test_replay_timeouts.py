"""The two kinds of timeout a sync replay meets, kept apart: nats-py's fetch answering "nothing
came" with a bare ``asyncio.TimeoutError`` (it does when the server's no-messages status and the
end of the wait coincide), and the bound on the private loop, which means the server is gone.
On Python 3.11+ both are the builtin ``TimeoutError``; a replay mistook the first for the second
and ended with "no answer from the NATS server" on a healthy server. A JetStream request that
goes unanswered (opening, or the end-of-replay lookup) is a :class:`pybus.TimeoutError` naming
the request, not nats-py's own class."""

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


class _SilentJetStream:
    """A JetStream context whose every API request goes unanswered (nats-py's own timeout)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getattr__(self, name: str) -> object:
        import nats.errors

        async def unanswered(*args: object, **kwargs: object) -> None:
            self.asked.append(name)
            raise nats.errors.TimeoutError

        return unanswered


class _Conn:
    def __init__(self, js: _SilentJetStream) -> None:
        self.js = js

    def jetstream(self, timeout: float) -> _SilentJetStream:
        return self.js


def _core(follow: bool) -> ReaderCore:
    return ReaderCore(["nats://127.0.0.1:4222"], "orders", "#", from_seq=None, since=None,
                      follow=follow, durable=None, subject_prefix="", batch_messages=8)


def test_an_unanswered_request_while_opening_is_a_pybus_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js = _SilentJetStream()

    async def connect(*args: object, **kwargs: object) -> _Conn:
        return _Conn(js)

    monkeypatch.setattr("pybus.jetstream._log_reader.connect", connect)
    core = _core(follow=False)
    with pytest.raises(pybus.TimeoutError, match=r"did not answer .*'orders'.* within 5"):
        asyncio.run(core.open())
    assert js.asked == ["stream_info"]


def test_an_unanswered_end_lookup_is_a_pybus_timeout() -> None:
    # a non-follow fill that found nothing asks the stream whether anything is left
    js = _SilentJetStream()
    core = _core(follow=False)
    core.nc = _Conn(js)
    core.end_seq = 10
    core.sub = _Sub(TimeoutError())  # type: ignore[assignment]
    with pytest.raises(pybus.TimeoutError, match=r"next message \(stream 'orders'\)"):
        asyncio.run(core.fill(0.05))
    assert js.asked == ["get_msg"] and not core.ended
