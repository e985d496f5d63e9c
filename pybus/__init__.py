"""pybus: a brokerless message bus for Python, batched in C over ZeroMQ."""

from . import aio, metrics
from ._native import (
    FLAG_MSGPACK,
    FRAME_HEADER_SIZE,
    FRAME_VERSION,
    FULL,
    PENDING,
    READY,
    RECORD_HEADER_SIZE,
    RING_RECORD_OVERHEAD,
    Batcher,
    Histogram,
    Message,
    decode_batch,
    decode_into,
    decode_payloads,
    encode_frame,
    frame_info,
    iter_frame,
    ring_record_size,
)
from ._sockets import Liveness, SlowConsumerError
from ._version import __version__
from .allocator import tune_allocator
from .breaker import CircuitBreaker, CircuitState
from .dlq import DeadLetter, DeadLetterQueue
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
from .proxy import Proxy
from .pubsub import Publisher, Subscriber
from .ratelimit import KeyedRateLimiter, RateLimiter
from .retry import RetryPolicy
from .rpc import Client, Server
from .rpc_aio import AsyncClient
from .security import Curve, keypair, load_keypair, load_public_key, load_secret_key, save_keypair
from .topics import TopicMatcher, TopicPattern, validate_pattern, validate_topic
from .worker import Worker
from .workqueue import WorkQueue

__all__ = [
    "__version__",
    "AsyncClient",
    "Client",
    "Server",
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
    "validate_pattern",
    "validate_topic",
    "Worker",
    "WorkQueue",
    "tune_allocator",
    "Batcher",
    "FLAG_MSGPACK",
    "FRAME_HEADER_SIZE",
    "FRAME_VERSION",
    "Histogram",
    "Message",
    "FULL",
    "PENDING",
    "READY",
    "RECORD_HEADER_SIZE",
    "RING_RECORD_OVERHEAD",
    "decode_batch",
    "decode_into",
    "decode_payloads",
    "encode_frame",
    "frame_info",
    "iter_frame",
    "ring_record_size",
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
