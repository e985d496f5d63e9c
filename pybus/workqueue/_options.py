"""Checks of the WorkQueue's and Worker's constructor arguments, and their renamed options.

Each check raises :class:`pybus.ValidationError` naming the argument before any socket
exists, so ``__init__`` only builds objects. Options renamed to carry their unit
(``heartbeat_interval`` -> ``heartbeat_interval_s``, ``ack_flush_interval`` ->
``ack_flush_interval_s``) keep their old spelling for one release through
:func:`pybus._deprecated.renamed`.
"""

from __future__ import annotations

from typing import Any

import zmq

from ..errors import ValidationError
from ..wire import workqueue as P

__all__ = ["check_context", "check_queue_options", "check_worker_options"]


def check_context(context: Any) -> None:
    """``context=``: None (a private context) or a live zmq.Context."""
    if context is None:
        return
    if not isinstance(context, zmq.Context):
        raise ValidationError(
            f"context must be a zmq.Context (or None for a private one), got "
            f"{type(context).__name__}"
        )
    if context.closed:
        raise ValidationError("context is a terminated zmq.Context; pass a live one or None")


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError(f"{name} must be a number > 0, got {value!r}")


def _int_in(name: str, value: Any, lo: int = 1, hi: int = 1 << 31, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationError(f"{name} must be an int in {lo}..{hi}{note}, got {value!r}")


def _check_endpoint(endpoint: object) -> None:
    if not isinstance(endpoint, str):
        raise ValidationError(
            f"endpoint must be a str like tcp://127.0.0.1:5555, got {type(endpoint).__name__}"
        )


def check_queue_options(
    endpoint: object, dlq: Any, ack_timeout_s: float, heartbeat_interval_s: float,
    heartbeat_liveness: int, max_in_flight: int, max_queued: int, put_timeout_s: float | None,
    context: Any,
) -> None:
    """WorkQueue's argument checks (retry, breaker and rate_limit are checked by _policy)."""
    _check_endpoint(endpoint)
    _positive("ack_timeout_s", ack_timeout_s)
    _positive("heartbeat_interval_s", heartbeat_interval_s)
    _int_in("heartbeat_liveness", heartbeat_liveness, 1, 1000)
    _int_in("max_in_flight", max_in_flight)
    _int_in("max_queued", max_queued)
    _positive("put_timeout_s", put_timeout_s, allow_none=True)
    if dlq is not None and not callable(getattr(dlq, "add", None)):
        raise ValidationError("dlq must be a pybus.DeadLetterQueue (an object with add())")
    check_context(context)


def check_worker_options(
    endpoint: object, handler: Any, concurrency: int, dedupe_window: int, prefetch: int | None,
    heartbeat_interval_s: float, heartbeat_liveness: int, ack_flush_interval_s: float,
    context: Any,
) -> int:
    """Worker's argument checks; returns ``prefetch`` with its default applied."""
    _check_endpoint(endpoint)
    if not callable(handler):
        raise ValidationError(
            f"handler must be callable as handler(message), got {type(handler).__name__}"
        )
    _int_in("concurrency", concurrency, 1, 1024)
    _int_in("heartbeat_liveness", heartbeat_liveness, 1, 1000)
    _int_in("dedupe_window", dedupe_window, 0, 10_000_000, " (0 disables)")
    if prefetch is None:
        prefetch = max(1024, 256 * concurrency)
    _int_in("prefetch", prefetch, concurrency, P.MAX_CREDIT, " (concurrency..MAX_CREDIT)")
    _positive("heartbeat_interval_s", heartbeat_interval_s)
    _positive("ack_flush_interval_s", ack_flush_interval_s)
    check_context(context)
    return prefetch
