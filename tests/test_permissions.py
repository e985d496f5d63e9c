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

sys.path.insert(0, os.path.dirname(__file__))
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
        pa.close(linger=0)
        pb.close(linger=0)
        sub.close()
