"""RetryPolicy: schedules, jitter bounds, deadline, classification, hooks, counters."""

from __future__ import annotations

import asyncio
import random

import pytest

import pybus
from pybus import RetryExhaustedError, RetryPolicy, ValidationError


def test_fixed_schedule():
    assert list(RetryPolicy.fixed(0.5, max_attempts=4).delays()) == [0.5, 0.5, 0.5]


def test_linear_schedule_is_capped():
    p = RetryPolicy.linear(0.1, 0.2, max_delay_s=0.6, max_attempts=6)
    assert list(p.delays()) == pytest.approx([0.1, 0.3, 0.5, 0.6, 0.6])


def test_exponential_schedule_is_capped_and_never_overflows():
    p = RetryPolicy.exponential(0.01, multiplier=3, max_delay_s=1.0, max_attempts=7)
    assert list(p.delays()) == pytest.approx([0.01, 0.03, 0.09, 0.27, 0.81, 1.0])
    huge = RetryPolicy.exponential(1.0, multiplier=10, max_delay_s=5.0, max_attempts=5000)
    assert list(huge.delays())[-1] == 5.0


def test_exponential_default_multiplier_is_two():
    assert list(RetryPolicy.exponential(1.0, max_attempts=4).delays()) == [1.0, 2.0, 4.0]


def test_single_attempt_has_no_delays():
    assert list(RetryPolicy.fixed(1.0, max_attempts=1).delays()) == []


@pytest.mark.parametrize("jitter,lo,hi", [("full", 0.0, 1.0), ("equal", 0.5, 1.0)])
def test_jitter_bounds_and_spread(jitter, lo, hi):
    p = RetryPolicy.fixed(2.0, max_attempts=2001, jitter=jitter, rng=random.Random(7))
    ds = list(p.delays())
    assert len(ds) == 2000
    assert all(lo * 2.0 <= d <= hi * 2.0 for d in ds)
    # Spread over the whole interval, not a constant.
    assert min(ds) < lo * 2.0 + 0.05 and max(ds) > hi * 2.0 - 0.05
    assert abs(sum(ds) / len(ds) - (lo + hi)) < 0.1  # mean of U(lo*d, hi*d) with d=2


def test_jitter_uses_injected_rng():
    class Const:
        def random(self):
            return 0.25

    assert list(RetryPolicy.fixed(4.0, max_attempts=3, jitter="full", rng=Const()).delays()) == [
        1.0,
        1.0,
    ]
    assert list(RetryPolicy.fixed(4.0, max_attempts=2, jitter="equal", rng=Const()).delays()) == [
        2.5
    ]


def test_call_retries_retryable_then_succeeds(clock):
    calls = []

    def flaky(x):
        calls.append(clock())
        if len(calls) < 3:
            raise pybus.TimeoutError("no answer")
        return x * 2

    seen = []
    p = RetryPolicy.exponential(
        0.1,
        max_attempts=5,
        clock=clock,
        sleep=clock.sleep,
        on_retry=lambda a, e, d: seen.append((a, type(e).__name__, d)),
    )
    assert p.call(flaky, 21) == 42
    assert clock.sleeps == pytest.approx([0.1, 0.2])
    assert [c - calls[0] for c in calls] == pytest.approx([0.0, 0.1, 0.3])
    assert seen == [(1, "TimeoutError", 0.1), (2, "TimeoutError", 0.2)]
    assert p.attempts == 3 and p.retries == 2
    assert p.stats() == {"attempts": 3, "retries": 2, "exhausted": 0}


def test_call_exhausted_raises_with_cause(clock):
    err = pybus.TransportError("down")

    def always():
        raise err

    p = RetryPolicy.fixed(1.0, max_attempts=3, clock=clock, sleep=clock.sleep)
    with pytest.raises(RetryExhaustedError) as ei:
        p.call(always)
    assert ei.value.attempts == 3
    assert ei.value.last_error is err and ei.value.__cause__ is err
    assert "3 attempts" in str(ei.value) and "down" in str(ei.value)
    assert clock.sleeps == [1.0, 1.0]
    assert p.stats()["exhausted"] == 1


def test_non_retryable_propagates_at_once(clock):
    calls = []

    def bad():
        calls.append(1)
        raise ValidationError("bad arg")

    p = RetryPolicy.fixed(1.0, max_attempts=5, clock=clock, sleep=clock.sleep)
    with pytest.raises(ValidationError):
        p.call(bad)
    assert calls == [1] and clock.sleeps == []


def test_plain_exceptions_not_retried_by_default(clock):
    p = RetryPolicy.fixed(1.0, max_attempts=5, clock=clock, sleep=clock.sleep)
    with pytest.raises(KeyError):
        p.call(lambda: {}["x"])
    assert clock.sleeps == []


def test_retry_on_classes_and_predicate(clock):
    n = {"k": 0}

    def f():
        n["k"] += 1
        raise KeyError("disk")

    p = RetryPolicy.fixed(
        0.5, max_attempts=3, retry_on=(LookupError,), clock=clock, sleep=clock.sleep
    )
    with pytest.raises(RetryExhaustedError):
        p.call(f)
    assert n["k"] == 3
    # A tuple replaces the default: a retryable BusError not listed is not retried.
    with pytest.raises(pybus.TimeoutError):
        p.call(lambda: (_ for _ in ()).throw(pybus.TimeoutError("t")))
    pred = RetryPolicy.fixed(
        0.5, max_attempts=4, retry_on=lambda e: "again" in str(e), clock=clock, sleep=clock.sleep
    )
    n["k"] = 0

    def g():
        n["k"] += 1
        raise RuntimeError("again" if n["k"] < 2 else "fatal")

    with pytest.raises(RuntimeError, match="fatal"):
        pred.call(g)
    assert n["k"] == 2


def test_deadline_stops_before_passing_it(clock):
    n = {"k": 0}

    def slow_fail():
        n["k"] += 1
        clock.advance(0.3)  # each attempt takes 0.3 s
        raise pybus.TimeoutError("slow")

    p = RetryPolicy.fixed(0.5, max_attempts=100, deadline_s=2.0, clock=clock, sleep=clock.sleep)
    t0 = clock()
    with pytest.raises(RetryExhaustedError, match="deadline") as ei:
        p.call(slow_fail)
    # attempts end at 0.3, 1.1, 1.9 s; waiting 0.5 more from 1.9 passes 2.0.
    assert n["k"] == 3 and ei.value.attempts == 3
    assert clock() - t0 == pytest.approx(1.9)


def test_unlimited_attempts_need_deadline(clock):
    with pytest.raises(ValidationError, match="deadline"):
        RetryPolicy.fixed(1.0, max_attempts=None)
    p = RetryPolicy.fixed(1.0, max_attempts=None, deadline_s=10.0, clock=clock, sleep=clock.sleep)
    with pytest.raises(RetryExhaustedError):
        p.call(lambda: (_ for _ in ()).throw(pybus.TimeoutError("t")))
    assert len(clock.sleeps) == 10


def test_run_remaining_tracks_deadline(clock):
    p = RetryPolicy.fixed(1.0, max_attempts=3, deadline_s=5.0, clock=clock, sleep=clock.sleep)
    run = p.start()
    assert run.remaining() == 5.0
    clock.advance(2.0)
    assert run.remaining() == 3.0
    clock.advance(10.0)
    assert run.remaining() == 0.0
    assert RetryPolicy.fixed(1.0).start().remaining() is None


def test_acall_retries_with_async_sleep(clock):
    n = {"k": 0}

    async def flaky():
        n["k"] += 1
        if n["k"] < 4:
            raise pybus.BackpressureError("full")
        return "ok"

    p = RetryPolicy.linear(
        0.1,
        0.1,
        max_attempts=5,
        clock=clock,
        asleep=clock.asleep,
        sleep=lambda s: pytest.fail("blocking sleep in acall"),
    )
    assert asyncio.run(p.acall(flaky)) == "ok"
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.3])


def test_acall_exhausted(clock):
    async def fail():
        raise pybus.TimeoutError("x")

    p = RetryPolicy.fixed(0.1, max_attempts=2, clock=clock, asleep=clock.asleep)
    with pytest.raises(RetryExhaustedError) as ei:
        asyncio.run(p.acall(fail))
    assert ei.value.attempts == 2


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: RetryPolicy.fixed(-1), "initial_s"),
        (lambda: RetryPolicy.fixed(float("nan")), "number"),
        (lambda: RetryPolicy.fixed(1, max_attempts=0), "max_attempts"),
        (lambda: RetryPolicy.fixed(1, max_attempts=2.5), "max_attempts"),
        (lambda: RetryPolicy.fixed(1, jitter="half"), "allowed: none, full, equal"),
        (lambda: RetryPolicy.exponential(1, multiplier=0.5), "multiplier"),
        (lambda: RetryPolicy.exponential(1, max_delay_s=0.5), "max_delay"),
        (lambda: RetryPolicy.linear(1, -1), "step"),
        (lambda: RetryPolicy.fixed(1, deadline_s=0), "deadline"),
        (lambda: RetryPolicy.fixed(1, retry_on=("x",)), "retry_on"),
        (lambda: RetryPolicy("cubic"), "allowed: fixed, linear, exponential"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValidationError, match=match):
        build()


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy.fixed(0.3, max_attempts=8),
        RetryPolicy.linear(0.1, 0.25, max_delay_s=1.0, max_attempts=9),
        RetryPolicy.exponential(0.01, multiplier=3, max_delay_s=2.0, max_attempts=12),
        RetryPolicy.exponential(0.5, max_attempts=10),
    ],
)
def test_closed_form_matches_schedule(policy):
    assert [policy.base_delay(k) for k in range(1, policy.max_attempts)] == pytest.approx(
        list(policy.base_delays())
    )
    # Huge retry numbers stay capped instead of overflowing.
    capped = RetryPolicy.exponential(
        1.0, multiplier=10, max_delay_s=5.0, max_attempts=None, deadline_s=9
    )
    assert capped.base_delay(10_000) == 5.0


def test_next_delay_for_callers_tracking_attempts():
    p = RetryPolicy.exponential(1.0, max_attempts=3, deadline_s=10.0)
    t = pybus.TimeoutError("t")
    assert p.next_delay(t, 1) == 1.0
    assert p.next_delay(t, 2) == 2.0
    assert p.next_delay(t, 3) is None  # attempts used up
    assert p.next_delay(t, 2, elapsed=8.5) is None  # 8.5 + 2 would pass the deadline
    assert p.next_delay(ValidationError("v"), 1) is None  # not retryable
    with pytest.raises(ValidationError, match="retry must be"):
        p.base_delay(0)
