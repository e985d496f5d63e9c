"""What per-key topic permissions cost: at a secured Subscriber, and at the Proxy.

Three measurements, all CURVE over tcp://127.0.0.1, 64-byte payloads, in the same run:

1. ``check``: the per-frame cost a secured Subscriber adds when it enforces publish
   permissions -- reading the frame's ``User-Id`` and looking up the cached (user, topic)
   decision -- timed on a real frame received over CURVE, in ns per frame (a frame is one
   batch of messages, so this is paid once per batch, not per message).
2. ``subscriber``: a bound Subscriber (this process, ``Curve.server``) receiving N messages
   from a Publisher in another process, with no permissions vs with publish permissions
   (the publisher's key may publish ``bench.#``, so every frame is checked and passes).
3. ``proxy``: Publisher process -> Proxy (this process) -> Subscriber process, ZeroMQ's C
   proxy loop (CURVE allowlist only) vs pybus's checked Python loop (CURVE with publish and
   subscribe permissions, everything allowed so every frame is checked and forwarded); once
   with the publisher's normal batching, once with one message per frame
   (``max_batch_records=1``, N/10 messages), and once with raw two-part messages from a
   pyzmq PUB into a pyzmq SUB (3N/10), a frame source fast enough that the proxy's own frame
   rate is what is measured ("lost" there: messages that did not arrive in time).

Throughput is timed from the publisher's first publish to the subscriber's last receive.
Every figure is the median of REPS repetitions (min and max shown) after one discarded
warm-up; configurations are interleaved so machine drift hits both alike.

Usage::

    .venv/bin/python bench/bench_permissions.py [--n 1000000] [--reps 5] [--json]
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
TOPIC = "bench.perm"


def pub_proc(endpoint: str, n: int, srv_pub: bytes, cli_sec: bytes, conn: Any,
             records: int = 8192) -> None:
    import pybus

    pub = pybus.Publisher(endpoint, connect=True, sndhwm=BIG_HWM, registry=False,
                          security=pybus.Curve.client(cli_sec, srv_pub),
                          max_batch_records=records)
    try:
        pub.wait_for_subscribers(1, timeout=30)
        conn.send(time.time())
        publish = pub.publish
        for _ in range(n):
            publish(TOPIC, PAYLOAD)
        pub.flush()
        conn.recv()  # stay connected until the receiver is done
    finally:
        pub.close(linger_ms=1000)


def sub_proc(endpoint: str, n: int, srv_pub: bytes, cli_sec: bytes, conn: Any) -> None:
    import pybus

    sub = pybus.Subscriber(endpoint, rcvhwm=BIG_HWM, registry=False,
                           security=pybus.Curve.client(cli_sec, srv_pub))
    conn.send("ready")
    got = 0
    deadline = time.monotonic() + 180
    while got < n and time.monotonic() < deadline:
        got += len(sub.recv_batch(100_000, timeout=1.0))
    conn.send({"got": got, "t_last": time.time(), "lost": sub.stats()["lost"]})
    sub.close()


def raw_pub_proc(endpoint: str, n: int, srv_pub: bytes, cli_sec: bytes, conn: Any) -> None:
    """Raw two-part messages (topic, 64 B) from a pyzmq PUB: a frame source faster than a
    pybus publisher sending one message per frame, so the proxy's frame rate shows."""
    import zmq

    import pybus

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.sndhwm = BIG_HWM
    s.linger = 1000
    pybus.Curve.client(cli_sec, srv_pub).apply(s)
    s.connect(endpoint)
    conn.recv()  # "go"
    topic = TOPIC.encode()
    # probes until the receiver saw one: its subscriptions crossed the proxy to this PUB
    while True:
        s.send_multipart([b"probe", b""])
        if conn.poll(0.01):
            break
    conn.recv()
    conn.send(time.time())
    send = s.send_multipart
    for _ in range(n):
        send([topic, PAYLOAD])
    conn.recv()
    s.close()
    ctx.term()


def raw_sub_proc(endpoint: str, n: int, srv_pub: bytes, cli_sec: bytes, conn: Any) -> None:
    import zmq

    import pybus

    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.rcvhwm = BIG_HWM
    s.linger = 0
    pybus.Curve.client(cli_sec, srv_pub).apply(s)
    s.subscribe(TOPIC.encode())
    s.subscribe(b"probe")
    s.connect(endpoint)
    conn.send("ready")
    while s.recv_multipart()[0] != b"probe":
        pass
    conn.send("wired")
    got = 0
    s.rcvtimeo = 1000
    recv = s.recv
    topic = TOPIC.encode()
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        try:
            first = recv()
            recv()  # the payload part (every message here has two)
        except zmq.Again:
            continue
        if first == topic:
            got += 1
    conn.send({"got": got, "t_last": time.time(), "lost": n - got})
    s.close()
    ctx.term()


def _curve_proxy(checked: bool) -> tuple[Any, bytes, bytes, bytes]:
    """A CURVE proxy (with publish/subscribe rights when checked); returns it, the server's
    public key, and the secret keys of the publisher and of the subscriber it admits."""
    import pybus

    srv_pub, srv_sec = pybus.keypair()
    pk_pub, pk_sec = pybus.keypair()
    sk_pub, sk_sec = pybus.keypair()
    permissions = ({pk_pub: {"publish": ["#"]}, sk_pub: {"subscribe": ["#"]}}
                   if checked else None)
    srv = pybus.Curve.server(srv_sec, allow=[pk_pub, sk_pub], permissions=permissions)
    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", security=srv, sndhwm=BIG_HWM,
                     rcvhwm=BIG_HWM, registry=False)
    return px, srv_pub, pk_sec, sk_sec


def proxy_raw_run(checked: bool, n: int) -> dict[str, Any]:
    px, srv_pub, pk_sec, sk_sec = _curve_proxy(checked)
    sp, sc = SPAWN.Pipe()
    s = SPAWN.Process(target=raw_sub_proc, args=(px.backend[0], n, srv_pub, sk_sec, sc))
    s.start()
    pp, pc = SPAWN.Pipe()
    p = SPAWN.Process(target=raw_pub_proc, args=(px.frontend[0], n, srv_pub, pk_sec, pc))
    try:
        assert sp.poll(60) and sp.recv() == "ready"
        p.start()
        pp.send("go")
        assert sp.poll(60) and sp.recv() == "wired"
        pp.send("wired")
        assert pp.poll(60)
        t0 = pp.recv()
        assert sp.poll(240), "subscriber did not report"
        res = sp.recv()
        pp.send("done")
    finally:
        p.join(30)
        s.join(30)
        px.close()
    return {"msgs_per_s": res["got"] / (res["t_last"] - t0), "got": res["got"],
            "lost": res["lost"]}


def _receive(sub: Any, n: int, got: int) -> tuple[int, float]:
    deadline = time.monotonic() + 180
    while got < n and time.monotonic() < deadline:
        got += len(sub.recv_batch(100_000, timeout=1.0))
    return got, time.time()


def subscriber_run(perms: bool, n: int) -> dict[str, Any]:
    import pybus

    srv_pub, srv_sec = pybus.keypair()
    cli_pub, cli_sec = pybus.keypair()
    permissions = {cli_pub: {"publish": ["bench.#"]}} if perms else None
    srv = pybus.Curve.server(srv_sec, allow=[cli_pub], permissions=permissions)
    sub = pybus.Subscriber("tcp://127.0.0.1:*", bind=True, rcvhwm=BIG_HWM, security=srv,
                           registry=False)
    parent, child = SPAWN.Pipe()
    p = SPAWN.Process(target=pub_proc, args=(sub.endpoints[0], n, srv_pub, cli_sec, child))
    p.start()
    try:
        got = 0
        while not parent.poll(0.001):  # a bound subscriber attaches peers when called into
            got += len(sub.recv_batch(100_000, timeout=0.001))  # (the first may be here)
        t0 = parent.recv()
        got, t_last = _receive(sub, n, got)
        parent.send("done")
        st = sub.stats()
    finally:
        p.join(30)
        sub.close()
    assert st["dropped"]["forbidden"] == 0
    return {"msgs_per_s": got / (t_last - t0), "got": got, "lost": st["lost"],
            "msgs_per_frame": got / max(1, st["batches"])}


def proxy_run(checked: bool, n: int, records: int = 8192) -> dict[str, Any]:
    px, srv_pub, pk_sec, sk_sec = _curve_proxy(checked)
    assert px.stats()["checked"] is checked
    sp, sc = SPAWN.Pipe()
    s = SPAWN.Process(target=sub_proc, args=(px.backend[0], n, srv_pub, sk_sec, sc))
    s.start()
    pp, pc = SPAWN.Pipe()
    p = SPAWN.Process(target=pub_proc, args=(px.frontend[0], n, srv_pub, pk_sec, pc, records))
    try:
        assert sp.poll(60) and sp.recv() == "ready"
        p.start()
        assert pp.poll(60)
        t0 = pp.recv()
        assert sp.poll(240), "subscriber did not report"
        res = sp.recv()
        pp.send("done")
        st = px.stats()
    finally:
        p.join(30)
        s.join(30)
        px.close()
    return {"msgs_per_s": res["got"] / (res["t_last"] - t0), "got": res["got"],
            "lost": res["lost"], "forbidden": st["forbidden"]}


def check_cost(frames: int = 1_000_000) -> dict[str, float]:
    """ns per frame for the User-Id read plus the cached decision, on a real CURVE frame."""
    import zmq

    import pybus

    ctx = zmq.Context()
    srv_pub, srv_sec = pybus.keypair()
    cli_pub, cli_sec = pybus.keypair()
    srv = pybus.Curve.server(srv_sec, allow=[cli_pub],
                             permissions={cli_pub: {"publish": ["bench.#"]}})
    a = ctx.socket(zmq.PULL)
    b = ctx.socket(zmq.PUSH)
    try:
        srv.apply(a)
        a.linger = b.linger = 0
        port = a.bind_to_random_port("tcp://127.0.0.1")
        pybus.Curve.client(cli_sec, srv_pub).apply(b)
        b.connect(f"tcp://127.0.0.1:{port}")
        b.send(b"x" * 64)
        assert a.poll(10_000)
        frame = a.recv(copy=False)
        topic = TOPIC.encode()
        cache = {(frame.get("User-Id"), topic): True}
        get = cache.get

        def run(with_check: bool) -> float:
            t = time.perf_counter_ns()
            if with_check:
                for _ in range(frames):
                    user = frame.get("User-Id")
                    if not get((user, topic), False):
                        raise AssertionError("denied")
            else:
                for _ in range(frames):
                    pass
            return (time.perf_counter_ns() - t) / frames

        reps = [run(True) - run(False) for _ in range(5)]
    finally:
        a.close(0)
        b.close(0)
        ctx.term()
    return {"median_ns": statistics.median(reps), "min_ns": min(reps), "max_ns": max(reps)}


def _summary(rs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    rates = [r["msgs_per_s"] for r in rs]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "lost": sum(r["lost"] for r in rs), "incomplete": sum(r["got"] < n for r in rs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"n": args.n, "reps": args.reps, "payload_bytes": len(PAYLOAD)}
    out["check"] = check_cost()
    warm = min(args.n, 50_000)
    subscriber_run(False, warm)  # warm-ups (discarded)
    subscriber_run(True, warm)
    proxy_run(False, warm)
    proxy_run(True, warm)
    runs: dict[str, list[dict[str, Any]]] = {
        "subscriber_no_perms": [], "subscriber_publish_perms": [],
        "proxy_zmq_loop": [], "proxy_checked_loop": [],
        "proxy_zmq_loop_1_per_frame": [], "proxy_checked_loop_1_per_frame": [],
        "proxy_zmq_loop_raw_frames": [], "proxy_checked_loop_raw_frames": [],
    }
    n1 = max(1, args.n // 10)
    frames: list[float] = []
    for _ in range(args.reps):
        r = subscriber_run(False, args.n)
        runs["subscriber_no_perms"].append(r)
        r = subscriber_run(True, args.n)
        frames.append(r["msgs_per_frame"])
        runs["subscriber_publish_perms"].append(r)
        runs["proxy_zmq_loop"].append(proxy_run(False, args.n))
        runs["proxy_checked_loop"].append(proxy_run(True, args.n))
        runs["proxy_zmq_loop_1_per_frame"].append(proxy_run(False, n1, 1))
        runs["proxy_checked_loop_1_per_frame"].append(proxy_run(True, n1, 1))
        runs["proxy_zmq_loop_raw_frames"].append(proxy_raw_run(False, n1 * 3))
        runs["proxy_checked_loop_raw_frames"].append(proxy_raw_run(True, n1 * 3))
    for name, rs in runs.items():
        size = n1 if name.endswith("frame") else n1 * 3 if name.endswith("frames") else args.n
        out[name] = _summary(rs, size)
    out["subscriber_msgs_per_frame"] = statistics.median(frames)
    out["ratio_subscriber"] = (out["subscriber_publish_perms"]["median"]
                               / out["subscriber_no_perms"]["median"])
    out["ratio_proxy"] = out["proxy_checked_loop"]["median"] / out["proxy_zmq_loop"]["median"]
    out["ratio_proxy_1_per_frame"] = (out["proxy_checked_loop_1_per_frame"]["median"]
                                      / out["proxy_zmq_loop_1_per_frame"]["median"])
    out["ratio_proxy_raw_frames"] = (out["proxy_checked_loop_raw_frames"]["median"]
                                     / out["proxy_zmq_loop_raw_frames"]["median"])
    if args.json:
        print(json.dumps(out, indent=2))
        return
    c = out["check"]
    print(f"publish-permission check per frame (User-Id + cached decision): "
          f"{c['median_ns']:.0f} ns (min {c['min_ns']:.0f}, max {c['max_ns']:.0f})")
    print(f"64-B messages over CURVE/tcp, {args.n:,} messages, median of {args.reps} (min..max)")
    for name in runs:
        r = out[name]
        print(f"  {name:26s} {r['median']:>12,.0f} msg/s  ({r['min']:,.0f}..{r['max']:,.0f})"
              f"  lost {r['lost']}  incomplete runs {r['incomplete']}")
    print(f"  subscriber: with / without publish permissions = {out['ratio_subscriber']:.1%} "
          f"(~{out['subscriber_msgs_per_frame']:.0f} messages per frame)")
    print(f"  proxy: checked Python loop / ZeroMQ C loop = {out['ratio_proxy']:.1%} (batched), "
          f"{out['ratio_proxy_1_per_frame']:.1%} (one message per frame, N/10 messages), "
          f"{out['ratio_proxy_raw_frames']:.1%} (raw pyzmq frames, 3N/10: the frame rate)")


if __name__ == "__main__":
    main()
