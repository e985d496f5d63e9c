"""RPC round-trip latency: pybus Client/Server vs raw pyzmq DEALER/ROUTER echo vs zenoh.

One client in this process, the server in a second process (spawned per case
and repetition, ready-handshake on its stdout). Each case does ``--n`` round
trips of a ``--size``-byte payload after ``--warmup`` untimed ones; latencies
go into an HDR histogram (the ``hdrhistogram`` package) from which p50/p99
are read. Cases run interleaved, ``--reps`` times; the table shows the median
over repetitions with [min, max], and ratios against raw pyzmq on the same
transport.

Cases
-----
raw-ipc / raw-tcp      pyzmq DEALER -> ROUTER echo (send/recv, no framing)
pybus-ipc / pybus-tcp  pybus.Client.request("echo", payload) -> pybus.Server
zenoh-query            zenoh Session.get -> Queryable reply (tcp/127.0.0.1, peer mode)
zenoh-pingpong         zenoh express publishers, echo from the callback (tcp)

Run:  .venv/bin/python bench/bench_rpc.py [--n 10000] [--reps 5] [--size 64] [--pin]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import zmq

try:
    from hdrh.histogram import HdrHistogram
except ImportError:  # pragma: no cover
    HdrHistogram = None

try:
    import zenoh  # noqa: F401

    HAVE_ZENOH = True
except ImportError:
    HAVE_ZENOH = False


# ----------------------------------------------------------------------------- servers
def serve_raw(endpoint: str) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(endpoint)
    print("ready", flush=True)
    recv, send, more = s.recv, s.send, zmq.SNDMORE
    while True:
        ident = recv()
        msg = recv()
        send(ident, more)
        send(msg)


def serve_pybus(endpoint: str) -> None:
    import pybus

    srv = pybus.Server(endpoint)
    srv.add_handler("echo", lambda p: p)
    print("ready", flush=True)
    srv.serve_forever()


def _zenoh_conf(listen: str | None, connect: str | None) -> Any:
    import zenoh

    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("scouting/gossip/enabled", "false")
    conf.insert_json5("listen/endpoints", f'["{listen}"]' if listen else "[]")
    conf.insert_json5("connect/endpoints", f'["{connect}"]' if connect else "[]")
    return conf


def serve_zenoh_query(endpoint: str) -> None:
    import zenoh

    session = zenoh.open(_zenoh_conf(endpoint, None))

    def on_query(query: Any) -> None:
        query.reply(query.key_expr, query.payload.to_bytes() if query.payload else b"")

    q = session.declare_queryable("bench/echo", on_query)
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        q.undeclare()
        session.close()


def serve_zenoh_pong(endpoint: str) -> None:
    import zenoh

    session = zenoh.open(_zenoh_conf(endpoint, None))
    pub = session.declare_publisher("bench/pong", express=True)
    put = pub.put

    def on_ping(sample: Any) -> None:
        put(sample.payload)

    sub = session.declare_subscriber("bench/ping", on_ping)
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        sub.undeclare()
        session.close()


SERVERS = {
    "raw": serve_raw,
    "pybus": serve_pybus,
    "zenoh-query": serve_zenoh_query,
    "zenoh-pong": serve_zenoh_pong,
}


# ----------------------------------------------------------------------------- clients
def run_raw(endpoint: str, payload: bytes, n: int, warmup: int) -> list[int]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(endpoint)
    send, recv, clock = s.send, s.recv, time.perf_counter_ns
    for _ in range(warmup):
        send(payload)
        recv()
    out = [0] * n
    for i in range(n):
        t0 = clock()
        send(payload)
        recv()
        out[i] = clock() - t0
    s.close(0)
    ctx.term()
    return out


def run_pybus(endpoint: str, payload: bytes, n: int, warmup: int) -> list[int]:
    import pybus

    c = pybus.Client(endpoint, timeout_s=5.0)
    req, clock = c.request, time.perf_counter_ns
    for _ in range(warmup):
        req("echo", payload)
    out = [0] * n
    for i in range(n):
        t0 = clock()
        r = req("echo", payload)
        out[i] = clock() - t0
    assert r == payload
    c.close()
    return out


def run_zenoh_query(endpoint: str, payload: bytes, n: int, warmup: int) -> list[int]:
    import zenoh

    session = zenoh.open(_zenoh_conf(None, endpoint))
    get, clock = session.get, time.perf_counter_ns
    # Wait until the queryable is reachable (a reply arrives), not a fixed sleep.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(r.ok is not None for r in get("bench/echo", payload=payload)):
            break
    for _ in range(warmup):
        for _r in get("bench/echo", payload=payload):
            pass
    out = [0] * n
    last: Any = None
    for i in range(n):
        t0 = clock()
        for last in get("bench/echo", payload=payload):  # noqa: B007 - the last reply is checked
            pass
        out[i] = clock() - t0
    assert last is not None and last.ok is not None and last.ok.payload.to_bytes() == payload
    session.close()
    return out


def run_zenoh_pong(endpoint: str, payload: bytes, n: int, warmup: int) -> list[int]:
    import zenoh

    session = zenoh.open(_zenoh_conf(None, endpoint))
    pub = session.declare_publisher("bench/ping", express=True)
    sub = session.declare_subscriber("bench/pong")
    put, recv, clock = pub.put, sub.recv, time.perf_counter_ns
    # Handshake: keep pinging until the first pong comes back.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        put(payload)
        if sub.try_recv() is not None:
            break
        time.sleep(0.01)  # pacing the handshake probes only, not a readiness wait
    while sub.try_recv() is not None:
        pass
    for _ in range(warmup):
        put(payload)
        recv()
    out = [0] * n
    for i in range(n):
        t0 = clock()
        put(payload)
        recv()
        out[i] = clock() - t0
    sub.undeclare()
    pub.undeclare()
    session.close()
    return out


# ----------------------------------------------------------------------------- harness
PIN: tuple[int, int] | None = None  # (client cpu, server cpu) with --pin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def case_list(tmp: str) -> list[tuple[str, str, Any, Any]]:
    """(name, server kind, endpoint factory, client runner)."""
    cases: list[tuple[str, str, Any, Any]] = [
        ("raw-ipc", "raw", lambda: f"ipc://{tmp}/raw.ipc", run_raw),
        ("pybus-ipc", "pybus", lambda: f"ipc://{tmp}/pybus.ipc", run_pybus),
        ("raw-tcp", "raw", lambda: f"tcp://127.0.0.1:{free_port()}", run_raw),
        ("pybus-tcp", "pybus", lambda: f"tcp://127.0.0.1:{free_port()}", run_pybus),
    ]
    if HAVE_ZENOH:
        cases += [
            ("zenoh-query", "zenoh-query", lambda: f"tcp/127.0.0.1:{free_port()}", run_zenoh_query),
            (
                "zenoh-pingpong",
                "zenoh-pong",
                lambda: f"tcp/127.0.0.1:{free_port()}",
                run_zenoh_pong,
            ),
        ]
    return cases


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    """p50 and p99 in microseconds, from an HDR histogram (3 significant digits)."""
    if HdrHistogram is not None:
        h = HdrHistogram(1, 60 * 10**9, 3)
        for v in samples_ns:
            h.record_value(max(1, v))
        return h.get_value_at_percentile(50) / 1e3, h.get_value_at_percentile(99) / 1e3
    import numpy as np

    p50, p99 = np.percentile(np.asarray(samples_ns), [50, 99])
    return float(p50) / 1e3, float(p99) / 1e3


def run_case(
    kind: str, endpoint: str, runner: Any, payload: bytes, n: int, warmup: int
) -> list[int]:
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", kind, endpoint]
    if PIN is not None:
        cmd = ["taskset", "-c", str(PIN[1]), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(f"server {kind} did not start (got {line!r})")
        return runner(endpoint, payload, n, warmup)  # type: ignore[no-any-return]
    finally:
        proc.kill()
        proc.wait(10)


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} [{min(values):.1f}, {max(values):.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="timed round trips per case and rep")
    ap.add_argument("--warmup", type=int, default=1_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", type=int, default=64, help="payload bytes")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--pin", action="store_true", help="pin client to CPU 0, servers to CPU 1")
    ap.add_argument("--serve", nargs=2, metavar=("KIND", "ENDPOINT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        SERVERS[args.serve[0]](args.serve[1])
        return
    if not 1 <= args.n <= 10_000_000 or not 1 <= args.reps <= 50:
        ap.error("--n must be 1..1e7 and --reps 1..50")
    if args.pin:
        global PIN
        PIN = (0, 1)
        os.sched_setaffinity(0, {0})
    payload = os.urandom(args.size)
    with tempfile.TemporaryDirectory(prefix="pybus-bench-rpc-") as tmp:
        cases = case_list(tmp)
        if args.only:
            wanted = set(args.only.split(","))
            cases = [c for c in cases if c[0] in wanted]
        results: dict[str, dict[str, list[float]]] = {c[0]: {"p50": [], "p99": []} for c in cases}
        print(
            f"# RPC round trip, {args.size} B payload, {args.n} timed round trips x {args.reps} "
            f"interleaved reps, server in a second process; cores={os.cpu_count()}"
        )
        for rep in range(args.reps):
            for name, kind, make_ep, runner in cases:
                samples = run_case(kind, make_ep(), runner, payload, args.n, args.warmup)
                p50, p99 = percentiles(samples)
                results[name]["p50"].append(p50)
                results[name]["p99"].append(p99)
                print(f"rep {rep + 1} {name:15s} p50 {p50:8.1f} us  p99 {p99:8.1f} us", flush=True)
    print()
    print(
        f"{'case':15s} {'p50 us median [min, max]':>28s} {'p99 us median [min, max]':>28s}"
        "   ratio of medians (p50, p99)     ratio of min p50"
    )
    for name, r in results.items():
        base = "raw-tcp" if name.endswith("tcp") or name.startswith("zenoh") else "raw-ipc"
        ratio = ""
        if base in results and results[base]["p50"]:
            # Ratio of medians; also per-rep ratios are printed by the interleaved lines above.
            rp50 = statistics.median(r["p50"]) / statistics.median(results[base]["p50"])
            rp99 = statistics.median(r["p99"]) / statistics.median(results[base]["p99"])
            rmin = min(r["p50"]) / min(results[base]["p50"])
            ratio = f"   {rp50:5.2f}x {rp99:5.2f}x vs {base}   {rmin:5.2f}x"
        print(f"{name:15s} {fmt(r['p50']):>28s} {fmt(r['p99']):>28s}{ratio}")
    if "pybus-ipc" in results and "raw-ipc" in results:
        per_rep = [
            (a / b, c / d)
            for a, b, c, d in zip(
                results["pybus-ipc"]["p50"],
                results["raw-ipc"]["p50"],
                results["pybus-ipc"]["p99"],
                results["raw-ipc"]["p99"],
                strict=True,
            )
        ]
        print()
        print(
            "pybus-ipc / raw-ipc per rep (p50, p99): "
            + ", ".join(f"({a:.2f}, {b:.2f})" for a, b in per_rep)
        )
        print("bar: p50 <= 1.20x, p99 <= 1.30x (medians of the reps)")


if __name__ == "__main__":
    main()
