"""CURVE on vs off: 64-byte pub/sub over tcp, pybus against itself, in the same run.

Each repetition moves N 64-byte messages from a Publisher (this process) to a Subscriber in
another process over tcp://127.0.0.1, once in plaintext and once with CURVE
(``Curve.server`` with the subscriber's key on the allowlist, ``Curve.client``), timed from
the first publish to the subscriber's last receive. Every figure is the median of REPS
repetitions (min and max shown) after one discarded warm-up; configurations are interleaved
so machine drift hits both alike. The ratio (CURVE / plaintext throughput) is the issue's bar
(>= 60 %).

Usage::

    .venv/bin/python bench/bench_security.py [--n 2000000] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from typing import Any

SPAWN = mp.get_context("spawn")
PAYLOAD = b"x" * 64
BIG_HWM = 10_000_000


def sub_proc(endpoint: str, n: int, keys: Any, conn: Any) -> None:
    import pybus

    sec = None
    if keys is not None:
        srv_pub, cli_sec = keys
        sec = pybus.Curve.client(cli_sec, srv_pub)
    sub = pybus.Subscriber(endpoint, rcvhwm=BIG_HWM, security=sec, registry=False)
    conn.send("ready")
    got = 0
    t_first = None
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        batch = sub.recv_batch(100_000, timeout=1.0)
        if batch and t_first is None:
            t_first = time.time()
        got += len(batch)
    conn.send({"got": got, "t_last": time.time(), "t_first": t_first,
               "lost": sub.stats()["lost"]})
    sub.close()


def one_run(curve: bool, n: int) -> dict[str, Any]:
    import pybus

    sec = keys = None
    if curve:
        srv_pub, srv_sec = pybus.keypair()
        cli_pub, cli_sec = pybus.keypair()
        sec = pybus.Curve.server(srv_sec, allow=[cli_pub])
        keys = (srv_pub, cli_sec)
    pub = pybus.Publisher("tcp://127.0.0.1:*", sndhwm=BIG_HWM, security=sec, registry=False)
    parent, child = SPAWN.Pipe()
    p = SPAWN.Process(target=sub_proc, args=(pub.endpoints[0], n, keys, child))
    p.start()
    try:
        assert parent.poll(60) and parent.recv() == "ready"
        pub.wait_for_subscribers(1, timeout=30)
        publish = pub.publish
        t0 = time.time()
        for _ in range(n):
            publish("bench.sec", PAYLOAD)
        pub.flush()
        t_pub = time.time() - t0
        assert parent.poll(180), "subscriber did not report"
        res = parent.recv()
    finally:
        p.join(30)
        pub.close(linger_ms=1000)
    elapsed = res["t_last"] - t0
    return {"msgs_per_s": res["got"] / elapsed, "got": res["got"], "lost": res["lost"],
            "publish_s": t_pub}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    one_run(False, min(args.n, 50_000))  # warm-up (discarded)
    one_run(True, min(args.n, 50_000))
    runs: dict[str, list[dict[str, Any]]] = {"plaintext": [], "curve": []}
    for _ in range(args.reps):
        runs["plaintext"].append(one_run(False, args.n))
        runs["curve"].append(one_run(True, args.n))
    out: dict[str, Any] = {"n": args.n, "reps": args.reps, "payload_bytes": len(PAYLOAD)}
    for name, rs in runs.items():
        rates = [r["msgs_per_s"] for r in rs]
        out[name] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
                     "lost": sum(r["lost"] for r in rs),
                     "incomplete": sum(r["got"] < args.n for r in rs)}
    out["ratio_curve_over_plaintext"] = out["curve"]["median"] / out["plaintext"]["median"]
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"64-B pub/sub over tcp, {args.n:,} messages, median of {args.reps} (min..max)")
    for name in ("plaintext", "curve"):
        r = out[name]
        print(f"  {name:10s} {r['median']:>12,.0f} msg/s  ({r['min']:,.0f}..{r['max']:,.0f})"
              f"  lost {r['lost']}  incomplete runs {r['incomplete']}")
    ratio = out["ratio_curve_over_plaintext"]
    verdict = "met" if ratio >= 0.6 else "NOT met"
    print(f"  CURVE / plaintext = {ratio:.1%}  (bar >= 60 %: {verdict})")


if __name__ == "__main__":
    main()
