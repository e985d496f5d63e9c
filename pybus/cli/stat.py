"""``pybus stat``: scrape a process's ``/metrics`` repeatedly and show counters as rates,
gauges, and HDR latency quantiles in a table that refreshes in place."""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from typing import Any, NamedTuple, cast

from ._common import CliError, add_command, usage_error


def _scrape(url: str, timeout: float) -> str:
    req = urllib.request.Request(url, headers={"Accept": "text/plain; version=0.0.4"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return cast("str", resp.read().decode("utf-8", "replace"))
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
        raise usage_error(f"bad URL {url!r}: expected http://HOST:PORT/metrics")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise usage_error(f"bad URL {url!r}: the port must be a number 0-65535") from None
    if parts.path in ("", "/"):
        url = url.rstrip("/") + "/metrics"
    return url


class _Family(NamedTuple):
    type: str
    samples: list[tuple[str, dict[str, str], float]]


def _families(text: str) -> dict[str, _Family]:
    """A scrape read with ``prometheus_client.parser``, by exposed name (counters with their
    ``_total``, as ``docs/metrics.md`` lists them)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, _Family] = {}
    for m in text_string_to_metric_families(text):
        name = m.name + "_total" if m.type == "counter" else m.name
        out[name] = _Family(m.type, [(s.name, dict(s.labels), s.value) for s in m.samples])
    return out


def _totals(fams: dict[str, Any]) -> dict[str, float]:
    """Counter and gauge families summed over labels; summaries kept per quantile."""
    out: dict[str, float] = {}
    for name, f in fams.items():
        if f.type in ("counter", "gauge", "unknown"):
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

    url = _check_url(args.url)
    if args.interval <= 0:
        raise usage_error(f"--interval must be > 0 seconds, got {args.interval}")
    console = Console()

    def read() -> tuple[dict[str, Any], dict[str, float], float]:
        text = _scrape(url, timeout=max(2.0, args.interval))
        try:
            fams = _families(text)
        except ValueError as exc:
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


def register(sub: Any) -> None:
    """Add the ``stat`` sub-command to the ``pybus`` parser."""
    s = add_command(sub, "stat", cmd_stat, "live view of a process's /metrics (rates, latencies)",
                    "Scrape a pybus /metrics endpoint repeatedly and show counters as rates per "
                    "second, gauges, and latency percentiles, refreshing in place.")
    s.add_argument("url", metavar="URL", help="e.g. http://127.0.0.1:9464/metrics")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (1)")
    s.add_argument("--once", action="store_true",
                   help="scrape twice, --interval apart, print one table and exit")
    s.add_argument("--count", type=int, default=None, help="stop after N refreshes")
