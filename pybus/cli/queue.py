"""``pybus queue stat JOURNAL``: what a work queue's journal holds, read only (the queue may be
running): unfinished messages by priority, the delayed ones and the next due time, those
waiting for a retry, the keys with messages waiting and the keys blocked by a failed message,
and the live dedupe keys.

What the running queue has not flushed yet (at most a few milliseconds of acks and failures)
is not in the file; ``stats()`` and the metrics are the live view.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
from collections import Counter
from typing import Any

from ._common import add_command, usage_error

# journal row fields (pybus.store.journal): id, topic, payload, flags, headers, ts, due, prio, key
_DUE, _PRIO, _KEY = 6, 7, 8


def _open(path: str) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise usage_error(f"no work-queue journal at {path!r}: file not found")
    try:  # read only: never write into a live queue's file
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise usage_error(f"{path!r} is not a pybus work-queue journal ({exc})") from None
    if not {"batches", "acks"} <= tables:
        db.close()
        raise usage_error(f"{path!r} is an SQLite file without the batches and acks tables; "
                          "not a pybus work-queue journal")
    return db


def journal_stat(path: str, now_ns: int | None = None) -> dict[str, Any]:
    """The numbers ``pybus queue stat`` prints, as a dict."""
    from ..store.journal import unfinished

    now_ns = time.time_ns() if now_ns is None else now_ns
    db = _open(path)
    try:
        rows = [r for _, _, rs in unfinished(db) for r in rs]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        dedupe = (db.execute("SELECT count(*) FROM dedupe WHERE expires_ns > ?",
                             (now_ns,)).fetchone()[0] if "dedupe" in tables else 0)
        retrying = ({r[0] for r in db.execute("SELECT id FROM retries")}
                    if "retries" in tables else set())
    finally:
        db.close()
    due = [r[_DUE] for r in rows if len(r) > _DUE and r[_DUE] > now_ns]
    by_priority = [0] * 10
    for r in rows:
        if not (len(r) > _DUE and r[_DUE] > now_ns):
            by_priority[r[_PRIO] if len(r) > _PRIO else 0] += 1
    keyed = [r for r in rows if len(r) > _KEY and r[_KEY] is not None]
    per_key = Counter(r[_KEY] for r in keyed)
    longest = per_key.most_common(5)
    holders: dict[str, int] = {}  # each key's first unfinished message holds it
    for r in keyed:
        holders[r[_KEY]] = min(holders.get(r[_KEY], r[0]), r[0])
    live = {r[0] for r in rows}
    return {
        "unfinished": len(rows),
        "ready_by_priority": by_priority,
        "delayed": len(due),
        "next_due_ns": min(due) if due else None,
        "next_due_s": (min(due) - now_ns) / 1e9 if due else None,
        "keys": len(per_key),
        "keys_waiting": sum(n - 1 for n in per_key.values()),
        "retrying": len(retrying & live),
        "blocked_keys": sum(1 for mid in holders.values() if mid in retrying),
        "longest_keys": [[k, n] for k, n in longest],
        "dedupe_keys": dedupe,
    }


def cmd_queue(args: argparse.Namespace) -> int:
    s = journal_stat(args.journal)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"journal {args.journal}: {s['unfinished']:,} unfinished messages")
    ready = "  ".join(f"{p}: {n:,}" for p, n in reversed(list(enumerate(s["ready_by_priority"])))
                      if n)
    print(f"  not delayed, by priority: {ready or 'none'}")
    if s["delayed"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["next_due_ns"] / 1e9))
        print(f"  delayed: {s['delayed']:,}, next due {when} (in {s['next_due_s']:.1f} s)")
    else:
        print("  delayed: 0")
    longest = ", ".join(f"{k} ({n})" for k, n in s["longest_keys"])
    print(f"  keys: {s['keys']:,}, messages waiting behind an earlier one of their key: "
          f"{s['keys_waiting']:,}" + (f"; most queued: {longest}" if longest else ""))
    print(f"  waiting for a retry: {s['retrying']:,}; keys blocked by a failed message: "
          f"{s['blocked_keys']:,}")
    print(f"  dedupe keys in their window: {s['dedupe_keys']:,}")
    return 0


def register(sub: Any) -> None:
    """Add ``pybus queue stat`` to the ``pybus`` parser."""
    q = add_command(sub, "queue", cmd_queue, "what a work queue's journal holds",
                    "Read a work-queue journal (SQLite, read only: the queue may be running).")
    qsub = q.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    st = qsub.add_parser("stat", help="depth by priority, delayed, keys, dedupe keys",
                         description="Unfinished messages by priority, the delayed ones and "
                                     "the next due time, keys with messages waiting, live "
                                     "dedupe keys.")
    st.add_argument("journal", metavar="JOURNAL")
    st.add_argument("--json", action="store_true", help="print JSON")
