"""pybus topics and patterns as NATS subjects (docs/scale-out.md, "Topic mapping"), checked
against the matching rules of both sides: pybus's TopicPattern, and a NATS matcher written
from the NATS subject documentation."""

from __future__ import annotations

import pytest

from pybus import TopicError
from pybus.jetstream.subjects import filters_for_pattern, subject_for_topic, topic_for_subject
from pybus.policy.topics import TopicPattern


def nats_matches(filter_: str, subject: str) -> bool:
    """NATS: ``*`` matches one token, ``>`` one or more trailing tokens, others literally."""
    f, s = filter_.split("."), subject.split(".")
    for i, tok in enumerate(f):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(f) == len(s)


TOPICS = ["orders", "orders.created", "orders.a.b", "order", "ordersx.y", "x.orders",
          "sensor-7.temp_c", "a.b.c.d"]
PATTERNS = ["orders", "orders.*", "orders.#", "orders.**", "#", "*", "*.created", "orders.*.#",
            "a.b.c.d"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_filters_match_exactly_what_the_pattern_matches(pattern):
    filters = filters_for_pattern(pattern)
    for topic in TOPICS:
        want = TopicPattern(pattern).matches(topic)
        got = any(nats_matches(f, subject_for_topic(topic)) for f in filters)
        assert got == want, (pattern, topic, filters)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_filters_under_a_prefix(pattern):
    filters = filters_for_pattern(pattern, prefix="jobs")
    for topic in TOPICS:
        want = TopicPattern(pattern).matches(topic)
        got = any(nats_matches(f, subject_for_topic(topic, "jobs")) for f in filters)
        assert got == want, (pattern, topic, filters)
    assert all(f.startswith("jobs.") for f in filters)


def test_the_table():
    assert filters_for_pattern("orders.#") == ["orders", "orders.>"]
    assert filters_for_pattern("#") == [">"]
    assert filters_for_pattern("orders.*") == ["orders.*"]
    assert subject_for_topic("orders.created") == "orders.created"
    assert subject_for_topic("orders.created", "jobs") == "jobs.orders.created"
    assert topic_for_subject("jobs.orders.created", "jobs") == "orders.created"


@pytest.mark.parametrize("bad", ["", "a..b", "a b", "a.>", "a.*", "$JS.API", "a" * 300,
                                 "_INBOX.x"])
def test_topics_nats_or_pybus_refuse_raise_topic_error(bad):
    with pytest.raises(TopicError):
        subject_for_topic(bad)


def test_a_subject_outside_the_prefix_is_refused():
    with pytest.raises(TopicError, match="prefix"):
        topic_for_subject("other.orders", "jobs")
