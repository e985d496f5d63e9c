"""pybus: a brokerless message bus for Python, batched in C over ZeroMQ."""

from . import aio, metrics, wire
from ._native import Histogram, Message
from ._version import __version__
from .allocator import tune_allocator
from .errors import (
    AlreadyHandledError,
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
from .policy.breaker import CircuitBreaker, CircuitState
from .policy.ratelimit import KeyedRateLimiter, RateLimiter
from .policy.retry import RetryPolicy
from .policy.topics import TopicMatcher, TopicPattern, validate_pattern, validate_topic
from .pubsub import Publisher, Subscriber
from .pubsub.proxy import Proxy
from .rpc import AsyncClient, Client, Server
from .store.dlq import DeadLetter, DeadLetterQueue
from .transport.security import (
    Curve,
    keypair,
    load_keypair,
    load_public_key,
    load_secret_key,
    save_keypair,
)
from .transport.sockets import Liveness, SlowConsumerError
from .workqueue import SQLiteIdempotency, Worker, WorkQueue

__all__ = [
    "__version__",
    "AsyncClient",
    "Client",
    "Server",
    "AlreadyHandledError",
    "BackpressureError",
    "BusError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "ClosedError",
    "DeadLetter",
    "DeadLetterQueue",
    "ErrorCode",
    "FrameError",
    "HistogramRangeError",
    "KeyedRateLimiter",
    "RateLimitError",
    "RateLimiter",
    "RemoteError",
    "RetryExhaustedError",
    "RetryPolicy",
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
    "metrics",
    "wire",
    "validate_pattern",
    "validate_topic",
    "Worker",
    "WorkQueue",
    "SQLiteIdempotency",
    "tune_allocator",
    "Histogram",
    "Message",
    "Curve",
    "Liveness",
    "Proxy",
    "SlowConsumerError",
    "keypair",
    "load_keypair",
    "load_public_key",
    "load_secret_key",
    "save_keypair",
]


# Moved to pybus.wire (codec and ring internals are not what an application needs); the old
# names keep working for one release, with a DeprecationWarning.
_MOVED_TO_WIRE = frozenset(wire.__all__)


def __getattr__(name: str) -> object:
    if name in _MOVED_TO_WIRE:
        import warnings

        warnings.warn(
            f"pybus.{name} moved to pybus.wire.{name}; the old name will be removed in the "
            "next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(wire, name)
    raise AttributeError(f"module 'pybus' has no attribute {name!r}")
