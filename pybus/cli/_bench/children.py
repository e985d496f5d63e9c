"""Every child process of the benchmarks, each started with ``spawn`` and answering on its pipe:
pybus's (a counting subscriber, a latency subscriber, an RPC echo server, a work-queue worker)
and the peers' (raw pyzmq, pynng, zenoh: their subscribers, an echo server, a pipeline
stage)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from .common import (
    _CHILD_TIMEOUT_S,
    _IDLE_NS,
    _IDLE_S,
    _STAMP,
    BenchError,
    _child_guard,
    _LatencyRecorder,
)
from .peers import _peer_sub_ready


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


def _data_messages(recv: Callable[[float], bytes | None], n: int) -> Iterator[bytes]:
    """A receiving peer's messages: the first ``n`` data messages (hellos skipped), fewer when
    none arrives for ``_IDLE_S``."""
    got = 0
    while got < n:
        m = recv(_IDLE_S)
        if m is None:
            return
        if m == b"bench.hello":
            continue
        got += 1
        yield m


def _count_peer(system: str, addr: str, n: int, conn: Any) -> None:
    recv, close = _peer_sub_ready(system, addr, conn)
    got, first, last = 0, 0, 0
    for _ in _data_messages(recv, n):
        last = time.monotonic_ns()
        if not first:
            first = last
        got += 1
    conn.send(("done", got, first, last, n - got))
    close()


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


def _latency_peer(system: str, addr: str, n: int, interval_s: float, conn: Any) -> None:
    recv, close = _peer_sub_ready(system, addr, conn)
    rec = _LatencyRecorder(interval_s)
    unpack = _STAMP.unpack_from
    off = len(b"bench.data")
    got = 0
    for m in _data_messages(recv, n):
        now = time.monotonic_ns()
        rec.record(now, unpack(m, off)[0])
        got += 1
        rec.tick(now)
    rec.flush(time.monotonic_ns())
    conn.send(("done", got, rec.total.encode(), rec.intervals))
    close()


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


_count_pybus = _child_guard(_count_pybus)
_count_zmq = _child_guard(_count_zmq)
_count_peer = _child_guard(_count_peer)
_latency_pybus = _child_guard(_latency_pybus)
_latency_zmq = _child_guard(_latency_zmq)
_latency_peer = _child_guard(_latency_peer)
_rpc_server_pybus = _child_guard(_rpc_server_pybus)
_rpc_server_zmq = _child_guard(_rpc_server_zmq)
_wq_worker = _child_guard(_wq_worker)
_pipeline_zmq = _child_guard(_pipeline_zmq)
