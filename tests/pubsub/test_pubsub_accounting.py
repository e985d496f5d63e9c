"""Loss accounting, bounded memory and bad input: every message is delivered or counted."""

from __future__ import annotations

import logging
import struct
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import zmq

import pybus
from pybus.pubsub._base import HELLO_PREFIX

pytestmark = pytest.mark.timeout(90)


def _ipc(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/acc-{uuid.uuid4().hex[:8]}"


def _drain_until_sentinels(
    pub: pybus.Publisher, sub: pybus.Subscriber, topics: list[str], calls: dict[str, int]
) -> list[pybus.Message]:
    """Publish numbered sentinels and read until the newest one of every topic arrived.

    Sentinels dropped at a high-water mark are themselves counted as lost when a later one
    arrives; the last message of every stream is then a delivered sentinel, so no tail gap
    can hide.
    """
    got: list[pybus.Message] = []
    last_sent: dict[str, bytes] = {}
    newest: dict[str, bytes] = {}
    deadline = time.monotonic() + 20
    k = 0
    while True:
        assert time.monotonic() < deadline, (sub.stats(), pub.stats())
        k += 1
        for t in topics:
            if newest.get(t) != last_sent.get(t, b"?"):
                last_sent[t] = b"END%d" % k
                pub.publish(t, last_sent[t])
                calls[t] += 1
        pub.flush()
        batch = sub.recv_batch(100_000, timeout=0.05)
        got += batch
        for m in batch:
            newest[m.topic] = m.payload
        if all(newest.get(t) == last_sent[t] for t in topics):
            return got


def test_forced_hwm_drops_are_all_accounted(tmp_path: Path) -> None:
    """A stalled subscriber with tiny HWMs loses frames at the publisher's HWM; after it
    resumes, published - delivered == dropped + detected-lost, exactly, per topic."""
    ep = _ipc(tmp_path)
    topics = ["acc.a", "acc.b"]
    # best effort on purpose: this test forces drops at a tiny HWM (reliable delivery, the
    # default, would pace the publisher to the stalled subscriber instead)
    pub = pybus.Publisher(ep, delivery="best_effort", sndhwm=2, max_batch_records=64)
    gaps: list[tuple[str, int, int, int, int]] = []
    sub = pybus.Subscriber(ep, topics=["acc.*"], rcvhwm=2, on_gap=lambda *a: gaps.append(a))
    try:
        pub.wait_for_subscribers(1, timeout=5)
        calls = dict.fromkeys(topics, 0)
        delivered: list[pybus.Message] = []
        for t in topics:  # warm-up: the subscriber has seen every stream before the stall
            # until one arrives: a queue of 2 frames drops some (position frames and the join
            # snapshot, docs/wire.md, share it); what is dropped is counted all the same
            deadline = time.monotonic() + 10
            while not any(m.topic == t for m in delivered):
                assert time.monotonic() < deadline, (delivered, sub.stats())
                pub.publish(t, b"warm")
                calls[t] += 1
                pub.flush()
                delivered += sub.recv_batch(timeout=0.1)
        # the stall: 200k messages while the subscriber reads nothing
        for i in range(100_000):
            for t in topics:
                pub.publish(t, b"%08d" % i)
        for t in topics:
            calls[t] += 100_000
        pub.flush()
        delivered += _drain_until_sentinels(pub, sub, topics, calls)
        st = sub.stats()
        pst = pub.stats()
        total_calls = sum(calls.values())
        assert pst["published"] == total_calls and pst["dropped"]["ring_full"] == 0
        assert st["lost"] > 0, "the test did not force any drop"
        assert total_calls - len(delivered) == pst["dropped"]["ring_full"] + st["lost"]
        for t in topics:
            mine = [m for m in delivered if m.topic == t]
            assert calls[t] - len(mine) == st["lost_by_topic"].get(t, 0)
            seqs = [m.seq for m in mine]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert seqs[-1] == calls[t]  # the last message is a delivered sentinel
        assert sum(g[4] for g in gaps) == st["lost"]
        for _topic, pid, expected, got_seq, lost in gaps:
            assert pid == pub.publisher_id and got_seq - expected == lost > 0
        assert st["out_of_order"] == 0 and st["decode_errors"] == 0
    finally:
        sub.close()
        pub.close(linger_ms=0)


@pytest.mark.parametrize("read_after_s", [0.0, 2.5])
def test_lost_last_messages_are_counted_from_position_frames(
    tmp_path: Path, read_after_s: float
) -> None:
    """No sentinels: the publisher stops after a burst the stalled subscriber could not hold.
    The messages dropped at the end of each stream show no gap, since nothing follows them;
    the publisher's position frames reveal them, and the books balance exactly, also when the
    subscriber comes back seconds later (the positions sent meanwhile were dropped too: the
    later repeats get through)."""
    ep = _ipc(tmp_path)
    topics = ["tail.a", "tail.b"]
    # best effort on purpose: the test forces drops at a tiny HWM (a reliable publisher, the
    # default, would wait for the stalled subscriber instead of dropping)
    pub = pybus.Publisher(ep, delivery="best_effort", sndhwm=2, max_batch_records=64)
    sub = pybus.Subscriber(ep, topics=["tail.*"], rcvhwm=2)
    try:
        pub.wait_for_subscribers(1, timeout=5)
        delivered: list[pybus.Message] = []
        warm = {t: 0 for t in topics}
        for t in topics:  # the subscriber has seen every stream before the stall
            # until one arrives: a queue of 2 frames drops some (position frames and the join
            # snapshot, docs/wire.md, share it); what is dropped is counted all the same
            deadline = time.monotonic() + 10
            while not any(m.topic == t for m in delivered):
                assert time.monotonic() < deadline, (delivered, sub.stats())
                pub.publish(t, b"warm")
                warm[t] += 1
                pub.flush()
                delivered += sub.recv_batch(timeout=0.1)
        # Stalled for seconds, the subscriber should lose every stream's last frame, but the
        # drop point is ZeroMQ's and the kernel's to choose (a busy machine has delivered the
        # tails): the burst is repeated, at most 3 times, until the stall dropped them. Each
        # burst's books are checked in full.
        bursts = 1 if read_after_s == 0 else 3
        for burst in range(1, bursts + 1):
            for i in range(50_000):
                for t in topics:
                    pub.publish(t, b"%08d" % i)
            pub.flush()
            time.sleep(read_after_s)  # the subscriber is still stalled: not a handshake
            total = sum(warm.values()) + burst * 2 * 50_000
            deadline = time.monotonic() + 20
            while len(delivered) + sub.stats()["lost"] < total:
                assert time.monotonic() < deadline, (len(delivered), sub.stats(), pub.stats())
                delivered += sub.recv_batch(100_000, timeout=0.05)
            st, pst = sub.stats(), pub.stats()
            assert pst["published"] == total and st["lost"] > 0
            assert len(delivered) + st["lost"] == total
            tail_lost = []
            for t in topics:
                seqs = [m.seq for m in delivered if m.topic == t]
                assert seqs == sorted(set(seqs))
                assert len(seqs) + st["lost_by_topic"][t] == warm[t] + burst * 50_000
                tail_lost.append(seqs[-1] < warm[t] + burst * 50_000)
            # a stream whose last message was dropped shows no gap: only a position frame
            # can have counted its tail. Read at once, the subscriber may catch every
            # stream's last frame (then the gaps alone balance the books).
            if any(tail_lost):
                assert st["positions"] > 0
            if all(tail_lost):
                break
        if read_after_s > 0:
            assert all(tail_lost), "3 stalls did not drop the streams' last messages"
        # what the stream's last position said: nothing after it, no double count
        assert sub.recv_batch(timeout=0.3) == [] and sub.stats()["lost"] == st["lost"]
        assert st["out_of_order"] == 0 and st["decode_errors"] == 0
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_ring_full_drops_and_hwm_drops_add_up(tmp_path: Path) -> None:
    """on_full='drop' with a tiny ring (batches held open by batch_hold_us) plus a stalled
    subscriber: both kinds of loss, and the books still balance exactly."""
    ep = _ipc(tmp_path)
    # best effort on purpose: HWM drops are forced (a reliable publisher, the default, would
    # hold them back in the window and count them as dropped["backpressure"] instead)
    pub = pybus.Publisher(
        ep,
        delivery="best_effort",
        on_full="drop",
        capacity_bytes=8192,
        max_message_bytes=256,
        batch_hold_us=2_000,
        sndhwm=2,
    )
    sub = pybus.Subscriber(ep, topics=["#"], rcvhwm=2)
    try:
        pub.wait_for_subscribers(1, timeout=5)
        calls = {"r.a": 1}
        pub.publish("r.a", b"warm")
        delivered = sub.recv_batch(timeout=5)
        assert len(delivered) == 1
        for i in range(50_000):
            pub.publish("r.a", b"%06d" % i)
        calls["r.a"] += 50_000
        pub.flush()
        delivered += _drain_until_sentinels(pub, sub, ["r.a"], calls)
        st, pst = sub.stats(), pub.stats()
        dropped = pst["dropped"]["ring_full"]
        assert dropped > 0, "the ring never filled"
        assert calls["r.a"] - len(delivered) == dropped + st["lost"]
        # a ring-full drop uses no sequence number: only HWM losses are gaps
        assert pst["published"] == calls["r.a"] - dropped
        assert delivered[-1].seq == pst["published"]
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_burst_of_many_small_frames_arrives_whole_with_default_settings(tmp_path: Path) -> None:
    """2,000 topics, one 4 KiB message each, published as one burst: 2,000 frames (about
    8 MB, more than the kernel's socket buffers hold and more than the default high-water
    marks in frames) all reach a subscriber that reads concurrently, with the default
    settings (reliable delivery): ZeroMQ counts its queues in frames, and many small frames
    must not be second-class there (the first message of a stream could not even show as a
    gap). The window paces the publisher to the reader; nothing is lost."""
    ep = _ipc(tmp_path)
    pub = pybus.Publisher(ep)  # the defaults are the point
    sub = pybus.Subscriber(ep, topics=["burst.#"])
    topics = [f"burst.t{i:04d}" for i in range(2000)]
    payload = b"b" * 4096
    got: list[pybus.Message] = []
    stop = threading.Event()

    def reader() -> None:
        # bounded: a message lost for good ends it too (as a gap or from a position frame; the
        # loss of a stream's first and only message shows as neither: the deadline ends it)
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            got.extend(sub.recv_batch(timeout=0.1))
            if len(got) + sub.stats()["lost"] >= len(topics):
                return

    t = threading.Thread(target=reader, daemon=True)
    try:
        assert pub.delivery == "reliable"
        assert len(topics) > pub.sndhwm and len(topics) > sub.rcvhwm  # frames beyond the HWMs
        pub.wait_for_subscribers(1, timeout=5)
        t.start()
        for tp in topics:
            pub.publish(tp, payload)
        pub.flush(timeout=30)
        t.join(30)
        assert not t.is_alive()
        pst = pub.stats()
        assert pst["batches"] == len(topics)  # one frame per topic: the worst case
        assert pst["published"] == len(topics) and sum(pst["dropped"].values()) == 0
        assert len(got) == len(topics), (len(got), sub.stats(), pst)
        assert sorted(m.topic for m in got) == topics
        assert all(m.seq == 1 and m.payload == payload for m in got)
        st = sub.stats()
        assert st["received"] == len(topics) and st["lost"] == 0 and st["batches"] == len(topics)
        assert st["decode_errors"] == 0 and st["out_of_order"] == 0
    finally:
        stop.set()
        if t.is_alive():
            t.join(5)
        sub.close()
        pub.close(linger_ms=0)


def test_rss_flat_for_publisher_and_idle_subscriber(tmp_path: Path) -> None:
    """A publisher feeding a subscriber that never reads: the process RSS stays flat."""
    ep = _ipc(tmp_path)
    proc = psutil.Process()
    # best effort on purpose: the subscriber never reads, and the bound under test is the
    # HWMs' (tests/pubsub/test_pubsub_reliable.py checks RSS with the reliable default)
    pub = pybus.Publisher(ep, delivery="best_effort", sndhwm=16)
    sub = pybus.Subscriber(ep, topics=["#"], rcvhwm=16)  # never reads
    try:
        pub.wait_for_subscribers(1, timeout=5)
        payload = b"m" * 64
        publish = pub.publish
        for _ in range(100_000):
            publish("rss.t", payload)
        pub.flush()
        rss_100k = proc.memory_info().rss
        t0 = time.monotonic()
        n = 100_000
        # 2.5 M messages (160 MB of payload) or 20 s, whichever comes first (no minimum
        # count: a slow machine publishes fewer, and the bound is on growth per message sent)
        while n < 2_500_000 and time.monotonic() - t0 < 20:
            for _ in range(100_000):
                publish("rss.t", payload)
            n += 100_000
        pub.flush()
        grown = proc.memory_info().rss - rss_100k
        # queues: 16 + 16 frames of <= 64 KiB (the default max_batch_bytes), plus kernel buffers
        # and allocator slack (per-thread malloc arenas); unbounded growth would be >= 160 MB
        assert grown < 48 << 20, f"RSS grew by {grown / 2**20:.1f} MiB after {n} messages"
        assert pub.stats()["published"] == n
    finally:
        sub.close()
        pub.close(linger_ms=0)


def _valid_frame(pid: int, first: int, payloads: list[bytes]) -> bytes:
    return pybus.wire.encode_frame(pid, first, [(p, None, 0, time.time_ns()) for p in payloads])


def test_garbage_frames_are_counted_logged_once_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.XPUB)  # a foreign publisher that misbehaves
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = pybus.Subscriber(f"tcp://127.0.0.1:{port}", topics=["g.#"], log_interval_s=3600)
    try:
        # handshake: wait for the subscriber's hello subscription on the raw XPUB
        deadline = time.monotonic() + 5
        while True:
            assert raw.poll(int(max(1, (deadline - time.monotonic()) * 1000)))
            if raw.recv()[1:].startswith(HELLO_PREFIX):
                break
        pid = 0x1234
        good1 = _valid_frame(pid, 1, [b"a", b"b"])
        good2 = _valid_frame(pid, 3, [b"c"])
        good3 = _valid_frame(pid, 4, [b"d", b"e"])
        bad_version = bytearray(good2)
        bad_version[2] = 2
        huge_len = bytearray(good2)
        struct.pack_into("<I", huge_len, 32, 0xFFFFFFF0)  # payload_len runs past the end
        huge_count = bytearray(good2)
        struct.pack_into("<I", huge_count, 4, 0x7FFFFFFF)
        bad = [
            [b"g.x", b"garbage bytes that are no frame at all........"],
            [b"g.x", bytes(bad_version)],
            [b"g.x", good2[:-1]],  # truncated
            [b"g.x", bytes(huge_len)],
            [b"g.x", bytes(huge_count)],
            [b"g.x", b""],
            [b"g.x"],  # one frame only
            [b"g.x", good2, b"extra"],  # three frames
            [b"g.bad topic!", good2],  # topic frame is not a topic
        ]
        with caplog.at_level(logging.WARNING, logger="pybus.subscriber"):
            raw.send_multipart([b"g.x", good1])
            for parts in bad:
                raw.send_multipart(parts)
            raw.send_multipart([b"g.x", good2])
            raw.send_multipart([b"g.x", good3])
            got: list[pybus.Message] = []
            deadline = time.monotonic() + 5
            while len(got) < 5:
                assert time.monotonic() < deadline, sub.stats()
                got += sub.recv_batch(timeout=1)
        assert [m.payload for m in got] == [b"a", b"b", b"c", b"d", b"e"]
        assert [m.seq for m in got] == [1, 2, 3, 4, 5]
        st = sub.stats()
        assert st["decode_errors"] == len(bad)
        assert st["lost"] == 0  # skipped frames advance nothing
        warnings = [r for r in caplog.records if r.name == "pybus.subscriber"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # rate-limited
        assert "malformed" in warnings[0].getMessage()
        assert any("version" in k for k in st["decode_errors_by_reason"])
    finally:
        sub.close()
        raw.close(linger=0)


def test_oversized_frames_are_refused_on_receipt() -> None:
    """MAXMSGSIZE: ZeroMQ refuses a frame larger than the subscriber allows and drops the
    connection of the peer that sent it; other publishers keep delivering."""
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.XPUB)  # a foreign publisher that ignores the size bounds
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    monitor = raw.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    good = pybus.Publisher("tcp://127.0.0.1:*")
    sub = pybus.Subscriber(
        [f"tcp://127.0.0.1:{port}", good.endpoints[0]],
        topics=["big"],
        max_message_bytes=1000,
        max_batch_bytes=1000,
    )
    try:
        assert sub.max_frame_bytes == 1000 + pybus.pubsub.FRAME_OVERHEAD_BYTES
        good.wait_for_subscribers(1, timeout=5)
        deadline = time.monotonic() + 5
        while not raw.recv()[1:].startswith(HELLO_PREFIX):
            assert time.monotonic() < deadline
        raw.send_multipart([b"big", _valid_frame(1, 1, [b"x" * (sub.max_frame_bytes + 1)])])
        assert monitor.poll(5000), "ZeroMQ did not drop the peer that sent an oversized frame"
        good.publish("big", b"fine")
        got = sub.recv_batch(timeout=5)
        assert [m.payload for m in got] == [b"fine"]
        assert sub.recv_batch(timeout=0.05) == []  # the oversized frame never arrives
    finally:
        sub.close()
        good.close(linger_ms=0)
        monitor.close(linger=0)
        raw.close(linger=0)


def test_duplicates_and_reordering_are_counted() -> None:
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.XPUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = pybus.Subscriber(f"tcp://127.0.0.1:{port}", topics=["d"])
    try:
        deadline = time.monotonic() + 5
        while not raw.recv()[1:].startswith(HELLO_PREFIX):
            assert time.monotonic() < deadline
        raw.send_multipart([b"d", _valid_frame(9, 1, [b"1", b"2", b"3"])])
        raw.send_multipart([b"d", _valid_frame(9, 2, [b"2", b"3"])])  # duplicates
        raw.send_multipart([b"d", _valid_frame(9, 10, [b"10"])])  # 6 lost (4..9)
        got: list[pybus.Message] = []
        while len(got) < 6:
            assert time.monotonic() < deadline
            got += sub.recv_batch(timeout=1)
        st = sub.stats()
        assert st["out_of_order"] == 2 and st["lost"] == 6 and st["lost_by_topic"] == {"d": 6}
    finally:
        sub.close()
        raw.close(linger=0)
