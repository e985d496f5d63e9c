"""The work queue's durable journal: unacknowledged messages in SQLite (WAL mode).

A message is inserted (and committed) before ``WorkQueue.put()`` returns and deleted when it
is acknowledged or dead-lettered, so a producer killed at any moment and restarted on the same
file redelivers every message that was not yet acknowledged.

Durability: with ``sync="normal"`` (the default) a committed put survives the death of the
process (SIGKILL included) but the last transactions may be lost on a power cut or kernel
crash; ``sync="full"`` fsyncs every commit and survives those too, at a large cost in
throughput.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import ClosedError, ValidationError

__all__ = ["Journal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id      INTEGER PRIMARY KEY,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    flags   INTEGER NOT NULL,
    headers BLOB,
    ts      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_SYNC_MODES = {"normal": "NORMAL", "full": "FULL"}

#: SQLite binds at most 32766 host parameters per statement (>= 3.32); stay well below.
_DELETE_CHUNK = 500

#: (id, topic, payload, flags, packed headers or None, put time in ns since the epoch)
Row = tuple[int, str, bytes, int, "bytes | None", int]


class Journal:
    """SQLite journal of the messages a :class:`WorkQueue` has not finished.

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
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise ValidationError(
                f"cannot open the journal {self.path!r}: {exc}; give a writable file path"
            ) from None
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={_SYNC_MODES[sync]}")
        db.executescript(_SCHEMA)
        # A fresh epoch per open: message ids are (epoch << 32) | counter, so ids made after a
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
            db.execute("BEGIN IMMEDIATE")
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

    def add(self, rows: Iterable[Row]) -> None:
        """Insert :data:`Row` tuples in ONE committed transaction."""
        with self._tx() as cur:
            cur.executemany(
                "INSERT OR REPLACE INTO messages (id, topic, payload, flags, headers, ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def remove(self, ids: list[int]) -> None:
        """Delete the given ids in one transaction (missing ids are ignored)."""
        if not ids:
            return
        with self._tx() as cur:
            for i in range(0, len(ids), _DELETE_CHUNK):
                chunk = ids[i : i + _DELETE_CHUNK]
                cur.execute(
                    f"DELETE FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk
                )

    def recover(self) -> Iterator[Row]:
        """Every message still in the journal, oldest first."""
        with self._lock:
            if self._db is None:
                raise ClosedError("the journal is closed")
            rows = self._db.execute(
                "SELECT id, topic, payload, flags, headers, ts FROM messages ORDER BY id"
            ).fetchall()
        return iter(rows)

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                raise ClosedError("the journal is closed")
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
