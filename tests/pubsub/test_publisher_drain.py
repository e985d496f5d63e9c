"""Publisher.drain(): the graceful end of a publisher. Nothing published before it is lost to
a live, reading subscriber; a stalled one only runs out the time; publishing afterwards is
refused."""

from __future__ import annotations

import threading
import time

import pytest

import pybus
from pybus.testing import expect_messages

N = 20_000


def test_drain_returns_once_every_live_subscriber_has_it_all(bus):
    pub, subs = bus.pubsub(["t.#"], n_subscribers=2)
    got = {i: [] for i in range(2)}
    stop = threading.Event()

    def read(i: int) -> None:  # a live subscriber keeps reading (so it acks the last mark)
        while not stop.is_set():
            got[i] += [m.payload for m in subs[i].recv_batch(10_000, timeout=0.05)]

    readers = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for r in readers:
        r.start()
    try:
        for i in range(N):
            pub.publish("t.x", i)
        assert pub.drain(timeout_s=60) is True
        assert pub.closed
        with pytest.raises(pybus.ClosedError):
            pub.publish("t.x", -1)
    finally:
        stop.set()
        for r in readers:
            r.join(60)
    assert got[0] == list(range(N)) and got[1] == list(range(N))
    assert pub.stats()["dropped"]["closed"] == 0


def test_a_stalled_subscriber_only_runs_out_the_time(bus):
    pub, (sub,) = bus.pubsub(["t.#"], pub_options={"sndhwm": 8, "max_batch_bytes": 1024})
    for _ in range(3):
        pub.publish("t.x", b"x" * 900)
    t0 = time.monotonic()
    assert pub.drain(timeout_s=0.5) is False  # the subscriber has not read its window
    assert time.monotonic() - t0 < 5
    assert pub.closed
    # nothing unaccounted: what the window took is there to read, the rest counted dropped
    dropped = pub.stats()["dropped"]["closed"]
    assert dropped >= 1
    assert len(expect_messages(sub, 3 - dropped)) == 3 - dropped


def test_best_effort_drain_hands_everything_to_zeromq(bus):
    pub, (sub,) = bus.pubsub(pub_options={"delivery": "best_effort"})
    for i in range(100):
        pub.publish("t", i)
    assert pub.drain(timeout_s=10) is True
    assert [m.payload for m in expect_messages(sub, 100)] == list(range(100))


def test_subscriber_drain_returns_what_arrived_and_closes(bus):
    pub, (sub,) = bus.pubsub(["t.#"], pub_options={"delivery": "best_effort"})
    for i in range(500):
        pub.publish("t.x", i)
    pub.flush(timeout=30)
    first = sub.recv(timeout=30)  # the rest has arrived behind it (one inproc pipe)
    rest = sub.drain()
    assert [first.payload] + [m.payload for m in rest] == list(range(500))
    assert sub.closed and sub.drain() == []
    # the publisher saw the subscription go
    assert pybus.testing.wait_until(lambda: pub.stats()["subscribers"] == 0, 10) is None
