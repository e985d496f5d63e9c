"""Publisher / Subscriber over real ZeroMQ sockets: API, transports, topics, order, policies."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pybus

pytestmark = pytest.mark.timeout(60)
BIG_HWM = 100_000


def _endpoint(kind: str, tmp_path: Path) -> str:
    if kind == "inproc":
        return f"inproc://pubsub-{uuid.uuid4().hex}"
    if kind == "ipc":
        return f"ipc://{tmp_path}/ps-{uuid.uuid4().hex[:8]}"
    return "tcp://127.0.0.1:*"


def _inproc(name: str) -> str:
    """A fresh inproc endpoint: names are global to the shared ``Context.instance()``."""
    return f"inproc://{name}-{uuid.uuid4().hex}"


def _collect(sub: pybus.Subscriber, n: int, timeout: float = 10.0) -> list[pybus.Message]:
    out: list[pybus.Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"got {len(out)} of {n} messages; stats {sub.stats()}"
        out += sub.recv_batch(n - len(out), timeout=remaining)
    return out


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[pybus.Publisher, pybus.Subscriber]]:
    # tests read after publishing: queues that hold everything (drops: test_pubsub_accounting)
    pub = pybus.Publisher("tcp://127.0.0.1:*", sndhwm=BIG_HWM)
    sub = pybus.Subscriber(pub.endpoints, topics=["orders.*", "audit.#"], rcvhwm=BIG_HWM)
    pub.wait_for_subscribers(1, timeout=5)
    yield pub, sub
    sub.close()
    pub.close(linger_ms=0)


def test_message_fields_bytes_msgpack_headers(
    pair: tuple[pybus.Publisher, pybus.Subscriber],
) -> None:
    pub, sub = pair
    t0 = time.time_ns()
    pub.publish("orders.created", b"raw-bytes")
    pub.publish("orders.created", {"id": 7, "items": [1, 2]}, headers={"k": "v", "n": 3})
    pub.publish("orders.created", bytearray(b"ba"))
    pub.publish("orders.created", memoryview(b"mv"))
    pub.publish("orders.created", "a str goes as msgpack")
    pub.flush()
    msgs = _collect(sub, 5)
    t1 = time.time_ns()
    assert [m.topic for m in msgs] == ["orders.created"] * 5
    assert msgs[0].payload == b"raw-bytes" and not msgs[0].is_msgpack
    assert msgs[0].headers == {}
    assert msgs[1].payload == {"id": 7, "items": [1, 2]} and msgs[1].is_msgpack
    assert msgs[1].headers == {"k": "v", "n": 3}
    assert msgs[2].payload == b"ba" and msgs[3].payload == b"mv"
    assert msgs[4].payload == "a str goes as msgpack"
    assert [m.seq for m in msgs] == [1, 2, 3, 4, 5]
    assert {m.publisher_id for m in msgs} == {pub.publisher_id}
    for m in msgs:
        assert t0 <= m.timestamp_ns <= t1
    st = sub.stats()
    assert st["received"] == 5 and st["received_by_topic"] == {"orders.created": 5}
    assert st["lost"] == 0 and st["decode_errors"] == 0


@pytest.mark.parametrize("kind", ["inproc", "ipc", "tcp"])
@pytest.mark.parametrize("sub_binds", [False, True], ids=["pub-binds", "sub-binds"])
def test_transports_and_bind_directions(kind: str, sub_binds: bool, tmp_path: Path) -> None:
    ep = _endpoint(kind, tmp_path)
    # everything in one thread: a bound subscriber must attach the connecting publisher while
    # the publisher waits (the library pokes bound subscribers)
    if sub_binds:
        sub = pybus.Subscriber(ep, topics=["t.#"], bind=True, rcvhwm=BIG_HWM)
        pub = pybus.Publisher(sub.endpoints, connect=True, sndhwm=BIG_HWM)
    else:
        pub = pybus.Publisher(ep, sndhwm=BIG_HWM)
        sub = pybus.Subscriber(pub.endpoints, topics=["t.#"], rcvhwm=BIG_HWM)
    try:
        assert pub.wait_for_subscribers(1, timeout=5) == 1
        n = 5000
        for i in range(n):
            pub.publish("t.x", i.to_bytes(4, "little"))
        pub.flush()
        msgs = _collect(sub, n)
        assert [int.from_bytes(m.payload, "little") for m in msgs] == list(range(n))
        assert [m.seq for m in msgs] == list(range(1, n + 1))
        assert sub.stats()["lost"] == 0
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_one_subscriber_several_publishers() -> None:
    pubs = [pybus.Publisher("tcp://127.0.0.1:*") for _ in range(3)]
    sub = pybus.Subscriber([p.endpoints[0] for p in pubs], topics=["#"])
    try:
        for p in pubs:
            p.wait_for_subscribers(1, timeout=5)
        for k, p in enumerate(pubs):
            for i in range(100):
                p.publish("same.topic", bytes([k, i]))
            p.flush()
        msgs = _collect(sub, 300)
        by_pub: dict[int, list[pybus.Message]] = {}
        for m in msgs:
            by_pub.setdefault(m.publisher_id, []).append(m)
        assert set(by_pub) == {p.publisher_id for p in pubs}
        for k, p in enumerate(pubs):
            got = by_pub[p.publisher_id]
            assert [m.seq for m in got] == list(range(1, 101))  # per-publisher streams
            assert [m.payload for m in got] == [bytes([k, i]) for i in range(100)]
        assert sub.stats()["streams"] == 3 and sub.stats()["lost"] == 0
        # subscriber connected later to a fourth publisher
        extra = pybus.Publisher("tcp://127.0.0.1:*")
        sub.connect(extra.endpoints[0])
        extra.wait_for_subscribers(1, timeout=5)
        extra.publish("same.topic", b"late")
        assert sub.recv(timeout=5).payload == b"late"
        extra.close(linger_ms=0)
    finally:
        sub.close()
        for p in pubs:
            p.close(linger_ms=0)


def test_wildcards_filter_exactly(pair: tuple[pybus.Publisher, pybus.Subscriber]) -> None:
    pub, sub = pair  # topics orders.* and audit.#
    topics = [
        ("orders.created", True),
        ("orders", False),  # '*' needs exactly one segment
        ("orders.a.b", False),  # ZeroMQ's prefix lets it through; the local match rejects it
        ("ordersX.created", False),
        ("audit", True),
        ("audit.x", True),
        ("audit.x.y.z", True),
        ("auditor.x", False),
        ("other.x", False),
    ]
    for t, _ in topics:
        pub.publish(t, t.encode())
    pub.publish("orders.end", b"end")
    pub.flush()
    got = []
    while not got or got[-1] != "orders.end":
        got.append(sub.recv(timeout=5).topic)
    assert got[:-1] == [t for t, ok in topics if ok]


def test_subscribe_unsubscribe_at_run_time(pair: tuple[pybus.Publisher, pybus.Subscriber]) -> None:
    pub, sub = pair
    sub.subscribe("metrics.*")
    assert "metrics.*" in sub.patterns
    # handshake by data: publish until the new subscription reaches the publisher
    deadline = time.monotonic() + 5
    while True:
        pub.publish("metrics.probe", b"p")
        pub.flush()
        batch = sub.recv_batch(100, timeout=0.05)
        if any(m.topic == "metrics.probe" for m in batch):
            break
        assert time.monotonic() < deadline, "run-time subscription never took effect"
    for i in range(10):
        pub.publish("metrics.cpu", bytes([i]))
    pub.publish("orders.mark", b"m")
    pub.flush()
    got = []
    while not got or got[-1].topic != "orders.mark":
        got.append(sub.recv(timeout=5))
    cpu = [m for m in got if m.topic == "metrics.cpu"]
    assert [m.payload for m in cpu] == [bytes([i]) for i in range(10)]

    sub.unsubscribe("metrics.*")
    assert "metrics.*" not in sub.patterns
    # from now on nothing on metrics.* is delivered, even if the publisher still sends it
    for i in range(10):
        pub.publish("metrics.cpu", bytes([i]))
    pub.publish("orders.mark", b"m2")
    pub.flush()
    got = []
    while not got or got[-1].payload != b"m2":
        got.append(sub.recv(timeout=5))
    assert all(m.topic != "metrics.cpu" for m in got)
    with pytest.raises(pybus.TopicError, match="not subscribed"):
        sub.unsubscribe("metrics.*")
    with pytest.raises(pybus.TopicError):
        sub.subscribe("bad..pattern")


def test_per_topic_order_and_consecutive_seqs_under_load(
    pair: tuple[pybus.Publisher, pybus.Subscriber],
) -> None:
    pub, sub = pair
    n = 30_000
    topics = ["orders.a", "orders.b", "audit.c"]
    for i in range(n):
        pub.publish(topics[i % 3], i.to_bytes(4, "little"))
    pub.flush()
    msgs = _collect(sub, n)
    for t in topics:
        mine = [m for m in msgs if m.topic == t]
        assert [m.seq for m in mine] == list(range(1, len(mine) + 1))
        idx = [int.from_bytes(m.payload, "little") for m in mine]
        assert idx == sorted(idx) and len(idx) == n // 3
    st = pub.stats()
    assert st["published"] == n and st["pending"] == 0
    assert st["batches"] < n // 3, "under load messages should share frames"


def test_tail_of_burst_is_sent_without_flush(
    pair: tuple[pybus.Publisher, pybus.Subscriber],
) -> None:
    pub, sub = pair
    # no flush(): the flusher thread must send whatever the last publish left pending
    for i in range(2000):
        pub.publish("orders.tail", bytes([i % 256]))
    msgs = _collect(sub, 2000, timeout=5)
    assert msgs[-1].seq == 2000


def test_flusher_sends_a_tail_once_publishing_paused_even_after_more_appends() -> None:
    # A paced publisher: bursts separated by pauses longer than idle_us. The flusher must send
    # a burst's tail once the *last* publish is idle_us old, even though records were appended
    # after the one that armed it (the old rule, "no append since arming", never fired for such
    # a publisher, so each tail waited for the next burst's max_delay_us).
    # idle_us of 0.3 s: "still publishing" must hold on a slow machine too (no speed bet)
    pub = pybus.Publisher(f"inproc://tick-{uuid.uuid4().hex}", idle_us=300_000, max_delay_us=1e6)
    try:
        pub._wake.set = lambda: None  # type: ignore[method-assign]  # drive _tick by hand
        pub.publish("t", b"a")  # READY: a publisher that never sent anything sends at once
        b = pub._batcher
        pub.publish("t", b"b")  # PENDING: just drained; this arms the flusher
        pub.publish("t", b"c")  # publishing went on after the arming
        assert b.pending_records == 2 and b.last_append_ns > 0
        assert pub._tick(pub._first_tick_s) is not None  # still publishing: back off
        assert b.pending_records == 2
        deadline = time.monotonic() + 5
        while time.time_ns() - b.last_append_ns < 300_000_000:  # publishing pauses for idle_us
            assert time.monotonic() < deadline
            time.sleep(0.0002)
        assert pub._tick(pub._first_tick_s) is None  # paused: sent, nothing left to watch
        assert b.pending_records == 0
        assert pub.stats()["batches"] == 2
    finally:
        del pub._wake.set  # close() wakes the flusher to stop it: let it
        pub.close(linger_ms=0)


def test_flusher_stays_armed_while_the_publisher_drains_by_itself() -> None:
    # Under sustained load the publishing thread sends its own frames; a backing-off flusher
    # that finds nothing pending must stay armed (not be re-armed and woken at every frame),
    # and disarm once publishing has paused.
    # idle_us of 0.3 s: "publishing goes on" holds on a slow machine too (no speed bet)
    pub = pybus.Publisher(f"inproc://armed-{uuid.uuid4().hex}", idle_us=300_000,
                          max_delay_us=1e6)
    try:
        pub._wake.set = lambda: None  # type: ignore[method-assign]  # drive _tick by hand
        b = pub._batcher
        first = pub._first_tick_s
        pub.publish("t", b"a")
        pub.publish("t", b"b")  # pending: arms the flusher
        assert pub._armed
        backed_off = pub._tick(first)  # publishing goes on: back off
        # (backs off: the period grows, here capped at once by the 0.3 s first tick)
        assert backed_off is not None and backed_off >= first and pub._backing_off
        pub.flush()  # the publishing thread drained by itself
        assert b.pending_records == 0
        assert not pub._paused(b)
        nxt = pub._tick(backed_off)
        assert nxt is not None and nxt >= backed_off and pub._armed
        deadline = time.monotonic() + 5
        while not pub._paused(b):
            assert time.monotonic() < deadline
            time.sleep(0.0002)
        assert pub._tick(backed_off) is None and not pub._armed  # paused: disarm
    finally:
        del pub._wake.set  # close() wakes the flusher to stop it: let it
        pub.close(linger_ms=0)


def test_batcher_last_append_ns_follows_appends() -> None:
    b = pybus.wire.Batcher()
    assert b.last_append_ns == 0
    tid = b.topic_id(b"t")
    now = pybus.wire.Batcher.now_ns()
    b.append_at(tid, b"x", now + 5)
    assert b.last_append_ns == now + 5
    b.drain()
    assert b.last_append_ns == now + 5  # a drain does not move it
    b.publish("t", b"y")
    assert now <= b.last_append_ns <= pybus.wire.Batcher.now_ns()


def test_idle_publisher_sends_each_message_at_once(
    pair: tuple[pybus.Publisher, pybus.Subscriber],
) -> None:
    pub, sub = pair
    for i in range(5):
        pub.publish("orders.one", bytes([i]))
        assert sub.recv(timeout=5).payload == bytes([i])  # no flush, no linger
    assert pub.stats()["batches"] == 5


def test_linger_us_holds_batches_open() -> None:
    # a 0.5 s linger: the 50 publishes below fit in it on any machine
    ep = _inproc("linger-test")
    pub = pybus.Publisher(ep, batch_hold_us=500_000)
    try:
        sub = pybus.Subscriber(ep, topics=["t"])
    except BaseException:
        pub.close(linger_ms=0)
        raise
    try:
        pub.wait_for_subscribers(1, timeout=5)
        pub.publish("t", b"first")  # a publisher that never sent anything sends at once
        assert sub.recv(timeout=5).payload == b"first"
        t0 = time.monotonic()
        for i in range(50):
            pub.publish("t", bytes([i]))
        msgs = _collect(sub, 50, timeout=5)  # sent by the flusher after batch_hold_us
        assert time.monotonic() - t0 >= 0.45
        assert [m.payload for m in msgs] == [bytes([i]) for i in range(50)]
        assert pub.stats()["batches"] == 2
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_iteration_recv_timeouts_and_batches(
    pair: tuple[pybus.Publisher, pybus.Subscriber],
) -> None:
    pub, sub = pair
    t0 = time.monotonic()
    with pytest.raises(pybus.TimeoutError):
        sub.recv(timeout=0.05)
    assert sub.recv_batch(timeout=0.05) == []
    assert 0.09 <= time.monotonic() - t0 < 2
    for i in range(30):
        pub.publish("orders.it", bytes([i]))
    pub.flush()
    first = sub.recv(timeout=5)
    assert first.payload == b"\x00"
    got = [first.payload]
    for msg in sub:
        got.append(msg.payload)
        if len(got) == 30:
            break
    assert got == [bytes([i]) for i in range(30)]
    # leaving a for loop early keeps the rest buffered
    for i in range(5):
        pub.publish("orders.it", bytes([i]))
    pub.flush()
    for msg in sub:
        assert msg.payload == b"\x00"
        break
    assert [m.payload for m in _collect(sub, 4)] == [bytes([i]) for i in range(1, 5)]
    with pytest.raises(pybus.ValidationError):
        sub.recv_batch(0)
    # max_messages splits a frame; the rest stays buffered, in order
    for i in range(10):
        pub.publish("orders.split", bytes([i]))
    pub.flush()
    a = _collect(sub, 3)  # recv_batch(<= 3) until 3: the 9-message frame gets split
    assert len(a) == 3
    b = _collect(sub, 7)
    assert [m.payload for m in a + b] == [bytes([i]) for i in range(10)]


def test_max_message_bytes_refused_at_publish() -> None:
    with pybus.Publisher(_inproc("mmb"), max_message_bytes=1000) as pub:
        pub.publish("t", b"x" * 1000)
        with pytest.raises(pybus.ValidationError, match="max_message_bytes=1000"):
            pub.publish("t", b"x" * 1001)
        with pytest.raises(pybus.ValidationError, match="max_message_bytes"):
            pub.publish("t", b"x" * 990, headers={"pad": "y" * 20})
        with pytest.raises(pybus.TopicError, match="empty segment"):
            pub.publish("a..b", b"x")
        with pytest.raises(pybus.TopicError, match="wildcard"):
            pub.publish("a.*", b"x")
        assert pub.stats()["published"] == 1


def test_backpressure_raise_and_drop() -> None:
    kw = dict(capacity_bytes=4096, max_message_bytes=512, batch_hold_us=1_000_000)
    with pybus.Publisher(_inproc("bp-raise"), on_full="raise", **kw) as pub:
        accepted = 0
        with pytest.raises(pybus.BackpressureError, match="ring is full"):
            for _ in range(1000):
                pub.publish("t", b"x" * 100)
                accepted += 1
        assert 0 < accepted < 1000
        st = pub.stats()
        assert st["pending"] + st["published"] == accepted
    with pybus.Publisher(_inproc("bp-drop"), on_full="drop", **kw) as pub:
        for _ in range(1000):
            assert pub.publish("t", b"x" * 100) is None
        st = pub.stats()
        assert st["pending"] + st["published"] + st["dropped"]["ring_full"] == 1000
        assert st["dropped"]["ring_full"] > 0


def test_backpressure_block_flushes_then_times_out(tmp_path: Path) -> None:
    ep = _endpoint("ipc", tmp_path)
    pub = pybus.Publisher(
        ep,
        on_full="block",
        block_timeout_s=0.2,
        capacity_bytes=4096,
        max_message_bytes=512,
        batch_hold_us=1_000_000,
    )
    sub = pybus.Subscriber(ep, topics=["t"])
    try:
        pub.wait_for_subscribers(1, timeout=5)
        for i in range(1000):  # the ring holds ~30; 'block' sends and retries, nothing is lost
            pub.publish("t", i.to_bytes(2, "little") * 50)
        pub.flush()
        msgs = _collect(sub, 1000)
        assert [m.seq for m in msgs] == list(range(1, 1001))
        assert pub.stats()["dropped"]["ring_full"] == 0
        # another thread holds the send lock (a send that cannot finish): block times out
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with pub._send_lock:
                held.set()
                release.wait(5)

        th = threading.Thread(target=hold)
        th.start()
        held.wait(5)
        t0 = time.monotonic()
        with pytest.raises(pybus.BackpressureError, match="block_timeout_s"):
            for _ in range(1000):
                pub.publish("t", b"y" * 100)
        assert 0.15 < time.monotonic() - t0 < 3
        release.set()
        th.join()
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_wait_for_subscribers_counts_and_times_out() -> None:
    pub = pybus.Publisher("tcp://127.0.0.1:*")
    try:
        t0 = time.monotonic()
        with pytest.raises(pybus.TimeoutError, match="0 of 1 subscribers"):
            pub.wait_for_subscribers(1, timeout=0.1)
        assert time.monotonic() - t0 < 2
        s1 = pybus.Subscriber(pub.endpoints, topics=["a"])
        s2 = pybus.Subscriber(pub.endpoints, topics=["a"])  # same topic: still two hellos
        assert pub.wait_for_subscribers(2, timeout=5) == 2
        s1.close()
        deadline = time.monotonic() + 5  # the unsubscription arrives when s1's pipe ends
        while pub.stats()["subscribers"] != 1:
            assert time.monotonic() < deadline, pub.stats()
            pub._sock.poll(10)
        s2.close()
    finally:
        pub.close(linger_ms=0)


def test_close_is_bounded_and_idempotent(tmp_path: Path) -> None:
    ep = _endpoint("tcp", tmp_path)
    # reliable: close() waits for the window, so at most until the stalled subscriber is
    # evicted (slow_consumer_timeout_s), then hands the rest to ZeroMQ
    pub = pybus.Publisher(ep, sndhwm=4, slow_consumer_timeout_s=0.5)
    stalled = pybus.Subscriber(pub.endpoints, topics=["#"], rcvhwm=4)  # never reads
    pub.wait_for_subscribers(1, timeout=5)
    for _ in range(50_000):
        pub.publish("t", b"z" * 64)
    t0 = time.monotonic()
    pub.close(linger_ms=100)
    assert time.monotonic() - t0 < 0.5 + 3
    assert pub.stats()["evictions"] == 1 and pub.stats()["dropped"]["closed"] == 0
    pub.close()
    assert pub.closed
    with pytest.raises(pybus.ClosedError):
        pub.publish("t", b"x")
    with pytest.raises(pybus.ClosedError):
        pub.flush()
    stalled.close()
    stalled.close()
    with pytest.raises(pybus.ClosedError):
        stalled.recv(timeout=0)


def test_close_sends_pending_and_context_managers() -> None:
    ep = _inproc("cm")
    with pybus.Subscriber(ep, topics=["t"], bind=True) as sub:
        with pybus.Publisher(ep, connect=True, batch_hold_us=1_000_000) as pub:
            pub.wait_for_subscribers(1, timeout=5)
            pub.publish("t", b"first")  # sent at once: the publisher never sent before
            assert sub.recv(timeout=5).payload == b"first"
            for i in range(10):
                pub.publish("t", bytes([i]))
            assert pub.stats()["pending"] == 10  # held by batch_hold_us
        assert pub.closed
        assert [m.payload for m in _collect(sub, 10)] == [bytes([i]) for i in range(10)]
    assert sub.closed


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(pybus.ValidationError, match="on_full"):
        pybus.Publisher(_inproc("x1"), on_full="wait")  # type: ignore[arg-type]
    with pytest.raises(pybus.ValidationError, match="endpoint"):
        pybus.Publisher("")
    with pytest.raises(pybus.ValidationError, match="tcp://HOST:PORT"):
        pybus.Publisher("nonsense://x")
    with pytest.raises(pybus.TopicError):
        pybus.Subscriber(_inproc("x2"), topics=["a.#.b"])
    with pytest.raises(pybus.ValidationError):
        pybus.Subscriber([], topics=["a"])
    with pybus.Publisher("tcp://127.0.0.1:*") as p:
        with pytest.raises(pybus.TransportError):
            pybus.Publisher(p.endpoints[0])  # address in use


def test_closing_subscriber_from_another_thread_ends_iteration() -> None:
    ep = _inproc("iter-close")
    with pybus.Publisher(ep) as pub:
        sub = pybus.Subscriber(ep, topics=["t"])
        got: list[bytes] = []
        started = threading.Event()

        def consume() -> None:
            started.set()
            for m in sub:
                got.append(m.payload)

        th = threading.Thread(target=consume)
        try:
            pub.wait_for_subscribers(1, timeout=5)
            th.start()
            started.wait(5)
            pub.publish("t", b"one")
            deadline = time.monotonic() + 5
            while not got:
                assert time.monotonic() < deadline
                time.sleep(0.001)
        finally:
            sub.close()
            if th.ident is not None:
                th.join(5)
        assert not th.is_alive() and got == [b"one"]


def test_publisher_from_several_threads() -> None:
    # the subscriber reads only afterwards: queues big enough to hold everything
    ep = _inproc("mt")
    with pybus.Publisher(ep, sndhwm=BIG_HWM) as pub, \
            pybus.Subscriber(ep, topics=["#"], rcvhwm=BIG_HWM) as sub:
        pub.wait_for_subscribers(1, timeout=5)
        n = 20_000

        def work(k: int) -> None:
            for i in range(n):
                pub.publish(f"t{k}", i.to_bytes(4, "little"))

        ths = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(50)
        assert not any(t.is_alive() for t in ths)
        pub.flush()
        msgs = _collect(sub, 3 * n)
        for k in range(3):
            mine = [m for m in msgs if m.topic == f"t{k}"]
            assert [int.from_bytes(m.payload, "little") for m in mine] == list(range(n))
            assert [m.seq for m in mine] == list(range(1, n + 1))
