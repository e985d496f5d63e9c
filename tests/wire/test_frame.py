"""Batch frame codec: an independent decoder written from docs/wire.md, robustness, Message."""

from __future__ import annotations

import pickle
import random
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybus import FrameError, Message, ValidationError
from pybus.wire import (
    Batcher,
    decode_batch,
    decode_into,
    decode_payloads,
    encode_frame,
    frame_info,
    iter_frame,
)

# ---------------------------------------------------------------------------------------------
# The oracle: docs/wire.md "Batch frame", section by section, with struct only.

FRAME_HEADER = struct.Struct("<2sBBIQQq")  # magic, version, frame_flags, count, pid, seq, ts
RECORD_HEADER = struct.Struct("<IHBBI")  # payload_len, header_len, flags, reserved, ts_delta


class SpecError(Exception):
    pass


def spec_decode(frame: bytes) -> tuple[dict, list[dict]]:
    if len(frame) < FRAME_HEADER.size:
        raise SpecError("short header")
    magic, version, fflags, count, pid, first_seq, base = FRAME_HEADER.unpack_from(frame, 0)
    if magic != b"PB":
        raise SpecError("magic")
    if version != 1:
        raise SpecError("version")
    if fflags not in (0, 1):
        raise SpecError("frame flags")
    if fflags == 1:  # a position frame: the 32-byte header alone, count 0
        if count != 0 or len(frame) != FRAME_HEADER.size:
            raise SpecError("position")
        return {"publisher_id": pid, "first_seq": first_seq, "base": base, "count": 0}, []
    if count == 0:
        raise SpecError("empty")
    off = FRAME_HEADER.size
    records = []
    for i in range(count):
        if len(frame) - off < RECORD_HEADER.size:
            raise SpecError("short record header")
        plen, hlen, rflags, reserved, delta = RECORD_HEADER.unpack_from(frame, off)
        if rflags & ~0x03 or reserved != 0:
            raise SpecError("reserved bits")
        if bool(rflags & 0x02) != (hlen > 0):
            raise SpecError("header flag")
        off += RECORD_HEADER.size
        if off + hlen + plen > len(frame):
            raise SpecError("short body")
        header = frame[off : off + hlen]
        off += hlen
        payload = frame[off : off + plen]
        off += plen
        records.append(
            {
                "seq": first_seq + i,
                "payload": payload,
                "header": header or None,
                "msgpack": bool(rflags & 0x01),
                "timestamp_ns": base + delta,
            }
        )
    if off != len(frame):
        raise SpecError("trailing bytes")
    return {"publisher_id": pid, "first_seq": first_seq, "base": base, "count": count}, records


def check_agrees(frame: bytes, topic: str = "t") -> None:
    """Our decoders and the spec decoder accept/reject alike and agree on every field."""
    try:
        info, recs = spec_decode(frame)
    except SpecError:
        with pytest.raises(FrameError):
            decode_batch(topic, frame)
        with pytest.raises(FrameError):
            decode_payloads(frame)
        return
    msgs = decode_batch(topic, frame)
    assert frame_info(frame) == (
        info["publisher_id"],
        info["first_seq"],
        info["count"],
        info["base"],
    )
    assert decode_payloads(frame) == [r["payload"] for r in recs]
    assert list(iter_frame(frame)) == [(r["seq"], r["payload"]) for r in recs]
    assert len(msgs) == len(recs)
    for m, r in zip(msgs, recs, strict=True):
        assert m.topic == topic
        assert m.seq == r["seq"]
        assert m.publisher_id == info["publisher_id"]
        assert m.timestamp_ns == r["timestamp_ns"]
        assert m.raw_payload == r["payload"]
        assert m.raw_headers == r["header"]
        assert m.is_msgpack == r["msgpack"]


record_st = st.tuples(
    st.binary(max_size=80),
    st.one_of(
        st.none(),
        st.dictionaries(
            st.text(max_size=5), st.integers(-(1 << 63), (1 << 64) - 1), min_size=1, max_size=3
        ).map(msgpack.packb),
    ),
    st.sampled_from([0, 1]),
    st.integers(min_value=0, max_value=1 << 62),
)


@settings(max_examples=150, deadline=None)
@given(
    pid=st.integers(min_value=0, max_value=(1 << 64) - 1),
    first_seq=st.integers(min_value=0, max_value=(1 << 63)),
    records=st.lists(record_st, min_size=1, max_size=12),
)
def test_encode_matches_spec_decoder(pid, first_seq, records):
    frame = encode_frame(pid, first_seq, records)
    info, recs = spec_decode(frame)
    assert info["publisher_id"] == pid and info["first_seq"] == first_seq
    base = records[0][3]
    for (payload, header, flags, ts), r in zip(records, recs, strict=True):
        assert r["payload"] == payload
        assert r["header"] == header
        assert r["msgpack"] == bool(flags)
        # deltas saturate to 0 .. 2**32-1 ns from the base (docs/wire.md)
        assert r["timestamp_ns"] == base + min(max(ts - base, 0), 0xFFFFFFFF)
    check_agrees(frame)


def _sample_frame() -> bytes:
    return encode_frame(
        0xABCDEF,
        41,
        [
            (b"alpha", None, 0, 1000),
            (msgpack.packb({"k": [1, 2]}), msgpack.packb({"h": "v"}), 1, 1500),
            (b"", None, 0, 1501),
            (b"\x00" * 70, msgpack.packb({"x": 1}), 0, 999),
        ],
    )


def test_every_truncation_is_rejected_like_the_spec():
    frame = _sample_frame()
    for cut in range(len(frame)):
        with pytest.raises(FrameError) as ei:
            decode_batch("t", frame[:cut])
        assert 0 <= ei.value.offset <= cut
        assert ei.value.reason
        with pytest.raises(SpecError):
            spec_decode(frame[:cut])


def test_random_corruptions_decode_consistently_or_raise():
    rng = random.Random(1234)
    frame = _sample_frame()
    outcomes = {"ok": 0, "err": 0}
    for _ in range(3000):
        b = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(b))
            b[pos] = rng.randrange(256) if rng.random() < 0.5 else b[pos] ^ (1 << rng.randrange(8))
        if rng.random() < 0.2:
            b = b[: rng.randrange(len(b) + 1)]
        if rng.random() < 0.1:
            b += bytes(rng.randrange(1, 5))
        data = bytes(b)
        check_agrees(data)
        try:
            decode_batch("t", data)
            outcomes["ok"] += 1
        except FrameError:
            outcomes["err"] += 1
    assert outcomes["ok"] > 0 and outcomes["err"] > 0


def test_error_messages_say_what_and_where():
    one = encode_frame(1, 1, [(b"alpha", None, 0, 0)])
    with pytest.raises(
        FrameError,
        match=r"record 0 at offset 32 declares a 5-byte payload "
        r"but only 3 bytes remain",
    ) as ei:
        decode_batch("t", one[:47])
    assert (ei.value.offset, ei.value.record, ei.value.reason) == (32, 0, "truncated")
    frame = _sample_frame()
    bad_version = frame[:2] + b"\x02" + frame[3:]
    with pytest.raises(FrameError, match="unknown batch frame version 2") as ei:
        decode_batch("t", bad_version)
    assert ei.value.reason == "unknown version" and ei.value.offset == 2
    with pytest.raises(FrameError, match="unknown batch frame version"):
        frame_info(bad_version)
    with pytest.raises(FrameError, match="trailing bytes"):
        decode_payloads(frame + b"\x00")
    with pytest.raises(FrameError, match="not a pybus batch frame"):
        decode_payloads(b"XX" + frame[2:])
    huge_count = frame[:4] + struct.pack("<I", 10**6) + frame[8:]
    with pytest.raises(FrameError, match="fit at most"):
        frame_info(huge_count)


def test_position_frames_follow_the_spec():
    """A position frame (frame_flags 0x01) is the header alone with count 0: no records,
    first_seq is the stream's next sequence number. Anything else with that flag is refused."""
    b = Batcher()
    b.publish("pos.a", b"1")
    b.publish("pos.a", b"2")
    assert b.position_frames(0, 10**8, 3) == ([], None)  # pending: its data is not sent yet
    b.drain()
    frames, due = b.position_frames(10**9, 10**8, 3)
    assert due == 10**9 + 10**8  # the first repeat, one interval later
    assert [t for t, _ in frames] == [b"pos.a"]
    position = frames[0][1]
    info, recs = spec_decode(position)
    assert recs == [] and info["count"] == 0 and info["first_seq"] == 3
    assert info["publisher_id"] == b.publisher_id
    assert frame_info(position) == (b.publisher_id, 3, 0, info["base"])
    assert decode_batch("pos.a", position) == [] and decode_payloads(position) == []
    assert list(iter_frame(position)) == []
    check_agrees(position)
    for bad, why in (
        (position[:4] + struct.pack("<I", 1) + position[8:], "1 records"),  # a count
        (position + bytes(12), "44 bytes"),  # a record's worth of bytes after the header
        (position[:3] + b"\x03" + position[4:], "reserved bits"),  # an unknown flag
    ):
        with pytest.raises(FrameError, match=why):
            decode_batch("pos.a", bad)
        with pytest.raises(SpecError):
            spec_decode(bad)
    empty = _sample_frame()[:4] + struct.pack("<I", 0) + _sample_frame()[8:32]
    with pytest.raises(FrameError, match="0 records"):
        frame_info(empty)  # count 0 without the position flag is still malformed


def test_position_announcements_repeat_then_stop():
    """Each next seq is announced `repeats` times, 1, 2, 4 intervals apart; a moving topic at
    most once per interval; force announces moved topics at once."""
    b = Batcher()
    b.publish("pos.a", b"x")
    b.drain()
    sent = []
    for t in range(0, 2000, 10):
        frames, _ = b.position_frames(t, 100, 4)
        sent += [t] * len(frames)
    assert sent == [0, 100, 300, 700]
    b.publish("pos.a", b"y")
    b.drain()
    assert b.position_frames(750, 100, 4)[0] == []  # moved, but announced 50 ago
    assert len(b.position_frames(750, 100, 4, force=True)[0]) == 1
    frames, due = b.position_frames(800, 100, 4)
    assert frames == [] and due == 850
    with pytest.raises(ValidationError, match="interval_ns"):
        b.position_frames(0, 0, 1)
    # a limit: two per call, the third (round robin) a tenth of an interval later
    b = Batcher()
    for t in ("l.a", "l.b", "l.c"):
        b.publish(t, b"z")
    b.drain()
    frames, due = b.position_frames(0, 100, 1, limit=2)
    assert [t for t, _ in frames] == [b"l.a", b"l.b"] and due == 10
    frames, due = b.position_frames(10, 100, 1, limit=2)
    assert [t for t, _ in frames] == [b"l.c"] and due is None


def test_accepts_any_buffer():
    frame = _sample_frame()
    expected = decode_payloads(frame)
    assert decode_payloads(bytearray(frame)) == expected
    assert decode_payloads(memoryview(frame)) == expected
    assert [m.raw_payload for m in decode_batch("t", np.frombuffer(frame, np.uint8))] == expected


def test_decode_into_fills_offsets_and_lengths():
    frame = _sample_frame()
    n = frame_info(frame)[2]
    seqs = np.zeros(n, np.int64)
    offs = np.zeros(n, np.int64)
    lens = np.zeros(n, np.int64)
    assert decode_into(frame, seqs, offs, lens) == n
    assert list(seqs) == [41, 42, 43, 44]
    assert [frame[o : o + ln] for o, ln in zip(offs, lens, strict=True)] == decode_payloads(frame)
    small = np.zeros(n - 1, np.int64)
    with pytest.raises(ValidationError, match="allocate >= 4"):
        decode_into(frame, small, offs, lens)
    with pytest.raises(FrameError):
        decode_into(frame[:-1], seqs, offs, lens)


def test_encode_frame_rejects_bad_records():
    with pytest.raises(ValidationError, match="1 to"):
        encode_frame(1, 1, [])
    with pytest.raises(ValidationError, match="flags"):
        encode_frame(1, 1, [(b"x", None, 2, 0)])
    with pytest.raises(ValidationError, match="65535"):
        encode_frame(1, 1, [(b"x", b"h" * 70000, 0, 0)])
    with pytest.raises(ValidationError, match="publisher_id"):
        encode_frame(-1, 1, [(b"x", None, 0, 0)])


# ---------------------------------------------------------------------------------------------
# Message


def test_message_lazy_msgpack_payload_and_headers():
    frame = encode_frame(
        5, 9, [(msgpack.packb({"a": 1}), msgpack.packb({"h": 2}), 1, 10), (b"raw", None, 0, 11)]
    )
    m1, m2 = decode_batch("orders.created", frame)
    assert m1.is_msgpack and m1.raw_payload == msgpack.packb({"a": 1})
    p = m1.payload
    assert p == {"a": 1}
    assert m1.payload is p  # cached
    assert m1.headers == {"h": 2} and m1.headers is m1.headers
    assert not m2.is_msgpack and m2.payload == b"raw"
    assert m2.headers == {} and m2.raw_headers is None
    h = m2.headers
    h["x"] = 1
    assert m2.headers == {"x": 1}  # cached per Message
    m3 = decode_batch("orders.created", frame)[1]
    assert m3.headers == {}  # a fresh dict for each Message
    assert (m1.seq, m2.seq, m1.publisher_id, m1.timestamp_ns, m2.timestamp_ns) == (9, 10, 5, 10, 11)


def test_message_constructor():
    m = Message("t", {"k": "v"}, {"h": 1}, seq=3, publisher_id=4, timestamp_ns=5)
    assert m.is_msgpack and m.payload == {"k": "v"}
    assert msgpack.unpackb(m.raw_payload) == {"k": "v"}
    assert m.headers == {"h": 1} and msgpack.unpackb(m.raw_headers) == {"h": 1}
    assert (m.topic, m.seq, m.publisher_id, m.timestamp_ns) == ("t", 3, 4, 5)
    b = Message("t", bytearray(b"xy"))
    assert not b.is_msgpack and b.payload == b"xy" and type(b.payload) is bytes
    assert b.headers == {}
    with pytest.raises(ValidationError):
        Message(b"t", b"x")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Message("t", b"x", headers=[1])  # type: ignore[arg-type]


def test_message_equality_pickle_repr():
    frame = encode_frame(7, 1, [(msgpack.packb([1, 2]), msgpack.packb({"a": 1}), 1, 100)])
    (m,) = decode_batch("a.b", frame)
    same = Message("a.b", [1, 2], {"a": 1}, seq=1, publisher_id=7, timestamp_ns=100)
    assert m == same and hash(m) == hash(same)
    assert m != Message("a.b", [1, 2], {"a": 2}, seq=1, publisher_id=7, timestamp_ns=100)
    assert m != Message("a.b", [1, 2], {"a": 1}, seq=2, publisher_id=7, timestamp_ns=100)
    assert m != Message("a.c", [1, 2], {"a": 1}, seq=1, publisher_id=7, timestamp_ns=100)
    assert m != Message(
        "a.b", msgpack.packb([1, 2]), {"a": 1}, seq=1, publisher_id=7, timestamp_ns=100
    )  # same bytes but not flagged msgpack
    assert m != "a.b"
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(m, protocol=proto))
        assert back == m and back.payload == [1, 2] and back.headers == {"a": 1}
    m.headers["added"] = True  # a changed headers dict is what gets pickled
    assert pickle.loads(pickle.dumps(m)).headers == {"a": 1, "added": True}
    m.headers.clear()
    assert pickle.loads(pickle.dumps(m)).headers == {}
    r = repr(m)
    assert "a.b" in r and "seq=1" in r and "msgpack" in r
    long = Message("t", b"z" * 1000)
    assert len(repr(long)) < 200


def spec_encode(pid: int, first_seq: int, base: int, records: list[tuple]) -> bytes:
    """An encoder written from docs/wire.md with struct only (records: payload, header,
    msgpack flag, delta)."""
    out = [FRAME_HEADER.pack(b"PB", 1, 0, len(records), pid, first_seq, base)]
    for payload, header, is_msgpack, delta in records:
        flags = (0x01 if is_msgpack else 0) | (0x02 if header else 0)
        out.append(RECORD_HEADER.pack(len(payload), len(header), flags, 0, delta))
        out.append(header)
        out.append(payload)
    return b"".join(out)


@settings(max_examples=100, deadline=None)
@given(
    pid=st.integers(0, (1 << 64) - 1),
    first_seq=st.integers(0, 1 << 40),
    base=st.integers(-(1 << 62), 1 << 62),
    records=st.lists(
        st.tuples(
            st.binary(max_size=50),
            st.sampled_from([b"", msgpack.packb({"a": 1}), msgpack.packb({})]),
            st.booleans(),
            st.integers(0, 0xFFFFFFFF),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_spec_encoded_frames_decode(pid, first_seq, base, records):
    frame = spec_encode(pid, first_seq, base, records)
    msgs = decode_batch("topic", frame)
    assert frame_info(frame) == (pid, first_seq, len(records), base)
    for i, (m, (payload, header, is_msgpack, delta)) in enumerate(zip(msgs, records, strict=True)):
        assert m.seq == first_seq + i
        assert m.raw_payload == payload and m.is_msgpack == is_msgpack
        assert m.timestamp_ns == base + delta
        assert m.headers == (msgpack.unpackb(header) if header else {})


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data):
    check_agrees(data)
    check_agrees(b"PB\x01\x00" + data)


def test_buffers_are_released_on_every_path():
    """A bytearray whose buffer is still exported cannot be resized: check none leaks."""
    good = bytearray(_sample_frame())
    bad = bytearray(_sample_frame()[:-1])
    n = frame_info(bytes(good))[2]
    arrays = [np.zeros(n, np.int64) for _ in range(3)]
    decode_batch("t", good)
    decode_payloads(good)
    decode_into(good, *arrays)
    frame_info(good)
    list(iter_frame(good))
    for fn in (
        lambda f: decode_batch("t", f),
        decode_payloads,
        iter_frame,
        lambda f: decode_into(f, *arrays),
    ):
        with pytest.raises(FrameError):
            fn(bad)
    it = iter_frame(good)
    next(it)
    del it  # dropped half-way
    good.append(0)
    bad.append(0)  # both resizable: no export left behind


def test_no_reference_leaks_in_decode():
    import sys

    frame = _sample_frame()
    decode_batch("t", frame)
    before = sys.gettotalrefcount() if hasattr(sys, "gettotalrefcount") else None
    topic = "leak.check"
    rc_topic = sys.getrefcount(topic)
    rc_frame = sys.getrefcount(frame)
    for _ in range(1000):
        msgs = decode_batch(topic, frame)
        for m in msgs:
            m.payload, m.headers  # noqa: B018 - exercise the lazy paths
        decode_payloads(frame)
        with pytest.raises(FrameError):
            decode_batch(topic, frame[:-1])
    del msgs, m
    assert sys.getrefcount(topic) == rc_topic
    assert sys.getrefcount(frame) == rc_frame
    if before is not None:  # debug builds only
        assert abs(sys.gettotalrefcount() - before) < 100


def test_msgpack_payload_edge_cases():
    m = Message("t", {1: "a", 2: [3]})
    assert decode_batch("t", encode_frame(1, 1, [(m.raw_payload, None, 1, 0)]))[0].payload == {
        1: "a",
        2: [3],
    }
    bad = decode_batch("t", encode_frame(1, 1, [(b"\xc1", b"\xc1", 1, 0)]))[0]
    with pytest.raises(FrameError, match="msgpack payload of 1 bytes does not decode"):
        bad.payload  # noqa: B018
    with pytest.raises(FrameError, match="headers of 1 bytes"):
        bad.headers  # noqa: B018
    not_map = decode_batch("t", encode_frame(1, 1, [(b"x", msgpack.packb([1]), 0, 0)]))[0]
    with pytest.raises(FrameError, match="must be a msgpack map"):
        not_map.headers  # noqa: B018
    assert bad.raw_payload == b"\xc1"  # raw access still works
