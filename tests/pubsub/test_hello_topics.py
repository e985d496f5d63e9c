"""Messages under the hello prefix that reach a subscriber which is not theirs (docs/wire.md,
"Join snapshot"): another subscriber's snapshot is ignored, anything else under the prefix is a
malformed topic, counted; neither is delivered, and no flood of them grows the topic cache."""

from __future__ import annotations

import time

import zmq

import pybus
from pybus.pubsub._base import HELLO_PREFIX

BIG = 1 << 20


def _frame(publisher_id: int, seq: int) -> bytes:
    return pybus.wire.encode_frame(publisher_id, seq, [(b"end", None, 0, time.time_ns())])


def test_other_hellos_ignored_malformed_ones_counted_and_the_cache_bounded():
    raw = zmq.Context.instance().socket(zmq.XPUB)
    raw.linger = 0
    raw.sndhwm = BIG
    raw.bind("tcp://127.0.0.1:*")
    sub = pybus.Subscriber(raw.last_endpoint.decode(), rcvhwm=BIG, registry=False,
                           log_interval_s=3600)
    try:
        assert raw.poll(5000)
        while raw.poll(100):
            raw.recv()
        base = sub.stats()
        raw.send_multipart([HELLO_PREFIX + b"0123456789abcdef", b"someone else's snapshot"])
        raw.send_multipart([HELLO_PREFIX, b""])  # the prefix alone: no hello
        raw.send_multipart([HELLO_PREFIX + b"0123456789ABCDEF", b""])  # upper case: no hello
        for i in range(5000):  # distinct malformed hello topics: the cache must stay bounded
            raw.send_multipart([HELLO_PREFIX + b"x%d" % i, b""])
        raw.send_multipart([b"t.end", _frame(0xE17D, 1)])
        got = []
        for _ in range(200):
            got += sub.recv_batch(100, timeout=0.1)
            if got:
                break
        assert [m.topic for m in got] == ["t.end"]  # nothing under the prefix is delivered
        s = sub.stats()
        assert s["decode_errors"] - base["decode_errors"] == 2 + 5000
        assert len(sub._topics) <= 4096
    finally:
        sub.close()
        raw.close()
