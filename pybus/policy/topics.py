"""Topic names and topic patterns.

A **topic** is one or more dot-separated *segments*, each 1-64
characters of ``[A-Za-z0-9_-]``, at most :data:`MAX_TOPIC_LENGTH` characters in all
(``orders.created``, ``sensor-7.temp_c``). Topics are ASCII, so their UTF-8 bytes (the
first ZeroMQ frame of every pub/sub message, see ``docs/wire.md``) equal the string.

A **pattern** is a topic whose segments may also be wildcards:

- ``*`` matches exactly one segment (``orders.*`` matches ``orders.created`` but not
  ``orders`` nor ``orders.a.b``);
- ``#`` matches zero or more trailing segments and may only be the last segment
  (``orders.#`` matches ``orders``, ``orders.created`` and ``orders.a.b``; ``#`` alone
  matches every topic). ``**`` is accepted as a synonym of ``#``.

Each pattern becomes the longest literal ZeroMQ prefix subscription (so the publisher's
XPUB filters at the sender) plus an exact local match applied per received batch.

>>> TopicPattern("orders.*").prefix, TopicPattern("orders.*").matches("orders.created")
(b'orders.', True)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import TopicError

__all__ = [
    "MAX_SEGMENT_LENGTH",
    "MAX_TOPIC_LENGTH",
    "TopicMatcher",
    "TopicPattern",
    "is_valid_topic",
    "pattern_prefix",
    "validate_pattern",
    "validate_topic",
]

#: Longest allowed segment, in characters.
MAX_SEGMENT_LENGTH = 64
#: Longest allowed topic or pattern, in characters (= bytes: topics are ASCII).
MAX_TOPIC_LENGTH = 255

_ALLOWED = (
    f"topics are dot-separated segments of 1-{MAX_SEGMENT_LENGTH} chars of [A-Za-z0-9_-], "
    f"at most {MAX_TOPIC_LENGTH} chars in all"
)
_ALLOWED_PATTERN = (
    f"patterns are topics whose segments may also be '*' (one segment) or, as the last "
    f"segment only, '#' (zero or more segments); segments are 1-{MAX_SEGMENT_LENGTH} chars "
    f"of [A-Za-z0-9_-], at most {MAX_TOPIC_LENGTH} chars in all"
)
_SEG = "[A-Za-z0-9_-]{1,%d}" % MAX_SEGMENT_LENGTH  # noqa: UP031 - regex braces
_SEGMENT_RE = re.compile(_SEG)
_TOPIC_RE = re.compile(_SEG + r"(?:\." + _SEG + ")*")


def is_valid_topic(topic: object) -> bool:
    """True when ``topic`` is a str that follows the topic rules (never raises)."""
    return (
        isinstance(topic, str)
        and len(topic) <= MAX_TOPIC_LENGTH
        and _TOPIC_RE.fullmatch(topic) is not None
    )


def _explain_segment(what: str, text: str, seg: str, index: int) -> str:
    if seg == "":
        return f"{what} {text!r} has an empty segment (segment {index + 1})"
    if len(seg) > MAX_SEGMENT_LENGTH:
        return (
            f"{what} {text!r} has a segment of {len(seg)} chars (segment {index + 1}, "
            f"max {MAX_SEGMENT_LENGTH})"
        )
    bad = next(c for c in seg if not (c.isascii() and (c.isalnum() or c in "_-")))
    return f"{what} {text!r} has the character {bad!r} in segment {seg!r}"


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid topic name, else raise :class:`TopicError`.

    Raises
    ------
    TopicError
        Saying what is wrong, e.g. ``topic 'a..b' has an empty segment (segment 2);
        topics are dot-separated segments of 1-64 chars of [A-Za-z0-9_-], ...``.
    """
    if is_valid_topic(topic):
        return topic  # type: ignore[return-value]
    if not isinstance(topic, str):
        raise TopicError(f"a topic must be a str, got {type(topic).__name__}; {_ALLOWED}")
    if topic == "":
        raise TopicError(f"the topic is empty; {_ALLOWED}")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise TopicError(f"topic {topic[:40]!r}... is {len(topic)} chars long; {_ALLOWED}")
    segs = topic.split(".")
    for i, seg in enumerate(segs):
        if seg in ("*", "#", "**"):
            raise TopicError(
                f"topic {topic!r} contains the wildcard {seg!r}: wildcards are allowed in "
                f"subscription patterns, not in published topics; {_ALLOWED}"
            )
        if not _SEGMENT_RE.fullmatch(seg):
            raise TopicError(f"{_explain_segment('topic', topic, seg, i)}; {_ALLOWED}")
    raise TopicError(f"topic {topic!r} is not valid; {_ALLOWED}")  # pragma: no cover


def _split_pattern(pattern: object) -> list[str]:
    if not isinstance(pattern, str):
        raise TopicError(
            f"a topic pattern must be a str, got {type(pattern).__name__}; {_ALLOWED_PATTERN}"
        )
    if pattern == "":
        raise TopicError(f"the topic pattern is empty; {_ALLOWED_PATTERN}")
    if len(pattern) > MAX_TOPIC_LENGTH:
        raise TopicError(
            f"topic pattern {pattern[:40]!r}... is {len(pattern)} chars long; {_ALLOWED_PATTERN}"
        )
    segs = pattern.split(".")
    for i, seg in enumerate(segs):
        if seg in ("#", "**"):
            if i != len(segs) - 1:
                raise TopicError(
                    f"topic pattern {pattern!r} has {seg!r} in segment {i + 1}, but it may "
                    f"only be the last segment; {_ALLOWED_PATTERN}"
                )
            continue
        if seg == "*":
            continue
        if not _SEGMENT_RE.fullmatch(seg):
            raise TopicError(
                f"{_explain_segment('topic pattern', pattern, seg, i)}; {_ALLOWED_PATTERN}"
            )
    return segs


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid topic pattern, else raise :class:`TopicError`."""
    _split_pattern(pattern)
    return pattern  # type: ignore[return-value]


def pattern_prefix(pattern: str) -> bytes:
    """The longest literal ZeroMQ subscription prefix that every match of ``pattern`` has.

    ``orders.created`` -> ``b"orders.created"``, ``orders.*`` -> ``b"orders."``,
    ``orders.#`` -> ``b"orders"`` (``#`` also matches ``orders`` itself), ``#`` -> ``b""``.
    """
    return TopicPattern(pattern).prefix


class TopicPattern:
    """A compiled topic pattern: a ZeroMQ prefix plus an exact match.

    Parameters
    ----------
    pattern : str
        See the module docstring for the rules.

    Raises
    ------
    TopicError
        When the pattern breaks the rules.
    """

    __slots__ = ("pattern", "prefix", "literal", "_regex")

    def __init__(self, pattern: str) -> None:
        segs = _split_pattern(pattern)
        self.pattern: str = pattern
        literal: list[str] = []
        for seg in segs:
            if seg in ("*", "#", "**"):
                break
            literal.append(seg)
        wild_at = len(literal)
        if wild_at == len(segs):
            prefix = pattern  # no wildcard: the topic itself
        elif segs[wild_at] == "*":
            # everything up to and including the dot before the '*'
            prefix = "".join(s + "." for s in literal)
        else:
            # '#' matches zero segments too: 'a.b.#' must also match 'a.b' (no trailing dot)
            prefix = ".".join(literal)
        self.prefix: bytes = prefix.encode("ascii")
        #: True when the pattern has no wildcard (exact topic).
        self.literal: bool = wild_at == len(segs)
        seg_re = _SEG
        parts: list[str] = []
        for i, seg in enumerate(segs):
            if seg == "*":
                parts.append(("" if i == 0 else r"\.") + seg_re)
            elif seg in ("#", "**"):
                if i == 0:
                    parts.append("(?:" + seg_re + r"(?:\." + seg_re + ")*)?")
                else:
                    parts.append(r"(?:\." + seg_re + ")*")
            else:
                parts.append(("" if i == 0 else r"\.") + re.escape(seg))
        self._regex = re.compile("".join(parts))

    def matches(self, topic: str) -> bool:
        """True when ``topic`` (assumed valid) matches the pattern."""
        return self._regex.fullmatch(topic) is not None

    def __repr__(self) -> str:
        return f"TopicPattern({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TopicPattern) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)


class TopicMatcher:
    """A multiset of patterns with a bounded topic -> bool cache.

    Used by subscribers: the ZeroMQ prefix subscriptions let through a superset, and this
    decides per received topic (once per batch, cached) whether the user asked for it.

    Parameters
    ----------
    patterns : iterable of str
        Initial patterns.
    cache_size : int
        Most topics remembered; when full the cache is cleared (a topic set larger than
        this costs one regex match per batch, never unbounded memory).
    """

    def __init__(self, patterns: Iterable[str] = (), cache_size: int = 4096) -> None:
        if cache_size < 1:
            raise TopicError(f"cache_size must be >= 1, got {cache_size}")
        self._counts: dict[str, int] = {}
        self._compiled: dict[str, TopicPattern] = {}
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size
        for p in patterns:
            self.add(p)

    def add(self, pattern: str) -> bytes:
        """Add one reference to ``pattern``; return its ZeroMQ prefix to subscribe."""
        compiled = self._compiled.get(pattern) or TopicPattern(pattern)
        self._compiled[pattern] = compiled
        self._counts[pattern] = self._counts.get(pattern, 0) + 1
        self._cache.clear()
        return compiled.prefix

    def remove(self, pattern: str) -> bytes:
        """Drop one reference to ``pattern``; return its ZeroMQ prefix to unsubscribe.

        Raises
        ------
        TopicError
            When the pattern is not subscribed.
        """
        n = self._counts.get(pattern, 0)
        if n == 0:
            raise TopicError(
                f"pattern {pattern!r} is not subscribed; subscribed patterns: "
                f"{sorted(self._counts)}"
            )
        prefix = self._compiled[pattern].prefix
        if n == 1:
            del self._counts[pattern]
            del self._compiled[pattern]
        else:
            self._counts[pattern] = n - 1
        self._cache.clear()
        return prefix

    @property
    def patterns(self) -> list[str]:
        """The subscribed patterns (each once)."""
        return list(self._counts)

    def matches(self, topic: str) -> bool:
        """True when ``topic`` is a valid topic matched by at least one pattern."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        hit = is_valid_topic(topic) and any(p.matches(topic) for p in self._compiled.values())
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[topic] = hit
        return hit

    def __len__(self) -> int:
        return len(self._counts)
