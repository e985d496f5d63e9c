"""What tracing costs pybus, side by side in one run (issue 13's bar: with OpenTelemetry off,
<= 2 % on pub/sub throughput and RPC p50; with spans on, measured and published).

Each case runs in a child process (a tracer provider is process-global), all in one run,
interleaved so drift in machine speed hits every case alike:

- ``not installed``: ``opentelemetry`` hidden from the import system;
- ``no provider``: OpenTelemetry installed, no provider set (the baseline: pybus decides at
  construction not to trace, so ``publish`` and ``request`` are the compiled calls);
- ``PYBUS_TRACING=0``: an SDK provider set, tracing turned off for pybus;
- ``spans on``: an SDK provider with no exporter (spans created and ended, not exported).

Pub/sub: N 64-byte messages on inproc to one subscriber (the default reliable delivery, one
thread), messages/s. RPC: N requests of 64 bytes to an echo Server on inproc, p50 round trip.
Every wait is bounded: a message that never arrives fails the run.

Usage: ``python bench/tracing_cost.py [--n 1000000] [--reps 7]`` (spans on: at most 50,000
messages; the rate is per message either way).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import os, sys, time, uuid
n, mode = int(sys.argv[1]), sys.argv[2]
if mode == "absent":
    sys.modules["opentelemetry"] = None  # import fails as if the package were missing
elif mode != "none":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
import pybus

def drain(sub, want, got):
    deadline = time.monotonic() + 30
    while got < want:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {got} of {want} messages arrived: {sub.stats()}")
        got += len(sub.recv_batch(10000, timeout=1))
    return got

ep = f"inproc://tracing-cost-{uuid.uuid4().hex}"
with pybus.Subscriber(ep, topics=["t"], bind=True, registry=False) as sub, \
        pybus.Publisher(ep, connect=True, registry=False) as pub:
    pub.wait_for_subscribers(1, timeout=10)
    payload, publish, got = b"x" * 64, pub.publish, 0
    t0 = time.perf_counter()
    for i in range(n):
        publish("t", payload)
        if i % 100 == 99:  # fewer frames than the flow-control window (240) in flight
            pub.flush(timeout=30)
            got = drain(sub, i + 1, got)
    pub.flush(timeout=30)
    got = drain(sub, n, got)
    rate = n / (time.perf_counter() - t0)

ep = f"inproc://tracing-cost-rpc-{uuid.uuid4().hex}"
with pybus.Server(ep, registry=False) as srv:
    srv.add_handler("echo", lambda p: p)
    with pybus.Client(ep, timeout_s=10, registry=False) as c:
        request, clock, took = c.request, time.perf_counter_ns, []
        for _ in range(min(n, 20000)):
            t = clock()
            request("echo", payload)
            took.append(clock() - t)
took.sort()
print(rate, took[len(took) // 2] / 1e3)
"""

CASES = {"not installed": "absent", "no provider": "none", "PYBUS_TRACING=0": "off",
         "spans on": "on"}


def run(n: int, mode: str) -> tuple[float, float]:
    env = dict(os.environ)
    if mode == "off":
        env["PYBUS_TRACING"] = "0"
    if mode == "on":
        n = min(n, 50_000)  # a span per message: fewer messages give the same per-message cost
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), mode], capture_output=True,
                         text=True, env=env, timeout=600, check=True)
    rate, p50 = out.stdout.strip().splitlines()[-1].split()
    return float(rate), float(p50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    rates: dict[str, list[float]] = {k: [] for k in CASES}
    p50s: dict[str, list[float]] = {k: [] for k in CASES}
    for _ in range(a.reps):
        for name, mode in CASES.items():
            rate, p50 = run(a.n, mode)
            rates[name].append(rate)
            p50s[name].append(p50)
    base_rate = statistics.median(rates["no provider"])
    base_p50 = statistics.median(p50s["no provider"])
    print("| case | pub/sub msg/s, median [min - max] | vs no provider | RPC p50 us, median "
          "[min - max] | vs no provider |")
    print("| --- | --- | --- | --- | --- |")
    for name in CASES:
        r, p = rates[name], p50s[name]
        print(f"| {name} | {statistics.median(r):,.0f} [{min(r):,.0f} - {max(r):,.0f}] | "
              f"{statistics.median(r) / base_rate:.3f}x | {statistics.median(p):.1f} "
              f"[{min(p):.1f} - {max(p):.1f}] | {statistics.median(p) / base_p50:.3f}x |")


if __name__ == "__main__":
    main()
