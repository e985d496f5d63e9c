"""How one pybus message, or one gap marker, is stored in a JetStream stream and read back
(docs/scale-out.md, "Recording topics into a stream").

A recorded message is the bytes pybus delivered, unchanged, on the subject of its topic, with
NATS headers for what the NATS message has no field for:

==================  =======================================================================
``Nats-Msg-Id``     ``pb:<publisher_id, 16 hex>:<seq>:<topic>``: the stream's de-duplication
``Pybus-Publisher`` the publisher's id, 16 lowercase hex digits
``Pybus-Seq``       the publisher's sequence number of the message on its topic
``Pybus-Ts``        the publish time, ns since the Unix epoch
``Pybus-Msgpack``   ``1`` when the payload is msgpack (absent: raw bytes)
``Pybus-Headers``   the pybus headers as carried on the wire (msgpack), base64; absent: none
==================  =======================================================================

A gap marker is stored on the same subject (so it sits among its topic's messages, where the
loss happened) with an empty body, ``Pybus-Gap: <first>-<last>`` (the missing sequence numbers,
inclusive), ``Pybus-Publisher``, ``Pybus-Recorder`` and ``Nats-Msg-Id``
``pbgap:<publisher_id>:<topic>:<first>-<last>``. Replay hands it out as a ``Message`` on
:data:`GAP_TOPIC`.
"""

from __future__ import annotations

import base64
from typing import Any

from .._native import Message
from .._native._frame import _message_from_wire
from ..wire.payload import FLAG_MSGPACK
from .subjects import subject_for_topic, topic_for_subject

__all__ = ["GAP_TOPIC", "message_item", "gap_item", "from_nats", "reduce_subjects"]

#: The topic of the messages replay hands out for gap markers. Not a valid pybus topic
#: (``$``), so no published message can carry it.
GAP_TOPIC = "$pybus.gap"

H_ID = "Nats-Msg-Id"
H_PUB = "Pybus-Publisher"
H_SEQ = "Pybus-Seq"
H_TS = "Pybus-Ts"
H_MSGPACK = "Pybus-Msgpack"
H_HEADERS = "Pybus-Headers"
H_GAP = "Pybus-Gap"
H_RECORDER = "Pybus-Recorder"

#: (subject, body, NATS headers, is a gap marker)
Item = tuple[str, bytes, dict[str, str], bool]


def message_item(msg: Message, prefix: str = "", subject: str | None = None) -> Item:
    """What the recorder publishes for one received pybus message."""
    pid = f"{msg.publisher_id:016x}"
    headers = {
        H_ID: f"pb:{pid}:{msg.seq}:{msg.topic}",
        H_PUB: pid,
        H_SEQ: str(msg.seq),
        H_TS: str(msg.timestamp_ns),
    }
    if msg.is_msgpack:
        headers[H_MSGPACK] = "1"
    raw_headers = msg.raw_headers
    if raw_headers is not None:
        headers[H_HEADERS] = base64.b64encode(raw_headers).decode("ascii")
    if subject is None:
        subject = subject_for_topic(msg.topic, prefix)
    return subject, msg.raw_payload, headers, False


def gap_item(topic: str, publisher_id: int, first: int, last: int, recorder: str,
             prefix: str = "") -> Item:
    """The marker of messages ``first..last`` (inclusive) of a stream that the recorder's
    subscriber counted lost."""
    pid = f"{publisher_id:016x}"
    headers = {
        H_ID: f"pbgap:{pid}:{topic}:{first}-{last}",
        H_PUB: pid,
        H_GAP: f"{first}-{last}",
        H_RECORDER: recorder,
    }
    return subject_for_topic(topic, prefix), b"", headers, True


def from_nats(subject: str, data: bytes, headers: dict[str, str] | None, stream_seq: int,
              prefix: str = "", topic: str | None = None) -> tuple[Message, int]:
    """A stored NATS message as ``(pybus Message with the stream's seq, publisher seq)``.

    A gap marker becomes a Message on :data:`GAP_TOPIC` whose payload is a dict (``topic``,
    ``publisher_id``, ``first_seq``, ``last_seq``, ``lost``, ``recorder``); a message that
    no recorder wrote (no pybus headers) keeps its bytes, with publisher_id 0."""
    if topic is None:
        topic = topic_for_subject(subject, prefix)
    h = headers or {}
    pid = int(h.get(H_PUB, "0"), 16)
    gap = h.get(H_GAP)
    if gap is not None:
        first_s, _, last_s = gap.partition("-")
        first, last = int(first_s), int(last_s)
        info: dict[str, Any] = {"topic": topic, "publisher_id": pid, "first_seq": first,
                                "last_seq": last, "lost": last - first + 1,
                                "recorder": h.get(H_RECORDER, "")}
        return Message(GAP_TOPIC, info, None, stream_seq, pid, 0), 0
    raw_headers = h.get(H_HEADERS)
    flags = FLAG_MSGPACK if h.get(H_MSGPACK) == "1" else 0
    msg = _message_from_wire(
        topic, bytes(data), base64.b64decode(raw_headers) if raw_headers else None, flags,
        stream_seq, pid, int(h.get(H_TS, "0")))
    return msg, int(h.get(H_SEQ, "0"))


def _covers(wide: str, narrow: str) -> bool:
    """True when every subject the NATS filter ``narrow`` matches is matched by ``wide``."""
    w, n = wide.split("."), narrow.split(".")
    for i, tok in enumerate(w):
        if tok == ">":
            return len(n) > i
        if i >= len(n):
            return False
        if tok == "*":
            if n[i] == ">":
                return False
            continue
        if tok != n[i]:
            return False
    return len(w) == len(n)


def reduce_subjects(subjects: list[str]) -> list[str]:
    """``subjects`` without duplicates and without those another one covers (a stream
    refuses overlapping subjects: ``orders.>`` with ``orders.*``), in first-seen order."""
    out: list[str] = []
    for s in subjects:
        if s in out or any(_covers(o, s) for o in out):
            continue
        out = [o for o in out if not _covers(s, o)] + [s]
    return out


def covering_filter(filters: list[str]) -> str:
    """One NATS filter matching everything ``filters`` match (nats-server 2.9 gives a consumer
    one filter subject): the filter itself when there is one, else the narrowest ``a.b.>``
    above them all (``orders`` and ``orders.>`` -> ``>``; ``a.b`` and ``a.b.>`` -> ``a.>``).
    The replay drops, on the client, what the pattern does not match."""
    if len(filters) == 1:
        return filters[0]
    split = [f.split(".") for f in filters]
    common: list[str] = []
    for toks in zip(*split, strict=False):
        if len(set(toks)) != 1 or toks[0] in ("*", ">"):
            break
        common.append(toks[0])
    # every filter has a token after the common part or is the common part itself; ">" needs
    # at least one token after it, so back off one token when some filter ends there
    if any(len(s) == len(common) for s in split):
        common = common[:-1]
    return ".".join(common + [">"])
