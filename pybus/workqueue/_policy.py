"""Glue between the work-queue dispatcher and the reliability policies.

The dispatcher thread must never block, so it only asks non-blocking questions here: the retry
policy for a delay (which goes on its timer heap), the circuit breaker for "may I dispatch
now", the rate limiter for "how many messages may go now".
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..errors import RemoteError, RetryExhaustedError, ValidationError, check_optional
from ..policy.breaker import CircuitBreaker, CircuitState
from ..policy.ratelimit import RateLimiter
from ..policy.retry import RetryPolicy, RetryRun

__all__ = ["RetryPlan", "Throttle", "DEFAULT_RETRY"]

_log = logging.getLogger("pybus.workqueue")


def DEFAULT_RETRY() -> RetryPolicy:  # noqa: N802 - a factory standing for a constant
    """The work queue's default: 5 attempts, 0.1 s doubling up to 5 s, no jitter."""
    return RetryPolicy.exponential(0.1, max_delay_s=5.0, max_attempts=5)


class RetryPlan:
    """Per-message retry decisions from a :class:`pybus.RetryPolicy`.

    Only messages that failed carry a :class:`RetryRun`, so the common path costs nothing.
    """

    def __init__(self, policy: Any) -> None:
        if policy is None:
            policy = DEFAULT_RETRY()
        if not isinstance(policy, RetryPolicy):
            raise ValidationError(
                "retry must be a pybus.RetryPolicy (RetryPolicy.fixed/linear/exponential), "
                f"got {type(policy).__name__}"
            )
        self.policy = policy

    def next_delay(self, failure: Any, elapsed_s: float, err: RemoteError) -> float | None:
        """Record that a message's latest delivery failed with ``err``.

        ``failure`` is the message's failure record; its ``run`` holds the RetryRun.

        Returns the delay before the next delivery, or None when the message must be
        dead-lettered (not retryable, attempts used up, or the deadline would pass).
        ``elapsed_s`` is the time since the message's first delivery (the policy's deadline
        is measured from there).
        """
        run: RetryRun | None = failure.run
        if run is None:
            run = self.policy.start()
            run.started = self.policy.clock() - elapsed_s
            if failure.failures > 1:  # failures recovered from the journal count
                run.resume(failure.failures - 1)
            failure.run = run
        run.begin_attempt()
        try:
            return run.failed(err)
        except (RetryExhaustedError, RemoteError):
            return None
        except Exception:  # a user callback (on_retry, retry_on) failed: never kill dispatch
            _log.exception("retry policy callback failed; dead-lettering the message")
            return None


class Throttle:
    """Non-blocking view of an optional breaker and rate limiter for the dispatcher."""

    def __init__(self, breaker: Any, rate_limit: Any) -> None:
        check_optional("breaker", breaker, CircuitBreaker, "a pybus.CircuitBreaker")
        check_optional("rate_limit", rate_limit, RateLimiter, "a pybus.RateLimiter")
        self.breaker: CircuitBreaker | None = breaker
        self.rate_limit: RateLimiter | None = rate_limit
        self.active = breaker is not None or rate_limit is not None
        self._probe_out = False

    def allowance(self, now: float) -> int:
        """How many messages may be dispatched right now (0: wait :meth:`wait_s`)."""
        n = 1 << 30
        b = self.breaker
        if b is not None:
            state = b.state
            if state is CircuitState.OPEN:
                return 0
            if state is CircuitState.HALF_OPEN:
                # one probe message at a time, until its outcome closes or reopens the circuit
                if self._probe_out or not b.allow():
                    return 0
                n = 1
        r = self.rate_limit
        if r is not None:
            n = min(n, int(min(r.tokens, r.burst)))
        return max(0, n)

    def consume(self, n: int) -> None:
        b = self.breaker
        if b is not None and b.state is CircuitState.HALF_OPEN:
            if n > 0:
                self._probe_out = True
            else:
                b.release()  # the probe slot allow() reserved went unused
        if self.rate_limit is not None and n > 0:
            self.rate_limit.try_acquire(n)

    def wait_s(self, now: float) -> float:
        """Seconds until dispatch may resume (the dispatcher's poll timeout)."""
        w = 0.05 if self._probe_out else 0.0  # a probe's outcome arrives as an ack/nack
        if self.breaker is not None:
            w = max(w, self.breaker.retry_after)
        if self.rate_limit is not None:
            w = max(w, self.rate_limit.retry_after(1))
        return max(w, 0.001) if not math.isnan(w) else 0.001

    def record_success(self, n: int) -> None:
        b = self.breaker
        if b is not None:
            self._probe_out = False
            for _ in range(n):
                b.record_success()

    def record_failure(self) -> None:
        if self.breaker is not None:
            self._probe_out = False
            self.breaker.record_failure()
