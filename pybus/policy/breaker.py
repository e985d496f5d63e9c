"""A circuit breaker: stop calling a peer that keeps failing, probe it, recover.

States (the classic three):

- **closed** - calls pass; outcomes go into a count-based sliding window of the
  last ``window`` calls. The breaker opens when the window holds
  ``failure_threshold`` failures, or (with ``failure_rate``) when at least
  ``min_calls`` outcomes are recorded and the failed fraction reaches
  ``failure_rate``. A call slower than ``slow_call_threshold_s`` seconds counts
  as a failure even when it returned.
- **open** - calls are refused with :class:`~pybus.CircuitOpenError` for
  ``reset_timeout_s`` seconds (``retry_after`` says how long is left).
- **half-open** - up to ``half_open_probes`` calls at a time go through as
  probes; ``success_threshold`` successful probes close the breaker (and clear
  the window), a single failed probe opens it again.

Example
-------
>>> breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=10.0)
>>> breaker.call(lambda: 42)
42
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from .. import metrics as _metrics
from .._deprecated import DeprecatedAlias, renamed
from ..errors import CircuitOpenError, ValidationError, check_callable, check_positive_int
from ..metrics.samples import RawSample

__all__ = ["CircuitBreaker", "CircuitState"]

T = TypeVar("T")
Listener = Callable[["CircuitState", "CircuitState"], Any]
_log = logging.getLogger("pybus.breaker")


class CircuitState(enum.StrEnum):
    """The three breaker states (string valued, so they log and compare readably)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _seconds(name: str, value: Any, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < float("inf")
    ):
        extra = " or None" if allow_none else ""
        raise ValidationError(
            f"{name} must be a finite number of seconds >= 0{extra}, got {value!r}"
        )
    return float(value)


class CircuitBreaker:
    """Closed / open / half-open circuit breaker; thread-safe.

    Parameters
    ----------
    failure_threshold : int or None
        Open when the window holds this many failures (None: rate only).
    failure_rate : float or None
        Open when failures / recorded calls >= this (0 < rate <= 1).
    window : int or None
        Size of the sliding window of last calls; default ``failure_threshold``
        (so the default trips on that many consecutive failures) or 20 in
        rate mode.
    min_calls : int or None
        Outcomes needed before the rate is judged; default ``window``.
    slow_call_threshold_s : float or None
        Seconds; a slower call counts as a failure.
    reset_timeout_s : float
        Seconds spent open before probing.
    half_open_probes : int
        Probe calls allowed at once while half-open.
    success_threshold : int or None
        Successful probes needed to close; default ``half_open_probes``.
    is_failure : callable(exc) -> bool, or None
        Which exceptions count as failures; default every ``Exception``.
    clock : callable
        Monotonic seconds (inject a fake in tests).
    name : str
        Used in error messages and logs.
    registry : pybus.metrics.Registry or False, optional
        Where this object reports its counters (default: ``pybus.metrics.default_registry``;
        ``False``: nowhere).
    slow_call_threshold, reset_timeout : optional
        Deprecated names of ``slow_call_threshold_s`` and ``reset_timeout_s`` (a warning;
        removed in the next release). The attributes of the old names warn too.
    """

    slow_call_threshold = DeprecatedAlias("slow_call_threshold_s")
    reset_timeout = DeprecatedAlias("reset_timeout_s")

    def __init__(
        self,
        failure_threshold: int | None = 5,
        *,
        failure_rate: float | None = None,
        window: int | None = None,
        min_calls: int | None = None,
        slow_call_threshold_s: float | None = None,
        reset_timeout_s: float = 30.0,
        half_open_probes: int = 1,
        success_threshold: int | None = None,
        is_failure: Callable[[BaseException], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "breaker",
        registry: Any = None,
        slow_call_threshold: float | None = None,
        reset_timeout: float | None = None,
    ) -> None:
        slow_call_threshold_s = renamed("CircuitBreaker", "slow_call_threshold",
                                        slow_call_threshold, "slow_call_threshold_s",
                                        slow_call_threshold_s, None)
        reset_timeout_s = renamed("CircuitBreaker", "reset_timeout", reset_timeout,
                                  "reset_timeout_s", reset_timeout_s, 30.0)
        if failure_threshold is None and failure_rate is None:
            raise ValidationError(
                "a circuit breaker needs failure_threshold (int >= 1) or failure_rate (0 < r <= 1)"
            )
        if failure_threshold is not None:
            check_positive_int("failure_threshold", failure_threshold)
        if failure_rate is not None and (
            isinstance(failure_rate, bool)
            or not isinstance(failure_rate, (int, float))
            or not 0 < failure_rate <= 1
        ):
            raise ValidationError(f"failure_rate must be in (0, 1], got {failure_rate!r}")
        if window is None:
            window = 20 if failure_rate is not None else int(failure_threshold or 1)
        check_positive_int("window", window)
        if failure_threshold is not None and failure_threshold > window:
            raise ValidationError(
                f"failure_threshold ({failure_threshold}) cannot exceed window ({window}): "
                "the window would never hold that many failures"
            )
        if min_calls is None:
            min_calls = window
        check_positive_int("min_calls", min_calls)
        if min_calls > window:
            raise ValidationError(f"min_calls ({min_calls}) cannot exceed window ({window})")
        self.failure_threshold = failure_threshold
        self.failure_rate = None if failure_rate is None else float(failure_rate)
        self.window = window
        self.min_calls = min_calls
        self.slow_call_threshold_s = _seconds("slow_call_threshold_s", slow_call_threshold_s, True)
        self.reset_timeout_s = float(_seconds("reset_timeout_s", reset_timeout_s) or 0.0)
        self.half_open_probes = check_positive_int("half_open_probes", half_open_probes)
        self.success_threshold = check_positive_int(
            "success_threshold",
            half_open_probes if success_threshold is None else success_threshold,
        )
        self._is_failure = check_callable(
            "is_failure", is_failure, "a predicate on the exception"
        )
        self.clock = clock
        self.name = name

        self._lock = threading.Lock()
        self._local = threading.local()
        self._state = CircuitState.CLOSED
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=window)  # True = failure
        self._window_failures = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._listeners: list[Listener] = []
        self._stats = {
            "calls": 0,
            "successes": 0,
            "failures": 0,
            "slow_calls": 0,
            "rejected": 0,
            "opened": 0,
            "ignored": 0,
            "listener_errors": 0,
        }
        _metrics.attach(self, registry)

    # -- listeners --------------------------------------------------------------------
    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(old_state, new_state)`` after each state change (outside the lock)."""
        if not callable(fn):
            raise ValidationError(f"a listener must be callable(old, new), got {fn!r}")
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        """Stop calling ``fn``; a listener not registered is ignored."""
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def _fire(self, changes: list[tuple[CircuitState, CircuitState]]) -> None:
        if not changes:
            return
        listeners = list(self._listeners)
        for old, new in changes:
            for fn in listeners:
                try:
                    fn(old, new)
                except Exception:  # a listener bug must not break the protected call
                    with self._lock:
                        self._stats["listener_errors"] += 1
                    _log.exception("circuit %s: listener %r failed", self.name, fn)

    # -- state machine (call with the lock held) ---------------------------------------
    def _transition(
        self, new: CircuitState, changes: list[tuple[CircuitState, CircuitState]]
    ) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if new is CircuitState.OPEN:
            self._opened_at = self.clock()
            self._stats["opened"] += 1
        elif new is CircuitState.CLOSED:
            self._outcomes.clear()
            self._window_failures = 0
        if new is not CircuitState.HALF_OPEN:
            self._probes_in_flight = 0
        self._probe_successes = 0
        changes.append((old, new))

    def _refresh(self, changes: list[tuple[CircuitState, CircuitState]]) -> None:
        if (
            self._state is CircuitState.OPEN
            and self.clock() - self._opened_at >= self.reset_timeout_s
        ):
            self._transition(CircuitState.HALF_OPEN, changes)

    def _should_trip(self) -> bool:
        if self.failure_threshold is not None and self._window_failures >= self.failure_threshold:
            return True
        if self.failure_rate is not None and len(self._outcomes) >= self.min_calls:
            return self._window_failures / len(self._outcomes) >= self.failure_rate
        return False

    # -- public state -----------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker past reset_timeout_s reads as half-open)."""
        changes: list[tuple[CircuitState, CircuitState]] = []
        with self._lock:
            self._refresh(changes)
            state = self._state
        self._fire(changes)
        return state

    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker half-opens; 0 when not open."""
        with self._lock:
            if self._state is not CircuitState.OPEN:
                return 0.0
            return max(0.0, self.reset_timeout_s - (self.clock() - self._opened_at))

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "circuit_breaker"

    def metrics_samples(self) -> Iterator[RawSample]:
        # .state (not stats()["state"]): an open breaker past reset_timeout_s reads as half-open
        state = str(self.state.value)
        s = self.stats()
        for st in ("closed", "open", "half_open"):
            yield "pybus_circuit_breaker_state", {"state": st}, 1 if st == state else 0
        yield "pybus_circuit_breaker_calls_total", {"outcome": "success"}, s["successes"]
        yield "pybus_circuit_breaker_calls_total", {"outcome": "failure"}, s["failures"]
        yield "pybus_circuit_breaker_opened_total", {}, s["opened"]
        yield "pybus_circuit_breaker_rejected_total", {}, s["rejected"]

    def metrics_readiness(self) -> tuple[bool, str]:
        if str(self.state.value) == "open":
            return False, f"circuit breaker is open; probes in {self.retry_after:.1f} s"
        return True, ""

    def stats(self) -> dict[str, Any]:
        """Counters plus the state and the window's failure count."""
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
            out["state"] = self._state.value
            out["window_failures"] = self._window_failures
            out["window_calls"] = len(self._outcomes)
        return out

    # -- allow / record ---------------------------------------------------------------
    def allow(self) -> bool:
        """Ask to make one call. True: go ahead, then call record_success/record_failure.

        In half-open state a True answer reserves a probe slot, so every True
        must be followed by exactly one record call.
        """
        changes: list[tuple[CircuitState, CircuitState]] = []
        with self._lock:
            self._refresh(changes)
            if self._state is CircuitState.CLOSED:
                ok = True
            elif self._state is CircuitState.HALF_OPEN and (
                self._probes_in_flight < self.half_open_probes
            ):
                self._probes_in_flight += 1
                ok = True
            else:
                ok = False
                self._stats["rejected"] += 1
        self._fire(changes)
        return ok

    def check(self) -> None:
        """Like :meth:`allow` but raise :class:`CircuitOpenError` when refused."""
        if not self.allow():
            raise self._open_error()

    def _open_error(self) -> CircuitOpenError:
        retry_after = self.retry_after
        with self._lock:
            state = self._state
        if state is CircuitState.HALF_OPEN:
            what = f"is half-open with all {self.half_open_probes} probe slot(s) busy"
        else:
            what = f"is open after repeated failures; it half-opens in {retry_after:.3g} s"
        return CircuitOpenError(
            f"circuit {self.name!r} {what}; calls are refused until a probe succeeds",
            retry_after=retry_after,
        )

    def record_success(self, duration: float | None = None) -> None:
        """Record a call that returned; ``duration`` (seconds) enables the slow-call rule."""
        if (
            duration is not None
            and self.slow_call_threshold_s is not None
            and duration > self.slow_call_threshold_s
        ):
            with self._lock:
                self._stats["slow_calls"] += 1
            self._record(failed=True)
        else:
            self._record(failed=False)

    def record_failure(self, duration: float | None = None) -> None:
        """Record a failed call."""
        self._record(failed=True)

    def _record(self, failed: bool) -> None:
        changes: list[tuple[CircuitState, CircuitState]] = []
        with self._lock:
            self._stats["calls"] += 1
            self._stats["failures" if failed else "successes"] += 1
            self._refresh(changes)
            if self._state is CircuitState.HALF_OPEN:
                if self._probes_in_flight > 0:
                    self._probes_in_flight -= 1
                if failed:
                    self._transition(CircuitState.OPEN, changes)
                else:
                    self._probe_successes += 1
                    if self._probe_successes >= self.success_threshold:
                        self._transition(CircuitState.CLOSED, changes)
            elif self._state is CircuitState.CLOSED:
                if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
                    self._window_failures -= 1
                self._outcomes.append(failed)
                if failed:
                    self._window_failures += 1
                # Checked after successes too: in rate mode the call that reaches
                # min_calls may be a success while the rate is already too high.
                if self._window_failures and self._should_trip():
                    self._transition(CircuitState.OPEN, changes)
            # OPEN: a call that was allowed before the breaker opened finished late;
            # its outcome says nothing about the peer now, so it only counts in stats.
        self._fire(changes)

    def _counts_as_failure(self, exc: BaseException) -> bool:
        return True if self._is_failure is None else bool(self._is_failure(exc))

    # -- wrappers ---------------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` through the breaker.

        Raises
        ------
        CircuitOpenError
            When the breaker refuses the call (``retry_after`` seconds left).
        """
        self.check()
        t0 = self.clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._after_error(exc, t0)
            raise
        self.record_success(self.clock() - t0)
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker; see :meth:`call`."""
        self.check()
        t0 = self.clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._after_error(exc, t0)
            raise
        self.record_success(self.clock() - t0)
        return result

    def record_exception(self, exc: BaseException, duration: float | None = None) -> None:
        """Record a call that raised ``exc``: a failure if ``is_failure`` says so,
        otherwise (cancellation, excluded errors) only the permission is released."""
        if isinstance(exc, Exception) and self._counts_as_failure(exc):
            self.record_failure(duration)
        else:
            self.release()

    def _after_error(self, exc: BaseException, t0: float) -> None:
        if isinstance(exc, Exception) and self._counts_as_failure(exc):
            self.record_failure(self.clock() - t0)
        else:
            # Cancellation, KeyboardInterrupt or an excluded error: not the peer's
            # fault, so no outcome is recorded, but a probe slot must be released.
            self.release()

    def release(self) -> None:
        """Give back a permission from :meth:`allow` without recording an outcome."""
        with self._lock:
            self._stats["ignored"] += 1
            if self._state is CircuitState.HALF_OPEN and self._probes_in_flight > 0:
                self._probes_in_flight -= 1

    def __enter__(self) -> CircuitBreaker:
        self.check()
        # A stack per thread: the same breaker may guard nested or concurrent blocks.
        stack = getattr(self._local, "t0", None)
        if stack is None:
            stack = self._local.t0 = []
        stack.append(self.clock())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        t0 = self._local.t0.pop()
        if exc is None:
            self.record_success(self.clock() - t0)
        else:
            self._after_error(exc, t0)

    def reset(self) -> None:
        """Force the breaker closed and clear its window."""
        changes: list[tuple[CircuitState, CircuitState]] = []
        with self._lock:
            self._transition(CircuitState.CLOSED, changes)
            self._outcomes.clear()
            self._window_failures = 0
        self._fire(changes)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.value!r})"
