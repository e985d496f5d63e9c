"""CURVE security: keys and key files, the ZAP allowlist, revocation, topic permissions.

Unauthorized peers (no key, wrong key, wrong server key, revoked key) must get nothing and
deliver nothing, and every attempt must be counted. Counters are filled by the context's hub
thread, so tests wait for them with a bounded poll (``_until``), never a bare sleep.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

import pybus
from pybus import Curve

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain as _drain  # noqa: E402
from waiting import until as _until  # noqa: E402

pytestmark = pytest.mark.timeout(60)




@pytest.fixture
def keys() -> dict[str, tuple[bytes, bytes]]:
    return {name: pybus.keypair() for name in ("server", "alice", "bob", "mallory")}


# -- keys --------------------------------------------------------------------------------------


def test_keypair_is_z85_and_public_key_is_derived() -> None:
    public, secret = pybus.keypair()
    assert len(public) == len(secret) == 40
    assert zmq.curve_public(secret) == public
    c = Curve.client(secret.decode(), public)  # str or bytes
    assert c.public_key == public
    assert pybus.transport.security.public_key_of(secret) == public


@pytest.mark.parametrize(
    "bad, msg",
    [
        (b"short", "must be 40 Z85 characters, got 5"),
        (b"x" * 39 + b" ", "outside the Z85 alphabet"),
        (b"a" * 39 + b"\"", "outside the Z85 alphabet"),
        ("é" * 40, "non-ASCII"),
        (12345, "got int"),
        (os.urandom(32), "raw 32-byte key"),
    ],
)
def test_bad_keys_are_refused_with_a_clear_error(bad: object, msg: str) -> None:
    public, _secret = pybus.keypair()
    with pytest.raises(pybus.ValidationError, match=msg):
        Curve.client(bad, public)  # type: ignore[arg-type]


def test_server_needs_an_explicit_allowlist_and_matching_public_key() -> None:
    p, s = pybus.keypair()
    other, _ = pybus.keypair()
    with pytest.raises(pybus.ValidationError, match="allow"):
        Curve.server(s, allow=None)  # type: ignore[arg-type]
    with pytest.raises(pybus.ValidationError, match="not one key"):
        Curve.server(s, allow=p)  # type: ignore[arg-type]
    with pytest.raises(pybus.ValidationError, match="does not belong"):
        Curve.server(s, allow="any", public_key=other)
    assert Curve.server(s, allow="any", public_key=p).public_key == p
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(Curve.server(s, allow="any"))


def test_key_files_0600_and_readable_by_zmq_auth(tmp_path: Path) -> None:
    pub_path, sec_path = pybus.save_keypair(tmp_path / "keys", "node1")
    assert stat.S_IMODE(sec_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    public, secret = pybus.load_keypair(tmp_path / "keys", "node1")
    # independent oracle: pyzmq's reader of ZeroMQ certificate files
    assert zmq.auth.load_certificate(sec_path) == (public, secret)
    assert zmq.auth.load_certificate(pub_path) == (public, None)
    assert pybus.load_public_key(pub_path) == public == zmq.curve_public(secret)
    assert secret.decode() not in pub_path.read_text()
    with pytest.raises(pybus.ValidationError, match="exists"):
        pybus.save_keypair(tmp_path / "keys", "node1")
    pybus.save_keypair(tmp_path / "keys", "node1", overwrite=True)
    os.chmod(sec_path, 0o644)
    with pytest.raises(pybus.ValidationError, match="chmod 600"):
        pybus.load_secret_key(sec_path)
    with pytest.raises(pybus.ValidationError, match="no secret-key"):
        pybus.load_secret_key(pub_path, check_mode=False)
    with pytest.raises(pybus.ValidationError, match="no key file"):
        pybus.load_public_key(tmp_path / "missing.key")


def test_save_keypair_keeps_given_keys_and_umask_does_not_weaken(tmp_path: Path) -> None:
    public, secret = pybus.keypair()
    old = os.umask(0)
    try:
        _, sec_path = pybus.save_keypair(tmp_path, "given", secret_key=secret)
    finally:
        os.umask(old)
    assert stat.S_IMODE(sec_path.stat().st_mode) == 0o600
    assert pybus.load_keypair(tmp_path, "given") == (public, secret)


def test_cli_keygen_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pybus.cli import main

    assert main(["keygen", "--out", str(tmp_path), "--name", "n", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert pybus.load_public_key(tmp_path / "n.key").decode() == out["public_key"]
    assert stat.S_IMODE((tmp_path / "n.key_secret").stat().st_mode) == 0o600
    assert main(["keygen", "--out", str(tmp_path), "--name", "n"]) == 2  # exists
    assert main(["keygen"]) == 0
    printed = capsys.readouterr().out
    pub_line = [x for x in printed.splitlines() if x.startswith("public-key")][0]
    sec_line = [x for x in printed.splitlines() if x.startswith("secret-key")][0]
    assert zmq.curve_public(sec_line.split(" = ")[1].encode()) == pub_line.split(" = ")[1].encode()


# -- pub/sub under CURVE -----------------------------------------------------------------------


@pytest.fixture
def secured(keys: dict[str, tuple[bytes, bytes]]) -> Iterator[tuple[pybus.Publisher, Curve]]:
    srv = Curve.server(keys["server"][1], allow=[keys["alice"][0]], log_interval_s=0)
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=srv, sndhwm=100_000)
    yield pub, srv
    pub.close(linger_ms=0)


def test_authorized_subscriber_gets_everything_unauthorized_get_nothing_and_are_counted(
    secured: tuple[pybus.Publisher, Curve], keys: dict[str, tuple[bytes, bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pub, srv = secured
    ep = pub.endpoints[0]
    sp = keys["server"][0]
    caplog.set_level(logging.WARNING, "pybus.security")
    good = pybus.Subscriber(ep, security=Curve.client(keys["alice"][1], sp))
    wrong_key = pybus.Subscriber(ep, security=Curve.client(keys["mallory"][1], sp))
    plaintext = pybus.Subscriber(ep)
    wrong_server = pybus.Subscriber(ep, security=Curve.client(keys["alice"][1], keys["bob"][0]))
    subs = [good, wrong_key, plaintext, wrong_server]
    try:
        assert pub.wait_for_subscribers(1, timeout=5) == 1
        # ZAP refused mallory (with her key); the plaintext and wrong-server peers fail the
        # handshake itself (counted per attempt by the server socket's monitor)
        assert _until(lambda: srv.stats()["rejected_by_reason"]["not_allowed"] >= 1)
        assert _until(lambda: srv.stats()["rejected_by_reason"]["handshake"] >= 2)
        for i in range(1000):
            pub.publish("orders.created", i)
        pub.flush()
        assert [m.payload for m in _drain(good, 1000)] == list(range(1000))
        for s in subs[1:]:
            assert s.recv_batch(10_000, timeout=0.3) == []
            assert s.stats()["received"] == 0
        assert pub.stats()["subscribers"] == 1
        st = srv.stats()
        assert st["accepted"] == 1
        assert st["rejected_keys"] == {keys["mallory"][0].decode(): st["rejected_by_reason"][
            "not_allowed"]}
        assert st["rejected"] == sum(st["rejected_by_reason"].values())
        text = caplog.text
        assert keys["mallory"][0].decode() in text
        for _, secret in keys.values():  # a secret never reaches the log
            assert secret.decode() not in text
    finally:
        for s in subs:
            s.close()


def test_unauthorized_publisher_delivers_nothing_to_a_secured_bound_subscriber(
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    srv = Curve.server(keys["server"][1], allow=[keys["alice"][0]])
    sub = pybus.Subscriber("tcp://127.0.0.1:*", bind=True, security=srv)
    ep = sub.endpoints[0]
    sp = keys["server"][0]
    ok = pybus.Publisher(ep, connect=True, security=Curve.client(keys["alice"][1], sp))
    bad = pybus.Publisher(ep, connect=True, security=Curve.client(keys["mallory"][1], sp))
    plain = pybus.Publisher(ep, connect=True)
    try:
        assert ok.wait_for_subscribers(1, timeout=5) == 1
        with pytest.raises(pybus.TimeoutError):
            bad.wait_for_subscribers(1, timeout=0.3)
        with pytest.raises(pybus.TimeoutError):
            plain.wait_for_subscribers(1, timeout=0.3)
        for p in (bad, plain, ok):
            for i in range(50):
                p.publish("t.x", i)
            p.flush()
        got = _drain(sub, 50)
        assert {m.publisher_id for m in got} == {ok.publisher_id}
        assert sub.recv_batch(1000, timeout=0.3) == []
        assert _until(lambda: srv.stats()["rejected_by_reason"]["not_allowed"] >= 1)
        assert _until(lambda: srv.stats()["rejected_by_reason"]["handshake"] >= 1)
    finally:
        for p in (ok, bad, plain):
            p.close(linger_ms=0)
        sub.close()


def test_revoked_key_is_cut_off_at_once_and_refused_on_reconnect(
    secured: tuple[pybus.Publisher, Curve], keys: dict[str, tuple[bytes, bytes]],
) -> None:
    pub, srv = secured
    srv.allow(keys["bob"][0])
    sp = keys["server"][0]
    alice = pybus.Subscriber(pub.endpoints, security=Curve.client(keys["alice"][1], sp))
    bob = pybus.Subscriber(pub.endpoints, security=Curve.client(keys["bob"][1], sp))
    try:
        assert pub.wait_for_subscribers(2, timeout=5) == 2
        pub.publish("a.b", 0)
        pub.flush()
        assert len(_drain(alice, 1)) == 1 and len(_drain(bob, 1)) == 1
        srv.revoke(keys["bob"][0])  # drops every connection; alice comes back, bob does not
        assert not srv.is_allowed(keys["bob"][0])
        assert _until(lambda: bob.recv_batch(1, timeout=0.01) == [] and
                      srv.stats()["rejected_by_reason"]["revoked"] >= 1)
        # a SUB resends its subscriptions on reconnection when its owner calls into it (as a
        # receive loop does): keep alice reading while waiting for her to be back
        assert _until(lambda: alice.recv_batch(1, timeout=0.01) == [] and
                      alice.stats()["peer_events"].get("handshake_succeeded", 0) >= 2 and
                      pub.stats()["subscribers"] == 1)
        for i in range(1, 101):
            pub.publish("a.b", i)
        pub.flush()
        assert [m.payload for m in _drain(alice, 100)] == list(range(1, 101))
        assert bob.recv_batch(1000, timeout=0.5) == []
        assert bob.stats()["received"] == 1
        assert srv.stats()["rejected_keys"].get(keys["bob"][0].decode(), 0) >= 1
    finally:
        alice.close()
        bob.close()


def test_allow_any_admits_any_client_key_but_not_plaintext(
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    srv = Curve.server(keys["server"][1], allow="any")
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=srv)
    sp = keys["server"][0]
    a = pybus.Subscriber(pub.endpoints, security=Curve.client(keys["alice"][1], sp))
    m = pybus.Subscriber(pub.endpoints, security=Curve.client(keys["mallory"][1], sp))
    plain = pybus.Subscriber(pub.endpoints)
    try:
        assert pub.wait_for_subscribers(2, timeout=5) == 2
        with pytest.raises(pybus.TimeoutError):
            pub.wait_for_subscribers(3, timeout=0.3)
        srv.revoke(keys["mallory"][0])  # revocation works under "any" too
        assert _until(lambda: a.recv_batch(1, timeout=0.01) == [] and
                      m.recv_batch(1, timeout=0.01) == [] and
                      a.stats()["peer_events"].get("handshake_succeeded", 0) >= 2 and
                      pub.stats()["subscribers"] == 1)
        pub.publish("x.y", 1)
        pub.flush()
        assert len(_drain(a, 1)) == 1
        assert m.recv_batch(10, timeout=0.3) == []
    finally:
        for s in (a, m, plain):
            s.close()
        pub.close(linger_ms=0)


def test_subscribe_permissions_are_enforced_per_subscriber(
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    alice, bob = keys["alice"], keys["bob"]
    srv = Curve.server(
        keys["server"][1], allow=[alice[0], bob[0]],
        permissions={alice[0]: {"subscribe": ["orders.#"]}, bob[0]: {"subscribe": ["#"]}},
    )
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=srv, sndhwm=100_000)
    sp = keys["server"][0]
    # alice asks for everything, but may only have orders.#: "#" is narrowed to "orders."
    sa = pybus.Subscriber(pub.endpoints, topics=["#"], security=Curve.client(alice[1], sp))
    sa2 = pybus.Subscriber(pub.endpoints, topics=["orders.eu.*", "audit.#"],
                           security=Curve.client(alice[1], sp))
    # her own pattern "orders.#" asks ZeroMQ for the prefix "orders" (the pattern matches the
    # topic "orders" too), which would pass "ordersX.*": narrowed to "orders." as well
    sa3 = pybus.Subscriber(pub.endpoints, topics=["orders.#"], security=Curve.client(alice[1], sp))
    sb = pybus.Subscriber(pub.endpoints, topics=["#"], security=Curve.client(bob[1], sp))
    try:
        assert pub.wait_for_subscribers(4, timeout=5) == 4
        for i in range(20):
            pub.publish("orders.eu.created", i)
            pub.publish("audit.login", i)
            pub.publish("ordersx.leak", i)
        pub.flush()
        got_b = _drain(sb, 60)
        assert len(got_b) == 60
        assert {m.topic for m in _drain(sa2, 20, 2.0)} == {"orders.eu.created"}
        for sub in (sa, sa3):
            got = _drain(sub, 20, 2.0)
            assert [m.payload for m in got] == list(range(20))
            assert {m.topic for m in got} == {"orders.eu.created"}
            assert sub.stats()["received"] == 20
            assert b"ordersx.leak" not in sub._topics  # never reached the socket at all
        assert pub.stats()["denied_subscriptions"] == 1  # "audit."
        assert srv.stats()["denied_subscriptions"] == pub.stats()["denied_subscriptions"]
    finally:
        for s in (sa, sa2, sa3, sb):
            s.close()
        pub.close(linger_ms=0)


def test_permission_patterns_are_validated() -> None:
    p, s = pybus.keypair()
    with pytest.raises(pybus.ValidationError, match="subtree"):
        Curve.server(s, allow="any", permissions={p: {"subscribe": ["orders.*"]}})
    with pytest.raises(pybus.ValidationError, match="allowed kinds are 'publish' and"):
        Curve.server(s, allow="any", permissions={p: {"admin": ["orders.#"]}})
    with pytest.raises(pybus.ValidationError, match="belong to Curve.server"):
        Curve(role="client", secret_key=s, server_public_key=p, allow="any")


def test_first_rejection_is_logged_even_soon_after_boot(
    keys: dict[str, tuple[bytes, bytes]], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # time.monotonic() counts from about boot: on a machine up for less than log_interval_s
    # a "last logged at 0" throttle would swallow the first refusal
    import zmq.utils.z85

    srv = Curve.server(keys["server"][1], allow=[keys["alice"][0]], log_interval_s=10)
    mallory = zmq.utils.z85.decode(keys["mallory"][0])
    caplog.set_level(logging.WARNING, "pybus.security")
    with monkeypatch.context() as m:  # the clock 5 s after boot, only around the two refusals
        m.setattr(pybus.transport.security.time, "monotonic", lambda: 5.0)
        assert srv._authorize(b"CURVE", [mallory], "tcp://192.0.2.1:1")[0] is False
        assert srv._authorize(b"CURVE", [mallory], "tcp://192.0.2.1:2")[0] is False
    logged = [r.getMessage() for r in caplog.records if r.name == "pybus.security"]
    assert len(logged) == 1, logged  # the first refusal, the second within the interval
    assert keys["mallory"][0].decode() in logged[0]
    assert srv.stats()["rejected_by_reason"]["not_allowed"] == 2


def test_secured_rpc_server_and_client_via_the_hook(keys: dict[str, tuple[bytes, bytes]]) -> None:
    srv_curve = Curve.server(keys["server"][1], allow=[keys["alice"][0]])
    sp = keys["server"][0]
    with pybus.Server("tcp://127.0.0.1:*", security=srv_curve) as server:
        server.add_handler("echo", lambda p: p)
        with pybus.Client(server.endpoint, timeout_s=2.0,
                          security=Curve.client(keys["alice"][1], sp)) as c:
            assert c.request("echo", b"hi") == b"hi"
        with pybus.Client(server.endpoint, timeout_s=0.5,
                          security=Curve.client(keys["mallory"][1], sp)) as c:
            with pytest.raises(pybus.BusError):
                c.request("echo", b"hi")
        assert _until(lambda: srv_curve.stats()["rejected_by_reason"]["not_allowed"] >= 1)
        assert server.stats()["requests"] == 1


def test_secured_work_queue_only_feeds_allowed_workers(
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    srv = Curve.server(keys["server"][1], allow=[keys["alice"][0]])
    sp = keys["server"][0]
    done: list[int] = []
    stolen: list[int] = []
    with pybus.WorkQueue("tcp://127.0.0.1:*", security=srv, heartbeat_interval_s=0.2) as q:
        thief = pybus.Worker(q.endpoint, lambda m: stolen.append(m.seq),
                             security=Curve.client(keys["mallory"][1], sp)).start()
        try:
            assert _until(lambda: srv.stats()["rejected_by_reason"]["not_allowed"] >= 1)
            ids = q.put_many([("jobs.x", b"%d" % i) for i in range(200)])
            with pybus.Worker(q.endpoint, lambda m: done.append(m.seq),
                              security=Curve.client(keys["alice"][1], sp)):
                assert q.join(10)
            assert sorted(done) == sorted(ids)
            assert stolen == []
        finally:
            thief.stop(1.0)


def test_zap_conflict_with_another_authenticator_is_a_clear_error(
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    from zmq.auth.thread import ThreadAuthenticator

    ctx = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    try:
        with pytest.raises(pybus.TransportError, match="another authenticator"):
            pybus.Publisher("tcp://127.0.0.1:*", context=ctx,
                            security=Curve.server(keys["server"][1], allow="any"))
    finally:
        auth.stop()
        ctx.destroy(0)


def test_rejections_and_peer_events_are_exported_as_metrics(
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from pybus.metrics import Registry

    reg = Registry()
    srv = Curve.server(keys["server"][1], allow=[keys["alice"][0]])
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=srv, registry=reg)
    bad = pybus.Subscriber(pub.endpoints, registry=False,
                           security=Curve.client(keys["mallory"][1], keys["server"][0]))
    try:
        assert _until(lambda: srv.stats()["rejected_by_reason"]["not_allowed"] >= 1)
        # monitor events are read by the hub thread too, a moment apart from ZAP requests
        assert _until(lambda: pub.stats()["peer_events"].get("handshake_failed_auth", 0) >= 1)
        text = reg.render().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        rejected = {s.labels["reason"]: s.value for s in fams["pybus_auth_rejected"].samples}
        assert rejected["not_allowed"] == srv.stats()["rejected_by_reason"]["not_allowed"]
        events = {s.labels["event"]: s.value for s in fams["pybus_peer_events"].samples}
        assert events["accepted"] >= 1 and events["handshake_failed_auth"] >= 1
    finally:
        bad.close()
        pub.close(linger_ms=0)


def test_asyncio_twins_take_security_and_late_join(keys: dict[str, tuple[bytes, bytes]]) -> None:
    import asyncio

    import pybus.aio

    async def main() -> None:
        srv = Curve.server(keys["server"][1], allow=[keys["alice"][0]])
        sp = keys["server"][0]
        async with pybus.aio.Publisher("tcp://127.0.0.1:*", security=srv, history=10,
                                       history_endpoint="tcp://127.0.0.1:*",
                                       registry=False) as pub:
            for i in range(20):
                pub.publish("aio.t", i)
            await pub.flush()
            async with pybus.aio.Subscriber(pub.endpoints, security=Curve.client(
                    keys["alice"][1], sp), registry=False) as sub, pybus.aio.Subscriber(
                    pub.endpoints, security=Curve.client(keys["mallory"][1], sp),
                    registry=False) as bad:
                assert await pub.wait_for_subscribers(1, timeout=5) == 1
                assert await sub.fetch_history(pub.history_endpoint) == 10
                pub.publish("aio.t", 20)
                got = [(await sub.recv(timeout=5)).payload for _ in range(11)]
                assert got == list(range(10, 21))
                assert await bad.recv_batch(100, timeout=0.3) == []

    asyncio.run(asyncio.wait_for(main(), 30))
