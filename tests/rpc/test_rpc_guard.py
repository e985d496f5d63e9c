"""pybus.rpc._guard.RequestGuard: the retry / breaker decisions both RPC clients share, on a
fake clock, with no sockets. ``drive`` below is the loop of Client._with_policies and
AsyncClient._request (waits and resets replaced by records), so the tests check the decisions
in the order the clients take them; it runs one request of ``timeout_s`` named "add"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pybus.errors import (
    CircuitOpenError,
    RateLimitError,
    RemoteError,
    RetryExhaustedError,
    TimeoutError,
)
from pybus.policy.breaker import CircuitBreaker
from pybus.policy.retry import RetryPolicy
from pybus.rpc._guard import RequestGuard


def _retry(clock: Any, delay_s: float = 0.25, **kw: Any) -> RetryPolicy:
    return RetryPolicy.fixed(delay_s, clock=clock, sleep=clock.sleep, registry=False, **kw)


@dataclass
class Policies:
    """What the drivers read from their client: its guard, retry policy and breaker."""

    retry: RetryPolicy | None = None
    breaker: CircuitBreaker | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"retries": 0})

    def __post_init__(self) -> None:
        self.guard = RequestGuard("ipc://calc", self.stats)


def _client(retry: RetryPolicy | None = None,
           breaker: CircuitBreaker | None = None) -> tuple[Policies, dict[str, int]]:
    c = Policies(retry, breaker)
    return c, c.stats


Attempt = Callable[[float], Any]


def drive(c: Policies, clock: Any, attempts: list[Attempt], log: list[tuple[Any, ...]],
          timeout_s: float = 1.0, token_wait_s: float = 0.0,
          token_error: Exception | None = None) -> Any:
    """The clients' loop: each attempt gets its timeout; a token wait (``token_wait_s`` of fake
    time, or ``token_error``) comes before the breaker is asked; every step is logged."""
    script = iter(attempts)
    guard, breaker = c.guard, c.breaker
    run = guard.start(c.retry)
    for _ in range(100):
        t_attempt = guard.begin(run, timeout_s)
        log.append(("begin", t_attempt))
        try:
            clock.advance(token_wait_s)
            if token_error is not None:
                raise token_error
            t0 = guard.admit(breaker)
            log.append(("admitted",))
            try:
                result = next(script)(t_attempt)
            except BaseException as exc:
                guard.attempt_failed(breaker, exc, t0)
                raise
            guard.succeeded(breaker, t0)
            log.append(("ok", result))
            return result
        except Exception as exc:
            log.append(("failed", type(exc).__name__))
            delay_s, timed_out = guard.failed(run, exc, "add", timeout_s)
            log.append(("decided", delay_s, timed_out))
        if timed_out:
            log.append(("reset",))
        if delay_s > 0:
            clock.sleep(delay_s)
    raise AssertionError("the guard never ended the request")


def _times_out(clock: Any) -> Attempt:
    def attempt(t_s: float) -> Any:
        clock.advance(t_s)
        raise TimeoutError(f"no reply within {t_s:g} s")
    return attempt


def _returns(clock: Any, value: Any, took_s: float = 0.01) -> Attempt:
    def attempt(t_s: float) -> Any:
        clock.advance(took_s)
        return value
    return attempt


def _raises(exc: Exception) -> Attempt:
    def attempt(t_s: float) -> Any:
        raise exc
    return attempt


def test_timeouts_then_success_in_order(clock):
    breaker = CircuitBreaker(5, clock=clock, registry=False)
    c, stats = _client(retry=_retry(clock, max_attempts=3), breaker=breaker)
    log: list[tuple[Any, ...]] = []
    result = drive(c, clock, [_times_out(clock), _times_out(clock), _returns(clock, 3)], log)
    assert result == 3
    assert log == [
        ("begin", 1.0), ("admitted",), ("failed", "TimeoutError"), ("decided", 0.25, True),
        ("reset",),
        ("begin", 1.0), ("admitted",), ("failed", "TimeoutError"), ("decided", 0.25, True),
        ("reset",),
        ("begin", 1.0), ("admitted",), ("ok", 3),
    ]
    assert stats["retries"] == 2  # not the first attempt
    assert clock.sleeps == [0.25, 0.25]
    b = breaker.stats()
    assert (b["calls"], b["failures"], b["successes"]) == (3, 2, 1)


def test_all_attempts_time_out_raises_a_timeout_naming_the_request(clock):
    c, stats = _client(retry=_retry(clock, max_attempts=2))
    log: list[tuple[Any, ...]] = []
    with pytest.raises(TimeoutError) as ei:
        drive(c, clock, [_times_out(clock)] * 2, log, timeout_s=0.5)
    assert str(ei.value) == ("no reply to 'add' from ipc://calc after 2 attempts (0.5 s each); "
                             "is the server running?")
    assert ei.value.details == {"attempts": 2}
    assert isinstance(ei.value.__cause__, RetryExhaustedError)
    assert isinstance(ei.value.__cause__.__cause__, TimeoutError)
    # the last failure ends the request: no reset, no sleep after it
    assert log[-1] == ("failed", "TimeoutError") and clock.sleeps == [0.25]
    assert stats["retries"] == 1


def test_exhausted_on_another_error_raises_the_policys_error(clock):
    busy = RemoteError("busy", remote_type="BackpressureError", retryable=True)
    c, _ = _client(retry=_retry(clock, max_attempts=2))
    log: list[tuple[Any, ...]] = []
    with pytest.raises(RetryExhaustedError) as ei:
        drive(c, clock, [_raises(busy)] * 2, log)
    assert ei.value.attempts == 2 and ei.value.last_error is busy and ei.value.__cause__ is busy
    assert ("decided", 0.25, False) in log and ("reset",) not in log  # not a timeout


def test_without_a_policy_the_error_propagates_unchanged(clock):
    breaker = CircuitBreaker(5, clock=clock, registry=False)
    c, stats = _client(breaker=breaker)
    err = TimeoutError("no reply")
    log: list[tuple[Any, ...]] = []
    with pytest.raises(TimeoutError) as ei:
        drive(c, clock, [_raises(err)], log, timeout_s=2.0)
    assert ei.value is err
    assert log == [("begin", 2.0), ("admitted",), ("failed", "TimeoutError")]
    assert stats["retries"] == 0 and breaker.stats()["failures"] == 1


def test_a_non_retryable_error_ends_the_request_at_once(clock):
    bug = RemoteError("KeyError: 'x'", remote_type="KeyError", retryable=False)
    c, stats = _client(retry=_retry(clock, max_attempts=5))
    with pytest.raises(RemoteError) as ei:
        drive(c, clock, [_raises(bug)], [])
    assert ei.value is bug and stats["retries"] == 0 and clock.sleeps == []


def test_attempt_timeout_is_cut_to_the_deadline_but_at_least_1_ms(clock):
    retry = _retry(clock, 0.5, max_attempts=None, deadline_s=2.0)
    c, _ = _client(retry=retry)
    log: list[tuple[Any, ...]] = []
    with pytest.raises(TimeoutError):
        drive(c, clock, [_times_out(clock)] * 10, log)
    begins = [e[1] for e in log if e[0] == "begin"]
    # 1.0 s attempt, 0.5 s wait, then only 0.5 s of the 2 s deadline is left
    assert begins == [1.0, pytest.approx(0.5)]
    c, _ = _client(retry=_retry(clock, 0.0, max_attempts=None, deadline_s=1.0))
    run = c.guard.start(c.retry)
    assert c.guard.begin(run, 1.0) == 1.0
    clock.advance(1.0)  # the deadline is used up: still a (tiny) attempt
    assert c.guard.begin(run, 1.0) == 0.001


def test_the_breaker_times_the_attempt_not_the_token_wait(clock):
    """admit() starts the clock: a slow token wait is not a slow call."""
    breaker = CircuitBreaker(1, slow_call_threshold_s=0.5, clock=clock, registry=False)
    c, _ = _client(retry=_retry(clock), breaker=breaker)
    assert drive(c, clock, [_returns(clock, b"ok", took_s=0.2)], [], token_wait_s=0.9) == b"ok"
    b = breaker.stats()
    assert (b["successes"], b["slow_calls"], b["state"]) == (1, 0, "closed")
    c, _ = _client(retry=_retry(clock), breaker=breaker)
    drive(c, clock, [_returns(clock, b"ok", took_s=0.6)], [])
    assert breaker.stats()["slow_calls"] == 1 and breaker.stats()["state"] == "open"


def test_the_breaker_times_each_attempt_of_a_retried_request(clock):
    breaker = CircuitBreaker(2, slow_call_threshold_s=0.5, clock=clock, registry=False)
    c, _ = _client(retry=_retry(clock), breaker=breaker)
    assert drive(c, clock, [_times_out(clock), _returns(clock, 1, took_s=0.1)], []) == 1
    b = breaker.stats()
    assert (b["failures"], b["successes"], b["slow_calls"]) == (1, 1, 0)


def test_a_refused_breaker_is_a_retryable_failure_the_breaker_does_not_record(clock):
    breaker = CircuitBreaker(1, reset_timeout_s=0.3, clock=clock, registry=False)
    breaker.record_failure()  # open for 0.3 s
    c, stats = _client(retry=_retry(clock, max_attempts=3), breaker=breaker)
    log: list[tuple[Any, ...]] = []
    assert drive(c, clock, [_returns(clock, 7)], log) == 7
    assert log[:3] == [("begin", 1.0), ("failed", "CircuitOpenError"), ("decided", 0.25, False)]
    assert log[3:6] == [("begin", 1.0), ("failed", "CircuitOpenError"), ("decided", 0.25, False)]
    # 0.5 s later the breaker half-opens: the probe goes out and closes it
    assert log[6:] == [("begin", 1.0), ("admitted",), ("ok", 7)]
    b = breaker.stats()
    assert (b["rejected"], b["calls"], b["state"]) == (2, 2, "closed") and stats["retries"] == 2


def test_a_refused_token_is_retried_and_not_recorded_by_the_breaker(clock):
    breaker = CircuitBreaker(1, clock=clock, registry=False)
    c, _ = _client(retry=_retry(clock, max_attempts=2), breaker=breaker)
    limited = RateLimitError("no token", retry_after=1.0)
    log: list[tuple[Any, ...]] = []
    with pytest.raises(RetryExhaustedError) as ei:
        drive(c, clock, [], log, token_error=limited)
    assert ei.value.last_error is limited
    assert ("admitted",) not in log and breaker.stats()["calls"] == 0


def test_cancellation_releases_the_breaker_without_a_failure(clock):
    breaker = CircuitBreaker(1, clock=clock, registry=False)
    c, _ = _client(retry=_retry(clock), breaker=breaker)
    c.guard.begin(c.guard.start(c.retry), 1.0)
    c.guard.attempt_failed(breaker, KeyboardInterrupt(), c.guard.admit(breaker))
    b = breaker.stats()
    assert (b["failures"], b["ignored"], b["state"]) == (0, 1, "closed")


def test_requests_are_independent(clock):
    c, stats = _client(retry=_retry(clock, max_attempts=2))
    guard = c.guard
    first = guard.start(c.retry)
    guard.begin(first, 1.0)
    second = guard.start(c.retry)
    assert guard.begin(second, 1.0) == 1.0 and stats["retries"] == 0  # a new request's first
    assert guard.begin(first, 1.0) == 1.0 and stats["retries"] == 1
    run = guard.start(None)  # no policy: one attempt, its own timeout
    assert run is None and guard.begin(run, 3.0) == 3.0
    opened = CircuitOpenError("open", retry_after=1.0)
    with pytest.raises(CircuitOpenError) as ei:
        # without a policy nothing is retried, whatever the error
        guard.failed(run, opened, "add", 3.0)
    assert ei.value is opened
