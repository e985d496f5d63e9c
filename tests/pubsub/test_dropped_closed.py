"""``dropped["closed"]``: what a publisher still held when it closed, and nothing else.

Documented (Publisher.close, docs/metrics.md, docs/operations.md): messages still pending
when a reliable publisher closes - its window never took them within ``block_timeout_s`` - are
counted in ``stats()["dropped"]["closed"]`` and ``pybus_messages_dropped_total{reason=
"closed"}``; ``publish()`` after ``close()`` raises ``ClosedError`` (Publisher.publish) and is
not a drop: the caller is told, so nothing is counted. Read back with prometheus_client.
"""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pybus

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _dropped(reg: pybus.metrics.Registry) -> dict[str, float]:
    fams = {f.name: f for f in text_string_to_metric_families(reg.render().decode())}
    return {s.labels["reason"]: s.value for s in fams["pybus_messages_dropped"].samples}


def test_pending_at_close_is_counted_and_publish_after_close_raises_uncounted() -> None:
    reg = pybus.metrics.Registry()
    ep = f"inproc://dropped-closed-{uuid.uuid4().hex}"
    # a small window and ring; the subscriber is connected but reads nothing until told, and
    # is never evicted (slow_consumer_timeout_s far above block_timeout_s)
    pub = pybus.Publisher(ep, on_full="raise", sndhwm=16, capacity_bytes=16 << 10,
                          max_batch_bytes=1024, max_message_bytes=1024, block_timeout_s=0.3,
                          slow_consumer_timeout_s=60, registry=reg)
    sub = pybus.Subscriber(ep, registry=False)
    try:
        assert pub.wait_for_subscribers(1, timeout=10) == 1
        accepted = 0
        for i in range(100_000):
            try:
                pub.publish("closing.t", i)
            except pybus.BackpressureError:
                break
            accepted += 1
        else:
            pytest.fail(f"the window never filled: {pub.stats()}")
        before = pub.stats()
        assert before["pending"] > 0 and before["dropped"]["closed"] == 0
        assert before["published"] + before["pending"] == accepted

        pub.close(linger_ms=5000)  # the window stays shut: close gives up after block_timeout_s
        after = pub.stats()
        assert after["dropped"]["closed"] == before["pending"]
        assert after["pending"] == 0
        assert after["published"] == before["published"]  # no message counted twice
        assert after["dropped"]["ring_full"] == after["dropped"]["backpressure"] == 0
        assert _dropped(reg)["closed"] == before["pending"]

        # after close: publish raises, every time, and no counter moves
        for _ in range(3):
            with pytest.raises(pybus.ClosedError):
                pub.publish("closing.t", -1)
        assert pub.stats()["dropped"] == after["dropped"]
        assert _dropped(reg)["closed"] == before["pending"]

        # the subscriber gets exactly what was handed to ZeroMQ, in order
        got = drain(sub, before["published"], timeout=20)
        assert [m.payload for m in got] == list(range(before["published"]))
        assert sub.recv_batch(10, timeout=0.2) == []
    finally:
        sub.close()
        pub.close(linger_ms=0)
