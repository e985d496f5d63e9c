"""pybus.testing: each helper against the real thing it stands for (a real Client, a real
Worker and queue), and failing loudly when what a test expects does not happen."""

from __future__ import annotations

import importlib.metadata
import time

import pytest

import pybus
from pybus.testing import Bus, FakeClock, call, expect_messages, run_handler, wait_until


def test_the_plugin_is_registered_and_its_fixtures_are_here(request, bus, fake_clock):
    eps = importlib.metadata.entry_points(group="pytest11")
    assert any(e.name == "pybus" and e.value == "pybus.testing.plugin" for e in eps)
    assert isinstance(bus, Bus) and isinstance(fake_clock, FakeClock)
    assert "bus" in request.fixturenames


def test_pubsub_through_the_bus(bus):
    pub, (a, b) = bus.pubsub(["orders.*"], n_subscribers=2)
    for i in range(3):
        pub.publish("orders.created", {"i": i})
    pub.publish("other.topic", b"not for them")
    for sub in (a, b):
        assert [m.payload for m in expect_messages(sub, 3)] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_endpoints_are_fresh_and_close_closes_everything():
    with Bus("x") as b:
        assert b.endpoint() != b.endpoint()
        pub, (sub,) = b.pubsub()
        srv = b.server({"echo": lambda x: x})
        q = b.work_queue()
    assert pub.closed and sub.closed
    assert b.context.closed
    with pytest.raises(pybus.ClosedError):
        q.put("t", b"after close")
    with pytest.raises(pybus.ClosedError):
        srv.start()


def test_expect_messages_says_how_many_came(bus):
    pub, (sub,) = bus.pubsub()
    pub.publish("t", b"only one")
    with pytest.raises(AssertionError, match=r"expected 2 messages within 0.3 s, got 1"):
        expect_messages(sub, 2, timeout_s=0.3)


def test_wait_until_returns_on_the_event_and_fails_past_the_deadline():
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 > 0.05, timeout_s=5)
    with pytest.raises(AssertionError, match="never"):
        wait_until(lambda: False, timeout_s=0.05, what="never")


class Oops(Exception):
    pass


def _handlers():
    def boom(_arg):
        raise Oops("kaput")

    def refuse(arg):
        raise pybus.ValidationError(f"bad {arg}")

    return {"echo": lambda x: x, "boom": boom, "refuse": refuse}


@pytest.mark.parametrize("method,payload", [("echo", b"raw"), ("echo", {"a": (1, 2)}),
                                            ("echo", [1.5, None, "s"]), ("boom", 1),
                                            ("refuse", 7), ("missing", b"")])
def test_call_answers_what_a_real_client_gets(bus, method, payload):
    srv = bus.server(_handlers())
    client = bus.client(srv)

    def outcome(fn):
        try:
            return ("ok", fn())
        except pybus.RemoteError as exc:
            return ("error", exc.remote_type, exc.remote_code, exc.retryable, str(exc))

    real = outcome(lambda: client.request(method, payload))
    kit = outcome(lambda: call(srv, method, payload))
    assert kit == real
    if method == "echo" and isinstance(payload, dict):
        assert kit == ("ok", {"a": [1, 2]})  # the codec really ran: tuples come back as lists


def test_call_needs_no_running_server():
    with Bus() as b:
        srv = pybus.Server(b.endpoint(), context=b.context, registry=False)
        try:
            srv.add_handler("add", lambda a: a["x"] + a["y"])
            assert call(srv, "add", {"x": 2, "y": 3}) == 5
        finally:
            srv.stop()


def test_run_handler_matches_a_real_worker_and_queue(bus, tmp_path):
    seen = []

    def handler(msg):
        seen.append((msg.topic, msg.payload, msg.headers))
        if msg.payload == "bad":
            raise pybus.ValidationError("bad payload")
        if msg.payload == "flaky":
            raise ConnectionError("try again")

    ok = run_handler(handler, "jobs.a", {"n": 1}, {"h": "v"})
    assert ok.acked and ok.error is None and ok.message.payload == {"n": 1}
    bad = run_handler(handler, "jobs.a", "bad")
    assert not bad.acked and bad.error.remote_type == "ValidationError"
    assert bad.error.retryable is False  # the queue dead-letters it at once
    flaky = run_handler(handler, "jobs.a", "flaky")
    assert flaky.error.remote_type == "ConnectionError" and flaky.error.retryable is True
    # the real thing: the same handler on a real queue dead-letters "bad" without a retry
    dlq = pybus.DeadLetterQueue(str(tmp_path / "dead.db"))
    try:
        q = bus.work_queue(dlq=dlq, retry=pybus.RetryPolicy.fixed(0.01, max_attempts=3))
        bus.worker(q, handler)
        q.put("jobs.a", "bad")
        assert q.join(timeout=20)
        (dead,) = dlq.list()
        assert dead.attempts == 1 and dead.error_type == bad.error.remote_type
    finally:
        dlq.close()


def test_fake_clock_drives_a_retry_policy_and_a_breaker(fake_clock):
    policy = pybus.RetryPolicy.exponential(0.5, max_attempts=4, clock=fake_clock,
                                           sleep=fake_clock.sleep, registry=False)
    attempts = []

    def flaky():
        attempts.append(fake_clock())
        if len(attempts) < 4:
            raise pybus.TransportError("down")  # retryable
        return "up"

    assert policy.call(flaky) == "up"
    assert fake_clock.sleeps == [0.5, 1.0, 2.0]
    breaker = pybus.CircuitBreaker(1, reset_timeout_s=30, clock=fake_clock, registry=False)
    breaker.record_failure()
    assert breaker.state == "open"
    fake_clock.advance(30)
    assert breaker.state == "half_open"
    with pytest.raises(ValueError, match="does not go back"):
        fake_clock.advance(-1)
