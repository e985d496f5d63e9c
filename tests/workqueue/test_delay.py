"""Delayed delivery in the work queue (issue 15 item 1): ``put(..., delay_s=)`` or
``not_before=`` is held by the queue, never by a worker, never handed out early, journaled so it
survives a producer killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import zmq

import pybus
import pybus.workqueue.queue
from pybus import Worker, WorkQueue

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import wqhelpers as H  # noqa: E402
from waiting import TimeStub  # noqa: E402

WAIT = 30.0


def _recv_until(sock: zmq.Socket, cmd: str, timeout: float = WAIT) -> bytes:
    return H.recv_until(sock, cmd, timeout)


def _ids(frame: bytes) -> list[int]:
    return [e[0] for e in H.decode_dispatch(frame)]


def test_held_by_the_queue_until_its_time_on_a_fake_clock(monkeypatch, clock) -> None:
    """The dispatcher's wall clock is the fake one: a message due at t0 + 1 s is not handed out
    at t0 + 0.999 s (messages put later go first), and is at t0 + 1.002 s."""
    wall0 = time.time_ns()
    start = clock()

    def fake_ns() -> int:
        return wall0 + int((clock() - start) * 1e9)

    monkeypatch.setattr(pybus.workqueue.queue, "time",
                        TimeStub(monotonic=clock, time_ns=fake_ns))
    ctx = zmq.Context()
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=60.0, ack_timeout_s=600.0,
                  registry=False)
    fake = ctx.socket(zmq.DEALER)
    fake.linger, fake.rcvtimeo = 0, 5000
    fake.connect(q.endpoint)
    try:
        fake.send(H.hello(100))
        _recv_until(fake, "W")
        later = q.put("d.t", b"later", not_before=(wall0 + 10**9) / 1e9)
        first = q.put("d.t", b"now")
        # the message put after it is handed out: the dispatcher ran, and held the delayed one
        assert _ids(_recv_until(fake, "M")) == [first]
        s = q.stats()
        assert s["delayed"] == 1 and s["queue_depth"] == 1
        assert 0.99 < s["next_due_s"] < 1.001  # (not_before as float seconds: ~100 ns)
        clock.advance(0.999)
        second = q.put("d.t", b"now again")
        assert _ids(_recv_until(fake, "M")) == [second]  # still not the delayed one
        assert q.stats()["delayed"] == 1
        clock.advance(0.003)
        assert _ids(_recv_until(fake, "M")) == [later]
        assert q.stats()["delayed"] == 0
    finally:
        fake.close()
        q.close()
        ctx.term()


def test_never_early_and_all_delivered_with_a_real_worker() -> None:
    due: dict[int, int] = {}
    got: dict[int, int] = {}
    lock = threading.Lock()

    def handle(msg: pybus.Message) -> None:
        with lock:
            got[msg.seq] = time.time_ns()

    with WorkQueue("tcp://127.0.0.1:*", registry=False) as q, \
            Worker(q.endpoint, handle, concurrency=4, registry=False):
        for i in range(30):
            delay = (i % 6) * 0.05
            before = time.time_ns()
            mid = q.put("d.t", i, delay_s=delay)
            due[mid] = before + int(delay * 1e9)
        at = datetime.now(UTC) + timedelta(seconds=0.2)
        due[q.put("d.t", "at", not_before=at)] = int(at.timestamp() * 1e9)
        assert q.join(timeout=WAIT)
    assert sorted(got) == sorted(due)
    early = {mid: (due[mid] - got[mid]) / 1e6 for mid in due if got[mid] < due[mid]}
    assert early == {}, f"handed out early (ms): {early}"


PRODUCER = textwrap.dedent("""
    import sys, time
    import pybus
    q = pybus.WorkQueue("tcp://127.0.0.1:*", journal=sys.argv[1], registry=False)
    now = time.time()
    for i in range(40):
        due = now + 1.0 + (i % 4) * 0.1
        q.put("late.t", {"i": i, "due_ns": int(due * 1e9)}, not_before=due)
    print("put", flush=True)
    time.sleep(60)  # SIGKILLed long before this ends
""")


def test_delays_survive_a_producer_killed_with_sigkill(tmp_path) -> None:
    journal = str(tmp_path / "delays.db")
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, journal], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = "x"
        while line and line.strip() != "put":  # a build step may print lines first
            line = proc.stdout.readline()
        assert line, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    got: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def handle(msg: pybus.Message) -> None:
        with lock:
            got.append((msg.payload["i"], msg.payload["due_ns"], time.time_ns()))

    with WorkQueue("tcp://127.0.0.1:*", journal=journal, registry=False) as q, \
            Worker(q.endpoint, handle, concurrency=4, registry=False):
        assert q.stats()["recovered"] == 40
        assert q.join(timeout=WAIT)
    assert sorted(i for i, _, _ in got) == list(range(40))  # each once, none lost
    assert [i for i, due, at in got if at < due] == []  # none early


def test_bad_delays_are_refused_with_what_is_allowed() -> None:
    with WorkQueue("inproc://delay-bad", registry=False) as q:
        with pytest.raises(pybus.ValidationError, match="not both"):
            q.put("d.t", b"x", delay_s=1, not_before=time.time() + 1)
        with pytest.raises(pybus.ValidationError, match="delay_s must be"):
            q.put("d.t", b"x", delay_s=-1)
        with pytest.raises(pybus.ValidationError, match="delay_s must be"):
            q.put("d.t", b"x", delay_s=float("inf"))
        with pytest.raises(pybus.ValidationError, match="timezone-aware"):
            q.put("d.t", b"x", not_before=datetime.now())
        with pytest.raises(pybus.ValidationError, match="not_before must be"):
            q.put("d.t", b"x", not_before="tomorrow")
        assert q.stats()["put"] == 0  # nothing was queued
