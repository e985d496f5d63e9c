"""Priorities in the work queue (issue 15 item 2): highest first, FIFO within a priority, the
aging rule bounding starvation, and the order kept with credits outstanding and across a
restart on the journal."""

from __future__ import annotations

import os
import random
import sys

import pytest
import zmq

import pybus
from pybus import WorkQueue
from pybus.workqueue._pending import PriorityPending

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import wqhelpers as H  # noqa: E402


def _rec(mid: int, prio: int) -> list:
    return [mid, 0, "p.t", b"", 0, None, 0, None, 0.0, 0.0, None, 0, prio]


# -- the rule, on the plain object ---------------------------------------------------------

def test_highest_first_then_first_in_first_out() -> None:
    rng = random.Random(7)
    recs = [_rec(i, rng.randrange(10)) for i in range(500)]
    line = PriorityPending(recs, aging_n=10**9)  # no aging within this test
    out = [line.popleft() for _ in range(len(recs))]
    assert [(r[12], r[0]) for r in out] == sorted(((r[12], r[0]) for r in recs),
                                                  key=lambda x: (-x[0], x[1]))
    assert not line and len(line) == 0
    with pytest.raises(IndexError):
        line.popleft()


@pytest.mark.parametrize(("low", "aging_n"), [(0, 1), (0, 5), (3, 7), (8, 4)])
def test_a_steady_stream_of_urgent_work_cannot_starve_the_rest(low: int, aging_n: int) -> None:
    """One message of priority ``low`` waits while priority-9 messages keep arriving (one per
    message handed out, the line never empty of them): it goes out after exactly
    (9 - low) * aging_n of them, as the rule says, not later."""
    line = PriorityPending([_rec(0, 9), _rec(1, low)], aging_n=aging_n)
    handed: list[int] = []
    for i in range(2, 1000):
        handed.append(line.popleft()[0])
        if 1 in handed:
            break
        line.append(_rec(i, 9))
    # the urgent message already waiting joined with it (tick 0) and goes first (same age,
    # higher priority); then the low one rises one level per aging_n handed out
    assert handed.index(1) == (9 - low) * aging_n


def test_a_lost_workers_messages_go_back_to_the_front_of_their_level() -> None:
    line = PriorityPending([_rec(1, 5), _rec(2, 5)], aging_n=10**9)
    line.extendleft(reversed([_rec(10, 5), _rec(11, 5)]))
    assert [line.popleft()[0] for _ in range(4)] == [10, 11, 1, 2]


# -- the queue -----------------------------------------------------------------------------


def test_the_queue_hands_out_by_priority_with_credits_outstanding() -> None:
    """A worker holding 5 messages (its credit used up) acks them; meanwhile urgent messages
    arrived behind 100 ordinary ones: the next ones handed out are the urgent ones, in put
    order, and the ordinary ones follow in put order."""
    ctx = zmq.Context()
    q = WorkQueue("tcp://127.0.0.1:*", heartbeat_interval_s=60.0, registry=False)
    fake = None
    try:
        ordinary = q.put_many([("p.t", b"%d" % i) for i in range(100)])
        fake = H.fake_worker(ctx, q.endpoint, credit=5)
        first = H.take(fake, 5)
        assert [e[0] for e in first] == ordinary[:5]
        urgent = [q.put("p.t", b"u%d" % i, priority=7 + i % 3) for i in range(9)]
        fake.send(H.ack([e[0] for e in first]))
        nxt = [e[0] for e in H.take(fake, 5)]
        by_priority = sorted(urgent, key=lambda mid: (-(7 + urgent.index(mid) % 3),
                                                      urgent.index(mid)))
        assert nxt == by_priority[:5]
        assert q.stats()["pending_by_priority"][7:] == [3, 1, 0]  # 7s, 8s and 9s left
        fake.send(H.ack(nxt))
        assert [e[0] for e in H.take(fake, 5)] == by_priority[5:] + ordinary[5:6]
    finally:
        if fake is not None:
            fake.close()
        q.close()
        ctx.term()


def test_priorities_survive_a_restart_on_the_journal(tmp_path) -> None:
    journal = str(tmp_path / "prio.db")
    rng = random.Random(3)
    prios = [rng.randrange(10) for _ in range(60)]
    with WorkQueue("tcp://127.0.0.1:*", journal=journal, registry=False) as q:
        ids = [q.put("p.t", i, priority=p) for i, p in enumerate(prios)]
    ctx = zmq.Context()
    q = WorkQueue("tcp://127.0.0.1:*", journal=journal, heartbeat_interval_s=60.0,
                  registry=False)
    fake = None
    try:
        assert q.stats()["recovered"] == 60
        fake = H.fake_worker(ctx, q.endpoint, credit=100)
        got = [e[0] for e in H.take(fake, 60)]
        want = sorted(ids, key=lambda mid: (-prios[ids.index(mid)], mid))
        assert got == want
    finally:
        if fake is not None:
            fake.close()
        q.close()
        ctx.term()


def test_bad_priorities_are_refused_with_what_is_allowed() -> None:
    with WorkQueue("tcp://127.0.0.1:*", registry=False) as q:
        for bad in (10, -1, "high", True, 2.0):
            with pytest.raises(pybus.ValidationError, match="priority must be an int from 0"):
                q.put("p.t", b"x", priority=bad)
        assert q.stats()["put"] == 0
    with pytest.raises(pybus.ValidationError, match="priority_aging_n"):
        WorkQueue("tcp://127.0.0.1:*", priority_aging_n=0, registry=False)
