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

Flow control (sections ``reliable`` and ``paced10k``; ``--sections reliable,paced10k`` runs
only these): 64 B over ipc, the publisher's and subscriber's *default* bounds (high-water
marks derived from ``window_bytes``, as a user gets them; frames as ``THROUGHPUT_FRAMES``),
repetitions interleaved so that machine noise hits every case alike:

- ``reliable/1``, ``best_effort/1``: one topic, ``delivery=`` each way, against ``zmq-send``
  (raw pyzmq ``send()``, as above) in the same run;
- ``reliable/100``, ``reliable/2000``: topics round robin (the sender loops over a list of
  topic names in every pybus case here, one topic included, so the loops compare alike);
- ``paced10k``: one-way latency at 10,000 msg/s paced (default publisher frames), reliable
  against best effort.

Every pybus run reports its loss: delivered against published, and the loss the subscriber
counted itself (sequence gaps and position frames); best effort may lose, reliable must not.
The ratios the issue's bars name are printed with PASS/MISS.

Run ``python bench/bench_pubsub.py`` (``--quick`` for a ~20 s smoke run, ``--json FILE`` to
keep the numbers, ``--sections`` for a part, ``--scale`` to shrink the message counts).
Importable: ``main(argv)`` returns the result dict.
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
    return _rates(got, n, t0, t_send_done, t_last, extra)


# --------------------------------------------------------------------------------------------
# latency


STAMP = struct.Struct("<Bq")
_PACE_NAP_S = 50e-6


def _rx_latency(
    ep: str, kind: str, n: int, stamp_every: int, conn: Any, defaults: bool = False
) -> None:
    """defaults: the pybus Subscriber's default bounds (else an unbounded queue)."""
    hist = pybus.Histogram(1, 60_000_000_000, 3)
    record = hist.record
    got = 0
    lost = 0
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
        sub_kw: dict[str, Any] = {} if defaults else {"rcvhwm": BIG_HWM}
        sub = pybus.Subscriber(ep, topics=[TOPIC], bind=True, **sub_kw)
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
        lost = sub.stats()["lost"]
        sub.close()
    conn.send((got, hist.encode(), lost))


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
    publisher: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """publisher: the pybus Publisher's arguments, with both ends' default bounds (else
    ``frames`` and unbounded queues at both ends)."""
    n = max(100, int(rate * seconds))
    ep = _endpoint("ipc", tmpdir)
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    defaults = publisher is not None
    proc = ctx.Process(
        target=_rx_latency, args=(ep, kind, n, stamp_every, child, defaults), daemon=True
    )
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
            pub_summary: Callable[[], dict[str, Any]] = dict
        else:
            kw: dict[str, Any] = (
                publisher if publisher is not None else {"sndhwm": BIG_HWM, **(frames or {})}
            )
            pub = pybus.Publisher(ep, connect=True, **kw)
            pub.wait_for_subscribers(1, timeout=10)
            publish = pub.publish
            _pace(
                n,
                rate,
                stamp_every,
                partial(publish, TOPIC, b"\x00" * size),
                partial(publish, TOPIC),
                size,
                partial(pub.flush, 30.0),
            )
            close = pub.close
            pub_summary = partial(_pub_summary, pub)
        try:
            if not parent.poll(60):
                raise RuntimeError("latency receiver did not report")
            got, encoded, lost = parent.recv()
            pub_stats = pub_summary()
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
        "lost": lost,
        "samples": h.total_count,
        "max_us": h.max / 1000,
        **us,
        **pub_stats,
    }


# --------------------------------------------------------------------------------------------
# flow control: reliable against best effort, and many topics (section "reliable")

#: Topic counts of the reliable many-topic runs (64 B, round robin); 1 is also the reliable
#: one-topic run that best effort and raw pyzmq are compared with.
TOPIC_COUNTS = (1, 100, 2000)
#: The pybus senders of this section loop over a list of this many topic names (round robin,
#: a multiple of every topic count), one topic included, so that all their loops cost alike.
_TOPIC_CHUNK = 100_000
#: Subscription of this section's receivers: every topic of every case, one pattern.
_FLOW_PATTERN = "bench.#"
#: A run of this section gives up after this long (a receiver that never finishes).
_FLOW_DEADLINE_S = 120.0
#: Messages per run, by case (reliable and best effort alike: same counts, same work), sized
#: for ~0.2-0.5 s at this machine's rates; scaled by --quick and --scale.
FLOW_N = {"1": 2_000_000, "100": 1_000_000, "2000": 500_000, "zmq-send": 400_000}


def _topic_names(k: int) -> list[str]:
    return [TOPIC] if k == 1 else [f"bench.t{i:04d}" for i in range(k)]


def _pub_summary(pub: Any) -> dict[str, Any]:
    """The publisher's side of a run: what it handed to ZeroMQ, dropped, evicted."""
    st = pub.stats()
    return {
        "published": st["published"],
        "publisher_dropped": sum(st["dropped"].values()),
        "frames": st["batches"],
        "sndhwm": st["sndhwm"],
        "window_frames": st["window_frames"],
        "evictions": st["evictions"],
        "marks_sent": st["marks_sent"],
        "acks": st["acks"],
    }


def _rx_flow(ep: str, n: int, conn: Any, unbounded: bool = False) -> None:
    """Default bounds (a user's subscriber; unbounded: BIG_HWM); stops at n messages, when
    what it received and what it counted as lost add up to n, after IDLE_TIMEOUT_S without a
    message, or at the deadline."""
    kw: dict[str, Any] = {"rcvhwm": BIG_HWM} if unbounded else {}
    sub = pybus.Subscriber(ep, topics=[_FLOW_PATTERN], bind=True, **kw)
    conn.send(sub.endpoints[0])
    got = 0
    t_last = 0
    recv_batch = sub.recv_batch
    idle_ns = int(IDLE_TIMEOUT_S * 1e9)
    t_start = _now()
    deadline = t_start + int(_FLOW_DEADLINE_S * 1e9)
    try:
        while got < n:
            batch = recv_batch(10_000, 0.05)
            if batch:
                got += len(batch)
                t_last = _now()
                continue
            now = _now()
            if got + sub.stats()["lost"] >= n:
                break  # the rest was lost, and counted (gaps, position frames)
            if now - (t_last or t_start) > idle_ns or now > deadline:
                break
        st = sub.stats()
        conn.send(
            (
                got,
                t_last,
                {
                    "lost": st["lost"],
                    "gaps": st["gaps"],
                    "out_of_order": st["out_of_order"],
                    "decode_errors": st["decode_errors"],
                    "sub_frames": st["batches"],
                    "marks": st["marks"],
                    "rcvhwm": sub.rcvhwm,
                },
            )
        )
    finally:
        sub.close()


def _tx_flow(
    ep: str, n: int, names: list[str], delivery: str, payload: bytes, unbounded: bool = False
) -> tuple[int, int, Any]:
    kw: dict[str, Any] = {"sndhwm": BIG_HWM, **_pub_frames} if unbounded else dict(_pub_frames)
    kw["delivery"] = delivery
    pub = pybus.Publisher(ep, connect=True, **kw)
    try:
        pub.wait_for_subscribers(1, timeout=10)
        publish = pub.publish
        chunk = names * (_TOPIC_CHUNK // len(names))
        full, rest = divmod(n, len(chunk))
        tail = chunk[:rest]
        t0 = _now()
        for _ in _times(full):
            for topic in chunk:
                publish(topic, payload)
        for topic in tail:
            publish(topic, payload)
        pub.flush(30.0)  # reliable: waits for the window (bounded)
        return t0, _now(), pub
    except BaseException:
        pub.close(linger_ms=0)
        raise


def _run_flow(delivery: str, topics: int, n: int, tmpdir: str, size: int = 64) -> dict[str, Any]:
    """One run: pybus over ipc, default bounds, `topics` topics round robin. Delivery
    "best_effort_unbounded": best effort with BIG_HWM at both ends, as the throughput section's
    pybus runs (nothing is dropped; the queues grow instead)."""
    unbounded = delivery == "best_effort_unbounded"
    if unbounded:
        delivery = "best_effort"
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    ep = _endpoint("ipc", tmpdir)
    proc = ctx.Process(target=_rx_flow, args=(ep, n, child, unbounded), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError(f"{delivery}/{topics} receiver did not start")
        ep = parent.recv()
        t0, t_send_done, pub = _tx_flow(
            ep, n, _topic_names(topics), delivery, b"x" * size, unbounded
        )
        try:
            if not parent.poll(_FLOW_DEADLINE_S + 10):
                raise RuntimeError(f"{delivery}/{topics} receiver did not report")
            got, t_last, extra = parent.recv()
            pub_stats = _pub_summary(pub)
        finally:
            pub.close(linger_ms=0)  # only now: closing earlier could discard queued frames
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return _rates(got, n, t0, t_send_done, t_last, {**extra, **pub_stats})


#: best_effort: the default bounds, as reliable (it may lose, and the rate counts only what
#: arrived); best_effort_unbounded: BIG_HWM at both ends, as the throughput section's runs
#: (lossless, the queues grow instead: the previous headline configuration).
_BEST_EFFORTS = ("best_effort", "best_effort_unbounded")


def _flow_cases(counts: tuple[int, ...], best_effort_topics: bool = False) -> list[str]:
    """reliable/1, both best efforts /1, zmq-send, then reliable/k for the other topic counts
    (and both best efforts /k with best_effort_topics)."""
    cases = ["reliable/1", *(f"{b}/1" for b in _BEST_EFFORTS), "zmq-send"]
    for k in counts:
        if k != 1:
            cases.append(f"reliable/{k}")
            if best_effort_topics:
                cases += [f"{b}/{k}" for b in _BEST_EFFORTS]
    return cases


def _loss_text(r: dict[str, Any]) -> str:
    return (
        f"delivered {r['delivered']:,}/{r['published']:,} published ({r['sent']:,} sent), "
        f"subscriber-counted lost {r['lost']:,}"
        + (f", publisher dropped {r['publisher_dropped']:,}" if r["publisher_dropped"] else "")
        + (f", evictions {r['evictions']}" if r["evictions"] else "")
    )


def run_reliable_section(
    reps: int,
    scale: float,
    counts: tuple[int, ...],
    tmpdir: str,
    notes: list[str],
    best_effort_topics: bool = False,
) -> dict[str, Any]:
    """Reliable vs best effort, raw pyzmq, and reliable over many topics: 64 B over ipc,
    repetitions interleaved (every case once per round)."""
    cases = _flow_cases(counts, best_effort_topics)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    failed: set[str] = set()
    for _ in range(reps):
        for case in cases:
            if case in failed:
                continue
            try:
                if case == "zmq-send":
                    n = max(1000, int(FLOW_N["zmq-send"] * scale))
                    runs[case].append(_run_tp("zmq-send", "ipc", 64, n, tmpdir))
                else:
                    delivery, k = case.split("/")
                    n = max(1000, int(FLOW_N.get(k, FLOW_N["2000"]) * scale))
                    runs[case].append(_run_flow(delivery, int(k), n, tmpdir))
            except Exception as exc:  # report, do not abort the whole section
                notes.append(f"reliable section: {case} failed: {exc!r}")
                failed.add(case)
    out: dict[str, Any] = {}
    for case, rs in runs.items():
        if not rs:
            continue
        row: dict[str, Any] = {
            **_summ([r["rate"] for r in rs]),
            "sender_rate": statistics.median(r["sender_rate"] for r in rs),
            "complete": all(r["received"] == r["sent"] for r in rs),
            "runs": rs,
        }
        line = (
            f"  ipc 64 B {case:27} {_fmt_rate(row['median']):>7} msg/s  "
            f"[{_fmt_rate(row['min'])} - {_fmt_rate(row['max'])}]"
        )
        if case != "zmq-send":
            row["lost"] = sum(r["lost"] for r in rs)
            row["delivered"] = sum(r["received"] for r in rs)
            row["published"] = sum(r["published"] for r in rs)
            row["sent"] = sum(r["sent"] for r in rs)
            row["publisher_dropped"] = sum(r["publisher_dropped"] for r in rs)
            row["evictions"] = sum(r["evictions"] for r in rs)
            row["msgs_per_frame"] = statistics.median(
                r["received"] / max(1, r["sub_frames"]) for r in rs
            )
            line += (
                f"  sender {_fmt_rate(row['sender_rate'])}/s, "
                f"{row['msgs_per_frame']:.0f} msg/frame; {len(rs)} runs: " + _loss_text(row)
            )
        else:
            row["delivered"] = sum(r["received"] for r in rs)
            row["sent"] = sum(r["sent"] for r in rs)
            line += f"  delivered {row['delivered']:,}/{row['sent']:,}"
        out[case] = row
        print(line, flush=True)
    return out


def run_paced10k_section(
    reps: int, secs: float, tmpdir: str, notes: list[str], rate: float = 10_000.0
) -> dict[str, Any]:
    """One-way latency at `rate` msg/s paced, reliable vs best effort (runs interleaved),
    default publisher and subscriber (frames and bounds)."""
    runs: dict[str, list[dict[str, Any]]] = {"reliable": [], "best_effort": []}
    for _ in range(reps):
        for delivery in runs:
            try:
                runs[delivery].append(
                    _run_latency("pybus", rate, secs, 1, tmpdir, publisher={"delivery": delivery})
                )
            except Exception as exc:
                notes.append(f"paced10k {delivery} failed: {exc!r}")
    out: dict[str, Any] = {}
    for delivery, rs in runs.items():
        if not rs:
            continue
        row = {k: _summ([r[k] for r in rs]) for k in ("p50", "p99", "p99.9")} | {
            "rate": rate,
            "secs": secs,
            "lost": sum(r["lost"] for r in rs),
            "delivered": sum(r["received"] for r in rs),
            "published": sum(r["published"] for r in rs),
            "sent": sum(r["sent"] for r in rs),
            "publisher_dropped": sum(r["publisher_dropped"] for r in rs),
            "evictions": sum(r["evictions"] for r in rs),
            "runs": rs,
        }
        out[delivery] = row
        cells = "  ".join(
            f"{p} {row[p]['median']:.1f} [{row[p]['min']:.1f} - {row[p]['max']:.1f}]"
            for p in ("p50", "p99", "p99.9")
        )
        print(
            f"  paced {_fmt_rate(rate)} msg/s {delivery:11} us: {cells}; {len(rs)} runs: "
            + _loss_text(row),
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------------
# memory: a publisher feeding a subscriber that never reads


def _rates(got: int, n: int, t0: int, t_send_done: int, t_last: int,
           extra: dict[str, Any]) -> dict[str, Any]:
    """One throughput run's figures: received msg/s from the first send to the last receipt
    (ns clock readings), and the sender's own rate."""
    secs = max(1e-9, (t_last - t0) / 1e9)
    return {
        "rate": got / secs,
        "received": got,
        "sent": n,
        "secs": secs,
        "sender_rate": n / max(1e-9, (t_send_done - t0) / 1e9),
        **extra,
    }


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
        pub.close(linger_ms=0)


def _run_rss(n: int, tmpdir: str) -> dict[str, Any]:
    """RSS of both processes after the first 100k messages and after n (default bounds)."""
    ep = _endpoint("ipc", tmpdir)
    sub_conn, sub_child = mp.get_context("fork").Pipe()
    sub_proc = mp.get_context("fork").Process(target=_rx_stalled, args=(ep, sub_child), daemon=True)
    sub_proc.start()
    pub_conn, pub_child = mp.get_context("spawn").Pipe()
    pub_proc = mp.get_context("spawn").Process(target=_tx_rss, args=(ep, n, pub_child), daemon=True)
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
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from {','.join(SECTIONS)} (default: all); "
        "'reliable,paced10k' runs only the flow-control comparisons",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=None,
        help="multiply the message counts of the throughput runs (default 1; --quick 0.15)",
    )
    ap.add_argument(
        "--topics",
        default=",".join(str(k) for k in TOPIC_COUNTS),
        help="topic counts of the reliable section (1 is always run)",
    )
    ap.add_argument(
        "--topics-best-effort",
        action="store_true",
        help="reliable section: also best effort (both kinds) at every topic count",
    )
    ap.add_argument(
        "--paced-secs",
        type=float,
        default=None,
        help="seconds per paced latency run (default 5; --quick 0.6)",
    )
    ap.add_argument(
        "--untuned",
        action="store_true",
        help="default pybus frame bounds (not THROUGHPUT_FRAMES) and glibc's default malloc",
    )
    args = ap.parse_args(argv)
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    bad = [x for x in sections if x not in SECTIONS]
    if bad or not sections:
        ap.error(f"--sections takes a comma-separated list of {', '.join(SECTIONS)}")
    if args.no_latency and "latency" in sections:
        sections.remove("latency")
    if args.no_rss and "rss" in sections:
        sections.remove("rss")
    counts = tuple(sorted({1, *(int(k) for k in args.topics.split(",") if k.strip())}))
    if min(counts) < 1 or any(_TOPIC_CHUNK % k for k in counts):
        ap.error(f"--topics: each count must divide {_TOPIC_CHUNK:,}")
    _pub_frames.clear()
    tuned_malloc = False
    if not args.untuned:
        _pub_frames.update(THROUGHPUT_FRAMES)
        tuned_malloc = pybus.tune_allocator()  # before any sender or receiver allocates
    quick = args.quick
    reps = args.reps or (2 if quick else 5)
    scale = args.scale if args.scale is not None else (0.15 if quick else 1.0)
    secs = args.paced_secs or (0.6 if quick else 5.0)  # per paced run (half-max: secs / 2)
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
        "sections": sections,
        "scale": scale,
        "throughput": {},
        "latency": {},
        "notes": notes,
    }
    print(
        f"pybus pub/sub benchmark: {reps} reps per case, load average {load[0]:.2f} "
        f"on {os.cpu_count()} CPUs{' (quick)' if quick else ''}; pybus publisher frames: "
        f"{_pub_frames or 'the defaults'}; tune_allocator: {tuned_malloc}; sections: "
        f"{','.join(sections)}; message counts x{scale:g}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="pybus-bench-") as tmpdir:
        for transport in args.transports.split(",") if "throughput" in sections else ():
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
                    loss = ""
                    if variant.startswith("pybus"):  # lost as the subscriber counted it
                        r["lost"] = sum(x.get("lost", 0) for x in runs)
                        got = sum(x["received"] for x in runs)
                        loss = f"  delivered {got:,}/{n * len(runs):,}, lost {r['lost']:,}"
                    print(
                        f"  {transport:3} {size:5d} B  {variant:12} "
                        f"{_fmt_rate(r['median']):>7} msg/s  (min {_fmt_rate(r['min'])}, "
                        f"max {_fmt_rate(r['max'])}){'' if r['complete'] else '  INCOMPLETE'}"
                        f"{loss}",
                        flush=True,
                    )
                out["throughput"][f"{transport}/{size}"] = row
        if "reliable" in sections:
            print(
                "flow control, 64 B over ipc, default bounds, interleaved "
                "(received msg/s, median [min - max]):",
                flush=True,
            )
            out["reliable"] = run_reliable_section(
                reps, scale, counts, tmpdir, notes, args.topics_best_effort
            )
        if "paced10k" in sections:
            print("paced one-way latency, default publisher, interleaved:", flush=True)
            out["paced10k"] = run_paced10k_section(reps, secs, tmpdir, notes)
        if "latency" in sections:
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
        if "rss" in sections:
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


SECTIONS = ("throughput", "latency", "rss", "reliable", "paced10k")


def _ratios(out: dict[str, Any]) -> dict[str, float]:
    r: dict[str, float] = {}
    rel = out.get("reliable", {})
    one = rel.get("reliable/1", {}).get("median")
    if one:
        for peer in (*(f"{b}/1" for b in _BEST_EFFORTS), "zmq-send"):
            p = rel.get(peer, {}).get("median")
            if p:
                r[f"reliable/1 / {peer}"] = one / p
        for case, row in rel.items():
            if case.startswith("reliable/") and case != "reliable/1":
                r[f"{case} / reliable/1"] = row["median"] / one
    p10 = out.get("paced10k", {})
    if "reliable" in p10 and "best_effort" in p10:
        for p in ("p50", "p99"):
            r[f"paced10k {p} reliable - best_effort (us)"] = (
                p10["reliable"][p]["median"] - p10["best_effort"][p]["median"]
            )
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


def _reliable_loss(out: dict[str, Any]) -> float:
    """Messages reliable runs did not deliver, or counted as lost, or dropped at the publisher
    (must be 0)."""
    rel = out.get("reliable", {})
    rows = [row for case, row in rel.items() if case.startswith("reliable/")]
    if "paced10k" in out and "reliable" in out["paced10k"]:
        rows.append(out["paced10k"]["reliable"])
    if not rows:
        raise KeyError("reliable")
    return float(sum(r["sent"] - r["delivered"] + r["lost"] + r["publisher_dropped"] for r in rows))


#: (sections, name, value, op, bar): printed when one of their sections ran
BARS: list[tuple[str, str, Callable[[dict[str, Any]], float], str, float]] = [
    (
        "throughput",
        "ipc/64 pybus-batch (M msg/s)",
        lambda o: o["throughput"]["ipc/64"]["pybus-batch"]["median"] / 1e6,
        ">=",
        10.0,
    ),
    (
        "throughput",
        "ipc/64 pybus-batch / zmq-send",
        lambda o: o["ratios"]["ipc/64 pybus-batch / zmq-send"],
        ">=",
        5.0,
    ),
    (
        "throughput",
        "ipc/64 pybus-recv / zmq-send",
        lambda o: o["ratios"]["ipc/64 pybus-recv / zmq-send"],
        ">=",
        2.0,
    ),
    (
        "throughput",
        "tcp/64 pybus-batch / zmq-send",
        lambda o: o["ratios"]["tcp/64 pybus-batch / zmq-send"],
        ">=",
        5.0,
    ),
    (
        "throughput",
        "ipc/64 pybus-batch / py-batch",
        lambda o: o["ratios"]["ipc/64 pybus-batch / py-batch"],
        ">=",
        1.3,
    ),
    (
        "throughput",
        "ipc/64 pybus-batch / zenoh",
        lambda o: o["ratios"]["ipc/64 pybus-batch / zenoh"],
        ">=",
        8.0,
    ),
    (
        "latency",
        "paced-1000 p99 pybus / zmq",
        lambda o: o["ratios"]["paced-1000 p99 pybus / zmq"],
        "<=",
        1.2,
    ),
    (
        "latency",
        "half-max p99 (us)",
        lambda o: o["latency"]["half-max/pybus"]["p99"]["median"],
        "<",
        1000.0,
    ),
    (
        "rss",
        "publisher RSS growth, stalled sub (MiB)",
        lambda o: o["rss"]["publisher_growth_mib"],
        "<",
        64.0,
    ),
    (
        "reliable",
        "reliable/1 / best_effort/1 (ipc 64 B)",
        lambda o: o["ratios"]["reliable/1 / best_effort/1"],
        ">=",
        0.9,
    ),
    (
        "reliable",
        "reliable/1 / best_effort_unbounded/1",
        lambda o: o["ratios"]["reliable/1 / best_effort_unbounded/1"],
        ">=",
        0.9,
    ),
    (
        "reliable",
        "reliable/1 / zmq-send (ipc 64 B)",
        lambda o: o["ratios"]["reliable/1 / zmq-send"],
        ">=",
        5.0,
    ),
    (
        "reliable",
        "reliable/100 / reliable/1 topics",
        lambda o: o["ratios"]["reliable/100 / reliable/1"],
        ">=",
        0.5,
    ),
    (
        "reliable",
        "reliable/2000 / reliable/1 topics",
        lambda o: o["ratios"]["reliable/2000 / reliable/1"],
        ">=",
        0.2,
    ),
    (
        "paced10k",
        "paced10k p50 reliable - best_effort (us)",
        lambda o: o["ratios"]["paced10k p50 reliable - best_effort (us)"],
        "<=",
        10.0,
    ),
    ("reliable|paced10k", "reliable: undelivered + lost + dropped", _reliable_loss, "==", 0.0),
]


def _print_summary(out: dict[str, Any]) -> None:
    print("\nratios (medians, same run):")
    for k, v in out["ratios"].items():
        print(f"  {k:45} {v:6.2f}" + (" us" if k.endswith("(us)") else "x"))
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
    ran = set(out["sections"])
    for sections, name, get, op, bar in BARS:
        if not ran.intersection(sections.split("|")):
            continue
        try:
            val = get(out)
        except (KeyError, TypeError):
            print(f"  {name:40} n/a")
            continue
        ok = {">=": val >= bar, "<=": val <= bar, "<": val < bar, "==": val == bar}[op]
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
