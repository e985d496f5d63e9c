"""Programs run on the simulated hosts of tests/transport/test_multihost.py (``ip netns exec``).

Usage: python multihost_procs.py ROLE JSON_ARGS. Each prints JSON lines on stdout: an
``{"event": "ready"}`` line once it is set up, and a final ``{"event": "result", ...}`` line.
Every loop is bounded in count and time; SIGTERM ends a role early (with its result).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import threading
import time
from typing import Any

import psutil


def emit(**kw: Any) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def rss() -> int:
    return psutil.Process().memory_info().rss


def _stopper() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    return stop


def _liveness() -> Any:
    import pybus

    # what the test's bar needs: a dead link noticed within ~1 s, a returning one used again
    # within ~1 s (connection attempts abandoned after 500 ms, retried at most 500 ms apart)
    # (stream receivers use TCP keepalive instead of heartbeats: probes after 1 s of silence)
    return pybus.Liveness(heartbeat_ivl_ms=300, heartbeat_timeout_ms=1000,
                          heartbeat_ttl_ms=1000, reconnect_ivl_ms=50, reconnect_ivl_max_ms=500,
                          connect_timeout_ms=500, tcp_keepalive_idle_s=1,
                          tcp_keepalive_intvl_s=1, tcp_keepalive_cnt=2)


def role_proxy(a: dict[str, Any]) -> None:
    import pybus

    stop = _stopper()
    px = pybus.Proxy(a["frontend"], a["backend"], liveness=_liveness(), sndhwm=a.get("hwm", 1000),
                     rcvhwm=a.get("hwm", 1000), registry=False)
    emit(event="ready", frontend=px.frontend, backend=px.backend)
    deadline = time.monotonic() + a.get("max_s", 120)
    while not stop.is_set() and time.monotonic() < deadline:
        stop.wait(0.2)
    st = px.stats()
    px.close()
    emit(event="result", stats={k: st[k] for k in ("frontend", "backend")}, rss=rss())


def role_pub(a: dict[str, Any]) -> None:
    """Publish seq 1..N on one topic at a paced rate, after the subscribers are there."""
    import pybus

    stop = _stopper()
    pub = pybus.Publisher(a["connect"], connect=True, liveness=_liveness(),
                          sndhwm=a.get("sndhwm", 1000), registry=False)
    emit(event="ready", publisher_id=pub.publisher_id)
    pub.wait_for_subscribers(a["subscribers"], timeout=30)
    rate, duration = a["rate"], a["duration_s"]
    n_total = int(rate * duration)
    t0 = time.monotonic()
    emit(event="started", t=time.time())
    sent = 0
    rss_start = rss()
    publish = pub.publish
    pad = b"x" * a.get("pad", 0)
    chunk = max(1, rate // 1000)  # publish in 1 ms chunks
    while sent < n_total and not stop.is_set():
        due = int((time.monotonic() - t0) * rate)
        k = min(max(0, due - sent), n_total - sent, 10 * chunk)
        if pad:
            for _ in range(k):
                sent += 1
                publish("mh.t", [sent, pad])
        else:
            for _ in range(k):
                sent += 1
                publish("mh.t", sent)
        if k == 0:
            time.sleep(0.0005)
        if time.monotonic() - t0 > duration * 3 + 10:
            break
    pub.flush()
    elapsed = time.monotonic() - t0
    emit(event="published", n=sent, elapsed_s=elapsed, t=time.time())
    stop.wait(a.get("linger_s", 2.0))  # let the tail drain before closing
    pub.close(linger_ms=1000)
    emit(event="result", n=sent, elapsed_s=elapsed, rss=rss(), rss_growth=rss() - rss_start)


def role_sub(a: dict[str, Any]) -> None:
    """Receive until seq N (told on stdin) or the time limit; report gaps exactly."""
    import pybus

    stop = _stopper()
    # per gap: [arrival time, expected, got, lost, publish time of message `got`]; the publish
    # time says when the stream resumed without the reader's own lag (a starved test process
    # reads late), filled in when message `got` is read
    gap_times: list[list[Any]] = []
    ends: dict[int, list[Any]] = {}

    def on_gap(topic: str, pid: int, expected: int, got: int, lost: int) -> None:
        gap = [time.time(), expected, got, lost, None]
        gap_times.append(gap)
        ends[got] = gap

    sub = pybus.Subscriber(a["connect"], topics=["mh.#"], liveness=_liveness(), on_gap=on_gap,
                           rcvhwm=a.get("rcvhwm", 1000), registry=False)
    emit(event="ready", id=sub.id.decode())
    seen = bytearray(a["max_n"] + 2)
    received = 0
    last = 0
    dups = 0
    last_wall = 0.0
    rss_start = 0
    deadline = time.monotonic() + a["max_s"]
    target = a.get("expect_n")
    while not stop.is_set() and time.monotonic() < deadline:
        batch = sub.recv_batch(50_000, timeout=0.1)
        if batch:
            last_wall = time.time()
            if not rss_start:
                rss_start = rss()
        for m in batch:
            if ends and m.seq in ends:
                ends.pop(m.seq)[4] = m.timestamp_ns / 1e9
            s = m.payload
            if s.__class__ is list:
                s = s[0]
            if 0 < s < len(seen):
                if seen[s]:
                    dups += 1
                seen[s] = 1
            received += 1
            last = max(last, s)
        # done at the last message, or once every message is accounted for: the last ones
        # may be lost (a small queue at the proxy), which position frames reveal
        if target is not None and (last >= target or received + sub.stats()["lost"] >= target):
            break
    st = sub.stats()
    upto = target if target is not None and received + st["lost"] >= target else last
    missing = sum(1 for i in range(1, upto + 1) if not seen[i])
    emit(event="result", received=received, last=last, missing=missing, lost=st["lost"],
         gaps=st["gaps"], out_of_order=st["out_of_order"], dups=dups, gap_times=gap_times,
         accounted=upto,
         last_wall=last_wall, rss=rss(), rss_growth=rss() - rss_start if rss_start else 0,
         peer_events=st["peer_events"])
    sub.close()


def role_wq(a: dict[str, Any]) -> None:
    """Put N work items (journaled), wait until all are acked, report."""
    import pybus

    stop = _stopper()
    q = pybus.WorkQueue(a["bind"], journal=a["journal"], heartbeat_interval_s=0.2,
                        heartbeat_liveness=3, ack_timeout_s=10.0, liveness=_liveness(),
                        registry=False)
    emit(event="ready", endpoint=q.endpoint)
    n = a["n"]
    ids: list[int] = []
    step = 1000
    rss_start = rss()
    for i in range(0, n, step):
        ids += q.put_many([("mh.job", struct.pack("<Q", j)) for j in range(i, min(n, i + step))])
    emit(event="put", n=len(ids), first=ids[0], last=ids[-1])
    deadline = time.monotonic() + a["max_s"]
    done = False
    while not stop.is_set() and time.monotonic() < deadline:
        if q.join(timeout=0.5):
            done = True
            break
    st = q.stats()
    emit(event="result", done=done, ids_first=ids[0], ids_last=ids[-1], n=len(ids),
         stats=st, rss=rss(), rss_growth=rss() - rss_start)
    q.close()


def role_worker(a: dict[str, Any]) -> None:
    """Handle work items, appending each handled id (u64) to a file before acking."""
    import pybus

    stop = _stopper()
    fd = os.open(a["record"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    delay = a.get("work_s", 0.0)

    def handler(m: Any) -> None:
        if delay:
            time.sleep(delay)
        os.write(fd, struct.pack("<Q", m.seq))

    w = pybus.Worker(a["connect"], handler, prefetch=a.get("prefetch", 256),
                     heartbeat_interval_s=0.2, liveness=_liveness(), registry=False)
    w.start()
    emit(event="ready")
    deadline = time.monotonic() + a["max_s"]
    while not stop.is_set() and time.monotonic() < deadline:
        stop.wait(0.2)
    w.stop(2.0)
    emit(event="result", stats=w.stats(), rss=rss())


ROLES = {"proxy": role_proxy, "pub": role_pub, "sub": role_sub, "wq": role_wq,
         "worker": role_worker}

if __name__ == "__main__":
    ROLES[sys.argv[1]](json.loads(sys.argv[2]))
