"""What a queued message is in memory, and how ``put()``'s arguments become one.

Owns the message record layout shared by the user side of :class:`pybus.WorkQueue`, its
dispatcher core (``_core.py``) and the journal, the small per-worker and per-failure records of
the core, and the validation and encoding of a message's topic, payload and headers.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgpack

from ..errors import ErrorCode, ValidationError
from ..policy.topics import validate_topic

__all__ = [
    "Rec", "JBatch", "Failure", "WorkerState", "check_key", "check_priority", "check_topic",
    "due_ns", "pack_headers",
]

# A message record is a list (cheaper to make and index than an object, and its first seven
# items are exactly the wire entry of docs/wire-workqueue.md, so dispatch sends rec[:7]):
(R_ID, R_DELIVERY, R_TOPIC, R_PAYLOAD, R_FLAGS, R_HEADERS, R_TS,
 R_WORKER, R_SENT, R_BORN, R_BATCH, R_DUE, R_PRIO, R_KEY) = range(14)
# R_DELIVERY: deliveries so far; R_TS: put time (ns since the epoch); R_WORKER: the
# WorkerState holding it, or None; R_SENT: monotonic time of the last dispatch; R_BORN: of the
# first one; R_BATCH: its JBatch when there is a journal; R_DUE: not to be delivered before
# this wall-clock time (ns since the epoch; 0: at once), journaled so it survives a restart;
# R_PRIO: its priority, 0 (the default, lowest) to 9 (highest), journaled too; R_KEY: its
# ordering key (put's key=; None: unordered), journaled too.
Rec = list[Any]  # [id, delivery, topic, payload, flags, headers, ts, worker, sent_at, born,
#                   batch, due, priority, key]
jentry = operator.itemgetter(R_TOPIC, R_PAYLOAD, R_FLAGS, R_HEADERS, R_TS, R_DUE, R_PRIO,
                             R_KEY)
rid = operator.itemgetter(R_ID)

#: topics already validated (put_many's fast path skips their check); bounded, never evicted
topic_cache: dict[str, bool] = {}
_TOPIC_CACHE_MAX = 4096


def check_topic(topic: object) -> str:
    """The topic rule of pub/sub (pybus.policy.topics, docs/wire.md), so any topic that can be
    published can be put and the other way round; raises TopicError saying what is wrong."""
    if type(topic) is str and topic in topic_cache:
        return topic
    t = validate_topic(topic)
    if len(topic_cache) < _TOPIC_CACHE_MAX:
        topic_cache[t] = True
    return t


def check_priority(priority: object) -> int:
    """A message priority: an int from 0 (the default, lowest) to 9 (highest)."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise ValidationError(f"priority must be an int from 0 (lowest, the default) to 9 "
                              f"(highest), got {priority!r}")
    return priority


#: longest ordering key, in UTF-8 bytes (keys are journaled with every message)
MAX_KEY_BYTES = 256


def check_key(key: object) -> str:
    """An ordering key: a non-empty str of at most MAX_KEY_BYTES UTF-8 bytes."""
    # at most 4 UTF-8 bytes a character: short keys need no encoding to be measured
    if type(key) is str and 0 < len(key) <= MAX_KEY_BYTES // 4:
        return key
    if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY_BYTES:
        raise ValidationError(f"key must be a non-empty str of at most {MAX_KEY_BYTES} UTF-8 "
                              f"bytes (messages with the same key are handled one at a time, "
                              f"in put order), got {key!r:.80}")
    return key


def due_ns(delay_s: object, not_before: object) -> int:
    """The wall-clock time (ns since the epoch) before which a message must not be delivered,
    from ``put``'s ``delay_s`` (seconds from now) or ``not_before`` (an aware datetime, or
    seconds since the epoch); 0 when neither is given."""
    if delay_s is not None and not_before is not None:
        raise ValidationError("give delay_s or not_before, not both")
    if delay_s is not None:
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) \
                or not 0 <= delay_s < math.inf:
            raise ValidationError(f"delay_s must be a finite number of seconds >= 0, "
                                  f"got {delay_s!r}")
        return time.time_ns() + int(delay_s * 1e9) if delay_s else 0
    if not_before is None:
        return 0
    if isinstance(not_before, datetime):
        if not_before.tzinfo is None:
            raise ValidationError("not_before must be a timezone-aware datetime (a naive one "
                                  "is ambiguous): datetime.now(timezone.utc) + timedelta(...)")
        return int(not_before.timestamp() * 1e9)
    if isinstance(not_before, bool) or not isinstance(not_before, (int, float)) \
            or not math.isfinite(not_before):
        raise ValidationError(f"not_before must be an aware datetime or seconds since the "
                              f"epoch, got {not_before!r}")
    return int(not_before * 1e9)


def pack_headers(headers: object) -> bytes | None:
    """Validate headers and return them msgpack-packed (they travel and rest packed)."""
    if headers is None:
        return None
    if not isinstance(headers, Mapping) or not all(isinstance(k, str) for k in headers):
        raise ValidationError(
            f"headers must be a dict with str keys, got {type(headers).__name__}"
        )
    if not headers:
        return None
    try:
        return msgpack.packb(dict(headers))  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(
            f"headers cannot be encoded ({exc}); values must be msgpack-serialisable"
        ) from None


class JBatch:
    """A journal batch (one put()/put_many() call): how many of its messages are unfinished,
    and which finished since the last journal flush."""

    __slots__ = ("first", "remaining", "done", "touched")

    def __init__(self, first: int, remaining: int) -> None:
        self.first = first
        self.remaining = remaining
        self.done: list[int] = []
        self.touched = False


class Failure:
    """Failure history of a message that was nacked or timed out (kept only for those)."""

    __slots__ = ("failures", "first", "last", "error", "run")

    def __init__(self) -> None:
        self.failures = 0
        self.first = 0.0
        self.last = 0.0
        self.error: tuple[str, str, int] = ("", "", int(ErrorCode.UNKNOWN))
        self.run: Any = None  # the RetryRun deciding its delays


class WorkerState:
    """One connected worker as the dispatcher sees it: its credit and what it holds."""

    __slots__ = ("ident", "capacity", "held", "inflight", "last_recv", "last_send", "last_ack")

    def __init__(self, ident: bytes, capacity: int, now: float) -> None:
        self.ident = ident
        self.capacity = capacity
        self.held = 0  # messages sent to it and not yet acked/nacked by it
        self.inflight: dict[int, Rec] = {}  # insertion order == dispatch order
        self.last_recv = now
        self.last_send = now
        self.last_ack = 0.0  # when its last ack frame came (0: none yet)
