"""The rare frames of a Subscriber: control frames, malformed ones, and forbidden ones.

The subscriber's receive loop (``Subscriber._fill``) decodes data frames itself; everything
else it hands to the methods here, once per such frame: the topic classification cache (data
topic, filtered out, invalid, flow mark, our join snapshot), a reliable publisher's marks (acked
upstream), publish permissions, and the rate-limited logging of malformed frames.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import zmq

from .._native import frame_info
from ..errors import FrameError
from ..policy.topics import TopicMatcher, is_valid_topic
from . import _base as base
from ._book import MAX_TRACKED_TOPICS as _MAX_TRACKED_TOPICS
from .flow import FLOW_TOPIC, pack_ack, unpack_mark

log = logging.getLogger("pybus.subscriber")

_NOBLOCK = int(zmq.NOBLOCK)
_TOPIC_CACHE_SIZE = 4096
# Sentinel values of the topic cache.
_FILTERED = 0
_INVALID = 1
_FLOW = 2  # a reliable publisher's mark: acknowledged, not delivered
_JOIN = 3  # a join snapshot on this subscriber's hello topic: stream starts, not delivered


class FramesMixin:
    """Subscriber methods for the frames that are not plain data (see the module docstring)."""

    if TYPE_CHECKING:
        id: bytes
        endpoints: list[str]
        _sock: zmq.Socket[Any]
        _hello: bytes
        _matcher: TopicMatcher
        _topics: dict[bytes, Any]
        _pub_acl: Any
        _pub_ok: dict[tuple[str, bytes], bool]
        _forbidden: int
        _forbidden_by_key: dict[str, int]
        _marks: int
        _decode_errors: int
        _decode_errors_by_reason: dict[str, int]
        _last_log: float
        _unlogged_errors: int
        _log_interval_s: float

        def _on_join(self, frame: Any) -> None: ...

    def _control(self, kind: int, topic_b: bytes, frame: Any) -> None:
        """A frame whose topic is not a wanted data topic (``kind`` from _classify)."""
        if kind == _FLOW:
            self._on_mark(frame)
        elif kind == _JOIN:
            self._on_join(frame)
        elif kind == _INVALID:
            self._decode_error("topic frame is not a valid topic", topic_b)

    def _bad_parts(self, parts: int, topic_b: bytes) -> None:
        if parts == 1:
            self._decode_error("single-frame message (expected topic + batch frame)", topic_b)
        else:
            self._decode_error(f"{parts}-frame message (expected 2 frames)", topic_b)


    def _forbidden_frame(self, topic_b: bytes, frame: Any) -> bool:
        """Publish permissions, per frame (a batch): whether the sender's key, as ZAP named
        it, may not publish the topic; then count the frame's messages and return True (the
        caller drops it). Decisions are cached per (key, topic)."""
        acl = self._pub_acl
        assert acl is not None
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:  # no user id: not a peer ZAP admitted under CURVE
            user = ""
        key = (user, topic_b)
        ok = self._pub_ok.get(key)
        if ok is None:
            ok = acl._decide_publish(user, topic_b)
            if len(self._pub_ok) >= _TOPIC_CACHE_SIZE:
                self._pub_ok.clear()  # bounded whatever keys and topics peers use
            self._pub_ok[key] = ok
        if ok:
            return False
        try:
            count = frame_info(frame)[2]
        except FrameError:
            count = 1  # malformed as well: one frame that held at least one message
        self._forbidden += count
        fk = self._forbidden_by_key
        k = user if (user in fk or len(fk) < _MAX_TRACKED_TOPICS) else "<other>"
        fk[k] = fk.get(k, 0) + count
        acl._count_denied_publication(user, topic_b, count, f"subscriber {self.endpoints}")
        return True

    def _on_mark(self, frame: Any) -> None:
        """A reliable publisher's mark: everything it sent before it has been read here (or
        filtered out), so acknowledge its position (docs/wire.md, "Flow control"). The ack
        goes to every connected publisher; the others ignore it. A full upstream queue drops
        it: a later ack says more."""
        mark = unpack_mark(frame)
        if mark is None:
            self._decode_error("malformed flow mark", FLOW_TOPIC)
            return
        self._marks += 1
        try:
            self._sock.send(pack_ack(self.id, *mark), _NOBLOCK)
        except zmq.Again:
            pass

    def _classify(self, topic_b: bytes) -> Any:
        if topic_b == FLOW_TOPIC:
            self._topics[topic_b] = _FLOW
            return _FLOW
        value: Any
        if topic_b.startswith(base.HELLO_PREFIX):
            # ours: a join snapshot; another subscriber's (a "#" subscriber takes them all) is
            # not for us; anything else under the prefix is no hello at all
            if topic_b == self._hello:
                value = _JOIN
            else:
                value = _FILTERED if base.is_hello(topic_b) else _INVALID
        else:
            try:
                text = topic_b.decode("ascii")
            except UnicodeDecodeError:
                text = None
            if text is None or not is_valid_topic(text):
                value = _INVALID
            elif self._matcher.matches(text):
                value = text
            else:
                value = _FILTERED
        if len(self._topics) >= _TOPIC_CACHE_SIZE:
            self._topics.clear()
        self._topics[topic_b] = value
        return value


    def _decode_error(self, reason: str, topic_b: bytes) -> None:
        self._decode_errors += 1
        short = reason.split(":")[0][:80]
        self._decode_errors_by_reason[short] = self._decode_errors_by_reason.get(short, 0) + 1
        now = time.monotonic()
        if now - self._last_log >= self._log_interval_s:
            log.warning(
                "pybus Subscriber skipped a malformed message (topic frame %r): %s "
                "[%d decode errors in all, %d since the last log]",
                topic_b[:64],
                reason,
                self._decode_errors,
                self._unlogged_errors + 1,
            )
            self._last_log = now
            self._unlogged_errors = 0
        else:
            self._unlogged_errors += 1

