"""The ZAP handler answers requests as RFC 27 (ZAP 1.0) says, whatever the handshake.

ZeroMQ only asks the handler about CURVE handshakes on a CURVE server socket, so some answers
cannot be reached through a real handshake: a request for another mechanism (the documented
``rejected_by_reason["mechanism"]``), for a domain no Curve owns, or one that is not ZAP at
all. Here a DEALER speaks ZAP to the handler's own endpoint (``inproc://zeromq.zap.01`` of the
context), as libzmq does, and reads the replies; the request and reply layouts are written
from RFC 27, not from pybus.
"""

from __future__ import annotations

import uuid

import pytest
import zmq

import pybus

ZAP = "inproc://zeromq.zap.01"


@pytest.fixture
def served():
    """A CURVE server (its ZAP handler bound on a fresh context) and a DEALER on that handler."""
    ctx = zmq.Context()
    srv_pub, srv_sec = pybus.keypair()
    cli_pub, _ = pybus.keypair()
    curve = pybus.Curve.server(srv_sec, allow=[cli_pub])
    pub = pybus.Publisher(f"inproc://zap-{uuid.uuid4().hex}", security=curve, context=ctx,
                          registry=False)
    zap = ctx.socket(zmq.DEALER)
    zap.linger = 0
    zap.rcvtimeo = 5000
    zap.connect(ZAP)
    try:
        yield curve, zap, cli_pub
    finally:
        zap.close()
        pub.close(linger_ms=0)
        ctx.term()


def ask(zap: zmq.Socket, domain: bytes, mechanism: bytes, *creds: bytes,
        request_id: bytes = b"7") -> list[bytes]:
    # RFC 27 request: version, request id, domain, address, identity, mechanism, credentials
    # (a DEALER adds the empty delimiter a REQ would)
    zap.send_multipart([b"", b"1.0", request_id, domain, b"192.0.2.1", b"", mechanism, *creds])
    reply = zap.recv_multipart()
    assert reply[0] == b""
    return reply[1:]  # version, request id, status code, status text, user id, metadata


def test_another_mechanism_is_refused_and_counted(served):
    curve, zap, _ = served
    version, rid, status, _text, user, _meta = ask(zap, curve.domain, b"PLAIN", b"u", b"p")
    assert (version, rid, status, user) == (b"1.0", b"7", b"400", b"")
    assert curve.stats()["rejected_by_reason"]["mechanism"] == 1
    assert curve.stats()["accepted"] == 0


def test_curve_credentials_are_answered_from_the_allowlist(served):
    curve, zap, cli_pub = served
    listed = zmq.utils.z85.decode(cli_pub)
    unlisted = zmq.utils.z85.decode(pybus.keypair()[0])
    ok = ask(zap, curve.domain, b"CURVE", listed, request_id=b"a")
    assert ok[1:3] == [b"a", b"200"] and ok[4] == cli_pub  # user id: the client's Z85 key
    refused = ask(zap, curve.domain, b"CURVE", unlisted, request_id=b"b")
    assert refused[1:3] == [b"b", b"400"] and refused[4] == b""
    bad_key = ask(zap, curve.domain, b"CURVE", b"short", request_id=b"c")
    assert bad_key[1:3] == [b"c", b"400"]
    s = curve.stats()
    assert s["accepted"] == 1
    assert s["rejected_by_reason"]["not_allowed"] == 1
    assert s["rejected_by_reason"]["mechanism"] == 1  # CURVE needs one 32-byte key


def test_an_unknown_domain_is_refused(served):
    curve, zap, cli_pub = served
    reply = ask(zap, b"not-a-pybus-domain", b"CURVE", zmq.utils.z85.decode(cli_pub))
    assert reply[2] == b"400"
    assert curve.stats()["accepted"] == 0


def test_a_request_that_is_not_zap_gets_no_answer_and_the_handler_keeps_going(served):
    curve, zap, cli_pub = served
    zap.send_multipart([b"", b"2.0", b"x", curve.domain])  # wrong version, too short
    # nothing sensible to answer (RFC 27: the version must be 1.0). The next request's reply
    # is the first thing on this connection: an answer to the bad one would come before it.
    reply = ask(zap, curve.domain, b"CURVE", zmq.utils.z85.decode(cli_pub), request_id=b"z")
    assert reply[1:3] == [b"z", b"200"]
