"""Token-bucket rate limiting, alone or one bucket per key (topic, peer).

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens per second.
:meth:`RateLimiter.try_acquire` never waits; :meth:`RateLimiter.acquire`
*reserves* its tokens (the bucket may go negative) and then sleeps exactly
until they are due, so waiters are served in arrival order and a single sleep
suffices. A caller whose wait would exceed its ``timeout`` reserves nothing and
gets :class:`~pybus.RateLimitError` with ``retry_after``.

Example
-------
>>> limiter = RateLimiter(rate=1000.0, burst=100)
>>> limiter.try_acquire()
True
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any

from .. import metrics as _metrics
from ..errors import RateLimitError, ValidationError, check_positive_int
from ..metrics.samples import AlwaysReady, RawSample

__all__ = ["RateLimiter", "KeyedRateLimiter"]


def _check_rate(rate: Any, burst: Any) -> tuple[float, float]:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
        raise ValidationError(
            f"rate must be a finite number of tokens per second > 0, got {rate!r}"
        )
    if burst is None:
        burst = max(1.0, float(rate))
    if isinstance(burst, bool) or not isinstance(burst, (int, float)) or not 1 <= burst < math.inf:
        raise ValidationError(f"burst must be a finite number of tokens >= 1, got {burst!r}")
    return float(rate), float(burst)


def _check_n(n: Any, burst: float) -> float:
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 < n:
        raise ValidationError(f"n must be a number of tokens > 0, got {n!r}")
    if n > burst:
        raise ValidationError(
            f"cannot acquire {n} tokens at once: the bucket holds at most burst={burst:g}"
        )
    return float(n)


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValidationError(
            f"timeout must be None (wait as long as needed) or >= 0 s, got {timeout!r}"
        )
    return float(timeout)


class RateLimiter(AlwaysReady):
    """A thread-safe token bucket.

    Parameters
    ----------
    rate : float
        Tokens added per second.
    burst : float or None
        Bucket capacity (and initial content); default ``max(1, rate)``.
    clock, sleep, asleep
        Injected monotonic clock, blocking sleep and async sleep.
    name : str
        Used in error messages.
    registry : pybus.metrics.Registry or False, optional
        Where this object reports its counters (default: ``pybus.metrics.default_registry``;
        ``False``: nowhere).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
        asleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        name: str = "rate limiter",
        registry: Any = None,
    ) -> None:
        self.rate, self.burst = _check_rate(rate, burst)
        self.clock = clock
        self.sleep = sleep
        self.asleep = asleep
        self.name = name
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = clock()
        self._granted = 0
        self._rejected = 0
        self._waited = 0
        _metrics.attach(self, registry)

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while reservations are pending)."""
        with self._lock:
            self._refill(self.clock())
            return self._tokens

    def retry_after(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens would be available (0 if they are now)."""
        n = _check_n(n, self.burst)
        with self._lock:
            self._refill(self.clock())
            return max(0.0, (n - self._tokens) / self.rate)

    def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if they are there now; never waits."""
        n = _check_n(n, self.burst)
        with self._lock:
            self._refill(self.clock())
            if self._tokens >= n:
                self._tokens -= n
                self._granted += 1
                return True
            self._rejected += 1
            return False

    def _reserve(self, n: float, timeout: float | None) -> float:
        """Reserve ``n`` tokens; return the wait, or raise when it exceeds ``timeout``."""
        with self._lock:
            self._refill(self.clock())
            wait = max(0.0, (n - self._tokens) / self.rate)
            if timeout is not None and wait > timeout:
                self._rejected += 1
                raise RateLimitError(
                    f"{self.name}: {n:g} token(s) are due in {wait:.3g} s, more than the "
                    f"{timeout:g} s timeout (rate={self.rate:g}/s, burst={self.burst:g})",
                    retry_after=wait,
                )
            self._tokens -= n
            self._granted += 1
            if wait > 0:
                self._waited += 1
            return wait

    def _refund(self, n: float) -> None:
        with self._lock:
            self._tokens = min(self.burst, self._tokens + n)
            self._granted -= 1

    def acquire(self, n: float = 1, timeout: float | None = None) -> None:
        """Take ``n`` tokens, waiting for them up to ``timeout`` seconds.

        Raises
        ------
        RateLimitError
            When the tokens are due later than ``timeout`` (``timeout=0``:
            whenever they are not there now); ``retry_after`` says when.
        """
        n = _check_n(n, self.burst)
        wait = self._reserve(n, _check_timeout(timeout))
        if wait > 0:
            try:
                self.sleep(wait)
            except BaseException:
                self._refund(n)
                raise

    async def aacquire(self, n: float = 1, timeout: float | None = None) -> None:
        """Asyncio twin of :meth:`acquire`; a cancelled wait gives its tokens back."""
        n = _check_n(n, self.burst)
        wait = self._reserve(n, _check_timeout(timeout))
        if wait > 0:
            try:
                await self.asleep(wait)
            except BaseException:
                self._refund(n)
                raise

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "rate_limiter"

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        yield "pybus_rate_limited_total", {}, s["rejected"]
        yield "pybus_rate_limiter_granted_total", {}, s["granted"]

    def stats(self) -> dict[str, float]:
        """granted, rejected, waited (grants that had to wait), tokens."""
        with self._lock:
            self._refill(self.clock())
            return {
                "granted": self._granted,
                "rejected": self._rejected,
                "waited": self._waited,
                "tokens": self._tokens,
            }

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate:g}, burst={self.burst:g})"


class KeyedRateLimiter(AlwaysReady):
    """One token bucket per key (topic, peer identity ...), at most ``max_keys`` of them.

    When a new key arrives and ``max_keys`` buckets exist, the least recently
    used bucket is evicted (counted in ``stats()["evicted"]``). An evicted key
    comes back with a full bucket; since the LRU bucket is normally the one idle
    longest - and a bucket idle for ``burst / rate`` seconds is full anyway -
    this only matters when more than ``max_keys`` keys are busy at once, in
    which case it lets the overflow through rather than growing memory.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        max_keys: int = 10_000,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
        asleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        name: str = "keyed rate limiter",
        registry: Any = None,
    ) -> None:
        self.rate, self.burst = _check_rate(rate, burst)
        self.name = name
        self.max_keys = check_positive_int("max_keys", max_keys)
        # a key's bucket: on the same clocks, reporting through this limiter (not registered)
        self._new_bucket = functools.partial(RateLimiter, self.rate, self.burst, clock=clock,
                                             sleep=sleep, asleep=asleep, registry=False)
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[Hashable, RateLimiter] = collections.OrderedDict()
        self._evicted = 0
        # counters of evicted buckets, so the metrics' sums never go backwards
        self._evicted_granted = 0
        self._evicted_rejected = 0
        _metrics.attach(self, registry)

    def bucket(self, key: Hashable) -> RateLimiter:
        """The bucket of ``key`` (created full on first use; marks it most recently used)."""
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= self.max_keys:
                    _, old = self._buckets.popitem(last=False)
                    self._evicted += 1
                    self._evicted_granted += old._granted
                    self._evicted_rejected += old._rejected
                b = self._new_bucket(name=f"rate limiter for {key!r}")
                self._buckets[key] = b
            else:
                self._buckets.move_to_end(key)
            return b

    def try_acquire(self, key: Hashable, n: float = 1) -> bool:
        """Take ``n`` tokens from ``key``'s bucket if available now."""
        return self.bucket(key).try_acquire(n)

    def acquire(self, key: Hashable, n: float = 1, timeout: float | None = None) -> None:
        """Take ``n`` tokens from ``key``'s bucket, waiting up to ``timeout``."""
        self.bucket(key).acquire(n, timeout)

    async def aacquire(self, key: Hashable, n: float = 1, timeout: float | None = None) -> None:
        """Asyncio twin of :meth:`acquire`."""
        await self.bucket(key).aacquire(n, timeout)

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._buckets

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "rate_limiter"

    def metrics_samples(self) -> Iterator[RawSample]:
        # The per-key buckets are not registered themselves (there may be thousands); their
        # counters are summed here, plus what evicted buckets had counted.
        with self._lock:
            buckets = list(self._buckets.values())
            granted = self._evicted_granted
            rejected = self._evicted_rejected
        for b in buckets:
            granted += b._granted
            rejected += b._rejected
        yield "pybus_rate_limited_total", {}, rejected
        yield "pybus_rate_limiter_granted_total", {}, granted

    def stats(self) -> dict[str, int]:
        """keys (buckets held) and evicted (buckets dropped by the LRU bound)."""
        with self._lock:
            return {"keys": len(self._buckets), "evicted": self._evicted}
