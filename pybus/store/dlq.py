"""A durable dead-letter queue on SQLite.

Messages that keep failing land here with the error that killed them, so an
operator can look at them (:meth:`DeadLetterQueue.list`, :meth:`~DeadLetterQueue.get`),
send them back (:meth:`~DeadLetterQueue.replay`) or drop them
(:meth:`~DeadLetterQueue.purge`).

Storage and concurrency
-----------------------
One SQLite file in WAL mode with ``busy_timeout``; each thread (and each
process - a forked child reopens) uses its own connection, and every write is
one ``BEGIN IMMEDIATE`` transaction, so several threads and processes may share
the same file. The entry count lives in a ``meta`` row kept exact by triggers,
so the size bound costs no table scan.

Size bound
----------
At most ``max_entries`` entries. When an ``add`` finds the queue full:

- ``on_full="drop_oldest"`` (default) deletes the oldest entries (by insertion
  order) to make room; each one is counted in ``evictions`` (persisted in the
  file, so every process sees the same total);
- ``on_full="reject"`` raises :class:`~pybus.BackpressureError` and stores
  nothing.

Adding an entry whose ``id`` is already present replaces it in place (its
``first_failure`` is kept, its ``attempts`` are added), so a message that is
replayed and fails again occupies one slot.

Example
-------
>>> with DeadLetterQueue(tmp / "dlq.db") as dlq:           # doctest: +SKIP
...     dlq.add("orders.created", b"...", id="m1", error=exc, attempts=5)
...     for entry in dlq.list(topic="orders.created"):
...         print(entry.id, entry.error_type, entry.error_message)
...     dlq.replay(topic="orders.created", to=queue)
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgpack

from .. import metrics as _metrics
from .._lifecycle import Closeable
from ..errors import (
    BackpressureError,
    BusError,
    ClosedError,
    ErrorCode,
    RemoteError,
    ValidationError,
    check_positive_int,
)
from ..metrics.samples import AlwaysReady, RawSample

__all__ = ["DeadLetter", "DeadLetterQueue"]

PayloadFormat = Literal["raw", "msgpack"]
_FORMATS = {"raw": 0, "msgpack": 1}
_FORMAT_NAMES = {v: k for k, v in _FORMATS.items()}
_ON_FULL = ("drop_oldest", "reject")
_PAGE = 256  # rows fetched per query while replaying, so memory stays bounded
_INHERITED: list[sqlite3.Connection] = []  # connections a forked child must not close

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id NOT NULL UNIQUE,  -- no declared type: str, bytes and int ids keep their type
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    payload_format INTEGER NOT NULL,
    headers BLOB,
    error_type TEXT NOT NULL,
    error_message TEXT NOT NULL,
    error_code INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    first_failure REAL NOT NULL,
    last_failure REAL NOT NULL,
    origin TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_topic ON dead_letters(topic, seq);
CREATE INDEX IF NOT EXISTS dead_letters_last ON dead_letters(last_failure);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('count', 0), ('evictions', 0), ('schema', 1);
CREATE TRIGGER IF NOT EXISTS dead_letters_ins AFTER INSERT ON dead_letters
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'count'; END;
CREATE TRIGGER IF NOT EXISTS dead_letters_del AFTER DELETE ON dead_letters
    BEGIN UPDATE meta SET value = value - 1 WHERE key = 'count'; END;
"""

_COLUMNS = (
    "seq, id, topic, payload, payload_format, headers, error_type, error_message, error_code, "
    "attempts, first_failure, last_failure, origin"
)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message and why it died.

    Attributes
    ----------
    seq : int
        Insertion order (stable, unique in the file).
    id : str, bytes or int
        The message id.
    topic : str
    payload : bytes
        The payload bytes as stored; ``payload_format`` says how to read them.
    payload_format : {"raw", "msgpack"}
    headers : dict
    error_type, error_message : str
    error_code : int
        A :class:`~pybus.ErrorCode` value (the remote code for RemoteError).
    attempts : int
    first_failure, last_failure : float
        Unix time in seconds.
    origin : str
        Who dead-lettered it (queue endpoint, worker id, ...).
    headers_error : str or None
        Why the stored headers could not be decoded (a corrupt ``headers`` column; ``headers``
        is then ``{}``), or None. Such an entry can be listed, shown and purged, but
        :meth:`DeadLetterQueue.replay` refuses it rather than send it without its headers.
    """

    seq: int
    id: str | bytes | int
    topic: str
    payload: bytes
    payload_format: PayloadFormat
    headers: dict[str, Any]
    error_type: str
    error_message: str
    error_code: int
    attempts: int
    first_failure: float
    last_failure: float
    origin: str
    headers_error: str | None = None

    @property
    def value(self) -> Any:
        """The payload as it was sent: the bytes, or the msgpack-decoded object."""
        if self.payload_format == "msgpack":
            return msgpack.unpackb(self.payload, raw=False, strict_map_key=False)
        return self.payload


def _error_fields(error: BaseException | None) -> tuple[str, str, int]:
    if error is None:
        return ("", "", int(ErrorCode.UNKNOWN))
    if isinstance(error, RemoteError):
        return (error.remote_type, error.remote_message, int(error.remote_code))
    code = int(error.code) if isinstance(error, BusError) else int(ErrorCode.UNKNOWN)
    message = error.message if isinstance(error, BusError) else str(error)
    return (type(error).__name__, message, code)


def _decode_headers(blob: bytes | None) -> tuple[dict[str, Any], str | None]:
    """``(headers, None)``, or ``({}, why)`` when the stored blob is not a msgpack map."""
    if not blob:
        return {}, None
    try:
        headers = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack's ExtraData, FormatError, StackError, UnicodeError...
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return {}, f"undecodable msgpack headers ({why})"
    if not isinstance(headers, dict):
        return {}, f"headers stored as a msgpack {type(headers).__name__}, not a map"
    return headers, None


class DeadLetterQueue(AlwaysReady, Closeable):
    """A bounded, durable dead-letter queue in one SQLite file.

    Parameters
    ----------
    path : str or Path
        The database file (created with its tables if missing).
    max_entries : int
        Size bound; see the module docs for the policy.
    on_full : {"drop_oldest", "reject"}
    busy_timeout_ms : int
        How long a writer waits for another process's lock before failing.
    clock : callable
        Wall-clock seconds for failure times and ``purge(older_than=...)``.
    registry : pybus.metrics.Registry or False, optional
        Where this object reports its counters (default: ``pybus.metrics.default_registry``;
        ``False``: nowhere).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_entries: int = 100_000,
        on_full: str = "drop_oldest",
        *,
        busy_timeout_ms: int = 10_000,
        clock: Callable[[], float] = time.time,
        registry: Any = None,
    ) -> None:
        check_positive_int("max_entries", max_entries)
        if on_full not in _ON_FULL:
            raise ValidationError(f"on_full {on_full!r} is unknown; allowed: {', '.join(_ON_FULL)}")
        if (
            isinstance(busy_timeout_ms, bool)
            or not isinstance(busy_timeout_ms, int)
            or busy_timeout_ms < 0
        ):
            raise ValidationError(f"busy_timeout_ms must be an int >= 0, got {busy_timeout_ms!r}")
        self.path = Path(path)
        self.max_entries = max_entries
        self.on_full = on_full
        self.busy_timeout_ms = busy_timeout_ms
        self.clock = clock
        self._local = threading.local()
        self._conns: list[tuple[int, sqlite3.Connection]] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        # seqs of the entries read whose headers could not be decoded (stats())
        self._undecodable: set[int] = set()
        conn = self._conn()
        with conn:
            conn.executescript(_SCHEMA)
        _metrics.attach(self, registry)

    # -- connections ------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise ClosedError(f"dead-letter queue {str(self.path)!r} is closed")
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == pid:
            return conn
        if conn is not None:
            # Inherited across fork: never use it, and never let it be closed here
            # (SQLite's close could checkpoint or unlink files the parent relies on).
            _INHERITED.append(conn)
        # New thread, or a forked child: SQLite connections must not cross a fork.
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across process crashes in WAL mode (only an OS crash
            # can lose the last transactions), at a fraction of FULL's fsync cost.
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise BusError(f"cannot open dead-letter queue {str(self.path)!r}: {exc}") from exc
        self._local.conn = conn
        self._local.pid = pid
        with self._conns_lock:
            self._conns.append((pid, conn))
        return conn

    def _write(self) -> _WriteTxn:
        return _WriteTxn(self._conn())

    # -- writing ----------------------------------------------------------------------
    def add(
        self,
        topic: str,
        payload: Any,
        *,
        id: str | bytes | int | None = None,  # noqa: A002 - the field's name
        headers: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        error_code: int | None = None,
        attempts: int = 1,
        first_failure: float | None = None,
        last_failure: float | None = None,
        origin: str = "",
        payload_format: PayloadFormat | None = None,
    ) -> str | bytes | int:
        """Store one dead letter; return its id (a new uuid4 hex when ``id`` is None).

        ``payload`` bytes are stored raw; any other object is msgpack-packed
        (``payload_format="msgpack"`` with bytes means they are already packed).
        The error fields come from ``error`` unless given explicitly.

        Raises
        ------
        BackpressureError
            With ``on_full="reject"`` when the queue holds ``max_entries``.
        ValidationError
            For a bad topic, payload, id or attempts.
        """
        if not isinstance(topic, str) or not topic:
            raise ValidationError(f"topic must be a non-empty str, got {topic!r}")
        if payload_format is None:
            payload_format = (
                "raw" if isinstance(payload, (bytes, bytearray, memoryview)) else "msgpack"
            )
        if payload_format not in _FORMATS:
            raise ValidationError(
                f"payload_format {payload_format!r} is unknown; allowed: raw, msgpack"
            )
        if isinstance(payload, (bytes, bytearray, memoryview)):
            blob = bytes(payload)
        elif payload_format == "raw":
            raise ValidationError(f"payload_format='raw' needs bytes, got {type(payload).__name__}")
        else:
            try:
                blob = msgpack.packb(payload, use_bin_type=True)
            except (TypeError, ValueError) as exc:
                raise ValidationError(
                    f"payload of type {type(payload).__name__} cannot be msgpack-encoded: {exc}; "
                    "pass bytes or msgpack-serialisable data"
                ) from exc
        if id is None:
            id = uuid.uuid4().hex  # noqa: A001
        elif isinstance(id, bool) or not isinstance(id, (str, bytes, int)):
            raise ValidationError(f"id must be str, bytes or int, got {type(id).__name__}")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise ValidationError(f"attempts must be an int >= 0, got {attempts!r}")
        try:
            hblob = msgpack.packb(dict(headers or {}), use_bin_type=True)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"headers must be a msgpack-serialisable mapping: {exc}") from exc
        etype, emsg, ecode = _error_fields(error)
        now = self.clock()
        last = now if last_failure is None else float(last_failure)
        first = last if first_failure is None else float(first_failure)
        row = (
            id,
            topic,
            blob,
            _FORMATS[payload_format],
            hblob,
            etype if error_type is None else str(error_type),
            emsg if error_message is None else str(error_message),
            ecode if error_code is None else int(error_code),
            attempts,
            first,
            last,
            str(origin),
        )
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM dead_letters WHERE id = ?", (id,)).fetchone()
            if exists:
                conn.execute(
                    "UPDATE dead_letters SET topic=?, payload=?, payload_format=?, headers=?, "
                    "error_type=?, error_message=?, error_code=?, attempts=attempts+?, "
                    "first_failure=MIN(first_failure, ?), last_failure=?, origin=? WHERE id=?",
                    row[1:] + (id,),
                )
                return id
            count = conn.execute("SELECT value FROM meta WHERE key='count'").fetchone()[0]
            if count >= self.max_entries:
                if self.on_full == "reject":
                    raise BackpressureError(
                        f"dead-letter queue {str(self.path)!r} is full ({count} of max_entries="
                        f"{self.max_entries}) and on_full='reject'; purge or replay entries, "
                        "raise max_entries, or use on_full='drop_oldest'"
                    )
                excess = count - self.max_entries + 1
                conn.execute(
                    "DELETE FROM dead_letters WHERE seq IN "
                    "(SELECT seq FROM dead_letters ORDER BY seq LIMIT ?)",
                    (excess,),
                )
                conn.execute("UPDATE meta SET value = value + ? WHERE key = 'evictions'", (excess,))
            conn.execute(
                "INSERT INTO dead_letters (id, topic, payload, payload_format, headers, "
                "error_type, error_message, error_code, attempts, first_failure, last_failure, "
                "origin) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )
        return id

    # -- reading ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._conn().execute("SELECT value FROM meta WHERE key='count'").fetchone()[0])

    @property
    def evictions(self) -> int:
        """Entries dropped by the ``drop_oldest`` size bound, over the file's lifetime."""
        return int(
            self._conn().execute("SELECT value FROM meta WHERE key='evictions'").fetchone()[0]
        )

    # -- metrics (pybus.metrics.MetricsSource) -------------------------------------------
    metrics_kind = "dlq"

    def metrics_samples(self) -> Iterator[RawSample]:
        if self._closed:
            return
        s = self.stats()
        yield "pybus_dlq_size", {}, s["entries"]
        yield "pybus_dlq_evicted_total", {}, s["evictions"]

    def stats(self) -> dict[str, int]:
        """entries, evictions, max_entries, and undecodable_headers: how many distinct entries
        read by this object had a corrupt ``headers`` column (see DeadLetter.headers_error)."""
        return {"entries": len(self), "evictions": self.evictions, "max_entries": self.max_entries,
                "undecodable_headers": len(self._undecodable)}

    def _entry(self, row: tuple[Any, ...]) -> DeadLetter:
        headers, headers_error = _decode_headers(row[5])
        if headers_error is not None:
            self._undecodable.add(row[0])
        return DeadLetter(
            seq=row[0],
            id=row[1],
            topic=row[2],
            payload=bytes(row[3]),
            payload_format=_FORMAT_NAMES[row[4]],  # type: ignore[arg-type]
            headers=headers,
            error_type=row[6],
            error_message=row[7],
            error_code=row[8],
            attempts=row[9],
            first_failure=row[10],
            last_failure=row[11],
            origin=row[12],
            headers_error=headers_error,
        )

    def list(self, topic: str | None = None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Entries oldest first, optionally only ``topic``; ``limit`` in 1..10000."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError(f"limit must be an int in 1..10000, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValidationError(f"offset must be an int >= 0, got {offset!r}")
        return [self._entry(r) for r in self._page(topic, 0, limit, offset)]

    def get(self, id: str | bytes | int) -> DeadLetter | None:  # noqa: A002
        """The entry with message id ``id``, or None."""
        row = (
            self._conn()
            .execute(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = ?", (id,))
            .fetchone()
        )
        return None if row is None else self._entry(row)

    def __iter__(self) -> Iterator[DeadLetter]:
        """Every entry oldest first, fetched a page at a time."""
        return self._select(None, None)

    def _page(self, topic: str | None, after_seq: int, limit: int, offset: int) -> Sequence[Any]:
        """Rows oldest first with seq > ``after_seq``, only ``topic`` unless None."""
        where, params = ("seq > ?", [after_seq]) if topic is None else \
            ("topic = ? AND seq > ?", [topic, after_seq])
        return self._conn().execute(
            f"SELECT {_COLUMNS} FROM dead_letters WHERE {where} ORDER BY seq LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()

    def _select(self, ids: Iterable[Any] | None, topic: str | None) -> Iterator[DeadLetter]:
        conn = self._conn()
        if ids is not None:
            id_list = list(ids)
            for i in range(0, len(id_list), _PAGE):
                chunk = id_list[i : i + _PAGE]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {_COLUMNS} FROM dead_letters WHERE id IN ({marks})"
                params: list[Any] = list(chunk)
                if topic is not None:
                    sql += " AND topic = ?"
                    params.append(topic)
                for row in conn.execute(sql + " ORDER BY seq", params).fetchall():
                    yield self._entry(row)
            return
        last = 0
        while True:
            rows = self._page(topic, last, _PAGE, 0)
            if not rows:
                return
            for row in rows:
                yield self._entry(row)
            last = rows[-1][0]

    # -- replay / purge ---------------------------------------------------------------
    def replay(
        self,
        ids: Iterable[str | bytes | int] | None = None,
        topic: str | None = None,
        *,
        to: Any,
    ) -> int:
        """Send entries back and remove each one once it was delivered; return how many.

        ``to`` is either an object with ``put(topic, payload, headers=...)`` (a
        WorkQueue, a Publisher-like sink: ``payload`` is the original object,
        decoded when it was msgpack) or a callable taking the
        :class:`DeadLetter`. Entries go oldest first; with neither ``ids`` nor
        ``topic`` every entry is replayed.

        Delivery happens before removal (at least once): if ``to`` raises,
        replay stops, the failing entry and the rest stay in the queue, and the
        error propagates. Two processes replaying the same entries at once may
        both deliver them.

        An entry whose stored headers cannot be decoded (``headers_error``) is
        not handed to ``to``: replay stops there with a :class:`~pybus.BusError`
        naming it, and it and the rest stay (``purge`` it to go on).
        """
        put = getattr(to, "put", None)
        if put is None and not callable(to):
            raise ValidationError(
                f"replay(to=...) needs an object with put(topic, payload, headers=...) or a "
                f"callable taking a DeadLetter; got {to!r}"
            )
        count = 0
        for entry in self._select(ids, topic):
            if entry.headers_error is not None:
                raise BusError(
                    f"entry {entry.id!r} (seq {entry.seq}) has {entry.headers_error}; it was "
                    "not replayed, so that it does not go out without its headers",
                    id=entry.id, seq=entry.seq,
                )
            if put is not None:
                put(entry.topic, entry.value, headers=entry.headers)
            else:
                to(entry)
            with self._write() as conn:
                conn.execute("DELETE FROM dead_letters WHERE seq = ?", (entry.seq,))
            count += 1
        return count

    def purge(
        self,
        ids: Iterable[str | bytes | int] | None = None,
        topic: str | None = None,
        older_than: float | None = None,
    ) -> int:
        """Delete entries matching every given filter; all of them when none is given.

        ``older_than`` is an age in seconds: entries whose last failure is more
        than that long ago. Returns the number deleted.
        """
        where: list[str] = []
        params: list[Any] = []
        if topic is not None:
            where.append("topic = ?")
            params.append(topic)
        if older_than is not None:
            if (
                isinstance(older_than, bool)
                or not isinstance(older_than, (int, float))
                or older_than < 0
            ):
                raise ValidationError(
                    f"older_than must be an age in seconds >= 0, got {older_than!r}"
                )
            where.append("last_failure < ?")
            params.append(self.clock() - older_than)
        deleted = 0
        with self._write() as conn:
            if ids is not None:
                id_list = list(ids)
                for i in range(0, len(id_list), _PAGE):
                    chunk = id_list[i : i + _PAGE]
                    cond = where + [f"id IN ({','.join('?' * len(chunk))})"]
                    cur = conn.execute(
                        "DELETE FROM dead_letters WHERE " + " AND ".join(cond), params + chunk
                    )
                    deleted += cur.rowcount
            else:
                sql = "DELETE FROM dead_letters"
                if where:
                    sql += " WHERE " + " AND ".join(where)
                deleted = conn.execute(sql, params).rowcount
        return deleted

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Close every connection this object opened (in this process); idempotent."""
        if self._closed:
            return
        self._closed = True
        pid = os.getpid()
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for owner, conn in conns:
            # A connection inherited across fork belongs to the parent: leave it.
            if owner == pid:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass

    def __repr__(self) -> str:
        return f"DeadLetterQueue({str(self.path)!r}, max_entries={self.max_entries})"


class _WriteTxn:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock up front so a
    read-then-write (the size check) cannot be raced by another process."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise BusError(f"dead-letter queue is locked by another writer: {exc}") from exc
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
