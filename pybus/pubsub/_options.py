"""Validation of the Publisher's and Subscriber's constructor arguments.

Each ``*_options`` function checks the arguments before any socket exists and returns a small
frozen object with the values the constructor uses (deprecated aliases resolved, derived
high-water marks and timings computed), so ``__init__`` only builds the objects.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._deprecated import renamed
from ..errors import ValidationError, check_positive_int
from . import _base as base

_ON_FULL = ("block", "drop", "raise")
_DELIVERY = ("reliable", "best_effort")
# Reliable mode: at most this many frames of the send high-water mark kept free of the window,
# for the marks that go out beside the data (position frames go in the window, see
# _send_positions).
_WINDOW_SPARE_FRAMES = 16
# Reliable mode: the smallest default send high-water mark, in frames. ZeroMQ may see a
# queue as up to half its high-water mark fuller than it is (a reader reports what it read
# every hwm/2 messages), so the window in frames is half of it.
_MIN_RELIABLE_HWM = 256


def as_endpoints(endpoint: str | Sequence[str], name: str = "endpoint") -> list[str]:
    """``endpoint`` as a non-empty list of non-empty strings (ValidationError otherwise)."""
    eps = [endpoint] if isinstance(endpoint, str) else list(endpoint)
    if not eps or not all(isinstance(e, str) and e for e in eps):
        raise ValidationError(
            f"{name} must be a non-empty str or a list of them (tcp://HOST:PORT, ipc://PATH, "
            f"inproc://NAME), got {endpoint!r}"
        )
    return eps


def _deprecated_window(cls: str, window_bytes: int, max_queued_bytes: int | None) -> int:
    if max_queued_bytes is None:
        return window_bytes
    # stacklevel: this function, the *_options function, __init__, the caller
    warnings.warn(f"{cls}(max_queued_bytes=) is deprecated: use window_bytes=",
                  DeprecationWarning, stacklevel=4)
    return max_queued_bytes


@dataclass(frozen=True, slots=True)
class PublisherOptions:
    """A Publisher's validated arguments and the values derived from them."""

    endpoints: list[str]
    publisher_id: int
    reliable: bool
    window_bytes: int
    #: reliable mode: the window in frames (half the send high-water mark, less spares)
    window_frames: int
    slow_consumer_timeout_ns: int
    sndhwm: int
    block_timeout_s: float
    close_linger_ms: int
    #: the batcher's idle and delay bounds, batch_hold_us applied
    idle_us: float
    delay_us: float
    holding: bool
    #: the flusher's first look after a batch starts (see Publisher.__init__)
    first_tick_s: float


def publisher_options(
    endpoint: str | Sequence[str], *, delivery: str, window_bytes: int,
    slow_consumer_timeout_s: float, on_full: str, block_timeout_s: float, batch_hold_us: float,
    max_delay_us: float, idle_us: float, max_batch_bytes: int, max_queued_bytes: int | None,
    sndhwm: int | None, close_linger_ms: int, publisher_id: int | None, history: int,
    history_endpoint: str | None,
    old_names: tuple[float | None, float | None, float | None] = (None, None, None),
) -> PublisherOptions:
    """Check a Publisher's arguments (ValidationError) and derive what it needs.
    ``old_names``: the deprecated ``slow_consumer_timeout``, ``block_timeout`` and
    ``linger_us`` as given (None: not used)."""
    old_slow, old_block, old_hold = old_names
    slow_consumer_timeout_s = renamed("Publisher", "slow_consumer_timeout", old_slow,
                                      "slow_consumer_timeout_s", slow_consumer_timeout_s, 5.0,
                                      depth=1)
    block_timeout_s = renamed("Publisher", "block_timeout", old_block, "block_timeout_s",
                              block_timeout_s, 10.0, depth=1)
    batch_hold_us = renamed("Publisher", "linger_us", old_hold, "batch_hold_us", batch_hold_us,
                            0.0, depth=1)
    if history and not history_endpoint:
        raise ValidationError("history needs history_endpoint (e.g. 'tcp://*:5557')")
    if on_full not in _ON_FULL:
        raise ValidationError(f"on_full must be one of {_ON_FULL}, got {on_full!r}")
    if delivery not in _DELIVERY:
        raise ValidationError(f"delivery must be one of {_DELIVERY}, got {delivery!r}")
    window_bytes = _deprecated_window("Publisher", window_bytes, max_queued_bytes)
    check_positive_int("window_bytes", window_bytes)
    if not slow_consumer_timeout_s > 0:
        raise ValidationError(
            f"slow_consumer_timeout_s must be > 0 seconds, got {slow_consumer_timeout_s!r}"
        )
    if not block_timeout_s >= 0:
        raise ValidationError(f"block_timeout_s must be >= 0 seconds, got {block_timeout_s!r}")
    for name, value in (("batch_hold_us", batch_hold_us), ("idle_us", idle_us),
                        ("max_delay_us", max_delay_us)):
        if not value >= 0:
            raise ValidationError(f"{name} must be >= 0, got {value!r}")
    if close_linger_ms < 0:
        raise ValidationError(f"close_linger_ms must be >= 0, got {close_linger_ms!r}")
    endpoints = as_endpoints(endpoint)
    if batch_hold_us > 0:
        # Holding batches open: never send a lone message at once; flush after batch_hold_us.
        # (the batcher still sends the very first message at once: it has never drained)
        idle, delay = 1e9, float(batch_hold_us)
    else:
        idle, delay = float(idle_us), float(max_delay_us)
    reliable = delivery == "reliable"
    if sndhwm is not None:
        hwm = int(sndhwm)
    else:
        hwm = base.hwm_for(window_bytes, max_batch_bytes)
        if reliable:
            hwm = max(_MIN_RELIABLE_HWM, hwm)
    least = 4 if reliable else 1
    if hwm < least:
        raise ValidationError(
            f"sndhwm must be >= {least} frames with delivery={delivery!r}, got {sndhwm!r}"
        )
    # reliable: the window in frames is half the high-water mark, which ZeroMQ may see
    # that much fuller than it is, less a few spare frames for the marks
    spare = max(1, min(_WINDOW_SPARE_FRAMES, hwm // 8))
    return PublisherOptions(
        endpoints=endpoints,
        publisher_id=random.getrandbits(64) if publisher_id is None else publisher_id,
        reliable=reliable,
        window_bytes=window_bytes,
        window_frames=hwm // 2 - spare if reliable else 0,
        slow_consumer_timeout_ns=int(slow_consumer_timeout_s * 1e9),
        sndhwm=hwm,
        block_timeout_s=float(block_timeout_s),
        close_linger_ms=int(close_linger_ms),
        idle_us=idle,
        delay_us=delay,
        holding=batch_hold_us > 0,
        # with batch_hold_us, when the batch is due; else after idle_us, so a lone message (or
        # the end of a burst) that came too soon after the previous send to go out at once
        # waits about idle_us, not max_delay_us
        first_tick_s=delay / 1e6 if batch_hold_us > 0 else min(idle, delay) / 1e6,
    )


@dataclass(frozen=True, slots=True)
class SubscriberOptions:
    """A Subscriber's validated arguments and the values derived from them."""

    endpoints: list[str]
    topics: list[str]
    max_frame_bytes: int
    rcvhwm: int
    snail_close: bool
    max_lag_ns: int
    history_endpoints: list[str]


def subscriber_options(
    endpoints: str | Sequence[str], topics: Sequence[str] | None, *, rcvhwm: int | None,
    max_message_bytes: int, max_batch_bytes: int, window_bytes: int,
    max_queued_bytes: int | None, on_gap: Callable[..., Any] | None, max_streams: int,
    slow_consumer: str, max_lag_s: float | None, late_join: bool,
    history_endpoint: str | Sequence[str] | None,
) -> SubscriberOptions:
    """Check a Subscriber's arguments (ValidationError) and derive what it needs (the topic
    patterns themselves are checked by the TopicMatcher built from ``topics``)."""
    if slow_consumer not in ("drop", "close"):
        raise ValidationError(f"slow_consumer must be 'drop' or 'close', got {slow_consumer!r}")
    if max_lag_s is not None and not max_lag_s > 0:
        raise ValidationError(f"max_lag_s must be > 0 seconds or None, got {max_lag_s!r}")
    if late_join and not history_endpoint:
        raise ValidationError("late_join needs history_endpoint (the publisher's)")
    eps = as_endpoints(endpoints, "endpoints")
    window_bytes = _deprecated_window("Subscriber", window_bytes, max_queued_bytes)
    if max_message_bytes < 1:
        raise ValidationError(f"max_message_bytes must be >= 1, got {max_message_bytes}")
    if max_streams < 1:
        raise ValidationError(f"max_streams must be >= 1, got {max_streams}")
    if on_gap is not None and not callable(on_gap):
        raise ValidationError("on_gap must be callable(topic, publisher_id, expected, got, lost)")
    hwm = int(rcvhwm) if rcvhwm is not None else base.hwm_for(window_bytes, max_batch_bytes)
    if hwm < 1:
        raise ValidationError(f"rcvhwm must be >= 1 frame, got {rcvhwm!r}")
    if topics is None:
        topics = ["#"]
    elif isinstance(topics, str):
        topics = [topics]
    if not late_join or history_endpoint is None:
        history: list[str] = []
    else:
        history = [history_endpoint] if isinstance(history_endpoint, str) else list(
            history_endpoint)
    return SubscriberOptions(
        endpoints=eps,
        topics=list(topics),
        max_frame_bytes=max(max_message_bytes, max_batch_bytes) + base.FRAME_OVERHEAD_BYTES,
        rcvhwm=hwm,
        snail_close=slow_consumer == "close",
        max_lag_ns=int(max_lag_s * 1e9) if max_lag_s is not None else 0,
        history_endpoints=history,
    )


def close_linger_ms(linger_s: float | None, linger_ms: int | None, default_ms: int) -> int:
    """``close()``'s ZeroMQ linger in milliseconds, from ``linger_ms=`` or the deprecated
    ``linger=`` in seconds (a warning; both at once is an error)."""
    if linger_s is not None:
        warnings.warn(
            "Publisher.close(linger=seconds) is deprecated: use close(linger_ms=milliseconds); "
            "the old name will be removed in the next release",
            DeprecationWarning, stacklevel=3)
        if linger_ms is not None:
            raise ValidationError("Publisher.close: pass linger_ms= only (linger= is its "
                                  "deprecated old name, in seconds)")
        return max(0, int(linger_s * 1000))
    if linger_ms is None:
        return default_ms
    if not isinstance(linger_ms, int) or linger_ms < 0:
        raise ValidationError(f"linger_ms must be an int >= 0 (milliseconds), got {linger_ms!r}")
    return linger_ms
