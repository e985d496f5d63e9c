"""``pybus queue stat JOURNAL`` (issue 15 item 5): read only, on a live queue's journal."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time

import pybus
from pybus.cli.main import main


def _digest(journal: str) -> str:
    h = hashlib.sha256()
    for suffix in ("", "-wal"):
        with open(journal + suffix, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _stat(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["queue", "stat", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_counts_what_was_put_on_a_live_queue_without_writing(tmp_path, capsys) -> None:
    journal = str(tmp_path / "jobs.db")
    with pybus.WorkQueue("tcp://127.0.0.1:*", journal=journal, registry=False) as q:
        for i in range(7):
            q.put("jobs.t", b"%d" % i, key="customer-42")
        for i in range(3):
            q.put("jobs.t", b"k%d" % i, key=f"other-{i}")
        q.put("jobs.t", b"urgent", priority=9)
        q.put("jobs.t", b"urgent", priority=9)
        at = time.time() + 600
        q.put("jobs.t", b"later", not_before=at)
        q.put("jobs.t", b"later", delay_s=900)
        q.put("jobs.t", b"once", dedupe_key="pay-1")
        q.put("jobs.t", b"once", dedupe_key="pay-1")  # refused: not in the journal twice
        before = _digest(journal)
        code, out, err = _stat(capsys, journal, "--json")
        assert code == 0 and err == ""
        s = json.loads(out)
        assert _digest(journal) == before  # nothing written, in the file or its WAL
        assert s["unfinished"] == 15
        assert s["ready_by_priority"] == [11, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        assert s["delayed"] == 2 and abs(s["next_due_ns"] / 1e9 - at) < 0.01
        assert 590 < s["next_due_s"] <= 600
        assert s["keys"] == 4 and s["keys_waiting"] == 6
        assert s["longest_keys"][0] == ["customer-42", 7]
        assert s["dedupe_keys"] == 1
        code, out, _ = _stat(capsys, journal)
        assert code == 0
        assert "15 unfinished" in out and "9: 2  0: 11" in out and "customer-42 (7)" in out


def test_a_missing_file_or_a_stranger_is_a_usage_error(tmp_path, capsys) -> None:
    code, _, err = _stat(capsys, str(tmp_path / "nope.db"))
    assert code == 2 and "file not found" in err
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    code, _, err = _stat(capsys, str(other))
    assert code == 2 and "not a pybus work-queue journal" in err
