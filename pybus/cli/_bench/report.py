"""What ``pybus bench`` reports: the results table on stdout, the HdrHistogram interval log
(``--hlog``) and the PNG (``--plot``)."""

from __future__ import annotations

import math
import time
from typing import Any

from ..._native import Histogram
from ..._version import __version__
from .common import PAYLOAD_BYTES, Result


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


def print_table(results: list[Any], quick: bool, reps_per_step: int, elapsed_s: float) -> None:
    """The results table, with a ratio column against raw pyzmq when it ran, then one note
    line per result."""
    from rich.console import Console
    from rich.table import Table

    base = {r.bench: r.median for r in results if r.system == "pyzmq"}
    reps = f"median of {reps_per_step} [min-max]" if reps_per_step > 1 else "1 repetition"
    table = Table(title=f"pybus {__version__} bench ({'quick' if quick else 'full'}, "
                        f"{elapsed_s:.1f} s, {reps})")
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



def write_hlog(path: str, results: list[Result], start_time: float) -> None:
    """HdrHistogram interval log (format 1.3): one tagged line per interval per system."""
    lines = [
        "#[Histogram log format version 1.3]",
        f"#[StartTime: {start_time:.3f} (seconds since epoch), "
        f"{time.strftime('%a %b %d %H:%M:%S %Z %Y', time.localtime(start_time))}]",
        "#[pybus bench: values in nanoseconds; Interval_Max in milliseconds]",
        '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"',
    ]
    for r in results:
        if r.bench != "latency":
            continue
        for start, length, blob in r.intervals:
            mx = Histogram.decode(blob).max / 1e6
            lines.append(f"Tag={r.system}-{r.bench},{start:.3f},{length:.3f},{mx:.3f},{blob}")
    with open(path, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")


def plot(path: str, results: list[Result]) -> None:
    """Latency percentile distribution on a log "nines" axis plus a throughput bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    nines = [i / 20 for i in range(0, 20 * 5 + 1)]  # 0 .. 5 nines
    plotted = False
    for r in results:
        h = r.histogram
        if h is None or not h.total_count or r.bench not in ("latency", "rpc"):
            continue
        top = min(5.0, max(1.0, math.log10(max(10, h.total_count))))
        xs = [x for x in nines if x <= top]
        ys = [h.percentile(100 * (1 - 10 ** -x)) / 1e3 for x in xs]
        ax1.plot(xs, ys, label=f"{r.system} {r.bench}")
        plotted = True
    ticks = [0, 1, 2, 3, 4, 5]
    ax1.set_xticks(ticks, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    ax1.set_yscale("log")
    ax1.set_xlabel("percentile")
    ax1.set_ylabel("latency (µs)")
    ax1.set_title("Latency by percentile (one-way paced; rpc round trip)")
    ax1.grid(True, which="both", alpha=0.3)
    if plotted:
        ax1.legend()
    bars = [(f"{r.system}\n{r.bench}", r.median or 0.0, r) for r in results
            if r.bench in ("pubsub", "workqueue", "rpc") and r.rates]
    if bars:
        xs2 = range(len(bars))
        ax2.bar(xs2, [b[1] for b in bars],
                yerr=[[b[1] - min(b[2].rates) for b in bars], [max(b[2].rates) - b[1]
                                                                 for b in bars]],
                color=["tab:blue" if b[2].system.startswith("pybus") else "tab:gray"
                       for b in bars])
        ax2.set_xticks(list(xs2), [b[0] for b in bars])
        ax2.set_yscale("log")
    ax2.set_ylabel("per second (median, min-max)")
    ax2.set_title(f"Throughput ({PAYLOAD_BYTES} B)")
    ax2.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(f"pybus {__version__} bench")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
