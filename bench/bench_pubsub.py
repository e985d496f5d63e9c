"""pybus pub/sub against its peers, side by side, two processes per case.

Throughput (messages delivered to user code per second, counted at the receiver from the
sender's first send to the receiver's last receive; CLOCK_MONOTONIC is shared by processes):

- ``pybus-batch``  : pybus Publisher -> Subscriber.recv_batch
- ``pybus-recv``   : pybus Publisher -> Subscriber.recv, one call per message
- ``zmq-send``     : raw pyzmq, one ``send(topic + payload)`` per message, ``recv()`` each
- ``py-batch``     : hand-written Python batching over pyzmq: 1000 u32-length-prefixed
                     messages per frame (no topics, no sequence numbers), sliced back out
- ``zenoh``        : eclipse-zenoh pub/sub, peer mode, callback subscriber (skipped with a note
                     when ``eclipse-zenoh`` is not installed)

for 64 B and 1 KiB payloads over ipc and tcp loopback. Latency (one-way, measured from the
*intended* send time, so coordinated omission is corrected): pybus vs raw pyzmq at 1,000
msg/s paced, and pybus at 50 % of its measured maximum rate; percentiles from an HDR
histogram (``pybus.Histogram``).

Memory: RSS of a publisher (and of its subscriber) when the subscriber never reads, after
100 k and after 10 M messages (2 M with ``--quick``), with the default bounds.

Run ``python bench/bench_pubsub.py`` (``--quick`` for a ~20 s smoke run, ``--json FILE`` to
keep the numbers). Importable: ``main(argv)`` returns the result dict.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import zmq

import pybus

TOPIC = "bench.orders"
TOPIC_B = TOPIC.encode()
IDLE_TIMEOUT_S = 3.0  # a receiver gives up after this long without a message
BIG_HWM = 1_000_000  # no drops in throughput runs: every variant queues what it must
_now = time.perf_counter_ns
# "Do this n times" without allocating an int per turn (timeit's idiom): every sender loop
# below uses it alike, so the table compares the libraries, not range()'s integers.
_times = partial(itertools.repeat, None)
#: Publisher frame bounds of the pybus throughput runs and of the half-max latency run (printed
#: in the header; the paced 1,000 msg/s run keeps the defaults):
#: frames up to 256 KiB / 300 us instead of the defaults' 64 KiB / 100 us, so each of
#: ZeroMQ's I/O threads wakes about 4x less often per message (measured per thread: 20-25
#: instead of 35-45 ns per 64-B message). The defaults stay small because ZeroMQ counts its
#: high-water marks in frames: small frames leave room for bursts over many topics
#: (docs/operations.md). With them the bench calls ``pybus.tune_allocator()`` (frames above
#: glibc's 128 KiB mmap threshold otherwise fault their pages in again, every frame); it is
#: process-wide, so every variant of the run gets it. ``--untuned`` measures neither.
THROUGHPUT_FRAMES: dict[str, Any] = {"max_batch_bytes": 256 << 10, "max_delay_us": 300.0}
_pub_frames: dict[str, Any] = dict(THROUGHPUT_FRAMES)  # set by main(); children fork it


# --------------------------------------------------------------------------------------------
# endpoints


def _endpoint(transport: str, tmpdir: str) -> str:
    if transport == "ipc":
        return f"ipc://{tmpdir}/b-{uuid.uuid4().hex[:10]}"
    return "tcp://127.0.0.1:{port}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# receivers (child processes): report (count, t_last_ns, extra)


def _rx_pybus(ep: str, n: int, mode: str, conn: Any) -> None:
    sub = pybus.Subscriber(ep, topics=[TOPIC], bind=True, rcvhwm=BIG_HWM)
    conn.send(sub.endpoints[0])
    got = 0
    t_last = 0
    try:
        if mode == "batch":
            recv_batch = sub.recv_batch
            while got < n:
                batch = recv_batch(10_000, IDLE_TIMEOUT_S)  # the default max_messages
                if not batch:
                    break
                got += len(batch)
                t_last = _now()
        else:
            recv = sub.recv
            try:
                while got < n:
                    recv(IDLE_TIMEOUT_S)
                    got += 1
            except pybus.TimeoutError:
                pass
            t_last = _now()
        conn.send((got, t_last, {"lost": sub.stats()["lost"]}))
    finally:
        sub.close()


def _rx_zmq(ep: str, n: int, mode: str, conn: Any) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.RCVTIMEO, int(IDLE_TIMEOUT_S * 1000))
    s.setsockopt(zmq.SUBSCRIBE, TOPIC_B)
    if ep.startswith("tcp"):
        port = s.bind_to_random_port("tcp://127.0.0.1")
        conn.send(f"tcp://127.0.0.1:{port}")
    else:
        s.bind(ep)
        conn.send(ep)
    got = 0
    recv = s.recv
    try:
        if mode == "send":
            while got < n:
                recv()
                got += 1
        else:  # py-batch: u32 length + payload, back to back after the topic
            skip = len(TOPIC_B)
            unpack = struct.Struct("<I").unpack_from
            while got < n:
                frame = recv()
                off = skip
                end = len(frame)
                while off < end:
                    (ln,) = unpack(frame, off)
                    off += 4
                    frame[off : off + ln]  # the message, as user code would get it
                    off += ln
                    got += 1
    except zmq.Again:
        pass
    conn.send((got, _now(), {}))
    s.close(linger=0)
    ctx.term()


def _zenoh_config(listen: str | None, connect: str | None) -> Any:
    import zenoh

    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("scouting/gossip/enabled", "false")
    conf.insert_json5("listen/endpoints", json.dumps([listen] if listen else []))
    conf.insert_json5("connect/endpoints", json.dumps([connect] if connect else []))
    return conf


def _rx_zenoh(ep: str, n: int, mode: str, conn: Any) -> None:
    import threading

    import zenoh

    state = {"got": 0, "t_last": 0, "probe": False}
    done = threading.Event()

    def on_probe(sample: Any) -> None:
        if not state["probe"]:
            state["probe"] = True
            conn.send("probe-ok")

    def on_sample(sample: Any) -> None:
        state["got"] += 1
        if state["got"] >= n:
            state["t_last"] = _now()
            done.set()

    with zenoh.open(_zenoh_config(ep, None)) as session:
        probe = session.declare_subscriber("bench/probe", on_probe)
        sub = session.declare_subscriber("bench/orders", on_sample)
        conn.send(ep)
        done.wait(60)
        if not state["t_last"]:
            state["t_last"] = _now()
        conn.send((state["got"], state["t_last"], {}))
        sub.undeclare()
        probe.undeclare()


# --------------------------------------------------------------------------------------------
# senders (this process)


def _tx_pybus(ep: str, n: int, payload: bytes) -> tuple[int, Callable[[], None]]:
    pub = pybus.Publisher(ep, connect=True, sndhwm=BIG_HWM, **_pub_frames)
    pub.wait_for_subscribers(1, timeout=10)
    publish = pub.publish
    t0 = _now()
    for _ in _times(n):
        publish(TOPIC, payload)
    pub.flush()
    return t0, pub.close


def _xpub_connected(ctx: zmq.Context, ep: str) -> zmq.Socket:
    s = ctx.socket(zmq.XPUB)  # XPUB: the subscription message is the handshake
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.LINGER, 5000)
    s.connect(ep)
    if not s.poll(10_000):
        raise RuntimeError("the raw subscriber never subscribed")
    s.recv()
    return s


def _closer(ctx: zmq.Context, s: zmq.Socket) -> Callable[[], None]:
    def close() -> None:
        s.close(linger=0)
        ctx.term()

    return close


def _tx_zmq(ep: str, n: int, payload: bytes) -> tuple[int, Callable[[], None]]:
    ctx = zmq.Context()
    s = _xpub_connected(ctx, ep)
    send = s.send
    data = TOPIC_B + payload
    t0 = _now()
    for _ in _times(n):
        send(data)
    return t0, _closer(ctx, s)


def _tx_pybatch(
    ep: str, n: int, payload: bytes, per_frame: int = 1000
) -> tuple[int, Callable[[], None]]:
    ctx = zmq.Context()
    s = _xpub_connected(ctx, ep)
    send = s.send
    pack = struct.Struct("<I").pack
    t0 = _now()
    left = n
    while left:
        k = min(per_frame, left)
        parts = [TOPIC_B]
        append = parts.append
        for _ in _times(k):
            append(pack(len(payload)))
            append(payload)
        send(b"".join(parts))
        left -= k
    return t0, _closer(ctx, s)


def _tx_zenoh(ep: str, n: int, payload: bytes, conn: Any) -> tuple[int, Callable[[], None]]:
    import zenoh

    session = zenoh.open(_zenoh_config(None, ep))
    try:
        pub = session.declare_publisher(
            "bench/orders", congestion_control=zenoh.CongestionControl.BLOCK
        )
        probe = session.declare_publisher("bench/probe")
        deadline = time.monotonic() + 10
        while not conn.poll(0.01):  # handshake by data: probe until the subscriber saw one
            probe.put(b"probe")
            if time.monotonic() > deadline:
                raise RuntimeError("zenoh subscriber never received a probe")
        assert conn.recv() == "probe-ok"
        put = pub.put
        t0 = _now()
        for _ in _times(n):
            put(payload)
    except BaseException:
        session.close()
        raise
    return t0, session.close


# --------------------------------------------------------------------------------------------
# one throughput run


def _run_tp(variant: str, transport: str, size: int, n: int, tmpdir: str) -> dict[str, Any]:
    payload = b"x" * size
    if variant == "zenoh":
        port = _free_port()
        if transport == "ipc":
            ep = f"unixsock-stream/{tmpdir}/z-{uuid.uuid4().hex[:8]}.sock"
        else:
            ep = f"tcp/127.0.0.1:{port}"
        ctx = mp.get_context("spawn")  # zenoh's runtime does not survive fork
        target: Callable[..., None] = _rx_zenoh
        mode = ""
    else:
        ctx = mp.get_context("fork")
        ep = _endpoint(transport, tmpdir)
        target, mode = {
            "pybus-batch": (_rx_pybus, "batch"),
            "pybus-recv": (_rx_pybus, "recv"),
            "zmq-send": (_rx_zmq, "send"),
            "py-batch": (_rx_zmq, "pybatch"),
        }[variant]
        if transport == "tcp" and target is _rx_pybus:
            ep = "tcp://127.0.0.1:*"
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(ep, n, mode, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError(f"{variant} receiver did not start")
        ep = parent.recv()
        if variant.startswith("pybus"):
            t0, close = _tx_pybus(ep, n, payload)
        elif variant == "zmq-send":
            t0, close = _tx_zmq(ep, n, payload)
        elif variant == "py-batch":
            t0, close = _tx_pybatch(ep, n, payload)
        else:
            t0, close = _tx_zenoh(ep, n, payload, parent)
        t_send_done = _now()
        try:
            if not parent.poll(60):
                raise RuntimeError(f"{variant} receiver did not report")
            got, t_last, extra = parent.recv()
        finally:
            close()  # only now: closing earlier could discard frames still queued
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    secs = max(1e-9, (t_last - t0) / 1e9)
    return {
        "rate": got / secs,
        "received": got,
        "sent": n,
        "secs": secs,
        "sender_rate": n / max(1e-9, (t_send_done - t0) / 1e9),
        **extra,
    }


# --------------------------------------------------------------------------------------------
# latency


STAMP = struct.Struct("<Bq")
_PACE_NAP_S = 50e-6


def _rx_latency(ep: str, kind: str, n: int, stamp_every: int, conn: Any) -> None:
    hist = pybus.Histogram(1, 60_000_000_000, 3)
    record = hist.record
    got = 0
    if kind == "zmq":
        ctx = zmq.Context()
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVTIMEO, int(IDLE_TIMEOUT_S * 1000))
        s.setsockopt(zmq.SUBSCRIBE, TOPIC_B)
        s.bind(ep)
        conn.send(ep)
        skip = len(TOPIC_B)
        try:
            while got < n:
                data = s.recv()
                t = _now()
                got += 1
                record(t - STAMP.unpack_from(data, skip)[1])
        except zmq.Again:
            pass
        s.close(linger=0)
        ctx.term()
    else:
        sub = pybus.Subscriber(ep, topics=[TOPIC], bind=True, rcvhwm=BIG_HWM)
        conn.send(sub.endpoints[0])
        recv_batch = sub.recv_batch
        unpack = STAMP.unpack_from
        while got < n:
            batch = recv_batch(10_000, IDLE_TIMEOUT_S)
            if not batch:
                break
            t = _now()
            got += len(batch)
            # message i (seq i + 1) carries a stamp when i % stamp_every == 0: touch only those
            j0 = -(batch[0].seq - 1) % stamp_every
            for m in batch[j0::stamp_every]:
                record(t - unpack(m.payload)[1])
        sub.close()
    conn.send((got, hist.encode()))


def _pace(
    n: int,
    rate: float,
    stamp_every: int,
    send_plain: Callable[[], Any],
    send_stamped: Callable[[bytes], Any],
    size: int,
    flush: Callable[[], Any] | None,
) -> None:
    """Send n messages at `rate`/s, open loop: message i is due at t0 + i / rate and is sent
    as soon as it is due (late ones at once, in a burst); every stamp_every-th carries its
    intended send time, so the receiver measures latency from it (coordinated omission)."""
    interval = 1e9 / rate
    pad = b"\x00" * (size - STAMP.size)
    pack = STAMP.pack
    t0 = _now() + 1_000_000
    i = 0
    while i < n:
        now = _now()
        due = min(n, math.floor((now - t0) / interval) + 1)
        if due <= i:
            wait_ns = t0 + i * interval - now
            if wait_ns > 300_000:
                time.sleep((wait_ns - 200_000) / 1e9)
            else:
                # Sleep a little rather than spin: on 2 cores a spinning sender starves the
                # receiver and both I/O threads. What is due meanwhile goes out late, in one
                # burst, and its lateness counts in the latency (intended send times).
                time.sleep(_PACE_NAP_S)
            continue
        while i < due:
            if i % stamp_every == 0:
                send_stamped(pack(1, int(t0 + i * interval)) + pad)
                i += 1
            # the plain ones up to the next stamp, in a tight loop
            k = min(due, (i // stamp_every + 1) * stamp_every if i % stamp_every else i) - i
            for _ in _times(k):
                send_plain()
            i += k
    if flush is not None:
        flush()


def _run_latency(
    kind: str,
    rate: float,
    seconds: float,
    stamp_every: int,
    tmpdir: str,
    size: int = 64,
    frames: dict[str, Any] | None = None,
) -> dict[str, Any]:
    n = max(100, int(rate * seconds))
    ep = _endpoint("ipc", tmpdir)
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_rx_latency, args=(ep, kind, n, stamp_every, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("latency receiver did not start")
        ep = parent.recv()
        if kind == "zmq":
            zctx = zmq.Context()
            s = _xpub_connected(zctx, ep)
            send = s.send
            plain = TOPIC_B + b"\x00" * size
            _pace(
                n, rate, stamp_every, partial(send, plain), lambda p: send(TOPIC_B + p), size, None
            )
            close = _closer(zctx, s)
        else:
            pub = pybus.Publisher(ep, connect=True, sndhwm=BIG_HWM, **(frames or {}))
            pub.wait_for_subscribers(1, timeout=10)
            publish = pub.publish
            _pace(
                n,
                rate,
                stamp_every,
                partial(publish, TOPIC, b"\x00" * size),
                partial(publish, TOPIC),
                size,
                pub.flush,
            )
            close = pub.close
        try:
            if not parent.poll(60):
                raise RuntimeError("latency receiver did not report")
            got, encoded = parent.recv()
        finally:
            close()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    h = pybus.Histogram.decode(encoded)
    us = {f"p{p:g}": h.percentile(p) / 1000 for p in (50.0, 99.0, 99.9)}
    return {
        "rate": rate,
        "sent": n,
        "received": got,
        "samples": h.total_count,
        "max_us": h.max / 1000,
        **us,
    }


# --------------------------------------------------------------------------------------------
# memory: a publisher feeding a subscriber that never reads


def _rx_stalled(ep: str, conn: Any) -> None:
    import psutil

    # connects (so ZeroMQ attaches it without it ever being called into); default HWMs
    sub = pybus.Subscriber(ep, topics=[TOPIC])
    conn.send("ready")
    proc = psutil.Process()
    samples = []
    while True:
        msg = conn.recv()
        if msg == "stop":
            break
        samples.append(proc.memory_info().rss)
        conn.send(samples[-1])
    sub.close()


def _tx_rss(ep: str, n: int, conn: Any) -> None:
    """The publisher of the RSS run, in a fresh (spawned) process: its heap holds nothing
    from the throughput runs, so its RSS is the publisher's own."""
    import psutil

    me = psutil.Process()
    pub = pybus.Publisher(ep)  # default bounds: the point of the measurement
    try:
        pub.wait_for_subscribers(1, timeout=10)
        publish = pub.publish
        payload = b"r" * 64
        for _ in _times(100_000):
            publish(TOPIC, payload)
        pub.flush()
        conn.send(me.memory_info().rss)
        assert conn.recv() == "go"
        t0 = time.monotonic()
        done = 100_000
        while done < n:
            for _ in _times(100_000):
                publish(TOPIC, payload)
            done += 100_000
        pub.flush()
        conn.send((me.memory_info().rss, done, time.monotonic() - t0))
        conn.recv()  # "stop": the subscriber has been sampled
    finally:
        pub.close(linger=0)


def _run_rss(n: int, tmpdir: str) -> dict[str, Any]:
    """RSS of both processes after the first 100k messages and after n (default bounds)."""
    ep = _endpoint("ipc", tmpdir)
    sub_conn, sub_child = mp.get_context("fork").Pipe()
    sub_proc = mp.get_context("fork").Process(
        target=_rx_stalled, args=(ep, sub_child), daemon=True
    )
    sub_proc.start()
    pub_conn, pub_child = mp.get_context("spawn").Pipe()
    pub_proc = mp.get_context("spawn").Process(
        target=_tx_rss, args=(ep, n, pub_child), daemon=True
    )
    try:
        if not sub_conn.poll(30):
            raise RuntimeError("stalled subscriber did not start")
        sub_conn.recv()
        pub_proc.start()
        if not pub_conn.poll(60):
            raise RuntimeError("RSS publisher did not report")
        pub_first = pub_conn.recv()
        sub_conn.send("sample")
        sub_first = sub_conn.recv()
        pub_conn.send("go")
        if not pub_conn.poll(600):
            raise RuntimeError("RSS publisher did not finish")
        pub_last, done, secs = pub_conn.recv()
        sub_conn.send("sample")
        sub_last = sub_conn.recv()
        pub_conn.send("stop")
        sub_conn.send("stop")
    finally:
        for proc in (pub_proc, sub_proc):
            if proc.pid is not None:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
    mib = 1 / 2**20
    return {
        "messages": done,
        "publish_rate": (done - 100_000) / max(secs, 1e-9),
        "publisher_rss_first_mib": pub_first * mib,
        "publisher_growth_mib": (pub_last - pub_first) * mib,
        "subscriber_rss_first_mib": sub_first * mib,
        "subscriber_growth_mib": (sub_last - sub_first) * mib,
    }


# --------------------------------------------------------------------------------------------
# driver


def _summ(vals: list[float]) -> dict[str, float]:
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def _fmt_rate(r: float) -> str:
    return f"{r / 1e6:.2f}M" if r >= 1e6 else f"{r / 1e3:.0f}k"


def _zenoh_available() -> str | None:
    try:
        import zenoh  # noqa: F401
    except ImportError:
        return "eclipse-zenoh is not installed (pip install eclipse-zenoh): zenoh rows skipped"
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (~20 s)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per case (default 5)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--transports", default="ipc,tcp")
    ap.add_argument("--sizes", default="64,1024")
    ap.add_argument("--variants", default="pybus-batch,pybus-recv,zmq-send,py-batch,zenoh")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-rss", action="store_true", help="skip the stalled-subscriber RSS run")
    ap.add_argument(
        "--untuned",
        action="store_true",
        help="default pybus frame bounds (not THROUGHPUT_FRAMES) and glibc's default malloc",
    )
    args = ap.parse_args(argv)
    _pub_frames.clear()
    tuned_malloc = False
    if not args.untuned:
        _pub_frames.update(THROUGHPUT_FRAMES)
        tuned_malloc = pybus.tune_allocator()  # before any sender or receiver allocates
    quick = args.quick
    reps = args.reps or (2 if quick else 5)
    scale = 0.15 if quick else 1.0
    # messages per run, sized for ~0.2 s (quick: ~0.05-0.1 s) at this machine's rates
    base_n = {
        "pybus-batch": 2_000_000,
        "pybus-recv": 1_000_000,
        "zmq-send": 400_000,
        "py-batch": 2_000_000,
        "zenoh": 300_000,
    }
    variants = [v for v in args.variants.split(",") if v]
    notes: list[str] = []
    zmiss = _zenoh_available() if "zenoh" in variants else None
    if zmiss:
        notes.append(zmiss)
        variants.remove("zenoh")
    load = os.getloadavg()
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "pybus": pybus.__version__,
            "loadavg_at_start": load,
        },
        "reps": reps,
        "quick": quick,
        "publisher_frames": dict(_pub_frames) or "defaults",
        "tune_allocator": tuned_malloc,
        "throughput": {},
        "latency": {},
        "notes": notes,
    }
    print(
        f"pybus pub/sub benchmark: {reps} reps per case, load average {load[0]:.2f} "
        f"on {os.cpu_count()} CPUs{' (quick)' if quick else ''}; pybus publisher frames: "
        f"{_pub_frames or 'the defaults'}; tune_allocator: {tuned_malloc}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="pybus-bench-") as tmpdir:
        for transport in args.transports.split(","):
            for size in [int(s) for s in args.sizes.split(",")]:
                row: dict[str, Any] = {}
                for variant in variants:
                    n = int(base_n[variant] * scale * (0.5 if size > 256 else 1.0))
                    runs = []
                    for _ in range(reps):
                        try:
                            runs.append(_run_tp(variant, transport, size, n, tmpdir))
                        except Exception as exc:  # report, do not abort the whole table
                            notes.append(f"{variant} {transport} {size}B failed: {exc!r}")
                            break
                    if not runs:
                        continue
                    row[variant] = {
                        **_summ([r["rate"] for r in runs]),
                        "complete": all(r["received"] == r["sent"] for r in runs),
                        "sender_rate": statistics.median(r["sender_rate"] for r in runs),
                        "runs": runs,
                    }
                    r = row[variant]
                    print(
                        f"  {transport:3} {size:5d} B  {variant:12} "
                        f"{_fmt_rate(r['median']):>7} msg/s  (min {_fmt_rate(r['min'])}, "
                        f"max {_fmt_rate(r['max'])}){'' if r['complete'] else '  INCOMPLETE'}",
                        flush=True,
                    )
                out["throughput"][f"{transport}/{size}"] = row
        if not args.no_latency:
            secs = 0.6 if quick else 5.0  # per paced run (half-max: secs / 2)
            lat: dict[str, Any] = {}
            # interleaved (pybus, zmq, pybus, zmq, ...) so machine noise hits both alike
            paced: dict[str, list[dict[str, Any]]] = {"pybus": [], "zmq": []}
            for _ in range(reps):
                for kind in paced:
                    paced[kind].append(_run_latency(kind, 1000.0, secs, 1, tmpdir))
            for kind, runs in paced.items():
                lat[f"paced-1000/{kind}"] = {
                    k: _summ([r[k] for r in runs]) for k in ("p50", "p99", "p99.9")
                } | {"runs": runs}
            peak = out["throughput"].get("ipc/64", {}).get("pybus-batch", {}).get("median")
            if peak:
                rate = peak / 2
                runs = [  # the configuration that reached the maximum
                    _run_latency("pybus", rate, secs / 2, 100, tmpdir, frames=_pub_frames)
                    for _ in range(reps)
                ]
                lat["half-max/pybus"] = {
                    k: _summ([r[k] for r in runs]) for k in ("p50", "p99", "p99.9")
                } | {"rate": rate, "runs": runs}
            out["latency"] = lat
        if not args.no_rss:
            n_rss = 2_000_000 if quick else 10_000_000
            out["rss"] = _run_rss(n_rss, tmpdir)
            r = out["rss"]
            print(
                f"  rss: {r['messages']:,} messages to a stalled subscriber "
                f"({_fmt_rate(r['publish_rate'])} msg/s): publisher +"
                f"{r['publisher_growth_mib']:.1f} MiB over {r['publisher_rss_first_mib']:.0f} MiB "
                f"after 100k, subscriber +{r['subscriber_growth_mib']:.1f} MiB",
                flush=True,
            )
    out["ratios"] = _ratios(out)
    out["loadavg_at_end"] = os.getloadavg()
    _print_summary(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"results written to {args.json}")
    return out


def _ratios(out: dict[str, Any]) -> dict[str, float]:
    r: dict[str, float] = {}
    for key, row in out["throughput"].items():
        b = row.get("pybus-batch", {}).get("median")
        m = row.get("pybus-recv", {}).get("median")
        for peer in ("zmq-send", "py-batch", "zenoh"):
            p = row.get(peer, {}).get("median")
            if p and b:
                r[f"{key} pybus-batch / {peer}"] = b / p
            if p and m and peer == "zmq-send":
                r[f"{key} pybus-recv / {peer}"] = m / p
    lat = out.get("latency", {})
    if "paced-1000/pybus" in lat and "paced-1000/zmq" in lat:
        r["paced-1000 p99 pybus / zmq"] = (
            lat["paced-1000/pybus"]["p99"]["median"] / lat["paced-1000/zmq"]["p99"]["median"]
        )
    return r


BARS = [
    (
        "ipc/64 pybus-batch (M msg/s)",
        lambda o: o["throughput"]["ipc/64"]["pybus-batch"]["median"] / 1e6,
        ">=",
        10.0,
    ),
    (
        "ipc/64 pybus-batch / zmq-send",
        lambda o: o["ratios"]["ipc/64 pybus-batch / zmq-send"],
        ">=",
        5.0,
    ),
    (
        "ipc/64 pybus-recv / zmq-send",
        lambda o: o["ratios"]["ipc/64 pybus-recv / zmq-send"],
        ">=",
        2.0,
    ),
    (
        "tcp/64 pybus-batch / zmq-send",
        lambda o: o["ratios"]["tcp/64 pybus-batch / zmq-send"],
        ">=",
        5.0,
    ),
    (
        "ipc/64 pybus-batch / py-batch",
        lambda o: o["ratios"]["ipc/64 pybus-batch / py-batch"],
        ">=",
        1.3,
    ),
    ("ipc/64 pybus-batch / zenoh", lambda o: o["ratios"]["ipc/64 pybus-batch / zenoh"], ">=", 8.0),
    ("paced-1000 p99 pybus / zmq", lambda o: o["ratios"]["paced-1000 p99 pybus / zmq"], "<=", 1.2),
    ("half-max p99 (us)", lambda o: o["latency"]["half-max/pybus"]["p99"]["median"], "<", 1000.0),
    (
        "publisher RSS growth, stalled sub (MiB)",
        lambda o: o["rss"]["publisher_growth_mib"],
        "<",
        64.0,
    ),
]


def _print_summary(out: dict[str, Any]) -> None:
    print("\nratios (medians, same run):")
    for k, v in out["ratios"].items():
        print(f"  {k:45} {v:6.2f}x")
    lat = out.get("latency", {})
    if lat:
        print("\none-way latency, us (median of reps [min..max]), from intended send time:")
        for k, v in lat.items():
            extra = f" at {_fmt_rate(v['rate'])} msg/s" if "rate" in v else ""
            cells = "  ".join(
                f"{p} {v[p]['median']:.0f} [{v[p]['min']:.0f}..{v[p]['max']:.0f}]"
                for p in ("p50", "p99", "p99.9")
            )
            print(f"  {k:18}{extra}  {cells}")
    print("\nbars:")
    for name, get, op, bar in BARS:
        try:
            val = get(out)
        except (KeyError, TypeError):
            print(f"  {name:40} n/a")
            continue
        ok = {">=": val >= bar, "<=": val <= bar, "<": val < bar}[op]
        print(f"  {name:40} {val:8.2f}  (bar {op} {bar:g})  {'PASS' if ok else 'MISS'}")
    for note in out["notes"]:
        print(f"note: {note}")
    la = out["machine"]["loadavg_at_start"][0]
    if la > 0.5:
        print(
            f"note: load average was {la:.2f} at start: other work shares the CPUs, "
            "numbers are noisy"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
