"""RateLimiter / KeyedRateLimiter: token bucket arithmetic on a fake clock."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pybus import KeyedRateLimiter, RateLimiter, RateLimitError, ValidationError


def make(clock, rate=10.0, burst=5):
    return RateLimiter(rate, burst, clock=clock, sleep=clock.sleep, asleep=clock.asleep)


def test_burst_then_refill(clock):
    r = make(clock)
    assert [r.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.1)  # one token at 10/s
    assert r.try_acquire() and not r.try_acquire()
    clock.advance(100)
    assert r.tokens == 5  # capped at burst
    assert r.stats()["granted"] == 6 and r.stats()["rejected"] == 2


def test_try_acquire_n(clock):
    r = make(clock)
    assert r.try_acquire(3) and not r.try_acquire(3) and r.try_acquire(2)
    with pytest.raises(ValidationError, match="burst=5"):
        r.try_acquire(6)


def test_acquire_waits_exactly_until_due(clock):
    r = make(clock)
    for _ in range(5):
        r.acquire()
    assert clock.sleeps == []
    r.acquire()
    assert clock.sleeps == pytest.approx([0.1])
    r.acquire(2)
    assert clock.sleeps[-1] == pytest.approx(0.2)


def test_reservations_queue_in_order(clock):
    # Two acquirers without time passing in between: the second waits behind the first.
    r = RateLimiter(10.0, 1, clock=clock, sleep=lambda s: None)
    assert r.try_acquire()
    assert r._reserve(1.0, None) == pytest.approx(0.1)
    assert r._reserve(1.0, None) == pytest.approx(0.2)
    assert r.tokens == pytest.approx(-2.0)


def test_acquire_timeout_raises_with_retry_after(clock):
    r = make(clock)
    r.acquire(5)
    with pytest.raises(RateLimitError) as ei:
        r.acquire(1, timeout=0.05)
    assert ei.value.retry_after == pytest.approx(0.1)
    assert ei.value.retryable
    assert r.tokens == pytest.approx(0.0)  # a refused acquire reserves nothing
    with pytest.raises(RateLimitError):
        r.acquire(1, timeout=0)
    r.acquire(1, timeout=0.1)  # exactly due at the timeout: allowed
    assert clock.sleeps == pytest.approx([0.1])


def test_timeout_zero_with_tokens_succeeds_without_sleep(clock):
    r = make(clock)
    r.acquire(timeout=0)
    assert clock.sleeps == []


def test_interrupted_wait_refunds(clock):
    def bad_sleep(s):
        raise KeyboardInterrupt

    r = RateLimiter(10.0, 1, clock=clock, sleep=bad_sleep)
    r.acquire()
    with pytest.raises(KeyboardInterrupt):
        r.acquire()
    assert r.tokens == pytest.approx(0.0)


def test_aacquire(clock):
    r = make(clock, rate=100.0, burst=1)

    async def main():
        await r.aacquire()
        await r.aacquire()
        with pytest.raises(RateLimitError):
            await r.aacquire(timeout=0.001)

    asyncio.run(main())
    assert clock.sleeps == pytest.approx([0.01])


def test_aacquire_cancelled_refunds(clock):
    # Frozen fake clock: no refill happens, so the token count is exact. The async
    # sleep parks until cancelled (it records the wait it was asked for).
    asked: list[float] = []

    async def park(seconds: float) -> None:
        asked.append(seconds)
        await asyncio.Event().wait()

    r = RateLimiter(1.0, 1, clock=clock, sleep=clock.sleep, asleep=park)
    assert r.try_acquire()
    assert r.tokens == 0

    async def main():
        task = asyncio.ensure_future(r.aacquire())
        await asyncio.sleep(0)
        assert asked == [pytest.approx(1.0)]  # reserved: waiting for its token
        assert r.tokens == -1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # the refund gives back exactly the reservation: 0, not -1 (no refund), not more
    assert r.tokens == 0
    assert r.stats()["granted"] == 1
    clock.advance(1.0)  # one second refills one token: the next caller need not wait
    assert r.try_acquire() and not r.try_acquire()


def test_real_clock_threads_rate_bound():
    # 20 tokens at 400/s with burst 5 takes ~37 ms: bounded, and never faster than the rate allows.
    import time

    r = RateLimiter(400.0, 5)
    t0 = time.monotonic()

    def take():
        for _ in range(5):
            r.acquire(timeout=2.0)

    ts = [threading.Thread(target=take) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(5)
    elapsed = time.monotonic() - t0
    assert r.stats()["granted"] == 20
    assert elapsed >= (20 - 5) / 400.0 * 0.95


def test_keyed_limits_per_key_and_lru_bound(clock):
    k = KeyedRateLimiter(1.0, 2, max_keys=2, clock=clock, sleep=clock.sleep)
    assert k.try_acquire("a") and k.try_acquire("a") and not k.try_acquire("a")
    assert k.try_acquire("b")  # separate bucket
    assert k.try_acquire("a") is False  # touches a: b is now LRU
    assert k.try_acquire("c")  # evicts b
    assert "b" not in k and "a" in k and len(k) == 2
    assert k.stats() == {"keys": 2, "evicted": 1}
    assert not k.try_acquire("a")  # a kept its (empty) bucket
    k.acquire("a")
    assert clock.sleeps == pytest.approx([1.0])


@pytest.mark.parametrize(
    "args,match",
    [((0,), "rate"), ((float("inf"),), "rate"), ((1, 0.5), "burst"), ((-1, 1), "rate")],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValidationError, match=match):
        RateLimiter(*args)


def test_bad_acquire_arguments(clock):
    r = make(clock)
    with pytest.raises(ValidationError, match="timeout"):
        r.acquire(timeout=-1)
    with pytest.raises(ValidationError, match="n must be"):
        r.acquire(0)
    with pytest.raises(ValidationError, match="max_keys"):
        KeyedRateLimiter(1, 1, max_keys=0)
