"""No duplicate side effects (issue 15 item 4): ``put(dedupe_key=)`` refuses a second copy
within its window, across a restart on the journal; a Worker with an idempotency store does
not run a handler again for a message whose effect was committed."""

from __future__ import annotations

import sqlite3
import threading

import pytest

import pybus
from pybus import RetryPolicy, Worker, WorkQueue
from pybus.errors import AlreadyHandledError
from pybus.workqueue._dedupe import PutDedupe
from pybus.workqueue.idempotency import SQLiteIdempotency, current_message, message_key

WAIT = 30.0


# -- put(dedupe_key=) ----------------------------------------------------------------------

def test_a_second_put_with_the_key_queues_nothing_and_returns_the_first_id() -> None:
    with WorkQueue("tcp://127.0.0.1:*", registry=False) as q:
        a = q.put("d.t", b"one", dedupe_key="order-1")
        assert q.put("d.t", b"again", dedupe_key="order-1") == a
        b = q.put("d.t", b"two", dedupe_key="order-2")
        c = q.put("d.t", b"no key")
        assert len({a, b, c}) == 3
        st = q.stats()
        assert st["put"] == 3 and st["put_duplicates"] == 1 and st["dedupe_keys"] == 2
        assert st["queue_depth"] == 3


def test_the_window_ends_on_the_clock() -> None:
    """On the plain object with a given clock: the key refuses until its window ends."""
    d = PutDedupe(window_s=2.0, max_keys=10, journal=None, now_ns=0)
    assert d.first_id("k", 0) is None
    d.remember(d.row("k", 41, 1_000_000_000))
    assert d.first_id("k", 2_999_999_999) == 41
    assert d.first_id("k", 3_000_000_000) is None  # 2 s after the put: a new message
    assert d.duplicates == 1


def test_past_max_keys_the_oldest_are_forgotten_and_counted() -> None:
    d = PutDedupe(window_s=60.0, max_keys=2, journal=None, now_ns=0)
    for i, k in enumerate("abc"):
        d.remember(d.row(k, i, 0))
    assert d.first_id("a", 1) is None and d.first_id("c", 1) == 2
    assert d.stats() == {"put_duplicates": 1, "dedupe_keys": 2, "dedupe_evicted": 1}


def test_dedupe_keys_survive_a_restart_on_the_journal(tmp_path) -> None:
    journal = str(tmp_path / "j.db")
    with WorkQueue("tcp://127.0.0.1:*", journal=journal, registry=False) as q:
        a = q.put("d.t", b"x", dedupe_key="pay-7")
    # the producer restarts and retries the put it never saw return
    with WorkQueue("tcp://127.0.0.1:*", journal=journal, registry=False) as q:
        assert q.put("d.t", b"x", dedupe_key="pay-7") == a
        st = q.stats()
        assert st["recovered"] == 1 and st["put"] == 0 and st["put_duplicates"] == 1


def test_bad_dedupe_arguments_are_refused_with_what_is_allowed() -> None:
    with WorkQueue("tcp://127.0.0.1:*", registry=False) as q:
        for bad in ("", 7, "k" * 300):
            with pytest.raises(pybus.ValidationError, match="dedupe_key must be"):
                q.put("d.t", b"", dedupe_key=bad)
    with pytest.raises(pybus.ValidationError, match="dedupe_window_s must be"):
        WorkQueue("tcp://127.0.0.1:*", registry=False, dedupe_window_s=0)
    with pytest.raises(pybus.ValidationError, match="max_dedupe_keys must be"):
        WorkQueue("tcp://127.0.0.1:*", registry=False, max_dedupe_keys=0)


# -- the store -----------------------------------------------------------------------------

class _Msg:
    def __init__(self, seq: int, ts: int) -> None:
        self.seq, self.timestamp_ns = seq, ts


@pytest.fixture
def store(tmp_path):
    s = SQLiteIdempotency(tmp_path / "effects.db")
    s.connection().execute("CREATE TABLE effects (v INTEGER)")
    yield s
    s.close()


def _effects(store: SQLiteIdempotency) -> list[int]:
    return [r[0] for r in store.connection().execute("SELECT v FROM effects ORDER BY v")]


def test_effect_and_record_commit_together_or_not_at_all(store) -> None:
    m = _Msg(1, 10)
    with store.transaction(m) as db:
        db.execute("INSERT INTO effects VALUES (1)")
    assert store.seen(message_key(m)) and _effects(store) == [1]
    # a racing copy of the same message: its effect is rolled back
    with pytest.raises(AlreadyHandledError), store.transaction(m) as db:
        db.execute("INSERT INTO effects VALUES (2)")
    # a handler that fails: neither its effect nor the record stay
    m2 = _Msg(2, 10)
    with pytest.raises(ZeroDivisionError), store.transaction(m2) as db:
        db.execute("INSERT INTO effects VALUES (3)")
        raise ZeroDivisionError
    assert _effects(store) == [1] and not store.seen(message_key(m2))


def test_record_is_idempotent_and_ids_are_stable_and_distinct(store) -> None:
    store.record("a")
    store.record("a")
    assert store.seen("a") and not store.seen("b")
    assert message_key(_Msg(5, 7)) == message_key(_Msg(5, 7)) != message_key(_Msg(5, 8))


def test_current_message_outside_a_handler_says_where_it_works() -> None:
    with pytest.raises(pybus.ValidationError, match="idempotency="):
        current_message()


def test_a_worker_refuses_a_store_without_seen_and_record() -> None:
    with pytest.raises(pybus.ValidationError, match="seen\\(key\\) and record\\(key\\)"):
        Worker("tcp://127.0.0.1:1", lambda m: None, idempotency=object())


# -- a worker with the store ---------------------------------------------------------------

def test_a_retry_after_a_committed_effect_does_not_run_the_handler_again(store) -> None:
    """The handler commits its effect, then fails (its ack never happens): the queue retries
    the message; the worker acks the retry as a duplicate without calling the handler."""
    q = WorkQueue("tcp://127.0.0.1:*", registry=False,
                  retry=RetryPolicy.fixed(0.01, max_attempts=3))
    calls: list[int] = []
    lock = threading.Lock()

    def handle(msg: pybus.Message) -> None:
        with lock:
            calls.append(msg.seq)
        with store.transaction() as db:  # the message being handled, from the worker
            db.execute("INSERT INTO effects VALUES (?)", (int(msg.payload),))
        if msg.payload.endswith(b"7"):
            raise ConnectionError("the reply was lost after the commit")

    w = Worker(q.endpoint, handle, concurrency=2, idempotency=store, registry=False)
    try:
        w.start()
        ids = [q.put("i.t", b"%d" % i) for i in range(20)]
        assert q.join(WAIT)
        assert sorted(calls) == sorted(ids)  # each handler ran once
        assert _effects(store) == list(range(20))
        st = q.stats()
        assert st["nacked"] == 2 and st["duplicates"] == 2 and st["acked"] == 20
    finally:
        w.stop()
        q.close()


def test_without_a_transaction_the_worker_records_after_the_handler(tmp_path) -> None:
    store = SQLiteIdempotency(tmp_path / "ids.db")
    q = WorkQueue("tcp://127.0.0.1:*", registry=False)
    got: list[pybus.Message] = []
    w = Worker(q.endpoint, got.append, idempotency=store, registry=False)
    try:
        w.start()
        q.put("i.t", b"x")
        assert q.join(WAIT)
        assert store.seen(message_key(got[0]))
    finally:
        w.stop()
        q.close()
        store.close()


def test_the_store_file_is_plain_sqlite(store) -> None:
    store.record("k")
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT key FROM pybus_handled").fetchall() == [("k",)]
    db.close()
