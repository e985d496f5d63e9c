"""One topic rule: whatever Publisher.publish accepts, WorkQueue.put accepts, and the other
way round, with the same error type (the rule of docs/wire.md, pybus.policy.topics)."""

from __future__ import annotations

import pytest

import pybus
from pybus.policy.topics import MAX_TOPIC_LENGTH

# (topic, accepted?) at the edges of the rule
EDGES = [
    ("a", True),
    ("a" * 64, True),  # the longest segment
    ("a" * 65, False),
    (".".join(["x" * 63] * 4), True),  # 255 chars: the longest topic
    (".".join(["x" * 63] * 4) + "y", False),  # 256 chars
    (".".join(["t"] * 33), True),  # 33 segments: no limit on their number
    (".".join(["t"] * 128), True),  # 255 chars of one-char segments
    ("a..b", False),  # an empty segment
    (".a", False),
    ("a.", False),
    ("", False),
    ("caf\u00e9.t", False),  # a non-ASCII character
    ("a b", False),
    ("a.*", False),  # wildcards are for patterns only
    ("a.#", False),
]


@pytest.fixture(scope="module")
def pub():
    p = pybus.Publisher("tcp://127.0.0.1:*", registry=False)
    yield p
    p.close()


@pytest.fixture(scope="module")
def wq():
    q = pybus.WorkQueue("tcp://127.0.0.1:*", registry=False)
    yield q
    q.close()


def _outcome(call, topic):
    try:
        call(topic, b"x")
    except pybus.TopicError as exc:
        return "refused", str(exc)
    return "accepted", ""


def test_the_edges_are_where_the_docs_put_them():
    assert len(EDGES[3][0]) == MAX_TOPIC_LENGTH
    assert len(EDGES[4][0]) == MAX_TOPIC_LENGTH + 1
    for topic, ok in EDGES:
        assert pybus.policy.topics.is_valid_topic(topic) is ok, topic


@pytest.mark.parametrize("topic, ok", EDGES, ids=[repr(t[:20]) for t, _ in EDGES])
def test_publish_and_put_accept_and_refuse_the_same_topics(pub, wq, topic, ok):
    by_pub = _outcome(pub.publish, topic)
    by_put = _outcome(wq.put, topic)
    assert by_pub[0] == by_put[0] == ("accepted" if ok else "refused"), (by_pub, by_put)
    # the same reason, in the same words
    assert by_pub[1] == by_put[1]


@pytest.mark.parametrize("topic, ok", EDGES, ids=[repr(t[:20]) for t, _ in EDGES])
def test_put_many_follows_the_same_rule(wq, topic, ok):
    before = wq.stats()["put"]
    if ok:
        # twice: the second time takes put_many's fast path for topics seen before
        assert len(wq.put_many([(topic, b"x"), (topic, b"y")])) == 2
        assert wq.put_many([(topic, b"z")])
    else:
        with pytest.raises(pybus.TopicError):
            wq.put_many([("ok.t", b"x"), (topic, b"x")])
        assert wq.stats()["put"] == before  # nothing half-queued


def test_a_refusal_says_what_is_wrong(wq):
    with pytest.raises(pybus.TopicError, match=r"has an empty segment \(segment 2\)"):
        wq.put("a..b", b"")
    with pytest.raises(pybus.TopicError, match="256 chars long; .*at most 255 chars"):
        wq.put(".".join(["x" * 63] * 4) + "y", b"")
    with pytest.raises(pybus.TopicError, match="'\u00e9'"):
        wq.put("caf\u00e9", b"")
    with pytest.raises(pybus.TopicError, match="must be a str, got int"):
        wq.put(7, b"")  # type: ignore[arg-type]
