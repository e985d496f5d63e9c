"""Per-key topic permissions: publish rights at a secured Subscriber and at a Proxy, subscribe
rights at a Proxy, and their validation.

Real CURVE sockets over tcp on 127.0.0.1 (random ports); counters are filled per received
frame, so tests wait with bounded polls (``tests/waiting.py``), never a bare sleep.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pybus
from pybus import Curve

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain, until  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keys() -> dict[str, tuple[bytes, bytes]]:
    return {name: pybus.keypair() for name in ("server", "alice", "bob", "carol")}


def collect_until(sub: pybus.Subscriber, cond: Callable[[list[pybus.Message]], bool],
                  timeout: float = 10.0) -> list[pybus.Message]:
    """Receive from ``sub`` until ``cond(received so far)`` holds (bounded); return them."""
    got: list[pybus.Message] = []
    assert until(lambda: got.extend(sub.recv_batch(10_000, timeout=0.01)) or cond(got),
                 timeout), f"condition not reached; got {len(got)} messages, {sub.stats()}"
    return got


# -- validation ---------------------------------------------------------------------------------


def test_unknown_kinds_and_bad_patterns_are_refused_saying_what_is_allowed() -> None:
    p, s = pybus.keypair()
    with pytest.raises(pybus.ValidationError, match="allowed kinds are 'publish' and 'subscribe'"):
        Curve.server(s, allow="any", permissions={p: {"write": ["a.#"]}})
    with pytest.raises(pybus.ValidationError, match="publish permission 'a.#.b'.*last segment"):
        Curve.server(s, allow="any", permissions={p: {"publish": ["a.#.b"]}})
    with pytest.raises(pybus.ValidationError, match="publish permission 'a..b'.*empty segment"):
        Curve.server(s, allow="any", permissions={p: {"publish": ["a..b"]}})
    with pytest.raises(pybus.ValidationError, match="must be str"):
        Curve.server(s, allow="any", permissions={p: {"publish": [7]}})
    with pytest.raises(pybus.ValidationError, match="list of topic patterns"):
        Curve.server(s, allow="any", permissions={p: {"publish": 7}})
    with pytest.raises(pybus.ValidationError, match="subtree"):
        Curve.server(s, allow="any", permissions={p: {"subscribe": ["orders.*"]}})
    with pytest.raises(pybus.ValidationError, match="subscribe permission 'a b.#'"):
        Curve.server(s, allow="any", permissions={p: {"subscribe": ["a b.#"]}})
    with pytest.raises(pybus.ValidationError, match="Z85"):
        Curve.server(s, allow="any", permissions={"short": {"publish": ["#"]}})


def test_publish_decisions_follow_topic_patterns_and_a_missing_kind_is_denied() -> None:
    a, _ = pybus.keypair()
    b, _ = pybus.keypair()
    c, _ = pybus.keypair()
    _, s = pybus.keypair()
    cv = Curve.server(s, allow="any", permissions={
        a: {"publish": ["orders.*", "audit.#"]},
        b: {"subscribe": ["#"]},  # no "publish": b may publish nothing
        c: {"publish": "#", "subscribe": []},
    })
    assert cv.may_publish(a, "orders.created")
    assert not cv.may_publish(a, "orders")
    assert not cv.may_publish(a, "orders.eu.created")
    assert cv.may_publish(a, "audit") and cv.may_publish(a.decode(), b"audit.x.y")
    assert not cv.may_publish(a, "billing.x")
    assert not cv.may_publish(b, "orders.created")
    assert cv.may_subscribe(b, b"anything") and not cv.may_subscribe(c, b"x.")
    assert cv.may_publish(c, "x") and cv.may_publish(c, "x.y.z")
    assert not cv.may_publish(pybus.keypair()[0], "x")  # no entry: nothing
    assert not cv.may_publish(c, "not a topic")  # invalid topics are never allowed
    assert not cv.may_publish(None, "x")
    # the decision cache stays bounded whatever topics are tried
    for i in range(10_000):
        cv.may_publish(a, f"orders.t{i}")
    assert len(cv._publish_cache) <= 4096
    assert Curve.server(s, allow="any").may_publish(a, "x")  # no permissions: all allowed


# -- a secured bound Subscriber ------------------------------------------------------------------


def test_bound_subscriber_drops_and_counts_forbidden_publications(
    keys: dict[str, tuple[bytes, bytes]], caplog: pytest.LogCaptureFixture,
) -> None:
    alice, bob = keys["alice"], keys["bob"]
    srv = Curve.server(keys["server"][1], allow=[alice[0], bob[0]], log_interval_s=3600,
                       permissions={alice[0]: {"publish": ["orders.*"]},
                                    bob[0]: {"publish": ["audit.#"]}})
    reg = pybus.metrics.Registry()
    sub = pybus.Subscriber("tcp://127.0.0.1:*", bind=True, security=srv, registry=reg)
    sp = keys["server"][0]
    pa = pybus.Publisher(sub.endpoints, connect=True, security=Curve.client(alice[1], sp))
    pb = pybus.Publisher(sub.endpoints, connect=True, security=Curve.client(bob[1], sp))
    try:
        assert pa.wait_for_subscribers(1, timeout=5) == 1
        assert pb.wait_for_subscribers(1, timeout=5) == 1
        with caplog.at_level(logging.WARNING, logger="pybus.security"):
            for i in range(30):
                pa.publish("orders.created", i)   # allowed
                pa.publish("audit.login", i)      # forbidden for alice
                pb.publish("audit.login", i)      # allowed
                pb.publish("orders.created", i)   # forbidden for bob
                if i % 10 == 9:
                    pa.flush()
                    pb.flush()
            pa.flush()
            pb.flush()
            # keep receiving: forbidden frames are read (and counted) by recv, like any other
            got = collect_until(sub, lambda got: len(got) >= 60 and
                                sub.stats()["dropped"]["forbidden"] >= 60)
        pairs = {(m.topic, m.publisher_id) for m in got}
        assert pairs == {("orders.created", pa.publisher_id), ("audit.login", pb.publisher_id)}
        assert len(got) == 60
        assert sub.recv_batch(100, timeout=0.3) == []
        st = sub.stats()
        assert st["received"] == 60 and st["lost"] == 0 and st["decode_errors"] == 0
        assert st["dropped"] == {"forbidden": 60}
        assert st["forbidden_by_key"] == {alice[0].decode(): 30, bob[0].decode(): 30}
        cs = srv.stats()
        assert cs["denied_publications"] == 60
        assert cs["denied_publish_keys"] == {alice[0].decode(): 30, bob[0].decode(): 30}
        # logged once (the interval is an hour), with a key and never a secret
        logs = [r.getMessage() for r in caplog.records if "forbidden" in r.getMessage()]
        assert len(logs) == 1
        assert alice[0].decode() in logs[0] or bob[0].decode() in logs[0]
        for secret in (alice[1], bob[1], keys["server"][1]):
            assert secret.decode() not in logs[0]
        fams = {f.name: f for f in text_string_to_metric_families(reg.render().decode())}
        dropped = {s.labels["reason"]: s.value for s in fams["pybus_messages_dropped"].samples}
        assert dropped == {"forbidden": 60}
    finally:
        pa.close(linger_ms=0)
        pb.close(linger_ms=0)
        sub.close()


# -- through a Proxy -------------------------------------------------------------------------------


def test_publish_and_subscribe_permissions_end_to_end_through_a_proxy(
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    alice, bob, carol = keys["alice"], keys["bob"], keys["carol"]
    dave = pybus.keypair()
    sp = keys["server"][0]
    srv = Curve.server(keys["server"][1], allow=[alice[0], bob[0], carol[0], dave[0]],
                       log_interval_s=3600, permissions={
                           alice[0]: {"publish": ["orders.*"]},           # may not subscribe
                           bob[0]: {"publish": ["#"]},
                           carol[0]: {"subscribe": ["orders.#"]},         # may not publish
                           dave[0]: {"subscribe": ["#"], "publish": []},
                       })
    reg = pybus.metrics.Registry()
    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", security=srv, sndhwm=100_000,
                     rcvhwm=100_000, registry=reg)
    assert px.stats()["checked"] is True

    def sub(k: tuple[bytes, bytes], topics: list[str]) -> pybus.Subscriber:
        return pybus.Subscriber(px.backend, topics=topics, rcvhwm=100_000, registry=False,
                                security=Curve.client(k[1], sp))

    def pub(k: tuple[bytes, bytes]) -> pybus.Publisher:
        return pybus.Publisher(px.frontend, connect=True, sndhwm=100_000, registry=False,
                               security=Curve.client(k[1], sp))

    sc = sub(carol, ["orders.*", "audit.*"])   # "audit." is denied to carol
    sd = sub(dave, ["#"])
    sa = sub(alice, ["#"])                     # alice has no subscribe permission at all
    # carol's own pattern asks for the prefix "orders" (it matches the topic "orders" too),
    # wider than her "orders.": narrowed to it, so "ordersx.*" never reaches her socket
    sc2 = sub(carol, ["orders.#"])
    pa, pb, pc = pub(alice), pub(bob), pub(carol)
    subs, pubs = [sc, sd, sa, sc2], [pa, pb, pc]
    try:
        for p in pubs:  # hello subscriptions always cross (wait_for_subscribers works)
            assert p.wait_for_subscribers(4, timeout=5) == 4
        n = 200
        for i in range(n):
            pa.publish("orders.new", i)    # allowed
            pa.publish("audit.x", i)       # forbidden: alice may only publish orders.*
            pb.publish("audit.x", i)       # allowed
            pc.publish("orders.new", i)    # forbidden: carol may not publish
            pb.publish("ordersx.leak", i)  # allowed, but only dave may read it
            if i % 50 == 49:
                for p in pubs:
                    p.flush()
        for p in pubs:
            p.flush()
        got_c = drain(sc, n)
        got_c2 = drain(sc2, n)
        got_d = drain(sd, 3 * n)
        for got in (got_c, got_c2):
            assert {(m.topic, m.publisher_id) for m in got} == {("orders.new", pa.publisher_id)}
            assert [m.payload for m in got] == list(range(n))
        assert b"ordersx.leak" not in sc2._topics  # never reached carol's socket
        assert {(m.topic, m.publisher_id) for m in got_d} == {
            ("orders.new", pa.publisher_id), ("audit.x", pb.publisher_id),
            ("ordersx.leak", pb.publisher_id)}
        assert len(got_d) == 3 * n
        assert until(lambda: px.stats()["forbidden"] == 2 * n)
        for s in subs:
            assert s.recv_batch(1000, timeout=0.2) == []
        assert sa.stats()["received"] == 0
        assert sc.stats()["lost"] == sd.stats()["lost"] == 0
        st = px.stats()
        assert st["forbidden"] == 2 * n  # exactly: every forbidden message, none allowed
        assert st["forbidden_by_key"] == {alice[0].decode(): n, carol[0].decode(): n}
        assert st["denied_subscriptions"] >= 2  # carol's "audit.", alice's ""
        assert srv.stats()["denied_publications"] == 2 * n
        fams = {f.name: f for f in text_string_to_metric_families(reg.render().decode())}
        dropped = {s.labels["reason"]: s.value for s in fams["pybus_messages_dropped"].samples}
        assert dropped == {"forbidden": 2 * n}
    finally:
        for s in subs:
            s.close()
        for p in pubs:
            p.close(linger_ms=0)
    # every subscription, granted or denied, is withdrawn when its subscribers leave: the
    # proxy's bookkeeping returns to empty (bounded memory) and so does the publishers' view
    ck = px._checker
    assert until(lambda: ck.granted == {} and ck.denied_live == {}), (ck.granted, ck.denied_live)
    px.close()


def test_checked_proxy_with_permissions_survives_garbage_and_accounts_for_it(
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    """Random messages into the frontend and random (un)subscriptions into the backend of a
    proxy with permissions, from admitted keys: nothing crashes, every message is forwarded or
    counted as forbidden exactly, and a legitimate subscriber still gets its traffic."""
    import random
    import time

    import zmq

    from pybus.policy.topics import is_valid_topic

    rng = random.Random(6)
    alice, bob, carol = keys["alice"], keys["bob"], keys["carol"]
    sp = keys["server"][0]
    srv = Curve.server(keys["server"][1], allow=[alice[0], bob[0], carol[0]],
                       log_interval_s=3600, permissions={
                           alice[0]: {"publish": ["fz.ok.#"]},
                           bob[0]: {"subscribe": ["fz.#"]},
                           carol[0]: {"subscribe": ["#"]},
                       })
    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", security=srv, registry=False)
    ctx = zmq.Context.instance()
    front = ctx.socket(zmq.PUB)
    back = ctx.socket(zmq.XSUB)
    for s, k in ((front, alice), (back, bob)):
        s.linger = 0
        Curve.client(k[1], sp).apply(s)
    front.sndhwm = 1_000_000
    front.connect(px.frontend[0])
    back.connect(px.backend[0])
    sub = pybus.Subscriber(px.backend, rcvhwm=1_000_000, registry=False, log_interval_s=3600,
                           security=Curve.client(carol[1], sp))

    def allowed(topic: bytes) -> bool:  # the oracle: "fz.ok.#" for alice
        try:
            t = topic.decode("ascii")
        except UnicodeDecodeError:
            return False
        return is_valid_topic(t) and (t == "fz.ok" or t.startswith("fz.ok."))

    topics = [b"fz.ok", b"fz.ok.a", b"fz.ok.a.b", b"fz.no", b"fz.okx", b"fz", b"", b"fz.ok.",
              b"\xff\xfe", b"fz.ok..a", b"other.x"]
    try:
        # the raw PUB learns carol's "everything" subscription through the proxy
        assert until(lambda: front.send_multipart([b"fz.ok.probe", b"p"]) is None and
                     sub.recv_batch(1000, timeout=0.01) == [] and
                     px.stats()["frontend"]["messages_in"] > 0)
        base = px.stats()
        forbidden_parts = allowed_parts = forbidden_msgs = 0
        deadline = time.monotonic() + 1.0
        for i in range(20_000):
            if time.monotonic() > deadline:
                break
            topic = rng.choice(topics) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 9))
            msg = [topic] + [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(0, 3))]
            front.send_multipart(msg)
            if allowed(topic):
                allowed_parts += len(msg)
            else:
                forbidden_parts += len(msg)
                forbidden_msgs += 1  # garbage payloads: counted as one message per frame
            if rng.random() < 0.3:
                g = rng.choice([b"\x01", b"\x00"]) + rng.choice(
                    [b"fz.", b"", b"fz.ok.", b"x", rng.randbytes(rng.randint(0, 8))])
                back.send(g)
            if i % 512 == 0:
                sub.recv_batch(1_000_000, timeout=0.001)  # keep carol's queue short
        assert until(lambda: px.stats()["forbidden"] - base["forbidden"] == forbidden_msgs and
                     px.stats()["frontend"]["messages_in"] - base["frontend"]["messages_in"]
                     == allowed_parts + forbidden_parts, 10), (px.stats(), forbidden_msgs)
        st = px.stats()
        assert st["state"] == "running"
        assert st["forbidden_by_key"] == {alice[0].decode(): forbidden_msgs}
        # everything allowed went out to the subscribers' side (XPUB sends parts to each
        # matching subscriber once: counted once per message part by the proxy)
        assert st["backend"]["messages_out"] - base["backend"]["messages_out"] == allowed_parts
        # the proxy still works: a real publisher's messages reach carol
        pub = pybus.Publisher(px.frontend, connect=True, registry=False,
                              security=Curve.client(alice[1], sp))
        try:
            assert pub.wait_for_subscribers(1, timeout=5) >= 1
            for j in range(10):
                pub.publish("fz.ok.end", j)
            pub.flush()
            got = []
            assert until(lambda: got.extend(
                m for m in sub.recv_batch(1_000_000, timeout=0.01) if m.topic == "fz.ok.end"
            ) or len(got) == 10, 10)
        finally:
            pub.close(linger_ms=0)
    finally:
        sub.close()
        front.close()
        back.close()
        px.close()
