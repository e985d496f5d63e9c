"""Batcher: round trips through the ring, byte accounting, batching decisions, hooks."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybus import BackpressureError, TopicError, ValidationError
from pybus.wire import (
    FLAG_MSGPACK,
    FULL,
    PENDING,
    READY,
    Batcher,
    decode_batch,
    frame_info,
    ring_record_size,
)

LONG_US = 1e9  # 1000 s: no idle or delay rule can fire during a test


def spec_payloads(frame: bytes) -> tuple[int, list[bytes]]:
    """first_seq and payloads of a frame, read with struct from docs/wire.md alone."""
    magic, version, _, count, _, first_seq, _ = struct.unpack_from("<2sBBIQQq", frame, 0)
    assert (magic, version) == (b"PB", 1)
    off, payloads = 32, []
    for _ in range(count):
        plen, hlen, _, _, _ = struct.unpack_from("<IHBBI", frame, off)
        off += 12 + hlen
        payloads.append(frame[off : off + plen])
        off += plen
    assert off == len(frame)
    return first_seq, payloads


def documented_record_size(header_len: int, payload_len: int) -> int:
    # docs/wire.md "Ring accounting": 32-byte record header + header + payload, rounded to 8.
    return (32 + header_len + payload_len + 7) // 8 * 8


def test_constants():
    assert (Batcher.READY, Batcher.PENDING, Batcher.FULL) == (READY, PENDING, FULL)
    assert len({READY, PENDING, FULL}) == 3
    for h, p in [(0, 0), (0, 1), (3, 5), (0, 64), (100, 1000)]:
        assert ring_record_size(h, p) == documented_record_size(h, p)


# ---------------------------------------------------------------------------------------------
# Round trip

op_st = st.tuples(
    st.integers(min_value=0, max_value=3),  # topic index
    st.one_of(
        st.binary(max_size=300),
        st.dictionaries(st.text(max_size=4), st.integers(0, 99), max_size=3),
    ),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2)),
    st.booleans(),  # drain after this op
)


@settings(max_examples=120, deadline=None)
@given(
    ops=st.lists(op_st, min_size=1, max_size=60),
    max_records=st.integers(min_value=1, max_value=7),
    max_bytes=st.integers(min_value=64, max_value=900),
)
def test_round_trip_through_drain_and_decode(ops, max_records, max_bytes):
    topics = ["a", "b.c", "dé", "x" * 40]
    b = Batcher(
        capacity_bytes=1 << 16,
        max_batch_records=max_records,
        max_batch_bytes=max_bytes,
        max_message_bytes=4096,
        publisher_id=77,
        idle_us=0,
        max_delay_us=LONG_US,
    )
    sent: dict[str, list] = {t: [] for t in topics}
    got: dict[str, list] = {t: [] for t in topics}

    def drain():
        for topic_b, frame in b.drain():
            pid, first_seq, count, _ = frame_info(frame)
            assert pid == 77
            assert count <= max_records
            assert len(frame) <= max_bytes or count == 1
            msgs = decode_batch(topic_b.decode(), frame)
            assert spec_payloads(frame) == (first_seq, [m.raw_payload for m in msgs])
            got[topic_b.decode()].extend(msgs)
        assert b.pending_records == 0 and b.pending_bytes == 0

    for i, (ti, payload, headers, drain_now) in enumerate(ops):
        topic = topics[ti]
        if i % 2:
            b.publish(topic, payload, headers)
        else:  # the low-level path
            tid = b.topic_id(topic.encode())
            if isinstance(payload, bytes):
                raw, flags = payload, 0
            else:
                raw, flags = msgpack.packb(payload), FLAG_MSGPACK
            hb = msgpack.packb(headers) if headers is not None else None
            assert b.append(tid, raw, hb, flags) in (READY, PENDING)
        sent[topic].append((payload, headers or {}))
        if drain_now:
            drain()
    drain()
    for t in topics:
        msgs = got[t]
        assert [(m.payload, m.headers) for m in msgs] == sent[t]
        assert [m.seq for m in msgs] == list(range(1, len(msgs) + 1))
        assert all(m.topic == t and m.publisher_id == 77 for m in msgs)
        ts = [m.timestamp_ns for m in msgs]
        assert all(x > 0 for x in ts)
        if sent[t]:
            assert b.next_seq(b.topic_id(t.encode())) == len(msgs) + 1
    assert b.records_appended == len(ops)


def test_frames_respect_bounds_and_oversized_record_goes_alone():
    b = Batcher(
        capacity_bytes=1 << 20,
        max_batch_records=3,
        max_batch_bytes=200,
        max_message_bytes=1000,
        idle_us=LONG_US,
        max_delay_us=LONG_US,
    )
    tid = b.topic_id(b"t")
    for i in range(7):
        b.append(tid, bytes([i]) * 10)
    b.append(tid, b"z" * 500)  # larger than max_batch_bytes: alone in its frame
    b.append(tid, b"w")
    frames = [f for _, f in b.drain()]
    counts = [frame_info(f)[2] for f in frames]
    assert counts == [3, 3, 1, 1, 1]
    assert [frame_info(f)[1] for f in frames] == [1, 4, 7, 8, 9]
    assert len(frames[3]) == 32 + 12 + 500
    assert b.frames_drained == 5


# ---------------------------------------------------------------------------------------------
# Capacity and FULL


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), min_size=1, max_size=80),
    capacity=st.integers(min_value=400, max_value=5000),
)
def test_full_exactly_when_next_record_does_not_fit(sizes, capacity):
    b = Batcher(
        capacity_bytes=capacity,
        max_message_bytes=340,
        max_batch_records=10**6,
        max_batch_bytes=1 << 30,
        idle_us=LONG_US,
        max_delay_us=LONG_US,
    )
    cap = b.capacity_bytes
    assert cap == capacity // 8 * 8
    tid = b.topic_id(b"t")
    used = 0
    fulls = 0
    stored = 0
    for plen, hlen in sizes:
        need = documented_record_size(hlen, plen)
        seq_before = b.next_seq(tid)
        rc = b.append(tid, b"p" * plen, b"h" * hlen if hlen else None)
        if used + need > cap:
            assert rc == FULL
            assert b.next_seq(tid) == seq_before  # nothing stored, no seq used
            fulls += 1
        else:
            assert rc in (READY, PENDING)
            used += need
            stored += 1
        assert b.pending_bytes == used <= cap
        assert b.pending_records == stored
    assert b.full_count == fulls
    frames = b.drain()
    assert sum(frame_info(f)[2] for _, f in frames) == stored
    assert b.pending_bytes == 0


def test_publish_full_hook_and_backpressure():
    b = Batcher(capacity_bytes=256, max_message_bytes=100, idle_us=LONG_US, max_delay_us=LONG_US)
    calls = []
    b.publish("t", b"x" * 100)  # 136 ring bytes
    with pytest.raises(BackpressureError, match="ring full"):
        b.publish("t", b"y" * 100)
    b.set_hooks(None, None, None, None, lambda *a: calls.append(a) or "dropped")
    assert b.publish("t", b"y" * 90, {"h": 1}) == "dropped"
    assert calls == [("t", b"y" * 90, {"h": 1})]
    assert b.full_count == 2 and b.pending_records == 1


# ---------------------------------------------------------------------------------------------
# Smart batching decisions


def test_decisions_with_explicit_clock():
    b = Batcher(max_batch_records=4, max_batch_bytes=1 << 20, idle_us=5.0, max_delay_us=100.0)
    tid = b.topic_id(b"t")
    t0 = Batcher.now_ns()
    assert b.append_at(tid, b"m", t0) == READY  # never drained: idle
    # a clock reading taken before a drain ends is certainly within idle_us of it: not idle
    before = Batcher.now_ns()
    b.drain()
    assert b.append_at(tid, b"m", before) == PENDING
    assert b.append_at(tid, b"m", before + 1) == PENDING
    assert b.append_at(tid, b"m", before + 2) == PENDING
    assert b.append_at(tid, b"m", before + 3) == READY  # 4 records: max_batch_records
    base = Batcher.now_ns()
    b.drain()
    assert b.append_at(tid, b"m", base) == PENDING
    assert b.oldest_pending_ns == base
    assert b.append_at(tid, b"m", base + 99_999) == PENDING
    assert b.append_at(tid, b"m", base + 100_000) == READY  # oldest is max_delay old
    b.drain()
    assert b.oldest_pending_ns == 0
    # idle again: a drain long (> idle_us) before this append
    assert b.append_at(tid, b"m", Batcher.now_ns() + 10_000) == READY


def test_pending_bytes_bound_makes_ready():
    b = Batcher(
        max_batch_records=10**6, max_batch_bytes=1000, idle_us=LONG_US, max_delay_us=LONG_US
    )
    t1, t2 = b.topic_id(b"one"), b.topic_id(b"two")
    b.append(t1, b"a")
    b.drain()
    used = 0
    statuses = []
    i = 0
    while used < 1000:
        tid = (t1, t2)[i % 2]
        statuses.append(b.append(tid, b"x" * 90))
        used += documented_record_size(0, 90)
        i += 1
    assert statuses[-1] == READY and set(statuses[:-1]) == {PENDING}


def test_hooks_called_on_status():
    b = Batcher(max_batch_records=3, idle_us=LONG_US, max_delay_us=LONG_US)
    events = []
    resolved = []

    def resolve(topic):
        resolved.append(topic)
        if topic.startswith("bad"):
            raise TopicError(f"topic {topic!r} is bad")
        return b.topic_id(topic.encode())

    packed = []

    def pack(obj):
        packed.append(obj)
        return msgpack.packb(obj)

    b.set_hooks(
        resolve, pack, lambda: events.append("ready"), lambda: events.append("pending"), None
    )
    b.publish("t", b"1")  # never drained: idle -> READY
    assert events == ["ready"]
    b.drain()
    events.clear()
    b.publish("t", {"n": 2})  # ring empty -> non-empty, not idle
    assert events == ["pending"]
    b.publish("t", b"3", {"h": 1})
    assert events == ["pending"]  # no hook for a plain PENDING
    b.publish("t", b"4")  # 3 records of "t": READY
    assert events == ["pending", "ready"]
    assert resolved == ["t"]  # cached after the first miss
    assert packed == [{"n": 2}, {"h": 1}]
    with pytest.raises(TopicError):
        b.publish("bad.topic", b"x")
    with pytest.raises(TopicError):
        b.publish("bad.topic", b"x")  # errors are not cached
    assert resolved == ["t", "bad.topic", "bad.topic"]
    msgs = decode_batch("t", b.drain()[0][1])
    assert [m.payload for m in msgs] == [{"n": 2}, b"3", b"4"]
    assert msgs[1].headers == {"h": 1}


def test_publish_validation():
    b = Batcher(max_message_bytes=100)
    with pytest.raises(ValidationError, match="max_message_bytes=100"):
        b.publish("t", b"x" * 101)
    with pytest.raises(ValidationError, match="max_message_bytes=100"):
        b.publish("t", b"x" * 90, {"k": "v" * 20})
    with pytest.raises(ValidationError, match="max_message_bytes=100"):
        b.publish("t", memoryview(b"x" * 101))
    with pytest.raises(ValidationError, match="must be a str"):
        b.publish(b"t", b"x")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="headers must be a dict"):
        b.publish("t", b"x", [("k", "v")])  # type: ignore[arg-type]
    b.set_hooks(None, lambda o: "not bytes", None, None, None)
    with pytest.raises(ValidationError, match="must return bytes"):
        b.publish("t", {"a": 1})
    assert b.pending_records == 0 and b.next_seq(b.topic_id(b"t")) == 1
    with pytest.raises(ValidationError, match="unknown topic id"):
        b.append(5, b"x")
    with pytest.raises(ValidationError, match="flags"):
        b.append(0, b"x", None, 2)
    with pytest.raises(ValidationError, match="callable"):
        b.set_hooks(1, None, None, None, None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"capacity_bytes": 10}, "capacity_bytes"),
        ({"capacity_bytes": 1 << 20, "max_message_bytes": 1 << 20}, "cannot hold one message"),
        ({"max_batch_records": 0}, "max_batch_records"),
        ({"max_batch_bytes": 10}, "max_batch_bytes"),
        ({"max_topics": 0}, "max_topics"),
        ({"publisher_id": -1}, "publisher_id"),
        ({"idle_us": -1}, "idle_us"),
        ({"max_delay_us": "x"}, "max_delay_us"),
        ({"capacity_bytes": 1.5}, "capacity_bytes"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        Batcher(**kwargs)


def test_topics_and_publisher_id():
    b = Batcher(max_topics=2)
    assert b.publisher_id != 0
    assert Batcher(publisher_id=5).publisher_id == 5
    assert b.topic_id(b"a") == 0 and b.topic_id(b"b") == 1 and b.topic_id(b"a") == 0
    assert b.topic_name(1) == b"b" and b.topic_count == 2
    with pytest.raises(ValidationError, match="max_topics=2"):
        b.topic_id(b"c")
    assert b.next_seq(0) == 1


def test_publish_topic_cache_is_per_topic():
    b = Batcher(idle_us=LONG_US, max_delay_us=LONG_US)
    with pytest.raises(ValidationError, match="must be a str"):
        b.publish(None, b"x")  # type: ignore[arg-type]
    for i in range(6):
        b.publish(("a", "b", "a.b")[i % 3], bytes([i]))
    got = {t: [m.payload for m in decode_batch(t.decode(), f)] for t, f in b.drain()}
    assert got == {b"a": [b"\x00", b"\x03"], b"b": [b"\x01", b"\x04"], b"a.b": [b"\x02", b"\x05"]}


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.just(("drain",)),
            st.tuples(
                st.just("append"),
                st.integers(0, 2),  # topic
                st.integers(0, 120),  # payload bytes
                st.integers(0, 60_000),  # ns after the previous append
                st.booleans(),  # first record after a drain: idle or busy
            ),
        ),
        max_size=60,
    ),
    max_records=st.integers(1, 6),
    max_bytes=st.integers(64, 1200),
)
def test_decisions_match_the_documented_rule(steps, max_records, max_bytes):
    """A model of the rule in pb_ring.h / the Batcher docstring, driven with explicit clocks."""
    idle_ns, delay_ns = 5_000, 100_000
    b = Batcher(
        capacity_bytes=1 << 16,
        max_batch_records=max_records,
        max_batch_bytes=max_bytes,
        max_message_bytes=200,
        idle_us=idle_ns / 1000,
        max_delay_us=delay_ns / 1000,
    )
    tids = [b.topic_id(t) for t in (b"a", b"b", b"c")]
    per_topic = [0, 0, 0]
    used = 0
    oldest = 0
    before_drain = after_drain = None  # real clock around the last drain
    now = 0
    for step in steps:
        if step[0] == "drain":
            if used:  # draining an empty ring is no drain: the idle clock keeps running
                before_drain = Batcher.now_ns()
                b.drain()
                after_drain = Batcher.now_ns()
            per_topic, used, oldest = [0, 0, 0], 0, 0
            continue
        _, ti, plen, dt, idle = step
        if used == 0:
            if before_drain is None:  # never drained: always idle
                now = Batcher.now_ns() if idle else 0
                expect_ready = True
            elif idle:
                now = after_drain + idle_ns + dt
                expect_ready = True
            else:
                now = before_drain - 1 - dt
                expect_ready = False
            oldest = now
        else:
            now += dt
            expect_ready = False
        per_topic[ti] += 1
        used += documented_record_size(0, plen)
        expect_ready = (
            expect_ready
            or per_topic[ti] >= max_records
            or used >= max_bytes
            or now - oldest >= delay_ns
        )
        rc = b.append_at(tids[ti], b"p" * plen, now)
        assert rc == (READY if expect_ready else PENDING), (step, per_topic, used, now - oldest)
        assert b.pending_bytes == used


def test_publish_releases_buffers_and_references():
    import sys

    b = Batcher(idle_us=LONG_US, max_delay_us=LONG_US)
    ba = bytearray(b"payload")
    b.publish("t", ba)
    b.publish("t", memoryview(ba))
    ba.append(1)  # no buffer export left behind
    tid = b.topic_id(b"t")
    b.append(tid, ba, bytearray(msgpack.packb({"a": 1})))
    ba.append(2)
    payload = b"x" * 10
    rc = sys.getrefcount(payload)
    for _ in range(1000):
        b.publish("t", payload)
        b.append(tid, payload)
        b.drain()
    assert sys.getrefcount(payload) == rc


def test_mark_flushed_moves_the_idle_reference():
    idle_ns = 5_000
    b = Batcher(idle_us=idle_ns / 1000, max_delay_us=LONG_US)
    tid = b.topic_id(b"t")
    b.append(tid, b"x")
    b.drain()
    drained_by = Batcher.now_ns()
    while Batcher.now_ns() <= drained_by + 10 * idle_ns:  # a "slow send" of 50 us, bounded
        pass
    a = Batcher.now_ns()
    b.mark_flushed()
    # idle is counted from the mark (>= a), so this is not idle yet...
    assert b.append_at(tid, b"y", a + idle_ns - 1) == PENDING
    b.drain()
    # ...whereas without the mark the same gap since the drain is idle
    drained_by = Batcher.now_ns()
    while Batcher.now_ns() <= drained_by + 10 * idle_ns:
        pass
    a = Batcher.now_ns()
    assert b.append_at(tid, b"y", a + idle_ns - 1) == READY


def test_publish_marks_flushed_after_on_ready():
    idle_ns = 5_000
    b = Batcher(idle_us=idle_ns / 1000, max_delay_us=LONG_US)
    marks = []

    def slow_flush():
        b.drain()
        end = Batcher.now_ns() + 10 * idle_ns
        while Batcher.now_ns() <= end:  # the send takes 50 us
            pass
        marks.append(Batcher.now_ns())

    b.set_hooks(None, None, slow_flush, None, None)
    b.publish("t", b"1")  # never drained: READY, flushed slowly
    assert len(marks) == 1
    tid = b.topic_id(b"t")
    assert b.append_at(tid, b"2", marks[0] + idle_ns - 1) == PENDING


def test_mark_quiet_counts_idle_from_the_last_append():
    idle_ns = 5_000
    b = Batcher(idle_us=idle_ns / 1000, max_delay_us=LONG_US)
    tid = b.topic_id(b"t")
    t = Batcher.now_ns()  # every drain below happens after t + 1 (real clock)
    assert b.append_at(tid, b"x", t) == READY
    b.drain()
    assert b.append_at(tid, b"y", t + 1) == PENDING  # a burst: the tail waits for a flusher
    b.mark_quiet()  # records pending: no effect
    b.drain()  # the flusher sends the tail...
    b.mark_flushed()
    # the last drain is later than t + 1, so t + idle_ns is not idle_ns after it
    assert b.append_at(tid, b"z", t + idle_ns) == PENDING
    b.drain()
    b.mark_quiet()  # ...because publishing had stopped: idle counts from the last append
    assert b.append_at(tid, b"w", t + 2 * idle_ns - 1) == PENDING
    b.drain()
    b.mark_quiet()
    assert b.append_at(tid, b"v", t + 3 * idle_ns - 1) == READY
