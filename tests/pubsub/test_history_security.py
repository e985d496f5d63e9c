"""The late-join history channel is secured by the publisher's ``security`` (docs/security.md,
"Late joiners": "The side channel is secured by the publisher's `security`").

A CURVE-server publisher with an allowlist must serve its snapshot only to allowed keys: a
plaintext peer, a peer with a key not on the list, a revoked key and a peer using a wrong
server key get no snapshot (the request times out with pybus's TimeoutError), and each refusal
is counted in ``Curve.stats()`` under the reason docs/security.md names (``handshake`` for a
plaintext peer or a wrong server key, ``not_allowed``, ``revoked``).

The raw requests are made with plain pyzmq DEALER sockets and keys from ``zmq.curve_keypair``
(not pybus's), speaking the wire of ``pybus/history.py``'s docstring with an *empty* subscriber
id, which asks the server to answer at once: an unsecured history channel would answer every
one of them, so silence is the refusal and not a missing hello.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import msgpack
import pytest
import zmq

import pybus
from pybus import Curve

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain as _drain  # noqa: E402
from waiting import until as _until  # noqa: E402

pytestmark = pytest.mark.timeout(60)

TOPIC = "hist.sec"
HISTORY = 5
SENT = 10


class Keys:
    def __init__(self) -> None:
        self.server = zmq.curve_keypair()
        self.good = zmq.curve_keypair()
        self.other = zmq.curve_keypair()
        self.revoked = zmq.curve_keypair()
        self.wrong_server = zmq.curve_keypair()  # a "server key" the publisher does not hold


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def secured(keys: Keys) -> Iterator[tuple[pybus.Publisher, Curve]]:
    curve = Curve.server(keys.server[1], allow=[keys.good[0], keys.revoked[0]])
    curve.revoke(keys.revoked[0])
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=curve, history=HISTORY,
                          history_endpoint="tcp://127.0.0.1:*", registry=False)
    try:
        for i in range(1, SENT + 1):
            pub.publish(TOPIC, i)
        pub.flush()
        yield pub, curve
    finally:
        pub.close(linger_ms=0)


def _raw_request(endpoint: str, *, client: tuple[bytes, bytes] | None,
                 server_public: bytes | None, timeout: float) -> list[bytes] | None:
    """One PBH1 request from a raw DEALER (plaintext when ``client`` is None); the reply
    frames, or None when nothing came back within ``timeout``."""
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    try:
        if client is not None:
            assert server_public is not None
            sock.curve_serverkey = server_public
            sock.curve_publickey, sock.curve_secretkey = client
        # a refused handshake tears the connection down: a DEALER with no peer left would
        # block its send for ever, so the send is bounded too (refused: nothing came back)
        sock.sndtimeo = int(timeout * 1000)
        sock.connect(endpoint)
        # empty subscriber id: answer without waiting for a hello; empty prefix: every topic
        try:
            sock.send_multipart([b"PBH1", b"", b""])
        except zmq.Again:
            return None
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        return sock.recv_multipart()
    finally:
        sock.close(0)


def _snapshot_payloads(reply: list[bytes]) -> list[object]:
    assert reply[:2] == [b"PBH1", b"OK"], reply[:3]
    head = msgpack.unpackb(reply[2])
    pairs = reply[3:]
    assert head["frames"] == len(pairs) // 2 >= 1
    out: list[object] = []
    for i in range(0, len(pairs), 2):
        topic = pairs[i].decode()
        out += [m.payload for m in pybus.wire.decode_batch(topic, pairs[i + 1])]
    return out


def test_allowed_key_gets_the_snapshot_over_a_raw_dealer(
    keys: Keys, secured: tuple[pybus.Publisher, Curve]
) -> None:
    pub, curve = secured
    assert pub.history_endpoint is not None
    accepted = curve.stats()["accepted"]
    reply = _raw_request(pub.history_endpoint, client=keys.good, server_public=keys.server[0],
                         timeout=5.0)
    assert reply is not None, "an allowed key got no history reply"
    payloads = _snapshot_payloads(reply)
    # the store keeps the fewest newest frames holding >= HISTORY messages: the last ones
    assert payloads[-HISTORY:] == list(range(SENT - HISTORY + 1, SENT + 1))
    assert curve.stats()["accepted"] >= accepted + 1


@pytest.mark.parametrize("who", ["plaintext", "not_allowed", "revoked", "wrong_server_key"])
def test_refused_peer_gets_no_snapshot_and_is_counted(
    who: str, keys: Keys, secured: tuple[pybus.Publisher, Curve]
) -> None:
    pub, curve = secured
    assert pub.history_endpoint is not None
    before = curve.stats()
    client, server_public, reason = {
        "plaintext": (None, None, "handshake"),
        "not_allowed": (keys.other, keys.server[0], "not_allowed"),
        "revoked": (keys.revoked, keys.server[0], "revoked"),
        "wrong_server_key": (keys.other, keys.wrong_server[0], "handshake"),
    }[who]
    reply = _raw_request(pub.history_endpoint, client=client, server_public=server_public,
                         timeout=1.5)
    assert reply is None, f"{who} peer was served: {reply[:2]}"
    assert _until(lambda: curve.stats()["rejected_by_reason"].get(reason, 0)
                  > before["rejected_by_reason"].get(reason, 0)), curve.stats()
    after = curve.stats()
    assert after["rejected"] > before["rejected"]
    assert after["accepted"] == before["accepted"]
    if who in ("not_allowed", "revoked"):  # ZAP saw the key: it is named
        assert client is not None
        assert after["rejected_keys"].get(client[0].decode(), 0) >= 1
    else:  # ZeroMQ does not say which key, if any, a failed handshake used
        assert client is None or client[0].decode() not in after["rejected_keys"]
    # the request never reached the history server
    assert pub._history_server.requests == 0


def test_subscriber_with_a_key_not_on_the_list_gets_a_timeout_error(
    keys: Keys, secured: tuple[pybus.Publisher, Curve]
) -> None:
    pub, curve = secured
    assert pub.history_endpoint is not None
    sub = pybus.Subscriber(pub.endpoints, security=Curve.client(keys.other[1], keys.server[0]),
                           registry=False)
    try:
        t0 = time.monotonic()
        with pytest.raises(pybus.TimeoutError, match="no history reply"):
            sub.fetch_history(pub.history_endpoint, timeout=1.0)
        assert time.monotonic() - t0 < 4.0
        assert sub.stats()["history_received"] == 0
        assert sub.recv_batch(100, timeout=0.2) == []
    finally:
        sub.close()
    assert curve.stats()["rejected_by_reason"].get("not_allowed", 0) >= 1
    assert pub._history_server.requests == 0


def test_plaintext_late_join_subscriber_fails_with_a_pybus_error(
    secured: tuple[pybus.Publisher, Curve]
) -> None:
    pub, curve = secured
    t0 = time.monotonic()
    # the constructor fetches with fetch_history's default timeout (5 s)
    with pytest.raises(pybus.BusError) as info:
        pybus.Subscriber(pub.endpoints, late_join=True, history_endpoint=pub.history_endpoint,
                         registry=False)
    assert isinstance(info.value, pybus.TimeoutError)
    assert "no history reply" in str(info.value)
    assert time.monotonic() - t0 < 10.0
    assert _until(lambda: curve.stats()["rejected_by_reason"].get("handshake", 0) >= 1)
    assert pub._history_server.requests == 0


def test_allowed_late_join_subscriber_gets_history_then_live(
    keys: Keys, secured: tuple[pybus.Publisher, Curve]
) -> None:
    pub, curve = secured
    sub = pybus.Subscriber(pub.endpoints, topics=["hist.#"], late_join=True,
                           history_endpoint=pub.history_endpoint,
                           security=Curve.client(keys.good[1], keys.server[0]), registry=False)
    try:
        got = [m.payload for m in _drain(sub, HISTORY)]
        assert got == list(range(SENT - HISTORY + 1, SENT + 1))
        assert sub.stats()["history_received"] == HISTORY
        pub.publish(TOPIC, SENT + 1)
        pub.flush()
        assert [m.payload for m in _drain(sub, 1)] == [SENT + 1]
        assert pub._history_server.requests == 1
    finally:
        sub.close()
