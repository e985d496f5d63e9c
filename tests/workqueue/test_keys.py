"""Per-key ordering in the work queue (issue 15 item 3): one message of a key at a time, in put
order, across workers, through failures, lost workers and a restart on the journal; other keys
go on meanwhile."""

from __future__ import annotations

import os
import sys

import pytest
import zmq

import pybus
from pybus import RetryPolicy, WorkQueue

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import wqhelpers as H  # noqa: E402

WAIT = 30.0


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


def test_one_message_per_key_in_flight_in_put_order_while_other_keys_go_on(ctx) -> None:
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=60.0, registry=False)
    socks: list[zmq.Socket] = []
    try:
        ids = {k: [q.put("k.t", b"%s%d" % (k.encode(), i), key=k) for i in range(4)]
               for k in ("x", "y", "z")}
        plain = q.put("k.t", b"plain")
        socks = [H.fake_worker(ctx, q.endpoint, credit=100) for _ in range(2)]
        # plenty of credit, yet one message per key goes out, plus the unkeyed one
        H.wait_until(lambda: q.stats()["in_flight"] == 4, what="4 in flight")
        assert q.stats()["keys_waiting"] == 9 and q.stats()["keys_held"] == 3
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        handled: list[int] = []
        while len(handled) < 13:
            out: dict[int, zmq.Socket] = {}
            for s, _ in poller.poll(int(WAIT * 1000)):
                frame = s.recv()
                if H.command(frame) == "M":
                    out.update((e[0], s) for e in H.decode_dispatch(frame))
            assert out, "nothing dispatched"
            # at no moment does a key have two messages out
            keys_out = [k for k, v in ids.items() for mid in out if mid in v]
            assert len(keys_out) == len(set(keys_out)), keys_out
            for mid, s in out.items():
                s.send(H.ack([mid]))
            handled += out
        for v in ids.values():
            assert [m for m in handled if m in v] == v  # put order per key
        assert plain in handled
        H.wait_until(lambda: q.stats()["keys_held"] == 0, what="every key let go")
        assert q.stats()["keys_waiting"] == 0
    finally:
        for s in socks:
            s.close()
        q.close()


def _nack(mid: int) -> bytes:
    return H.nack([(mid, "ValueError", "boom", int(pybus.ErrorCode.UNKNOWN), True)])


def test_a_failure_blocks_its_key_until_the_retry_is_acked(ctx) -> None:
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=60.0, registry=False,
                  retry=RetryPolicy.fixed(0.05, max_attempts=5))
    w = None
    try:
        x = [q.put("k.t", b"x%d" % i, key="x") for i in range(3)]
        y = [q.put("k.t", b"y%d" % i, key="y") for i in range(3)]
        w = H.fake_worker(ctx, q.endpoint, credit=100)
        first = {e[0] for e in H.take(w, 2)}
        assert first == {x[0], y[0]}
        w.send(_nack(x[0]))
        w.send(H.ack([y[0]]))
        # y goes on; x's next waits for x[0]'s retry, which comes back first
        seen = [e[0] for e in H.take(w, 2)]
        assert sorted(seen) == sorted([y[1], x[0]]), seen
        assert q.stats()["blocked_keys"] == 1
        assert ("pybus_queue_blocked_keys", {}, 1) in list(q.metrics_samples())
        w.send(H.ack([x[0], y[1]]))
        rest = []
        while len(rest) < 3:
            got = [e[0] for e in H.take(w, 1)]
            rest += got
            w.send(H.ack(got))
        assert [m for m in rest if m in x] == x[1:] and [m for m in rest if m in y] == y[2:]
        assert q.join(WAIT)
        assert q.stats()["blocked_keys"] == 0
    finally:
        if w is not None:
            w.close()
        q.close()


def test_continue_lets_the_key_go_on_and_the_retry_queues_behind(ctx) -> None:
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=60.0, registry=False,
                  retry=RetryPolicy.fixed(0.3, max_attempts=5), on_key_failure="continue")
    w = None
    try:
        x = [q.put("k.t", b"x%d" % i, key="x") for i in range(3)]
        w = H.fake_worker(ctx, q.endpoint, credit=100)
        assert [e[0] for e in H.take(w, 1)] == [x[0]]
        w.send(_nack(x[0]))
        order = []
        while len(order) < 3:
            got = [e[0] for e in H.take(w, 1)]
            assert len(got) == 1  # still one at a time
            order += got
            w.send(H.ack(got))
        # x1 went on at once; x0's retry (due after 0.3 s) queued behind x2 at the latest
        assert order[0] == x[1] and sorted(order) == sorted(x)
        assert q.join(WAIT)
    finally:
        if w is not None:
            w.close()
        q.close()


def test_a_dead_lettered_message_passes_its_key_on(ctx, tmp_path) -> None:
    dlq = pybus.DeadLetterQueue(str(tmp_path / "dlq.db"))
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=60.0, registry=False, dlq=dlq,
                  retry=RetryPolicy.fixed(0.01, max_attempts=2))
    w = None
    try:
        x = [q.put("k.t", b"x%d" % i, key="x") for i in range(2)]
        w = H.fake_worker(ctx, q.endpoint, credit=100)
        for _ in range(2):  # two attempts, both failed
            assert [e[0] for e in H.take(w, 1)] == [x[0]]
            w.send(_nack(x[0]))
        assert [e[0] for e in H.take(w, 1)] == [x[1]]
        w.send(H.ack([x[1]]))
        assert q.join(WAIT) and len(dlq) == 1
    finally:
        if w is not None:
            w.close()
        q.close()
        dlq.close()


def test_a_lost_workers_message_keeps_its_key_and_goes_first(ctx) -> None:
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=60.0, registry=False)
    a = b = None
    try:
        x = [q.put("k.t", b"x%d" % i, key="x") for i in range(3)]
        a = H.fake_worker(ctx, q.endpoint, credit=100)
        assert [e[0] for e in H.take(a, 1)] == [x[0]]
        a.send(H.bye())  # gone without acking x0
        b = H.fake_worker(ctx, q.endpoint, credit=100)
        order = []
        while len(order) < 3:
            got = [e[0] for e in H.take(b, 1)]
            order += got
            b.send(H.ack(got))
        assert order == x
        assert q.join(WAIT)
    finally:
        for s in (a, b):
            if s is not None:
                s.close()
        q.close()


def test_keys_survive_a_restart_on_the_journal(ctx, tmp_path) -> None:
    journal = str(tmp_path / "keys.db")
    with WorkQueue("tcp://127.0.0.1:*", journal=journal, registry=False) as q:
        ids = {k: [q.put("k.t", b"%d" % i, key=k) for i in range(5)] for k in ("p", "q")}
    q = WorkQueue("tcp://127.0.0.1:*", journal=journal, heartbeat_interval_s=60.0,
                  registry=False)
    w = None
    try:
        assert q.stats()["recovered"] == 10 and q.stats()["keys_waiting"] == 8
        w = H.fake_worker(ctx, q.endpoint, credit=100)
        order: list[int] = []
        while len(order) < 10:
            got = [e[0] for e in H.take(w, 1)]
            assert len(got) <= 2
            order += got
            w.send(H.ack(got))
        for v in ids.values():
            assert [m for m in order if m in v] == v
    finally:
        if w is not None:
            w.close()
        q.close()


def test_bad_keys_and_options_are_refused_with_what_is_allowed() -> None:
    with WorkQueue("tcp://127.0.0.1:*", registry=False) as q:
        # the limit is in UTF-8 bytes: 65 four-byte characters are 260 bytes
        for bad in ("", 42, b"k", "x" * 257, "\U0001F600" * 65, "é" * 129):
            with pytest.raises(pybus.ValidationError, match="key must be a non-empty str"):
                q.put("k.t", b"", key=bad)
        for good in ("x" * 256, "\U0001F600" * 64, "é" * 128, "k"):
            q.put("k.t", b"", key=good)
    with pytest.raises(pybus.ValidationError, match="on_key_failure must be one of"):
        WorkQueue("tcp://127.0.0.1:*", registry=False, on_key_failure="skip")
