"""DeadLetterQueue on real SQLite files: fields, bound policy, replay, purge, threads, processes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import subprocess
import sys
import threading

import msgpack
import pytest

import pybus
from pybus import BackpressureError, DeadLetterQueue, ValidationError


class FakeWall:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


def test_add_get_roundtrip_all_fields(tmp_path):
    wall = FakeWall()
    with DeadLetterQueue(tmp_path / "d.db", clock=wall) as dlq:
        err = pybus.TimeoutError("worker w1 missed its ack deadline")
        mid = dlq.add(
            "orders.created",
            {"n": 1, "b": b"\x00"},
            id="m-1",
            headers={"trace": "abc"},
            error=err,
            attempts=5,
            first_failure=wall.now - 10,
            origin="tcp://q:1",
        )
        assert mid == "m-1" and len(dlq) == 1
        e = dlq.get("m-1")
        assert e is not None
        assert e.topic == "orders.created" and e.payload_format == "msgpack"
        assert e.value == {"n": 1, "b": b"\x00"}
        assert msgpack.unpackb(e.payload) == {"n": 1, "b": b"\x00"}
        assert e.headers == {"trace": "abc"}
        assert (e.error_type, e.error_message, e.error_code) == (
            "TimeoutError",
            "worker w1 missed its ack deadline",
            int(pybus.ErrorCode.TIMEOUT),
        )
        assert e.attempts == 5 and e.origin == "tcp://q:1"
        assert e.first_failure == wall.now - 10 and e.last_failure == wall.now
        assert dlq.get("nope") is None


def test_raw_payload_and_id_types_kept(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db") as dlq:
        dlq.add("t", b"raw\xff", id=b"\x01\x02", error=ValueError("bad value"))
        dlq.add("t", b"x", id=123)
        dlq.add("t", b"y", id="123")  # a str id is not the int id
        assert len(dlq) == 3
        e = dlq.get(b"\x01\x02")
        assert e.payload == b"raw\xff" and e.payload_format == "raw" and e.value == b"raw\xff"
        assert (e.error_type, e.error_message, e.error_code) == ("ValueError", "bad value", 1)
        assert dlq.get(123).payload == b"x" and dlq.get("123").payload == b"y"
        auto = dlq.add("t", b"z")
        assert isinstance(auto, str) and len(auto) == 32 and dlq.get(auto).payload == b"z"


def test_remote_error_keeps_remote_type_and_code(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db") as dlq:
        err = pybus.RemoteError("no such order", remote_type="KeyError", remote_code=42)
        dlq.add("t", b"p", id="r", error=err)
        e = dlq.get("r")
        assert (e.error_type, e.error_message, e.error_code) == ("KeyError", "no such order", 42)


def test_same_id_replaces_and_accumulates(tmp_path):
    wall = FakeWall()
    with DeadLetterQueue(tmp_path / "d.db", clock=wall) as dlq:
        dlq.add("t", b"1", id="m", attempts=3, error=RuntimeError("first"))
        first = wall.now
        wall.now += 60
        dlq.add("t", b"1", id="m", attempts=3, error=RuntimeError("second"))
        assert len(dlq) == 1
        e = dlq.get("m")
        assert e.attempts == 6 and e.error_message == "second"
        assert e.first_failure == first and e.last_failure == first + 60


def test_drop_oldest_bound_counts_evictions(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db", max_entries=3) as dlq:
        for i in range(5):
            dlq.add("t", b"%d" % i, id=f"m{i}")
        assert len(dlq) == 3
        assert [e.id for e in dlq.list()] == ["m2", "m3", "m4"]
        assert dlq.evictions == 2
        assert dlq.stats() == {"entries": 3, "evictions": 2, "max_entries": 3,
                               "undecodable_headers": 0}
    # The count and evictions persist in the file.
    with DeadLetterQueue(tmp_path / "d.db", max_entries=3) as again:
        assert len(again) == 3 and again.evictions == 2


def test_reject_bound(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db", max_entries=2, on_full="reject") as dlq:
        dlq.add("t", b"a", id="a")
        dlq.add("t", b"b", id="b")
        with pytest.raises(BackpressureError, match="max_entries=2"):
            dlq.add("t", b"c", id="c")
        assert len(dlq) == 2 and dlq.get("c") is None and dlq.evictions == 0
        dlq.add("t", b"a2", id="a")  # replacing an existing id needs no room
        assert dlq.get("a").payload == b"a2"


def test_list_filters_and_pages(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db") as dlq:
        for i in range(10):
            dlq.add("even" if i % 2 == 0 else "odd", b"%d" % i, id=i)
        assert [e.id for e in dlq.list(topic="odd")] == [1, 3, 5, 7, 9]
        assert [e.id for e in dlq.list(limit=3, offset=4)] == [4, 5, 6]
        assert [e.id for e in dlq.list(topic="even", limit=2, offset=1)] == [2, 4]
        assert [e.id for e in dlq] == list(range(10))
        with pytest.raises(ValidationError, match="limit"):
            dlq.list(limit=0)


class Sink:
    def __init__(self, fail_on=None):
        self.got = []
        self.fail_on = fail_on

    def put(self, topic, payload, headers=None):
        if payload == self.fail_on:
            raise RuntimeError("sink down")
        self.got.append((topic, payload, headers))


def test_replay_to_queue_removes_replayed(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db") as dlq:
        dlq.add("a", {"k": 1}, id=1, headers={"h": 1})
        dlq.add("b", b"raw", id=2)
        dlq.add("a", [1, 2], id=3)
        sink = Sink()
        assert dlq.replay(topic="a", to=sink) == 2
        assert sink.got == [("a", {"k": 1}, {"h": 1}), ("a", [1, 2], {})]
        assert [e.id for e in dlq.list()] == [2]
        seen = []
        assert dlq.replay(ids=[2, 99], to=seen.append) == 1
        assert seen[0].payload == b"raw" and len(dlq) == 0


def test_replay_stops_at_failure_keeping_rest(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db") as dlq:
        for i in range(4):
            dlq.add("t", i, id=i)
        sink = Sink(fail_on=2)
        with pytest.raises(RuntimeError, match="sink down"):
            dlq.replay(to=sink)
        assert [p for _, p, _ in sink.got] == [0, 1]
        assert [e.id for e in dlq.list()] == [2, 3]
        with pytest.raises(ValidationError, match="put"):
            dlq.replay(to=object())


def test_replay_pages_through_many(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db") as dlq:
        conn = dlq._conn()
        for i in range(700):
            dlq.add("t", b"x", id=i)
        n = []
        assert dlq.replay(to=lambda e: n.append(e.id)) == 700
        assert n == list(range(700)) and len(dlq) == 0
        assert conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0


def test_purge_filters(tmp_path):
    wall = FakeWall()
    with DeadLetterQueue(tmp_path / "d.db", clock=wall) as dlq:
        dlq.add("a", b"1", id=1)
        wall.now += 100
        dlq.add("a", b"2", id=2)
        dlq.add("b", b"3", id=3)
        dlq.add("b", b"4", id=4)
        assert dlq.purge(older_than=50) == 1
        assert dlq.get(1) is None
        assert dlq.purge(ids=[3, 2], topic="b") == 1
        assert [e.id for e in dlq.list()] == [2, 4]
        assert dlq.purge() == 2 and len(dlq) == 0


def test_count_matches_table_after_mixed_ops(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db", max_entries=50) as dlq:
        for i in range(80):
            dlq.add(f"t{i % 3}", b"x", id=i)
        dlq.purge(topic="t1")
        dlq.replay(topic="t2", to=lambda e: None)
        real = sqlite3.connect(tmp_path / "d.db").execute("SELECT COUNT(*) FROM dead_letters")
        assert len(dlq) == real.fetchone()[0]


def test_wal_mode_and_closed(tmp_path):
    dlq = DeadLetterQueue(tmp_path / "d.db")
    assert dlq._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    dlq.close()
    dlq.close()
    with pytest.raises(pybus.ClosedError):
        len(dlq)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValidationError, match="on_full"):
        DeadLetterQueue(tmp_path / "d.db", on_full="grow")
    with pytest.raises(ValidationError, match="max_entries"):
        DeadLetterQueue(tmp_path / "d.db", max_entries=0)
    with DeadLetterQueue(tmp_path / "d.db") as dlq:
        with pytest.raises(ValidationError, match="topic"):
            dlq.add("", b"x")
        with pytest.raises(ValidationError, match="msgpack"):
            dlq.add("t", object())
        with pytest.raises(ValidationError, match="id must be"):
            dlq.add("t", b"x", id=1.5)


def test_threads_share_one_queue(tmp_path):
    with DeadLetterQueue(tmp_path / "d.db", max_entries=10_000) as dlq:

        def work(k):
            for i in range(100):
                dlq.add("t", b"x", id=f"{k}-{i}")

        ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert len(dlq) == 400
        assert len({e.id for e in dlq}) == 400


def _proc_add(path, k, n, max_entries):
    with DeadLetterQueue(path, max_entries=max_entries) as dlq:
        for i in range(n):
            dlq.add(f"p{k}", b"%d" % i, id=f"{k}-{i}", attempts=i)


ADD_SCRIPT = """
import sys
from pybus import DeadLetterQueue
path, k, n, max_entries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with DeadLetterQueue(path, max_entries=max_entries) as dlq:
    for i in range(n):
        dlq.add(f"p{k}", b"%d" % i, id=f"{k}-{i}", attempts=i)
"""


@pytest.mark.parametrize("method", ["fork", "exec"])
def test_two_processes_write_concurrently(tmp_path, method):
    path = str(tmp_path / "d.db")
    with DeadLetterQueue(path, max_entries=150) as dlq:
        dlq.add("parent", b"p", id="parent")  # the parent holds an open connection across fork
        if method == "fork":
            ctx = mp.get_context("fork")
            ps = [ctx.Process(target=_proc_add, args=(path, k, 100, 150)) for k in range(2)]
            for p in ps:
                p.start()
            for p in ps:
                p.join(60)
                assert p.exitcode == 0
        else:
            # Fresh interpreters (cwd away from the source tree, so the installed pybus loads).
            cmd = [sys.executable, "-c", ADD_SCRIPT, path]
            procs = [subprocess.Popen([*cmd, str(k), "100", "150"], cwd=tmp_path) for k in range(2)]
            assert [p.wait(60) for p in procs] == [0, 0]
        # 201 adds into a 150 bound: exactly 51 evicted, count exact, ids unique.
        assert len(dlq) == 150
        assert dlq.evictions == 51
        ids = [e.id for e in dlq]
        assert len(set(ids)) == 150
        # Per-process order survives: each process's surviving entries are its newest ones.
        for k in range(2):
            mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"{k}-")]
            assert mine == sorted(mine) and (not mine or mine[-1] == 99)
        dlq.add("parent", b"q", id="parent2")  # parent connection still works after the fork
        assert dlq.get("parent2") is not None


# ---- a corrupt headers column (written behind pybus's back with raw sqlite3) ---------------


def _corrupt_headers(path, ident, blob):
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE dead_letters SET headers = ? WHERE id = ?", (blob, ident))
    db.close()


def _three_entries(path):
    with DeadLetterQueue(path, registry=False) as q:
        q.add("hd.a", b"a", id="ok-1", headers={"k": 1})
        q.add("hd.b", b"b", id="bad", headers={"k": 2})
        q.add("hd.c", b"c", id="ok-2", headers={"k": 3})


def _rows(path):
    db = sqlite3.connect(path)
    rows = db.execute("SELECT id, headers FROM dead_letters ORDER BY seq").fetchall()
    db.close()
    return rows


@pytest.mark.parametrize("blob, why", [
    (b"\xc1", "undecodable msgpack headers"),  # 0xc1: never valid msgpack
    (b"\x81\xa1k", "undecodable msgpack headers"),  # a map cut short
    (msgpack.packb([1, 2]), "headers stored as a msgpack list, not a map"),
])
def test_a_corrupt_headers_row_is_readable_and_counted(tmp_path, blob, why):
    path = tmp_path / "d.db"
    _three_entries(path)
    _corrupt_headers(path, "bad", blob)
    with DeadLetterQueue(path, registry=False) as q:
        entries = q.list()
        assert [(e.id, e.headers, e.headers_error is None) for e in entries] == [
            ("ok-1", {"k": 1}, True), ("bad", {}, False), ("ok-2", {"k": 3}, True)]
        bad = q.get("bad")
        assert bad is not None and bad.headers == {} and why in bad.headers_error
        assert bad.payload == b"b" and bad.topic == "hd.b"  # the rest of the row is intact
        assert [e.id for e in q] == ["ok-1", "bad", "ok-2"]
        assert q.stats()["undecodable_headers"] == 1  # one entry, however often it is read


def test_replay_refuses_an_entry_with_corrupt_headers_and_keeps_it_and_the_rest(tmp_path):
    path = tmp_path / "d.db"
    _three_entries(path)
    _corrupt_headers(path, "bad", b"\xc1")
    before = _rows(path)
    sent = []
    with DeadLetterQueue(path, registry=False) as q:
        with pytest.raises(pybus.BusError, match=r"entry 'bad' \(seq 2\) has undecodable "
                           r"msgpack headers .*not replayed") as ei:
            q.replay(to=sent.append)
        assert ei.value.details == {"id": "bad", "seq": 2}
        assert [e.id for e in sent] == ["ok-1"]
        assert _rows(path) == before[1:]  # the corrupt row and the one after it stay
        # purging it lets replay go on
        assert q.purge(ids=["bad"]) == 1
        assert q.replay(to=sent.append) == 1
    assert [e.id for e in sent] == ["ok-1", "ok-2"] and _rows(path) == []


def test_the_dlq_cli_reads_a_corrupt_headers_row_and_refuses_to_replay_it(tmp_path, capsys):
    from pybus.cli import main

    path = tmp_path / "d.db"
    _three_entries(path)
    _corrupt_headers(path, "bad", b"\xc1")
    before = _rows(path)
    for argv in (["dlq", "ls", str(path)], ["dlq", "show", str(path), "bad"]):
        assert main(argv) == 0, argv
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and "bad" in out
    sub = pybus.Subscriber("tcp://127.0.0.1:*", ["hd.#"], bind=True, registry=False)
    try:
        code = main(["dlq", "replay", str(path), "--to", sub.endpoints[0], "--timeout", "30"])
        out, err = capsys.readouterr()
        assert code == 1 and out == "" and "Traceback" not in err, err
        assert err.startswith("pybus dlq replay: error: entry 'bad' (seq 2) has undecodable "
                              "msgpack headers"), err
        assert err.endswith(f"replayed 1 entry, the failed one and the rest stay in {path} "
                            "(2 left)\n"), err
        got = sub.recv_batch(10, timeout=30)  # returns once something came
        assert [(m.topic, m.payload) for m in got] == [("hd.a", b"a")]
    finally:
        sub.close()
    assert _rows(path) == before[1:]
