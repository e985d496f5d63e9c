"""Glue between the work-queue dispatcher and the reliability policies.

The dispatcher thread must never block, so it consults the retry policy for a delay (to put on
its timer heap), the circuit breaker for "may I dispatch now", and the rate limiter for "how
many messages may go now" -- all non-blocking questions asked here.
"""

from __future__ import annotations

from typing import Any

from .errors import RemoteError, ValidationError

__all__ = ["RetryPlan", "Throttle"]


class RetryPlan:
    """Per-message retry decisions from a :class:`pybus.RetryPolicy`."""

    def __init__(self, policy: Any) -> None:
        from .retry import RetryPolicy

        if policy is None:
            policy = RetryPolicy.exponential(0.1, max_delay=5.0, max_attempts=5)
        if not isinstance(policy, RetryPolicy):
            raise ValidationError(
                f"retry must be a pybus.RetryPolicy (RetryPolicy.fixed/linear/exponential), "
                f"got {type(policy).__name__}"
            )
        self.policy = policy

    def next_delay(self, failures: int, elapsed_s: float, err: RemoteError) -> float | None:
        """Delay before the next delivery after ``failures`` failed ones, or None to give up."""
        raise NotImplementedError  # filled in once pybus.retry lands

    def dead_letter(self, dlq: Any, rec: Any, err: RemoteError, origin: str) -> None:
        raise NotImplementedError


class Throttle:
    """Non-blocking view of an optional breaker and rate limiter for the dispatcher."""

    def __init__(self, breaker: Any, rate_limit: Any) -> None:
        self.breaker = breaker
        self.rate_limit = rate_limit
        self.active = breaker is not None or rate_limit is not None

    def allowance(self, now: float) -> int:
        return 1 << 30

    def wait_s(self, now: float) -> float:
        return 0.0

    def consume(self, n: int) -> None:
        pass

    def record_success(self, n: int) -> None:
        pass

    def record_failure(self) -> None:
        pass
