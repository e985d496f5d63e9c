"""The work queue's durable journal: unfinished messages in SQLite (WAL mode).

A message is committed before ``WorkQueue.put()`` returns and forgotten once it is
acknowledged or dead-lettered, so a producer killed at any moment and restarted on the same
file redelivers every message that was not finished.

Layout. Per-message rows cost SQLite several microseconds each (measured ~3-4 us per insert
plus ~2 us per delete on the dev box), more than the whole rest of the queue's path, so the
journal stores what the queue does in batches:

* ``batches(first_id, n, body)``: one row per ``put()``/``put_many()`` call; its messages have
  the consecutive ids ``first_id .. first_id + n - 1`` and ``body`` is one msgpack array of
  ``[topic, payload, flags, headers, ts_ns, due_ns, priority, key]`` entries (``due_ns``: not
  to be delivered before, ns since the epoch, 0: at once; ``priority`` 0-9; ``key``: the
  ordering key or None; files written before these have five to seven fields);
* ``acks(batch, ids)``: finished ids (packed little-endian u64) of batches that still have
  unfinished messages; written in batches by the dispatcher;
* when every message of a batch is finished, its batch row and its ack rows are deleted in the
  same transaction;
* ``dedupe(key, id, expires_ns)``: ``put(..., dedupe_key=)`` keys, written with their message
  and deleted once expired;
* ``retries(id, body)``: messages that failed and wait for their retry; ``body`` is msgpack
  ``[due_ns, failures, error_type, error_message, error_code, first_failure_s,
  last_failure_s]``, so the retry's time and the attempts made survive a restart; deleted
  when the message is finished.

A message is unfinished exactly when its batch row exists and no ack row of that batch names
it. Ack rows only exist for live batches, so the file stays bounded by what is unfinished.

Durability: with ``sync="normal"`` (the default) a committed put survives the death of the
process (SIGKILL included) but the last transactions may be lost on a power cut or kernel
crash; ``sync="full"`` fsyncs every commit and survives those too, at a large cost in
throughput.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import threading
from array import array
from collections.abc import Iterable
from typing import Any

import msgpack

from ..errors import BusError, ClosedError, ValidationError

__all__ = ["Journal", "Row", "unfinished"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    first_id INTEGER PRIMARY KEY,
    n        INTEGER NOT NULL,
    body     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS acks (
    batch INTEGER NOT NULL,
    ids   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS acks_batch ON acks(batch);
CREATE TABLE IF NOT EXISTS dedupe (
    key        TEXT PRIMARY KEY,
    id         INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe(expires_ns);
CREATE TABLE IF NOT EXISTS retries (
    id    INTEGER PRIMARY KEY,
    body  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_SYNC_MODES = {"normal": "NORMAL", "full": "FULL"}
_BIG_ENDIAN = sys.byteorder == "big"

#: (id, topic, payload, flags, packed headers or None, put time in ns since the epoch, and when
#: present the time before which it must not be delivered, ns since the epoch, and priority)
Row = tuple[Any, ...]


def _pack_ids(ids: list[int]) -> bytes:
    a = array("Q", ids)
    if _BIG_ENDIAN:  # pragma: no cover
        a.byteswap()
    return a.tobytes()


def _unpack_ids(blob: bytes) -> list[int]:
    a = array("Q")
    a.frombytes(blob)
    if _BIG_ENDIAN:  # pragma: no cover
        a.byteswap()
    return a.tolist()


def unfinished(db: sqlite3.Connection) -> list[tuple[int, int, list[Row]]]:
    """The batches in a journal database, oldest first, as ``(first_id, n, rows)`` where
    ``rows`` are the unfinished messages (read only: ``pybus queue stat`` reads a live
    queue's file with it)."""
    batches = db.execute("SELECT first_id, n, body FROM batches ORDER BY first_id").fetchall()
    ack_rows = db.execute("SELECT batch, ids FROM acks").fetchall()
    done: dict[int, set[int]] = {}
    for b, blob in ack_rows:
        done.setdefault(b, set()).update(_unpack_ids(blob))
    out = []
    for first, n, body in batches:
        entries = msgpack.unpackb(body, use_list=False)
        finished = done.get(first, ())
        rows: list[Row] = [(first + i, *e) for i, e in enumerate(entries)
                           if first + i not in finished]
        out.append((first, n, rows))
    return out


class Journal:
    """SQLite journal of the messages a :class:`pybus.WorkQueue` has not finished.

    Thread-safe: one connection guarded by a lock (SQLite allows one writer at a time anyway).

    Parameters
    ----------
    path : str or os.PathLike
        Database file; created when missing.
    sync : {"normal", "full"}
        SQLite ``synchronous`` setting in WAL mode (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], sync: str = "normal") -> None:
        if sync not in _SYNC_MODES:
            raise ValidationError(f"journal sync {sync!r} is not allowed; use 'normal' or 'full'")
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={_SYNC_MODES[sync]}")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ValidationError(
                f"cannot open the journal {self.path!r}: {exc}; give a writable SQLite file path"
            ) from None
        self._db: sqlite3.Connection | None = db
        # A fresh epoch per open: message ids are (epoch << 32) + counter, so ids made after a
        # restart never collide with the recovered ones.
        with self._tx() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            epoch = (row[0] + 1) if row else random.randrange(1, 1 << 20)
            if epoch >= 1 << 31:
                epoch = 1
            cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        self.epoch = epoch

    class _Tx:
        def __init__(self, j: Journal) -> None:
            self.j = j

        def __enter__(self) -> sqlite3.Cursor:
            self.j._lock.acquire()
            db = self.j._db
            if db is None:
                self.j._lock.release()
                raise ClosedError("the journal is closed")
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self.j._lock.release()
                raise BusError(f"journal {self.j.path!r}: {exc}") from exc
            return db.cursor()

        def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
            db = self.j._db
            assert db is not None
            try:
                db.execute("COMMIT" if et is None else "ROLLBACK")
            finally:
                self.j._lock.release()

    def _tx(self) -> Journal._Tx:
        return Journal._Tx(self)

    def add(self, first_id: int, entries: Iterable[tuple[Any, ...]],
            dedupe: tuple[str, int, int] | None = None, now_ns: int = 0) -> None:
        """Commit one batch: ``entries`` are ``(topic, payload, flags, headers, ts_ns,
        due_ns, priority, key)`` of the messages with ids ``first_id``, ``first_id + 1``, ...
        (one transaction, one row); with ``dedupe``, its ``(key, id, expires_ns)`` row too,
        and the rows expired at ``now_ns`` go."""
        items = list(entries)
        body = msgpack.packb(items)
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO batches (first_id, n, body) VALUES (?, ?, ?)",
                (first_id, len(items), body),
            )
            if dedupe is not None:
                cur.execute("DELETE FROM dedupe WHERE expires_ns <= ?", (now_ns,))
                cur.execute("INSERT OR REPLACE INTO dedupe (key, id, expires_ns) "
                            "VALUES (?, ?, ?)", dedupe)

    def dedupe_keys(self, now_ns: int) -> list[tuple[str, int, int]]:
        """The ``(key, id, expires_ns)`` rows not expired at ``now_ns``, oldest first."""
        with self._lock:
            if self._db is None:
                raise ClosedError("the journal is closed")
            return self._db.execute(
                "SELECT key, id, expires_ns FROM dedupe WHERE expires_ns > ? "
                "ORDER BY expires_ns", (now_ns,)).fetchall()

    def progress(self, acked: list[tuple[int, list[int]]], completed: list[int],
                 retries: list[tuple[int, list[Any]]] = (),  # type: ignore[assignment]
                 retried_done: list[int] = ()) -> None:  # type: ignore[assignment]
        """Record finished messages in one transaction.

        ``acked``: ``(batch first_id, finished ids)`` for batches that still have unfinished
        messages; ``completed``: first ids of batches whose messages are all finished;
        ``retries``: ``(id, body)`` of messages waiting for a retry (module docstring);
        ``retried_done``: ids whose retry rows go (the message is finished).
        """
        if not acked and not completed and not retries and not retried_done:
            return
        with self._tx() as cur:
            if retried_done:
                cur.executemany("DELETE FROM retries WHERE id = ?",
                                [(i,) for i in retried_done])
            if retries:
                cur.executemany("INSERT OR REPLACE INTO retries (id, body) VALUES (?, ?)",
                                [(i, msgpack.packb(b)) for i, b in retries])
            if acked:
                cur.executemany(
                    "INSERT INTO acks (batch, ids) VALUES (?, ?)",
                    [(b, _pack_ids(ids)) for b, ids in acked],
                )
            if completed:
                rows = [(b,) for b in completed]
                cur.executemany("DELETE FROM batches WHERE first_id = ?", rows)
                cur.executemany("DELETE FROM acks WHERE batch = ?", rows)

    def recover(self) -> list[tuple[int, int, list[Row]]]:
        """Every batch still in the journal, oldest first, as ``(first_id, n, rows)`` where
        ``rows`` are its unfinished messages."""
        with self._lock:
            if self._db is None:
                raise ClosedError("the journal is closed")
            return unfinished(self._db)

    def retries(self) -> dict[int, list[Any]]:
        """Messages waiting for a retry: id -> body (module docstring)."""
        with self._lock:
            if self._db is None:
                raise ClosedError("the journal is closed")
            return {i: msgpack.unpackb(b) for i, b in
                    self._db.execute("SELECT id, body FROM retries").fetchall()}

    def __len__(self) -> int:
        """Unfinished messages in the journal."""
        return sum(len(rows) for _, _, rows in self.recover())

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
