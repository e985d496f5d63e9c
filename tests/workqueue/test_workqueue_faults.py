"""Work-queue faults: SIGKILLed workers and producers, silent workers, garbage frames."""

from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import msgpack
import pytest
import zmq

import pybus.workqueue._core
import pybus.workqueue.queue
from pybus import DeadLetterQueue, RetryPolicy, Worker, WorkQueue

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
import wqhelpers as H  # noqa: E402
import wqprocs  # noqa: E402
from waiting import TimeStub, until  # noqa: E402

pytestmark = pytest.mark.timeout(60)
#: Bounds of the waits for an event: generous, so that only a missing event reaches them.
WAIT = 20.0

SPAWN = mp.get_context("spawn")


@pytest.fixture
def ipc_dir():
    # ipc paths must stay short (sun_path is ~107 bytes): a fresh dir under /tmp
    d = tempfile.mkdtemp(prefix="pbwq")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _kill(p):
    if p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
    p.join(10)


def test_worker_sigkilled_mid_batch_loses_nothing(tmp_path, ipc_dir):
    dlq = DeadLetterQueue(tmp_path / "dlq.db")
    q = WorkQueue(
        f"ipc://{ipc_dir}/wq",
        retry=RetryPolicy.fixed(0.01, max_attempts=3),
        dlq=dlq,
        heartbeat_interval_s=0.1,
        heartbeat_liveness=3,
    )
    rec = [str(tmp_path / f"w{i}.ids") for i in range(3)]
    procs = []
    try:
        good = q.put_many([("k.t", b"job-%d" % i) for i in range(3000)])
        poison = [q.put("k.t", b"poison-%d" % i) for i in range(5)]
        good += q.put_many([("k.t", b"job-b%d" % i) for i in range(1000)])
        for i in (0, 1):
            p = SPAWN.Process(target=wqprocs.worker_proc, args=(q.endpoint, rec[i], 100, 2e-4))
            p.start()
            procs.append(p)
        # kill worker 0 once it is well into its work, while it holds unacked messages
        H.wait_until(lambda: len(wqprocs.read_ids(rec[0])) >= 300, 30, "worker 0 progress")
        H.wait_until(lambda: q.stats()["in_flight"] > 0, WAIT, "messages in flight")
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].join(10)
        p = SPAWN.Process(target=wqprocs.worker_proc, args=(q.endpoint, rec[2], 100, 2e-4))
        p.start()
        procs.append(p)
        assert q.join(40), q.stats()
        s = q.stats()
        handled = set()
        for r in rec:
            handled.update(wqprocs.read_ids(r))
        assert set(good) <= handled  # every message processed at least once
        assert not set(poison) & handled
        assert sorted(e.id for e in dlq.list(limit=100)) == sorted(poison)  # only the poison
        assert all(e.attempts == 3 and e.error_type == "ValueError" for e in dlq.list())
        assert s["workers_lost"] >= 1 and s["redelivered"] >= 1
        assert s["acked"] + s["dead_lettered"] == len(good) + len(poison)
    finally:
        for p in procs:
            _kill(p)
        q.close()
        dlq.close()


def test_producer_sigkilled_and_restarted_on_its_journal_loses_nothing(tmp_path, ipc_dir):
    journal = str(tmp_path / "journal.db")
    endpoint = f"ipc://{ipc_dir}/prod"
    handled: list[int] = []
    lock = threading.Lock()

    killed = threading.Event()

    def handler(m):
        with lock:
            handled.append(m.seq)
            n = len(handled)
        if n >= 200:
            # the worker stalls until the producer is killed, so a backlog is left in the
            # journal at the kill however fast each side is
            killed.wait(WAIT)

    parent, child = SPAWN.Pipe()
    p = SPAWN.Process(target=wqprocs.producer_proc, args=(endpoint, journal, 3000, child))
    p.start()
    w = None
    q = None
    try:
        assert parent.poll(30)
        assert parent.recv()[0] == "ready"
        w = Worker(endpoint, handler, prefetch=50, heartbeat_interval_s=0.1).start()
        reported: list[int] = []
        while len(reported) < 1500:
            assert parent.poll(20), "producer stalled"
            reported.append(parent.recv())
        os.kill(p.pid, signal.SIGKILL)  # mid-stream, puts still going
        p.join(10)
        killed.set()
        while parent.poll(0):  # ids reported just before the kill
            v = parent.recv()
            if isinstance(v, int):
                reported.append(v)
        q = WorkQueue(endpoint, journal=journal, heartbeat_interval_s=0.1)
        recovered = q.stats()["recovered"]
        assert recovered > 0
        assert q.join(WAIT * 2), q.stats()
        with lock:
            got = set(handled)
        assert set(reported) <= got, f"lost {len(set(reported) - got)} messages"
        assert w.stats()["sessions"] >= 2  # the worker re-registered with the new queue
    finally:
        killed.set()
        _kill(p)
        if w is not None:
            w.stop()
        if q is not None:
            q.close()


def _raw_dealer(ctx, endpoint):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvtimeo = 5000
    s.connect(endpoint)
    return s


def _recv_until(sock: zmq.Socket, cmd: str, timeout: float = WAIT) -> bytes:
    return H.recv_until(sock, cmd, timeout)


def test_silent_worker_is_presumed_dead_and_its_messages_redelivered():
    ctx = zmq.Context()
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=0.05, heartbeat_liveness=3)
    fake = _raw_dealer(ctx, q.endpoint)
    real = None
    try:
        # the last frame the fake ever sends: the queue hears it after this instant, so its
        # silence is measured from a later one
        t_last = time.monotonic()
        fake.send(H.hello(1000))
        hb_ms, liveness, credit = H.decode_welcome(_recv_until(fake, "W"))
        assert (hb_ms, liveness, credit) == (50, 3, 1000)
        ids = q.put_many([("hb.t", b"%d" % i) for i in range(100)])
        taken = []
        while len(taken) < 100:  # the fake takes everything, then falls silent
            taken += [e[0] for e in H.decode_dispatch(_recv_until(fake, "M"))]
        assert sorted(taken) == sorted(ids)
        assert until(lambda: q.stats()["workers_lost"] >= 1, WAIT)
        # not before 3 missed heartbeats (a lower bound only: a slow machine notices later)
        assert time.monotonic() - t_last >= 0.05 * 3
        assert q.stats()["in_flight"] == 0  # all 100 are back in the queue
        seen = []
        real = Worker(q.endpoint, lambda m: seen.append(m.seq)).start()
        assert q.join(WAIT)
        # exact counts are in the fake-clock test below; here the real worker, once
        # registered, might itself miss a (short) heartbeat window on a loaded machine
        assert set(seen) == set(ids)
        s = q.stats()
        assert s["workers_lost"] >= 1 and s["redelivered"] >= 100 and s["ack_timeouts"] == 0
    finally:
        if real is not None:
            real.stop()
        fake.close()
        q.close()
        ctx.term()


def _freeze_queue_clock(monkeypatch, clock):
    """The WorkQueue's dispatcher reads time.monotonic() of pybus.workqueue.queue (its socket
    loop, which passes the reading to the dispatcher core's decisions): make that the fake
    clock, which moves only when the test advances it. Set before the queue starts."""
    # were the clock read another way, the patch would do nothing and these tests would
    # silently run on real time again: say so instead
    src = inspect.getsource(pybus.workqueue.queue)
    assert "time.monotonic()" in src and "from time import" not in src, \
        "pybus.workqueue.queue no longer reads time.monotonic(): update _freeze_queue_clock"
    core_src = inspect.getsource(pybus.workqueue._core)
    assert "monotonic" not in core_src and "from time import" not in core_src, \
        "pybus.workqueue._core reads a clock of its own: freeze it too in _freeze_queue_clock"
    monkeypatch.setattr(pybus.workqueue.queue, "time", TimeStub(monotonic=clock))


def test_dead_worker_decision_on_a_fake_clock(monkeypatch, clock):
    """Presumed dead exactly when silent for more than heartbeat_interval_s * heartbeat_liveness
    of the queue's clock: not a moment before, however slow the machine."""
    _freeze_queue_clock(monkeypatch, clock)
    ctx = zmq.Context()
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=0.05, heartbeat_liveness=3)
    fake = _raw_dealer(ctx, q.endpoint)
    real = None
    try:
        fake.send(H.hello(1000))  # heard at the fake clock's t0; the fake is silent after it
        _recv_until(fake, "W")
        ids = q.put_many([("hb.t", b"%d" % i) for i in range(100)])
        taken = []
        while len(taken) < 100:
            taken += [e[0] for e in H.decode_dispatch(_recv_until(fake, "M"))]
        assert sorted(taken) == sorted(ids)
        clock.advance(0.14)  # t0 + 0.14: heartbeats are due, and 0.14 < 3 x 0.05
        # the queue's heartbeat proves its housekeeping ran at t0 + 0.14 (none is due before),
        # and that the liveness check of that pass kept the fake
        _recv_until(fake, "B")
        s = q.stats()
        assert s["workers_lost"] == 0 and s["workers"] == 1 and s["in_flight"] == 100
        # t0 + 0.19: past 0.15 (but short of 4 intervals), and not before the next
        # housekeeping pass, which comes at most one heartbeat interval after the last one
        clock.advance(0.05)
        assert until(lambda: q.stats()["workers_lost"] == 1, WAIT)
        s = q.stats()
        assert s["workers"] == 0 and s["in_flight"] == 0 and s["queue_depth"] == 100
        # the queue's clock stays frozen now: the real worker cannot miss a heartbeat window
        seen = []
        real = Worker(q.endpoint, lambda m: seen.append(m.seq)).start()
        assert until(lambda: q.join(0), WAIT)  # join(0): q.join(t) reads the frozen clock
        assert sorted(seen) == sorted(ids)
        s = q.stats()
        assert s["workers_lost"] == 1 and s["redelivered"] == 100 and s["ack_timeouts"] == 0
    finally:
        if real is not None:
            real.stop()
        fake.close()
        q.close()
        ctx.term()


def test_ack_deadline_redelivers_from_a_live_but_stuck_worker(monkeypatch, clock):
    # On the queue's fake clock the real worker is registered before the ack deadline
    # passes, however slow the machine. Both workers stay alive: a silence of 100 heartbeat
    # intervals (5 s of the fake clock) is never reached.
    _freeze_queue_clock(monkeypatch, clock)
    ctx = zmq.Context()
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=0.05, heartbeat_liveness=100,
                  ack_timeout_s=0.3, retry=RetryPolicy.fixed(0.001, max_attempts=3))
    fake = _raw_dealer(ctx, q.endpoint)
    real = None
    try:
        fake.send(H.hello(1000))
        _recv_until(fake, "W")
        ids = q.put_many([("ad.t", b"")] * 20)
        taken = 0
        while taken < 20:
            taken += len(H.decode_dispatch(_recv_until(fake, "M")))
        seen = []
        real = Worker(q.endpoint, lambda m: seen.append((m.seq, m.publisher_id))).start()
        assert real.wait_ready(WAIT)
        assert until(lambda: q.stats()["workers"] == 2, WAIT)
        # the fake stays alive (it heartbeats) and never acks
        clock.advance(0.29)  # t0 + 0.29: short of the ack deadline
        fake.send(H.heartbeat())
        _recv_until(fake, "B")  # the queue's heartbeat: a housekeeping pass at t0 + 0.29 ...
        assert q.stats()["ack_timeouts"] == 0  # ... expired nothing (read after it began)
        # t0 + 0.34: past the deadline, and not before the next housekeeping pass, which
        # comes at most one heartbeat interval after the last one
        clock.advance(0.05)
        fake.send(H.heartbeat())
        assert until(lambda: q.stats()["ack_timeouts"] == 20, WAIT)
        clock.advance(0.01)  # past the retry delay (0.001 s)
        assert until(lambda: q.join(0), WAIT)  # join(0): q.join(t) reads the frozen clock
        s = q.stats()
        assert sorted(m for m, _ in seen) == sorted(ids)
        assert all(d == 2 for _, d in seen)  # second delivery
        assert s["ack_timeouts"] == 20 and s["workers_lost"] == 0 and s["workers"] == 2
    finally:
        if real is not None:
            real.stop()
        fake.close()
        q.close()
        ctx.term()


GARBAGE = [
    [b""],  # too short
    [b"\x01"],  # too short
    [b"\x02H\x10\x00\x00\x00"],  # unknown version
    [b"\x01Z"],  # unknown command
    [b"\x01A\x05\x00\x00\x00\x00\x00\x00\x00"],  # ACK announcing 5 ids, carrying none
    [b"\x01B", b"extra frame"],  # multipart
    [b"\x01N\xc1"],  # NACK body is not msgpack (0xc1 is never used)
    [b"\x01N" + msgpack.packb([[1, 2]])],  # NACK entry of the wrong shape
    [b"\x01H\x00\x00\x00\x00"],  # HELLO with credit 0
    [b"\x01H\x01"],  # HELLO too short
    [b"\x01A\xff\xff\xff\xff\xff\xff\xff\xff"],  # ACK with absurd counts
    [b"\x01M" + msgpack.packb([])],  # DISPATCH is queue->worker only
]


def test_garbage_frames_are_counted_and_real_workers_keep_being_served():
    ctx = zmq.Context()
    q = WorkQueue("tcp://127.0.0.1:*")
    raw = _raw_dealer(ctx, q.endpoint)
    seen = []
    w = Worker(q.endpoint, lambda m: seen.append(m.seq), prefetch=16).start()
    try:
        assert w.wait_ready(WAIT)
        ids = q.put_many([("g.t", b"%d" % i) for i in range(200)])
        for frames in GARBAGE:
            raw.send_multipart(frames)
        ids += q.put_many([("g.t", b"x")] * 200)
        # an unknown peer's heartbeat is answered with RECONNECT: since ZeroMQ keeps order
        # per peer, the answer proves every garbage frame before it was processed
        raw.send(H.heartbeat())
        assert _recv_until(raw, "X") == bytes([1, ord("X")])
        assert q.join(WAIT)
        s = q.stats()
        assert s["decode_errors"] == len(GARBAGE)
        assert s["unknown_peers"] == 1
        assert sorted(seen) == sorted(ids)
        # a registered worker that sends garbage is not dropped for it
        raw.send(H.hello(4))
        _recv_until(raw, "W")
        raw.send(b"\x01Q")
        raw.send(H.ack([123456789]))  # an ack for an id the queue never had
        H.wait_until(lambda: q.stats()["late_acks"] == 1, WAIT, "late ack count")
        assert q.stats()["decode_errors"] == len(GARBAGE) + 1
        assert q.stats()["workers"] == 2
        more = q.put_many([("g.t", b"y")] * 50)
        got = H.decode_dispatch(_recv_until(raw, "M"))  # raw holds some, then leaves
        assert 1 <= len(got) <= 4
        raw.send(H.bye())
        assert q.join(WAIT)
        assert set(more) <= set(seen)
        assert q.stats()["workers"] == 1
    finally:
        w.stop()
        raw.close()
        q.close()
        ctx.term()
