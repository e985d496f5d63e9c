"""Topic names and patterns: validation, ZeroMQ prefixes, exact matching."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pybus
from pybus.policy.topics import (
    MAX_SEGMENT_LENGTH,
    MAX_TOPIC_LENGTH,
    TopicMatcher,
    TopicPattern,
    is_valid_topic,
    pattern_prefix,
    validate_pattern,
    validate_topic,
)


def _long(n: int, last: str = "") -> str:
    """A topic (or pattern, with ``last`` as its final segment) of exactly ``n`` chars whose
    only possible fault is its length: segments of at most 64 chars of [A-Za-z0-9_-]."""
    head = ".".join(["x" * 64] * 3)  # 194 chars
    fill = n - len(head) - 1 - (len(last) + 1 if last else 0)
    assert 1 <= fill <= MAX_SEGMENT_LENGTH, fill
    out = head + "." + "y" * fill + ("." + last if last else "")
    assert len(out) == n
    return out


# docs/wire.md: segments of 1-64 chars of [A-Za-z0-9_-], at most 255 chars in all
TOPIC_255 = _long(255)
TOPIC_256 = _long(256)
SHORT_SEGS_255 = "abc" + ".ab" * 84  # many short segments, same edge
SHORT_SEGS_256 = "abcd" + ".ab" * 84


@pytest.mark.parametrize(
    "topic", ["a", "orders", "orders.created", "A-b_9.x", "x" * 64, TOPIC_255, SHORT_SEGS_255]
)
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic
    assert is_valid_topic(topic)


def test_topic_length_edge_is_255() -> None:
    assert len(TOPIC_255) == len(SHORT_SEGS_255) == MAX_TOPIC_LENGTH == 255
    assert len(TOPIC_256) == len(SHORT_SEGS_256) == 256
    for ok, bad in ((TOPIC_255, TOPIC_256), (SHORT_SEGS_255, SHORT_SEGS_256)):
        assert validate_topic(ok) == ok and is_valid_topic(ok)
        assert not is_valid_topic(bad)
        with pytest.raises(pybus.TopicError, match="is 256 chars long"):
            validate_topic(bad)
        # the same names as subscription patterns, and as subscriptions
        assert validate_pattern(ok) == ok
        assert TopicPattern(ok).matches(ok)
        with pytest.raises(pybus.TopicError, match="is 256 chars long"):
            validate_pattern(bad)
        with pytest.raises(pybus.TopicError, match="is 256 chars long"):
            TopicPattern(bad)
        m = TopicMatcher([ok])
        assert m.matches(ok)
        assert not m.matches(bad)
        with pytest.raises(pybus.TopicError, match="is 256 chars long"):
            m.add(bad)


@pytest.mark.parametrize("wild", ["*", "#"])
def test_pattern_length_edge_is_255_with_wildcards(wild: str) -> None:
    ok, bad = _long(255, wild), _long(256, wild)
    assert validate_pattern(ok) == ok
    topic = ok[:-1] + "z"  # a valid 255-char topic it matches
    assert is_valid_topic(topic) and TopicPattern(ok).matches(topic)
    with pytest.raises(pybus.TopicError, match="is 256 chars long"):
        validate_pattern(bad)


@pytest.mark.parametrize(
    ("topic", "needle"),
    [
        ("", "empty"),
        ("a..b", "empty segment"),
        (".a", "empty segment"),
        ("a.", "empty segment"),
        ("a b", "' '"),
        ("orders/created", "'/'"),
        ("é", "'é'"),
        ("a." + "x" * 65, "segment of 65 chars"),
        ("a." * 128 + "a", "is 257 chars long"),
        (TOPIC_256, "is 256 chars long"),
        (SHORT_SEGS_256, "is 256 chars long"),
        ("orders.*", "wildcard"),
        ("orders.#", "wildcard"),
        (b"orders", "must be a str"),
        (7, "must be a str"),
    ],
)
def test_invalid_topics_say_what_and_what_is_allowed(topic: object, needle: str) -> None:
    with pytest.raises(pybus.TopicError) as ei:
        validate_topic(topic)
    msg = str(ei.value)
    assert needle in msg
    assert "[A-Za-z0-9_-]" in msg  # says what is allowed
    assert not is_valid_topic(topic)
    assert isinstance(ei.value, pybus.ValidationError)


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("orders.created", b"orders.created"),
        ("orders.*", b"orders."),
        ("orders.*.eu", b"orders."),
        ("orders.#", b"orders"),
        ("orders.created.#", b"orders.created"),
        ("#", b""),
        ("**", b""),
        ("*", b""),
        ("*.created", b""),
        ("a.b.*.d.#", b"a.b."),
    ],
)
def test_pattern_prefix(pattern: str, prefix: bytes) -> None:
    assert pattern_prefix(pattern) == prefix
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("", "empty"),
        ("a.#.b", "only be the last"),
        ("#.a", "only be the last"),
        ("a..b", "empty segment"),
        ("a.b*", "'*'"),
        ("a.#b", "'#'"),
        (None, "must be a str"),
    ],
)
def test_invalid_patterns(pattern: object, needle: str) -> None:
    with pytest.raises(pybus.TopicError) as ei:
        TopicPattern(pattern)  # type: ignore[arg-type]
    assert needle in str(ei.value)
    assert "'*'" in str(ei.value) and "'#'" in str(ei.value)


MATCH_TABLE = [
    ("orders.*", "orders.created", True),
    ("orders.*", "orders", False),
    ("orders.*", "orders.a.b", False),
    ("orders.*", "ordersX.a", False),
    ("orders.#", "orders", True),
    ("orders.#", "orders.a", True),
    ("orders.#", "orders.a.b.c", True),
    ("orders.#", "ordersX", False),
    ("orders.#", "ordersX.a", False),
    ("#", "anything.at.all", True),
    ("*", "one", True),
    ("*", "one.two", False),
    ("*.created", "orders.created", True),
    ("*.created", "orders.created.x", False),
    ("a.*.c.#", "a.b.c", True),
    ("a.*.c.#", "a.b.c.d.e", True),
    ("a.*.c.#", "a.b.d", False),
    ("orders.created", "orders.created", True),
    ("orders.created", "orders.createdX", False),
    ("orders.created", "orders.created.x", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCH_TABLE)
def test_pattern_matches(pattern: str, topic: str, expected: bool) -> None:
    p = TopicPattern(pattern)
    assert p.matches(topic) is expected
    # every match carries the ZeroMQ prefix, so sender-side filtering never loses a match
    if expected:
        assert topic.encode().startswith(p.prefix)


# An independent oracle: segment-by-segment matching, written without regexes.
def _oracle(pattern: str, topic: str) -> bool:
    ps, ts = pattern.split("."), topic.split(".")
    for i, p in enumerate(ps):
        if p in ("#", "**"):
            return True
        if i >= len(ts):
            return False
        if p != "*" and p != ts[i]:
            return False
    return len(ps) == len(ts)


_seg = st.sampled_from(["a", "b", "ab", "x-1", "Z_"])
_topics = st.lists(_seg, min_size=1, max_size=5).map(".".join)
_pat_seg = st.sampled_from(["a", "b", "ab", "*"])
_patterns = st.tuples(st.lists(_pat_seg, min_size=0, max_size=4), st.booleans()).map(
    lambda t: ".".join(t[0] + (["#"] if t[1] or not t[0] else []))
)


@given(_patterns, _topics)
def test_pattern_matches_oracle(pattern: str, topic: str) -> None:
    p = TopicPattern(pattern)
    assert p.matches(topic) is _oracle(pattern, topic)
    if p.matches(topic):
        assert topic.encode().startswith(p.prefix)


def test_matcher_multiset_and_cache() -> None:
    m = TopicMatcher(["orders.*"], cache_size=2)
    assert m.matches("orders.a")
    assert not m.matches("audit.x")
    assert m.add("audit.#") == b"audit"
    assert m.matches("audit.x")  # cache invalidated by add
    assert m.add("orders.*") == b"orders."
    assert m.remove("orders.*") == b"orders."
    assert m.matches("orders.a")  # still one reference left
    m.remove("orders.*")
    assert not m.matches("orders.a")
    assert m.patterns == ["audit.#"]
    for i in range(10):  # the cache stays bounded
        m.matches(f"t{i}")
    assert len(m._cache) <= 2
    with pytest.raises(pybus.TopicError, match="not subscribed"):
        m.remove("nope")
    assert not m.matches("bad topic")  # invalid topics never match


def test_limits_documented() -> None:
    assert MAX_SEGMENT_LENGTH == 64
    assert MAX_TOPIC_LENGTH == 255
    assert re.search("255", pybus.policy.topics.__doc__ or "") or "MAX_TOPIC_LENGTH" in (
        pybus.policy.topics.__doc__ or ""
    )
