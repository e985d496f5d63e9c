"""`pybus dlq ls --limit`, `dlq replay --id`, `dlq purge --id/--older-than`, and a failed replay:
the entries selected are the only ones touched, checked in the SQLite file with the raw sqlite3
module (an oracle independent of pybus.dlq), over real tcp sockets on 127.0.0.1.

Ages for --older-than are written through ``DeadLetterQueue.add(last_failure=...)`` (Unix seconds,
the unit of the ``last_failure`` column) hours apart from the threshold, so the wall clock cannot
move an entry across it during a test.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest

import pybus
from pybus.cli import main

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0
HOUR = 3600.0


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def stored(path: Path) -> list[tuple]:
    """(id, topic, payload, last_failure) of every row, in insertion order, read with sqlite3;
    also checks the count the triggers keep in ``meta``."""
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT id, topic, payload, last_failure FROM dead_letters "
                           "ORDER BY seq").fetchall()
        (count,) = con.execute("SELECT value FROM meta WHERE key = 'count'").fetchone()
    finally:
        con.close()
    assert count == len(rows)
    return rows


def ids(path: Path) -> list[str]:
    return [r[0] for r in stored(path)]


def nobody_port() -> int:
    """A port nobody listens on (nothing binds it afterwards, so the usual race is harmless)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ages in hours at the time of the test; insertion order deliberately differs from age order
AGES = {"e1": 0.01, "e2": 2.0, "e3": 0.02, "e4": 1.0, "e5": 0.0}
TOPICS = {"e1": "t.a", "e2": "t.b", "e3": "t.a", "e4": "t.a", "e5": "t.b"}


@pytest.fixture
def dlq5(tmp_path: Path) -> Path:
    path = tmp_path / "dlq.db"
    now = time.time()
    with pybus.DeadLetterQueue(path, registry=False) as q:
        for i, (ident, age) in enumerate(AGES.items(), 1):
            q.add(TOPICS[ident], f"payload-{i}".encode(), id=ident, last_failure=now - age * HOUR,
                  error=ValueError(f"bad {i}"))
    rows = stored(path)
    # the oracle agrees with what was written: Unix seconds in last_failure
    assert [r[0] for r in rows] == list(AGES)
    assert all(abs(r[3] - (now - AGES[r[0]] * HOUR)) < 1e-3 for r in rows)
    return path


# ------------------------------------------------------------------------------ ls --limit


def test_ls_limit_lists_the_oldest_n_and_counts_the_rest(capsys, tmp_path):
    path = tmp_path / "dlq.db"
    now = time.time()
    with pybus.DeadLetterQueue(path, registry=False) as q:
        for i in range(1, 6):  # inserted oldest first: e1 failed first
            q.add("ls.x", b"p", id=f"e{i}", last_failure=now - (6 - i) * HOUR)
    code, out, _ = run(capsys, "dlq", "ls", str(path), "--limit", "2", "--json")
    assert code == 0 and [json.loads(x)["id"] for x in out.splitlines()] == ["e1", "e2"]
    code, out, _ = run(capsys, "dlq", "ls", str(path), "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("ID") and len(lines) == 4
    assert [x.split()[0] for x in lines[1:3]] == ["e1", "e2"]
    assert lines[3] == "... 3 more (use --limit or --topic)"
    for n in ("5", "6", "10000"):  # as many as there are, or more: all of them, nothing more
        code, out, _ = run(capsys, "dlq", "ls", str(path), "--limit", n)
        lines = out.splitlines()
        assert code == 0 and [x.split()[0] for x in lines[1:]] == ["e1", "e2", "e3", "e4", "e5"]
        code, out, _ = run(capsys, "dlq", "ls", str(path), "--limit", n, "--json")
        assert [json.loads(x)["id"] for x in out.splitlines()] == ["e1", "e2", "e3", "e4", "e5"]
    code, out, _ = run(capsys, "dlq", "ls", str(path), "--limit", "1", "--json")
    assert [json.loads(x)["id"] for x in out.splitlines()] == ["e1"]


def test_ls_limit_with_topic_counts_only_that_topic(capsys, dlq5):
    # t.a holds e1, e3, e4; t.b holds e2, e5
    code, out, _ = run(capsys, "dlq", "ls", str(dlq5), "--topic", "t.a", "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and [x.split()[0] for x in lines[1:3]] == ["e1", "e3"]
    assert lines[3:] == ["... 1 more (use --limit or --topic)"]
    code, out, _ = run(capsys, "dlq", "ls", str(dlq5), "--topic", "t.a", "--limit", "3")
    lines = out.splitlines()
    assert code == 0 and [x.split()[0] for x in lines[1:]] == ["e1", "e3", "e4"]  # no "more"
    code, out, _ = run(capsys, "dlq", "ls", str(dlq5), "--topic", "t.b")
    lines = out.splitlines()
    assert code == 0 and [x.split()[0] for x in lines[1:]] == ["e2", "e5"]


@pytest.mark.parametrize("value", ["0", "-1", "10001", "abc", "2.5", ""])
def test_ls_bad_limit_is_a_usage_error(capsys, dlq5, value):
    code, out, err = run(capsys, "dlq", "ls", str(dlq5), "--limit", value)
    assert code == 2 and out == ""
    assert "--limit" in err and err.splitlines()[-1].startswith("pybus dlq ls: error: ")
    assert ids(dlq5) == list(AGES)


# ------------------------------------------------------------------------------ replay --id


def test_replay_id_publishes_and_removes_only_those(capsys, dlq5):
    before = stored(dlq5)
    sub = pybus.Subscriber("tcp://127.0.0.1:*", ["t.#"], bind=True, registry=False)
    try:
        code, _, err = run(capsys, "dlq", "replay", str(dlq5), "--to", sub.endpoints[0],
                           "--id", "e4", "--id", "e2", "--timeout", str(WAIT))
        assert code == 0 and err == f"replayed 2 entries to {sub.endpoints[0]}; 3 left\n"
        got = drain(sub, 2, timeout=WAIT)
        # oldest (by insertion) first, whatever the order of --id
        assert [(m.topic, m.payload) for m in got] == [("t.b", b"payload-2"),
                                                       ("t.a", b"payload-4")]
    finally:
        sub.close()
    assert stored(dlq5) == [r for r in before if r[0] not in ("e2", "e4")]


def test_replay_unknown_id_is_a_usage_error_and_replays_nothing(capsys, dlq5):
    before = stored(dlq5)
    sub = pybus.Subscriber("tcp://127.0.0.1:*", ["#"], bind=True, registry=False)
    try:
        code, _, err = run(capsys, "dlq", "replay", str(dlq5), "--to", sub.endpoints[0],
                           "--id", "e1", "--id", "nope", "--timeout", str(WAIT))
        assert code == 2 and "no entry with id 'nope'" in err and err.count("\n") == 1
        assert stored(dlq5) == before
        # nothing was published: the next replay's message is the first the subscriber sees
        code, _, _ = run(capsys, "dlq", "replay", str(dlq5), "--to", sub.endpoints[0],
                         "--id", "e3", "--timeout", str(WAIT))
        assert code == 0
        got = drain(sub, 1, timeout=WAIT)
        assert [m.payload for m in got] == [b"payload-3"]
        assert sub.recv_batch(10, timeout=0.5) == []
    finally:
        sub.close()
    assert ids(dlq5) == ["e1", "e2", "e4", "e5"]


# ------------------------------------------------------------------------------ purge


def test_purge_id_deletes_only_those(capsys, dlq5):
    before = stored(dlq5)
    code, _, err = run(capsys, "dlq", "purge", str(dlq5), "--id", "e3", "--id", "e1", "--yes")
    assert code == 0 and err == "deleted 2 entries; 3 left\n"
    assert stored(dlq5) == [r for r in before if r[0] not in ("e1", "e3")]
    code, _, err = run(capsys, "dlq", "purge", str(dlq5), "--id", "e1", "--yes")  # gone already
    assert code == 0 and err == "deleted 0 entries; 3 left\n"
    assert ids(dlq5) == ["e2", "e4", "e5"]


def test_purge_older_than_deletes_only_entries_failed_longer_ago(capsys, dlq5):
    before = stored(dlq5)
    # e2 failed 2 h ago and e4 1 h ago; the others within the last few minutes
    code, _, err = run(capsys, "dlq", "purge", str(dlq5), "--older-than", str(0.5 * HOUR),
                       "--yes")
    assert code == 0 and err == "deleted 2 entries; 3 left\n"
    assert stored(dlq5) == [r for r in before if r[0] not in ("e2", "e4")]
    code, _, err = run(capsys, "dlq", "purge", str(dlq5), "--older-than", str(0.5 * HOUR),
                       "--yes")
    assert code == 0 and err == "deleted 0 entries; 3 left\n"


def test_purge_older_than_1_5_hours(capsys, dlq5):
    code, _, err = run(capsys, "dlq", "purge", str(dlq5), "--older-than", "5400", "--yes")
    assert code == 0 and err == "deleted 1 entry; 4 left\n"
    assert ids(dlq5) == ["e1", "e3", "e4", "e5"]


def test_purge_filters_combine(capsys, dlq5):
    # old AND of topic t.a: e4 only (e2 is old but t.b)
    code, _, err = run(capsys, "dlq", "purge", str(dlq5), "--older-than", "1800",
                       "--topic", "t.a", "--yes")
    assert code == 0 and err == "deleted 1 entry; 4 left\n"
    assert ids(dlq5) == ["e1", "e2", "e3", "e5"]
    # old AND one of these ids: e2 (e3 is recent)
    code, _, err = run(capsys, "dlq", "purge", str(dlq5), "--older-than", "1800",
                       "--id", "e2", "--id", "e3", "--yes")
    assert code == 0 and err == "deleted 1 entry; 3 left\n"
    assert ids(dlq5) == ["e1", "e3", "e5"]


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_purge_bad_older_than_is_a_usage_error_and_deletes_nothing(capsys, dlq5, value):
    before = stored(dlq5)
    code, out, err = run(capsys, "dlq", "purge", str(dlq5), f"--older-than={value}", "--yes")
    assert code == 2 and out == "" and "--older-than" in err
    assert stored(dlq5) == before


# ------------------------------------------------------------------------------ failed replay


def test_replay_with_nobody_listening_fails_and_keeps_every_entry(capsys, dlq5):
    before = stored(dlq5)
    ep = f"tcp://127.0.0.1:{nobody_port()}"
    code, out, err = run(capsys, "dlq", "replay", str(dlq5), "--to", ep, "--timeout", "1")
    assert code == 1 and out == ""
    assert err == (f"pybus dlq replay: error: fewer than 1 subscriber(s) on {ep} after 1 s; "
                   "nothing was replayed\n")
    assert stored(dlq5) == before
    code, _, err = run(capsys, "dlq", "replay", str(dlq5), "--to", ep, "--id", "e2",
                       "--timeout", "1")
    assert code == 1 and "nothing was replayed" in err
    assert stored(dlq5) == before


def test_replay_stops_at_an_undecodable_entry_and_keeps_it_and_the_rest(capsys, tmp_path):
    path = tmp_path / "dlq.db"
    with pybus.DeadLetterQueue(path, registry=False) as q:
        q.add("bad.a", b"fine", id="ok-1")
        q.add("bad.b", b"\xc1", id="corrupt", payload_format="msgpack")  # 0xc1: never valid
        q.add("bad.c", b"also fine", id="ok-2")
    before = stored(path)
    sub = pybus.Subscriber("tcp://127.0.0.1:*", ["bad.#"], bind=True, registry=False)
    try:
        code, out, err = run(capsys, "dlq", "replay", str(path), "--to", sub.endpoints[0],
                             "--timeout", str(WAIT))
        assert code == 1 and out == "" and err.count("\n") == 1
        assert err.startswith("pybus dlq replay: error: entry 'corrupt' has an undecodable "
                              "msgpack payload")
        assert err.endswith(f"replayed 1 entry, the failed one and the rest stay in {path} "
                            "(2 left)\n")
        got = drain(sub, 1, timeout=WAIT)
        assert [(m.topic, m.payload) for m in got] == [("bad.a", b"fine")]
        assert sub.recv_batch(10, timeout=0.5) == []
    finally:
        sub.close()
    assert stored(path) == before[1:]


def test_show_and_ls_read_an_entry_whose_headers_column_is_corrupt(capsys, tmp_path):
    path = tmp_path / "dlq.db"
    with pybus.DeadLetterQueue(path, registry=False) as q:
        q.add("h.a", b"one", id="fine", headers={"k": "v"})
        q.add("h.b", b"two", id="broken", headers={"k": "v"})
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute("UPDATE dead_letters SET headers = x'c1' WHERE id = 'broken'")
    finally:
        con.close()
    code, out, _ = run(capsys, "dlq", "ls", str(path), "--json")
    assert code == 0 and [json.loads(ln)["id"] for ln in out.splitlines()] == ["fine", "broken"]
    code, out, _ = run(capsys, "dlq", "show", str(path), "broken", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["headers"] == {} and shown["headers_error"]
    code, out, _ = run(capsys, "dlq", "show", str(path), "fine", "--json")
    assert code == 0 and json.loads(out)["headers"] == {"k": "v"}
    assert "headers_error" not in json.loads(out)
