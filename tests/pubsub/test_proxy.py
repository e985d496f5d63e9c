"""pybus.Proxy: ZeroMQ's steerable XSUB/XPUB proxy between pybus publishers and subscribers."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import zmq

import pybus
from pybus import Curve

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
from waiting import drain as _drain  # noqa: E402
from waiting import drain_until as _drain_until  # noqa: E402
from waiting import read_through_marker as _read_through_marker  # noqa: E402
from waiting import until as _until  # noqa: E402

pytestmark = pytest.mark.timeout(60)
BIG = 100_000
#: Bounds of the waits for an event: generous, so that only a missing event reaches them.
WAIT = 20.0


@pytest.fixture(params=[False, True], ids=["zmq-loop", "checked-loop"])
def proxy(request: pytest.FixtureRequest) -> Iterator[pybus.Proxy]:
    # every test on this fixture runs on ZeroMQ's C loop and on pybus's checked Python loop
    # (the one permissions need): both must keep the same semantics
    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", sndhwm=BIG, rcvhwm=BIG,
                     registry=False, checked=request.param)
    try:
        assert px.stats()["checked"] is request.param
        yield px
    finally:
        px.close()


def test_many_publishers_to_many_subscribers_with_topics_and_gapless_sequences(
    proxy: pybus.Proxy,
) -> None:
    pubs = [pybus.Publisher(proxy.frontend, connect=True, sndhwm=BIG) for _ in range(2)]
    orders = pybus.Subscriber(proxy.backend, topics=["orders.#"], rcvhwm=BIG)
    every = pybus.Subscriber(proxy.backend, topics=["#"], rcvhwm=BIG)
    try:
        for p in pubs:  # hello subscriptions cross the proxy
            assert p.wait_for_subscribers(2, timeout=WAIT) == 2
        for i in range(500):
            for p in pubs:
                p.publish("orders.new", i)
                p.publish("audit.x", i)
        for p in pubs:
            p.flush()
        got_o = _drain(orders, 1000, WAIT)
        got_e = _drain(every, 2000, WAIT)
        assert len(got_o) == 1000 and {m.topic for m in got_o} == {"orders.new"}
        assert len(got_e) == 2000
        for p in pubs:  # per (publisher, topic): in order, consecutive sequence numbers
            seqs = [m.seq for m in got_e if m.publisher_id == p.publisher_id and
                    m.topic == "audit.x"]
            assert seqs == list(range(seqs[0], seqs[0] + 500))
        assert orders.stats()["lost"] == every.stats()["lost"] == 0
        st = proxy.stats()
        # ZeroMQ counts message parts: every pybus frame is two (topic + batch frame)
        assert st["frontend"]["messages_in"] == st["backend"]["messages_out"]
        assert st["frontend"]["messages_in"] % 2 == 0 and st["frontend"]["messages_in"] >= 4
        assert st["frontend"]["bytes_in"] == st["backend"]["bytes_out"] > 2000 * 2
        # subscriptions went the other way (topics and hellos; deduplicated by XPUB)
        assert st["backend"]["messages_in"] == st["frontend"]["messages_out"] >= 4
        assert _until(lambda: proxy.stats()["backend"]["peers"] == 2 and
                      proxy.stats()["frontend"]["peers"] == 2, WAIT)
    finally:
        orders.close()
        every.close()
        for p in pubs:
            p.close(linger_ms=0)


def test_burst_of_10k_arrives_whole(proxy: pybus.Proxy) -> None:
    pub = pybus.Publisher(proxy.frontend, connect=True, sndhwm=BIG)
    subs = [pybus.Subscriber(proxy.backend, rcvhwm=BIG) for _ in range(2)]
    try:
        assert pub.wait_for_subscribers(2, timeout=WAIT) == 2
        for i in range(10_000):
            pub.publish("burst.t", b"%d" % i)
        pub.flush()
        for s in subs:
            got = _drain(s, 10_000, WAIT)
            assert [m.raw_payload for m in got] == [b"%d" % i for i in range(10_000)]
            assert s.stats()["lost"] == 0 and s.stats()["gaps"] == 0
    finally:
        for s in subs:
            s.close()
        pub.close(linger_ms=0)


def test_stalled_subscriber_loses_what_the_proxy_drops_and_counts_it_as_gaps() -> None:
    # What a stalled subscriber cannot take (its queues: the proxy's per-subscriber HWM, TCP
    # buffers, its own RCVHWM) XPUB drops for it alone. ZeroMQ does not report those drops to
    # the proxy; the subscriber counts them exactly, as sequence gaps.
    import threading

    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", sndhwm=200, rcvhwm=BIG,
                     registry=False)
    pub = pybus.Publisher(px.frontend, connect=True, sndhwm=BIG)
    fast = pybus.Subscriber(px.backend, rcvhwm=BIG)
    slow = pybus.Subscriber(px.backend, rcvhwm=10)
    n = 4000
    payload = b"p" * 8192  # 32 MB in all: far more than the stalled path can buffer
    got_fast: list[pybus.Message] = []

    def read_fast() -> None:
        got_fast.extend(_drain(fast, n, timeout=30))

    reader = threading.Thread(target=read_fast)
    try:
        assert pub.wait_for_subscribers(2, timeout=WAIT) == 2
        reader.start()
        for i in range(n):
            pub.publish("s.t", payload)
            if i % 8 == 7:
                pub.flush()
                time.sleep(0.0005)  # a paced producer; the fast reader keeps up
        pub.flush()
        reader.join(35)
        assert len(got_fast) == n and fast.stats()["lost"] == 0
        first, last = got_fast[0].seq, got_fast[-1].seq
        # now it reads what was left for it, then markers until the last one published has
        # arrived (its path may still be full, so a marker can be dropped too): their arrival
        # reveals the tail the stalled subscriber lost
        got_slow, markers = _read_through_marker(pub, slow, "s.t")
        assert got_slow[-1].raw_payload == b"marker-%d" % (markers - 1)
        assert len([m for m in got_slow if m.seq <= last]) < n
        seqs = [m.seq for m in got_slow]
        assert seqs == sorted(seqs) and seqs[-1] == last + markers
        st = slow.stats()
        missed = set(range(first, last + markers + 1)) - set(seqs)
        # exactly the messages it did not get, no more, no less
        assert st["lost"] == len(missed) > 0
        assert st["received"] == len(got_slow)
        assert st["received"] + st["lost"] == n + markers
        assert st["gaps"] >= 1
    finally:
        fast.close()
        slow.close()
        pub.close(linger_ms=0)
        px.close()


def test_pause_resume_terminate(proxy: pybus.Proxy) -> None:
    pub = pybus.Publisher(proxy.frontend, connect=True, sndhwm=BIG)
    sub = pybus.Subscriber(proxy.backend, rcvhwm=BIG)
    try:
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        proxy.pause()
        assert proxy.stats()["state"] == "paused"
        for i in range(100):
            pub.publish("p.t", i)
        pub.flush()
        # the elapsed time is what is tested: a paused proxy forwards nothing, however long
        # it stays paused (there is no later message to wait for: nothing passes a pause)
        assert sub.recv_batch(1000, timeout=0.3) == []
        proxy.resume()
        assert [m.payload for m in _drain(sub, 100, WAIT)] == list(range(100))
        proxy.terminate()
        assert proxy.wait(WAIT)
        with pytest.raises(pybus.ClosedError):
            proxy.pause()
    finally:
        sub.close()
        pub.close(linger_ms=0)


def test_capture_tap_sees_the_traffic(proxy: pybus.Proxy) -> None:
    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", capture="tcp://127.0.0.1:*",
                     registry=False, checked=proxy.stats()["checked"])
    tap = pub = sub = None
    try:
        tap = zmq.Context.instance().socket(zmq.SUB)
        tap.linger = 0
        tap.subscribe(b"cap.")
        tap.connect(px.capture)
        pub = pybus.Publisher(px.frontend, connect=True)
        sub = pybus.Subscriber(px.backend, topics=["cap.#"])
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        deadline = time.monotonic() + WAIT
        frames: list[list[bytes]] = []
        i = 0
        while not frames and time.monotonic() < deadline:  # the tap's join is asynchronous
            pub.publish("cap.x", i)
            pub.flush()
            i += 1
            if tap.poll(50):
                frames.append(tap.recv_multipart(zmq.NOBLOCK))
        assert frames and frames[0][0] == b"cap.x"
        pid, first, count, _ = pybus.wire.frame_info(frames[0][1])
        assert pid == pub.publisher_id and count >= 1
        got = _drain(sub, i, WAIT)
        assert [m.payload for m in got] == list(range(i))
    finally:
        for s in (tap, sub):
            if s is not None:
                s.close()
        if pub is not None:
            pub.close(linger_ms=0)
        px.close()


def test_curve_on_both_sides_with_separate_allowlists() -> None:
    srv_p, srv_s = pybus.keypair()
    pub_k, sub_k, bad_k = pybus.keypair(), pybus.keypair(), pybus.keypair()
    fsec = Curve.server(srv_s, allow=[pub_k[0]])
    bsec = Curve.server(srv_s, allow=[sub_k[0]])
    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", frontend_security=fsec,
                     backend_security=bsec, registry=False)
    pub = pybus.Publisher(px.frontend, connect=True, security=Curve.client(pub_k[1], srv_p))
    # the subscriber's key is not allowed on the frontend (and vice versa)
    rogue_pub = pybus.Publisher(px.frontend, connect=True,
                                security=Curve.client(sub_k[1], srv_p))
    sub = pybus.Subscriber(px.backend, security=Curve.client(sub_k[1], srv_p))
    rogue_sub = pybus.Subscriber(px.backend, security=Curve.client(bad_k[1], srv_p))
    plain_sub = pybus.Subscriber(px.backend)
    rogues = (rogue_pub, rogue_sub, plain_sub)

    def refused(s: pybus.Publisher | pybus.Subscriber) -> bool:
        ev = s.stats()["peer_events"]
        return any(v for k, v in ev.items() if k.startswith("handshake_failed"))

    try:
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        # the proxy refuses each rogue at the handshake, and each rogue's socket sees it
        assert _until(lambda: fsec.stats()["rejected_by_reason"]["not_allowed"] >= 1, WAIT)
        assert _until(lambda: bsec.stats()["rejected_by_reason"]["not_allowed"] >= 1, WAIT)
        assert _until(lambda: bsec.stats()["rejected_by_reason"]["handshake"] >= 1, WAIT)
        assert _until(lambda: all(refused(s) for s in rogues), WAIT)
        for p in (rogue_pub, pub):
            for i in range(100):
                p.publish("sec.t", i)
            p.flush()
        pub.publish("sec.t", "end")  # after pub's 100, on the same connection
        pub.flush()
        got = _drain_until(sub, lambda m: m.payload == "end", WAIT)
        assert [m.payload for m in got] == [*range(100), "end"]
        assert {m.publisher_id for m in got} == {pub.publisher_id}
        # no rogue ever completed a handshake: nothing can have reached or left one
        for s in rogues:
            assert s.stats()["peer_events"].get("handshake_succeeded", 0) == 0, s
        assert rogue_sub.recv_batch(1000, timeout=0) == []
        assert plain_sub.recv_batch(1000, timeout=0) == []
        auth = px.stats()["auth"]
        assert sum(a["rejected"] for a in auth) >= 3
    finally:
        for s in (sub, rogue_sub, plain_sub):
            s.close()
        for p in (pub, rogue_pub):
            p.close(linger_ms=0)
        px.close()


def test_proxy_metrics_are_exported() -> None:
    from pybus.metrics import Registry

    reg = Registry()
    px = pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", registry=reg)
    pub = pybus.Publisher(px.frontend, connect=True, registry=False)
    sub = pybus.Subscriber(px.backend, registry=False)
    try:
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        pub.publish("m.t", b"x" * 100)
        pub.flush()
        assert len(_drain(sub, 1, WAIT)) == 1
        from prometheus_client.parser import text_string_to_metric_families

        text = reg.render().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.labels["side"], s.labels["direction"]): s.value
                   for s in fams["pybus_proxy_messages"].samples}
        st = px.stats()
        assert samples[("frontend", "in")] >= 2
        assert samples[("frontend", "in")] <= st["frontend"]["messages_in"]
        assert ("backend", "out") in samples
    finally:
        sub.close()
        pub.close(linger_ms=0)
        px.close()


def test_bad_arguments() -> None:
    with pytest.raises(pybus.ValidationError, match="frontend"):
        pybus.Proxy("nope", "tcp://127.0.0.1:*")
    p, s = pybus.keypair()
    with pytest.raises(pybus.ValidationError, match="Curve.server"):
        pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", security=Curve.client(s, p))
    with pytest.raises(pybus.ValidationError, match="checked=False with per-topic permissions"):
        pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", checked=False,
                    security=Curve.server(s, allow="any", permissions={p: {"subscribe": ["#"]}}))
    with pytest.raises(pybus.ValidationError, match="sndhwm"):
        pybus.Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", sndhwm=0)


def _read_until(stream: IO[str], pattern: str, timeout: float) -> tuple[re.Match[str] | None, str]:
    """Read a child's pipe until ``pattern`` matches what was read (a build step may print
    lines first), waiting at most ``timeout`` seconds in all: (the match or None, the text).
    Reads the file descriptor itself, so nothing waits unseen in a Python buffer."""
    fd = stream.fileno()
    text = ""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, text)
        remaining = deadline - time.monotonic()
        if m or remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return m, text
        chunk = os.read(fd, 65536)
        if not chunk:  # the child closed its stderr (it exited)
            return None, text
        text += chunk.decode(errors="replace")


def _cli_proxy(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """``pybus proxy`` binding ports the kernel picks, with ``args``; run away from the source
    tree, so the installed (compiled) pybus loads."""
    return subprocess.Popen(
        [sys.executable, "-c", "from pybus.cli import main; raise SystemExit(main())", "proxy",
         "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _proxy_endpoints(proc: subprocess.Popen[str]) -> tuple[str, str, str]:
    """(frontend, backend, the text read): the proxy says where it bound as it starts."""
    m, text = _read_until(proc.stderr, r"publishers -> (\S+)\s+subscribers -> (\S+)\s",
                          WAIT)  # type: ignore[arg-type]
    assert m, f"no endpoints in the proxy's start-up line: {text!r}"
    return m.group(1), m.group(2), text


def test_cli_proxy_runs_and_forwards(tmp_path: Path) -> None:
    # the proxy binds ports the kernel picks and says which on stderr as it starts
    proc = _cli_proxy(tmp_path, "--duration", "50", "--json")
    pub = sub = None
    first = ""
    try:
        fe, be, first = _proxy_endpoints(proc)
        pub = pybus.Publisher(fe, connect=True)
        sub = pybus.Subscriber(be)
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        pub.publish("cli.t", 1)
        pub.flush()
        assert _drain(sub, 1, WAIT)[0].payload == 1
    finally:
        if sub is not None:
            sub.close()
        if pub is not None:
            pub.close(linger_ms=0)
        proc.terminate()
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert "publishers ->" in first
    import json

    assert json.loads(out.strip().splitlines()[-1])["frontend"]["messages_in"] >= 2


def test_cli_proxy_on_sigterm_hands_subscribers_all_it_holds(tmp_path: Path) -> None:
    """SIGTERM while the proxy holds a burst its subscriber has not taken yet (the subscriber
    read nothing so far and its queue is one frame, so most of the burst waits in the proxy):
    the proxy goes on handing it out while the subscriber reads, and exits 0 within the drain
    bound plus 1 s; the subscriber gets every message, none lost. (With --drain-timeout 0 the
    same run delivers about a tenth.)"""
    n, size, drain_s = 150, 200_000, 10.0
    import json

    proc = _cli_proxy(tmp_path, "--sndhwm", str(BIG), "--rcvhwm", str(BIG),
                      "--stats-interval", "0.05", "--drain-timeout", str(drain_s),
                      "--duration", "120", "--json")
    pub = sub = None
    try:
        fe, be, _ = _proxy_endpoints(proc)
        pub = pybus.Publisher(fe, connect=True)
        sub = pybus.Subscriber(be, topics=["burst.#"], rcvhwm=1)
        assert pub.wait_for_subscribers(1, timeout=WAIT) == 1
        for i in range(n):
            pub.publish("burst.t", i.to_bytes(4, "little") + b"x" * size)
            pub.flush(timeout=WAIT)
        # the proxy's own statistics say every publication reached it (two parts each)
        text, deadline, took_in = "", time.monotonic() + WAIT, 0
        while took_in < 2 * n and time.monotonic() < deadline:
            got, text = _read_until(proc.stdout, r"\n", WAIT)  # type: ignore[arg-type]
            lines = [ln for ln in text.splitlines() if ln.startswith("{")]
            if lines:
                took_in = json.loads(lines[-1])["frontend"]["messages_in"]
        assert took_in >= 2 * n
        t0 = time.monotonic()
        proc.terminate()
        seqs = [int.from_bytes(msg.payload[:4], "little") for msg in _drain(sub, n, WAIT)]
        lost = sub.stats()["lost"]
        sub.close()  # its last subscriber gone, the proxy ends its drain
        out, err = proc.communicate(timeout=drain_s + 10)
        assert time.monotonic() - t0 <= drain_s + 1.0
        assert proc.returncode == 0, err
        assert seqs == list(range(n))
        assert lost == 0
        final = json.loads(out.strip().splitlines()[-1])
        assert final["frontend"]["messages_in"] >= 2 * n
    finally:
        if sub is not None:
            sub.close()
        if pub is not None:
            pub.close(linger_ms=0)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT)
