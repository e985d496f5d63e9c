"""Work queue: delivery, acks, retries, the DLQ, dedupe, journal, policies, bad arguments."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid

import msgpack
import pytest
import zmq

import pybus
from pybus import (
    CircuitBreaker,
    DeadLetterQueue,
    RateLimiter,
    RetryPolicy,
    ValidationError,
    Worker,
    WorkQueue,
)
from pybus.store.journal import Journal

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
import wqhelpers as H  # noqa: E402

pytestmark = pytest.mark.timeout(30)

EP = "tcp://127.0.0.1:*"


@pytest.fixture
def dlq(tmp_path):
    d = DeadLetterQueue(tmp_path / "dlq.db")
    yield d
    d.close()


class Recorder:
    """A handler that records every call and fails on request."""

    def __init__(self, fail=None):
        self.lock = threading.Lock()
        self.calls = []  # (id, delivery, topic, payload, headers, t)
        self.fail = fail

    def __call__(self, m):
        with self.lock:
            self.calls.append(
                (m.seq, m.publisher_id, m.topic, m.payload, m.headers, time.monotonic())
            )
        if self.fail is not None:
            self.fail(m)

    def ids(self):
        with self.lock:
            return [c[0] for c in self.calls]


def test_put_work_ack_join_roundtrip():
    rec = Recorder()
    with WorkQueue(EP, heartbeat_interval_s=0.2) as q:
        sent = {}
        for i in range(300):
            payload = b"raw-%d" % i if i % 2 else {"i": i, "s": "x" * (i % 7)}
            headers = {"k": i} if i % 3 == 0 else None
            sent[q.put(f"jobs.t{i % 4}", payload, headers=headers)] = (payload, headers)
        ids = q.put_many([("jobs.many", b"m%d" % i) for i in range(200)])
        for i, mid in enumerate(ids):
            sent[mid] = (b"m%d" % i, None)
        assert len(sent) == 500 and len(set(sent)) == 500
        with Worker(q.endpoint, rec, prefetch=64) as w:
            assert q.join(10) is True
            s = q.stats()
            ws = w.stats()
        got = {c[0]: c for c in rec.calls}
        assert sorted(rec.ids()) == sorted(sent)  # each exactly once
        for mid, (payload, headers) in sent.items():
            c = got[mid]
            assert c[1] == 1  # first delivery
            assert c[3] == payload
            assert c[4] == (headers or {})
        assert s["put"] == 500 and s["acked"] == 500 and s["dispatched"] == 500
        assert s["in_flight"] == 0 and s["queue_depth"] == 0 and s["redelivered"] == 0
        assert ws["acked"] == 500 and ws["handled"] == 500


def test_join_times_out_without_workers_and_counts_depth():
    with WorkQueue(EP) as q:
        q.put_many([("a.b", b"x")] * 7)
        t0 = time.monotonic()
        assert q.join(0.2) is False
        assert 0.15 <= time.monotonic() - t0 < 2.0
        assert q.stats()["queue_depth"] == 7
    with WorkQueue(EP) as q:
        assert q.join(0) is True  # nothing put


def test_two_workers_share_the_load_by_credit():
    # Each handler call takes ~0.5 ms of (GIL-free) work, so a worker holding its 50 credits
    # is busy and the dispatcher must hand the rest to the other one.
    def work(m):
        time.sleep(0.0005)

    a, b = Recorder(fail=work), Recorder(fail=work)
    with WorkQueue(EP) as q, Worker(q.endpoint, a, prefetch=50) as wa, \
            Worker(q.endpoint, b, prefetch=50) as wb:
        assert wa.wait_ready(5) and wb.wait_ready(5)
        ids = q.put_many([("x.y", b"p")] * 1000)
        assert q.join(10)
        assert sorted(a.ids() + b.ids()) == sorted(ids)
        # credit 50 each: neither worker can take everything
        assert len(a.ids()) > 100 and len(b.ids()) > 100


def test_retry_then_success_counts_deliveries():
    def fail(m):
        if m.publisher_id < 3:  # deliveries 1 and 2 fail
            raise RuntimeError(f"transient {m.seq}")

    rec = Recorder(fail)
    with WorkQueue(EP, retry=RetryPolicy.fixed(0.01, max_attempts=3)) as q, \
            Worker(q.endpoint, rec):
        ids = q.put_many([("r.t", {"n": i}) for i in range(20)])
        assert q.join(10)
        s = q.stats()
    for mid in ids:
        deliveries = sorted(c[1] for c in rec.calls if c[0] == mid)
        assert deliveries == [1, 2, 3]
    assert s["acked"] == 20 and s["nacked"] == 40 and s["redelivered"] == 40
    assert s["dead_lettered"] == 0


def test_poison_reaches_dlq_after_exactly_max_attempts(dlq):
    def fail(m):
        if m.payload == b"poison":
            raise ValueError("cannot digest")

    rec = Recorder(fail)
    policy = RetryPolicy.exponential(0.01, max_attempts=4)
    with WorkQueue(EP, retry=policy, dlq=dlq) as q, Worker(q.endpoint, rec):
        good = q.put_many([("p.t", b"ok")] * 10)
        t_put = time.time()
        bad = q.put("p.t", b"poison", headers={"h": 1})
        good += q.put_many([("p.t", b"ok")] * 10)
        assert q.join(10)
        s = q.stats()
    assert [c[0] for c in rec.calls].count(bad) == 4  # exactly max_attempts
    assert s["dead_lettered"] == 1 and s["acked"] == 20 and s["nacked"] == 4
    assert len(dlq) == 1
    e = dlq.get(bad)
    assert e is not None
    assert (e.topic, e.payload, e.headers) == ("p.t", b"poison", {"h": 1})
    assert e.error_type == "ValueError" and e.error_message == "cannot digest"
    assert e.error_code == int(pybus.ErrorCode.UNKNOWN)
    assert e.attempts == 4
    assert t_put - 1 <= e.first_failure <= e.last_failure <= time.time()
    assert e.last_failure - e.first_failure >= 0.01 + 0.02 + 0.04 - 0.005
    assert q.endpoint in e.origin


def test_non_retryable_bus_error_goes_to_dlq_at_once(dlq):
    def fail(m):
        raise ValidationError("field x missing; x is required")

    rec = Recorder(fail)
    with WorkQueue(EP, retry=RetryPolicy.fixed(0.01, max_attempts=5), dlq=dlq) as q, \
            Worker(q.endpoint, rec):
        mid = q.put("v.t", {"a": 1})
        assert q.join(10)
    assert len(rec.calls) == 1
    e = dlq.get(mid)
    assert e.error_type == "ValidationError" and e.error_code == 100 and e.attempts == 1
    assert e.payload_format == "msgpack" and e.value == {"a": 1}


def test_dlq_replay_back_into_the_queue(dlq):
    state = {"broken": True}

    def fail(m):
        if state["broken"]:
            raise RuntimeError("down")

    rec = Recorder(fail)
    with WorkQueue(EP, retry=RetryPolicy.fixed(0.001, max_attempts=2), dlq=dlq) as q, \
            Worker(q.endpoint, rec):
        q.put_many([("d.t", {"i": i}) for i in range(5)])
        assert q.join(10)
        assert len(dlq) == 5
        state["broken"] = False
        assert dlq.replay(to=q) == 5
        assert q.join(10)
        assert len(dlq) == 0
    assert len(rec.calls) == 5 * 2 + 5  # two failed attempts each, then one good replay
    assert sorted(c[3]["i"] for c in rec.calls[-5:]) == [0, 1, 2, 3, 4]


def test_redelivery_delay_honours_policy_without_blocking_others():
    first_fail = {}

    def fail(m):
        if m.payload == b"slow" and m.publisher_id == 1:
            first_fail[m.seq] = time.monotonic()
            raise RuntimeError("later")

    rec = Recorder(fail)
    with WorkQueue(EP, retry=RetryPolicy.fixed(0.4, max_attempts=2)) as q, \
            Worker(q.endpoint, rec, prefetch=8) as w:
        assert w.wait_ready(5)
        slow = q.put("t.t", b"slow")
        H.wait_until(lambda: q.stats()["nacked"] == 1, 5, "the nack")
        others = q.put_many([("t.t", b"fast")] * 100)
        assert q.join(10)
    t_retry = [c[5] for c in rec.calls if c[0] == slow and c[1] == 2]
    assert len(t_retry) == 1
    gap = t_retry[0] - first_fail[slow]
    assert 0.4 <= gap < 0.4 + 1.0, gap
    # messages put after the failure were all handled while the retry waited on its timer
    t_others = [c[5] for c in rec.calls if c[0] in set(others)]
    assert len(t_others) == 100 and max(t_others) < t_retry[0]


def test_exponential_schedule_between_deliveries():
    rec = Recorder(lambda m: (_ for _ in ()).throw(RuntimeError("x")) if m.publisher_id < 4
                   else None)
    with WorkQueue(EP, retry=RetryPolicy.exponential(0.05, max_attempts=4)) as q, \
            Worker(q.endpoint, rec):
        mid = q.put("e.t", b"")
        assert q.join(10)
    ts = [c[5] for c in rec.calls if c[0] == mid]
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    assert len(gaps) == 3
    for got, want in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert want <= got < want + 0.5, gaps


def test_dedupe_window_on_a_real_queue():
    """An ack that misses ack_timeout_s makes the queue redeliver; the worker's window
    recognises the copy, acks it without calling the handler, and reports it."""
    q = WorkQueue(EP, ack_timeout_s=0.2, retry=RetryPolicy.fixed(0.01, max_attempts=5))
    calls = []

    def handler(m):
        calls.append(m.seq)
        if len(calls) == 1:  # the first call outlives its ack deadline: wait for the copy
            H.wait_until(lambda: q.stats()["redelivered"] >= 1, 5, "the redelivery")

    try:
        with Worker(q.endpoint, handler, dedupe_window=100) as w:
            mid = q.put("dd.t", b"once")
            assert q.join(10)
            H.wait_until(lambda: q.stats()["duplicates"] == 1, 5, "the duplicate report")
            assert calls == [mid]
            assert w.stats()["duplicates"] == 1
    finally:
        q.close()


def _fake_queue(ctx):
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.rcvtimeo = 5000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, f"tcp://127.0.0.1:{port}"


def _recv_cmd(router, want, timeout=10.0):
    """The next frame whose command is in ``want``, skipping others (heartbeats keep
    arriving, so the socket's rcvtimeo alone would never end the wait)."""
    deadline = time.monotonic() + timeout
    while True:
        ident, frame = router.recv_multipart()
        if H.command(frame) in want:
            return ident, frame
        assert time.monotonic() < deadline, f"no {want!r} frame within {timeout} s"


def test_dedupe_window_is_bounded_and_reported_on_the_wire():
    """A queue written from the wire doc sends ids 1,2,1,3,4,1 to a worker with a window of
    2: the second 1 is a duplicate, the third is not (evicted by 3 and 4)."""
    ctx = zmq.Context()
    router, ep = _fake_queue(ctx)
    seen = []
    w = Worker(ep, lambda m: seen.append(m.seq), dedupe_window=2).start()
    try:
        ident, frame = _recv_cmd(router, "H")
        router.send_multipart([ident, bytes([1, ord("W")]) + (b"\x32\0\0\0\x03\0\0\0" +
                                                              b"\x10\0\0\0")])
        assert w.wait_ready(5)
        acks, dups = [], []
        for mid in (1, 2, 1, 3, 4, 1):
            router.send_multipart([ident, H.dispatch([(mid, 1, "a.b", b"p", 0, None, 0)])])
            _, frame = _recv_cmd(router, "A")
            a, d = H.decode_ack(frame)
            acks += a
            dups += d
        assert seen == [1, 2, 3, 4, 1]
        assert acks == [1, 2, 3, 4, 1] and dups == [1]
        assert w.stats()["duplicates"] == 1
    finally:
        w.stop()
        router.close()
        ctx.term()


def test_worker_speaks_the_documented_wire_format(thread_failures):
    """Drive a real Worker from a ROUTER that encodes/decodes per docs/wire-workqueue.md.

    The handler's own asserts run in the worker's thread, where a failure would only turn
    into a NACK: thread_failures records them and fails this test with their traceback."""
    ctx = zmq.Context()
    router, ep = _fake_queue(ctx)
    handled = []

    @thread_failures.wrap(expected=(pybus.TimeoutError,))
    def handler(m):
        handled.append(m.seq)
        if m.payload == {"boom": True}:
            raise pybus.TimeoutError("backend slow; retry later")
        assert m.topic == "w.t" and m.timestamp_ns == 123
        assert m.publisher_id == (1 if m.seq == 13 else 2)

    w = Worker(ep, handler, prefetch=77).start()
    try:
        ident, frame = _recv_cmd(router, "H")
        assert frame == H.hello(77)
        router.send_multipart([ident, bytes([1, ord("W")]) + (b"\x32\0\0\0\x03\0\0\0\x4d\0\0\0")])
        assert w.wait_ready(5)
        router.send_multipart([ident, H.dispatch([
            (11, 2, "w.t", b"raw", 0, msgpack.packb({"h": "v"}), 123),
            (12, 2, "w.t", msgpack.packb({"boom": True}), 1, None, 123),
        ])])
        _, a = _recv_cmd(router, "A")
        assert H.decode_ack(a) == ([11], [])
        _, n = _recv_cmd(router, "N")
        assert H.decode_nack(n) == [[12, "TimeoutError", "backend slow; retry later", 200, True]]
        _, hb = _recv_cmd(router, "B")  # 50 ms heartbeats, as the WELCOME said
        assert hb == H.heartbeat()
        # a garbage frame from the "queue" is counted, not fatal: the next dispatch is
        # handled and ACKed
        router.send_multipart([ident, b"\x07junk"])
        router.send_multipart([ident, H.dispatch([(13, 1, "w.t", b"x", 0, None, 123)])])
        _, a = _recv_cmd(router, "AN")  # a NACK here would mean the handler failed on 13
        thread_failures.check()
        assert H.command(a) == "A" and H.decode_ack(a) == ([13], [])
        assert handled == [11, 12, 13]
        assert w.stats()["decode_errors"] == 1
    finally:
        w.stop()
        _, bye = _recv_cmd(router, "D")
        assert bye == H.bye()
        router.close()
        ctx.term()


def test_journal_survives_close_and_reopen(tmp_path):
    path = tmp_path / "j.db"
    with WorkQueue(EP, journal=path) as q:
        ids = q.put_many([("j.t", {"i": i}) for i in range(50)])
        ids.append(q.put("j.t", b"last", headers={"x": "y"}))
        assert q.stats()["put"] == 51
    j = Journal(path)
    assert len(j) == 51
    j.close()
    rec = Recorder()
    with WorkQueue(EP, journal=path) as q:
        assert q.stats()["recovered"] == 51
        new = q.put("j.t", b"new")
        assert new not in ids
        with Worker(q.endpoint, rec):
            assert q.join(10)  # recovered messages count toward join
    assert sorted(rec.ids()) == sorted(ids + [new])
    last = [c for c in rec.calls if c[3] == b"last"][0]
    assert last[4] == {"x": "y"}
    j = Journal(path)
    assert len(j) == 0
    j.close()


def test_rate_limit_caps_dispatch_rate():
    rec = Recorder()
    rl = RateLimiter(rate=200, burst=10)
    with WorkQueue(EP, rate_limit=rl) as q, Worker(q.endpoint, rec):
        t0 = time.monotonic()
        q.put_many([("rl.t", b"")] * 60)
        assert q.join(10)
        elapsed = time.monotonic() - t0
    # 10 at once (burst), then 50 at 200/s = 0.25 s at least
    assert elapsed >= 0.24, elapsed
    assert len(rec.calls) == 60


def test_breaker_pauses_dispatch_while_open():
    def fail(m):
        if m.payload == b"bad":
            raise RuntimeError("downstream down")

    rec = Recorder(fail)
    br = CircuitBreaker(failure_threshold=3, reset_timeout_s=0.3)
    with WorkQueue(EP, breaker=br, retry=RetryPolicy.fixed(0.001, max_attempts=1)) as q, \
            Worker(q.endpoint, rec, prefetch=1) as w:
        assert w.wait_ready(5)
        q.put_many([("b.t", b"bad")] * 3)
        H.wait_until(lambda: br.state.value == "open", 5, "breaker open")
        t_open = time.monotonic()
        q.put_many([("b.t", b"good")] * 5)
        assert q.join(10)
    t_good = [c[5] for c in rec.calls if c[3] == b"good"]
    assert len(t_good) == 5 and min(t_good) - t_open >= 0.25
    assert br.state.value == "closed"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda q: q.put("a..b", b""), "has an empty segment"),
        (lambda q: q.put(5, b""), "topic must be a str"),
        (lambda q: q.put("a.b", object()), "msgpack-serialisable"),
        (lambda q: q.put("a.b", b"", headers=[1]), "headers must be a dict"),
        (lambda q: q.put("a.b", b"", headers={1: 2}), "headers must be a dict"),
        (lambda q: q.put_many([("a.b",)]), r"\(topic, payload\)"),
        (lambda q: q.put_many([("a.b", b""), ("bad topic", b"")]), "has the character ' '"),
        (lambda q: q.join(-1), "timeout must be a number >= 0"),
    ],
)
def test_bad_arguments_raise_pybus_errors(call, match):
    with WorkQueue(EP) as q:
        with pytest.raises(pybus.ValidationError, match=match):
            call(q)
        assert q.stats()["put"] == 0  # nothing half-queued


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"endpoint": 5}, "endpoint must be a str"),
        ({"endpoint": "nope://x"}, "endpoints look like"),
        ({"ack_timeout_s": 0}, "ack_timeout_s must be a number > 0"),
        ({"heartbeat_liveness": 0}, r"heartbeat_liveness must be an int in 1\.\.1000"),
        ({"max_in_flight": -1}, "max_in_flight"),
        ({"retry": "often"}, "retry must be a pybus.RetryPolicy"),
        ({"dlq": "dlq.db"}, "dlq must be a pybus.DeadLetterQueue"),
        ({"breaker": 3}, "breaker must be a pybus.CircuitBreaker"),
        ({"rate_limit": 100}, "rate_limit must be a pybus.RateLimiter"),
        ({"journal": "/nonexistent-dir/x.db"}, "cannot open the journal"),
        ({"journal_sync": "sometimes", "journal": "x.db"}, "journal sync"),
    ],
)
def test_bad_constructor_arguments(kwargs, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kw = {"endpoint": EP, **kwargs}
    with pytest.raises(pybus.BusError, match=match):
        WorkQueue(**kw)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"handler": 3}, "handler must be callable"),
        ({"concurrency": 0}, "concurrency must be an int"),
        ({"dedupe_window": -1}, "dedupe_window"),
        ({"prefetch": 0}, "prefetch must be an int"),
        ({"heartbeat_interval_s": -1}, "heartbeat_interval_s must be a number > 0"),
    ],
)
def test_bad_worker_arguments(kwargs, match):
    kw = {"endpoint": "tcp://127.0.0.1:1", "handler": print, **kwargs}
    with pytest.raises(pybus.ValidationError, match=match):
        Worker(**kw)


def test_closed_queue_refuses_puts():
    q = WorkQueue(EP)
    q.close()
    q.close()  # idempotent
    with pytest.raises(pybus.ClosedError):
        q.put("a.b", b"")


def test_backpressure_when_max_queued_reached():
    with WorkQueue(EP, max_queued=10, put_timeout_s=0.1) as q:
        q.put_many([("a.b", b"")] * 10)
        with pytest.raises(pybus.BackpressureError, match="max_queued=10"):
            q.put("a.b", b"")
        rec = Recorder()
        q.put_timeout_s = 10  # room comes once the worker has connected and acked (no timing bet)
        with Worker(q.endpoint, rec):
            q.put("a.b", b"")  # waits for room, then goes
            assert q.join(10)
        assert len(rec.calls) == 11


def test_concurrency_runs_handlers_in_parallel():
    barrier = threading.Barrier(4, timeout=5)
    rec = Recorder(lambda m: barrier.wait())  # needs 4 handlers at once to pass
    with WorkQueue(EP) as q, Worker(q.endpoint, rec, concurrency=4, prefetch=8):
        q.put_many([("c.t", b"")] * 8)
        assert q.join(10)
    assert len(rec.calls) == 8


def test_documented_dispatch_example_decodes_to_a_message():
    from pybus.wire import workqueue as P
    from pybus.workqueue.worker import make_work_message

    frame = bytes.fromhex("01 4D 91 97 05 01 A3 61 2E 62 C4 02 68 69 00 C0 01")
    (entry,) = P.parse_dispatch(frame)
    m = make_work_message(entry)
    assert isinstance(m, pybus.Message)
    assert (m.seq, m.publisher_id, m.topic, m.payload, m.headers, m.timestamp_ns) == (
        5, 1, "a.b", b"hi", {}, 1)
    with pytest.raises(pybus.FrameError, match="version 2"):
        P.command(b"\x02M" + frame[2:])


def test_journal_keeps_exactly_the_unfinished_messages(tmp_path):
    """A worker written from the wire doc acks some messages of a batch and nacks another
    into the DLQ; after a restart only the rest come back, with their payloads."""
    import sqlite3

    path = tmp_path / "j.db"
    ctx = zmq.Context()
    d = DeadLetterQueue(tmp_path / "dlq.db")
    try:
        with WorkQueue(EP, journal=path, dlq=d, retry=RetryPolicy.fixed(0.001, max_attempts=1),
                       heartbeat_interval_s=0.05) as q:
            ids = q.put_many([("jk.t", b"%d" % i) for i in range(10)])
            single = q.put("jk.t", {"one": 1})
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            s.rcvtimeo = 5000
            s.connect(q.endpoint)
            s.send(H.hello(100))
            got = []
            while len(got) < 11:
                f = s.recv()
                if H.command(f) == "M":
                    got += [e[0] for e in H.decode_dispatch(f)]
            s.send(H.ack(ids[:3], [ids[3]]))  # 3 acks + 1 reported duplicate
            s.send(H.nack([(ids[4], "ValueError", "bad", 1, False)]))
            s.send(H.ack([single]))
            H.wait_until(lambda: q.stats()["acked"] == 5 and q.stats()["dead_lettered"] == 1,
                         5, "acks processed")
            s.close()
        j = Journal(path)
        left = {mid: (t, p) for _, _, rows in j.recover() for mid, t, p, *_ in rows}
        j.close()
        assert sorted(left) == ids[5:]
        assert all(left[m] == ("jk.t", b"%d" % i) for i, m in enumerate(ids) if i >= 5)
        assert d.get(ids[4]).error_message == "bad"
        rec = Recorder()
        with WorkQueue(EP, journal=path) as q, Worker(q.endpoint, rec):
            assert q.stats()["recovered"] == 5
            assert q.join(10)
        assert sorted(rec.ids()) == ids[5:]
        db = sqlite3.connect(path)
        assert db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM acks").fetchone()[0] == 0
        db.close()
    finally:
        d.close()
        ctx.term()


# ---- option spellings: units in names, old names deprecated for one release -----------------


def _no_warning(make):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spellings say nothing
        return make()


def test_queue_heartbeat_interval_s_and_its_deprecated_alias():
    with _no_warning(lambda: WorkQueue(EP, heartbeat_interval_s=0.3, registry=False)) as q:
        assert q.heartbeat_interval_s == 0.3
        with pytest.warns(DeprecationWarning, match=r"WorkQueue\.heartbeat_interval .*"
                          r"use \.heartbeat_interval_s"):
            assert q.heartbeat_interval == 0.3
    with pytest.warns(DeprecationWarning, match=r"WorkQueue\(heartbeat_interval=\) is "
                      r"deprecated: use heartbeat_interval_s="):
        q = WorkQueue(EP, heartbeat_interval=0.25, registry=False)
    with q:
        assert q.heartbeat_interval_s == 0.25
        # the queue tells workers the value it was given under the old name
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.rcvtimeo = 5000
        s.connect(q.endpoint)
        s.send(H.hello(10))
        assert H.decode_welcome(s.recv())[0] == 250
        s.close()
        ctx.term()
    with pytest.warns(DeprecationWarning), pytest.raises(ValidationError,
                                                         match="pass heartbeat_interval_s= only"):
        WorkQueue(EP, heartbeat_interval=0.5, heartbeat_interval_s=0.2)


@pytest.mark.parametrize("old, new, value, read", [
    ("heartbeat_interval", "heartbeat_interval_s", 0.3, lambda w: w._hb_s),
    ("ack_flush_interval", "ack_flush_interval_s", 0.01, lambda w: w.ack_flush_interval_s),
])
def test_worker_interval_options_and_their_deprecated_aliases(old, new, value, read):
    w = _no_warning(lambda: Worker(EP, print, registry=False, **{new: value}))
    assert read(w) == value
    w.stop()
    with pytest.warns(DeprecationWarning, match=rf"Worker\({old}=\) is deprecated: use {new}="):
        w = Worker(EP, print, registry=False, **{old: value})
    assert read(w) == value
    w.stop()
    with pytest.warns(DeprecationWarning), pytest.raises(ValidationError,
                                                         match=f"pass {new}= only"):
        Worker(EP, print, **{old: value, new: 2 * value})


def test_worker_ack_flush_interval_attribute_alias():
    w = Worker(EP, print, ack_flush_interval_s=0.02, registry=False)
    with pytest.warns(DeprecationWarning, match=r"Worker\.ack_flush_interval .*"
                      r"use \.ack_flush_interval_s"):
        assert w.ack_flush_interval == 0.02
    w.stop()


# ---- context= --------------------------------------------------------------------------------


def test_queue_and_workers_share_a_given_context_over_inproc():
    ctx = zmq.Context()
    rec = Recorder()
    ep = f"inproc://wq-shared-{uuid.uuid4().hex}"
    try:
        q = WorkQueue(ep, context=ctx, registry=False)
        w = Worker(ep, rec, context=ctx, registry=False).start()
        try:
            assert q._ctx is ctx and w._ctx is ctx
            ids = q.put_many([("ctx.t", b"%d" % i) for i in range(50)])
            assert q.join(10)
            assert sorted(rec.ids()) == ids
        finally:
            w.stop()
            q.close()
        assert not ctx.closed  # the caller's context: never terminated by pybus
        # another queue can still use it (on a new name: ZeroMQ releases a closed socket's
        # inproc name asynchronously)
        with WorkQueue(f"{ep}-2", context=ctx, registry=False) as q2:
            assert q2.put("ctx.t", b"again")
    finally:
        # returns only once every socket pybus opened on the context is closed (a leak would
        # hang it: the test's timeout would fail it)
        ctx.term()


def test_a_worker_stopped_before_it_served_leaves_a_given_context_alone():
    ctx = zmq.Context()
    w = Worker(EP, print, context=ctx, registry=False)
    w.stop()
    assert not ctx.closed
    ctx.term()


def test_private_contexts_are_terminated():
    q = WorkQueue(EP, registry=False)
    w = Worker(q.endpoint, print, registry=False).start()
    assert w.wait_ready(10)
    w.stop()
    q.close()
    assert q._ctx.closed and w._ctx.closed


@pytest.mark.parametrize("make", [
    lambda ctx: WorkQueue(EP, context=ctx),
    lambda ctx: Worker(EP, print, context=ctx),
])
def test_a_bad_context_is_refused(make):
    with pytest.raises(ValidationError, match="context must be a zmq.Context"):
        make("ctx")
    dead = zmq.Context()
    dead.term()
    with pytest.raises(ValidationError, match="terminated zmq.Context"):
        make(dead)


def test_a_queue_that_cannot_bind_leaves_a_given_context_alone():
    ctx = zmq.Context()
    with WorkQueue("inproc://wq-taken", context=ctx, registry=False):
        with pytest.raises(pybus.BusError, match="cannot bind"):
            WorkQueue("inproc://wq-taken", context=ctx, registry=False)
    assert not ctx.closed
    ctx.term()
