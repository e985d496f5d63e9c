"""How the JetStream work queue stores a task, a dead letter and its retry policy
(docs/scale-out.md, "The work queue on JetStream").

A task is one message of the work stream ``<stream>`` on subject ``<stream>.<topic>``; its body
is the payload as pybus sends it (raw bytes, or msgpack), with NATS headers:

==================  =======================================================================
``Nats-Msg-Id``     the ``dedupe_key``, or a fresh id per ``put`` (kept across its retries)
``Pybus-Msgpack``   ``1`` when the payload is msgpack (absent: raw bytes)
``Pybus-Headers``   the pybus headers (msgpack, base64); absent: none
==================  =======================================================================

A worker hands it to the handler as a :class:`pybus.Message` with ``seq`` = the stream's
sequence number, ``publisher_id`` = the delivery number (1 the first time) and
``timestamp_ns`` = the time the stream stored it (all three from the ack subject), as the SQLite
work queue does. A dead letter is the same message on ``<stream>_dead.<topic>`` in the stream
``<stream>_dead``, plus ``Pybus-Error-Type``, ``-Message``, ``-Code``, ``-Retryable``,
``Pybus-Attempts`` and ``Pybus-Task-Seq``.

The retry policy travels in the workers' consumer's description (``pybus-retry <json>``), so
workers on any host apply the queue's policy without being given it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack

from .._native import Message
from .._native._frame import _message_from_wire
from ..errors import BusError, ErrorCode, RemoteError
from ..policy.retry import RetryPolicy
from ..wire.payload import FLAG_MSGPACK, encode_payload
from ._log_codec import H_HEADERS, H_ID, H_MSGPACK
from .subjects import subject_for_topic, topic_for_subject

__all__ = ["dead_stream", "dead_letter_headers", "delivery_of", "describe_retry", "encode_task",
           "error_of", "retry_from_description", "task_message"]

H_ERR_TYPE = "Pybus-Error-Type"
H_ERR_MESSAGE = "Pybus-Error-Message"
H_ERR_CODE = "Pybus-Error-Code"
H_ERR_RETRYABLE = "Pybus-Error-Retryable"
H_ATTEMPTS = "Pybus-Attempts"
H_TASK_SEQ = "Pybus-Task-Seq"
_RETRY_TAG = "pybus-retry "
_RETRY_FIELDS = ("kind", "initial_s", "step_s", "multiplier", "max_delay_s", "max_attempts",
                 "deadline_s", "jitter")


def dead_stream(stream: str) -> str:
    """The stream of ``stream``'s dead letters."""
    return f"{stream}_dead"


def _cached(cache: dict[str, str] | None, key: str, make: Any) -> str:
    """``make()`` once per ``key`` in ``cache`` (bounded: cleared at 4096 entries, whatever
    names arrive); every time without a cache. A non-str key is never cached (make() raises
    the error that explains it)."""
    if cache is None or type(key) is not str:
        return str(make())
    value = cache.get(key)
    if value is None:
        if len(cache) >= 4096:
            cache.clear()
        value = cache[key] = make()
    return value


def encode_task(stream: str, topic: str, payload: Any, headers: Any, msg_id: str,
                subjects: dict[str, str] | None = None) -> tuple[str, bytes, dict[str, str]]:
    """``(subject, body, NATS headers)`` of one task; TopicError/ValidationError first.
    ``subjects``: the caller's cache of topic -> subject, so a topic is checked once."""
    subject = _cached(subjects, topic, lambda: subject_for_topic(topic, stream))
    flags, body = encode_payload(payload)
    nats_headers = {H_ID: msg_id}
    if flags & FLAG_MSGPACK:
        nats_headers[H_MSGPACK] = "1"
    if headers:
        if not all(isinstance(k, str) for k in headers):
            from ..errors import ValidationError

            raise ValidationError("header keys must be str")
        raw = msgpack.packb(dict(headers), use_bin_type=True)
        nats_headers[H_HEADERS] = base64.b64encode(raw).decode("ascii")
    return subject, body, nats_headers


def task_message(subject: str, stream: str, body: bytes, nats_headers: dict[str, str] | None,
                 seq: int, delivered: int, ts_ns: int = 0,
                 topics: dict[str, str] | None = None) -> Message:
    """The pybus Message a handler gets for a task read back from the stream (``topics``: a
    cache of subject -> topic, the caller's, so a topic is checked once)."""
    h = nats_headers or {}
    raw_headers = base64.b64decode(h[H_HEADERS]) if H_HEADERS in h else None
    flags = FLAG_MSGPACK if h.get(H_MSGPACK) == "1" else 0
    topic = _cached(topics, subject, lambda: topic_for_subject(subject, stream))
    msg: Message = _message_from_wire(topic, body, raw_headers, flags, seq, delivered, ts_ns)
    return msg


def delivery_of(msg: Any) -> tuple[int, int, int]:
    """``(delivery number, stream sequence, stored at in ns since the epoch)`` of a fetched
    JetStream message, read from its ack subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``, or the form
    with a domain and an account hash first). nats-py's ``metadata`` parses the whole subject
    into objects, which costs more than the rest of handling a small task."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        return int(tokens[4]), int(tokens[5]), int(tokens[7])
    if len(tokens) >= 11:
        return int(tokens[6]), int(tokens[7]), int(tokens[9])
    meta = msg.metadata
    return (int(meta.num_delivered), int(meta.sequence.stream),
            int(meta.timestamp.timestamp() * 1e9))


def error_of(exc: BaseException) -> RemoteError:
    """A handler's failure as the retry policy judges it: a pybus error keeps its code and
    ``retryable`` flag; any other exception is presumed transient (as in the SQLite queue)."""
    if isinstance(exc, BusError):
        d = exc.to_dict()
        return RemoteError(d["message"], remote_type=d["type"], remote_code=int(d["code"]),
                           retryable=bool(d["retryable"]))
    return RemoteError(str(exc), remote_type=type(exc).__name__,
                       remote_code=int(ErrorCode.UNKNOWN), retryable=True)


def dead_letter_headers(task_headers: dict[str, str] | None, err: RemoteError, attempts: int,
                        seq: int) -> dict[str, str]:
    """The NATS headers of a dead letter: the task's own (a fresh ``Nats-Msg-Id`` so a retried
    dead-lettering is stored once) plus why and after how many attempts."""
    h = {k: v for k, v in (task_headers or {}).items() if k.startswith("Pybus-")}
    h.update({
        H_ID: f"dead:{seq}", H_ERR_TYPE: err.remote_type, H_ERR_MESSAGE: err.remote_message[:4000],
        H_ERR_CODE: str(err.remote_code), H_ERR_RETRYABLE: "1" if err.retryable else "0",
        H_ATTEMPTS: str(attempts), H_TASK_SEQ: str(seq),
    })
    return h


def describe_retry(policy: RetryPolicy) -> str:
    """The consumer description carrying ``policy`` (its predicate and callbacks stay local)."""
    return _RETRY_TAG + json.dumps({f: getattr(policy, f) for f in _RETRY_FIELDS})


def retry_from_description(description: str | None) -> RetryPolicy | None:
    """The policy :func:`describe_retry` wrote, or None when the description holds none."""
    if not description or not description.startswith(_RETRY_TAG):
        return None
    fields = json.loads(description[len(_RETRY_TAG):])
    return RetryPolicy(registry=False, **{k: fields[k] for k in _RETRY_FIELDS if k in fields})
