"""The channels (pybus.transport.channel): the pyzmq and the compiled implementation of each
read the same messages the same way. The RPC server's judges frames as docs/wire-reqrep.md
orders the checks and sends the same replies; the subscriber's reads docs/wire.md's
[topic][batch frame] messages, built here from the document."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zmq

from pybus._native import _zmqfast
from pybus.errors import ClosedError
from pybus.transport import channel

# docs/wire-reqrep.md: version u8, kind u8, flags u8, method length u8, correlation id u64
HDR = struct.Struct("<BBBBQ")
REQUEST, REPLY = 1, 2

FRAMES = [
    ([HDR.pack(1, REQUEST, 0, 3, 77) + b"addpayload"], (None, 77, 0, b"add", b"payload")),
    ([HDR.pack(1, REQUEST, 1, 1, 5) + b"m\x90"], (None, 5, 1, b"m", b"\x90")),
    ([b"tiny"], ("short", 0, 0, None, b"tiny")),
    ([HDR.pack(9, REQUEST, 0, 1, 1) + b"m"], ("version", 0, 0, None, None)),
    ([HDR.pack(1, REQUEST, 0x80, 1, 1) + b"m"], ("flags", 0, 0, None, None)),
    ([HDR.pack(1, REPLY, 0, 1, 1) + b"m"], ("kind", 0, 0, None, None)),
    ([HDR.pack(1, REQUEST, 0, 0, 1)], ("method", 0, 0, None, None)),
    ([HDR.pack(1, REQUEST, 0, 9, 1) + b"ab"], ("method", 0, 0, None, None)),
    ([b"part one", b"part two"], ("multipart", 0, 0, None, b"part one")),
]


def _skip_without_fast_path(path: str) -> None:
    # before any socket exists: a context left with open sockets hangs in its term()
    if path == "libzmq" and not _zmqfast.AVAILABLE:
        pytest.skip(f"the compiled fast path is off: {_zmqfast.UNAVAILABLE_REASON}")


@contextmanager
def _two(path: str, type_a: int, type_b: int) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """Two sockets of a private context (linger 0), closed and the context ended after."""
    _skip_without_fast_path(path)
    ctx = zmq.Context()
    a, b = ctx.socket(type_a), ctx.socket(type_b)
    for s in (a, b):
        s.linger = 0
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        ctx.term()


def _chan(kind: type, sock: zmq.Socket, path: str):
    """The channel of that kind on that path: pyzmq's, or the compiled one (open)."""
    chan = kind(sock) if path == "pyzmq" else kind.open(sock)
    assert chan.io_path == path
    return chan


@pytest.fixture(params=["pyzmq", "libzmq"])
def pair(request):
    with _two(request.param, zmq.ROUTER, zmq.DEALER) as (router, dealer):
        router.rcvtimeo, dealer.rcvtimeo = 2000, 2000
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        yield _chan(channel.ServerChannel, router, request.param), router, dealer


def test_both_paths_judge_each_frame_as_the_wire_document_says(pair) -> None:
    chan, _router, dealer = pair
    for parts, (reason, cid, flags, method, data) in FRAMES:
        dealer.send_multipart(parts)
        got = chan.recv_request()
        assert got is not None
        assert (got[0], got[2], got[3], got[4]) == (reason, cid, flags, method), parts
        assert isinstance(got[1], bytes) and got[1]  # the ROUTER's identity of the dealer
        assert got[5] == (data if data is not None else parts[0])
        if reason == "multipart":
            chan.discard_rest()
    dealer.send(HDR.pack(1, REQUEST, 0, 1, 9) + b"m")  # nothing left over from the multipart
    assert chan.recv_request()[0] is None


def test_a_reply_goes_back_framed_and_idle_is_none(pair) -> None:
    chan, router, dealer = pair
    router.rcvtimeo = 50
    assert chan.recv_request() is None  # nothing within RCVTIMEO
    dealer.send(HDR.pack(1, REQUEST, 0, 1, 42) + b"m")
    _, ident, cid, *_ = chan.recv_request()
    assert chan.send_reply(ident, cid, REPLY, 0, b"answer") == 0
    assert dealer.recv() == HDR.pack(1, REPLY, 0, 0, 42) + b"answer"
    router.close()
    with pytest.raises(ClosedError):
        chan.recv_request()


@pytest.fixture(params=["pyzmq", "libzmq"])
def routed(request):
    with _two(request.param, zmq.ROUTER, zmq.DEALER) as (router, dealer):
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        dealer.rcvtimeo = 2000
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        yield _chan(channel.MessageChannel, router, request.param), router, dealer


def test_whole_messages_both_ways_and_an_unroutable_peer_is_an_errno(routed) -> None:
    chan, _router, dealer = routed
    assert chan.recv_parts() is None  # nothing waiting: never blocks
    dealer.send_multipart([b"a", b"", b"ccc"])
    parts = None
    for _ in range(200):  # until the message crossed the loopback (bounded)
        parts = chan.recv_parts()
        if parts is not None:
            break
        dealer.poll(10)
    assert parts is not None and list(parts[1:]) == [b"a", b"", b"ccc"]
    assert chan.send_parts((parts[0], b"back", b"2")) == 0
    assert dealer.recv_multipart() == [b"back", b"2"]
    assert chan.send_parts((b"nobody", b"x")) == zmq.EHOSTUNREACH


# docs/wire.md, "Batch frame (version 1)", little-endian: written from the document
FRAME_HEADER = struct.Struct("<BBBBIQQq")  # magic, version, flags, count, pid, first seq, ts
RECORD_HEADER = struct.Struct("<IHBBI")  # payload len, header len, flags, reserved, ts delta


def batch_frame(pid: int, first_seq: int, ts_ns: int, payloads: list[bytes]) -> bytes:
    out = [FRAME_HEADER.pack(0x50, 0x42, 1, 0, len(payloads), pid, first_seq, ts_ns)]
    for p in payloads:
        out += [RECORD_HEADER.pack(len(p), 0, 0, 0, 0), p]
    return b"".join(out)


@pytest.fixture(params=["pyzmq", "libzmq"])
def subscribed(request):
    with _two(request.param, zmq.PUB, zmq.SUB) as (pub, sub):
        sub.subscribe(b"")
        sub.rcvtimeo = 2000
        # inproc: a message sent is queued at the SUB at once, so once one arrived all did
        pub.bind(f"inproc://chan-{request.param}")
        sub.connect(f"inproc://chan-{request.param}")
        for _ in range(400):  # until the subscription reached the PUB (bounded: 4 s)
            pub.send_multipart([b"probe", b""])
            if sub.poll(10):
                break
        else:
            pytest.fail("the subscription never reached the PUB")
        while sub.poll(50):  # the probes
            sub.recv_multipart()
        yield _chan(channel.SubscriberChannel, sub, request.param), pub, sub


def _recv(chan):
    """recv_pubsub without waiting, retried (bounded) until the message is there."""
    for _ in range(400):
        got = chan.recv_pubsub(True)
        if got is not None:
            return got
        chan._sock.poll(10)
    return None


def test_both_paths_read_pubsub_messages_alike(subscribed) -> None:
    chan, pub, _sub = subscribed
    good = batch_frame(7, 1, 123, [b"a", b"bb"])
    assert chan.recv_pubsub(True) is None  # nothing queued: never blocks
    pub.send_multipart([b"t.x", good])
    topic, frame, parts = _recv(chan)
    assert (topic, bytes(frame), parts, len(frame)) == (b"t.x", good, 2, len(good))
    pub.send(b"lonely")  # one part: malformed, counted by the caller
    assert _recv(chan) == (b"lonely", None, 1)
    pub.send_multipart([b"t.x", b"1", b"2", b"3"])  # four parts, all read
    assert _recv(chan) == (b"t.x", None, 4)
    pub.send_multipart([b"t.y", good])  # nothing left over from the one before
    assert _recv(chan)[0] == b"t.y"
    chan._sock.rcvtimeo = 30
    assert chan.recv_pubsub(False) is None  # waited RCVTIMEO, nothing came


def test_recv_batches_takes_wanted_frames_and_leaves_the_rest(subscribed) -> None:
    from pybus._native import decode_batch

    chan, pub, _sub = subscribed
    topics = {b"t.x": "t.x", b"t.ctl": 0}  # a str: wanted; anything else: for the caller
    frames = [batch_frame(7, 1, 1000, [b"1", b"2"]), batch_frame(7, 3, 2000, [b"3"]),
              batch_frame(9, 40, 3000, [b"x", b"y", b"z"])]
    for f in frames:
        pub.send_multipart([b"t.x", f])
    pub.send_multipart([b"t.ctl", b"control"])
    pub.send_multipart([b"t.x", batch_frame(7, 4, 4000, [b"4"])])
    pub.send_multipart([b"t.x", b"not a batch frame"])
    pub.send_multipart([b"t.x", batch_frame(7, 5, 5000, [b"5", b"6", b"7"])])
    first = _recv(chan)  # the first frame read alone (inproc: the rest is queued behind it)
    assert first[0] == b"t.x" and bytes(first[1]) == frames[0]
    batches: list = []
    rest = chan.recv_batches(topics, batches, 100, 100, decode_batch)
    assert rest is not None and rest[0] == b"t.ctl" and bytes(rest[1]) == b"control"
    assert [(b[0], b[1], b[2], b[3], b[4], [m.payload for m in b[5]], b[6]) for b in batches] == [
        ("t.x", b"t.x", 7, 3, 2000, [b"3"], len(frames[1])),
        ("t.x", b"t.x", 9, 40, 3000, [b"x", b"y", b"z"], len(frames[2])),
    ]
    batches = []
    rest = chan.recv_batches(topics, batches, 100, 100, decode_batch)
    assert [b[3] for b in batches] == [4]
    assert rest is not None and bytes(rest[1]) == b"not a batch frame"  # malformed: handed back
    # a frame that does not fit in max_messages is handed back whole
    batches = []
    rest = chan.recv_batches(topics, batches, 2, 100, decode_batch)
    assert batches == [] and rest is not None and rest[0] == b"t.x"
    assert chan.recv_batches(topics, [], 100, 100, decode_batch) is None  # nothing queued


def test_recv_batches_reads_at_most_max_frames(subscribed) -> None:
    from pybus._native import decode_batch

    chan, pub, _sub = subscribed
    for seq in (1, 2, 3):
        pub.send_multipart([b"t.x", batch_frame(7, seq, 1000, [b"m%d" % seq])])
    first = _recv(chan)  # inproc: once it is here, the other two are queued behind it
    assert bytes(first[1]) == batch_frame(7, 1, 1000, [b"m1"])
    batches: list = ["an entry of the caller's"]  # counts only what this call reads
    assert chan.recv_batches({b"t.x": "t.x"}, batches, 100, 1, decode_batch) is None
    assert [b[3] for b in batches[1:]] == [2]
    batches = []
    assert chan.recv_batches({b"t.x": "t.x"}, batches, 100, 5, decode_batch) is None
    assert [b[3] for b in batches] == [3]


def test_take_batch_decides_per_frame_without_a_socket() -> None:
    """The one per-frame decision both recv_batches twins make (no I/O: plain values)."""
    from pybus._native import _zmqfast, decode_batch

    topics = {b"t.x": "t.x", b"t.ctl": 0}
    three = batch_frame(5, 10, 77, [b"a", b"b", b"c"])
    batches: list = []
    take = _zmqfast.take_batch
    assert take(batches, topics, decode_batch, b"t.x", three, 2) == 0  # more than room
    assert take(batches, topics, decode_batch, b"t.ctl", three, 9) == 0  # not a wanted topic
    assert take(batches, topics, decode_batch, b"t.new", three, 9) == 0  # unknown topic
    assert take(batches, topics, decode_batch, b"t.x", None, 9) == 0  # a position frame
    assert take(batches, topics, decode_batch, b"t.x", b"junk", 9) == 0  # malformed
    assert take(batches, topics, lambda _t, _f: [], b"t.x", three, 9) == 0  # no messages
    assert batches == []
    assert take(batches, topics, decode_batch, b"t.x", three, 3) == 3  # exactly room
    [(topic, topic_b, pid, first, ts, msgs, size)] = batches
    assert (topic, topic_b, pid, first, ts, size) == ("t.x", b"t.x", 5, 10, 77, len(three))
    assert [m.payload for m in msgs] == [b"a", b"b", b"c"]


@pytest.fixture(params=["pyzmq", "libzmq"])
def dealer(request):
    """The RPC client's channel on a DEALER, not yet connected, and the ROUTER it talks to."""
    with _two(request.param, zmq.ROUTER, zmq.DEALER) as (router, d):
        d.setsockopt(zmq.IMMEDIATE, 1)
        d.rcvtimeo = router.rcvtimeo = 2000
        port = router.bind_to_random_port("tcp://127.0.0.1")
        yield _chan(channel.ClientChannel, d, request.param), router, f"tcp://127.0.0.1:{port}"


def test_client_channel_sends_requests_and_judges_replies_alike(dealer) -> None:
    chan, router, endpoint = dealer
    err = chan.call(5, 1, 0, b"m", b"p")  # no connection yet: nothing queued, an int errno
    assert type(err) is int and err == zmq.EAGAIN
    chan._sock.connect(endpoint)
    for _ in range(200):  # until the connection is up (bounded)
        if chan._sock.poll(10, zmq.POLLOUT):
            break
    # the id is cid_base + seq mod 2**64
    assert chan.send_request(2**64 - 1, 1, b"add", b"\x92\x01\x02") == 0
    ident, frame = router.recv_multipart()
    assert frame == HDR.pack(1, REQUEST, 1, 3, 2**64 - 1) + b"add\x92\x01\x02"

    def answer(reply: bytes):
        router.send_multipart([ident, reply])
        return chan.recv_reply(9)

    ours = answer(HDR.pack(1, REPLY, 0, 0, 9) + b"result")
    assert type(ours) is bytes and ours == b"result"  # our raw reply: the payload
    for other in (HDR.pack(1, REPLY, 1, 0, 9) + b"\xa1x",  # msgpack: for the caller
                  HDR.pack(1, 3, 0, 0, 9) + b"err",  # an ERROR reply
                  HDR.pack(1, REPLY, 0, 0, 8) + b"late",  # another id
                  HDR.pack(2, REPLY, 0, 0, 9),  # another version
                  b"short"):
        got = answer(other)
        assert type(got) is bytearray and bytes(got) == other
    # (2**64 - 1) + 3 wraps to 2; the reply is queued before the request it answers
    router.send_multipart([ident, HDR.pack(1, REPLY, 0, 0, 2) + b"ok"])
    assert chan.call(2**64 - 1, 3, 0, b"m", b"") == b"ok"
    assert router.recv_multipart()[1][4:12] == struct.pack("<Q", 2)
    chan._sock.rcvtimeo = 30
    assert chan.recv_reply(9) is None  # waited RCVTIMEO, nothing came


def test_client_channel_on_a_closed_socket_raises_closed(dealer) -> None:
    chan, _router, _endpoint = dealer
    sock = chan._sock
    if chan.io_path == "libzmq":
        chan = channel.ClientChannel(sock)  # what the client switches to before closing
    sock.close()
    with pytest.raises(ClosedError):
        chan.send_request(1, 0, b"m", b"")
    with pytest.raises(ClosedError):
        chan.recv_reply(1)


def test_publisher_channel_sends_the_batchers_frames_alike(subscribed) -> None:
    from pybus.wire import Batcher

    sub_chan, pub, _sub = subscribed
    batcher = Batcher(publisher_id=7)
    path = sub_chan.io_path
    chan = (channel.PublisherChannel(pub, batcher) if path == "pyzmq"
            else channel.PublisherChannel.open(pub, batcher))
    assert chan.io_path == path
    for i in range(3):
        batcher.publish("t.a", b"a%d" % i)
    batcher.publish("t.b", b"b0")
    sent, err = chan.send_batches(1, 0)  # at most one frame
    assert err == 0 and len(sent) == 1
    more, err = chan.send_batches(0, 0)
    assert err == 0
    sent += more
    got = {}
    for _ in sent:
        topic, frame, parts = _recv(sub_chan)
        got[topic] = bytes(frame)
    # docs/wire.md: the count is the header's fourth field after magic, version and flags
    assert sorted(sent) == sorted((t, FRAME_HEADER.unpack_from(f)[4], len(f))
                                  for t, f in got.items())
    assert sorted(sent) == [(b"t.a", 3, len(got[b"t.a"])), (b"t.b", 1, len(got[b"t.b"]))]
    assert FRAME_HEADER.unpack_from(got[b"t.a"])[5:7] == (7, 1)  # publisher id, first seq
    assert chan.send_batches(0, 0) == ([], 0)  # nothing pending


def test_publisher_channel_with_keep_is_pyzmqs_and_hands_over_each_frame(subscribed) -> None:
    from pybus.wire import Batcher

    sub_chan, pub, _sub = subscribed
    batcher = Batcher()
    kept: list = []
    chan = channel.PublisherChannel.open(pub, batcher, lambda *a: kept.append(a))
    assert chan.io_path == "pyzmq"
    batcher.publish("t.k", b"x")
    batcher.publish("t.k", b"y")
    sent, err = chan.send_batches(0, 0)
    assert err == 0
    _topic, frame, _parts = _recv(sub_chan)
    assert kept == [(b"t.k", bytes(frame), 2)] and sent == [(b"t.k", 2, len(frame))]
