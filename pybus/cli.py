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

from ._version import __version__
from .errors import BusError, ValidationError


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
    from rich.table import Table

    t = Table(title=f"pybus stat {url}  (rates over {dt:.1f} s)", title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("per second", justify="right")
    for name, f in sorted(fams.items()):
        if not name.startswith("pybus_") or name.startswith("pybus_metrics_"):
            continue
        if f.type == "counter" and name in cur:
            rate = (cur[name] - prev.get(name, cur[name])) / dt if dt > 0 else 0.0
            t.add_row(name, _num(cur[name]), _num(rate))
        elif f.type == "gauge" and name in cur and f.samples:
            if name == "pybus_circuit_breaker_state":
                states = sorted(f"{lab.get('name', '?')}={lab.get('state')}"
                                for _, lab, v in f.samples if v == 1)
                t.add_row(name, ", ".join(states), "")
            else:
                t.add_row(name, _num(cur[name]), "")
    lat = [f for n, f in sorted(fams.items()) if f.type == "summary" and f.samples]
    if lat:
        t.add_section()
        for f in lat:
            qs = {}
            for sname, lab, v in f.samples:
                if sname == f.name and "quantile" in lab:
                    qs.setdefault(lab["quantile"], []).append(v)
            if not qs:
                continue
            cells = "  ".join(f"p{_qlabel(q)}={_dur(max(vs))}" for q, vs in sorted(
                qs.items(), key=lambda kv: float(kv[0])))
            t.add_row(f.name, cells, "")
    return t


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

    from ._promtext import parse

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

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return p


_EXTRA_COMMANDS: list[Callable[[Any], None]] = []

# keygen, proxy (pybus/cli_security.py)
from .cli_security import register as _register_security  # noqa: E402

_EXTRA_COMMANDS.append(_register_security)


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
