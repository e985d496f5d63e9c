"""Reliable delivery everywhere pub/sub works: bind or connect on either side, inproc, ipc and
tcp, CURVE, per-key permissions (XPUB manual mode) and late joiners with history.

Each publisher has a small high-water mark (so a window of a few frames) and its subscriber
reads slowly in a thread, so the publisher must be paced by the subscriber's acks all along;
on the best-effort behaviour these bursts lose most of their messages."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import pybus
from pybus import Curve

N = 6_000
TOPICS = [f"rel.t{i:02d}" for i in range(30)]


class SlowReader:
    """Reads ``sub`` in a thread until ``n`` messages arrived (bounded), pausing 1 ms every
    200 messages so that it is slower than the publisher."""

    def __init__(self, sub: pybus.Subscriber, n: int, deadline_s: float = 60.0) -> None:
        self.sub, self.n = sub, n
        self.got: list[pybus.Message] = []
        self.error: BaseException | None = None
        self._deadline = time.monotonic() + deadline_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while len(self.got) < self.n and time.monotonic() < self._deadline:
                batch = self.sub.recv_batch(200, timeout=0.05)
                self.got += batch
                if batch:
                    time.sleep(0.001)
        except BaseException as exc:  # reaches the test through join()
            self.error = exc

    def join(self) -> list[pybus.Message]:
        self._thread.join(timeout=max(1.0, self._deadline - time.monotonic() + 5))
        assert not self._thread.is_alive(), "reader thread hung"
        if self.error is not None:
            raise self.error
        return self.got


def _burst(pub: pybus.Publisher, sub: pybus.Subscriber, n: int = N) -> None:
    """Publish n messages round robin over TOPICS while a slow reader takes them; check that
    all arrived, in order per topic, with no loss, and that acks paced the publisher."""
    before = pub.stats()["published"]
    reader = SlowReader(sub, n)
    for i in range(n):
        pub.publish(TOPICS[i % len(TOPICS)], i.to_bytes(4, "little"))
    pub.flush(timeout=60)
    got = reader.join()
    assert len(got) == n, (len(got), sub.stats(), pub.stats())
    by_topic: dict[str, list[int]] = {}
    for m in got:
        by_topic.setdefault(m.topic, []).append(m.seq)
    for seqs in by_topic.values():
        assert seqs == list(range(1, len(seqs) + 1))
    st, ps = sub.stats(), pub.stats()
    assert st["lost"] == 0 and st["received"] == n
    assert ps["published"] - before == n and sum(ps["dropped"].values()) == 0
    assert ps["evictions"] == 0
    assert ps["acks"] > 0 and st["marks"] > 0
    # the window was what held the publisher back: never more in flight than it allows
    assert ps["in_flight_frames"] <= ps["window_frames"] + 1


def _endpoint(transport: str, tmp_path: Path) -> str:
    return {"inproc": f"inproc://rel-{uuid.uuid4().hex}", "ipc": f"ipc://{tmp_path}/r.ipc",
            "tcp": "tcp://127.0.0.1:*"}[transport]


@pytest.mark.parametrize("transport", ["inproc", "ipc", "tcp"])
@pytest.mark.parametrize("binder", ["publisher", "subscriber"])
def test_paced_burst_arrives_whole(transport: str, binder: str, tmp_path: Path) -> None:
    ep = _endpoint(transport, tmp_path)
    pub = sub = None
    try:
        if binder == "publisher":
            pub = pybus.Publisher(ep, sndhwm=32, registry=False)
            sub = pybus.Subscriber(pub.endpoints[0], topics=["rel.#"], registry=False)
        else:
            sub = pybus.Subscriber(ep, topics=["rel.#"], bind=True, registry=False)
            pub = pybus.Publisher(sub.endpoints[0], connect=True, sndhwm=32, registry=False)
        assert pub.wait_for_subscribers(1, timeout=10) == 1
        _burst(pub, sub)
    finally:
        if sub is not None:
            sub.close()
        if pub is not None:
            pub.close(linger_ms=0)


@pytest.fixture
def keys() -> dict[str, tuple[bytes, bytes]]:
    return {name: pybus.keypair() for name in ("server", "alice")}


def test_paced_burst_under_curve(keys: dict[str, tuple[bytes, bytes]]) -> None:
    srv = Curve.server(keys["server"][1], allow=[keys["alice"][0]], log_interval_s=0)
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=srv, sndhwm=32, registry=False)
    sub = pybus.Subscriber(pub.endpoints[0], topics=["rel.#"], registry=False,
                           security=Curve.client(keys["alice"][1], keys["server"][0]))
    try:
        assert pub.wait_for_subscribers(1, timeout=10) == 1
        _burst(pub, sub)
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_paced_burst_with_per_key_subscribe_permissions(
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    """XPUB manual mode: the publisher applies each subscription itself; the flow topic and
    the hello pass whatever the key's permissions, so acks and marks still flow."""
    alice = keys["alice"]
    srv = Curve.server(keys["server"][1], allow=[alice[0]], log_interval_s=3600,
                       permissions={alice[0]: {"subscribe": ["rel.#"]}})
    pub = pybus.Publisher("tcp://127.0.0.1:*", security=srv, sndhwm=32, registry=False)
    sub = pybus.Subscriber(pub.endpoints[0], topics=["rel.#"], registry=False,
                           security=Curve.client(alice[1], keys["server"][0]))
    try:
        assert pub.wait_for_subscribers(1, timeout=10) == 1
        _burst(pub, sub)
        assert pub.stats()["denied_subscriptions"] == 0
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_late_joiner_with_history_then_paced_live() -> None:
    """A late joiner takes the history snapshot, then live messages paced by the window:
    history plus live, no gap, no duplicate."""
    pub = pybus.Publisher("tcp://127.0.0.1:*", history=20, history_endpoint="tcp://127.0.0.1:*",
                          sndhwm=32, registry=False)
    early = pybus.Subscriber(pub.endpoints[0], topics=["rel.#"], registry=False)
    late: Any = None
    try:
        assert pub.wait_for_subscribers(1, timeout=10) == 1
        for i in range(10):
            pub.publish("rel.hist", i)
        pub.flush(timeout=30)
        got_early = early.recv_batch(100, timeout=10)
        while len(got_early) < 10:
            more = early.recv_batch(100, timeout=10)
            assert more
            got_early += more
        late = pybus.Subscriber(pub.endpoints[0], topics=["rel.#"], registry=False,
                                late_join=True, history_endpoint=pub.history_endpoint)
        assert pub.wait_for_subscribers(2, timeout=10) == 2
        first = late.recv_batch(10, timeout=10)
        assert [m.payload for m in first] == list(range(10))  # the history
        reader_early = SlowReader(early, N)
        _burst(pub, late)
        rest = reader_early.join()
        assert len(rest) == N and early.stats()["lost"] == 0
        assert late.stats()["history_duplicates"] == 0
    finally:
        for s in (early, late):
            if s is not None:
                s.close()
        pub.close(linger_ms=0)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def test_raw_sub_gets_best_effort_and_never_holds_the_publisher(ctx: zmq.Context) -> None:
    """A plain ZeroMQ SUB sends no hello and no acks: it is not paced (and never evicted),
    and a pybus Subscriber beside it still gets everything."""
    pub = pybus.Publisher("tcp://127.0.0.1:*", sndhwm=32, registry=False, context=ctx)
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SUBSCRIBE, b"rel.")
    raw.connect(pub.endpoints[0])
    sub = pybus.Subscriber(pub.endpoints[0], topics=["rel.#"], registry=False, context=ctx)
    try:
        assert pub.wait_for_subscribers(1, timeout=10) == 1
        _burst(pub, sub)  # the raw SUB never reads
        assert pub.stats()["subscribers"] == 1
    finally:
        raw.close(linger=0)
        sub.close()
        pub.close(linger_ms=0)
