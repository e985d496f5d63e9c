"""Retry policies: fixed, linear and exponential backoff with jitter and a deadline.

A :class:`RetryPolicy` is pure policy: it computes a schedule of delays and
decides which errors are worth another attempt. Time, sleeping and randomness
are injected (``clock=``, ``sleep=``, ``asleep=``, ``rng=``) so the whole thing
is testable with a fake clock and no real sleeping.

Example
-------
>>> policy = RetryPolicy.exponential(0.01, max_delay=1.0, max_attempts=5)
>>> list(policy.delays())
[0.01, 0.02, 0.04, 0.08]
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

from .. import metrics as _metrics
from .._deprecated import DeprecatedAlias, renamed
from ..errors import (
    BusError,
    RetryExhaustedError,
    ValidationError,
    check_callable,
    check_positive_int,
)
from ..metrics.samples import AlwaysReady, RawSample

__all__ = ["RetryPolicy", "RetryRun", "default_retryable"]

T = TypeVar("T")
Jitter = Literal["none", "full", "equal"]
RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool] | None
OnRetry = Callable[[int, BaseException, float], Any]

_JITTERS = ("none", "full", "equal")
_KINDS = ("fixed", "linear", "exponential")


def default_retryable(exc: BaseException) -> bool:
    """The default retry predicate: a :class:`BusError` whose ``retryable`` is true.

    Exceptions that are not BusErrors are never retried by default: a bug in a
    handler does not go away by calling it again.
    """
    return isinstance(exc, BusError) and bool(exc.retryable)


def _check_number(name: str, value: Any, *, minimum: float, allow_equal: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValidationError(f"{name} must be a number, got {value!r}")
    ok = value >= minimum if allow_equal else value > minimum
    if not ok or math.isinf(value):
        op = ">=" if allow_equal else ">"
        raise ValidationError(f"{name} must be finite and {op} {minimum}, got {value!r}")
    return float(value)


class RetryPolicy(AlwaysReady):
    """How many times to try, how long to wait between tries, and what to retry.

    Build one with :meth:`fixed`, :meth:`linear` or :meth:`exponential`; the
    constructor takes the same keywords plus ``kind``.

    Parameters
    ----------
    kind : {"fixed", "linear", "exponential"}
    initial_s : float
        First delay in seconds (the only delay for "fixed").
    step_s : float
        Seconds added per retry ("linear").
    multiplier : float
        Factor per retry ("exponential"), >= 1.
    max_delay_s : float or None
        Cap on any single delay before jitter, in seconds.
    max_attempts : int or None
        Total attempts including the first; None means unlimited (then a
        ``deadline_s`` is required so the policy always ends).
    deadline_s : float or None
        Overall budget in seconds, measured from the first attempt. A retry
        whose delay would end past the deadline is not started.
    jitter : {"none", "full", "equal"}
        "full" draws each delay uniformly in [0, d]; "equal" in [d/2, d].
    retry_on : tuple of exception classes, or predicate, or None
        What is retryable. None means :func:`default_retryable`. A tuple
        replaces the default: exactly instances of those classes are retried.
    on_retry : callable(attempt, error, delay) or None
        Called before each wait; ``attempt`` is the 1-based attempt that failed.
    clock, sleep, asleep, rng
        Injected time source (seconds, monotonic), blocking sleep, async sleep
        and random source (anything with ``random() -> float in [0, 1)``).
    registry : pybus.metrics.Registry or False, optional
        Where this object reports its counters (default: ``pybus.metrics.default_registry``;
        ``False``: nowhere).
    initial, step, max_delay, deadline : optional
        Deprecated names of ``initial_s``, ``step_s``, ``max_delay_s`` and ``deadline_s`` (a
        warning; removed in the next release). The attributes of the old names warn too.
    """

    initial = DeprecatedAlias("initial_s")
    step = DeprecatedAlias("step_s")
    max_delay = DeprecatedAlias("max_delay_s")
    deadline = DeprecatedAlias("deadline_s")

    def __init__(
        self,
        kind: str = "exponential",
        *,
        initial_s: float = 0.1,
        step_s: float = 0.0,
        multiplier: float = 2.0,
        max_delay_s: float | None = None,
        max_attempts: int | None = 3,
        deadline_s: float | None = None,
        jitter: str = "none",
        retry_on: RetryOn = None,
        on_retry: OnRetry | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
        asleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: Any = None,
        registry: Any = None,
        initial: float | None = None,
        step: float | None = None,
        max_delay: float | None = None,
        deadline: float | None = None,
    ) -> None:
        initial_s = renamed("RetryPolicy", "initial", initial, "initial_s", initial_s, 0.1)
        step_s = renamed("RetryPolicy", "step", step, "step_s", step_s, 0.0)
        max_delay_s = renamed("RetryPolicy", "max_delay", max_delay, "max_delay_s", max_delay_s,
                              None)
        deadline_s = renamed("RetryPolicy", "deadline", deadline, "deadline_s", deadline_s, None)
        if kind not in _KINDS:
            raise ValidationError(f"retry kind {kind!r} is unknown; allowed: {', '.join(_KINDS)}")
        self.kind = kind
        self.initial_s = _check_number("initial_s", initial_s, minimum=0.0)
        self.step_s = _check_number("step_s", step_s, minimum=0.0)
        self.multiplier = _check_number("multiplier", multiplier, minimum=1.0)
        if max_delay_s is not None:
            max_delay_s = _check_number("max_delay_s", max_delay_s, minimum=self.initial_s)
        self.max_delay_s = max_delay_s
        if max_attempts is not None:
            check_positive_int("max_attempts", max_attempts, " (or None with a deadline)")
        if deadline_s is not None:
            deadline_s = _check_number("deadline_s", deadline_s, minimum=0.0, allow_equal=False)
        if max_attempts is None and deadline_s is None:
            raise ValidationError(
                "max_attempts=None (unlimited) needs a deadline so the policy ends; "
                "pass deadline_s=SECONDS or an int max_attempts"
            )
        self.max_attempts = max_attempts
        self.deadline_s = deadline_s
        if jitter not in _JITTERS:
            raise ValidationError(f"jitter {jitter!r} is unknown; allowed: {', '.join(_JITTERS)}")
        self.jitter = jitter
        if retry_on is None:
            self._predicate: Callable[[BaseException], bool] = default_retryable
        elif isinstance(retry_on, tuple) and all(
            isinstance(c, type) and issubclass(c, BaseException) for c in retry_on
        ):
            classes = retry_on
            self._predicate = lambda exc: isinstance(exc, classes)
        elif callable(retry_on) and not isinstance(retry_on, type):
            self._predicate = retry_on
        else:
            raise ValidationError(
                "retry_on must be None (BusError.retryable), a tuple of exception classes, "
                f"or a predicate taking the exception; got {retry_on!r}"
            )
        self.on_retry = check_callable("on_retry", on_retry, "callable(attempt, error, delay)")
        self.clock = clock
        self.sleep = sleep
        self.asleep = asleep
        self.rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._attempts = 0
        self._retries = 0
        self._exhausted = 0
        _metrics.attach(self, registry)

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def fixed(cls, delay_s: float, *, max_attempts: int | None = 3, **kw: Any) -> RetryPolicy:
        """The same ``delay_s`` seconds before every retry."""
        return cls("fixed", initial_s=delay_s, max_attempts=max_attempts, **kw)

    @classmethod
    def linear(
        cls,
        initial_s: float,
        step_s: float,
        max_delay_s: float | None = None,
        *,
        max_attempts: int | None = 3,
        **kw: Any,
    ) -> RetryPolicy:
        """Delays ``initial_s``, ``initial_s + step_s``, ``initial_s + 2*step_s`` ... capped at
        ``max_delay_s`` (all in seconds)."""
        return cls(
            "linear",
            initial_s=initial_s,
            step_s=step_s,
            max_delay_s=max_delay_s,
            max_attempts=max_attempts,
            **kw,
        )

    @classmethod
    def exponential(
        cls,
        initial_s: float,
        multiplier: float = 2.0,
        max_delay_s: float | None = None,
        *,
        max_attempts: int | None = 3,
        **kw: Any,
    ) -> RetryPolicy:
        """Delays ``initial_s * multiplier**k`` seconds for k = 0, 1, ... capped at
        ``max_delay_s``."""
        return cls(
            "exponential",
            initial_s=initial_s,
            multiplier=multiplier,
            max_delay_s=max_delay_s,
            max_attempts=max_attempts,
            **kw,
        )

    # -- schedule ---------------------------------------------------------------------
    def base_delays(self) -> Iterator[float]:
        """The schedule before jitter: one delay per retry (``max_attempts - 1`` of them)."""
        count = None if self.max_attempts is None else self.max_attempts - 1
        d = self.initial_s
        i = 0
        while count is None or i < count:
            yield d if self.max_delay_s is None else min(d, self.max_delay_s)
            i += 1
            if self.kind == "linear":
                d = d + self.step_s
            elif self.kind == "exponential":
                d = d * self.multiplier
            # Once capped, stop growing so d never overflows to inf.
            if self.max_delay_s is not None and d > self.max_delay_s:
                d = self.max_delay_s

    def _jittered(self, d: float) -> float:
        if self.jitter == "full":
            return d * self.rng.random()
        if self.jitter == "equal":
            return d / 2 + (d / 2) * self.rng.random()
        return d

    def delays(self) -> Iterator[float]:
        """The schedule with jitter applied: one delay (seconds) per retry."""
        for d in self.base_delays():
            yield self._jittered(d)

    def base_delay(self, retry: int) -> float:
        """Delay before retry number ``retry`` (1 = the second attempt), before jitter.

        The closed form of :meth:`base_delays`, for callers that track attempts
        themselves (a work queue's timer heap keeps an int per message, not a run).
        """
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 1:
            raise ValidationError(f"retry must be an int >= 1, got {retry!r}")
        k = retry - 1
        if self.kind == "fixed":
            d = self.initial_s
        elif self.kind == "linear":
            d = self.initial_s + self.step_s * k
        else:
            try:
                d = self.initial_s * self.multiplier**k
            except OverflowError:
                d = math.inf
        return d if self.max_delay_s is None else min(d, self.max_delay_s)

    def delay(self, retry: int) -> float:
        """:meth:`base_delay` with this policy's jitter applied."""
        return self._jittered(self.base_delay(retry))

    def next_delay(
        self, exc: BaseException, attempts: int, elapsed: float | None = None
    ) -> float | None:
        """After ``attempts`` failed attempts (the last with ``exc``), the delay before
        the next one, or None to give up: ``exc`` is not retryable, ``max_attempts``
        are used up, or waiting would pass the deadline (``elapsed`` seconds since
        the first attempt)."""
        if not self.is_retryable(exc):
            return None
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return None
        d = self.delay(attempts)
        if self.deadline_s is not None and elapsed is not None and elapsed + d > self.deadline_s:
            return None
        return d

    def is_retryable(self, exc: BaseException) -> bool:
        """True when ``exc`` is worth another attempt under this policy."""
        return bool(self._predicate(exc))

    # -- counters ---------------------------------------------------------------------
    @property
    def attempts(self) -> int:
        """Attempts started through :meth:`call`/:meth:`acall`/:meth:`start` runs."""
        return self._attempts

    @property
    def retries(self) -> int:
        """Attempts after the first (each one followed a retryable failure)."""
        return self._retries

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "retry_policy"

    def metrics_samples(self) -> Iterator[RawSample]:
        s = self.stats()
        yield "pybus_retries_total", {}, s["retries"]
        yield "pybus_retries_exhausted_total", {}, s["exhausted"]

    def stats(self) -> dict[str, int]:
        """Counters: attempts, retries, exhausted (calls that ended in RetryExhaustedError)."""
        with self._lock:
            return {
                "attempts": self._attempts,
                "retries": self._retries,
                "exhausted": self._exhausted,
            }

    def _count(self, attempts: int = 0, retries: int = 0, exhausted: int = 0) -> None:
        with self._lock:
            self._attempts += attempts
            self._retries += retries
            self._exhausted += exhausted

    # -- running ----------------------------------------------------------------------
    def start(self) -> RetryRun:
        """Begin one retried operation; see :class:`RetryRun` (used by Client and WorkQueue)."""
        return RetryRun(self)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` with retries.

        Raises
        ------
        RetryExhaustedError
            When the last allowed attempt failed with a retryable error, or the
            next wait would pass the deadline; ``last_error`` and ``__cause__``
            hold the final error.
        Exception
            A non-retryable error propagates at once, unchanged.
        """
        run = self.start()
        while True:
            run.begin_attempt()
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified by the policy
                delay = run.failed(exc)
            self.sleep(delay)

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` with retries; same rules as :meth:`call`."""
        if not callable(fn):
            raise ValidationError(f"acall needs a coroutine function, got {fn!r}")
        run = self.start()
        while True:
            run.begin_attempt()
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified by the policy
                delay = run.failed(exc)
            await self.asleep(delay)

    def __repr__(self) -> str:
        return (
            f"RetryPolicy({self.kind!r}, initial_s={self.initial_s}, step_s={self.step_s}, "
            f"multiplier={self.multiplier}, max_delay_s={self.max_delay_s}, "
            f"max_attempts={self.max_attempts}, deadline_s={self.deadline_s}, "
            f"jitter={self.jitter!r})"
        )


class RetryRun:
    """State of one retried operation: the attempt count, the schedule and the deadline.

    The loop that uses it::

        run = policy.start()
        while True:
            run.begin_attempt()
            try:
                return do_it(timeout=run.remaining())
            except Exception as exc:
                delay = run.failed(exc)   # raises when we must stop
            sleep(delay)
    """

    __slots__ = ("policy", "attempt", "started", "_delays", "last_error")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self.started = policy.clock()
        self._delays = policy.delays()
        self.last_error: BaseException | None = None

    def begin_attempt(self) -> int:
        """Mark the start of an attempt; returns its 1-based number."""
        self.attempt += 1
        self.policy._count(attempts=1, retries=1 if self.attempt > 1 else 0)
        return self.attempt

    def resume(self, attempts: int) -> None:
        """Continue a run after a restart: ``attempts`` were made (and failed) before, so
        their delays are used up (the work queue's journaled retries)."""
        self.attempt = attempts
        for _ in range(attempts):
            next(self._delays, None)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without a deadline."""
        if self.policy.deadline_s is None:
            return None
        return max(0.0, self.policy.deadline_s - (self.policy.clock() - self.started))

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt; return the delay before the next one.

        Raises ``exc`` itself when it is not retryable, and
        :class:`RetryExhaustedError` (caused by ``exc``) when attempts or the
        deadline are used up.
        """
        self.last_error = exc
        policy = self.policy
        if not policy.is_retryable(exc):
            raise exc
        delay = next(self._delays, None)
        if delay is None:
            self._exhaust(exc, f"all {self.attempt} attempts failed")
        assert delay is not None
        if policy.deadline_s is not None:
            elapsed = policy.clock() - self.started
            if elapsed + delay > policy.deadline_s:
                self._exhaust(
                    exc,
                    f"gave up after {self.attempt} attempts: waiting {delay:.3g} s more would pass "
                    f"the {policy.deadline_s:.3g} s deadline ({elapsed:.3g} s used)",
                )
        if policy.on_retry is not None:
            policy.on_retry(self.attempt, exc, delay)
        return delay

    def _exhaust(self, exc: BaseException, why: str) -> None:
        self.policy._count(exhausted=1)
        err = RetryExhaustedError(
            f"{why}; last error: {type(exc).__name__}: {exc}",
            attempts=self.attempt,
            last_error=exc,
        )
        raise err from exc
