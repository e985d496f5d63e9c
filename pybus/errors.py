"""The pybus error model: one base class, stable codes, severity and retryability.

Every error pybus raises is a :class:`BusError`. Its message says what was wrong
and what is allowed; ``code`` is a stable :class:`ErrorCode` that survives the
wire (a :class:`RemoteError` carries the remote side's code), ``severity`` says
how loud to be about it and ``retryable`` whether trying again can help.
"""

from __future__ import annotations

import builtins
import enum
from typing import Any

import zmq

__all__ = [
    "ErrorCode",
    "Severity",
    "BusError",
    "ValidationError",
    "TopicError",
    "FrameError",
    "HistogramRangeError",
    "TimeoutError",
    "TransportError",
    "BackpressureError",
    "RateLimitError",
    "CircuitOpenError",
    "RemoteError",
    "RetryExhaustedError",
    "AlreadyHandledError",
    "ClosedError",
    "from_zmq",
]


class ErrorCode(enum.IntEnum):
    """Stable numeric codes; never renumber, only add."""

    UNKNOWN = 1
    VALIDATION = 100
    TOPIC = 101
    FRAME = 102
    HISTOGRAM_RANGE = 103
    TIMEOUT = 200
    TRANSPORT = 201
    BACKPRESSURE = 202
    RATE_LIMITED = 203
    CIRCUIT_OPEN = 204
    CLOSED = 205
    REMOTE = 300
    RETRY_EXHAUSTED = 301
    UNKNOWN_METHOD = 302
    ALREADY_HANDLED = 303


class Severity(enum.IntEnum):
    """How loud an error should be: maps onto logging levels."""

    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50


class BusError(Exception):
    """Base of every pybus error.

    Attributes
    ----------
    code : ErrorCode
        Stable code of the error class (or of the remote error for RemoteError).
    severity : Severity
    retryable : bool
        True when the same call may succeed if tried again.
    """

    code: ErrorCode = ErrorCode.UNKNOWN
    severity: Severity = Severity.ERROR
    retryable: bool = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """A msgpack/JSON friendly description (used on the wire and in the DLQ)."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "code": int(self.code),
            "severity": int(self.severity),
            "retryable": self.retryable,
        }


class ValidationError(BusError, ValueError):
    """A caller passed an argument that is not allowed."""

    code = ErrorCode.VALIDATION


class TopicError(ValidationError):
    """A topic or topic pattern breaks the topic rules."""

    code = ErrorCode.TOPIC


class FrameError(BusError, ValueError):
    """A frame does not follow docs/wire.md (truncated, corrupt, unknown version)."""

    code = ErrorCode.FRAME
    severity = Severity.WARNING


class HistogramRangeError(ValidationError):
    """A value lies outside a histogram's trackable range."""

    code = ErrorCode.HISTOGRAM_RANGE


class TimeoutError(BusError, builtins.TimeoutError):  # noqa: A001 - deliberate, documented
    """Nothing arrived, or the peer did not answer, within the timeout."""

    code = ErrorCode.TIMEOUT
    severity = Severity.WARNING
    retryable = True


class TransportError(BusError, ConnectionError):
    """The transport (ZeroMQ) failed: bad endpoint, address in use, context gone."""

    code = ErrorCode.TRANSPORT
    retryable = True


class BackpressureError(BusError):
    """A bounded buffer stayed full past the caller's timeout."""

    code = ErrorCode.BACKPRESSURE
    severity = Severity.WARNING
    retryable = True


class _RetryAfterError(BusError):
    """A refusal that says when to try again: ``retry_after`` seconds."""

    severity = Severity.WARNING
    retryable = True

    def __init__(self, message: str = "", retry_after: float = 0.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class RateLimitError(_RetryAfterError):
    """A rate limiter refused the call; ``retry_after`` seconds until a token is due."""

    code = ErrorCode.RATE_LIMITED


class CircuitOpenError(_RetryAfterError):
    """A circuit breaker is open; ``retry_after`` seconds until it half-opens."""

    code = ErrorCode.CIRCUIT_OPEN


class ClosedError(BusError):
    """The object was used after close()."""

    code = ErrorCode.CLOSED


class RemoteError(BusError):
    """A remote handler raised; carries the remote type, message and code."""

    code = ErrorCode.REMOTE

    def __init__(
        self,
        message: str = "",
        remote_type: str = "Exception",
        remote_code: int = int(ErrorCode.UNKNOWN),
        retryable: bool = False,
        **details: Any,
    ) -> None:
        super().__init__(f"{remote_type}: {message}", **details)
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_code = remote_code
        self.retryable = retryable


class RetryExhaustedError(BusError):
    """Every attempt a retry policy allowed failed; ``last_error`` is the final one."""

    code = ErrorCode.RETRY_EXHAUSTED

    def __init__(
        self, message: str = "", attempts: int = 0, last_error: BaseException | None = None
    ) -> None:
        super().__init__(message, attempts=attempts)
        self.attempts = attempts
        self.last_error = last_error


class AlreadyHandledError(BusError):
    """A work-queue message whose effect an idempotency store holds already
    (``pybus.workqueue.idempotency``): the worker acks it as a duplicate, the handler's
    effect in that transaction is rolled back."""

    code = ErrorCode.ALREADY_HANDLED


def from_zmq(exc: zmq.ZMQError, what: str = "") -> BusError:
    """Map a ZeroMQ error onto the pybus error model (never leak zmq errors raw)."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, zmq.Again) or exc.errno == zmq.EAGAIN:
        return TimeoutError(f"{prefix}the socket would block (ZeroMQ EAGAIN)")
    if exc.errno == zmq.ETERM:
        return ClosedError(f"{prefix}the ZeroMQ context was terminated")
    if exc.errno in (zmq.EINVAL, zmq.EPROTONOSUPPORT, zmq.ENOCOMPATPROTO):
        err: BusError = ValidationError(
            f"{prefix}{exc.strerror}; endpoints look like tcp://HOST:PORT, ipc://PATH or "
            "inproc://NAME"
        )
        return err
    return TransportError(f"{prefix}{exc.strerror} (errno {exc.errno})")


# -- argument checks shared by the constructors (raise ValidationError) ------------------------


def check_positive_int(name: str, value: Any, hint: str = "") -> int:
    """``value`` if it is an int >= 1 (not a bool), else ValidationError naming ``name``;
    ``hint`` follows "an int >= 1" in the message (e.g. ``" (messages per topic)"``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{name} must be an int >= 1{hint}, got {value!r}")
    return value


def check_optional(name: str, value: Any, kind: type | tuple[type, ...], must_be: str) -> Any:
    """``value`` if it is None or an instance of ``kind``, else ValidationError naming
    ``name`` and what it must be (``must_be``, or None)."""
    if value is not None and not isinstance(value, kind):
        raise ValidationError(f"{name} must be {must_be} or None, got {value!r:.80}")
    return value


def check_callable(name: str, value: Any, must_be: str) -> Any:
    """``value`` if it is None or callable, else ValidationError: "``name`` must be
    ``must_be``, got ...\""""
    if value is not None and not callable(value):
        raise ValidationError(f"{name} must be {must_be}, got {value!r}")
    return value
