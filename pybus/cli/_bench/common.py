"""What every part of the benchmark harness shares: sizes and limits, the pybus variants
measured, :class:`Result`, and the plumbing of child processes (start, answer, stop, the error
guard) and of latency recording."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..._native import Histogram

BENCHES = ("pubsub", "latency", "rpc", "workqueue")
PAYLOAD_BYTES = 64
_SPAWN = mp.get_context("spawn")
_NS = 1_000_000_000
_HMAX = 60 * _NS  # latencies above a minute are recorded as a minute
_STAMP = struct.Struct("<q")
_CHILD_TIMEOUT_S = 30.0
#: A receiver that has seen messages and then nothing for this long stops: the rest was lost.
_IDLE_S = 1.0
_IDLE_NS = int(_IDLE_S * 1e9)


_Delivery = Literal["reliable", "best_effort"]
#: pybus systems of the ``pubsub`` bench: (delivery, topics). "pybus" is the default publisher
#: (reliable, one topic); "-be" best effort; "-100t", "-2000t" topics round robin (reliable).
#: Short names: the table fits an 80-column terminal.
PUBSUB_VARIANTS: dict[str, tuple[_Delivery, int]] = {
    "pybus": ("reliable", 1),
    "pybus-be": ("best_effort", 1),
    "pybus-100t": ("reliable", 100),
    "pybus-2000t": ("reliable", 2000),
}
#: pybus systems of the ``latency`` bench: delivery.
LATENCY_VARIANTS: dict[str, _Delivery] = {"pybus": "reliable", "pybus-be": "best_effort"}
#: Messages per run of a many-topic variant, as a fraction of ``Plan.pubsub_n`` (one message
#: per frame at 2,000 topics: the runs would otherwise take several times longer).
_TOPICS_N_FRACTION = {1: 1.0, 100: 1.0, 2000: 0.4}


def _topic_names(k: int) -> list[str]:
    return ["bench.pubsub"] if k == 1 else [f"bench.t{i:04d}" for i in range(k)]


class BenchError(Exception):
    """A benchmark could not complete (a child died, a handshake or a run timed out)."""


@dataclass
class Result:
    """One benchmark of one system."""

    bench: str
    system: str
    unit: str  # "msg/s" or "round trips/s"
    rates: list[float] = field(default_factory=list)
    histogram: Histogram | None = None  # ns
    intervals: list[tuple[float, float, str]] = field(default_factory=list)  # start, len, blob
    notes: str = ""
    #: pub/sub: published, delivered, lost (counted by the subscriber), summed over the reps
    loss: dict[str, int] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"bench": self.bench, "system": self.system, "unit": self.unit,
                             "notes": self.notes}
        if self.loss:
            d["loss"] = dict(self.loss)
        if self.rates:
            d.update(median=self.median, min=min(self.rates), max=max(self.rates),
                     reps=self.rates)
        h = self.histogram
        if h is not None and h.total_count:
            d["latency_us"] = {
                f"p{p:g}": h.percentile(p) / 1e3 for p in (50, 90, 99, 99.9, 99.99)
            } | {"max": h.max / 1e3, "mean": h.mean / 1e3, "count": h.total_count}
            d["histogram"] = h.encode()
        return d


def _free_tcp() -> str:
    return "tcp://127.0.0.1:*"


def _start(target: Callable[..., None], *args: Any) -> tuple[Any, Any]:
    parent, child = _SPAWN.Pipe()
    p = _SPAWN.Process(target=target, args=(*args, child), daemon=True)
    p.start()
    child.close()
    return p, parent


def _recv(conn: Any, proc: Any, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise BenchError(f"{what}: no answer from the child process within {timeout:g} s")
    try:
        msg = conn.recv()
    except EOFError:
        raise BenchError(f"{what}: the child process exited (code {proc.exitcode})") from None
    if isinstance(msg, tuple) and msg and msg[0] == "error":
        raise BenchError(f"{what}: {msg[1]}")
    return msg


def _stop(proc: Any) -> None:
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def _pace_until(target_ns: int, mono: Callable[[], int] = time.monotonic_ns) -> None:
    # Sleep while far from the target, spin the last 100 us (sleep overshoots by ~60 us).
    while True:
        d = target_ns - mono()
        if d <= 0:
            return
        if d > 200_000:
            time.sleep((d - 100_000) / _NS)


def _child_guard(fn: Callable[..., None]) -> Callable[..., None]:
    def run(*args: Any) -> None:
        conn = args[-1]
        try:
            fn(*args)
        except Exception as exc:  # reported to the parent, which raises BenchError
            try:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
            except Exception:
                pass

    # spawn pickles the target by module + qualname; the wrapper replaces fn under its name,
    # in fn's module (this one only defines the wrapper)
    run.__module__ = fn.__module__
    run.__name__ = fn.__name__
    run.__qualname__ = fn.__qualname__
    return run


class _LatencyRecorder:
    """Records receive - intended send time; cuts interval histograms for the .hlog."""

    def __init__(self, interval_s: float) -> None:
        self.total = Histogram(1, _HMAX, 3)
        self.cur = Histogram(1, _HMAX, 3)
        self.interval_ns = int(interval_s * _NS)
        self.start_ns = time.monotonic_ns()
        self.cut_ns = self.start_ns + self.interval_ns
        self.intervals: list[tuple[float, float, str]] = []

    def record(self, now: int, sent: int) -> None:
        lat = now - sent
        lat = 0 if lat < 0 else (lat if lat < _HMAX else _HMAX)
        self.total.record(lat)
        self.cur.record(lat)

    def tick(self, now: int) -> None:
        if now >= self.cut_ns:
            self.flush(now)

    def flush(self, now: int) -> None:
        if self.cur.total_count:
            start = (self.cut_ns - self.interval_ns - self.start_ns) / _NS
            self.intervals.append((start, (now - (self.cut_ns - self.interval_ns)) / _NS,
                                   self.cur.encode()))
            self.cur.reset()
        self.cut_ns = now + self.interval_ns
