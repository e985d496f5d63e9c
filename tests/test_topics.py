"""Topic names and patterns: validation, ZeroMQ prefixes, exact matching."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pybus
from pybus.topics import (
    MAX_SEGMENT_LENGTH,
    MAX_TOPIC_LENGTH,
    TopicMatcher,
    TopicPattern,
    is_valid_topic,
    pattern_prefix,
    validate_pattern,
    validate_topic,
)


@pytest.mark.parametrize(
    "topic", ["a", "orders", "orders.created", "A-b_9.x", "x" * 64, ".".join(["ab"] * 80)[:254]]
)
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic
    assert is_valid_topic(topic)


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
        ("a." * 128 + "a", "chars long"),
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
    assert re.search("255", pybus.topics.__doc__ or "") or "MAX_TOPIC_LENGTH" in (
        pybus.topics.__doc__ or ""
    )
