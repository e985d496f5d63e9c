"""CircuitBreaker: transitions, windows, slow calls, probes, listeners, threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pybus import CircuitBreaker, CircuitOpenError, CircuitState, ValidationError


def boom():
    raise RuntimeError("boom")


def fail_n(b, n):
    for _ in range(n):
        with pytest.raises(RuntimeError):
            b.call(boom)


def test_opens_after_consecutive_failures_and_refuses(clock):
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=10.0, clock=clock)
    fail_n(b, 2)
    assert b.state is CircuitState.CLOSED
    assert b.call(lambda: 1) == 1  # a success breaks the run (window == threshold)
    fail_n(b, 2)
    assert b.state is CircuitState.CLOSED
    fail_n(b, 1)
    assert b.state is CircuitState.OPEN
    called = []
    with pytest.raises(CircuitOpenError) as ei:
        b.call(lambda: called.append(1))
    assert called == []
    assert ei.value.retry_after == pytest.approx(10.0)
    clock.advance(4.0)
    assert b.retry_after == pytest.approx(6.0)
    assert b.stats()["rejected"] == 1


def test_count_window_larger_than_threshold(clock):
    b = CircuitBreaker(failure_threshold=3, window=5, clock=clock)
    # F S F S -> 2 failures in window; next F makes 3 of last 5.
    for ok in (False, True, False, True):
        b.record_success() if ok else b.record_failure()
    assert b.state is CircuitState.CLOSED
    b.record_success()
    b.record_success()  # F S F S S S -> last 5 = S F S S S: the oldest failure slid out
    assert b.stats()["window_failures"] == 1
    b.record_failure()
    b.record_failure()  # last 5 = S S S F F
    assert b.state is CircuitState.CLOSED and b.stats()["window_failures"] == 2
    b.record_failure()  # last 5 = S S F F F
    assert b.state is CircuitState.OPEN


def test_failure_rate_window(clock):
    b = CircuitBreaker(
        failure_threshold=None, failure_rate=0.5, window=10, min_calls=4, clock=clock
    )
    b.record_failure()
    b.record_failure()
    b.record_failure()
    assert b.state is CircuitState.CLOSED  # only 3 calls < min_calls
    b.record_success()
    assert b.state is CircuitState.OPEN  # 3/4 >= 0.5

    b2 = CircuitBreaker(failure_threshold=None, failure_rate=0.5, window=4, clock=clock)
    for ok in (True, True, True, False, True, False):  # last 4: T F T F... -> T,F,T,F = 0.5
        assert b2.state is CircuitState.CLOSED
        b2.record_success() if ok else b2.record_failure()
    assert b2.state is CircuitState.OPEN


def test_half_open_after_timeout_then_closes_on_probe(clock):
    changes = []
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5.0, clock=clock)
    b.add_listener(lambda old, new: changes.append((old.value, new.value)))
    fail_n(b, 1)
    clock.advance(4.999)
    assert b.state is CircuitState.OPEN
    clock.advance(0.002)
    assert b.state is CircuitState.HALF_OPEN
    assert b.call(lambda: "probe") == "probe"
    assert b.state is CircuitState.CLOSED
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert b.stats()["window_calls"] == 0  # closing clears the window


def test_failed_probe_reopens_with_fresh_timeout(clock):
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5.0, clock=clock)
    fail_n(b, 1)
    clock.advance(5.0)
    fail_n(b, 1)
    assert b.state is CircuitState.OPEN
    assert b.retry_after == pytest.approx(5.0)
    assert b.stats()["opened"] == 2


def test_probe_slots_limit_concurrent_probes_and_success_threshold(clock):
    b = CircuitBreaker(
        failure_threshold=1, reset_timeout_s=1.0, half_open_probes=2, success_threshold=3,
        clock=clock,
    )
    b.record_failure()
    clock.advance(1.0)
    assert b.allow() and b.allow()
    assert not b.allow()  # both probe slots taken
    with pytest.raises(CircuitOpenError, match="probe"):
        b.check()
    b.record_success()
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow()  # slot freed
    b.record_success()
    b.record_success()
    assert b.state is CircuitState.CLOSED


def test_release_frees_probe_without_outcome(clock):
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    b.record_failure()
    clock.advance(1.0)
    assert b.allow()
    assert not b.allow()
    b.release()
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow()


def test_slow_calls_count_as_failures(clock):
    b = CircuitBreaker(failure_threshold=2, slow_call_threshold_s=0.5, clock=clock)

    def slow():
        clock.advance(0.6)
        return "done"

    assert b.call(slow) == "done"  # result still returned
    assert b.state is CircuitState.CLOSED
    assert b.call(slow) == "done"
    assert b.state is CircuitState.OPEN
    assert b.stats()["slow_calls"] == 2
    fast = CircuitBreaker(failure_threshold=1, slow_call_threshold_s=0.5, clock=clock)
    fast.call(lambda: clock.advance(0.5))  # exactly at the threshold is not slow
    assert fast.state is CircuitState.CLOSED


def test_is_failure_predicate_ignores_excluded_errors(clock):
    b = CircuitBreaker(
        failure_threshold=1, is_failure=lambda e: not isinstance(e, KeyError), clock=clock
    )
    with pytest.raises(KeyError):
        b.call(lambda: {}["x"])
    assert b.state is CircuitState.CLOSED
    assert b.stats()["ignored"] == 1
    with pytest.raises(RuntimeError):
        b.call(boom)
    assert b.state is CircuitState.OPEN


def test_context_manager(clock):
    b = CircuitBreaker(failure_threshold=1, clock=clock)
    with b:
        pass
    with pytest.raises(ValueError):
        with b:
            raise ValueError("x")
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        with b:
            pytest.fail("body must not run")


def test_acall(clock):
    b = CircuitBreaker(failure_threshold=1, clock=clock)

    async def ok():
        return 5

    async def bad():
        raise RuntimeError("x")

    assert asyncio.run(b.acall(ok)) == 5
    with pytest.raises(RuntimeError):
        asyncio.run(b.acall(bad))
    with pytest.raises(CircuitOpenError):
        asyncio.run(b.acall(ok))


def test_listener_errors_do_not_break_calls(clock):
    b = CircuitBreaker(failure_threshold=1, clock=clock)
    b.add_listener(lambda o, n: 1 / 0)
    with pytest.raises(RuntimeError):
        b.call(boom)
    assert b.state is CircuitState.OPEN
    assert b.stats()["listener_errors"] == 1


def test_thread_safety_counts_exact():
    b = CircuitBreaker(failure_threshold=10_000_000, window=10_000_000)
    n_threads, per = 4, 5000

    def work():
        for i in range(per):
            assert b.allow()
            b.record_failure() if i % 2 else b.record_success()

    ts = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    s = b.stats()
    assert s["calls"] == n_threads * per
    assert s["failures"] == s["window_failures"] == n_threads * per // 2


def test_thread_safety_half_open_probe_slots(clock):
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, half_open_probes=3, clock=clock)
    b.record_failure()
    clock.advance(1.0)
    granted = []
    barrier = threading.Barrier(8)

    def grab():
        barrier.wait()
        granted.append(b.allow())

    ts = [threading.Thread(target=grab) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(5)
    assert sum(granted) == 3


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": None}, "failure_threshold"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"failure_threshold": 5, "window": 3}, "exceed window"),
        ({"reset_timeout_s": -1}, "reset_timeout_s"),
        ({"half_open_probes": 0}, "half_open_probes"),
        ({"slow_call_threshold_s": "1"}, "slow_call_threshold_s"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValidationError, match=match):
        CircuitBreaker(**kw)
