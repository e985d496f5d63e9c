"""No duplicate side effects: a Worker with an idempotency store skips messages whose effect
was already committed.

The work queue delivers at least once: a worker killed after its handler's effect but before
the ack reaches the queue gets its messages redelivered elsewhere. ``Worker(...,
idempotency=store)`` asks the store before running the handler; a message the store knows is
acked as a duplicate without running the handler again. After the handler returns, the worker
records the message.

That alone leaves a window: an effect committed, the worker killed before the record. To close
it, commit the effect and the record in one transaction, the exactly-once-effect recipe.
With :class:`SQLiteIdempotency`, keep the effect in the same database::

    store = SQLiteIdempotency("effects.db")

    def handle(msg):
        with store.transaction() as db:  # the message being handled in this thread
            db.execute("INSERT INTO emails (customer) VALUES (?)", (msg.payload["to"],))

    Worker(endpoint, handle, idempotency=store)

A redelivered copy that races the first one (an ack deadline that passed) cannot commit
twice either: its ``transaction`` finds the id recorded, rolls back, and the worker acks it
as a duplicate.

Other stores implement :class:`IdempotencyStore` (``seen``, ``record``; the same transaction
pattern for the application's own database). The id is :func:`message_key`: stable through
redeliveries and queue restarts on a journal.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

from ..errors import AlreadyHandledError, ValidationError

__all__ = [
    "AlreadyHandledError", "IdempotencyStore", "SQLiteIdempotency", "current_message",
    "message_key",
]

_current = threading.local()


def message_key(msg: Any) -> str:
    """A work-queue message's stable id: its queue id and put time (both journaled, so the
    same through redeliveries and restarts; distinct across queues)."""
    return f"{msg.seq:016x}-{msg.timestamp_ns:x}"


def current_message() -> Any:
    """The message the calling handler thread is handling (under an idempotent Worker)."""
    msg = getattr(_current, "msg", None)
    if msg is None:
        raise ValidationError("no message is being handled in this thread: call this from a "
                              "handler of a Worker made with idempotency=")
    return msg


@runtime_checkable
class IdempotencyStore(Protocol):
    """What a Worker needs of a store (any thread may call it)."""

    def seen(self, key: str) -> bool:
        """Was the effect of the message with this key committed?"""

    def record(self, key: str) -> None:
        """The effect is committed (a key recorded twice is not an error)."""


class SQLiteIdempotency:
    """Handled message keys in a SQLite file (WAL mode), kept ``retention_s`` seconds
    (default 7 days: longer than any redelivery). One connection per thread."""

    def __init__(self, path: str | os.PathLike[str], retention_s: float = 7 * 86400.0) -> None:
        if isinstance(retention_s, bool) or not isinstance(retention_s, (int, float)) \
                or not 0 < retention_s < float("inf"):
            raise ValidationError(f"retention_s must be a finite number of seconds > 0, got "
                                  f"{retention_s!r}")
        self.path = os.fspath(path)
        self.retention_ns = int(retention_s * 1e9)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._n_records = 0
        db = self.connection()
        db.execute("CREATE TABLE IF NOT EXISTS pybus_handled (key TEXT PRIMARY KEY, "
                   "at_ns INTEGER NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS pybus_handled_at ON pybus_handled(at_ns)")

    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the store's file (autocommit; the handler's effects
        go through it inside :meth:`transaction`)."""
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0,
                                     check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise ValidationError(f"cannot open the idempotency store {self.path!r}: "
                                      f"{exc}; give a writable SQLite file path") from None
            self._local.db = db
            with self._lock:
                self._conns.append(db)
        return db

    def seen(self, key: str) -> bool:
        row = self.connection().execute(
            "SELECT 1 FROM pybus_handled WHERE key = ?", (key,)).fetchone()
        return row is not None

    def record(self, key: str) -> None:
        db = self.connection()
        db.execute("INSERT OR IGNORE INTO pybus_handled (key, at_ns) VALUES (?, ?)",
                   (key, time.time_ns()))
        self._prune(db)

    @contextmanager
    def transaction(self, msg: Any = None) -> Iterator[sqlite3.Connection]:
        """One transaction holding the handler's effects and the message's record: both
        commit or neither. Raises :class:`pybus.errors.AlreadyHandledError` (and rolls back)
        when the message was recorded meanwhile. ``msg``: default :func:`current_message`."""
        key = message_key(msg if msg is not None else current_message())
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            try:
                db.execute("INSERT INTO pybus_handled (key, at_ns) VALUES (?, ?)",
                           (key, time.time_ns()))
            except sqlite3.IntegrityError:
                raise AlreadyHandledError(f"message {key} was handled already; its effect is "
                                     "kept, this copy's is rolled back") from None
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        _current.recorded = key
        self._prune(db)

    def _prune(self, db: sqlite3.Connection) -> None:
        self._n_records += 1
        if self._n_records % 1000 == 0:  # now and then: the file stays bounded
            db.execute("DELETE FROM pybus_handled WHERE at_ns < ?",
                       (time.time_ns() - self.retention_ns,))

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for db in conns:
            db.close()
        self._local = threading.local()


def idempotent(call: Any, store: Any) -> Any:
    """A Worker's per-message call, skipping messages ``store`` has seen and recording the
    others once the handler returned (unless its transaction recorded them)."""
    if not isinstance(store, IdempotencyStore):
        raise ValidationError(f"idempotency must be a store with seen(key) and record(key) "
                              f"(pybus.workqueue.idempotency.SQLiteIdempotency), got "
                              f"{type(store).__name__}")
    local = _current

    def once(msg: Any) -> Any:
        key = message_key(msg)
        if store.seen(key):
            raise AlreadyHandledError(f"message {key} was handled already")
        local.msg, local.recorded = msg, None
        try:
            result = call(msg)
        finally:
            local.msg = None
        if local.recorded != key:
            store.record(key)
        return result

    return once
