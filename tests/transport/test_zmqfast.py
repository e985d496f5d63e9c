"""The libzmq fast path (pybus._native._zmqfast) on real pyzmq sockets, and its fallback."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid

import msgpack
import pytest
import zmq

import pybus
from pybus._native import _zmqfast as fast
from pybus.transport import sockets as _sockets

pytestmark = pytest.mark.timeout(30)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
sys.path.insert(0, HERE)
import wqhelpers as H  # noqa: E402  (a from-the-doc work-queue codec)

# Independent from-the-doc encoder (docs/wire-reqrep.md), not pybus's.
DOC_HEADER = "<BBBBQ"


def doc_frame(kind: int, cid: int, method: bytes, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(DOC_HEADER, 1, kind, flags, len(method), cid) + method + payload


needs_fast = pytest.mark.skipif(
    not fast.AVAILABLE, reason=f"fast path unavailable: {fast.UNAVAILABLE_REASON}"
)


@pytest.fixture(params=["inproc", "ipc"])
def pair(request, tmp_path):
    """A bound ROUTER (ROUTER_MANDATORY) and a connected DEALER, handshake done."""
    ctx = zmq.Context()
    ep = (f"inproc://zf-{uuid.uuid4().hex}" if request.param == "inproc"
          else f"ipc://{tmp_path}/zf.ipc")
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        for s in (router, dealer):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, 2000)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.bind(ep)
        dealer.connect(ep)
        # handshake: one message each way, so the ROUTER knows the DEALER's identity
        dealer.send(b"hello")
        ident, hello = router.recv_multipart()
        assert hello == b"hello"
        router.send_multipart([ident, b"welcome"])
        assert dealer.recv() == b"welcome"
        yield router, dealer, ident
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()
    ctx.term()


@needs_fast
def test_resolved_library_is_the_one_pyzmq_loaded():
    path = fast.library_path()
    assert os.path.basename(path).startswith("libzmq") or "_zmq" in os.path.basename(path)
    with open("/proc/self/maps") as f:
        mapped = {line.split()[-1] for line in f if "/" in line}
    assert os.path.realpath(path) in {os.path.realpath(p) for p in mapped}


@needs_fast
def test_request_frame_matches_the_doc_and_round_trips(pair):
    router, dealer, ident = pair
    assert fast.send_request(dealer.underlying, 7, 0, b"echo", b"ping") == 0
    # an independent reader (pyzmq) sees exactly the documented frame
    got_ident, frame = router.recv_multipart()
    assert got_ident == ident
    assert frame == doc_frame(1, 7, b"echo", b"ping")
    # and the C parser reads a documented frame sent by pyzmq
    big_cid = 2**64 - 2
    dealer.send(doc_frame(1, big_cid, b"m\xc3\xa9thod", b"\x00payload", flags=1))
    reason, rident, cid, flags, method, data = fast.recv_request(router.underlying)
    assert (reason, rident, cid, flags, method, data) == (
        None, ident, big_cid, 1, b"m\xc3\xa9thod", b"\x00payload")
    # the reply, written in C, read back by pyzmq and by C
    assert fast.send_reply(router.underlying, ident, big_cid, 2, 0, b"pong") == 0
    assert dealer.recv() == doc_frame(2, big_cid, b"", b"pong")
    assert fast.send_reply(router.underlying, ident, big_cid, 2, 0, b"pong2") == 0
    assert fast.recv_reply(dealer.underlying, big_cid) == b"pong2"


@needs_fast
def test_call_wraps_the_correlation_id_mod_2_64(pair):
    router, dealer, ident = pair
    result: list = []
    t = threading.Thread(target=lambda: result.append(
        fast.call(dealer.underlying, 2**64 - 1, 3, 0, b"m", b"x")))
    t.start()
    got_ident, frame = router.recv_multipart()
    assert frame == doc_frame(1, 2, b"m", b"x")  # (2**64 - 1 + 3) mod 2**64
    router.send_multipart([got_ident, doc_frame(2, 2, b"", b"y")])
    t.join(5)
    assert result == [b"y"]


@needs_fast
def test_large_frames_both_ways(pair):
    router, dealer, ident = pair
    big = os.urandom(1 << 20)
    assert fast.send_request(dealer.underlying, 1, 0, b"big", big) == 0
    reason, _, cid, _, method, data = fast.recv_request(router.underlying)
    assert reason is None and cid == 1 and method == b"big" and data == big
    assert fast.send_reply(router.underlying, ident, 1, 2, 0, big[::-1]) == 0
    assert fast.recv_reply(dealer.underlying, 1) == big[::-1]


@needs_fast
def test_other_replies_come_back_whole_for_the_caller(pair):
    router, dealer, ident = pair
    late = doc_frame(2, 6, b"", b"old")
    packed = doc_frame(2, 7, b"", msgpack.packb([1, 2]), flags=1)
    error = doc_frame(3, 7, b"", msgpack.packb({"type": "E"}), flags=1)
    for frame in (late, packed, error, b"short"):
        router.send_multipart([ident, frame])
        got = fast.recv_reply(dealer.underlying, 7)
        assert type(got) is bytearray and bytes(got) == frame


@needs_fast
@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"\x01\x01", "short"),
        (doc_frame(1, 1, b"m", b"")[:11], "short"),
        (b"\x02" + doc_frame(1, 1, b"m", b"")[1:], "version"),
        (doc_frame(1, 1, b"m", b"", flags=4), "flags"),
        (doc_frame(2, 1, b"m", b""), "kind"),
        (doc_frame(1, 1, b"", b"x"), "method"),
        (doc_frame(1, 1, b"method", b"")[:15], "method"),
    ],
)
def test_malformed_requests_are_judged_like_the_doc_says(pair, frame, reason):
    router, dealer, ident = pair
    dealer.send(frame)
    got = fast.recv_request(router.underlying)
    assert got == (reason, ident, 0, 0, None, frame)


@needs_fast
def test_multipart_request_leaves_the_rest_unread(pair):
    router, dealer, ident = pair
    first = doc_frame(1, 1, b"m", b"a")
    dealer.send_multipart([first, b"second", b"third"])
    assert fast.recv_request(router.underlying) == ("multipart", ident, 0, 0, None, first)
    assert router.recv() == b"second"
    assert router.getsockopt(zmq.RCVMORE)
    assert router.recv() == b"third"
    assert not router.getsockopt(zmq.RCVMORE)
    # the socket is in step again: the next request parses
    dealer.send(first)
    assert fast.recv_request(router.underlying)[0] is None


@needs_fast
def test_receive_timeout_returns_none_within_bounds(pair):
    router, dealer, _ = pair
    for sock, fn in ((dealer, lambda a: fast.recv_reply(a, 1)), (router, fast.recv_request)):
        sock.setsockopt(zmq.RCVTIMEO, 100)
        t0 = time.monotonic()
        assert fn(sock.underlying) is None
        assert 0.09 <= time.monotonic() - t0 < 1.5


@needs_fast
def test_unroutable_reply_returns_ehostunreach(pair):
    router, _, _ = pair
    assert fast.send_reply(router.underlying, b"\x00nobody", 1, 2, 0, b"x") == zmq.EHOSTUNREACH


@needs_fast
def test_send_would_block_returns_eagain(tmp_path):
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.IMMEDIATE, 1)  # no connection: nothing may be queued
    d.connect(f"ipc://{tmp_path}/nobody-here.ipc")
    try:
        assert fast.send_request(d.underlying, 1, 0, b"m", b"") == zmq.EAGAIN
        assert fast.call(d.underlying, 1, 1, 0, b"m", b"") == zmq.EAGAIN
        assert fast.send_frame(d.underlying, b"x") == zmq.EAGAIN
    finally:
        d.close(0)
        ctx.term()


@needs_fast
def test_closed_socket_and_terminated_context_raise_closed_error():
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.close(0)
    assert d.underlying == 0  # what pyzmq reports for a closed socket
    for call in (lambda: fast.recv_reply(d.underlying, 1),
                 lambda: fast.send_request(d.underlying, 1, 0, b"m", b""),
                 lambda: fast.recv_request(d.underlying)):
        with pytest.raises(pybus.ClosedError):
            call()
    # a blocking receive whose context is terminated from another thread: ETERM
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.setsockopt(zmq.RCVTIMEO, 10_000)
    r.bind(f"inproc://zf-term-{uuid.uuid4().hex}")
    term = threading.Thread(target=ctx.term)
    t0 = time.monotonic()
    term.start()
    with pytest.raises(pybus.ClosedError) as info:
        fast.recv_request(r.underlying)
    assert time.monotonic() - t0 < 5
    assert isinstance(info.value.__cause__, zmq.ZMQError)
    assert info.value.__cause__.errno == zmq.ETERM
    r.close(0)
    term.join(5)
    assert not term.is_alive()


@needs_fast
def test_bad_method_length_is_refused():
    with pytest.raises(ValueError, match="1-255"):
        fast.send_request(1, 1, 0, b"", b"")  # checked before any I/O on the address


@needs_fast
def test_signal_handler_runs_during_a_wait_and_the_request_still_completes(tmp_path):
    """EINTR: a non-raising handler runs, the client re-waits for the rest of its timeout."""
    ep = f"ipc://{tmp_path}/sig.ipc"
    fired = []
    old = signal.signal(signal.SIGUSR1, lambda *_: fired.append(time.monotonic()))
    try:
        with pybus.Server(ep) as srv:
            started = threading.Event()

            @srv.handler("slow")
            def slow(p):
                started.set()
                time.sleep(0.4)
                return p

            timer = threading.Thread(
                target=lambda: started.wait(5) and os.kill(os.getpid(), signal.SIGUSR1))
            timer.start()
            with pybus.Client(ep, timeout_s=5.0) as c:
                assert c.io_path == "libzmq", "the client should be on the fast path"
                assert c.request("slow", b"z") == b"z"
                assert c.stats()["timeouts"] == 0
            timer.join(5)
        assert len(fired) == 1
    finally:
        signal.signal(signal.SIGUSR1, old)


@needs_fast
def test_ctrl_c_interrupts_a_blocking_wait(pair):
    _, dealer, _ = pair
    dealer.setsockopt(zmq.RCVTIMEO, 10_000)
    # Python's own SIGINT handler, also when this run was started in the background (a shell
    # starts background jobs with SIGINT ignored, and Python then leaves it ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            fast.recv_reply(dealer.underlying, 1)
        assert time.monotonic() - t0 < 5
    finally:
        timer.join()
        signal.signal(signal.SIGINT, previous)


# -- pybus.rpc on both paths ---------------------------------------------------------------
@pytest.fixture(params=["fast", "pyzmq"])
def path(request, monkeypatch):
    if request.param == "fast" and not fast.AVAILABLE:
        pytest.skip(f"fast path unavailable: {fast.UNAVAILABLE_REASON}")
    monkeypatch.setattr(_sockets, "FASTPATH", request.param == "fast")
    return request.param


def _scenario(ep: str) -> dict:
    """The same RPC traffic, observed through everything a user can see."""
    out: dict = {}
    with pybus.Server(ep) as srv:
        srv.add_handler("echo", lambda p: p)
        srv.add_handler("boom", lambda p: 1 / 0)
        with pybus.Client(ep, timeout_s=2.0) as c:
            out["fast_client"] = c.io_path == "libzmq"
            out["bytes"] = c.request("echo", b"abc")
            out["empty"] = c.request("echo", b"")
            out["obj"] = c.request("echo", {"k": [1, 2.5, None, "s"]})
            out["big"] = c.request("echo", b"x" * (1 << 20)) == b"x" * (1 << 20)
            with pytest.raises(pybus.RemoteError) as e1:
                c.request("boom", 1)
            out["boom"] = (e1.value.remote_type, e1.value.remote_code)
            with pytest.raises(pybus.RemoteError) as e2:
                c.request("nope", b"")
            out["nope"] = (e2.value.remote_type, e2.value.remote_code)
            out["client_stats"] = c.stats()
        # malformed frames from a raw DEALER, then a stop
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.setsockopt(zmq.RCVTIMEO, 2000)
        raw.connect(ep)
        for frame in ([b"x"], [b"\x09" + b"\x00" * 15], [doc_frame(1, 1, b"echo", b"")] * 2):
            raw.send_multipart(frame)
        raw.send(doc_frame(1, 99, b"echo", b"after"))
        assert raw.recv() == doc_frame(2, 99, b"", b"after")
        raw.close(0)
    # read after stop(): the server counts a reply just after sending it, so a client can
    # see the reply before the counter moves
    out["server_stats"] = srv.stats()
    return out


def test_rpc_gives_identical_results_on_both_paths(tmp_path, path):
    out = _scenario(f"ipc://{tmp_path}/both.ipc")
    assert out["fast_client"] == (path == "fast")
    assert out["bytes"] == b"abc" and out["empty"] == b"" and out["big"]
    assert out["obj"] == {"k": [1, 2.5, None, "s"]}
    assert out["boom"] == ("ZeroDivisionError", int(pybus.ErrorCode.UNKNOWN))
    assert out["nope"] == ("UnknownMethodError", int(pybus.ErrorCode.UNKNOWN_METHOD))
    counters = {k: v for k, v in out["client_stats"].items() if k not in ("peer_events", "peers")}
    assert counters == {
        "requests": 6, "replies": 4, "remote_errors": 2, "timeouts": 0, "retries": 0,
        "reconnects": 0, "late_replies": 0, "decode_errors": 0,
    }
    s = out["server_stats"]
    assert (s["requests"], s["replies"], s["handler_errors"], s["unknown_method"]) == (7, 7, 1, 1)
    assert s["decode_error_reasons"] == {"short": 1, "version": 1, "multipart": 1}


def test_late_reply_is_counted_on_both_paths(tmp_path, path):
    """A reply to an abandoned attempt arrives during the next one: dropped, counted."""
    ep = f"ipc://{tmp_path}/late.ipc"
    gate = threading.Event()
    with pybus.Server(ep, workers=2) as srv:
        @srv.handler("slow")
        def slow(p):
            gate.wait(5)
            return p

        srv.add_handler("echo", lambda p: p)
        with pybus.Client(ep, timeout_s=0.2) as c:
            with pytest.raises(pybus.TimeoutError):
                c.request("slow", b"first")
            gate.set()
            # the late reply leaves the server first: one pipe keeps the order of its messages
            H.wait_until(lambda: srv.stats()["replies"] == 1, 5, "the late reply sent")
            assert c.request("echo", b"second", timeout=2.0) == b"second"
            st = c.stats()
    assert st["timeouts"] == 1 and st["late_replies"] == 1 and st["replies"] == 1


def test_client_timeout_is_bounded_on_both_paths(tmp_path, path):
    ep = f"ipc://{tmp_path}/mute.ipc"
    ctx = zmq.Context.instance()
    mute = ctx.socket(zmq.ROUTER)  # accepts the connection, never answers
    mute.setsockopt(zmq.LINGER, 0)
    mute.bind(ep)
    try:
        with pybus.Client(ep, timeout_s=0.3) as c:
            t0 = time.monotonic()
            with pytest.raises(pybus.TimeoutError, match="no reply to 'x'"):
                c.request("x", b"")
            assert 0.29 <= time.monotonic() - t0 < 2.0
            assert c.stats()["timeouts"] == 1
    finally:
        mute.close(0)


def test_env_var_selects_the_fallback():
    """PYBUS_NO_ZMQ_FASTPATH=1: the fast path reports itself off, refuses to run, and sockets
    get pyzmq's calls (fast_address 0). The RPC, work-queue and publish/subscribe test files
    run on that path in .ci/run (a step of their own, not a pytest inside this test)."""
    probe_code = (
        "import zmq\n"
        "from pybus._native import _zmqfast as f; from pybus.transport import sockets as _sockets\n"
        "print('probe', f.AVAILABLE, _sockets.FASTPATH, f.UNAVAILABLE_REASON or '-')\n"
        "s = zmq.Context.instance().socket(zmq.DEALER)\n"
        "print('probe fast_address', bool(_sockets.fast_address(s)))\n"
        "s.close(0)\n"
        "if not f.AVAILABLE:  # refuses before touching the (bogus) socket address\n"
        "    try:\n        f.recv_reply(1, 1)\n"
        "    except Exception as e:\n        print('probe', type(e).__name__)"
    )

    def probe(**env_set: str) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "PYBUS_NO_ZMQ_FASTPATH"}
        env.update(env_set)
        r = subprocess.run([sys.executable, "-c", probe_code], env=env, capture_output=True,
                           text=True, timeout=60, cwd="/")
        assert r.returncode == 0, r.stderr
        # only the probe's lines: an editable install may report a rebuild on import
        return [ln[6:] for ln in r.stdout.splitlines() if ln.startswith("probe ")]

    assert probe(PYBUS_NO_ZMQ_FASTPATH="1") == [
        "False False disabled by PYBUS_NO_ZMQ_FASTPATH", "fast_address False", "BusError"]
    if fast.AVAILABLE:  # the control: without the variable (or with 0) the same probe is fast
        for env_set in ({}, {"PYBUS_NO_ZMQ_FASTPATH": "0"}):
            assert probe(**env_set) == ["True True -", "fast_address True"], env_set


def test_publisher_drains_straight_into_zeromq_on_the_fast_path(tmp_path, path):
    """With the fast path a Publisher's frames go from the ring into ZeroMQ messages
    (Batcher.drain_to); a plain pyzmq SUB decodes them exactly as on pyzmq's path, and the
    publisher's counters agree."""
    ep = f"ipc://{tmp_path}/drain.ipc"
    pub = pybus.Publisher(ep, sndhwm=100_000)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    sub.setsockopt(zmq.SUBSCRIBE, b"t.")
    sub.setsockopt(zmq.SUBSCRIBE, pybus.pubsub._base.HELLO_PREFIX + b"0123456789abcdef")
    sub.connect(ep)
    try:
        assert (pub.io_path == "libzmq") == (path == "fast")
        assert pub.wait_for_subscribers(1, timeout=5) == 1
        n = 5000
        for i in range(n):
            pub.publish("t.a" if i % 3 else "t.b", i.to_bytes(4, "little") * 4)
        pub.flush()
        got: dict[str, list[int]] = {"t.a": [], "t.b": []}
        while sum(map(len, got.values())) < n:
            topic, frame = sub.recv_multipart()
            if topic.startswith(pybus.pubsub._base.HELLO_PREFIX):
                continue  # the join snapshot for our hello (docs/wire.md)
            for m in pybus.wire.decode_batch(topic.decode(), frame):
                assert m.payload == m.payload[:4] * 4
                got[m.topic].append(int.from_bytes(m.payload[:4], "little"))
        assert got["t.a"] == [i for i in range(n) if i % 3]
        assert got["t.b"] == [i for i in range(n) if not i % 3]
        st = pub.stats()
        assert st["published"] == n and st["batches"] >= 2
        # per-topic counts come from each frame's header as it was written into ZeroMQ's message
        assert pub._published_by_topic == {b"t.a": len(got["t.a"]), b"t.b": len(got["t.b"])}
    finally:
        sub.close(0)
        pub.close(linger_ms=0)


def test_threads_sharing_one_client_get_their_own_replies(tmp_path, path):
    """The client's lock serialises requests: no reply reaches another thread's call."""
    ep = f"ipc://{tmp_path}/threads.ipc"
    errors: list = []
    with pybus.Server(ep) as srv:
        srv.add_handler("echo", lambda p: p)
        with pybus.Client(ep, timeout_s=5.0) as c:
            def run(k: int) -> None:
                try:
                    for i in range(150):
                        want = f"{k}:{i}".encode()
                        got = c.request("echo", want)
                        if got != want:
                            errors.append((want, got))
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)  # generous: under a full suite's load a round trip can take ms
            assert not any(t.is_alive() for t in threads), "a requesting thread hung"
            st = c.stats()
    assert errors == []
    assert st["requests"] == st["replies"] == 600
    assert st["late_replies"] == st["timeouts"] == 0


def test_changing_the_client_timeout_takes_effect_on_the_next_request(tmp_path, path):
    ep = f"ipc://{tmp_path}/tmo.ipc"
    release = threading.Event()
    with pybus.Server(ep, workers=1) as srv:
        srv.add_handler("echo", lambda p: p)
        srv.add_handler("stall", lambda p: release.wait(5) and p)
        with pybus.Client(ep, timeout_s=5.0) as c:
            for _ in range(3):  # the fast path is set up for 5 s by now
                assert c.request("echo", b"a") == b"a"
            c.timeout = 0.2
            t0 = time.monotonic()
            with pytest.raises(pybus.TimeoutError):
                c.request("stall", b"b")
            assert time.monotonic() - t0 < 2.0
            release.set()
            H.wait_until(lambda: srv.stats()["replies"] == 4, 5, "the late reply sent")
            c.timeout = 5.0
            assert c.request("echo", b"c") == b"c"
            st = c.stats()
    assert st["timeouts"] == 1 and st["late_replies"] == 1


def test_closed_client_refuses_on_both_paths(tmp_path, path):
    ep = f"ipc://{tmp_path}/closed.ipc"
    with pybus.Server(ep) as srv:
        srv.add_handler("echo", lambda p: p)
        c = pybus.Client(ep, timeout_s=2.0)
        assert c.request("echo", b"x") == b"x"
        assert c.request("echo", b"y") == b"y"
        c.close()
        c.close()
        with pytest.raises(pybus.ClosedError):
            c.request("echo", b"z")


# -- the work queue on both paths ----------------------------------------------------------
def test_worker_judges_each_part_of_a_multipart_message(path):
    """A fake queue (from the wire doc) sends [HEARTBEAT][junk][DISPATCH] as ONE message: the
    junk part is counted, the others are handled as if they had come alone."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.rcvtimeo = 5000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    seen: list = []
    w = pybus.Worker(f"tcp://127.0.0.1:{port}", lambda m: seen.append(m.seq)).start()
    try:
        while True:
            ident, frame = router.recv_multipart()
            if H.command(frame) == "H":
                break
        assert (w.io_path == "libzmq") == (path == "fast")
        router.send_multipart([ident, bytes([1, ord("W")]) + b"\x32\0\0\0\x03\0\0\0\x10\0\0\0"])
        assert w.wait_ready(5)
        router.send_multipart([ident, H.heartbeat(), b"\x07junk",
                               H.dispatch([(41, 1, "m.p", b"x", 0, None, 0)])])
        while True:
            _, frame = router.recv_multipart()
            if H.command(frame) == "A":
                break
        assert H.decode_ack(frame) == ([41], [])
        assert seen == [41]
        assert w.stats()["decode_errors"] == 1
    finally:
        w.stop()
        router.close()
        ctx.term()


def test_queue_counts_a_message_of_the_wrong_shape_and_keeps_serving(path):
    seen: list = []
    with pybus.WorkQueue("tcp://127.0.0.1:0") as q:
        assert q.io_path == ("libzmq" if path == "fast" else "pyzmq")
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(q.endpoint)
        raw.send_multipart([H.hello(4), b"extra"])  # [identity][2 parts]: 3 frames
        with pybus.Worker(q.endpoint, lambda m: seen.append(m.payload)):
            q.put("s.t", b"one")
            assert q.join(10)
            H.wait_until(lambda: q.stats()["decode_errors"] == 1, 5, "the decode error")
        raw.close(0)
    assert seen == [b"one"]


@needs_fast
def test_recv_pubsub_reads_topic_and_frame_and_counts_malformed_parts():
    """recv_pubsub: [topic][frame] with the frame left in libzmq's buffer (decoded through the
    buffer protocol, also a frame small enough for ZeroMQ to keep inside its message struct);
    malformed messages come back with their part count, every part consumed; None when
    nothing is ready, and after RCVTIMEO when waiting."""
    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    for s in (pub, sub):
        s.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    ep = f"inproc://recv-pubsub-{os.getpid()}-{time.monotonic_ns()}"
    sub.bind(ep)
    pub.connect(ep)
    try:
        b = pybus.wire.Batcher()
        for i in range(5):
            b.publish("a.b", bytes([i]) * 3)
        ((topic, frame),) = b.drain()
        deadline = time.monotonic() + 5
        while fast.recv_pubsub(sub.underlying) is None:  # the subscription reaches the PUB
            pub.send_multipart([b"probe", b"x"])
            assert time.monotonic() < deadline
        while fast.recv_pubsub(sub.underlying) is not None:
            pass
        pub.send_multipart([topic, frame])
        pub.send(b"lone")
        pub.send_multipart([b"x", b"y", b"z", b"w"])
        pub.send_multipart([b"t", b"tiny"])
        got = []
        while len(got) < 4:
            r = fast.recv_pubsub(sub.underlying, False)
            if r is not None:
                got.append(r)
            assert time.monotonic() < deadline
        t, zf, parts = got[0]
        assert (t, parts, len(zf)) == (b"a.b", 2, len(frame))
        assert bytes(memoryview(zf)) == frame == zf.bytes
        assert [m.payload for m in pybus.wire.decode_batch("a.b", zf)] == [bytes([i]) * 3
                                                                       for i in range(5)]
        assert pybus.wire.frame_info(zf) == pybus.wire.frame_info(frame)
        assert got[1] == (b"lone", None, 1)
        assert got[2] == (b"x", None, 4)
        assert got[3][0] == b"t" and got[3][1].bytes == b"tiny" and got[3][2] == 2
        assert fast.recv_pubsub(sub.underlying) is None
        sub.setsockopt(zmq.RCVTIMEO, 50)
        t0 = time.monotonic()
        assert fast.recv_pubsub(sub.underlying, False) is None
        assert 0.03 < time.monotonic() - t0 < 5
    finally:
        pub.close(0)
        sub.close(0)


def _scripted_subscriber_run(compiled: bool) -> tuple[list[tuple[str, int, bytes]], dict]:
    """A plain XPUB sends a scripted mix to a pybus Subscriber: stream continuations (the
    channel's recv_batches case), new streams, a gap, a position frame, a malformed frame, a
    filtered topic and a three-part message (all handed back to the frame-by-frame loop)."""
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.XPUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = pybus.Subscriber(f"tcp://127.0.0.1:{port}", topics=["s.*"], rcvhwm=100_000)
    if not compiled:
        from pybus.transport.channel import SubscriberChannel

        sub._chan = SubscriberChannel(sub._sock)  # the pyzmq path: the reference
    assert sub.io_path == ("libzmq" if compiled else "pyzmq")
    try:
        while not raw.poll(5000) or not raw.recv().startswith(b"\x01\xffpybus-hello:"):
            pass
        pid = 0x5151
        now = time.time_ns()

        def frame(first: int, *payloads: bytes) -> bytes:
            return pybus.wire.encode_frame(pid, first, [(p, None, 0, now) for p in payloads])

        position = struct.pack("<2sBBIQQq", b"PB", 1, 1, 0, pid, 9, now)
        script: list[list[bytes]] = [
            [b"s.a", frame(1, b"a1", b"a2")],
            [b"s.b", frame(1, b"b1")],
            [b"s.a", frame(3, b"a3")],  # continuations from here on
            [b"s.a", frame(4, b"a4", b"a5")],
            [b"s.b", frame(2, b"b2")],
            [b"s.b", frame(5, b"b5")],  # gap: 3 and 4 lost
            [b"s.b", position],  # 5 came, 6-8 lost
            [b"s.a", b"garbage"],
            [b"x.y", frame(1, b"not subscribed: ZeroMQ filters it out")],
            [b"s.a", frame(6, b"a6"), b"extra part"],  # three parts: malformed
            [b"s.a", frame(6, b"a6")],
            [b"s.c", frame(1, b"c1")],
        ] + [[b"s.c", frame(i, b"c%d" % i)] for i in range(2, 200)]
        for parts in script:
            raw.send_multipart(parts)
        got: list[pybus.Message] = []
        deadline = time.monotonic() + 10
        while len(got) < 208 and time.monotonic() < deadline:
            got += sub.recv_batch(timeout=0.2)
        while sub.stats()["positions"] < 1 and time.monotonic() < deadline:
            got += sub.recv_batch(timeout=0.05)
        st = sub.stats()
        for volatile in ("peer_events", "slow_consumer_events"):
            st.pop(volatile, None)
        return [(m.topic, m.seq, m.payload) for m in got], st
    finally:
        sub.close()
        raw.close(linger=0)


def test_compiled_receive_accounts_exactly_like_the_pyzmq_path():
    if not fast.AVAILABLE:
        pytest.skip(fast.UNAVAILABLE_REASON)
    ref_msgs, ref = _scripted_subscriber_run(compiled=False)
    msgs, st = _scripted_subscriber_run(compiled=True)
    assert msgs == ref_msgs
    assert len(msgs) == 208 and msgs[:4] == [
        ("s.a", 1, b"a1"), ("s.a", 2, b"a2"), ("s.b", 1, b"b1"), ("s.a", 3, b"a3")]
    assert st == ref
    assert st["received_by_topic"] == {"s.a": 6, "s.b": 3, "s.c": 199}
    assert st["lost_by_topic"] == {"s.b": 5} and st["gaps"] == 2
    assert st["decode_errors"] == 2 and st["positions"] == 1
    assert st["batches"] == 206  # the data frames: 4 of s.a, 3 of s.b, 199 of s.c
