"""Reliable pub/sub (the default): nothing lost to a subscriber that is connected and reading.

Subscribers run in spawned child processes (tests/reliable_procs.py) that hash every payload
(blake2b) and check every stream's order; the publisher bursts without pauses. Each loss test
here lost messages with the best-effort publisher of before (the old default). Deadlines only
bound a hang: no test measures speed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import pybus

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: helpers
import reliable_procs as rp  # noqa: E402
from waiting import until  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SPAWN = mp.get_context("spawn")
START_S = 60.0  # a spawned child imports pybus: generous on a loaded machine
# A subscriber process reports by its own deadline (sub_proc's deadline_s, 60 s from its
# start, with what it got so far); the test waits a little longer than that for the report.
REPORT_S = 75.0


@pytest.fixture
def ipc_dir() -> Iterator[str]:
    # ipc paths must stay short (sun_path is ~107 bytes): a fresh dir under /tmp
    d = tempfile.mkdtemp(prefix="pbrel")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _endpoint(transport: str, ipc_dir: str, name: str = "pub") -> str:
    return f"ipc://{ipc_dir}/{name}" if transport == "ipc" else "tcp://127.0.0.1:*"


def _kill(p: Any) -> None:
    if p.pid is not None and p.is_alive():
        try:
            os.kill(p.pid, signal.SIGCONT)  # a stopped child dies at once too
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.join(10)


def _start_subs(ep: str, specs: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Start one sub_proc per spec (kwargs of sub_proc); returns (processes, their queues)."""
    procs, queues = [], []
    for spec in specs:
        q, ready = SPAWN.Queue(), SPAWN.Event()
        p = SPAWN.Process(target=rp.sub_proc, args=(ep, spec.pop("expected"), ready, q),
                          kwargs=spec, daemon=True)
        p.start()
        procs.append(p)
        queues.append((q, ready))
    return procs, queues


def _wait_ready(pub: pybus.Publisher, procs: list[Any], queues: list[Any]) -> None:
    """Each child built its Subscriber, and the publisher has seen every hello."""
    for p, (_q, ready) in zip(procs, queues, strict=True):
        assert ready.wait(START_S), f"subscriber process {p.pid} did not start"
    pub.wait_for_subscribers(len(procs), timeout=30)


def _result(q: Any, timeout: float, what: str) -> dict[str, Any]:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no report from {what} within {timeout}s") from None


def _burst(pub: pybus.Publisher, n: int, size: int, topics: int, start: int = 0,
           stop: int | None = None) -> None:
    """Publish messages start..stop-1 of an n-message burst: message i on topic i % topics,
    its payload starting with its stream's sequence number."""
    names = rp.topic_names(topics)
    publish = pub.publish
    filler = b"p" * (size - 8)
    for i in range(start, n if stop is None else stop):
        publish(names[i % topics], (i // topics + 1).to_bytes(8, "little") + filler)


def _assert_complete(r: dict[str, Any], n: int, topics: int, who: str) -> None:
    """Everything arrived: every stream 1..count in order, no duplicate, nothing lost."""
    assert not r["timed_out"], (who, {k: v for k, v in r.items() if k != "per_topic"})
    assert r["delivered"] == n and r["lost"] == 0 and r["gap_lost"] == 0, (who, r["stats"])
    assert r["bad_payload"] == 0 and r["stats"]["out_of_order"] == 0, (who, r["stats"])
    assert r["stats"]["decode_errors"] == 0, (who, r["stats"])
    exp = rp.expected_per_topic(n, topics)
    assert set(r["per_topic"]) == set(exp), who
    for t, (count, last, skips, backwards) in r["per_topic"].items():
        assert (count, last, skips, backwards) == (exp[t], exp[t], 0, 0), (who, t)


def _assert_accounted(r: dict[str, Any], n: int, topics: int, who: str) -> None:
    """Every message delivered (in order, once) or counted lost, per stream."""
    assert not r["timed_out"], (who, {k: v for k, v in r.items() if k != "per_topic"})
    assert r["delivered"] + r["lost"] == n and r["gap_lost"] == r["lost"], (who, r["stats"])
    assert r["bad_payload"] == 0 and r["stats"]["out_of_order"] == 0, (who, r["stats"])
    exp = rp.expected_per_topic(n, topics)
    for t, want in exp.items():
        count, last, _skips, backwards = r["per_topic"].get(t, (0, 0, 0, 0))
        assert backwards == 0 and last <= want, (who, t)
        assert count + r["lost_by_topic"].get(t, 0) == want, (who, t)


def _assert_books(pst: dict[str, Any], n: int, delivered: int, lost: int) -> None:
    """Publisher and subscriber books balance: every publish call was sent or counted
    dropped, and every message sent was delivered or counted lost."""
    assert pst["published"] + sum(pst["dropped"].values()) == n, pst
    assert pst["published"] == delivered + lost, (pst, delivered, lost)
    assert n == delivered + sum(pst["dropped"].values()) + lost


# -- a: the shapes --------------------------------------------------------------------

SHAPES = [
    # transport, messages, payload bytes, topics
    ("tcp", 6_000, 1024, 10),
    ("ipc", 6_000, 1024, 10),
    # one topic: frames are full (~1,000 messages of 64 B), so it takes this many to overflow
    # the best-effort high-water marks (50,000 fitted in them: 1,000,000 lost ~14 %)
    ("ipc", 1_000_000, 64, 1),
    ("ipc", 50_000, 64, 100),
    ("ipc", 20_000, 64, 2_000),
    ("tcp", 10_000, 4096, 4),
]


@pytest.mark.parametrize(("transport", "n", "size", "topics"), SHAPES,
                         ids=[f"{s[0]}-{s[1]}x{s[2]}B-{s[3]}topics" for s in SHAPES])
def test_burst_shapes_arrive_whole_with_default_settings(
    ipc_dir: str, transport: str, n: int, size: int, topics: int
) -> None:
    """The issue's shapes, default settings, a subscriber process doing blake2b per message:
    delivered == published, lost == 0, every stream complete and in order, books balance."""
    pub = pybus.Publisher(_endpoint(transport, ipc_dir))  # the defaults are the point
    procs: list[Any] = []
    try:
        assert pub.delivery == "reliable"
        ep = pub.endpoints[0]
        procs, queues = _start_subs(ep, [{"expected": n}])
        _wait_ready(pub, procs, queues)
        _burst(pub, n, size, topics)
        pub.flush(timeout=60)
        r = _result(queues[0][0], REPORT_S, "the subscriber")
        pst = pub.stats()
        _assert_complete(r, n, topics, f"subscriber (publisher: {pst})")
        _assert_books(pst, n, r["delivered"], r["lost"])
        assert pst["evictions"] == 0 and r["stats"]["marks"] > 0, pst
    finally:
        for p in procs:
            _kill(p)
        pub.close(linger_ms=0)


# -- b: a subscriber stopped mid-burst --------------------------------------------------------

def test_sigstopped_subscriber_is_evicted_and_counts_its_loss_live_one_gets_all() -> None:
    """Two subscriber processes; one is SIGSTOPped mid-burst. The live one gets 100 %; the
    publisher evicts the stopped one (its window full, no ack for slow_consumer_timeout_s) and
    finishes; after SIGCONT the stopped one accounts for every message: delivered + lost ==
    published, per stream, in order."""
    # ~28 MiB after the stop: more than the window in frames holds even at 64 KiB a frame
    # (240 x 64 KiB = 15 MiB), so the stopped one's window fills and it is evicted
    n, size, topics, stop_at = 30_000, 1024, 10, 3_000
    timeout_s = 1.0
    pub = pybus.Publisher("tcp://127.0.0.1:*", slow_consumer_timeout_s=timeout_s)
    procs: list[Any] = []
    try:
        procs, queues = _start_subs(pub.endpoints[0], [{"expected": n}, {"expected": n}])
        live, stopped = procs
        _wait_ready(pub, procs, queues)
        _burst(pub, n, size, topics, stop=stop_at)
        os.kill(stopped.pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        _burst(pub, n, size, topics, start=stop_at)
        pub.flush(timeout=timeout_s + 10)
        took = time.monotonic() - t_stop
        assert took < timeout_s + 10, f"the publisher took {took:.1f}s after the stop"
        r_live = _result(queues[0][0], REPORT_S, "the live subscriber")
        pst = pub.stats()
        _assert_complete(r_live, n, topics, f"live subscriber (publisher: {pst})")
        assert pst["evictions"] == 1, pst
        os.kill(stopped.pid, signal.SIGCONT)
        # The publisher stays open meanwhile: its position frames (repeated for ~12 s after
        # a stream stops) tell the stopped one what it missed at the end of each stream
        r_stopped = _result(queues[1][0], REPORT_S, "the stopped subscriber")
        _assert_accounted(r_stopped, n, topics, f"stopped subscriber (publisher: {pst})")
        assert pst["published"] == n and sum(pst["dropped"].values()) == 0, pst
        _assert_books(pst, n, r_live["delivered"], r_live["lost"])
    finally:
        for p in procs:
            _kill(p)
        pub.close(linger_ms=0)


# -- c: a subscriber killed mid-burst ---------------------------------------------------------

def test_sigkilled_subscriber_mid_burst_live_one_gets_all(ipc_dir: str) -> None:
    """Two subscriber processes; one is SIGKILLed mid-burst. The live one gets everything,
    the publisher finishes (bounded) without an exception and forgets the dead one."""
    n, size, topics, kill_at = 30_000, 1024, 10, 3_000
    pub = pybus.Publisher(_endpoint("ipc", ipc_dir))
    hold = SPAWN.Event()  # the live one stays connected until the end
    procs: list[Any] = []
    try:
        procs, queues = _start_subs(pub.endpoints[0],
                                    [{"expected": n, "hold": hold}, {"expected": n}])
        _wait_ready(pub, procs, queues)
        _burst(pub, n, size, topics, stop=kill_at)
        os.kill(procs[1].pid, signal.SIGKILL)
        _burst(pub, n, size, topics, start=kill_at)
        pub.flush(timeout=30)
        r = _result(queues[0][0], REPORT_S, "the live subscriber")
        pst = pub.stats()
        _assert_complete(r, n, topics, f"live subscriber (publisher: {pst})")
        _assert_books(pst, n, r["delivered"], r["lost"])
        # ZeroMQ reports the dead peer's hello unsubscribed: it leaves the window
        assert until(lambda: pub.stats()["subscribers"] == 1, timeout=10), pub.stats()
    finally:
        hold.set()
        for p in procs:
            _kill(p)
        pub.close(linger_ms=0)


# -- d: a slow subscriber beside a fast one ---------------------------------------------------

def test_ten_times_slower_subscriber_gets_everything_too(ipc_dir: str) -> None:
    """One subscriber sleeps, after each batch, 9x what the batch took it (so it is 10x
    slower than the other, and its sleep grows with the batch): the publisher paces to it,
    and both get everything, lost == 0 for both."""
    n, size, topics = 20_000, 1024, 10
    pub = pybus.Publisher(_endpoint("ipc", ipc_dir))
    procs: list[Any] = []
    try:
        procs, queues = _start_subs(pub.endpoints[0],
                                    [{"expected": n}, {"expected": n, "slowdown": 10.0}])
        _wait_ready(pub, procs, queues)
        _burst(pub, n, size, topics)
        pub.flush(timeout=60)
        fast = _result(queues[0][0], REPORT_S, "the fast subscriber")
        slow = _result(queues[1][0], REPORT_S, "the slow subscriber")
        pst = pub.stats()
        _assert_complete(fast, n, topics, f"fast subscriber (publisher: {pst})")
        _assert_complete(slow, n, topics, f"slow subscriber (publisher: {pst})")
        assert pst["evictions"] == 0, pst
        _assert_books(pst, n, slow["delivered"], slow["lost"])
    finally:
        for p in procs:
            _kill(p)
        pub.close(linger_ms=0)


# -- e: subscribers joining and leaving during a burst ----------------------------------------

def test_subscribers_joining_and_leaving_during_a_burst() -> None:
    """A process whose subscribers join and leave in a loop (some read, some leave at once)
    beside a steady one: the steady one gets everything, the publisher finishes, the books
    balance."""
    size, topics, chunk = 256, 20, 2_000
    min_n, min_cycles, max_n, max_s = 200_000, 20, 3_000_000, 30.0
    pub = pybus.Publisher("tcp://127.0.0.1:*")
    expected = SPAWN.Value("q", 0)  # set once the burst is over
    cycles = SPAWN.Value("q", 0)
    churn_ready, churn_stop = SPAWN.Event(), SPAWN.Event()
    procs: list[Any] = []
    try:
        ep = pub.endpoints[0]
        procs, queues = _start_subs(ep, [{"expected": expected}])
        # the steady one first: wait_for_subscribers counts any subscriber, and one that
        # arrives mid-burst is owed only what is published after it (docs/wire.md)
        _wait_ready(pub, procs, queues)
        churn = SPAWN.Process(target=rp.churn_proc, args=(ep, churn_ready, churn_stop, cycles),
                              daemon=True)
        churn.start()
        procs.append(churn)
        assert churn_ready.wait(START_S), "the churning process did not start"
        c0 = cycles.value
        # a burst in chunks without pauses, until the churn went round a few times during it
        # (bounded by count and time)
        n = 0
        t0 = time.monotonic()
        while n < max_n and time.monotonic() - t0 < max_s:
            _burst(pub, max_n, size, topics, start=n, stop=n + chunk)
            n += chunk
            if n >= min_n and cycles.value - c0 >= min_cycles:
                break
        pub.flush(timeout=30)
        took = time.monotonic() - t0
        churned = cycles.value - c0
        expected.value = n
        churn_stop.set()
        r = _result(queues[0][0], REPORT_S, "the steady subscriber")
        pst = pub.stats()
        assert churned >= 1, f"no subscriber joined and left during the {took:.1f}s burst"
        _assert_complete(r, n, topics, f"steady subscriber (publisher: {pst})")
        _assert_books(pst, n, r["delivered"], r["lost"])
        churn.join(30)
        assert churn.exitcode == 0
    finally:
        churn_stop.set()
        for p in procs:
            _kill(p)
        pub.close(linger_ms=0)


# -- f: memory with a stalled subscriber ------------------------------------------------------

@pytest.mark.timeout(180)
def test_rss_bounded_for_publisher_and_stalled_subscriber() -> None:
    """A publisher process (fresh heap, default 32 MiB window, slow_consumer_timeout_s 1 s)
    feeding a subscriber process that never reads: after the warm-up (the subscriber is
    evicted, ZeroMQ's queues fill), the RSS of each grows by less than window + 16 MiB over
    up to 3,000,000 x 64 B (192 MB of payload) or 25 s, whichever comes first."""
    bound = 32 * 2**20 + 16 * 2**20
    ep_q, out_q = SPAWN.Queue(), SPAWN.Queue()
    warm, go_on, finished, release = (SPAWN.Event() for _ in range(4))
    sub_ready, sub_stop = SPAWN.Event(), SPAWN.Event()
    pub_p = SPAWN.Process(target=rp.rss_pub_proc,
                          args=(ep_q, warm, go_on, finished, release, out_q), daemon=True)
    procs = [pub_p]
    try:
        pub_p.start()
        ep = _result(ep_q, START_S, "the publisher process")
        sub_p = SPAWN.Process(target=rp.idle_sub_proc, args=(ep, sub_ready, sub_stop),
                              daemon=True)
        sub_p.start()
        procs.append(sub_p)
        assert sub_ready.wait(START_S), "the subscriber process did not start"
        assert warm.wait(60), "the publisher's warm-up did not end"
        pub_ps, sub_ps = psutil.Process(pub_p.pid), psutil.Process(sub_p.pid)
        pub_rss0, sub_rss0 = pub_ps.memory_info().rss, sub_ps.memory_info().rss
        go_on.set()
        assert finished.wait(90), "the publisher did not finish"
        pub_grown = pub_ps.memory_info().rss - pub_rss0
        sub_grown = sub_ps.memory_info().rss - sub_rss0
        release.set()
        r = _result(out_q, 30, "the publisher process")
        st = r["stats"]
        msg = (f"publisher +{pub_grown / 2**20:.1f} MiB, subscriber +{sub_grown / 2**20:.1f} "
               f"MiB after {r['n'] - r['warm_n']} messages in {r['seconds']:.1f}s; {st}")
        assert r["warm_stats"]["evictions"] == 1, r["warm_stats"]
        assert st["published"] == r["n"] and sum(st["dropped"].values()) == 0, msg
        assert pub_grown < bound and sub_grown < bound, msg
    finally:
        sub_stop.set()
        release.set()
        go_on.set()
        for p in procs:
            _kill(p)
