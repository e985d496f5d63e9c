"""Liveness: ZMTP heartbeats, reconnection backoff, peer events, slow consumers, late joiners."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest
import zmq

import pybus
import pybus.pubsub.subscriber

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import TimeStub  # noqa: E402
from waiting import drain as _drain  # noqa: E402
from waiting import drain_until as _drain_until  # noqa: E402
from waiting import read_through_marker as _read_through_marker  # noqa: E402
from waiting import until as _until  # noqa: E402

pytestmark = pytest.mark.timeout(60)
BIG = 100_000
#: Bounds of the waits for an event: generous, so that only a missing event reaches them.
WAIT = 20.0
# "tcp://127.0.0.1:1" below: only for argument checks that raise before any connect


# -- options -----------------------------------------------------------------------------------


def test_liveness_options_land_on_the_sockets() -> None:
    lv = pybus.Liveness(heartbeat_ivl_ms=250, heartbeat_timeout_ms=900, heartbeat_ttl_ms=1200,
                        reconnect_ivl_ms=50, reconnect_ivl_max_ms=800)
    pub = pybus.Publisher("tcp://127.0.0.1:*", liveness=lv, registry=False)
    sub = pybus.Subscriber(pub.endpoints, registry=False)  # defaults
    try:
        s = pub._sock
        assert (s.getsockopt(zmq.HEARTBEAT_IVL), s.getsockopt(zmq.HEARTBEAT_TIMEOUT),
                s.getsockopt(zmq.HEARTBEAT_TTL)) == (250, 900, 1200)
        assert (s.getsockopt(zmq.RECONNECT_IVL), s.getsockopt(zmq.RECONNECT_IVL_MAX)) == (50, 800)
        d = pybus.Liveness()
        t = sub._sock
        # a stream receiver: TCP keepalive, no ZMTP heartbeats (libzmq#3937, see Liveness)
        assert t.getsockopt(zmq.HEARTBEAT_IVL) == 0
        assert t.getsockopt(zmq.TCP_KEEPALIVE) == 1
        assert t.getsockopt(zmq.TCP_KEEPALIVE_IDLE) == d.tcp_keepalive_idle_s > 0
        assert t.getsockopt(zmq.TCP_KEEPALIVE_CNT) == d.tcp_keepalive_cnt > 0
        assert t.getsockopt(zmq.RECONNECT_IVL_MAX) == d.reconnect_ivl_max_ms > 0
        assert s.getsockopt(zmq.HEARTBEAT_IVL) == 250  # the sending side keeps heartbeats
    finally:
        sub.close()
        pub.close(linger_ms=0)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"heartbeat_ivl_ms": -1}, "heartbeat_ivl_ms"),
        ({"heartbeat_ttl_ms": 150}, "multiple of 100"),
        ({"reconnect_ivl_ms": 500, "reconnect_ivl_max_ms": 100}, "reconnect_ivl_max_ms"),
        ({"on_peer": 3}, "on_peer"),
    ],
)
def test_bad_liveness_options(kwargs: dict[str, object], msg: str) -> None:
    with pytest.raises(pybus.ValidationError, match=msg):
        pybus.Liveness(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(pybus.ValidationError, match="liveness must be"):
        pybus.Subscriber("tcp://127.0.0.1:1", liveness=5)


# -- peer events and reconnection ------------------------------------------------------------


def test_peer_events_reach_callbacks_and_counters_and_reconnect_after_restart() -> None:
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_peer(event: str, endpoint: str) -> None:
        with lock:
            events.append((event, endpoint))

    # the kernel picks the port (no pick-then-bind race); the restarted publisher binds the
    # same endpoint again, as a restarted host would: the subscriber only knows that address
    pub = pybus.Publisher("tcp://127.0.0.1:*", sndhwm=BIG, registry=False)
    ep = pub.endpoints[0]
    sub = None
    try:
        sub = pybus.Subscriber(ep, liveness=pybus.Liveness(on_peer=on_peer, reconnect_ivl_ms=20,
                                                           reconnect_ivl_max_ms=200),
                               rcvhwm=BIG, registry=False)
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        assert _until(lambda: ("handshake_succeeded", ep) in events, WAIT)
        assert ("connected", ep) in events
        pub.publish("a.b", 1)
        pub.flush()
        first = _drain(sub, 1, WAIT)
        pub.close(linger_ms=0)  # the publisher host goes away ...
        assert _until(lambda: sub.recv_batch(1, timeout=0.01) == [] and
                      ("disconnected", ep) in events, WAIT)
        pub = pybus.Publisher(ep, sndhwm=BIG, registry=False)  # ... and comes back
        # the SUB reconnects by itself (bounded backoff) and resends its subscriptions
        assert _until(lambda: sub.recv_batch(1, timeout=0.01) == [] and
                      pub.stats()["subscribers"] == 1, WAIT)
        pub.publish("a.b", 2)
        pub.flush()
        second = _drain(sub, 1, WAIT)
        assert [m.payload for m in first + second] == [1, 2]
        st = sub.stats()["peer_events"]
        assert st["connected"] >= 2 and st["disconnected"] >= 1
        assert sum(1 for e, _ in events if e == "handshake_succeeded") >= 2
    finally:
        if sub is not None:
            sub.close()
        pub.close(linger_ms=0)


@pytest.mark.parametrize("heartbeats", [True, False])
def test_heartbeat_timeout_closes_a_silent_connection(heartbeats: bool) -> None:
    """A peer that stops answering (a frozen host, a dead link) is dropped after the
    heartbeat timeout, instead of the connection lingering for TCP's minutes."""
    lv = pybus.Liveness(heartbeat_ivl_ms=100 if heartbeats else 0, heartbeat_timeout_ms=300,
                        heartbeat_ttl_ms=300)
    pub = pybus.Publisher("tcp://127.0.0.1:*", liveness=lv, registry=False)
    host, port = pub.endpoints[0].rsplit(":", 1)
    # a raw TCP client that completes the ZMTP greeting and then falls silent: it never
    # answers a PING (ZMTP 3.1 needs the peer to send PONG, or any traffic)
    raw = socket.create_connection(("127.0.0.1", int(port)))
    try:
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x01" + b"NULL" + b"\x00" * 16 + \
            b"\x00" + b"\x00" * 31
        raw.sendall(greeting)
        # READY command with Socket-Type SUB
        body = b"\x05READY" + b"\x0bSocket-Type" + (3).to_bytes(4, "big") + b"SUB"
        raw.sendall(b"\x04" + bytes([len(body)]) + body)
        assert _until(lambda: pub._watch.events.get("handshake_succeeded", 0) >= 1, WAIT)
        if heartbeats:
            assert _until(lambda: pub._watch.events.get("disconnected", 0) >= 1, WAIT)
        else:
            # the elapsed time is what is tested: without heartbeats nothing drops the silent
            # peer (TCP keepalive takes minutes), however long this wait lasts; 1 s is more
            # than three heartbeat timeouts
            assert not _until(lambda: pub._watch.events.get("disconnected", 0) >= 1, 1.0)
    finally:
        raw.close()
        pub.close(linger_ms=0)


# -- slow consumers ------------------------------------------------------------------------------


def _overflow(pub: pybus.Publisher, n: int) -> None:
    payload = b"x" * 8192
    for _ in range(n):
        pub.publish("slow.t", payload)
    pub.flush()


def _flooding_publisher() -> pybus.Publisher:
    # a subscriber that reads nothing is evicted after slow_consumer_timeout_s (it is not
    # reading at all, so any value works; a short one keeps the test fast), then ZeroMQ drops
    # what exceeds its high-water marks
    return pybus.Publisher("tcp://127.0.0.1:*", sndhwm=16, max_batch_records=1,
                           slow_consumer_timeout_s=0.5, registry=False)


def test_slow_consumer_drop_counts_and_goes_on() -> None:
    pub = _flooding_publisher()
    sub = pybus.Subscriber(pub.endpoints, rcvhwm=16, registry=False)  # slow_consumer="drop"
    try:
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        _overflow(pub, 3000)
        # it goes on: read the rest, then markers until the last one published arrives (an
        # early marker may be dropped too); by then every message is received or counted lost
        got, markers = _read_through_marker(pub, sub, "slow.t")
        st = sub.stats()
        assert got[-1].raw_payload == b"marker-%d" % (markers - 1)
        assert st["received"] == len(got)
        assert st["received"] + st["lost"] == 3000 + markers
        assert st["lost"] > 0 and st["slow_consumer_events"]["gap"] == st["gaps"] >= 1
        assert not sub.closed
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_slow_consumer_close_raises_suicidal_snail() -> None:
    pub = _flooding_publisher()
    sub = pybus.Subscriber(pub.endpoints, rcvhwm=16, slow_consumer="close", registry=False)
    try:
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        _overflow(pub, 3000)
        with pytest.raises(pybus.SlowConsumerError, match="fell behind") as info:
            # a message after a dropped one reveals the gap; markers make sure one comes
            _read_through_marker(pub, sub, "slow.t")
        assert info.value.reason == "gap" and info.value.stats["lost"] > 0
        assert isinstance(info.value, pybus.BackpressureError)
        assert sub.closed
        with pytest.raises(pybus.ClosedError):
            sub.recv(timeout=0.1)
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_slow_consumer_by_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lag is the subscriber's wall clock (pybus.subscriber reads time.time_ns()) minus the
    # publisher's stamp. The subscribers' clock is made to jump instead of the test sleeping
    # through the lag: no real delay counts unless it exceeds max_lag_s = 5 s.
    ahead_ns = 0
    monkeypatch.setattr(pybus.pubsub.subscriber, "time",
                        TimeStub(time_ns=lambda: time.time_ns() + ahead_ns))
    pub = pybus.Publisher("tcp://127.0.0.1:*", registry=False)
    sub = pybus.Subscriber(pub.endpoints, slow_consumer="close", max_lag_s=5.0, registry=False)
    lagged = pybus.Subscriber(pub.endpoints, max_lag_s=5.0, registry=False)  # drop: counts
    try:
        assert pub.wait_for_subscribers(2, timeout=WAIT) == 2
        pub.publish("lag.t", 1)
        pub.flush()
        assert sub.recv(timeout=WAIT).payload == 1  # read within max_lag_s: no lag
        assert _drain(lagged, 1, WAIT)[0].payload == 1
        assert lagged.stats()["slow_consumer_events"]["lag"] == 0
        pub.publish("lag.t", 2)
        pub.flush()
        assert _until(lambda: sub._sock.poll(0) != 0 and lagged._sock.poll(0) != 0, WAIT)
        ahead_ns = 6 * 10**9  # the message sits unread for 6 s (by the subscribers' clock)
        with pytest.raises(pybus.SlowConsumerError) as info:
            sub.recv(timeout=WAIT)
        assert info.value.reason == "lag"
        assert _drain(lagged, 1, WAIT)[0].payload == 2
        assert lagged.stats()["slow_consumer_events"]["lag"] == 1
    finally:
        sub.close()
        lagged.close()
        pub.close(linger_ms=0)


def test_bad_slow_consumer_arguments() -> None:
    with pytest.raises(pybus.ValidationError, match="slow_consumer"):
        pybus.Subscriber("tcp://127.0.0.1:1", slow_consumer="kill")
    with pytest.raises(pybus.ValidationError, match="max_lag_s"):
        pybus.Subscriber("tcp://127.0.0.1:1", max_lag_s=0)


# -- late joiners (Clone pattern) ----------------------------------------------------------------


def test_late_joiner_gets_history_then_live_without_gaps_or_duplicates() -> None:
    pub = pybus.Publisher("tcp://127.0.0.1:*", history=50, history_endpoint="tcp://127.0.0.1:*",
                          sndhwm=BIG, registry=False)
    stop = threading.Event()
    sent = {"a.x": 0, "a.y": 0, "b.z": 0}

    def publish_forever() -> None:  # live traffic during the hand-over
        while not stop.is_set() and sent["a.x"] < 200_000:
            for t in sent:
                sent[t] += 1
                pub.publish(t, sent[t])
            time.sleep(0.0002)

    for _i in range(200):
        for t in sent:
            sent[t] += 1
            pub.publish(t, sent[t])
    pub.flush()
    th = threading.Thread(target=publish_forever)
    th.start()
    late = None
    try:
        late = pybus.Subscriber(pub.endpoints, topics=["a.#"], late_join=True,
                                history_endpoint=pub.history_endpoint, rcvhwm=BIG,
                                registry=False)
        joined_at = sent["a.x"]
        # live traffic goes on after the join: 200 more rounds, however long they take
        assert _until(lambda: sent["a.x"] >= joined_at + 200 or not th.is_alive(), WAIT)
        stop.set()
        th.join(WAIT)
        assert not th.is_alive()
        total = sent["a.x"]
        assert total >= joined_at + 200
        # an end marker after the last message, on the same connection: once it is read,
        # everything before it has been (and any hole or repeat is in what was read)
        pub.publish("a.end", 0)
        pub.flush()
        got = _drain_until(late, lambda m: m.topic == "a.end", WAIT)
        assert got[-1].topic == "a.end"
        got = got[:-1]
        by_topic: dict[str, list[int]] = {}
        for m in got:
            by_topic.setdefault(m.topic, []).append(m.payload)
        assert set(by_topic) == {"a.x", "a.y"}  # b.z is not subscribed
        for t in ("a.x", "a.y"):
            vals = by_topic[t]
            # starts with the last 50 of history and runs, without a hole or a repeat, to
            # the last one published
            assert vals == list(range(vals[0], total + 1)), (vals[:5], vals[-5:])
        st = late.stats()
        assert st["history_received"] == 100 and st["lost"] == 0
        # what was read is all there was: live (with the marker) and history
        assert st["received"] + st["history_received"] == len(got) + 1
        seqs = [m.seq for m in got if m.topic == "a.x"]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        stop.set()
        th.join(WAIT)
        if late is not None:
            late.close()
        pub.close(linger_ms=0)


def test_fetch_history_later_drops_buffered_duplicates() -> None:
    pub = pybus.Publisher("tcp://127.0.0.1:*", history=5, history_endpoint="tcp://127.0.0.1:*",
                          sndhwm=BIG, registry=False)
    sub = pybus.Subscriber(pub.endpoints, rcvhwm=BIG, registry=False)
    try:
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        for i in range(1, 11):
            pub.publish("h.t", i)
        pub.flush()
        assert _until(lambda: sub._sock.poll(0) != 0, WAIT)
        assert sub.fetch_history(pub.history_endpoint, timeout=WAIT) == 5
        pub.publish("h.t", 11)  # a marker after the live 1..10, on the same connection
        pub.flush()
        got = [m.payload for m in _drain_until(sub, lambda m: m.payload == 11, WAIT)]
        # the snapshot (6..10), then the live 1..10 (queued before the snapshot or not): 6..10
        # are duplicates and 1..5 are older than the snapshot (behind it): both dropped; then
        # the marker, live
        assert got == [6, 7, 8, 9, 10, 11]
        assert sub.stats()["history_duplicates"] == 10
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_history_request_errors() -> None:
    pub = pybus.Publisher("tcp://127.0.0.1:*", history=5, history_endpoint="tcp://127.0.0.1:*",
                          registry=False)
    try:
        from pybus.pubsub.history import request_snapshot

        with pytest.raises(pybus.TransportError, match="not subscribed"):
            # a subscriber id the publisher never saw: refused after the (shortened) wait;
            # the request's own timeout is far longer, so only the refusal can end it
            import pybus.pubsub.history as h

            old = h.HELLO_WAIT_S
            h.HELLO_WAIT_S = 0.2
            try:
                request_snapshot(zmq.Context.instance(), pub.history_endpoint,
                                 b"00000000deadbeef", [b""], WAIT, lambda s: None)
            finally:
                h.HELLO_WAIT_S = old
        raw = zmq.Context.instance().socket(zmq.DEALER)
        try:
            raw.linger = 0
            raw.connect(pub.history_endpoint)
            raw.send_multipart([b"garbage"])
            assert raw.poll(int(WAIT * 1000))
            assert raw.recv_multipart(zmq.NOBLOCK)[:2] == [b"PBH1", b"ERR"]
        finally:
            raw.close()
        assert pub._history_server.bad_requests == 1
    finally:
        pub.close(linger_ms=0)
    with pytest.raises(pybus.ValidationError, match="history_endpoint"):
        pybus.Publisher("tcp://127.0.0.1:*", history=5)
    with pytest.raises(pybus.ValidationError, match="history_endpoint"):
        pybus.Subscriber("tcp://127.0.0.1:1", late_join=True)
