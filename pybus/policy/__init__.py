"""Decisions without sockets: retry policies, the circuit breaker, rate limits, topic rules."""

from .breaker import CircuitBreaker, CircuitState
from .ratelimit import KeyedRateLimiter, RateLimiter
from .retry import RetryPolicy
from .topics import TopicMatcher, TopicPattern, validate_pattern, validate_topic

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "KeyedRateLimiter",
    "RateLimiter",
    "RetryPolicy",
    "TopicMatcher",
    "TopicPattern",
    "validate_pattern",
    "validate_topic",
]
