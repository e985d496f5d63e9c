"""One run of each benchmark for one system: ``pubsub_once``, ``latency_once``, ``rpc_once`` and
``workqueue_once``."""

from __future__ import annotations

import struct
import time

import zmq

from ..._native import Histogram
from .children import (
    _count_peer,
    _count_pybus,
    _count_zmq,
    _latency_peer,
    _latency_pybus,
    _latency_zmq,
    _pipeline_zmq,
    _rpc_server_pybus,
    _rpc_server_zmq,
    _wq_worker,
)
from .common import (
    _CHILD_TIMEOUT_S,
    _HMAX,
    _NS,
    _STAMP,
    LATENCY_VARIANTS,
    PAYLOAD_BYTES,
    PUBSUB_VARIANTS,
    BenchError,
    _free_tcp,
    _pace_until,
    _recv,
    _start,
    _stop,
    _topic_names,
)
from .peers import _PeerPub


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
            pub.close(linger_ms=0)
            _stop(proc)
    else:  # the peers: raw pyzmq, pynng, zenoh
        # at the default HWM (1000) raw PUB drops most of a burst; unbounded queues measure
        # what the sockets can move (the method of the anchor measurements)
        pp = _PeerPub(system, sndhwm=0)
        proc, conn = (_start(_count_zmq, pp.addr, n) if system == "pyzmq" else
                      _start(_count_peer, system, pp.addr, n))
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
            pub.close(linger_ms=0)
            _stop(proc)
    else:  # the peers: raw pyzmq, pynng, zenoh
        pp = _PeerPub(system)
        proc, conn = (_start(_latency_zmq, pp.addr, n, interval_s) if system == "pyzmq" else
                      _start(_latency_peer, system, pp.addr, n, interval_s))
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
            cl = pybus.Client(ep, timeout_s=10, registry=False)
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
