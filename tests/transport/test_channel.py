"""The RPC server's channel (pybus.transport.channel): the pyzmq and the compiled
implementation judge the same frames the same way, as docs/wire-reqrep.md orders the checks,
and send the same replies."""

from __future__ import annotations

import struct

import pytest
import zmq

from pybus.errors import ClosedError
from pybus.transport import channel
from pybus.transport.sockets import fast_address

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


@pytest.fixture(params=["pyzmq", "libzmq"])
def pair(request):
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.linger = 0
    router.rcvtimeo, dealer.rcvtimeo = 2000, 2000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    if request.param == "pyzmq":
        chan = channel.ServerChannel(router)
    else:
        chan = channel.server_channel(router)
        if not fast_address(router):
            pytest.skip("the compiled fast path is off (PYBUS_NO_ZMQ_FASTPATH)")
    assert chan.io_path == request.param
    yield chan, router, dealer
    router.close()
    dealer.close()
    ctx.term()


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
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.linger = 0
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    dealer.rcvtimeo = 2000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    chan = (channel.MessageChannel(router) if request.param == "pyzmq"
            else channel.message_channel(router))
    if chan.io_path != request.param:
        pytest.skip("the compiled fast path is off (PYBUS_NO_ZMQ_FASTPATH)")
    yield chan, router, dealer
    router.close()
    dealer.close()
    ctx.term()


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
