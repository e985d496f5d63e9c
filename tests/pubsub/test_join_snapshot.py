"""Every stream accounted, also one a subscriber never saw a message of (docs/wire.md,
"Join snapshot"): published after a subscriber arrived == received + lost, exactly."""

from __future__ import annotations

import time
from pathlib import Path

import pybus


def _drain_until(subs: dict[pybus.Subscriber, int], counts: dict[pybus.Subscriber, int],
                 deadline_s: float) -> None:
    """Read every subscriber until received + lost reaches its target (or the deadline: the
    publisher repeats each stream's position for ~13 s, which is what reveals a lost tail)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        done = True
        for sub, target in subs.items():
            counts[sub] += len(sub.recv_batch(10_000, timeout=0.02))
            if counts[sub] + sub.stats()["lost"] < target:
                done = False
        if done:
            return


def test_best_effort_burst_over_2000_topics_is_accounted_exactly(tmp_path: Path) -> None:
    """Best effort into subscribers that read only after the burst: most of it is dropped at
    the high-water marks, whole streams included (the first message of 2,000 streams cannot
    all fit in 1,024 frames of queue). Each subscriber still balances its books exactly: the
    one that joined before anything was published counts every message, the one that joined
    after 200 streams had published counts every message from its arrival on."""
    ep = f"ipc://{tmp_path}/j.ipc"
    pub = pybus.Publisher(ep, delivery="best_effort", registry=False)
    early = pybus.Subscriber(ep, topics=["#"], registry=False)
    late = None
    try:
        pub.wait_for_subscribers(1, timeout=10)
        for i in range(200):
            pub.publish(f"pre.{i}", b"p")
        pub.flush()
        late = pybus.Subscriber(ep, topics=["#"], registry=False)
        pub.wait_for_subscribers(2, timeout=10)
        n = 200
        for _ in range(20):
            for i in range(2000):
                pub.publish(f"t.{i}", b"x" * 64)
                n += 1
        pub.flush()
        counts = {early: 0, late: 0}
        _drain_until({early: n, late: n - 200}, counts, 60)
        st_e, st_l = early.stats(), late.stats()
        assert st_e["lost"] > 0  # the burst did overflow (else this test proves nothing)
        assert counts[early] + st_e["lost"] == n, (counts[early], st_e["lost"], n)
        assert counts[late] + st_l["lost"] == n - 200, (counts[late], st_l["lost"], n)
        assert st_e["out_of_order"] == 0 and st_l["out_of_order"] == 0
        assert st_e["decode_errors"] == 0 and st_l["decode_errors"] == 0
    finally:
        for s in (early, late):
            if s is not None:
                s.close()
        pub.close(linger_ms=0)


def test_a_pattern_added_later_counts_no_false_loss(tmp_path: Path) -> None:
    """Streams of a pattern subscribed after the join snapshot started before it: their first
    message sets the expectation, nothing is counted lost."""
    ep = f"ipc://{tmp_path}/p.ipc"
    pub = pybus.Publisher(ep, registry=False)
    sub = pybus.Subscriber(ep, topics=["a.#"], registry=False)
    try:
        pub.wait_for_subscribers(1, timeout=10)
        for i in range(50):
            pub.publish("b.x", i)  # not subscribed yet
        pub.flush()
        sub.subscribe("b.#")
        deadline = time.monotonic() + 30
        got: list[pybus.Message] = []
        i = 50
        while not got and time.monotonic() < deadline:  # until the subscription took effect
            pub.publish("b.x", i)
            i += 1
            got += sub.recv_batch(timeout=0.05)
        assert got and got[0].seq > 1
        assert sub.stats()["lost"] == 0
    finally:
        sub.close()
        pub.close(linger_ms=0)
