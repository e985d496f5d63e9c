"""The ``pybus`` command: poke at a live bus, benchmark it, read its DLQ and its metrics.

Exit codes: 0 success; 1 runtime failure (a peer is unreachable, a timeout before ``--count``
messages, a benchmark that failed); 2 usage or input error (bad arguments, a malformed endpoint or
pattern, a missing DLQ file). Errors are one line on stderr, never a traceback.

``rich`` (progress bars, tables, the live ``stat`` view) is a runtime dependency because the
command is part of the product; it is imported only by the sub-commands that draw, so
``pybus version`` and ``pybus pub`` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from .._version import __version__
from ..errors import BusError, ValidationError


class CliError(Exception):
    """A failure the command reports as one line with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _usage(message: str) -> CliError:
    return CliError(message, 2)


# --------------------------------------------------------------------------------------------
# version


def cmd_version(args: argparse.Namespace) -> int:
    import msgpack
    import zmq

    if args.json:
        print(json.dumps({"pybus": __version__, "pyzmq": zmq.__version__,
                          "libzmq": zmq.zmq_version(), "msgpack": msgpack.version and
                          ".".join(map(str, msgpack.version)),
                          "python": sys.version.split()[0]}))
    else:
        print(f"pybus {__version__} (pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, "
              f"python {sys.version.split()[0]})")
    return 0


# --------------------------------------------------------------------------------------------
# stat


def _scrape(url: str, timeout: float) -> str:
    req = urllib.request.Request(url, headers={"Accept": "text/plain; version=0.0.4"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise CliError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot scrape {url}: {reason}") from None


def _check_url(url: str) -> str:
    from urllib.parse import urlsplit

    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _usage(f"bad URL {url!r}: expected http://HOST:PORT/metrics")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _usage(f"bad URL {url!r}: the port must be a number 0-65535") from None
    if parts.path in ("", "/"):
        url = url.rstrip("/") + "/metrics"
    return url


def _totals(fams: dict[str, Any]) -> dict[str, float]:
    """Counter and gauge families summed over labels; summaries kept per quantile."""
    out: dict[str, float] = {}
    for name, f in fams.items():
        if f.type in ("counter", "gauge", "untyped"):
            out[name] = sum(v for _, _, v in f.samples if v == v)
    return out


def _stat_view(url: str, prev: dict[str, float], cur: dict[str, float], fams: dict[str, Any],
               dt: float) -> Any:
    from rich.console import Group
    from rich.table import Table

    t = Table(title=f"pybus stat {url}  (rates over {dt:.1f} s)", title_justify="left")
    t.add_column("metric", no_wrap=True)
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("per second", justify="right", no_wrap=True)
    for name, f in sorted(fams.items()):
        if not name.startswith("pybus_") or name.startswith("pybus_metrics_"):
            continue
        if not f.samples:
            continue  # nothing of that kind in the process
        if f.type == "counter" and name in cur:
            rate = (cur[name] - prev.get(name, cur[name])) / dt if dt > 0 else 0.0
            t.add_row(name, _num(cur[name]), _num(rate))
        elif f.type == "gauge" and name in cur and f.samples and not name.endswith("_seconds"):
            if name == "pybus_circuit_breaker_state":
                states = sorted(f"{lab.get('name', '?')}={lab.get('state')}"
                                for _, lab, v in f.samples if v == 1)
                t.add_row(name, ", ".join(states), "")
            else:
                t.add_row(name, _num(cur[name]), "")
    lat = Table(title="latency (HDR quantiles since start; worst object)", title_justify="left")
    lat.add_column("histogram", no_wrap=True)
    for col in ("p50", "p90", "p99", "p99.9", "max"):
        lat.add_column(col, justify="right", no_wrap=True)
    for name, f in sorted(fams.items()):
        if f.type != "summary" or not f.samples or not name.endswith("_quantiles_seconds"):
            continue
        qs: dict[float, float] = {}
        for sname, lab, v in f.samples:
            if sname == name and "quantile" in lab and v == v:
                q = float(lab["quantile"])
                qs[q] = max(qs.get(q, 0.0), v)
        if not qs:
            continue
        stem = name[len("pybus_"):-len("_quantiles_seconds")]
        mx = fams.get(f"pybus_{stem}_max_seconds")
        top = max((v for _, _, v in mx.samples), default=float("nan")) if mx else float("nan")
        lat.add_row(stem, *(_dur(qs.get(q, float("nan"))) for q in (0.5, 0.9, 0.99, 0.999)),
                    _dur(top))
    return Group(t, lat) if lat.row_count else t


def _qlabel(q: str) -> str:
    return f"{float(q) * 100:g}"


def _num(v: float) -> str:
    if v != v:
        return "-"
    if abs(v) >= 1e6:
        return f"{v / 1e6:,.2f}M"
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.1f}"


def _dur(s: float) -> str:
    if s != s:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f}µs"
    if s < 1:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.3f}s"


def cmd_stat(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from ..metrics._promtext import parse

    url = _check_url(args.url)
    if args.interval <= 0:
        raise _usage(f"--interval must be > 0 seconds, got {args.interval}")
    console = Console()

    def read() -> tuple[dict[str, Any], dict[str, float], float]:
        text = _scrape(url, timeout=max(2.0, args.interval))
        try:
            fams = parse(text)
        except ValidationError as exc:
            raise CliError(f"{url} did not return Prometheus text: {exc}") from None
        return fams, _totals(fams), time.monotonic()

    fams, prev, t0 = read()
    if args.once:
        time.sleep(args.interval)  # two scrapes are needed to show a rate
        fams, cur, t1 = read()
        console.print(_stat_view(url, prev, cur, fams, t1 - t0))
        return 0
    n = 0
    with Live(_stat_view(url, prev, prev, fams, 0.0), console=console, auto_refresh=False) as live:
        try:
            while args.count is None or n < args.count:
                time.sleep(args.interval)
                fams, cur, t1 = read()
                live.update(_stat_view(url, prev, cur, fams, t1 - t0), refresh=True)
                prev, t0 = cur, t1
                n += 1
        except KeyboardInterrupt:
            pass
    return 0


# --------------------------------------------------------------------------------------------
# pub / sub

_ENDPOINT_SCHEMES = ("tcp://", "ipc://")


def _check_endpoint(ep: str) -> str:
    if not ep.startswith(_ENDPOINT_SCHEMES) or len(ep.split("://", 1)[1]) == 0:
        if ep.startswith("inproc://"):
            raise _usage(f"bad endpoint {ep!r}: inproc:// only reaches sockets inside one "
                         "process; use tcp://HOST:PORT or ipc://PATH")
        raise _usage(f"bad endpoint {ep!r}: expected tcp://HOST:PORT or ipc://PATH")
    if ep.startswith("tcp://"):
        host, _, port = ep[6:].rpartition(":")
        if not host or not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
            raise _usage(f"bad endpoint {ep!r}: tcp endpoints are tcp://HOST:PORT with a port "
                         "1-65535 (or * to bind a free one)")
    return ep


def _report_bound(command: str, requested: str, bound: Sequence[str]) -> None:
    """``tcp://HOST:*`` binds a free port: say which one on stderr, or nobody can connect."""
    if requested.startswith("tcp://") and requested.endswith(":*") and bound:
        print(f"pybus {command}: bound {bound[0]}", file=sys.stderr, flush=True)


def _payloads(args: argparse.Namespace) -> list[Any]:
    if args.message is None or args.message == "-":
        raw = [line.rstrip("\n") for line in sys.stdin]
    else:
        raw = [args.message]
    if not args.json:
        return [r.encode("utf-8") for r in raw]
    out = []
    for i, r in enumerate(raw, 1):
        try:
            out.append(json.loads(r))
        except json.JSONDecodeError as exc:
            where = "MESSAGE" if args.message not in (None, "-") else f"stdin line {i}"
            raise _usage(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})") from None
    return out


def cmd_pub(args: argparse.Namespace) -> int:
    from ..policy.topics import validate_topic
    from ..pubsub.publisher import Publisher

    ep = _check_endpoint(args.endpoint)
    validate_topic(args.topic)
    if args.count < 1:
        raise _usage(f"--count must be >= 1, got {args.count}")
    if args.wait_subscribers < 0:
        raise _usage(f"--wait-subscribers must be >= 0, got {args.wait_subscribers}")
    payloads = _payloads(args)
    pub = Publisher(ep, connect=not args.bind, registry=False, delivery=args.delivery)
    try:
        if args.bind:
            _report_bound("pub", ep, pub.endpoints)
        if args.wait_subscribers:
            try:
                pub.wait_for_subscribers(args.wait_subscribers, timeout=args.timeout)
            except BusError:
                raise CliError(
                    f"fewer than {args.wait_subscribers} subscriber(s) on {ep} after "
                    f"{args.timeout:g} s; is anything listening? (--wait-subscribers 0 sends "
                    "anyway)") from None
        n = 0
        for _ in range(args.count):
            for p in payloads:
                pub.publish(args.topic, p)
                n += 1
        pub.flush(timeout=args.timeout)
    finally:
        pub.close(linger=args.timeout)
    if not args.quiet:
        print(f"published {n} message(s) to {args.topic!r} on {ep}", file=sys.stderr)
    return 0


def _show_payload(m: Any) -> tuple[Any, str]:
    """The payload for display: (value, encoding) with encoding json, utf-8 or hex."""
    if m.is_msgpack:
        return m.payload, "json"
    raw = m.raw_payload
    try:
        text = raw.decode("utf-8")
        if text.isprintable() or not text:
            return text, "utf-8"
    except UnicodeDecodeError:
        pass
    return raw.hex(), "hex"


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def cmd_sub(args: argparse.Namespace) -> int:
    from ..policy.topics import validate_pattern
    from ..pubsub.subscriber import Subscriber

    ep = _check_endpoint(args.endpoint)
    for pat in args.patterns:
        validate_pattern(pat)
    if args.count is not None and args.count < 1:
        raise _usage(f"--count must be >= 1, got {args.count}")
    if args.timeout is not None and args.timeout <= 0:
        raise _usage(f"--timeout must be > 0 seconds, got {args.timeout}")
    sub = Subscriber(ep, args.patterns, bind=args.bind, registry=False)
    got = 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    out = sys.stdout
    try:
        if args.bind:
            _report_bound("sub", ep, sub.endpoints)
        while args.count is None or got < args.count:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                break
            want = 10_000 if args.count is None else args.count - got
            for m in sub.recv_batch(want, timeout=wait):
                value, enc = _show_payload(m)
                if args.json:
                    line = json.dumps({"topic": m.topic, "seq": m.seq,
                                       "publisher_id": f"{m.publisher_id:016x}",
                                       "timestamp_ns": m.timestamp_ns,
                                       "headers": _jsonable(m.headers),
                                       "payload": _jsonable(value), "encoding": enc})
                else:
                    shown = json.dumps(_jsonable(value)) if enc == "json" else value
                    line = f"{m.topic} #{m.seq} {shown}"
                out.write(line + "\n")
                got += 1
            out.flush()
    finally:
        sub.close()
    if args.count is not None and got < args.count:
        raise CliError(f"received {got} of {args.count} message(s) before the "
                       f"{args.timeout:g} s timeout")
    return 0


# --------------------------------------------------------------------------------------------
# dlq


def _open_dlq(path: str) -> Any:
    import os
    import sqlite3

    from ..store.dlq import DeadLetterQueue

    if not os.path.exists(path):
        raise _usage(f"no dead-letter queue at {path!r}: file not found")
    if os.path.isdir(path):
        raise _usage(f"{path!r} is a directory, not a dead-letter queue file")
    # Look before DeadLetterQueue() creates its tables: never write into a stranger's file.
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                              "AND name='dead_letters'").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise _usage(f"{path!r} is not a pybus dead-letter queue ({exc})") from None
    if row is None:
        raise _usage(f"{path!r} is an SQLite file without a dead_letters table; "
                     "not a pybus dead-letter queue")
    return DeadLetterQueue(path, registry=False)


def _entry_dict(e: Any, full: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "seq": e.seq, "id": _jsonable(e.id), "topic": e.topic, "attempts": e.attempts,
        "error_type": e.error_type, "error_message": e.error_message,
        "error_code": e.error_code, "first_failure": e.first_failure,
        "last_failure": e.last_failure, "origin": e.origin,
    }
    if full:
        try:
            value = e.value
        except Exception as exc:  # a corrupt msgpack payload is shown, not fatal
            value = f"<undecodable msgpack: {exc}>"
        d["headers"] = _jsonable(e.headers)
        d["payload_format"] = e.payload_format
        if isinstance(value, bytes):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None and (text.isprintable() or not text):
                d["payload"] = text
            else:
                d["payload"] = value.hex()
                d["payload_format"] = "hex"
        else:
            d["payload"] = _jsonable(value)
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
        raise _usage(f"--limit must be 1..10000, got {args.limit}")
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
        print(f"{str(_jsonable(e.id)):<34} {_when(e.last_failure):<19} {e.attempts:>8}  "
              f"{e.topic:<24} {err[:80]}")
    if total > len(entries):
        print(f"... {total - len(entries)} more (use --limit or --topic)")
    return 0


def _dlq_show(dlq: Any, args: argparse.Namespace) -> int:
    e = _find(dlq, args.id)
    if e is None:
        raise _usage(f"no entry with id {args.id!r} in {args.path} (see `pybus dlq ls`)")
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

    ep = _check_endpoint(args.to)
    ids = None
    if args.id:
        found = [_find(dlq, i) for i in args.id]
        missing = [i for i, e in zip(args.id, found, strict=True) if e is None]
        if missing:
            raise _usage(f"no entry with id {', '.join(map(repr, missing))} in {args.path}")
        ids = [e.id for e in found]
    pub = Publisher(ep, connect=not args.bind, registry=False)
    sent = 0
    try:
        if args.bind:
            _report_bound("dlq replay", ep, pub.endpoints)
        if args.wait_subscribers:
            try:
                pub.wait_for_subscribers(args.wait_subscribers, timeout=args.timeout)
            except BusError:
                raise CliError(f"fewer than {args.wait_subscribers} subscriber(s) on {ep} "
                               f"after {args.timeout:g} s; nothing was replayed") from None

        def send(entry: Any) -> None:
            nonlocal sent
            try:
                value = entry.value
            except Exception as exc:  # a corrupt msgpack payload: stop, keep it in the file
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise CliError(f"entry {_jsonable(entry.id)!r} has an undecodable msgpack "
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
        pub.close(linger=args.timeout)
    print(f"replayed {n} entr{'y' if n == 1 else 'ies'} to {ep}; {len(dlq)} left",
          file=sys.stderr)
    return 0


def _dlq_purge(dlq: Any, args: argparse.Namespace) -> int:
    if args.older_than is not None and args.older_than < 0:
        raise _usage(f"--older-than must be >= 0 seconds, got {args.older_than}")
    what = "every entry" if not (args.topic or args.id or args.older_than is not None) else \
        "the matching entries"
    if not args.yes:
        if not sys.stdin.isatty():
            raise _usage(f"refusing to delete {what} of {args.path} without --yes")
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


# --------------------------------------------------------------------------------------------
# bench


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _us(v: float) -> str:
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench as B

    only = None
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in only if x not in B.BENCHES]
        if bad or not only:
            raise _usage(f"--only takes a comma-separated list of {', '.join(B.BENCHES)}; "
                         f"got {args.only!r}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise _usage('--plot needs matplotlib: pip install "pybus[plot]"') from None
    if args.rate is not None and not 1 <= args.rate <= 1_000_000:
        raise _usage(f"--rate must be 1..1000000 messages per second, got {args.rate}")
    if args.reps is not None and not 1 <= args.reps <= 50:
        raise _usage(f"--reps must be 1..50, got {args.reps}")
    for opt in ("json", "hlog", "plot"):
        path = getattr(args, opt)
        if path:
            import os

            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise _usage(f"--{opt} {path!r}: directory {d!r} does not exist")

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    plan = B.Plan.make(args.quick, args.peers, only, args.rate, args.reps)
    console = Console(stderr=True)
    started = time.time()
    t0 = time.monotonic()
    results: list[Any] = []
    steps = plan.steps()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(steps))
        for bench, system in steps:
            progress.update(task, description=f"{bench}: {system}")
            try:
                results.append(B.run_step(plan, bench, system))
            except B.BenchError as exc:
                raise CliError(f"{bench} ({system}) failed: {exc}") from None
            progress.advance(task)
    elapsed = time.monotonic() - t0

    base = {r.bench: r.median for r in results if r.system == "pyzmq"}
    reps = f"median of {plan.reps} [min-max]" if plan.reps > 1 else "1 repetition"
    table = Table(title=f"pybus {__version__} bench ({'quick' if args.quick else 'full'}, "
                        f"{elapsed:.1f} s, {reps})")
    cols = ["bench", "system", "rate /s"] + (["vs pyzmq"] if base else []) + [
        "p50 µs", "p99 µs", "p99.9 µs", "max µs"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("bench", "system") else "right",
                         no_wrap=True)
    notes: list[str] = []
    for r in results:
        rate = "-"
        if r.rates:
            rate = _fmt_rate(r.median)
            if len(r.rates) > 1:
                rate += f" [{_fmt_rate(min(r.rates))}-{_fmt_rate(max(r.rates))}]"
        ratio = []
        if base:
            ratio = [f"{r.median / base[r.bench]:.2f}x" if r.system != "pyzmq" and
                     base.get(r.bench) and r.median and r.bench != "latency" else ""]
        h = r.histogram
        lat = ["-"] * 4
        if h is not None and h.total_count:
            lat = [_us(h.percentile(p) / 1e3) for p in (50, 99, 99.9)] + [_us(h.max / 1e3)]
        table.add_row(r.bench, r.system, rate, *ratio, *lat)
        notes.append(f"{r.bench} {r.system}: {r.notes} ({r.unit})")
    out = Console()
    out.print(table)
    for line in notes:
        out.print(f"  {line}", highlight=False)

    if args.json:
        doc = {"pybus": __version__, "quick": args.quick, "started": started,
               "elapsed_s": elapsed, "machine": B.machine(),
               "results": [r.to_dict() for r in results]}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        console.print(f"wrote {args.json}")
    if args.hlog:
        B.write_hlog(args.hlog, results, started)
        console.print(f"wrote {args.hlog}")
    if args.plot:
        B.plot(args.plot, results)
        console.print(f"wrote {args.plot}")
    return 0


# --------------------------------------------------------------------------------------------
# parser and entry point


def _add(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help_: str,
         description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=description or help_)
    p.set_defaults(func=func, command=name)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and the tests)."""
    p = argparse.ArgumentParser(
        prog="pybus",
        description="pybus: poke at a live bus, benchmark it, read its DLQ and its metrics.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage or input error.",
    )
    p.add_argument("--version", action="version", version=f"pybus {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    v = _add(sub, "version", cmd_version, "print the pybus, pyzmq and libzmq versions")
    v.add_argument("--json", action="store_true", help="print JSON")

    s = _add(sub, "stat", cmd_stat, "live view of a process's /metrics (rates, latencies)",
             "Scrape a pybus /metrics endpoint repeatedly and show counters as rates per second, "
             "gauges, and latency percentiles, refreshing in place.")
    s.add_argument("url", metavar="URL", help="e.g. http://127.0.0.1:9464/metrics")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (1)")
    s.add_argument("--once", action="store_true",
                   help="scrape twice, --interval apart, print one table and exit")
    s.add_argument("--count", type=int, default=None, help="stop after N refreshes")

    pb = _add(sub, "pub", cmd_pub, "publish messages to a live bus",
              "Publish MESSAGE (or each line of stdin with '-' or no MESSAGE) on TOPIC. By "
              "default connects to ENDPOINT (a bound subscriber or proxy) and waits for one "
              "subscriber so nothing is lost to ZeroMQ's join delay.")
    pb.add_argument("endpoint", metavar="ENDPOINT", help="tcp://HOST:PORT or ipc://PATH")
    pb.add_argument("topic", metavar="TOPIC", help="e.g. orders.created")
    pb.add_argument("message", metavar="MESSAGE|-", nargs="?", default=None,
                    help="the payload (UTF-8); '-' or omitted: one message per stdin line")
    g = pb.add_mutually_exclusive_group()
    g.add_argument("--connect", dest="bind", action="store_false", default=False,
                   help="connect to ENDPOINT (default)")
    g.add_argument("--bind", dest="bind", action="store_true",
                   help="bind ENDPOINT (tcp://HOST:* binds a free port and prints it on stderr)")
    pb.add_argument("--json", action="store_true",
                    help="parse each message as JSON and send it as a msgpack object")
    pb.add_argument("--count", type=int, default=1, help="send each message N times (1)")
    pb.add_argument("--wait-subscribers", type=int, default=1, metavar="N",
                    help="wait for N subscribers before sending (1; 0 sends at once)")
    pb.add_argument("--timeout", type=float, default=5.0,
                    help="seconds to wait for subscribers and for sending (5)")
    pb.add_argument("--best-effort", dest="delivery", action="store_const",
                    const="best_effort", default="reliable",
                    help="never wait for slow subscribers (default: reliable, docs/wire.md)")
    pb.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")

    sb = _add(sub, "sub", cmd_sub, "print messages from a live bus",
              "Subscribe to PATTERNs (orders.*, orders.#) and print each message: "
              "'TOPIC #SEQ PAYLOAD' or, with --json, one JSON object per line.")
    sb.add_argument("endpoint", metavar="ENDPOINT", help="tcp://HOST:PORT or ipc://PATH")
    sb.add_argument("patterns", metavar="PATTERN", nargs="+",
                    help="topic pattern: '*' matches one segment, '#' any number")
    g = sb.add_mutually_exclusive_group()
    g.add_argument("--connect", dest="bind", action="store_false", default=False,
                   help="connect to ENDPOINT, a publisher (default)")
    g.add_argument("--bind", dest="bind", action="store_true",
                   help="bind ENDPOINT (tcp://HOST:* binds a free port and prints it on stderr)")
    sb.add_argument("--json", action="store_true", help="print JSON lines")
    sb.add_argument("--count", type=int, default=None, help="exit after N messages")
    sb.add_argument("--timeout", type=float, default=None,
                    help="exit after S seconds (exit 1 if --count was not reached)")

    dq = _add(sub, "dlq", cmd_dlq, "list, show, replay or purge a dead-letter queue",
              "Work with a pybus dead-letter queue file (SQLite). A missing file is an error "
              "(exit 2), never created.")
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

    bn = _add(sub, "bench", cmd_bench, "benchmark pub/sub, latency, RPC and the work queue",
              "Measure 64-byte pub/sub throughput, open-loop one-way latency at a paced rate "
              "(coordinated-omission corrected), RPC round trips and work-queue throughput; "
              "optionally side by side with raw pyzmq (--peers). Prints a table; writes JSON, "
              "an HdrHistogram interval log and a PNG when asked.")
    bn.add_argument("--quick", action="store_true", help="a short run (under 20 s)")
    bn.add_argument("--peers", action="store_true",
                    help="also run raw pyzmq side by side (and pynng, zenoh when installed)")
    bn.add_argument("--only", metavar="LIST", help="comma-separated: pubsub,latency,rpc,workqueue")
    bn.add_argument("--rate", type=float, default=None,
                    help="paced rate of the latency run, msg/s (10000)")
    bn.add_argument("--reps", type=int, default=None, help="repetitions (quick 1, full 3)")
    bn.add_argument("--json", metavar="FILE", help="write results as JSON")
    bn.add_argument("--hlog", metavar="FILE", help="write an HdrHistogram interval log")
    bn.add_argument("--plot", metavar="FILE.png",
                    help='write a PNG (needs matplotlib: pip install "pybus[plot]")')

    from .security import register as register_security  # keygen, proxy

    register_security(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pybus`` command; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"pybus {args.command}"
    try:
        return int(func(args))
    except CliError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except ValidationError as exc:  # includes TopicError: bad input
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except BusError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pybus sub ... | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
