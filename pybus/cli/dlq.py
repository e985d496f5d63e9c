"""``pybus dlq``: list, show, replay or purge the entries of a dead-letter queue file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import BusError
from ._common import (
    CliError,
    add_command,
    check_endpoint,
    jsonable,
    ready_publisher,
    text_or_hex,
    usage_error,
)


def _open_dlq(path: str) -> Any:
    import os
    import sqlite3

    from ..store.dlq import DeadLetterQueue

    if not os.path.exists(path):
        raise usage_error(f"no dead-letter queue at {path!r}: file not found")
    if os.path.isdir(path):
        raise usage_error(f"{path!r} is a directory, not a dead-letter queue file")
    # Look before DeadLetterQueue() creates its tables: never write into a stranger's file.
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                              "AND name='dead_letters'").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise usage_error(f"{path!r} is not a pybus dead-letter queue ({exc})") from None
    if row is None:
        raise usage_error(f"{path!r} is an SQLite file without a dead_letters table; "
                     "not a pybus dead-letter queue")
    return DeadLetterQueue(path, registry=False)


def _entry_dict(e: Any, full: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "seq": e.seq, "id": jsonable(e.id), "topic": e.topic, "attempts": e.attempts,
        "error_type": e.error_type, "error_message": e.error_message,
        "error_code": e.error_code, "first_failure": e.first_failure,
        "last_failure": e.last_failure, "origin": e.origin,
    }
    if full:
        try:
            value = e.value
        except Exception as exc:  # a corrupt msgpack payload is shown, not fatal
            value = f"<undecodable msgpack: {exc}>"
        d["headers"] = jsonable(e.headers)
        if e.headers_error:  # a corrupt headers column: say so rather than show {}
            d["headers_error"] = e.headers_error
        d["payload_format"] = e.payload_format
        if isinstance(value, bytes):
            d["payload"], enc = text_or_hex(value)
            if enc == "hex":
                d["payload_format"] = "hex"
        else:
            d["payload"] = jsonable(value)
    return d


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _find(dlq: Any, ident: str) -> Any:
    e = dlq.get(ident)
    if e is None and ident.lstrip("-").isdigit():
        e = dlq.get(int(ident))
    if e is None:
        try:
            e = dlq.get(bytes.fromhex(ident))
        except ValueError:
            pass
    return e


def cmd_dlq(args: argparse.Namespace) -> int:
    dlq = _open_dlq(args.path)
    try:
        return _DLQ_ACTIONS[args.action](dlq, args)
    finally:
        dlq.close()


def _dlq_ls(dlq: Any, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise usage_error(f"--limit must be 1..10000, got {args.limit}")
    entries = dlq.list(topic=args.topic, limit=args.limit)
    if args.json:
        for e in entries:
            print(json.dumps(_entry_dict(e, full=False)))
        return 0
    total = len(dlq)
    if not entries:
        print(f"{args.path}: empty" if total == 0 else f"{args.path}: no entries match")
        return 0
    if args.topic is not None:  # "... N more" counts the entries of that topic only
        total = len(entries)
        if total == args.limit:
            while page := dlq.list(topic=args.topic, limit=10_000, offset=total):
                total += len(page)
    print(f"{'ID':<34} {'LAST FAILURE':<19} {'ATTEMPTS':>8}  {'TOPIC':<24} ERROR")
    for e in entries:
        err = f"{e.error_type}: {e.error_message}" if e.error_type else e.error_message
        print(f"{str(jsonable(e.id)):<34} {_when(e.last_failure):<19} {e.attempts:>8}  "
              f"{e.topic:<24} {err[:80]}")
    if total > len(entries):
        print(f"... {total - len(entries)} more (use --limit or --topic)")
    return 0


def _dlq_show(dlq: Any, args: argparse.Namespace) -> int:
    e = _find(dlq, args.id)
    if e is None:
        raise usage_error(f"no entry with id {args.id!r} in {args.path} (see `pybus dlq ls`)")
    d = _entry_dict(e, full=True)
    if args.json:
        print(json.dumps(d))
    else:
        for k, v in d.items():
            if k in ("first_failure", "last_failure"):
                v = f"{_when(v)} ({v:.3f})"
            elif not isinstance(v, str):
                v = json.dumps(v)
            print(f"{k + ':':<16} {v}")
    return 0


def _dlq_replay(dlq: Any, args: argparse.Namespace) -> int:
    from ..pubsub.publisher import Publisher

    ep = check_endpoint(args.to)
    ids = None
    if args.id:
        found = [_find(dlq, i) for i in args.id]
        missing = [i for i, e in zip(args.id, found, strict=True) if e is None]
        if missing:
            raise usage_error(f"no entry with id {', '.join(map(repr, missing))} in {args.path}")
        ids = [e.id for e in found]
    pub = Publisher(ep, connect=not args.bind, registry=False)
    sent = 0
    try:
        ready_publisher("dlq replay", pub, ep, args, "nothing was replayed")

        def send(entry: Any) -> None:
            nonlocal sent
            try:
                value = entry.value
            except Exception as exc:  # a corrupt msgpack payload: stop, keep it in the file
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise CliError(f"entry {jsonable(entry.id)!r} has an undecodable msgpack "
                               f"payload ({why})") from None
            pub.publish(entry.topic, value, entry.headers or None)
            pub.flush(timeout=args.timeout)  # handed to ZeroMQ before the entry is removed
            sent += 1

        try:
            n = dlq.replay(ids, args.topic, to=send)
        except (CliError, BusError) as exc:
            raise CliError(f"{exc}; replayed {sent} entr{'y' if sent == 1 else 'ies'}, the "
                           f"failed one and the rest stay in {args.path} ({len(dlq)} left)"
                           ) from None
    finally:
        pub.close(linger_ms=int(args.timeout * 1000))
    print(f"replayed {n} entr{'y' if n == 1 else 'ies'} to {ep}; {len(dlq)} left",
          file=sys.stderr)
    return 0


def _dlq_purge(dlq: Any, args: argparse.Namespace) -> int:
    if args.older_than is not None and args.older_than < 0:
        raise usage_error(f"--older-than must be >= 0 seconds, got {args.older_than}")
    what = "every entry" if not (args.topic or args.id or args.older_than is not None) else \
        "the matching entries"
    if not args.yes:
        if not sys.stdin.isatty():
            raise usage_error(f"refusing to delete {what} of {args.path} without --yes")
        answer = input(f"delete {what} of {args.path} ({len(dlq)} stored)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 0
    n = dlq.purge(ids=args.id or None, topic=args.topic, older_than=args.older_than)
    print(f"deleted {n} entr{'y' if n == 1 else 'ies'}; {len(dlq)} left", file=sys.stderr)
    return 0


_DLQ_ACTIONS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "ls": _dlq_ls, "show": _dlq_show, "replay": _dlq_replay, "purge": _dlq_purge,
}


def register(sub: Any) -> None:
    """Add the ``dlq`` sub-command and its actions to the ``pybus`` parser."""
    dq = add_command(sub, "dlq", cmd_dlq, "list, show, replay or purge a dead-letter queue",
                     "Work with a pybus dead-letter queue file (SQLite). A missing file is an "
                     "error (exit 2), never created.")
    dsub = dq.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    ls = dsub.add_parser("ls", help="list entries, oldest first",
                         description="List dead letters, oldest first.")
    ls.add_argument("path", metavar="PATH")
    ls.add_argument("--topic", help="only this topic")
    ls.add_argument("--limit", type=int, default=100, help="at most N entries (100)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    sh = dsub.add_parser("show", help="one entry in full",
                         description="Show one dead letter in full, payload decoded.")
    sh.add_argument("path", metavar="PATH")
    sh.add_argument("id", metavar="ID", help="the entry's id (see ls)")
    sh.add_argument("--json", action="store_true", help="print JSON")
    rp = dsub.add_parser("replay", help="publish entries again, then remove them",
                         description="Publish dead letters to a live bus (each one is removed "
                                     "only after it was handed to ZeroMQ).")
    rp.add_argument("path", metavar="PATH")
    rp.add_argument("--to", required=True, metavar="ENDPOINT",
                    help="publish here (connects; --bind to bind)")
    rp.add_argument("--bind", action="store_true",
                    help="bind --to instead of connecting (tcp://HOST:* prints the port on stderr)")
    rp.add_argument("--topic", help="only entries of this topic")
    rp.add_argument("--id", action="append", help="only this id (repeatable)")
    rp.add_argument("--wait-subscribers", type=int, default=1, metavar="N",
                    help="wait for N subscribers first (1; 0: do not wait)")
    rp.add_argument("--timeout", type=float, default=5.0, help="seconds (5)")
    pg = dsub.add_parser("purge", help="delete entries",
                         description="Delete dead letters (all, or those matching every "
                                     "filter given). Asks first unless --yes.")
    pg.add_argument("path", metavar="PATH")
    pg.add_argument("--topic", help="only this topic")
    pg.add_argument("--id", action="append", help="only this id (repeatable)")
    pg.add_argument("--older-than", type=float, metavar="SECONDS",
                    help="only entries whose last failure is older than this")
    pg.add_argument("--yes", action="store_true", help="do not ask")
    for a in (ls, sh, rp, pg):
        a.set_defaults(func=cmd_dlq, command=f"dlq {a.prog.split()[-1]}")
