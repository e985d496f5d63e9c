"""What ``pybus bench`` runs (:class:`Plan`), one step of it repeated (:func:`run_step`), and
the machine it ran on."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import zmq

from ..._native import Histogram
from ..._version import __version__
from .common import (
    _HMAX,
    _TOPICS_N_FRACTION,
    BENCHES,
    LATENCY_VARIANTS,
    PAYLOAD_BYTES,
    PUBSUB_VARIANTS,
    BenchError,
    Result,
)
from .peers import available_peers
from .runs import latency_once, pubsub_once, rpc_once, workqueue_once


@dataclass
class Plan:
    """What to run: sizes per mode, and which systems."""

    benches: tuple[str, ...] = BENCHES
    systems: tuple[str, ...] = ("pybus",)
    reps: int = 3
    pubsub_n: int = 500_000
    rate: float = 10_000.0
    latency_s: float = 4.0
    rpc_n: int = 5_000
    wq_n: int = 100_000
    interval_s: float = 1.0

    @classmethod
    def make(cls, quick: bool, peers: bool, only: Iterable[str] | None = None,
             rate: float | None = None, reps: int | None = None) -> Plan:
        systems = ("pybus", *available_peers()) if peers else ("pybus",)
        p = (cls(systems=systems, reps=1, pubsub_n=100_000, latency_s=1.0, rpc_n=1_000,
                 wq_n=20_000, interval_s=0.25) if quick else cls(systems=systems))
        if only is not None:
            p.benches = tuple(only)
        if rate is not None:
            p.rate = rate
        if reps is not None:
            p.reps = reps
        return p

    def steps(self) -> list[tuple[str, str]]:
        # pynng and zenoh are measured where their Python APIs compare directly: pub/sub.
        # pybus's pub/sub runs side by side: reliable and best effort, and many topics.
        out = []
        for b in self.benches:
            for s in self.systems:
                if s == "pybus" and b == "pubsub":
                    out += [(b, v) for v in PUBSUB_VARIANTS]
                elif s == "pybus" and b == "latency" and len(self.systems) > 1:
                    # with the peers (--peers) only: one latency series per run otherwise
                    out += [(b, v) for v in LATENCY_VARIANTS]
                elif s in ("pybus", "pyzmq") or b in ("pubsub", "latency"):
                    out.append((b, s))
        return out


def run_step(plan: Plan, bench: str, system: str) -> Result:
    """Run one benchmark for one system, ``plan.reps`` times (latency: once, longer)."""
    if bench == "pubsub":
        r = Result(bench, system, "msg/s")
        variant = PUBSUB_VARIANTS.get(system)
        n = plan.pubsub_n
        if variant is not None:
            n = max(1000, int(n * _TOPICS_N_FRACTION.get(variant[1], 0.4)))
        missing = counted = 0
        for _ in range(plan.reps):
            rate, lo, co = pubsub_once(system, n)
            r.rates.append(rate)
            missing += lo
            counted += co
        sent = n * plan.reps
        r.notes = f"{PAYLOAD_BYTES} B, tcp, {n:,}/rep"
        if variant is not None:
            delivery, k = variant
            r.loss = {"published": sent, "delivered": sent - missing, "lost_counted": counted}
            r.notes += (f", {delivery}, {k:,} topic{'s round robin' if k > 1 else ''}; "
                        f"delivered {sent - missing:,}/{sent:,}, lost (counted by the "
                        f"subscriber) {counted:,}")
        elif missing:
            r.notes += f", {missing:,} lost"
        return r
    if bench == "latency":
        h, intervals, got, n, counted = latency_once(system, plan.rate, plan.latency_s,
                                                     plan.interval_s)
        r = Result(bench, system, "msg/s", [got / plan.latency_s], h, intervals)
        r.notes = (f"open loop at {plan.rate:,.0f} msg/s for {plan.latency_s:g} s, "
                   "from intended send time (CO-corrected)")
        if system in LATENCY_VARIANTS:
            r.loss = {"published": n, "delivered": got, "lost_counted": counted}
            r.notes += (f", {LATENCY_VARIANTS[system]}; delivered {got:,}/{n:,}, lost "
                        f"(counted by the subscriber) {counted:,}")
        elif got < n:
            r.notes += f", {n - got:,} lost"
        return r
    if bench == "rpc":
        r = Result(bench, system, "round trips/s")
        merged = Histogram(1, _HMAX, 3)
        for _ in range(plan.reps):
            rate, h = rpc_once(system, plan.rpc_n)
            r.rates.append(rate)
            merged.merge(h)
        r.histogram = merged
        r.notes = f"closed loop, {PAYLOAD_BYTES} B echo, tcp, {plan.rpc_n:,}/rep"
        return r
    if bench == "workqueue":
        r = Result(bench, system, "msg/s")
        for _ in range(plan.reps):
            r.rates.append(workqueue_once(system, plan.wq_n))
        r.notes = (f"{plan.wq_n:,} msgs, 1 worker process, acked" if system == "pybus" else
                   f"{plan.wq_n:,} msgs, PUSH->worker->PUSH back")
        return r
    raise BenchError(f"unknown benchmark {bench!r}; choose from {', '.join(BENCHES)}")


def machine() -> dict[str, Any]:
    import psutil

    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "pybus": __version__, "load_avg_1m": os.getloadavg()[0],
            "memory_bytes": psutil.virtual_memory().total}
