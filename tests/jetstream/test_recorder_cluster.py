"""The recorder on a three-node cluster: a stream with three replicas, its leader's node
SIGKILLed mid-burst; the recorder moves to another node and nothing is lost or stored twice."""

from __future__ import annotations

import pytest
from natsserver import NatsCluster
from recorder_helpers import stream_info
from waiting import until

import pybus
import pybus.jetstream as js

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.leaks_ok("restarts a node of the module's cluster, which the "
                                   "fixture stops")]


def test_leader_node_killed_mid_burst_with_three_replicas(nats_cluster: NatsCluster):
    pub = pybus.Publisher("tcp://127.0.0.1:*")
    sub = pybus.Subscriber(pub.endpoints, topics=["c.*"])
    rec = js.Recorder(nats_cluster.urls, stream="r3", subscriber=sub, replicas=3,
                      ack_timeout_s=2.0, max_in_flight=256, batch_messages=100).start()
    n = 0

    def burst(k: int) -> None:
        nonlocal n
        for _ in range(k):
            pub.publish(f"c.{n % 4}", b"%d" % n)
            n += 1
        pub.flush(timeout=60)

    killed = None
    try:
        assert pub.wait_for_subscribers(1, timeout=10) == 1
        burst(200)
        assert until(lambda: rec.stats()["stored"] >= 200, 30), rec.stats()
        leader, followers = nats_cluster.stream_placement("r3")
        assert len(followers) == 2
        burst(3000)
        killed = nats_cluster.node(leader)
        killed.kill()  # mid-burst: publishes are in flight to (or through) the leader
        burst(3000)
        assert until(lambda: rec.stats()["stored"] + rec.stats()["duplicates"] >= n, 90), \
            rec.stats()
    finally:
        rec.stop()
        pub.close()
        if killed is not None:
            killed.start()  # the module's cluster stays whole for the next test
    st = rec.stats()
    assert st["unstored"] == 0 and st["rejected"] == 0, st
    urls = [u for node, u in zip(nats_cluster.nodes, nats_cluster.urls, strict=True)
            if node is not killed]
    got = list(js.replay(urls, stream="r3", pattern="c.*"))
    assert stream_info(urls[0], "r3").state.messages == n  # nats-py's own count
    assert sorted(int(m.payload) for m in got) == list(range(n)), "lost or stored twice"
    out_of_order = 0
    for t in ("c.0", "c.1", "c.2", "c.3"):
        seqs = [int(m.payload) for m in got if m.topic == t]
        out_of_order += sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b < a)
    # a message stored after later ones is counted by the recorder, never silent
    assert out_of_order <= st["reordered"], (out_of_order, st)
