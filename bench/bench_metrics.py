"""What metrics cost: pub/sub throughput with metrics on vs off, and /metrics scrape time.

1. Overhead on the 64-byte pub/sub benchmark (bar: <= 5 %). Publisher in this process,
   Subscriber in a child process, tcp loopback, N messages counted at the receiver.
   * ``off``: both built with ``registry=False`` (no per-frame topic, batch-size or latency
     accounting, nothing registered, nothing served);
   * ``on``: both report into their default registry, both processes serve ``/metrics`` and a
     thread in this process scrapes both endpoints every ``--scrape-interval`` seconds
     (default 0.5 s; Prometheus' default is 15 s) during the run.
   The two configurations alternate, after one discarded warm-up of each; medians of
   ``--reps`` with min and max, and the ratio of medians.

   A second, quieter measurement: one thread publishes 1,000-message bursts over inproc and
   drains them (``overhead_inproc_one_thread``), metrics on (default registry, per-frame
   accounting) vs off (``registry=False``): messages per CPU-second of this process, without a
   second process and without counting time the machine gave to other tenants.

2. ``/metrics`` with 1,000 topics (bar: < 50 ms). A publisher and a subscriber carry 1,000
   topics each; the scrape is timed over HTTP (text and OpenMetrics) with the default topic cap
   (200: the rest folded into topic="other") and with the cap raised to 1,000 (every topic its
   own series). Side by side: ``prometheus_client`` rendering the same series (two labelled
   counters with 1,000 topics each) with ``generate_latest``.

Usage::

    .venv/bin/python bench/bench_metrics.py [--n 2000000] [--reps 5] [--json out.json]

Numbers on a machine shared with other work are noisy: the script prints the load average.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import threading
import time
import urllib.request

SPAWN = mp.get_context("spawn")
PAYLOAD = b"x" * 64


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


# --------------------------------------------------------------------------- overhead


def sub_child(endpoint: str, n: int, metrics_on: bool, conn) -> None:  # type: ignore[no-untyped-def]
    import pybus

    sub = pybus.Subscriber(endpoint, ["bench.#"], registry=None if metrics_on else False)
    srv = pybus.metrics.serve(0) if metrics_on else None
    conn.send(("ready", srv.url if srv else None))
    got, last = 0, 0
    deadline = time.monotonic() + 60
    idle_since = time.monotonic()
    while got < n and time.monotonic() < deadline:
        batch = sub.recv_batch(100_000, timeout=0.5)
        if batch:
            got += len(batch)
            last = time.monotonic_ns()
            idle_since = time.monotonic()
        elif got and time.monotonic() - idle_since > 1.0:
            break
    conn.send(("done", got, last, sub.stats()["lost"]))
    conn.recv()  # let the parent finish its last scrape
    if srv:
        srv.stop()
    sub.close()


def scraper(urls: list[str], interval: float, stop: threading.Event, out: list[float]) -> None:
    while True:
        for u in urls:
            t0 = time.perf_counter()
            with urllib.request.urlopen(u + "/metrics", timeout=5) as r:
                r.read()
            out.append(time.perf_counter() - t0)
        if stop.wait(interval):
            return


def one_run(n: int, metrics_on: bool, scrape_interval: float) -> tuple[float, int, int]:
    import pybus

    pub = pybus.Publisher("tcp://127.0.0.1:*", registry=None if metrics_on else False)
    parent, child = SPAWN.Pipe()
    proc = SPAWN.Process(target=sub_child, args=(pub.endpoints[0], n, metrics_on, child),
                         daemon=True)
    proc.start()
    child.close()
    srv = None
    try:
        if not parent.poll(60):
            raise RuntimeError("subscriber did not start")
        _, child_url = parent.recv()
        pub.wait_for_subscribers(1, timeout=30)
        stop = threading.Event()
        scrapes: list[float] = []
        th = None
        if metrics_on:
            srv = pybus.metrics.serve(0)
            th = threading.Thread(target=scraper, args=([srv.url, child_url], scrape_interval,
                                                        stop, scrapes), daemon=True)
            th.start()
        publish = pub.publish
        t0 = time.monotonic_ns()
        for _ in range(n):
            publish("bench.metrics", PAYLOAD)
        pub.flush()
        if not parent.poll(90):
            raise RuntimeError("subscriber did not finish")
        _, got, last, lost = parent.recv()
        stop.set()
        if th:
            th.join()
        parent.send("bye")
    finally:
        if srv:
            srv.stop()
        pub.close(linger_ms=0)
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return got / ((last - t0) / 1e9), lost, len(scrapes)


def overhead(n: int, reps: int, scrape_interval: float) -> dict:
    one_run(n // 5, False, scrape_interval)  # warm-ups, discarded
    one_run(n // 5, True, scrape_interval)
    off: list[float] = []
    on: list[float] = []
    lost = {"off": 0, "on": 0}
    scrapes = 0
    for _ in range(reps):
        r, lo, _ = one_run(n, False, scrape_interval)
        off.append(r)
        lost["off"] += lo
        r, lo, sc = one_run(n, True, scrape_interval)
        on.append(r)
        lost["on"] += lo
        scrapes += sc
    ratio = statistics.median(on) / statistics.median(off)
    return {"n": n, "reps": reps, "off_msg_per_s": stats(off), "on_msg_per_s": stats(on),
            "on_over_off": ratio, "overhead_pct": (1 - ratio) * 100, "lost": lost,
            "scrapes_during_on_runs": scrapes, "scrape_interval_s": scrape_interval}


def inproc_once(n: int, metrics_on: bool, burst: int = 1000) -> float:
    """One thread publishes bursts over inproc and drains them: CPU cost per message with the
    noise of a second process and the network removed."""
    import pybus

    reg = None if metrics_on else False
    ep = f"inproc://bench-overhead-{metrics_on}-{time.monotonic_ns()}"
    pub = pybus.Publisher(ep, registry=reg, sndhwm=100_000)
    sub = pybus.Subscriber(ep, ["#"], registry=reg, rcvhwm=100_000)
    pub.wait_for_subscribers(1, timeout=10)
    publish, recv_batch = pub.publish, sub.recv_batch
    got = 0
    # CPU time of this process, not wall time: on a shared machine being descheduled by other
    # tenants is the largest noise, and it is not a cost of metrics
    t0 = time.process_time()
    for _ in range(n // burst):
        for _ in range(burst):
            publish("bench.inproc", PAYLOAD)
        pub.flush()
        want = got + burst
        while got < want:
            b = recv_batch(100_000, timeout=5)
            if not b:
                raise RuntimeError("inproc run stalled")
            got += len(b)
    rate = got / (time.process_time() - t0)
    sub.close()
    pub.close(linger_ms=0)
    return rate


def overhead_inproc(n: int, reps: int) -> dict:
    inproc_once(n // 5, False)
    inproc_once(n // 5, True)
    off, on = [], []
    for _ in range(reps):
        off.append(inproc_once(n, False))
        on.append(inproc_once(n, True))
    ratio = statistics.median(on) / statistics.median(off)
    return {"n": n, "reps": reps, "off_msg_per_s": stats(off), "on_msg_per_s": stats(on),
            "on_over_off": ratio, "overhead_pct": (1 - ratio) * 100}


# --------------------------------------------------------------------------- scrape


def scrape(topics: int, reps: int) -> dict:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    import pybus

    out: dict = {"topics": topics}
    for cap in (200, topics):
        reg = pybus.metrics.Registry(max_topics=cap)
        ep = f"inproc://bench-metrics-{cap}"
        # one frame per topic: raise the ~60-frame default high-water marks so none is dropped
        pub = pybus.Publisher(ep, registry=reg, sndhwm=10_000)
        sub = pybus.Subscriber(ep, ["#"], registry=reg, rcvhwm=10_000)
        pub.wait_for_subscribers(1, timeout=10)
        got = 0
        # 50 topics at a time, each its own frame
        for start in range(0, topics, 50):
            for i in range(start, min(topics, start + 50)):
                pub.publish(f"bench.topic{i:04d}", PAYLOAD)
            pub.flush()
            while got < min(topics, start + 50):
                b = sub.recv_batch(10_000, timeout=5)
                if not b:
                    raise RuntimeError(f"received {got} of {topics}")
                got += len(b)
        with pybus.metrics.serve(0, registry=reg) as srv:
            res = {}
            for fmt, accept in (("text", "text/plain"),
                                ("openmetrics", "application/openmetrics-text")):
                times, size = [], 0
                for _ in range(reps):
                    req = urllib.request.Request(srv.url + "/metrics",
                                                 headers={"Accept": accept})
                    t0 = time.perf_counter()
                    with urllib.request.urlopen(req, timeout=5) as r:
                        body = r.read()
                    times.append((time.perf_counter() - t0) * 1e3)
                    size = len(body)
                res[fmt] = stats(times) | {"bytes": size, "lines": body.count(b"\n")}
            t_render = []
            for _ in range(reps):
                t0 = time.perf_counter()
                reg.render()
                t_render.append((time.perf_counter() - t0) * 1e3)
            res["render_in_process"] = stats(t_render)
            res["series_published"] = body.count(b"pybus_messages_published_total{")
        out[f"cap_{cap}"] = res
        sub.close()
        pub.close(linger_ms=0)
    # the peer: prometheus_client rendering the same per-topic series
    preg = CollectorRegistry()
    c1 = Counter("peer_messages_published", "m", ["name", "topic"], registry=preg)
    c2 = Counter("peer_messages_received", "m", ["name", "topic"], registry=preg)
    for i in range(topics):
        c1.labels("publisher-1", f"bench.topic{i:04d}").inc()
        c2.labels("subscriber-1", f"bench.topic{i:04d}").inc()
    t_peer = []
    for _ in range(reps):
        t0 = time.perf_counter()
        generate_latest(preg)
        t_peer.append((time.perf_counter() - t0) * 1e3)
    out["prometheus_client_generate_latest_same_topics_ms"] = stats(t_peer)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000, help="messages per overhead run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scrape-interval", type=float, default=0.05,
                    help="seconds between scrapes during 'on' runs (0.05: 300x Prometheus' 15 s)")
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args(argv)
    res: dict = {"load_avg_before": os.getloadavg()}
    if not args.skip_overhead:
        res["overhead_inproc_one_thread"] = overhead_inproc(args.n, args.reps)
        res["overhead"] = overhead(args.n, args.reps, args.scrape_interval)
    res["scrape"] = scrape(args.topics, max(args.reps * 4, 20))
    res["load_avg_after"] = os.getloadavg()
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
