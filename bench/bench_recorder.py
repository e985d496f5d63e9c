"""The recorder bar of issue 14: record N messages over 50 topics into a JetStream stream with
the recorder restarted midway, replay the stream, and check that every message is there once,
in per-topic order, with the loss the subscribers counted marked.

The run, on one nats-server (file storage, started here in a temp dir):

1. a reliable pybus Publisher (history for late joiners) on 50 topics ``bar.t00..t49``, and a
   foreign publisher (hand-made frames) on ``gap.t`` whose sequence numbers skip on purpose;
2. recorder A (a Subscriber of both) records the first 40 % of the messages, then stops;
3. 20 % are published while no recorder runs;
4. recorder B starts with ``late_join`` (the publisher's history gives it what it missed, and
   what A had stored already is dropped by the stream's de-duplication), and records the
   last 40 %;
5. the stream is replayed (``pattern="#"``) and checked: each (publisher, topic, sequence)
   once, each topic's messages in order, one gap marker per hole, where the hole is.

Printed: messages/s recorded (publish to last acknowledgement) and replayed.
``tests/jetstream/test_recorder_bar.py`` runs the same scenario with fewer messages.

Usage::

    .venv/bin/python bench/bench_recorder.py [--n 100000]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pybus
import pybus.jetstream as js

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "tests" / "jetstream"))

from recorder_helpers import RawPublisher  # noqa: E402

TOPICS = [f"bar.t{i:02d}" for i in range(50)]
PATTERNS = ["bar.#", "gap.#"]


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _recorded(rec: js.Recorder) -> int:
    st = rec.stats()
    return int(st["stored"] + st["duplicates"] + st["gap_markers"])


def scenario(url: str, n: int, stream: str = "bar", timeout: float = 300.0) -> dict[str, Any]:
    """Run the scenario against the server at ``url``; returns the figures, raises
    AssertionError when a check fails."""
    # history: enough for the 20 % published while no recorder runs, not the whole run
    pub = pybus.Publisher("tcp://127.0.0.1:*", history=max(100, n * 3 // 10 // 50),
                          history_endpoint="tcp://127.0.0.1:*")
    raw = RawPublisher(publisher_id=0x6A9)
    counter = 0
    recs: list[js.Recorder] = []

    def burst(k: int) -> None:
        nonlocal counter
        for _ in range(k):
            pub.publish(TOPICS[counter % 50], b"%d" % counter)
            counter += 1
        pub.flush(timeout=60)

    def recorder(name: str, late: bool) -> js.Recorder:
        kw: dict[str, Any] = ({"late_join": True, "history_endpoint": pub.history_endpoint}
                              if late else {})
        sub = pybus.Subscriber([pub.endpoints[0], raw.endpoint], topics=PATTERNS, **kw)
        rec = js.Recorder(url, stream=stream, subscriber=sub, name=name)
        recs.append(rec)
        return rec.start()

    try:
        t0 = time.perf_counter()
        rec_a = recorder("rec-a", late=False)
        assert pub.wait_for_subscribers(1, timeout=10) == 1
        raw.wait_for_subscriber()
        first = int(n * 0.4)
        raw.send("gap.t", 1, [b"g1", b"g2", b"g3"])
        burst(first // 2)
        raw.send("gap.t", 8, [b"g8", b"g9"])  # 4..7 lost: A records a marker
        burst(first - first // 2)
        _wait(lambda: rec_a.stats()["received"] >= first + 5, timeout, "recorder A to read")
        rec_a.stop()  # midway: what A read is stored, the rest of its queue is dropped
        burst(int(n * 0.2))  # no recorder runs
        rec_b = recorder("rec-b", late=True)
        assert pub.wait_for_subscribers(1, timeout=10) == 1
        raw.wait_for_subscriber()
        raw.send("gap.t", 20, [b"g20"])  # B's first frame of gap.t sets its expectation
        burst(n - counter)
        raw.send("gap.t", 25, [b"g25"])  # 21..24 lost: B records a marker
        # done when the two recorders stored every message (and B its marker): a message
        # missing makes this time out, one stored twice fails _check below
        want = n + 7
        _wait(lambda: rec_a.stats()["stored"] + rec_b.stats()["stored"] >= want
              and rec_b.stats()["gap_markers"] >= 1, timeout, "every message to be stored")
        t_rec = time.perf_counter() - t0
        rec_b.stop()
        sa, sb = rec_a.stats(), rec_b.stats()
    finally:
        for r in recs:
            r.stop()
        pub.close()
        raw.close()

    t1 = time.perf_counter()
    got = []
    r = js.replay(url, stream=stream, pattern="#", batch_messages=1000)
    try:
        for m in r:
            got.append((m, r.last_publisher_seq))
    finally:
        r.close()
    t_replay = time.perf_counter() - t1
    _check(got, n, pub.publisher_id)
    return {
        "messages": n, "topics": len(TOPICS), "stream_messages": len(got),
        "record_s": round(t_rec, 3), "recorded_per_s": round(n / t_rec),
        "replay_s": round(t_replay, 3), "replayed_per_s": round(len(got) / t_replay),
        "recorder_a": {k: sa[k] for k in ("received", "stored", "duplicates", "gap_markers")},
        "recorder_b": {k: sb[k] for k in ("received", "stored", "duplicates", "gap_markers")},
    }


def _check(got: list[tuple[Any, int]], n: int, pid: int) -> None:
    seen: set[tuple[int, str, int]] = set()
    per_topic: dict[str, list[int]] = collections.defaultdict(list)
    markers: list[tuple[str, int, int]] = []
    gap_t: list[bytes] = []
    for m, pseq in got:
        if m.topic == js.GAP_TOPIC:
            p = m.payload
            markers.append((p["topic"], p["first_seq"], p["last_seq"]))
            continue
        key = (m.publisher_id, m.topic, pseq)
        assert key not in seen, f"stored twice: {key}"
        seen.add(key)
        if m.topic == "gap.t":
            gap_t.append(m.payload)
        else:
            assert m.publisher_id == pid
            per_topic[m.topic].append(int(m.payload))
    values = sorted(v for vs in per_topic.values() for v in vs)
    assert values == list(range(n)), (
        f"{n - len(set(values))} missing of {n}" if len(values) <= n else "extra messages")
    for topic, vs in per_topic.items():
        assert vs == sorted(vs), f"{topic} out of order"
    assert gap_t == [b"g1", b"g2", b"g3", b"g8", b"g9", b"g20", b"g25"], gap_t
    assert markers == [("gap.t", 4, 7), ("gap.t", 21, 24)], markers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    from natsserver import NatsServer

    with tempfile.TemporaryDirectory() as d:
        server = NatsServer(Path(d)).start()
        try:
            out = scenario(server.url, args.n)
        finally:
            server.stop()
    out["nats_server"] = os.popen("nats-server --version").read().strip()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
