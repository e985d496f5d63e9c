"""Child-process bodies for tests/pubsub/test_pubsub_reliable.py (importable under spawn).

Every loop here is bounded in count and in time; results go back through a Queue as plain
dicts. Payloads carry their stream's sequence number in their first 8 bytes (little endian),
so a subscriber checks each message against the number pybus gave it.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

_MAX_ROUNDS = 10_000_000  # recv_batch calls at most (the deadline comes first in practice)


def payload(seq: int, size: int) -> bytes:
    """A message body: ``seq`` (u64 little endian) then filler, ``size`` bytes (>= 8)."""
    return seq.to_bytes(8, "little") + b"p" * (size - 8)


def topic_names(n: int) -> list[str]:
    return [f"rel.t{i:04d}" for i in range(n)]


def expected_per_topic(n: int, topics: int) -> dict[str, int]:
    """Messages per topic when message i goes to topic i % topics."""
    names = topic_names(topics)
    return {t: n // topics + (1 if j < n % topics else 0) for j, t in enumerate(names)}


def sub_proc(
    endpoint: str,
    expected: Any,
    ready: Any,
    out_q: Any,
    slowdown: float = 1.0,
    deadline_s: float = 60.0,
    progress: Any = None,
    hold: Any = None,
) -> None:
    """A Subscriber of every topic that hashes each payload (blake2b) and checks order.

    ``expected`` is an int, or a multiprocessing Value (0 while unknown) set by the test once
    it knows how many messages it published. Stops once delivered + lost reaches it, or at
    ``deadline_s``. ``slowdown`` > 1 makes it that many times slower than it would be: after
    each batch it sleeps ``slowdown - 1`` times what the batch took (so the sleep grows with
    the batch). ``progress`` (a Value) is kept at delivered + lost. With ``hold`` (an Event),
    the Subscriber stays connected after the report until it is set (or 60 s).

    Reports a dict: delivered, lost (stats), gap_lost (summed from on_gap), per-topic
    [count, last seq, skips (seq jumped ahead), backwards (seq not above the last: duplicate
    or reordered)], bad payloads, the subscriber's stats and whether the deadline ended it.
    """
    import pybus

    gap_lost = [0]

    def on_gap(topic: str, pid: int, expected_seq: int, got: int, lost: int) -> None:
        gap_lost[0] += lost

    sub = pybus.Subscriber(endpoint, topics=["#"], on_gap=on_gap)
    per_topic: dict[str, list[int]] = {}
    delivered = bad_payload = 0
    lost = 0
    timed_out = True
    t_start = time.monotonic()
    deadline = t_start + deadline_s
    blake2b = hashlib.blake2b
    try:
        ready.set()
        for _ in range(_MAX_ROUNDS):
            if time.monotonic() >= deadline:
                break
            t0 = time.monotonic()
            batch = sub.recv_batch(10_000, timeout=0.1)
            for m in batch:
                raw = m.raw_payload
                blake2b(raw).digest()
                seq = m.seq
                rec = per_topic.get(m.topic)
                if rec is None:
                    rec = per_topic[m.topic] = [0, 0, 0, 0]
                if seq == rec[1] + 1:
                    rec[1] = seq
                elif seq > rec[1]:
                    rec[2] += 1
                    rec[1] = seq
                else:
                    rec[3] += 1
                rec[0] += 1
                if int.from_bytes(raw[:8], "little") != seq:
                    bad_payload += 1
            delivered += len(batch)
            if batch and slowdown > 1:
                time.sleep((slowdown - 1) * (time.monotonic() - t0))
            lost = sub.stats()["lost"]
            if progress is not None:
                progress.value = delivered + lost
            want = expected if isinstance(expected, int) else expected.value
            if want and delivered + lost >= want:
                timed_out = False
                break
        st = sub.stats()
        out_q.put({
            "delivered": delivered,
            "lost": st["lost"],
            "lost_by_topic": st["lost_by_topic"],
            "gap_lost": gap_lost[0],
            "per_topic": per_topic,
            "bad_payload": bad_payload,
            "timed_out": timed_out,
            "elapsed": time.monotonic() - t_start,
            "stats": {k: st[k] for k in ("received", "lost", "marks", "positions", "gaps",
                                         "out_of_order", "decode_errors", "buffered",
                                         "batches")},
        })
        if hold is not None:
            hold.wait(60)
    finally:
        sub.close()


def churn_proc(
    endpoint: str, ready: Any, stop: Any, cycles: Any, max_cycles: int = 2000,
    deadline_s: float = 60.0,
) -> None:
    """Subscribers that join and leave in a loop: each cycle makes a Subscriber, reads from
    nothing to a few batches (cycle by cycle: leaves at once, one batch, up to five batches,
    for up to 0.2 s), then closes it. ``ready`` is set after the first cycle; ``cycles`` (a
    Value) counts the cycles done. Stops when ``stop`` is set, or at max_cycles/deadline."""
    import pybus

    deadline = time.monotonic() + deadline_s
    for i in range(max_cycles):
        if stop.is_set() or time.monotonic() >= deadline:
            break
        sub = pybus.Subscriber(endpoint, topics=["#"])
        try:
            kind = i % 4
            if kind == 1:
                sub.recv_batch(1000, timeout=0.05)
            elif kind == 2:
                for _ in range(5):
                    sub.recv_batch(1000, timeout=0.02)
            elif kind == 3:
                until = time.monotonic() + 0.2
                for _ in range(1000):
                    if time.monotonic() >= until:
                        break
                    sub.recv_batch(1000, timeout=0.02)
        finally:
            sub.close()
        cycles.value += 1
        ready.set()


def idle_sub_proc(endpoint: str, ready: Any, stop: Any, deadline_s: float = 170.0) -> None:
    """A Subscriber that connects and never reads (ZeroMQ still fills its queue) until
    ``stop`` is set or the deadline."""
    import pybus

    sub = pybus.Subscriber(endpoint, topics=["#"])
    try:
        ready.set()
        stop.wait(deadline_s)
    finally:
        sub.close()


def rss_pub_proc(
    endpoint_q: Any, warm: Any, go_on: Any, finished: Any, release: Any, out_q: Any,
    max_messages: int = 3_000_000, max_seconds: float = 25.0,
) -> None:
    """A reliable Publisher with the default window (slow_consumer_timeout_s=1 s) feeding a
    subscriber that never reads. Sends its endpoint on ``endpoint_q``, waits for the
    subscriber, publishes until the subscriber is evicted and 100,000 more (warm-up), sets
    ``warm`` and waits for ``go_on`` (the test measures RSS), then publishes up to
    ``max_messages`` in all or ``max_seconds``, sets ``finished`` and waits for ``release``
    (the test measures again). Reports its stats and counts on ``out_q``."""
    import pybus

    pub = pybus.Publisher("tcp://127.0.0.1:*", slow_consumer_timeout_s=1.0)
    try:
        endpoint_q.put(pub.endpoints[0])
        pub.wait_for_subscribers(1, timeout=60)
        body = b"m" * 64
        publish = pub.publish
        n = 0
        t0 = time.monotonic()
        # warm-up: until the stalled subscriber is evicted (its window is full after ~32 MiB
        # or the frame bound, then slow_consumer_timeout_s), then 100,000 more
        while n < max_messages and time.monotonic() - t0 < 30:
            for _ in range(10_000):
                publish("rss.t", body)
            n += 10_000
            if pub.stats()["evictions"]:
                break
        for _ in range(10):
            for _ in range(10_000):
                publish("rss.t", body)
            n += 10_000
        pub.flush(timeout=30)
        warm_stats = pub.stats()
        warm_n = n
        warm.set()
        go_on.wait(60)
        t1 = time.monotonic()
        while n < max_messages and time.monotonic() - t1 < max_seconds:
            for _ in range(10_000):
                publish("rss.t", body)
            n += 10_000
        pub.flush(timeout=30)
        st = pub.stats()
        finished.set()
        release.wait(60)
        out_q.put({"n": n, "warm_n": warm_n, "warm_stats": warm_stats, "stats": st,
                   "seconds": time.monotonic() - t1, "pid": os.getpid()})
    finally:
        pub.close(linger_ms=0)
