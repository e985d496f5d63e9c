"""The work queue on JetStream (issue 14 item 1), against a real nats-server the tests start:
put, workers, acks, naks with the policy's delays, dead letters into SQLite, de-duplicated
puts, metrics and readiness."""

from __future__ import annotations

import threading

import pytest
from natsserver import NatsServer
from prometheus_client.parser import text_string_to_metric_families

import pybus
import pybus.jetstream as js

WAIT = 60.0


class Handled:
    """A handler that records what it got (thread-safe), optionally failing some deliveries."""

    def __init__(self, fail=None) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[int, int, str, object]] = []
        self.fail = fail

    def __call__(self, msg: pybus.Message) -> None:
        with self.lock:
            self.calls.append((msg.seq, msg.publisher_id, msg.topic, msg.payload))
        if self.fail is not None:
            self.fail(msg)


def test_put_work_ack_each_task_once(nats_server: NatsServer) -> None:
    h = Handled()
    with js.WorkQueue(nats_server.url, stream="jobs", registry=False) as q:
        seqs = [q.put(f"img.{i % 3}", {"i": i}, {"trace": str(i)}) for i in range(200)]
        w = js.Worker(nats_server.url, h, stream="jobs", concurrency=4, registry=False).start()
        try:
            assert q.join(timeout=WAIT)
        finally:
            w.stop()
        assert sorted(c[0] for c in h.calls) == seqs == list(range(1, 201))
        assert sorted(c[3]["i"] for c in h.calls) == list(range(200))
        assert {c[1] for c in h.calls} == {1}  # first deliveries only
        assert {(c[2], c[3]["i"] % 3) for c in h.calls} == {("img.0", 0), ("img.1", 1),
                                                            ("img.2", 2)}
        s = q.stats()
        assert (s["put"], s["queue_depth"], s["in_flight"]) == (200, 0, 0)
    ws = w.stats()
    assert ws["handled"] == ws["acked"] == ws["received"] == 200


def test_headers_and_raw_payloads_arrive_as_sent(nats_server: NatsServer) -> None:
    got: list[pybus.Message] = []
    with js.WorkQueue(nats_server.url, stream="raw", registry=False) as q:
        q.put("a.b", b"\x00raw\xff", {"k": "v", "n": 1})
        w = js.Worker(nats_server.url, got.append, stream="raw", registry=False).start()
        try:
            assert q.join(timeout=WAIT)
        finally:
            w.stop()
    (m,) = got
    assert (m.topic, m.payload, m.headers, m.is_msgpack) == ("a.b", b"\x00raw\xff",
                                                              {"k": "v", "n": 1}, False)
    assert m.timestamp_ns > 0


def test_a_put_with_a_dedupe_key_is_stored_once(nats_server: NatsServer) -> None:
    h = Handled()
    with js.WorkQueue(nats_server.url, stream="dedupe", registry=False) as q:
        first = q.put("images.resize", {"path": "a.png"}, dedupe_key="resize-a.png")
        again = q.put("images.resize", {"path": "a.png"}, dedupe_key="resize-a.png")
        other = q.put("images.resize", {"path": "b.png"}, dedupe_key="resize-b.png")
        assert first == again != other
        assert q.stats()["duplicates"] == 1
        w = js.Worker(nats_server.url, h, stream="dedupe", registry=False).start()
        try:
            assert q.join(timeout=WAIT)
        finally:
            w.stop()
    assert sorted(c[3]["path"] for c in h.calls) == ["a.png", "b.png"]


def test_a_failed_attempt_is_retried_with_the_queues_policy(nats_server: NatsServer) -> None:
    def fail_first(msg: pybus.Message) -> None:
        if msg.publisher_id == 1:
            raise RuntimeError("the first attempt fails")

    h = Handled(fail_first)
    retry = pybus.RetryPolicy.fixed(0.2, max_attempts=3, registry=False)
    with js.WorkQueue(nats_server.url, stream="retry", retry=retry, registry=False) as q:
        q.put("t.x", {"n": 1})
        # the worker is not given the policy: it reads the queue's from the server
        w = js.Worker(nats_server.url, h, stream="retry", registry=False).start()
        try:
            assert q.join(timeout=WAIT)
        finally:
            w.stop()
    assert [c[1] for c in h.calls] == [1, 2]
    assert w.retry is not None and (w.retry.kind, w.retry.initial_s, w.retry.max_attempts) == (
        "fixed", 0.2, 3)
    assert (w.stats()["nacked"], w.stats()["acked"]) == (1, 1)


def test_after_the_last_attempt_the_task_lands_in_the_sqlite_dlq(nats_server: NatsServer,
                                                                 tmp_path) -> None:
    def always(msg: pybus.Message) -> None:
        if msg.payload["kind"] == "bad":
            raise pybus.ValidationError("not retryable: dead-lettered at once")
        raise RuntimeError("down")

    h = Handled(always)
    dlq = pybus.DeadLetterQueue(str(tmp_path / "dead.db"), registry=False)
    retry = pybus.RetryPolicy.fixed(0.05, max_attempts=3, registry=False)
    with js.WorkQueue(nats_server.url, stream="dl", retry=retry, dlq=dlq, registry=False) as q:
        q.put("jobs.a", {"kind": "flaky"})
        q.put("jobs.b", {"kind": "bad"})
        w = js.Worker(nats_server.url, h, stream="dl", concurrency=2, registry=False).start()
        try:
            assert q.join(timeout=WAIT)
        finally:
            w.stop()
        assert q.stats()["dead_letters"] == 2
    entries = {e.topic: e for e in dlq.list()}
    assert set(entries) == {"jobs.a", "jobs.b"}
    assert (entries["jobs.a"].attempts, entries["jobs.a"].error_type) == (3, "RuntimeError")
    assert entries["jobs.a"].value == {"kind": "flaky"}
    assert (entries["jobs.b"].attempts, entries["jobs.b"].error_type) == (1, "ValidationError")
    assert sorted(c[1] for c in h.calls if c[2] == "jobs.a") == [1, 2, 3]
    assert w.stats()["dead_lettered"] == 2
    dlq.close()


def test_metrics_and_readiness(nats_server: NatsServer) -> None:
    reg = pybus.metrics.Registry(process=False)
    q = js.WorkQueue(nats_server.url, stream="m", registry=reg)
    w = js.Worker(nats_server.url, lambda m: None, stream="m", registry=reg).start()
    try:
        for i in range(5):
            q.put("m.t", i)
        assert q.join(timeout=WAIT)
        fams = {f.name: f for f in text_string_to_metric_families(reg.render().decode())}
        tasks = {(s.labels["name"], s.labels["event"]): s.value
                 for s in fams["pybus_tasks"].samples}
        assert tasks[(q.name, "put")] == 5 and tasks[(w.name, "acked")] == 5
        depth = {s.labels["name"]: s.value for s in fams["pybus_queue_depth"].samples}
        assert depth[q.name] == 0
        assert reg.readiness()[0] is True
        nats_server.kill()  # the server is unreachable: readiness says so
        ok, objects = _until_not_ready(reg)
        assert not ok and {o["name"] for o in objects if not o["ready"]} == {q.name, w.name}
    finally:
        w.stop()
        q.close()


def _until_not_ready(reg: pybus.metrics.Registry) -> tuple[bool, list]:
    from waiting import until

    assert until(lambda: not reg.readiness()[0], WAIT)
    return reg.readiness()


def test_a_retry_after_a_committed_effect_is_acked_without_the_handler(
        nats_server: NatsServer, tmp_path) -> None:
    """With an idempotency store the JetStream worker, too, skips a redelivered task whose
    effect was committed: here the handler commits, then fails, and the nak's redelivery is
    acked as a duplicate."""
    from pybus.workqueue.idempotency import SQLiteIdempotency

    store = SQLiteIdempotency(tmp_path / "effects.db")
    store.connection().execute("CREATE TABLE effects (n INTEGER)")

    def commit_then_fail(msg: pybus.Message) -> None:
        with store.transaction() as db:
            db.execute("INSERT INTO effects VALUES (?)", (msg.payload["n"],))
        raise ConnectionError("the reply was lost after the commit")

    h = Handled(commit_then_fail)
    retry = pybus.RetryPolicy.fixed(0.1, max_attempts=3, registry=False)
    try:
        with js.WorkQueue(nats_server.url, stream="idem", retry=retry, registry=False) as q:
            for n in range(3):
                q.put("t.x", {"n": n})
            w = js.Worker(nats_server.url, h, stream="idem", idempotency=store,
                          registry=False).start()
            try:
                assert q.join(timeout=WAIT)
            finally:
                w.stop()
        assert sorted(c[3]["n"] for c in h.calls) == [0, 1, 2]  # each handler ran once
        assert [r[0] for r in store.connection().execute(
            "SELECT n FROM effects ORDER BY n")] == [0, 1, 2]
        assert (w.stats()["nacked"], w.stats()["duplicates"]) == (3, 3)
    finally:
        store.close()


def test_bad_arguments_raise_clear_errors(nats_server: NatsServer) -> None:
    with pytest.raises(pybus.ValidationError, match="stream name"):
        js.WorkQueue(nats_server.url, stream="a.b", registry=False)
    with pytest.raises(pybus.ValidationError, match="replicas"):
        js.WorkQueue(nats_server.url, stream="s", replicas=7, registry=False)
    with pytest.raises(pybus.ValidationError, match="concurrency"):
        js.Worker(nats_server.url, print, stream="s", concurrency=0, registry=False)
    with js.WorkQueue(nats_server.url, stream="s", registry=False) as q:
        with pytest.raises(pybus.TopicError):
            q.put("bad topic", b"x")
        with pytest.raises(pybus.ValidationError, match="dedupe_key"):
            q.put("ok.t", b"x", dedupe_key="")
        with pytest.raises(pybus.ValidationError, match="cannot hold a new message"):
            q.put("ok.t", b"x", delay_s=1.0)  # no delayed delivery on nats-server 2.9
        with pytest.raises(pybus.ValidationError, match="no priorities"):
            q.put("ok.t", b"x", priority=5)
        with pytest.raises(pybus.ValidationError, match="no per-key ordering"):
            q.put("ok.t", b"x", key="customer-1")
    with pytest.raises(pybus.ClosedError):
        q.put("ok.t", b"x")


def test_the_asyncio_twin_puts_and_joins_in_the_callers_loop(nats_server: NatsServer) -> None:
    import asyncio

    h = Handled()

    async def main() -> tuple[list[int], dict]:
        async with js.AsyncWorkQueue(nats_server.url, stream="aq", registry=False) as q:
            seqs = [await q.put("a.t", {"i": i}) for i in range(20)]
            seqs.append(await q.put("a.t", {"i": 0}, dedupe_key="k"))
            seqs.append(await q.put("a.t", {"i": 0}, dedupe_key="k"))
            w = js.Worker(nats_server.url, h, stream="aq", registry=False).start()
            try:
                assert await q.join(timeout=WAIT)
            finally:
                w.stop()
            return seqs, await q.stats()

    seqs, stats = asyncio.run(main())
    assert seqs[:21] == list(range(1, 22)) and seqs[21] == 21  # the second "k" is a duplicate
    assert (stats["put"], stats["duplicates"], stats["queue_depth"]) == (21, 1, 0)
    assert sorted(c[0] for c in h.calls) == list(range(1, 22))


def test_the_sync_queue_refuses_to_block_a_running_event_loop(nats_server: NatsServer) -> None:
    import asyncio

    with js.WorkQueue(nats_server.url, stream="loop", registry=False) as q:
        async def inside() -> None:
            with pytest.raises(pybus.ValidationError, match="AsyncWorkQueue"):
                q.put("a.t", b"x")

        asyncio.run(inside())
        assert q.put("a.t", b"x") == 1  # outside a loop it works


def test_a_worker_started_before_its_queue_waits_for_it(nats_server: NatsServer) -> None:
    h = Handled()
    w = js.Worker(nats_server.url, h, stream="early", registry=False).start()
    try:
        assert not w.wait_ready(1.0)  # no stream yet: the worker waits, it does not fail
        with js.WorkQueue(nats_server.url, stream="early", registry=False) as q:
            for i in range(5):
                q.put("e.t", i)
            assert w.wait_ready(WAIT)
            assert q.join(timeout=WAIT)
    finally:
        w.stop()
    assert sorted(c[3] for c in h.calls) == list(range(5))
