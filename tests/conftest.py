"""Shared test helpers: the leak guard, the fake clock fixture, thread failures."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import leakcheck  # noqa: E402

from pybus.testing import FakeClock  # noqa: E402

leakcheck.install()


# --- no test leaves a socket, context, thread or child process open ---------------------

@pytest.fixture(autouse=True)
def _leak_guard(request: pytest.FixtureRequest):
    """Fail (error at teardown) a test that leaves open a ZeroMQ socket or context, a pybus or
    non-daemon thread, or a child process it created (see tests/leakcheck.py).

    Autouse and defined in the root conftest, it is set up before every other function-scoped
    fixture of the test, so its teardown runs after theirs: what they close is not a leak.
    Opt out with ``@pytest.mark.leaks_ok("reason")``.
    """
    marker = request.node.get_closest_marker("leaks_ok")
    if marker is not None:
        reason = marker.args[0] if marker.args else marker.kwargs.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            pytest.fail("@pytest.mark.leaks_ok needs a reason: leaks_ok(\"why\")",
                        pytrace=False)
        yield
        return
    before = leakcheck.snapshot()
    yield
    leaks = leakcheck.find_leaks(before)
    leakcheck.forget_collected()
    if leaks:
        pytest.fail(
            f"test left {len(leaks)} resource(s) open (close them in try/finally or a fixture;"
            f" see tests/leakcheck.py):\n  " + "\n  ".join(leaks),
            pytrace=False,
        )


@pytest.fixture
def clock() -> FakeClock:
    """pybus.testing's fake clock (the plugin calls it ``fake_clock``; older tests say clock)."""
    return FakeClock()


def pytest_addoption(parser: pytest.Parser) -> None:
    # tests/transport/test_multihost.py and tests/test_fuzz_sockets.py: run the full bars
    parser.addoption("--long", action="store_true", default=False,
                     help="run fault and fuzz tests at full size (slow); also PYBUS_LONG=1")


# --- exceptions in worker/handler threads fail the test that owns them ------------------

def pytest_configure(config: pytest.Config) -> None:
    # An exception that escapes a thread (threading.excepthook) is an error, not a warning
    # lost in the summary. Added here rather than in pyproject's filterwarnings.
    config.addinivalue_line(
        "filterwarnings", "error::pytest.PytestUnhandledThreadExceptionWarning"
    )
    config.addinivalue_line(
        "markers",
        "leaks_ok(reason): this test deliberately leaves a socket, context, thread or child "
        "process open (reason required); the leak guard does not check it",
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
