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


# --- exceptions in worker/handler threads fail the test that owns them ------------------

def pytest_configure(config: pytest.Config) -> None:
    # An exception that escapes a thread (threading.excepthook) is an error, not a warning
    # lost in the summary. Added here rather than in pyproject's filterwarnings.
    config.addinivalue_line(
        "filterwarnings", "error::pytest.PytestUnhandledThreadExceptionWarning"
    )


class ThreadFailures:
    """Records exceptions raised by callables run in other threads (handlers, workers).

    ``wrap(fn)`` returns ``fn`` wrapped so that any exception it raises - an ``assert`` in a
    handler, say - is recorded with its thread and traceback, then re-raised so the caller
    (the worker loop) behaves as it would without the wrapper. Exceptions of the types in
    ``expected`` are deliberate (a handler that raises to get a NACK) and are not recorded.
    ``check()`` fails the calling test with every failure recorded so far; the test also
    fails after its body returns, and errors at teardown if a failure is recorded later.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.failures: list[tuple[str, BaseException, str]] = []
        self._reported = 0

    def wrap(self, fn=None, *, expected: tuple[type[BaseException], ...] = ()):
        import functools
        import threading
        import traceback

        def deco(f):
            @functools.wraps(f)
            def wrapper(*args, **kwargs):
                try:
                    return f(*args, **kwargs)
                except expected:
                    raise
                except BaseException as e:
                    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                    with self._lock:
                        self.failures.append((threading.current_thread().name, e, tb))
                    raise

            return wrapper

        return deco if fn is None else deco(fn)

    def check(self) -> None:
        with self._lock:
            new = self.failures[self._reported:]
            self._reported = len(self.failures)
        if new:
            pytest.fail(
                f"{len(new)} exception(s) in other threads:\n\n"
                + "\n".join(f"in thread {name}:\n{tb}" for name, _, tb in new),
                pytrace=False,
            )


@pytest.fixture
def thread_failures():
    tf = ThreadFailures()
    yield tf
    tf.check()  # failures recorded after the test body returned


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield  # when the body raised, its own error is reported (and teardown checks)
    tf = getattr(item, "funcargs", {}).get("thread_failures")
    if tf is not None:
        tf.check()
    return result
