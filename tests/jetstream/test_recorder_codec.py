"""The recorder's subject arithmetic without a server: a stream's subjects without overlaps,
and the one consumer filter that covers a pattern's filters, checked against a NATS matcher
written here from the NATS rules (``*`` one token, ``>`` one or more trailing tokens)."""

from __future__ import annotations

import itertools

import pytest

import pybus
from pybus.jetstream._log_codec import covering_filter, from_nats, message_item, reduce_subjects
from pybus.jetstream.subjects import filters_for_pattern


def nats_match(filt: str, subject: str) -> bool:
    f, s = filt.split("."), subject.split(".")
    for i, tok in enumerate(f):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(f) == len(s)


SUBJECTS = [".".join(p) for n in (1, 2, 3, 4) for p in itertools.product("ab", repeat=n)]


@pytest.mark.parametrize("pattern", ["a.#", "a.*.#", "a.b.#", "#", "a.*", "*.b", "a", "*.*.#"])
def test_the_covering_filter_matches_everything_the_pattern_does(pattern: str):
    filters = filters_for_pattern(pattern)
    cover = covering_filter(filters)
    matcher = pybus.policy.topics.TopicMatcher([pattern])
    for s in SUBJECTS:
        if matcher.matches(s):
            assert nats_match(cover, s), (pattern, cover, s)
        assert matcher.matches(s) == any(nats_match(f, s) for f in filters), (pattern, s)


@pytest.mark.parametrize("subjects, want", [
    (["a", "a.>", "a.*"], ["a", "a.>"]),
    (["a.*", "a.>"], ["a.>"]),
    (["a.b", "a.*", "c"], ["a.*", "c"]),
    ([">", "a", "a.>"], [">"]),  # ">" is one token or more: "a" too
    (["a.>", "a.>"], ["a.>"]),
    (["a.*.c", "a.b.*"], ["a.*.c", "a.b.*"]),  # neither covers the other
])
def test_stream_subjects_lose_what_another_one_covers(subjects: list[str], want: list[str]):
    assert reduce_subjects(subjects) == want
    for s in SUBJECTS:  # the same subjects match, before and after
        assert any(nats_match(f, s) for f in subjects) == any(nats_match(f, s) for f in want)


def test_a_message_survives_its_nats_form_exactly():
    for payload, headers in [(b"\x00\xff", None), ({"k": [1, 2.5]}, {"h": b"\x01"}),
                             ("text", {}), (None, {"a": {"b": None}})]:
        m = pybus.Message("t.x", payload, headers, seq=41, publisher_id=2**64 - 1,
                          timestamp_ns=123)
        subject, body, nats_headers, is_gap = message_item(m)
        assert (subject, is_gap) == ("t.x", False)
        back, pseq = from_nats(subject, body, nats_headers, stream_seq=7)
        assert pseq == 41 and back.seq == 7 and back.publisher_id == 2**64 - 1
        assert (back.topic, back.payload, back.headers, back.is_msgpack, back.timestamp_ns) == (
            "t.x", payload, headers or {}, m.is_msgpack, 123)
        assert back.raw_payload == m.raw_payload and back.raw_headers == m.raw_headers
