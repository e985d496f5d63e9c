"""A retry's back-off survives a restart of the queue on its journal (issue 15 item 1: the
mechanism of delays serves retries): the message waits until its retry time, and the attempts
made before the restart still count."""

from __future__ import annotations

import os
import sys
import time

import zmq

import pybus
from pybus import RetryPolicy, WorkQueue
from pybus.cli.queue import journal_stat

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import wqhelpers as H  # noqa: E402

WAIT = 30.0
RETRY_S = 1.5


def _nack(mid: int) -> bytes:
    return H.nack([(mid, "ConnectionError", "db down", int(pybus.ErrorCode.UNKNOWN), True)])


def test_a_retry_waits_its_time_and_keeps_its_attempts_across_a_restart(tmp_path) -> None:
    journal, dlq_path = str(tmp_path / "j.db"), str(tmp_path / "dlq.db")
    policy = RetryPolicy.fixed(RETRY_S, max_attempts=2)
    ctx = zmq.Context()
    dlq = pybus.DeadLetterQueue(dlq_path)
    q = w = None
    try:
        q = WorkQueue("tcp://127.0.0.1:*", journal=journal, retry=policy, dlq=dlq,
                      heartbeat_interval_s=60.0, registry=False)
        w = H.fake_worker(ctx, q.endpoint, 10, WAIT)
        mid = q.put("r.t", b"charge", key="acct-1")
        after = q.put("r.t", b"refund", key="acct-1")  # waits behind it
        assert [e[0] for e in H.decode_dispatch(H.recv_until(w, "M"))] == [mid]
        failed_at = time.time()
        w.send(_nack(mid))
        H.wait_until(lambda: q.stats()["nacked"] == 1, what="the nack")
        q.close()  # the first attempt failed; its retry is due RETRY_S later
        w.close()
        s = journal_stat(journal)  # what `pybus queue stat` reads from the file
        assert s["retrying"] == 1 and s["blocked_keys"] == 1 and s["keys_waiting"] == 1

        q = WorkQueue("tcp://127.0.0.1:*", journal=journal, retry=policy, dlq=dlq,
                      heartbeat_interval_s=60.0, registry=False)
        assert q.stats()["delayed"] == 1 and q.stats()["recovered"] == 2
        w = H.fake_worker(ctx, q.endpoint, 10, WAIT)
        entries = H.decode_dispatch(H.recv_until(w, "M"))
        assert time.time() >= failed_at + RETRY_S - 0.01  # not before its retry time
        assert [e[0] for e in entries] == [mid]
        w.send(_nack(mid))  # the second attempt of two: dead-lettered, not retried
        assert [e[0] for e in H.decode_dispatch(H.recv_until(w, "M"))] == [after]
        w.send(H.ack([after]))
        assert q.join(WAIT)
        (dead,) = dlq.list()
        assert dead.attempts == 2 and dead.error_type == "ConnectionError"
        assert abs(dead.first_failure - failed_at) < 1.0  # the failure before the restart
        w.close()
        q.close()
        w = None
        # finished: no retry row is left to delay anything after another restart
        q = WorkQueue("tcp://127.0.0.1:*", journal=journal, registry=False)
        assert q.stats()["recovered"] == 0 and q.stats()["delayed"] == 0
    finally:
        if w is not None:
            w.close()
        if q is not None:
            q.close()
        dlq.close()
        ctx.term()
