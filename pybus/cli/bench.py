"""The benchmark harness behind ``pybus bench`` (in the package, so it runs on a fresh install).

Four measurements, each optionally side by side with peers (``--peers``: raw pyzmq always; pynng
and eclipse-zenoh when installed):

* ``pubsub``    — 64-byte pub/sub throughput over tcp loopback, receiver in another process,
                  counted at the receiver: received / (last receive - first publish). pybus
                  runs side by side: reliable (the default delivery) and best effort on one
                  topic, and reliable over 100 and 2,000 topics published round robin
                  (``PUBSUB_VARIANTS``); each reports what it delivered of what it published
                  and the loss its subscriber counted (best effort may lose, reliable must not).
* ``latency``   — one-way latency at a paced rate, open loop: the sender stamps each message with
                  the time it was *meant* to be sent (CLOCK_MONOTONIC, shared by both processes)
                  and the receiver records ``receive - intended`` into an HDR histogram, so a
                  stalled sender shows up as latency instead of being hidden (coordinated
                  omission corrected by construction). pybus reliable; with the peers,
                  best effort too.
* ``rpc``       — request/reply round trips (closed loop), server in another process.
* ``workqueue`` — messages put, handled by a worker process and acknowledged, per second.

Every figure is the median of ``reps`` repetitions with min and max. Each child process is
started with ``spawn`` and handshakes before timing starts; every wait has a timeout.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import zmq

from .._native import Histogram
from .._version import __version__

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


# ------------------------------------------------------------------------------ helpers


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


# ------------------------------------------------------------------------------ children


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

    # spawn pickles the target by module + qualname; the wrapper replaces fn under its name
    run.__name__ = fn.__name__
    run.__qualname__ = fn.__qualname__
    return run


def _count_pybus(endpoint: str, n: int, conn: Any) -> None:
    import pybus

    sub = pybus.Subscriber(endpoint, ["bench.#"], registry=False)
    conn.send(("ready",))
    got, first, last = 0, 0, 0
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    while got < n and time.monotonic() < deadline:
        batch = sub.recv_batch(100_000, timeout=_IDLE_S)
        if batch:
            last = time.monotonic_ns()
            if not first:
                first = last
            got += len(batch)
        elif got and (got + sub.stats()["lost"] >= n or time.monotonic_ns() - last > _IDLE_NS):
            break  # the rest was lost (counted as gaps, or dropped at the tail)
    conn.send(("done", got, first, last, n - got, sub.stats()["lost"]))
    sub.close()


def _count_zmq(endpoint: str, n: int, conn: Any) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)  # unbounded, as the publisher's (see pubsub_once)
    s.setsockopt(zmq.SUBSCRIBE, b"bench.")
    s.connect(endpoint)
    recv = s.recv
    # handshake: the parent publishes "bench.hello" until we say we saw one
    while recv() != b"bench.hello":
        pass
    conn.send(("ready",))
    got, first, last = 0, 0, 0
    s.setsockopt(zmq.RCVTIMEO, int(_IDLE_S * 1000))
    try:
        while got < n:
            m = recv()
            if m == b"bench.hello":
                continue
            if not first:
                first = time.monotonic_ns()
            got += 1
        last = time.monotonic_ns()
    except zmq.Again:  # the rest was dropped at the high-water mark
        last = time.monotonic_ns() - _IDLE_NS
    conn.send(("done", got, first, last, n - got))
    s.close(0)
    ctx.term()


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


def _latency_pybus(endpoint: str, n: int, interval_s: float, conn: Any) -> None:
    import pybus

    sub = pybus.Subscriber(endpoint, ["bench.#"], registry=False)
    conn.send(("ready",))
    rec = _LatencyRecorder(interval_s)
    unpack = _STAMP.unpack_from
    got, last = 0, time.monotonic_ns()
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    while got < n and time.monotonic() < deadline:
        batch = sub.recv_batch(10_000, timeout=_IDLE_S)
        now = time.monotonic_ns()
        for m in batch:
            rec.record(now, unpack(m.raw_payload)[0])
        got += len(batch)
        rec.tick(now)
        if batch:
            last = now
        elif got and (got + sub.stats()["lost"] >= n or now - last > _IDLE_NS):
            break
    rec.flush(time.monotonic_ns())
    conn.send(("done", got, rec.total.encode(), rec.intervals, sub.stats()["lost"]))
    sub.close()


def _latency_zmq(endpoint: str, n: int, interval_s: float, conn: Any) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"bench.")
    s.connect(endpoint)
    while s.recv() != b"bench.hello":
        pass
    conn.send(("ready",))
    rec = _LatencyRecorder(interval_s)
    unpack = _STAMP.unpack_from
    off = len(b"bench.data")
    got = 0
    s.setsockopt(zmq.RCVTIMEO, int(_IDLE_S * 1000))
    try:
        while got < n:
            m = s.recv()
            if m == b"bench.hello":
                continue
            now = time.monotonic_ns()
            rec.record(now, unpack(m, off)[0])
            got += 1
            rec.tick(now)
    except zmq.Again:
        pass
    rec.flush(time.monotonic_ns())
    conn.send(("done", got, rec.total.encode(), rec.intervals))
    s.close(0)
    ctx.term()


def _rpc_server_pybus(conn: Any) -> None:
    import pybus

    srv = pybus.Server("tcp://127.0.0.1:*", registry=False)
    srv.add_handler("echo", lambda p: p)
    srv.start()
    conn.send(("ready", srv.endpoint))
    conn.recv()  # stop
    srv.close()


def _rpc_server_zmq(conn: Any) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.bind("tcp://127.0.0.1:*")
    conn.send(("ready", s.getsockopt_string(zmq.LAST_ENDPOINT)))
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    while not conn.poll(0):
        if poller.poll(100):
            ident, body = s.recv_multipart()
            s.send_multipart([ident, body])
    s.close(0)
    ctx.term()


def _wq_worker(endpoint: str, conn: Any) -> None:
    import pybus

    w = pybus.Worker(endpoint, lambda m: None, registry=False).start()
    if not w.wait_ready(10):
        raise BenchError("the worker got no session from the queue within 10 s")
    conn.send(("ready",))
    conn.recv()  # stop
    w.stop()


def _pipeline_zmq(src: str, sink: str, conn: Any) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(src)
    push = ctx.socket(zmq.PUSH)
    push.connect(sink)
    conn.send(("ready",))
    pull.setsockopt(zmq.RCVTIMEO, 200)
    while not conn.poll(0):
        try:
            m = pull.recv()
        except zmq.Again:
            continue
        push.send(m[:8])
    pull.close(0)
    push.close(0)
    ctx.term()


# -- optional peers: pynng (Pub0/Sub0) and eclipse-zenoh (peer mode, tcp loopback) -------------


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def _zenoh_session(listen: str | None = None, connect: str | None = None) -> Any:
    import zenoh

    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("scouting/multicast/enabled", "false")
    if listen:
        conf.insert_json5("listen/endpoints", f'["{listen}"]')
    if connect:
        conf.insert_json5("connect/endpoints", f'["{connect}"]')
    return zenoh.open(conf)


def _peer_sub(system: str, addr: str) -> tuple[Any, Callable[[float], bytes | None], Any]:
    """A subscriber of ``system`` on ``addr``: (handle, recv(timeout) -> bytes or None, close)."""
    if system == "pynng":
        import pynng

        # nng drops at a full receive buffer (default 0-1 messages): give it room
        s = pynng.Sub0(dial=addr, recv_timeout=int(_IDLE_S * 1000), recv_buffer_size=8192)
        s.subscribe(b"bench.")

        def recv_nng(_t: float) -> bytes | None:
            try:
                return bytes(s.recv())
            except pynng.Timeout:
                return None

        return s, recv_nng, s.close
    if system == "zenoh":
        import queue

        q: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        sess = _zenoh_session(connect=addr)
        sub = sess.declare_subscriber("bench/**", lambda smp: q.put(smp.payload.to_bytes()))

        def recv_z(t: float) -> bytes | None:
            try:
                return q.get(timeout=t)
            except queue.Empty:
                return None

        def close_z() -> None:
            sub.undeclare()
            sess.close()

        return sess, recv_z, close_z
    raise BenchError(f"unknown peer {system!r}")


def _count_peer(system: str, addr: str, n: int, conn: Any) -> None:
    _, recv, close = _peer_sub(system, addr)
    while recv(_CHILD_TIMEOUT_S) != b"bench.hello":
        pass
    conn.send(("ready",))
    got, first, last = 0, 0, 0
    while got < n:
        m = recv(_IDLE_S)
        if m is None:
            break
        if m == b"bench.hello":
            continue
        last = time.monotonic_ns()
        if not first:
            first = last
        got += 1
    conn.send(("done", got, first, last, n - got))
    close()


def _latency_peer(system: str, addr: str, n: int, interval_s: float, conn: Any) -> None:
    _, recv, close = _peer_sub(system, addr)
    while recv(_CHILD_TIMEOUT_S) != b"bench.hello":
        pass
    conn.send(("ready",))
    rec = _LatencyRecorder(interval_s)
    unpack = _STAMP.unpack_from
    off = len(b"bench.data")
    got = 0
    while got < n:
        m = recv(_IDLE_S)
        if m is None:
            break
        if m == b"bench.hello":
            continue
        now = time.monotonic_ns()
        rec.record(now, unpack(m, off)[0])
        got += 1
        rec.tick(now)
    rec.flush(time.monotonic_ns())
    conn.send(("done", got, rec.total.encode(), rec.intervals))
    close()


class _PeerPub:
    """The sending side of a peer: ``send(bytes)``, an address for the child, ``close()``."""

    def __init__(self, system: str) -> None:
        port = _free_port()
        self.system = system
        if system == "pynng":
            import pynng

            self.addr = f"tcp://127.0.0.1:{port}"
            self._s = pynng.Pub0(listen=self.addr, send_buffer_size=8192)
            self.send = self._s.send
        elif system == "zenoh":
            listen = f"tcp/127.0.0.1:{port}"
            self.addr = listen
            self._sess = _zenoh_session(listen=listen)
            import zenoh

            # BLOCK, as pybus' default on_full="block": a full queue waits instead of dropping
            self._pub = self._sess.declare_publisher(
                "bench/data", congestion_control=zenoh.CongestionControl.BLOCK)
            self.send = self._pub.put
        else:
            raise BenchError(f"unknown peer {system!r}")

    def hello(self, conn: Any, proc: Any) -> None:
        deadline = time.monotonic() + _CHILD_TIMEOUT_S
        while not conn.poll(0.01):
            if time.monotonic() > deadline or not proc.is_alive():
                raise BenchError(f"{self.system} subscriber never saw the handshake")
            self.send(b"bench.hello")
        _recv(conn, proc, 1, f"{self.system} handshake")

    def close(self) -> None:
        if self.system == "pynng":
            self._s.close()
        else:
            self._pub.undeclare()
            self._sess.close()


def available_peers() -> tuple[str, ...]:
    """Peers whose Python package is importable here (pyzmq always is)."""
    import importlib.util

    return ("pyzmq",) + tuple(
        name for name, mod in (("pynng", "pynng"), ("zenoh", "zenoh"))
        if importlib.util.find_spec(mod) is not None)


_count_pybus = _child_guard(_count_pybus)  # type: ignore[assignment]
_count_zmq = _child_guard(_count_zmq)  # type: ignore[assignment]
_latency_pybus = _child_guard(_latency_pybus)  # type: ignore[assignment]
_latency_zmq = _child_guard(_latency_zmq)  # type: ignore[assignment]
_rpc_server_pybus = _child_guard(_rpc_server_pybus)  # type: ignore[assignment]
_rpc_server_zmq = _child_guard(_rpc_server_zmq)  # type: ignore[assignment]
_wq_worker = _child_guard(_wq_worker)  # type: ignore[assignment]
_pipeline_zmq = _child_guard(_pipeline_zmq)  # type: ignore[assignment]
_count_peer = _child_guard(_count_peer)  # type: ignore[assignment]
_latency_peer = _child_guard(_latency_peer)  # type: ignore[assignment]


# ------------------------------------------------------------------------------ one run each


def _zmq_pub(sndhwm: int | None = None) -> tuple[zmq.Context, zmq.Socket, str]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.LINGER, 0)
    if sndhwm is not None:  # before bind: a listener copies the options it binds with
        s.setsockopt(zmq.SNDHWM, sndhwm)
    s.bind("tcp://127.0.0.1:*")
    return ctx, s, s.getsockopt_string(zmq.LAST_ENDPOINT)


def _zmq_hello(s: zmq.Socket, conn: Any, proc: Any) -> None:
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    while not conn.poll(0.01):
        if time.monotonic() > deadline or not proc.is_alive():
            raise BenchError("pyzmq subscriber never saw the handshake")
        s.send(b"bench.hello")
    _recv(conn, proc, 1, "pyzmq handshake")


def pubsub_once(system: str, n: int) -> tuple[float, int, int]:
    """One run of ``n`` messages: messages per second received, messages not received, and
    (pybus) messages the subscriber counted as lost (sequence gaps, position frames; -1 for
    the peers, which count none)."""
    payload = b"x" * PAYLOAD_BYTES
    counted = -1
    if system in PUBSUB_VARIANTS:
        import pybus

        delivery, k = PUBSUB_VARIANTS[system]
        pub = pybus.Publisher(_free_tcp(), registry=False, delivery=delivery)
        proc, conn = _start(_count_pybus, pub.endpoints[0], n)
        try:
            _recv(conn, proc, _CHILD_TIMEOUT_S, f"{system} subscriber start")
            pub.wait_for_subscribers(1, timeout=_CHILD_TIMEOUT_S)
            publish = pub.publish
            # topics round robin; one list loop for every variant, so that the loops compare
            names = _topic_names(k)
            chunk = names * max(1, 10_000 // k)
            full, rest = divmod(n, len(chunk))
            t0 = time.monotonic_ns()
            for _ in range(full):
                for topic in chunk:
                    publish(topic, payload)
            for topic in chunk[:rest]:
                publish(topic, payload)
            pub.flush(_CHILD_TIMEOUT_S)  # reliable: waits for the window, bounded
            _, got, _first, last, lost, counted = _recv(conn, proc, _CHILD_TIMEOUT_S + 5,
                                                        f"{system} pubsub")
        finally:
            pub.close(linger=0)
            _stop(proc)
    elif system == "pyzmq":
        # at the default HWM (1000) raw PUB drops most of a burst; unbounded queues measure
        # what the sockets can move (the method of the anchor measurements)
        ctx, s, ep = _zmq_pub(sndhwm=0)
        proc, conn = _start(_count_zmq, ep, n)
        try:
            _zmq_hello(s, conn, proc)
            msg = b"bench.data" + payload
            send = s.send
            t0 = time.monotonic_ns()
            for _ in range(n):
                send(msg)
            _, got, _first, last, lost = _recv(conn, proc, _CHILD_TIMEOUT_S + 5, "pyzmq pubsub")
        finally:
            s.close(0)
            ctx.term()
            _stop(proc)
    else:
        pp = _PeerPub(system)
        proc, conn = _start(_count_peer, system, pp.addr, n)
        try:
            pp.hello(conn, proc)
            msg = b"bench.data" + payload
            send = pp.send
            t0 = time.monotonic_ns()
            for _ in range(n):
                send(msg)
            _, got, _first, last, lost = _recv(conn, proc, _CHILD_TIMEOUT_S + 5,
                                               f"{system} pubsub")
        finally:
            pp.close()
            _stop(proc)
    if got == 0:
        raise BenchError(f"{system} pubsub: nothing was received")
    return got / ((last - t0) / _NS), int(lost), int(counted)


def latency_once(system: str, rate: float, seconds: float, interval_s: float
                 ) -> tuple[Histogram, list[tuple[float, float, str]], int, int, int]:
    """Open-loop paced one-way latency: the receiver's histogram (ns), intervals, received,
    sent, and (pybus) the loss its subscriber counted (-1 for the peers)."""
    n = max(1, int(rate * seconds))
    step = _NS / rate
    pad = b"\0" * (PAYLOAD_BYTES - _STAMP.size)
    pack = _STAMP.pack
    counted = -1
    if system in LATENCY_VARIANTS:
        import pybus

        pub = pybus.Publisher(_free_tcp(), registry=False, delivery=LATENCY_VARIANTS[system])
        proc, conn = _start(_latency_pybus, pub.endpoints[0], n, interval_s)
        try:
            _recv(conn, proc, _CHILD_TIMEOUT_S, "pybus subscriber start")
            pub.wait_for_subscribers(1, timeout=_CHILD_TIMEOUT_S)
            publish = pub.publish
            t0 = time.monotonic_ns() + 1_000_000
            for i in range(n):
                target = t0 + int(i * step)
                _pace_until(target)
                publish("bench.latency", pack(target) + pad)
            pub.flush(_CHILD_TIMEOUT_S)
            _, got, blob, intervals, counted = _recv(conn, proc, _CHILD_TIMEOUT_S + 5,
                                                     f"{system} latency")
        finally:
            pub.close(linger=0)
            _stop(proc)
    elif system == "pyzmq":
        ctx, s, ep = _zmq_pub()
        proc, conn = _start(_latency_zmq, ep, n, interval_s)
        try:
            _zmq_hello(s, conn, proc)
            send = s.send
            t0 = time.monotonic_ns() + 1_000_000
            for i in range(n):
                target = t0 + int(i * step)
                _pace_until(target)
                send(b"bench.data" + pack(target) + pad)
            _, got, blob, intervals = _recv(conn, proc, _CHILD_TIMEOUT_S + 5, "pyzmq latency")
        finally:
            s.close(0)
            ctx.term()
            _stop(proc)
    else:
        pp = _PeerPub(system)
        proc, conn = _start(_latency_peer, system, pp.addr, n, interval_s)
        try:
            pp.hello(conn, proc)
            send = pp.send
            t0 = time.monotonic_ns() + 1_000_000
            for i in range(n):
                target = t0 + int(i * step)
                _pace_until(target)
                send(b"bench.data" + pack(target) + pad)
            _, got, blob, intervals = _recv(conn, proc, _CHILD_TIMEOUT_S + 5,
                                            f"{system} latency")
        finally:
            pp.close()
            _stop(proc)
    return Histogram.decode(blob), intervals, got, n, counted


def rpc_once(system: str, n: int) -> tuple[float, Histogram]:
    """Round trips per second and the round-trip histogram (ns) for ``n`` sequential calls."""
    h = Histogram(1, _HMAX, 3)
    payload = b"x" * PAYLOAD_BYTES
    perf = time.perf_counter_ns
    if system == "pybus":
        import pybus

        proc, conn = _start(_rpc_server_pybus)
        try:
            _, ep = _recv(conn, proc, _CHILD_TIMEOUT_S, "pybus rpc server start")
            cl = pybus.Client(ep, timeout=10, registry=False)
            try:
                cl.request("echo", payload)  # connect
                t_start = perf()
                for _ in range(n):
                    t0 = perf()
                    cl.request("echo", payload)
                    h.record(perf() - t0)
                elapsed = perf() - t_start
            finally:
                cl.close()
            conn.send("stop")
        finally:
            _stop(proc)
    elif system == "pyzmq":
        proc, conn = _start(_rpc_server_zmq)
        try:
            _, ep = _recv(conn, proc, _CHILD_TIMEOUT_S, "pyzmq rpc server start")
            ctx = zmq.Context()
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.setsockopt(zmq.RCVTIMEO, 10_000)
            d.connect(ep)
            try:
                d.send(payload)
                d.recv()
                t_start = perf()
                for _ in range(n):
                    t0 = perf()
                    d.send(payload)
                    d.recv()
                    h.record(perf() - t0)
                elapsed = perf() - t_start
            except zmq.Again:
                raise BenchError("pyzmq rpc: no reply within 10 s") from None
            finally:
                d.close(0)
                ctx.term()
            conn.send("stop")
        finally:
            _stop(proc)
    else:
        raise BenchError(f"rpc is not implemented for {system!r}")
    return n / (elapsed / _NS), h


def workqueue_once(system: str, n: int) -> float:
    """Messages put, handled by a worker process and acknowledged, per second."""
    payload = b"x" * PAYLOAD_BYTES
    if system == "pybus":
        import pybus

        q = pybus.WorkQueue("tcp://127.0.0.1:*", registry=False)
        proc, conn = _start(_wq_worker, q.endpoint)
        try:
            _recv(conn, proc, _CHILD_TIMEOUT_S, "pybus worker start")
            items = [("bench.wq", payload)] * 1000
            t0 = time.monotonic_ns()
            for _ in range(n // 1000):
                q.put_many(items)
            if not q.join(timeout=_CHILD_TIMEOUT_S):
                raise BenchError("pybus workqueue: not every message was acked in time")
            elapsed = time.monotonic_ns() - t0
            done = (n // 1000) * 1000
            conn.send("stop")
        finally:
            q.close()
            _stop(proc)
    elif system == "pyzmq":
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.bind("tcp://127.0.0.1:*")
        sink = ctx.socket(zmq.PULL)
        sink.setsockopt(zmq.LINGER, 0)
        sink.setsockopt(zmq.RCVTIMEO, 10_000)
        sink.bind("tcp://127.0.0.1:*")
        proc, conn = _start(_pipeline_zmq, push.getsockopt_string(zmq.LAST_ENDPOINT),
                            sink.getsockopt_string(zmq.LAST_ENDPOINT))
        try:
            _recv(conn, proc, _CHILD_TIMEOUT_S, "pyzmq worker start")
            msg = struct.pack("<q", 0) + payload
            t0 = time.monotonic_ns()
            done = 0
            sent = 0
            # bounded in flight, so neither side queues without limit
            while done < n:
                while sent < n and sent - done < 10_000:
                    push.send(msg)
                    sent += 1
                sink.recv()
                done += 1
            elapsed = time.monotonic_ns() - t0
            conn.send("stop")
        except zmq.Again:
            raise BenchError("pyzmq pipeline: no result within 10 s") from None
        finally:
            push.close(0)
            sink.close(0)
            ctx.term()
            _stop(proc)
    else:
        raise BenchError(f"workqueue is not implemented for {system!r}")
    return done / (elapsed / _NS)


# ------------------------------------------------------------------------------ the plan


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


# ------------------------------------------------------------------------------ outputs


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
