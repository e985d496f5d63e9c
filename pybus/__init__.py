"""pybus: a brokerless message bus for Python, batched in C over ZeroMQ."""

from . import aio
from ._native import *  # noqa: F403
from ._native import __all__ as _native_all
from ._version import __version__
from .errors import (
    BackpressureError,
    BusError,
    CircuitOpenError,
    ClosedError,
    ErrorCode,
    FrameError,
    HistogramRangeError,
    RateLimitError,
    RemoteError,
    RetryExhaustedError,
    Severity,
    TimeoutError,
    TopicError,
    TransportError,
    ValidationError,
)
from .pubsub import Publisher, Subscriber
from .topics import TopicMatcher, TopicPattern, validate_pattern, validate_topic

__all__ = [
    "__version__",
    "BackpressureError",
    "BusError",
    "CircuitOpenError",
    "ClosedError",
    "ErrorCode",
    "FrameError",
    "HistogramRangeError",
    "RateLimitError",
    "RemoteError",
    "RetryExhaustedError",
    "Severity",
    "TimeoutError",
    "TopicError",
    "TransportError",
    "ValidationError",
    "Publisher",
    "Subscriber",
    "TopicMatcher",
    "TopicPattern",
    "aio",
    "validate_pattern",
    "validate_topic",
    *_native_all,
]
