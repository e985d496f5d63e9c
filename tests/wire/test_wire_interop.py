"""Interoperability from docs/wire.md alone: plain pyzmq sockets, struct and msgpack.

The encoder and decoder below are written from the document, not from pybus's code: a plain
SUB socket decodes what a pybus Publisher sends, and a plain PUB socket publishes to a pybus
Subscriber.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import zmq

import pybus

pytestmark = pytest.mark.timeout(60)

# docs/wire.md, "Batch frame (version 1)": little-endian
FRAME_HEADER = struct.Struct("<BBBBIQQq")  # magic0 magic1 version flags count pid first_seq ts
RECORD_HEADER = struct.Struct("<IHBBI")  # payload_len header_len flags reserved ts_delta
HELLO = b"\xffpybus-hello:"  # docs/wire.md, "Hello subscription"
JOIN_HEAD = struct.Struct("<BBQI")  # docs/wire.md "Join snapshot": version flags pid count


def spec_decode_join(body: bytes) -> tuple[int, bool, dict[bytes, int]]:
    """A join snapshot frame, decoded from the document's table."""
    version, flags, pid, count = JOIN_HEAD.unpack_from(body)
    assert version == 1 and flags & ~0x01 == 0
    at, out = JOIN_HEAD.size, {}
    for _ in range(count):
        n = body[at]
        assert 1 <= n <= 255
        out[body[at + 1 : at + 1 + n]] = struct.unpack_from("<Q", body, at + 1 + n)[0]
        at += 1 + n + 8
    assert at == len(body) and len(body) <= 60_000
    return pid, bool(flags & 0x01), out


@dataclass
class Rec:
    topic: str
    seq: int
    publisher_id: int
    timestamp_ns: int
    payload: Any
    headers: dict[str, Any]


def spec_decode(
    topic: bytes, frame: bytes, positions: dict[tuple[int, str], int] | None = None
) -> list[Rec]:
    """Decode one pub/sub message following docs/wire.md; raise ValueError when invalid.
    A position frame yields no records; its next sequence number goes to ``positions``."""
    if len(frame) < 32:
        raise ValueError("short")
    m0, m1, version, flags, count, pid, first, base = FRAME_HEADER.unpack_from(frame, 0)
    if (m0, m1) != (0x50, 0x42) or version != 1 or flags not in (0, 1):
        raise ValueError("header")
    if flags == 1:  # position frame: the header alone, count 0, first_seq = next seq
        if count != 0 or len(frame) != 32:
            raise ValueError("position")
        if positions is not None:
            positions[(pid, topic.decode("ascii"))] = first
        return []
    if count == 0 or count > (len(frame) - 32) // 12:
        raise ValueError("count")
    off = 32
    out = []
    for i in range(count):
        if len(frame) - off < 12:
            raise ValueError("record header")
        plen, hlen, rflags, reserved, delta = RECORD_HEADER.unpack_from(frame, off)
        off += 12
        if rflags & ~0x03 or reserved or bool(rflags & 0x02) != (hlen > 0):
            raise ValueError("record flags")
        if off + hlen + plen > len(frame):
            raise ValueError("record length")
        header = frame[off : off + hlen]
        off += hlen
        payload = frame[off : off + plen]
        off += plen
        out.append(
            Rec(
                topic=topic.decode("ascii"),
                seq=first + i,
                publisher_id=pid,
                timestamp_ns=base + delta,
                payload=msgpack.unpackb(payload) if rflags & 0x01 else payload,
                headers=msgpack.unpackb(header) if hlen else {},
            )
        )
    if off != len(frame):
        raise ValueError("trailing bytes")
    return out


def spec_encode(
    pid: int, first_seq: int, records: list[tuple[bytes, bool, dict[str, Any] | None]]
) -> bytes:
    """Encode a batch frame following docs/wire.md (payload, is_msgpack, headers)."""
    base = time.time_ns()
    parts = [FRAME_HEADER.pack(0x50, 0x42, 1, 0, len(records), pid, first_seq, base)]
    for i, (payload, is_mp, headers) in enumerate(records):
        header = msgpack.packb(headers) if headers else b""
        flags = (0x01 if is_mp else 0) | (0x02 if header else 0)
        parts.append(RECORD_HEADER.pack(len(payload), len(header), flags, 0, i * 1000))
        parts.append(header)
        parts.append(payload)
    return b"".join(parts)


def test_plain_sub_decodes_pybus_traffic() -> None:
    ctx = zmq.Context.instance()
    pub = pybus.Publisher("tcp://127.0.0.1:*")
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SUBSCRIBE, b"orders.")
    hello = HELLO + os.urandom(8).hex().encode()
    raw.setsockopt(zmq.SUBSCRIBE, hello)  # to be counted
    raw.connect(pub.endpoints[0])
    try:
        assert pub.wait_for_subscribers(1, timeout=5) == 1  # the foreign hello counts
        # the join snapshot, on its hello topic (docs/wire.md "Join snapshot"): nothing has
        # published yet, so one last frame with no entries
        assert raw.poll(5000)
        assert raw.recv_multipart() == [hello, JOIN_HEAD.pack(1, 0x01, pub.publisher_id, 0)]
        t0 = time.time_ns()
        pub.publish("orders.created", b"\x00\x01bytes")
        pub.publish("orders.created", {"id": 7, "tags": ["a"]}, headers={"trace": "t-1"})
        pub.publish("audit.x", b"filtered at the publisher")
        for i in range(500):
            pub.publish("orders.bulk", i.to_bytes(2, "little"))
        pub.flush()
        t1 = time.time_ns()
        recs: list[Rec] = []
        positions: dict[tuple[int, str], int] = {}
        pid = pub.publisher_id
        # the messages, then (within ~100 ms) each stream's position: its next seq
        while len(recs) < 502 or len(positions) < 2:
            assert raw.poll(5000)
            parts = raw.recv_multipart()
            assert len(parts) == 2  # topic frame + batch frame
            assert parts[0] in (b"orders.created", b"orders.bulk")  # audit.x: filtered out
            recs += spec_decode(parts[0], parts[1], positions)
        assert positions == {(pid, "orders.created"): 3, (pid, "orders.bulk"): 501}
        created = [r for r in recs if r.topic == "orders.created"]
        assert created[0].payload == b"\x00\x01bytes" and created[0].headers == {}
        assert created[1].payload == {"id": 7, "tags": ["a"]}
        assert created[1].headers == {"trace": "t-1"}
        assert [r.seq for r in created] == [1, 2]
        bulk = [r for r in recs if r.topic == "orders.bulk"]
        assert [r.seq for r in bulk] == list(range(1, 501))
        assert [int.from_bytes(r.payload, "little") for r in bulk] == list(range(500))
        for r in recs:
            assert r.publisher_id == pub.publisher_id
            assert t0 <= r.timestamp_ns <= t1
        # position repeats may follow (docs/wire.md); audit.x never left the publisher
        while raw.poll(50):
            parts = raw.recv_multipart()
            assert spec_decode(parts[0], parts[1], positions) == [] and parts[0] != b"audit.x"
        assert positions == {(pid, "orders.created"): 3, (pid, "orders.bulk"): 501}
    finally:
        raw.close(linger=0)
        pub.close(linger_ms=0)


def test_plain_pub_publishes_to_pybus_subscriber() -> None:
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.XPUB)  # XPUB only to see the subscriber's hello (a handshake)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    gaps: list[tuple[Any, ...]] = []
    sub = pybus.Subscriber(
        f"tcp://127.0.0.1:{port}", topics=["sensor.*"], on_gap=lambda *a: gaps.append(a)
    )
    try:
        subs = set()
        deadline = time.monotonic() + 5
        while not any(s.startswith(b"\x01" + HELLO) for s in subs):
            assert raw.poll(int(max(1, (deadline - time.monotonic()) * 1000)))
            subs.add(raw.recv())
        # topics before hello: the subscriber's prefix is already registered
        assert b"\x01sensor." in subs
        pid = 0xABCDEF
        f1 = spec_encode(pid, 1, [(b"raw", False, None), (msgpack.packb([1, 2]), True, {"u": "C"})])
        f2 = spec_encode(pid, 7, [(b"after-gap", False, None)])
        raw.send(b"sensor.temp", zmq.SNDMORE)
        raw.send(f1)
        raw.send(b"sensor.temp", zmq.SNDMORE)
        raw.send(f2)
        got: list[pybus.Message] = []
        while len(got) < 3:
            got += sub.recv_batch(timeout=5)
            assert got, "nothing arrived"
        assert [m.payload for m in got] == [b"raw", [1, 2], b"after-gap"]
        assert got[1].headers == {"u": "C"} and got[1].is_msgpack
        assert [m.seq for m in got] == [1, 2, 7]
        assert {m.publisher_id for m in got} == {pid}
        assert got[1].timestamp_ns - got[0].timestamp_ns == 1000
        assert sub.stats()["lost"] == 4 and gaps == [("sensor.temp", pid, 3, 7, 4)]
        # a position frame written from docs/wire.md: seqs 8 and 9 were sent and never came
        position = FRAME_HEADER.pack(0x50, 0x42, 1, 1, 0, pid, 10, time.time_ns())
        raw.send(b"sensor.temp", zmq.SNDMORE)
        raw.send(position)
        deadline = time.monotonic() + 5
        while sub.stats()["positions"] < 1 and time.monotonic() < deadline:
            assert sub.recv_batch(timeout=0.05) == []
        st = sub.stats()
        assert st["positions"] == 1 and st["lost"] == 6 and st["received"] == 3
        assert gaps[-1] == ("sensor.temp", pid, 8, 10, 2)
    finally:
        sub.close()
        raw.close(linger=0)


def test_unknown_version_is_rejected_by_both_sides() -> None:
    good = spec_encode(1, 1, [(b"x", False, None)])
    v2 = bytearray(good)
    v2[2] = 2
    with pytest.raises(ValueError):
        spec_decode(b"t", bytes(v2))
    with pytest.raises(pybus.FrameError, match="version 2"):
        pybus.wire.decode_batch("t", bytes(v2))
    # and the two implementations agree on a valid frame
    ours = pybus.wire.decode_batch("t", good)
    theirs = spec_decode(b"t", good)
    assert [(m.payload, m.seq, m.timestamp_ns) for m in ours] == [
        (r.payload, r.seq, r.timestamp_ns) for r in theirs
    ]


def test_join_snapshot_tells_a_newcomer_where_every_stream_stands() -> None:
    """Streams published before a foreign subscriber arrives: its hello gets the snapshot of
    their next sequence numbers (docs/wire.md, "Join snapshot"), in chunks of at most 60,000
    bytes, the last one flagged; streams that never published are not in it."""
    ctx = zmq.Context.instance()
    pub = pybus.Publisher("tcp://127.0.0.1:*", registry=False)
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    try:
        expected = {}
        for i in range(600):  # 600 topics of ~250 chars: more than one 60,000-byte chunk
            topic = f"t{i:03d}." + ".".join(["x" * 60] * 4)  # 249 chars
            for _ in range(i % 3 + 1):
                pub.publish(topic, b"m")
            expected[topic.encode()] = i % 3 + 2
        pub.flush()  # nobody subscribed: XPUB drops them, the streams moved all the same
        hello = HELLO + os.urandom(8).hex().encode()
        raw.setsockopt(zmq.SUBSCRIBE, hello)  # the hello topic only: no data
        raw.connect(pub.endpoints[0])
        assert pub.wait_for_subscribers(1, timeout=5) == 1
        got: dict[bytes, int] = {}
        chunks = 0
        while True:
            assert raw.poll(5000)
            topic, body = raw.recv_multipart()
            assert topic == hello
            pid, last, entries = spec_decode_join(body)
            assert pid == pub.publisher_id
            got.update(entries)
            chunks += 1
            if last:
                break
        assert chunks >= 2
        assert got == expected
    finally:
        raw.close(linger=0)
        pub.close(linger_ms=0)
