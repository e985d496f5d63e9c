"""The retry / circuit-breaker decisions of RPC requests, without sockets or waiting.

:class:`RequestGuard` is what :class:`pybus.Client` (blocking) and :class:`pybus.AsyncClient`
(asyncio) share: both are thin drivers that send, wait for rate-limit tokens, sleep between
attempts and reset their socket, and ask the guard everything else, in this order. A client
keeps one guard; a request's own state is its :class:`~pybus.policy.retry.RetryRun` (``run``)
and the breaker's start time of its current attempt (``t0``), locals of the driver, so a
request costs no object beyond the RetryRun it always had. The policies are the client's
attributes (``retry``, ``breaker``), read once per request as they always were::

    run = guard.start(retry)
    while True:
        t_attempt_s = guard.begin(run, timeout_s)   # counts a retry; the attempt's timeout
        try:
            <take a rate-limit token within t_attempt_s>
            t0 = guard.admit(breaker)               # the breaker may refuse (CircuitOpenError)
            try:
                result = <one attempt within t_attempt_s>
            except BaseException as exc:
                guard.attempt_failed(breaker, exc, t0)   # the breaker records it
                raise
            guard.succeeded(breaker, t0)            # the breaker records it
            return result
        except Exception as exc:
            delay_s, timed_out = guard.failed(run, exc, name, timeout_s)  # raises when it ends
        <reset the socket if timed_out>; <sleep delay_s if > 0>

A refused token or a refused breaker is a failed attempt for the retry policy too (it may be
retried), but only what the attempt itself raised is recorded by the breaker.
"""

from __future__ import annotations

from ..errors import BusError, RetryExhaustedError, TimeoutError
from ..policy.breaker import CircuitBreaker
from ..policy.retry import RetryPolicy, RetryRun

__all__ = ["RequestGuard"]

#: Shortest timeout an attempt gets when the retry deadline is nearly used up.
_MIN_ATTEMPT_S = 0.001


class RequestGuard:
    """The decisions of a client's requests under a retry policy and/or a circuit breaker
    (a breaker argument of None: no breaker).

    Parameters
    ----------
    endpoint : str
        The server, for the error raised when every attempt timed out.
    stats : dict
        The client's counters; ``"retries"`` is incremented from each request's second
        attempt on.
    """

    __slots__ = ("_endpoint", "_stats")

    def __init__(self, endpoint: str, stats: dict[str, int]) -> None:
        self._endpoint = endpoint
        self._stats = stats

    @staticmethod
    def start(retry: RetryPolicy | None) -> RetryRun | None:
        """A request begins: its retry state (None without a policy: one attempt)."""
        return retry.start() if retry is not None else None

    def begin(self, run: RetryRun | None, timeout_s: float) -> float:
        """Start an attempt; return its timeout in seconds (``timeout_s``, cut to what the retry
        deadline leaves but at least 1 ms). Counts a retry from the second attempt on."""
        if run is None:
            return timeout_s
        if run.begin_attempt() > 1:
            self._stats["retries"] += 1
        remaining = run.remaining()
        if remaining is None:
            return timeout_s
        return max(_MIN_ATTEMPT_S, min(timeout_s, remaining))

    @staticmethod
    def admit(breaker: CircuitBreaker | None) -> float:
        """Ask the breaker for this attempt (raises CircuitOpenError when refused); call right
        before the attempt (after its rate-limit token). Returns ``t0``, the breaker's clock at
        the start, for :meth:`succeeded` / :meth:`attempt_failed` (0.0 without a breaker)."""
        if breaker is None:
            return 0.0
        breaker.check()
        return breaker.clock()

    @staticmethod
    def succeeded(breaker: CircuitBreaker | None, t0: float) -> None:
        """The attempt admitted at ``t0`` returned: the breaker records a success and its
        duration."""
        if breaker is not None:
            breaker.record_success(breaker.clock() - t0)

    @staticmethod
    def attempt_failed(breaker: CircuitBreaker | None, exc: BaseException, t0: float) -> None:
        """The attempt admitted at ``t0`` raised ``exc``: the breaker records it (a failure, or
        only the release of its permission for cancellation and excluded errors)."""
        if breaker is not None:
            breaker.record_exception(exc, breaker.clock() - t0)

    def failed(
        self, run: RetryRun | None, exc: Exception, name: str, timeout_s: float
    ) -> tuple[float, bool]:
        """After an attempt of request ``name`` failed with ``exc`` (its token or the breaker
        refused, or it raised): ``(delay_s, timed_out)``, the seconds to wait before the next
        attempt and whether this one timed out (the Lazy Pirate client then resets its socket).

        Raises ``exc`` itself without a retry policy or when it is not retryable; when attempts
        or the deadline are used up, a :class:`~pybus.TimeoutError` naming the request if the
        last attempt timed out, else the policy's :class:`~pybus.RetryExhaustedError`.
        """
        if run is None:
            raise exc
        try:
            delay_s = run.failed(exc)
        except RetryExhaustedError as ex:
            err = self._exhausted(ex, name, timeout_s)
            if err is ex:
                raise
            raise err from ex
        return delay_s, isinstance(exc, TimeoutError)

    def _exhausted(self, ex: RetryExhaustedError, name: str, timeout_s: float) -> BusError:
        if isinstance(ex.last_error, TimeoutError):
            return TimeoutError(
                f"no reply to {name!r} from {self._endpoint} after {ex.attempts} attempts "
                f"({timeout_s:g} s each); is the server running?",
                attempts=ex.attempts,
            )
        return ex
