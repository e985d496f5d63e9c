"""Issue 14's recorder bar, at a size the suite affords: the scenario of
bench/bench_recorder.py (50 topics, recorder restarted midway with a late join, loss counted by
the subscribers) with 20,000 messages; the bench runs it with 100,000."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from natsserver import NatsServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench_recorder import scenario  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def test_every_message_once_in_topic_order_with_gaps_marked_across_a_restart(
        nats_server: NatsServer):
    out = scenario(nats_server.url, 20_000, timeout=120)
    # 20,000 published, 7 from the foreign publisher, 2 gap markers; nothing twice
    assert out["stream_messages"] == 20_009
    a, b = out["recorder_a"], out["recorder_b"]
    assert a["stored"] + b["stored"] == 20_007 and a["gap_markers"] == b["gap_markers"] == 1
    assert b["duplicates"] > 0  # the late join re-read messages A had stored: dropped
