"""Bounds against floods from admitted peers (docs/security.md, "Limits"; pybus/security.py).

- "A `Publisher` with `permissions` applies subscriptions itself and refuses more than 100 000
  of them, or a prefix longer than 1 KiB (counted as `denied_subscriptions`), and so does a
  `Proxy` with permissions" (pybus/publisher.py and pybus/_proxy_checked.py:
  ``_MAX_SUBSCRIPTIONS``, ``_MAX_SUBSCRIPTION_BYTES``).
- Per-key counters are bounded: rejected keys (``Curve.stats()["rejected_keys"]``), keys whose
  publications were denied (``denied_publish_keys``) and a checked proxy's ``forbidden_by_key``
  count 1,024 keys one by one and fold the rest into ``"<other>"``.

The floods come from raw pyzmq sockets (an XSUB sending ``b"\\x01" + prefix``, SUB / XPUB
sockets with keys from ``zmq.curve_keypair``), and whether a subscription was applied is read
from ZeroMQ itself: a topic reaches the raw XSUB only when ZeroMQ holds a matching prefix for it.
The real constants are used: 100 050 subscriptions take about a second here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

import pybus
from pybus import Curve

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import until as _until  # noqa: E402

pytestmark = pytest.mark.timeout(120)

CAP = 100_000
MAX_PREFIX = 1024
KEY_CAP = 1024
EXTRA = 50


def test_the_documented_constants() -> None:
    import pybus.pubsub._proxy_checked as pc
    import pybus.pubsub._subscriptions as pm
    import pybus.transport.security as sm

    assert pm._MAX_SUBSCRIPTIONS == pc._MAX_SUBSCRIPTIONS == CAP
    assert pm._MAX_SUBSCRIPTION_BYTES == pc._MAX_SUBSCRIPTION_BYTES == MAX_PREFIX
    assert sm._MAX_TRACKED_KEYS == pc._MAX_TRACKED_KEYS == KEY_CAP


# -- helpers ------------------------------------------------------------------------------------


def _xsub(endpoint: str, server_public: bytes | None, client: tuple[bytes, bytes] | None
          ) -> zmq.Socket:
    s: zmq.Socket = zmq.Context.instance().socket(zmq.XSUB)
    s.linger = 0
    s.sndhwm = 0  # XSUB drops subscriptions at its HWM: let TCP push back instead
    s.sndtimeo = 30_000
    if client is not None:
        assert server_public is not None
        s.curve_serverkey = server_public
        s.curve_publickey, s.curve_secretkey = client
    s.connect(endpoint)
    return s


def _flood(sock: zmq.Socket, prefixes: Iterator[bytes]) -> threading.Thread:
    def run() -> None:
        for p in prefixes:
            sock.send(b"\x01" + p)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _delivered(sock: zmq.Socket, pub: pybus.Publisher, topic: str, timeout: float) -> bool:
    """Publish ``topic`` until it reaches the raw ``sock`` (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    want = topic.encode()
    while time.monotonic() < deadline:
        pub.publish(topic, 0)
        pub.flush()
        while sock.poll(20):
            if sock.recv_multipart()[0] == want:
                return True
    return False


def _prefix(i: int) -> bytes:
    return b"f.%06d" % i  # all 8 bytes: each matches its own topic and no other one


# -- a Publisher with permissions ----------------------------------------------------------------


@pytest.fixture
def keys() -> dict[str, tuple[bytes, bytes]]:
    return {"server": zmq.curve_keypair(), "client": zmq.curve_keypair()}


@pytest.fixture
def acl_pub(keys: dict[str, tuple[bytes, bytes]]) -> Iterator[tuple[pybus.Publisher, Curve]]:
    curve = Curve.server(keys["server"][1], allow=[keys["client"][0]],
                         permissions={keys["client"][0]: {"subscribe": ["f.#"]}})
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=curve, registry=False)
    try:
        yield pub, curve
    finally:
        pub.close(linger_ms=0)


def test_publisher_refuses_a_prefix_longer_than_1_kib(
    keys: dict[str, tuple[bytes, bytes]], acl_pub: tuple[pybus.Publisher, Curve]
) -> None:
    pub, curve = acl_pub
    x = _xsub(pub.endpoints[0], keys["server"][0], keys["client"])
    try:
        exact = b"f." + b"a" * (MAX_PREFIX - 2)
        assert len(exact) == MAX_PREFIX
        for p in (exact, exact + b"b", b"f." + b"c" * 4000, b"f.marker"):
            x.send(b"\x01" + p)
        # the marker was sent after them on the same connection: once ZeroMQ delivers its
        # topic, the publisher has read every subscription before it
        assert _delivered(x, pub, "f.marker", 5.0)
        assert pub.stats()["denied_subscriptions"] == 2  # 1025 and 4002 bytes; not 1024
        assert curve.stats()["denied_subscriptions"] == 2
    finally:
        x.close(0)


def test_publisher_refuses_subscriptions_beyond_100_000(
    keys: dict[str, tuple[bytes, bytes]], acl_pub: tuple[pybus.Publisher, Curve]
) -> None:
    pub, curve = acl_pub
    x = _xsub(pub.endpoints[0], keys["server"][0], keys["client"])
    try:
        t0 = time.monotonic()
        th = _flood(x, (_prefix(i) for i in range(CAP + EXTRA)))
        # stats() reads the queued subscriptions: poll it until the last ones are refused
        assert _until(lambda: pub.stats()["denied_subscriptions"] >= EXTRA, timeout=60,
                      interval=0.05), pub.stats()["denied_subscriptions"]
        th.join(30)
        assert not th.is_alive()
        elapsed = time.monotonic() - t0
        assert elapsed < 60, elapsed
        assert pub.stats()["denied_subscriptions"] == EXTRA
        assert curve.stats()["denied_subscriptions"] == EXTRA
        # ZeroMQ holds the first 100 000 prefixes and none of the refused ones
        for i in (0, CAP // 2, CAP - 1):
            assert _delivered(x, pub, _prefix(i).decode(), 5.0), i
        for i in (CAP, CAP + EXTRA - 1):
            assert not _delivered(x, pub, _prefix(i).decode(), 0.3), i
    finally:
        x.close(0)


def test_publisher_hello_subscriptions_are_bounded_too(
    keys: dict[str, tuple[bytes, bytes]], acl_pub: tuple[pybus.Publisher, Curve]
) -> None:
    pub, _curve = acl_pub
    x = _xsub(pub.endpoints[0], keys["server"][0], keys["client"])
    try:
        hello = b"\xffpybus-hello:"
        x.send(b"\x01" + hello + b"z" * 4000)  # longer than 1 KiB
        x.send(b"\x01f.marker")
        assert _delivered(x, pub, "f.marker", 5.0)
        assert pub.stats()["denied_subscriptions"] >= 1
    finally:
        x.close(0)


# -- a Proxy with permissions (the checked loop) ---------------------------------------------------


@pytest.fixture
def acl_proxy(keys: dict[str, tuple[bytes, bytes]]
              ) -> Iterator[tuple[pybus.Proxy, Curve, pybus.Publisher]]:
    curve = Curve.server(keys["server"][1], allow=[keys["client"][0]],
                         permissions={keys["client"][0]: {"subscribe": ["f.#"]}})
    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", backend_security=curve,
                     registry=False)
    pub = pybus.Publisher(px.frontend, connect=True, registry=False)
    try:
        assert px.stats()["checked"] is True
        yield px, curve, pub
    finally:
        pub.close(linger_ms=0)
        px.close()


def test_checked_proxy_refuses_a_prefix_longer_than_1_kib(
    keys: dict[str, tuple[bytes, bytes]],
    acl_proxy: tuple[pybus.Proxy, Curve, pybus.Publisher],
) -> None:
    px, curve, pub = acl_proxy
    x = _xsub(px.backend[0], keys["server"][0], keys["client"])
    try:
        exact = b"f." + b"a" * (MAX_PREFIX - 2)
        # the proxy bounds hello subscriptions as well (they pass without a permission)
        hello = b"\xffpybus-hello:" + b"z" * 4000
        for p in (exact, exact + b"b", b"f." + b"c" * 4000, hello, b"f.marker"):
            x.send(b"\x01" + p)
        assert _delivered(x, pub, "f.marker", 5.0)
        assert px.stats()["denied_subscriptions"] == 3
        assert curve.stats()["denied_subscriptions"] == 3
    finally:
        x.close(0)


def test_checked_proxy_refuses_subscriptions_beyond_100_000(
    keys: dict[str, tuple[bytes, bytes]],
    acl_proxy: tuple[pybus.Proxy, Curve, pybus.Publisher],
) -> None:
    px, curve, pub = acl_proxy
    x = _xsub(px.backend[0], keys["server"][0], keys["client"])
    try:
        th = _flood(x, (_prefix(i) for i in range(CAP + EXTRA)))
        assert _until(lambda: px.stats()["denied_subscriptions"] >= EXTRA, timeout=60,
                      interval=0.05), px.stats()["denied_subscriptions"]
        th.join(30)
        assert not th.is_alive()
        assert px.stats()["denied_subscriptions"] == EXTRA
        assert curve.stats()["denied_subscriptions"] == EXTRA
        # through the proxy: the publisher upstream sees the granted prefixes, the backend
        # holds them for this connection; the refused ones reach neither
        for i in (0, CAP - 1):
            assert _delivered(x, pub, _prefix(i).decode(), 10.0), i
        for i in (CAP, CAP + EXTRA - 1):
            assert not _delivered(x, pub, _prefix(i).decode(), 0.3), i
    finally:
        x.close(0)


# -- per-key counters: 1,024 keys, the rest as "<other>" ------------------------------------------


def test_rejected_keys_are_counted_for_1024_keys_and_the_rest_as_other() -> None:
    srv = zmq.curve_keypair()
    curve = Curve.server(srv[1], allow=[])
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=curve, registry=False)
    ctx: zmq.Context = zmq.Context.instance()
    n, batch, done = KEY_CAP + 76, 100, 0
    named: list[bytes] = []
    try:
        while done < n:
            socks = []
            try:
                for _ in range(min(batch, n - done)):
                    s = ctx.socket(zmq.SUB)
                    s.linger = 0
                    # libzmq reconnects after a refused handshake (another rejection) unless
                    # told not to: one connection attempt per socket, one rejection each
                    s.reconnect_ivl = -1
                    public, secret = zmq.curve_keypair()
                    named.append(public)
                    s.curve_serverkey, s.curve_publickey, s.curve_secretkey = srv[0], public, secret
                    s.connect(pub.endpoints[0])
                    socks.append(s)
                done += len(socks)
                def rejected_all(d: int = done) -> bool:
                    return bool(curve.stats()["rejected"] >= d)

                assert _until(rejected_all, timeout=10), (
                    curve.stats()["rejected"], done)
            finally:
                for s in socks:
                    s.close(0)
        st = curve.stats()
        assert st["rejected"] == n
        assert st["rejected_by_reason"]["not_allowed"] == n
        rk = st["rejected_keys"]
        assert len(rk) == KEY_CAP + 1
        assert sum(rk.values()) == n
        assert rk["<other>"] == n - KEY_CAP
        # the first 1,024 distinct keys are the ones named (rejections come in connect order
        # only per batch, so check membership, not order)
        assert set(rk) - {"<other>"} <= {k.decode() for k in named}
    finally:
        pub.close(linger_ms=0)


def test_checked_proxy_folds_forbidden_publishers_beyond_1024_keys() -> None:
    srv = zmq.curve_keypair()
    # admitted (allow any) but with no publish right: every frame is forbidden
    curve = Curve.server(srv[1], allow="any", permissions={})
    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", frontend_security=curve,
                     registry=False)
    ctx: zmq.Context = zmq.Context.instance()
    tap = ctx.socket(zmq.SUB)  # a plaintext subscriber behind the proxy, for every topic
    tap.linger = 0
    tap.subscribe(b"")
    tap.connect(px.backend[0])
    n, batch, done = KEY_CAP + 30, 100, 0
    frame = b"not a pybus frame"  # counted as one message (malformed)
    try:
        assert px.stats()["checked"] is True
        while done < n:
            socks = []
            try:
                for _ in range(min(batch, n - done)):
                    s = ctx.socket(zmq.XPUB)
                    s.linger = 0
                    s.curve_serverkey = srv[0]
                    s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
                    s.connect(px.frontend[0])
                    socks.append(s)
                for s in socks:  # the tap's subscription arrives once the handshake is done
                    assert s.poll(10_000), "no subscription reached a publisher"
                    assert s.recv() == b"\x01"
                    s.send_multipart([b"t.x", frame])
                done += len(socks)
                def forbade_all(d: int = done) -> bool:
                    return bool(px.stats()["forbidden"] >= d)

                assert _until(forbade_all, timeout=10), (
                    px.stats()["forbidden"], done)
            finally:
                for s in socks:
                    s.close(0)
        st = px.stats()
        assert st["forbidden"] == n
        fk = st["forbidden_by_key"]
        assert len(fk) == KEY_CAP + 1 and fk["<other>"] == n - KEY_CAP
        assert sum(fk.values()) == n
        cs = curve.stats()
        assert cs["denied_publications"] == n
        dk = cs["denied_publish_keys"]
        assert len(dk) == KEY_CAP + 1 and dk["<other>"] == n - KEY_CAP
        # nothing forbidden was forwarded
        assert not tap.poll(200)
    finally:
        tap.close(0)
        px.close()
