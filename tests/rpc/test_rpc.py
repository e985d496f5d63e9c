"""Request/reply over real ZeroMQ sockets: replies, errors, garbage, late replies, Lazy Pirate."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import msgpack
import pytest
import zmq

import pybus
from pybus import (
    AsyncClient,
    CircuitBreaker,
    CircuitOpenError,
    Client,
    RateLimiter,
    RateLimitError,
    RemoteError,
    RetryPolicy,
    Server,
    ValidationError,
)

pytestmark = pytest.mark.timeout(20)

# Independent from-the-doc encoder/decoder (docs/wire-reqrep.md), not pybus.rpc's.
DOC_HEADER = "<BBBBQ"


def doc_request(cid: int, method: bytes, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(DOC_HEADER, 1, 1, flags, len(method), cid) + method + payload


def doc_reply(frame: bytes) -> tuple[int, int, int, bytes]:
    version, kind, flags, mlen, cid = struct.unpack_from(DOC_HEADER, frame)
    assert version == 1 and mlen == 0
    return kind, flags, cid, frame[12:]


@pytest.fixture
def endpoint(tmp_path):
    return f"ipc://{tmp_path}/rpc.ipc"


@pytest.fixture
def server(endpoint):
    srv = Server(endpoint)
    seen = []

    @srv.handler("echo")
    def echo(p):
        seen.append(p)
        return p

    @srv.handler("add")
    def add(p):
        return p["a"] + p["b"]

    @srv.handler("fail")
    def fail(p):
        raise KeyError("order 7 not found")

    @srv.handler("busy")
    def busy(p):
        raise pybus.BackpressureError("queue full; retry later")

    srv.seen = seen
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def raw_dealer(endpoint):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 3000)
    s.connect(endpoint)
    yield s
    s.close(0)


def test_payload_reaches_handler_as_sent_and_reply_comes_back(server, endpoint):
    with Client(endpoint, timeout_s=3.0) as c:
        assert c.request("echo", b"\x00raw\xff") == b"\x00raw\xff"
        assert c.request("echo", {"k": [1, 2.5, "x", None, b"b"]}) == {
            "k": [1, 2.5, "x", None, b"b"]
        }
        assert c.request("add", {"a": 2, "b": 40}) == 42
        assert c.request("echo", "") == ""  # an empty str is msgpack, not raw
        assert c.request("echo", b"") == b""
    assert server.seen == [b"\x00raw\xff", {"k": [1, 2.5, "x", None, b"b"]}, "", b""]
    assert type(server.seen[0]) is bytes
    server.stop()  # "replies" counts after the send returns: let the loop finish first
    st = server.stats()
    assert st["requests"] == st["replies"] == 5


def test_handler_exception_becomes_remote_error(server, endpoint):
    with Client(endpoint, timeout_s=3.0) as c:
        with pytest.raises(RemoteError) as ei:
            c.request("fail", None)
        e = ei.value
        assert e.remote_type == "KeyError" and "order 7 not found" in e.remote_message
        assert e.remote_code == int(pybus.ErrorCode.UNKNOWN) and not e.retryable
        with pytest.raises(RemoteError) as ei:
            c.request("busy", None)
        assert ei.value.remote_type == "BackpressureError"
        assert ei.value.remote_code == int(pybus.ErrorCode.BACKPRESSURE) and ei.value.retryable
        assert c.request("add", {"a": 1, "b": 1}) == 2  # the client is still usable
        assert c.stats()["remote_errors"] == 2
    assert server.stats()["handler_errors"] == 2


def test_unknown_method_is_a_clear_remote_error(server, endpoint):
    with Client(endpoint, timeout_s=3.0) as c:
        with pytest.raises(
            RemoteError, match="no handler named 'nope'.*registered: add, busy"
        ) as ei:
            c.request("nope", b"")
    assert ei.value.remote_type == "UnknownMethodError"
    assert ei.value.remote_code == int(pybus.ErrorCode.UNKNOWN_METHOD)
    assert server.stats()["unknown_method"] == 1


def test_wire_format_matches_the_doc(server, raw_dealer):
    """A hand-built frame per docs/wire-reqrep.md gets a reply decodable per the doc."""
    raw_dealer.send(doc_request(0xDEADBEEF01, b"echo", b"hello"))
    kind, flags, cid, body = doc_reply(raw_dealer.recv())
    assert (kind, flags, cid, body) == (0x02, 0, 0xDEADBEEF01, b"hello")
    raw_dealer.send(doc_request(7, b"add", msgpack.packb({"a": 1, "b": 2}), flags=1))
    kind, flags, cid, body = doc_reply(raw_dealer.recv())
    assert (kind, flags, cid, msgpack.unpackb(body)) == (0x02, 1, 7, 3)
    raw_dealer.send(doc_request(8, b"fail", b""))
    kind, flags, cid, body = doc_reply(raw_dealer.recv())
    err = msgpack.unpackb(body)
    assert (kind, flags, cid) == (0x03, 1, 8)
    assert err["type"] == "KeyError" and err["code"] == 1 and err["retryable"] is False


def test_client_frames_match_the_doc(endpoint):
    """A raw ROUTER plays the server by the doc: checks the request bytes and feeds
    the client a stale reply, a garbage frame and then the real one."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 5000)
    router.bind(endpoint)
    got = []
    c = Client(endpoint, timeout_s=5.0)
    t = threading.Thread(target=lambda: got.append(c.request("add", [1, 2])))
    t.start()
    try:
        ident, frame = router.recv_multipart()
        assert frame[:4] == bytes([0x01, 0x01, 0x01, 0x03])
        cid = struct.unpack_from("<Q", frame, 4)[0]
        assert frame[12:15] == b"add" and frame[15:] == bytes([0x92, 0x01, 0x02])
        stale = struct.pack(DOC_HEADER, 1, 2, 1, 0, (cid - 1) % 2**64) + b"\x63"
        router.send_multipart([ident, stale])
        router.send_multipart([ident, b"\x01\x02junk"])
        router.send_multipart([ident, struct.pack(DOC_HEADER, 1, 2, 1, 0, cid) + b"\x03"])
        t.join(5)
        assert got == [3]
        st = c.stats()
        assert st["late_replies"] == 1 and st["decode_errors"] == 1
    finally:
        c.close()
        t.join(5)
        router.close(0)


def test_async_client_drops_malformed_replies_that_carry_its_id(endpoint):
    """docs/wire-reqrep.md: a reply with another version or a reserved flag bit is malformed,
    even with the awaited id: counted and dropped, and the request still gets the real one
    (it once reached the request and failed an assert)."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 5000)
    router.bind(endpoint)

    async def main():
        async with AsyncClient(endpoint, timeout_s=5.0) as c:
            task = asyncio.ensure_future(c.request("echo", b"x"))
            ident, frame = await asyncio.to_thread(router.recv_multipart)
            cid = struct.unpack_from("<Q", frame, 4)[0]
            for version, flags in ((1, 0x80), (1, 0x02), (2, 0)):
                router.send_multipart([ident, struct.pack(DOC_HEADER, version, 2, flags, 0, cid)
                                       + b"bad"])
            router.send_multipart([ident, struct.pack(DOC_HEADER, 1, 2, 0, 0, cid) + b"good"])
            assert await asyncio.wait_for(task, 5) == b"good"
            st = c.stats()
            assert st["decode_errors"] == 3 and st["replies"] == 1

    try:
        asyncio.run(main())
    finally:
        router.close(0)


GARBAGE = [
    (b"", "short"),
    (b"\x01\x01", "short"),
    (struct.pack(DOC_HEADER, 9, 1, 0, 4, 1) + b"echo", "version"),
    (struct.pack(DOC_HEADER, 1, 2, 0, 4, 1) + b"echo", "kind"),
    (struct.pack(DOC_HEADER, 1, 0x7F, 0, 0, 1) + os.urandom(17), "kind"),  # forged control
    (struct.pack(DOC_HEADER, 1, 1, 0x80, 4, 1) + b"echo", "flags"),
    (struct.pack(DOC_HEADER, 1, 1, 0x04, 4, 1) + b"echo", "flags"),
    (struct.pack(DOC_HEADER, 1, 1, 0, 0, 1), "method"),
    (struct.pack(DOC_HEADER, 1, 1, 0, 200, 1) + b"echo", "method"),
]


def test_a_header_block_is_read_past_and_a_bad_one_answered(server, endpoint, raw_dealer):
    # written from docs/wire-reqrep.md: flag 0x02, then u16le length, a msgpack map, payload
    block = msgpack.packb({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    head = struct.pack("<H", len(block)) + block
    raw_dealer.send(doc_request(11, b"add", head + msgpack.packb({"a": 2, "b": 5}), flags=3))
    kind, flags, cid, body = doc_reply(raw_dealer.recv())
    assert (kind, flags, cid, msgpack.unpackb(body)) == (0x02, 1, 11, 7)
    raw_dealer.send(doc_request(12, b"echo", head + b"raw", flags=2))
    assert doc_reply(raw_dealer.recv()) == (0x02, 0, 12, b"raw")
    for cid, bad in [(13, struct.pack("<H", 500) + block),  # the block runs past the frame
                     (14, b"\x01"),  # no room for the length
                     (15, struct.pack("<H", 2) + msgpack.packb([1])),  # not a map
                     (16, struct.pack("<H", 1) + b"\xc1")]:  # not msgpack
        raw_dealer.send(doc_request(cid, b"echo", bad, flags=2))
        kind, _, got_cid, body = doc_reply(raw_dealer.recv())
        assert (kind, got_cid) == (0x03, cid) and msgpack.unpackb(body)["type"] == "FrameError"
    assert server.stats()["decode_error_reasons"] == {"payload": 4}
    assert server.seen == [b"raw"]


def test_garbage_frames_counted_and_dropped_while_clients_served(server, endpoint, raw_dealer):
    with Client(endpoint, timeout_s=3.0) as c:
        for frame, _ in GARBAGE:
            raw_dealer.send(frame)
            assert c.request("add", {"a": 1, "b": 2}) == 3
        raw_dealer.send(b"part1", zmq.SNDMORE)
        raw_dealer.send(b"part2")
        assert c.request("echo", b"still here") == b"still here"
        # A well-framed request with corrupt msgpack gets an error reply (its cid is known).
        raw_dealer.send(doc_request(5, b"echo", b"\xc1", flags=1))
        kind, _, cid, body = doc_reply(raw_dealer.recv())
        assert (kind, cid) == (0x03, 5) and msgpack.unpackb(body)["type"] == "FrameError"
        assert c.request("echo", b"end") == b"end"
    st = server.stats()
    reasons = {}
    for _, r in GARBAGE:
        reasons[r] = reasons.get(r, 0) + 1
    reasons["multipart"] = 1
    reasons["payload"] = 1
    assert st["decode_error_reasons"] == reasons
    assert st["decode_errors"] == len(GARBAGE) + 2
    # The raw dealer got nothing back for the dropped frames: only the one error reply.
    assert raw_dealer.poll(50) == 0


def test_late_reply_is_dropped_and_counted_not_misdelivered(endpoint):
    release = threading.Event()
    srv = Server(endpoint)

    @srv.handler("slow")
    def slow(p):
        release.wait(10)
        return "slow-result"

    srv.add_handler("echo", lambda p: p)
    with srv, Client(endpoint, timeout_s=0.2) as c:
        t0 = time.monotonic()
        with pytest.raises(pybus.TimeoutError, match="no reply to 'slow'"):
            c.request("slow", None)
        assert 0.18 <= time.monotonic() - t0 < 2.0
        release.set()
        # The inline server answers "slow" first, then this: the late reply must be skipped.
        assert c.request("echo", "fresh", timeout=3.0) == "fresh"
        st = c.stats()
        assert st["late_replies"] == 1 and st["timeouts"] == 1 and st["replies"] == 1


def test_dead_server_times_out_after_policy_attempts(endpoint):
    policy = RetryPolicy.fixed(0.01, max_attempts=3)
    with Client(endpoint, timeout_s=0.1, retry=policy) as c:
        t0 = time.monotonic()
        with pytest.raises(pybus.TimeoutError, match="after 3 attempts") as ei:
            c.request("echo", b"x")
        elapsed = time.monotonic() - t0
        assert isinstance(ei.value.__cause__, pybus.RetryExhaustedError)
        st = c.stats()
        assert st["timeouts"] == 3 and st["retries"] == 2 and st["reconnects"] == 2
        assert 0.3 <= elapsed < 3.0
    assert policy.stats()["attempts"] == 3


def test_lazy_pirate_resets_socket_between_attempts(endpoint):
    """First attempt's reply comes late; the retry (on a fresh socket) gets its own reply,
    and the late reply is undeliverable (the old socket is gone), counted by the server."""
    calls = []
    first_may_finish = threading.Event()
    srv = Server(endpoint, workers=2)

    @srv.handler("work")
    def work(p):
        calls.append(p)
        if len(calls) == 1:
            first_may_finish.wait(10)
            # reply only once the server saw the first socket go (its monitor's event), so
            # the ROUTER knows the peer is gone: else the reply may go into the dying pipe
            # and vanish uncounted (seen on a loaded machine)
            deadline = time.monotonic() + 10
            while (srv.stats()["peer_events"].get("disconnected", 0) < 1
                   and time.monotonic() < deadline):
                time.sleep(0.01)
            return "first"
        first_may_finish.set()
        return "second"

    with srv, Client(endpoint, timeout_s=0.3, retry=RetryPolicy.fixed(0.0, max_attempts=2)) as c:
        assert c.request("work", 1) == "second"
        st = c.stats()
        assert st["reconnects"] == 1 and st["timeouts"] == 1 and st["late_replies"] == 0
        deadline = time.monotonic() + 5
        while srv.stats()["unroutable"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.stats()["unroutable"] == 1
    assert calls == [1, 1]


def test_request_to_dead_server_is_not_replayed_when_it_starts(endpoint):
    """A timed-out request must not sit in a queue and run when a server appears."""
    calls = []
    with Client(endpoint, timeout_s=0.1) as c:
        with pytest.raises(pybus.TimeoutError, match="no connection"):
            c.request("rec", 1)
        srv = Server(endpoint)
        srv.add_handler("rec", lambda p: calls.append(p) or p)
        with srv:
            assert c.request("rec", 2, timeout=5.0) == 2
        assert c.stats()["late_replies"] == 0
    assert calls == [2]


SERVER_SCRIPT = textwrap.dedent(
    """
    import sys, pybus
    srv = pybus.Server(sys.argv[1])
    srv.add_handler("echo", lambda p: p)
    srv.add_handler("pid", lambda p: __import__("os").getpid())
    print("ready", flush=True)
    srv.serve_forever()
    """
)


def spawn_server(endpoint):
    # cwd away from the repository, so `python -c` imports the installed pybus.
    cwd = endpoint[len("ipc://") :].rsplit("/", 1)[0]
    p = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, endpoint], stdout=subprocess.PIPE, text=True, cwd=cwd
    )
    try:
        assert p.stdout.readline().strip() == "ready"  # handshake, not a sleep
    except BaseException:
        _reap(p)
        raise
    return p


def _reap(p):
    """Kill a spawned server and wait for it; close its stdout pipe."""
    p.kill()
    p.wait(10)
    p.stdout.close()


def test_server_killed_then_restarted(endpoint):
    p = spawn_server(endpoint)
    try:
        policy = RetryPolicy.fixed(0.0, max_attempts=2)
        with Client(endpoint, timeout_s=0.3, retry=policy) as c:
            first_pid = c.request("pid", None, timeout=5.0)
            assert first_pid == p.pid
            os.kill(p.pid, signal.SIGKILL)
            _reap(p)
            with pytest.raises(pybus.TimeoutError):
                c.request("echo", b"x")
            p = spawn_server(endpoint)
            # Same client object recovers once the server is back.
            assert c.request("pid", None, timeout=5.0) == p.pid
    finally:
        _reap(p)


def test_retryable_remote_error_retried(endpoint):
    n = []
    srv = Server(endpoint)

    @srv.handler("flaky")
    def flaky(p):
        n.append(1)
        if len(n) < 3:
            raise pybus.BackpressureError("busy")
        return "ok"

    srv.add_handler("bug", lambda p: 1 / 0)
    with srv, Client(endpoint, timeout_s=2.0, retry=RetryPolicy.fixed(0.0, max_attempts=5)) as c:
        assert c.request("flaky", None) == "ok"
        assert c.stats()["retries"] == 2 and c.stats()["reconnects"] == 0
        with pytest.raises(RemoteError, match="ZeroDivisionError"):
            c.request("bug", None)  # not retryable: one attempt
        assert srv.stats()["requests"] == 4


def test_breaker_opens_on_dead_server_and_fails_fast(endpoint):
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=60.0)
    with Client(endpoint, timeout_s=0.05, breaker=breaker) as c:
        for _ in range(2):
            with pytest.raises(pybus.TimeoutError):
                c.request("echo", b"x")
        with pytest.raises(CircuitOpenError) as ei:
            c.request("echo", b"x")
        assert ei.value.retry_after > 50
        # Refused before any attempt: no third timeout, one rejection.
        assert c.stats()["timeouts"] == 2 and breaker.stats()["rejected"] == 1


def test_breaker_counts_success(server, endpoint):
    breaker = CircuitBreaker(failure_threshold=1)
    with Client(endpoint, timeout_s=2.0, breaker=breaker) as c:
        assert c.request("echo", b"a") == b"a"
    assert breaker.stats()["successes"] == 1


def test_rate_limit_per_attempt(server, endpoint, clock):
    limiter = RateLimiter(1.0, 1, clock=clock, sleep=clock.sleep)
    with Client(endpoint, timeout_s=0.5, rate_limit=limiter) as c:
        assert c.request("echo", b"1") == b"1"
        with pytest.raises(RateLimitError) as ei:
            c.request("echo", b"2")
        assert ei.value.retry_after == pytest.approx(1.0)
        clock.advance(1.0)
        assert c.request("echo", b"3") == b"3"
    assert server.seen == [b"1", b"3"]


def test_server_rate_limit_per_client(endpoint, clock):
    limiter = pybus.KeyedRateLimiter(1.0, 2, max_keys=100, clock=clock)
    srv = Server(endpoint, rate_limit=limiter)
    srv.add_handler("echo", lambda p: p)
    with srv, Client(endpoint, timeout_s=3) as a, Client(endpoint, timeout_s=3) as b:
        assert [a.request("echo", i) for i in range(2)] == [0, 1]
        with pytest.raises(RemoteError, match=r"rate limit exceeded.*next token in 1 s") as ei:
            a.request("echo", 2)
        assert ei.value.remote_type == "RateLimitError" and ei.value.retryable
        assert ei.value.remote_code == int(pybus.ErrorCode.RATE_LIMITED)
        assert [b.request("echo", i) for i in range(2)] == [0, 1]  # its own bucket
        clock.advance(1.0)
        assert a.request("echo", 3) == 3
        assert srv.stats()["rate_limited"] == 1 and len(limiter) == 2
    with pytest.raises(ValidationError, match="rate_limit"):
        Server(endpoint, rate_limit=5)


def _request_once(endpoint, method, payload, timeout=5.0):
    """One request on a Client that is closed afterwards (for a thread's target)."""
    with Client(endpoint, timeout_s=timeout) as c:
        return c.request(method, payload)


def test_many_clients_concurrently_and_workers(endpoint):
    gate = threading.Event()
    srv = Server(endpoint, workers=4)
    srv.add_handler("wait", lambda p: gate.wait(10) and "released")
    srv.add_handler("sq", lambda p: p * p)
    results = {}
    errors = []

    def run(k):
        try:
            with Client(endpoint, timeout_s=5.0) as c:
                results[k] = [c.request("sq", k * 100 + i) for i in range(50)]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with srv:
        waiter_result = []
        waiter = threading.Thread(
            target=lambda: waiter_result.append(_request_once(endpoint, "wait", None))
        )
        ts = [threading.Thread(target=run, args=(k,)) for k in range(6)]
        try:
            waiter.start()
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            # Every other client finished while "wait" still blocks a worker.
            assert not errors and waiter.is_alive()
        finally:
            gate.set()  # on failure too: no thread is left blocked behind the gate
            for t in (waiter, *ts):
                if t.ident is not None:
                    t.join(10)
    assert waiter_result == ["released"]
    for k in range(6):
        assert results[k] == [(k * 100 + i) ** 2 for i in range(50)]


def test_worker_pool_backpressure(endpoint):
    gate = threading.Event()
    srv = Server(endpoint, workers=1, max_in_flight=1)
    srv.add_handler("wait", lambda p: gate.wait(10) and "done")
    with srv:
        first = []
        t = threading.Thread(target=lambda: first.append(_request_once(endpoint, "wait", 0)))
        t.start()
        try:
            deadline = time.monotonic() + 5
            while srv.stats()["inflight"] < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            with Client(endpoint, timeout_s=5) as c:
                with pytest.raises(RemoteError, match="max_in_flight=1") as ei:
                    c.request("wait", 1)
            assert ei.value.retryable
        finally:
            gate.set()
            t.join(10)
    assert first == ["done"] and srv.stats()["busy_rejected"] == 1


def test_serve_forever_and_stop_from_other_thread(endpoint):
    srv = Server(endpoint)
    srv.add_handler("echo", lambda p: p)
    th = threading.Thread(target=srv.serve_forever)
    th.start()
    try:
        with Client(endpoint, timeout_s=3) as c:
            assert c.request("echo", 5) == 5
    finally:
        srv.stop()
        th.join(5)
    assert not th.is_alive()
    with pytest.raises(pybus.ClosedError):
        srv.start()


def test_tcp_port_zero_resolves(tmp_path):
    with Server("tcp://127.0.0.1:0") as srv:
        srv.add_handler("echo", lambda p: p)
        assert srv.endpoint.startswith("tcp://127.0.0.1:") and not srv.endpoint.endswith(":0")
        with Client(srv.endpoint, timeout_s=3) as c:
            assert c.request("echo", [1]) == [1]


def test_bad_arguments_and_zmq_errors(endpoint, server):
    with pytest.raises(ValidationError, match="endpoints look like"):
        Server("nowhere")
    with Server("tcp://127.0.0.1:0") as taken:
        with pytest.raises(pybus.TransportError, match="in use"):
            Server(taken.endpoint)  # EADDRINUSE, mapped from zmq
    with pytest.raises(ValidationError, match="endpoints look like"):
        Server("bogus://x")
    with Client(endpoint, timeout_s=1) as c:
        with pytest.raises(ValidationError, match="1-255 UTF-8 bytes"):
            c.request("x" * 256, b"")
        with pytest.raises(ValidationError, match="cannot be sent"):
            c.request("echo", object())
        with pytest.raises(ValidationError, match="timeout"):
            c.request("echo", b"", timeout=0)
    with pytest.raises(pybus.ClosedError):
        c.request("echo", b"")
    with pytest.raises(ValidationError, match="retry must be"):
        Client(endpoint, retry=3)
    with pytest.raises(ValidationError, match="callable"):
        server.add_handler("x", 5)


# -- asyncio ---------------------------------------------------------------------------
def test_async_client_concurrent_requests(endpoint):
    srv = Server(endpoint, workers=4)
    srv.add_handler("sq", lambda p: (time.sleep(0.001 * (p % 3)), p * p)[1])
    srv.add_handler("fail", lambda p: {}["missing"])

    async def main():
        async with AsyncClient(endpoint, timeout_s=5.0) as c:
            got = await asyncio.gather(*(c.request("sq", i) for i in range(100)))
            assert got == [i * i for i in range(100)]
            with pytest.raises(RemoteError, match="KeyError"):
                await c.request("fail", None)
            return c.stats()

    with srv:
        st = asyncio.run(main())
    assert st["replies"] == 100 and st["remote_errors"] == 1 and st["late_replies"] == 0


def test_async_client_late_reply_and_dead_server(endpoint, tmp_path):
    release = threading.Event()
    srv = Server(endpoint, workers=2)
    srv.add_handler("slow", lambda p: release.wait(10) and "slow")
    srv.add_handler("echo", lambda p: p)

    async def main():
        async with AsyncClient(endpoint, timeout_s=0.2) as c:
            with pytest.raises(pybus.TimeoutError, match="no reply"):
                await c.request("slow", None)
            release.set()
            # The late "slow" reply may come before or after this one; either way it
            # must never be returned here.
            assert await c.request("echo", "fresh", timeout=3.0) == "fresh"
            for _ in range(100):
                if c.stats()["late_replies"]:
                    break
                await asyncio.sleep(0.01)
            assert c.stats()["late_replies"] == 1
        dead = f"ipc://{tmp_path}/nobody.ipc"
        policy = RetryPolicy.fixed(0.0, max_attempts=2)
        async with AsyncClient(dead, timeout_s=0.05, retry=policy) as d:
            with pytest.raises(pybus.TimeoutError, match="after 2 attempts"):
                await d.request("echo", b"x")
            assert d.stats()["timeouts"] == 2 and d.stats()["reconnects"] == 1

    with srv:
        asyncio.run(main())


# -- properties ------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.one_of(st.binary(max_size=2000), msgpack_values),
    method=st.text(min_size=1, max_size=60),
)
def test_roundtrip_property(server, endpoint, payload, method):
    """Any payload comes back equal (bytes stay bytes), and any method name the server
    does not know gives UnknownMethodError naming it - never a crash or a hang."""
    with Client(endpoint, timeout_s=3.0) as c:
        got = c.request("echo", payload)
        assert got == payload and type(got) is type(payload)
        if method.encode() not in (b"echo", b"add", b"fail", b"busy"):
            with pytest.raises(RemoteError) as ei:
                c.request(method, payload)
            assert ei.value.remote_type == "UnknownMethodError"
            assert ei.value.remote_message.startswith("no handler named")


def test_security_hook_applied_to_both_sockets(endpoint):
    applied = []

    def hook(sock):
        applied.append(sock.type)
        sock.setsockopt(zmq.SNDHWM, 123)

    with Server(endpoint, security=hook) as srv:
        srv.add_handler("echo", lambda p: p)
        with Client(endpoint, timeout_s=3.0, security=hook) as c:
            assert c.request("echo", b"s") == b"s"
            assert c._sock.getsockopt(zmq.SNDHWM) == 123
    assert applied == [zmq.ROUTER, zmq.DEALER]


def test_async_client_survives_a_new_event_loop(server, endpoint):
    c = AsyncClient(endpoint, timeout_s=3.0)
    try:
        assert asyncio.run(c.request("echo", b"one")) == b"one"
        # A second asyncio.run() is a new loop: the old reader task is gone with the old loop.
        assert asyncio.run(c.request("echo", b"two")) == b"two"
    finally:
        asyncio.run(c.close())
    with pytest.raises(pybus.ClosedError):
        asyncio.run(c.request("echo", b"x"))


def test_oversized_request_is_refused_before_allocation_and_server_keeps_serving(tmp_path):
    """MAXMSGSIZE: a frame above max_message_bytes disconnects its sender; others are served."""
    ep = f"ipc://{tmp_path}/big.ipc"
    with pybus.Server(ep, max_message_bytes=4096) as server:
        server.add_handler("echo", lambda p: p)
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(ep)
        try:
            raw.send(b"\x00" * 8192)  # far above the limit: never reaches the server's code
            with pybus.Client(ep, timeout_s=5.0) as c:
                assert c.request("echo", b"x" * 1000) == b"x" * 1000
            assert not raw.poll(200)
            st = server.stats()
            assert st["requests"] == 1 and st["decode_errors"] == 0
        finally:
            raw.close()
    with pytest.raises(pybus.ValidationError, match="max_message_bytes"):
        pybus.Server(ep, max_message_bytes=10)


# -- liveness (ZMTP heartbeats, TCP keepalive) on the RPC sockets -----------------------------
def _live_opts(sock):
    return {
        name: sock.getsockopt(getattr(zmq, name))
        for name in ("HEARTBEAT_IVL", "HEARTBEAT_TIMEOUT", "HEARTBEAT_TTL", "TCP_KEEPALIVE",
                     "TCP_KEEPALIVE_IDLE", "TCP_KEEPALIVE_INTVL", "TCP_KEEPALIVE_CNT",
                     "RECONNECT_IVL", "RECONNECT_IVL_MAX", "CONNECT_TIMEOUT")
    }


def test_liveness_options_land_on_rpc_sockets_and_requests_work():
    lv = pybus.Liveness(heartbeat_ivl_ms=100, heartbeat_timeout_ms=300, heartbeat_ttl_ms=700,
                        reconnect_ivl_ms=40, reconnect_ivl_max_ms=400, connect_timeout_ms=900,
                        tcp_keepalive_idle_s=7, tcp_keepalive_intvl_s=3, tcp_keepalive_cnt=4)
    want = {"HEARTBEAT_IVL": 100, "HEARTBEAT_TIMEOUT": 300, "HEARTBEAT_TTL": 700,
            "TCP_KEEPALIVE": 1, "TCP_KEEPALIVE_IDLE": 7, "TCP_KEEPALIVE_INTVL": 3,
            "TCP_KEEPALIVE_CNT": 4, "RECONNECT_IVL": 40, "RECONNECT_IVL_MAX": 400,
            "CONNECT_TIMEOUT": 900}
    srv = Server("tcp://127.0.0.1:0", liveness=lv)
    srv.add_handler("echo", lambda p: p)
    srv.start()
    try:
        assert _live_opts(srv._sock) == want
        with Client(srv.endpoint, timeout_s=3.0, liveness=lv) as c:
            assert _live_opts(c._sock) == want
            assert c._sock.getsockopt(zmq.IMMEDIATE) == 1  # Lazy Pirate semantics kept
            assert c.request("echo", b"hb-1") == b"hb-1"
            # idle for several heartbeat timeouts: pings are answered, the connection stays
            time.sleep(1.0)
            assert c.request("echo", {"n": 2}) == {"n": 2}
            # a Lazy Pirate reset opens a socket with the same options
            c._reset()
            assert _live_opts(c._sock) == want
            assert c.request("echo", b"hb-3") == b"hb-3"

        async def main():
            async with AsyncClient(srv.endpoint, timeout_s=3.0, liveness=lv) as ac:
                assert await ac.request("echo", b"aio") == b"aio"
                return _live_opts(ac._sock)

        assert asyncio.run(main()) == want
    finally:
        srv.stop()


def test_rpc_liveness_defaults(endpoint):
    srv = Server(endpoint)
    srv.add_handler("echo", lambda p: p)
    srv.start()
    try:
        d = pybus.Liveness()
        s = _live_opts(srv._sock)
        # the ROUTER receives into a queue a slow handler fills: keepalive, no heartbeats
        assert s["HEARTBEAT_IVL"] == 0
        assert (s["TCP_KEEPALIVE"], s["TCP_KEEPALIVE_IDLE"]) == (1, d.tcp_keepalive_idle_s)
        with Client(endpoint, timeout_s=3.0) as c:
            o = _live_opts(c._sock)
            assert (o["HEARTBEAT_IVL"], o["HEARTBEAT_TIMEOUT"], o["HEARTBEAT_TTL"]) == (
                d.heartbeat_ivl_ms, d.heartbeat_timeout_ms, d.heartbeat_ttl_ms)
            assert (o["TCP_KEEPALIVE"], o["TCP_KEEPALIVE_CNT"]) == (1, d.tcp_keepalive_cnt)
            # the client's own fast Lazy Pirate reconnection, not the Liveness one
            assert (o["RECONNECT_IVL"], o["RECONNECT_IVL_MAX"]) == (20, 1000)
            assert c._sock.getsockopt(zmq.IMMEDIATE) == 1
            assert c.request("echo", b"x") == b"x"
    finally:
        srv.stop()


def test_rpc_liveness_rejects_bad_values(endpoint):
    with pytest.raises(ValidationError, match="liveness must be a pybus.Liveness"):
        Server(endpoint, liveness={"heartbeat_ivl_ms": 100})
    with pytest.raises(ValidationError, match="liveness must be a pybus.Liveness"):
        Client(endpoint, liveness=5)
    with pytest.raises(ValidationError, match="liveness must be a pybus.Liveness"):
        AsyncClient(endpoint, liveness="on")
